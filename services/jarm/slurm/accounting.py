"""What a finished Slurm job used, read from Slurm's accounting (``sacct`` over slurmdbd), and how full a
partition is (``sinfo``), for pricing.

    runs = read_job_usage(1234, timeout_s=10)                    # one JobUsage per array task / the job
    run = read_run_usage(1234, array_task=7, restarts=0, timeout_s=10)   # one run of one job (or task)
    cost = pricing.charge(table, run.usage(), basis)
    occupancy = partition_occupancy("batch", timeout_s=5)       # types.Occupancy: allocated of in-service CPUs

Where the numbers come from (Slurm 22.05; every command runs with ``LC_ALL=C``, ``TZ=UTC`` and
``SLURM_TIME_FORMAT=%s`` — times as seconds since the epoch, whatever the locale or time zone)::

    sacct --allusers --duplicates --noconvert --parsable2 --noheader -j <job> -o JobID,JobIDRaw,Cluster,User,
          Account,Partition,QOS,State,ExitCode,Submit,Start,End,ElapsedRaw,TotalCPU,MaxRSS,AllocTRES,
          TimelimitRaw,NodeList

* One line per job record, each followed by the lines of its steps (``<job>.batch``, ``.extern``,
  ``.interactive``, ``.<n>``). Not ``-X``: with it slurmdbd sends no steps and sacct prints a job's
  TotalCPU as 0 (sacct adds the steps' CPU times into the job's line itself, src/sacct/options.c).
* **TotalCPU** (user + system CPU of every step, from the steps' rusage at their end) is printed
  ``MM:SS.mmm`` below an hour, ``HH:MM:SS`` and ``D-HH:MM:SS`` above it (the milliseconds cut off).
  The job's line is sacct's own sum of its steps, exact before printing; the sum of the steps'
  printed values is cut per step. Both are lower bounds of the exact total: ``total_cpu_ms`` is the
  larger, and the two must agree within what the cutting explains (else the output is refused).
* **MaxRSS** is per step (the largest task's); ``max_rss_bytes`` is the largest of the run's steps.
  With ``--noconvert`` it is printed in bytes.
* **AllocTRES** (``billing=1,cpu=2,mem=512M,node=1,gres/gpu=1``): ``cpu`` → cores, ``mem`` → MB
  (``--noconvert`` keeps Slurm's own unit, MB), ``node`` → nodes, ``gres/gpu`` → GPUs (else the sum of
  the typed ``gres/gpu:<type>`` counts), ``billing``. A run that never started (never given nodes:
  NodeList ``None assigned``, even when sacct prints a Start, as for a requeued job cancelled while
  pending) has none: zeros, and ``start_us`` 0.
* **Elapsed** is ``ElapsedRaw`` (seconds), the time limit ``TimelimitRaw`` (minutes; UNLIMITED or
  Partition_Limit: none), ``ExitCode`` ``<code>:<signal>``, ``State`` its first word (``CANCELLED by
  <uid>`` gives ``cancelled_by_uid``).
* **Restarts.** sacct has no restart count. ``--duplicates`` lists every record of a job id: a job
  requeued leaves its run's record in state REQUEUED (REQUEUE_HOLD, REQUEUE_FED) and runs again in a
  new record. The runs of one job (or array task), in the order they were submitted, are the chain of
  records that ends with its newest and in which every earlier one is a REQUEUED one; the restart
  count of a run is its place in that chain (0 first), as slurmctld counts it (``SLURM_JOB_RESTART_COUNT``).
  An older record of the same id outside the chain is another job (job ids reset) and is left out.
  The newest run may be a REQUEUED one while slurmdbd has not yet the record of the next: ask for a run
  by its restart count (``read_run_usage``) rather than for the newest.
* **Array jobs.** ``1234_7`` is task 7 of array 1234 (``JobIDRaw`` is the task's own job id); asking
  for the array's id lists every task. Tasks that never started are one record ``1234_[8-10%2]``:
  each of them is a run that never started (zeros, ``job_id_raw`` the array's).
* Heterogeneous jobs (``1234+0``) and resized jobs (records in state RESIZING) are refused with a
  message saying so: their usage is split across records this module does not join.

When is a run's usage final? When slurmdbd has the run's record in an ended state, complete, and every
one of its steps ended too (slurmctld sends the steps' ends before the job's through the same queue, a
few seconds after the job ended). Until then ``JobNotAccounted`` (the caller comes back later); so also
when slurmdbd has no record of the job yet, and when it has a run's end before its start: a job requeued
and started again at once had, for a moment, a FAILED record without partition, QOS (``Unknown``) or time
limit, made from the end message and completed when the start message was applied.

The parser refuses what it does not expect rather than guessing: a line with another number of
fields, an id, time, duration, count or TRES value in another form, a step line that does not follow
its job's line: ``SlurmOutputInvalid`` quoting the line.

Partition occupancy (``partition_occupancy``, ``read_occupancies``, ``OccupancyReader``)::

    sinfo --all --noheader -o %R|%C|%F

``%C`` is a partition's CPUs allocated/idle/other/total (other: on nodes down, drained or otherwise
out of service), ``%F`` the same of its nodes (a node partly allocated counts as allocated); sinfo
prints a partition on several lines (one per group of nodes in one state), which are added up. A
partition's occupancy is its allocated CPUs (or nodes) of those in service (allocated + idle), as
``types.Occupancy`` (used, capacity); a partition with nodes but none in service counts as full. The
count is of nodes, not of jobs: nodes shared by several partitions are busy for each of them.

Errors (the exception tree of gridcredit/errors.py)::

    SlurmError             a Slurm command could not be run, timed out or failed (its message): try later
    ├── JobNotAccounted    slurmdbd has no final record of the run yet: try later
    └── SlurmOutputInvalid a Slurm command printed what this module refuses to read (the line is quoted)

Who may read: ``sacct --allusers`` shows every user's jobs only to root, SlurmUser, an operator or
administrator (``sacctmgr modify user jarm set adminlevel=operator``) or when PrivateData does not hide
jobs; otherwise it shows the caller's own jobs and the others look not accounted.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from gridcredit.errors import GridcreditError, invariant
from gridcredit.text import hidden_character

from ..types import Occupancy, Usage

SACCT_FIELDS = ("JobID", "JobIDRaw", "Cluster", "User", "Account", "Partition", "QOS", "State", "ExitCode", "Submit",
                "Start", "End", "ElapsedRaw", "TotalCPU", "MaxRSS", "AllocTRES", "TimelimitRaw", "NodeList")
SLURM_ENV = {"LC_ALL": "C", "TZ": "UTC", "SLURM_TIME_FORMAT": "%s"}
OUTPUT_BYTES_MAX = 64 * 2**20           # what one sacct or sinfo answer may be (a large array with its steps)
STDERR_QUOTED_MAX = 500
VALUE_CHARS_MAX = 256                   # a name (user, account, partition…) or a node list
ARRAY_TASKS_MAX = 100_000               # tasks one call expands from never-started ranges (Slurm: 4,000,001)
ARRAY_TASK_ID_MAX = 4_000_000           # Slurm's MaxArraySize is at most 4,000,001
JOB_ID_MAX = 2**32 - 1
TIMEOUT_S_MAX = 600.0
US_PER_S = 1_000_000
MB = 2**20

# A run's record in one of these states is over (its usage will not change); REQUEUE*: this run was
# ended by a requeue (the job runs again in a new record).
ENDED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                          "BOOT_FAIL", "DEADLINE", "REVOKED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
REQUEUED_STATES = frozenset({"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
RUNNING_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "CONFIGURING", "COMPLETING", "STOPPED", "SIGNALING",
                            "STAGE_OUT", "SPECIAL_EXIT", "RESV_DEL_HOLD", "UPDATE_DB", "POWER_UP_NODE"})
OCCUPANCY_UNITS = ("cpus", "nodes")


class SlurmError(GridcreditError):
    """A Slurm command could not be run, did not answer in time or failed: its message says which
    and what it printed. Nothing was read; asking again later may work."""


class JobNotAccounted(SlurmError):
    """slurmdbd has no final record of the run yet (not there, still pending or running, or its steps
    not ended): ask again a few seconds later. ``job`` names it (``1234``, ``1234_7``)."""

    def __init__(self, message: str, job: str) -> None:
        super().__init__(message)
        self.job = job


class SlurmOutputInvalid(SlurmError):
    """A Slurm command printed something this module refuses to read (the line and the field are
    quoted): never guessed at."""


# -- running the commands -------------------------------------------------------------------------


def _run(command: Sequence[str], *, timeout_s: float) -> str:
    """``command``'s standard output (UTF-8), under SLURM_ENV, bounded in time and size."""
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not 0 < timeout_s <= TIMEOUT_S_MAX:
        raise ValueError(f"timeout_s must be a number of seconds in (0, {TIMEOUT_S_MAX:g}], not {timeout_s!r}")
    name = os.path.basename(command[0])
    try:
        result = subprocess.run(list(command), capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                                env={**os.environ, **SLURM_ENV})
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{name} did not answer within {timeout_s:g} s (is slurmctld or slurmdbd busy or down?); "
                         f"try again later") from None
    except OSError as error:
        raise SlurmError(f"{name} could not be run: {error.strerror or error} (is Slurm installed? the JARM's "
                         f"slurm_bin_dir setting names its folder)") from None
    stderr = result.stderr[:STDERR_QUOTED_MAX].decode("utf-8", "replace").strip()
    if result.returncode != 0:
        raise SlurmError(f"{name} exited with status {result.returncode}: {stderr or '(it printed no reason)'}")
    if len(result.stdout) > OUTPUT_BYTES_MAX:
        raise SlurmError(f"{name} printed more than {OUTPUT_BYTES_MAX:,} bytes; ask for less (one job or array "
                         f"task at a time)")
    try:
        return result.stdout.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SlurmOutputInvalid(f"{name} printed bytes that are not UTF-8 (at byte {error.start})") from None


