"""Run ARC's own SGAS accounting publisher (Debian ``nordugrid-arc-arex`` 6.17) against a URL.

A helper for tests (imported explicitly, not a test file). It drives ARC's code, unchanged, the
way an ARC compute element does, with nothing of A-REX running:

1. an **accounting database** in ARC's own layout: ``<controldir>/accounting/accounting.db``,
   created from ARC's schema file (``/usr/share/arc/sql-schema/arex_accounting_db_schema_v1.sql``,
   as A-REX's ``AccountingDBSQLite`` does) and filled with one AAR row per ``ArcJob`` (names,
   status and extra-info keys as A-REX's ``AAR::FetchJobData`` writes them);
2. an ``arc.conf`` with ``[common]`` host credentials and CA directory, ``[arex] controldir`` and
   one ``[arex/jura/sgas: <name>]`` target, turned into the runtime configuration by ARC's
   ``arcconfig-parser --save`` (as ``arc-arex-start`` does);
3. the publisher itself, in a subprocess with ARC's interpreter (``/usr/bin/python3``), killed at
   ``timeout_s`` (ARC sets no socket timeout of its own):

   - ``ArcSite.run_jura()``: ``/usr/lib/arc/jura-ng -c <runtime config>``, exactly the command
     A-REX runs every hour (``JobLog::RunReporter``): regular publishing, which records how far it
     got in ``<controldir>/accounting/publishing.db``;
   - ``ArcSite.republish()``: ``arcctl accounting republish -t <name> -b … -e …``, the admin's
     command for a time range (same sender code, no publishing state).

``publish_with_arc(jobs, target_url, cert, key, ca_dir)`` does all three in a temporary directory.
``ArcSite.usage_records_xml()`` returns the ``UsageRecords`` document ARC's own ``UsageRecord``
class builds from the database (what a publish would POST, one batch), without any network.

What ARC sends, and the surprises in it, are in ``docs/arc-sgas.md``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

ARC_PYTHON = Path("/usr/bin/python3")                       # Debian's interpreter, ARC's modules are on its path
ARC_JURA = Path("/usr/lib/arc/jura-ng")                      # the reporter A-REX runs
ARC_CONFIG_PARSER = Path("/usr/lib/arc/arcconfig-parser")
ARC_ARCCTL = Path("/usr/sbin/arcctl")
ARC_SCHEMA = Path("/usr/share/arc/sql-schema/arex_accounting_db_schema_v1.sql")
ARC_PUBLISHING_MODULE = Path("/usr/lib/python3/dist-packages/arc/control/AccountingPublishing.py")
ARC_PATHS_MODULE = Path("/usr/lib/python3/dist-packages/arc/paths_dist.py")
ARC_VERSION_EXPECTED = "6.17.0"

DEFAULT_TARGET_NAME = "gridcredit"
DEFAULT_SUBMIT_HOST = "ce.example.org"

# Environment variables of our venv that must not leak into ARC's interpreter.
_PYTHON_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "PYTHONSAFEPATH")


def arc_missing() -> str | None:
    """Why ARC's publisher cannot run here (a reason for ``pytest.skip``), or None if it can."""
    for path in (ARC_PYTHON, ARC_JURA, ARC_CONFIG_PARSER, ARC_ARCCTL, ARC_SCHEMA, ARC_PUBLISHING_MODULE):
        if not path.exists():
            return f"{path} is missing: install the Debian package nordugrid-arc-arex (scripts/test.sh does)"
    return None


def arc_version() -> str | None:
    """ARC's version as its Python package states it (``arc.paths_dist.ARC_VERSION``)."""
    try:
        text = ARC_PATHS_MODULE.read_text()
    except OSError:
        return None
    match = re.search(r"^ARC_VERSION\s*=\s*'([^']*)'", text, re.M)
    return match.group(1) if match else None


def _epoch(value: dt.datetime | int | float) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("give aware datetimes (UTC): ARC stores Unix timestamps")
        return int(value.timestamp())
    return int(value)


