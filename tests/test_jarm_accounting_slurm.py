"""JARM's usage reading against the real Slurm of scripts/slurm.sh (issue 13.5): jobs of gcuser1 — a sleep,
a CPU burner, an array of 3, one cancelled while pending, one that times out, one requeued while it runs
— read with services/jarm/slurm/accounting.py and compared with sacct's own fields (read the way the
cluster tests read them: tests/slurm_fixtures.py, without --noconvert, times in ISO form) and with hand
calculations; the partition's occupancy with a job running; and the usage record of a real job through
the LUTS core, whose stored usage equals sacct's.

The jobs are submitted once for the module (they run side by side; the requeued one by its test, which
must requeue it while it runs), each test waits for its own."""
from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from gridcredit.services.jarm import pricing
from gridcredit.services.jarm.slurm.accounting import (JobNotAccounted, OccupancyReader, partition_occupancy,
                                                       read_job_usage, read_run_usage)
from gridcredit.services.jarm.types import Metric, PriceTable, PricingBasis, Rate
from gridcredit.services.jarm.usage_record import usage_record
from gridcredit.services.luts.luts import Caller, Luts, LutsPolicy

from luts_fixtures import open_luts_store
from slurm_fixtures import cpu_seconds, rss_kib, slurm_cluster, slurm_workdir, tres  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent / "slurm"
READ_TIMEOUT_S = 20
SITE = "gridcredit"
MACHINE = "ce1.example.org"
HOST = "/O=Grid/CN=host/ce1.example.org"
ADMIN = "/O=Grid/CN=LUTS Admin"
CREDIT = 1_000_000


def wait_usage(job: int | str, *, timeout_s: float = 240, **options):
    """read_job_usage once slurmdbd has the job's end (JobNotAccounted until then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return read_job_usage(job, timeout_s=READ_TIMEOUT_S, **options)
        except JobNotAccounted as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} not accounted within {timeout_s} s: {error}") from None
            time.sleep(1)


def wait_state(cluster, job_id: int, state: str, *, timeout_s: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = cluster.show_job(job_id)
        if job["JobState"] == state:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job['JobState']}, not {state}, after {timeout_s} s")
        time.sleep(0.5)


def iso_us(text: str) -> int:
    """sacct's Submit/Start/End in its standard form (local time of the test process) in µs."""
    return int(dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc).timestamp()) * 1_000_000


def sacct_iso(cluster, job: str) -> list[dict[str, str]]:
    """sacct's records of ``job`` as a person reads them (standard times, units converted)."""
    fields = ("JobID", "State", "Submit", "Start", "End", "ElapsedRaw", "TotalCPU", "MaxRSS", "AllocTRES")
    out = cluster.run(["sacct", "-j", job, "-n", "-P", "-D", "-o", ",".join(fields)]).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines()]


@pytest.fixture(scope="module")
def jobs(slurm_cluster):
    """The module's jobs, submitted together as gcuser1: name → job id."""
    workdir = Path(tempfile.mkdtemp(prefix="gridcredit-accounting-", dir="/tmp"))   # every user may write
    workdir.chmod(0o1777)
    script = workdir / "usage_job.py"
    shutil.copy(HERE / "usage_job.py", script)
    submitted = {
        "sleep": slurm_cluster.sbatch(["--time=2", "--wrap", "sleep 3"], user="gcuser1", workdir=workdir),
        # 200 MiB touched, 1.5 s of CPU, then held 2 s more
        "burner": slurm_cluster.sbatch(["--account=proj2", "--mem=512M", "--cpus-per-task=1", "--time=5",
                                        str(script), "200", "1.5", "2"], user="gcuser1", workdir=workdir),
        "array": slurm_cluster.sbatch(["--array=0-2", "--time=2", "--wrap", "sleep 1"], user="gcuser1",
                                      workdir=workdir),
        "held": slurm_cluster.sbatch(["--hold", "--time=1", "--wrap", "true"], user="gcuser1", workdir=workdir),
        "timeout": slurm_cluster.sbatch(["--time=1", "--wrap", "sleep 600"], user="gcuser1", workdir=workdir),
    }
    yield submitted
    for job_id in submitted.values():
        slurm_cluster.run(["scancel", str(job_id)], check=False)
    shutil.rmtree(workdir, ignore_errors=True)


