"""Batch publication from a site: a durable local spool, and the batching it shares with the forwarder.

    spool = Spool("/var/spool/gridcredit/ur")
    spool.add(record_document_bytes)                       # durable when it returns
    report = spool.send(LutsClient(url, credential=…, trust_dir=…), batch_records=1000)
    report.ok, report.records_acknowledged, report.stopped  # stopped: why sending ended early

The spool (``Spool``)
    One file per added document, ``<spool>/<arrival ns>-<pid>-<n>.xml``, written to
    ``<spool>/tmp/`` first, fsynced, renamed into place and the directory fsynced: after ``add``
    returns the document survives a crash, and a crash during ``add`` leaves at most a temporary
    file (removed by a later ``send`` once it is an hour old). ``add`` refuses a document that is
    not a usage-record document at all, and refuses with :class:`SpoolFull` when the spool holds
    ``files_max`` documents or ``bytes_max`` bytes.

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
    rejected files it writes have fixed names (written again, not twice). An ``fcntl`` lock on
    ``<spool>/.lock`` keeps two senders on one spool from interleaving.

How records are packed (``BatchSender``; the forwarder uses it too)
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
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from lxml import etree

from gridcredit.errors import GridcreditError, RemoteFault, SecurityError, invariant

from . import records as ur

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
TMP_AGE_MAX_S = 3600
REJECTIONS_REPORTED_MAX = 1000              # rejections listed in one report (all are counted)
# Whole-request refusals that mean "this document", not "you" or "the service": split and retry.
DOCUMENT_REFUSALS = frozenset({"InvalidUsageRecord"})

_DECLARATION = re.compile(rb"^(?:\xef\xbb\xbf)?<\?xml\s[^>]*?\?>")
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_UTF8_NAMES = {b"utf-8", b"utf8", b"us-ascii", b"ascii"}
_SOLO = ("solo",)  # the packing key of a record that is published alone


class SpoolError(GridcreditError):
    """The spool cannot take or send a document (full, busy, unreadable directory)."""


class SpoolFull(SpoolError):
    pass


class SpoolBusy(SpoolError):
    pass


class SendStopped(GridcreditError):
    """Sending ended early (LUTS unreachable, a server or security fault, the publisher refused):
    nothing unsettled was removed."""


# -- what is sent, and what comes back --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One document to publish: a usage record or a ``UsageRecords`` container."""
    name: str                   # how reports name it (a file name, a queue entry id)
    data: bytes
    context: object = None      # the owner's own handle (a path, a queue entry)
    unreadable: str | None = None   # why its bytes could not be had (it is settled as unreadable)


@dataclass(frozen=True, slots=True)
class RecordAnswer:
    """The LUTS's answer for one record of a document (or the reason it was not sent)."""
    index: int                  # 0-based position of the record in its document
    record_id: str | None
    status: str                 # stored | duplicate | replaced | refused | invalid
    message: str = ""


@dataclass(frozen=True, slots=True)
class Settled:
    """A document all of whose records have a settling answer."""
    document: Outgoing
    results: tuple[RecordAnswer, ...]   # one per record, in document order
    records: tuple[bytes, ...]  # each record's bytes as split from the document
    error: str | None = None    # the document could not be read at all (no records)

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
        return data, _SOLO
    declaration = _DECLARATION.match(data)
    if declaration:
        encoding = _ENCODING.search(declaration.group(0))
        if encoding and encoding.group(1).lower() not in _UTF8_NAMES:
            return data, _SOLO
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return source.data, _SOLO
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


@dataclass(eq=False)
class _Open:
    document: Outgoing
    results: list
    records: tuple[bytes, ...]
    complete: bool = False
    error: str | None = None

    def settled(self) -> bool:
        return self.complete and all(result is not None for result in self.results)


@dataclass(eq=False, slots=True)
class _Item:
    owner: _Open
    index: int
    data: bytes
    record_id: str | None


def _is_document_refusal(fault: RemoteFault) -> bool:
    return fault.faultcode.split(":")[-1].startswith("Client") and fault.code in DOCUMENT_REFUSALS


