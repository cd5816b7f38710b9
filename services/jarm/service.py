"""The SOAP face of the JARM: thin operations over the Price Authority (pricing.py, store.py).

Each operation: the policy decides (``policy.py``) → its arguments are decoded into the core's
types (each valid by construction, ``types.py``) → the core prices (``pricing.py``) → the store
keeps or finds (``store.py``, one transaction) → the answer is encoded. Prices are integer
micro-credits per price unit (``price_micro``), times integer µs since the epoch (``*_us``), a
cost whole credits (``credits``) with its exact amount ``exact_numerator / exact_denominator``
(``xs:integer``: the exact denominators exceed ``xs:long``) and one line per metric.

    SetPriceTable   the next version of the site's prices (price administrators)
    GetPriceTable   the version in force now, or at ``at_us``, or version ``version``
    Quote           the cost of a request by the version in force now; with ``guarantee_s`` a
                    guaranteed quote kept under ``quote_id`` until ``valid_until_us``

The partition's occupancy for load-priced rates is the site's to measure, never the caller's to
state (a caller naming a low load would lock in the least multiplier): a Quote takes none, and a
load-priced rate is refused with ``OccupancyRequired`` until the JARM reads it from Slurm.
"""
from __future__ import annotations

from spyne import Array, Boolean, ComplexModel, Integer, Long, Unicode

from gridcredit.errors import DomainError
from gridcredit.timeunits import now_us
from gridcredit.wiretypes import complex_model, wire_values

from . import policy, pricing
from .store import PriceChange, StoredTable
from .types import (INVALID_PRICE_TABLE, INVALID_QUOTE, RATES_MAX, JobRequest, LoadPricing, MemoryBasis, Metric, Quote,
                    Rate)
from ..common import GridcreditService, operation, principal_of, runtime_of, whoami_operation

NAMESPACE = "urn:gridcredit:jarm:1"
SERVICE_NAME = "Jarm"

Required = {"min_occurs": 1, "nillable": False}
Optional = {"min_occurs": 0}


class PriceInfo(ComplexModel):
    """The price of one metric: micro-credits per its price unit (core-hour, CPU-hour, GB-hour, GPU-hour, job)."""
    __namespace__ = NAMESPACE
    _type_info = [("metric", Unicode(**Required)), ("price_micro", Long(**Required))]


LoadPricingInfo = complex_model(LoadPricing, "LoadPricingInfo", NAMESPACE)


class RateInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("partition", Unicode(**Required)), ("qos", Unicode(**Required)), ("prices", Array(PriceInfo)),
                  ("load", LoadPricingInfo.customize(**Optional))]


class PriceTableInfo(ComplexModel):
    """A version of a site's prices. In SetPriceTable ``site`` defaults to the JARM's, ``version`` to
    the next, ``effective_us`` to now and ``memory_basis`` to ``allocated``; ``set_by``/``set_us``
    are the service's (in answers)."""
    __namespace__ = NAMESPACE
    _type_info = [("site", Unicode(**Optional)), ("version", Long(**Optional)), ("effective_us", Long(**Optional)),
                  ("memory_basis", Unicode(**Optional)), ("rates", Array(RateInfo)),
                  ("set_by", Unicode(**Optional)), ("set_us", Long(**Optional))]


class PriceTableReceipt(ComplexModel):
    """The version stored; ``replayed``: it was stored before, by this same change (a retry)."""
    __namespace__ = NAMESPACE
    _type_info = [("table", PriceTableInfo.customize(**Required)), ("replayed", Boolean(**Required))]


class JobRequestInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("partition", Unicode(**Required)), ("qos", Unicode(**Required)), ("cores", Long(**Required)),
                  ("time_limit_s", Long(**Required)), ("memory_mb", Long(**Required)), ("gpus", Long(**Required)),
                  ("nodes", Long(**Required))]


class CostLineInfo(ComplexModel):
    """One metric: ``quantity`` in its base unit, its price, and its exact amount
    ``numerator / exact_denominator`` credits (never rounded)."""
    __namespace__ = NAMESPACE
    _type_info = [("metric", Unicode(**Required)), ("quantity", Long(**Required)), ("price_micro", Long(**Required)),
                  ("numerator", Integer(**Required))]


class QuoteInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("quote_id", Unicode(**Optional)), ("site", Unicode(**Required)), ("version", Long(**Required)),
                  ("partition", Unicode(**Required)), ("qos", Unicode(**Required)),
                  ("multiplier_numerator", Long(**Required)), ("multiplier_denominator", Long(**Required)),
                  ("request", JobRequestInfo.customize(**Required)), ("credits", Long(**Required)),
                  ("exact_numerator", Integer(**Required)), ("exact_denominator", Integer(**Required)),
                  ("lines", Array(CostLineInfo)), ("issued_us", Long(**Required)),
                  ("valid_until_us", Long(**Optional)), ("replayed", Boolean(**Required))]


# -- decoding -------------------------------------------------------------------------------------


def _enum(kind, text, what: str):
    try:
        return kind(text)
    except ValueError:
        raise DomainError(f"{what} {text!r} is not one of {', '.join(member.value for member in kind)}",
                          INVALID_PRICE_TABLE) from None