def test_a_sleeping_job_is_read_as_sacct_has_it(slurm_cluster, jobs):
    [run] = wait_usage(jobs["sleep"])
    [record] = [r for r in sacct_iso(slurm_cluster, str(jobs["sleep"])) if r["JobID"] == str(jobs["sleep"])]
    assert (run.cluster, run.job_id, run.array_task, run.restarts, run.job_id_raw) == \
        ("gridcredit", jobs["sleep"], None, 0, jobs["sleep"])
    assert (run.user, run.account, run.partition, run.qos, run.state, run.exit_code, run.exit_signal) == \
        ("gcuser1", "proj1", "batch", "normal", "COMPLETED", 0, 0)
    assert (run.submit_us, run.start_us, run.end_us) == tuple(iso_us(record[f]) for f in ("Submit", "Start", "End"))
    assert run.elapsed_s == int(record["ElapsedRaw"]) == (run.end_us - run.start_us) // 1_000_000
    assert 3 <= run.elapsed_s < 60
    assert run.total_cpu_ms < 1000                    # sleep uses next to no CPU
    assert run.time_limit_s == 120 and run.node_list == "gcnode" and run.steps >= 1
    alloc = tres(record["AllocTRES"])
    assert (run.cores, run.nodes, run.billing) == (int(alloc["cpu"]), int(alloc["node"]), int(alloc["billing"]))
    assert run.memory_mb == run.cores * 256          # DefMemPerCPU=256
    assert run.started and run.usage().elapsed_s == run.elapsed_s
    assert read_job_usage(jobs["sleep"], cluster="gridcredit", timeout_s=READ_TIMEOUT_S) == [run]   # sacct -M


