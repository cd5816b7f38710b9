"""The Auctioneer's market: bids, the proportional-share allocation and the charging rule. The pure core.

No I/O, no clock, no libvirt, no Bank calls: every function takes the time it is told (``now_us``) and
returns new immutable values; the service (``service.py``/``runtime.py``) stores them, sends the Bank
what :func:`close_interval` asks for and applies :attr:`Market.allocation` through the hypervisor.

Units (docs: /work/notes/MARKET-DESIGN.md) — no floats anywhere:

* a **rate** is integer micro-credits per second (``*_ucps``; 1 credit/s = 1,000,000). People write it as
  a decimal number of credits per second with at most 6 fractional digits (:func:`parse_rate`); a budget
  of B credits over D seconds is the rate floor(B·10^6 / D) (:func:`rate_from_budget`: rounded down, so a
  bid never pays more than its budget);
* **time** is integer microseconds since the epoch (``*_us``); intervals are aligned to the epoch:
  interval k is [k·I, (k+1)·I) for the market's interval I;
* what a bid **owes** is kept in pico-credits (µcr/s × µs = 10^-12 credit), cumulatively from its start
  (``accrued_pico``); it pays whole credits: after each interval, floor(accrued_pico / 10^12) −
  charged_credits. Rounding never drifts: a bid that was live for T µs at rate r (capped mode) has paid
  exactly floor(r·T / 10^12) credits at every interval's end. The remainder below one credit when it ends
  is forgiven (never charged: the bid never pays more than floor).

Allocation (:func:`allocate`): share_i = rate_i / Σ rate_j over the live bids whose rate is at or above
the reserve price, an exact fraction (:meth:`Allocation.share`); enforced as a CPU cap per scheduler
period, quota_us = floor(capacity_cpus · period_us · rate_i / Σ rate_j) clamped up to libvirt's minimum
of 1,000 µs (``Share.quota_clamped`` says when: the bid then gets a little more than its share), or as a
weight in work-conserving mode, floor(262,144 · rate_i / Σ rate_j) clamped to libvirt's ``cpu_shares``
range 2..262,144. Note for enforcement: QEMU's ``vcpu_quota`` is per virtual CPU — a one-vCPU guest can
never use more than one CPU, whatever its quota.

A bid's life, as transitions of one :class:`Market` (each refuses bad input with a :class:`DomainError`
and changes nothing):

* :func:`place_bid` — funded by a Bank hold (one hold funds one bid, ever: a cancelled bid's hold cannot
  bid again); live from ``now_us`` until it ends;
* :func:`change_bid` — a new rate from ``now_us`` (what it owed at the old rate is kept);
* :func:`cancel_bid` — ends it at ``now_us``. While the open interval has ended but cannot be closed (its
  predecessor's batch awaits the Bank's answers), the cancel is kept (``cancels_due``) and takes effect at
  its own instant when the interval it falls in is opened (:func:`close_interval` applies it): the bid
  pays until then, exactly as if the Bank had answered on time; :func:`in_force` (what enforcement
  applies) leaves the bid out at once;
* :func:`advance` — ends the bids whose maximum duration passed by ``now_us`` (a bid is charged until its
  max end exactly; its share goes to the others at the next transition — advance, any event or the close);
* :func:`reconfigure` — a new capacity, reserve price or period from ``now_us``;
* :func:`forget_settled` — drops the bids whose holds are settled (their holds never fund a bid again);
* :func:`close_interval` — at the end of interval k: accrues to (k+1)·I, works out every bid's charge for
  k and which bids cannot go on into k+1, and returns the interval's Bank batch (:class:`Charge` items:
  ChargeHold for a bid that goes on, SettleHold for one that ends) and the allocation for k+1. The batch
  is kept in the market (``pending_charges``) until :func:`batch_applied` records the Bank's answers:
  after a crash the service sends the same batch again, with the same request ids
  (``auction:<host>:<bid>:<k>``), and the Bank answers the outcomes it recorded — each interval is charged
  once. The next interval cannot be closed before the answers are recorded.

When a bid ends, and with what final SettleHold amount (always in the batch of the interval it ended in):

=====================  ======================================  =================================================
reason                 when                                    SettleHold amount
=====================  ======================================  =================================================
cancelled              at the cancel (``now_us``)              what it owes for its last interval
max-duration           at started_us + its maximum duration    what it owes (live until that instant)
hold-exhausted         at the end of interval k, when the      what it owes for k (≤ the hold's remainder); the
                       hold's remainder after k's charge        rest of the hold is released
                       could not pay k+1 at its full rate
hold-expiring          at the end of interval k, when the      what it owes for k: a batch for k+1 is sent
                       hold expires before (k+3)·I             during k+2, so the hold must outlive that
hold-refused           when the Bank refused a charge          nothing more: a SettleHold of 0 (releasing the
                       (answer recorded at ``now_us``)          hold) in the next batch, or no item when the
                                                               hold is gone (HoldEnded, HoldExpired, UnknownHold)
=====================  ======================================  =================================================

A refused SettleHold is not retried: the hold expires on its own (its money back to its account), the
charge forgone (``Bid.forgone_credits``). A bid's charges never exceed its hold's remainder (checked when
it is placed, changed and at each interval's end; an ``invariant`` otherwise), nor — at the rate of
:func:`rate_from_budget` — its budget.

Pay-for-use mode: instead of rate × live time, a bid pays rate × live time × used / allotted for each
interval, where allotted is the CPU time its share gave it (capacity × share × live time, accrued between
every change of the allocation) and used the CPU time its VM used in the interval (measured by the
service from libvirt, capped at allotted).
"""
from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Iterable, Mapping, NamedTuple

