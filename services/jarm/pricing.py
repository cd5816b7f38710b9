"""The Price Authority's pure core: what a job costs, from a site's price table. No I/O.

As DGAS's Price Authority does, a site prices its partitions (queues) and QoS; as GridBank asks,
a price table has several metrics. The store, the SOAP operations (Quote, GetPriceTable,
SetPriceTable) and who may call them (``policy.py``) are around this module, not in it.

Prices and units
    A price is an integer number of **micro-credits per price unit** (``PRICE_SCALE`` = 10**6 per
    credit). Quantities are counted in a base unit, exactly as Slurm gives them:

    ==========  ===================================  =================  ==================
    metric      quantity                             base unit          price unit
    ==========  ===================================  =================  ==================
    core-wall   cores × wall time                    core-second        core-hour (3,600)
    cpu         CPU time (sacct's TotalCPU)          CPU-millisecond    CPU-hour (3.6 M)
    memory      memory × wall time                   MB-second          GB-hour (3,686,400:
                                                                        1 GB = 1024 MB)
    gpu         GPUs (TRES gres/gpu) × wall time     GPU-second         GPU-hour (3,600)
    job         one per job: a fee                   job                job (1)
    ==========  ===================================  =================  ==================

    A metric's exact amount is quantity × price / (base units per price unit × 10**6) credits
    (× the load multiplier for the resource metrics, below).
    Every amount is kept as an integer numerator over one common denominator, so the breakdown's
    lines add up to the total exactly; nothing is rounded before the end.

The one rounding
    The exact total is rounded **once, half up, to whole credits** (an exact half goes up:
    2.5 → 3, 2.4999… → 2). A line of the breakdown is never rounded.

Load-dependent pricing (DGAS)
    A rate may carry ``LoadPricing``: a multiplier of its **resource** metrics (core-wall, cpu,
    memory, gpu; the per-job fee is not scaled) from the partition's occupancy, an exact fraction
    bounded by the rate's least and greatest multipliers. It is fixed when the job is reserved
    (``PricingBasis.multiplier``) and the charge uses it whatever the load is then.

Versions
    A site's tables are versioned (1, 2, 3…) and each is in force from its ``effective_us`` until
    the next one's. A job is priced by the version in force when it was reserved: the caller
    keeps the ``PricingBasis`` (site, version, multiplier) with the reservation, and
    ``charge(table, usage, basis)`` refuses any other version. ``check_successor`` decides whether
    a new version may follow the last one (the next number; in force no earlier than now and
    later than its predecessor: a price change is never retroactive).

Estimates, charges and quotes
    ``quote(table, request)`` estimates a request — every core busy for its whole time limit, its
    memory and GPUs for that time — with the breakdown per metric. A quote can be **guaranteed**
    for up to ``QUOTE_GUARANTEE_S_MAX``: until ``valid_until_us``, ``honour`` gives a reservation
    the quote's basis (its version and multiplier) for the quoted request or a smaller one (same
    partition and QoS, no quantity larger). ``charge(table, usage, basis)`` prices what ``sacct``
    measured: core-wall and gpu from the allocation × elapsed time, cpu from TotalCPU, memory
    from the allocation (or MaxRSS: the table's ``memory_basis``) × elapsed time. Both are
    monotone: more of any quantity never costs less.

Limits
    The inputs' limits are in ``types.py``; a cost above ``COST_CREDITS_MAX`` (the Bank's largest
    amount, 10**15 credits) is refused with ``CostTooLarge``.

Errors (``DomainError`` codes)
    InvalidPriceTable, InvalidJobRequest, InvalidUsage, InvalidOccupancy, InvalidQuote (a value
    refused when it is made, ``types.py``); UnknownPartition, UnknownQos (the table has no rate for
    them); OccupancyRequired (a load-priced rate quoted without the partition's occupancy);
    PriceTableNotInForce, NoPriceTable, PriceTableMismatch (not the version the basis names),
    PriceTableVersion (a new version that does not follow the last one); CostTooLarge;
    QuoteNotGuaranteed, QuoteExpired, QuoteMismatch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from gridcredit.errors import DomainError, invariant

from .types import (INVALID_PRICE_TABLE, INVALID_QUOTE, ONE, PERMILLE, Cost, CostLine, JobRequest, LoadPricing,
                    MemoryBasis, Metric, Multiplier, Occupancy, PriceTable, PricingBasis, Quote, Rate, Usage,
                    check_quote_id)

UNKNOWN_PARTITION = "UnknownPartition"
UNKNOWN_QOS = "UnknownQos"
OCCUPANCY_REQUIRED = "OccupancyRequired"
PRICE_TABLE_NOT_IN_FORCE = "PriceTableNotInForce"
NO_PRICE_TABLE = "NoPriceTable"
PRICE_TABLE_MISMATCH = "PriceTableMismatch"
PRICE_TABLE_VERSION = "PriceTableVersion"
COST_TOO_LARGE = "CostTooLarge"
QUOTE_NOT_GUARANTEED = "QuoteNotGuaranteed"
QUOTE_EXPIRED = "QuoteExpired"
QUOTE_MISMATCH = "QuoteMismatch"

PRICE_SCALE = 10**6                              # micro-credits per credit
COST_CREDITS_MAX = 10**15                        # the Bank's largest amount (services/bank/ledger.py AMOUNT_MAX)
QUOTE_GUARANTEE_S_MAX = 7 * 86_400
US_PER_S = 1_000_000
_LISTED_MAX = 10                                 # names an error message lists at most


@dataclass(frozen=True, slots=True)
class MetricUnit:
    base_per_price_unit: int                     # how many base units make one price unit
    base_unit: str
    price_unit: str


METRIC_UNITS = {
    Metric.CORE_WALL: MetricUnit(3_600, "core-second", "core-hour"),
    Metric.CPU: MetricUnit(3_600_000, "CPU-millisecond", "CPU-hour"),
    Metric.MEMORY: MetricUnit(1024 * 3_600, "MB-second", "GB-hour"),
    Metric.GPU: MetricUnit(3_600, "GPU-second", "GPU-hour"),
    Metric.JOB: MetricUnit(1, "job", "job"),
}
RESOURCE_METRICS = frozenset({Metric.CORE_WALL, Metric.CPU, Metric.MEMORY, Metric.GPU})   # scaled by the load
BASE_LCM = math.lcm(*(unit.base_per_price_unit for unit in METRIC_UNITS.values()))       # 460,800,000
EXACT_DENOMINATOR = PRICE_SCALE * BASE_LCM       # a cost's denominator at the multiplier 1


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator/denominator`` (≥ 0) to the nearest whole number, an exact half up."""
    invariant(numerator >= 0 and denominator > 0, "round_half_up takes a non-negative fraction")
    return (2 * numerator + denominator) // (2 * denominator)


