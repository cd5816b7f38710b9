"""The unfunded cap holds under concurrent admissions (issue 13.4): while the Bank does not answer, the
``admit_capped`` policy admits a run only if the account's unfunded work plus its estimate stays within the
cap — checked and admitted in one transaction of the real store (embedded and BaseX), so runs reserved at
once (the JARM's workers, its threads) never admit more than the cap between them."""
from __future__ import annotations

import threading

import pytest

from gridcredit.security.credentials import load_credential
from gridcredit.services.bank.client import BankClient
from gridcredit.services.jarm import pricing, reservations as rsv
from gridcredit.services.jarm.lifecycle import Banker, Lifecycle, Settings, SlurmJob
from gridcredit.services.jarm.reservation_store import INDEXES as RESERVATION_INDEXES, ReservationStore
from gridcredit.services.jarm.reservations import JobKey, State
from gridcredit.services.jarm.store import INDEXES as PRICE_INDEXES, PriceChange, PriceStore
from gridcredit.services.jarm.types import JobRequest, MemoryBasis, Metric, Rate

from security_fixtures import free_port
from store_fixtures import basex_server, open_from_spec, store_spec  # noqa: F401 — fixtures

CREDIT = 1_000_000
T0 = 1_800_000_000 * CREDIT
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
REQUEST = JobRequest("batch", "normal", cores=2, time_limit_s=600, memory_mb=0, gpus=0, nodes=1)   # 20 + 1 credits
ESTIMATE = 21
CAP = 3 * ESTIMATE + 10          # room for three runs, not four
THREADS = 10


@pytest.fixture
def lifecycle(store_spec, pki):
    """A JARM whose Bank does not answer (nothing listens at its address), policy admit_capped."""
    with open_from_spec(store_spec, indexes=PRICE_INDEXES + RESERVATION_INDEXES) as store:
        prices = PriceStore(store)
        prices.set_table(PriceChange("site1", (Rate("batch", "normal", PRICES),), MemoryBasis.ALLOCATED, 1, T0 - 1),
                         set_by="test", clock=lambda: T0 - 1)
        credential = load_credential(pki.host_cert, pki.host_key)
        nowhere = BankClient(f"https://localhost:{free_port()}", credential=credential, trust_dir=pki.trust_dir,
                             timeout_s=2, retries=0)
        yield Lifecycle(ReservationStore(store), prices, Banker(site=nowhere, site_dn=credential.dn),
                        Settings(site="site1", payee="site", bank_unreachable="admit_capped",
                                 unfunded_cap_credits=CAP),
                        user_dn={"bob": "/CN=Cap Bob"}.get, read_usage=lambda key: None, report=lambda r: None,
                        running=lambda keys: {}, clock=lambda: T0)


def reserve_at_once(lifecycle, numbers) -> list:
    """Reserve a run of each job number, every one in its own thread, started together."""
    start, outcomes = threading.Barrier(len(numbers)), {}

    def reserve(number: int) -> None:
        start.wait()
        outcomes[number] = lifecycle.reserve(SlurmJob(JobKey("c1", number), "bob", "bob", REQUEST))

    threads = [threading.Thread(target=reserve, args=(number,)) for number in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == sorted(numbers), "a reservation did not finish"
    return [outcomes[number] for number in numbers]


def test_runs_reserved_at_once_while_the_bank_is_down_never_exceed_the_unfunded_cap(lifecycle):
    """(Failed before: the cap was read by a query, then each run admitted in a transaction of its own —
    runs reserved at once all saw the same unfunded sum and all passed: 5-10 admitted of 10, cap 3.)"""
    outcomes = reserve_at_once(lifecycle, range(1, THREADS + 1))
    admitted = [r for r in outcomes if r.state is State.UNFUNDED]
    refused = [r for r in outcomes if r.state is State.REFUSED]
    assert len(admitted) == 3 and len(refused) == THREADS - 3, [(r.reservation_id, r.state) for r in outcomes]
    assert sum(r.estimate for r in admitted) <= CAP
    for run in refused:
        assert f"{3 * ESTIMATE} credits of unfunded work already (the cap is {CAP})" in run.note, run.note
    stored = lifecycle.reservations.in_states((State.UNFUNDED,), account="bob")
    assert sorted(r.reservation_id for r in stored) == sorted(r.reservation_id for r in admitted)


def test_the_cap_frees_up_as_unfunded_runs_are_charged_and_holds_under_a_second_rush(lifecycle):
    """What an account owes counts only runs still owing: once the first three are charged (here: their
    usage priced and the Bank's hold refused — they leave the count), three more are admitted, not more."""
    first = [r for r in reserve_at_once(lifecycle, range(1, THREADS + 1)) if r.state is State.UNFUNDED]
    for run in first:                   # each leaves what the account owes (its hold refused: uncharged)
        lifecycle.reservations.change(run.reservation_id, lambda found: rsv.unfunded_hold_refused(
            rsv.job_ended(rsv.run_ended(found, now_us=T0), usage=None, cost=5, now_us=T0),
            reason="test", now_us=T0))
    second = reserve_at_once(lifecycle, range(101, 101 + THREADS))
    assert len([r for r in second if r.state is State.UNFUNDED]) == 3


def test_runs_admitted_unfunded_before_the_accounts_list_existed_count_too(lifecycle):
    """A store from before the per-account list (runs already unfunded, no list document): the first
    admission starts the list from the store's own unfunded runs, so they count against the cap."""
    basis = lifecycle.prices.in_force("site1", T0).table
    for number in (201, 202, 203):                       # three runs admitted unfunded by the old code
        reservation = rsv.reserve(JobKey("c1", number), user="bob", user_dn="/CN=Cap Bob", account="bob",
                                  payee="site", request=REQUEST, basis=pricing.basis_for(basis, REQUEST, now_us=T0),
                                  estimate=ESTIMATE, authority=rsv.Authority.GRANTED, now_us=T0,
                                  hold_expires_us=T0 + 1200 * CREDIT)
        lifecycle.reservations.create(rsv.admitted_unfunded(reservation, reason="old", now_us=T0))
    refused = lifecycle.reserve(SlurmJob(JobKey("c1", 204), "bob", "bob", REQUEST))
    assert refused.state is State.REFUSED and f"{3 * ESTIMATE} credits of unfunded work already" in refused.note
