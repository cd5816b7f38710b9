"""The directory's documents in the shared XML store, one transaction per request.

Collections (the directory's own, declared in ``SERVICE.collections``)::

    directory_owners  one per host id, id ``<host id>``: who registered it first (its owner, the only DN
                      that may register it again) and when; kept until an administrator removes the
                      host — a registration that expired does not free its id for someone else
    directory_hosts   one per listed host, id ``<host id>``: its last registration and until when it is
                      listed (``expires_us``); the sweep deletes the expired ones

The owner is read and the policy decides (``authorize``) inside the transaction that writes the
registration, so two identities racing for a free id cannot both have it. The numbers of ids (all,
and one identity's) are bounded; they are counted before the transaction, so requests racing may pass
a bound by as many as race. Counting, listing and the sweep read the whole (small, bounded) collections
from the store's own record and compare in Python: no XPath query or index, so the directory works
while a BaseX query server is down or behind.
"""
from __future__ import annotations

from typing import Callable

from lxml import etree

from gridcredit.errors import DomainError, invariant
from gridcredit.xmlstore import Transaction, XmlStore

from .types import TOO_MANY_HOSTS, UNKNOWN_HOST, HostEntry, Registration, current_price_ucps

OWNERS = "directory_owners"
HOSTS = "directory_hosts"
COLLECTIONS = (OWNERS, HOSTS)
INDEXES = ()                          # the collections are small and bounded: read whole, from the record
NAMESPACE = "urn:gridcredit:directory:store:1"
PAGE = 1_000                          # the store's query_limit_max
SWEEP_BATCH = 500                     # registrations deleted per transaction
_INT_FIELDS = ("capacity_cpus", "total_rate_ucps", "price_ucps", "hour_average_price_ucps", "live_bids",
               "interval_s", "ttl_s", "registered_us", "updated_us", "expires_us", "reserve_price_ucps")


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def entry_xml(entry: HostEntry) -> bytes:
    root = etree.Element(_q("Host"), nsmap={None: NAMESPACE}, host_id=entry.host_id,
                         auctioneer_url=entry.auctioneer_url, registrant=entry.registrant_dn,
                         **{name: str(getattr(entry, name)) for name in _INT_FIELDS})
    return etree.tostring(root, encoding="UTF-8")


def entry_from_xml(xml: bytes) -> HostEntry:
    root = etree.fromstring(xml)
    return HostEntry(host_id=root.get("host_id"), auctioneer_url=root.get("auctioneer_url"),
                     registrant_dn=root.get("registrant"), **{name: int(root.get(name)) for name in _INT_FIELDS})


def _owner_xml(host_id: str, dn: str, registered_us: int) -> bytes:
    root = etree.Element(_q("Owner"), nsmap={None: NAMESPACE}, host_id=host_id, registrant=dn,
                         registered_us=str(registered_us))
    return etree.tostring(root, encoding="UTF-8")


