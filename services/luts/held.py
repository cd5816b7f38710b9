"""What the LUTS keeps for its operator instead of storing it: list, show, retry, drop.

Three places hold such documents in the service's store:

* ``sgas_quarantine`` (kind ``sgas``) — a document an SGAS reporter posted that could not be read
  at all (answered 200 so the reporter is not blocked). Retrying publishes it again — as it is
  (after a fix in the code) or as the operator corrected it — in the name of the publisher that
  sent it, with that publisher's rights; it leaves the quarantine only when it could be read (its
  records then have their own results: stored, duplicate, or refused/invalid — and those are
  held as ``record``).
* ``sgas_refused`` (kind ``record``) — one record of a post the LUTS could read that it did not
  store (refused: not a machine of the publisher's certificate, a different record under its id;
  invalid: a bad duration, no record id, a foreign namespace, too large, …), with its reason. The
  post was answered 200 for the records that were stored, so the reporter moved on: this is the
  only copy. Retrying publishes the record (or the operator's corrected file) as its publisher;
  it leaves once every record of it is stored (or already was). One entry per publisher and
  record usage (``luts._usage_digest``): a reporter re-sending the same refused record (ARC writes
  a new ``createTime``) updates its entry instead of adding one.
* ``urfwd_rejected`` (kind ``forward``, forward.py) — records the higher-level LUTS refused or
  found invalid. Retrying puts the entry back on the forward queue (optionally to replace the
  upstream copy).

The bytes of an ``sgas`` or ``record`` entry are kept exactly as received: inside the entry
(base64) up to ``INLINE_BYTES_MAX``, else in a file of their own under ``Luts.held_dir`` (written
whole and durably: gridcredit.durable) that the entry names with its size and SHA-256 — a store
document is limited to a few MB, a post is not. The file is written before the entry and removed
after it: a crash in between leaves a file no entry names, never an entry without its bytes.

The operator runs these on the LUTS host against the store of its configuration
(``gridcredit luts held …``): no signed request, the same rights as whoever may read the state
directory. Every change is one store transaction and is logged.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lxml import etree

from gridcredit.durable import write_atomically
from gridcredit.errors import DomainError, StoreError

from .forward import REJECTED as FORWARD_REJECTED
from .luts import NS, Caller, Luts, PublishReport, _usage_digest, forward_entry, key_hash

log = logging.getLogger("gridcredit.luts.held")

QUARANTINE = "sgas_quarantine"
REFUSED = "sgas_refused"
KINDS = {"sgas": QUARANTINE, "record": REFUSED, "forward": FORWARD_REJECTED}
LIST_PAGE = 1000
# Bytes kept inside the held entry (base64: 4/3 of this) — well under a store document's limit
# (xmlstore StoreLimits.document_bytes_max, 4 MB); larger ones go to a file under Luts.held_dir.
INLINE_BYTES_MAX = 1_000_000
REASON_CHARS_MAX = 2000

_file_lock = threading.Lock()   # two requests keeping the same bytes at once write one file in turn


@dataclass(frozen=True, slots=True)
class Held:
    kind: str               # sgas | record | forward
    held_id: str            # the document's id in its collection
    publisher: str          # sgas, record: who posted it; forward: this LUTS
    received: str           # sgas, record: when (UTC); forward: the queue entry's arrival (µs since the epoch)
    reasons: tuple[str, ...]
    size_bytes: int         # sgas, record: the bytes as received; forward: the rejection entry
    record_id: str = ""     # record: its record id when it has one


def _collection(kind: str) -> str:
    if kind not in KINDS:
        raise DomainError(f"{kind!r} is not a kind of held document; the kinds are {', '.join(KINDS)}",
                          "InvalidArgument")
    return KINDS[kind]


# -- keeping ----------------------------------------------------------------------------------------


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _held_file(luts: Luts, collection: str, doc_id: str, digest: str) -> Path:
    return luts.held_dir / collection / f"{doc_id}-{digest[:16]}.xml"


def _with_payload(luts: Luts, element: etree._Element, collection: str, doc_id: str, data: bytes) -> Path | None:
    """Put ``data`` into ``element`` (base64), or — too large for that — into its own durable file,
    named in ``element``; returns the file written (None: inline)."""
    digest = hashlib.sha256(data).hexdigest()
    element.set("bytes", str(len(data)))
    element.set("sha256", digest)
    if len(data) <= INLINE_BYTES_MAX:
        element.text = base64.b64encode(data).decode("ascii")
        return None
    if luts.held_dir is None:
        raise StoreError(f"{len(data):,} bytes are too many for a store document and this LUTS has no "
                         f"directory for held files (Luts.held_dir)")
    path = _held_file(luts, collection, doc_id, digest)
    with _file_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        (luts.held_dir / "tmp").mkdir(exist_ok=True)
        write_atomically(path, data, tmp_dir=luts.held_dir / "tmp")
    element.set("file", path.name)
    return path


def _put_entry(luts: Luts, collection: str, doc_id: str, element: etree._Element) -> None:
    """Write the entry (replacing an earlier one of that id), then remove a file only the earlier one named."""
    earlier = luts.store.get(collection, doc_id)
    luts.store.put(collection, doc_id, etree.tostring(element, encoding="utf-8"))
    if earlier is not None:
        old_file = etree.fromstring(earlier.xml).get("file")
        if old_file and old_file != element.get("file"):
            _remove_file(luts, collection, old_file)


def _remove_file(luts: Luts, collection: str, name: str) -> None:
    if luts.held_dir is None:
        return
    try:
        (luts.held_dir / collection / name).unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("held file %s/%s not removed: %s", collection, name, error)


def _caller_attributes(element: etree._Element, caller: Caller) -> None:
    element.set("publisher", caller.dn)
    element.set("received", _utc_now())
    if caller.host_names:        # the hosts its certificate was issued for: what a retry may publish for
        element.set("hosts", " ".join(caller.host_names))


def keep_post(luts: Luts, data: bytes, caller: Caller, reason: str) -> str:
    """Keep an unreadable document, exactly as received, with who sent it and why it was not read;
    its held id. StoreError/OSError: it could not be kept (nothing is)."""
    doc_id = key_hash(caller.dn)[:16] + "-" + hashlib.sha256(data).hexdigest()[:32]
    element = etree.Element(f"{{{NS}}}Quarantined", nsmap={"n": NS}, reason=reason[:REASON_CHARS_MAX])
    _caller_attributes(element, caller)
    _with_payload(luts, element, QUARANTINE, doc_id, data)
    _put_entry(luts, QUARANTINE, doc_id, element)
    return doc_id


def _record_held_id(caller: Caller, source) -> str:
    """One entry per publisher and record usage: the same record re-sent (a new createTime) is the same entry."""
    try:
        element = copy.deepcopy(source.element) if source.element is not None else etree.fromstring(source.data)
        for identity in element:       # in any namespace: a record of an unknown one is held too
            if isinstance(identity.tag, str) and etree.QName(identity).localname == "RecordIdentity":
                for name in [name for name in identity.attrib if etree.QName(name).localname == "createTime"]:
                    del identity.attrib[name]
        usage = _usage_digest(element)
    except (etree.XMLSyntaxError, ValueError):
        usage = hashlib.sha256(source.data).hexdigest()
    return key_hash(caller.dn)[:16] + "-" + usage[:32]


def keep_records(luts: Luts, report: PublishReport, caller: Caller) -> dict[int, str]:
    """Keep every record ``report`` did not store, as received, with its result; index → held id.
    StoreError/OSError: not all could be kept (those written stay; keeping again updates them)."""
    kept: dict[int, str] = {}
    for result in report.results:
        source = report.not_stored.get(result.index)
        if source is None:
            continue
        doc_id = _record_held_id(caller, source)
        element = etree.Element(f"{{{NS}}}Refused", nsmap={"n": NS}, status=result.status,
                                reason=(result.message or result.status)[:REASON_CHARS_MAX])
        if result.record_id:
            element.set("rid", result.record_id)
        _caller_attributes(element, caller)
        _with_payload(luts, element, REFUSED, doc_id, source.data)
        _put_entry(luts, REFUSED, doc_id, element)
        kept[result.index] = doc_id
    return kept


# -- reading ----------------------------------------------------------------------------------------


def _payload(luts: Luts, kind: str, held_id: str, root: etree._Element) -> bytes:
    """The bytes an ``sgas``/``record`` entry keeps, checked against its size and SHA-256."""
    name = root.get("file")
    if name is None:
        data = base64.b64decode(root.text or "")
    else:
        if luts.held_dir is None:
            raise DomainError(f"{kind}/{held_id} is kept in the file {name}, and this LUTS has no held directory",
                              "HeldFileMissing")
        path = luts.held_dir / _collection(kind) / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DomainError(f"{kind}/{held_id} is kept in {path}, which cannot be read: "
                              f"{error.strerror or error}", "HeldFileMissing") from None
    expected = root.get("sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise DomainError(f"the bytes of {kind}/{held_id} are not the ones kept (SHA-256 differs); "
                          f"{name or 'the entry'} was changed or damaged", "HeldFileMissing")
    return data


def _size(root: etree._Element) -> int:
    if root.get("bytes") is not None:
        return int(root.get("bytes"))
    return len(base64.b64decode(root.text or ""))      # entries written before sizes were recorded


def _held(kind: str, doc_id: str, xml: bytes) -> Held:
    root = etree.fromstring(xml, etree.XMLParser(huge_tree=True))
    if kind == "sgas":
        return Held(kind, doc_id, root.get("publisher", ""), root.get("received", ""), (root.get("reason", ""),),
                    _size(root))
    if kind == "record":
        return Held(kind, doc_id, root.get("publisher", ""), root.get("received", ""),
                    (f"{root.get('status')}: {root.get('reason', '')}",), _size(root), root.get("rid", ""))
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
    """The held document's description, and its content: for ``sgas`` and ``record`` the bytes exactly as posted."""
    document = _document(luts, kind, held_id)
    held = _held(kind, held_id, document.xml)
    if kind in ("sgas", "record"):
        return held, _payload(luts, kind, held_id, etree.fromstring(document.xml, etree.XMLParser(huge_tree=True)))
    return held, document.xml


