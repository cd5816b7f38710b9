"""Which runs Slurm still has: ``scontrol -o show jobs`` (one job a line), read by the reconciler.

A run (reservations.JobKey) is alive while its job is listed in a state that holds resources
(running, configuring, completing, suspended…) *with the same restart count*: a requeued job is
listed again as pending under the same id with its count one higher — its earlier run has ended. A
job Slurm no longer lists (it forgets finished jobs after MinJobAge) has ended too.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess

from ..reservations import JobKey

log = logging.getLogger("gridcredit.services.jarm.slurm")

ALIVE_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING",
                          "STAGE_OUT"})
OUTPUT_BYTES_MAX = 256 * 1024 * 1024
_FIELD = re.compile(rb"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Restarts|TimeLimit)=(\S+)")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")


def _time_limit_s(text: str) -> int | None:
    match = _TIME.fullmatch(text)
    if match is None:
        return None            # UNLIMITED, Partition_Limit…: nothing to extend a hold to
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_jobs(output: bytes) -> dict[tuple[int, int | None], tuple[str, int, int | None]]:
    """``(job id, array task)`` → ``(state, restarts, time limit in seconds or None)`` of every job line
    (an array's pending remainder, e.g. ``ArrayTaskId=4-10``, is not a run and is skipped)."""
    jobs: dict[tuple[int, int | None], tuple[str, int, int | None]] = {}
    for line in output.splitlines():
        fields = {name.decode(): value.decode("ascii", "replace") for name, value in _FIELD.findall(line)}
        if "JobId" not in fields or "JobState" not in fields or not fields["JobId"].isdigit():
            continue
        task = fields.get("ArrayTaskId")
        if task is not None and not task.isdigit():
            continue
        if task is not None and fields.get("ArrayJobId", "").isdigit():
            key = (int(fields["ArrayJobId"]), int(task))
        else:
            key = (int(fields["JobId"]), None)
        restarts = int(fields["Restarts"]) if fields.get("Restarts", "").isdigit() else 0
        jobs[key] = (fields["JobState"], restarts, _time_limit_s(fields.get("TimeLimit", "")))
    return jobs


def alive(keys: list[JobKey], jobs: dict[tuple[int, int | None], tuple[str, int, int | None]]
          ) -> dict[JobKey, int | None]:
    """The runs among ``keys`` Slurm still has, each with its time limit now (it may have been raised)."""
    found = {}
    for key in keys:
        state, restarts, limit_s = jobs.get((key.job_id, key.array_task), ("", -1, None))
        if state in ALIVE_STATES and restarts == key.restarts:
            found[key] = limit_s
    return found


def running_runs(keys: list[JobKey], *, scontrol: str = "scontrol", timeout_s: float = 10.0
                 ) -> dict[JobKey, int | None] | None:
    """The runs among ``keys`` that Slurm still has, with their time limits; None when Slurm could
    not be asked (then no run may be taken for ended)."""
    try:
        result = subprocess.run([scontrol, "-o", "show", "jobs"], capture_output=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})   # (SLURM_CONF kept)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("jarm: Slurm's jobs not read (%s): no run is taken for ended now", error)
        return None
    if result.returncode != 0 or len(result.stdout) > OUTPUT_BYTES_MAX:
        log.warning("jarm: Slurm's jobs not read: %s exited %d: %s", scontrol, result.returncode,
                    result.stderr[:200].decode(errors="replace").strip())
        return None
    return alive(keys, parse_jobs(result.stdout))
