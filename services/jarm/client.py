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
from datetime import datetime, timezone
from typing import Iterable

from gridcredit.client import Effect, InvalidRequest, OutcomeUnknown, ServiceClient
from gridcredit.timeunits import datetime_to_us
from gridcredit.errors import RemoteFault
from gridcredit.wiretypes import array_items, from_wire

from .reservations import JobKey
from .delegation import DELEGATION_COMPLETED, Delegation, PendingDelegation, proxy_for_request
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


@dataclass(frozen=True, slots=True)
class ReservationView:
    """A reservation as the JARM shows it (ReservationInfo): ``admitted`` whether the job may run on it,
    ``message`` why not (or the last error); credits whole."""

    reservation_id: str
    key: JobKey
    user: str
    user_dn: str
    account: str
    payee: str
    state: str
    pending: str
    admitted: bool
    message: str
    authority: str
    version: int
    estimate: int
    hold_id: str
    hold_amount: int
    hold_expires_us: int
    cost: int
    charged: int
    uncharged: int
    created_us: int
    updated_us: int
    unfunded_us: int = 0            # when it was admitted without the Bank's hold (0: it never was)


def _reservation(info) -> ReservationView:
    key = info.key
    return ReservationView(
        info.reservation_id, JobKey(key.cluster, key.job_id, key.array_task, key.restarts), info.user, info.user_dn,
        info.account, info.payee, info.state, info.pending or "", info.admitted, info.message or "",
        info.authority or "", info.version, info.estimate, info.hold_id or "", info.hold_amount,
        info.hold_expires_us or 0, info.cost, info.charged, info.uncharged, info.created_us, info.updated_us,
        getattr(info, "unfunded_us", None) or 0)


def _key_wire(key: JobKey) -> dict:
    return {"cluster": key.cluster, "job_id": key.job_id, "array_task": key.array_task, "restarts": key.restarts}


