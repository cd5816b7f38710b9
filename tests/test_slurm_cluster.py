"""The real single-node Slurm of scripts/slurm.sh does what JARM (issue 13) builds on: jobs of the two test
users under their associations, accounting through slurmdbd (Elapsed, TotalCPU, MaxRSS, AllocTRES), a
job_submit.lua whose refusal reaches the user, and PrologSlurmctld (a failure requeues the batch job)."""
from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pytest

from slurm_fixtures import cpu_seconds, rss_kib, slurm_cluster, slurm_workdir, tres  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent / "slurm"


def test_a_job_runs_as_its_user_and_sacct_reports_its_measured_usage(slurm_cluster, slurm_workdir):
    script = slurm_workdir / "usage_job.py"
    shutil.copy(HERE / "usage_job.py", script)
    # 200 MiB touched, 1.5 s of CPU, then 2 s more holding the memory.
    job_id = slurm_cluster.sbatch(["--account=proj2", "--mem=512M", "--cpus-per-task=1", "--time=5",
                                   str(script), "200", "1.5", "2"], user="gcuser1", workdir=slurm_workdir)
    ended = slurm_cluster.wait_accounted(job_id)
    job, batch = ended["job"], ended["batch"]

    assert (job["State"], job["ExitCode"], job["User"], job["Account"], job["Partition"]) == \
        ("COMPLETED", "0:0", "gcuser1", "proj2", "batch")
    assert (slurm_workdir / f"slurm-{job_id}.out").read_text().startswith(f"held {200 * 2**20} bytes")
    assert 3 <= int(job["ElapsedRaw"]) < 120
    assert 1.4 <= cpu_seconds(job["TotalCPU"]) < 60
    assert 180 * 1024 <= rss_kib(batch["MaxRSS"]) < 512 * 1024          # KiB: the 200 MiB block, under --mem
    assert tres(job["AllocTRES"]) == {"billing": "1", "cpu": "1", "mem": "512M", "node": "1"}


def test_each_test_user_submits_under_its_default_association(slurm_cluster, slurm_workdir):
    ids = {user: slurm_cluster.sbatch(["--wrap", "true"], user=user, workdir=slurm_workdir)
           for user in ("gcuser1", "gcuser2")}
    for user, account in (("gcuser1", "proj1"), ("gcuser2", "proj2")):
        job = slurm_cluster.wait_accounted(ids[user])["job"]
        assert (job["User"], job["Account"], job["State"]) == (user, account, "COMPLETED")


def test_a_user_without_an_association_is_refused(slurm_cluster, slurm_workdir):
    # AccountingStorageEnforce=associations: an account gcuser2 has no association with is refused.
    result = slurm_cluster.run(["sbatch", f"--chdir={slurm_workdir}", "--account=root", "--wrap", "true"],
                               user="gcuser2", check=False)
    assert result.returncode == 1
    assert "Invalid account or account/partition combination specified" in result.stderr


def test_job_submit_lua_refusal_reaches_the_user_and_other_jobs_pass(slurm_cluster, slurm_workdir):
    with slurm_cluster.job_submit((HERE / "job_submit_refuse.lua").read_text()):
        refused = slurm_cluster.run(["sbatch", f"--chdir={slurm_workdir}", "--comment=gridcredit-refuse",
                                     "--wrap", "true"], user="gcuser2", check=False)
        accepted = slurm_cluster.sbatch(["--comment=fine", "--wrap", "true"], user="gcuser2",
                                        workdir=slurm_workdir)
    uid = slurm_cluster.run(["id", "-u"], user="gcuser2").stdout.strip()
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"gridcredit: job refused for uid {uid}: cost 120 credits, available 20, shortfall 100" in refused.stderr
    assert "Job violates accounting/QOS policy" in refused.stderr
    assert slurm_cluster.wait_accounted(accepted)["job"]["State"] == "COMPLETED"

    # Back to the default script: the same job passes.
    again = slurm_cluster.sbatch(["--comment=gridcredit-refuse", "--wrap", "true"], user="gcuser2",
                                 workdir=slurm_workdir)
    assert slurm_cluster.wait_accounted(again)["job"]["State"] == "COMPLETED"


def _prolog_record(workdir: Path, job_id: int, context: str = "prolog_slurmctld") -> list[dict[str, str]]:
    """The runs tests/slurm/record_slurmctld.sh recorded for a job as PrologSlurmctld (or EpilogSlurmctld),
    each a dict."""
    path = workdir / f"{context}.{job_id}"
    if not path.exists():
        return []
    runs: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "uid":
            runs.append({})
        runs[-1][key] = value
    return runs


