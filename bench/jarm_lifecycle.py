"""JARM's lifecycle after the job: reconciliation of runs that ran while the Bank was down, and the
time from a Slurm job's end to its charge and its usage record (issue 13, "Measured", second bullet).

    python bench/jarm_lifecycle.py [--parts reconcile,slurm] [--runs 1000] [--stores embedded[,basex[:N]]]
                                   [--workers 2[,1]] [--jobs 40] [--write]

``reconcile`` (no Slurm; Slurm's side given as data, as tests/test_jarm_lifecycle.py does): a real Bank
host (``gridcredit serve`` with ``--workers`` processes, on each of ``--stores``) and, in this process, a Lifecycle
(services/jarm/lifecycle.py) with its reservations in a store of the same kind (a BaseX server of its own
for basex), ``bank_unreachable = admit_capped`` and a cap no run reaches. Four accounts pay: two by their
owners' delegated proxies, two under a service grant to the site. In one run:

* baseline, the Bank up: ``--runs`` reservations (each a CreateHold), then their ends (each priced and a
  SettleHold) — what the same settlements cost when the Bank answers;
* outage: the Bank host stopped (SIGTERM: its URL refuses connections), ``--runs`` more reservations
  admitted unfunded, their runs ended (each tries its hold and keeps it pending), then the host started
  again on the same state and port and ``reconcile_once`` called until nothing is pending: the time from
  the Bank answering again until every run is charged (each a CreateHold of its cost and a SettleHold).

Checked for both: every reservation charged its cost; one hold per reservation (by its reference), settled,
with one settle transaction; the site's account gained what the paying accounts lost; nothing left held;
the Bank's audit clean. The Bank clients use ``retries=0`` (the host's JARM uses 1: a retry only adds its
back-off to calls that get no answer, i.e. to the outage, not to what is measured).

``slurm`` (root; the real Slurm of scripts/slurm.sh; run it under ``flock /tmp/gridcredit-slurm.lock`` and
never beside another Slurm test): a gridcredit host as tests/test_jarm_lifecycle_slurm.py sets one up (Bank,
JARM with ``[jarm] reconcile_interval_s = 1``, LUTS; embedded store; proj1 paid by Alice's delegated proxy,
proj2 under Bob's grant), gridcredit installed for SlurmUser by ``scripts/jarm-slurm.sh install`` and its
PrologSlurmctld/EpilogSlurmctld scripts (``hooks``) installed, the epilog with one line added first that
appends ``<job id> <date +%s.%N>`` to a file (when EpilogSlurmctld started). ``--jobs`` one-core jobs
(``sleep 1``, alternately gcuser1/proj1 and gcuser2/proj2) submitted at once. For each run: Slurm's end
(sacct End, whole seconds), the epilog's start, when sacct first shows the run ended with its batch step (a
poll every 0.25 s), the charge (the Bank's hold ``ended_at_us``: the SettleHold), the reservation's last
change (``updated_us`` read by JarmClient.reservations as the controller: the record spooled after the
charge) and the LUTS record's ``received_us``. p99 of 40 samples is their largest.

``--write`` records each part in BENCHMARKS.md under its own section, with the command and the load average.
"""
from __future__ import annotations

import argparse
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
from common import scratch_dir, write_section  # noqa: E402

from gridcredit.config import StoreConfig  # noqa: E402
from gridcredit.errors import RemoteFault  # noqa: E402
from gridcredit.security.credentials import load_credential  # noqa: E402
from gridcredit.services.bank.client import BankClient  # noqa: E402
from gridcredit.services.jarm.client import JarmClient  # noqa: E402
from gridcredit.services.jarm.lifecycle import Banker, Lifecycle, Settings, SlurmJob  # noqa: E402
from gridcredit.services.jarm.reservation_store import INDEXES as RESERVATION_INDEXES, ReservationStore  # noqa: E402
from gridcredit.services.jarm.reservations import JobKey, State, Work  # noqa: E402
from gridcredit.services.jarm.store import INDEXES as PRICE_INDEXES, PriceChange, PriceStore  # noqa: E402
from gridcredit.services.jarm.types import JobRequest, MemoryBasis, Metric, Rate, Usage  # noqa: E402
from gridcredit.services.jarm.usage_record import record_id  # noqa: E402
from gridcredit.services.luts.client import LutsClient  # noqa: E402
from gridcredit.timeunits import now_us  # noqa: E402
from gridcredit.xmlstore import open_store  # noqa: E402
from gridcredit.xmlstore.basex_server import BaseXServer, free_port  # noqa: E402