# -- retrying and dropping --------------------------------------------------------------------------


def _publisher(root: etree._Element) -> Caller:
    return Caller(root.get("publisher", ""), host_names=tuple(root.get("hosts", "").split()))


def _delete(luts: Luts, kind: str, held_id: str, root: etree._Element) -> bool:
    collection = _collection(kind)
    deleted = luts.store.transact(lambda tx: tx.delete(collection, held_id))
    if root.get("file"):
        _remove_file(luts, collection, root.get("file"))
    return deleted


def _publish_again(luts: Luts, kind: str, held_id: str, corrected: bytes | None):
    """Publish a held post or record (or ``corrected`` in its place) as its publisher: its DN, and
    the hosts its certificate was issued for when it posted. (entry, publisher, report); a document
    that still cannot be read: DomainError."""
    from .sgas import as_declared

    document = _document(luts, kind, held_id)
    root = etree.fromstring(document.xml, etree.XMLParser(huge_tree=True))
    publisher = _publisher(root)
    data = corrected if corrected is not None else _payload(luts, kind, held_id, root)
    try:
        report = luts.publish(as_declared(data), publisher, operation="RegisterUsageRecords")  # an SGAS post, again
    except DomainError as error:
        raise DomainError(f"{_collection(kind)}/{held_id} is still not stored: {error}", error.code) from None
    return root, publisher, report