def rate_for(table: PriceTable, partition: str, qos: str) -> Rate:
    """The table's rate for (partition, QoS), or a refusal naming what the table has."""
    rate = table.rate(partition, qos)
    if rate is not None:
        return rate
    partitions = sorted({rate.partition for rate in table.rates})
    if partition not in partitions:
        raise DomainError(f"the price table of {table.site} (version {table.version}) has no partition "
                          f"{partition!r}; it prices {_listing(partitions)}", UNKNOWN_PARTITION)
    qoses = sorted(rate.qos for rate in table.rates if rate.partition == partition)
    raise DomainError(f"the price table of {table.site} (version {table.version}) has no QoS {qos!r} in "
                      f"partition {partition!r}; it prices {_listing(qoses)} there", UNKNOWN_QOS)


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_LISTED_MAX])
    return shown + (f" and {len(names) - _LISTED_MAX} more" if len(names) > _LISTED_MAX else "")


def load_multiplier(load: LoadPricing | None, occupancy: Occupancy | None) -> Multiplier:
    """The exact multiplier of a rate's load pricing at ``occupancy`` (1 without load pricing)."""
    if load is None:
        return ONE
    if occupancy is None:
        raise DomainError("this partition's prices depend on its load: the quote needs the partition's "
                          "occupancy (used and capacity)", OCCUPANCY_REQUIRED)
    used_permille_scaled = PERMILLE * occupancy.used          # occupancy × 1000 × capacity
    capacity = occupancy.capacity
    if used_permille_scaled <= load.low_permille * capacity:
        numerator, denominator = load.min_permille, PERMILLE
    elif used_permille_scaled >= load.high_permille * capacity:
        numerator, denominator = load.max_permille, PERMILLE
    else:
        span = load.high_permille - load.low_permille
        numerator = (load.min_permille * span * capacity
                     + (load.max_permille - load.min_permille) * (used_permille_scaled - load.low_permille * capacity))
        denominator = PERMILLE * span * capacity
    divisor = math.gcd(numerator, denominator)
    return Multiplier(numerator // divisor, denominator // divisor)


def request_quantities(request: JobRequest) -> dict[Metric, int]:
    """The base-unit quantities of a request used to the full: every core busy for its time limit."""
    return {
        Metric.CORE_WALL: request.cores * request.time_limit_s,
        Metric.CPU: request.cores * request.time_limit_s * 1000,
        Metric.MEMORY: request.memory_mb * request.time_limit_s,
        Metric.GPU: request.gpus * request.time_limit_s,
        Metric.JOB: 1,
    }


def usage_quantities(table: PriceTable, usage: Usage) -> dict[Metric, int]:
    """The base-unit quantities of a measured job (memory by the table's ``memory_basis``)."""
    memory_mb = usage.memory_mb if table.memory_basis is MemoryBasis.ALLOCATED else usage.max_rss_mb
    return {
        Metric.CORE_WALL: usage.cores * usage.elapsed_s,
        Metric.CPU: usage.total_cpu_ms,
        Metric.MEMORY: memory_mb * usage.elapsed_s,
        Metric.GPU: usage.gpus * usage.elapsed_s,
        Metric.JOB: 1,
    }


def price(rate: Rate, quantities: dict[Metric, int], multiplier: Multiplier) -> Cost:
    """The cost of ``quantities`` at ``rate`` and ``multiplier``: every line exact, over one
    denominator, and the total rounded once (the only arithmetic on money in this module)."""
    denominator = EXACT_DENOMINATOR * multiplier.denominator
    lines = []
    for metric in Metric:
        quantity = quantities[metric]
        invariant(type(quantity) is int and quantity >= 0, f"the {metric.value} quantity is a count")  # noqa: E721
        price_micro = rate.price_micro(metric)
        scale = multiplier.numerator if metric in RESOURCE_METRICS else multiplier.denominator
        numerator = quantity * price_micro * (BASE_LCM // METRIC_UNITS[metric].base_per_price_unit) * scale
        lines.append(CostLine(metric, quantity, price_micro, numerator))
    total = sum(line.numerator for line in lines)
    credits = round_half_up(total, denominator)
    if credits > COST_CREDITS_MAX:
        raise DomainError(f"the cost, {credits:,} credits, is more than the {COST_CREDITS_MAX:,} credits one "
                          f"job may cost: ask for less, or check the prices", COST_TOO_LARGE)
    return Cost(tuple(lines), total, denominator, credits, multiplier)


def basis_for(table: PriceTable, request: JobRequest, *, now_us: int,
              occupancy: Occupancy | None = None) -> PricingBasis:
    """The basis a reservation made now keeps: ``table`` (the version in force now) and the load
    multiplier of the request's partition at ``occupancy``, fixed from now on."""
    if table.effective_us > now_us:
        raise DomainError(f"version {table.version} of {table.site}'s prices is in force only from "
                          f"{table.effective_us} µs, after now ({now_us} µs)", PRICE_TABLE_NOT_IN_FORCE)
    rate = rate_for(table, request.partition, request.qos)
    return PricingBasis(table.site, table.version, request.partition, request.qos,
                        load_multiplier(rate.load, occupancy))


def _check_basis(table: PriceTable, basis: PricingBasis) -> None:
    if (table.site, table.version) != (basis.site, basis.version):
        raise DomainError(f"this job is priced by version {basis.version} of {basis.site}'s prices, not by version "
                          f"{table.version} of {table.site}'s", PRICE_TABLE_MISMATCH)


def estimate(table: PriceTable, request: JobRequest, basis: PricingBasis) -> Cost:
    """The estimate of ``request`` at ``basis`` (``table`` must be the basis's version)."""
    _check_basis(table, basis)
    if (request.partition, request.qos) != (basis.partition, basis.qos):
        raise DomainError(f"the basis is for partition {basis.partition!r}, QoS {basis.qos!r}, not for "
                          f"{request.partition!r}, {request.qos!r}", PRICE_TABLE_MISMATCH)
    rate = rate_for(table, request.partition, request.qos)
    return price(rate, request_quantities(request), basis.multiplier)


def quote(table: PriceTable, request: JobRequest, *, now_us: int, occupancy: Occupancy | None = None,
          quote_id: str = "", guarantee_s: int = 0) -> Quote:
    """A cost estimate of ``request`` by ``table`` (the version in force now), with its breakdown.

    ``guarantee_s`` > 0 guarantees it until ``now_us`` + that many seconds, under ``quote_id``
    (the caller's: a request id or one it generated)."""
    if type(guarantee_s) is not int or not 0 <= guarantee_s <= QUOTE_GUARANTEE_S_MAX:  # noqa: E721
        raise DomainError(f"a quote is guaranteed for 0..{QUOTE_GUARANTEE_S_MAX:,} s, not {guarantee_s!r}",
                          INVALID_QUOTE)
    if guarantee_s or quote_id:
        check_quote_id(quote_id)
    basis = basis_for(table, request, now_us=now_us, occupancy=occupancy)
    cost = estimate(table, request, basis)
    valid_until_us = now_us + guarantee_s * US_PER_S if guarantee_s else None
    return Quote(quote_id, basis, request, cost, now_us, valid_until_us)


def honour(quote: Quote, request: JobRequest, *, site: str, now_us: int) -> PricingBasis:
    """The basis a reservation of ``request`` gets from a guaranteed ``quote``: refused when the quote
    is not guaranteed, has expired (it is valid up to and including ``valid_until_us``), is another
    site's, or does not cover the request (same partition and QoS; no quantity above the quoted)."""
    if not quote.guaranteed:
        raise DomainError(f"quote {quote.quote_id or '(without id)'} is an estimate, not a guarantee: ask for a "
                          f"guaranteed quote", QUOTE_NOT_GUARANTEED)
    if now_us > quote.valid_until_us:
        raise DomainError(f"quote {quote.quote_id} was guaranteed until {quote.valid_until_us} µs; it is "
                          f"{now_us} µs now: ask for a new quote", QUOTE_EXPIRED)
    if quote.basis.site != site:
        raise DomainError(f"quote {quote.quote_id} is for site {quote.basis.site}, not {site}", QUOTE_MISMATCH)
    quoted = quote.request
    for name in ("partition", "qos"):
        if getattr(request, name) != getattr(quoted, name):
            raise DomainError(f"quote {quote.quote_id} is for {name} {getattr(quoted, name)!r}, the job asks for "
                              f"{getattr(request, name)!r}", QUOTE_MISMATCH)
    for name in ("cores", "time_limit_s", "memory_mb", "gpus", "nodes"):
        if getattr(request, name) > getattr(quoted, name):
            raise DomainError(f"quote {quote.quote_id} covers {name} {getattr(quoted, name):,}, the job asks for "
                              f"{getattr(request, name):,}", QUOTE_MISMATCH)
    return quote.basis


def charge(table: PriceTable, usage: Usage, basis: PricingBasis) -> Cost:
    """The cost of what a job used, by the version and the multiplier its reservation kept
    (``basis``), at the rate of the partition and QoS it ran in."""
    _check_basis(table, basis)
    rate = rate_for(table, usage.partition, usage.qos)
    return price(rate, usage_quantities(table, usage), basis.multiplier)


def in_force(tables: Iterable[PriceTable], at_us: int) -> PriceTable:
    """The version of a site's tables in force at ``at_us``: the latest effective by then."""
    found: PriceTable | None = None
    for table in tables:
        if table.effective_us <= at_us and (found is None or table.version > found.version):
            found = table
    if found is None:
        raise DomainError(f"no price table is in force at {at_us} µs: a price administrator must set one",
                          NO_PRICE_TABLE)
    return found


def check_successor(previous: PriceTable | None, table: PriceTable, *, now_us: int) -> None:
    """May ``table`` become the site's next version, after ``previous`` (None: the first)?

    It must be the next number (1 first), of the same site, in force no earlier than ``now_us``
    and later than ``previous`` — prices already in force are never changed after the fact."""
    expected = 1 if previous is None else previous.version + 1
    if table.version != expected:
        raise DomainError(f"the next version of {table.site}'s prices is {expected}, not {table.version} "
                          f"(another change may have come first: read the table again)", PRICE_TABLE_VERSION)
    if previous is not None and previous.site != table.site:
        raise DomainError(f"a table of site {table.site} cannot follow one of site {previous.site}",
                          INVALID_PRICE_TABLE)
    if table.effective_us < now_us:
        raise DomainError(f"version {table.version} would be in force from {table.effective_us} µs, before now "
                          f"({now_us} µs): prices are never changed after the fact", INVALID_PRICE_TABLE)
    if previous is not None and table.effective_us <= previous.effective_us:
        raise DomainError(f"version {table.version} must come into force after version {previous.version} "
                          f"({previous.effective_us} µs), not at {table.effective_us} µs", INVALID_PRICE_TABLE)