from bank_fixtures import BankUsers, bank_host  # noqa: E402
from jarm_fixtures import controller_files, jarm_settings, open_accounts, prepare_jarm, site_users  # noqa: E402
from conftest import KeyPool, make_test_pki  # noqa: E402

CREDIT = 1_000_000
# one credit per core-minute and one per job (tests/test_jarm_lifecycle*.py's table)
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
SITE = "bench"
REQUEST = JobRequest("batch", "normal", cores=1, time_limit_s=600, memory_mb=0, gpus=0, nodes=1)   # 11 credits
ACCOUNTS = ("acct0", "acct1", "acct2", "acct3")
DELEGATED = ("acct0", "acct1")          # the owner delegated a proxy; the others granted the site
FUNDS = 10**9
CLUSTER = "gridcredit"                  # scripts/slurm.sh's ClusterName
STALLED_S = 240                         # the slurm part gives up when no run was recorded for this long
TITLE_RECONCILE = "JARM: reconciliation of runs that ran while the Bank was down (issue 13)"
TITLE_SLURM = "JARM: job end to charge and usage record, real Slurm (issue 13)"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _value(state) -> str:
    return getattr(state, "value", state)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}, {five:.1f}, {fifteen:.1f}"


# ------------------------------------------------------------------------------- part 1: reconcile

class World:
    """A Bank host, the paying accounts and an in-process Lifecycle over a store of ``backend``."""

    def __init__(self, stack, root: Path, backend: str, pki, runs: int) -> None:
        self.pki, self.runs = pki, runs
        self.admin_files = pki.user("Bench Admin")
        owners = {account: pki.user(f"Bench Owner {account}") for account in ACCOUNTS}
        nobody = pki.user("Bench Nobody")
        users = BankUsers(self.admin_files, pki.user("Bench Admin Two"), pki.user("Bench Auditor"), (), (), (), (),
                          nobody, nobody)
        self.host = stack.enter_context(bank_host(root / "bank", backend, users, pki))
        self.admin = BankClient(self.host.url, credential=self.admin_files.credential, trust_dir=pki.trust_dir,
                                timeout_s=60)
        site_credential = load_credential(pki.host_cert, pki.host_key)
        for account, owner in owners.items():
            self.admin.create_account(account, project="bench", owner_dn=owner.dn)
            self.admin.mint(account, FUNDS)
            if account not in DELEGATED:
                BankClient(self.host.url, credential=owner.credential, trust_dir=pki.trust_dir).grant_service(
                    account, site_credential.dn, hold_max=10**6)
        self.admin.create_account("site", project="bench", owner_dn=self.admin_files.dn)
        proxies = {owners[account].dn: pki.proxy(f"Bench Owner {account}", hours=24) for account in DELEGATED}

        if backend == "basex":
            basex = BaseXServer(root / "jarm-basex", port=free_port()).start()
            stack.callback(basex.stop)
            config = StoreConfig(backend="basex", basex_port=basex.port, timeout_s=60)
        else:
            config = StoreConfig(backend="embedded")
        (root / "jarm").mkdir()
        store = open_store(config, root / "jarm", indexes=PRICE_INDEXES + RESERVATION_INDEXES)
        stack.callback(store.close)
        self.store = store
        t0 = now_us()
        prices = PriceStore(store)
        prices.set_table(PriceChange(SITE, (Rate("batch", "normal", PRICES),), MemoryBasis.ALLOCATED, 1, t0 - 1),
                         set_by="bench", clock=lambda: t0 - 1)
        site = BankClient(self.host.url, credential=site_credential, trust_dir=pki.trust_dir, timeout_s=10,
                          retries=0)
        self.usage: dict[JobKey, Usage] = {}
        self.reported = 0
        local = {f"user{index}": owners[account].dn for index, account in enumerate(ACCOUNTS)}

        def report(_reservation) -> None:
            self.reported += 1

        self.lifecycle = Lifecycle(
            ReservationStore(store), prices, Banker(site=site, delegated=proxies.get, site_dn=site_credential.dn),
            Settings(site=SITE, payee="site", hold_grace_s=3600, bank_unreachable="admit_capped",
                     unfunded_cap_credits=10**12),
            user_dn=local.get, read_usage=self.usage.get, report=report, running=lambda keys: {}, clock=now_us)

    def job(self, number: int) -> SlurmJob:
        index = number % len(ACCOUNTS)
        return SlurmJob(JobKey(SITE, number), f"user{index}", ACCOUNTS[index], REQUEST)

    def balances(self) -> dict[str, tuple[int, int]]:
        return {account: (b.total, b.held) for account in (*ACCOUNTS, "site")
                for b in [self.admin.get_balance(account)]}

    def end(self, key: JobKey) -> None:
        # 1-600 s on one core: 1-10 credits of wall time and the fee
        self.usage[key] = Usage("batch", "normal", elapsed_s=1 + (key.job_id * 37) % 600, total_cpu_ms=0, cores=1,
                                nodes=1)
        return self.lifecycle.ended(key)