def test_a_cpu_burner_has_its_cpu_time_and_max_rss_from_its_steps(slurm_cluster, jobs):
    [run] = wait_usage(jobs["burner"])
    records = {r["JobID"]: r for r in sacct_iso(slurm_cluster, str(jobs["burner"]))}
    job, batch = records[str(jobs["burner"])], records[f"{jobs['burner']}.batch"]
    assert (run.account, run.state, run.cores, run.memory_mb, run.nodes) == ("proj2", "COMPLETED", 1, 512, 1)
    # TotalCPU: the job's line is sacct's sum of the steps (exact before printing, ms below an hour)
    assert run.total_cpu_ms == round(cpu_seconds(job["TotalCPU"]) * 1000)
    assert 1500 <= run.total_cpu_ms < 30_000
    # MaxRSS: the batch step's (printed converted, e.g. 209.55M: within its two decimals)
    assert abs(run.max_rss_bytes - rss_kib(batch["MaxRSS"]) * 1024) <= 0.01 * run.max_rss_bytes
    assert 200 * 2**20 <= run.max_rss_bytes < 512 * 2**20
    assert run.max_rss_mb == -(-run.max_rss_bytes // 2**20)
    # by hand: 1 core × elapsed at 60 credits a core-hour, CPU at 3600 a CPU-hour (1 per second), 1 per job
    table = PriceTable(SITE, 1, 0, (Rate("batch", "normal", {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 3600 * CREDIT,
                                                             Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}),))
    cost = pricing.charge(table, run.usage(), PricingBasis(SITE, 1, "batch", "normal"))
    exact_micro = run.elapsed_s * 60 * CREDIT // 3600 + run.total_cpu_ms * 3600 * CREDIT // 3_600_000 + CREDIT
    assert cost.credits == (2 * exact_micro + CREDIT) // (2 * CREDIT)


def test_an_array_of_three_is_one_usage_per_task(slurm_cluster, jobs):
    runs = wait_usage(jobs["array"])
    assert [(run.job_id, run.array_task, run.restarts, run.state) for run in runs] == \
        [(jobs["array"], task, 0, "COMPLETED") for task in range(3)]
    assert len({run.job_id_raw for run in runs}) == 3 and jobs["array"] in {run.job_id_raw for run in runs}
    records = {r["JobID"]: r for r in sacct_iso(slurm_cluster, str(jobs["array"]))}
    for run in runs:
        assert run.job == f"{jobs['array']}_{run.array_task}"
        assert run.elapsed_s == int(records[run.job]["ElapsedRaw"]) >= 1
        assert run.cores == int(tres(records[run.job]["AllocTRES"])["cpu"])
        # one task by its own name, and by the array's id and its task
        assert read_job_usage(run.job, timeout_s=READ_TIMEOUT_S) == [run]
        assert read_run_usage(jobs["array"], array_task=run.array_task, timeout_s=READ_TIMEOUT_S) == run
        # by the task's own job id — except the task that kept the array's id: that id names the array
        by_raw_id = read_job_usage(run.job_id_raw, timeout_s=READ_TIMEOUT_S)
        assert by_raw_id == ([run] if run.job_id_raw != jobs["array"] else runs)


def test_a_job_cancelled_while_pending_has_no_usage(slurm_cluster, jobs):
    job_id = jobs["held"]
    deadline = time.monotonic() + 30
    while True:                               # slurmdbd has no record of it, then has it pending
        with pytest.raises(JobNotAccounted) as refused:
            read_job_usage(job_id, timeout_s=READ_TIMEOUT_S)
        if "PENDING" in str(refused.value) or time.monotonic() > deadline:
            break
        assert f"slurmdbd has no record of job {job_id}" in str(refused.value)
        time.sleep(0.5)
    assert str(refused.value) == f"job {job_id} is PENDING in slurmdbd: its usage is known once it ended; " \
                                 f"ask again later"
    assert refused.value.job == str(job_id)
    slurm_cluster.run(["scancel", str(job_id)], user="gcuser1")
    [run] = wait_usage(job_id)
    uid = int(slurm_cluster.run(["id", "-u", "gcuser1"]).stdout)
    assert (run.state, run.cancelled_by_uid, run.started, run.start_us, run.elapsed_s) == \
        ("CANCELLED", uid, False, 0, 0)
    assert (run.cores, run.memory_mb, run.nodes, run.gpus, run.total_cpu_ms, run.max_rss_bytes, run.steps,
            run.node_list) == (0, 0, 0, 0, 0, 0, 0, "")
    assert run.end_us >= run.submit_us > 0


def test_a_job_over_its_time_limit_is_read_as_timed_out(slurm_cluster, jobs):
    [run] = wait_usage(jobs["timeout"], timeout_s=300)
    [record] = [r for r in sacct_iso(slurm_cluster, str(jobs["timeout"])) if r["JobID"] == str(jobs["timeout"])]
    assert (run.state, run.time_limit_s, run.started) == ("TIMEOUT", 60, True)
    assert run.elapsed_s == int(record["ElapsedRaw"]) >= 60
    assert run.usage().elapsed_s == run.elapsed_s


def test_a_requeued_job_has_one_usage_per_run_with_its_restart_count(slurm_cluster, slurm_workdir):
    job_id = slurm_cluster.sbatch(["--requeue", "--time=2", "--wrap", "sleep 8"], user="gcuser1",
                                  workdir=slurm_workdir)
    try:
        wait_state(slurm_cluster, job_id, "RUNNING")
        time.sleep(2)
        slurm_cluster.run(["scontrol", "requeue", str(job_id)])
        wait_state(slurm_cluster, job_id, "PENDING")
        # not ~2 minutes later (Slurm's delay), but not within the requeue's second either: slurmd refuses a
        # credential made then ("Job credential revoked": the run fails at its launch)
        time.sleep(3)
        slurm_cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
        deadline = time.monotonic() + 240
        while True:
            try:
                newest = read_run_usage(job_id, restarts=1, timeout_s=READ_TIMEOUT_S)
                break
            except JobNotAccounted:
                assert time.monotonic() < deadline, "the second run did not end in 240 s"
                time.sleep(1)
        first = read_run_usage(job_id, restarts=0, timeout_s=READ_TIMEOUT_S)
        assert slurm_cluster.show_job(job_id)["Restarts"] == "1"
        assert (first.restarts, first.state, first.started) == (0, "REQUEUED", True)
        assert (newest.restarts, newest.state) == (1, "COMPLETED")
        assert 1 <= first.elapsed_s < newest.elapsed_s and newest.elapsed_s >= 8
        assert first.end_us <= newest.start_us
        assert read_job_usage(job_id, timeout_s=READ_TIMEOUT_S) == [newest]        # the newest run by default
        with pytest.raises(JobNotAccounted, match="runs 0..1 .* not run 2"):
            read_run_usage(job_id, restarts=2, timeout_s=READ_TIMEOUT_S)
    finally:
        slurm_cluster.run(["scancel", str(job_id)], check=False)


def test_a_job_slurmdbd_does_not_know_is_not_accounted(slurm_cluster):
    with pytest.raises(JobNotAccounted, match="slurmdbd has no record of job 4000000000"):
        read_job_usage(4_000_000_000, timeout_s=READ_TIMEOUT_S)


def test_the_partition_occupancy_counts_the_cpus_a_job_holds(slurm_cluster, slurm_workdir):
    node = dict(field.split("=", 1) for field in slurm_cluster.run(["scontrol", "-o", "show", "node", "gcnode"])
                .stdout.split() if "=" in field)
    cpus = int(node["CPUTot"])
    partition = dict(field.split("=", 1) for field in slurm_cluster.run(
        ["scontrol", "-o", "show", "partition", "short"]).stdout.split() if "=" in field)
    assert int(partition["TotalCPUs"]) == cpus
    now = [0.0]
    reader = OccupancyReader(timeout_s=READ_TIMEOUT_S, max_age_s=10, clock=lambda: now[0])
    before = reader.occupancy("short")
    job_id = slurm_cluster.sbatch(["--partition=short", "--cpus-per-task=1", "--time=2", "--wrap", "sleep 30"],
                                  user="gcuser1", workdir=slurm_workdir)
    try:
        wait_state(slurm_cluster, job_id, "RUNNING")
        now[0] = 10.0                         # read 10 s ago: still the reading from before the job
        assert reader.occupancy("short") == before
        now[0] = 10.5
        assert reader.occupancy("short").used == before.used + 1
        allocated = int(slurm_cluster.run(["scontrol", "-o", "show", "node", "gcnode"]).stdout
                        .split("CPUAlloc=")[1].split()[0])
        occupancy = partition_occupancy("short", timeout_s=READ_TIMEOUT_S)
        assert occupancy.capacity == cpus and 1 <= occupancy.used == allocated <= cpus
        # the node is shared: the same CPUs are busy for batch too
        assert partition_occupancy("batch", timeout_s=READ_TIMEOUT_S) == occupancy
        assert OccupancyReader(timeout_s=READ_TIMEOUT_S).occupancy("short") == occupancy
        nodes = partition_occupancy("short", timeout_s=READ_TIMEOUT_S, unit="nodes")
        assert (nodes.used, nodes.capacity) == (1, 1)
    finally:
        slurm_cluster.run(["scancel", str(job_id)])


def test_the_usage_record_of_a_real_job_goes_through_the_luts_with_sacct_s_usage(slurm_cluster, jobs, tmp_path):
    [run] = wait_usage(jobs["burner"])
    records = {r["JobID"]: r for r in sacct_iso(slurm_cluster, str(jobs["burner"]))}
    job, batch = records[str(jobs["burner"])], records[f"{jobs['burner']}.batch"]
    table = PriceTable(SITE, 3, 0, (Rate("batch", "normal", {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0,
                                                             Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}),))
    basis = PricingBasis(SITE, 3, "batch", "normal")
    cost = pricing.charge(table, run.usage(), basis)
    reservation_id = f"r-gridcredit-{run.job_id}-0"
    document = usage_record(run, site=SITE, machine=MACHINE, reservation_id=reservation_id, charge=cost.credits,
                            basis=basis, cost=cost, user_dn="/O=Grid/CN=gcuser1")
    store = open_luts_store("embedded", tmp_path / "luts")
    try:
        luts = Luts(store, LutsPolicy(admins=frozenset({ADMIN})))
        caller = Caller(HOST, host_names=(MACHINE,))          # the JARM's host publishes for its machine
        assert [r.status for r in luts.publish(document, caller).results] == ["stored"]
        stored = luts.record(Caller(ADMIN), f"jarm:{SITE}:{reservation_id}", MACHINE).usage
        assert stored.local_job_id == str(jobs["burner"]) and stored.local_user == "gcuser1"
        assert stored.wall_us == int(job["ElapsedRaw"]) * 1_000_000
        assert stored.cpu_us == round(cpu_seconds(job["TotalCPU"]) * 1000) * 1000
        assert abs(stored.memory_bytes - rss_kib(batch["MaxRSS"]) * 1024) <= 0.01 * stored.memory_bytes
        assert (stored.processors, stored.nodes) == (int(tres(job["AllocTRES"])["cpu"]), 1)
        assert (stored.start_time.timestamp(), stored.end_time.timestamp()) == \
            (iso_us(job["Start"]) / 1e6, iso_us(job["End"]) / 1e6)
        assert (stored.status, stored.exit_code, stored.queue, stored.project) == ("completed", 0, "batch", "proj2")
        assert (stored.charge_micro, stored.charge_unit) == (cost.credits * CREDIT, "credits")
        assert stored.warnings == ()
        # made again later (a retry after a crash): the LUTS answers duplicate
        again = usage_record(run, site=SITE, machine=MACHINE, reservation_id=reservation_id, charge=cost.credits,
                             basis=basis, cost=cost, user_dn="/O=Grid/CN=gcuser1",
                             create_time_us=time.time_ns() // 1000 + 5_000_000)
        assert again != document
        assert [r.status for r in luts.publish(again, caller).results] == ["duplicate"]
    finally:
        store.close()