# -- the values of sacct's fields -----------------------------------------------------------------


class _Line:
    """One line of sacct's output, its fields by name; every reading names the field and quotes the line."""

    def __init__(self, text: str, number: int) -> None:
        self.text, self.number = text, number
        values = text.split("|")
        if len(values) != len(SACCT_FIELDS):
            raise self.invalid(f"has {len(values)} fields, not the {len(SACCT_FIELDS)} asked for "
                               f"({','.join(SACCT_FIELDS)})")
        self.values = dict(zip(SACCT_FIELDS, values))

    def invalid(self, why: str) -> SlurmOutputInvalid:
        shown = self.text if len(self.text) <= 300 else self.text[:300] + "…"
        return SlurmOutputInvalid(f"sacct's line {self.number} {why}: {shown!r}")

    def field_invalid(self, field: str, expected: str) -> SlurmOutputInvalid:
        return self.invalid(f"has {field} {self.values[field]!r}, not {expected}")

    def name(self, field: str, *, required: bool) -> str:
        value = self.values[field]
        if not value and required:
            raise self.field_invalid(field, "a name")
        if len(value) > VALUE_CHARS_MAX or hidden_character(value) or " " in value:
            raise self.field_invalid(field, f"a name (1-{VALUE_CHARS_MAX} visible characters)")
        return value

    def count(self, field: str, *, empty_is: int | None = None, high: int = 2**63 - 1) -> int:
        value = self.values[field]
        if value == "" and empty_is is not None:
            return empty_is
        if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) > high:
            raise self.field_invalid(field, f"a whole number 0..{high:,}")
        return int(value)

    def instant_us(self, field: str) -> int:
        """A time printed under SLURM_TIME_FORMAT=%s: seconds since the epoch; Unknown/None: 0 (not set)."""
        value = self.values[field]
        if value in ("Unknown", "None"):
            return 0
        if not re.fullmatch(r"[0-9]{1,12}", value):
            raise self.field_invalid(field, "seconds since the epoch (SLURM_TIME_FORMAT=%s), Unknown or None")
        return int(value) * US_PER_S

    def cpu_ms(self, field: str) -> int:
        value = self.values[field]
        if value == "":
            return 0
        ms = cpu_time_ms(value)
        if ms is None:
            raise self.field_invalid(field, "a CPU time ([D-]HH:MM:SS or MM:SS.mmm)")
        return ms

    def tres(self, field: str) -> dict[str, str]:
        value = self.values[field]
        if value == "":
            return {}
        found: dict[str, str] = {}
        for item in value.split(","):
            name, equals, amount = item.partition("=")
            if not equals or not re.fullmatch(r"[a-z][a-z0-9_/:.-]{0,63}", name) or name in found:
                raise self.field_invalid(field, "TRES as name=count,… (each name once)")
            found[name] = amount
        return found