SLOW_CALL_S = 0.5
_slow_calls: list[tuple[str, float]] = []


def _count_slow_calls() -> None:
    """Note every client call of this process that takes SLOW_CALL_S or more (timing only: the call is made
    as it would be)."""
    from gridcredit.client import ServiceClient

    attempt = ServiceClient._attempt

    def timed(self, operation, arguments):
        began = time.perf_counter()
        try:
            return attempt(self, operation, arguments)
        finally:
            took = time.perf_counter() - began
            if took >= SLOW_CALL_S:
                _slow_calls.append((operation, took))
    ServiceClient._attempt = timed


def _timed(items, action) -> tuple[float, list[float]]:
    each = []
    began = time.perf_counter()
    for item in items:
        start = time.perf_counter()
        action(item)
        each.append(time.perf_counter() - start)
    return time.perf_counter() - began, each


def check_charged_once(world: World, numbers: range, before: dict, after: dict) -> list[str]:
    """What is wrong with the runs ``numbers`` (empty: each charged its cost exactly once)."""
    problems: list[str] = []
    reservations = {}
    for number in numbers:
        reservation = world.lifecycle.reservations.get(JobKey(SITE, number).reservation_id)
        reservations[reservation.reservation_id] = reservation
        if (reservation.state, reservation.pending) != (State.CHARGED, Work.NONE) or \
                reservation.charged != reservation.cost or reservation.cost <= 0 or not reservation.hold_id:
            problems.append(f"{reservation.reservation_id}: {reservation.state.value} pending="
                            f"{reservation.pending.value} cost {reservation.cost} charged {reservation.charged}")
    holds: dict[str, list] = {}
    settles: dict[str, int] = {}
    for account in ACCOUNTS:
        offset = 0
        while offset is not None:
            page = world.admin.list_holds(account, ended=True, offset=offset, limit=100)
            for hold in page.holds:
                holds.setdefault(hold.reference, []).append(hold)
            offset = page.next_offset
        offset = 0
        while offset is not None:
            page = world.admin.history(account, xpath_filter="t:kind='settle'", offset=offset, limit=100)
            for transaction in page.transactions:
                settles[transaction.hold_id] = settles.get(transaction.hold_id, 0) + 1
            offset = page.next_offset
    for rid, reservation in reservations.items():
        found = holds.get(rid, [])
        if len(found) != 1:
            problems.append(f"{rid}: {len(found)} holds")
            continue
        hold = found[0]
        if hold.hold_id != reservation.hold_id or _value(hold.state) != "settled" or hold.charged != reservation.charged \
                or settles.get(hold.hold_id, 0) != 1:
            problems.append(f"{rid}: hold {hold.hold_id} {_value(hold.state)} charged {hold.charged}, "
                            f"{settles.get(hold.hold_id, 0)} settle transactions")
    charged = sum(r.charged for r in reservations.values())
    lost = sum(before[a][0] - after[a][0] for a in ACCOUNTS)
    gained = after["site"][0] - before["site"][0]
    if not lost == gained == charged:
        problems.append(f"the accounts lost {lost}, the site gained {gained}, the reservations charged {charged}")
    if any(after[a][1] for a in ACCOUNTS):
        problems.append(f"credits still held: {after}")
    return problems