def test_prolog_slurmctld_runs_for_each_job_as_the_slurm_user(slurm_cluster, slurm_workdir):
    slurm_uid = slurm_cluster.run(["id", "-u", "slurm"]).stdout.strip()
    with slurm_cluster.prolog((HERE / "record_slurmctld.sh").read_text()):
        job_id = slurm_cluster.sbatch(["--account=proj1", "--partition=short", "--wrap", "true"], user="gcuser2",
                                      workdir=slurm_workdir)
        assert slurm_cluster.wait_accounted(job_id)["job"]["State"] == "COMPLETED"
    assert _prolog_record(slurm_workdir, job_id) == [{"uid": slurm_uid, "job": str(job_id), "user": "gcuser2",
                                                      "account": "proj1", "partition": "short", "restart": "0",
                                                      "exit": ""}]


def test_a_failing_prolog_slurmctld_requeues_the_batch_job_before_it_runs(slurm_cluster, slurm_workdir):
    # Slurm 22.05: a non-zero PrologSlurmctld requeues a batch job (not held: pending, its SubmitTime reset
    # and eligible again about two minutes later, Reason=BeginTime); the job's script never ran.
    with slurm_cluster.prolog((HERE / "record_slurmctld.sh").read_text()):
        job_id = slurm_cluster.sbatch(["--comment=gridcredit-prolog-fail", "--wrap", "touch ran"],
                                      user="gcuser1", workdir=slurm_workdir)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = slurm_cluster.show_job(job_id)
                if job["Restarts"] != "0":
                    break
                time.sleep(0.5)
            assert (job["JobState"], job["Restarts"], job["Requeue"]) == ("PENDING", "1", "1")
            # Reason turns to BeginTime at the scheduler's next pass; the delay is fixed at the requeue.
            delay = dt.datetime.fromisoformat(job["EligibleTime"]) - dt.datetime.fromisoformat(job["SubmitTime"])
            assert dt.timedelta(seconds=60) <= delay <= dt.timedelta(seconds=300)
            deadline = time.monotonic() + 30        # slurmdbd gets the requeue and the new
            #                                         pending record a moment later
            while time.monotonic() < deadline:
                records = [record["State"] for record in slurm_cluster.sacct(job_id)
                           if record["JobID"] == str(job_id)]
                if len(records) >= 2:
                    break
                time.sleep(0.5)
            assert records == ["REQUEUED", "PENDING"]
        finally:
            slurm_cluster.run(["scancel", str(job_id)])
    assert not (slurm_workdir / "ran").exists()
    assert [run["restart"] for run in _prolog_record(slurm_workdir, job_id)] == ["0"]


def test_a_held_job_survives_a_restart_of_slurmctld_and_runs_after_it(slurm_cluster, slurm_workdir):
    job_id = slurm_cluster.sbatch(["--hold", "--wrap", "true"], user="gcuser1", workdir=slurm_workdir)
    slurm_cluster.restart("slurmctld")
    job = slurm_cluster.show_job(job_id)
    assert (job["JobState"], job["Reason"], job["UserId"].split("(")[0]) == ("PENDING", "JobHeldUser", "gcuser1")
    slurm_cluster.run(["scontrol", "release", str(job_id)], user="gcuser1")
    assert slurm_cluster.wait_accounted(job_id)["job"]["State"] == "COMPLETED"


def test_a_failing_prolog_slurmctld_cancels_a_job_that_may_not_be_requeued(slurm_cluster, slurm_workdir):
    with slurm_cluster.prolog((HERE / "record_slurmctld.sh").read_text()):
        job_id = slurm_cluster.sbatch(["--no-requeue", "--comment=gridcredit-prolog-fail", "--wrap", "touch ran"],
                                      user="gcuser2", workdir=slurm_workdir)
        job = slurm_cluster.wait_accounted(job_id, with_batch_step=False)["job"]
    assert (job["State"], job["User"]) == ("CANCELLED by 0", "gcuser2")
    assert not (slurm_workdir / "ran").exists()
    assert [run["restart"] for run in _prolog_record(slurm_workdir, job_id)] == ["0"]


def test_epilog_slurmctld_runs_at_each_jobs_end_with_its_exit_code(slurm_cluster, slurm_workdir):
    slurm_uid = slurm_cluster.run(["id", "-u", "slurm"]).stdout.strip()
    with slurm_cluster.epilog((HERE / "record_slurmctld.sh").read_text()):
        job_id = slurm_cluster.sbatch(["--wrap", "exit 3"], user="gcuser1", workdir=slurm_workdir)
        assert slurm_cluster.wait_accounted(job_id)["job"]["State"] == "FAILED"
        deadline = time.monotonic() + 30        # the epilog runs after the job's end, alongside accounting
        while time.monotonic() < deadline and not _prolog_record(slurm_workdir, job_id, "epilog_slurmctld"):
            time.sleep(0.2)
    assert _prolog_record(slurm_workdir, job_id, "epilog_slurmctld") == [
        {"uid": slurm_uid, "job": str(job_id), "user": "gcuser1", "account": "proj1", "partition": "batch",
         "restart": "0", "exit": "3:0"}]
