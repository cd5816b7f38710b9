"""JARM against the real Slurm through crashes (issue 13, "Proved by tests": kill -9 of the bank during a stream
of jobs, of JARM itself, and a restart of slurmctld — after recovery every job is charged exactly once and no
record is lost).

Here the Bank and the JARM are two hosts (two ``gridcredit serve``, each its own process group and state): the
JARM host's [jarm] bank_url names the Bank host, so each can be killed alone. The JARM host keeps the LUTS its
usage records go to. The site's policy when the Bank does not answer is ``admit_capped`` (a run is admitted
unfunded within the account's cap and charged when the Bank answers again).

What the design does on each failure (services/jarm/slurm/hooks.py, lifecycle.py):

* the JARM killed: a PrologSlurmctld that cannot reach it refuses the job — it writes why into the job's
  Comment, puts the job on a user hold and exits 1 (Slurm requeues the job, restart count + 1). The site (here
  the test) releases the held jobs once the JARM answers again (``scontrol release``; and lets them start at once,
  not after Slurm's 120 s for a requeued job) and they run under a new reservation (their next restart count). An EpilogSlurmctld that cannot reach it is lost: the JARM's
  reconciler finds the run ended (Slurm no longer runs it) and charges it. A request the JARM was making at
  the Bank when it died is made again by the reconciler from the reservation in the store (the durable
  journal) under the same request id: the Bank answers with its first outcome.
* the Bank killed: runs starting meanwhile are admitted unfunded; the ones ending meanwhile wait, pending, in
  the store; once the Bank answers, each unfunded run gets a hold of its cost and is settled, each held run is
  settled.
* slurmctld restarted: runs that end while it is down are reported when it is back (or found by the
  reconciler).

Afterwards, for every job: its last run completed and has exactly one reservation, charged once its cost by
sacct's measure; an earlier run refused by the prolog has a reservation only if the JARM saw it, released and
charged nothing; every hold ended once (settled or released); the site's account gained exactly what the
users' accounts lost; the Bank's audit is clean; the LUTS holds one usage record per charged run.

Every test submits jobs to the one shared cluster: run them under ``flock /tmp/gridcredit-slurm.lock``.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gridcredit.errors import RemoteFault
from gridcredit.services.bank.client import BankClient
from gridcredit.services.jarm.client import JarmClient
from gridcredit.services.jarm.slurm.accounting import REQUEUED_STATES
from gridcredit.services.jarm.usage_record import record_id
from gridcredit.services.luts.client import LutsClient

from bank_fixtures import bank_host
from jarm_fixtures import *  # noqa: F401,F403 (fixtures: site_install, people, hooks, jobs, slurm_cluster …)
from jarm_fixtures import (CLUSTER, REPO, controller, expected_cost, jarm_settings, open_accounts, prepare_jarm,
                           site_users, start_requeued_now, stored_usage_records)
from slurm_fixtures import _replace

pytestmark = pytest.mark.slow

UNFUNDED_CAP = 30               # credits of unfunded work per account while the Bank does not answer
OUTAGE_S = 90                   # the longest a host stays down waiting for the prologs the test means to fail
ENDED_WITHIN_S = 600            # (Slurm starts jobs two at a time, often at its backfill's pass, every 30 s)
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
             "BOOT_FAIL", "DEADLINE"}


# ------------------------------------------------------------------------------------------- the two hosts

@pytest.fixture(scope="module")
def bank(pki, people, tmp_path_factory):
    """The Bank's host (a `gridcredit serve` of its own): accounts proj1 (Alice's), proj2 (Bob's, the site's
    JARM may hold on it for him) and site, FUNDS credits each of the users' (jarm_fixtures.open_accounts)."""
    with bank_host(tmp_path_factory.mktemp("jarm-crash-bank"), "embedded", site_users(pki, people), pki) as running:
        open_accounts(running.url, pki, people, project="crash")
        yield running


