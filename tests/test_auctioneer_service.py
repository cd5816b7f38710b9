"""The Auctioneer over signed SOAP on a real host (services/auctioneer/service.py), with the host's Bank: bids on
holds that name this auctioneer, who may do what (policy.py), bad input refused with nothing changed, and the
money of a few intervals — the owner's account gains exactly what the bidders' holds lose, each interval's batch
applied once, the audit clean. libvirt here is ``test:///default`` with a VM folder QEMU could not use: no VM is
made, and each bid says so (``enforced``) while it pays — the real enforcement is tests/test_auctioneer_loop_qemu.py.
"""
from __future__ import annotations

import time
from datetime import timedelta

import pytest

from gridcredit.errors import RemoteFault
from gridcredit.security.credentials import load_credential
from gridcredit.services.auctioneer.client import AuctioneerClient
from gridcredit.services.auctioneer.store import MarketStore, bid_id_for
from gridcredit.services.auctioneer.runtime import market_config
from gridcredit.services.auctioneer.config import AuctioneerConfig
from gridcredit.services.bank.client import BankClient

from bank_fixtures import BankUsers, bank_host

pytestmark = pytest.mark.slow

HOST_ID = "host-a"
OWNER_ACCOUNT = "owner-acct"
FUNDS = 10_000
CREDIT = 1_000_000


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Market Admin"), "owner": pki.user("Market Owner"), "alice": pki.user("Market Alice"),
            "bob": pki.user("Market Bob"), "stranger": pki.user("Market Stranger")}


def auctioneer_env(people, *, interval_s: int = 1, extra: dict | None = None) -> dict:
    env = {"GRIDCREDIT_AUCTIONEER_HOST_ID": HOST_ID, "GRIDCREDIT_AUCTIONEER_CAPACITY_CPUS": "1",
           "GRIDCREDIT_AUCTIONEER_OWNER_ACCOUNT": OWNER_ACCOUNT, "GRIDCREDIT_AUCTIONEER_OWNERS": people["owner"].dn,
           "GRIDCREDIT_AUCTIONEER_INTERVAL_S": str(interval_s),
           "GRIDCREDIT_AUCTIONEER_TEMPLATES": "small=spin,quiet=idle",
           "GRIDCREDIT_AUCTIONEER_LIBVIRT_URI": "test:///default"}
    env.update(extra or {})
    return env


def open_accounts(host, people) -> None:
    admin = BankClient(host.url, credential=people["admin"].credential, trust_dir=host.pki.trust_dir)
    for account, owner in ((OWNER_ACCOUNT, "owner"), ("alice-acct", "alice"), ("bob-acct", "bob")):
        admin.create_account(account, project="market", owner_dn=people[owner].dn)
        if owner != "owner":
            admin.mint(account, FUNDS)


@pytest.fixture(scope="module")
def host(pki, people, tmp_path_factory):
    root = tmp_path_factory.mktemp("auctioneer-service")
    users = BankUsers(people["admin"], pki.user("Market Admin Two"), pki.user("Market Auditor"), (), (), (), (),
                      pki.user("Market Service"), people["stranger"])
    with bank_host(root, "embedded", users, pki, extra_env=auctioneer_env(people)) as running:
        open_accounts(running, people)
        yield running


def auctioneer(host, who) -> AuctioneerClient:
    return AuctioneerClient(host.url, credential=who.credential, trust_dir=host.pki.trust_dir)


def bank(host, who) -> BankClient:
    return BankClient(host.url, credential=who.credential, trust_dir=host.pki.trust_dir)


def host_dn(host) -> str:
    return load_credential(host.pki.host_cert, host.pki.host_key).identity_dn


def refused(call) -> RemoteFault:
    with pytest.raises(RemoteFault) as fault:
        call()
    return fault.value


def hold(host, who, account, *, amount=500, collector=None, payee=OWNER_ACCOUNT, expires_s=3_600) -> str:
    receipt = bank(host, who).create_hold(account, amount=amount, expires=timedelta(seconds=expires_s),
                                          collector_dn=host_dn(host) if collector is None else collector,
                                          payee_account_id=payee)
    return receipt.transaction.hold_id


