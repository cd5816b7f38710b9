"""What the LUTS keeps for its operator instead of storing it: list, show, retry, drop.

Two places hold such documents in the service's store:

* ``sgas_quarantine`` (sgas.py) — a document an SGAS reporter posted that could not be read at
  all (answered 200 so the reporter is not blocked). Retrying publishes it again — as it is (after
  a fix in the code) or as the operator corrected it — in the name of the publisher that sent it,
  with that publisher's rights; it leaves the quarantine only when it could be read (its records
  then have their own results: stored, duplicate, or refused/invalid, reported and logged).
* ``urfwd_rejected`` (forward.py) — records the higher-level LUTS refused or found invalid.
  Retrying puts the entry back on the forward queue (optionally to replace the upstream copy).

The operator runs these on the LUTS host against the store of its configuration
(``gridcredit luts held …``): no signed request, the same rights as whoever may read the state
directory. Every change is one store transaction and is logged.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from lxml import etree

from gridcredit.errors import DomainError

from .forward import REJECTED as FORWARD_REJECTED
from .luts import NS, Caller, Luts, PublishReport, forward_entry
from .sgas import QUARANTINE, as_declared

log = logging.getLogger("gridcredit.luts.held")

KINDS = {"sgas": QUARANTINE, "forward": FORWARD_REJECTED}
LIST_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Held:
    kind: str               # sgas | forward
    held_id: str            # the document's id in its collection
    publisher: str          # sgas: who posted it; forward: this LUTS
    received: str           # sgas: when (UTC); forward: the queue entry's arrival (µs since the epoch)
    reasons: tuple[str, ...]
    size_bytes: int         # sgas: the document as received; forward: the rejection entry


def _collection(kind: str) -> str:
    if kind not in KINDS:
        raise DomainError(f"{kind!r} is not a kind of held document; the kinds are {', '.join(KINDS)}",
                          "InvalidArgument")
    return KINDS[kind]


def _held(kind: str, doc_id: str, xml: bytes) -> Held:
    root = etree.fromstring(xml)
    if kind == "sgas":
        return Held(kind, doc_id, root.get("publisher", ""), root.get("received", ""), (root.get("reason", ""),),
                    len(base64.b64decode(root.text or "")))
    reasons = tuple(f"{reason.get('status')}: {reason.get('rid') or '-'}: {reason.text or ''}"
                    for reason in root.iter(f"{{{NS}}}Reason"))
    return Held(kind, doc_id, "", doc_id.partition("-")[0].lstrip("0") or "0", reasons, len(xml))


def list_held(luts: Luts, kinds: tuple[str, ...] = tuple(KINDS)) -> list[Held]:
    """Every held document of ``kinds``, in id order per kind."""
    found = []
    for kind in kinds:
        after = None
        while True:
            page = luts.store.scan(_collection(kind), after_id=after, limit=LIST_PAGE)
            if not page:
                break
            found += [_held(kind, document.doc_id, document.xml) for document in page]
            after = page[-1].doc_id
    return found


def _document(luts: Luts, kind: str, held_id: str):
    document = luts.store.get(_collection(kind), held_id)
    if document is None:
        raise DomainError(f"there is no held document {kind}/{held_id}", "UnknownHeldDocument")
    return document


def show(luts: Luts, kind: str, held_id: str) -> tuple[Held, bytes]:
    """The held document's description, and its content: for ``sgas`` the bytes exactly as posted."""
    document = _document(luts, kind, held_id)
    held = _held(kind, held_id, document.xml)
    if kind == "sgas":
        return held, base64.b64decode(etree.fromstring(document.xml).text or "")
    return held, document.xml


def retry_sgas(luts: Luts, held_id: str, corrected: bytes | None = None) -> PublishReport:
    """Publish a quarantined document again (or ``corrected`` in its place) as its publisher (its DN,
    and the hosts its certificate was issued for when it posted).

    It leaves the quarantine once the document could be read; still unreadable: DomainError, kept.
    """
    document = _document(luts, "sgas", held_id)
    root = etree.fromstring(document.xml)
    publisher = root.get("publisher", "")
    data = corrected if corrected is not None else base64.b64decode(root.text or "")
    try:
        report = luts.publish(as_declared(data), Caller(publisher, host_names=tuple(root.get("hosts", "").split())))
    except DomainError as error:
        raise DomainError(f"{QUARANTINE}/{held_id} is still not stored: {error}", error.code) from None
    luts.store.transact(lambda tx: tx.delete(QUARANTINE, held_id))
    log.info("quarantined SGAS document %s from %s published again%s: %d stored, %d already stored, "
             "%d not stored", held_id, publisher, " (corrected by the operator)" if corrected is not None else "",
             report.count("stored"), report.count("duplicate"), report.count("refused") + report.count("invalid"))
    return report


def retry_forward(luts: Luts, held_id: str, *, replace: bool = False) -> None:
    """Queue a record the upstream LUTS rejected to be forwarded again (``replace``: in place of upstream's)."""
    document = _document(luts, "forward", held_id)
    root = etree.fromstring(document.xml)

    def move(tx) -> None:
        tx.delete(FORWARD_REJECTED, held_id)
        tx.put(Luts.FORWARD_QUEUE, held_id, forward_entry(root.get("month"), root.get("id"), replace=replace))
    luts.store.transact(move)
    log.info("record %s/%s queued again for the upstream LUTS%s", root.get("month"), root.get("id"),
             " (to replace its copy)" if replace else "")


def drop(luts: Luts, kind: str, held_id: str) -> None:
    """Delete a held document for good (the operator decided it is not wanted)."""
    collection = _collection(kind)
    if not luts.store.transact(lambda tx: tx.delete(collection, held_id)):
        raise DomainError(f"there is no held document {kind}/{held_id}", "UnknownHeldDocument")
    log.warning("held document %s/%s dropped by the operator", kind, held_id)


__all__ = ["Held", "KINDS", "drop", "list_held", "retry_forward", "retry_sgas", "show"]
