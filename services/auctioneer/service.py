"""The SOAP face of the Auctioneer: thin operations over the market (market.py) in the store (store.py).

Each operation: decode → the policy decides (policy.py) → the hold is read from the Bank (as this
auctioneer, its collector) → the market's transition (market.py) and the bid's document, in one store
transaction → the answer. Rates are decimal credits per second on the wire (``rate``: at most six
fractional digits) and integer micro-credits per second beside them (``rate_ucps``); money whole
credits; times integer µs since the epoch (``*_us``).

    PlaceBid      a bid on a Bank hold the caller made: collector this auctioneer's DN, payee the host
                  owner's account; ``rate`` — or ``budget`` credits over ``duration_s`` (the rate
                  floor(budget·10^6 / duration)) — for at most ``max_duration_s`` (default: duration_s);
                  its VM from ``template``. Live at once: it pays from now, its VM is made and capped by
                  the loop within a second or so. One hold funds one bid, ever: the same PlaceBid sent
                  again answers the bid (``replayed``); a hold whose bid ended (cancelled) bids no more.
    ChangeBid     a new rate from now: the interval in progress is paid at the old rate until now and
                  at the new one after (the market accrues both exactly); the share changes at once.
                  Raise the hold first (gridcredit bank extend-hold --amount) if it must pay more: the
                  auctioneer reads the hold again
    CancelBid     the bid ends now: it pays until now, its hold is settled at the interval's end (the
                  rest released) and its VM removed. While an interval's batch awaits the Bank (the
                  next interval cannot be closed) the cancel is kept and applied at its instant once
                  the Bank answered (market.cancel_bid): the VM goes at once, the bid pays until then.
                  PlaceBid and ChangeBid read the hold from the Bank: they wait (MarketBusy after
                  EVENT_WAIT_S) — a market that has not closed its last interval takes no new rates
    GetBid, ListBids   a bid (its owner, the host's owners); the caller's bids (the owners: everyone's)
    GetHost       capacity, the current price (Σ rates / capacity), the hour's average, live bids
    ConsoleWrite, ConsoleRead   the bid's VM serial console, relayed (the bid's owner only)
"""
from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal

from spyne import Array, Boolean, ByteArray, ComplexModel, Decimal as XsDecimal, Integer, Long, Unicode

from gridcredit.errors import DomainError, GridcreditError, RemoteFault
from gridcredit.timeunits import now_us

from . import market as core
from . import policy
from .console import WAIT_MS_MAX, ConsoleFiles
from .runtime import Auctioneer, vm_name
from .store import BidRecord, MarketStore, PAGE_MAX, bid_id_for
from ..common import GridcreditService, operation, principal_of, runtime_of, whoami_operation

NAMESPACE = "urn:gridcredit:auctioneer:1"
SERVICE_NAME = "Auctioneer"

Required = {"min_occurs": 1, "nillable": False}
Optional = {"min_occurs": 0}

AUCTIONEER_DISABLED = "AuctioneerDisabled"
UNKNOWN_TEMPLATE = "UnknownTemplate"
HOLD_NOT_FOR_THIS_AUCTIONEER = "HoldNotForThisAuctioneer"
HOLD_WRONG_PAYEE = "HoldWrongPayee"
HOLD_NOT_ACTIVE = "HoldNotActive"
MARKET_BUSY = "MarketBusy"
INVALID_ARGUMENT = core.INVALID_ARGUMENT
BUDGET_MAX = 10**15
EVENT_WAIT_S = 10.0           # an event right after a boundary waits this long for the loop to close it


class BidInfo(ComplexModel):
    """A bid: ``state`` live or ended (``end_reason``); money whole credits — ``charged`` so far,
    ``hold_remaining`` what its hold still covers as the auctioneer knows it, ``owed`` what it owes and
    is not charged yet (charged at the interval's end; after it ended: forgone); ``share_ppm`` its part of
    the host now (parts per million); ``enforced`` what the hypervisor does for it, in words."""
    __namespace__ = NAMESPACE
    _type_info = [
        ("bid_id", Unicode(**Required)), ("host_id", Unicode(**Required)), ("owner_dn", Unicode(**Required)),
        ("hold_id", Unicode(**Required)), ("account_id", Unicode(**Required)), ("rate", XsDecimal(**Required)),
        ("rate_ucps", Long(**Required)), ("template", Unicode(**Required)), ("max_duration_s", Long(**Required)),
        ("state", Unicode(**Required)), ("end_reason", Unicode(**Optional)), ("placed_us", Long(**Required)),
        ("started_us", Long(**Required)), ("max_end_us", Long(**Required)), ("ended_us", Long(**Optional)),
        ("hold_expires_us", Long(**Required)), ("hold_remaining", Long(**Required)), ("charged", Long(**Required)),
        ("owed", Long(**Required)), ("accrued_pico", Integer(**Required)), ("share_ppm", Long(**Required)),
        ("vm_name", Unicode(**Optional)), ("enforced", Unicode(**Optional)), ("replayed", Boolean(**Optional)),
    ]