def reconcile_part(backend: str, runs: int, root: Path, pki, workers: int) -> dict:
    import contextlib

    import bank_fixtures

    bank_fixtures.WORKERS = workers          # the host's worker processes (read when it starts)
    with contextlib.ExitStack() as stack:
        world = World(stack, root / f"{backend}-{workers}", backend, pki, runs)
        lifecycle = world.lifecycle
        # warm-up (not measured): a few runs through the whole path
        warm = range(1, 21)
        for number in warm:
            lifecycle.reserve(world.job(number))
            world.end(JobKey(SITE, number))
        result = {"backend": backend, "runs": runs, "workers": workers, "load_start": load()}

        # baseline: the Bank answers
        base = range(1001, 1001 + runs)
        before = world.balances()
        slow_before = len(_slow_calls)
        reserve_s, reserve_each = _timed(base, lambda n: lifecycle.reserve(world.job(n)))
        delegated = [ms for n, ms in zip(base, reserve_each) if ACCOUNTS[n % len(ACCOUNTS)] in DELEGATED]
        granted = [ms for n, ms in zip(base, reserve_each) if ACCOUNTS[n % len(ACCOUNTS)] not in DELEGATED]
        result.update(reserve_delegated_ms=1000 * percentile(delegated, 0.5),
                      reserve_granted_ms=1000 * percentile(granted, 0.5))
        held = [lifecycle.reservations.get(JobKey(SITE, n).reservation_id).state for n in base]
        assert all(state is State.HELD for state in held), {s.value for s in held}
        end_s, _ = _timed(base, lambda n: world.end(JobKey(SITE, n)))
        result["base_problems"] = check_charged_once(world, base, before, world.balances())
        result.update(base_reserve_s=reserve_s, base_end_s=end_s, load_base=load(),
                      base_slow=len(_slow_calls) - slow_before)
        print(f"{backend}, {workers} workers: baseline {runs} runs: reserve {reserve_s:.1f} s, end {end_s:.1f} s "
              f"({'checked' if not result['base_problems'] else result['base_problems'][:3]})", flush=True)

        # the outage
        down = range(100_001, 100_001 + runs)
        before = world.balances()
        world.host.stop()
        admit_s, admit_each = _timed(down, lambda n: lifecycle.reserve(world.job(n)))
        states = [lifecycle.reservations.get(JobKey(SITE, n).reservation_id).state for n in down]
        assert all(state is State.UNFUNDED for state in states), {s.value for s in states}
        ended_s, _ = _timed(down, lambda n: world.end(JobKey(SITE, n)))
        pending = [lifecycle.reservations.get(JobKey(SITE, n).reservation_id) for n in down]
        assert all((r.state, r.pending) == (State.COMPLETING, Work.HOLD) for r in pending), \
            {(r.state.value, r.pending.value) for r in pending}
        tenth = max(1, runs // 10)
        result.update(admit_s=admit_s, admit_first_ms=1000 * sum(admit_each[:tenth]) / tenth,
                      admit_last_ms=1000 * sum(admit_each[-tenth:]) / tenth, down_end_s=ended_s)
        print(f"{backend}: outage: {runs} admitted unfunded in {admit_s:.1f} s, ended in {ended_s:.1f} s", flush=True)
        restart = time.perf_counter()
        world.host.start()
        answering = time.perf_counter()
        slow_before = len(_slow_calls)
        passes, first_pass_s = 0, None
        while True:
            done = lifecycle.reconcile_once()
            passes += 1
            if first_pass_s is None:
                first_pass_s = time.perf_counter() - answering
            if not lifecycle.reservations.with_pending_work():
                break
            if passes > 50:
                raise SystemExit(f"reconciliation did not finish in 50 passes: {done}")
        reconcile_s = time.perf_counter() - answering
        result["reconcile_slow"] = len(_slow_calls) - slow_before
        result.update(restart_s=answering - restart, reconcile_s=reconcile_s, passes=passes, first_pass_s=first_pass_s,
                      load_reconciled=load())
        result["down_problems"] = check_charged_once(world, down, before, world.balances())
        audit = world.admin.audit()
        result["audit"] = "clean" if audit.clean and not audit.findings else f"findings: {audit.findings}"
        result["reported"] = world.reported
        result["load_end"] = load()
        print(f"{backend}: reconciled {runs} in {reconcile_s:.1f} s ({passes} passes); audit {result['audit']}; "
              f"{'checked' if not result['down_problems'] else result['down_problems'][:3]}", flush=True)
        return result


def reconcile_lines(results: list[dict], command: str) -> list[str]:
    runs = results[0]["runs"]
    lines = [f"Machine: {os.cpu_count()} cores, shared. A Bank host (`gridcredit serve`, its worker processes in the table) on each store; "
             f"the Lifecycle (services/jarm/lifecycle.py) in the benchmark's process with its reservations in a store "
             f"of the same kind (a BaseX server of its own for basex); Slurm's side given as data. {runs:,} runs each "
             f"way, one core, 1-600 s; 4 accounts, 2 paying through their owners' delegated proxies, 2 under a "
             f"service grant to the site; bank_unreachable = admit_capped. Baseline: the Bank up, {runs:,} "
             f"reservations (CreateHold each), then their ends (priced, SettleHold). Outage: the Bank host stopped, "
             f"{runs:,} reservations admitted unfunded and their runs ended, the host started again (same state, "
             f"same port), then `reconcile_once` until nothing is pending (a CreateHold of the cost and a SettleHold "
             f"per run). Bank clients with retries=0. Checked each way: each reservation charged its cost, one hold "
             f"per reservation, settled, one settle transaction each; the site gained what the accounts lost; nothing "
             f"left held; audit clean.",
             "",
             "| store, Bank workers | baseline: reserve + end (s) | baseline runs/s | reconciliation after the Bank returns (s) "
             "| reconciled runs/s | reconciliation ÷ baseline | passes | Bank calls ≥ 0.5 s: baseline / reconciliation (of "
             f"{2 * runs:,} each) | checks | load average (1, 5, 15 min): start / "
             "after baseline / after reconciliation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = r["base_reserve_s"] + r["base_end_s"]
        checks = "ok" if not r["base_problems"] and not r["down_problems"] and r["audit"] == "clean" else \
            f"FAILED: {(r['base_problems'] + r['down_problems'])[:2]} {r['audit']}"
        lines.append(f"| {r['backend']}, {r['workers']} | {r['base_reserve_s']:.1f} + {r['base_end_s']:.1f} = {base:.1f} | "
                     f"{runs / base:.1f} | {r['reconcile_s']:.1f} | {runs / r['reconcile_s']:.1f} | "
                     f"{r['reconcile_s'] / base:.2f} | {r['passes']} | {r['base_slow']} / {r['reconcile_slow']} | {checks} | {r['load_start']} / {r['load_base']} "
                     f"/ {r['load_reconciled']} |")
    lines += ["", "While the Bank was down (not part of the reconciliation time):", "",
              "| store, Bank workers | admitting the runs unfunded (s) | per admission, first / last tenth (ms) | their ends, each "
              "trying its hold (s) | host restart until TLS answers (s) | baseline: one reserve, p50, delegated / "
              "granted (ms) |",
              "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']}, {r['workers']} | {r['admit_s']:.1f} | {r['admit_first_ms']:.1f} / {r['admit_last_ms']:.1f} | "
                     f"{r['down_end_s']:.1f} | {r['restart_s']:.1f} | {r['reserve_delegated_ms']:.1f} / "
                     f"{r['reserve_granted_ms']:.1f} |")
    return lines


# ----------------------------------------------------------------------------------- part 2: slurm

def slurm_part(jobs: int, root: Path, pki) -> dict:
    from slurm_fixtures import SCRIPT, SlurmCluster, _cluster_answers, slurm_dir

    if os.geteuid() != 0:
        raise SystemExit("the slurm part runs as root: it submits as gcuser1/gcuser2 (runuser) and installs the hooks")
    cluster = SlurmCluster(slurm_dir())
    if not cluster.conf.exists() or _cluster_answers(cluster) is not None:
        subprocess.run([str(SCRIPT), "start"], check=True, stdin=subprocess.DEVNULL)
    prefix = slurm_dir() / "gridcredit"
    installed = subprocess.run([str(REPO / "scripts" / "jarm-slurm.sh"), "install", "--prefix", str(prefix)],
                               capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    if installed.returncode != 0:
        raise SystemExit(f"scripts/jarm-slurm.sh install exited {installed.returncode}: {installed.stdout[-800:]}"
                         f"{installed.stderr[-800:]}")
    people = {name: pki.user(f"Bench {name.title()}") for name in ("admin", "alice", "bob", "prices", "auditor")}
    env = jarm_settings(root, people, cluster)
    workdir = Path(tempfile.mkdtemp(prefix="gridcredit-bench-jarm-", dir="/tmp"))
    workdir.chmod(0o1777)
    submitted: list[int] = []
    result: dict = {"jobs": jobs}
    try:
        with bank_host(root / "host", "embedded", site_users(pki, people), pki, extra_env=env) as host:
            open_accounts(host.url, pki, people, project="bench", funds=FUNDS)
            bank = BankClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir, timeout_s=60)
            prepare_jarm(host.url, pki, people)
            # the controller's files and hooks, as the tests' hooks fixture installs them (own folder)
            files = slurm_dir() / "jarm-bench-controller"
            scripts = controller_files(files, pki, prefix=prefix, jarm_url=host.url)
            ends_file = files / "epilog-started"
            ends_file.touch()
            slurm = pwd.getpwnam("slurm")
            os.chown(ends_file, slurm.pw_uid, slurm.pw_gid)
            epilog = (scripts / "jarm-epilog").read_text().replace(
                "#!/bin/sh\n", f'#!/bin/sh\necho "$SLURM_JOB_ID $(date +%s.%N)" >> {ends_file}\n', 1)
            with cluster.prolog((scripts / "jarm-prolog").read_text()), cluster.epilog(epilog):
                result.update(_run_jobs(cluster, host, bank, pki, people, jobs, workdir, ends_file, submitted))
            result["host_log"] = host.log_text()
    finally:
        if submitted:
            cluster.run(["scancel", *map(str, submitted)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _sacct_poller(cluster, ids: list[int], seen: dict[int, tuple[float, int]], stop: threading.Event) -> None:
    """Record when sacct first shows each job ended with its batch step: {job: (time.time(), End in s)}."""
    terminal = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
    env = {**cluster.env(), "SLURM_TIME_FORMAT": "%s", "LC_ALL": "C", "TZ": "UTC"}
    while not stop.is_set() and len(seen) < len(ids):
        waiting = [str(i) for i in ids if i not in seen]
        result = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(waiting), "-o", "JobID,State,End"], env=env,
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        now = time.time()
        records: dict[str, tuple[str, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 3:
                records[parts[0]] = (parts[1].split()[0] if parts[1] else "", parts[2])
        for job in waiting:
            main, batch = records.get(job), records.get(f"{job}.batch")
            if main and batch and main[0] in terminal and batch[0] in terminal and main[1].isdigit():
                seen[int(job)] = (now, int(main[1]))
        stop.wait(0.25)


def _run_jobs(cluster, host, bank, pki, people, jobs, workdir, ends_file, submitted) -> dict:
    controller = JarmClient(host.url, credential=load_credential(pki.host_cert, pki.host_key), trust_dir=pki.trust_dir)
    luts = LutsClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
    load_before = load()
    began = time.time()
    for index in range(jobs):
        user, account = ("gcuser1", "proj1") if index % 2 == 0 else ("gcuser2", "proj2")
        submitted.append(cluster.sbatch([f"--account={account}", "--time=1", "-n1", "--job-name=jarm-bench-end",
                                         "--wrap", "sleep 1"], user=user, workdir=workdir))
    seen: dict[int, tuple[float, int]] = {}
    stop = threading.Event()
    poller = threading.Thread(target=_sacct_poller, args=(cluster, submitted, seen, stop), daemon=True)
    poller.start()
    # Slurm starts these jobs two at a time, often only at the backfill's next pass (~30 s): wait while
    # runs keep being recorded, at most STALLED_S without a new one
    progress = (0, time.monotonic())
    views: dict[int, object] = {}
    records: dict[int, object] = {}
    try:
        while time.monotonic() - progress[1] < STALLED_S:
            found = []
            offset = 0
            while True:
                page = controller.reservations(offset=offset, limit=100)
                found += page
                if len(page) < 100:
                    break
                offset += 100
            for view in found:
                if view.key.job_id in submitted and view.state == "charged" and not view.pending:
                    views[view.key.job_id] = view
            for job, view in views.items():
                if job not in records:
                    try:
                        records[job] = luts.record(record_id(CLUSTER, view.reservation_id), machine="localhost")
                    except RemoteFault:
                        pass            # not sent yet
            if len(records) == jobs:
                break
            if len(records) > progress[0]:
                progress = (len(records), time.monotonic())
            time.sleep(0.5)
    finally:
        stop.set()
        poller.join(30)
    load_after = load()
    if len(records) < jobs:
        states = {v.key.job_id: (v.state, v.pending, v.message[:100]) for v in controller.reservations(limit=100)}
        raise SystemExit(f"only {len(records)} of {jobs} runs charged and recorded (none more in {STALLED_S} s): "
                         f"{states}")
    epilog_at = {}
    for line in ends_file.read_text().splitlines():
        job, at = line.split()
        epilog_at.setdefault(int(job), float(at))
    rows = []
    for job in submitted:
        view, record = views[job], records[job]
        hold = bank.get_hold(view.hold_id)
        accounted_at, end_s = seen.get(job, (None, None))
        rows.append({"job": job, "end": end_s, "epilog": epilog_at.get(job), "accounted": accounted_at,
                     "charged": hold.ended_at_us / 1e6, "updated": view.updated_us / 1e6,
                     "stored": record.received_us / 1e6, "hold_state": _value(hold.state), "cost": view.cost,
                     "charged_credits": view.charged, "authority": view.authority})
    return {"rows": rows, "load_before": load_before, "load_after": load_after, "wall_s": time.time() - began}


def slurm_lines(result: dict) -> list[str]:
    rows = result["rows"]
    missing = [r["job"] for r in rows if r["end"] is None or r["epilog"] is None or r["accounted"] is None]
    complete = [r for r in rows if r["job"] not in missing]

    def spread(name: str, start: str, end: str, within=complete) -> str:
        values = [r[end] - r[start] for r in within]
        return (f"| {name} | {percentile(values, 0.5):.2f} | {percentile(values, 0.99):.2f} | {min(values):.2f} | "
                f"{sum(values) / len(values):.2f} |")

    bad = [r["job"] for r in rows if r["hold_state"] != "settled" or r["charged_credits"] != r["cost"]]
    lines = [f"Machine: {os.cpu_count()} cores, shared; Slurm 22.05 of scripts/slurm.sh (slurmctld, slurmd, slurmdbd, "
             f"MariaDB on the same machine) and the gridcredit host (Bank, JARM, LUTS; embedded store; 2 workers) on "
             f"it too; `[jarm] reconcile_interval_s = 1`. gridcredit installed for SlurmUser by scripts/jarm-slurm.sh "
             f"install, its PrologSlurmctld/EpilogSlurmctld scripts (`hooks`) installed, the epilog with one line "
             f"first that notes when it started. {result['jobs']} one-core jobs (`sbatch --time=1 -n1 --wrap 'sleep "
             f"1'`), alternately gcuser1/proj1 (Alice's delegated proxy) and gcuser2/proj2 (Bob's grant), submitted at "
             f"once; all {result['jobs']} charged and recorded {result['wall_s']:.0f} s after the first submission. "
             f"Load average (1, 5, 15 min) before: {result['load_before']}; after: {result['load_after']}.",
             "",
             "Seconds per run. Slurm's end is sacct's End, in whole seconds (the true end lies up to 1 s after it: "
             "figures from it overstate by 0-1 s); 'sacct has it': the first poll (every 0.25 s) that shows the job "
             "and its batch step ended; the charge: the Bank's end of the hold (SettleHold); spooled: the "
             "reservation's last change (its usage record added to the spool after the charge); stored: the LUTS "
             f"record's received_us. p99 of {len(complete)} samples is the largest.",
             "",
             "| from → to | p50 | p99 | min | mean |",
             "|---|---|---|---|---|",
             spread("**Slurm's end → charge applied (Bank)**", "end", "charged"),
             spread("**Slurm's end → usage record stored (LUTS)**", "end", "stored"),
             spread("Slurm's end → EpilogSlurmctld started", "end", "epilog"),
             spread("Slurm's end → sacct has it", "end", "accounted"),
             spread("EpilogSlurmctld started → sacct has it", "epilog", "accounted"),
             spread("sacct has it → charge applied", "accounted", "charged"),
             spread("EpilogSlurmctld started → charge applied", "epilog", "charged"),
             spread("charge applied → record spooled", "charged", "updated"),
             spread("record spooled → stored by the LUTS", "updated", "stored")]
    lines.append("")
    lines.append(f"Checks: every hold settled and every run charged its cost: "
                 f"{'yes' if not bad else f'NO for jobs {bad}'}" +
                 (f"; runs without a sacct/epilog time (left out of the table): {missing}" if missing else "") + ".")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="reconcile,slurm", help="reconcile, slurm or both (default both)")
    parser.add_argument("--runs", type=int, default=1000, help="runs reconciled, and as many as the baseline "
                        "(default 1000)")
    parser.add_argument("--stores", default="embedded", help="the reconcile part's stores: embedded, basex or "
                        "embedded,basex (default embedded); STORE:N runs that store with N Bank workers only")
    parser.add_argument("--workers", default="2", help="the reconcile part's Bank host worker processes, e.g. 2 "
                        "or 2,1 (default 2)")
    parser.add_argument("--jobs", type=int, default=40, help="Slurm jobs of the slurm part (default 40)")
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not set(parts) <= {"reconcile", "slurm"}:
        raise SystemExit(f"--parts: reconcile and/or slurm, not {args.parts}")
    root = scratch_dir("gridcredit-bench-jarm-lifecycle-")
    root.chmod(0o755)
    # the Lifecycle's log lines (one warning per Bank call refused during the outage) to a file
    logging.basicConfig(filename=str(root / "bench.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pki = make_test_pki(root / "pki", KeyPool("rsa", shared_size=2))
    if "reconcile" in parts:
        _count_slow_calls()
        configs = []
        for entry in args.stores.split(","):
            store, _, own = entry.strip().partition(":")
            configs += [(store, int(workers)) for workers in (own or args.workers).split(",")]
        results = [reconcile_part(store, args.runs, root, pki, workers) for store, workers in configs]
        command = "python bench/jarm_lifecycle.py --parts reconcile" + \
            (f" --runs {args.runs}" if args.runs != 1000 else "") + \
            (f" --stores {args.stores}" if args.stores != "embedded" else "") + \
            (f" --workers {args.workers}" if args.workers != "2" else "")
        lines = reconcile_lines(results, command)
        print("\n".join(lines))
        if args.write:
            write_section(TITLE_RECONCILE, command, lines)
    if "slurm" in parts:
        result = slurm_part(args.jobs, root, pki)
        if os.environ.get("GRIDCREDIT_BENCH_KEEP"):
            (root / "slurm-rows.txt").write_text("\n".join(map(str, result["rows"])) + "\n")
            (root / "slurm-host.log").write_text(result["host_log"])
            print(f"kept: {root}/slurm-rows.txt, {root}/slurm-host.log")
        lines = slurm_lines(result)
        print("\n".join(lines))
        if args.write:
            command = "flock /tmp/gridcredit-slurm.lock python bench/jarm_lifecycle.py --parts slurm" + \
                (f" --jobs {args.jobs}" if args.jobs != 40 else "")
            write_section(TITLE_SLURM, command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