class BatchSender:
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
        if batch_bytes_max < 1:
            raise ValueError("batch_bytes_max must be positive")
        self.client = client
        self.on_settled = on_settled
        self.on_batch = on_batch
        self.batch_records = batch_records
        self.batch_bytes_max = batch_bytes_max
        self.record_bytes_max = record_bytes_max
        self.limits = limits
        self.replace = replace
        self._open: list[_Open] = []
        self._items: list[_Item] = []
        self._bytes = 0
        self._key: tuple | None = None
        self.requests = 0
        self.statuses: dict[str, int] = {}     # answers the LUTS gave, by status (a document may be unsettled)

    def add(self, document: Outgoing) -> None:
        try:
            if document.unreadable is not None:
                raise ur.RecordError(document.unreadable)
            sources = ur.split_records(document.data, self.limits)
        except (ur.RecordError, SecurityError) as error:
            self._open.append(_Open(document, [], (), complete=True, error=f"the document cannot be read: {error}"))
            if not self._items:
                self._settle()
            return
        opened = _Open(document, [None] * len(sources), tuple(source.data for source in sources))
        self._open.append(opened)
        for source in sources:
            if not _is_record(source) or source.problem is not None:     # e.g. a gridcredit-original note that
                try:                                                     # does not fit: the LUTS would refuse it
                    ur.read_source(source)
                    message = "not a usage record"
                except (ur.RecordError, SecurityError) as error:
                    message = str(error)
                opened.results[source.index] = RecordAnswer(source.index, source.record_id, "invalid",
                                                              f"{source.name()}: {message}")
                continue
            if len(source.data) > self.record_bytes_max:
                opened.results[source.index] = RecordAnswer(
                    source.index, source.record_id, "invalid",
                    f"{source.name()}: the record is {len(source.data):,} bytes; at most "
                    f"{self.record_bytes_max:,} are accepted")
                continue
            data, key = packing(source)
            if self._items and (key == _SOLO or key != self._key or len(self._items) >= self.batch_records
                                or self._bytes + len(data) > self.batch_bytes_max):
                self.flush()
            self._items.append(_Item(opened, source.index, data, source.record_id))
            self._bytes += len(data)
            self._key = key
            if key == _SOLO:
                self.flush()
        opened.complete = True
        if not self._items:
            self._settle()

    def finish(self) -> None:
        self.flush()
        self._settle()
        invariant(not self._open, "every document added was settled once all batches were answered")

    def flush(self) -> None:
        items, key = self._items, self._key
        self._items, self._bytes, self._key = [], 0, None
        if items:
            self._publish(items, key)
            self._settle()
            if self.on_batch is not None:
                self.on_batch()

    def _publish(self, items: list[_Item], key: tuple) -> None:
        document = items[0].data if key == _SOLO else container(key, [item.data for item in items])
        self.requests += 1
        try:
            report = self.client.publish(document, replace=self.replace)
        except RemoteFault as fault:
            if not _is_document_refusal(fault):
                raise SendStopped(f"the LUTS refused the batch: {fault}") from None
            if len(items) == 1:
                item = items[0]
                item.owner.results[item.index] = RecordAnswer(
                    item.index, item.record_id, "invalid", f"the LUTS refused the record: {fault.text}")
                return
            half = len(items) // 2
            log.info("the LUTS refused a batch of %d records as a whole (%s); sending it in halves",
                     len(items), fault.text)
            self._publish(items[:half], key)
            self._publish(items[half:], key)
            return
        except GridcreditError as error:  # transport after the client's retries, security, store
            raise SendStopped(f"cannot publish to the LUTS: {type(error).__name__}: {error}") from None
        if len(report.results) != len(items):
            raise SendStopped(f"the LUTS answered {len(report.results)} results for a batch of {len(items)} "
                              "records; nothing was removed")
        for item, result in zip(items, report.results):
            self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
            item.owner.results[item.index] = RecordAnswer(item.index, result.record_id or item.record_id,
                                                            result.status, result.message)

    def _settle(self) -> None:
        done: list[Settled] = []
        while self._open and self._open[0].settled():
            opened = self._open.pop(0)
            done.append(Settled(opened.document, tuple(opened.results), opened.records, opened.error))
        if done:
            self.on_settled(done)


