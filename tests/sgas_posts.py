"""SGAS posts made to order for issue 11.1-11.3 and 11.7: ARC-shaped UR 1.0 records (default
namespace on the container, urf: attributes, SGAS VO and file-transfer extensions), large ones, and
records each refused or invalid for its own reason.

Import explicitly: ``from sgas_posts import arc_record, arc_post``.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

URF = "http://schema.ogf.org/urf/2003/09/urf"
TR = "http://www.sgas.se/namespaces/2010/10/filetransfer"
VO = "http://www.sgas.se/namespaces/2009/05/ur/vo"
_DECLARED = (f'xmlns:urf="{URF}" xmlns:tr="{TR}" xmlns:vo="{VO}" '
             'xmlns:ds="http://www.w3.org/2000/09/xmldsig#"')


def arc_record(job_id: str, machine: str | None, *, user: str = "/DC=org/DC=example/CN=Ann Arc", transfers: int = 0,
               wall: str = "PT10M0S", record_id: str | None = "", create_time: str = "2026-11-23T00:29:53Z",
               job_name: str | None = None, tag: str = "JobUsageRecord", namespace: str | None = None) -> str:
    """One record as ARC's publisher writes it (``record_id=""``: ARC's ``ur-<machine>-<job>``; None:
    no RecordIdentity at all); ``transfers`` tr:FileDownload entries of ~240 bytes each."""
    rid = f"ur-{machine}-{job_id}" if record_id == "" else record_id
    parts = []
    if rid is not None:
        parts.append(f'<RecordIdentity urf:createTime="{create_time}" urf:recordId="{escape(rid)}"/>')
    parts.append(f"<JobIdentity><GlobalJobId>{job_id}</GlobalJobId><LocalJobId>9{len(job_id)}</LocalJobId>"
                 f"</JobIdentity>")
    parts.append(f"<UserIdentity><GlobalUserName>{escape(user)}</GlobalUserName><vo:VO vo:type=\"voms\">"
                 f"<vo:Name>atlas</vo:Name><vo:Attribute><vo:Group>/atlas</vo:Group></vo:Attribute></vo:VO>"
                 f"</UserIdentity>")
    if job_name is not None:
        parts.append(f"<JobName>{job_name}</JobName>")       # as given: ARC escapes nothing
    parts.append("<Status>completed</Status>")
    parts.append(f"<WallDuration>{wall}</WallDuration><CpuDuration urf:usageType=\"user\">PT5M0S</CpuDuration>"
                 "<CpuDuration urf:usageType=\"system\">PT7S</CpuDuration>"
                 "<StartTime>2026-11-22T23:39:49Z</StartTime><EndTime>2026-11-23T00:28:19Z</EndTime>")
    if machine is not None:
        parts.append(f"<MachineName>{escape(machine)}</MachineName>")
    parts.append("<Queue>grid</Queue><NodeCount>1</NodeCount><Processors>4</Processors>")
    if transfers:
        parts.append("<tr:FileTransfers>" + "".join(
            f"<tr:FileDownload><tr:URL>gsiftp://se{n % 7}.example.org:2811/atlas/data/{job_id}/file-{n:06d}.root"
            f"</tr:URL><tr:Size>{1_000_000 + n}</tr:Size><tr:StartTime>2026-11-22T23:40:00Z</tr:StartTime>"
            f"<tr:EndTime>2026-11-22T23:41:00Z</tr:EndTime><tr:RetrievedFromCache>false</tr:RetrievedFromCache>"
            f"</tr:FileDownload>" for n in range(transfers)) + "</tr:FileTransfers>")
    xmlns = f' xmlns="{namespace}"' if namespace is not None else ""
    return f"<{tag}{xmlns} {_DECLARED}>{''.join(parts)}</{tag}>"


def arc_post(records: list[str], *, encoding: str = "utf-8") -> str:
    """A ``UsageRecords`` batch as ARC's publisher sends it: one line, UR 1.0 the default namespace."""
    return f'<?xml version="1.0" encoding="{encoding}"?>\n<UsageRecords xmlns="{URF}">{"".join(records)}</UsageRecords>'


def big_batch(tag: str, machine: str, *, records: int = 50, record_bytes: int = 250_000) -> bytes:
    """``records`` records of about ``record_bytes`` each (many file transfers), as ARC batches them."""
    transfers = max(1, (record_bytes - 1200) // 285)
    return arc_post([arc_record(f"{tag}{n:04d}", machine, transfers=transfers) for n in range(records)]).encode()
