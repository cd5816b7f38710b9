"""The Auctioneer's documents in the shared XML store: the market, bids, the intervals' journal, prices.

Collections (the Auctioneer's own, declared in ``SERVICE.collections``)::

    market_state      one document per host (id the host): its ``market.Market`` — every bid not yet
                      forgotten with what it owes and was charged, the open interval, and the batch of
                      the last closed interval until the Bank's answers are recorded
                      (``pending_charges``). That batch is THE journal: it is stored before it is sent,
                      and after a crash it is sent again with the same request ids (the Bank answers
                      the outcomes it recorded), so each interval is charged once.
    market_bids       one document per bid, id its bid id (``b-`` and 24 hex digits of a hash of the
                      host and the hold: one bid per hold, ever): who placed it, its hold, account and
                      template, its VM and what is enforced on it; once the market forgets it (settled),
                      its final state. ``host``, ``owner_key`` (a hash of the bidder's DN) and ``state``
                      are indexed.
    market_intervals  one document per host and closed interval k (id ``<host>:<k, 14 digits>``): its
                      batch's items and the Bank's answer to each (``state`` journaled, then answered) —
                      the record people and tests read.
    market_prices     one document per host: the price samples of the last hour.

Every change is one store transaction; a change of the market and of the bids it touches is one.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import typing
from dataclasses import dataclass
from typing import Callable

from lxml import etree

from gridcredit.errors import ConfigError, invariant
from gridcredit.xmlstore import AttributeIndex, Transaction, XmlStore

from . import market as core

log = logging.getLogger("gridcredit.auctioneer")

STATE = "market_state"
BIDS = "market_bids"
INTERVALS = "market_intervals"
PRICES = "market_prices"
COLLECTIONS = (STATE, BIDS, INTERVALS, PRICES)
INDEXES = (AttributeIndex(BIDS, ("host", "owner_key", "state")), AttributeIndex(INTERVALS, ("host", "state")))
NAMESPACE = "urn:gridcredit:auctioneer:store:1"
PAGE_MAX = 1000
HOUR_US = 3_600 * 1_000_000
SAMPLES_MAX = 3_600                    # one hour at the shortest interval

UNKNOWN_BID = "UnknownBid"


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def owner_key(dn: str) -> str:
    return hashlib.sha256(dn.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def bid_id_for(host_id: str, hold_id: str) -> str:
    """One bid per hold and host, ever: its id is a hash of both (a PlaceBid sent again finds it)."""
    return "b-" + hashlib.sha256(f"{host_id}\0{hold_id}".encode("utf-8", "surrogatepass")).hexdigest()[:24]


# -- plain dataclasses as element attributes (int, bool, str, enums, None) ---------------------------


def _attributes(value) -> dict[str, str]:
    attributes = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None:
            continue
        if isinstance(item, bool):
            attributes[f.name] = "1" if item else "0"
        elif isinstance(item, enum.Enum):
            attributes[f.name] = item.value
        else:
            attributes[f.name] = str(item)
    return attributes


def _base(hint):
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _from_attributes(kind, element, **extra):
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if f.name in extra:
            continue
        text = element.get(f.name)
        if text is None:
            values[f.name] = None if f.default is dataclasses.MISSING or f.default is None else f.default
            continue
        base = _base(hints[f.name])
        if base is bool:
            values[f.name] = text == "1"
        elif base is int:
            values[f.name] = int(text)
        elif isinstance(base, type) and issubclass(base, enum.Enum):
            values[f.name] = base(text)
        else:
            values[f.name] = text
    return kind(**values, **extra)


# -- a bid's own document -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BidRecord:
    """What the Auctioneer keeps of a bid beside the market: who placed it with which hold, its VM and
    what is enforced on it; ``final`` its last state in the market once forgotten (settled)."""

    bid_id: str
    host_id: str
    owner_dn: str
    hold_id: str
    account_id: str
    template: str
    max_duration_s: int
    placed_us: int
    state: str = "live"              # live | ended (as the market says; kept here for the index)
    vm_name: str = ""
    enforced: str = ""               # what the hypervisor enforces now, in words (or why it does not)
    updated_us: int = 0


def bid_xml(record: BidRecord, final: core.Bid | None = None) -> bytes:
    root = etree.Element(_q("Bid"), nsmap={None: NAMESPACE}, host=record.host_id,
                         owner_key=owner_key(record.owner_dn), **_attributes(record))
    if final is not None:
        etree.SubElement(root, _q("Final"), **_attributes(final))
    return etree.tostring(root, encoding="UTF-8")


def bid_from_xml(xml: bytes) -> tuple[BidRecord, core.Bid | None]:
    root = etree.fromstring(xml)
    final = root.find(_q("Final"))
    return _from_attributes(BidRecord, root), None if final is None else _from_attributes(core.Bid, final)


# -- the market's document ------------------------------------------------------------------------


_CONFIG_ATTRIBUTES = ("capacity_cpus", "reserve_ucps", "interval_us", "period_us")   # of core.MarketConfig


def market_xml(market: core.Market) -> bytes:
    root = etree.Element(_q("Market"), nsmap={None: NAMESPACE}, host=market.config.host_id,
                         interval=str(market.interval), through_us=str(market.through_us),
                         **{name: str(getattr(market.config, name)) for name in _CONFIG_ATTRIBUTES},
                         **({} if market.pending_interval is None else {"pending_interval": str(market.pending_interval)}))
    for bid_id in sorted(market.bids):
        etree.SubElement(root, _q("Bid"), **_attributes(market.bids[bid_id]))
    for charge in market.pending_charges:
        etree.SubElement(root, _q("Charge"), **_attributes(charge))
    for bid_id, at_us in market.cancels_due:
        etree.SubElement(root, _q("CancelDue"), bid_id=bid_id, at_us=str(at_us))
    return etree.tostring(root, encoding="UTF-8")


def market_from_xml(xml: bytes, config: core.MarketConfig) -> core.Market:
    """The stored market, under the configuration it was stored with (``config``, the host's present one,
    for a document written before the configuration was stored with it)."""
    from types import MappingProxyType

    root = etree.fromstring(xml)
    if root.get("capacity_cpus") is not None:
        config = core.MarketConfig(root.get("host"), **{name: int(root.get(name)) for name in _CONFIG_ATTRIBUTES})
    bids = {}
    for element in root.iterfind(_q("Bid")):
        bid = _from_attributes(core.Bid, element)
        bids[bid.bid_id] = bid
    charges = tuple(_from_attributes(core.Charge, element) for element in root.iterfind(_q("Charge")))
    pending = root.get("pending_interval")
    allocation = core.allocate(bids.values(), capacity_cpus=config.capacity_cpus, reserve_ucps=config.reserve_ucps,
                               period_us=config.period_us)
    cancels = tuple((element.get("bid_id"), int(element.get("at_us"))) for element in root.iterfind(_q("CancelDue")))
    return core.Market(config, MappingProxyType(bids), int(root.get("interval")), int(root.get("through_us")),
                       allocation, None if pending is None else int(pending), charges, cancels_due=cancels)


# -- an interval's record -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One Bank operation of an interval's batch and its answer (``outcome``: "" none yet, ``ok``, or
    the Bank's refusal code)."""

    bid_id: str
    hold_id: str
    kind: str                          # charge | settle
    amount: int
    request_id: str
    outcome: str = ""


