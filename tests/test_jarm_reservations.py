"""The reservation lifecycle's pure core (services/jarm/reservations.py), its documents
(reservation_store.py) and Slurm's queue as the reconciler reads it (slurm/queue.py)."""
from __future__ import annotations

import dataclasses

import pytest

from gridcredit.errors import DomainError
from gridcredit.services.jarm import reservations as rsv
from gridcredit.services.jarm.reservation_store import reservation_from_xml, reservation_xml
from gridcredit.services.jarm.reservations import Authority, JobKey, State, Work
from gridcredit.services.jarm.slurm.queue import alive, parse_jobs
from gridcredit.services.jarm.types import JobRequest, Multiplier, PricingBasis, Usage
from gridcredit.xmlstore._api import DOC_ID_PATTERN
from gridcredit.services.bank.ledger import REQUEST_ID_PATTERN

T0 = 1_790_000_000_000_000
REQUEST = JobRequest("batch", "normal", 4, 3600, 4096, 0, 1)
BASIS = PricingBasis("site1", 3, "batch", "normal", Multiplier(1, 1))
USAGE = Usage("batch", "normal", elapsed_s=600, total_cpu_ms=2_000_000, cores=4, memory_mb=4096, nodes=1,
              max_rss_mb=100)


def reserved(key=JobKey("cluster1", 42), authority=Authority.GRANTED, estimate=5):
    return rsv.reserve(key, user="gcuser1", user_dn="/CN=Alice", account="proj1", payee="site", request=REQUEST,
                       basis=BASIS, estimate=estimate, authority=authority, now_us=T0)


def test_the_ids_of_a_run_fit_the_store_and_the_bank_and_differ_per_run():
    keys = [JobKey("c_1", 7), JobKey("c_1", 7, 0), JobKey("c_1", 7, None, 1), JobKey("c.1", 7), JobKey("c-1", 7),
            JobKey("c", 17), JobKey("c-1", 7, 1), JobKey("c", 1, 71)]
    ids = [key.reservation_id for key in keys]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert DOC_ID_PATTERN.match(rid) and DOC_ID_PATTERN.match(rid).end() == len(rid)
        for step in ("hold", "settle", "release", "extend-12"):
            assert REQUEST_ID_PATTERN.fullmatch(rsv.bank_request_id(rid, step))
    assert JobKey("cluster1", 42, 3, 2).reservation_id == "r-cluster1-42.3-2"
    assert JobKey("cluster1", 42, 3).job == "42_3"


@pytest.mark.parametrize("arguments", [("", 1), ("c/1", 1), ("c", 0), ("c", 2**32), ("c", True), ("c", 1, -1),
                                       ("c", 1, None, -1), ("c", "1")])
def test_a_key_out_of_range_is_refused(arguments):
    with pytest.raises(DomainError, match="cluster name|job id|array task|restart count"):
        JobKey(*arguments)


def test_a_funded_run_from_hold_to_report():
    reservation = reserved()
    assert (reservation.state, reservation.pending) == (State.RESERVING, Work.HOLD)
    held = rsv.hold_made(reservation, hold_id="hold-9", amount=5, expires_us=T0 + 2, now_us=T0 + 1)
    assert (held.state, held.pending, held.hold_id) == (State.HELD, Work.NONE, "hold-9")
    ended = rsv.run_ended(held, now_us=T0 + 3)
    assert ended.pending is Work.USAGE
    assert rsv.run_ended(ended, now_us=T0 + 4) == ended                 # the epilog and the reconciler both
    priced = rsv.job_ended(ended, usage=USAGE, cost=3, now_us=T0 + 5)
    assert (priced.state, priced.pending, rsv.settlement(priced)) == (State.COMPLETING, Work.SETTLE, 3)
    charged = rsv.settled(priced, charged=3, now_us=T0 + 6)
    assert (charged.state, charged.pending, charged.uncharged) == (State.CHARGED, Work.REPORT, 0)
    done = rsv.reported(charged, now_us=T0 + 7)
    assert (done.pending, done.ended) == (Work.NONE, True)
    with pytest.raises(DomainError, match="is charged"):
        rsv.settled(done, charged=3, now_us=T0 + 8)                     # settled once