def _counts(report: PublishReport) -> str:
    return (f"{report.count('stored')} stored, {report.count('duplicate')} already stored, "
            f"{report.count('refused') + report.count('invalid')} not stored")


def retry_sgas(luts: Luts, held_id: str, corrected: bytes | None = None) -> PublishReport:
    """Publish a quarantined document again (or ``corrected`` in its place) as its publisher.

    It leaves the quarantine once the document could be read, and its records that were not stored
    are held as ``record``; still unreadable: DomainError, kept.
    """
    root, publisher, report = _publish_again(luts, "sgas", held_id, corrected)
    keep_records(luts, report, publisher)
    _delete(luts, "sgas", held_id, root)
    log.info("quarantined SGAS document %s from %s published again%s: %s (held as record)", held_id, publisher.dn,
             " (corrected by the operator)" if corrected is not None else "", _counts(report))
    return report


def retry_record(luts: Luts, held_id: str, corrected: bytes | None = None) -> PublishReport:
    """Publish a held record again (or ``corrected``, a record or a document of records, in its
    place) as its publisher. It leaves once every record of it is stored or already was; else it
    stays held (the report says why) — records of ``corrected`` that were stored stay stored."""
    root, publisher, report = _publish_again(luts, "record", held_id, corrected)
    if report.ok:
        _delete(luts, "record", held_id, root)
    log.info("held record %s (%s) from %s published again%s: %s%s", held_id, root.get("rid", "no record id"),
             publisher.dn, " (corrected by the operator)" if corrected is not None else "", _counts(report),
             "" if report.ok else " (still held)")
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
    document = luts.store.get(collection, held_id)
    root = etree.fromstring(document.xml, etree.XMLParser(huge_tree=True)) if document is not None else None
    if root is None or not _delete(luts, kind, held_id, root):
        raise DomainError(f"there is no held document {kind}/{held_id}", "UnknownHeldDocument")
    log.warning("held document %s/%s dropped by the operator", kind, held_id)


__all__ = ["Held", "INLINE_BYTES_MAX", "KINDS", "QUARANTINE", "REFUSED", "drop", "keep_post", "keep_records",
           "list_held", "retry_forward", "retry_record", "retry_sgas", "show"]