@dataclass(frozen=True, slots=True)
class Delegated:
    """What ``JarmClient.delegate`` did: ``delegation`` the one JARM holds now; ``delegated`` False when
    it was valid beyond the renewal window and nothing was done."""

    delegation: Delegation
    delegated: bool

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


    # -- reservations (the batch system's controller reports its jobs; users read theirs) --

    def reserve(self, key: JobKey, *, user: str, account: str, request: JobRequest,
                quote_id: str | None = None) -> ReservationView:
        """A job about to run: priced (by the guaranteed quote ``quote_id`` when the job presents one) and
        held at the Bank (``admitted`` False: it must not run). Safe to repeat: a run is reserved once (its
        key), and the Bank's requests carry the run's ids."""
        answer = self.invoke("Reserve", {
            "key": _key_wire(key), "user": user, "account": account, "quote_id": quote_id,
            "request": {"partition": request.partition, "qos": request.qos, "cores": request.cores,
                        "time_limit_s": request.time_limit_s, "memory_mb": request.memory_mb, "gpus": request.gpus,
                        "nodes": request.nodes}}, effect=Effect.ONCE_PER_KEY, request_id=key.reservation_id)
        return _reservation(answer)

    def extend(self, key: JobKey, *, time_limit_s: int | None = None) -> ReservationView:
        """The job runs on (``time_limit_s`` None) or its time limit was raised: extend its hold."""
        return _reservation(self.invoke("Extend", {"key": _key_wire(key), "time_limit_s": time_limit_s},
                                        effect=Effect.ONCE_PER_KEY,
                                        request_id=f"{key.reservation_id}:extend:{time_limit_s}"))

    def reconcile(self) -> dict[str, int]:
        """One pass of the JARM's reconciler now: {ended, steps, left, extended}."""
        answer = self.invoke("Reconcile", {}, effect=Effect.ONCE_PER_KEY)
        return {name: getattr(answer, name) for name in ("ended", "steps", "left", "extended")}

    def complete(self, key: JobKey) -> ReservationView:
        """The run ended: the JARM reads its usage from Slurm's accounting and charges it."""
        return _reservation(self.invoke("Complete", {"key": _key_wire(key)}, effect=Effect.ONCE_PER_KEY,
                                        request_id=key.reservation_id))

    def cancel(self, key: JobKey) -> ReservationView:
        """The job will not run: what is held for it is released."""
        return _reservation(self.invoke("Cancel", {"key": _key_wire(key)}, effect=Effect.ONCE_PER_KEY,
                                        request_id=key.reservation_id))

    def reservation(self, reservation_id: str) -> ReservationView:
        return _reservation(self.invoke("GetReservation", {"reservation_id": reservation_id}))

    def reservations(self, *, user_dn: str | None = None, offset: int = 0, limit: int = 100) -> list[ReservationView]:
        """``user_dn``'s reservations; None: your own — everyone's for the controllers and the price
        administrators (who may name any user)."""
        answer = self.invoke("ListReservations", {"user_dn": user_dn, "offset": offset, "limit": limit})
        return [_reservation(info) for info in array_items(answer, "ReservationInfo")]

    # -- delegation (delegation.py): the caller's own proxy, its key made by the JARM

    def request_delegation(self, *, lifetime_s: int) -> PendingDelegation:
        """A pending delegation request of the caller's (it replaces theirs): the JARM's new public key
        as a PKCS#10 request. Sent again when unanswered: the request made last is the one pending."""
        return from_wire(PendingDelegation, self.invoke("RequestDelegation", {"lifetime_s": lifetime_s},
                                                        effect=Effect.ONCE_PER_KEY))

    def complete_delegation(self, delegation_id: str, chain_pem: str) -> Delegation:
        """Hand the JARM the proxy chain signed for request ``delegation_id`` (completed once: a repeat
        is refused with ``DelegationCompleted``)."""
        return from_wire(Delegation, self.invoke("CompleteDelegation", {"delegation_id": delegation_id,
                                                                        "chain_pem": chain_pem},
                                                 effect=Effect.ONCE_PER_KEY, request_id=delegation_id))

    def delegation(self) -> Delegation | None:
        """The caller's delegation the JARM holds (an expired one too, until it is swept), or None."""
        answer = self.invoke("GetDelegation")
        return None if answer is None else from_wire(Delegation, answer)

    def destroy_delegation(self) -> bool:
        """Have the JARM delete the caller's delegation (and pending request); whether there was one."""
        return bool(self.invoke("DestroyDelegation", effect=Effect.ONCE_PER_KEY))

    def delegate(self, *, lifetime_s: int, renew_within_s: int | None = None) -> Delegated:
        """Delegate this client's credential to the JARM for ``lifetime_s`` (GSI-style: the JARM makes
        the key, this signs a proxy for it, ``delegation.proxy_for_request``). With ``renew_within_s``,
        only when the JARM holds no delegation of the caller's that is valid for longer than that."""
        if renew_within_s is not None:
            current = self.delegation()
            if current is not None and current.not_after_us > datetime_to_us(datetime.now(timezone.utc)) \
                    + renew_within_s * 1_000_000:
                return Delegated(current, False)
        pending = self.request_delegation(lifetime_s=lifetime_s)
        chain_pem = proxy_for_request(self.credential, pending.csr_pem, lifetime_s=lifetime_s)
        try:
            return Delegated(self.complete_delegation(pending.delegation_id, chain_pem), True)
        except (OutcomeUnknown, RemoteFault) as error:   # a lost answer: did the first attempt store it?
            if isinstance(error, RemoteFault) and error.code != DELEGATION_COMPLETED:
                raise
            current = self.delegation()
            if current is None or current.delegation_id != pending.delegation_id:
                raise
            return Delegated(current, True)


def _us(moment: datetime) -> int:
    try:
        return datetime_to_us(moment)
    except (TypeError, ValueError) as error:
        raise InvalidRequest(str(error)) from None


__all__ = ["Delegated", "JarmClient", "OutcomeUnknown", "PriceTableReceipt", "Quoted", "ReservationView", "new_quote_id"]