from gridcredit.errors import ConfigError, DomainError, invariant

from ..bank.ledger import AMOUNT_MAX, ChargeHold, SettleHold, check_dn, check_identifier

UCPS_PER_CREDIT = 10**6                 # micro-credits per second in one credit per second
PICO_PER_CREDIT = 10**12                # µcr/s × µs
US_PER_S = 10**6
RATE_FRACTION_DIGITS = 6
RATE_MAX_UCPS = 10**15                  # 10^9 credits/s: an hour stays within the Bank's largest amount
DURATION_MAX_S = 366 * 86_400
INTERVAL_MIN_US = 1_000_000
INTERVAL_MAX_US = 3_600_000_000
INTERVAL_DEFAULT_US = 10_000_000
PERIOD_DEFAULT_US = 100_000             # libvirt's vcpu_period: 1,000 .. 1,000,000 µs
PERIOD_MIN_US = 1_000
PERIOD_MAX_US = 1_000_000
QUOTA_MIN_US = 1_000                    # libvirt's smallest vcpu_quota
CPU_SHARES_MIN = 2                      # libvirt's cpu_shares range (cgroup v1; v2 maps it to cpu.weight)
CPU_SHARES_MAX = 262_144
CAPACITY_CPUS_MAX = 1_024
LIVE_BIDS_MAX = 10_000                  # live bids on one host
HOUR_US = 3_600_000_000
SETTLE_MARGIN_INTERVALS = 2             # a hold must outlive the interval a bid is live in by one more

INVALID_ARGUMENT = "InvalidArgument"
UNKNOWN_BID = "UnknownBid"
BID_EXISTS = "BidExists"
BID_ENDED = "BidEnded"
HOLD_ALREADY_BID = "HoldAlreadyBid"
BELOW_RESERVE = "BelowReserve"
INSUFFICIENT_HOLD = "InsufficientHold"
HOLD_EXPIRES_TOO_SOON = "HoldExpiresTooSoon"
TOO_MANY_BIDS = "TooManyBids"
INTERVAL_NOT_CLOSED = "IntervalNotClosed"
WRONG_INTERVAL = "WrongInterval"
BATCH_UNANSWERED = "BatchUnanswered"
USAGE_MISSING = "UsageMissing"

HOLD_GONE_CODES = frozenset({"HoldEnded", "HoldExpired", "UnknownHold"})   # refusals after which no SettleHold

_BID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,39}", re.ASCII)
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,39}", re.ASCII)
_RATE = re.compile(r"([0-9]{1,16})(?:\.([0-9]+))?", re.ASCII)


class Mode(enum.Enum):
    """How a bid pays: ``capped`` its rate for all its live time; ``pay-for-use`` for what its VM used
    of its allotment (Tycoon's pay-for-use)."""
    CAPPED = "capped"
    PAY_FOR_USE = "pay-for-use"


class BidState(enum.Enum):
    LIVE = "live"
    ENDED = "ended"


class EndReason(enum.Enum):
    CANCELLED = "cancelled"
    MAX_DURATION = "max-duration"
    HOLD_EXHAUSTED = "hold-exhausted"
    HOLD_EXPIRING = "hold-expiring"
    HOLD_REFUSED = "hold-refused"


def _refuse(code: str, message: str) -> DomainError:
    return DomainError(message, code)


