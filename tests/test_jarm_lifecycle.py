"""The reservation lifecycle (services/jarm/lifecycle.py) against a real Bank host: holds with a user's
proxy or under a service grant, refusals with the shortfall, the Bank unreachable (refuse, admit
within the unfunded cap), settlement, release, extension, and a step repeated after a crash is the
same Bank request (one hold, one charge). Slurm's side is given as data here (what sacct measured,
which runs Slurm still has); tests/test_jarm_lifecycle_slurm.py runs the same against the real Slurm."""
from __future__ import annotations

import dataclasses
import logging
import time

import pytest
import urllib3

from gridcredit.config import StoreConfig
from gridcredit.errors import DomainError, GridcreditError
from gridcredit.security.credentials import load_credential
from gridcredit.services.bank.client import BankClient
from gridcredit.services.jarm import reservations as rsv
from gridcredit.services.jarm.lifecycle import NEVER_STARTED, Banker, Lifecycle, Settings, SlurmJob
from gridcredit.services.jarm.reservation_store import INDEXES as RESERVATION_INDEXES, ReservationStore
from gridcredit.services.jarm.reservations import Authority, JobKey, State, Work
from gridcredit.services.jarm.store import INDEXES as PRICE_INDEXES, PriceChange, PriceStore
from gridcredit.services.jarm.slurm.accounting import SlurmError
from gridcredit.services.jarm.types import JobRequest, LoadPricing, MemoryBasis, Metric, Occupancy, Rate, Usage
from gridcredit.xmlstore import open_store

from bank_fixtures import BankUsers, bank_host
from security_fixtures import free_port

pytestmark = pytest.mark.slow

CREDIT = 1_000_000
T0 = time.time_ns() // 1000          # the Bank checks expiries against its own clock: see _t0_when_the_module_runs


@pytest.fixture(scope="module", autouse=True)
def _t0_when_the_module_runs():
    """T0 is the time the module's tests start, not the time it was collected: in the whole suite that is
    half an hour earlier, and holds made to expire T0 + 20 min were refused as already expired."""
    global T0
    T0 = time.time_ns() // 1000
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
LOAD = LoadPricing(low_permille=500, high_permille=900, min_permille=1000, max_permille=2000)
REQUEST = JobRequest("batch", "normal", cores=2, time_limit_s=600, memory_mb=0, gpus=0, nodes=1)   # 20 + 1 credits


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Cycle Admin"), "alice": pki.user("Cycle Alice"), "bob": pki.user("Cycle Bob"),
            "poor": pki.user("Cycle Poor")}


@pytest.fixture(scope="module")
def bank(pki, people, tmp_path_factory):
    users = BankUsers(people["admin"], pki.user("Cycle Admin Two"), pki.user("Cycle Auditor"), (), (), (), (),
                      pki.user("Cycle Nobody"), pki.user("Cycle Nobody"))
    with bank_host(tmp_path_factory.mktemp("jarm-cycle-bank"), "embedded", users, pki) as host:
        admin = BankClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
        site_dn = load_credential(pki.host_cert, pki.host_key).dn
        for account, owner, funds in (("alice", "alice", 1000), ("bob", "bob", 1000), ("poor", "poor", 5),
                                      ("site", "admin", 0)):
            admin.create_account(account, project="cycle", owner_dn=people[owner].dn)
            if funds:
                admin.mint(account, funds)
        for who in ("bob", "poor"):
            BankClient(host.url, credential=people[who].credential, trust_dir=pki.trust_dir).grant_service(
                who, site_dn, hold_max=100)
        yield host


class Slurm:
    """What Slurm says, as data the test sets: the usage of ended runs, the runs still running."""

    def __init__(self) -> None:
        self.usage: dict[JobKey, Usage] = {}
        self.running: dict[JobKey, int | None] = {}
        self.occupancy: dict[str, Occupancy] = {}

    def occupancy_of(self, partition: str) -> Occupancy:
        if partition not in self.occupancy:
            raise SlurmError(f"sinfo names no partition {partition}")
        return self.occupancy[partition]