@dataclasses.dataclass(frozen=True)
class ArcTransfer:
    """One data transfer of a job (ARC's ``DataTransfers`` row)."""
    url: str
    size_bytes: int
    start: dt.datetime | int
    end: dt.datetime | int
    kind: str = "input"          # "input", "cache_input" or "output"

    _KIND_CODES = {"input": 10, "cache_input": 11, "output": 20}   # A-REX's enum, as AccountingDB.py reads it

    def code(self) -> int:
        return self._KIND_CODES[self.kind]


@dataclasses.dataclass(frozen=True)
class ArcJob:
    """A finished job as A-REX records it in its accounting database (one AAR).

    Times are aware datetimes or Unix seconds; memory in kB; durations in seconds; volumes in bytes.
    ``fqans``: the job's VOMS FQANs, the first being the main one; the WLCG VO is taken from it as
    A-REX does (``/atlas/Role=pilot`` → ``atlas``) unless ``vo`` is given. ``extra`` holds
    ``JobExtraInfo`` keys A-REX writes: jobname, lrms, clienthost, projectname, localuser,
    nodenames, wninstance, systemsoftware, benchmark.
    """
    job_id: str
    user_dn: str
    end_time: dt.datetime | int
    walltime_s: int = 3600
    cpu_user_s: int = 3000
    cpu_kernel_s: int = 60
    submit_time: dt.datetime | int | None = None      # default: end_time - walltime_s - 60
    local_job_id: str | None = None
    status: str = "completed"                          # "completed" or "failed" (ARC publishes only these)
    exit_code: int = 0
    queue: str = "grid"
    endpoint_url: str = f"https://{DEFAULT_SUBMIT_HOST}:443/arex"
    interface: str = "org.nordugrid.arcrest"
    fqans: tuple[str, ...] = ()
    vo: str | None = None
    node_count: int = 1
    cpu_count: int = 1
    used_memory_kb: int = 1024
    used_virtual_memory_kb: int = 2048
    used_scratch_bytes: int = 0
    stage_in_bytes: int = 0
    stage_out_bytes: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    runtime_environments: tuple[str, ...] = ()
    transfers: tuple[ArcTransfer, ...] = ()

    def submit_host(self) -> str:
        """The host ARC names in ``MachineName`` and in the record id (``AAR.submithost``)."""
        return self.endpoint_url.split(":")[1][2:].split("/")[0]

    def record_id(self) -> str:
        """The ``urf:recordId`` ARC gives this job's usage record."""
        return f"ur-{self.submit_host()}-{self.job_id}"

    def wlcg_vo(self) -> str:
        if self.vo is not None:
            return self.vo
        if not self.fqans:
            return ""
        return self.fqans[0].lstrip("/").split("/")[0]

    def end_epoch(self) -> int:
        return _epoch(self.end_time)

    def submit_epoch(self) -> int:
        if self.submit_time is not None:
            return _epoch(self.submit_time)
        return self.end_epoch() - self.walltime_s - 60


@dataclasses.dataclass
class ArcPublishResult:
    """What one run of ARC's publisher did.

    ``ok``: ARC sent at least one batch and counted every batch a success (HTTP 200), and, for
    regular publishing, moved its published-until mark. ``http_statuses``: one entry per POSTed
    batch, in order: 200, the failing status, or None when no HTTP answer came (TLS or connection
    error; ARC stops at the first failed batch). ``published_until``: ARC's mark for the target
    after the run (Unix seconds), for regular publishing.
    """
    ok: bool
    http_status: int | None
    http_statuses: list[int | None]
    batches: int
    returncode: int | None
    timed_out: bool
    published_until: int | None
    log_text: str
    command: list[str]

    def errors(self) -> list[str]:
        """ARC's ERROR lines, for assertion messages."""
        return [line for line in self.log_text.splitlines() if "[ERROR]" in line]