class HostInfo(ComplexModel):
    """The host's market: ``price`` = Σ live rates / capacity (credits/s per CPU), its average over the
    last hour's intervals, the live bids, the interval, the mode and the templates bids may name."""
    __namespace__ = NAMESPACE
    _type_info = [
        ("host_id", Unicode(**Required)), ("enabled", Boolean(**Required)), ("auctioneer_dn", Unicode(**Required)),
        ("owner_account", Unicode(**Required)), ("capacity_cpus", Long(**Required)), ("mode", Unicode(**Required)),
        ("pay_for_use", Boolean(**Required)), ("interval_s", Long(**Required)), ("reserve", XsDecimal(**Required)),
        ("price", XsDecimal(**Required)), ("price_ucps", Long(**Required)),
        ("hour_average_price", XsDecimal(**Required)), ("hour_average_price_ucps", Long(**Required)),
        ("total_rate_ucps", Long(**Required)), ("live_bids", Long(**Required)), ("templates", Array(Unicode)),
    ]


class ConsoleOutputInfo(ComplexModel):
    """What the VM wrote from ``offset`` (later than asked when older output was dropped); ask from
    ``next_offset`` next time."""
    __namespace__ = NAMESPACE
    _type_info = [("data", ByteArray(**Required)), ("offset", Long(**Required)), ("next_offset", Long(**Required))]


# -- decoding -------------------------------------------------------------------------------------


def _part(ctx) -> Auctioneer:
    return runtime_of(ctx).auctioneer


def _enabled(part: Auctioneer) -> None:
    if not part.enabled:
        raise DomainError("this host sells no CPU: its [auctioneer] section names no host_id", AUCTIONEER_DISABLED)