@pytest.fixture(scope="module")
def host(pki, people, bank, slurm_cluster, tmp_path_factory):
    """The JARM's host (this module's ``host``: jarm_fixtures' ``hooks`` point the prolog and epilog at it),
    its Bank the ``bank`` host; Alice delegated her proxy to it; price table 1."""
    root = tmp_path_factory.mktemp("jarm-crash-jarm")
    env = jarm_settings(root, people, slurm_cluster, GRIDCREDIT_JARM_BANK_URL=bank.url,
                        GRIDCREDIT_JARM_BANK_UNREACHABLE="admit_capped",
                        GRIDCREDIT_JARM_UNFUNDED_CAP_CREDITS=str(UNFUNDED_CAP))
    with bank_host(root, "embedded", site_users(pki, people), pki, extra_env=env) as running:
        prepare_jarm(running.url, pki, people)
        yield running


# ------------------------------------------------------------------------------------------------- helpers

def _submit(cluster, workdir, jobs, user: str, account: str, *options: str) -> int:
    job_id = cluster.sbatch([f"--account={account}", *options], user=user, workdir=workdir)
    jobs.append(job_id)
    return job_id


def _user(index: int) -> tuple[str, str]:
    return ("gcuser1", "proj1") if index % 2 == 0 else ("gcuser2", "proj2")


def _queue(cluster) -> list[dict[str, str]]:
    """The controller's jobs (one per array task that has its own record) as dicts of scontrol's fields."""
    text = cluster.run(["scontrol", "-o", "show", "jobs"]).stdout
    jobs = []
    for line in text.splitlines():
        if line.startswith("JobId="):
            job = dict(re.findall(r"(\w+)=(\S*)", line))
            comment = re.search(r" Comment=(.*?)(?= [A-Z][A-Za-z]*=|$)", line)   # (words with spaces)
            job["Comment"] = comment.group(1).strip() if comment else ""     # (the line may end in a space)
            jobs.append(job)
    return jobs


def _name(job: dict[str, str]) -> str:
    task = job.get("ArrayTaskId", "")
    return f"{job['ArrayJobId']}_{task}" if task.isdigit() else job["JobId"]


class Watch:
    """What the test saw of the cluster while it ran: the jobs refused by the prolog (their Comment), the
    ones held, the reservations seen unfunded."""

    def __init__(self, cluster, job_ids) -> None:
        self.cluster, self.job_ids = cluster, set(job_ids)
        self.refused: dict[str, str] = {}          # job → the Comment the prolog wrote
        self.held: set[str] = set()
        self.released: set[str] = set()
        self.unfunded: set[str] = set()            # reservation ids seen in state unfunded

    def look(self, *, release: bool) -> list[dict[str, str]]:
        mine = [job for job in _queue(self.cluster)
                if int(job.get("ArrayJobId") or job["JobId"]) in self.job_ids]
        for job in mine:
            name = _name(job)
            if job.get("Comment", "").startswith("JARM:"):
                self.refused.setdefault(name, job["Comment"])
            if job.get("JobState") == "PENDING" and job.get("Reason", "").startswith("JobHeld"):
                self.held.add(name)
                if release:
                    self.cluster.run(["scontrol", "release", name], check=False)
                    self.released.add(name)
            elif release and job.get("JobState") == "PENDING" and job.get("Reason") == "BeginTime" \
                    and job.get("Restarts", "0") != "0":
                start_requeued_now(self.cluster, name)      # (a requeued run: not after Slurm's 120 s)
        return mine

    def look_at_reservations(self, jarm: JarmClient) -> None:
        try:
            for view in jarm.reservations(limit=1000):
                if view.state == "unfunded":
                    self.unfunded.add(view.reservation_id)
        except Exception:  # noqa: BLE001 — the JARM may be down just now (any transport error)
            pass

    def wait_for_ends(self, names: list[str], timeout_s: float = ENDED_WITHIN_S) -> dict[str, list[dict]]:
        """Release held jobs until every one of ``names`` has ended in sacct (its last run); sacct's runs of each."""
        deadline = time.monotonic() + timeout_s
        runs: dict[str, list[dict]] = {}
        while time.monotonic() < deadline:
            self.look(release=True)
            runs = {name: _runs(self.cluster, name) for name in names}
            if all(found and found[-1]["State"].split()[0] in _TERMINAL for found in runs.values()):
                return runs
            time.sleep(2)
        raise AssertionError(f"not every job ended within {timeout_s} s: "
                             + "; ".join(f"{name}: {[r['State'] for r in found]}" for name, found in runs.items())
                             + f"\nqueue: {[(_name(j), j.get('JobState'), j.get('Reason')) for j in self.look(release=False)]}")