_CPU_DAYS = re.compile(r"([0-9]{1,7})-([0-9]{2}):([0-9]{2}):([0-9]{2})")
_CPU_HOURS = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})")
_CPU_MINUTES = re.compile(r"([0-9]{2}):([0-9]{2})\.([0-9]{3})")


def cpu_time_ms(text: str) -> int | None:
    """sacct's TotalCPU (its ``_elapsed_time``) in milliseconds: ``D-HH:MM:SS``, ``HH:MM:SS`` (also
    ``00:MM:SS``), ``MM:SS.mmm``; None when ``text`` is in none of these forms or out of range."""
    days = hours = minutes = seconds = ms = 0
    if match := _CPU_DAYS.fullmatch(text):
        days, hours, minutes, seconds = (int(group) for group in match.groups())
        if hours > 23:
            return None
    elif match := _CPU_HOURS.fullmatch(text):
        hours, minutes, seconds = (int(group) for group in match.groups())
        if hours > 23:
            return None
    elif match := _CPU_MINUTES.fullmatch(text):
        minutes, seconds, ms = (int(group) for group in match.groups())
    else:
        return None
    if minutes > 59 or seconds > 59:
        return None
    return (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000 + ms


_MEMORY_UNITS = {"": 1, "K": 1024, "M": MB, "G": 1024 * MB, "T": 1024**2 * MB, "P": 1024**3 * MB}


def memory_bytes(text: str) -> int | None:
    """A whole amount with Slurm's unit letter (none: bytes; K, M, G, T, P: powers of 1024); None
    when it is not one."""
    match = re.fullmatch(r"([0-9]{1,19})([KMGTP]?)", text)
    if match is None:
        return None
    return int(match.group(1)) * _MEMORY_UNITS[match.group(2)]


# -- job records ----------------------------------------------------------------------------------


_JOB = re.compile(r"(?P<job>[0-9]{1,10})(?:_(?P<task>[0-9]{1,7})|_\[(?P<tasks>[0-9,%-]{1,10000})\])?")
_STEP = re.compile(r"(?P<job>[0-9]{1,10}(?:_[0-9]{1,7})?)\.(?P<step>batch|extern|interactive|[0-9]{1,10})")
_STEP_RAW = re.compile(r"[0-9]{1,10}\.(?:batch|extern|interactive|[0-9]{1,10})")


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    state: str
    total_cpu_ms: int
    max_rss_bytes: int


@dataclass(slots=True)
class _Record:
    """One job record (one run, or an array's never-started tasks) and the steps listed after it."""

    line: _Line
    job_text: str                      # JobID as printed
    job_id: int                        # the job's id; an array task's: the array's
    tasks: tuple[int, ...] | None      # None: a plain job; else the array tasks it stands for
    job_id_raw: int
    state: str
    steps: list


def _state(line: _Line, field: str = "State") -> tuple[str, int | None]:
    value = line.values[field]
    match = re.fullmatch(r"([A-Z_]{2,32})(?: by ([0-9]{1,10}))?", value)
    if match is None:
        raise line.field_invalid(field, "a Slurm job state (CANCELLED by <uid>)")
    state = match.group(1)
    if state not in ENDED_STATES | RUNNING_STATES | {"RESIZING"}:
        raise line.field_invalid(field, "a job state Slurm 22.05 has")
    return state, int(match.group(2)) if match.group(2) is not None else None


def array_tasks(text: str) -> tuple[int, ...] | None:
    """The task ids of an array's range as sacct prints it (``1-3,7,9-11%2``: ``%`` the throttle);
    None when it is not one, or names more than ARRAY_TASKS_MAX tasks."""
    spec, _, throttle = text.partition("%")
    if throttle and not throttle.isdigit():
        return None
    tasks: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"([0-9]{1,7})(?:-([0-9]{1,7}))?", part)
        if match is None:
            return None
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low or high > ARRAY_TASK_ID_MAX or len(tasks) + high - low + 1 > ARRAY_TASKS_MAX:
            return None
        tasks.extend(range(low, high + 1))
    return tuple(sorted(set(tasks)))