class Clock:
    def __init__(self) -> None:
        self.now_us = T0

    def __call__(self) -> int:
        return self.now_us


@pytest.fixture
def world(bank, pki, people, tmp_path):
    store = open_store(StoreConfig(backend="embedded"), tmp_path, indexes=PRICE_INDEXES + RESERVATION_INDEXES)
    prices = PriceStore(store)
    prices.set_table(PriceChange("site1", (Rate("batch", "normal", PRICES), Rate("busy", "normal", PRICES, LOAD)),
                                 MemoryBasis.ALLOCATED, 1, T0 - 1), set_by="test", clock=lambda: T0 - 1)
    host_credential = load_credential(pki.host_cert, pki.host_key)
    site = BankClient(bank.url, credential=host_credential, trust_dir=pki.trust_dir, timeout_s=10, retries=0)
    proxies = {people["alice"].dn: pki.proxy("Cycle Alice")}      # Alice delegated a proxy; Bob and Poor did not
    slurm, clock, reported = Slurm(), Clock(), []
    dns = {"alice": people["alice"].dn, "bob": people["bob"].dn, "poor": people["poor"].dn}
    lifecycle = Lifecycle(
        ReservationStore(store), prices, Banker(site=site, delegated=proxies.get, site_dn=host_credential.dn),
        Settings(site="site1", payee="site", hold_grace_s=600), user_dn=dns.get,
        read_usage=slurm.usage.get, report=reported.append, running=lambda keys: dict(slurm.running), clock=clock,
        occupancy=slurm.occupancy_of)
    lifecycle.reported, lifecycle.slurm, lifecycle.clock_ = reported, slurm, clock
    lifecycle.admin = BankClient(bank.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
    yield lifecycle
    store.close()


def job(number: int, user: str, account: str, request: JobRequest = REQUEST, **key) -> SlurmJob:
    return SlurmJob(JobKey("c1", number, **key), user, account, request)


def used(key: JobKey, elapsed_s: int, cores: int = 2) -> Usage:
    return Usage("batch", "normal", elapsed_s=elapsed_s, total_cpu_ms=0, cores=cores, nodes=1)


def balance(world, account: str):
    return world.admin.get_balance(account)


@pytest.mark.parametrize("user, authority", [("alice", "delegated"), ("bob", "granted")])
def test_a_run_is_held_then_settled_once_and_reported(world, user, authority):
    number = 100 if user == "alice" else 101
    before = {name: balance(world, name).total for name in (user, "site")}
    held = world.reserve(job(number, user, user))
    assert (held.state, held.authority.value, held.estimate, held.hold_amount) == (State.HELD, authority, 21, 21)
    hold = world.admin.get_hold(held.hold_id)
    assert (hold.account_id, hold.amount, hold.state) == (user, 21, "active")
    assert balance(world, user).held == 21

    world.slurm.usage[held.key] = used(held.key, elapsed_s=300)          # 10 core-minutes + the fee
    charged = world.ended(held.key)
    assert (charged.state, charged.pending, charged.cost, charged.charged) == (State.CHARGED, Work.NONE, 11, 11)
    assert [r.reservation_id for r in world.reported] == [held.reservation_id]          # one usage record
    assert world.admin.get_hold(held.hold_id).state == "settled"
    after = {name: balance(world, name) for name in (user, "site")}
    assert before[user] - after[user].total == 11 and after[user].held == 0
    assert after["site"].total - before["site"] == 11

    again = world.ended(held.key)                                         # the epilog once more: nothing
    assert again == world.reservations.get(held.reservation_id)
    assert balance(world, user).total == after[user].total


def test_holds_with_a_users_proxy_share_one_connection_until_the_delegation_changes(world, pki, people,
                                                                                   monkeypatch):
    """The JARM keeps one Bank client (one TLS connection) per delegated proxy: five holds with Alice's proxy
    open one connection, not five (failed before: a client, a session and a TLS handshake per call); a new
    proxy of hers gets a client of its own, and a delegation gone leaves nothing kept."""
    opened = []
    new_conn = urllib3.connectionpool.HTTPSConnectionPool._new_conn

    def counted(pool):
        opened.append(pool.port)
        return new_conn(pool)

    monkeypatch.setattr(urllib3.connectionpool.HTTPSConnectionPool, "_new_conn", counted)
    alice = people["alice"].dn
    for number in range(130, 135):
        assert world.reserve(job(number, "alice", "alice")).state is State.HELD
    assert len(opened) == 1, opened
    first = world.banker.client(Authority.DELEGATED, alice)
    assert world.banker.client(Authority.DELEGATED, alice) is first

    proxies = {alice: pki.proxy("Cycle Alice")}            # Alice delegated again: another proxy, another client
    world.banker.delegated = proxies.get
    assert world.reserve(job(135, "alice", "alice")).state is State.HELD
    assert len(opened) == 2
    assert world.banker.client(Authority.DELEGATED, alice) is not first
    proxies.clear()                                        # her delegation destroyed or expired: forgotten
    with pytest.raises(GridcreditError, match="delegate again"):
        world.banker.client(Authority.DELEGATED, alice)
    assert world.banker.delegated_clients() == 0


def test_a_refusal_says_cost_available_and_shortfall_and_holds_nothing(world):
    refused = world.reserve(job(102, "poor", "poor"))
    assert refused.state is State.REFUSED
    assert "it may cost 21 credits; the Bank refused the hold on account poor:" in refused.note
    assert "5 credits available" in refused.note and "short by 16" in refused.note
    assert balance(world, "poor").held == 0


def test_without_authority_the_bank_refuses_and_the_job_does_not_run(world):
    # Bob's account has no grant for Alice (not one of its holders): the Bank refuses on its own rules
    refused = world.reserve(job(103, "alice", "bob"))        # Alice's proxy, but no right on Bob's account
    assert refused.state is State.REFUSED and "NotAuthorized" in refused.note


def test_a_step_repeated_after_a_crash_is_the_same_bank_request(world):
    reservation = world.reservations.create(rsv.reserve(
        JobKey("c1", 104), user="bob", user_dn=world.user_dn("bob"), account="bob", payee="site", request=REQUEST,
        basis=_basis(world), estimate=21, authority=Authority.GRANTED,
        now_us=T0, hold_expires_us=T0 + 1200 * 1_000_000))[0]
    # the JARM made the hold, then died before keeping the answer: the reservation still says "hold"
    first = world._create_hold(reservation, 21, reservation.hold_expires_us, "hold")
    assert world.reservations.get(reservation.reservation_id).pending is Work.HOLD
    held = world._work_now(world.reservations.get(reservation.reservation_id))   # the reconciler, after restart
    assert held.state is State.HELD and held.hold_id == first.transaction.hold_id   # the Bank's first answer
    assert balance(world, "bob").held == 21                                        # one hold, not two


def _basis(world):
    from gridcredit.services.jarm import pricing
    return pricing.basis_for(world.prices.in_force("site1", T0).table, REQUEST, now_us=T0)


def test_the_bank_unreachable_refuses_and_a_hold_it_may_have_made_is_released(world, pki):
    held_before = balance(world, "bob").held
    reachable = world.banker.site
    world.banker.site = BankClient(f"https://localhost:{free_port()}", credential=load_credential(pki.host_cert, pki.host_key),
                                   trust_dir=pki.trust_dir, timeout_s=2, retries=0)
    try:
        refused = world.reserve(job(105, "bob", "bob"))
    finally:
        world.banker.site = reachable
    assert (refused.state, refused.pending) == (State.CANCELLING, Work.RELEASE)
    assert "the Bank does not answer" in refused.note
    world.reconcile_once()
    released = world.reservations.get(refused.reservation_id)
    assert (released.state, released.pending) == (State.RELEASED, Work.NONE)
    assert balance(world, "bob").held == held_before


def test_admitted_unfunded_within_the_cap_then_charged_when_the_bank_answers(world, pki):
    world.settings = dataclasses.replace(world.settings, bank_unreachable="admit_capped", unfunded_cap_credits=30)
    reachable = world.banker.site
    world.banker.site = BankClient(f"https://localhost:{free_port()}", credential=load_credential(pki.host_cert, pki.host_key),
                                   trust_dir=pki.trust_dir, timeout_s=2, retries=0)
    try:
        first = world.reserve(job(106, "bob", "bob"))
        second = world.reserve(job(107, "bob", "bob"))     # 21 + 21 > the cap of 30
    finally:
        world.banker.site = reachable
    assert (first.state, first.authority) == (State.UNFUNDED, Authority.GRANTED)
    assert second.state is State.REFUSED and "unfunded work already" in second.note
    before = balance(world, "bob").total
    world.slurm.usage[first.key] = used(first.key, elapsed_s=120)        # 4 core-minutes + the fee
    charged = world.ended(first.key)
    assert (charged.state, charged.charged, charged.pending) == (State.CHARGED, 5, Work.NONE)
    assert before - balance(world, "bob").total == 5


def test_a_run_that_ended_unfunded_counts_against_the_cap_until_the_bank_charges_it(world, pki):
    """The cap bounds what an account may owe for work done while the Bank does not answer: a run that ran
    unfunded and ended is still owed (its hold of the cost waits for the Bank), so it counts — else a long
    outage admits any amount of short jobs, a few at a time. (Failed before: only runs still running counted.)"""
    world.settings = dataclasses.replace(world.settings, bank_unreachable="admit_capped", unfunded_cap_credits=30)
    reachable = world.banker.site
    world.banker.site = BankClient(f"https://localhost:{free_port()}", credential=load_credential(pki.host_cert, pki.host_key),
                                   trust_dir=pki.trust_dir, timeout_s=2, retries=0)
    try:
        first = world.reserve(job(120, "bob", "bob"))                     # 21 credits held for, unfunded
        world.slurm.usage[first.key] = used(first.key, elapsed_s=300)     # 10 core-minutes + the fee: owes 11
        ended = world.ended(first.key)
        assert (ended.state, ended.pending, ended.cost) == (State.COMPLETING, Work.HOLD, 11)
        second = world.reserve(job(121, "bob", "bob"))                    # 11 owed + 21 > the cap of 30
    finally:
        world.banker.site = reachable
    assert second.state is State.REFUSED and "11 credits of unfunded work already" in second.note, second.note
    world.reconcile_once()                                                # the Bank answers: the first is charged
    assert world.reservations.get(first.reservation_id).charged == 11


def test_a_raised_time_limit_extends_the_hold_by_the_same_price_version(world):
    held = world.reserve(job(108, "bob", "bob"))
    world.slurm.running[held.key] = 1200                                  # the limit doubled while it runs
    done = world.reconcile_once()
    assert done["extended"] == 1
    extended = world.reservations.get(held.reservation_id)
    assert (extended.hold_amount, extended.estimate, extended.request.time_limit_s) == (41, 41, 1200)
    assert world.admin.get_hold(held.hold_id).amount == 41
    assert world.reconcile_once()["extended"] == 0                         # once
    del world.slurm.running[held.key]                                      # it ended
    world.slurm.usage[held.key] = used(held.key, elapsed_s=900)            # 30 core-minutes + the fee
    world.reconcile_once()
    charged = world.reservations.get(held.reservation_id)
    assert (charged.state, charged.charged) == (State.CHARGED, 31)


def test_a_run_cancelled_before_it_starts_is_released(world):
    held = world.reserve(job(109, "alice", "alice"))
    released = world.cancel(held.key)
    assert (released.state, released.pending) == (State.RELEASED, Work.NONE)
    assert world.admin.get_hold(held.hold_id).state == "released"
    assert world.ended(held.key) == released                 # an epilog after the cancel changes nothing
    with pytest.raises(DomainError, match="is released"):
        rsv.job_ended(released, usage=used(held.key, 1), cost=1, now_us=T0)


def test_the_same_step_done_twice_at_once_keeps_one_outcome(world):
    """The reconciler and a Reserve (or two workers) may take the same pending step from the store at
    once: both ask the Bank under the same request id (one hold), and the second's outcome yields to
    the first's instead of failing the Reserve."""
    world.reservations.create(rsv.reserve(
        JobKey("c1", 110), user="bob", user_dn=world.user_dn("bob"), account="bob", payee="site", request=REQUEST,
        basis=_basis(world), estimate=21, authority=Authority.GRANTED, now_us=T0,
        hold_expires_us=T0 + 1200 * 1_000_000))
    stale = world.reservations.get("r-c1-110-0")
    held_before = balance(world, "bob").held
    first = world.work(stale)
    second = world.work(stale)                 # the same pending step, read before the first was kept
    assert first.state is State.HELD and second == world.reservations.get("r-c1-110-0") == first
    assert balance(world, "bob").held == held_before + 21


@pytest.mark.parametrize("measured", ["never started", "no allocation"])
def test_a_run_that_never_started_is_released_not_charged(world, measured):
    """Slurm ended the job before it started (cancelled while configuring): sacct gave it no nodes."""
    held = world.reserve(job(111 if measured == "no allocation" else 119, "bob", "bob"))
    world.slurm.usage[held.key] = NEVER_STARTED if measured == "never started" else \
        Usage("batch", "normal", elapsed_s=0, total_cpu_ms=0, cores=0)
    released = world.ended(held.key)
    assert (released.state, released.pending, released.charged) == (State.RELEASED, Work.NONE, 0)
    assert world.admin.get_hold(held.hold_id).state == "released"


def test_one_runs_trouble_does_not_stop_the_reconcilers_pass(world):
    first, second = world.reserve(job(122, "bob", "bob")), world.reserve(job(123, "bob", "bob"))
    broken = dataclasses.replace(used(first.key, 60), partition="nosuch")     # a partition the table never had
    world.slurm.usage.update({first.key: broken, second.key: used(second.key, 60)})
    done = world.reconcile_once()                          # both ended: Slurm runs neither
    assert done["ended"] == 2 and done["left"] == 1
    assert world.reservations.get(first.reservation_id).pending is Work.USAGE     # left, said, tried again
    assert world.reservations.get(second.reservation_id).state is State.CHARGED


def test_a_load_priced_partition_is_held_at_the_multiplier_of_its_occupancy_then(world):
    """DGAS load pricing: the multiplier comes from Slurm's occupancy when the job is reserved and stays."""
    busy = dataclasses.replace(REQUEST, partition="busy")
    world.slurm.occupancy["busy"] = Occupancy(used=7, capacity=10)     # 70 %: half way from 1× to 2×
    calm = world.reserve(job(112, "bob", "bob", busy))
    assert (calm.basis.multiplier.numerator, calm.basis.multiplier.denominator) == (3, 2)
    assert calm.estimate == 31                                          # 20 × 1.5 + the fee (not scaled)
    world.slurm.occupancy["busy"] = Occupancy(used=10, capacity=10)
    world.slurm.usage[calm.key] = used(calm.key, elapsed_s=300)         # 10 core-minutes × 1.5 + 1
    assert world.ended(calm.key).charged == 16                          # the multiplier kept, not today's 2×
    del world.slurm.occupancy["busy"]                                   # Slurm cannot say: the greatest one
    unknown = world.reserve(job(113, "bob", "bob", busy))
    assert (unknown.basis.multiplier.numerator, unknown.basis.multiplier.denominator) == (2, 1)
    world.cancel(unknown.key)


def test_a_guaranteed_quote_the_job_presents_prices_it_even_after_a_price_change(world, people):
    from gridcredit.services.jarm import pricing

    table_v1 = world.prices.in_force("site1", T0).table
    quoted = pricing.quote(table_v1, REQUEST, now_us=T0, quote_id="q-cycle-1", guarantee_s=3600)
    world.prices.save_quote(quoted, requester=people["bob"].dn, active_max=10)
    # version 2 doubles the price from now on
    doubled = {metric: 2 * price for metric, price in PRICES.items()}
    world.prices.set_table(PriceChange("site1", (Rate("batch", "normal", doubled), Rate("busy", "normal", PRICES, LOAD)),
                                       MemoryBasis.ALLOCATED, 2, T0), set_by="test", clock=lambda: T0)
    plain = world.reserve(job(114, "bob", "bob"))
    assert (plain.basis.version, plain.estimate) == (2, 42)
    honoured = world.reserve(dataclasses.replace(job(115, "bob", "bob"), quote_id="q-cycle-1"))
    assert (honoured.basis.version, honoured.estimate, honoured.state) == (1, 21, State.HELD)
    with pytest.raises(DomainError, match="another user") as refused:
        world.reserve(dataclasses.replace(job(116, "alice", "alice"), quote_id="q-cycle-1"))
    assert refused.value.code == "QuoteMismatch"
    bigger = dataclasses.replace(job(117, "bob", "bob"), quote_id="q-cycle-1",
                                 request=dataclasses.replace(REQUEST, cores=4))
    with pytest.raises(DomainError) as refused:
        world.reserve(bigger)                                       # more than was quoted
    assert refused.value.code == "QuoteMismatch"
    world.clock_.now_us = T0 + 3601 * 1_000_000
    with pytest.raises(DomainError) as refused:
        world.reserve(dataclasses.replace(job(118, "bob", "bob"), quote_id="q-cycle-1"))
    assert refused.value.code == "QuoteExpired"
    for key in (plain.key, honoured.key):
        world.cancel(key)


def test_while_the_bank_is_down_the_reconciler_logs_one_line_per_pass_and_one_per_run_settled(world, pki, caplog):
    """Runs wait for the Bank: each pass of the reconciler says once how many wait, since when and the Bank's
    error — not lines per run (failed before: 3 per run and pass — the client's per attempt, the step's) —
    and asks the Bank once, not once per run; when it answers, one line per run charged."""
    world.settings = dataclasses.replace(world.settings, bank_unreachable="admit_capped", unfunded_cap_credits=300)
    reachable = world.banker.site
    world.banker.site = BankClient(f"https://localhost:{free_port()}", credential=load_credential(pki.host_cert, pki.host_key),
                                   trust_dir=pki.trust_dir, timeout_s=2, retries=1, backoff_s=0.01)   # as the JARM's
    runs = [world.reserve(job(number, "bob", "bob")) for number in (140, 141, 142, 143)]
    for run in runs:
        assert run.state is State.UNFUNDED
        world.slurm.usage[run.key] = used(run.key, elapsed_s=300)
        assert world.ended(run.key).pending is Work.HOLD          # its hold of the cost waits for the Bank
    passes = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            world.clock_.now_us += 30 * 1_000_000
            done = world.reconcile_once()
        passes.append([record for record in caplog.records if record.levelno >= logging.INFO])
    for lines in passes:
        assert len(lines) == 1, [line.getMessage() for line in lines]
        assert lines[0].levelno == logging.WARNING
    assert done["waiting"] == 4
    first, second = (lines[0].getMessage() for lines in passes)
    assert "the Bank does not answer" in first and "4 run(s) wait for it" in first and "ConnectionError" in first
    since = first[first.index(" since "):].split(":")[0:3]
    assert since == second[second.index(" since "):].split(":")[0:3]       # the same outage, since its first pass
    world.banker.site = reachable
    caplog.clear()
    with caplog.at_level(logging.INFO):
        done = world.reconcile_once()
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.INFO]
    assert done["waiting"] == 0
    assert sorted(lines) == sorted(f"jarm {run.reservation_id}: charged 11 of 11 credits held (cost 11) to site"
                                   for run in runs), lines