class _Tally:
    """Counts settled documents into a SendReport."""

    def __init__(self) -> None:
        self.documents = 0
        self.rejected = 0
        self.rejections: list[Rejection] = []

    def add(self, settled: Settled) -> None:
        self.documents += 1
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

    def report(self, documents_left: int, stopped: str | None, statuses: dict[str, int]) -> SendReport:
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
    tally = _Tally()
    done_bytes = 0
    added = 0

    def settled(batch: list[Settled]) -> None:
        nonlocal done_bytes
        if on_settled is not None:
            on_settled(batch)
        for one in batch:
            tally.add(one)
            done_bytes += len(one.document.data)

    def batch_done() -> None:
        if progress is not None:
            progress(Progress(tally.documents, documents_total, done_bytes, bytes_total,
                              sum(sender.statuses.get(status, 0) for status in ACKNOWLEDGED), tally.rejected))

    sender = BatchSender(client, on_settled=settled, batch_records=batch_records, batch_bytes_max=batch_bytes_max,
                         replace=replace, on_batch=batch_done)
    stopped = None
    try:
        for document in documents:
            added += 1
            sender.add(document)
        sender.finish()
    except SendStopped as error:
        stopped = str(error)
    batch_done()
    left = max(0, documents_total - tally.documents) if documents_total else added - tally.documents
    return tally.report(left, stopped, sender.statuses)