def _records(output: str) -> list[_Record]:
    records: list[_Record] = []
    for number, text in enumerate(output.splitlines(), start=1):
        if not text:
            continue
        line = _Line(text, number)
        job_text = line.values["JobID"]
        if "+" in job_text.split(".")[0]:
            raise line.invalid("is of a heterogeneous job (JobID <id>+<component>): the JARM does not price "
                               "those")
        if "." in job_text:
            step = _STEP.fullmatch(job_text)
            if step is None:
                raise line.field_invalid("JobID", "<job>.<step> (batch, extern, interactive or a number)")
            if not records or _tasks_range(records[-1]) or records[-1].job_text != step.group("job"):
                raise line.invalid("is a step that does not follow the line of its job")
            if not _STEP_RAW.fullmatch(line.values["JobIDRaw"]) or \
                    line.values["JobIDRaw"].split(".")[0] != str(records[-1].job_id_raw):
                raise line.field_invalid("JobIDRaw", f"{records[-1].job_id_raw}.<step>")
            state, _ = _state(line)
            records[-1].steps.append(_Step(step.group("step"), state, line.cpu_ms("TotalCPU"),
                                           line.count("MaxRSS", empty_is=0)))
            continue
        match = _JOB.fullmatch(job_text)
        if match is None:
            raise line.field_invalid("JobID", "a job id (1234), an array task (1234_7) or an array's tasks "
                                              "(1234_[8-10])")
        job_id = int(match.group("job"))
        if not 1 <= job_id <= JOB_ID_MAX:
            raise line.field_invalid("JobID", f"a job id 1..{JOB_ID_MAX:,}")
        if match.group("task") is not None:
            tasks: tuple[int, ...] | None = (int(match.group("task")),)
            if tasks[0] > ARRAY_TASK_ID_MAX:
                raise line.field_invalid("JobID", f"an array task id 0..{ARRAY_TASK_ID_MAX:,}")
        elif match.group("tasks") is not None:
            tasks = array_tasks(match.group("tasks"))
            if not tasks:
                raise line.field_invalid("JobID", f"an array's tasks (1-3,7%2), at most {ARRAY_TASKS_MAX:,}")
        else:
            tasks = None
        state, _ = _state(line)
        records.append(_Record(line, job_text, job_id, tasks, line.count("JobIDRaw", high=JOB_ID_MAX), state, []))
    return records


def _tasks_range(record: _Record) -> bool:
    """Whether the record stands for an array's never-started tasks (``1234_[8-10]``): those have no steps."""
    return record.tasks is not None and record.job_text != f"{record.job_id}_{record.tasks[0]}"