@dataclass(frozen=True, slots=True)
class IntervalRecord:
    host_id: str
    k: int
    state: str                         # journaled | answered
    items: tuple[Item, ...]
    price_ucps: int = 0                # Σ rates / capacity in force when it closed, rounded down

    @property
    def doc_id(self) -> str:
        return interval_id(self.host_id, self.k)


def interval_id(host_id: str, k: int) -> str:
    return f"{host_id}:{k:014d}"


def interval_xml(record: IntervalRecord) -> bytes:
    root = etree.Element(_q("Interval"), nsmap={None: NAMESPACE}, host=record.host_id, k=str(record.k),
                         state=record.state, price_ucps=str(record.price_ucps))
    for item in record.items:
        etree.SubElement(root, _q("Item"), **_attributes(item))
    return etree.tostring(root, encoding="UTF-8")


def interval_from_xml(xml: bytes) -> IntervalRecord:
    root = etree.fromstring(xml)
    return IntervalRecord(root.get("host"), int(root.get("k")), root.get("state"),
                          tuple(_from_attributes(Item, e) for e in root.iterfind(_q("Item"))),
                          int(root.get("price_ucps") or 0))


# -- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceSummary:
    price_ucps: int                    # the last sample's (0: none)
    hour_average_ucps: int             # the mean of the last hour's samples, rounded down (0: none)
    samples: int


