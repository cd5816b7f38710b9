"""The Auctioneer's market core (services/auctioneer/market.py, issue 14.2): rates and budgets read
exactly, the proportional allocation, the charging rule — hand-worked cases, and a model test.

The model test (:class:`MarketMachine`) runs random bids, changes, cancels, holds released by their
payers and waits over many intervals, with a fake clock, against the market core and the Bank's real
ledger core (``ledger.MemoryLedger``, which applies every batch item as the Auctioneer). After EVERY
interval it checks: the shares of the live bids sum to 1 exactly; each bid has paid exactly
floor(Σ rate × live time / 10^12) credits (its own record of live time: the model's), never more than its
hold nor its budget; what the host owner's account gained is Σ of the charges; a bid that ended is
never charged again; a refusal is the one the model expects (reserve price, hold too short or too small).
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gridcredit.errors import ConfigError, DomainError
from gridcredit.services.auctioneer import market as core
from gridcredit.services.auctioneer.market import (BidState, EndReason, MarketConfig, Mode, allocate, batch_applied,
                                                   cancel_bid, change_bid, close_interval, open_market, parse_rate,
                                                   place_bid)
from gridcredit.services.bank import ledger
from gridcredit.services.bank.ledger import Principal

SECOND_US = 1_000_000
CREDIT_UCPS = 1_000_000
START_US = 1_790_000_000 * SECOND_US
ADMIN = Principal("/O=Grid/CN=Admin", is_administrator=True)
AUCTIONEER = Principal("/O=Grid/CN=host/auctioneer.example.org", is_service=True)
ALICE = Principal("/O=Grid/CN=Alice")
BOB = Principal("/O=Grid/CN=Bob")
HOST_OWNER = Principal("/O=Grid/CN=Olga Owner")
PAYERS = {ALICE.dn: (ALICE, "alice"), BOB.dn: (BOB, "bob")}
PAYEE = "host-owner"


def sign(message: bytes) -> bytes:
    return hmac.new(b"market-test", message, hashlib.sha256).digest()


def new_bank() -> ledger.MemoryLedger:
    bank = ledger.MemoryLedger(sign=sign)
    for account_id, owner in (("alice", ALICE), ("bob", BOB), (PAYEE, HOST_OWNER)):
        bank.run(ledger.CreateAccount(f"create-{account_id}", account_id, "market", owner.dn), principal=ADMIN,
                 now_us=START_US)
    for account_id in ("alice", "bob"):
        bank.run(ledger.Mint(f"mint-{account_id}", account_id, 10**9), principal=ADMIN, now_us=START_US)
    return bank


def make_hold(bank: ledger.MemoryLedger, payer: Principal, amount: int, expires_us: int, now_us: int) -> str:
    account_id = PAYERS[payer.dn][1]
    outcome = bank.run(ledger.CreateHold(f"hold-req-{len(bank.transactions)}", account_id, amount, expires_us,
                                         collector_dn=AUCTIONEER.dn, payee_account_id=PAYEE),
                       principal=payer, now_us=now_us)
    return outcome.transaction.hold_id


def send(bank: ledger.MemoryLedger, charges, now_us: int) -> dict[str, str | None]:
    """The batch item by item through the real ledger core, as the Auctioneer: request id → None or code."""
    outcomes = {}
    for charge in charges:
        try:
            bank.run(charge.bank_request(PAYEE), principal=AUCTIONEER, now_us=now_us)
            outcomes[charge.request_id] = None
        except DomainError as error:
            outcomes[charge.request_id] = error.code
    return outcomes


def refused(call, code: str, fragment: str = ""):
    with pytest.raises(DomainError) as caught:
        call()
    assert caught.value.code == code, caught.value
    assert fragment in str(caught.value)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Rates, budgets, durations


@pytest.mark.parametrize("text, rate_ucps", [
    ("1", 1_000_000), ("0.25", 250_000), ("0.000001", 1), ("007.5", 7_500_000), ("3.100000", 3_100_000),
    ("1000000000", 10**15), ("123456.654321", 123_456_654_321),
])
def test_a_rate_is_read_exactly(text, rate_ucps):
    assert parse_rate(text) == rate_ucps


@pytest.mark.parametrize("text, fragment", [
    ("0", "positive"), ("0.000000", "positive"), ("-1", "no sign"), ("+1", "no sign"), ("1e3", "exponent"),
    ("NaN", "decimal number"), ("Infinity", "decimal number"), (" 1", "spaces"), ("1 ", "spaces"),
    ("1,5", "decimal number"), ("", "decimal number"), ("\u0661", "decimal number"), ("1.", "decimal number"),
    (".5", "decimal number"), ("0.0000001", "at most 6 fractional digits"), ("1000000000.000001", "absurd"),
    ("1000000000000", "absurd"), ("99999999999999999", "decimal number"), (1.5, "decimal number"),
    (None, "decimal number"), (b"1", "decimal number"),
])
def test_a_bad_rate_is_refused_with_a_hint(text, fragment):
    refused(lambda: parse_rate(text), "InvalidArgument", fragment)


@pytest.mark.parametrize("rate", [0, -1, -10**6, 10**15 + 1, 10**18, True, 1.0, "1"])
def test_check_rate_refuses_zero_negative_absurd_and_non_integers(rate):
    refused(lambda: core.check_rate(rate), "InvalidArgument")


@given(st.integers(1, core.RATE_MAX_UCPS))
def test_format_rate_reads_back_exactly(rate_ucps):
    assert parse_rate(core.format_rate(rate_ucps)) == rate_ucps


def test_a_budget_over_a_duration_is_a_rate_rounded_down():
    assert core.rate_from_budget(900, 3600) == 250_000
    assert core.rate_from_budget(1, 3) == 333_333            # 1/3 credit/s, rounded down
    assert core.rate_from_budget(10**9, 1) == core.RATE_MAX_UCPS
    refused(lambda: core.rate_from_budget(10**9 + 1, 1), "InvalidArgument", "absurd")
    refused(lambda: core.rate_from_budget(1, 2_000_000), "InvalidArgument", "less than 0.000001")
    for budget, duration in [(0, 10), (-5, 10), (10, 0), (10, -5), (10, 1.5), (True, 10), (10, core.DURATION_MAX_S + 1)]:
        refused(lambda: core.rate_from_budget(budget, duration), "InvalidArgument")


@given(st.integers(1, 10**12), st.integers(1, core.DURATION_MAX_S))
def test_a_budget_rate_never_spends_more_than_the_budget(budget, duration_s):
    try:
        rate = core.rate_from_budget(budget, duration_s)
    except DomainError:
        assert budget * CREDIT_UCPS < duration_s or budget * CREDIT_UCPS // duration_s > core.RATE_MAX_UCPS
        return
    assert rate * duration_s <= budget * CREDIT_UCPS < (rate + 1) * duration_s


@pytest.mark.parametrize("duration", [0, -1, True, 1.5, "60", core.DURATION_MAX_S + 1])
def test_a_bad_duration_is_refused(duration):
    refused(lambda: core.check_duration_s(duration), "InvalidArgument")


# ---------------------------------------------------------------------------------------------
# Allocation and prices


def live_bid(bid_id: str, rate_ucps: int) -> core.Bid:
    return core.Bid(bid_id, ALICE.dn, f"hold-{bid_id}", rate_ucps, Mode.CAPPED, START_US, START_US + 10**9,
                    START_US + 10**9, 100)


def test_shares_are_exact_fractions_of_the_rates():
    bids = [live_bid("a", 1 * CREDIT_UCPS), live_bid("b", 2 * CREDIT_UCPS), live_bid("c", 5 * CREDIT_UCPS)]
    allocation = allocate(bids, capacity_cpus=1, reserve_ucps=0)
    assert [allocation.share(bid_id) for bid_id in "abc"] == [Fraction(1, 8), Fraction(2, 8), Fraction(5, 8)]
    assert [allocation.shares[bid_id].quota_us for bid_id in "abc"] == [12_500, 25_000, 62_500]
    assert [allocation.shares[bid_id].ppm for bid_id in "abc"] == [125_000, 250_000, 625_000]
    assert [allocation.shares[bid_id].weight for bid_id in "abc"] == [32_768, 65_536, 163_840]
    assert core.price(allocation) == 8 * CREDIT_UCPS and core.format_rate(core.price(allocation)) == "8"
    two = allocate(bids, capacity_cpus=2, reserve_ucps=0, period_us=50_000)
    assert [two.shares[bid_id].quota_us for bid_id in "abc"] == [12_500, 25_000, 62_500]
    assert core.price(two) == 4 * CREDIT_UCPS
    assert allocation.share("nobody") == 0


def test_the_reserve_price_excludes_low_bids_and_their_share_goes_to_the_others():
    bids = [live_bid("a", 1 * CREDIT_UCPS), live_bid("b", 2 * CREDIT_UCPS), live_bid("c", 5 * CREDIT_UCPS)]
    allocation = allocate(bids, capacity_cpus=1, reserve_ucps=2 * CREDIT_UCPS)
    assert allocation.below_reserve == ("a",) and set(allocation.shares) == {"b", "c"}
    assert (allocation.share("a"), allocation.share("b"), allocation.share("c")) == (0, Fraction(2, 7), Fraction(5, 7))
    assert core.price(allocation) == 7 * CREDIT_UCPS


def test_a_tiny_share_is_clamped_to_libvirts_minimum_quota_and_says_so():
    allocation = allocate([live_bid("tiny", 1), live_bid("huge", core.RATE_MAX_UCPS)], capacity_cpus=1,
                          reserve_ucps=0)
    assert allocation.shares["tiny"].quota_us == core.QUOTA_MIN_US and allocation.shares["tiny"].quota_clamped
    assert allocation.shares["tiny"].weight == core.CPU_SHARES_MIN
    assert not allocation.shares["huge"].quota_clamped


def test_ended_bids_have_no_share_and_no_bids_no_price():
    ended = dataclasses.replace(live_bid("a", CREDIT_UCPS), state=BidState.ENDED, end_reason=EndReason.CANCELLED)
    allocation = allocate([ended], capacity_cpus=4, reserve_ucps=0)
    assert allocation.shares == {} and allocation.total_ucps == 0 and core.price(allocation) == 0


@settings(max_examples=200, deadline=None)
@given(rates=st.lists(st.integers(1, core.RATE_MAX_UCPS), min_size=1, max_size=50), capacity=st.integers(1, 64),
       reserve=st.integers(0, 10**7))
def test_shares_of_the_bids_at_or_above_the_reserve_sum_to_one(rates, capacity, reserve):
    bids = [live_bid(f"b{index}", rate) for index, rate in enumerate(rates)]
    allocation = allocate(bids, capacity_cpus=capacity, reserve_ucps=reserve)
    selling = [bid for bid in bids if bid.rate_ucps >= reserve]
    assert set(allocation.shares) == {bid.bid_id for bid in selling}
    assert set(allocation.below_reserve) == {bid.bid_id for bid in bids if bid.rate_ucps < reserve}
    if selling:
        assert sum(allocation.share(bid.bid_id) for bid in selling) == 1
    total = sum(bid.rate_ucps for bid in selling)
    for bid in selling:
        share = allocation.shares[bid.bid_id]
        exact = capacity * core.PERIOD_DEFAULT_US * bid.rate_ucps // total
        assert share.quota_us == max(exact, core.QUOTA_MIN_US) and share.quota_clamped == (exact < core.QUOTA_MIN_US)
        assert core.CPU_SHARES_MIN <= share.weight <= core.CPU_SHARES_MAX
    assert 10**6 - len(selling) < sum(share.ppm for share in allocation.shares.values()) <= 10**6 or not selling


def test_hour_average_price_is_the_mean_of_the_intervals_in_the_last_hour():
    interval_us = 10 * SECOND_US
    now_us = 1000 * interval_us + 3 * SECOND_US              # in interval 1000; 999 is the last ended one
    samples = [(999, Fraction(4)), (998, 2), (640, 100), (639, 10**9), (1000, 10**9)]
    assert core.hour_average_price(samples, now_us=now_us, interval_us=interval_us) == Fraction(106, 3)
    assert core.hour_average_price([(500, 7)], now_us=now_us, interval_us=interval_us) is None
    assert core.hour_average_price([], now_us=now_us, interval_us=interval_us) is None


def test_request_ids_and_bank_requests_of_a_batch():
    assert core.request_id("node-1.example.org", "b-17", 179_000_000) == "auction:node-1.example.org:b-17:179000000"
    charge = core.Charge("b-17", "hold-4", 12, "auction:h:b-17:5", False, 5)
    assert charge.bank_request("owner") == ledger.ChargeHold("auction:h:b-17:5", "hold-4", "owner", 12)
    settle = dataclasses.replace(charge, ends_bid=True, amount=0)
    assert settle.bank_request("owner") == ledger.SettleHold("auction:h:b-17:5", "hold-4", "owner", 0)
    longest = core.request_id("h" * 40, "b" * 40, 2**62 // core.INTERVAL_MIN_US)
    ledger.check_identifier(longest, "request id")      # the Bank takes the longest one


# ---------------------------------------------------------------------------------------------
# Hand-worked charging


INTERVAL_US = 10 * SECOND_US
K0 = START_US // INTERVAL_US + 1                     # an interval starting after START_US
T0 = K0 * INTERVAL_US


def new_market(**config) -> core.Market:
    return open_market(MarketConfig(**{"host_id": "node-1", "capacity_cpus": 1, "interval_us": INTERVAL_US,
                                       **config}), now_us=T0)


def place(market, bid_id="b1", *, rate="1", duration_s=3600, hold=1000, expires_us=T0 + 10**10, now_us=T0,
          mode=Mode.CAPPED, hold_id=None, owner=ALICE):
    return place_bid(market, bid_id=bid_id, owner_dn=owner.dn, hold_id=hold_id or f"hold-{bid_id}",
                     rate_ucps=parse_rate(rate), max_duration_s=duration_s, mode=mode, hold_remaining=hold,
                     hold_expires_us=expires_us, now_us=now_us)


def close(market, *, used=None, refusals=None):
    """Close the open interval; every item applied unless ``refusals`` (bid id → code) says otherwise."""
    closing = close_interval(market, interval=market.interval, used_cpu_us=used)
    items = [(charge.bid_id, charge.amount, "settle" if charge.ends_bid else "charge") for charge in closing.charges]
    if not closing.charges:
        return closing.market, items
    outcomes = {charge.request_id: (refusals or {}).get(charge.bid_id) for charge in closing.charges}
    return batch_applied(closing.market, interval=closing.interval, outcomes=outcomes,
                         now_us=closing.market.through_us + SECOND_US), items


def test_three_bids_pay_their_rates_each_interval():
    market = new_market()
    for bid_id, rate in (("a", "1"), ("b", "2"), ("c", "5")):
        market = place(market, bid_id, rate=rate)
    market, items = close(market)
    assert items == [("a", 10, "charge"), ("b", 20, "charge"), ("c", 50, "charge")]
    assert market.interval == K0 + 1 and market.pending_interval is None


def test_a_bid_ends_at_its_maximum_duration_inside_an_interval_and_pays_until_then():
    market = place(new_market(), rate="1", duration_s=12, now_us=T0 + 3 * SECOND_US)
    market, items = close(market)
    assert items == [("b1", 7, "charge")]
    market, items = close(market)
    assert items == [("b1", 5, "settle")]
    bid = market.bid("b1")
    assert (bid.state, bid.end_reason, bid.ended_us, bid.charged_credits) == (
        BidState.ENDED, EndReason.MAX_DURATION, T0 + 15 * SECOND_US, 12)
    market, items = close(market)
    assert items == []                                 # never charged again


def test_a_bid_whose_hold_cannot_pay_the_next_interval_ends_and_settles_what_it_owes():
    market = place(new_market(), rate="1", hold=25)
    market, items = close(market)
    assert items == [("b1", 10, "charge")]             # 15 left: pays the next 10
    market, items = close(market)
    assert items == [("b1", 10, "settle")]             # 5 left < 10: ends at the end of this interval
    bid = market.bid("b1")
    assert (bid.end_reason, bid.ended_us, bid.charged_credits, bid.hold_remaining) == (
        EndReason.HOLD_EXHAUSTED, T0 + 2 * INTERVAL_US, 20, 5)
    assert market.allocation.shares == {}


def test_a_bid_whose_hold_expires_too_soon_ends_while_its_batch_can_still_be_paid():
    refused(lambda: place(new_market(), expires_us=T0 + 2 * INTERVAL_US - 1), "HoldExpiresTooSoon")
    market = place(new_market(), rate="1", expires_us=T0 + 3 * INTERVAL_US - 1)
    market, items = close(market)
    assert items == [("b1", 10, "settle")]             # the batch for the next interval would come too late
    assert market.bid("b1").end_reason is EndReason.HOLD_EXPIRING
    market = place(new_market(), rate="1", expires_us=T0 + 3 * INTERVAL_US)
    market, items = close(market)
    assert items == [("b1", 10, "charge")] and market.bid("b1").live


def test_a_cancelled_bid_pays_until_the_cancel_and_cannot_bid_again():
    market = place(new_market(), rate="2")
    market = cancel_bid(market, "b1", now_us=T0 + 4 * SECOND_US)
    assert market.allocation.shares == {}
    refused(lambda: cancel_bid(market, "b1", now_us=T0 + 5 * SECOND_US), "BidEnded", "cancelled")
    refused(lambda: change_bid(market, "b1", rate_ucps=10**6, now_us=T0 + 5 * SECOND_US), "BidEnded")
    refused(lambda: place(market, "b2", hold_id="hold-b1", now_us=T0 + 5 * SECOND_US), "HoldAlreadyBid",
            "a cancelled bid cannot bid again")
    refused(lambda: place(market, "b1", hold_id="hold-new", now_us=T0 + 5 * SECOND_US), "BidExists")
    market, items = close(market)
    assert items == [("b1", 8, "settle")]
    market = core.forget_settled(market)
    assert "b1" not in market.bids
    refused(lambda: place(market, "b2", hold_id="hold-b1", now_us=market.through_us + 1), "HoldAlreadyBid")


def test_a_change_counts_from_its_instant():
    market = place(new_market(), rate="1")
    market = change_bid(market, "b1", rate_ucps=parse_rate("3"), now_us=T0 + 4 * SECOND_US)
    market, items = close(market)
    assert items == [("b1", 4 + 18, "charge")]
    refused(lambda: change_bid(market, "b1", rate_ucps=parse_rate("1000"), now_us=market.through_us + 1),
            "InsufficientHold")
    refused(lambda: change_bid(market, "nope", rate_ucps=10**6, now_us=market.through_us + 1), "UnknownBid")


def test_a_bid_stored_before_it_kept_when_it_was_accrued_counts_from_the_markets_last_event():
    market = place(new_market(), rate="1")
    market = core.advance(place(market, "b2", rate="1", now_us=T0 + 5 * SECOND_US), now_us=T0 + 5 * SECOND_US)
    # b1 is capped, so accrued lazily: still at its start. A bid read from a document written before
    # accrued_until_us existed (0) counts from the market's last event, where the eager accrual left it
    assert market.bid("b1").accrued_until_us == T0 and market.bid("b1").open_full_pico == 0
    old = dataclasses.replace(market.bid("b2"), accrued_until_us=0)
    market = dataclasses.replace(market, bids={**market.bids, "b2": old})
    market, items = close(market)
    assert items == [("b1", 10, "charge"), ("b2", 5, "charge")]


def test_a_new_reserve_price_applies_from_its_instant_and_excluded_bids_pay_nothing_meanwhile():
    market = place(place(new_market(), "low", rate="1"), "high", rate="3")
    raised = MarketConfig(host_id="node-1", capacity_cpus=1, interval_us=INTERVAL_US, reserve_ucps=parse_rate("2"))
    market = core.reconfigure(market, raised, now_us=T0 + 4 * SECOND_US)
    assert market.allocation.below_reserve == ("low",) and market.allocation.share("high") == 1
    assert market.bid("low").live
    market, items = close(market)
    assert items == [("high", 30, "charge"), ("low", 4, "charge")]      # low: its 4 s before the change only
    market = core.reconfigure(market, dataclasses.replace(raised, reserve_ucps=0), now_us=market.through_us)
    assert market.allocation.share("low") == Fraction(1, 4)
    for config in (dataclasses.replace(raised, host_id="node-2"), dataclasses.replace(raised, interval_us=SECOND_US)):
        with pytest.raises(ConfigError):
            core.reconfigure(market, config, now_us=market.through_us)


def test_sub_credit_amounts_never_drift_and_the_last_fraction_is_forgiven():
    market = place(new_market(interval_us=SECOND_US), rate="0.3", duration_s=10)
    paid = []
    for _ in range(11):
        market, items = close(market)
        paid.append(sum(amount for _, amount, _ in items))
    assert paid == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]   # floor(0.3·t) at every second: 0.9 → 0, 1.2 → 1, …
    bid = market.bid("b1")
    assert bid.charged_credits == 3 and bid.accrued_pico == 3 * 10**12 and bid.settled_interval is not None
    market = place(new_market(interval_us=SECOND_US), rate="0.35", duration_s=10)
    for _ in range(11):
        market, items = close(market)
    bid = market.bid("b1")
    assert bid.charged_credits == 3 and bid.accrued_pico == 3_500_000_000_000 and bid.forgone_credits == 0


def test_pay_for_use_pays_the_used_fraction_of_its_allotment_cumulatively():
    market = place(new_market(), rate="1", mode=Mode.PAY_FOR_USE)
    market = place(market, "b2", rate="3")
    assert market.allocation.share("b1") == Fraction(1, 4)
    refused(lambda: close_interval(market, interval=market.interval), "UsageMissing", "b1")
    market, items = close(market, used={"b1": 1_250_000})          # half of its 2.5 s allotted
    assert items == [("b1", 5, "charge"), ("b2", 30, "charge")]
    market, items = close(market, used={"b1": 10**9})              # more than allotted counts as allotted
    assert items == [("b1", 10, "charge"), ("b2", 30, "charge")]
    market, items = close(market, used={"b1": 416_666})            # 0.1666664 of it: 1.666664 credits → 1
    market, items = close(market, used={"b1": 416_667})            # … + 1.666668 → 3.333332 accrued → 3 in all
    assert market.bid("b1").charged_credits == 5 + 10 + 3


def test_events_wait_for_the_interval_to_be_closed_and_each_interval_closes_once():
    market = place(new_market(), rate="1")
    end = market.interval_end_us
    refused(lambda: cancel_bid(market, "b1", now_us=end), "IntervalNotClosed")
    refused(lambda: place(market, "b2", now_us=end + 5), "IntervalNotClosed")
    refused(lambda: close_interval(market, interval=market.interval + 1), "WrongInterval")
    closing = close_interval(market, interval=market.interval)
    refused(lambda: close_interval(closing.market, interval=K0), "WrongInterval", "send the kept batch again")
    refused(lambda: close_interval(closing.market, interval=K0 + 1), "BatchUnanswered")
    assert closing.market.pending_charges == closing.charges and closing.market.pending_interval == K0
    refused(lambda: batch_applied(closing.market, interval=K0, outcomes={}, now_us=end + 1), "InvalidArgument", "lack")
    refused(lambda: batch_applied(closing.market, interval=K0 + 1, outcomes={}, now_us=end + 1), "WrongInterval")


def test_a_cancel_while_the_bank_is_awaited_is_kept_and_takes_effect_at_its_instant():
    """The open interval ended and cannot be closed (the previous batch awaits the Bank): a cancel is kept, not
    refused (the service answered MarketBusy); enforcement leaves the bid out at once; once the Bank answered,
    closing the interval opens the one the cancel fell in and applies it at its instant: the bid pays until then."""
    market = place(place(new_market(), "b1", rate="2"), "b2", rate="1", owner=BOB)
    closing = close_interval(market, interval=K0)               # K0's batch: the Bank does not answer
    waiting = closing.market
    at = T0 + 2 * INTERVAL_US + 3 * SECOND_US                   # in K0 + 2, while K0 + 1 cannot be closed
    refused(lambda: close_interval(waiting, interval=K0 + 1), "BatchUnanswered")
    kept = cancel_bid(waiting, "b1", now_us=at)
    assert kept.cancels_due == (("b1", at),) and kept.bid("b1").live
    assert cancel_bid(kept, "b1", now_us=at + 5) == kept        # cancelled already
    refused(lambda: cancel_bid(kept, "nope", now_us=at), "UnknownBid")
    bids, allocation = core.in_force(kept)
    assert [bid.bid_id for bid in bids] == ["b2"] and allocation.share("b2") == 1
    market = batch_applied(kept, interval=K0, outcomes={charge.request_id: None for charge in closing.charges},
                           now_us=at + SECOND_US)
    market, items = close(market)              # K0 + 1 closed: K0 + 2 opens, the cancel applied at its instant
    assert items == [("b1", 20, "charge"), ("b2", 10, "charge")] and market.cancels_due == ()
    bid = market.bid("b1")
    assert (bid.state, bid.end_reason, bid.ended_us) == (BidState.ENDED, EndReason.CANCELLED, at)
    market, items = close(market)
    assert items == [("b1", 6, "settle"), ("b2", 10, "charge")]        # 3 s at 2 credits/s


def test_answers_that_come_after_the_next_interval_ended_are_recorded_at_its_end():
    market = place(new_market(), rate="1")
    closing = close_interval(market, interval=K0)
    late = closing.market.interval_end_us + 3 * INTERVAL_US        # the Bank answered two intervals late
    request = closing.charges[0].request_id
    market = batch_applied(closing.market, interval=K0, outcomes={request: "HoldExpired"}, now_us=late)
    bid = market.bid("b1")
    assert (bid.end_reason, bid.ended_us) == (EndReason.HOLD_REFUSED, T0 + 2 * INTERVAL_US)
    market, items = close(market)
    assert items == [] and market.interval == K0 + 2


def test_a_refused_charge_ends_the_bid_and_releases_its_hold_in_the_next_batch():
    market = place(new_market(), rate="1")
    market = place(market, "b2", rate="1")
    market, items = close(market, refusals={"b1": "ExceedsHold", "b2": "HoldEnded"})
    for bid_id in ("b1", "b2"):
        bid = market.bid(bid_id)
        assert (bid.state, bid.end_reason, bid.charged_credits) == (BidState.ENDED, EndReason.HOLD_REFUSED, 0)
    assert market.bid("b2").settled_interval == K0 and market.bid("b2").forgone_credits == 10
    market, items = close(market)
    assert items == [("b1", 0, "settle")]                          # released; nothing for the hold that is gone
    assert market.bid("b1").forgone_credits == 11                  # 10 + the second it ran until the answer


def test_a_crash_after_sending_a_batch_resends_it_and_the_bank_charges_once():
    bank = new_bank()
    now = T0
    hold = make_hold(bank, ALICE, 100, T0 + 600 * SECOND_US, now)
    market = place(new_market(), rate="1.5", hold=100, hold_id=hold)
    closing = close_interval(market, interval=market.interval)
    first = send(bank, closing.charges, closing.market.through_us + 1)
    # the process is killed here: what was stored is closing.market, with its batch
    stored = closing.market
    assert stored.pending_interval == K0
    again = send(bank, stored.pending_charges, stored.through_us + 2)
    assert first == again == {"auction:node-1:b1:" + str(K0): None}
    market = batch_applied(stored, interval=K0, outcomes=again, now_us=stored.through_us + 2)
    assert bank.accounts[PAYEE].balance == 15 == market.bid("b1").charged_credits
    assert bank.holds[hold].charged == 15


def test_bad_bids_are_refused_and_change_nothing():
    market = new_market(reserve_ucps=parse_rate("0.5"))
    for arguments, code in [
        (dict(rate="0.4"), "BelowReserve"), (dict(hold=5, rate="1"), "InsufficientHold"),
        (dict(bid_id="b_1"), "InvalidArgument"), (dict(bid_id=""), "InvalidArgument"),
        (dict(duration_s=0), "InvalidArgument"), (dict(duration_s=-60), "InvalidArgument"),
        (dict(hold=0), "InvalidArgument"), (dict(mode="capped"), "InvalidArgument"),
        (dict(hold_id="bad id"), "InvalidArgument"), (dict(owner=Principal("/CN=A\u202eB")), "InvalidArgument"),
        (dict(now_us=T0 - 1, expires_us=T0 + 10**10), None),
    ]:
        if code is None:
            continue
        refused(lambda: place(market, **arguments), code)
    for rate in (0, -1, 10**15 + 1, True):
        refused(lambda: place_bid(market, bid_id="b1", owner_dn=ALICE.dn, hold_id="h", rate_ucps=rate,
                                  max_duration_s=60, mode=Mode.CAPPED, hold_remaining=10, hold_expires_us=T0 + 10**10,
                                  now_us=T0), "InvalidArgument")
    assert market.bids == {} and market.allocation.total_ucps == 0


def test_a_bad_market_configuration_is_a_config_error():
    for config in [dict(host_id="h_1"), dict(capacity_cpus=0), dict(reserve_ucps=-1), dict(interval_us=999_999),
                   dict(interval_us=core.INTERVAL_MAX_US + 1), dict(period_us=999)]:
        with pytest.raises(ConfigError):
            MarketConfig(**{"host_id": "h", "capacity_cpus": 1, **config})


def test_too_many_live_bids_are_refused(monkeypatch):
    monkeypatch.setattr(core, "LIVE_BIDS_MAX", 3)
    market = new_market()
    for index in range(3):
        market = place(market, f"b{index}")
    refused(lambda: place(market, "b3"), "TooManyBids")


# ---------------------------------------------------------------------------------------------
# The model test


@dataclasses.dataclass
class ModelBid:
    bid_id: str
    hold_id: str
    payer: Principal
    mode: Mode
    started_us: int
    max_end_us: int
    hold_amount: int
    hold_expires_us: int
    budget: int | None
    segments: list[tuple[int, int]]                 # (from µs, rate)
    end_us: int | None = None                       # cancelled or ended by the core before its max end
    settled: bool = False
    tampered: bool = False
    applied: int = 0                                # credits the Bank applied to its hold

    def end(self) -> int:
        return min(self.max_end_us, self.end_us if self.end_us is not None else self.max_end_us)

    def owed_pico(self, until_us: int) -> int:
        """Σ rate × live µs up to ``until_us``: the model's own record of live time."""
        stop = min(until_us, self.end())
        total = 0
        for index, (start, rate) in enumerate(self.segments):
            segment_end = min(stop, self.segments[index + 1][0] if index + 1 < len(self.segments) else stop)
            if segment_end > start:
                total += rate * (segment_end - start)
        return total


