"""Batch publication from a site: a durable local spool, and the batching it shares with the forwarder.

    spool = Spool("/var/spool/gridcredit/ur")
    spool.add(record_document_bytes)                       # durable when it returns
    report = spool.send(LutsClient(url, credential=…, trust_dir=…), batch_records=1000)
    report.ok, report.records_acknowledged, report.stopped  # stopped: why sending ended early

The spool (``Spool``)
    The durable outbox of the base layer (gridcredit/outbox.py) holding usage-record documents:
    one file per added document, ``<spool>/<arrival ns>-<pid>-<n>.xml``, durable once ``add``
    returns (a crash during ``add`` leaves at most a temporary file, removed by a later ``send``
    once it is an hour old). ``add`` refuses a document that is not a usage-record document at
    all, and refuses with :class:`SpoolFull` when the spool holds ``files_max`` documents or
    ``bytes_max`` bytes.

Sending (``Spool.send``)
    Documents are read in arrival order and split into records; the records are packed into
    ``UsageRecords`` batches of at most ``batch_records`` records (and ``batch_bytes_max`` bytes)
    and published. A spooled file is removed only when every one of its records has an answer
    that settles it: acknowledged (``stored``, ``duplicate``, ``replaced``), or refused / found
    invalid by the LUTS — those records are written, with the reason, to ``<spool>/rejected/``
    before the file goes (never dropped silently, never sent again). A document that cannot be
    read at all is moved to ``rejected/`` whole. When the LUTS cannot be reached, answers with a
    server or security fault, or refuses the publisher, sending stops: everything not yet
    settled stays in the spool, and the report says why.

    A crash at any point is safe: the LUTS is idempotent on the record id (the same record again
    answers ``duplicate``), so the next ``send`` publishes the unsettled files again, and the
    rejected files it writes have fixed names (written again, not twice). A lock on
    ``<spool>/.lock`` keeps two senders on one spool from interleaving.

How records are packed (``BatchSender``, the outbox's ``Batcher`` with records as parts; the
forwarder uses it too)
    The LUTS keeps each record's original bytes and tells "the same record" by the canonical XML
    (C14N 1.0) of the record element, which includes every namespace in scope. So a batch must
    neither change a record's bytes nor add a namespace to its scope: its container is
    ``<p:UsageRecords xmlns:p="NS">`` with the prefix and namespace of the records' own element,
    which every record (a standalone document) already declares. Records whose elements use
    another prefix or namespace go into another batch. Records split from a container go in as
    they are (they carry the container's declarations); a whole-document record goes in as its
    root element, right after a ``<?gridcredit-original prolog="…" epilog="…"?>`` note holding, in
    base64, the bytes around that element (XML declaration, byte-order mark, comments,
    whitespace), from which the LUTS puts the file back together byte for byte
    (``records.split_records``) — except a document in an encoding other than UTF-8, which is
    published alone, as it is.

    A batch the LUTS refuses as a whole (``InvalidUsageRecord``) is split in halves and sent
    again, down to single records, so one bad record cannot hold back the others; a single record
    refused that way is rejected with the LUTS's reason.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from lxml import etree

from gridcredit.errors import GridcreditError, RemoteFault, SecurityError, invariant
from gridcredit.outbox import (ALONE, Batcher, DeliveryStopped, Item, Outbox, OutboxBusy, OutboxError, OutboxFull, Part,
                               Unreadable)
from gridcredit.outbox import Settled as _OutboxSettled

from . import records as ur
from .luts import RecordResult

if TYPE_CHECKING:  # the client imports the LUTS core; the spool needs only its publish()
    from .client import LutsClient

log = logging.getLogger("gridcredit.luts.spool")

ACKNOWLEDGED = frozenset({"stored", "duplicate", "replaced"})
BATCH_RECORDS_DEFAULT = 1000
BATCH_RECORDS_MAX = 10_000                  # the LUTS's records_max for one document
# A document is split here and its records are sent in batches of at most BATCH_RECORDS_MAX, so the
# LUTS's limit on the records of one posted document does not apply to a file (a file of 10,001
# records is sent as 11 batches of 1,000); its limits on bytes, elements and depth still do.
SPLIT_LIMITS = dataclasses.replace(ur.DEFAULT_LIMITS, records_max=ur.DEFAULT_LIMITS.document_elements_max)
# Record bytes in one request. The request carries the batch base64-encoded (×4/3) inside a signed
# envelope; the host's default request limit is 10 MB.
BATCH_BYTES_DEFAULT = 6_000_000
SPOOL_BYTES_MAX_DEFAULT = 1 << 30
SPOOL_FILES_MAX_DEFAULT = 100_000
REJECTIONS_REPORTED_MAX = 1000              # rejections listed in one report (all are counted)
# Whole-request refusals that mean "this document", not "you" or "the service": split and retry.
DOCUMENT_REFUSALS = frozenset({"InvalidUsageRecord"})

_DECLARATION = re.compile(rb"^(?:\xef\xbb\xbf)?<\?xml\s[^>]*?\?>")
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_UTF8_NAMES = {b"utf-8", b"utf8", b"us-ascii", b"ascii"}


class SpoolError(OutboxError):
    """The spool cannot take or send a document (full, busy, unreadable directory)."""


class SpoolFull(SpoolError, OutboxFull):
    pass


class SpoolBusy(SpoolError, OutboxBusy):
    pass


# Sending ended early (LUTS unreachable, a server or security fault, the publisher refused):
# nothing unsettled was removed.
SendStopped = DeliveryStopped


# -- what is sent, and what comes back --------------------------------------------------------------


Outgoing = Item   # one document to publish: a usage record or a ``UsageRecords`` container


@dataclass(frozen=True, slots=True)
class Settled:
    """A document all of whose records have a settling answer."""
    document: Outgoing
    results: tuple[RecordResult, ...]   # one per record, in document order
    records: tuple[bytes, ...]  # each record's bytes as split from the document
    error: str | None = None    # the document could not be read at all (no records)

    @classmethod
    def of(cls, settled: _OutboxSettled) -> Settled:
        """The LUTS's view of an item the outbox's batcher settled (each part's source is a record)."""
        return cls(settled.item, settled.answers, tuple(part.source.data for part in settled.parts), settled.error)

    @property
    def rejected(self) -> list:
        return [result for result in self.results if result.status not in ACKNOWLEDGED]


@dataclass(frozen=True, slots=True)
class Progress:
    documents_done: int
    documents_total: int
    bytes_done: int
    bytes_total: int
    records_acknowledged: int
    records_rejected: int


@dataclass(frozen=True, slots=True)
class Rejection:
    document: str
    index: int
    record_id: str | None
    status: str                 # refused | invalid | unreadable (the whole document)
    message: str


@dataclass(frozen=True, slots=True)
class SendReport:
    documents_done: int         # settled (and, from a spool, removed)
    documents_left: int         # still waiting (from a spool: still in it)
    records_stored: int         # answers of the LUTS, also for records of documents not yet settled
    records_duplicate: int
    records_replaced: int
    records_rejected: int       # of settled documents: refused or invalid (from a spool: moved to rejected/)
    rejections: tuple[Rejection, ...]   # the first REJECTIONS_REPORTED_MAX
    stopped: str | None         # why sending ended before every document was settled

    @property
    def records_acknowledged(self) -> int:
        return self.records_stored + self.records_duplicate + self.records_replaced

    @property
    def ok(self) -> bool:
        return self.stopped is None and self.records_rejected == 0 and self.documents_left == 0


# -- packing ----------------------------------------------------------------------------------------


def _is_record(source: ur.RecordSource) -> bool:
    tag = etree.QName(source.tag)
    return tag.namespace in ur.FORMATS and tag.localname in ur.RECORD_NAMES


def packing(source: ur.RecordSource) -> tuple[bytes, tuple]:
    """(the bytes that go into a container, the key of the containers it may go into)."""
    element = source.element
    invariant(element is not None, "split_records gives each record its parsed element")
    key = (element.prefix, etree.QName(element).namespace)
    if not source.whole_document:
        return source.data, key            # a fragment: UTF-8, with every declaration it needs
    data = source.data
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data, ALONE
    declaration = _DECLARATION.match(data)
    if declaration:
        encoding = _ENCODING.search(declaration.group(0))
        if encoding and encoding.group(1).lower() not in _UTF8_NAMES:
            return data, ALONE
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return source.data, ALONE
    prolog, element, epilog = ur.whole_document_parts(data)
    if not prolog and not epilog:
        return element, key
    return ur.original_note(prolog, epilog) + element, key


def container(key: tuple, records: Sequence[bytes]) -> bytes:
    prefix, namespace = key
    name = f"{prefix}:UsageRecords" if prefix else "UsageRecords"
    declaration = f'xmlns:{prefix}="{namespace}"' if prefix else f'xmlns="{namespace}"'
    head = f'<?xml version="1.0" encoding="UTF-8"?>\n<{name} {declaration}>\n'.encode("utf-8")
    return head + b"\n".join(records) + f"\n</{name}>\n".encode("utf-8")


def _is_document_refusal(fault: RemoteFault) -> bool:
    return fault.faultcode.split(":")[-1].startswith("Client") and fault.code in DOCUMENT_REFUSALS


class BatchSender(Batcher):
    """Packs the records of documents into batches, publishes them, and hands back each document
    once all its records are settled (``on_settled``, called with the documents one batch settled,
    in the order they were added). Raises :class:`SendStopped` when the LUTS cannot take them.

    ``client`` needs only ``publish(document: bytes, *, replace: bool) -> PublishReport``.
    """

    def __init__(self, client, *, on_settled: Callable[[list[Settled]], None],
                 batch_records: int = BATCH_RECORDS_DEFAULT, batch_bytes_max: int = BATCH_BYTES_DEFAULT,
                 record_bytes_max: int = ur.DEFAULT_LIMITS.record_bytes_max, replace: bool = False,
                 on_batch: Callable[[], None] | None = None, limits: ur.BatchLimits = SPLIT_LIMITS) -> None:
        if not 1 <= batch_records <= BATCH_RECORDS_MAX:
            raise ValueError(f"batch_records must be 1..{BATCH_RECORDS_MAX}")
        super().__init__(self._publish, split=self._split, batch_parts=batch_records, batch_bytes_max=batch_bytes_max,
                         on_settled=lambda batch: on_settled([Settled.of(one) for one in batch]), on_batch=on_batch)
        self.client = client
        self.record_bytes_max = record_bytes_max
        self.limits = limits
        self.replace = replace
        self.requests = 0
        self.statuses: dict[str, int] = {}     # answers the LUTS gave, by status (a document may be unsettled)

    def _split(self, document: Outgoing) -> list[Part]:
        """The document's records, as parts: packed for a container, or answered invalid at once."""
        try:
            if document.unreadable is not None:
                raise ur.RecordError(document.unreadable)
            sources = ur.split_records(document.data, self.limits)
        except (ur.RecordError, SecurityError) as error:
            raise Unreadable(f"the document cannot be read: {error}") from None
        parts = []
        for source in sources:
            if not _is_record(source) or source.problem is not None:     # e.g. a gridcredit-original note that
                try:                                                     # does not fit: the LUTS would refuse it
                    ur.read_source(source)
                    message = "not a usage record"
                except (ur.RecordError, SecurityError) as error:
                    message = str(error)
                parts.append(Part(source.data, source=source, answer=RecordResult(
                    source.index, source.record_id, "invalid", f"{source.name()}: {message}")))
            elif len(source.data) > self.record_bytes_max:
                parts.append(Part(source.data, source=source, answer=RecordResult(
                    source.index, source.record_id, "invalid",
                    f"{source.name()}: the record is {len(source.data):,} bytes; at most "
                    f"{self.record_bytes_max:,} are accepted")))
            else:
                data, key = packing(source)
                parts.append(Part(data, key, source=source))
        return parts

    def _publish(self, key: tuple, parts: list[Part]) -> list[RecordResult]:
        """Publish one batch; the answer for each record (a batch refused whole: in halves)."""
        document = parts[0].data if key == ALONE else container(key, [part.data for part in parts])
        self.requests += 1
        try:
            report = self.client.publish(document, replace=self.replace)
        except RemoteFault as fault:
            if not _is_document_refusal(fault):
                raise SendStopped(f"the LUTS refused the batch: {fault}") from None
            if len(parts) == 1:
                source = parts[0].source
                return [RecordResult(source.index, source.record_id, "invalid",
                                     f"the LUTS refused the record: {fault.text}")]
            half = len(parts) // 2
            log.info("the LUTS refused a batch of %d records as a whole (%s); sending it in halves",
                     len(parts), fault.text)
            return self._publish(key, parts[:half]) + self._publish(key, parts[half:])
        except GridcreditError as error:  # transport after the client's retries, security, store
            raise SendStopped(f"cannot publish to the LUTS: {type(error).__name__}: {error}") from None
        if len(report.results) != len(parts):
            raise SendStopped(f"the LUTS answered {len(report.results)} results for a batch of {len(parts)} "
                              "records; nothing was removed")
        answers = []
        for part, result in zip(parts, report.results):
            self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
            answers.append(RecordResult(part.source.index, result.record_id or part.source.record_id,
                                        result.status, result.message))
        return answers


class _Sending:
    """One send: a BatchSender, and what it settled counted into a SendReport (and progress)."""

    def __init__(self, client, *, batch_records: int, batch_bytes_max: int, replace: bool = False,
                 on_settled: Callable[[list[Settled]], None] | None = None,
                 progress: Callable[[Progress], None] | None = None, documents_total: int = 0,
                 bytes_total: int = 0) -> None:
        self.documents = self.rejected = self.bytes_done = 0
        self.rejections: list[Rejection] = []
        self.documents_total, self.bytes_total = documents_total, bytes_total
        self.on_settled, self.progress = on_settled, progress
        self.sender = BatchSender(client, on_settled=self._settled, batch_records=batch_records,
                                  batch_bytes_max=batch_bytes_max, replace=replace, on_batch=self._batch_done)

    def start(self, paths: list[Path]) -> None:
        """The documents about to be sent are these files (the totals progress reports)."""
        self.documents_total, self.bytes_total = len(paths), 0
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self.bytes_total += path.stat().st_size

    def _settled(self, batch: list[Settled]) -> None:
        if self.on_settled is not None:
            self.on_settled(batch)
        for settled in batch:
            self.documents += 1
            self.bytes_done += len(settled.document.data)
            if settled.error is not None:
                self.rejected += 1
                self._reject(Rejection(settled.document.name, -1, None, "unreadable", settled.error))
            for result in settled.results:
                if result.status not in ACKNOWLEDGED:
                    self.rejected += 1
                    self._reject(Rejection(settled.document.name, result.index, result.record_id, result.status,
                                           result.message))

    def _reject(self, rejection: Rejection) -> None:
        if len(self.rejections) < REJECTIONS_REPORTED_MAX:
            self.rejections.append(rejection)

    def _batch_done(self) -> None:
        if self.progress is not None:
            statuses = self.sender.statuses
            self.progress(Progress(self.documents, self.documents_total, self.bytes_done, self.bytes_total,
                                   sum(statuses.get(status, 0) for status in ACKNOWLEDGED), self.rejected))

    def report(self, documents_left: int, stopped: str | None) -> SendReport:
        self._batch_done()
        statuses = self.sender.statuses
        return SendReport(documents_done=self.documents, documents_left=documents_left,
                          records_stored=statuses.get("stored", 0), records_duplicate=statuses.get("duplicate", 0),
                          records_replaced=statuses.get("replaced", 0), records_rejected=self.rejected,
                          rejections=tuple(self.rejections), stopped=stopped)


def send_documents(client, documents: Iterable[Outgoing], *, batch_records: int = BATCH_RECORDS_DEFAULT,
                   batch_bytes_max: int = BATCH_BYTES_DEFAULT, replace: bool = False,
                   on_settled: Callable[[list[Settled]], None] | None = None,
                   progress: Callable[[Progress], None] | None = None, documents_total: int = 0,
                   bytes_total: int = 0) -> SendReport:
    """Publish ``documents`` in batches; the report counts every record's answer (no spool)."""
    sending = _Sending(client, batch_records=batch_records, batch_bytes_max=batch_bytes_max, replace=replace,
                       on_settled=on_settled, progress=progress, documents_total=documents_total,
                       bytes_total=bytes_total)
    added = 0
    stopped = None
    try:
        for document in documents:
            added += 1
            sending.sender.add(document)
        sending.sender.finish()
    except SendStopped as error:
        stopped = str(error)
    left = max(0, documents_total - sending.documents) if documents_total else added - sending.documents
    return sending.report(left, stopped)


# -- the spool --------------------------------------------------------------------------------------


class Spool(Outbox):
    """A directory of usage-record documents waiting to be published (see the module docstring)."""

    NAME = "spool"
    NOUN = "documents"
    SUFFIX = ".xml"
    Error, Full, Busy = SpoolError, SpoolFull, SpoolBusy

    def __init__(self, directory: str | os.PathLike, *, bytes_max: int = SPOOL_BYTES_MAX_DEFAULT,
                 files_max: int = SPOOL_FILES_MAX_DEFAULT, limits: ur.BatchLimits = SPLIT_LIMITS) -> None:
        super().__init__(directory, items_max=files_max, bytes_max=bytes_max)
        self.limits = limits

    @property
    def files_max(self) -> int:
        return self.items_max

    def full_hint(self) -> str:
        return f"send it (gridcredit luts send --spool {self.directory}) before adding more"

    def add(self, document: bytes) -> Path:
        """Keep ``document`` until it is sent; durable when this returns. Raises SpoolFull when the
        spool is full, and RecordError/SecurityError when ``document`` is not a usage-record document."""
        document = bytes(document)
        ur.split_records(document, self.limits)  # refuse what can never be sent, before it is kept
        return super().add(document)

    def rejected(self) -> list[dict]:
        """What was rejected: one dict per record (or unreadable document), with the reason."""
        found = []
        for path in sorted(self.rejected_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text(encoding="utf-8")))
        return found

    def send(self, client: "LutsClient", *, batch_records: int = BATCH_RECORDS_DEFAULT,
             batch_bytes_max: int = BATCH_BYTES_DEFAULT, progress: Callable[[Progress], None] | None = None,
             lock_wait_s: float = 0.0) -> SendReport:
        """Publish everything spooled (see the module docstring); never raises for the LUTS being
        away — the report says what was sent and why it stopped."""
        sending = _Sending(client, batch_records=batch_records, batch_bytes_max=batch_bytes_max, progress=progress)
        drained = self.drain(sending.sender, wait_s=lock_wait_s, rejected=self._rejections, started=sending.start)
        report = sending.report(drained.items_left, drained.stopped)
        log.info("spool %s: %d documents sent, %d records acknowledged, %d rejected, %d documents left%s",
                 self.directory, report.documents_done, report.records_acknowledged, report.records_rejected,
                 report.documents_left, f"; stopped: {report.stopped}" if report.stopped else "")
        return report

    def _rejections(self, settled: _OutboxSettled) -> dict[str, bytes]:
        """The files that keep what the LUTS did not take of a settled document (name → bytes,
        written before the document is removed): each rejected record with its reason, or the
        whole document when it could not be read."""
        settled = Settled.of(settled)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        name = settled.document.name
        stem = name[:-len(self.SUFFIX)]
        files: dict[str, bytes] = {}
        if settled.error is not None:
            reason = {"document": name, "index": None, "record_id": None, "status": "unreadable",
                      "message": settled.error, "rejected_at": now, "file": f"{stem}.xml"}
            files[f"{stem}.json"] = json.dumps(reason, indent=1).encode()
            files[f"{stem}.xml"] = settled.document.data
            log.warning("spool: %s cannot be read and was moved to %s: %s", name, self.rejected_dir, settled.error)
            return files
        for result in settled.rejected:
            kept = f"{stem}.{result.index}"
            reason = {"document": name, "index": result.index, "record_id": result.record_id,
                      "status": result.status, "message": result.message, "rejected_at": now, "file": f"{kept}.xml"}
            files[f"{kept}.xml"] = settled.records[result.index]
            files[f"{kept}.json"] = json.dumps(reason, indent=1).encode()
            log.warning("spool: record %s of %s %s by the LUTS, kept in %s: %s", result.record_id or result.index + 1,
                        name, result.status, self.rejected_dir, result.message)
        return files


__all__ = ["ACKNOWLEDGED", "BATCH_BYTES_DEFAULT", "BATCH_RECORDS_DEFAULT", "BatchSender", "Outgoing", "Progress",
           "Rejection", "SendReport", "SendStopped", "Settled", "Spool", "SpoolBusy", "SpoolError", "SpoolFull",
           "container", "packing", "send_documents"]