_POST_LINE = "[POSTing jobrecords batch to SGAS]"
_SENT_LINE = "[Records have been sent to SGAS server"
_FAILED_STATUS = re.compile(r"\[Failed to POST records to SGAS server .*? Error code (\d+) returned")
_CONNECT_ERROR = "[Error connecting to SGAS server"
_CONNECT_INIT = "[Initializing HTTPS connection to"


def parse_sender_log(log_text: str) -> list[int | None]:
    """HTTP outcome of each batch from ARC's ``ARC.Accounting.SGAS`` log lines (DEBUG level).

    The sender logs "Initializing HTTPS connection" per batch, then either "Records have been sent"
    (status 200), "Failed to POST … Error code N" or "Error connecting …" (no HTTP answer: TLS,
    refused connection, or an exception while encoding the body)."""
    statuses: list[int | None] = []
    pending = False
    for line in log_text.splitlines():
        if "[ARC.Accounting.SGAS]" not in line:
            continue
        if _CONNECT_INIT in line:
            if pending:
                statuses.append(None)
            pending = True
        elif _SENT_LINE in line and pending:
            statuses.append(200)
            pending = False
        elif (match := _FAILED_STATUS.search(line)) and pending:
            statuses.append(int(match.group(1)))
            pending = False
        elif _CONNECT_ERROR in line and pending:
            statuses.append(None)
            pending = False
    if pending:            # killed (timeout) while a batch was in flight
        statuses.append(None)
    return statuses