def test_a_cost_above_the_hold_is_charged_up_to_it_and_the_rest_kept_uncharged():
    held = rsv.hold_made(reserved(), hold_id="hold-9", amount=5, expires_us=T0 + 2, now_us=T0)
    priced = rsv.job_ended(rsv.run_ended(held, now_us=T0), usage=USAGE, cost=8, now_us=T0)
    assert rsv.settlement(priced) == 5
    assert rsv.settled(priced, charged=5, now_us=T0).uncharged == 3


def test_an_unfunded_run_gets_a_hold_of_its_cost_when_it_ends():
    reservation = reserved(authority=None)
    assert (reservation.state, reservation.pending) == (State.UNFUNDED, Work.NONE)
    priced = rsv.job_ended(rsv.run_ended(reservation, now_us=T0), usage=USAGE, cost=4, now_us=T0)
    assert (priced.state, priced.pending) == (State.COMPLETING, Work.HOLD)
    held = rsv.hold_made(priced, hold_id="hold-3", amount=4, expires_us=T0 + 9, now_us=T0)
    assert (held.state, held.pending) == (State.COMPLETING, Work.SETTLE)
    refused = rsv.unfunded_hold_refused(priced, reason="no funds", now_us=T0)
    assert (refused.state, refused.pending, refused.uncharged) == (State.CHARGED, Work.REPORT, 4)
    free = rsv.job_ended(rsv.run_ended(reserved(authority=None), now_us=T0), usage=USAGE, cost=0, now_us=T0)
    assert (free.state, free.pending) == (State.CHARGED, Work.REPORT)


def test_admitted_unfunded_only_from_reserving():
    admitted = rsv.admitted_unfunded(reserved(), reason="bank down", now_us=T0)
    assert (admitted.state, admitted.pending, admitted.note) == (State.UNFUNDED, Work.NONE, "unfunded: bank down")
    assert admitted.unfunded_us == T0 and reservation_from_xml(reservation_xml(admitted)) == admitted
    later = rsv.failed_attempt(admitted, error="the Bank does not answer", now_us=T0 + 1)
    assert later.unfunded_us == T0                       # kept for good, whatever the note says later
    with pytest.raises(DomainError, match="is unfunded"):
        rsv.admitted_unfunded(admitted, reason="again", now_us=T0)


def test_cancel_releases_what_is_or_may_be_held_and_repeats_harmlessly():
    cancelling = rsv.cancel(reserved(), now_us=T0)       # the hold's answer may have been lost: ask, then release
    assert (cancelling.state, cancelling.pending) == (State.CANCELLING, Work.RELEASE)
    assert rsv.cancel(cancelling, now_us=T0) == cancelling
    held = rsv.hold_made(cancelling, hold_id="hold-1", amount=5, expires_us=T0, now_us=T0)
    assert (held.state, held.pending, held.hold_id) == (State.CANCELLING, Work.RELEASE, "hold-1")
    released = rsv.released(held, now_us=T0)
    assert (released.state, released.pending) == (State.RELEASED, Work.NONE)
    assert rsv.cancel(released, now_us=T0) == released
    assert rsv.cancel(reserved(authority=None), now_us=T0).state is State.RELEASED
    running = rsv.run_ended(rsv.hold_made(reserved(), hold_id="h", amount=5, expires_us=T0, now_us=T0), now_us=T0)
    priced = rsv.job_ended(running, usage=USAGE, cost=1, now_us=T0)
    with pytest.raises(DomainError, match="cannot be cancelled"):
        rsv.cancel(priced, now_us=T0)


def test_refused_holds_end_the_reservation():
    refused = rsv.hold_refused(reserved(), reason="short by 3 credits", now_us=T0)
    assert (refused.state, refused.pending, refused.note, refused.ended) == (State.REFUSED, Work.NONE,
                                                                            "short by 3 credits", True)
    with pytest.raises(DomainError, match="is refused"):
        rsv.job_ended(refused, usage=USAGE, cost=1, now_us=T0)
    with pytest.raises(DomainError, match="before its hold"):
        rsv.run_ended(reserved(), now_us=T0)


def test_an_extension_counts_and_keeps_the_state():
    held = rsv.hold_made(reserved(), hold_id="hold-9", amount=5, expires_us=T0 + 2, now_us=T0)
    once = rsv.extended(held, amount=7, expires_us=T0 + 10, now_us=T0)
    assert (once.state, once.hold_amount, once.hold_expires_us, once.extensions) == (State.HELD, 7, T0 + 10, 1)
    with pytest.raises(DomainError, match="cannot be extended"):
        rsv.extended(reserved(), amount=7, expires_us=T0, now_us=T0)


