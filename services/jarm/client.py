"""The typed JARM client: the Price Authority's operations, results as the core's own dataclasses.

    jarm = JarmClient("https://jarm.example.org:8443", credential=load_credential(), trust_dir=trust_directory())
    current = jarm.price_table()                        # StoredTable: the version in force now
    receipt = jarm.set_price_table(rates, version=current.table.version + 1)   # price administrators
    quoted = jarm.quote(JobRequest("batch", "normal", cores=16, time_limit_s=7200, memory_mb=32_768))
    quoted.quote.cost.credits, quoted.quote.cost.lines  # whole credits, and the exact breakdown
    held = jarm.quote(request, guarantee_s=3600)        # guaranteed: held.quote.quote_id, valid_until_us

Retries follow the one rule of :class:`gridcredit.client.ServiceClient`. Reading prices and an
estimate change nothing; a guaranteed quote is kept once per quote id (the client makes one,
``q-<uuid4>``, unless given one) and a price change naming its version is stored once (a retry of
it answers the stored version, ``replayed``), so both are sent again when an attempt got no answer.
A price change naming no version (the next one) is sent again only when no attempt can have
arrived: name the version to be safe.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from gridcredit.client import Effect, InvalidRequest, OutcomeUnknown, ServiceClient
from gridcredit.timeunits import datetime_to_us
from gridcredit.wiretypes import array_items

from .store import StoredTable
from .types import (Cost, CostLine, JobRequest, LoadPricing, MemoryBasis, Metric, Multiplier, PriceTable,
                    PricingBasis, Quote, Rate)


@dataclass(frozen=True, slots=True)
class PriceTableReceipt:
    """The version stored; ``replayed``: this same change had stored it before (a retry)."""

    stored: StoredTable
    replayed: bool


@dataclass(frozen=True, slots=True)
class Quoted:
    """A quote as the JARM gave it; ``replayed``: the guaranteed quote kept before under its id."""

    quote: Quote
    replayed: bool


def new_quote_id() -> str:
    """A fresh quote id: ``q-`` and 32 hex digits of a uuid4."""
    return f"q-{uuid.uuid4().hex}"


def _rate_wire(rate: Rate) -> dict:
    load = rate.load
    return {"partition": rate.partition, "qos": rate.qos,
            "prices": {"PriceInfo": [{"metric": metric.value, "price_micro": price} for metric, price in rate.prices]},
            "load": None if load is None else {"low_permille": load.low_permille, "high_permille": load.high_permille,
                                               "min_permille": load.min_permille, "max_permille": load.max_permille}}


def _stored(info) -> StoredTable:
    rates = tuple(Rate(rate.partition, rate.qos,
                       tuple((Metric(price.metric), price.price_micro) for price in array_items(rate.prices, "PriceInfo")),
                       None if rate.load is None else LoadPricing(rate.load.low_permille, rate.load.high_permille,
                                                                  rate.load.min_permille, rate.load.max_permille))
                  for rate in array_items(info.rates, "RateInfo"))
    return StoredTable(PriceTable(info.site, info.version, info.effective_us, rates, MemoryBasis(info.memory_basis)),
                       info.set_by, info.set_us)


def _quote(info) -> Quote:
    multiplier = Multiplier(info.multiplier_numerator, info.multiplier_denominator)
    lines = tuple(CostLine(Metric(line.metric), line.quantity, line.price_micro, int(line.numerator))
                  for line in array_items(info.lines, "CostLineInfo"))
    asked = info.request
    request = JobRequest(asked.partition, asked.qos, asked.cores, asked.time_limit_s, asked.memory_mb, asked.gpus,
                         asked.nodes)
    return Quote(info.quote_id or "", PricingBasis(info.site, info.version, info.partition, info.qos, multiplier),
                 request, Cost(lines, int(info.exact_numerator), int(info.exact_denominator), info.credits, multiplier),
                 info.issued_us, info.valid_until_us)


class JarmClient(ServiceClient):
    """The JARM's SOAP operations as typed methods (see the module docstring for retries)."""

    SERVICE = "jarm"

    def price_table(self, *, version: int | None = None, at: datetime | None = None) -> StoredTable:
        """The version of the site's prices in force now (or at ``at``), or version ``version``."""
        if version is not None and at is not None:
            raise InvalidRequest("ask for a version or for the one in force at a time, not both")
        at_us = None if at is None else _us(at)
        return _stored(self.invoke("GetPriceTable", {"version": version, "at_us": at_us}))

    def set_price_table(self, rates: Iterable[Rate], *, version: int | None = None, effective: datetime | None = None,
                        memory_basis: MemoryBasis = MemoryBasis.ALLOCATED, site: str | None = None) -> PriceTableReceipt:
        """Store the next version of the site's prices (price administrators). ``version`` None: the
        next one; ``effective`` None: now (the service's clock); ``site`` None: the JARM's."""
        table = {"site": site, "version": version, "effective_us": None if effective is None else _us(effective),
                 "memory_basis": memory_basis.value, "rates": {"RateInfo": [_rate_wire(rate) for rate in rates]}}
        answer = self.invoke("SetPriceTable", {"table": table},
                             effect=Effect.UNKEYED if version is None else Effect.ONCE_PER_KEY)
        return PriceTableReceipt(_stored(answer.table), answer.replayed)

    def quote(self, request: JobRequest, *, guarantee_s: int = 0, quote_id: str | None = None) -> Quoted:
        """The cost of ``request`` by the prices in force now; ``guarantee_s`` > 0 guarantees it for that
        long under ``quote_id`` (a fresh one when None) for a later reservation."""
        if guarantee_s and quote_id is None:
            quote_id = new_quote_id()
        answer = self.invoke("Quote", {
            "partition": request.partition, "qos": request.qos, "cores": request.cores,
            "time_limit_s": request.time_limit_s, "memory_mb": request.memory_mb, "gpus": request.gpus,
            "nodes": request.nodes, "guarantee_s": guarantee_s or None, "quote_id": quote_id},
            effect=Effect.ONCE_PER_KEY if guarantee_s else Effect.NONE, request_id=quote_id if guarantee_s else None)
        return Quoted(_quote(answer), answer.replayed)


def _us(moment: datetime) -> int:
    try:
        return datetime_to_us(moment)
    except (TypeError, ValueError) as error:
        raise InvalidRequest(str(error)) from None


__all__ = ["JarmClient", "OutcomeUnknown", "PriceTableReceipt", "Quoted", "new_quote_id"]