def _whole(value: object, what: str, low: int, high: int, code: str = INVALID_ARGUMENT) -> int:
    if type(value) is not int or not low <= value <= high:  # noqa: E721 — bool is refused
        raise _refuse(code, f"{what} must be a whole number {low:,}..{high:,}, not {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Rates, budgets, durations


def check_rate(rate_ucps: object) -> int:
    """A rate in micro-credits per second: 1 .. 10^15 (10^9 credits/s)."""
    if type(rate_ucps) is not int:
        raise _refuse(INVALID_ARGUMENT, f"a rate must be a whole number of micro-credits per second, not {rate_ucps!r}")
    if rate_ucps < 1:
        raise _refuse(INVALID_ARGUMENT, f"a rate must be positive (at least 0.000001 credit/s), not "
                                        f"{format_rate(rate_ucps)} credits/s")
    if rate_ucps > RATE_MAX_UCPS:
        raise _refuse(INVALID_ARGUMENT, f"a rate of {format_rate(rate_ucps)} credits/s is absurd: at most "
                                        f"{format_rate(RATE_MAX_UCPS)} credits/s")
    return rate_ucps


def parse_rate(text: object) -> int:
    """A rate written as a decimal number of credits per second (``"0.25"``, ``"3"``), at most 6 fractional
    digits, read exactly (Decimal): its micro-credits per second. Signs, exponents, spaces, NaN, infinities
    and non-ASCII digits are refused."""
    if not isinstance(text, str):
        raise _refuse(INVALID_ARGUMENT, f"a rate is a decimal number of credits per second, not {text!r}")
    match = _RATE.fullmatch(text)
    if match is None:
        raise _refuse(INVALID_ARGUMENT, f"a rate is a decimal number of credits per second such as 0.25 (digits, "
                                        f"at most one point; no sign, exponent or spaces), not {text[:40]!r}")
    fraction = match.group(2)
    if fraction is not None and len(fraction) > RATE_FRACTION_DIGITS:
        raise _refuse(INVALID_ARGUMENT, f"a rate has at most {RATE_FRACTION_DIGITS} fractional digits (a "
                                        f"micro-credit per second), not {len(fraction)}: {text[:40]!r}")
    micro = Decimal(text).scaleb(RATE_FRACTION_DIGITS)
    invariant(micro == micro.to_integral_value(), "six fractional digits make whole micro-credits")
    return check_rate(int(micro))


def format_rate(rate_ucps: int | Fraction) -> str:
    """Micro-credits per second as credits per second, exact for an int (``1500000`` → ``"1.5"``); a
    Fraction (a price) rounded down to a micro-credit."""
    whole = rate_ucps if isinstance(rate_ucps, int) else int(rate_ucps // 1)
    sign, whole = ("-", -whole) if whole < 0 else ("", whole)
    credits, micro = divmod(whole, UCPS_PER_CREDIT)
    return f"{sign}{credits}" + (f".{micro:06d}".rstrip("0") if micro else "")


def check_duration_s(duration_s: object, what: str = "a bid's maximum duration (seconds)") -> int:
    return _whole(duration_s, what, 1, DURATION_MAX_S)


def rate_from_budget(budget_credits: object, duration_s: object) -> int:
    """The rate that spends at most ``budget_credits`` over ``duration_s`` seconds: floor(B·10^6 / D)
    µcr/s, rounded down (a bid at this rate for D seconds pays at most B, up to a micro-credit per second
    less). A budget too small to make 1 µcr/s over the duration is refused."""
    _whole(budget_credits, "a budget (credits)", 1, AMOUNT_MAX)
    check_duration_s(duration_s, "a budget's duration (seconds)")
    rate = budget_credits * UCPS_PER_CREDIT // duration_s
    if rate < 1:
        raise _refuse(INVALID_ARGUMENT, f"a budget of {budget_credits} credits over {duration_s} s is less than "
                                        f"0.000001 credit/s: give a larger budget or a shorter duration")
    return check_rate(rate)


def check_bid_id(bid_id: object) -> str:
    if not isinstance(bid_id, str) or not _BID_ID.fullmatch(bid_id):
        raise _refuse(INVALID_ARGUMENT, f"a bid id is 1-40 characters of A-Z a-z 0-9 . - (starting with a letter "
                                        f"or digit), not {bid_id!r}")
    return bid_id


def request_id(host_id: str, bid_id: str, interval: int) -> str:
    """The Bank request id of a bid's one item in an interval's batch: the same on every resend."""
    return f"auction:{host_id}:{bid_id}:{interval}"


# ---------------------------------------------------------------------------------------------
# Bids


@dataclass(frozen=True, slots=True)
class Bid:
    """One bid, funded by one Bank hold. Money: ``accrued_pico`` owed through the last closed interval,
    ``open_full_pico`` (rate × live µs at full use) and ``open_allotted_cpu_us`` of the open interval up to
    ``accrued_until_us`` (a capped bid is accrued lazily — at its own change or cancel and at the interval's
    close: its rate and its place in the allocation are the same until then; a pay-for-use bid at every
    change of the allocation, which its allotment depends on),
    ``charged_credits`` charged (a pending batch's items counted; taken back when refused),
    ``hold_remaining`` the hold's credits left as the auctioneer knows them."""

    bid_id: str
    owner_dn: str
    hold_id: str
    rate_ucps: int
    mode: Mode
    started_us: int
    max_end_us: int
    hold_expires_us: int
    hold_remaining: int
    state: BidState = BidState.LIVE
    end_reason: EndReason | None = None
    ended_us: int = 0
    accrued_pico: int = 0
    charged_credits: int = 0
    open_full_pico: int = 0
    open_allotted_cpu_us: int = 0
    settled_interval: int | None = None     # the interval whose batch ended its hold (None: not yet)
    release_only: bool = False              # after a refused charge: settle 0 (release the hold)
    refusal: str = ""                       # the Bank's code of a refused item
    accrued_until_us: int = 0               # open_* count its live time up to here (0: the market's through_us)

    @property
    def live(self) -> bool:
        return self.state is BidState.LIVE

    @property
    def owed_credits(self) -> int:
        """Whole credits owed through the last closed interval and not charged (after it ends: forgone)."""
        return self.accrued_pico // PICO_PER_CREDIT - self.charged_credits

    @property
    def forgone_credits(self) -> int:
        return self.owed_credits if self.settled_interval is not None else 0


@dataclass(frozen=True, slots=True)
class Charge:
    """One item of an interval's Bank batch: ChargeHold (``ends_bid`` False) or SettleHold (True)."""

    bid_id: str
    hold_id: str
    amount: int
    request_id: str
    ends_bid: bool
    interval: int

    def bank_request(self, payee_account_id: str) -> ChargeHold | SettleHold:
        kind = SettleHold if self.ends_bid else ChargeHold
        return kind(request_id=self.request_id, hold_id=self.hold_id, payee_account_id=payee_account_id,
                    amount=self.amount)


# ---------------------------------------------------------------------------------------------
# Allocation


class Share(NamedTuple):
    """One bid's share (a named tuple, not a frozen dataclass: ten thousand are made per allocation, at a
    third of the cost)."""
    bid_id: str
    rate_ucps: int
    ppm: int                 # floor(10^6 × rate / total): parts per million of the host
    quota_us: int            # CPU µs per period (capped mode), ≥ QUOTA_MIN_US
    quota_clamped: bool      # raised to QUOTA_MIN_US
    weight: int              # cpu_shares (work-conserving mode)


@dataclass(frozen=True, slots=True)
class Allocation:
    capacity_cpus: int
    period_us: int
    reserve_ucps: int
    total_ucps: int                       # Σ rates of the bids with a share
    shares: Mapping[str, Share]           # by bid id: live bids at or above the reserve
    below_reserve: tuple[str, ...]        # live bids without a share

    def share(self, bid_id: str) -> Fraction:
        """The exact share of the host (0 for a bid without one)."""
        share = self.shares.get(bid_id)
        return Fraction(share.rate_ucps, self.total_ucps) if share is not None else Fraction(0)


def _check_capacity(capacity_cpus: object) -> int:
    return _whole(capacity_cpus, "a host's capacity (CPUs)", 1, CAPACITY_CPUS_MAX)


def allocate(bids: Iterable[Bid], *, capacity_cpus: int, reserve_ucps: int,
             period_us: int = PERIOD_DEFAULT_US) -> Allocation:
    """The proportional shares of the live bids at or above the reserve price (exact integers)."""
    _check_capacity(capacity_cpus)
    _whole(reserve_ucps, "a reserve price (µcr/s)", 0, RATE_MAX_UCPS)
    _whole(period_us, "a scheduler period (µs)", PERIOD_MIN_US, PERIOD_MAX_US)
    live = BidState.LIVE
    selling = [(bid.bid_id, bid.rate_ucps) for bid in bids if bid.state is live]
    below = tuple(bid_id for bid_id, rate in selling if rate < reserve_ucps)
    if below:
        selling = [(bid_id, rate) for bid_id, rate in selling if rate >= reserve_ucps]
    total = sum(rate for _, rate in selling)
    host_us = capacity_cpus * period_us
    shares = {}
    for bid_id, rate in selling:
        quota = host_us * rate // total
        weight = CPU_SHARES_MAX * rate // total
        shares[bid_id] = Share(bid_id, rate, UCPS_PER_CREDIT * rate // total,
                               quota if quota >= QUOTA_MIN_US else QUOTA_MIN_US, quota < QUOTA_MIN_US,
                               weight if weight >= CPU_SHARES_MIN else CPU_SHARES_MIN)
    return Allocation(capacity_cpus, period_us, reserve_ucps, total, MappingProxyType(shares), below)


def price(allocation: Allocation) -> Fraction:
    """The host's current price: Σ rates / capacity, in µcr/s per CPU (exact; ``format_rate`` shows it)."""
    return Fraction(allocation.total_ucps, allocation.capacity_cpus)


def hour_average_price(samples: Iterable[tuple[int, Fraction | int]], *, now_us: int, interval_us: int,
                       window_us: int = HOUR_US) -> Fraction | None:
    """The average price over the intervals that ended in the last ``window_us`` before ``now_us``:
    ``samples`` are (interval index, its price). Every interval lasts the same, so it is the plain mean of
    the samples in the window; intervals without a sample (the auctioneer was down) are left out, not
    counted as 0. None when there is no sample in the window."""
    _whole(interval_us, "an interval (µs)", INTERVAL_MIN_US, INTERVAL_MAX_US)
    first = (now_us - window_us) // interval_us          # intervals k with (k+1)·I > now − window …
    last = now_us // interval_us                         # … and (k+1)·I ≤ now
    total, count = Fraction(0), 0
    for interval, value in samples:
        if first <= interval < last:
            total += value
            count += 1
    return total / count if count else None


# ---------------------------------------------------------------------------------------------
# The market: bids of one host and its open interval


@dataclass(frozen=True, slots=True)
class MarketConfig:
    host_id: str
    capacity_cpus: int
    reserve_ucps: int = 0
    interval_us: int = INTERVAL_DEFAULT_US
    period_us: int = PERIOD_DEFAULT_US

    def __post_init__(self) -> None:
        try:
            if not isinstance(self.host_id, str) or not _HOST_ID.fullmatch(self.host_id):
                raise _refuse(INVALID_ARGUMENT, f"a host id is 1-40 characters of A-Z a-z 0-9 . -, not "
                                                f"{self.host_id!r}")
            _check_capacity(self.capacity_cpus)
            _whole(self.reserve_ucps, "the reserve price (µcr/s)", 0, RATE_MAX_UCPS)
            _whole(self.interval_us, "the allocation interval (µs)", INTERVAL_MIN_US, INTERVAL_MAX_US)
            _whole(self.period_us, "the scheduler period (µs)", PERIOD_MIN_US, PERIOD_MAX_US)
        except DomainError as error:
            raise ConfigError(f"auctioneer: {error}") from None


@dataclass(frozen=True, slots=True)
class Market:
    config: MarketConfig
    bids: Mapping[str, Bid]                 # every bid not forgotten (live and ended)
    interval: int                           # the open interval k: its charges are not made yet
    through_us: int                         # live bids accrued up to here, k·I ≤ through_us ≤ (k+1)·I
    allocation: Allocation                  # in force now
    pending_interval: int | None = None     # the closed interval whose batch awaits the Bank's answers
    pending_charges: tuple[Charge, ...] = ()
    retired_holds: frozenset[str] = frozenset()   # holds of forgotten bids: they never fund a bid again
    cancels_due: tuple[tuple[str, int], ...] = ()  # (bid id, instant) cancels after the open interval's end

    @property
    def interval_end_us(self) -> int:
        return (self.interval + 1) * self.config.interval_us

    def bid(self, bid_id: str) -> Bid:
        bid = self.bids.get(bid_id)
        if bid is None:
            raise _refuse(UNKNOWN_BID, f"no bid {bid_id!r} on host {self.config.host_id}")
        return bid

    def live_bids(self) -> list[Bid]:
        return [bid for bid in self.bids.values() if bid.state is BidState.LIVE]


@dataclass(frozen=True, slots=True)
class Closing:
    """What closing interval ``interval`` gives: the new market, the batch to send (also kept as
    ``market.pending_charges``) and the allocation for the next interval (``market.allocation``)."""
    market: Market
    interval: int
    charges: tuple[Charge, ...]

    @property
    def allocation(self) -> Allocation:
        return self.market.allocation


def _allocation_of(config: MarketConfig, bids: Iterable[Bid]) -> Allocation:
    return allocate(bids, capacity_cpus=config.capacity_cpus, reserve_ucps=config.reserve_ucps,
                    period_us=config.period_us)


def open_market(config: MarketConfig, *, now_us: int) -> Market:
    """An empty market whose open interval is the one ``now_us`` is in."""
    _whole(now_us, "a time (µs)", 0, 2**62)
    return Market(config, MappingProxyType({}), now_us // config.interval_us, now_us, _allocation_of(config, ()))


def _accrual(bid: Bid, allocation: Allocation, through_us: int, until_us: int, *, lazy: bool) -> dict:
    """What accruing a bid up to ``until_us`` changes in it (nothing for an ended bid, nor — ``lazy`` — for
    a capped bid whose maximum duration has not passed): its open interval's full-use pico-credits and
    allotted CPU µs under ``allocation`` since it was last accrued, and its end when its maximum duration
    passed by then."""
    if bid.state is not BidState.LIVE or (lazy and bid.mode is Mode.CAPPED and bid.max_end_us > until_us):
        return {}
    from_us = bid.accrued_until_us or max(through_us, bid.started_us)
    changes: dict = {"accrued_until_us": until_us}
    live_us = min(until_us, bid.max_end_us) - from_us
    if live_us > 0 and bid.bid_id in allocation.shares:
        changes["open_full_pico"] = bid.open_full_pico + bid.rate_ucps * live_us
        changes["open_allotted_cpu_us"] = (bid.open_allotted_cpu_us + allocation.capacity_cpus * live_us
                                           * bid.rate_ucps // allocation.total_ucps)
    if bid.max_end_us <= until_us:
        changes.update(state=BidState.ENDED, end_reason=EndReason.MAX_DURATION, ended_us=bid.max_end_us)
    return changes


def _accrued(market: Market, until_us: int, *, lazy: bool = True, bid_id: str | None = None) -> dict[str, Bid]:
    """Every bid, the live ones accrued up to ``until_us`` under the allocation in force (``lazy``: not the
    capped ones, except ``bid_id``'s), those whose maximum duration passed by then ended (at their max end)."""
    allocation, through = market.allocation, market.through_us
    bids = dict(market.bids)
    for key, bid in market.bids.items():
        changes = _accrual(bid, allocation, through, until_us, lazy=lazy and key != bid_id)
        if changes:
            bids[key] = dataclasses.replace(bid, **changes)
    return bids


def _moved(market: Market, bids: dict[str, Bid], through_us: int, **changes) -> Market:
    return dataclasses.replace(market, bids=MappingProxyType(bids), through_us=through_us,
                               allocation=_allocation_of(market.config, bids.values()), **changes)


def _now_in_open_interval(market: Market, now_us: object) -> int:
    _whole(now_us, "a time (µs)", 0, 2**62)
    if now_us >= market.interval_end_us:
        raise _refuse(INTERVAL_NOT_CLOSED, f"interval {market.interval} of host {market.config.host_id} ended at "
                                           f"{market.interval_end_us} µs: close it before anything at {now_us} µs")
    return max(now_us, market.through_us)      # a clock that stepped back does not undo accrued time


def advance(market: Market, *, now_us: int) -> Market:
    """Accrue every live bid up to ``now_us`` (in the open interval) and end those whose maximum duration
    passed; the allocation is made again without them."""
    now_us = _now_in_open_interval(market, now_us)
    return _moved(market, _accrued(market, now_us), now_us)


def _cost_through(bid: Bid, rate_ucps: int, from_us: int, until_us: int) -> int:
    """Credits the bid will have been charged in all after paying at ``rate_ucps`` (full use) from
    ``from_us`` to ``until_us`` (clipped to its max end), beyond what it was charged already."""
    live_us = max(0, min(until_us, bid.max_end_us) - from_us)
    owed_pico = bid.accrued_pico + bid.open_full_pico + rate_ucps * live_us
    return owed_pico // PICO_PER_CREDIT - bid.charged_credits


def place_bid(market: Market, *, bid_id: str, owner_dn: str, hold_id: str, rate_ucps: int, max_duration_s: int,
              mode: Mode, hold_remaining: int, hold_expires_us: int, now_us: int) -> Market:
    """A new live bid from ``now_us``. Refused: a bad argument; a bid id or a hold already used (a hold
    funds one bid, ever — a cancelled or ended bid's hold cannot bid again); a rate below the reserve
    price; a hold that cannot pay the rest of the open interval, or expires before the end of the next
    one (the open interval's batch is sent during it); more than LIVE_BIDS_MAX live bids."""
    check_bid_id(bid_id)
    check_dn(owner_dn, "the bidder's DN")
    check_identifier(hold_id, "hold id")
    check_rate(rate_ucps)
    check_duration_s(max_duration_s)
    if not isinstance(mode, Mode):
        raise _refuse(INVALID_ARGUMENT, f"a bid's mode is one of {', '.join(m.value for m in Mode)}, not {mode!r}")
    _whole(hold_remaining, "a hold's remainder (credits)", 1, AMOUNT_MAX)
    _whole(hold_expires_us, "a hold's expiry (µs)", 0, 2**62)
    now_us = _now_in_open_interval(market, now_us)
    if bid_id in market.bids:
        raise _refuse(BID_EXISTS, f"bid {bid_id} exists already on host {market.config.host_id}")
    if hold_id in market.retired_holds or any(bid.hold_id == hold_id for bid in market.bids.values()):
        used = next((bid for bid in market.bids.values() if bid.hold_id == hold_id), None)
        what = (f"bid {used.bid_id} ({used.state.value}{', ' + used.end_reason.value if used.end_reason else ''})"
                if used is not None else "an earlier bid")
        raise _refuse(HOLD_ALREADY_BID, f"hold {hold_id} funds {what}: a hold funds one bid, and a cancelled "
                                        f"bid cannot bid again — make a new hold for a new bid")
    reserve = market.config.reserve_ucps
    if rate_ucps < reserve:
        raise _refuse(BELOW_RESERVE, f"a rate of {format_rate(rate_ucps)} credits/s is below host "
                                     f"{market.config.host_id}'s reserve price of {format_rate(reserve)} credits/s")
    if len(market.live_bids()) >= LIVE_BIDS_MAX:
        raise _refuse(TOO_MANY_BIDS, f"host {market.config.host_id} has {LIVE_BIDS_MAX:,} live bids, its most; "
                                     f"try another host")
    interval_us = market.config.interval_us
    expires_needed = (market.interval + SETTLE_MARGIN_INTERVALS) * interval_us
    if hold_expires_us < expires_needed:
        raise _refuse(HOLD_EXPIRES_TOO_SOON, f"hold {hold_id} expires at {hold_expires_us} µs; a bid needs its hold "
                                             f"until {expires_needed} µs at least (the end of the interval after "
                                             f"this one), and until its maximum end plus two intervals to run "
                                             f"its whole duration")
    bid = Bid(bid_id, owner_dn, hold_id, rate_ucps, mode, now_us, now_us + max_duration_s * US_PER_S,
              hold_expires_us, hold_remaining, accrued_until_us=now_us)
    cost = _cost_through(bid, rate_ucps, now_us, market.interval_end_us)
    if cost > hold_remaining:
        raise _refuse(INSUFFICIENT_HOLD, f"hold {hold_id} has {hold_remaining} credits left; this interval's rest "
                                         f"costs {cost} at {format_rate(rate_ucps)} credits/s: a larger hold or a "
                                         f"lower rate")
    bids = _accrued(market, now_us)
    bids[bid_id] = bid
    return _moved(market, bids, now_us)


def _live_bid(market: Market, bids: Mapping[str, Bid], bid_id: str, action: str) -> Bid:
    market.bid(bid_id)
    bid = bids[bid_id]
    if bid.state is not BidState.LIVE:
        raise _refuse(BID_ENDED, f"bid {bid_id} ended ({bid.end_reason.value if bid.end_reason else 'ended'} at "
                                 f"{bid.ended_us} µs): it cannot be {action}")
    return bid


def change_bid(market: Market, bid_id: str, *, rate_ucps: int, now_us: int) -> Market:
    """The bid's new rate from ``now_us`` (what it owes at its old rate until then is kept). Refused as
    :func:`place_bid` refuses a rate (bad, below the reserve, unpayable by the hold for the open interval's
    rest) and for a bid that ended."""
    check_rate(rate_ucps)
    now_us = _now_in_open_interval(market, now_us)
    bids = _accrued(market, now_us, bid_id=bid_id)
    bid = _live_bid(market, bids, bid_id, "changed")
    reserve = market.config.reserve_ucps
    if rate_ucps < reserve:
        raise _refuse(BELOW_RESERVE, f"a rate of {format_rate(rate_ucps)} credits/s is below host "
                                     f"{market.config.host_id}'s reserve price of {format_rate(reserve)} credits/s")
    cost = _cost_through(bid, rate_ucps, now_us, market.interval_end_us)
    if cost > bid.hold_remaining:
        raise _refuse(INSUFFICIENT_HOLD, f"bid {bid_id}'s hold has {bid.hold_remaining} credits left; at "
                                         f"{format_rate(rate_ucps)} credits/s this interval costs {cost}: a lower "
                                         f"rate, or a new bid on a larger hold")
    bids[bid_id] = dataclasses.replace(bid, rate_ucps=rate_ucps)
    return _moved(market, bids, now_us)


def cancel_bid(market: Market, bid_id: str, *, now_us: int) -> Market:
    """The bid ends at ``now_us``; it pays until then, settled in this interval's batch. After the open
    interval's end while its predecessor's batch awaits the Bank (the open interval cannot be closed yet),
    the cancel is kept in ``cancels_due`` and applied at ``now_us`` once the interval holding that instant
    is opened (:func:`close_interval`); cancelling again changes nothing."""
    _whole(now_us, "a time (µs)", 0, 2**62)
    if now_us >= market.interval_end_us and market.pending_interval is not None:
        bid = _live_bid(market, market.bids, bid_id, "cancelled")
        if bid.max_end_us <= now_us or any(due == bid_id for due, _ in market.cancels_due):
            return market                  # it ends by then anyway, or it is cancelled already
        return dataclasses.replace(market, cancels_due=market.cancels_due + ((bid_id, now_us),))
    now_us = _now_in_open_interval(market, now_us)
    bids = _accrued(market, now_us, bid_id=bid_id)
    bid = _live_bid(market, bids, bid_id, "cancelled")
    bids[bid_id] = dataclasses.replace(bid, state=BidState.ENDED, end_reason=EndReason.CANCELLED, ended_us=now_us)
    return _moved(market, bids, now_us)


def close_interval(market: Market, *, interval: int, used_cpu_us: Mapping[str, int] | None = None) -> Closing:
    """Close the open interval k = ``interval`` at its end (k+1)·I: every bid's charge for it, the bids
    that cannot go on into k+1 ended (hold exhausted or expiring, max duration), the batch for the Bank
    and the allocation for k+1. ``used_cpu_us``: the CPU µs each pay-for-use bid's VM used in k (required
    for those that were allotted any). Refused: another interval than the open one (an earlier one is
    closed: send its kept batch again), the previous batch's answers not yet recorded."""
    config = market.config
    if interval != market.interval:
        raise _refuse(WRONG_INTERVAL, f"host {config.host_id}'s open interval is {market.interval}, not "
                                      f"{interval!r}" + (": an interval's batch is made once; send the kept batch "
                                                         "again" if isinstance(interval, int)
                                                         and interval < market.interval else ""))
    if market.pending_interval is not None:
        raise _refuse(BATCH_UNANSWERED, f"host {config.host_id}: the Bank's answers to interval "
                                        f"{market.pending_interval}'s batch are not recorded; send it (again) first")
    used_cpu_us = used_cpu_us or {}
    end_us = market.interval_end_us
    interval_us = config.interval_us
    allocation, through = market.allocation, market.through_us
    bids = dict(market.bids)
    charges = []
    for bid_id in sorted(bids):
        bid = bids[bid_id]
        if bid.settled_interval is not None:
            continue
        changes = _accrual(bid, allocation, through, end_us, lazy=False)     # merged into one replace below
        state = changes.get("state", bid.state)
        full = changes.get("open_full_pico", bid.open_full_pico)
        allotted = changes.get("open_allotted_cpu_us", bid.open_allotted_cpu_us)
        if bid.mode is Mode.PAY_FOR_USE and full:
            used = used_cpu_us.get(bid_id)
            if type(used) is not int or used < 0:
                raise _refuse(USAGE_MISSING, f"pay-for-use bid {bid_id} needs the CPU µs its VM used in interval "
                                             f"{interval} (a whole number ≥ 0), not {used!r}")
            full = full * min(used, allotted) // allotted if allotted else 0
        accrued = bid.accrued_pico + full
        charge = accrued // PICO_PER_CREDIT - bid.charged_credits
        changes.update(accrued_pico=accrued, open_full_pico=0, open_allotted_cpu_us=0)
        if state is BidState.LIVE:
            left = bid.hold_remaining - charge
            next_cost = (accrued + bid.rate_ucps * (min(end_us + interval_us, bid.max_end_us) - end_us)
                         ) // PICO_PER_CREDIT - bid.charged_credits - charge
            if bid.hold_expires_us < (interval + 1 + SETTLE_MARGIN_INTERVALS) * interval_us:
                changes.update(state=BidState.ENDED, end_reason=EndReason.HOLD_EXPIRING, ended_us=end_us)
            elif left < 1 or next_cost > left:
                changes.update(state=BidState.ENDED, end_reason=EndReason.HOLD_EXHAUSTED, ended_us=end_us)
        ends = changes.get("state", state) is BidState.ENDED
        if ends and bid.release_only:
            charge = 0
        invariant(0 <= charge <= bid.hold_remaining, f"bid {bid_id}'s charge {charge} is within its hold's "
                                                     f"remainder {bid.hold_remaining}")
        if ends or charge:
            charges.append(Charge(bid_id, bid.hold_id, charge, request_id(config.host_id, bid_id, interval), ends,
                                  interval))
            changes.update(charged_credits=bid.charged_credits + charge, hold_remaining=bid.hold_remaining - charge)
        if ends:
            changes["settled_interval"] = interval
        bids[bid_id] = dataclasses.replace(bid, **changes)
    batch = tuple(charges)
    closed = _moved(market, bids, end_us, interval=interval + 1,
                    pending_interval=interval if batch else None, pending_charges=batch, cancels_due=())
    for bid_id, at_us in market.cancels_due:   # kept cancels: applied at their instant once its interval is open
        if at_us >= closed.interval_end_us:
            closed = dataclasses.replace(closed, cancels_due=closed.cancels_due + ((bid_id, at_us),))
        elif bid_id in closed.bids and closed.bids[bid_id].live and closed.bids[bid_id].max_end_us > at_us:
            closed = cancel_bid(closed, bid_id, now_us=at_us)
    return Closing(closed, interval, batch)


def in_force(market: Market) -> tuple[list[Bid], Allocation]:
    """What the hypervisor must enforce now: the live bids but those cancelled while the market waits for
    the Bank (``cancels_due``: their VMs go at once, as they pay only until their cancel), and their
    allocation."""
    if not market.cancels_due:
        return market.live_bids(), market.allocation
    due = {bid_id for bid_id, _ in market.cancels_due}
    bids = [bid for bid in market.live_bids() if bid.bid_id not in due]
    return bids, _allocation_of(market.config, bids)


def batch_applied(market: Market, *, interval: int, outcomes: Mapping[str, str | None], now_us: int) -> Market:
    """Record the Bank's answers to interval ``interval``'s batch: ``outcomes`` maps every item's request
    id to None (applied) or the Bank's refusal code. A refused ChargeHold ends its bid at ``now_us``
    (hold-refused): its charge is taken back and a SettleHold of 0 releases its hold in the next batch,
    unless the hold is gone (HoldEnded, HoldExpired, UnknownHold: no item). A refused SettleHold's charge
    is taken back and forgone. Answers that come after the open interval ended (a slow Bank) are recorded
    at its end, so that it can be closed next."""
    if market.pending_interval is None or interval != market.pending_interval:
        raise _refuse(WRONG_INTERVAL, f"host {market.config.host_id} awaits no answers for interval {interval!r}"
                                      + (f" (it awaits interval {market.pending_interval}'s)"
                                         if market.pending_interval is not None else ""))
    missing = [charge.request_id for charge in market.pending_charges if charge.request_id not in outcomes]
    if missing:
        raise _refuse(INVALID_ARGUMENT, f"the Bank's answers to interval {interval}'s batch lack {len(missing)} "
                                        f"of its items (first {missing[0]})")
    _whole(now_us, "a time (µs)", 0, 2**62)
    now_us = min(max(now_us, market.through_us), market.interval_end_us)   # late answers: at the interval's end
    bids = _accrued(market, now_us, lazy=False)
    for charge in market.pending_charges:
        code = outcomes[charge.request_id]
        if code is None:
            continue
        bid = bids[charge.bid_id]
        changes = dict(charged_credits=bid.charged_credits - charge.amount,
                       hold_remaining=bid.hold_remaining + charge.amount, refusal=str(code)[:100])
        if not charge.ends_bid:
            if bid.state is BidState.LIVE:
                changes.update(state=BidState.ENDED, end_reason=EndReason.HOLD_REFUSED, ended_us=now_us)
            if code in HOLD_GONE_CODES:
                changes["settled_interval"] = interval
            else:
                changes["release_only"] = True
        bids[charge.bid_id] = dataclasses.replace(bid, **changes)
    return _moved(market, bids, now_us, pending_interval=None, pending_charges=())


def forget_settled(market: Market) -> Market:
    """Drop the bids whose hold is settled (their holds kept in ``retired_holds``: never bid again)."""
    settled = {bid_id for bid_id, bid in market.bids.items() if bid.settled_interval is not None
               and bid.settled_interval != market.pending_interval}
    if not settled:
        return market
    bids = {bid_id: bid for bid_id, bid in market.bids.items() if bid_id not in settled}
    return dataclasses.replace(market, bids=MappingProxyType(bids),
                               retired_holds=market.retired_holds | {market.bids[bid_id].hold_id for bid_id in settled})


def reconfigure(market: Market, config: MarketConfig, *, now_us: int) -> Market:
    """The host's configuration changed (capacity, reserve price, scheduler period; a restart with a new
    ``[auctioneer]`` section): every live bid accrued up to ``now_us`` under the allocation it had, then the
    new configuration and its allocation (a bid now below the reserve keeps running without a share, paying
    nothing, until it ends). The host id and the interval cannot change under a market: its batches' request
    ids and its intervals are made from them."""
    if config.host_id != market.config.host_id or config.interval_us != market.config.interval_us:
        raise ConfigError(f"auctioneer: the host id and the interval of host {market.config.host_id}'s market cannot "
                          f"change ({market.config.host_id}, {market.config.interval_us} µs → {config.host_id}, "
                          f"{config.interval_us} µs): end its bids first")
    now_us = _now_in_open_interval(market, now_us)
    bids = _accrued(market, now_us, lazy=False)
    return dataclasses.replace(market, config=config, bids=MappingProxyType(bids), through_us=now_us,
                               allocation=_allocation_of(config, bids.values()))
