"""services/jarm/slurm/accounting.py's parsers on real sacct and sinfo output (tests/data/slurm/, captured from
scripts/slurm.sh's cluster by tests/slurm/capture_accounting.py: see its README.md), the lines it refuses
and its errors; partition occupancy from sinfo's output priced by a load-priced rate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridcredit.services.jarm import pricing
from gridcredit.services.jarm.slurm.accounting import (JobNotAccounted, JobUsage, SlurmError, SlurmOutputInvalid,
                                                       array_tasks, cpu_time_ms, memory_bytes, parse_sacct,
                                                       parse_sinfo, read_job_usage, read_occupancies,
                                                       sacct_command)
from gridcredit.services.jarm.types import JobRequest, LoadPricing, Metric, Occupancy, PriceTable, Rate, Usage

DATA = Path(__file__).resolve().parent / "data" / "slurm"
CAPTURED = json.loads((DATA / "captured.json").read_text())
CREDIT = 1_000_000
MB = 2**20


def sample(name: str) -> str:
    return (DATA / f"sacct-{name}.txt").read_text()


def job_id(name: str) -> int:
    return CAPTURED["jobs"][name]["job_id"]


# -- the values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, ms", [
    ("00:00:00", 0), ("00:01.234", 1234), ("59:59.999", 3_599_999), ("00:00.001", 1), ("00:07:05", 425_000),
    ("01:00:00", 3_600_000), ("23:59:59", 86_399_000), ("1-00:00:00", 86_400_000), ("12-03:04:05", 1_047_845_000),
])
def test_cpu_times_in_each_form_sacct_prints(text, ms):
    assert cpu_time_ms(text) == ms


@pytest.mark.parametrize("text", ["", "1:02", "00:60.000", "60:00.000", "24:00:00", "1-24:00:00", "00:01.23",
                                  "00:01.2345", "00:01:02.345", "-00:00:01", "01:02:03 ", "1 00:00:00", "1e3"])
def test_cpu_times_in_no_form_of_sacct_are_refused(text):
    assert cpu_time_ms(text) is None


@pytest.mark.parametrize("text, amount", [("0", 0), ("219738112", 219_738_112), ("512M", 512 * MB), ("2G", 2048 * MB),
                                          ("3K", 3072), ("1T", 2**40)])
def test_memory_amounts(text, amount):
    assert memory_bytes(text) == amount


@pytest.mark.parametrize("text", ["", "1.5G", "512MB", "-1", "M", "1 G"])
def test_memory_amounts_in_other_forms_are_refused(text):
    assert memory_bytes(text) is None


def test_array_ranges():
    assert array_tasks("1-3,7,9-11%2") == (1, 2, 3, 7, 9, 10, 11)
    assert array_tasks("5") == (5,)
    assert array_tasks("3,1-2") == (1, 2, 3)
    for text in ("", "1-", "3-1", "1,,2", "1-3%x", "a", "1-100001", "0-99999,100000"):
        assert array_tasks(text) is None, text


# -- sacct's output, as captured --------------------------------------------------------------------


def test_a_cpu_burner_its_cpu_time_and_max_rss_from_its_batch_step():
    [run] = parse_sacct(sample("cpu-burner"))
    assert run == JobUsage(
        cluster="gridcredit", job_id=job_id("cpu-burner"), array_task=None, restarts=0, job_id_raw=job_id("cpu-burner"),
        user="gcuser1", account="proj2", partition="batch", qos="normal", state="COMPLETED", cancelled_by_uid=None,
        exit_code=0, exit_signal=0, submit_us=1796178602 * 10**6, start_us=1796178603 * 10**6,
        end_us=1796178608 * 10**6, elapsed_s=5, total_cpu_ms=1520, max_rss_bytes=217972736, cores=1, memory_mb=512,
        nodes=1, gpus=0, billing=1, time_limit_s=300, node_list="gcnode", steps=1)
    assert (run.job, run.key, run.started, run.max_rss_mb) == (
        str(job_id("cpu-burner")), ("gridcredit", job_id("cpu-burner"), None, 0), True, 208)   # 207.88 MB, rounded up
    assert run.usage() == Usage("batch", "normal", elapsed_s=5, total_cpu_ms=1520, cores=1, memory_mb=512, gpus=0,
                                nodes=1, max_rss_mb=208)


def test_the_steps_of_a_job_add_up_to_its_cpu_time_and_the_largest_is_its_max_rss():
    [run] = parse_sacct(sample("steps"))
    assert (run.steps, run.total_cpu_ms, run.max_rss_bytes) == (3, 29 + 509 + 317, 134160384)


def test_a_failed_job_has_its_exit_code():
    [run] = parse_sacct(sample("failed"))
    assert (run.state, run.exit_code, run.exit_signal, run.partition, run.elapsed_s, run.max_rss_bytes,
            run.time_limit_s) == ("FAILED", 3, 0, "short", 0, 0, 60)


def test_an_array_is_one_usage_per_task_each_with_its_own_raw_job_id():
    runs = parse_sacct(sample("array"))
    array = job_id("array")
    assert [(run.job_id, run.array_task, run.job, run.job_id_raw, run.elapsed_s, run.max_rss_bytes)
            for run in runs] == [
        (array, 0, f"{array}_0", 9601, 1, 3014656), (array, 1, f"{array}_1", 9607, 4, 2973696),
        (array, 2, f"{array}_2", array, 4, 2945024)]
    assert parse_sacct(sample("array-task")) == [runs[1]]
    assert parse_sacct(sample("array"), job=f"{array}_2") == [runs[2]]


def test_a_job_over_its_time_limit_is_timed_out_with_its_elapsed_time():
    [run] = parse_sacct(sample("timeout"))
    assert (run.state, run.exit_code, run.exit_signal, run.elapsed_s, run.time_limit_s, run.started) == \
        ("TIMEOUT", 0, 0, 91, 60, True)
    assert run.elapsed_s == (run.end_us - run.start_us) // 10**6


def test_a_job_cancelled_while_pending_never_started_and_used_nothing():
    [run] = parse_sacct(sample("pending-cancelled"))
    assert (run.state, run.cancelled_by_uid, run.started, run.start_us, run.end_us > run.submit_us > 0) == \
        ("CANCELLED", 1001, False, 0, True)
    assert (run.elapsed_s, run.total_cpu_ms, run.max_rss_bytes, run.cores, run.memory_mb, run.nodes, run.gpus,
            run.billing, run.steps, run.node_list) == (0, 0, 0, 0, 0, 0, 0, 0, 0, "")
    assert run.usage() == Usage("batch", "normal", elapsed_s=0, total_cpu_ms=0, cores=0)


def test_an_arrays_tasks_cancelled_before_they_started_are_one_usage_each():
    runs = parse_sacct(sample("array-pending-cancelled"))
    array = job_id("array-pending-cancelled")
    assert [(run.job, run.job_id_raw, run.state, run.started, run.cores) for run in runs] == \
        [(f"{array}_1", array, "CANCELLED", False, 0), (f"{array}_2", array, "CANCELLED", False, 0)]
    assert parse_sacct(sample("array-pending-cancelled"), job=f"{array}_2") == [runs[1]]


def test_a_requeued_job_has_a_run_per_restart_the_newest_by_default():
    first, newest = parse_sacct(sample("requeued"), restarts=0), parse_sacct(sample("requeued"))
    assert CAPTURED["jobs"]["requeued"]["scontrol_restarts"] == ["1"]
    assert parse_sacct(sample("requeued"), restarts=1) == newest
    [first], [newest] = first, newest
    assert (first.restarts, first.state, first.elapsed_s, first.start_us, first.end_us) == \
        (0, "REQUEUED", 6, 1796178648 * 10**6, 1796178654 * 10**6)
    assert (newest.restarts, newest.state, newest.elapsed_s, newest.submit_us) == \
        (1, "COMPLETED", 9, 1796178655 * 10**6)
    with pytest.raises(JobNotAccounted, match=r"slurmdbd has runs 0..1 of job 9600, not run 2 \(yet\)"):
        parse_sacct(sample("requeued"), restarts=2)


def test_an_older_job_under_the_same_id_is_not_a_run_of_this_one():
    # job ids reset: --duplicates lists an older, unrelated job 9600 that ended COMPLETED; the chain of
    # this job's runs starts after it
    older = sample("sleep").replace(str(job_id("sleep")), "9600").replace("1796178602", "1700000000")
    runs = parse_sacct(older + sample("requeued"), restarts=0)
    assert [(run.restarts, run.state) for run in runs] == [(0, "REQUEUED")]
    assert [(run.restarts, run.state) for run in parse_sacct(older + sample("requeued"))] == [(1, "COMPLETED")]


@pytest.mark.parametrize("name, state", [("held", "PENDING"), ("running", "RUNNING")])
def test_a_job_not_ended_is_not_accounted(name, state):
    with pytest.raises(JobNotAccounted, match=f"is {state} in slurmdbd: its usage is known once it ended") as refused:
        parse_sacct(sample(name))
    assert refused.value.job == str(CAPTURED["jobs"]["pending-cancelled" if name == "held" else "cpu-burner"]["job_id"])


def test_a_job_ended_with_a_step_still_running_is_not_accounted():
    lines = sample("cpu-burner").splitlines()
    step = lines[1].split("|")
    step[7] = "RUNNING"
    with pytest.raises(JobNotAccounted, match=r"has ended but slurmdbd has its step\(s\) batch still running"):
        parse_sacct("\n".join([lines[0], "|".join(step)]))


def test_no_output_is_no_run():
    assert parse_sacct("") == []


# -- lines the parser refuses ---------------------------------------------------------------------------


def altered(name: str, line: int, field: int, value: str) -> str:
    """A captured sample with one field of one line replaced."""
    lines = sample(name).splitlines()
    fields = lines[line].split("|")
    fields[field] = value
    lines[line] = "|".join(fields)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("output, why", [
    (sample("sleep").replace("|gcnode\n", "\n", 1), r"has 17 fields, not the 18 asked for"),
    (sample("sleep").replace("|gcnode\n", "|gcnode|x\n", 1), r"has 19 fields"),
    (altered("sleep", 0, 0, "9593.x"), r"has JobID '9593.x', not <job>.<step>"),
    (altered("sleep", 0, 0, "abc"), r"has JobID 'abc', not a job id"),
    (altered("sleep", 0, 0, "0"), r"has JobID '0', not a job id 1..4,294,967,295"),
    (altered("sleep", 1, 0, "9999.batch"), r"is a step that does not follow the line of its job"),
    (altered("sleep", 1, 1, "9999.batch"), r"has JobIDRaw '9999.batch', not 9593.<step>"),
    (sample("sleep").splitlines()[1], r"is a step that does not follow the line of its job"),
    (altered("array-pending-cancelled", 0, 0, "9599_[2-1]"), r"not an array's tasks"),
    (altered("sleep", 0, 7, "COMPLETE"), r"has State 'COMPLETE', not a job state Slurm 22.05 has"),
    (altered("sleep", 0, 7, "completed"), r"not a Slurm job state"),
    (altered("sleep", 0, 8, "0"), r"has ExitCode '0', not <code>:<signal>"),
    (altered("sleep", 0, 10, "2026-12-02T02:30:03"), r"has Start '2026-12-02T02:30:03', not seconds since the epoch"),
    (altered("sleep", 0, 12, "3.0"), r"has ElapsedRaw '3.0', not a whole number"),
    (altered("sleep", 1, 13, "0:03"), r"has TotalCPU '0:03', not a CPU time"),
    (altered("sleep", 1, 14, "2.84M"), r"has MaxRSS '2.84M', not a whole number"),
    (altered("sleep", 0, 15, "billing=1,cpu=1,mem=1.5G,node=1"), r"its mem as a whole number of MB"),
    (altered("sleep", 0, 15, "billing=1,cpu=x,mem=256M,node=1"), r"a whole number of cpu"),
    (altered("sleep", 0, 15, "cpu=1,cpu=2"), r"TRES as name=count"),
    (altered("sleep", 0, 15, "gres/gpu=two,cpu=1"), r"a whole number of gres/gpu"),
    (altered("sleep", 0, 16, "1:00"), r"has TimelimitRaw '1:00', not a whole number"),
    (altered("sleep", 0, 3, "gc user"), r"has User 'gc user', not a name"),
    (altered("sleep", 0, 4, ""), r"has Account '', not a name"),
    (altered("sleep", 0, 5, "ba\u202etch"), r"not a name"),
    (altered("sleep", 0, 17, "gc node"), r"has NodeList 'gc node', not a Slurm host list"),
    (altered("sleep", 0, 13, "00:09.003"), r"has a TotalCPU \(9003 ms\) that is not the sum of its steps' \(3 ms\)"),
    (altered("sleep", 1, 13, "00:02.000"), r"has a TotalCPU \(3 ms\) that is not the sum of its steps' \(2000 ms\)"),
    (altered("sleep", 0, 0, "9593+0"), r"is of a heterogeneous job"),
    (altered("sleep", 0, 7, "RESIZING"), r"is of a resized job"),
])
def test_a_line_in_another_form_is_refused_naming_it(output, why):
    with pytest.raises(SlurmOutputInvalid, match=r"^sacct's line \d+ .*" + why):
        parse_sacct(output)


def test_the_tres_it_counts():
    output = altered("sleep", 0, 15, "billing=4,cpu=8,energy=12,fs/disk=100,gres/gpu=2,gres/gpu:a100=2,mem=64G,node=2")
    [run] = parse_sacct(output)
    assert (run.cores, run.memory_mb, run.gpus, run.nodes, run.billing) == (8, 65536, 2, 2, 4)
    [run] = parse_sacct(altered("sleep", 0, 15, "cpu=4,gres/gpu:a100=1,gres/gpu:v100=2,mem=1024M,node=1"))
    assert (run.gpus, run.memory_mb) == (3, 1024)        # only typed counts: their sum


def test_cpu_time_above_an_hour_takes_the_larger_of_the_job_line_and_the_steps():
    # above an hour sacct prints whole seconds: the job's 01:00:01 (3,601,000 ms) against its steps'
    # 59:59.999 + 00:01.500 = 3,601,499 ms: both cut; the larger is nearer the truth
    lines = sample("steps").splitlines()
    job, batch, step0, step1 = (line.split("|") for line in lines)
    job[13], batch[13], step0[13], step1[13] = "01:00:01", "59:59.999", "00:01.500", "00:00.000"
    [run] = parse_sacct("\n".join("|".join(fields) for fields in (job, batch, step0, step1)))
    assert run.total_cpu_ms == 3_601_499
    job[13] = "01:00:03"          # each step cut by less than a second: the job's sum may be that much above
    [run] = parse_sacct("\n".join("|".join(fields) for fields in (job, batch, step0, step1)))
    assert run.total_cpu_ms == 3_603_000
    job[13] = "02:00:03"
    with pytest.raises(SlurmOutputInvalid, match="not the sum of its steps"):
        parse_sacct("\n".join("|".join(fields) for fields in (job, batch, step0, step1)))


# -- running sacct -------------------------------------------------------------------------------------


def test_sacct_that_cannot_be_run_or_fails_is_a_slurm_error(tmp_path):
    with pytest.raises(SlurmError, match=r"^nowhere could not be run: No such file or directory \(is Slurm installed"):
        read_job_usage(1, sacct=str(tmp_path / "nowhere"), timeout_s=5)
    with pytest.raises(SlurmError, match=r"^false exited with status 1: \(it printed no reason\)"):
        read_job_usage(1, sacct="/bin/false", timeout_s=5)
    with pytest.raises(JobNotAccounted, match=r"^slurmdbd has no record of job 7 \(yet\)"):
        read_job_usage(7, sacct="/bin/true", timeout_s=5)          # sacct prints nothing for a job it has not
    with pytest.raises(SlurmError, match=r"^sinfo did not answer within 0.5 s"):
        read_occupancies(sinfo=str(_slow_command(tmp_path, "sinfo")), timeout_s=0.5)


def _slow_command(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\nexec sleep 30\n")
    path.chmod(0o755)
    return path


def test_the_sacct_command_line():
    assert sacct_command("1234_7") == [
        "sacct", "--allusers", "--duplicates", "--noconvert", "--parsable2", "--noheader", "-j", "1234_7", "-o",
        "JobID,JobIDRaw,Cluster,User,Account,Partition,QOS,State,ExitCode,Submit,Start,End,ElapsedRaw,TotalCPU,MaxRSS,"
        "AllocTRES,TimelimitRaw,NodeList"]
    assert sacct_command("1", sacct="/opt/slurm/bin/sacct", cluster="gc")[:3] == ["/opt/slurm/bin/sacct", "-M", "gc"]
    with pytest.raises(ValueError, match="a cluster name is"):
        sacct_command("1", cluster="-a")


@pytest.mark.parametrize("job", [0, -1, "1234x", "1_2_3", True, 2**32, "12345678901"])
def test_a_job_id_that_is_none_is_refused_before_sacct_runs(job):
    with pytest.raises(ValueError, match="a job id is a number"):
        read_job_usage(job, sacct="/bin/false", timeout_s=5)


# -- partition occupancy ---------------------------------------------------------------------------------


def test_occupancy_from_sinfo_as_captured():
    idle, busy = (DATA / "sinfo-idle.txt").read_text(), (DATA / "sinfo-busy.txt").read_text()
    assert parse_sinfo(idle) == {"batch": Occupancy(0, 2), "short": Occupancy(0, 2)}
    assert parse_sinfo(busy) == {"batch": Occupancy(2, 2), "short": Occupancy(2, 2)}
    assert parse_sinfo(busy, unit="nodes") == {"batch": Occupancy(1, 1), "short": Occupancy(1, 1)}


def test_occupancy_adds_up_a_partitions_lines_and_counts_only_nodes_in_service():
    output = "big|64/0/0/64|2/0/0/2\nbig|10/54/64/128|1/1/2/4\ndown|0/0/32/32|0/0/1/1\nempty|0/0/0/0|0/0/0/0\n"
    assert parse_sinfo(output) == {"big": Occupancy(74, 128), "down": Occupancy(32, 32)}     # none in service: full
    assert parse_sinfo(output, unit="nodes") == {"big": Occupancy(3, 4), "down": Occupancy(1, 1)}


@pytest.mark.parametrize("line", ["batch|0/2/0/2", "batch|0/2/0/3|0/1/0/1", "batch*|0/2/0/2|0/1/0/1",
                                  "batch|0/2/0|0/1/0/1", "ba tch|0/2/0/2|0/1/0/1"])
def test_a_sinfo_line_in_another_form_is_refused(line):
    with pytest.raises(SlurmOutputInvalid, match="sinfo's line 1"):
        parse_sinfo(line)


def test_a_load_priced_rate_is_priced_at_the_occupancy_read_from_sinfo():
    rate = Rate("batch", "normal", {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0,
                                    Metric.JOB: 0},
                load=LoadPricing(low_permille=250, high_permille=750, min_permille=1000, max_permille=2000))
    table = PriceTable("gridcredit", 1, 0, (rate,))
    request = JobRequest("batch", "normal", cores=1, time_limit_s=3600)
    for output, credits in (("sinfo-idle.txt", 60), ("sinfo-busy.txt", 120)):
        occupancy = parse_sinfo((DATA / output).read_text())["batch"]
        assert pricing.quote(table, request, now_us=1, occupancy=occupancy).cost.credits == credits
    half = parse_sinfo("batch|1/1/0/2|1/0/0/1\n")["batch"]
    assert pricing.quote(table, request, now_us=1, occupancy=half).cost.credits == 90


def test_a_run_whose_end_slurmdbd_has_before_its_start_record_is_not_accounted_yet():
    # seen: a job requeued and started again at once (the new run killed: "Job credential revoked") —
    # slurmdbd had the new run's end before its start record: no partition, QOS Unknown, no time limit
    with pytest.raises(JobNotAccounted, match=r"^slurmdbd has the end of job 9668 \(run 1\) but not yet its start "
                                              r"record \(no partition\); ask again a few seconds later"):
        parse_sacct(sample("requeued-partial"))
    assert parse_sacct(sample("requeued-partial"), restarts=0)[0].state == "REQUEUED"
    # a few seconds later, complete: the second run failed at its launch
    [run] = parse_sacct(sample("requeued-revoked"))
    assert (run.restarts, run.state, run.exit_code, run.partition, run.qos, run.elapsed_s, run.time_limit_s) == \
        (1, "FAILED", 1, "batch", "normal", 0, 120)


def test_a_run_requeued_by_a_failing_prolog_had_nodes_but_no_step_and_its_cancelled_successor_none():
    # job 9655: another session's JARM PrologSlurmctld refused it (the Bank refused the hold): run 0 was
    # given a node for 5 s while the prolog ran, and requeued; run 1, pending, was cancelled by root —
    # sacct gives it a Start (the cancel time) but no node and no TRES
    [first] = parse_sacct(sample("prolog-refused"), restarts=0)
    assert (first.state, first.started, first.steps, first.elapsed_s, first.cores, first.total_cpu_ms) == \
        ("REQUEUED", True, 0, 5, 1, 0)
    [second] = parse_sacct(sample("prolog-refused"))
    assert (second.restarts, second.state, second.cancelled_by_uid, second.started, second.start_us,
            second.elapsed_s, second.cores, second.node_list) == (1, "CANCELLED", 0, False, 0, 0, 0, "")