def wait_for(condition, timeout_s: float = 20.0, step_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(step_s)


def market_records(host):
    """The host's market store as the test process reads it."""
    with host.open_store() as store:
        market = MarketStore(store, market_config(AuctioneerConfig(host_id=HOST_ID, owner_account=OWNER_ACCOUNT,
                                                                   interval_s=1)))
        return market.intervals(), market.market(now_us=time.time_ns() // 1000)


# -- the host ------------------------------------------------------------------------------------


def test_get_host_names_the_auctioneer_and_its_market(host, people):
    view = auctioneer(host, people["stranger"]).host()
    assert view.enabled and view.host_id == HOST_ID and view.capacity_cpus == 1
    assert view.auctioneer_dn == host_dn(host) and view.owner_account == OWNER_ACCOUNT
    assert view.templates == ("quiet", "small") and view.interval_s == 1 and view.mode == "capped"


# -- placing, changing, cancelling ------------------------------------------------------------------


def test_a_bid_on_a_hold_for_this_auctioneer_is_live_and_a_repeat_is_the_same_bid(host, people):
    alice = auctioneer(host, people["alice"])
    hold_id = hold(host, people["alice"], "alice-acct")
    bid = alice.place_bid(hold_id, template="small", rate_ucps=2 * CREDIT, max_duration_s=60)
    assert bid.live and bid.rate_ucps == 2 * CREDIT and bid.owner_dn == people["alice"].dn
    assert bid.bid_id == bid_id_for(HOST_ID, hold_id) and bid.hold_id == hold_id and not bid.replayed
    again = alice.place_bid(hold_id, template="small", rate_ucps=2 * CREDIT, max_duration_s=60)
    assert again.bid_id == bid.bid_id and again.replayed
    # a different bid on the same hold is refused: one hold, one bid
    fault = refused(lambda: alice.place_bid(hold_id, template="small", rate_ucps=3 * CREDIT, max_duration_s=60))
    assert fault.code == "HoldAlreadyBid" and bid.bid_id in str(fault)
    alice.cancel_bid(bid.bid_id)


def test_a_budget_over_a_duration_is_its_rate_rounded_down(host, people):
    alice = auctioneer(host, people["alice"])
    hold_id = hold(host, people["alice"], "alice-acct", amount=100)
    bid = alice.place_bid(hold_id, template="small", budget=100, duration_s=3_600)
    assert bid.rate_ucps == 100 * CREDIT // 3_600 == 27_777 and bid.max_duration_s == 3_600
    alice.cancel_bid(bid.bid_id)


def bad_bids(host, people):
    alice = people["alice"]
    return [
        ("zero rate", lambda: hold(host, alice, "alice-acct"), {"rate": "0"}, "InvalidArgument"),
        ("negative rate", lambda: hold(host, alice, "alice-acct"), {"rate": "-1"}, "InvalidArgument"),
        ("absurd rate", lambda: hold(host, alice, "alice-acct"), {"rate": "1000000000000"}, "InvalidArgument"),
        ("seven decimals", lambda: hold(host, alice, "alice-acct"), {"rate": "0.0000001"}, "InvalidArgument"),
        ("unknown template", lambda: hold(host, alice, "alice-acct"), {"template": "huge"}, "UnknownTemplate"),
        ("someone else collects", lambda: hold(host, alice, "alice-acct", collector=people["stranger"].dn),
         {}, "HoldNotForThisAuctioneer"),
        ("another payee", lambda: hold(host, alice, "alice-acct", payee="bob-acct"), {}, "HoldWrongPayee"),
        ("cannot pay one interval", lambda: hold(host, alice, "alice-acct", amount=1), {"rate": "5"},
         "InsufficientHold"),
        ("expires too soon", lambda: hold(host, alice, "alice-acct", expires_s=1), {}, "HoldExpiresTooSoon"),
        ("rate and budget", lambda: hold(host, alice, "alice-acct"), {"budget": 10, "duration_s": 10},
         "InvalidArgument"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_input_is_a_clear_fault_and_changes_nothing(host, people, case):
    name, make_hold, changes, code = bad_bids(host, people)[case]
    hold_id = make_hold()
    alice_bank = bank(host, people["alice"])
    before = alice_bank.get_hold(hold_id)
    arguments = {"hold_id": hold_id, "rate": "1", "max_duration_s": 60, "template": "small", **changes}
    client = auctioneer(host, people["alice"])
    fault = refused(lambda: client.invoke("PlaceBid", arguments))
    assert fault.code == code, (name, fault)
    assert str(fault).strip(), name
    # nothing changed: the hold as it was (nothing charged, not ended), no bid on it — not even an ended one
    time.sleep(1.2)                              # an interval: a bid placed by mistake would have been charged
    after = alice_bank.get_hold(hold_id)
    assert (after.amount, after.charged, after.collector_dn, after.payee_account_id) == (
        before.amount, before.charged, before.collector_dn, before.payee_account_id)
    assert after.state == before.state or (after.state == "expired" and after.expires_at_us <= time.time() * 1e6)
    assert all(bid.hold_id != hold_id for bid in client.bids(include_ended=True))
    assert all(bid.hold_id != hold_id for bid in auctioneer(host, people["owner"]).bids(everyone=True,
                                                                                          include_ended=True))
    with pytest.raises(RemoteFault) as unknown:
        client.bid(bid_id_for(HOST_ID, hold_id))
    assert unknown.value.code == "NotAuthorized"     # no such bid (refused alike: ids cannot be probed)


def late_in_an_interval(fraction: float = 0.85, interval_s: float = 1.0) -> None:
    now = time.time()
    time.sleep((fraction - (now % interval_s) / interval_s) % 1.0 * interval_s)


def test_a_hold_that_cannot_pay_one_interval_is_refused_late_in_an_interval_too(host, people):
    """market.py asks a new bid's hold for the rest of the interval in progress only; a whole interval is asked
    (else a bid placed late in an interval would be accepted and end at its close, having paid a moment)."""
    alice = auctioneer(host, people["alice"])
    hold_id = hold(host, people["alice"], "alice-acct", amount=2)
    late_in_an_interval()                       # the rest of this interval at 5 credits/s: under a credit
    fault = refused(lambda: alice.place_bid(hold_id, template="small", rate_ucps=5 * CREDIT, max_duration_s=60))
    assert fault.code == "InsufficientHold" and "one interval" in str(fault)
    bid = alice.place_bid(hold_id, template="small", rate_ucps=2 * CREDIT, max_duration_s=60)
    late_in_an_interval()
    fault = refused(lambda: alice.change_bid(bid.bid_id, rate_ucps=4 * CREDIT))
    assert fault.code == "InsufficientHold"
    assert alice.bid(bid.bid_id).rate_ucps == 2 * CREDIT
    alice.cancel_bid(bid.bid_id)


def test_a_hold_of_someone_else_cannot_bid(host, people):
    hold_id = hold(host, people["bob"], "bob-acct")
    fault = refused(lambda: auctioneer(host, people["alice"]).place_bid(hold_id, template="small", rate_ucps=CREDIT,
                                                                         max_duration_s=60))
    assert fault.code == "NotAuthorized" and "not yours" in str(fault)


def test_a_cancelled_bid_cannot_bid_again(host, people):
    alice = auctioneer(host, people["alice"])
    hold_id = hold(host, people["alice"], "alice-acct")
    bid = alice.place_bid(hold_id, template="small", rate_ucps=CREDIT, max_duration_s=60)
    ended = alice.cancel_bid(bid.bid_id)
    assert ended.state == "ended" and ended.end_reason == "cancelled"
    fault = refused(lambda: alice.place_bid(hold_id, template="small", rate_ucps=CREDIT, max_duration_s=60))
    assert fault.code == "BidEnded" and "cancelled" in str(fault)
    fault = refused(lambda: alice.change_bid(bid.bid_id, rate_ucps=2 * CREDIT))
    assert fault.code == "BidEnded"


def test_only_the_owner_changes_cancels_and_sees_a_bid(host, people):
    alice = auctioneer(host, people["alice"])
    bid = alice.place_bid(hold(host, people["alice"], "alice-acct"), template="small", rate_ucps=CREDIT,
                          max_duration_s=60)
    for who in ("bob", "stranger"):
        other = auctioneer(host, people[who])
        for call in (lambda: other.change_bid(bid.bid_id, rate_ucps=5 * CREDIT), lambda: other.cancel_bid(bid.bid_id),
                     lambda: other.bid(bid.bid_id), lambda: other.console_read(bid.bid_id),
                     lambda: other.console_write(bid.bid_id, b"x")):
            fault = refused(call)
            assert fault.code == "NotAuthorized" and "not yours" in str(fault), who
    assert alice.bid(bid.bid_id).rate_ucps == CREDIT and alice.bid(bid.bid_id).live
    # the host's owners see it (not its console)
    owner = auctioneer(host, people["owner"])
    assert owner.bid(bid.bid_id).bid_id == bid.bid_id
    assert refused(lambda: owner.console_read(bid.bid_id)).code == "NotAuthorized"
    changed = alice.change_bid(bid.bid_id, rate_ucps=3 * CREDIT)
    assert changed.rate_ucps == 3 * CREDIT and changed.live
    alice.cancel_bid(bid.bid_id)


def test_list_bids_is_ones_own_and_the_owners_see_everyone(host, people):
    alice_bid = auctioneer(host, people["alice"]).place_bid(hold(host, people["alice"], "alice-acct"), template="small",
                                                            rate_ucps=CREDIT, max_duration_s=60)
    bob_bid = auctioneer(host, people["bob"]).place_bid(hold(host, people["bob"], "bob-acct"), template="small",
                                                        rate_ucps=CREDIT, max_duration_s=60)
    mine = {bid.bid_id for bid in auctioneer(host, people["alice"]).bids()}
    assert alice_bid.bid_id in mine and bob_bid.bid_id not in mine
    assert auctioneer(host, people["stranger"]).bids() == []
    assert refused(lambda: auctioneer(host, people["alice"]).bids(everyone=True)).code == "NotAuthorized"
    everyone = {bid.bid_id for bid in auctioneer(host, people["owner"]).bids(everyone=True)}
    assert {alice_bid.bid_id, bob_bid.bid_id} <= everyone
    auctioneer(host, people["alice"]).cancel_bid(alice_bid.bid_id)
    auctioneer(host, people["bob"]).cancel_bid(bob_bid.bid_id)


def test_a_bid_says_what_is_not_enforced_while_it_pays(host, people):
    alice = auctioneer(host, people["alice"])
    bid = alice.place_bid(hold(host, people["alice"], "alice-acct"), template="small", rate_ucps=CREDIT,
                          max_duration_s=60)
    said = wait_for(lambda: (lambda view: view.enforced if "not made" in view.enforced.lower() else "")(
        alice.bid(bid.bid_id)))
    assert "pays" in said
    alice.cancel_bid(bid.bid_id)


# -- money ----------------------------------------------------------------------------------------


def test_the_owner_gains_exactly_what_the_holds_lose_each_interval_once(host, people):
    wait_for(lambda: not auctioneer(host, people["owner"]).bids(everyone=True))
    time.sleep(2.5)       # every earlier bid settled
    owner_before = bank(host, people["owner"]).get_balance(OWNER_ACCOUNT).total
    alice_before = bank(host, people["alice"]).get_balance("alice-acct").total
    bob_before = bank(host, people["bob"]).get_balance("bob-acct").total
    alice = auctioneer(host, people["alice"])
    bob = auctioneer(host, people["bob"])
    first = alice.place_bid(hold(host, people["alice"], "alice-acct", amount=1_000), template="small",
                            rate_ucps=7 * CREDIT, max_duration_s=600)
    second = bob.place_bid(hold(host, people["bob"], "bob-acct", amount=1_000), template="small",
                           rate_ucps=21 * CREDIT, max_duration_s=600)
    assert wait_for(lambda: bob.bid(second.bid_id).share_ppm) == 750_000
    time.sleep(3.2)
    alice.cancel_bid(first.bid_id)
    bob.cancel_bid(second.bid_id)
    ended = wait_for(lambda: (lambda a, b: (a, b) if a.charged and b.charged and not a.owed and not b.owed
                              and _settled(host, people, a, b) else None)(alice.bid(first.bid_id), bob.bid(second.bid_id)))
    alice_view, bob_view = ended
    # each paid floor(rate × its live time) — the core's cumulative rule — about 3.2 s of its rate
    for view, rate in ((alice_view, 7), (bob_view, 21)):
        live_us = view.ended_us - view.started_us
        assert view.charged == rate * CREDIT * live_us // 10**12
        assert abs(view.charged - rate * live_us / 1e6) <= 1
    owner_gain = bank(host, people["owner"]).get_balance(OWNER_ACCOUNT).total - owner_before
    alice_loss = alice_before - bank(host, people["alice"]).get_balance("alice-acct").total
    bob_loss = bob_before - bank(host, people["bob"]).get_balance("bob-acct").total
    assert alice_loss == alice_view.charged and bob_loss == bob_view.charged
    assert owner_gain == alice_loss + bob_loss
    # every item of every interval's batch applied once: request ids unique, each answered ok
    intervals, _ = market_records(host)
    request_ids = [item.request_id for record in intervals for item in record.items]
    assert len(request_ids) == len(set(request_ids))
    mine = [item for record in intervals for item in record.items if item.bid_id in (first.bid_id, second.bid_id)]
    assert all(item.outcome == "ok" for item in mine) and all(record.state == "answered" for record in intervals)
    assert sum(item.amount for item in mine) == alice_loss + bob_loss
    report = BankClient(host.url, credential=host.users.auditor.credential, trust_dir=host.pki.trust_dir).audit()
    assert report.clean, report.findings


def _settled(host, people, *views) -> bool:
    for view, who in zip(views, ("alice", "bob")):
        if bank(host, people[who]).get_hold(view.hold_id).state != "settled":
            return False
    return True


# -- the directory --------------------------------------------------------------------------------


def test_the_loop_registers_the_host_with_the_directory_each_interval(pki, people, tmp_path):
    """[auctioneer] directory_url: the loop's heartbeat (signed by the host certificate) lists the host, its
    exact Σ of live rates and live bids; here the directory is this host's own."""
    from gridcredit.services.directory.client import DirectoryClient

    from bank_fixtures import BankHost
    from security_fixtures import free_port

    port = free_port()
    url = f"https://localhost:{port}"
    users = BankUsers(people["admin"], pki.user("Market Admin Two"), pki.user("Market Auditor"), (), (), (), (),
                      pki.user("Market Service"), people["stranger"])
    env = auctioneer_env(people, extra={"GRIDCREDIT_AUCTIONEER_DIRECTORY_URL": url,
                                        "GRIDCREDIT_AUCTIONEER_PUBLIC_URL": url,
                                        "GRIDCREDIT_AUCTIONEER_RESERVE_UCPS": str(CREDIT // 2)})
    running = BankHost(tmp_path / "state", "embedded", users, pki, port=port, extra_env=env).start()
    try:
        open_accounts(running, people)
        directory = DirectoryClient(url, credential=people["stranger"].credential, trust_dir=pki.trust_dir)
        entry = wait_for(lambda: next((e for e in directory.hosts() if e.host_id == HOST_ID), None))
        assert entry.auctioneer_url == url and entry.capacity_cpus == 1 and entry.live_bids == 0
        assert entry.reserve_price_ucps == CREDIT // 2       # best-response never recommends less there
        bid = auctioneer(running, people["alice"]).place_bid(hold(running, people["alice"], "alice-acct"),
                                                            template="small", rate_ucps=3 * CREDIT, max_duration_s=60)
        entry = wait_for(lambda: (lambda e: e if e.live_bids == 1 else None)(directory.host(HOST_ID)))
        assert entry.total_rate_ucps == 3 * CREDIT and entry.price_ucps == 3 * CREDIT
        assert entry.registrant_dn == host_dn(running)
        auctioneer(running, people["alice"]).cancel_bid(bid.bid_id)
    finally:
        running.stop()
