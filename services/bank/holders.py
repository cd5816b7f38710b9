"""Which accounts a DN holds: an index kept beside the accounts, so that "your accounts" (the web view)
reads the holder's own entries instead of examining every account.

One document per (account, holder) in the collection ``holders``, its root's ``holder_key`` (a hash
of the DN, as the store's attribute indexes take bounded values) indexed by the store on both
backends: ``<Holding xmlns="urn:gridcredit:bank:1" holder_key="…" account="A"/>``. The Bank writes
them in the transaction that changes an account's holders (create account, set holder, remove
holder: ``changes``), so the index is as current as the accounts. A store written before the index
existed is indexed once by ``build`` (the host's Bank at start-up); until its marker is written,
``accounts_of`` answers None and the caller reads the accounts as before. An entry only narrows
where to look: the caller reads each account through the Bank's policy and checks the role there.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterable

from lxml import etree

from gridcredit.xmlstore import AttributeIndex, XmlStore

from . import documents
from .ledger import Account
from .types import TransactionKind

log = logging.getLogger("gridcredit.bank")

HOLDERS = "holders"
ACCOUNTS = documents.COLLECTIONS[Account]
INDEX = AttributeIndex(HOLDERS, ("holder_key",))
HOLDER_CHANGES = frozenset({TransactionKind.CREATE_ACCOUNT, TransactionKind.SET_HOLDER, TransactionKind.REMOVE_HOLDER})
BUILT_ID = "built"                   # the marker: every account written before the index is in it
BUILD_PAGE = 500                     # accounts ``build`` reads at once
BUILD_WRITES_MAX = 2_000             # ... and index entries it writes in one store transaction
_Q_HOLDING = f"{{{documents.NAMESPACE}}}Holding"


def holder_key(dn: str) -> str:
    return hashlib.sha256(dn.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _doc_id(account_id: str, dn: str) -> str:
    return f"{account_id}.{holder_key(dn)}"


def _xml(account_id: str, dn: str) -> bytes:
    return etree.tostring(etree.Element(_Q_HOLDING, holder_key=holder_key(dn), account=account_id, nsmap={None: documents.NAMESPACE}),
                          encoding="UTF-8", xml_declaration=False)


def changes(before: Account | None, after: Account) -> Iterable[tuple[str, bytes | None]]:
    """The index documents to write (xml) or delete (None) when ``before`` (None: new) becomes ``after``."""
    was = {holder.dn for holder in before.holders} if before is not None else set()
    now = {holder.dn for holder in after.holders}
    for dn in sorted(now - was):
        yield _doc_id(after.account_id, dn), _xml(after.account_id, dn)
    for dn in sorted(was - now):
        yield _doc_id(after.account_id, dn), None


def accounts_of(store: XmlStore, dn: str, *, limit: int) -> tuple[list[str], bool] | None:
    """The ids of (at most ``limit``) accounts ``dn`` holds, in id order, and whether there are more;
    None while the index is not built (see ``build``)."""
    if store.get(HOLDERS, BUILT_ID) is None:
        return None
    page = store.query(HOLDERS, None, where={"holder_key": holder_key(dn)}, offset=0, limit=limit)
    return [etree.fromstring(document.xml).get("account") for document in page.documents], page.next_offset is not None


def build(store: XmlStore) -> int:
    """Index the holders of every account, once per store (the marker says it is done); the accounts
    indexed. Safe beside a running Bank (which keeps its changes in the index itself) and beside
    another worker doing the same (the same documents)."""
    if store.read_only or store.get(HOLDERS, BUILT_ID) is not None:
        return 0
    indexed, after = 0, None
    while True:
        # the store's own record, not a query: on BaseX a query waits for the verification after open,
        # and this runs in every worker's start (it held "serving on" back for the whole verification)
        page = store.scan_local(ACCOUNTS, after_id=after, limit=BUILD_PAGE)
        if not page:
            break
        ids = [document.doc_id for document in page]
        while ids:
            def write(tx, ids=ids) -> int:
                """Index accounts of ``ids`` in order (read again here: a holder change meanwhile conflicts,
                then this retries), as many as BUILD_WRITES_MAX entries allow (one at least): how many."""
                done = writes = 0
                for account_id in ids:
                    stored = tx.get(ACCOUNTS, account_id)
                    entries = [] if stored is None else list(changes(None, documents.account_from_xml(stored.xml)))
                    if done and writes + len(entries) > BUILD_WRITES_MAX:
                        break
                    for doc_id, xml in entries:
                        tx.put(HOLDERS, doc_id, xml)
                    done, writes = done + 1, writes + len(entries)
                return done
            done = store.transact(write)
            indexed, ids = indexed + done, ids[done:]
        after = page[-1].doc_id
    store.transact(lambda tx: tx.put(HOLDERS, BUILT_ID, f'<Built xmlns="{documents.NAMESPACE}"/>'.encode()))
    if indexed:
        log.info("indexed the holders of %d accounts (the web view's \"your accounts\")", indexed)
    return indexed