class HostDirectory:
    """The registrations over the shared store."""

    def __init__(self, store: XmlStore, *, hosts_max: int, hosts_per_registrant_max: int) -> None:
        self.store = store
        self.hosts_max = hosts_max
        self.hosts_per_registrant_max = hosts_per_registrant_max

    def register(self, registration: Registration, *, registrant_dn: str, clock: Callable[[], int],
                 authorize: Callable[[str | None], None]) -> HostEntry:
        """Store ``registration`` as the host's state, listed for its ``ttl_s`` from now (``clock()``, µs,
        read inside the transaction). ``authorize(owner_dn)`` (the policy) decides first, given the DN that
        owns the host id (None: it is free, and becomes ``registrant_dn``'s)."""
        if self.store.get(OWNERS, registration.host_id) is None:
            self._check_room(registrant_dn)

        def apply(tx: Transaction) -> HostEntry:
            now_us = clock()
            owner = tx.get(OWNERS, registration.host_id)
            owner_root = None if owner is None else etree.fromstring(owner.xml)
            authorize(None if owner_root is None else owner_root.get("registrant"))
            if owner_root is None:
                registered_us = now_us
                tx.put(OWNERS, registration.host_id, _owner_xml(registration.host_id, registrant_dn, now_us))
            else:
                invariant(owner_root.get("registrant") == registrant_dn, "only the owner's registration is written")
                registered_us = int(owner_root.get("registered_us"))
            entry = HostEntry(
                host_id=registration.host_id, auctioneer_url=registration.auctioneer_url,
                capacity_cpus=registration.capacity_cpus, total_rate_ucps=registration.total_rate_ucps,
                price_ucps=current_price_ucps(registration.total_rate_ucps, registration.capacity_cpus),
                hour_average_price_ucps=registration.hour_average_price_ucps, live_bids=registration.live_bids,
                interval_s=registration.interval_s, ttl_s=registration.ttl_s, registrant_dn=registrant_dn,
                registered_us=registered_us, updated_us=now_us, expires_us=now_us + registration.ttl_s * 1_000_000,
                reserve_price_ucps=registration.reserve_price_ucps)
            tx.put(HOSTS, registration.host_id, entry_xml(entry))
            return entry

        return self.store.transact(apply)

    def _check_room(self, registrant_dn: str) -> None:
        """A new host id: the directory and the registrant must have room for it (``TooManyHosts``)."""
        owners = [etree.fromstring(document.xml).get("registrant") for document in self._all(OWNERS)]
        mine = owners.count(registrant_dn)
        if mine >= self.hosts_per_registrant_max:
            raise DomainError(f"{registrant_dn} owns {mine:,} host ids, the most one identity may own here: "
                              f"register under one of them, or have an administrator remove one", TOO_MANY_HOSTS)
        if len(owners) >= self.hosts_max:
            raise DomainError(f"the directory keeps {len(owners):,} host ids, the most it keeps: an administrator "
                              f"must remove some first", TOO_MANY_HOSTS)

    def _all(self, collection: str) -> list:
        """Every document of one of the directory's (small, bounded) collections, by id, from the store's own
        committed record (``scan_local``: at once, also while a BaseX query server is down or behind) — read
        in pages, without an XPath query (20 times faster than one here)."""
        found: list = []
        after: str | None = None
        for _ in range(self.hosts_max // PAGE + 2):        # the ids are bounded, so is this
            page = self.store.scan_local(collection, after_id=after, limit=PAGE)
            found.extend(page)
            if len(page) < PAGE:
                break
            after = page[-1].doc_id
        return found

    def _registrations(self) -> list[HostEntry]:
        """Every registration kept, expired or not, by host id."""
        return [entry_from_xml(document.xml) for document in self._all(HOSTS)]

    def listed(self, *, now_us: int) -> list[HostEntry]:
        """Every host whose registration has not expired at ``now_us``, by host id."""
        return [entry for entry in self._registrations() if entry.expires_us >= now_us][:self.hosts_max]

    def counts(self, *, now_us: int) -> tuple[int, int]:
        """(hosts listed at ``now_us``, host ids owned)."""
        return len(self.listed(now_us=now_us)), len(self._all(OWNERS))

    def entry(self, host_id: str, *, now_us: int) -> HostEntry:
        """The host ``host_id`` as listed now (``UnknownHost`` when it is not registered or expired)."""
        document = self.store.get(HOSTS, host_id)
        entry = None if document is None else entry_from_xml(document.xml)
        if entry is None or entry.expires_us < now_us:
            raise DomainError(f"no host {host_id} is registered in this directory"
                              + ("" if entry is None else " now (its registration expired: its auctioneer has not "
                                                          "renewed it)"), UNKNOWN_HOST)
        return entry

    def remove(self, host_id: str) -> bool:
        """Forget the host: its registration and who owns its id (the id is free again). Whether there was one."""
        def apply(tx: Transaction) -> bool:
            removed_owner = tx.delete(OWNERS, host_id)
            removed_host = tx.delete(HOSTS, host_id)
            return removed_owner or removed_host

        return self.store.transact(apply)

    def sweep_expired(self, *, now_us: int) -> int:
        """Delete the registrations expired at ``now_us`` (a heartbeat that renewed one meanwhile keeps it);
        how many were deleted. The host ids stay their owners'."""
        expired = [entry.host_id for entry in self._registrations() if entry.expires_us < now_us]
        deleted = 0
        for first in range(0, len(expired), SWEEP_BATCH):
            ids = expired[first:first + SWEEP_BATCH]

            def apply(tx: Transaction) -> int:
                count = 0
                for doc_id in ids:
                    document = tx.get(HOSTS, doc_id)
                    if document is not None and entry_from_xml(document.xml).expires_us < now_us:
                        count += tx.delete(HOSTS, doc_id)
                return count

            deleted += self.store.transact(apply)
        return deleted