def _rate(info: RateInfo) -> Rate:
    if info is None:
        raise DomainError("a rate is empty: give its partition, QoS and prices", INVALID_PRICE_TABLE)
    prices = [(_enum(Metric, price.metric, "the metric"), price.price_micro) for price in info.prices or ()]
    load = None if info.load is None else LoadPricing(**{name: getattr(info.load, name) for name in (
        "low_permille", "high_permille", "min_permille", "max_permille")})
    return Rate(info.partition, info.qos, tuple(prices), load)


def _change(info: PriceTableInfo, site: str) -> PriceChange:
    if info is None:
        raise DomainError("no price table was sent", INVALID_PRICE_TABLE)
    if info.site not in (None, site):
        raise DomainError(f"this JARM keeps the prices of site {site}, not of {info.site}", INVALID_PRICE_TABLE)
    rates = info.rates or []
    if len(rates) > RATES_MAX:
        raise DomainError(f"a price table has at most {RATES_MAX} rates, not {len(rates)}",
                          INVALID_PRICE_TABLE)
    memory_basis = MemoryBasis.ALLOCATED if info.memory_basis is None else _enum(
        MemoryBasis, info.memory_basis, "the memory basis")
    return PriceChange(site, tuple(_rate(rate) for rate in rates), memory_basis, info.version, info.effective_us)


# -- encoding -------------------------------------------------------------------------------------


def _table_info(stored: StoredTable) -> PriceTableInfo:
    table = stored.table
    return PriceTableInfo(
        site=table.site, version=table.version, effective_us=table.effective_us,
        memory_basis=table.memory_basis.value, set_by=stored.set_by, set_us=stored.set_us,
        rates=[RateInfo(partition=rate.partition, qos=rate.qos,
                        prices=[PriceInfo(metric=metric.value, price_micro=price) for metric, price in rate.prices],
                        load=None if rate.load is None else LoadPricingInfo(**wire_values(rate.load)))
               for rate in table.rates])


def _quote_info(quote: Quote, replayed: bool) -> QuoteInfo:
    basis, cost = quote.basis, quote.cost
    return QuoteInfo(
        quote_id=quote.quote_id or None, site=basis.site, version=basis.version, partition=basis.partition,
        qos=basis.qos, multiplier_numerator=basis.multiplier.numerator,
        multiplier_denominator=basis.multiplier.denominator, request=JobRequestInfo(**wire_values(quote.request)),
        credits=cost.credits, exact_numerator=cost.numerator, exact_denominator=cost.denominator,
        lines=[CostLineInfo(metric=line.metric.value, quantity=line.quantity, price_micro=line.price_micro,
                            numerator=line.numerator) for line in cost.lines],
        issued_us=quote.issued_us, valid_until_us=quote.valid_until_us, replayed=replayed)


# -- operations -----------------------------------------------------------------------------------


class JarmService(GridcreditService):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("jarm", authorize=lambda ctx: policy.authorize_anyone("WhoAmI"))

    @operation(PriceTableInfo.customize(**Required), _returns=PriceTableReceipt, _operation_name="SetPriceTable")
    def set_price_table(ctx, table):
        jarm = runtime_of(ctx).jarm
        principal = principal_of(ctx)
        policy.authorize_set_price_table(jarm.policy, principal)
        stored, replayed = jarm.prices.set_table(_change(table, jarm.site), set_by=principal.dn, clock=now_us)
        return PriceTableReceipt(table=_table_info(stored), replayed=replayed)

    @operation(Long(**Optional), Long(**Optional), _returns=PriceTableInfo, _operation_name="GetPriceTable")
    def get_price_table(ctx, version, at_us):
        policy.authorize_anyone("GetPriceTable")
        jarm = runtime_of(ctx).jarm
        if version is not None and at_us is not None:
            raise DomainError("ask for a version or for the one in force at a time, not both", INVALID_PRICE_TABLE)
        if version is not None:
            return _table_info(jarm.prices.table(jarm.site, version))
        return _table_info(jarm.prices.in_force(jarm.site, now_us() if at_us is None else at_us))

    @operation(Unicode(**Required), Unicode(**Required), Long(**Required), Long(**Required), Long(**Optional),
               Long(**Optional), Long(**Optional), Long(**Optional), Unicode(**Optional), _returns=QuoteInfo,
               _operation_name="Quote")
    def quote(ctx, partition, qos, cores, time_limit_s, memory_mb, gpus, nodes, guarantee_s, quote_id):
        policy.authorize_anyone("Quote")
        jarm = runtime_of(ctx).jarm
        request = JobRequest(partition, qos, cores, time_limit_s, 0 if memory_mb is None else memory_mb,
                             0 if gpus is None else gpus, 1 if nodes is None else nodes)
        guarantee_s = 0 if guarantee_s is None else guarantee_s
        if guarantee_s > jarm.quote_guarantee_s_max:
            raise DomainError(f"site {jarm.site} guarantees a quote for at most {jarm.quote_guarantee_s_max:,} s, "
                              f"not {guarantee_s:,} s", INVALID_QUOTE)
        moment_us = now_us()
        table = jarm.prices.in_force(jarm.site, moment_us).table
        made = pricing.quote(table, request, now_us=moment_us, quote_id=quote_id or "", guarantee_s=guarantee_s)
        if not made.guaranteed:
            return _quote_info(made, replayed=False)
        stored, replayed = jarm.prices.save_quote(made, requester=principal_of(ctx).dn,
                                                  active_max=jarm.quotes_per_requester_max)
        return _quote_info(stored.quote, replayed)


SERVICES = [JarmService]