# -- the usage of one run -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobUsage:
    """One run of one job (or array task) as slurmdbd has it after it ended. Counts are whole numbers
    in the unit their name ends with; times are µs since the epoch (``*_us``, whole seconds as Slurm
    keeps them; 0: not set). A run that never started (was never given nodes) has ``start_us`` 0 and
    zero usage; a run given nodes that never launched its script (requeued by a failing
    PrologSlurmctld, or killed at launch) has its allocation and elapsed time but no steps."""

    cluster: str
    job_id: int                 # the job's id; an array task's: the array's (JobID 1234_7 → 1234)
    array_task: int | None      # None: not an array task
    restarts: int               # the run: 0 first, +1 for each requeue (SLURM_JOB_RESTART_COUNT)
    job_id_raw: int             # JobIDRaw: an array task's own job id (a task that never started: the array's)
    user: str                   # the local user
    account: str                # the Slurm account
    partition: str
    qos: str
    state: str                  # Slurm's state, its first word: COMPLETED, FAILED, CANCELLED, TIMEOUT, REQUEUED…
    cancelled_by_uid: int | None    # CANCELLED by <uid>
    exit_code: int              # ExitCode <code>:<signal>
    exit_signal: int
    submit_us: int
    start_us: int
    end_us: int
    elapsed_s: int              # ElapsedRaw
    total_cpu_ms: int           # TotalCPU of its steps (see the module docstring)
    max_rss_bytes: int          # MaxRSS: the largest of its steps
    cores: int                  # AllocTRES cpu
    memory_mb: int              # AllocTRES mem
    nodes: int                  # AllocTRES node
    gpus: int                   # AllocTRES gres/gpu
    billing: int                # AllocTRES billing
    time_limit_s: int | None    # TimelimitRaw × 60; None: UNLIMITED or the partition's
    node_list: str              # NodeList ("" when it never started)
    steps: int                  # how many steps it had

    def __post_init__(self) -> None:
        for name in ("job_id", "restarts", "job_id_raw", "exit_code", "exit_signal", "submit_us", "start_us", "end_us",
                     "elapsed_s", "total_cpu_ms", "max_rss_bytes", "cores", "memory_mb", "nodes", "gpus", "billing",
                     "steps"):
            value = getattr(self, name)
            invariant(type(value) is int and value >= 0, f"JobUsage.{name} is a count, not {value!r}")  # noqa: E721

    @property
    def job(self) -> str:
        """Slurm's name of the job: ``1234`` or ``1234_7``."""
        return f"{self.job_id}" if self.array_task is None else f"{self.job_id}_{self.array_task}"

    @property
    def key(self) -> tuple[str, int, int | None, int]:
        """(cluster, job id, array task, restarts): reservations.JobKey's fields."""
        return self.cluster, self.job_id, self.array_task, self.restarts

    @property
    def started(self) -> bool:
        """Whether the run was given nodes (one cancelled or refused while pending was not: nothing to
        charge). ``steps`` 0 for a started batch run: its script never ran (e.g. its prolog failed)."""
        return self.start_us > 0

    @property
    def max_rss_mb(self) -> int:
        """MaxRSS in MB (2**20 bytes), a part of an MB counted as a whole one."""
        return -(-self.max_rss_bytes // MB)

    def usage(self) -> Usage:
        """What the pricing core charges (types.Usage); refused (DomainError InvalidUsage) when it is
        out of types.py's limits, or names several partitions (a run that never started may)."""
        return Usage(self.partition, self.qos, elapsed_s=self.elapsed_s, total_cpu_ms=self.total_cpu_ms,
                     cores=self.cores, memory_mb=self.memory_mb, gpus=self.gpus, nodes=self.nodes,
                     max_rss_mb=self.max_rss_mb)


def _allocation(line: _Line) -> dict[str, int]:
    tres = line.tres("AllocTRES")
    counts = {}
    for name in ("cpu", "node", "billing"):
        value = tres.get(name, "0")
        if not re.fullmatch(r"[0-9]{1,12}", value):
            raise line.field_invalid("AllocTRES", f"a whole number of {name}")
        counts[name] = int(value)
    memory = memory_bytes(tres.get("mem", "0"))
    if memory is None or memory % MB:
        raise line.field_invalid("AllocTRES", "its mem as a whole number of MB (512M, 2G)")
    counts["mem"] = memory // MB
    gpus = [value for name, value in tres.items() if name == "gres/gpu"] or \
           [value for name, value in tres.items() if name.startswith("gres/gpu:")]
    if not all(re.fullmatch(r"[0-9]{1,7}", value) for value in gpus):
        raise line.field_invalid("AllocTRES", "a whole number of gres/gpu")
    counts["gpu"] = sum(int(value) for value in gpus)
    return counts


def _usage(record: _Record, task: int | None, restarts: int) -> JobUsage:
    line = record.line
    state, cancelled_by = _state(line)
    exit_match = re.fullmatch(r"([0-9]{1,3}):([0-9]{1,3})", line.values["ExitCode"])
    if exit_match is None:
        raise line.field_invalid("ExitCode", "<code>:<signal>")
    limit = line.values["TimelimitRaw"]
    if limit in ("UNLIMITED", "Partition_Limit", ""):
        time_limit_s = None
    else:
        time_limit_s = line.count("TimelimitRaw", high=2**32) * 60
    start_us = line.instant_us("Start")
    # given nodes: a pending run that was cancelled may have a Start (the cancel time) but no node
    started = start_us > 0 and line.values["NodeList"] not in ("None assigned", "") and not _tasks_range(record)
    allocation = _allocation(line) if started else {"cpu": 0, "node": 0, "billing": 0, "mem": 0, "gpu": 0}
    steps = record.steps
    total_cpu_ms = 0
    if steps:
        job_cpu_ms = line.cpu_ms("TotalCPU")           # sacct's sum, exact before printing
        steps_cpu_ms = sum(step.total_cpu_ms for step in steps)
        # each is cut below its printed precision (ms below an hour, whole seconds above): the job's by
        # less than a second, the steps' sum by less than a second per step
        if steps_cpu_ms >= job_cpu_ms + 1000 or job_cpu_ms >= steps_cpu_ms + 1000 * len(steps):
            raise line.invalid(f"has a TotalCPU ({job_cpu_ms} ms) that is not the sum of its steps' "
                               f"({steps_cpu_ms} ms)")
        total_cpu_ms = max(job_cpu_ms, steps_cpu_ms)
    node_list = line.values["NodeList"]
    if not started:
        node_list = ""
    elif not re.fullmatch(r"[A-Za-z0-9_.,\[\]-]{1,%d}" % VALUE_CHARS_MAX, node_list):
        raise line.field_invalid("NodeList", "a Slurm host list")
    return JobUsage(
        cluster=line.name("Cluster", required=True), job_id=record.job_id, array_task=task, restarts=restarts,
        job_id_raw=record.job_id_raw, user=line.name("User", required=True),
        account=line.name("Account", required=True), partition=line.name("Partition", required=True),
        qos=line.name("QOS", required=False), state=state, cancelled_by_uid=cancelled_by,
        exit_code=int(exit_match.group(1)), exit_signal=int(exit_match.group(2)),
        submit_us=line.instant_us("Submit"), start_us=start_us if started else 0,
        end_us=line.instant_us("End"), elapsed_s=line.count("ElapsedRaw", high=2**32) if started else 0,
        total_cpu_ms=total_cpu_ms, max_rss_bytes=max((step.max_rss_bytes for step in steps), default=0),
        cores=allocation["cpu"], memory_mb=allocation["mem"], nodes=allocation["node"], gpus=allocation["gpu"],
        billing=allocation["billing"], time_limit_s=time_limit_s, node_list=node_list, steps=len(steps))


def _name_of(job_id: int, task: int | None) -> str:
    return f"{job_id}" if task is None else f"{job_id}_{task}"


def _runs(records: Iterable[_Record]) -> dict[tuple[int, int | None], list[_Record]]:
    """The runs of each (job, array task), oldest first: the chain of records ending with the newest in
    which every earlier record is a requeued one (see the module docstring)."""
    found: dict[tuple[int, int | None], list[_Record]] = {}
    for record in records:
        for task in record.tasks or (None,):
            found.setdefault((record.job_id, task), []).append(record)
    chains = {}
    for key, listed in found.items():
        listed.sort(key=lambda record: record.line.instant_us("Submit"))      # stable: sacct's order on a tie
        chain = [listed[-1]]
        for earlier in reversed(listed[:-1]):
            if earlier.state not in REQUEUED_STATES:
                break                            # another job under the same id (job ids reset): not this one's
            chain.insert(0, earlier)
        chains[key] = chain
    return chains


def parse_sacct(output: str, *, restarts: int | None = None, job: str | None = None) -> list[JobUsage]:
    """The runs in sacct's output (SACCT_FIELDS, ``--parsable2 --noheader --duplicates``): the newest
    run of each job or array task, or its run ``restarts``; sorted by job and task; with ``job`` an
    array task (``1234_7``) only that task's (sacct may list it within its array's never-started range).
    Raises SlurmOutputInvalid for a line it refuses, JobNotAccounted when a run is not over (or not
    there)."""
    chains = _runs(_records(output))
    usages = []
    for (job_id, task), chain in sorted(chains.items(), key=lambda item: (item[0][0], -1 if item[0][1] is None
                                                                          else item[0][1])):
        name = _name_of(job_id, task)
        if job is not None and "_" in job and name != job:
            continue
        if restarts is None:
            index = len(chain) - 1
        elif restarts < len(chain):
            index = restarts
        else:
            raise JobNotAccounted(f"slurmdbd has runs 0..{len(chain) - 1} of job {name}, not run {restarts} (yet): "
                                  f"ask again later", name)
        record = chain[index]
        if record.state == "RESIZING":
            raise record.line.invalid("is of a resized job (state RESIZING): the JARM does not price those")
        if record.state not in ENDED_STATES:
            raise JobNotAccounted(f"job {name} is {record.state} in slurmdbd: its usage is known once it ended; "
                                  f"ask again later", name)
        if record.line.values["Partition"] == "":
            # its end came first: slurmdbd made the record from the end message (no partition, QOS, time
            # limit) and completes it when the start message is applied
            raise JobNotAccounted(f"slurmdbd has the end of job {name} (run {index}) but not yet its start record "
                                  f"(no partition); ask again a few seconds later", name)
        running = [step.name for step in record.steps if step.state not in ENDED_STATES]
        if running:
            raise JobNotAccounted(f"job {name} has ended but slurmdbd has its step(s) {', '.join(running)} still "
                                  f"running; ask again a few seconds later", name)
        usages.append(_usage(record, task, index))
    return usages


def _job_argument(job_id: int | str, array_task: int | None = None) -> str:
    text = str(job_id) if type(job_id) is int else job_id      # noqa: E721 — bool is not a job id
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,10}(_[0-9]{1,7})?", text) or \
            not 1 <= int(text.split("_")[0]) <= JOB_ID_MAX:
        raise ValueError(f"a job id is a number 1..{JOB_ID_MAX} (or <job>_<task>), not {job_id!r}")
    if array_task is not None:
        if type(array_task) is not int or not 0 <= array_task <= ARRAY_TASK_ID_MAX or "_" in text:  # noqa: E721
            raise ValueError(f"an array task is a number 0..{ARRAY_TASK_ID_MAX} of a job id without one, not "
                             f"{array_task!r}")
        text = f"{text}_{array_task}"
    return text