@pytest.mark.parametrize("step", ["reserved", "held", "array", "charged"])
def test_a_reservation_document_reads_back_as_it_was(step):
    reservation = reserved(JobKey("c_1", 9, 4, 2) if step == "array" else JobKey("c1", 9), Authority.DELEGATED)
    if step in ("held", "charged"):
        reservation = rsv.hold_made(reservation, hold_id="hold-77", amount=5, expires_us=T0 + 5, now_us=T0 + 1)
    if step == "charged":
        priced = rsv.job_ended(rsv.run_ended(reservation, now_us=T0 + 2), usage=USAGE, cost=3, now_us=T0 + 3)
        reservation = dataclasses.replace(rsv.settled(priced, charged=3, now_us=T0 + 4), note="a <note> & \"quotes\"")
    assert reservation_from_xml(reservation_xml(reservation)) == reservation


SCONTROL = b"""JobId=101 JobName=a UserId=gcuser1(1001) GroupId=gcuser1(1001) MCS_label=N/A Priority=1 Nice=0 Account=proj1 QOS=normal JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 TimeLimit=01:30:00
JobId=102 ArrayJobId=102 ArrayTaskId=4-10 JobName=b UserId=gcuser1(1001) Account=proj1 QOS=normal JobState=PENDING Reason=Resources Restarts=0
JobId=105 ArrayJobId=102 ArrayTaskId=3 JobName=b UserId=gcuser1(1001) Account=proj1 QOS=normal JobState=COMPLETING Reason=None Restarts=0 TimeLimit=1-01:01:01
JobId=103 JobName=c UserId=gcuser2(1002) Account=proj2 QOS=normal JobState=PENDING Reason=BeginTime Restarts=1 TimeLimit=UNLIMITED
JobId=104 JobName=d UserId=gcuser2(1002) Account=proj2 QOS=normal JobState=COMPLETED Reason=None Restarts=0 TimeLimit=00:01:00
"""


def test_the_reconciler_reads_which_runs_slurm_still_has():
    jobs = parse_jobs(SCONTROL)
    assert jobs == {(101, None): ("RUNNING", 0, 5400), (102, 3): ("COMPLETING", 0, 90_061),
                    (103, None): ("PENDING", 1, None), (104, None): ("COMPLETED", 0, 60)}
    keys = [JobKey("c", 101), JobKey("c", 102, 3), JobKey("c", 103, None, 0), JobKey("c", 103, None, 1),
            JobKey("c", 104), JobKey("c", 999), JobKey("c", 101, None, 1)]
    # 103's first run was requeued (its restart count went up): that run ended; its second waits to run
    assert alive(keys, jobs) == {JobKey("c", 101): 5400, JobKey("c", 102, 3): 90_061}
    assert parse_jobs(b"No jobs in the system\n") == {}


def test_the_prolog_reads_the_job_and_the_quote_it_presents():
    from gridcredit.services.jarm.slurm.hooks import parse_job_line

    line = ("JobId=9700 ArrayJobId=9698 ArrayTaskId=2 JobName=wrap UserId=gcuser1(1001) GroupId=gcuser1(1001) "
            "Account=proj1 QOS=normal JobState=CONFIGURING Restarts=1 TimeLimit=1-02:03:04 Partition=batch "
            "NumNodes=1 NumCPUs=4 TRES=cpu=4,mem=2G,node=1,billing=4,gres/gpu=1 Comment=jarm-quote=q-abc_1")
    job = parse_job_line(line, "gridcredit")
    assert job.key == JobKey("gridcredit", 9698, 2, 1) and (job.user, job.account, job.quote_id) == (
        "gcuser1", "proj1", "q-abc_1")
    assert job.request == JobRequest("batch", "normal", 4, 93_784, 2048, 1, 1)
    plain = parse_job_line(line.replace(" Comment=jarm-quote=q-abc_1", " Comment=hello")
                           .replace("ArrayJobId=9698 ArrayTaskId=2 ", ""), "gridcredit")
    assert (plain.key, plain.quote_id) == (JobKey("gridcredit", 9700, None, 1), "")