class ArcSite:
    """An ARC compute element's accounting state and configuration in ``root``, without A-REX.

    The attributes may be changed between runs; the configuration is written again before each.
    ``vomsless_vo`` / ``vo_groups`` are the ``[arex/jura]`` options of the same names (ARC 6.17
    writes ``vo_group`` values as malformed XML: see docs/arc-sgas.md).
    """

    def __init__(self, root: Path | str, *, target_url: str, cert_path: Path | str, key_path: Path | str,
                 ca_dir: Path | str, target_name: str = DEFAULT_TARGET_NAME, batch_size: int = 50,
                 hostname: str = DEFAULT_SUBMIT_HOST, localid_prefix: str | None = None,
                 vomsless_vo: str | None = None, vo_groups: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.target_url = target_url
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.ca_dir = Path(ca_dir)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", target_name):
            raise ValueError(f"not an arc.conf block name: {target_name!r}")
        self.target_name = target_name
        self.batch_size = batch_size
        self.hostname = hostname
        self.localid_prefix = localid_prefix
        self.vomsless_vo = vomsless_vo
        self.vo_groups = tuple(vo_groups)
        self.control_dir = self.root / "control"
        self.accounting_dir = self.control_dir / "accounting"
        self.db_path = self.accounting_dir / "accounting.db"
        self.publishing_db_path = self.accounting_dir / "publishing.db"
        self.arc_conf = self.root / "arc.conf"
        self.runtime_conf = self.root / "arc.runtime.conf"
        self.accounting_dir.mkdir(parents=True, exist_ok=True)
        self._create_database()

    # ------------------------------------------------------------------ accounting database
    @property
    def target_id(self) -> str:
        """The target's key in ARC's publishing state (its arc.conf block name)."""
        return f"arex/jura/sgas:{self.target_name}"

    def _create_database(self) -> None:
        if self.db_path.exists():
            return
        with sqlite3.connect(self.db_path) as db:
            db.executescript(ARC_SCHEMA.read_text())

    @staticmethod
    def _name_id(db: sqlite3.Connection, table: str, name: str) -> int:
        row = db.execute(f"SELECT ID FROM {table} WHERE Name = ?", (name,)).fetchone()
        if row:
            return row[0]
        return db.execute(f"INSERT INTO {table}(Name) VALUES (?)", (name,)).lastrowid

    @staticmethod
    def _endpoint_id(db: sqlite3.Connection, interface: str, url: str) -> int:
        row = db.execute("SELECT ID FROM Endpoints WHERE Interface = ? AND URL = ?", (interface, url)).fetchone()
        if row:
            return row[0]
        return db.execute("INSERT INTO Endpoints(Interface, URL) VALUES (?, ?)", (interface, url)).lastrowid

    def add_jobs(self, jobs: Iterable[ArcJob]) -> None:
        """Record finished jobs as A-REX would (one transaction)."""
        with sqlite3.connect(self.db_path) as db:
            for job in jobs:
                if job.status not in ("completed", "failed", "in-progress"):
                    raise ValueError(f"A-REX records no status {job.status!r}")
                record_id = db.execute(
                    "INSERT INTO AAR (JobID, LocalJobID, EndpointID, QueueID, UserID, VOID, StatusID, ExitCode,"
                    " SubmitTime, EndTime, NodeCount, CPUCount, UsedMemory, UsedVirtMem, UsedWalltime,"
                    " UsedCPUUserTime, UsedCPUKernelTime, UsedScratch, StageInVolume, StageOutVolume)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (job.job_id, job.local_job_id or "", self._endpoint_id(db, job.interface, job.endpoint_url),
                     self._name_id(db, "Queues", job.queue), self._name_id(db, "Users", job.user_dn),
                     self._name_id(db, "WLCGVOs", job.wlcg_vo()), self._name_id(db, "Status", job.status),
                     job.exit_code, job.submit_epoch(), job.end_epoch(), job.node_count, job.cpu_count,
                     job.used_memory_kb, job.used_virtual_memory_kb, job.walltime_s, job.cpu_user_s,
                     job.cpu_kernel_s, job.used_scratch_bytes, job.stage_in_bytes, job.stage_out_bytes)).lastrowid
                for index, fqan in enumerate(job.fqans):
                    db.execute("INSERT INTO AuthTokenAttributes(RecordID, AttrKey, AttrValue) VALUES (?,?,?)",
                               (record_id, "mainfqan" if index == 0 else "vomsfqan", fqan))
                for key, value in job.extra:
                    db.execute("INSERT INTO JobExtraInfo(RecordID, InfoKey, InfoValue) VALUES (?,?,?)",
                               (record_id, key, value))
                for rte in job.runtime_environments:
                    db.execute("INSERT INTO RunTimeEnvironments(RecordID, RTEName) VALUES (?,?)", (record_id, rte))
                for transfer in job.transfers:
                    db.execute("INSERT INTO DataTransfers(RecordID, URL, FileSize, TransferStart, TransferEnd,"
                               " TransferType) VALUES (?,?,?,?,?,?)",
                               (record_id, transfer.url, transfer.size_bytes, _epoch(transfer.start),
                                _epoch(transfer.end), transfer.code()))

    # ------------------------------------------------------------------ configuration
    def write_config(self) -> None:
        """arc.conf, then the runtime configuration through ARC's own parser (defaults merged)."""
        jura = ["[arex/jura]", "loglevel = 5"]          # DEBUG: the per-batch lines parse_sender_log reads
        if self.vomsless_vo:
            jura.append(f"vomsless_vo = {self.vomsless_vo}")
        jura += [f"vo_group = {group}" for group in self.vo_groups]
        target = [f"[arex/jura/sgas: {self.target_name}]", f"targeturl = {self.target_url}",
                  f"urbatchsize = {self.batch_size}"]
        if self.localid_prefix:
            target.append(f"localid_prefix = {self.localid_prefix}")
        text = "\n".join([
            "[common]", f"hostname = {self.hostname}", f"x509_host_cert = {self.cert_path}",
            f"x509_host_key = {self.key_path}", f"x509_cert_dir = {self.ca_dir}", "",
            "[arex]", f"controldir = {self.control_dir}", "",
            *jura, "", *target, ""])
        self.arc_conf.write_text(text)
        result = subprocess.run([str(ARC_PYTHON), str(ARC_CONFIG_PARSER), "--config", str(self.arc_conf),
                                 "--runconfig", str(self.runtime_conf), "--save"],
                                env=arc_environment(), capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not self.runtime_conf.exists():
            raise RuntimeError(f"arcconfig-parser failed ({result.returncode}): {result.stderr}")

    # ------------------------------------------------------------------ publishing state
    def set_published_until(self, epoch_s: int) -> None:
        """Set ARC's published-until mark for the target, with ARC's own ``AccountingDB`` API.

        Regular publishing sends jobs whose EndTime is *after* the mark. On its first run to a
        target ARC sets the mark to today 00:00 (its local date, read as UTC) and so would skip
        jobs that ended before that: set the mark explicitly to make a run independent of the clock.
        """
        script = ("import sys\n"
                  "from arc.control.AccountingDB import AccountingDB\n"
                  "adb = AccountingDB(sys.argv[1])\n"
                  "adb.publishing_db_connect(sys.argv[2])\n"
                  "adb.set_last_published_endtime(sys.argv[3], int(sys.argv[4]))\n"
                  "adb.publishing_db_close()\n")
        result = subprocess.run([str(ARC_PYTHON), "-c", script, str(self.db_path), str(self.publishing_db_path),
                                 self.target_id, str(int(epoch_s))],
                                env=arc_environment(), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"setting ARC's publishing state failed: {result.stderr}")

    def published_until(self) -> int | None:
        """ARC's published-until mark for the target (None before any run)."""
        if not self.publishing_db_path.exists():
            return None
        with sqlite3.connect(self.publishing_db_path) as db:
            try:
                row = db.execute("SELECT LastEndTime FROM AccountingTargets WHERE TargetID = ?",
                                 (self.target_id,)).fetchone()
            except sqlite3.OperationalError:
                return None
        return row[0] if row else None

    def earliest_unpublished_end(self) -> int | None:
        with sqlite3.connect(self.db_path) as db:
            row = db.execute("SELECT MIN(EndTime) FROM AAR").fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ runs
    def run_jura(self, timeout_s: float = 60) -> ArcPublishResult:
        """One regular publishing run, as A-REX starts it: ``jura-ng -c <runtime config>``."""
        self.write_config()
        before = self.published_until()
        command = [str(ARC_PYTHON), str(ARC_JURA), "-c", str(self.runtime_conf), "-d", "DEBUG"]
        returncode, timed_out, log_text = _run(command, timeout_s)
        after = self.published_until()
        statuses = parse_sender_log(log_text)
        ok = (returncode == 0 and not timed_out and bool(statuses) and all(s == 200 for s in statuses)
              and after is not None and after != before and "have been successfully published" in log_text)
        return ArcPublishResult(ok, statuses[-1] if statuses else None, statuses, len(statuses), returncode,
                                timed_out, after, log_text, command)

    def republish(self, end_from: dt.datetime, end_till: dt.datetime, timeout_s: float = 60) -> ArcPublishResult:
        """``arcctl accounting republish`` of the jobs that ended in (end_from, end_till] (UTC)."""
        self.write_config()
        command = [str(ARC_PYTHON), str(ARC_ARCCTL), "-c", str(self.arc_conf), "-d", "DEBUG",
                   "accounting", "republish", "-t", self.target_name,
                   "-b", end_from.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                   "-e", end_till.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")]
        returncode, timed_out, log_text = _run(command, timeout_s)
        statuses = parse_sender_log(log_text)
        ok = returncode == 0 and not timed_out and bool(statuses) and all(s == 200 for s in statuses)
        return ArcPublishResult(ok, statuses[-1] if statuses else None, statuses, len(statuses), returncode,
                                timed_out, self.published_until(), log_text, command)

    def usage_records_xml(self, timeout_s: float = 60) -> str:
        """The ``UsageRecords`` document ARC builds from this database (all finished jobs in one
        batch), by ARC's ``AccountingDB`` and ``UsageRecord`` classes, the calls ``publish_sgas``
        makes. On the wire, ARC's ``http.client`` sends this text encoded as ISO-8859-1."""
        self.write_config()
        script = ("import sys, json\n"
                  "from arc.control.AccountingDB import AccountingDB\n"
                  "from arc.control.AccountingPublishing import UsageRecord\n"
                  "opts = json.loads(sys.argv[2])\n"
                  "adb = AccountingDB(sys.argv[1])\n"
                  "adb.filters_clean()\n"
                  "adb.filter_statuses(['completed', 'failed'])\n"
                  "aars = adb.get_aars(resolve_ids=True)\n"
                  "adb.enrich_aars(aars, authtokens=True, rtes=True, dtrs=True, extra=True)\n"
                  "urs = [UsageRecord(a, localid_prefix=opts['localid_prefix'], vomsless_vo=opts['vomsless_vo'],"
                  " extra_vogroups=opts['vo_groups']) for a in aars]\n"
                  "doc = UsageRecord.batch_header() + UsageRecord.join_str().join(u.get_xml() for u in urs)"
                  " + UsageRecord.batch_footer()\n"
                  "sys.stdout.buffer.write(doc.encode('utf-8'))\n")
        options = {"localid_prefix": self.localid_prefix, "vomsless_vo": self.vomsless_vo,
                   "vo_groups": list(self.vo_groups)}
        result = subprocess.run([str(ARC_PYTHON), "-c", script, str(self.db_path), json.dumps(options)],
                                env=arc_environment(), capture_output=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"ARC's UsageRecord builder failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode("utf-8")


def arc_environment() -> dict[str, str]:
    """Our environment without the venv's Python variables (ARC runs under Debian's python3)."""
    env = {key: value for key, value in os.environ.items() if key not in _PYTHON_ENV}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _run(command: list[str], timeout_s: float) -> tuple[int | None, bool, str]:
    """Run ``command`` in its own process group; kill the group at ``timeout_s``. Returns
    (returncode or None if killed, timed_out, stdout+stderr)."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   env=arc_environment(), start_new_session=True)
        timed_out = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    return (None if timed_out else process.returncode), timed_out, text


def publish_with_arc(jobs: Sequence[ArcJob], target_url: str, cert_path: Path | str, key_path: Path | str,
                     ca_dir: Path | str, timeout_s: float = 60, *, work_dir: Path | str | None = None,
                     mode: str = "regular", **site_options) -> ArcPublishResult:
    """Publish ``jobs`` to ``target_url`` (e.g. ``https://127.0.0.1:8443/sgas``) with ARC's own code.

    ``cert_path``/``key_path``: the CE's host credentials ARC presents as TLS client certificate;
    ``ca_dir``: the hashed CA directory ARC verifies the server against (host name checked).
    ``mode``: "regular" (``jura-ng``, as A-REX runs it; the published-until mark is set just
    before the earliest job's end first) or "republish" (``arcctl accounting republish`` over the
    jobs' end times). ``site_options``: ``ArcSite`` options (batch_size, hostname, localid_prefix,
    vomsless_vo, vo_groups, target_name). The ARC site lives in ``work_dir`` (kept) or a
    temporary directory (removed).
    """
    if not jobs:
        raise ValueError("give at least one job: ARC sends nothing for an empty database")
    if mode not in ("regular", "republish"):
        raise ValueError(f"unknown mode {mode!r}")
    with tempfile.TemporaryDirectory(prefix="arc-site-") as scratch:
        site = ArcSite(Path(work_dir) if work_dir is not None else Path(scratch), target_url=target_url,
                       cert_path=cert_path, key_path=key_path, ca_dir=ca_dir, **site_options)
        site.add_jobs(jobs)
        ends = [job.end_epoch() for job in jobs]
        if mode == "regular":
            site.set_published_until(min(ends) - 1)
            return site.run_jura(timeout_s)
        utc = dt.timezone.utc
        return site.republish(dt.datetime.fromtimestamp(min(ends) - 1, utc),
                              dt.datetime.fromtimestamp(max(ends), utc), timeout_s)

