"""services/jarm/usage_record.py: the UR 2.0 document of a charged run, read by the LUTS's own parser
(services/luts/records.py) and stored by the LUTS core (services/luts/luts.py) with the usage sacct gave
(the runs are parsed from real sacct output: tests/data/slurm); made again it is a duplicate."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from lxml import etree

from gridcredit.errors import DomainError
from gridcredit.services.jarm import pricing
from gridcredit.services.jarm.slurm.accounting import parse_sacct
from gridcredit.services.jarm.types import Metric, Multiplier, PriceTable, PricingBasis, Rate
from gridcredit.services.jarm.usage_record import NS_JARM_UR, record_id, usage_record
from gridcredit.services.luts import records as ur
from gridcredit.services.luts.luts import Caller, Luts, LutsPolicy
from gridcredit.services.luts.spool import Spool

from luts_fixtures import open_luts_store

DATA = Path(__file__).resolve().parent / "data" / "slurm"
SITE = "gridcredit"
MACHINE = "ce1.example.org"
HOST = "/O=Grid/CN=host/ce1.example.org"
ADMIN = "/O=Grid/CN=LUTS Admin"
USER_DN = "/O=Grid/O=Test/CN=gcuser1"
CREDIT = 1_000_000
CREATED_US = 1_796_180_000 * CREDIT
# 60 credits a core-hour, 36 a CPU-hour, 1 a GB-hour of memory, 1 per job; load 3/2
TABLE = PriceTable(SITE, 4, 0, (Rate("batch", "normal", {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 36 * CREDIT,
                                                          Metric.MEMORY: CREDIT, Metric.GPU: 0, Metric.JOB: CREDIT}),))
BASIS = PricingBasis(SITE, 4, "batch", "normal", Multiplier(3, 2))


def run(name: str, **choice):
    [found] = parse_sacct((DATA / f"sacct-{name}.txt").read_text(), **choice)
    return found


def charged(job, **options) -> tuple[bytes, pricing.Cost]:
    cost = pricing.charge(TABLE, job.usage(), BASIS)
    reservation = f"r-{job.cluster}-{job.job_id}" + ("" if job.array_task is None else f".{job.array_task}") + \
        f"-{job.restarts}"
    arguments = dict(site=SITE, machine=MACHINE, reservation_id=reservation, charge=cost.credits, basis=BASIS,
                     cost=cost, user_dn=USER_DN, create_time_us=CREATED_US)
    return usage_record(job, **{**arguments, **options}), cost


@pytest.fixture
def luts(tmp_path):
    store = open_luts_store("embedded", tmp_path / "luts")
    yield Luts(store, LutsPolicy(admins=frozenset({ADMIN})))
    store.close()


def test_the_record_of_a_run_is_read_by_the_luts_with_sacct_s_usage_and_the_charge():
    job = run("cpu-burner")
    document, cost = charged(job, vo="atlas", bank_account="acct-proj2")
    # by hand: 5 s × 1 core at 60/h = 1/12; 1.520 s CPU at 36/h = 0.0152; 512 MB × 5 s at 1/GB-h = 1/1440;
    # × 3/2, + 1 per job: 137861/120000 = 1.14884… → 1 credit
    assert cost.credits == 1
    assert cost.numerator * 120_000 == 137_861 * cost.denominator
    [outcome] = ur.parse_batch(document).outcomes
    view = outcome.record
    assert outcome.ok and view.warnings == ()
    assert (view.format, view.record_id, view.local_job_id, view.local_user, view.user_dn, view.vo) == \
        ("ur2", f"jarm:{SITE}:r-gridcredit-{job.job_id}-0", str(job.job_id), "gcuser1", USER_DN, "atlas")
    # the usage, as sacct gave it
    assert (view.wall_us, view.cpu_us, view.memory_bytes, view.processors, view.nodes) == \
        (5 * CREDIT, 1520 * 1000, 217972736, 1, 1)
    assert (view.start_time.timestamp(), view.end_time.timestamp()) == (1796178603, 1796178608)
    assert (view.status, view.exit_code, view.queue, view.project, view.site, view.machine) == \
        ("completed", 0, "batch", "acct-proj2", SITE, MACHINE)
    assert (view.charge, view.charge_micro, view.charge_unit) == ("1", CREDIT, "credits")
    # the extension: the run and its pricing, the table's version
    root = etree.fromstring(document)
    j = f"{{{NS_JARM_UR}}}"
    pricing_element = root.find(f"{j}Pricing")
    assert dict(pricing_element.attrib) == {
        "reservationId": f"r-gridcredit-{job.job_id}-0", "site": SITE, "version": "4", "partition": "batch",
        "qos": "normal", "multiplierNumerator": "3", "multiplierDenominator": "2", "chargedCredits": "1"}
    assert [(line.get("metric"), line.get("quantity")) for line in pricing_element.find(f"{j}Cost")] == \
        [("core-wall", "5"), ("cpu", "1520"), ("memory", str(512 * 5)), ("gpu", "0"), ("job", "1")]
    assert root.find(f"{{{ur.NS_UR2}}}Charge").get(f"{{{ur.NS_UR2}}}formula") == \
        "JARM price table of gridcredit, version 4, load multiplier 3/2"
    run_element = root.find(f"{j}Run")
    assert (run_element.get("account"), run_element.get("qos"), run_element.get("restarts"),
            run_element.find(f"{j}Allocated").get("memoryMB")) == ("proj2", "normal", "0", "512")


def test_a_record_stored_by_the_luts_core_has_sacct_s_usage_and_made_again_is_a_duplicate(luts):
    job = run("steps")
    document, cost = charged(job)
    publisher = Caller(HOST, host_names=(MACHINE,))           # the JARM's host publishes for its machine
    assert [r.status for r in luts.publish(document, publisher).results] == ["stored"]
    stored = luts.record(Caller(ADMIN), record_id(SITE, f"r-gridcredit-{job.job_id}-0"), MACHINE)
    assert stored.usage.wall_us == job.elapsed_s * CREDIT == 2 * CREDIT
    assert stored.usage.cpu_us == (29 + 509 + 317) * 1000              # the three steps' TotalCPU
    assert stored.usage.memory_bytes == 134160384                       # the largest step's MaxRSS
    assert stored.usage.charge_micro == cost.credits * CREDIT
    assert luts.job(Caller(ADMIN), str(job.job_id))[0].usage.record_id == stored.usage.record_id
    # made again later (a retry after a crash, a reconciliation): the same record, a new createTime
    again, _ = charged(job, create_time_us=CREATED_US + 3_600 * CREDIT)
    assert again != document
    assert [r.status for r in luts.publish(again, publisher).results] == ["duplicate"]
    # another charge under the same reservation is refused, not stored beside it
    other, _ = charged(job, charge=cost.credits + 1)
    [result] = luts.publish(other, publisher).results
    assert result.status == "refused" and "a different record is already stored under this record id" in result.message
    assert len(luts.query(Caller(ADMIN)).records) == 1


def test_each_run_is_a_record_of_its_own(luts):
    publisher = Caller(HOST, host_names=(MACHINE,))
    runs = parse_sacct((DATA / "sacct-array.txt").read_text()) + [run("requeued", restarts=0), run("requeued")]
    documents = [charged(job)[0] for job in runs]
    assert [r.status for document in documents for r in luts.publish(document, publisher).results] == ["stored"] * 5
    ids = sorted(record.usage.record_id for record in luts.query(Caller(ADMIN)).records)
    assert ids == sorted([f"jarm:{SITE}:r-gridcredit-9596.{task}-0" for task in range(3)]
                         + [f"jarm:{SITE}:r-gridcredit-9600-0", f"jarm:{SITE}:r-gridcredit-9600-1"])
    first_run = luts.record(Caller(ADMIN), record_id(SITE, "r-gridcredit-9600-0"), MACHINE).usage
    assert (first_run.status, first_run.wall_us) == ("aborted", 6 * CREDIT)       # ended by the requeue


@pytest.mark.parametrize("name, status, exit_status", [
    ("failed", "failed", 3), ("timeout", "aborted", 0), ("pending-cancelled", "aborted", 0)])
def test_the_status_of_each_end(name, status, exit_status):
    job = run(name)
    document = usage_record(job, site=SITE, machine=MACHINE, reservation_id=f"r-x-{job.job_id}-0", charge=0,
                            basis=BASIS, create_time_us=CREATED_US)
    view = ur.parse_batch(document).outcomes[0].record
    assert (view.status, view.exit_code, view.warnings) == (status, exit_status, ())
    if not job.started:      # never started: no start time, nothing used
        assert (view.start_time, view.wall_us, view.cpu_us, view.processors) == (None, 0, 0, 0)


def test_a_run_killed_by_a_signal_has_no_exit_status():
    job = dataclasses.replace(run("sleep"), state="CANCELLED", exit_code=0, exit_signal=9)
    document = usage_record(job, site=SITE, machine=MACHINE, reservation_id="r-x-1-0", charge=0, basis=BASIS)
    view = ur.parse_batch(document).outcomes[0].record
    assert (view.status, view.exit_code) == ("aborted", None)
    assert etree.fromstring(document).find(f"{{{NS_JARM_UR}}}Run").get("signal") == "9"


def test_the_spool_takes_the_record(tmp_path):
    document, _ = charged(run("sleep"))
    path = Spool(tmp_path / "spool").add(document)
    assert path.read_bytes() == document


@pytest.mark.parametrize("change, why", [
    (dict(site="bad site"), "the site 'bad site' is not a usable value"),
    (dict(machine="ce1.example.org:2811"), "the machine name"),
    (dict(reservation_id=""), "the reservation id '' is not a usable value"),
    (dict(charge=-1), "the charge is a whole number of credits 0..1,000,000,000,000,000, not -1"),
    (dict(charge=1.5), "not 1.5"),
    (dict(charge=True), "not True"),
    (dict(basis=PricingBasis("elsewhere", 4, "batch", "normal")), "priced by site elsewhere's prices, not by site"),
    (dict(user_dn="/O=Grid/CN=gc\u202euser1"), "the user's DN"),
    (dict(cost=12), "the cost is a Cost, not 12"),
])
def test_a_record_with_an_unusable_value_is_refused(change, why):
    job = run("sleep")
    arguments = dict(site=SITE, machine=MACHINE, reservation_id="r-x-1-0", charge=1, basis=BASIS)
    with pytest.raises(DomainError, match="^the usage record cannot be made: .*" + why.replace("(", r"\(")) as refused:
        usage_record(job, **{**arguments, **change})
    assert refused.value.code == "InvalidUsage"


def test_a_run_that_has_not_ended_has_no_record():
    job = dataclasses.replace(run("sleep"), state="RUNNING")
    with pytest.raises(DomainError, match=f"job {job.job_id} is RUNNING: only an ended run has a usage record"):
        usage_record(job, site=SITE, machine=MACHINE, reservation_id="r-x-1-0", charge=1, basis=BASIS)
