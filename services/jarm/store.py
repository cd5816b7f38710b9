"""The Price Authority's documents in the shared XML store: price table versions and guaranteed quotes.

Collections (the JARM's own, declared in ``SERVICE.collections``)::

    jarm_prices       one document per version of a site's prices, id ``<site>:<version, 10 digits>``;
                      written once, never changed or deleted (a job is priced by the version of its
                      reservation, so that version must stay as it was)
    jarm_price_sites  one per site, id ``<site>``: its latest version number — every price change
                      reads and writes it, so two administrators racing are serialized by the store
                      (the second gets ``PriceTableVersion``, or the next number when it named none)
    jarm_quotes       one per guaranteed quote, id ``<quote id>``: the basis (version, multiplier),
                      the request, who asked (and a hash of it, indexed: at most so many unexpired
                      quotes per caller) and until when it holds; a later Reserve honours it. An
                      hour after the hour it expired in, the sweep deletes it (``expires_hour``,
                      indexed; the document ``sweep@quotes`` says which hour the sweep reached)

Each request is one store transaction (``XmlStore.transact``). The version in force at a time is
found by one indexed query: versions are numbered 1, 2, 3… and come into force strictly one after
the other, so the versions in force by ``at_us`` are exactly 1..n, and n is the *count* of the
site's versions whose ``effective_us`` is at most ``at_us``. XPath compares numbers as doubles,
exact for integers below 2**53: an effective time must be before that (``EFFECTIVE_US_MAX``, in
the year 2255), and so each comparison is exact.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from lxml import etree

from gridcredit.errors import DomainError, invariant
from gridcredit.xmlstore import AttributeIndex, Transaction, XmlStore

from . import pricing
from .types import (INVALID_PRICE_TABLE, JobRequest, LoadPricing, MemoryBasis, Metric, Multiplier, PriceTable,
                    PricingBasis, Quote, Rate)

PRICES = "jarm_prices"
PRICE_SITES = "jarm_price_sites"
QUOTES = "jarm_quotes"
COLLECTIONS = (PRICES, PRICE_SITES, QUOTES)
# the in-force count looks up one site's versions; the quotes limit one requester's quotes; the sweep an hour's
INDEXES = (AttributeIndex(PRICES, ("site",)), AttributeIndex(QUOTES, ("expires_hour", "requester_key")))

NAMESPACE = "urn:gridcredit:jarm:store:1"
NAMESPACES = {"j": NAMESPACE}
EFFECTIVE_US_MAX = 2**53 - 1           # 2255-06-05: XPath's numbers are exact below 2**53
VERSIONS_MAX = 100_000                 # versions of one site
QUOTE_ID_IN_USE = "QuoteIdInUse"
UNKNOWN_QUOTE = "UnknownQuote"
TOO_MANY_QUOTES = "TooManyQuotes"
HOUR_US = 3_600 * 1_000_000
QUOTE_SWEEP_ID = "sweep@quotes"        # where the sweep of expired quotes has reached (no quote id holds '@')
QUOTE_SWEEP_HOURS_BACK = 7 * 24 + 2    # the first sweep looks this far back (the longest guarantee, and more)
QUOTE_SWEEP_BATCH = 500                # quotes deleted per transaction
_HOURS_PER_LOOKUP = 1_000              # the store's where_values_max
_ACTIVE_QUOTES = "/j:Quote[@valid_until_us >= $now]"


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


@dataclass(frozen=True, slots=True)
class StoredTable:
    """A version as stored: the table, who set it and when (server time, µs)."""

    table: PriceTable
    set_by: str
    set_us: int


@dataclass(frozen=True, slots=True)
class StoredQuote:
    """A guaranteed quote as stored, its cost computed again from its version (which never changes)."""

    quote: Quote
    requester: str


@dataclass(frozen=True, slots=True)
class PriceChange:
    """What an administrator asks for: ``version`` None is the next one, ``effective_us`` None now."""

    site: str
    rates: tuple[Rate, ...]
    memory_basis: MemoryBasis = MemoryBasis.ALLOCATED
    version: int | None = None
    effective_us: int | None = None

    def same_prices(self, table: PriceTable) -> bool:
        """Whether ``table`` is what this change asks for (a retry of it answers the stored version)."""
        return (table.site == self.site and table.rates == tuple(self.rates)
                and table.memory_basis is self.memory_basis
                and self.effective_us in (None, table.effective_us))


# -- documents ------------------------------------------------------------------------------------


def requester_key(dn: str) -> str:
    """A requester's DN as a short indexed value (a DN may be longer than an index value may be)."""
    return hashlib.sha256(dn.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def table_id(site: str, version: int) -> str:
    return f"{site}:{version:010d}"


def table_xml(table: PriceTable, *, set_by: str, set_us: int) -> bytes:
    root = etree.Element(_q("PriceTable"), nsmap={None: NAMESPACE}, site=table.site, version=str(table.version),
                         effective_us=str(table.effective_us), memory_basis=table.memory_basis.value, set_by=set_by,
                         set_us=str(set_us))
    for rate in table.rates:
        element = etree.SubElement(root, _q("Rate"), partition=rate.partition, qos=rate.qos)
        for metric, price_micro in rate.prices:
            etree.SubElement(element, _q("Price"), metric=metric.value, micro=str(price_micro))
        if rate.load is not None:
            load = rate.load
            etree.SubElement(element, _q("Load"), low_permille=str(load.low_permille),
                             high_permille=str(load.high_permille), min_permille=str(load.min_permille),
                             max_permille=str(load.max_permille))
    return etree.tostring(root, encoding="UTF-8")


def table_from_xml(xml: bytes) -> StoredTable:
    root = etree.fromstring(xml)
    rates = []
    for element in root.iterfind(_q("Rate")):
        load = element.find(_q("Load"))
        rates.append(Rate(element.get("partition"), element.get("qos"),
                          {Metric(price.get("metric")): int(price.get("micro")) for price in element.iterfind(_q("Price"))},
                          None if load is None else LoadPricing(*(int(load.get(name)) for name in (
                              "low_permille", "high_permille", "min_permille", "max_permille")))))
    table = PriceTable(root.get("site"), int(root.get("version")), int(root.get("effective_us")), tuple(rates),
                       MemoryBasis(root.get("memory_basis")))
    return StoredTable(table, root.get("set_by"), int(root.get("set_us")))


_REQUEST_FIELDS = ("cores", "time_limit_s", "memory_mb", "gpus", "nodes")


def quote_xml(quote: Quote, requester: str) -> bytes:
    basis, request = quote.basis, quote.request
    root = etree.Element(_q("Quote"), nsmap={None: NAMESPACE}, quote_id=quote.quote_id, requester=requester,
                         requester_key=requester_key(requester), expires_hour=str(quote.valid_until_us // HOUR_US),
                         site=basis.site, version=str(basis.version), partition=basis.partition, qos=basis.qos,
                         multiplier_numerator=str(basis.multiplier.numerator),
                         multiplier_denominator=str(basis.multiplier.denominator),
                         issued_us=str(quote.issued_us), valid_until_us=str(quote.valid_until_us),
                         credits=str(quote.cost.credits))
    etree.SubElement(root, _q("Request"), partition=request.partition, qos=request.qos,
                     **{name: str(getattr(request, name)) for name in _REQUEST_FIELDS})
    return etree.tostring(root, encoding="UTF-8")


# -- the store ------------------------------------------------------------------------------------


class PriceStore:
    """Price tables and guaranteed quotes over the shared store; one transaction per call."""

    def __init__(self, store: XmlStore) -> None:
        self.store = store

    # price tables

    def set_table(self, change: PriceChange, *, set_by: str, clock: Callable[[], int]) -> tuple[StoredTable, bool]:
        """Store the next version of ``change.site``'s prices; (the stored version, replayed).

        A change naming a version that exists already with the same prices (a retry) answers that
        version, ``replayed``; any other existing version is refused (``PriceTableVersion``).
        ``clock()`` (µs) is read inside the transaction, again when the store runs it again after a
        conflict: "now" is when the change is applied, after the one it lost the race to."""
        def apply(tx: Transaction) -> tuple[StoredTable, bool]:
            now_us = clock()
            latest = self._latest(tx, change.site)
            if change.version is not None and 1 <= change.version <= latest:
                existing = self._table_in(tx, change.site, change.version)
                if change.same_prices(existing.table):
                    return existing, True
            previous = self._table_in(tx, change.site, latest).table if latest else None
            version = latest + 1 if change.version is None else change.version
            table = PriceTable(change.site, version, now_us if change.effective_us is None else change.effective_us,
                               change.rates, change.memory_basis)
            pricing.check_successor(previous, table, now_us=now_us)
            if table.effective_us > EFFECTIVE_US_MAX:
                raise DomainError(f"a price table comes into force before {EFFECTIVE_US_MAX} µs (the year 2255), "
                                  f"not at {table.effective_us} µs", INVALID_PRICE_TABLE)
            if version > VERSIONS_MAX:
                raise DomainError(f"site {change.site} has {VERSIONS_MAX:,} versions of its prices, the most one "
                                  f"site may have", INVALID_PRICE_TABLE)
            invariant(tx.get(PRICES, table_id(change.site, version)) is None,
                      f"version {version} of {change.site}'s prices is written once")
            stored = StoredTable(table, set_by, now_us)
            tx.put(PRICES, table_id(change.site, version), table_xml(table, set_by=set_by, set_us=now_us))
            site = etree.Element(_q("PriceSite"), nsmap={None: NAMESPACE}, site=change.site, latest=str(version))
            tx.put(PRICE_SITES, change.site, etree.tostring(site, encoding="UTF-8"))
            return stored, False

        return self.store.transact(apply)

    @staticmethod
    def _latest(tx: Transaction, site: str) -> int:
        document = tx.get(PRICE_SITES, site)
        return 0 if document is None else int(etree.fromstring(document.xml).get("latest"))

    @staticmethod
    def _table_in(tx: Transaction, site: str, version: int) -> StoredTable:
        document = tx.get(PRICES, table_id(site, version))
        invariant(document is not None, f"version {version} of {site}'s prices, counted as written, exists")
        return table_from_xml(document.xml)

    def latest_version(self, site: str) -> int:
        document = self.store.get(PRICE_SITES, site)
        return 0 if document is None else int(etree.fromstring(document.xml).get("latest"))

    def table(self, site: str, version: int) -> StoredTable:
        """Version ``version`` of ``site``'s prices (``NoPriceTable`` when there is none)."""
        document = self.store.get(PRICES, table_id(site, version)) if 1 <= version <= VERSIONS_MAX else None
        if document is None:
            latest = self.latest_version(site)
            raise DomainError(f"site {site} has no version {version} of its prices "
                              + (f"(its versions are 1-{latest})" if latest else "(it has none yet)"),
                              pricing.NO_PRICE_TABLE)
        return table_from_xml(document.xml)

    def in_force(self, site: str, at_us: int) -> StoredTable:
        """The version of ``site``'s prices in force at ``at_us`` (``NoPriceTable`` before the first).

        By reads of documents by key only (the site's latest version, then the versions): a store
        answers those at once, where a query must wait for BaseX to apply every write before it (a
        JARM Reserve on BaseX spent ~190 of its ~250 ms in the count this was). Versions come into
        force in their order (``pricing.check_successor``), so the latest in force by then is found
        by halving: the latest first, which is the one in force now but for a version set ahead."""
        latest = self.latest_version(site)
        found, low, high = None, 1, latest
        while low <= high:
            version = high if found is None and high == latest else (low + high) // 2
            stored = self.table(site, version)
            if stored.table.effective_us <= at_us:
                found, low = stored, version + 1
            else:
                high = version - 1
        if found is None:
            raise DomainError(f"site {site} has no prices in force at {at_us} µs: a price administrator must set "
                              f"them first (gridcredit jarm set-prices)", pricing.NO_PRICE_TABLE)
        return found

    # guaranteed quotes

    def save_quote(self, quote: Quote, *, requester: str, active_max: int) -> tuple[StoredQuote, bool]:
        """Keep guaranteed ``quote`` under its id; (the stored quote, replayed). The same requester
        asking again under that id for the same request gets the stored quote (a retry); anyone or
        anything else is refused (``QuoteIdInUse``). A requester holds at most ``active_max``
        unexpired guaranteed quotes (``TooManyQuotes``: every one is a document in the store); the
        count is read before the transaction, so requests racing may pass it by as many as race."""
        invariant(quote.guaranteed and bool(quote.quote_id), "only guaranteed quotes, with an id, are stored")
        document = self.store.get(QUOTES, quote.quote_id)
        if document is None:
            active = self.store.count(QUOTES, _ACTIVE_QUOTES, {"now": min(quote.issued_us, EFFECTIVE_US_MAX)},
                                      where={"requester_key": requester_key(requester)}, namespaces=NAMESPACES)
            if active >= active_max:
                raise DomainError(f"you hold {active:,} guaranteed quotes that have not expired, the most this site "
                                  f"keeps for one caller: use them, or let them expire", TOO_MANY_QUOTES)

            def apply(tx: Transaction):
                found = tx.get(QUOTES, quote.quote_id)
                if found is None:
                    tx.put(QUOTES, quote.quote_id, quote_xml(quote, requester))
                return found

            document = self.store.transact(apply)
            if document is None:
                return StoredQuote(quote, requester), False
        existing = self._quote_from(document.xml)
        if existing.requester == requester and existing.quote.request == quote.request \
                and existing.quote.basis.site == quote.basis.site:
            return existing, True
        raise DomainError(f"quote id {quote.quote_id} is taken by another quote: choose another id (or let the "
                          f"client choose one)", QUOTE_ID_IN_USE)

    def sweep_expired_quotes(self, *, now_us: int) -> int:
        """Delete the guaranteed quotes that expired before the previous hour (a Reserve presenting
        one is refused as expired either way); the number deleted. Safe to run in several workers at
        once: a quote deleted twice is deleted once, and the hour reached is only a starting point."""
        until_hour = now_us // HOUR_US - 1          # hours before this one are swept
        marker = self.store.get(QUOTES, QUOTE_SWEEP_ID)
        hour = until_hour - QUOTE_SWEEP_HOURS_BACK if marker is None else int(
            etree.fromstring(marker.xml).get("next_hour"))
        deleted = 0
        for first in range(hour, until_hour, _HOURS_PER_LOOKUP):
            hours = tuple(str(number) for number in range(first, min(first + _HOURS_PER_LOOKUP, until_hour)))
            while True:
                page = self.store.query(QUOTES, None, where={"expires_hour": hours}, limit=QUOTE_SWEEP_BATCH)
                ids = [document.doc_id for document in page.documents]
                if not ids:
                    break
                deleted += sum(self.store.transact(lambda tx: [tx.delete(QUOTES, doc_id) for doc_id in ids]))
        if marker is None or hour < until_hour:
            reached = etree.Element(_q("QuoteSweep"), nsmap={None: NAMESPACE}, next_hour=str(max(hour, until_hour)))
            self.store.put(QUOTES, QUOTE_SWEEP_ID, etree.tostring(reached, encoding="UTF-8"))
        return deleted

    def quote(self, quote_id: str) -> StoredQuote:
        """The guaranteed quote ``quote_id`` (``UnknownQuote`` when there is none), as it was given:
        expired or not — ``pricing.honour`` decides whether it still holds."""
        document = self.store.get(QUOTES, quote_id)
        if document is None:
            raise DomainError(f"there is no guaranteed quote {quote_id} (an expired quote is deleted an hour or two "
                              f"after it expired)", UNKNOWN_QUOTE)
        return self._quote_from(document.xml)

    def _quote_from(self, xml: bytes) -> StoredQuote:
        root = etree.fromstring(xml)
        request_element = root.find(_q("Request"))
        request = JobRequest(request_element.get("partition"), request_element.get("qos"),
                             **{name: int(request_element.get(name)) for name in _REQUEST_FIELDS})
        basis = PricingBasis(root.get("site"), int(root.get("version")), root.get("partition"), root.get("qos"),
                             Multiplier(int(root.get("multiplier_numerator")), int(root.get("multiplier_denominator"))))
        table = self.table(basis.site, basis.version).table
        cost = pricing.estimate(table, request, basis)
        invariant(cost.credits == int(root.get("credits")), "a stored quote's version prices it as it did")
        quote = Quote(root.get("quote_id"), basis, request, cost, int(root.get("issued_us")),
                      int(root.get("valid_until_us")))
        return StoredQuote(quote, root.get("requester"))
