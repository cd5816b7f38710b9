"""The ARC SGAS publisher driver (tests/arc_sgas.py), checked without any server of ours.

These run ARC's own code from the Debian package nordugrid-arc-arex: its UsageRecord builder on a
database the driver writes, and its sender against a closed port and a port that never answers.
They also pin the ARC 6.17 quirks docs/arc-sgas.md describes, so that an upgrade of the package
that changes them shows up here. The LUTS's own tests publish to the real /sgas/ur endpoint.
"""
from __future__ import annotations

import datetime as dt
import socket

import pytest
from lxml import etree

from arc_sgas import (ARC_VERSION_EXPECTED, ArcJob, ArcSite, arc_missing, arc_version, parse_sender_log,
                      publish_with_arc)
from security_fixtures import skip_unless_ci

URF = "http://schema.ogf.org/urf/2003/09/urf"
VO = "http://www.sgas.se/namespaces/2009/05/ur/vo"
NS = {"urf": URF, "vo": VO}
ALICE = "/DC=org/DC=example/O=gridcredit-test/CN=Alice"


@pytest.fixture(autouse=True)
def _needs_arc():
    skip_unless_ci(arc_missing())


@pytest.fixture
def site(tmp_path, pki):
    return ArcSite(tmp_path / "site", target_url="https://127.0.0.1:9/sgas", cert_path=pki.host_cert,
                   key_path=pki.host_key, ca_dir=pki.trust_dir)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def test_the_installed_arc_is_the_version_documented():
    assert arc_version() == ARC_VERSION_EXPECTED


