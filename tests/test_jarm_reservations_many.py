"""services/jarm/lifecycle.py reads the reservations it must look at through ReservationStore.in_states,
one page of at most PAGE_MAX (1,000) documents, oldest ids first: beyond 1,000 unfunded runs the
unfunded cap stops counting, beyond 1,000 held runs the reconciler neither sees the later ones end
nor extends their holds (found while writing bench/jarm_lifecycle.py; no Bank host needed: its URL
does not answer)."""
import time

import pytest

from conftest import KeyPool, make_test_pki
from gridcredit.config import StoreConfig
from gridcredit.security.credentials import load_credential
from gridcredit.services.bank.client import BankClient
from gridcredit.services.jarm import pricing, reservations as rsv
from gridcredit.services.jarm.lifecycle import Banker, Lifecycle, Settings, SlurmJob
from gridcredit.services.jarm.reservation_store import INDEXES as RESERVATION_INDEXES, ReservationStore
from gridcredit.services.jarm.reservations import Authority, JobKey, State, Work
from gridcredit.services.jarm.store import INDEXES as PRICE_INDEXES, PriceChange, PriceStore
from gridcredit.services.jarm.types import JobRequest, MemoryBasis, Metric, Rate
from gridcredit.xmlstore import open_store
from security_fixtures import free_port

pytestmark = pytest.mark.slow

CREDIT = 1_000_000
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
REQUEST = JobRequest("batch", "normal", cores=1, time_limit_s=600, memory_mb=0, gpus=0, nodes=1)   # 11 credits
T0 = time.time_ns() // 1000
MANY = 1001


def _lifecycle(tmp_path, cap):
    pki = make_test_pki(tmp_path / "pki", KeyPool("rsa", shared_size=1))
    store = open_store(StoreConfig(backend="embedded"), tmp_path, indexes=PRICE_INDEXES + RESERVATION_INDEXES)
    prices = PriceStore(store)
    prices.set_table(PriceChange("c1", (Rate("batch", "normal", PRICES),), MemoryBasis.ALLOCATED, 1, T0 - 1),
                     set_by="test", clock=lambda: T0 - 1)
    down = BankClient(f"https://localhost:{free_port()}", credential=load_credential(pki.host_cert, pki.host_key),
                      trust_dir=pki.trust_dir, timeout_s=2, retries=0)
    lifecycle = Lifecycle(ReservationStore(store), prices, Banker(site=down), Settings(
        site="c1", payee="site", bank_unreachable="admit_capped", unfunded_cap_credits=cap),
        user_dn={"alice": "/CN=Alice", "bob": "/CN=Bob"}.get, read_usage=lambda key: None, report=lambda r: None,
        running=lambda keys: {}, clock=lambda: T0)
    basis = pricing.basis_for(prices.in_force("c1", T0).table, REQUEST, now_us=T0)
    return lifecycle, store, basis


def _many(lifecycle, basis, first_job, count, *, user, account, held):
    for number in range(first_job, first_job + count):
        reservation = rsv.reserve(JobKey("c1", number), user=user, user_dn=f"/CN={user.title()}", account=account,
                                  payee="site", request=REQUEST, basis=basis, estimate=11,
                                  authority=Authority.GRANTED if held else None, now_us=T0,
                                  hold_expires_us=T0 + 3600 * CREDIT)
        if held:
            reservation = rsv.hold_made(reservation, hold_id=f"h{number}", amount=11,
                                        expires_us=T0 + 3600 * CREDIT, now_us=T0)
        lifecycle.reservations.create(reservation)


def test_the_unfunded_cap_counts_every_unfunded_run_of_the_account(tmp_path):
    lifecycle, store, basis = _lifecycle(tmp_path, cap=22)
    try:
        _many(lifecycle, basis, 100_000, MANY, user="alice", account="alice", held=False)   # another account's
        _many(lifecycle, basis, 900_000, 2, user="bob", account="bob", held=False)          # Bob's: 22, the cap
        third = lifecycle.reserve(SlurmJob(JobKey("c1", 900_002), "bob", "bob", REQUEST))
        assert third.state is State.REFUSED and "unfunded work already" in third.note     # 22 + 11 > 22
    finally:
        store.close()


def test_the_reconciler_sees_every_held_run_end(tmp_path):
    lifecycle, store, basis = _lifecycle(tmp_path, cap=0)
    try:
        _many(lifecycle, basis, 100_000, MANY, user="alice", account="alice", held=True)
        lifecycle.reconcile_once()               # Slurm runs none of them any more
        pending = [r.pending for r in lifecycle.reservations.all()]
        assert pending.count(Work.USAGE) == MANY, {w.value: pending.count(w) for w in set(pending)}
    finally:
        store.close()
