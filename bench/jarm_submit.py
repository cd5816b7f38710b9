"""sbatch throughput with JARM's admission hook and agent ÷ without it, and the time the hook adds.

    python bench/jarm_submit.py [--submissions 500] [--block 50] [--submitters 4] [--write]

Needs root and the real Slurm of scripts/slurm.sh (started if it is not running). In one run:
a gridcredit host (Bank + JARM, embedded store, one worker) with a price table and a funded
account proj1 that the site's host credential may view; ``gridcredit jarm agent`` following it;
then ``--submissions`` held one-core jobs (``sbatch --hold``: they never run) by gcuser1 with
JARM's job_submit.lua and as many with the accept-all default, in alternating blocks of
``--block`` so that both modes see the same machine, ``--submitters`` sbatch processes at a time.

Reported: submissions/s of each mode and their ratio (target ≥ 0.9), sbatch's own latency p50/p99
in each mode, and the time the hook adds inside slurmctld, p50/p99 (target p99 ≤ 5 ms): the hook's
own measure (connect, send, answer) from its log line ``jarm: admit … in X ms``. Every job is
cancelled at the end.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import scratch_dir, write_section  # noqa: E402

from gridcredit.security.credentials import load_credential  # noqa: E402
from gridcredit.security.pki import CertificateAuthority  # noqa: E402
from gridcredit.server.host_cli import development_pki  # noqa: E402
from gridcredit.services.bank.client import BankClient  # noqa: E402
from gridcredit.services.jarm.agent import render_hook  # noqa: E402
from gridcredit.services.jarm.client import JarmClient  # noqa: E402
from gridcredit.services.jarm.config import JarmConfig  # noqa: E402
from gridcredit.services.jarm.types import Metric, Rate  # noqa: E402

from slurm_fixtures import SCRIPT, SlurmCluster, _cluster_answers, _replace, slurm_dir  # noqa: E402

JOB_NAME = "jarm-bench"
ACCOUNT = "proj1"
CREDIT = 1_000_000
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
_HOOK_MS = re.compile(r"jarm: admit a-[0-9a-f]{32} account=\S+ in ([0-9.]+) ms")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} within {timeout_s:.0f} s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def submit_block(cluster: SlurmCluster, workdir: Path, count: int, submitters: int) -> tuple[float, list[float]]:
    """``count`` held jobs by ``submitters`` sbatch processes at a time: (seconds, each sbatch's seconds)."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    shares = [count // submitters + (index < count % submitters) for index in range(submitters)]

    def run(share: int) -> None:
        for _ in range(share):
            began = time.perf_counter()
            result = cluster.run(["sbatch", "--parsable", "--hold", f"--job-name={JOB_NAME}", f"--chdir={workdir}",
                                  "--output=/dev/null", f"--account={ACCOUNT}", "--time=10", "-n1", "--wrap", "true"],
                                 user="gcuser1", check=False)
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                if result.returncode != 0:
                    failures.append(result.stderr.strip())

    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{len(failures)} submissions failed, e.g.: {failures[0]}")
    return seconds, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=500, help="per mode (default 500)")
    parser.add_argument("--block", type=int, default=50, help="submissions per block, modes alternating (default 50)")
    parser.add_argument("--submitters", type=int, default=4, help="sbatch processes at a time (default 4)")
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it submits as gcuser1 (runuser) and replaces the controller's job_submit.lua")

    cluster = SlurmCluster(slurm_dir())
    if not cluster.conf.exists() or _cluster_answers(cluster) is not None:
        subprocess.run([str(SCRIPT), "start"], check=True, stdin=subprocess.DEVNULL)
    root = scratch_dir("gridcredit-bench-jarm-")
    root.chmod(0o755)
    workdir = root / "jobs"
    workdir.mkdir()
    workdir.chmod(0o1777)
    host_cert, host_key, trust_dir, _ = development_pki(root)
    ca = CertificateAuthority.load(root / "pki" / "ca")
    people = {}
    for name in ("Bench Admin", "Bench Price Admin"):
        cert, key = ca.issue_user(name, root / name.replace(" ", "-"))
        people[name] = load_credential(cert_path=str(cert), key_path=str(key))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRIDCREDIT_")}
    env.update({"GRIDCREDIT_STATE_DIR": str(root / "state"), "GRIDCREDIT_SERVER_PORT": str(port),
                "GRIDCREDIT_SERVER_WORKERS": "1", "GRIDCREDIT_SECURITY_HOST_CERT": str(host_cert),
                "GRIDCREDIT_SECURITY_HOST_KEY": str(host_key), "GRIDCREDIT_SECURITY_CERT_DIR": str(trust_dir),
                "GRIDCREDIT_BANK_ADMINS": people["Bench Admin"].dn, "GRIDCREDIT_JARM_SITE": "gridcredit",
                "GRIDCREDIT_JARM_PRICE_ADMINS": people["Bench Price Admin"].dn,
                "GRIDCREDIT_JARM_AGENT_SOCKET": str(root / "agent.sock"), "GRIDCREDIT_LOG_LEVEL": "WARNING"})
    url = f"https://localhost:{port}"
    server = start([sys.executable, "-m", "gridcredit.server.cli", "serve"], env, root / "server.log")
    agent = None
    try:
        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(answers, "the gridcredit host did not answer")
        time.sleep(1)
        bank = BankClient(url, credential=people["Bench Admin"], trust_dir=trust_dir)
        bank.create_account(ACCOUNT, project="bench", owner_dn=people["Bench Admin"].dn)
        bank.set_holder(ACCOUNT, holder_dn=load_credential(str(host_cert), str(host_key)).dn, role="viewer")
        bank.mint(ACCOUNT, 10**12)
        JarmClient(url, credential=people["Bench Price Admin"], trust_dir=trust_dir).set_price_table(
            [Rate("batch", "normal", PRICES), Rate("short", "normal", PRICES)], version=1)
        agent = start([sys.executable, "-m", "gridcredit.server.cli", "jarm", "agent", "--account", ACCOUNT], env,
                      root / "agent.log")

        def agent_ready() -> bool:
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(1)
                    probe.connect(str(root / "agent.sock"))
                    probe.sendall(b"ping v1\n")
                    return probe.recv(200).startswith(b"pong prices=1 accounts=1")
            except OSError:
                return False

        wait_for(agent_ready, "the agent did not read the prices and the account")
        hook_text = render_hook(JarmConfig(agent_socket=str(root / "agent.sock")))
        default_text = (cluster.job_submit_path.parent / "job_submit.lua.default").read_text()
        log_path = cluster.dir / "log" / "slurmctld.log"
        seconds = {"hook": 0.0, "default": 0.0}
        latencies: dict[str, list[float]] = {"hook": [], "default": []}
        hook_ms: list[float] = []
        load_before = os.getloadavg()
        blocks = -(-args.submissions // args.block)
        for index in range(blocks):
            count = min(args.block, args.submissions - index * args.block)
            for mode in (("hook", "default") if index % 2 == 0 else ("default", "hook")):
                _replace(cluster.job_submit_path, hook_text if mode == "hook" else default_text, 0o644)
                # the controller reloads the script at the next submission: one unmeasured job loads it
                offset = log_path.stat().st_size
                submit_block(cluster, workdir, 1, 1)
                offset = log_path.stat().st_size if mode == "hook" else offset
                took, each = submit_block(cluster, workdir, count, args.submitters)
                seconds[mode] += took
                latencies[mode] += each
                if mode == "hook":
                    with open(log_path, "rb") as log:
                        log.seek(offset)
                        found = [float(ms) for ms in _HOOK_MS.findall(log.read().decode(errors="replace"))]
                    if len(found) != count:
                        raise SystemExit(f"expected {count} hook lines in slurmctld.log, found {len(found)}: was the "
                                         f"hook loaded?")
                    hook_ms += found
            print(f"block {index + 1}/{blocks}: hook {len(latencies['hook'])} in {seconds['hook']:.1f} s, default "
                  f"{len(latencies['default'])} in {seconds['default']:.1f} s", flush=True)
        load_after = os.getloadavg()
    finally:
        _replace(cluster.job_submit_path, (cluster.job_submit_path.parent / "job_submit.lua.default").read_text(),
                 0o644)
        cluster.run(["scancel", "--name", JOB_NAME, "-u", "gcuser1"], check=False)
        if agent is not None:
            stop(agent)
        stop(server)

    rate = {mode: len(latencies[mode]) / seconds[mode] for mode in seconds}
    ratio = rate["hook"] / rate["default"]
    lines = [f"Machine: {os.cpu_count()} cores, shared; Slurm 22.05 of scripts/slurm.sh (slurmctld, slurmdbd, MariaDB "
             f"on the same machine); the gridcredit host (1 worker) and the agent on it too. {args.submissions} held "
             f"one-core jobs (`sbatch --hold`, gcuser1, account {ACCOUNT}) per mode, in alternating blocks of "
             f"{args.block}, {args.submitters} sbatch processes at a time (runuser). Load average (1, 5, 15 min) "
             f"before: {load_before[0]:.1f}, {load_before[1]:.1f}, {load_before[2]:.1f}; after: {load_after[0]:.1f}, "
             f"{load_after[1]:.1f}, {load_after[2]:.1f}.",
             "",
             "| measure | with JARM's hook and agent | accept-all default | ratio / target |",
             "|---|---|---|---|",
             f"| sbatch submissions/s | {rate['hook']:.1f} | {rate['default']:.1f} | {ratio:.2f} (target ≥ 0.9) |",
             f"| sbatch latency p50 / p99 (ms) | {1000 * percentile(latencies['hook'], 0.5):.0f} / "
             f"{1000 * percentile(latencies['hook'], 0.99):.0f} | {1000 * percentile(latencies['default'], 0.5):.0f} / "
             f"{1000 * percentile(latencies['default'], 0.99):.0f} | |",
             f"| time the hook adds in slurmctld, p50 / p99 (ms; the hook's own measure, {len(hook_ms)} admissions) | "
             f"{percentile(hook_ms, 0.5):.2f} / {percentile(hook_ms, 0.99):.2f} | — | target p99 ≤ 5 ms |"]
    print("\n".join(lines))
    if args.write:
        command = "python bench/jarm_submit.py" + (f" --submissions {args.submissions}" if args.submissions != 500 else "")
        command += f" --block {args.block}" if args.block != 50 else ""
        command += f" --submitters {args.submitters}" if args.submitters != 4 else ""
        write_section("JARM: sbatch with the admission hook (issue 13.5)", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