# -- the spool --------------------------------------------------------------------------------------


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_durably(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` so that it is whole or absent after a crash (the caller fsyncs the
    directory of ``path``)."""
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Spool:
    """A directory of usage-record documents waiting to be published (see the module docstring)."""

    SUFFIX = ".xml"
    LOCK = ".lock"

    def __init__(self, directory: str | os.PathLike, *, bytes_max: int = SPOOL_BYTES_MAX_DEFAULT,
                 files_max: int = SPOOL_FILES_MAX_DEFAULT, limits: ur.BatchLimits = SPLIT_LIMITS) -> None:
        self.directory = Path(directory)
        self.tmp_dir = self.directory / "tmp"
        self.rejected_dir = self.directory / "rejected"
        self.bytes_max = bytes_max
        self.files_max = files_max
        self.limits = limits
        try:
            for path in (self.directory, self.tmp_dir, self.rejected_dir):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SpoolError(f"cannot use {self.directory} as a spool: {error.strerror}") from None
        self._counter = itertools.count()
        # (documents, bytes, when counted): ``add`` counts the spool again only when this is older
        # than USAGE_RECOUNT_S — a scan per add made spooling N files cost N² directory reads.
        # Other processes' adds in between may overshoot the limits by what they add in that time.
        self._usage: tuple[int, int, float] | None = None

    USAGE_RECOUNT_S = 2.0

    # -- adding --
    def usage(self) -> tuple[int, int]:
        """(documents, bytes) waiting in the spool."""
        files = size = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(self.SUFFIX) and entry.is_file(follow_symlinks=False):
                    files += 1
                    with contextlib.suppress(FileNotFoundError):
                        size += entry.stat(follow_symlinks=False).st_size
        return files, size

    def add(self, document: bytes) -> Path:
        """Keep ``document`` until it is sent; durable when this returns. Raises SpoolFull when the
        spool is full, and RecordError/SecurityError when ``document`` is not a usage-record document."""
        document = bytes(document)
        ur.split_records(document, self.limits)  # refuse what can never be sent, before it is kept
        if self._usage is None or time.monotonic() - self._usage[2] > self.USAGE_RECOUNT_S:
            self._usage = (*self.usage(), time.monotonic())
        files, size, counted = self._usage
        if files + 1 > self.files_max or size + len(document) > self.bytes_max:
            raise SpoolFull(f"the spool {self.directory} is full ({files:,} documents, {size:,} bytes; limits "
                            f"{self.files_max:,} documents, {self.bytes_max:,} bytes): send it "
                            f"(gridcredit luts send --spool {self.directory}) before adding more")
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._counter):06d}{self.SUFFIX}"
        path = self.directory / name
        try:
            _write_durably(path, document, self.tmp_dir)
            _fsync_directory(self.directory)
        except OSError as error:
            raise SpoolError(f"cannot write to the spool {self.directory}: {error.strerror}") from None
        self._usage = (files + 1, size + len(document), counted)
        return path

    def pending(self) -> list[Path]:
        """The spooled documents, oldest first."""
        with os.scandir(self.directory) as entries:
            names = sorted(entry.name for entry in entries
                           if entry.name.endswith(self.SUFFIX) and entry.is_file(follow_symlinks=False))
        return [self.directory / name for name in names]

    def rejected(self) -> list[dict]:
        """What was rejected: one dict per record (or unreadable document), with the reason."""
        found = []
        for path in sorted(self.rejected_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text(encoding="utf-8")))
        return found

    # -- sending --
    @contextlib.contextmanager
    def locked(self, wait_s: float = 0.0) -> Iterator[None]:
        """The sender's lock (``fcntl.flock`` on ``<spool>/.lock``; released when the process dies)."""
        path = self.directory / self.LOCK
        handle = open(path, "a+")
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another process"
                        raise SpoolBusy(f"another sender ({holder}) is sending the spool {self.directory}") from None
                    time.sleep(0.1)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            handle.close()  # closing releases the lock

    def send(self, client: "LutsClient", *, batch_records: int = BATCH_RECORDS_DEFAULT,
             batch_bytes_max: int = BATCH_BYTES_DEFAULT, progress: Callable[[Progress], None] | None = None,
             lock_wait_s: float = 0.0) -> SendReport:
        """Publish everything spooled (see the module docstring); never raises for the LUTS being
        away — the report says what was sent and why it stopped."""
        with self.locked(lock_wait_s):
            self._remove_stale_tmp()
            paths = self.pending()
            sizes = {}
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    sizes[path] = path.stat().st_size

            def documents() -> Iterator[Outgoing]:
                for path in paths:
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue
                    except OSError as error:
                        raise SpoolError(f"cannot read {path}: {error.strerror}") from None
                    yield Outgoing(path.name, data, path)

            report = send_documents(client, documents(), batch_records=batch_records, batch_bytes_max=batch_bytes_max,
                                    on_settled=self._settled, progress=progress, documents_total=len(paths),
                                    bytes_total=sum(sizes.values()))
            left = len(self.pending())
            report = dataclasses.replace(report, documents_left=left)
            log.info("spool %s: %d documents sent, %d records acknowledged, %d rejected, %d documents left%s",
                     self.directory, report.documents_done, report.records_acknowledged, report.records_rejected,
                     left, f"; stopped: {report.stopped}" if report.stopped else "")
            return report

    def _settled(self, batch: list[Settled]) -> None:
        """Write what was rejected, then remove the settled files (rejections first: a crash between
        leaves the file, which is sent again and rejected again under the same names)."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        wrote = False
        for settled in batch:
            path: Path = settled.document.context
            stem = path.name[:-len(self.SUFFIX)]
            if settled.error is not None:
                reason = {"document": path.name, "index": None, "record_id": None, "status": "unreadable",
                          "message": settled.error, "rejected_at": now, "file": f"{stem}.xml"}
                _write_durably(self.rejected_dir / f"{stem}.json", json.dumps(reason, indent=1).encode(), self.tmp_dir)
                _write_durably(self.rejected_dir / f"{stem}.xml", settled.document.data, self.tmp_dir)
                wrote = True
                log.warning("spool: %s cannot be read and was moved to %s: %s", path.name, self.rejected_dir,
                            settled.error)
                continue
            for result in settled.rejected:
                name = f"{stem}.{result.index}"
                reason = {"document": path.name, "index": result.index, "record_id": result.record_id,
                          "status": result.status, "message": result.message, "rejected_at": now,
                          "file": f"{name}.xml"}
                _write_durably(self.rejected_dir / f"{name}.xml", settled.records[result.index], self.tmp_dir)
                _write_durably(self.rejected_dir / f"{name}.json", json.dumps(reason, indent=1).encode(),
                               self.tmp_dir)
                wrote = True
                log.warning("spool: record %s of %s %s by the LUTS, kept in %s: %s",
                            result.record_id or result.index + 1, path.name, result.status, self.rejected_dir,
                            result.message)
        if wrote:
            _fsync_directory(self.rejected_dir)
        for settled in batch:
            with contextlib.suppress(FileNotFoundError):
                settled.document.context.unlink()
        _fsync_directory(self.directory)

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - TMP_AGE_MAX_S
        for path in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


__all__ = ["ACKNOWLEDGED", "BATCH_BYTES_DEFAULT", "BATCH_RECORDS_DEFAULT", "BatchSender", "Outgoing", "Progress",
           "RecordAnswer", "Rejection", "SendReport", "SendStopped", "Settled", "Spool", "SpoolBusy", "SpoolError", "SpoolFull",
           "container", "packing", "send_documents"]