def test_arc_builds_usage_records_from_the_database_the_driver_writes(site):
    end = _now() - dt.timedelta(minutes=5)
    jobs = [ArcJob("job-a", ALICE, end, walltime_s=3723, cpu_user_s=7000, cpu_kernel_s=61, local_job_id="4711",
                   cpu_count=4, fqans=("/atlas",), extra=(("jobname", "analysis"), ("localuser", "grid001:grid"))),
            ArcJob("job-b", ALICE, end - dt.timedelta(minutes=1), status="failed", exit_code=1)]
    site.add_jobs(jobs)
    root = etree.fromstring(site.usage_records_xml().encode("utf-8"))
    assert root.tag == f"{{{URF}}}UsageRecords"
    records = {r.find("urf:RecordIdentity", NS).get(f"{{{URF}}}recordId"): r for r in root}
    assert set(records) == {job.record_id() for job in jobs} == {"ur-ce.example.org-job-a", "ur-ce.example.org-job-b"}
    a = records["ur-ce.example.org-job-a"]
    assert a.tag == f"{{{URF}}}JobUsageRecord"
    assert a.findtext("urf:JobIdentity/urf:GlobalJobId", namespaces=NS) == "job-a"
    assert a.findtext("urf:JobIdentity/urf:LocalJobId", namespaces=NS) == "4711"
    assert a.findtext("urf:UserIdentity/urf:GlobalUserName", namespaces=NS) == ALICE
    assert a.findtext("urf:UserIdentity/urf:LocalUserId", namespaces=NS) == "grid001:grid"
    assert a.findtext("urf:UserIdentity/vo:VO/vo:Name", namespaces=NS) == "atlas"
    assert a.findtext("urf:JobName", namespaces=NS) == "analysis"
    assert a.findtext("urf:Status", namespaces=NS) == "completed"
    assert a.findtext("urf:WallDuration", namespaces=NS) == "PT1H2M3S"
    cpu = {c.get(f"{{{URF}}}usageType"): c.text for c in a.findall("urf:CpuDuration", NS)}
    assert cpu == {"user": "PT1H56M40S", "system": "PT1M1S"}
    assert a.findtext("urf:EndTime", namespaces=NS) == end.strftime("%Y-%m-%dT%H:%M:%SZ")
    # StartTime is the job's submission time in ARC 6.17 (AccountingPublishing.py, UsageRecord.__job_data)
    assert a.findtext("urf:StartTime", namespaces=NS) == dt.datetime.fromtimestamp(
        jobs[0].submit_epoch(), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert a.findtext("urf:MachineName", namespaces=NS) == "ce.example.org"
    assert a.findtext("urf:Processors", namespaces=NS) == "4"
    assert records["ur-ce.example.org-job-b"].findtext("urf:Status", namespaces=NS) == "failed"
    assert records["ur-ce.example.org-job-b"].find("urf:UserIdentity/vo:VO", NS) is None


def test_arc_617_quirks_that_docs_describe(site):
    """Each of these is a surprise for a receiver; see docs/arc-sgas.md, 'Surprises'."""
    end = _now()
    site.add_jobs([ArcJob("job-role", ALICE, end, fqans=("/atlas/Role=production", "/atlas/lcg1/Role=NULL"),
                          extra=(("nodenames", "wn1:wn2"),))])
    root = etree.fromstring(site.usage_records_xml().encode("utf-8"))
    groups = [g.text for g in root.iterfind(".//vo:Group", NS)]
    assert groups == ["/atlas/Role", "/atlas/lcg1/Role"]          # the Role is cut into the group name
    assert root.find(".//vo:Role", NS) is None
    assert root.find(".//urf:Host", NS) is None                    # A-REX writes 'nodenames', ARC reads 'nodename'
    # values are formatted into the XML unescaped
    site.add_jobs([ArcJob("job-amp", ALICE, end, extra=(("jobname", "a & b"),))])
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(site.usage_records_xml().encode("utf-8"))


def test_arc_vo_group_option_produces_malformed_xml(site):
    site.add_jobs([ArcJob("job-vo", ALICE, _now(), fqans=("/atlas",))])
    etree.fromstring(site.usage_records_xml().encode("utf-8"))
    site.vo_groups = ("/atlas/lcg1",)
    assert "<vo:Group>/atlas/lcg1/vo:Group>" in site.usage_records_xml()


def test_a_refused_connection_is_a_failed_batch_and_nothing_is_marked_published(tmp_path, pki):
    end = _now() - dt.timedelta(minutes=1)
    result = publish_with_arc([ArcJob("job-r", ALICE, end)], f"https://127.0.0.1:{_free_port()}/sgas",
                              pki.host_cert, pki.host_key, pki.trust_dir, timeout_s=60, work_dir=tmp_path / "site")
    assert not result.ok
    assert result.http_statuses == [None] and result.http_status is None
    assert result.returncode == 0                   # jura-ng exits 0 even when publishing failed
    assert not result.timed_out
    assert result.published_until == int(end.timestamp()) - 1      # the mark set before the run, unchanged
    assert any("Connection refused" in line for line in result.errors()), result.log_text


def test_the_driver_kills_arc_when_the_server_never_answers(tmp_path, pki):
    with socket.socket() as black_hole:              # accepts TCP connections (backlog), never speaks TLS
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        port = black_hole.getsockname()[1]
        result = publish_with_arc([ArcJob("job-t", ALICE, _now())], f"https://127.0.0.1:{port}/sgas",
                                  pki.host_cert, pki.host_key, pki.trust_dir, timeout_s=3, mode="republish")
    assert result.timed_out and not result.ok
    assert result.returncode is None and result.http_statuses == [None]


def test_parse_sender_log_reads_each_batch():
    log = "\n".join([
        "[t] [ARC.Accounting.SGAS] [DEBUG] [1] [Initializing HTTPS connection to h:1]",
        "[t] [ARC.Accounting.SGAS] [INFO] [1] [Records have been sent to SGAS server h.]",
        "[t] [ARC.Accounting.SGAS] [DEBUG] [1] [Initializing HTTPS connection to h:1]",
        "[t] [ARC.Accounting.SGAS] [ERROR] [1] [Failed to POST records to SGAS server h. "
        "Error code 503 returned: Service Unavailable]",
        "[t] [ARC.Accounting.SGAS] [DEBUG] [1] [Initializing HTTPS connection to h:1]",
        "[t] [ARC.Accounting.SGAS] [ERROR] [1] [Error connecting to SGAS server h. Error: timed out]",
        "[t] [ARC.Accounting.SGAS] [DEBUG] [1] [Initializing HTTPS connection to h:1]",
    ])
    assert parse_sender_log(log) == [200, 503, None, None]
