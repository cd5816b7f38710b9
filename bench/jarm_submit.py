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
from gridcredit.xmlstore.basex_server import free_port  # noqa: E402

from slurm_fixtures import SCRIPT, SlurmCluster, _cluster_answers, _replace, slurm_dir  # noqa: E402

JOB_NAME = "jarm-bench"
ACCOUNT = "proj1"
CREDIT = 1_000_000
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
_HOOK_MS = re.compile(r"jarm: admit a-[0-9a-f]{32} account=\S+ in ([0-9.]+) ms(?: \((\w+)\))?")
_CONTROL_MS = re.compile(r"jarm-control: slept in ([0-9.]+) ms")
# The control: a hook that only sleeps about as long as the agent's answer takes (0.5 ms) and measures
# itself the same way — what waking up costs slurmctld's thread on this machine, whatever it waits for.
CONTROL_HOOK = """local socket = require("socket")
function slurm_job_submit(job_desc, part_list, submit_uid)
    local started = socket.gettime()
    socket.sleep(0.0005)
    slurm.log_info("jarm-control: slept in %.3f ms", (socket.gettime() - started) * 1000)
    return slurm.SUCCESS
end
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end
return slurm.SUCCESS
"""


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
    parser.add_argument("--agent-nice", type=int, default=0, metavar="N",
                        help="run the agent at nice N (e.g. -10: the admission agent before batch work; default 0)")
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
        nice = ["nice", "-n", str(args.agent_nice)] if args.agent_nice else []
        agent = start([*nice, sys.executable, "-m", "gridcredit.server.cli", "jarm", "agent", "--account", ACCOUNT],
                      env, root / "agent.log")

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
        texts = {"hook": hook_text, "default": default_text, "control": CONTROL_HOOK}
        seconds = {"hook": 0.0, "default": 0.0, "control": 0.0}
        latencies: dict[str, list[float]] = {"hook": [], "default": [], "control": []}
        measured_ms: dict[str, list[float]] = {"hook": [], "control": []}
        paths: list[str] = []              # how the hook decided each: from its allowance, or asking the agent
        load_before = os.getloadavg()
        blocks = -(-args.submissions // args.block)
        for index in range(blocks):
            count = min(args.block, args.submissions - index * args.block)
            for mode in (("hook", "default", "control") if index % 2 == 0 else ("control", "default", "hook")):
                _replace(cluster.job_submit_path, texts[mode], 0o644)
                # the controller reloads the script at the next submission: one unmeasured job loads it
                submit_block(cluster, workdir, 1, 1)
                offset = log_path.stat().st_size
                took, each = submit_block(cluster, workdir, count, args.submitters)
                seconds[mode] += took
                latencies[mode] += each
                if mode in measured_ms:
                    with open(log_path, "rb") as log:
                        log.seek(offset)
                        pattern = _HOOK_MS if mode == "hook" else _CONTROL_MS
                        matches = pattern.findall(log.read().decode(errors="replace"))
                        found = [float(match[0] if isinstance(match, tuple) else match) for match in matches]
                        if mode == "hook":
                            paths += [match[1] or "agent" for match in matches]
                    if len(found) != count:
                        raise SystemExit(f"expected {count} {mode} lines in slurmctld.log, found {len(found)}: was "
                                         f"the script loaded?")
                    measured_ms[mode] += found
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
    hook_ms, control_ms = measured_ms["hook"], measured_ms["control"]

    def spread(values: list[float]) -> str:
        return (f"{percentile(values, 0.5):.2f} / {percentile(values, 0.95):.2f} / {percentile(values, 0.99):.2f} / "
                f"{max(values):.2f}; {sum(ms <= 5 for ms in values) / len(values):.1%} within 5 ms")

    lines = [f"Machine: {os.cpu_count()} cores, shared; Slurm 22.05 of scripts/slurm.sh (slurmctld, slurmdbd, MariaDB "
             f"on the same machine); the gridcredit host (1 worker) and the agent on it too. {args.submissions} held "
             f"one-core jobs (`sbatch --hold`, gcuser1, account {ACCOUNT}) per mode, in alternating blocks of "
             f"{args.block}, {args.submitters} sbatch processes at a time (runuser); the agent at nice "
             f"{args.agent_nice} (it puts itself under SCHED_BATCH)"
             + f". Modes: JARM's job_submit.lua and agent; the accept-all default; a control hook "
             f"that only sleeps 0.5 ms and times itself as JARM's does. Load average (1, 5, 15 min) before: "
             f"{load_before[0]:.1f}, {load_before[1]:.1f}, {load_before[2]:.1f}; after: {load_after[0]:.1f}, "
             f"{load_after[1]:.1f}, {load_after[2]:.1f}.",
             "",
             "| measure | JARM's hook and agent | accept-all default | control (sleeps 0.5 ms) | ratio / target |",
             "|---|---|---|---|---|",
             f"| sbatch submissions/s | {rate['hook']:.1f} | {rate['default']:.1f} | {rate['control']:.1f} | "
             f"{ratio:.2f} JARM ÷ default (target ≥ 0.9) |",
             "| sbatch latency p50 / p99 (ms) | " + " | ".join(
                 f"{1000 * percentile(latencies[mode], 0.5):.0f} / {1000 * percentile(latencies[mode], 0.99):.0f}"
                 for mode in ("hook", "default", "control")) + " | |",
             f"| time inside slurmctld's hook, p50 / p95 / p99 / longest (ms) | {spread(hook_ms)} | — | "
             f"{spread(control_ms)} | target p99 ≤ 5 ms |",
             "",
             f"JARM's hook decided {paths.count('allowance')} of the {len(paths)} measured submissions from its "
             f"allowance (no round trip) and asked the agent for {paths.count('agent')} (each block's first "
             f"submission, unmeasured, loads the script and asks the agent)."]
    print("\n".join(lines))
    if args.write:
        command = "python bench/jarm_submit.py" + (f" --submissions {args.submissions}" if args.submissions != 500 else "")
        command += f" --block {args.block}" if args.block != 50 else ""
        command += f" --submitters {args.submitters}" if args.submitters != 4 else ""
        command += f" --agent-nice {args.agent_nice}" if args.agent_nice else ""
        title = "JARM: sbatch with the admission hook (issue 13.5)"
        write_section(title + ", the hook spending allowances", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