RATES = st.one_of(st.sampled_from([1, 7, 999_999, 10**6, 2_500_000, 10**7]), st.integers(1, 3 * 10**7))


class MarketMachine(RuleBasedStateMachine):
    @initialize(interval_s=st.sampled_from([1, 2, 10]), capacity=st.integers(1, 4),
                reserve=st.sampled_from([0, 1, 300_000]), offset_us=st.integers(0, 9_999_999),
                send_delay_permille=st.integers(0, 999), seed=st.integers(0, 2**32))
    def start(self, interval_s, capacity, reserve, offset_us, send_delay_permille, seed):
        self.config = MarketConfig(host_id="node-1.example.org", capacity_cpus=capacity, reserve_ucps=reserve,
                                   interval_us=interval_s * SECOND_US)
        self.send_delay_us = self.config.interval_us * send_delay_permille // 1000
        self.now = START_US + offset_us
        self.market = open_market(self.config, now_us=self.now)
        self.bank = new_bank()
        self.model: dict[str, ModelBid] = {}
        self.random = random.Random(seed)
        self.counter = 0
        self.intervals_closed = 0

    # -- time ------------------------------------------------------------------------------------

    def wait(self, delta_us: int) -> None:
        target = self.now + delta_us
        while target >= self.market.interval_end_us:
            self.close()
        self.now = max(self.now, target)

    def close(self) -> None:
        market, k = self.market, self.market.interval
        end_us = market.interval_end_us
        used = {}
        for bid in market.bids.values():
            if bid.mode is Mode.PAY_FOR_USE and bid.settled_interval is None:
                used[bid.bid_id] = self.random.choice([0, 10**12, self.random.randint(0, 40 * SECOND_US)])
        closing = close_interval(market, interval=k, used_cpu_us=used)
        assert closing.interval == k and closing.market.pending_charges == closing.charges
        send_us = end_us + self.send_delay_us
        outcomes = send(self.bank, closing.charges, send_us)
        if self.random.random() < 0.2:               # killed after sending: the kept batch is sent again
            balance = self.bank.accounts[PAYEE].balance
            assert send(self.bank, closing.market.pending_charges, send_us) == outcomes
            assert self.bank.accounts[PAYEE].balance == balance
        self.market = (batch_applied(closing.market, interval=k, outcomes=outcomes, now_us=send_us)
                       if closing.charges else closing.market)
        self.now = send_us
        self.intervals_closed += 1
        self.check_interval(k, end_us, closing, outcomes)

    def check_interval(self, k: int, end_us: int, closing: core.Closing, outcomes) -> None:
        seen = set()
        for charge in closing.charges:
            model = self.model[charge.bid_id]
            assert charge.bid_id not in seen and not model.settled, "an ended bid is never charged again"
            seen.add(charge.bid_id)
            assert charge.request_id == f"auction:{self.config.host_id}:{charge.bid_id}:{k}"
            assert charge.hold_id == model.hold_id and charge.amount >= 0 and (charge.ends_bid or charge.amount > 0)
            code = outcomes[charge.request_id]
            assert code is None or model.tampered, f"the Bank refused {charge} ({code}) of an untouched hold"
            if code is not None and not charge.ends_bid:
                event(f"charge refused: {code}")
            if code is None:
                model.applied += charge.amount
            if charge.ends_bid:
                model.settled = True
                event(f"settled: {closing.market.bids[charge.bid_id].end_reason.value}, "
                      f"{'refused' if code else 'applied'}")
        for bid in closing.market.bids.values():
            model = self.model[bid.bid_id]
            if bid.state is BidState.ENDED and model.end_us is None and bid.ended_us < model.max_end_us:
                assert bid.end_reason in (EndReason.HOLD_EXHAUSTED, EndReason.HOLD_EXPIRING), bid
                assert bid.ended_us == end_us
                model.end_us = end_us
                hold = self.bank.holds[model.hold_id]
                if bid.end_reason is EndReason.HOLD_EXPIRING:
                    assert model.hold_expires_us < end_us + 2 * self.config.interval_us
                elif not model.tampered and bid.mode is Mode.CAPPED:
                    next_end = min(end_us + self.config.interval_us, model.max_end_us)
                    rate = model.segments[-1][1]
                    next_cost = (model.owed_pico(end_us) + rate * (next_end - end_us)) // core.PICO_PER_CREDIT \
                        - model.applied
                    assert hold.remaining == 0 or next_cost > hold.remaining, "ended while its hold could pay"
            elif bid.state is BidState.ENDED and model.end_us is None and bid.end_reason is EndReason.HOLD_REFUSED:
                assert model.tampered
                model.end_us = bid.ended_us
        for bid in self.market.bids.values():               # after the answers
            model = self.model[bid.bid_id]
            if bid.end_reason is EndReason.HOLD_REFUSED and model.end_us is None:
                assert model.tampered
                model.end_us = bid.ended_us
            if bid.live:
                hold = self.bank.holds[model.hold_id]
                assert model.tampered or (hold.state is ledger.HoldState.ACTIVE and hold.remaining >= 1
                                          and hold.expires_at_us >= end_us + 2 * self.config.interval_us)
        self.check_money(end_us)

    def check_money(self, through_us: int) -> None:
        total = 0
        for bid in self.market.bids.values():
            model = self.model[bid.bid_id]
            hold = self.bank.holds[model.hold_id]
            assert bid.charged_credits == model.applied == hold.charged, bid
            assert hold.charged <= model.hold_amount                     # never more than its hold
            if model.budget is not None:
                assert bid.charged_credits <= model.budget             # nor its budget
            exact = model.owed_pico(through_us) // core.PICO_PER_CREDIT
            if bid.mode is Mode.CAPPED and not model.tampered:
                assert bid.charged_credits == exact, (bid, exact)      # floor(rate × live time), cumulatively
            else:
                assert bid.charged_credits <= exact
            if model.settled:
                assert hold.state is not ledger.HoldState.ACTIVE
            total += bid.charged_credits
        assert self.bank.accounts[PAYEE].balance == total               # the owner gains what the holds lose
        spent = sum(10**9 - self.bank.accounts[account].balance for account in ("alice", "bob"))
        assert spent == total

    # -- the bidders -----------------------------------------------------------------------------

    @rule(payer=st.sampled_from([ALICE, BOB]), rate=RATES, by_budget=st.booleans(), budget=st.integers(1, 300),
          duration_s=st.integers(1, 60), hold_amount=st.integers(1, 300), extra=st.integers(0, 50),
          expires_s=st.integers(1, 120), mode=st.sampled_from([Mode.CAPPED, Mode.CAPPED, Mode.PAY_FOR_USE]),
          wait_us=st.integers(0, 15 * SECOND_US))
    def place(self, payer, rate, by_budget, budget, duration_s, hold_amount, extra, expires_s, mode, wait_us):
        self.wait(wait_us)
        if by_budget:
            try:
                rate = core.rate_from_budget(budget, duration_s)
            except DomainError:
                return
            hold_amount = budget + extra
        expires_us = self.now + expires_s * SECOND_US
        hold_id = make_hold(self.bank, payer, hold_amount, expires_us, self.now)
        self.counter += 1
        bid_id = f"b{self.counter}"
        k, end_us = self.market.interval, self.market.interval_end_us
        interval_us = self.config.interval_us
        if rate < self.config.reserve_ucps:
            expected = "BelowReserve"
        elif expires_us < (k + 2) * interval_us:
            expected = "HoldExpiresTooSoon"
        elif rate * (min(self.now + duration_s * SECOND_US, end_us) - self.now) // core.PICO_PER_CREDIT > hold_amount:
            expected = "InsufficientHold"
        else:
            expected = None
        try:
            self.market = place_bid(self.market, bid_id=bid_id, owner_dn=payer.dn, hold_id=hold_id, rate_ucps=rate,
                                    max_duration_s=duration_s, mode=mode, hold_remaining=hold_amount,
                                    hold_expires_us=expires_us, now_us=self.now)
        except DomainError as error:
            assert error.code == expected, error
            self.bank.run(ledger.ReleaseHold(f"release-{hold_id}", hold_id), principal=payer, now_us=self.now)
            return
        assert expected is None
        self.model[bid_id] = ModelBid(bid_id, hold_id, payer, mode, self.now, self.now + duration_s * SECOND_US,
                                      hold_amount, expires_us, budget if by_budget else None, [(self.now, rate)])

    def live_models(self) -> list[ModelBid]:
        return [model for model in self.model.values() if model.end_us is None and model.max_end_us > self.now]

    @rule(pick=st.integers(0, 10**6), rate=RATES, wait_us=st.integers(0, 5 * SECOND_US))
    def change(self, pick, rate, wait_us):
        self.wait(wait_us)
        if not self.model:
            return
        model = sorted(self.model.values(), key=lambda m: m.bid_id)[pick % len(self.model)]
        bid = self.market.bid(model.bid_id)
        end_us = self.market.interval_end_us
        if model.end_us is not None or model.max_end_us <= self.now:
            expected = "BidEnded"
        elif rate < self.config.reserve_ucps:
            expected = "BelowReserve"
        else:
            if bid.mode is Mode.CAPPED:
                owed = model.owed_pico(self.now)
            else:                                        # what it owes at full use since the last close
                owed = bid.accrued_pico + model.owed_pico(self.now) - model.owed_pico(self.market.through_us) \
                    + bid.open_full_pico
            cost = (owed + rate * (min(model.max_end_us, end_us) - self.now)) // core.PICO_PER_CREDIT \
                - bid.charged_credits
            expected = "InsufficientHold" if cost > bid.hold_remaining else None
        try:
            self.market = change_bid(self.market, model.bid_id, rate_ucps=rate, now_us=self.now)
        except DomainError as error:
            assert error.code == expected, error
            return
        assert expected is None
        model.segments.append((self.now, rate))
        model.budget = None                  # a new rate is the bidder's choice, no longer its budget's

    @rule(pick=st.integers(0, 10**6), wait_us=st.integers(0, 5 * SECOND_US))
    def cancel(self, pick, wait_us):
        self.wait(wait_us)
        if not self.model:
            return
        model = sorted(self.model.values(), key=lambda m: m.bid_id)[pick % len(self.model)]
        ended = model.end_us is not None or model.max_end_us <= self.now
        try:
            self.market = cancel_bid(self.market, model.bid_id, now_us=self.now)
        except DomainError as error:
            assert ended and error.code == "BidEnded", error
            return
        assert not ended
        model.end_us = self.now

    @precondition(lambda self: any(model.end_us is not None for model in self.model.values()))
    @rule(pick=st.integers(0, 10**6))
    def ended_bid_bids_again_on_its_hold(self, pick):
        ended = sorted((m for m in self.model.values() if m.end_us is not None), key=lambda m: m.bid_id)
        model = ended[pick % len(ended)]
        self.counter += 1
        refused(lambda: place_bid(self.market, bid_id=f"b{self.counter}", owner_dn=model.payer.dn,
                                  hold_id=model.hold_id, rate_ucps=10**6, max_duration_s=60, mode=Mode.CAPPED,
                                  hold_remaining=100, hold_expires_us=self.now + 10**9, now_us=self.now),
                "HoldAlreadyBid")

    @rule(pick=st.integers(0, 10**6))
    def payer_releases_a_hold(self, pick):
        live = sorted(self.live_models(), key=lambda m: m.bid_id)
        if not live:
            return
        model = live[pick % len(live)]
        if self.bank.holds[model.hold_id].state is not ledger.HoldState.ACTIVE:
            return
        self.bank.run(ledger.ReleaseHold(f"release-{model.hold_id}", model.hold_id), principal=model.payer,
                      now_us=self.now)
        model.tampered = True

    @rule(wait_us=st.integers(1, 40 * SECOND_US))
    def time_passes(self, wait_us):
        self.wait(wait_us)

    # -- every step -------------------------------------------------------------------------------

    @invariant()
    def allocation_is_the_live_bids_shares(self):
        market = self.market
        live = {bid.bid_id for bid in market.bids.values() if bid.live}
        expected_live = {model.bid_id for model in self.model.values()
                         if model.end_us is None and model.max_end_us > market.through_us}
        assert live == expected_live
        allocation = market.allocation
        assert set(allocation.shares) == live and allocation.below_reserve == ()
        if live:
            assert sum((allocation.share(bid_id) for bid_id in live), Fraction(0)) == 1
            assert allocation.total_ucps == sum(market.bids[bid_id].rate_ucps for bid_id in live)
        for bid_id in live:
            assert market.bids[bid_id].rate_ucps == self.model[bid_id].segments[-1][1]

    def teardown(self):
        if hasattr(self, "market"):
            self.wait(3 * self.config.interval_us + 61 * SECOND_US)   # every bid ends and is settled
            for bid in self.market.bids.values():
                assert bid.settled_interval is not None and not bid.live
            for model in self.model.values():
                assert self.bank.holds[model.hold_id].state is not ledger.HoldState.ACTIVE or model.tampered


MODEL_SETTINGS = dict(stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestMarketModel(MarketMachine.TestCase):
    """300 random runs (every end reason, refusal and resend seen; about a minute under load): CI."""
    settings = settings(max_examples=300, **MODEL_SETTINGS)
    pytestmark = [pytest.mark.slow]


class TestMarketModelQuick(MarketMachine.TestCase):
    """The same machine, 25 runs, for the quick loop (-m 'not slow')."""
    settings = settings(max_examples=25, **MODEL_SETTINGS)