def decimal_text(value) -> str:
    """A wire decimal as the text market.parse_rate reads (plain digits; an exponent or a sign refused there)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise DomainError(f"a rate must be a finite number of credits per second, not {value}", INVALID_ARGUMENT)
        return format(value, "f") if -30 <= value.as_tuple().exponent <= 30 else str(value)
    return str(value)


def rate_of(rate, budget, duration_s) -> int:
    """µcr/s from ``rate`` (credits/s), or from ``budget`` credits over ``duration_s`` seconds."""
    if rate is not None and (budget is not None or duration_s is not None):
        raise DomainError("give a rate, or a budget and its duration — not both", INVALID_ARGUMENT)
    if rate is not None:
        return core.parse_rate(decimal_text(rate))
    if budget is None or duration_s is None:
        raise DomainError("give a rate (credits per second), or a budget (credits) and its duration (seconds)",
                          INVALID_ARGUMENT)
    if not 1 <= budget <= BUDGET_MAX:
        raise DomainError(f"a budget must be 1 to {BUDGET_MAX:,} credits, not {budget:,}", INVALID_ARGUMENT)
    return core.rate_from_budget(budget, duration_s)


def _rate_decimal(rate_ucps: int) -> Decimal:
    return Decimal(rate_ucps).scaleb(-6)


def _bid_info(part: Auctioneer, record: BidRecord, bid: core.Bid | None, market: core.Market | None, *,
              replayed: bool | None = None) -> BidInfo:
    share = 0
    if market is not None and bid is not None:
        found = market.allocation.shares.get(bid.bid_id)
        share = 0 if found is None else found.ppm
    if bid is None:                     # placed, then forgotten before its final state was kept: not expected
        bid = core.Bid(record.bid_id, record.owner_dn, record.hold_id, 1, part.mode, record.placed_us,
                       record.placed_us, 0, 0, core.BidState.ENDED)
    return BidInfo(
        bid_id=record.bid_id, host_id=record.host_id, owner_dn=record.owner_dn, hold_id=record.hold_id,
        account_id=record.account_id, rate=_rate_decimal(bid.rate_ucps), rate_ucps=bid.rate_ucps,
        template=record.template, max_duration_s=record.max_duration_s, state=bid.state.value,
        end_reason=None if bid.end_reason is None else bid.end_reason.value, placed_us=record.placed_us,
        started_us=bid.started_us, max_end_us=bid.max_end_us, ended_us=bid.ended_us or None,
        hold_expires_us=bid.hold_expires_us, hold_remaining=bid.hold_remaining, charged=bid.charged_credits,
        owed=max(0, (bid.accrued_pico + bid.open_full_pico) // core.PICO_PER_CREDIT - bid.charged_credits),
        accrued_pico=bid.accrued_pico + bid.open_full_pico, share_ppm=share, vm_name=record.vm_name or None,
        enforced=record.enforced or None, replayed=replayed)


def _hold(part: Auctioneer, hold_id: str):
    """The hold as the Bank shows it to this auctioneer (its collector may read it)."""
    if not isinstance(hold_id, str) or not 1 <= len(hold_id) <= 128:
        raise DomainError(f"a hold id is 1-128 characters, not {hold_id!r}"[:200], INVALID_ARGUMENT)
    if part.bank is None:
        raise DomainError("this auctioneer has no Bank client (no host credential)", AUCTIONEER_DISABLED)
    try:
        return part.bank.get_hold(hold_id)
    except RemoteFault as fault:
        if fault.code in ("NotAuthorized", "UnknownHold"):
            raise DomainError(f"hold {hold_id} does not exist or does not name this auctioneer ({part.dn}) as its "
                              f"collector: make the hold with --collector '{part.dn}' --payee "
                              f"{part.settings.owner_account}", HOLD_NOT_FOR_THIS_AUCTIONEER) from None
        raise DomainError(f"the Bank refused to show hold {hold_id}: {fault}", HOLD_NOT_FOR_THIS_AUCTIONEER) from None
    except GridcreditError as error:
        raise DomainError(f"the Bank cannot be asked about hold {hold_id} now ({error}); try again",
                          "BankUnavailable") from None


def _check_hold(part: Auctioneer, hold) -> None:
    if hold.collector_dn != part.dn:
        raise DomainError(f"hold {hold.hold_id} names {hold.collector_dn or 'no collector'} as its collector, not this "
                          f"auctioneer ({part.dn}): a bid needs a hold only this auctioneer can collect",
                          HOLD_NOT_FOR_THIS_AUCTIONEER)
    if hold.payee_account_id != part.settings.owner_account:
        raise DomainError(f"hold {hold.hold_id} pays {hold.payee_account_id or 'no payee'}, not this host's owner's "
                          f"account {part.settings.owner_account}", HOLD_WRONG_PAYEE)
    if hold.state != "active":
        raise DomainError(f"hold {hold.hold_id} is {hold.state}: it funds nothing", HOLD_NOT_ACTIVE)


def _check_one_interval(part: Auctioneer, rate_ucps: int, remaining: int, hold_id: str) -> None:
    """A hold must pay one whole interval at the rate (market.py asks only the rest of the interval in progress:
    a bid placed late in it would end at its close, having paid a moment)."""
    interval_us = part.settings.interval_s * 1_000_000
    cost = -(-rate_ucps * interval_us // core.PICO_PER_CREDIT)
    if remaining < cost:
        raise DomainError(f"hold {hold_id} has {remaining:,} credits left; one interval ({part.settings.interval_s} s) "
                          f"at {core.format_rate(rate_ucps)} credits/s costs {cost:,}: a larger hold or a lower rate",
                          core.INSUFFICIENT_HOLD)


def _event(part: Auctioneer, step):
    """Apply ``step(tx, market, now)`` → (market, answer) in one transaction at now; right after a boundary
    the loop may not have closed the interval yet: wait for it up to EVENT_WAIT_S."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        moment = now_us()
        try:
            return part.market.change(lambda tx, market: step(tx, market, moment), now_us=moment)
        except DomainError as error:
            if error.code != core.INTERVAL_NOT_CLOSED or time.monotonic() >= deadline:
                if error.code == core.INTERVAL_NOT_CLOSED:
                    raise DomainError("the auctioneer has not closed the last interval yet (is its allocation loop "
                                      "running?): try again in a few seconds", MARKET_BUSY) from None
                raise
            time.sleep(0.1)


def _own_bid(ctx, operation_name: str, bid_id) -> tuple[Auctioneer, BidRecord]:
    part = _part(ctx)
    found = part.market.record(bid_id)
    policy.authorize_own_bid(principal_of(ctx), operation_name, owner_dn=None if found is None else found[0].owner_dn,
                             bid_id=str(bid_id)[:64], policy=part.policy)
    return part, found[0]


def _view(part: Auctioneer, bid_id: str, *, replayed: bool | None = None) -> BidInfo:
    record, final = part.market.record(bid_id)
    market = part.market.market(now_us=now_us())
    bid = market.bids.get(bid_id, final)
    return _bid_info(part, record, bid, market, replayed=replayed)


