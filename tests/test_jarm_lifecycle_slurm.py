"""JARM's reservation lifecycle against the real Slurm (issue 13.3-5): PrologSlurmctld reserves, the
hold is made at the real Bank — with Alice's delegated proxy for gcuser1's account proj1, by the site
under Bob's grant for gcuser2's account proj2 — EpilogSlurmctld reports the end, the JARM reads the
usage from slurmdbd, settles each hold (the cost to the site's account, the rest released, in one
transaction) and sends one usage record per run to the LUTS.

The hooks run as SlurmUser (slurm) with gridcredit installed the way a site installs it
(scripts/jarm-slurm.sh install: a venv of Debian's python3 that user slurm can run)."""
from __future__ import annotations

import time

import pytest

from gridcredit.services.bank.client import BankClient
from gridcredit.services.luts.client import LutsClient

from jarm_fixtures import *  # noqa: F401,F403 (fixtures)
from jarm_fixtures import (controller, expected_cost, settled_reservations, start_requeued_now, stored_usage_records,
                           wait_for_state)

pytestmark = pytest.mark.slow


def test_funded_jobs_are_held_charged_once_and_reported(slurm_cluster, slurm_workdir, hooks, host, pki, people, jobs):
    bank = BankClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
    before = {account: bank.get_balance(account).total for account in ("proj1", "proj2", "site")}

    def submit(user, account, *options):
        job_id = slurm_cluster.sbatch([f"--account={account}", *options], user=user, workdir=slurm_workdir)
        jobs.append(job_id)
        return job_id

    plain1 = submit("gcuser1", "proj1", "--time=2", "--wrap", "sleep 2")                     # Alice's proxy
    plain2 = submit("gcuser2", "proj2", "--time=2", "--wrap", "sleep 2")                     # Bob's grant
    array = submit("gcuser1", "proj1", "--time=1", "--array=0-2", "--wrap", "sleep 1")
    longer = submit("gcuser2", "proj2", "--time=1", "--wrap", "sleep 20")                     # its limit raised
    requeued = submit("gcuser1", "proj1", "--time=2", "--requeue", "--wrap", "sleep 12")     # run twice
    # a job cancelled while it waits to run is never held (its hold is made when it starts)
    waiting = submit("gcuser1", "proj1", "--time=2", "--begin=now+1hour", "--wrap", "true")
    slurm_cluster.run(["scancel", str(waiting)])
    wait_for_state(slurm_cluster, longer, {"RUNNING"})
    slurm_cluster.run(["scontrol", "update", f"JobId={longer}", "TimeLimit=00:03:00"])
    wait_for_state(slurm_cluster, requeued, {"RUNNING"})
    time.sleep(2)
    slurm_cluster.run(["scontrol", "requeue", str(requeued)])
    wait_for_state(slurm_cluster, requeued, {"PENDING"})
    while not start_requeued_now(slurm_cluster, str(requeued)):   # (not after Slurm's 120 s BeginTime)
        time.sleep(0.5)

    for job_id in (plain1, plain2, longer, requeued):
        slurm_cluster.wait_accounted(job_id, timeout_s=300)
    for task in range(3):
        slurm_cluster.wait_accounted(f"{array}_{task}", timeout_s=300)
    reservations = settled_reservations(controller(host, pki), jobs, expected=8)
    by_job = {}
    for view in reservations:
        by_job.setdefault(view.key.job_id, []).append(view)
    assert len(by_job[plain1]) == len(by_job[plain2]) == len(by_job[longer]) == 1
    assert sorted(view.key.array_task for view in by_job[array]) == [0, 1, 2]
    assert sorted(view.key.restarts for view in by_job[requeued]) == [0, 1]      # each run once
    assert waiting not in by_job

    # who held: Alice's own proxy for proj1, the site on Bob's behalf for proj2
    assert {view.authority for view in reservations if view.account == "proj1"} == {"delegated"}
    assert {view.authority for view in reservations if view.account == "proj2"} == {"granted"}
    # the raised time limit was held for: 3 core-minutes and the fee
    assert (by_job[longer][0].estimate, by_job[longer][0].hold_amount) == (4, 4)

    # each run's cost is the hand calculation from what sacct measured, charged whole
    measured = {}
    for view in reservations:
        job = f"{view.key.job_id}" if view.key.array_task is None else f"{view.key.job_id}_{view.key.array_task}"
        runs = [r for r in slurm_cluster.sacct(view.key.job_id) if r["JobID"] == job]   # -D: a requeued run first
        run = runs[view.key.restarts]
        elapsed = int(run["ElapsedRaw"])
        cores = int(dict(item.split("=") for item in run["AllocTRES"].split(","))["cpu"])
        measured[view.reservation_id] = elapsed
        assert view.cost == expected_cost(elapsed, cores), (view, runs)
        assert view.charged == view.cost and view.uncharged == 0

    # the Bank: each hold settled once; the site gained exactly what the accounts lost; the audit is clean
    charged = {account: sum(v.charged for v in reservations if v.account == account) for account in ("proj1", "proj2")}
    after = {account: bank.get_balance(account).total for account in ("proj1", "proj2", "site")}
    assert before["proj1"] - after["proj1"] == charged["proj1"]
    assert before["proj2"] - after["proj2"] == charged["proj2"]
    assert after["site"] - before["site"] == charged["proj1"] + charged["proj2"]
    for view in reservations:
        assert bank.get_hold(view.hold_id).state == "settled"
        assert bank.get_balance(view.account).held == 0
    report = bank.audit()
    assert report.clean and not report.findings, report

    # the LUTS: one usage record per run, its wall time sacct's, its charge the Bank's
    luts = LutsClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
    records_of = stored_usage_records(luts, [view.reservation_id for view in reservations], timeout_s=60)
    for view in reservations:
        usage = records_of[view.reservation_id].usage
        assert usage.wall_us == measured[view.reservation_id] * 1_000_000
        assert usage.charge_micro == view.charged * 1_000_000
        assert usage.user_dn == view.user_dn and usage.project == view.account