def sacct_command(job: str, *, sacct: str = "sacct", cluster: str | None = None) -> list[str]:
    """The sacct command line that reads ``job`` (``1234`` or ``1234_7``)."""
    command = [sacct, "--allusers", "--duplicates", "--noconvert", "--parsable2", "--noheader", "-j", job,
               "-o", ",".join(SACCT_FIELDS)]
    if cluster is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", cluster):
            raise ValueError(f"a cluster name is 1-64 characters of A-Z a-z 0-9 _ . -, not {cluster!r}")
        command[1:1] = ["-M", cluster]
    return command


def read_job_usage(job_id: int | str, *, sacct: str = "sacct", timeout_s: float, cluster: str | None = None,
                   restarts: int | None = None) -> list[JobUsage]:
    """The usage of job ``job_id`` (``1234``, or ``1234_7`` for one array task; an array's id: each of
    its tasks) from slurmdbd: one JobUsage per job or array task, its newest run or run ``restarts``.

    Raises JobNotAccounted when slurmdbd has no record of it yet, or a run is not over (ask again a
    few seconds later), SlurmError when sacct fails or times out, SlurmOutputInvalid for output it
    refuses to read."""
    job = _job_argument(job_id)
    if restarts is not None and (type(restarts) is not int or restarts < 0):  # noqa: E721
        raise ValueError(f"a restart count is a whole number ≥ 0, not {restarts!r}")
    output = _run(sacct_command(job, sacct=sacct, cluster=cluster), timeout_s=timeout_s)
    usages = parse_sacct(output, restarts=restarts, job=job)
    if not usages:
        raise JobNotAccounted(f"slurmdbd has no record of job {job} (yet): a job's record is written a few "
                              f"seconds after it is submitted or ends; ask again later", job)
    if cluster is not None and any(usage.cluster != cluster for usage in usages):
        raise SlurmOutputInvalid(f"sacct -M {cluster} answered records of cluster "
                                 f"{sorted({usage.cluster for usage in usages})}")
    return usages


