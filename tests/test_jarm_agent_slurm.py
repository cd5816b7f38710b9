"""JARM's admission path against the real Slurm (issue 13.5): job_submit.lua asks the agent, which
answers from the prices and funds it read from a real Bank host (two funded accounts, one empty).

An admitted job carries its admission id; a job the account cannot pay for is refused at submission
with cost, available and shortfall in sbatch's stderr; with the agent stopped or frozen the site's
policy applies within the hook's time limit; a slow or hostile client on the socket holds up no
submission; with the Bank down the agent's policy applies once the balances are stale.
Every test cancels its jobs."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gridcredit.security.credentials import load_credential
from gridcredit.services.bank.client import BankClient
from gridcredit.services.jarm.agent import render_hook
from gridcredit.services.jarm.client import JarmClient
from gridcredit.services.jarm.config import JarmConfig
from gridcredit.services.jarm.types import Metric, Rate

from bank_fixtures import BankUsers, bank_host
from slurm_fixtures import SlurmCommandFailed, slurm_cluster, slurm_workdir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

CREDIT = 1_000_000
SITE = "gridcredit"
# 60 credits per core-hour (1 per core-minute), 1 credit per job: --time=10 on one core costs 11 credits
RATE_PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
FUNDS = {"proj1": 1000, "proj3": 500, "proj2": 0}
TIMEOUT_MS = 100
REPO = Path(__file__).resolve().parent.parent


LUASOCKET_UNIX = Path("/usr/lib/x86_64-linux-gnu/lua/5.1/socket/unix.so")   # Debian lua-socket, for Lua 5.1


@pytest.fixture(scope="module", autouse=True)
def luasocket(slurm_cluster):
    if not LUASOCKET_UNIX.exists():
        pytest.fail(f"LuaSocketMissing: JARM's job_submit.lua needs Debian's lua-socket ({LUASOCKET_UNIX}, LuaSocket's "
                    f"socket.unix for the Lua 5.1 slurm-wlm links): apt-get install lua-socket")


@pytest.fixture(scope="module")
def bank(pki, tmp_path_factory):
    admin = pki.user("Agent Bank Admin")
    users = BankUsers(admin, pki.user("Agent Bank Admin Two"), *([pki.user("Agent Nobody")] * 6),
                      stranger=pki.user("Agent Nobody"))
    price_admin = pki.user("Agent Price Admin")
    env = {"GRIDCREDIT_JARM_SITE": SITE, "GRIDCREDIT_JARM_PRICE_ADMINS": price_admin.dn}
    with bank_host(tmp_path_factory.mktemp("jarm-agent-bank"), "embedded", users, pki, extra_env=env) as host:
        client = BankClient(host.url, credential=admin.credential, trust_dir=pki.trust_dir)
        site_dn = load_credential(pki.host_cert, pki.host_key).dn         # the site's JARM identity
        for account, credits in FUNDS.items():
            client.create_account(account, project="agent-test", owner_dn=admin.dn)
            client.set_holder(account, holder_dn=site_dn, role="viewer")
            if credits:
                client.mint(account, credits)
        JarmClient(host.url, credential=price_admin.credential, trust_dir=pki.trust_dir).set_price_table(
            [Rate("batch", "normal", RATE_PRICES), Rate("short", "normal", RATE_PRICES)], version=1)
        yield host


@pytest.fixture
def socket_dir():
    path = Path(tempfile.mkdtemp(prefix="gridcredit-jarm-agent-", dir="/tmp"))
    path.chmod(0o755)                                        # slurmctld (user slurm) reaches the socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Agent:
    """``gridcredit jarm agent`` in its own process, configured through GRIDCREDIT_* variables."""

    def __init__(self, bank, pki, socket_path: Path, state_dir: Path, **settings) -> None:
        self.socket_path, self.state_dir = socket_path, state_dir
        env = {key: value for key, value in os.environ.items() if not key.startswith("GRIDCREDIT_")}
        env.update({"GRIDCREDIT_STATE_DIR": str(state_dir), "GRIDCREDIT_LOG_LEVEL": "INFO",
                    "GRIDCREDIT_SECURITY_HOST_CERT": str(pki.host_cert),
                    "GRIDCREDIT_SECURITY_HOST_KEY": str(pki.host_key),
                    "GRIDCREDIT_SECURITY_CERT_DIR": str(pki.trust_dir),
                    "GRIDCREDIT_JARM_AGENT_SOCKET": str(socket_path), "GRIDCREDIT_JARM_BANK_URL": bank.url,
                    "GRIDCREDIT_JARM_JARM_URL": bank.url, "GRIDCREDIT_JARM_BALANCE_REFRESH_S": "1",
                    "GRIDCREDIT_JARM_BALANCE_STALE_S": "3"})
        env.update({f"GRIDCREDIT_JARM_{key.upper()}": str(value) for key, value in settings.items()})
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> "Agent":
        log = open(self.state_dir / "agent.log", "ab")
        accounts = [argument for account in FUNDS for argument in ("--account", account)]
        self.process = subprocess.Popen([sys.executable, "-m", "gridcredit.server.cli", "jarm", "agent", *accounts],
                                        env=self.env, cwd=self.state_dir, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the agent exited: {self.log_text()}"
            with contextlib.suppress(OSError):
                if self.ask(b"ping v1\n").startswith(b"pong prices=1 accounts=3 "):
                    return self
            time.sleep(0.2)
        raise AssertionError(f"the agent did not read prices and funds within 60 s: {self.log_text()}")

    def ask(self, line: bytes, timeout_s: float = 2.0) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout_s)
            client.connect(str(self.socket_path))
            client.sendall(line)
            return client.recv(4096)

    def log_text(self) -> str:
        return (self.state_dir / "agent.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def agent(bank, pki, socket_dir):
    running = Agent(bank, pki, socket_dir / "agent.sock", socket_dir).start()
    yield running
    running.stop()


@pytest.fixture
def jobs(slurm_cluster):
    """The job ids a test submitted: cancelled when it ends."""
    submitted: list[int] = []
    yield submitted
    if submitted:
        slurm_cluster.run(["scancel", *map(str, submitted)], check=False)


def hook(socket_path: Path, **settings) -> str:
    return render_hook(JarmConfig(agent_socket=str(socket_path), admission_timeout_ms=TIMEOUT_MS, **settings))


def submit(cluster, workdir: Path, account: str, *, minutes: int = 10, user: str = "gcuser1"):
    """sbatch of a held one-core job (it never runs): (the result, seconds sbatch took)."""
    started = time.monotonic()
    result = cluster.run(["sbatch", "--parsable", "--hold", f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out",
                          f"--account={account}", f"--time={minutes}", "-n1", "--wrap", "true"], user=user,
                         check=False)
    return result, time.monotonic() - started


def job_id_of(result) -> int:
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().split(";")[0])


def slurmctld_log_since(cluster, offset: int) -> str:
    with open(cluster.dir / "log" / "slurmctld.log", "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def log_size(cluster) -> int:
    return (cluster.dir / "log" / "slurmctld.log").stat().st_size


def test_a_funded_job_is_admitted_and_an_empty_accounts_job_refused_with_the_shortfall(
        slurm_cluster, slurm_workdir, agent, jobs):
    with slurm_cluster.job_submit(hook(agent.socket_path)):
        admitted, _ = submit(slurm_cluster, slurm_workdir, "proj1")
        job_id = job_id_of(admitted)
        jobs.append(job_id)
        assert re.fullmatch(r"jarm-admission=a-[0-9a-f]{32}", slurm_cluster.show_job(job_id)["AdminComment"])

        refused, _ = submit(slurm_cluster, slurm_workdir, "proj2")
        assert refused.returncode == 1
        assert ("JARM: job refused: it may cost 11 credits, account proj2 has 0 available: short by 11 credits"
                in refused.stderr), refused.stderr
        assert "Job violates accounting/QOS policy" in refused.stderr

        # what the agent admitted counts until it is held: 1000 credits hold 90 jobs of 11 (the first one too)
        many, _ = submit(slurm_cluster, slurm_workdir, "proj1", minutes=1000 - 11 - 1 + 1)   # 989 + 1 = 990 > 989
        assert many.returncode == 1
        assert "it may cost 990 credits, account proj1 has 989 available (1000 at the Bank less 11 for jobs " \
               "admitted and not yet held): short by 1 credits" in many.stderr, many.stderr
        exact, _ = submit(slurm_cluster, slurm_workdir, "proj1", minutes=988)                 # 989: exactly
        jobs.append(job_id_of(exact))
    assert "jarm-agent admit user=gcuser1 account=proj1" in agent.log_text()
    assert os.sched_getscheduler(agent.process.pid) == os.SCHED_BATCH     # its wake-ups never preempt slurmctld


def test_a_job_without_a_time_limit_is_refused_and_the_partitions_limit_is_its_estimate(
        slurm_cluster, slurm_workdir, agent, jobs):
    with slurm_cluster.job_submit(hook(agent.socket_path)):
        unlimited = slurm_cluster.run(["sbatch", "--hold", f"--chdir={slurm_workdir}", "--account=proj2", "-n1",
                                       "--wrap", "true"], user="gcuser1", check=False)     # batch: MaxTime=INFINITE
        assert unlimited.returncode == 1
        assert "JARM: this job has no time limit, so its cost cannot be estimated" in unlimited.stderr
        # short: MaxTime=60 minutes, the estimate of a job without --time: 60 + 1 credits
        short = slurm_cluster.run(["sbatch", "--hold", f"--chdir={slurm_workdir}", "--account=proj2",
                                   "--partition=short", "-n1", "--wrap", "true"], user="gcuser1", check=False)
        assert "it may cost 61 credits, account proj2 has 0 available: short by 61 credits" in short.stderr, short


def test_an_admitted_job_counts_while_it_is_pending_and_not_after_it_left_the_queue(
        slurm_cluster, slurm_workdir, agent, jobs):
    with slurm_cluster.job_submit(hook(agent.socket_path)):
        job_id = job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0])
        jobs.append(job_id)
    time.sleep(4)                                               # a queue read after the margin: still pending
    assert agent.ask(b"ping v1\n").endswith(b" pending=1\n")
    slurm_cluster.run(["scancel", str(job_id)])
    deadline = time.monotonic() + 20
    while not agent.ask(b"ping v1\n").endswith(b" pending=0\n"):
        assert time.monotonic() < deadline, "the cancelled job still counts 20 s later"
        time.sleep(0.5)


def test_the_agent_stopped_or_frozen_the_refuse_policy_applies_within_the_time_limit(
        slurm_cluster, slurm_workdir, agent, jobs):
    with slurm_cluster.job_submit(hook(agent.socket_path, bank_unreachable="refuse")):
        job_id = job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0])
        jobs.append(job_id)
        baseline = float("inf")
        for _ in range(3):
            result, seconds = submit(slurm_cluster, slurm_workdir, "proj1")
            jobs.append(job_id_of(result))
            baseline = min(baseline, seconds)
        os.killpg(agent.process.pid, signal.SIGSTOP)          # frozen: connects, never answers
        try:
            # proj1's jobs fit what the agent set aside for the hook: admitted without asking (the agent reads
            # what was spent when it runs again); proj3 has no allowance yet: the hook asks, and gets no answer
            allowed, seconds = submit(slurm_cluster, slurm_workdir, "proj1")
            jobs.append(job_id_of(allowed))
            assert seconds < baseline + 1.0, (seconds, baseline)
            offset = log_size(slurm_cluster)
            frozen, seconds = submit(slurm_cluster, slurm_workdir, "proj3")
        finally:
            os.killpg(agent.process.pid, signal.SIGCONT)
        assert frozen.returncode == 1
        assert "the site's admission agent does not answer, and this site refuses jobs without it" in frozen.stderr
        assert seconds < baseline + 1.0, (seconds, baseline)
        assert "jarm: the admission agent did not answer (answer: timeout); policy refuse" in \
            slurmctld_log_since(slurm_cluster, offset)

        agent.stop()                                            # stopped: nobody listens on the socket
        stopped, seconds = submit(slurm_cluster, slurm_workdir, "proj1")
        assert stopped.returncode == 1 and "does not answer" in stopped.stderr
        assert seconds < baseline + 1.0
        agent.start()                                           # back: the hook connects again
        jobs.append(job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0]))
    jobs.append(job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0]))      # the default hook again


def test_the_agent_down_admit_capped_admits_up_to_the_cap_per_account(slurm_cluster, slurm_workdir, socket_dir, jobs):
    # no agent at all on this socket
    with slurm_cluster.job_submit(hook(socket_dir / "nobody.sock", bank_unreachable="admit_capped",
                                       agent_down_jobs_max=2)):
        for _ in range(2):
            jobs.append(job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0]))
        third, _ = submit(slurm_cluster, slurm_workdir, "proj1")
        assert third.returncode == 1
        assert "account proj1 already has 2 jobs admitted without it" in third.stderr, third.stderr
        jobs.append(job_id_of(submit(slurm_cluster, slurm_workdir, "proj2", user="gcuser2")[0]))   # its own count


def test_a_slow_or_hostile_client_on_the_socket_does_not_stall_a_submission(slurm_cluster, slurm_workdir, agent, jobs):
    hostile = []
    try:
        for index in range(100):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(agent.socket_path))
            client.sendall(b"admit v1 user=slow" if index % 2 else b"x" * 800)   # never a whole line
            hostile.append(client)
        assert agent.ask(b"ping v1\n").startswith(b"pong ")          # it has taken them all in
        with slurm_cluster.job_submit(hook(agent.socket_path)):
            offset = log_size(slurm_cluster)
            for _ in range(5):
                result, seconds = submit(slurm_cluster, slurm_workdir, "proj1")
                jobs.append(job_id_of(result))
                assert seconds < 5
            times_ms = [float(ms) for ms in re.findall(r"jarm: admit a-[0-9a-f]{32} account=proj1 in ([0-9.]+) ms",
                                                       slurmctld_log_since(slurm_cluster, offset))]
            assert len(times_ms) == 5 and max(times_ms) < TIMEOUT_MS, times_ms
    finally:
        for client in hostile:
            client.close()


def test_a_user_who_is_not_slurm_may_not_use_the_agent(agent):
    script = ("import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(2); "
              f"s.connect({str(agent.socket_path)!r}); print(s.recv(200).decode().strip())")
    result = subprocess.run(["runuser", "-u", "gcuser1", "--", "/usr/bin/python3", "-c", script], capture_output=True,
                            text=True, timeout=30)
    assert result.stdout.strip() == "error this user may not ask the JARM agent", result


def test_the_bank_down_the_agent_refuses_once_the_balances_are_stale(slurm_cluster, slurm_workdir, bank, agent, jobs):
    with slurm_cluster.job_submit(hook(agent.socket_path)):
        jobs.append(job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0]))
        bank.stop()
        try:
            deadline = time.monotonic() + 30
            while True:
                refused, _ = submit(slurm_cluster, slurm_workdir, "proj1")
                if refused.returncode == 1:
                    break
                jobs.append(job_id_of(refused))
                assert time.monotonic() < deadline, "still admitted 30 s after the Bank stopped"
                time.sleep(0.5)
            assert "account proj1's funds was last read" in refused.stderr
            assert "the Bank cannot be reached" in refused.stderr and "refuses jobs" in refused.stderr
        finally:
            bank.start()


def test_the_refresh_process_killed_is_started_again_and_new_funds_are_seen(bank, pki, agent):
    # the refresh process (multiprocessing's spawn_main; its resource tracker is another child)
    children = [child for task in Path(f"/proc/{agent.process.pid}/task").iterdir()
                for child in (task / "children").read_text().split()
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGKILL)
    line = (b"admit v1 user=gcuser2 uid=1002 account=proj2 partition=batch qos=normal cores=1 nodes=1 "
            b"time_limit_s=600 memory_mb=256 gpus=0\n")
    assert agent.ask(line).startswith(b"refuse JARM: job refused: it may cost 11 credits, account proj2 has 0")
    admin = BankClient(bank.url, credential=pki.user("Agent Bank Admin").credential, trust_dir=pki.trust_dir)
    admin.mint("proj2", 11)
    deadline = time.monotonic() + 30
    while not agent.ask(line).startswith(b"admit a-"):
        assert time.monotonic() < deadline, f"proj2's new funds not seen within 30 s: {agent.log_text()[-2000:]}"
        time.sleep(0.5)
    assert "the refresh process ended" in agent.log_text()


def test_the_bank_down_admit_capped_admits_up_to_the_cap_per_account(slurm_cluster, slurm_workdir, bank, pki,
                                                                      socket_dir, jobs):
    capped = Agent(bank, pki, socket_dir / "capped.sock", socket_dir, bank_unreachable="admit_capped",
                   unfunded_cap_credits=22).start()
    try:
        with slurm_cluster.job_submit(hook(capped.socket_path)):
            bank.stop()
            try:
                time.sleep(3 + 2)                               # balance_stale_s, and a refresh that failed
                for _ in range(2):                              # 11 + 11 credits without the Bank's word
                    jobs.append(job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0]))
                third, _ = submit(slurm_cluster, slurm_workdir, "proj1")
                assert third.returncode == 1
                assert "this site admits at most 22 credits of jobs per account until it answers, 22 are " \
                       "admitted already: this job may cost 11 credits, 11 more than the 0 left" in third.stderr, \
                       third.stderr
            finally:
                bank.start()
        assert capped.log_text().count("unfunded (the Bank's word was last read") == 2
    finally:
        capped.stop()


def test_a_heterogeneous_job_is_refused_at_submission_with_the_reason(slurm_cluster, slurm_workdir, agent, jobs):
    with slurm_cluster.job_submit(hook(agent.socket_path)):
        result = slurm_cluster.run(["sbatch", "--parsable", "--hold", f"--chdir={slurm_workdir}", "--output=/dev/null",
                                    "--account=proj1", "--time=10", "-n1", ":", "-n1", "--time=10", "--wrap", "true"],
                                   user="gcuser1", check=False)
        if result.returncode == 0:
            jobs.append(job_id_of(result))
        assert result.returncode == 1
        assert "JARM: heterogeneous jobs (components separated by ':' or #SBATCH hetjob) cannot be priced at this " \
               "site" in result.stderr, result.stderr
        jobs.append(job_id_of(submit(slurm_cluster, slurm_workdir, "proj1")[0]))     # an ordinary job still is
