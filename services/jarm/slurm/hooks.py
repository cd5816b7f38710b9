"""``gridcredit jarm prolog`` and ``gridcredit jarm epilog``: Slurm's PrologSlurmctld and EpilogSlurmctld.

Both run on the controller as SlurmUser, off the submission path, one process per job (slurmctld
does not wait on them under its locks). They read the job from ``scontrol -o show job`` (the
environment says only its id) and tell the JARM over signed SOAP, with the controller's own
credential:

* **prolog** → ``Reserve`` (with the guaranteed quote the job presents in its comment,
  ``sbatch --comment=jarm-quote=<id>``, if any). Admitted (held, or unfunded by the site's policy): exit 0, the job runs.
  Refused: the reason goes into the job's ``Comment`` (``squeue -o %k``, ``scontrol show job``) and
  the job is put on a user hold (``scontrol uhold``: the user may release it with ``scontrol release``
  once the account has the credits), then exit 1 — Slurm requeues a batch job whose
  PrologSlurmctld fails, and the hold keeps it from starting again and again. The JARM not
  answering is a refusal too (the site's bank_unreachable policy applies at the JARM, which must
  be reached to apply it).
* **epilog** → ``Complete``: the JARM reads the usage from slurmdbd and charges it. Always exit 0:
  a run whose end does not reach the JARM now is found by the JARM's reconciler (Slurm no longer
  runs it), so nothing is lost.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass

from gridcredit.errors import GridcreditError

from ..reservations import JobKey
from ..types import JobRequest

log = logging.getLogger("gridcredit.services.jarm.slurm")

SCONTROL_TIMEOUT_S = 10.0
COMMENT_CHARS_MAX = 250
_PAIR = re.compile(r"(?:^|\s)([A-Za-z/:_]+)=(\S*)")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")
_MEMORY = re.compile(r"^(\d+)([KMGTP]?)$")
_QUOTE = re.compile(r"jarm-quote=([A-Za-z0-9][A-Za-z0-9_.:+-]{0,127})")
_MEMORY_MB = {"": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


class JobUnreadable(GridcreditError):
    """``scontrol`` could not say what the job is (it failed, or its answer is not a job line)."""


@dataclass(frozen=True, slots=True)
class SlurmJobRecord:
    key: JobKey
    user: str
    account: str
    request: JobRequest
    state: str
    quote_id: str = ""          # sbatch --comment=jarm-quote=<id>: the guaranteed quote the job presents


def time_limit_s(text: str) -> int:
    """scontrol's TimeLimit (``[D-]HH:MM:SS``) in seconds; UNLIMITED is refused (it cannot be held)."""
    match = _TIME.fullmatch(text)
    if match is None:
        raise JobUnreadable(f"the job's time limit {text!r} is not [D-]HH:MM:SS: a job needs a time limit to be "
                            f"reserved (sbatch --time)")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _memory_mb(text: str) -> int:
    """TRES mem (``4G``, ``256M``, ``512K``, a bare number in MB) in MB, a part of one MB counted whole."""
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise ValueError(f"memory {text!r}")
    number, unit = int(match.group(1)), match.group(2)
    return -(-number // 1024) if unit == "K" else number * _MEMORY_MB[unit]


def parse_job_line(line: str, cluster: str) -> SlurmJobRecord:
    """One line of ``scontrol -o show job <id>`` → the run's key, user, account and what it holds
    (its allocation's TRES once it starts: cpu, mem, node, gres/gpu)."""
    fields = dict(_PAIR.findall(line))
    try:
        if fields.get("ArrayTaskId", "").isdigit() and fields.get("ArrayJobId", "").isdigit():
            key = JobKey(cluster, int(fields["ArrayJobId"]), int(fields["ArrayTaskId"]),
                         int(fields.get("Restarts", "0")))
        else:
            key = JobKey(cluster, int(fields["JobId"]), None, int(fields.get("Restarts", "0")))
        user = fields["UserId"].split("(")[0]
        tres = dict(item.split("=", 1) for item in fields.get("TRES", "").split(",") if "=" in item)
        cores = int(tres.get("cpu", fields.get("NumCPUs", "1")))
        nodes = int(tres.get("node", fields.get("NumNodes", "1").split("-")[0]))
        memory_mb = _memory_mb(tres.get("mem", "0"))
        gpus = int(tres.get("gres/gpu", "0"))
        request = JobRequest(fields["Partition"], fields.get("QOS", "normal"), cores,
                             time_limit_s(fields.get("TimeLimit", "")), memory_mb, gpus, nodes)
        quote = _QUOTE.fullmatch(fields.get("Comment", ""))
        return SlurmJobRecord(key, user, fields["Account"], request, fields.get("JobState", ""),
                              quote.group(1) if quote else "")
    except (KeyError, ValueError) as error:
        raise JobUnreadable(f"scontrol's job line lacks or garbles {error}: {line[:200]!r}") from None


def _run(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(arguments, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})


def read_job(job_id: str, *, scontrol: str, cluster: str) -> SlurmJobRecord:
    if not job_id.isdigit():
        raise JobUnreadable(f"SLURM_JOB_ID is {job_id!r}, not a job id: run this as Slurm's PrologSlurmctld or "
                            f"EpilogSlurmctld")
    try:
        result = _run([scontrol, "-o", "show", "job", job_id])
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JobUnreadable(f"{scontrol} show job {job_id}: {error}") from None
    if result.returncode != 0 or not result.stdout.strip():
        raise JobUnreadable(f"{scontrol} show job {job_id} exited {result.returncode}: {result.stderr.strip()[:200]}")
    return parse_job_line(result.stdout.splitlines()[0], cluster)


def cluster_name(scontrol: str) -> str:
    """$SLURM_CLUSTER_NAME (the prolog's environment), else ``scontrol show config``'s ClusterName."""
    name = os.environ.get("SLURM_CLUSTER_NAME", "")
    if name:
        return name
    try:
        result = _run([scontrol, "show", "config"])
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JobUnreadable(f"{scontrol} show config: {error}") from None
    match = re.search(r"^ClusterName\s*=\s*(\S+)", result.stdout, re.M)
    if match is None:
        raise JobUnreadable(f"{scontrol} show config names no ClusterName")
    return match.group(1)


def refuse_job(job_id: str, message: str, *, scontrol: str) -> None:
    """Say why in the job's Comment and put it on a user hold (what the prolog does on a refusal)."""
    comment = re.sub(r"[^ -~]", "?", message)[:COMMENT_CHARS_MAX].replace('"', "'")
    for arguments in ([scontrol, "update", f"JobId={job_id}", f"Comment={comment}"], [scontrol, "uhold", job_id]):
        try:
            result = _run(arguments)
            if result.returncode != 0:
                log.warning("jarm prolog: %s exited %d: %s", " ".join(arguments[:3]), result.returncode,
                            result.stderr.strip()[:200])
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("jarm prolog: %s: %s", " ".join(arguments[:3]), error)


def prolog(client, *, scontrol: str, environ=os.environ) -> int:
    job_id = environ.get("SLURM_JOB_ID", "")
    try:
        job = read_job(job_id, scontrol=scontrol, cluster=cluster_name(scontrol))
        reservation = client.reserve(job.key, user=job.user, account=job.account, request=job.request,
                                     quote_id=job.quote_id or None)
    except GridcreditError as error:
        message = f"JARM: job {job_id} not started: {type(error).__name__}: {error}"
        log.warning("%s", message)
        refuse_job(job_id, message, scontrol=scontrol)
        print(message)
        return 1
    if reservation.admitted:
        print(f"jarm prolog: job {job_id} {reservation.reservation_id} {reservation.state} "
              f"(hold {reservation.hold_id or 'none'}, {reservation.estimate} credits)")
        return 0
    message = reservation.message or f"JARM: job {job_id} refused ({reservation.state})"
    refuse_job(job_id, message, scontrol=scontrol)
    print(message)
    return 1


def epilog(client, *, scontrol: str, environ=os.environ) -> int:
    job_id = environ.get("SLURM_JOB_ID", "")
    try:
        job = read_job(job_id, scontrol=scontrol, cluster=cluster_name(scontrol))
        reservation = client.complete(job.key)
    except GridcreditError as error:
        print(f"jarm epilog: job {job_id}: {type(error).__name__}: {error} (the JARM's reconciler finds the end)")
        return 0
    print(f"jarm epilog: job {job_id} {reservation.reservation_id} {reservation.state} "
          f"pending={reservation.pending or '-'}")
    return 0