def read_run_usage(job_id: int, *, array_task: int | None = None, restarts: int = 0, sacct: str = "sacct",
                   timeout_s: float, cluster: str | None = None) -> JobUsage:
    """The usage of one run: job ``job_id`` (an array task: the array's id and ``array_task``), its run
    ``restarts`` (0 first) — reservations.JobKey's fields. Raises as ``read_job_usage``."""
    job = _job_argument(job_id, array_task)
    usages = read_job_usage(job, sacct=sacct, timeout_s=timeout_s, cluster=cluster, restarts=restarts)
    found = [usage for usage in usages if usage.job == job]
    if len(found) != 1:
        raise SlurmOutputInvalid(f"sacct -j {job} answered the runs of {[usage.job for usage in usages]}, "
                                 f"not one of job {job}")
    return found[0]


# -- partition occupancy --------------------------------------------------------------------------


SINFO_FORMAT = "%R|%C|%F"


def sinfo_command(*, sinfo: str = "sinfo") -> list[str]:
    return [sinfo, "--all", "--noheader", "-o", SINFO_FORMAT]


def parse_sinfo(output: str, *, unit: str = "cpus") -> dict[str, Occupancy]:
    """Each partition's occupancy from ``sinfo --all --noheader -o '%R|%C|%F'`` (several lines of one
    partition added up), in ``unit`` (cpus or nodes). SlurmOutputInvalid for a line it refuses."""
    if unit not in OCCUPANCY_UNITS:
        raise ValueError(f"occupancy is counted in {' or '.join(OCCUPANCY_UNITS)}, not {unit!r}")
    totals: dict[str, list[int]] = {}
    for number, text in enumerate(output.splitlines(), start=1):
        if not text:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.+-]{1,64})\|([0-9]{1,12})/([0-9]{1,12})/([0-9]{1,12})/([0-9]{1,12})\|"
                             r"([0-9]{1,12})/([0-9]{1,12})/([0-9]{1,12})/([0-9]{1,12})", text)
        if match is None:
            raise SlurmOutputInvalid(f"sinfo's line {number} is not <partition>|<CPUs A/I/O/T>|<nodes A/I/O/T>: "
                                     f"{text[:300]!r}")
        counts = [int(group) for group in match.groups()[1:]]
        for offset in (0, 4):
            allocated, idle, other, total = counts[offset:offset + 4]
            if allocated + idle + other != total:
                raise SlurmOutputInvalid(f"sinfo's line {number} has counts that do not add up: {text[:300]!r}")
        chosen = counts[0:4] if unit == "cpus" else counts[4:8]
        sums = totals.setdefault(match.group(1), [0, 0, 0, 0])
        for index, value in enumerate(chosen):
            sums[index] += value
    occupancies = {}
    for partition, (allocated, idle, _other, total) in totals.items():
        if total == 0:
            continue                                  # a partition without nodes: none to price by
        in_service = allocated + idle
        # nothing in service: as full as a partition can be
        occupancies[partition] = Occupancy(allocated, in_service) if in_service else Occupancy(total, total)
    return occupancies


