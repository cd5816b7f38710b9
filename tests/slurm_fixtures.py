"""The real single-node Slurm cluster of scripts/slurm.sh, for the Slurm tests (imported explicitly).

    from slurm_fixtures import slurm_cluster, slurm_workdir   # noqa: F401 (pytest fixtures)

    def test_something(slurm_cluster, slurm_workdir):
        job_id = slurm_cluster.sbatch(["--wrap", "true"], user="gcuser1", workdir=slurm_workdir)
        ended = slurm_cluster.wait_accounted(job_id)    # {"job": sacct's fields, "batch": the batch step's}
        with slurm_cluster.job_submit(Path("tests/slurm/job_submit_refuse.lua").read_text()): ...
        with slurm_cluster.prolog(Path("tests/slurm/record_slurmctld.sh").read_text()): ...

``slurm_cluster`` (session, root only: skipped otherwise on a developer's machine, failed under CI by
``skip_unless_ci``) finds the cluster scripts/slurm.sh started (scripts/test.sh starts it before pytest),
or starts it with the script, and fails with the script's message when that does not work. The hooks
(job_submit.lua, PrologSlurmctld, EpilogSlurmctld) are put back to the script's accept-all defaults when a
``job_submit``/``prolog``/``epilog`` block ends.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from security_fixtures import skip_unless_ci

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm.sh"
TEST_USERS = ("gcuser1", "gcuser2")
SACCT_FIELDS = ("JobID", "User", "Account", "Partition", "State", "ExitCode", "ElapsedRaw", "TotalCPU",
                "MaxRSS", "AllocTRES")
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
             "BOOT_FAIL", "DEADLINE"}
_STARTUP_TIMEOUT_S = 900   # a first start installs the Debian packages


class SlurmCommandFailed(AssertionError):
    """A Slurm command the test needed failed (its stderr in the message)."""


def slurm_dir() -> Path:
    return Path(os.environ.get("GRIDCREDIT_SLURM_DIR", "/var/lib/gridcredit-slurm"))


@dataclass(frozen=True)
class SlurmCluster:
    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    @property
    def job_submit_path(self) -> Path:
        return self.dir / "etc" / "job_submit.lua"

    @property
    def prolog_path(self) -> Path:
        return self.dir / "etc" / "prolog_slurmctld"

    @property
    def epilog_path(self) -> Path:
        return self.dir / "etc" / "epilog_slurmctld"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, args: Sequence[str], *, user: str | None = None, check: bool = True,
            timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm command, as ``user`` (runuser, keeping SLURM_CONF) when given."""
        command = ["runuser", "-u", user, "--", *args] if user else list(args)
        result = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise SlurmCommandFailed(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def sbatch(self, options: Sequence[str], *, user: str | None = None, workdir: Path) -> int:
        """Submit a batch job (its output to ``workdir``/slurm-<id>.out) and answer its job id."""
        result = self.run(["sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out",
                           *options], user=user)
        return int(result.stdout.strip().split(";")[0])

    def sacct(self, job_id: int) -> list[dict[str, str]]:
        """sacct's records of the job (the job, its steps) with SACCT_FIELDS, in sacct's order; with ``-D`` a
        requeued job's earlier runs are there too (same JobID, State REQUEUED)."""
        result = self.run(["sacct", "-j", str(job_id), "-n", "-P", "-D",
                           "-o", ",".join(SACCT_FIELDS)])
        return [dict(zip(SACCT_FIELDS, line.split("|"))) for line in result.stdout.splitlines()]

    def wait_accounted(self, job_id: int, *, timeout_s: float = 180,
                       with_batch_step: bool = True) -> dict[str, dict[str, str]]:
        """Wait until slurmdbd has the job's end and its batch step's measured usage (sacct lags the end
        by a few seconds); answer {"job": ..., "batch": ...}, the last record of each (a job that never
        ran has no batch step: ``with_batch_step=False``)."""
        deadline = time.monotonic() + timeout_s
        found: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            records = self.sacct(job_id)
            found = {name: record for record in records
                     for name, job_name in (("job", str(job_id)), ("batch", f"{job_id}.batch"))
                     if record["JobID"] == job_name}
            if len(found) == 1 + with_batch_step and all(record["State"].split()[0] in _TERMINAL for record in found.values()):
                return found
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not accounted as ended within {timeout_s} s: sacct has {found}; "
                             f"squeue: {self.run(['squeue', '-j', str(job_id)], check=False).stdout}")

    def show_job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (the controller's view; the job must still be known to it)."""
        text = self.run(["scontrol", "-o", "show", "job", str(job_id)]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def restart(self, *daemons: str) -> None:
        """Stop the daemons (scripts/slurm.sh stop, SIGTERM) and start the cluster again (waits until ready)."""
        for action in (["stop", *daemons], ["start"]):
            result = subprocess.run([str(SCRIPT), *action], capture_output=True, text=True,
                                    stdin=subprocess.DEVNULL, timeout=300, env=self.env())
            if result.returncode != 0:
                raise SlurmCommandFailed(f"scripts/slurm.sh {' '.join(action)} exited {result.returncode}: "
                                         f"{result.stdout[-1500:]}{result.stderr[-1500:]}")

    @contextlib.contextmanager
    def job_submit(self, lua_text: str) -> Iterator[Path]:
        """Install ``lua_text`` as the controller's job_submit.lua for the block, then the default."""
        with self._hook(self.job_submit_path, lua_text, 0o644):
            yield self.job_submit_path

    @contextlib.contextmanager
    def prolog(self, script_text: str) -> Iterator[Path]:
        """Install ``script_text`` as PrologSlurmctld for the block, then the default."""
        with self._hook(self.prolog_path, script_text, 0o755):
            yield self.prolog_path

    @contextlib.contextmanager
    def epilog(self, script_text: str) -> Iterator[Path]:
        """Install ``script_text`` as EpilogSlurmctld for the block, then the default."""
        with self._hook(self.epilog_path, script_text, 0o755):
            yield self.epilog_path

    @contextlib.contextmanager
    def _hook(self, path: Path, text: str, mode: int) -> Iterator[None]:
        default = path.with_name(path.name + ".default")
        _replace(path, text, mode)
        try:
            yield
        finally:
            _replace(path, default.read_text(), mode)


def _replace(path: Path, text: str, mode: int) -> None:
    """Write ``path`` atomically with a modification time later than the file it replaces: job_submit/lua
    reloads its script only when the file's mtime (whole seconds) is later than the mtime of the script it
    loaded last, so a script replaced within the same second would otherwise be ignored."""
    previous_s = int(path.stat().st_mtime) if path.exists() else 0
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.chmod(mode)
    mtime_s = max(int(time.time()), previous_s + 1)
    os.utime(temporary, (mtime_s, mtime_s))
    temporary.replace(path)


def _cluster_answers(cluster: SlurmCluster) -> str | None:
    """None when the node is up and slurmdbd answers, else what is wrong."""
    try:
        state = cluster.run(["sinfo", "-h", "-o", "%T"], timeout_s=20).stdout.split()
        cluster.run(["sacct", "-n", "-X", "-S", "now-1minute"], timeout_s=20)
    except (SlurmCommandFailed, OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if not set(state) & {"idle", "mixed", "allocated", "completing"}:
        return f"the node is {state} in sinfo"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    cluster = SlurmCluster(slurm_dir())
    if os.geteuid() != 0:
        skip_unless_ci("the Slurm tests run as root: they submit as gcuser1/gcuser2 (runuser), replace the "
                       f"controller's hooks in {cluster.dir}/etc and may start the cluster (scripts/slurm.sh)")
    if cluster.conf.exists() and _cluster_answers(cluster) is None:
        return cluster
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=_STARTUP_TIMEOUT_S)
    if started.returncode != 0:
        pytest.fail(f"SlurmNotStarted: scripts/slurm.sh start exited {started.returncode}:\n"
                    f"{started.stdout[-2000:]}{started.stderr[-2000:]}")
    problem = _cluster_answers(cluster)
    if problem:
        pytest.fail(f"SlurmNotReady: scripts/slurm.sh start succeeded but {problem}")
    return cluster


@pytest.fixture
def slurm_workdir() -> Iterator[Path]:
    """A directory every user may write (the test users' jobs and PrologSlurmctld, as user slurm): pytest's
    tmp_path is under a root-only folder."""
    path = Path(tempfile.mkdtemp(prefix="gridcredit-slurm-test-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rss_kib(text: str) -> int:
    """sacct's MaxRSS ("219728K", "1.5G") in KiB."""
    match = re.fullmatch(r"([\d.]+)([KMGT]?)", text)
    if not match:
        raise ValueError(f"not a MaxRSS: {text!r}")
    return int(float(match.group(1)) * 1024 ** "KMGT".index(match.group(2) or "K"))


def cpu_seconds(text: str) -> float:
    """sacct's TotalCPU ([DD-][HH:]MM:SS[.mmm]) in seconds."""
    days, _, clock = text.rpartition("-")
    parts = [float(part) for part in clock.split(":")]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds + (int(days) * 86400 if days else 0)


def tres(text: str) -> dict[str, str]:
    """sacct's AllocTRES ("billing=1,cpu=1,mem=512M,node=1") as a dict."""
    return dict(item.split("=", 1) for item in text.split(",") if item)
