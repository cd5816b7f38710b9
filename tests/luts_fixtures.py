"""Usage records made to order for the LUTS tests and benchmarks (OGF UR 1.0 with SGAS extensions).

Import explicitly: ``from luts_fixtures import make_record, make_batch, random_jobs``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from xml.sax.saxutils import escape

UR1 = "http://schema.ogf.org/urf/2003/09/urf"
VO_NS = "http://www.sgas.se/namespaces/2009/05/ur/vo"
SGAS_NS = "http://www.sgas.se/namespaces/2009/07/ur"


@dataclass(frozen=True)
class Job:
    record_id: str
    user: str | None
    vo: str | None
    machine: str | None
    queue: str | None
    end: datetime | None
    wall_s: int | None
    cpu_s: int | None
    charge: str | None            # decimal as written
    local_job_id: str | None = None
    global_job_id: str | None = None
    site: str | None = None
    charge_unit: str | None = None  # Charge/@unit


def record_body(job: Job) -> str:
    parts = [f'<ur:RecordIdentity ur:recordId="{escape(job.record_id, {chr(34): "&quot;"})}" '
             f'ur:createTime="2026-01-01T00:00:00Z"/>']
    if job.global_job_id or job.local_job_id:
        parts.append("<ur:JobIdentity>"
                     + (f"<ur:GlobalJobId>{escape(job.global_job_id)}</ur:GlobalJobId>" if job.global_job_id else "")
                     + (f"<ur:LocalJobId>{escape(job.local_job_id)}</ur:LocalJobId>" if job.local_job_id else "")
                     + "</ur:JobIdentity>")
    if job.user:
        parts.append(f"<ur:UserIdentity><ur:GlobalUserName>{escape(job.user)}</ur:GlobalUserName>"
                     + (f"<vo:VO vo:type=\"voms\"><vo:Name>{escape(job.vo)}</vo:Name></vo:VO>" if job.vo else "")
                     + "</ur:UserIdentity>")
    elif job.vo:
        parts.append(f"<ur:UserIdentity><vo:VO><vo:Name>{escape(job.vo)}</vo:Name></vo:VO></ur:UserIdentity>")
    parts.append("<ur:Status>completed</ur:Status>")
    if job.machine:
        parts.append(f"<ur:MachineName>{escape(job.machine)}</ur:MachineName>")
    if job.queue:
        parts.append(f"<ur:Queue>{escape(job.queue)}</ur:Queue>")
    if job.site:
        parts.append(f"<ur:SiteName>{escape(job.site)}</ur:SiteName>")
    if job.wall_s is not None:
        parts.append(f"<ur:WallDuration>PT{job.wall_s}S</ur:WallDuration>")
    if job.cpu_s is not None:
        parts.append(f"<ur:CpuDuration>PT{job.cpu_s}S</ur:CpuDuration>")
    if job.end is not None:
        start = job.end - timedelta(seconds=job.wall_s or 0)
        parts.append(f"<ur:StartTime>{start.strftime('%Y-%m-%dT%H:%M:%SZ')}</ur:StartTime>")
        parts.append(f"<ur:EndTime>{job.end.strftime('%Y-%m-%dT%H:%M:%SZ')}</ur:EndTime>")
    if job.charge is not None:
        unit = f' ur:unit="{escape(job.charge_unit, {chr(34): "&quot;"})}"' if job.charge_unit else ""
        parts.append(f"<ur:Charge{unit}>{job.charge}</ur:Charge>")
    return "".join(parts)


def make_record(job: Job) -> bytes:
    """One record as a whole document."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ur:JobUsageRecord xmlns:ur="{UR1}" xmlns:vo="{VO_NS}">'
            f"{record_body(job)}</ur:JobUsageRecord>\n").encode()


def make_batch(jobs: list[Job]) -> bytes:
    """A ``UsageRecords`` container, as ARC's SGAS publisher sends them."""
    body = "\n".join(f"  <ur:JobUsageRecord>{record_body(job)}</ur:JobUsageRecord>" for job in jobs)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ur:UsageRecords xmlns:ur="{UR1}" xmlns:vo="{VO_NS}" '
            f'xmlns:sgas="{SGAS_NS}">\n{body}\n</ur:UsageRecords>\n').encode()


USERS = [f"/O=Grid/O=Test/CN=User {n}" for n in range(8)]
VOS = ["atlas", "cms", "alice", None]
MACHINES = ["ce1.example.org", "ce2.example.org", "ce3.other.org"]
QUEUES = ["short", "long", None]


def random_jobs(count: int, *, seed: int = 1, prefix: str = "rec", machines=MACHINES, users=USERS,
                months: int = 4, start: datetime = datetime(2026, 7, 1, tzinfo=timezone.utc)) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for number in range(count):
        wall = rng.choice([None, rng.randrange(1, 200_000)])
        jobs.append(Job(
            record_id=f"{prefix}-{seed}-{number}", user=rng.choice(users + [None]), vo=rng.choice(VOS),
            machine=rng.choice(machines), queue=rng.choice(QUEUES),
            end=rng.choice([None] + [start + timedelta(days=rng.randrange(0, 30 * months), seconds=rng.randrange(86_400))] * 6),
            wall_s=wall, cpu_s=rng.choice([None, rng.randrange(0, 400_000)]),
            charge=rng.choice([None, f"{rng.randrange(0, 10_000)}.{rng.randrange(0, 1_000_000):06d}", "3"]),
            local_job_id=str(rng.randrange(1, 5_000)), global_job_id=f"gsiftp://{prefix}/jobs/{seed}/{number}"))
    return jobs


_store_numbers = __import__("itertools").count()


def open_luts_store(backend: str, state_dir, server=None):
    """A store with the LUTS's indexes: embedded in ``state_dir``, or on the BaseX ``server`` under a
    database prefix of its own (tests in one process share one BaseX server)."""
    import os

    from gridcredit.config import StoreConfig
    from gridcredit.services.luts.luts import INDEXES
    from gridcredit.xmlstore import open_store

    if backend == "embedded":
        return open_store(StoreConfig(backend="embedded"), state_dir, indexes=INDEXES)
    from gridcredit.xmlstore._basex import BaseXStore
    return BaseXStore(state_dir / "journal", port=server.port, timeout_s=20, indexes=INDEXES,
                      db_prefix=f"l{os.getpid()}x{next(_store_numbers)}_")