def _runs(cluster, name: str) -> list[dict[str, str]]:
    """sacct's records of one job or array task, one per run (-D: a requeued run first), without its steps."""
    job_id = name.split("_")[0]
    fields = ("JobID", "State", "ElapsedRaw", "AllocTRES", "Start", "End")
    result = cluster.run(["sacct", "-j", job_id, "-n", "-P", "-D", "-X", "-o", ",".join(fields)])
    return [record for record in (dict(zip(fields, line.split("|"))) for line in result.stdout.splitlines())
            if record["JobID"] == name]


def _cores(run: dict[str, str]) -> int:
    return int(dict(item.split("=", 1) for item in run["AllocTRES"].split(",") if "=" in item).get("cpu", "0"))


def _all_reservations(jarm: JarmClient, job_ids) -> list:
    wanted = set(job_ids)
    return [view for view in jarm.reservations(limit=1000) if view.key.job_id in wanted]


def wait_until_settled(jarm: JarmClient, job_ids, timeout_s: float = 240) -> list:
    """The reservations of ``job_ids`` once none has work pending and none is still held or unfunded."""
    deadline = time.monotonic() + timeout_s
    found = []
    while time.monotonic() < deadline:
        found = _all_reservations(jarm, job_ids)
        if found and all(not view.pending and view.state in ("charged", "released", "refused") for view in found):
            return found
        time.sleep(1)
    raise AssertionError(f"reservations not all ended within {timeout_s} s: "
                         + "; ".join(f"{v.reservation_id} {v.state} pending={v.pending} {v.message}" for v in found))