def read_occupancies(*, sinfo: str = "sinfo", timeout_s: float, unit: str = "cpus") -> dict[str, Occupancy]:
    """Every partition's occupancy now (one sinfo call); see ``parse_sinfo``."""
    return parse_sinfo(_run(sinfo_command(sinfo=sinfo), timeout_s=timeout_s), unit=unit)


def partition_occupancy(partition: str, *, sinfo: str = "sinfo", timeout_s: float, unit: str = "cpus") -> Occupancy:
    """How full ``partition`` is now (types.Occupancy in ``unit``): SlurmError when Slurm has no such
    partition (or it has no nodes) or sinfo fails."""
    return _pick(read_occupancies(sinfo=sinfo, timeout_s=timeout_s, unit=unit), partition)


def _pick(occupancies: dict[str, Occupancy], partition: str) -> Occupancy:
    found = occupancies.get(partition)
    if found is None:
        known = ", ".join(sorted(occupancies)) or "none"
        raise SlurmError(f"Slurm has no partition {partition!r} with nodes (it has {known})")
    return found


class OccupancyReader:
    """Partition occupancy for a service: one sinfo call serves every partition for ``max_age_s``
    (so quotes do not each ask slurmctld); safe to share between threads."""

    def __init__(self, *, sinfo: str = "sinfo", timeout_s: float = 5.0, max_age_s: float = 10.0,
                 unit: str = "cpus", clock=time.monotonic) -> None:
        if unit not in OCCUPANCY_UNITS:
            raise ValueError(f"occupancy is counted in {' or '.join(OCCUPANCY_UNITS)}, not {unit!r}")
        self.sinfo, self.timeout_s, self.max_age_s, self.unit, self.clock = sinfo, timeout_s, max_age_s, unit, clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._occupancies: dict[str, Occupancy] = {}

    def occupancy(self, partition: str) -> Occupancy:
        """``partition``'s occupancy, read at most ``max_age_s`` ago; raises as ``partition_occupancy``."""
        with self._lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at > self.max_age_s:
                self._occupancies = read_occupancies(sinfo=self.sinfo, timeout_s=self.timeout_s, unit=self.unit)
                self._read_at = now
            return _pick(self._occupancies, partition)


__all__ = ["ARRAY_TASKS_MAX", "JobNotAccounted", "JobUsage", "OccupancyReader", "SACCT_FIELDS", "SlurmError",
           "SlurmOutputInvalid", "array_tasks", "cpu_time_ms", "memory_bytes", "parse_sacct", "parse_sinfo",
           "partition_occupancy", "read_job_usage", "read_occupancies", "read_run_usage", "sacct_command",
           "sinfo_command"]
