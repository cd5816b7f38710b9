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
  be reached to apply it): the Comment then says so plainly (``refusal_comment``) — the JARM's
  address, what the connection did, and the ``scontrol release`` that starts the job once it answers.
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

from gridcredit.client import OutcomeUnknown
from gridcredit.errors import GridcreditError, RemoteFault

from ..reservations import JobKey
from ..types import JobRequest

log = logging.getLogger("gridcredit.services.jarm.slurm")

SCONTROL_TIMEOUT_S = 10.0
COMMENT_CHARS_MAX = 250
JARM_UNREACHABLE = "JarmUnreachable"
JARM_FAILED = "JarmFailed"
# what a connection that brought no answer did, from the words of the error the client raised
# (requests/urllib3/ssl put them in its text), first match wins
_NO_ANSWER = (("connection refused", ("Connection refused", "Errno 111")),
              ("its name is not known", ("Name or service not known", "NameResolution", "getaddrinfo",
                                         "name resolution", "nodename nor servname")),
              ("its TLS certificate is not trusted here", ("CERTIFICATE_VERIFY_FAILED",)),
              ("timed out", ("timed out", "Timeout")),
              ("connection reset or closed", ("Connection reset", "Errno 104", "RemoteDisconnected",
                                              "Connection aborted", "EOF", "closed")),
              ("network unreachable", ("Network is unreachable", "No route to host")))
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
    comment = _comment(message)
    for arguments in ([scontrol, "update", f"JobId={job_id}", f"Comment={comment}"], [scontrol, "uhold", job_id]):
        try:
            result = _run(arguments)
            if result.returncode != 0:
                log.warning("jarm prolog: %s exited %d: %s", " ".join(arguments[:3]), result.returncode,
                            result.stderr.strip()[:200])
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("jarm prolog: %s: %s", " ".join(arguments[:3]), error)


def _no_answer_reason(error: GridcreditError) -> str:
    text = str(error)
    for reason, words in _NO_ANSWER:
        if any(word in text for word in words):
            return reason
    return "no answer"


def refusal_comment(job_id: str, error: GridcreditError, *, jarm_url: str) -> str:
    """What the prolog writes in the Comment of a job it did not start because of ``error`` (the
    Reserve call's, or reading the job): ``TypeName: message`` a user can act on, within Slurm's
    comment. The JARM not answering names its address, why (refused, timed out…) and the release."""
    release = f"release the job: scontrol release {job_id}"
    if isinstance(error, RemoteFault):
        if error.faultcode.split(":")[-1].startswith("Client"):         # the JARM's decision, in its words
            text = f"{error.code}: {error.text}"
        else:
            text = f"{JARM_FAILED}: the JARM at {jarm_url} failed ({error.code}); once it works, {release}"
    elif type(error) is GridcreditError or isinstance(error, OutcomeUnknown):   # the client's "no answer"
        text = (f"{JARM_UNREACHABLE}: the JARM at {jarm_url} did not answer ({_no_answer_reason(error)}); "
                f"once it does, {release}")
    else:
        text = f"{type(error).__name__}: {error}"
    return _comment(f"JARM: job {job_id} held, not started: {text}")


def _comment(message: str) -> str:
    """Printable ASCII without double quotes, at most COMMENT_CHARS_MAX (cut at a word, with "...")."""
    comment = re.sub(r"[^ -~]", "?", message).replace('"', "'")
    if len(comment) > COMMENT_CHARS_MAX:
        comment = comment[:COMMENT_CHARS_MAX - 3].rsplit(" ", 1)[0] + "..."
    return comment


def prolog(client, *, scontrol: str, environ=os.environ) -> int:
    job_id = environ.get("SLURM_JOB_ID", "")
    try:
        job = read_job(job_id, scontrol=scontrol, cluster=cluster_name(scontrol))
        reservation = client.reserve(job.key, user=job.user, account=job.account, request=job.request,
                                     quote_id=job.quote_id or None)
    except GridcreditError as error:
        message = refusal_comment(job_id, error, jarm_url=client.url)
        log.warning("%s (%s: %s)", message, type(error).__name__, error)
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