# -- operations -----------------------------------------------------------------------------------


class AuctioneerService(GridcreditService):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("auctioneer", authorize=lambda ctx: policy.authorize_anyone("WhoAmI"))

    @operation(Unicode(**Required), XsDecimal(**Optional), Long(**Optional), Long(**Optional), Long(**Optional),
               Unicode(**Required), _returns=BidInfo, _operation_name="PlaceBid")
    def place_bid(ctx, hold_id, rate, budget, duration_s, max_duration_s, template):
        part = _part(ctx)
        principal = principal_of(ctx)
        if not part.enabled:
            policy.authorize_anyone("PlaceBid")
            _enabled(part)
        rate_ucps = rate_of(rate, budget, duration_s)
        if max_duration_s is None:
            if duration_s is None:
                raise DomainError("give the bid's maximum duration (max_duration_s, seconds)", INVALID_ARGUMENT)
            max_duration_s = duration_s
        core.check_duration_s(max_duration_s)
        if template not in part.templates:
            raise DomainError(f"there is no template {template!r} on host {part.settings.host_id}: its templates are "
                              f"{', '.join(sorted(part.templates)) or 'none'}", UNKNOWN_TEMPLATE)
        hold = _hold(part, hold_id)
        policy.authorize_place_bid(principal, hold_creator_dn=hold.creator_dn, hold_for_dn=hold.on_behalf_of_dn,
                                   hold_id=hold_id)
        _check_hold(part, hold)
        bid_id = bid_id_for(part.settings.host_id, hold_id)
        if part.market.record(bid_id) is None:            # (a PlaceBid sent again is answered below)
            _check_one_interval(part, rate_ucps, hold.amount - hold.charged, hold_id)

        def step(tx, market: core.Market, moment: int):
            found = MarketStore.record_in(tx, bid_id)
            if found is not None:
                record, final = found
                bid = market.bids.get(bid_id, final)
                if bid is not None and bid.live and record.owner_dn == principal.dn and bid.rate_ucps == rate_ucps \
                        and record.max_duration_s == max_duration_s and record.template == template:
                    return market, True       # the same PlaceBid again
                state = "ended" if bid is None or not bid.live else "live"
                reason = "" if bid is None or bid.end_reason is None else f", {bid.end_reason.value}"
                raise DomainError(f"hold {hold_id} funds bid {bid_id} ({state}{reason}): a hold funds one bid, and a "
                                  f"cancelled bid cannot bid again — make a new hold for a new bid",
                                  core.BID_ENDED if state == "ended" else core.HOLD_ALREADY_BID)
            placed = core.place_bid(market, bid_id=bid_id, owner_dn=principal.dn, hold_id=hold_id,
                                    rate_ucps=rate_ucps, max_duration_s=max_duration_s, mode=part.mode,
                                    hold_remaining=hold.amount - hold.charged, hold_expires_us=hold.expires_at_us,
                                    now_us=moment)
            MarketStore.put_record(tx, BidRecord(bid_id, part.settings.host_id, principal.dn, hold_id,
                                                 hold.account_id, template, max_duration_s, moment,
                                                 vm_name=vm_name(part.settings, bid_id),
                                                 enforced="waiting for its VM", updated_us=moment))
            return placed, False
        replayed = _event(part, step)
        return _view(part, bid_id, replayed=replayed)

    @operation(Unicode(**Required), XsDecimal(**Required), _returns=BidInfo, _operation_name="ChangeBid")
    def change_bid(ctx, bid_id, rate):
        part, record = _own_bid(ctx, "ChangeBid", bid_id)
        rate_ucps = core.parse_rate(decimal_text(rate))
        hold = _hold(part, record.hold_id)       # raised meanwhile? its remainder and expiry as the Bank says now

        def step(tx, market: core.Market, moment: int):
            bid = market.bids.get(bid_id)
            if bid is None or not bid.live:
                raise DomainError(f"bid {bid_id} ended: it cannot be changed", core.BID_ENDED)
            pending = sum(charge.amount for charge in market.pending_charges if charge.bid_id == bid_id)
            if hold.state == "active":
                bid = replace(bid, hold_remaining=max(0, hold.amount - hold.charged - pending),
                              hold_expires_us=hold.expires_at_us)
                market = replace(market, bids={**market.bids, bid_id: bid})
            owed = (bid.accrued_pico + bid.open_full_pico) // core.PICO_PER_CREDIT - bid.charged_credits
            _check_one_interval(part, rate_ucps, bid.hold_remaining - max(0, owed), record.hold_id)
            return core.change_bid(market, bid_id, rate_ucps=rate_ucps, now_us=moment), None
        _event(part, step)
        return _view(part, bid_id)

    @operation(Unicode(**Required), _returns=BidInfo, _operation_name="CancelBid")
    def cancel_bid(ctx, bid_id):
        part, record = _own_bid(ctx, "CancelBid", bid_id)

        def step(tx, market: core.Market, moment: int):
            bid = market.bids.get(bid_id)
            if bid is None or not bid.live:
                return market, None               # ended already: cancelling again changes nothing
            return core.cancel_bid(market, bid_id, now_us=moment), None
        _event(part, step)
        return _view(part, bid_id)

    @operation(Unicode(**Required), _returns=BidInfo, _operation_name="GetBid")
    def get_bid(ctx, bid_id):
        part, _ = _own_bid(ctx, "GetBid", bid_id)
        return _view(part, bid_id)

    @operation(Boolean(**Optional), Boolean(**Optional), Long(**Optional), Long(**Optional), _returns=Array(BidInfo),
               _operation_name="ListBids")
    def list_bids(ctx, everyone, include_ended, offset, limit):
        part = _part(ctx)
        principal = principal_of(ctx)
        policy.authorize_list_bids(part.policy, principal, bool(everyone))
        offset, limit = offset or 0, 100 if limit is None else limit
        if not 0 <= offset <= 10**9 or not 1 <= limit <= PAGE_MAX:
            raise DomainError(f"offset must be 0 or more and limit 1-{PAGE_MAX}, not {offset} and {limit}",
                              INVALID_ARGUMENT)
        if not part.enabled:
            return []
        market = part.market.market(now_us=now_us())
        found = part.market.records(owner_dn=None if everyone else principal.dn, include_ended=bool(include_ended),
                                    offset=offset, limit=limit)
        return [_bid_info(part, record, market.bids.get(record.bid_id, final), market) for record, final in found]

    @operation(_returns=HostInfo, _operation_name="GetHost")
    def get_host(ctx):
        policy.authorize_anyone("GetHost")
        part = _part(ctx)
        settings = part.settings
        moment = now_us()
        market = part.market.market(now_us=moment) if part.enabled else None
        total = 0 if market is None else market.allocation.total_ucps
        price = total // settings.capacity_cpus
        average = part.market.prices(now_us=moment).hour_average_ucps if part.enabled else 0
        return HostInfo(host_id=settings.host_id, enabled=part.enabled, auctioneer_dn=part.dn,
                        owner_account=settings.owner_account, capacity_cpus=settings.capacity_cpus,
                        mode=settings.mode, pay_for_use=settings.pay_for_use, interval_s=settings.interval_s,
                        reserve=_rate_decimal(settings.reserve_ucps), price=_rate_decimal(price), price_ucps=price,
                        hour_average_price=_rate_decimal(average), hour_average_price_ucps=average,
                        total_rate_ucps=total, live_bids=0 if market is None else len(market.live_bids()),
                        templates=sorted(part.templates))

    @operation(Unicode(**Required), ByteArray(**Required), _returns=Long, _operation_name="ConsoleWrite")
    def console_write(ctx, bid_id, data):
        part, _ = _own_bid(ctx, "ConsoleWrite", bid_id)
        data = b"".join(data or ())
        bid = part.market.market(now_us=now_us()).bids.get(bid_id)
        if bid is None or not bid.live:
            raise DomainError(f"bid {bid_id} ended: its VM is gone", core.BID_ENDED)
        return ConsoleFiles(part.console_dir).write(bid_id, data)

    @operation(Unicode(**Required), Long(**Optional), Long(**Optional), _returns=ConsoleOutputInfo,
               _operation_name="ConsoleRead")
    def console_read(ctx, bid_id, offset, wait_ms):
        part, _ = _own_bid(ctx, "ConsoleRead", bid_id)
        offset, wait_ms = offset or 0, wait_ms or 0
        if not 0 <= offset <= 2**62 or not 0 <= wait_ms <= WAIT_MS_MAX:
            raise DomainError(f"offset must be 0 or more and wait_ms 0-{WAIT_MS_MAX}, not {offset} and {wait_ms}",
                              INVALID_ARGUMENT)
        output = ConsoleFiles(part.console_dir).read(bid_id, offset, wait_ms=wait_ms)
        return ConsoleOutputInfo(data=[output.data], offset=output.offset, next_offset=output.next_offset)


SERVICES = [AuctioneerService]