def check_charged_once(*, cluster, bank_url, jarm, luts, pki, people, names, runs, before, reservations):
    """The invariants after recovery (see the module's docstring); answers the charged reservations."""
    bank_client = BankClient(bank_url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
    by_name: dict[str, list] = {}
    for view in reservations:
        by_name.setdefault(view.key.job, []).append(view)
    charged_views = []
    for name in names:
        found = runs[name]
        last = found[-1]
        assert last["State"] == "COMPLETED", (name, found)
        restarts = len(found) - 1                   # sacct -D: one record per run, the last is the latest
        views = {view.key.restarts: view for view in by_name.get(name, [])}
        assert len(views) == len(by_name.get(name, [])), (name, by_name.get(name))   # one per run
        final = views.get(restarts)
        assert final is not None, f"job {name}'s run {restarts} has no reservation: {sorted(views)} {found}"
        cost = expected_cost(int(last["ElapsedRaw"]), _cores(last))
        assert (final.state, final.pending, final.cost, final.charged) == ("charged", "", cost, cost), (final, last)
        charged_views.append(final)
        for restart, view in views.items():
            if restart == restarts:
                continue
            # an earlier run: refused by the prolog (the JARM did not answer) — it never ran, nothing charged
            assert restart < restarts, (name, view)
            assert found[restart]["State"].split()[0] in REQUEUED_STATES, (name, found)
            assert view.state in ("released", "refused") and view.charged == 0, view
    # the Bank: each hold ended once — settled for a charged run, released otherwise
    for view in reservations:
        if view.hold_id:
            hold = bank_client.get_hold(view.hold_id)
            assert hold.state == ("settled" if view.state == "charged" else "released"), (view, hold)
    charged = {account: sum(v.charged for v in charged_views if v.account == account) for account in ("proj1", "proj2")}
    after = {account: bank_client.get_balance(account) for account in ("proj1", "proj2", "site")}
    assert before["proj1"] - after["proj1"].total == charged["proj1"], (before, after, charged)
    assert before["proj2"] - after["proj2"].total == charged["proj2"], (before, after, charged)
    assert after["site"].total - before["site"] == charged["proj1"] + charged["proj2"]
    assert after["proj1"].held == after["proj2"].held == 0, after
    report = bank_client.audit()
    assert report.clean and not report.findings, report
    # the LUTS: one usage record per charged run, with its charge
    stored = stored_usage_records(luts, [view.reservation_id for view in charged_views])
    for view in charged_views:
        usage = stored[view.reservation_id].usage
        assert usage.charge_micro == view.charged * 1_000_000, (view, usage)
    # … and none for a run that was not charged
    for view in reservations:
        if view.state != "charged":
            with pytest.raises(RemoteFault):
                luts.record(record_id(CLUSTER, view.reservation_id), machine="localhost")
    return charged_views


def _balances(bank_url, pki, people) -> dict[str, int]:
    client = BankClient(bank_url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
    return {account: client.get_balance(account).total for account in ("proj1", "proj2", "site")}


def _names(job_ids, arrays: dict[int, int]) -> list[str]:
    names = []
    for job_id in job_ids:
        names.extend([f"{job_id}_{task}" for task in range(arrays[job_id])] if job_id in arrays else [str(job_id)])
    return names


def _wait_running(cluster, job_ids, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    wanted = set(job_ids)
    while time.monotonic() < deadline:
        running = [j for j in _queue(cluster) if int(j.get("ArrayJobId") or j["JobId"]) in wanted
                   and j.get("JobState") == "RUNNING"]
        if len(running) >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} of {sorted(wanted)} running within {timeout_s} s")


# --------------------------------------------------------------------------------------------------- tests

def test_kill9_of_jarm_and_of_the_bank_during_a_stream_of_jobs(slurm_cluster, slurm_workdir, hooks, host, bank,
                                                                pki, people, jobs):
    jarm, luts = controller(host, pki), LutsClient(host.url, credential=people["admin"].credential,
                                                     trust_dir=pki.trust_dir)
    before = _balances(bank.url, pki, people)
    arrays: dict[int, int] = {}
    watch = Watch(slurm_cluster, ())

    def submit(index: int, *options: str) -> int:
        user, account = _user(index)
        job_id = _submit(slurm_cluster, slurm_workdir, jobs, user, account, "--time=1", *options)
        watch.job_ids.add(job_id)
        return job_id

    def pause(seconds: float, *, until=None) -> None:
        """Watch for ``seconds``; with ``until``: until it is true (at most OUTAGE_S), then ``seconds`` more
        (Slurm starts the next jobs at its scheduler's pace: a fixed outage may see no prolog run)."""
        if until is not None:
            deadline = time.monotonic() + OUTAGE_S
            while not until() and time.monotonic() < deadline:
                pause(0.5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            watch.look(release=False)
            watch.look_at_reservations(jarm)
            time.sleep(0.5)

    # a stream of 18 runs, both users, one array of 3; 2 CPUs: two run at a time
    for index in range(4):
        submit(index, "--wrap", "sleep 3")
    pause(4)
    host.kill9()                                # JARM dies: prologs refuse (and hold), epilogs are lost
    for index in range(4, 7):
        submit(index, "--wrap", "sleep 3")
    pause(2, until=lambda: len(watch.refused) >= 2)
    host.start()
    array = submit(7, "--array=0-2", "--wrap", "sleep 2")
    arrays[array] = 3
    for index in range(8, 11):
        submit(index, "--wrap", "sleep 3")
    pause(3)
    bank.kill9()                                # the Bank dies: runs admitted unfunded, settlements wait
    for index in range(11, 14):
        submit(index, "--wrap", "sleep 2")
    pause(5, until=lambda: len(watch.unfunded) >= 2)     # (and some end meanwhile)
    bank.start()
    pause(2)
    host.kill9()                                # JARM dies again, while it settles what waited for the Bank
    pause(5)
    host.start()
    for index in range(14, 16):
        submit(index, "--wrap", "sleep 3")
    pause(3)
    host.kill9()                                # both at once (as when one `gridcredit serve` runs both)
    bank.kill9()
    pause(6)
    bank.start()
    host.start()

    names = _names(jobs, arrays)
    runs = watch.wait_for_ends(names)
    reservations = wait_until_settled(jarm, jobs)
    charged = check_charged_once(cluster=slurm_cluster, bank_url=bank.url, jarm=jarm, luts=luts, pki=pki,
                                 people=people, names=names, runs=runs, before=before, reservations=reservations)
    assert len(charged) == len(names) == 18

    # the crashes did what the test means them to: some prologs found no JARM — refused, held, then released
    # and run; some runs were admitted while the Bank was down
    assert watch.refused, "no prolog ran while the JARM was down: the test proves nothing"
    for name, comment in watch.refused.items():
        # plain words (hooks.refusal_comment): the JARM's address, what the connection did, the release
        assert re.fullmatch(r"JARM: job (\d+) held, not started: JarmUnreachable: the JARM at https://\S+/jarm did "
                            r"not answer \([a-z ]+\); once it does, release the job: scontrol release \1", comment), \
            (name, comment)
    refused_runs = {name for name in names if len(runs[name]) > 1}
    assert refused_runs, runs
    assert refused_runs <= set(watch.refused), (refused_runs, watch.refused)
    assert watch.held >= refused_runs, ("the prolog's hold did not take: these were requeued without a hold",
                                        refused_runs - watch.held)
    assert watch.unfunded, "no run was admitted unfunded while the Bank was down: the test proves nothing"


def _with_the_bank_down(cluster, workdir, jobs, jarm: JarmClient, bank, count: int, while_down=None):
    """Kill the Bank, submit ``count`` short jobs (both users), wait until each was admitted unfunded and has
    ended (priced, its hold waiting for the Bank), call ``while_down()``, start the Bank; (names, runs)."""
    bank.kill9()
    watch = Watch(cluster, ())
    try:
        for index in range(count):
            user, account = _user(index)
            watch.job_ids.add(_submit(cluster, workdir, jobs, user, account, "--time=1", "--wrap", "sleep 2"))
        names = _names(jobs, {})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(watch.unfunded) < len(names):
            watch.look_at_reservations(jarm)
            time.sleep(0.5)
        assert len(watch.unfunded) == len(names), watch.unfunded
        runs = watch.wait_for_ends(names)
        deadline = time.monotonic() + 60        # the reconciler (or the epilog) prices each: a hold of the cost next
        while True:
            waiting = _all_reservations(jarm, jobs)
            if all(view.state == "completing" and view.pending == "hold" for view in waiting):
                break
            assert time.monotonic() < deadline, waiting
            time.sleep(1)
        if while_down is not None:
            while_down()
    finally:
        bank.start()
    return names, runs


def _unfunded_listing(host, pki) -> dict[str, str]:
    """`gridcredit jarm unfunded --json` as the site's controller: reservation id → how it was settled."""
    result = subprocess.run([sys.executable, "-m", "gridcredit.server.cli", "jarm", "unfunded", "--url", host.url,
                             "--cert", str(pki.host_cert), "--key", str(pki.host_key), "--trust", str(pki.trust_dir),
                             "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return {row["reservation"]["reservation_id"]: row["settlement"] for row in json.loads(result.stdout)}


def test_the_bank_alone_killed_runs_are_admitted_unfunded_then_charged(slurm_cluster, slurm_workdir, hooks, host,
                                                                       bank, pki, people, jobs):
    jarm, luts = controller(host, pki), LutsClient(host.url, credential=people["admin"].credential,
                                                     trust_dir=pki.trust_dir)
    before = _balances(bank.url, pki, people)
    names, runs = _with_the_bank_down(slurm_cluster, slurm_workdir, jobs, jarm, bank, 4)
    reservations = wait_until_settled(jarm, jobs)
    charged = check_charged_once(cluster=slurm_cluster, bank_url=bank.url, jarm=jarm, luts=luts, pki=pki,
                                 people=people, names=names, runs=runs, before=before, reservations=reservations)
    assert len(charged) == 4


def test_jarm_unfunded_lists_the_runs_admitted_unfunded_waiting_then_settled(slurm_cluster, slurm_workdir, hooks,
                                                                             host, bank, pki, people, jobs):
    jarm = controller(host, pki)
    listed_while_down = {}
    _with_the_bank_down(slurm_cluster, slurm_workdir, jobs, jarm, bank, 2,
                        while_down=lambda: listed_while_down.update(_unfunded_listing(host, pki)))
    reservations = wait_until_settled(jarm, jobs)
    listed = _unfunded_listing(host, pki)
    for view in reservations:
        assert listed_while_down.get(view.reservation_id) == "not settled yet (completing, pending hold)", \
            (view.reservation_id, listed_while_down)
        assert listed.get(view.reservation_id) == f"settled: {view.charged:,} credits charged", (view, listed)


def test_slurmctld_restarted_while_jobs_run_and_end(slurm_cluster, slurm_workdir, hooks, host, bank, pki, people,
                                                    jobs):
    jarm, luts = controller(host, pki), LutsClient(host.url, credential=people["admin"].credential,
                                                     trust_dir=pki.trust_dir)
    before = _balances(bank.url, pki, people)
    watch = Watch(slurm_cluster, ())
    for index in range(6):
        user, account = _user(index)
        watch.job_ids.add(_submit(slurm_cluster, slurm_workdir, jobs, user, account, "--time=1", "--wrap",
                                  f"sleep {3 + index % 3}"))
    _wait_running(slurm_cluster, jobs, 2)
    time.sleep(2)
    slurm_cluster.restart("slurmctld")          # SIGTERM, then scripts/slurm.sh start: runs end meanwhile
    names = _names(jobs, {})
    runs = watch.wait_for_ends(names)
    reservations = wait_until_settled(jarm, jobs)
    charged = check_charged_once(cluster=slurm_cluster, bank_url=bank.url, jarm=jarm, luts=luts, pki=pki,
                                 people=people, names=names, runs=runs, before=before, reservations=reservations)
    assert len(charged) == 6


def test_a_prolog_whose_answer_is_lost_after_the_jarm_held_charges_only_the_run_that_ran(
        slurm_cluster, slurm_workdir, hooks, host, bank, pki, people, jobs):
    """The JARM reserved and held for a job, but its answer never reached the prolog (the JARM killed just
    after it kept the hold, a timeout): the prolog exits non-zero and Slurm requeues the job — that run never
    ran (sacct: REQUEUED, no step). The run after it is reserved anew (restart count + 1) and charged; the
    first run's hold must be released, not charged (Slurm's record of it has an allocation and a second or
    two of "elapsed" between the allocation and the requeue)."""
    jarm, luts = controller(host, pki), LutsClient(host.url, credential=people["admin"].credential,
                                                     trust_dir=pki.trust_dir)
    before = _balances(bank.url, pki, people)
    markers = Path(tempfile.mkdtemp(prefix="gridcredit-jarmcrash-", dir="/tmp"))
    markers.chmod(0o1777)
    jarm_prolog = slurm_cluster.prolog_path.read_text()
    assert "jarm prolog" in jarm_prolog, jarm_prolog          # the hooks fixture's
    real = markers / "jarm-prolog"             # (beside the markers: user slurm runs it)
    real.write_text(jarm_prolog)
    real.chmod(0o755)
    _replace(slurm_cluster.prolog_path,
             "#!/bin/sh\n# the JARM's prolog, whose answer is lost the first time for each job (the job is requeued)\n"
             f'if [ ! -e "{markers}/$SLURM_JOB_ID" ]; then\n    touch "{markers}/$SLURM_JOB_ID"\n'
             f'    "{real}" >/dev/null 2>&1\n    exit 1\nfi\nexec "{real}"\n', 0o755)
    try:
        watch = Watch(slurm_cluster, ())
        for index in range(2):
            user, account = _user(index)
            watch.job_ids.add(_submit(slurm_cluster, slurm_workdir, jobs, user, account, "--time=1", "--wrap",
                                      "sleep 2"))
        names = _names(jobs, {})
        runs = watch.wait_for_ends(names)
    finally:
        _replace(slurm_cluster.prolog_path, jarm_prolog, 0o755)
        shutil.rmtree(markers, ignore_errors=True)
    assert all(len(runs[name]) == 2 for name in names), runs            # each requeued once, then ran
    reservations = wait_until_settled(jarm, jobs)
    first_runs = [view for view in reservations if view.key.restarts == 0]
    assert len(first_runs) == 2 and all(view.hold_id for view in first_runs), reservations   # the JARM held
    charged = check_charged_once(cluster=slurm_cluster, bank_url=bank.url, jarm=jarm, luts=luts, pki=pki,
                                 people=people, names=names, runs=runs, before=before, reservations=reservations)
    assert len(charged) == 2