def _empty(market: core.Market) -> bool:
    """No bid (live or not yet forgotten) and nothing awaiting the Bank: a market that may begin anew."""
    return not market.bids and market.pending_interval is None and not market.pending_charges \
        and not market.cancels_due


class MarketStore:
    """The market, bids, intervals and price samples of the hosts over the shared store."""

    def __init__(self, store: XmlStore, config: core.MarketConfig) -> None:
        self.store = store
        self.config = config
        self.host = config.host_id
        document = store.get(STATE, self.host)
        if document is not None:     # an interval a market with bids cannot take: refused at start
            market = market_from_xml(document.xml, config)
            stored = market.config
            if stored.interval_us != config.interval_us and not _empty(market):
                raise ConfigError(f"auctioneer: host {self.host}'s market runs {stored.interval_us // 1_000_000} s "
                                  f"intervals; interval_s = {config.interval_us // 1_000_000} cannot change under it: "
                                  f"start with interval_s = {stored.interval_us // 1_000_000}, let its bids end "
                                  f"(or cancel them) and be charged, then change it")

    # the market

    def _stored_in(self, tx: Transaction, *, now_us: int) -> core.Market:
        document = tx.get(STATE, self.host)
        if document is None:
            return core.open_market(self.config, now_us=now_us)
        return market_from_xml(document.xml, self.config)

    def market(self, *, now_us: int) -> core.Market:
        document = self.store.get(STATE, self.host)
        if document is None:
            return core.open_market(self.config, now_us=now_us)
        return self._configured(market_from_xml(document.xml, self.config), now_us)

    def _configured(self, market: core.Market, now_us: int) -> core.Market:
        """The market under the host's present configuration (a restart with a new capacity, reserve price or
        scheduler period) from ``now_us`` on: what ran before was accrued under the one it had. An interval
        already over is closed under its own first (the next change after that applies the new one)."""
        if market.config == self.config:
            return market
        if market.config.interval_us != self.config.interval_us and _empty(market):
            return core.open_market(self.config, now_us=now_us)      # nothing to carry over: a new market
        if now_us >= market.interval_end_us:
            return market
        return core.reconfigure(market, self.config, now_us=now_us)

    def version(self) -> int:
        """The market document's version (changes with every transition)."""
        document = self.store.get(STATE, self.host)
        return 0 if document is None else document.version

    def change(self, step: Callable[[Transaction, core.Market], tuple[core.Market, object]], *, now_us: int):
        """``step(tx, market)`` → (the new market, an answer), stored in one transaction; the answer returned."""
        reconfigured: list[core.Market] = []

        def apply(tx: Transaction):
            stored = self._stored_in(tx, now_us=now_us)
            market = self._configured(stored, now_us)
            reconfigured[:] = [stored] if market.config != stored.config else []
            market, answer = step(tx, market)
            tx.put(STATE, self.host, market_xml(market))
            return answer
        answer = self.store.transact(apply)
        for stored in reconfigured:
            log.info("auctioneer: host %s's market runs under its new configuration from %d µs on (%s)", self.host,
                     max(now_us, stored.through_us), ", ".join(
                         f"{name} {getattr(stored.config, name)} → {getattr(self.config, name)}"
                         for name in _CONFIG_ATTRIBUTES if getattr(stored.config, name) != getattr(self.config, name)))
        return answer

    # bids

    @staticmethod
    def record_in(tx: Transaction, bid_id: str) -> tuple[BidRecord, core.Bid | None] | None:
        document = tx.get(BIDS, bid_id)
        return None if document is None else bid_from_xml(document.xml)

    @staticmethod
    def put_record(tx: Transaction, record: BidRecord, final: core.Bid | None = None) -> None:
        tx.put(BIDS, record.bid_id, bid_xml(record, final))

    def record(self, bid_id: str) -> tuple[BidRecord, core.Bid | None] | None:
        if not isinstance(bid_id, str) or not bid_id.startswith("b-") or len(bid_id) != 26:
            return None
        document = self.store.get(BIDS, bid_id)
        return None if document is None else bid_from_xml(document.xml)

    def update_records(self, changes: dict[str, Callable[[BidRecord], BidRecord]]) -> None:
        def apply(tx: Transaction) -> None:
            for bid_id, change in changes.items():
                found = self.record_in(tx, bid_id)
                if found is not None:
                    self.put_record(tx, change(found[0]), found[1])
        if changes:
            self.store.transact(apply)

    def records(self, *, owner_dn: str | None, include_ended: bool, offset: int, limit: int
                ) -> list[tuple[BidRecord, core.Bid | None]]:
        """A page of the host's bids (``owner_dn``'s only, unless None), live ones only unless ``include_ended``."""
        where: dict = {"host": self.host}
        if owner_dn is not None:
            where["owner_key"] = owner_key(owner_dn)
        if not include_ended:
            where["state"] = "live"
        page = self.store.query(BIDS, None, where=where, offset=offset, limit=limit)
        found = [bid_from_xml(document.xml) for document in page.documents]
        return [pair for pair in found if owner_dn is None or pair[0].owner_dn == owner_dn]

    # intervals

    def interval(self, k: int) -> IntervalRecord | None:
        document = self.store.get(INTERVALS, interval_id(self.host, k))
        return None if document is None else interval_from_xml(document.xml)

    def intervals(self) -> list[IntervalRecord]:
        """Every interval record of the host, oldest first (tests, audits)."""
        found, offset = [], 0
        while True:
            page = self.store.query(INTERVALS, None, where={"host": self.host}, offset=offset, limit=PAGE_MAX)
            found.extend(interval_from_xml(document.xml) for document in page.documents)
            if page.next_offset is None:
                return sorted(found, key=lambda record: record.k)
            offset = page.next_offset

    # prices

    def add_sample(self, *, k: int, at_us: int, price_ucps: int, live: int) -> None:
        def apply(tx: Transaction) -> None:
            document = tx.get(PRICES, self.host)
            root = etree.Element(_q("Prices"), nsmap={None: NAMESPACE}, host=self.host) if document is None \
                else etree.fromstring(document.xml)
            for old in list(root):
                if int(old.get("at_us")) < at_us - HOUR_US or int(old.get("k")) >= k:
                    root.remove(old)
            etree.SubElement(root, _q("Sample"), k=str(k), at_us=str(at_us), price_ucps=str(price_ucps),
                             live=str(live))
            while len(root) > SAMPLES_MAX:
                root.remove(root[0])
            tx.put(PRICES, self.host, etree.tostring(root, encoding="UTF-8"))
        self.store.transact(apply)

    def prices(self, *, now_us: int) -> PriceSummary:
        """The last sample and the hour's average (market.hour_average_price over the samples)."""
        document = self.store.get(PRICES, self.host)
        if document is None:
            return PriceSummary(0, 0, 0)
        samples = [(int(e.get("k")), int(e.get("price_ucps"))) for e in etree.fromstring(document.xml)]
        average = core.hour_average_price(samples, now_us=now_us, interval_us=self.config.interval_us)
        invariant(all(price >= 0 for _, price in samples), "prices are never negative")
        recent = [k for k, _ in samples if k >= (now_us - HOUR_US) // self.config.interval_us]
        return PriceSummary(samples[-1][1] if samples else 0, 0 if average is None else int(average), len(recent))
