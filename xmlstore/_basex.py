"""BaseX backend: one database per collection, our own fsynced journal as the record.

BaseX updates its files in place with no journal, so a kill -9 can leave a database behind or
unreadable. The journal (``_journal``) is therefore the commit point, and BaseX a view of it that
lags by milliseconds and is checked and rebuilt from it.

Writes. ``transact`` runs under the journal's cross-process writer lock:

1. catch up: read the frames other processes appended since this process's last offset into the
   *mirror* (every document's current version and XML, kept in memory by each process);
2. run ``fn``; ``tx.get`` reads the mirror (current under the lock: serializable across threads
   and processes) — for ``store_text=False`` collections the version from the mirror and the XML
   from BaseX or the journal (see Memory);
3. append the writes (full documents + versions + sequence number) to the journal and update the
   mirror; release the lock; fsync (group commit: see ``_journal``) — the transaction is committed
   and acknowledged when ``transact`` returns. BaseX is not touched: a commit costs one write and
   one fsync, and BaseX being down or slow does not stop writes at once. Back-pressure: once more
   than ``backlog_bytes_max`` of committed XML waits for BaseX, a writer first waits (up to
   ``timeout_s``) until the appliers have halved it, and past ``backlog_max`` transactions
   commits are refused — so BaseX stays seconds, not minutes, behind a fast writer. A write held
   back is refused with ``StoreUnavailable`` (nothing applied; the message says why, for people)
   — at once when BaseX has applied nothing for ``behind_after_s`` (down or stopped: waiting
   would only hold the request). How far BaseX is behind is logged once per change of state
   (behind since T, backlog at 25/50/75 % with the time left, writes held back, applying again,
   caught up: ``_BacklogWatch``), never per request.

Applying. Committed frames are pushed to BaseX by whoever holds the journal's *applier* lock —
a background thread in each process, woken by its own commits and every ``apply_interval_s``
(so frames a dead writer left are picked up by any live process). It reads the frames not yet
applied, fsyncs the journal, and applies up to ``apply_batch_max`` transactions (and about
``apply_batch_bytes``) in ONE updating query, each document once (the last write wins within a
batch), each document with its version (a processing instruction in it; a deleted one leaves
a ``.v/<doc_id>`` tombstone: see ``ops_of``) and the applied sequence number (and the batch's
time) in the ``<prefix>_meta`` database — only if that number is still the one the batch
starts from. A batch holds whole transactions, so BaseX never shows half of one. A BaseX update
costs ~10 ms plus ~3 ms per database touched whatever its size, so under load commits gather for
up to ``apply_delay_s`` after the previous batch (of any process) — unless a read is waiting for
them, which makes its process's applier go at once. Idle, a commit is applied within milliseconds.

Reads. ``get`` outside a transaction reads the mirror after catching up with the journal without
the lock (complete frames only): it sees every acknowledged transaction, costs no round trip and
works while BaseX is down. (It may see a frame that another writer has written and not yet
fsynced: only an operating-system crash in that window loses it, and then nobody had acknowledged
it.) ``scan_local`` lists a collection's live documents from the mirror the same way (the bank's
expiry sweep: holds expire on time while BaseX is down). ``query``, ``count``, ``ids``,
``collections`` and ``scan`` (ids from BaseX, documents from the mirror) read BaseX, so they first
catch the mirror up and wait until BaseX's applied sequence number has reached the journal's last
sequence number as of that moment: read-your-writes across threads and processes, and monotonic
reads. The wait is bounded by the store's ``timeout_s`` (``StoreError`` saying how far behind BaseX
is and the applier's last error).

Databases held open. BaseX 9.7 opens a database for every query that names it (reading the pre
value of each of its documents) and closes it after the last one: at 600,000 resources (300,000
documents and their versions) that was 20-60 ms of every query, whatever it did. A process keeps
the databases of its queried collections of at least ``pin_documents_min`` documents open in
sessions of their own (``OPEN``; at most ``pins_max``, see ``Pins``): BaseX shares an open
database with every query, which then compiles in ~1 ms. BaseX refuses DROP DB and db:optimize ALL
on a database any session holds open, so those first end such sessions (``KILL``: the store's
BaseX user needs ADMIN), and the holders open it again at their next query.

Recovery. A failed apply, a broken BaseX session or a regressed/unknown applied number marks the
store suspect: the next apply or query (under both locks) verifies every database against the
mirror and repairs it. On open, every database is verified: readable (every document read in
full), and its live documents and versions equal the journal's — after the open returns, by the
applier thread, when BaseX's applied number and the quick checks agree (every database's metadata
readable, no database of another journal, the attribute indexes' options as declared; the
frames BaseX lacks applied first): in steps of ``verify_chunk_docs`` ids under the applier lock
alone, each compared with the journal as of BaseX's applied number, a collection that differs
repaired whole under the writer lock; queries wait for it (bounded by ``timeout_s``), reads by id,
``scan_local`` and commits go on; one log line at its start and one at its end; ``wait_verified``
waits for it (``at_once``: does the rest in one pass under the writer lock), and a process forked
within ``fork_trust_s`` of its parent's verification does not verify again (``_VERIFIED``). The
processes forked within ``fork_trust_s`` of a parent that left the verification to the background
(serve's workers after prepare_state) share it: one does the steps, recording its progress in
``<journal>/verification.json``, the others wait and adopt its result, and if it dies or closes its
store another goes on from the progress recorded (``_SharedVerification``). Otherwise (and in every repair) the verification runs before going on; a lagging or half-applied
database gets the missing writes re-applied, an unreadable or inconsistent one is dropped and
rebuilt from the journal (one whose metadata a kill -9 left empty is dropped without being opened:
see ``Q_UNHEALTHY``; one listing a path twice is rebuilt; one with more than ``rebuild_above``
documents behind is rebuilt rather than re-applied); a covered collection's attribute index is
checked against its options and, on a sample of recent and random documents, against its data,
and re-indexed (``db:optimize``) when it disagrees; then the applied number is set to the
journal's. A writer killed between its journal fsync and the apply leaves frames that the next
applier (another process, or this store reopened) applies — at most ``blind_apply_max`` writes
unverified, more are verified first. ``check()`` compares content hashes too; ``rebuild()``
rebuilds on demand.

Write cost. BaseX 9.7's db:replace looks the document's path up, which costs seconds per 1,000
documents once a database holds ~400,000 resources; the running applier therefore adds (db:add)
a document's first write, and a rebuild adds everything into the fresh database (see
``ops_of``): 1,000,000 records of 1 KB went from journal to BaseX in ~4 minutes here, where
db:replace had managed ~280 a second at 200,000.

A process that forks opens its own store after the fork (the applier thread and the locks'
process-local halves do not survive a fork). A store closed by ``hand_over()`` (serve's supervisor
after prepare_state) leaves its mirror and its journal, held open at the position it read to, to
the processes forked next (within ``fork_trust_s``): their open takes them instead of reading the
snapshot and the frames again (a million documents: seconds per process, three times per serve
start), reads the frames written since, and goes on as any open (BaseX's applied number and quick
checks; frames BaseX lacks read back from the journal and applied; the verification shared).
The copy is shared with the parent until either writes to it; the parent drops its own with the
function ``hand_over()`` returns. An open waiting for the journal's locks is let through first by
the background verification (``Journal.opening``: no step begins while one waits).

XPath: only what ``_xpath.check_xpath`` accepts reaches BaseX — XPath 1.0 with its core functions,
re-written from the parsed tree as XQuery (no caller text, no extension or module function) — and
it runs inside ``xquery:eval`` with a timeout (whole seconds: the time limit rounded up), which
stops it during evaluation (measured: a nested count over following/preceding axes stopped at
2.0 s of a 2 s limit). It does NOT stop a runaway regular expression (``matches`` of 40 a's and
'!' with ``^((a+)\\2?)+$`` ran over 120 s against a 2 s timeout: Java's regex never looks at
BaseX's stop flag), so no regular-expression function passes the check. ``xquery:eval``'s
``permission`` option is NOT used: BaseX 9.7 applies it by changing the permission of the
session's USER, so every other session of that user — this store's other threads and processes,
and any other program logged in as that user — read "No read permission" meanwhile; nothing that
option forbade can be written in the checked XPath. Variables are bound, never formatted into
query text (only validated names, prefixes and integers are).

Attribute indexes and ``where``. The declarations (``AttributeIndex``) are shared by the store's
processes in ``<journal>/indexes.json`` (merged by each writable open under the writer lock,
replaced atomically, reloaded by every process when it changes). A database for a covered
collection is created with ATTRINDEX on its declared names only (ATTRINCLUDE), TEXTINDEX and
TOKENINDEX off, MAXLEN 1000 bytes and UPDINDEX (kept current by every update); an existing one whose
options differ is re-indexed (``db:optimize``) at the next writable open, and a rebuild from the
journal creates it with them. A query binds each ``where`` item's values as one JSON array. One
indexed item is read from the index (``db:attribute``) directly, when the database's properties
say its index holds that name at that length (else the query is asked again in the general form);
several are written as predicates on ``db:open(db)/*``, which BaseX rewrites to ``db:attribute``
itself (``query_plan`` shows the compiled query and the locks); see ``Q_SELECT``. Database names
are literals in the query text (validated names), so BaseX locks that database and the meta
database, not all of them. The filter runs in the outer query, and the caller's XPath inside
``xquery:eval`` sees only the documents it selected; what the XPath returns is checked again
outside (root elements of this database matching every ``where`` item), so an XPath can narrow
``where`` but never widen it. Query results carry their versions from the mirror: the query also
returns BaseX's applied sequence number S, and a document whose mirror entry was written at or
before S is exactly what BaseX read; if one was written after S, the query is asked again (and at
last with the versions BaseX holds in the documents).

Memory. Each process keeps the mirror: every live document and tombstone as Python objects —
(version, XML, sequence number) under its id: roughly the XML's length plus ~250 bytes per
document, so 1,000,000 documents of 1 KB cost ~1.3 GB in EVERY process that opens the store —
EXCEPT in collections whose ``AttributeIndex`` says ``store_text=False``: there the mirror keeps
(version, NOT_KEPT, sequence number) only (~200 bytes per document with a 64-character id: ~200 MB
per 1,000,000), and ``get``/``tx.get``/``scan`` read the XML back from the journal frame that
wrote that version (the journal remembers where each frame starts, 8 bytes per transaction, and
only that document's write is decoded) — not from BaseX, where a lookup by path costs 0.1-0.5 s in
a database of 400,000 resources (BaseX 9.7); it never waits for the applier (a ``tx.get`` under
the writer lock cannot deadlock with a repair) and works while BaseX is behind or down. Repair and
rebuild read such XML from the journal too, frame by frame. Frames not yet applied keep their XML
in the pending queue (bounded by ``backlog_max``).

Opening and checkpoints. An open reads the journal's newest snapshot (every document's state after
transaction S: before taking the locks, so that processes opening together read theirs side by side)
and, under both locks, the frames after S, in chunks of ~8 MB — not the whole history (see ``_journal``
for the files and the crash-safe order of a checkpoint's steps). ``checkpoint()`` ends the journal's
segment under the writer lock and writes the snapshot from a copy of the mirror without it (the XML
of ``store_text=False`` documents read back from the journal, so the snapshot holds every live
document's XML: a document whose frame a checkpoint removed is read back from the snapshot). The
applier starts one in a thread of its own once the journal after the snapshot is larger than both
``checkpoint_bytes_min`` and the snapshot. A BaseX whose applied number is below S is verified and
repaired at open, not replayed (those frames are gone).

Read-only (``read_only=True``): the journal is opened for reading alone (nothing created, no torn
tail cut, no lock taken but the shared query gate when its file exists), no applier thread, no
verification or repair; ``transact``, ``flush``, ``check`` and ``rebuild`` raise ``StoreError``.
Queries wait (bounded by ``timeout_s``) until BaseX's applied number, as another process's applier
sets it, reaches the journal's end.

Files: this one is the facade (``BaseXStore``: open, applying, reads, writes); ``_basex_queries``
builds the XQuery text (pure functions, tested without a server), ``_basex_sessions`` connects and
pools sessions and holds databases open, ``_basex_mirror`` keeps the mirror, the transaction object,
checkpoints and back-pressure (``_Mirror``), ``_basex_recovery`` verifies and repairs BaseX
(``_Recovery``; both mixed into ``BaseXStore``), ``_basex_wire`` speaks BaseX's protocol,
``_journal`` is the record.
"""
from __future__ import annotations

import collections
import hashlib
import heapq
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar
import contextlib

from lxml import etree

from gridcredit.durable import write_atomically
from gridcredit.errors import QueryError, StoreError, StoreUnavailable, invariant

from ._api import (DEFAULT_LIMITS, NOT_COVERED, AttributeIndex, Backlog, Coverage, Document, QueryPage, StoreLimits,
                   Transaction, XmlStore, check_collection, check_doc_id, check_indexes, check_query_args, check_where,
                   coverage, run_with_retries)
from ._basex_queries import (PATCHABLE, Q_COLLECTIONS, Q_COUNT_ALL, Q_DOCS, Q_ENSURE, Q_ENSURE_INDEXED, Q_IDS,
                             Q_IDS_AFTER, Q_META, Q_META_SET, Q_UNHEALTHY, RESULT_PARSER, apply_query, db_name, naming,
                             select_query)
from ._basex_mirror import NOT_KEPT, _BacklogWatch, _BaseXTransaction, _frame_bytes, _Mirror, take_handover
from ._basex_recovery import _SAID_UNREACHABLE, _VERIFIED, _Recovery, _SharedVerification
from ._basex_mirror import _LagMarks
from ._basex_sessions import SESSION_ADDRESS, SESSION_LINE, BaseXUnavailable, Pins, Pool, connect
from ._basex_wire import ServerError, Session, WireError
from ._journal import Journal

T = TypeVar("T")
log = logging.getLogger(__name__)

class _IndexCatalog:
    """The declared attribute indexes, shared by a store's processes in ``<journal>/indexes.json``
    (written under the journal's writer lock, replaced atomically); each process reloads it when
    the file changes. ``extra``: declarations of this process not (yet) in the file (read-only)."""

    def __init__(self, path: Path, limits: StoreLimits) -> None:
        self.path = path
        self._limits = limits
        self._seen: tuple | None = None
        self.stored: dict[str, AttributeIndex] = {}
        self.extra: dict[str, AttributeIndex] = {}
        self.generation = 0
        self._coverage: dict[str, Coverage] = {}
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Reload if the file changed; returns whether the declarations changed."""
        try:
            status = os.stat(self.path)
            seen = (status.st_ino, status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen == self._seen:
                return False
        stored: dict[str, AttributeIndex] = {}
        if seen is not None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                stored = check_indexes([AttributeIndex(i["prefix"], tuple(i["attributes"]), bool(i["store_text"]))
                                        for i in data["indexes"]], self._limits)
            except (OSError, ValueError, KeyError, TypeError, StoreError) as error:
                raise StoreError(f"attribute index declarations {self.path} unreadable: {error}") from None
        with self._lock:
            changed = stored != self.stored
            self._seen, self.stored = seen, stored
            if changed:
                self._coverage = {}
                self.generation += 1
            return changed

    def merge(self, declared: dict[str, AttributeIndex]) -> list[str]:
        """Write ``declared`` over the stored declarations (writer lock held); returns the prefixes
        that are new or changed."""
        self.refresh()
        changed = sorted(p for p, index in declared.items() if self.stored.get(p) != index)
        if changed:
            merged = {**self.stored, **declared}
            if len(merged) > self._limits.indexes_max:
                raise StoreError(f"more than {self._limits.indexes_max} attribute indexes")
            text = json.dumps({"indexes": [{"prefix": p, "attributes": list(i.attributes), "store_text": i.store_text}
                                           for p, i in sorted(merged.items())]}, indent=1)
            write_atomically(self.path, text.encode("utf-8"))
            self.refresh()
        return changed

    def indexes(self) -> dict[str, AttributeIndex]:
        with self._lock:
            return {**self.stored, **self.extra}

    def coverage(self, collection: str) -> Coverage:
        with self._lock:
            found = self._coverage.get(collection)
            if found is None:
                merged = {**self.stored, **self.extra}
                found = coverage(merged, collection) if merged else NOT_COVERED
                if len(self._coverage) > 100_000:
                    self._coverage.clear()
                self._coverage[collection] = found
            return found


def _sha(xml: bytes) -> str:
    return hashlib.sha256(xml).hexdigest()


class _IndexUnusable(Exception):
    """The database's attribute index cannot answer a where item directly (see S_INDEXED)."""


class BaseXStore(_Mirror, _Recovery, XmlStore):
    apply_interval_s = 0.05         # the applier looks for frames nobody applied (e.g. a dead writer's)
    apply_delay_s = 0.25            # under load, a batch at most this often (unless a read is waiting)
    apply_batch_max = 1_000         # transactions in one BaseX update
    apply_batch_bytes = 16_000_000  # ... and about this much XML (a bigger transaction goes alone)
    backlog_max = 20_000            # journaled transactions not yet in BaseX before commits are refused
    backlog_bytes_max = 32_000_000  # committed XML not yet in BaseX before writers wait for the applier
    blind_apply_max = 20_000        # writes an open applies unverified (more: verify, re-apply what differs)
    rebuild_above = 10_000          # documents behind in one collection from which rebuilding is cheaper
    pins_max = 8                    # databases this process holds open in BaseX for its queries (see Pins) ...
    pin_documents_min = 10_000      # ... once their collection holds this many documents (smaller ones open fast)
    probe_s = 5.0                   # how long an open or a repair waits for BaseX to answer before going on without it
    checkpoint_bytes_min = 64_000_000   # journal after the snapshot before the applier checkpoints (see _maybe_checkpoint)
    checkpoint_check_s = 5.0        # ... looked at this often
    behind_after_s = 10.0           # BaseX applying nothing this long while commits wait: behind (said once; a
                                    # write held back is then refused at once, not after timeout_s)
    verify_chunk_docs = 100_000     # documents the background verification reads per step (applier lock held;
                                    # each step also walks the database for its ids: ~1 s per 1,000,000 here)
    fork_trust_s = 30.0             # a fork this soon after its parent verified BaseX does not verify again

    def __init__(self, journal_dir: Path, *, host: str = "127.0.0.1", port: int = 1984, user: str = "admin",
                 password: str = "admin", timeout_s: float = 30.0, limits: StoreLimits = DEFAULT_LIMITS,
                 db_prefix: str = "gc_", indexes: Sequence[AttributeIndex] = (), read_only: bool = False,
                 backlog_bytes_max: int | None = None) -> None:
        invariant(bool(db_prefix) and db_prefix.replace("_", "").isalnum(), "db_prefix is alphanumeric")
        if backlog_bytes_max is not None:
            if isinstance(backlog_bytes_max, bool) or not isinstance(backlog_bytes_max, int) or backlog_bytes_max < 1:
                raise StoreError(f"backlog_bytes_max must be a positive number of bytes, not {backlog_bytes_max!r}")
            self.backlog_bytes_max = backlog_bytes_max
        self.limits = limits
        self.read_only = bool(read_only)
        declared = check_indexes(indexes, limits)
        self.db_prefix = db_prefix
        self._meta_db = db_prefix + "_meta"   # no collection name starts with "_"
        self._timeout_s = float(timeout_s)
        self._address = (host, port, user, password)
        self._pool = Pool(self._connect, limits.pool_size, wait_s=self._timeout_s)
        self._pins = Pins(self._connect, self.pins_max)
        # a process forked right after its parent handed its store over (serve's workers) takes its mirror
        handed = None if self.read_only else take_handover(journal_dir, self.fork_trust_s)
        self.mirror_from: int | None = None       # the process whose mirror this store took (None: read the journal)
        self._journal = handed.journal if handed is not None else Journal(journal_dir, read_only=self.read_only)
        self._catalog = _IndexCatalog(Path(journal_dir) / "indexes.json", limits)
        self._keeps: dict[str, bool] = {}       # collection -> whether the mirror keeps its XML
        self._catalog_generation = -1
        # the mirror: collection -> doc_id -> (version, xml text | None for a tombstone | NOT_KEPT,
        # sequence number of the transaction that wrote it)
        self._state: dict[str, dict[str, tuple[int, str | None | bool, int]]] = {}
        # frames read or written by this process and not known to be in BaseX yet: (seq, writes)
        self._pending: collections.deque[tuple[int, list]] = collections.deque()
        self._pending_bytes = 0      # of the XML in _pending (see _hold_back_writes)
        self._lag_marks = _LagMarks()   # when the frames in _pending were read (backlog().lag_s: metrics)
        self._mirror_lock = threading.RLock()   # _state, _pending and the journal's read offset
        self._applied_seq = 0                   # highest sequence number known to be in BaseX
        self._applied_changed = threading.Condition()
        self._suspect = False
        self._repairing: int | None = None      # the thread verifying and repairing BaseX (see _needs_repair)
        self._broken_checked = 0
        self._apply_error: str | None = None
        self._wake = threading.Event()
        self._urgent = threading.Event()        # a read waits for BaseX: apply now
        self._meta_batch_s = 0.0                # time.time() of the last batch, as BaseX records it
        self._next_batch = 0.0                  # time.monotonic() before which the applier lets commits gather
        self._closing = threading.Event()
        self._applier: threading.Thread | None = None
        self._applier_pid: int | None = None
        self._applier_start = threading.Lock()
        self._known_databases: set[str] = set()   # databases this process created or saw (skip db:create)
        self.recovery_log: list[str] = []    # what open/repair did, for operators and tests
        self._watch = _BacklogWatch(self)       # says how far BaseX is behind, once per change
        self.waiting_for_basex: str | None = None   # why BaseX is not verified yet (opened without it)
        self._jumps_seen = 0                    # the journal's jumps over removed frames already handled
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_next = 0.0
        # the background verification after open (see _verify_step): collections left, the last id
        # verified in the first of them, this process's sorted ids of one collection (the chunks'
        # bounds) and the keys absorbed since it sorted them, progress, the start's token (shared
        # with the processes forked from the same parent: _SharedVerification)
        self._verify_left: list[str] | None = None
        self._verify_after = ""
        self._verify_bounds: list[str] = []
        self._verify_bounds_of: str | None = None
        self._verify_new: dict[str, set[str]] = {}
        self._verify_token: str | None = None
        self._shared = _SharedVerification(Path(journal_dir) / "verification.json")
        self._verify_docs = (0, 0)              # (documents read, documents to read)
        self._verify_started = 0.0
        self._verified = threading.Event()      # set once BaseX is verified against the journal
        self._verify_failed: str | None = None  # why the verification after open failed (the applier retries)
        try:
            if self.read_only:
                self._catalog.extra = {p: i for p, i in declared.items()}
                self._open_read_only()
                return
            # The snapshot (most of an open's time: ~1,000,000 documents in seconds) is read before the
            # locks, from the file the journal opened (a checkpoint meanwhile removes its name, not its
            # data): serve's workers read theirs side by side instead of one after the other.
            snapshot = self._adopt_handover(handed) if handed is not None else self._absorb_snapshot()
            with self._journal.opening(), self._journal.apply_lock(), self._journal.lock():
                self._catalog.merge(declared)
                self._open_locked(snapshot)
        except BaseException:
            self._pins.close()
            self._pool.close()
            self._journal.close()
            raise
        self._start_applier()

    def _open_read_only(self) -> None:
        """Read the journal into the mirror; nothing is verified, applied or written."""
        self._verified.set()      # (not by this process: queries wait for the applied number alone)
        self._absorb_snapshot()
        while self._absorb_chunk(applied=None):
            pass
        self._note_applied(self._read_meta())

    def _open_locked(self, snapshot: int) -> None:
        """Both locks held, the journal's snapshot (up to transaction ``snapshot``) in the mirror:
        read the journal's frames, apply what BaseX has not got, verify, repair. With BaseX
        unreachable: read the journal and go on without it (see _open_without_basex)."""
        unreachable = self._probe()
        applied = None
        if unreachable is None:
            try:
                applied = self._read_meta_or_none(check=True)
            except StoreError:
                applied = None           # unreadable: the verification below finds out the rest
        self._suspect = False
        with self._mirror_lock:
            self._refresh_keeps()      # (the declarations this open merged: the snapshot was read before)
        written: set[str] = set()    # databases written by frames BaseX has not got
        if applied is not None and applied < snapshot:
            if self.mirror_from is not None and snapshot - applied <= self.blind_apply_max \
                    and self._journal.holds_frames_from(applied + 1):
                # the mirror taken from the parent holds frames BaseX lacks: pending, as if read now
                with self._mirror_lock:
                    for seq in range(applied + 1, snapshot + 1):
                        writes = self._journal.frame_writes(seq)
                        self._pending.append((seq, writes))
                        self._pending_bytes += _frame_bytes(writes)
                        written.update(self._db(w[0]) for w in writes)
            else:
                self._note(f"BaseX has transactions up to {applied}, the "
                           f"{'journal' if self.mirror_from is None else 'mirror'}'s snapshot holds up to {snapshot} "
                           f"(its frames are gone); verifying every database instead of applying frames")
                applied = None
        while True:                  # in chunks: never the whole journal in memory at once
            entries = self._absorb_chunk(applied, repair=True)
            if not entries:
                break
            if applied is not None:
                written.update(self._db(w[0]) for seq, writes in entries if seq > applied for w in writes)
        last = self._journal.last_seq
        if unreachable is None:
            try:
                self._open_verify_locked(applied, written, last)
                return
            except BaseXUnavailable as error:
                unreachable = str(error)
        self._open_without_basex(unreachable)

    def _open_without_basex(self, why: str) -> None:
        """BaseX did not answer at open: the mirror holds the journal (the record), so reads by id
        and commits work; the applier verifies and repairs BaseX when it answers again (the store
        is suspect until then: queries raise StoreError). The backlog counts from here."""
        with self._mirror_lock:
            self._pending.clear()
            self._pending_bytes = 0
        self._suspect = True
        self._note_applied(self._journal.last_seq)
        self.waiting_for_basex = why
        host, port = self._address[:2]
        message = (f"BaseX at {host}:{port} unreachable; serving from the journal, will apply it to BaseX when "
                   f"BaseX returns ({why})")
        said = (str(self._journal.directory), host, port)
        if said in _SAID_UNREACHABLE:     # a forked worker of a process that said it already
            log.info("xmlstore/basex: %s", message)
            self.recovery_log.append(message)
        else:
            _SAID_UNREACHABLE.add(said)
            self._note(message)

    def _probe(self) -> str | None:
        """None if BaseX answers a login within ``probe_s``, else why not (a stopped BaseX accepts
        connections and answers nothing: the login times out)."""
        host, port, user, password = self._address
        try:
            Session(host, port, user, password, timeout_s=min(self.probe_s, self._timeout_s)).close()
            return None
        except WireError as error:
            return str(error)

    # -- attribute indexes --
    @property
    def indexes(self) -> tuple[AttributeIndex, ...]:
        self._catalog.refresh()
        merged = self._catalog.indexes()
        return tuple(merged[p] for p in sorted(merged))

    def _coverage(self, collection: str) -> Coverage:
        self._catalog.refresh()
        return self._catalog.coverage(collection)

    # -- sessions --
    def _connect(self) -> Session:
        host, port, user, password = self._address
        return connect(host, port, user, password, self._timeout_s)

    def _run(self, text: str, bindings: dict[str, tuple[str, str]] | None = None, *,
             timeout_s: float | None = None, exclusive: bool = False) -> str:
        try:
            with self._journal.query_gate(exclusive=exclusive), self._pool.session() as session:
                if timeout_s is not None:
                    session.settimeout(timeout_s)
                try:
                    return session.query(text, bindings)
                except ServerError as error:
                    if "Potential bug" in str(error):   # a BaseX internal error: its thread may keep locks
                        session.close()                 # never reuse it (counts as broken: verify next)
                    raise
                finally:
                    if timeout_s is not None and not session.broken:
                        session.settimeout(self._timeout_s)
        except WireError as error:
            self._suspect = True
            raise BaseXUnavailable(f"BaseX unavailable: {error}") from None

    def _db(self, collection: str) -> str:
        return self.db_prefix + check_collection(collection)

    # -- databases held open (see Pins) --
    def _pin(self, collection: str) -> None:
        """Hold the collection's database open in BaseX if it is large (before querying it)."""
        if len(self._state.get(collection, ())) >= self.pin_documents_min:
            self._pins.pin(self._db(collection), lambda: self._journal.query_gate(exclusive=False))

    def _without_pins(self, db: str, fn: Callable[[], T], attempts: int = 5) -> T:
        """Run ``fn`` — an operation BaseX refuses while any session holds ``db`` open (DROP DB,
        db:optimize ALL: "opened by another process") — after closing this process's pin and
        ending the other sessions that hold it open (``KILL``: the pins of this store's other
        processes, which pin it again at their next query). Another process may pin it again in
        between: then again, at most ``attempts`` times."""
        with self._pins.held(db):
            for attempt in range(attempts):
                self._end_other_pins(db)
                try:
                    return fn()
                except ServerError as error:
                    if "opened by another process" not in str(error) or attempt == attempts - 1:
                        raise
                self._note(f"{db}: still held open by another session; ending it again")
                time.sleep(0.02 * (attempt + 1))
        raise StoreError("unreachable")

    def _end_other_pins(self, db: str) -> None:
        """KILL the sessions that hold ``db`` open (SHOW SESSIONS names it after their address);
        needs BaseX's ADMIN permission — without it they stay, and what follows may be refused."""
        try:
            with self._journal.query_gate(exclusive=False), self._pool.session() as session:
                for line in session.command("SHOW SESSIONS").splitlines():
                    match = SESSION_LINE.match(line.strip())
                    if match and match.group(3) == db and SESSION_ADDRESS.match(match.group(2)):
                        session.command(f"KILL {match.group(2)}")
        except ServerError as error:
            log.info("xmlstore/basex: cannot end the sessions holding %s open (%s)", db, str(error)[:200])
        except WireError as error:
            self._suspect = True
            raise StoreError(f"BaseX unavailable: {error}") from None

    def _note_applied(self, seq: int) -> None:
        with self._applied_changed:
            if seq > self._applied_seq:
                self._applied_seq = seq
                self._applied_changed.notify_all()
        with self._mirror_lock:
            while self._pending and self._pending[0][0] <= seq:
                self._pending_bytes -= _frame_bytes(self._pending.popleft()[1])

    # -- the applied sequence number in BaseX --
    def _read_meta(self) -> int:
        """BaseX's applied sequence number (0 if it has none)."""
        return self._read_meta_or_none() or 0

    def _unhealthy(self, names: list[str]) -> set[str]:
        """Databases whose metadata is unreadable (never open them: see Q_UNHEALTHY)."""
        return set(self._run(Q_UNHEALTHY, {"$names": (" ".join(names), "")}).split())

    def _read_meta_or_none(self, *, check: bool = False) -> int | None:
        try:
            if check and self._unhealthy([self._meta_db]):
                self._suspect = True
                raise StoreError(f"BaseX's applied-number database {self._meta_db} is damaged")
            text = self._run(Q_META, {"$m": (self._meta_db, "")})
            if text == "none":
                return None
            parts = text.split()
            if len(parts) != 2 or not all(part.isdigit() for part in parts):   # damaged by a crash
                self._suspect = True
                raise StoreError(f"BaseX's applied sequence number is unreadable ({text[:100]!r})")
            self._meta_batch_s = int(parts[1]) / 1000
            return int(parts[0])
        except ServerError as error:
            self._suspect = True
            raise StoreError(f"cannot read BaseX's applied sequence number: {error}") from None

    def _set_meta(self, seq: int) -> None:
        """Record ``seq`` as applied (both locks held, BaseX verified up to it); recreates a
        damaged meta database."""
        try:
            if self._unhealthy([self._meta_db]):
                raise ServerError("its metadata is unreadable")
            self._ensure_databases([self._meta_db])
            self._run(Q_META_SET, {"$m": (self._meta_db, ""), "$seq": (str(seq), "")})
        except ServerError as error:
            self._note(f"applied-number database {self._meta_db} unusable ({str(error)[:200]}); recreating it")
            self._known_databases.discard(self._meta_db)
            self._drop(self._meta_db)
            self._ensure_databases([self._meta_db])
            self._run(Q_META_SET, {"$m": (self._meta_db, ""), "$seq": (str(seq), "")})

    def _ensure_databases(self, names: list[str]) -> None:
        missing = sorted(set(names) - self._known_databases)
        if not missing:
            return
        groups: dict[str, list[str]] = {}    # attributes to index ("" none) -> databases
        for db in missing:
            collection = db[len(self.db_prefix):]
            indexed = self._coverage(collection).attributes if db != self._meta_db else frozenset()
            groups.setdefault(",".join(sorted(indexed)), []).append(db)
        for include, dbs in groups.items():
            if include:
                self._run(Q_ENSURE_INDEXED, {"$names": (" ".join(dbs), ""), "$include": (include, "")})
            else:
                self._run(Q_ENSURE, {"$names": (" ".join(dbs), "")})
        self._known_databases.update(missing)

    def _drop(self, db: str) -> None:
        def drop() -> None:
            with self._journal.query_gate(exclusive=False), self._pool.session() as session:
                session.command(f"DROP DB {db_name(db)}")
        try:
            self._without_pins(db, drop)
        except ServerError as error:
            raise StoreError(f"cannot drop damaged database {db}: {error}; remove its folder by hand "
                             f"and reopen") from None
        except WireError as error:
            self._suspect = True
            raise StoreError(f"BaseX unavailable: {error}") from None

    # -- applying committed frames to BaseX --
    def _needs_repair(self) -> bool:
        if self.read_only:
            return False          # a read-only store repairs nothing (a writable open does)
        repairing = self._repairing
        if repairing is not None and repairing != threading.get_ident():
            return True           # another thread is at it: wait for its outcome on the applier lock
        return self._suspect or self._pool.broken_seen != self._broken_checked

    def _ops(self, writes: list, seq: int | None = None, *, add_first_writes: bool = False,
             fresh: bool = False) -> str:
        """The ops document; ``add_first_writes``: version-1 documents are added (see ops_of),
        ``fresh``: every op is (the databases were just created empty)."""
        parts = ['<ops>' if seq is None else f'<ops seq="{int(seq)}" t="{int(time.time() * 1000)}">']
        for collection, doc_id, version, xml in writes:
            db = self._db(collection)   # names and ids are validated: safe in attributes
            how = ' new="1"' if fresh or (add_first_writes and version == 1 and xml is not None) else ""
            if not how and xml is not None and PATCHABLE.fullmatch(xml):
                how = ' patch="1"'     # elements and attributes only: their values may change in place
            if xml is None:
                parts.append(f'<op db="{db}" id="{doc_id}" v="{int(version)}" del="1"{how}/>')
            else:
                parts.append(f'<op db="{db}" id="{doc_id}" v="{int(version)}"{how}>{xml}</op>')
        parts.append("</ops>")
        return "".join(parts)

    def _apply_state_writes(self, writes: list, *, fresh: bool = False) -> None:
        """Write documents' state to BaseX without touching the applied number (repair, rebuild)."""
        databases = [self._db(w[0]) for w in writes]
        self._ensure_databases(databases)
        self._run(apply_query(databases, None), {"$ops": (self._ops(writes, fresh=fresh), "")})

    def _apply_batch(self, batch: list[tuple[int, list]], base: int, *, add_first_writes: bool = True) -> None:
        """Apply whole transactions base+1 .. batch[-1] in one update, each document once."""
        latest: dict[tuple[str, str], tuple[int, str | None]] = {}
        for _seq, writes in batch:
            for collection, doc_id, version, xml in writes:
                latest[(collection, doc_id)] = (version, xml)
        writes = [(c, d, v, x) for (c, d), (v, x) in latest.items()]
        databases = [self._db(w[0]) for w in writes]
        self._ensure_databases(databases + [self._meta_db])
        try:
            self._run(apply_query(databases, self._meta_db),
                      {"$ops": (self._ops(writes, batch[-1][0], add_first_writes=add_first_writes), ""),
                       "$base": (str(base), "")})
        except ServerError as error:
            self._suspect = True
            raise StoreError(f"BaseX refused transactions {base + 1}..{batch[-1][0]}: {error}") from None

    def backlog(self) -> Backlog:
        with self._mirror_lock:
            return Backlog(max(0, self._journal.last_seq - self._applied_seq), self._pending_bytes,
                           self.waiting_for_basex is not None or self._suspect,
                           self._lag_marks.lag_s(self._applied_seq, time.time()))

    def _has_backlog(self) -> bool:
        return (self._needs_repair() or self._journal.size() > self._journal.offset
                or self._journal.last_seq > self._applied_seq)

    def _apply_backlog(self, *, blocking: bool, gather: bool) -> bool:
        """Apply the committed frames not yet in BaseX (with ``gather``, not sooner than
        ``apply_delay_s`` after the last batch unless a read waits); False if another holder of the
        applier lock (another process) is at it, which then applies ours too."""
        with self._journal.apply_lock(blocking=blocking) as taken:
            if not taken:
                return False
            self._apply_pending_locked(writer_locked=False, drain=False, gather=gather)
            return True

    def _apply_pending_locked(self, *, writer_locked: bool, verify_first: bool = True, drain: bool = True,
                              gather: bool = False) -> None:
        # verify_first=False (at open, BaseX not verified yet): replace, never add (see ops_of)
        """Apply committed frames: all of them (``drain``), or those that were there when called."""
        if verify_first and self._needs_repair():
            self._repair_locked(writer_locked=writer_locked)
            return
        target = self._catch_up_unlocked()
        if target <= self._applied_seq:
            return       # (a torn tail of a dead writer keeps the file longer: nothing to apply)
        applied = self._read_meta()
        self._note_applied(applied)
        since = time.time() - self._meta_batch_s     # the last batch of ANY process
        if gather and 0 <= since < self.apply_delay_s and not self._urgent.is_set():
            self._next_batch = time.monotonic() + self.apply_delay_s - since
            self._wake.set()       # come back then (the applier waits for _next_batch)
            return
        while True:
            gap = False
            batch: list[tuple[int, list]] = []
            with self._mirror_lock:
                last = self._catch_up_unlocked()
                if applied > last or (applied < last and (not self._pending
                                                          or self._pending[0][0] != applied + 1)):
                    gap = True    # BaseX's number is not one our pending frames continue from
                else:
                    size = 0
                    for entry in self._pending:
                        if batch and (len(batch) >= self.apply_batch_max or size >= self.apply_batch_bytes):
                            break
                        batch.append(entry)
                        size += sum(len(w[3] or "") for w in entry[1])
            if gap:
                self._note(f"BaseX reports transaction {applied} applied, the journal is at {last}; verifying")
                if not verify_first:
                    raise StoreError("applied number out of step with the journal")
                self._repair_locked(writer_locked=writer_locked)
                return
            if not batch or (not drain and applied >= target):
                return
            self._journal.sync()   # BaseX never holds a frame that is not durable
            self._next_batch = time.monotonic() + self.apply_delay_s
            self._apply_batch(batch, applied, add_first_writes=verify_first)
            applied = batch[-1][0]
            self._note_applied(applied)
            self._apply_error = None

    def _start_applier(self) -> None:
        if self.read_only or self._applier_pid == os.getpid() or self._closing.is_set():
            return
        with self._applier_start:
            if self._applier_pid == os.getpid():
                return
            self._applier_pid = os.getpid()   # (again after a fork: threads do not survive it)
            self._applier = threading.Thread(target=self._applier_loop, name="xmlstore-basex-applier", daemon=True)
            self._applier.start()

    def _applier_loop(self) -> None:
        pause, failures = self.apply_interval_s, 0
        while True:
            self._wake.wait(pause)
            self._wake.clear()
            if self._closing.is_set():
                return
            pause = self.apply_interval_s
            gather = self._next_batch - time.monotonic()
            if gather > 0 and not self._urgent.is_set():
                self._urgent.wait(gather)   # let commits gather into one batch; a waiting read cuts it short
                if self._closing.is_set():
                    return
            self._urgent.clear()
            self._maybe_checkpoint()
            try:
                if self._has_backlog() and not self._apply_backlog(blocking=False, gather=True):
                    pause = 0.005     # another process holds the applier lock: look again soon
                if self._verify_left is not None and not self._needs_repair() and not self._closing.is_set():
                    if self._verify_step():      # one chunk; commits are applied between chunks
                        pause = 0.0              # (else another process verifies: look again in a while)
                failures = 0
            except Exception as error:  # noqa: BLE001 — the applier must survive anything
                failures += 1
                self._suspect = True
                self._apply_error = f"{type(error).__name__}: {error}"
                if not self._verified.is_set():
                    self._verify_failed = self._apply_error   # (wait_verified stops waiting; a repair goes on)
                if failures == 1 and self.waiting_for_basex is None:   # (else the open said so)
                    log.warning("xmlstore/basex: applying the journal to BaseX failed (%s); retrying",
                                self._apply_error)
                self._closing.wait(min(1.0, 0.02 * 2 ** failures))
            self._watch.observe()     # says how far BaseX is behind, when that changed

    def _await_applied(self, target: int | None = None, waiting: str = "this read") -> None:
        """Wait until BaseX holds transaction ``target`` (default: every transaction the journal held
        when we were called)."""
        self._start_applier()
        if self._verify_left is not None:
            self._await_verified(waiting)
        if self._needs_repair():
            with self._journal.apply_lock():
                if self._needs_repair():
                    self._repair_locked(writer_locked=False)
        caught_up = self._catch_up_unlocked()
        if target is None:
            target = caught_up
        if self._applied_seq >= target:
            return
        self._urgent.set()
        self._wake.set()
        deadline = time.monotonic() + self._timeout_s
        pause = 0.002
        while True:
            with self._applied_changed:
                if self._applied_changed.wait_for(lambda: self._applied_seq >= target, timeout=pause):
                    return
            self._note_applied(self._read_meta())    # another process may have applied it
            if self._applied_seq >= target:
                return
            if self._needs_repair():
                with self._journal.apply_lock():
                    if self._needs_repair():
                        self._repair_locked(writer_locked=False)
                continue
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"the store's database (BaseX) has applied the journal up to transaction "
                                       f"{self._applied_seq}, {waiting} needs {target}: not caught up within "
                                       f"{self._timeout_s} s (applier's last error: {self._apply_error or 'none'}); "
                                       f"retry later")
            self._urgent.set()
            self._wake.set()
            pause = min(pause * 2, 0.05)

    def _note(self, message: str) -> None:
        log.warning("xmlstore/basex: %s", message)
        self.recovery_log.append(message)

    def _apply_state(self, collection: str, doc_ids: list[str], batch: int = 1000, *, fresh: bool = False) -> None:
        expected = self._state.get(collection, {})
        for start in range(0, len(doc_ids), batch):
            chunk = doc_ids[start:start + batch]
            texts = self._texts(collection, chunk)
            self._apply_state_writes([(collection, d, expected[d][0], texts.get(d)) for d in chunk], fresh=fresh)

    def _texts(self, collection: str, doc_ids: list[str]) -> dict[str, str]:
        """The current XML of live documents, from the mirror or (not kept) read back from the
        journal, each frame once."""
        entries = self._state.get(collection, {})
        texts: dict[str, str] = {}
        wanted: dict[int, set[str]] = {}
        for doc_id in doc_ids:
            _version, xml, seq = entries[doc_id]
            if isinstance(xml, str):
                texts[doc_id] = xml
            elif xml is NOT_KEPT:
                wanted.setdefault(seq, set()).add(doc_id)
        for seq in sorted(wanted):
            for written_collection, doc_id, _version, xml in self._journal.frame_writes(seq):
                if written_collection == collection and doc_id in wanted[seq] and xml is not None:
                    texts[doc_id] = xml
        invariant(all(d in texts for ids in wanted.values() for d in ids), "the journal holds every live document")
        return texts

    # -- public maintenance --
    def _refuse_if_read_only(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"store {self._journal.directory} is open read-only: no {what}")

    def flush(self) -> None:
        """Wait until BaseX holds every transaction committed so far (applying them if need be)."""
        self._refuse_if_read_only("flush")
        with self._journal.apply_lock():
            self._apply_pending_locked(writer_locked=False)

    def check(self) -> dict[str, dict]:
        """Compare BaseX with the journal: counts, versions and content hashes of every document."""
        self._refuse_if_read_only("check")
        report: dict[str, dict] = {}
        with self._journal.apply_lock(), self._journal.lock():
            with self._mirror_lock:
                self._absorb(self._journal.read_new(repair=True))
            self._apply_pending_locked(writer_locked=True)
            for collection in sorted(self._state):
                expected = {d: v for d, (v, x, _s) in self._state[collection].items() if x is not None}
                status, _seq, live, _versions = self._status(collection)
                entry: dict = {"expected": len(expected), "found": len(live), "status": status[:200],
                               "missing": sorted(set(expected) - live), "extra": sorted(live - set(expected)),
                               "different": []}
                ids = sorted(live & set(expected))
                for start in range(0, len(ids), 500):
                    texts = self._texts(collection, ids[start:start + 500])
                    for doc in self._fetch(collection, ids[start:start + 500]):
                        version, xml = expected[doc.doc_id], texts[doc.doc_id]
                        if doc.version != version or _sha(doc.xml) != _sha(xml.encode()):
                            entry["different"].append(doc.doc_id)
                entry["ok"] = status in ("ok", "missing") and not (entry["missing"] or entry["extra"] or
                                                                   entry["different"])
                report[collection] = entry
        return report

    def rebuild(self, collection: str | None = None, *, _locked: bool = False) -> None:
        """Drop the collection's database (or all) and load it again from the journal."""
        self._refuse_if_read_only("rebuild")
        if not _locked:
            with self._journal.apply_lock(), self._journal.lock():
                with self._mirror_lock:
                    self._absorb(self._journal.read_new(repair=True))
                self._apply_pending_locked(writer_locked=True)     # the others reach the same point
                self.rebuild(collection, _locked=True)
                self._set_meta(self._journal.last_seq)
                return
        for name in ([collection] if collection else sorted(self._state)):
            db = self._db(name)
            self._known_databases.discard(db)
            self._drop(db)
            self._apply_state(name, sorted(self._state.get(name, {})), fresh=True)   # into an empty database
            self._note(f"{name}: rebuilt from the journal ({len(self._state.get(name, {}))} documents)")

    # -- reads --
    def _parse_result(self, text: str) -> etree._Element:
        return etree.fromstring(text.encode(), parser=RESULT_PARSER)

    def _fetch(self, collection: str, ids: list[str]) -> list[Document]:
        """Documents with their versions as BaseX records them (slow: check())."""
        root = self._parse_result(self._run(naming(Q_DOCS, self._db(collection)), {"$ids": (" ".join(ids), "")}))
        return [self._document(collection, d) for d in root]

    def _with_versions(self, collection: str, root: etree._Element) -> list[Document] | None:
        """The documents of a result that BaseX answered at applied number ``root/@seq``, with
        their versions from the mirror: a document's mirror entry written at or before that number
        is the state BaseX read. None when one was written after it (or the mirror is behind)."""
        seq = int(root.get("seq") or 0)
        documents = []
        with self._mirror_lock:
            if self._catch_up_unlocked() < seq:
                return None
            entries = self._state.get(collection, {})
            for element in root:
                entry = entries.get(element.get("id"))
                if entry is None or entry[2] > seq or entry[1] is None:
                    return None
                documents.append(self._document(collection, element, version=entry[0]))
        return documents

    def _document(self, collection: str, element: etree._Element, *, version: int | None = None) -> Document:
        children = [c for c in element if isinstance(c.tag, str)]
        invariant(len(children) == 1, "a stored document has one root element")
        xml = etree.tostring(children[0], encoding="UTF-8", with_tail=False)
        return Document(collection, element.get("id"), xml,
                        int(element.get("v") or 0) if version is None else version)

    def get(self, collection: str, doc_id: str) -> Document | None:
        """From the mirror, caught up with the journal: every acknowledged write, no BaseX round
        trip (``store_text=False`` collections: the version from the mirror, the XML from the
        journal frame that wrote it)."""
        collection, doc_id = check_collection(collection), check_doc_id(doc_id)
        with self._mirror_lock:
            self._catch_up_unlocked()
            entry = self._state.get(collection, {}).get(doc_id, (0, None, 0))
        return self._live_document(collection, doc_id, entry)

    def scan(self, collection: str, *, after_id: str | None = None, limit: int = 1000) -> list[Document]:
        """The next ``limit`` documents after ``after_id``: ids from BaseX, documents from the
        mirror (not kept: from the journal)."""
        db = self._db(collection)
        if not 1 <= limit <= self.limits.query_limit_max:
            raise QueryError(f"limit must be 1..{self.limits.query_limit_max}")
        if after_id is not None:
            check_doc_id(after_id)
        self._await_applied()
        self._pin(collection)
        ids = self._run(naming(Q_IDS_AFTER, db), {"$after": (after_id or "", ""),
                                                   "$limit": (str(limit), "xs:integer")}).split()
        return [d for d in (self.get(collection, doc_id) for doc_id in ids) if d is not None]

    def scan_local(self, collection: str, *, after_id: str | None = None, limit: int = 1000) -> list[Document]:
        """The next ``limit`` live documents after ``after_id`` from the mirror, caught up with the
        journal like ``get`` (not kept: the XML from the journal): no BaseX call, so it answers
        while BaseX is down or stopped. Picks the ids from the collection's mirror entries
        (O(documents) per call, under the mirror lock)."""
        collection = check_collection(collection)
        if not 1 <= limit <= self.limits.query_limit_max:
            raise QueryError(f"limit must be 1..{self.limits.query_limit_max}")
        after = "" if after_id is None else check_doc_id(after_id)
        with self._mirror_lock:
            self._catch_up_unlocked()
            entries = self._state.get(collection, {})
            chosen = [(doc_id, entries[doc_id]) for doc_id in heapq.nsmallest(
                limit, (doc_id for doc_id, entry in entries.items() if entry[1] is not None and doc_id > after))]
        return [document for doc_id, entry in chosen
                if (document := self._live_document(collection, doc_id, entry)) is not None]

    def collections(self) -> list[str]:
        self._await_applied()
        names = self._run(Q_COLLECTIONS, {"$prefix": (self.db_prefix, "")}).split()
        return [n[len(self.db_prefix):] for n in names if n != self._meta_db]

    def ids(self, collection: str, offset: int = 0, limit: int = 1000) -> list[str]:
        if offset < 0 or not 1 <= limit <= 100_000:
            raise StoreError("ids: offset >= 0 and 1 <= limit <= 100000")
        db = self._db(collection)
        self._await_applied()
        self._pin(collection)
        return self._run(naming(Q_IDS, db), {"$offset": (str(offset), "xs:integer"),
                                              "$limit": (str(limit), "xs:integer")}).split()

    def _select(self, collection: str, xpath: str | None, variables: Mapping[str, str | int],
                where: dict[str, tuple[str, ...]], namespaces: Mapping[str, str], time_limit_s: float,
                scan_limit: int | None, page: tuple[int, int] | None, *,
                versions_from_basex: bool = False,
                index_lookup: bool = True) -> tuple[str, dict[str, tuple[str, str]]]:
        """The query text and bindings for query (``page`` = (first position, count)) or count
        (see select_query)."""
        return select_query(self._db(collection), self._meta_db, covered=self._coverage(collection).attributes,
                            xpath=xpath, variables=variables, where=where, namespaces=namespaces,
                            time_limit_s=time_limit_s,
                            scan_limit=self.limits.scan_limit_default if scan_limit is None else int(scan_limit),
                            page=page, limits=self.limits, versions_from_basex=versions_from_basex,
                            index_lookup=index_lookup)

    def _run_select(self, collection: str, xpath: str | None, text: str, bindings: dict,
                    time_limit_s: float, scan_limit: int | None) -> str:
        try:
            return self._run(text, bindings, timeout_s=time_limit_s + self._timeout_s)
        except ServerError as error:
            message = str(error)
            if "gridcredit-index-unusable" in message:
                raise _IndexUnusable() from None
            if "gridcredit-scan-limit" in message:
                limit = self.limits.scan_limit_default if scan_limit is None else scan_limit
                raise QueryError(f"the query would examine more documents of {collection!r} than the scan limit "
                                 f"{limit}: narrow the collection or the where, or raise scan_limit") from None
            if "xquery:timeout" in message:
                raise QueryError(f"query exceeded its time limit of {time_limit_s} s") from None
            if "xquery:permission" in message:
                raise QueryError(f"XPath refused (not allowed in queries): {message}") from None
            raise QueryError(f"XPath error in {xpath!r}: {message}") from None

    def _answer(self, collection: str, xpath: str | None, variables: Mapping[str, str | int],
                where: dict[str, tuple[str, ...]], namespaces: Mapping[str, str], time_limit_s: float,
                scan_limit: int | None, page: tuple[int, int] | None, *, versions_from_basex: bool = False) -> str:
        """Run the select: with an indexed where item read from the index directly, or (when the
        database's index cannot answer it: not built yet, other names or a shorter MAXLEN) in the
        general form."""
        for index_lookup in (True, False):
            text, bindings = self._select(collection, xpath, variables, where, namespaces, time_limit_s, scan_limit,
                                          page, versions_from_basex=versions_from_basex, index_lookup=index_lookup)
            try:
                return self._run_select(collection, xpath, text, bindings, time_limit_s, scan_limit)
            except _IndexUnusable:
                log.info("xmlstore/basex: %s: its attribute index cannot answer %s; asking without it",
                         collection, sorted(where))
        raise StoreError("unreachable: the general form never asks for the index")

    def query_plan(self, collection: str, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
                   where: Mapping[str, str | tuple[str, ...]] = {}, namespaces: Mapping[str, str] = {},
                   count: bool = False) -> str:
        """BaseX's query info (compilation steps, optimized query, timings, locks) for the query
        that ``query`` (or ``count``) runs with these arguments: shows whether the index is used
        and which databases the query locks."""
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, 0, 1, 5.0, self.limits)
        checked = check_where(where, self.limits)
        self._await_applied()
        self._pin(collection)
        for index_lookup in (True, False):
            text, bindings = self._select(collection, xpath, variables, checked, namespaces, 5.0, None,
                                          None if count else (1, 101), index_lookup=index_lookup)
            try:
                with self._journal.query_gate(exclusive=False), self._pool.session() as session:
                    session.command("SET QUERYINFO true")
                    try:
                        return session.query_info(text, bindings)[1]
                    finally:
                        session.command("SET QUERYINFO false")
            except ServerError as error:
                if "gridcredit-index-unusable" in str(error):
                    continue
                raise QueryError(f"query plan failed: {error}") from None
            except WireError as error:
                self._suspect = True
                raise StoreError(f"BaseX unavailable: {error}") from None
        raise StoreError("unreachable: the general form never asks for the index")

    def query(self, collection: str, xpath: str | None, variables: Mapping[str, str | int] = {}, *,
              where: Mapping[str, str | tuple[str, ...]] = {}, namespaces: Mapping[str, str] = {},
              offset: int = 0, limit: int = 100, time_limit_s: float = 5.0,
              scan_limit: int | None = None) -> QueryPage:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, offset, limit, time_limit_s, self.limits)
        checked = check_where(where, self.limits)
        if any(not values for values in checked.values()):
            return QueryPage([], None)             # an empty tuple matches nothing
        self._await_applied()
        self._pin(collection)
        deadline = time.monotonic() + time_limit_s
        documents = None
        for versions_from_basex in (False, False, True):
            root = self._parse_result(self._answer(collection, xpath, variables, checked, namespaces, time_limit_s,
                                                   scan_limit, (offset + 1, limit + 1),
                                                   versions_from_basex=versions_from_basex))
            if time.monotonic() > deadline:
                raise QueryError(f"query exceeded its time limit of {time_limit_s} s")
            if versions_from_basex:
                documents = [self._document(collection, d) for d in root]
            else:
                documents = self._with_versions(collection, root)
            if documents is not None:
                break
            self._await_applied()      # a document changed since BaseX's state: ask again, caught up
        more = len(documents) > limit
        return QueryPage(documents[:limit], offset + limit if more else None)

    def count(self, collection: str, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
              where: Mapping[str, str | tuple[str, ...]] = {}, namespaces: Mapping[str, str] = {},
              time_limit_s: float = 5.0, scan_limit: int | None = None) -> int:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, 0, 1, time_limit_s, self.limits)
        checked = check_where(where, self.limits)
        if any(not values for values in checked.values()):
            return 0
        self._await_applied()
        self._pin(collection)
        if xpath is None and not checked:
            return int(self._run(naming(Q_COUNT_ALL, self._db(collection))))
        return int(self._answer(collection, xpath, variables, checked, namespaces, time_limit_s, scan_limit, None))

    # -- writes --
    def transact(self, fn: Callable[[Transaction], T], *, retries: int | None = None) -> T:
        self._refuse_if_read_only("transactions")
        retries = self.limits.retries_default if retries is None else retries
        self._start_applier()

        def attempt() -> T:
            self._hold_back_writes()
            with self._journal.lock():
                with self._mirror_lock:
                    self._absorb(self._journal.read_new(repair=True))
                if self._journal.last_seq - self._applied_seq >= self.backlog_max:
                    if not self._watch.stalled():    # (a BaseX that stands still would hold the writer lock)
                        with contextlib.suppress(StoreError):
                            self._note_applied(self._read_meta())   # another process may have applied them
                    if self._journal.last_seq - self._applied_seq >= self.backlog_max:
                        self._watch.observe()
                        raise StoreUnavailable(self._watch.refusal())
                tx = _BaseXTransaction(self)
                result = fn(tx)
                if not tx.staged:
                    return result
                seq = self._journal.last_seq + 1
                writes = [(c, d, v, None if x is None else x.decode()) for (c, d), (v, x) in tx.staged.items()]
                with self._mirror_lock:
                    self._journal.append(seq, writes, sync=False)   # written; durable at the sync below
                    self._absorb([(seq, writes)])
            try:
                self._journal.sync()        # outside the lock: concurrent writers share fsyncs
            except OSError as error:
                raise StoreError(f"fsync of the journal failed ({error}): transaction {seq} is written but "
                                 f"perhaps not durable") from None
            self._wake.set()
            self._watch.observe()
            return result

        return run_with_retries(attempt, retries)

    def close(self) -> None:
        """Stop the applier, push what this process committed to BaseX if it can (the journal
        keeps it anyway), close sessions and the journal."""
        self._close(keep_journal=False)

    def _close(self, *, keep_journal: bool) -> None:
        self._closing.set()
        self._wake.set()
        if self._applier is not None and self._applier_pid == os.getpid():
            self._applier.join(self._timeout_s)
        fact = _VERIFIED.get(self._verified_key())
        if fact is not None and fact[0] == os.getpid() and (self.verifying or self._needs_repair()):
            del _VERIFIED[self._verified_key()]     # BaseX in doubt: a fork verifies for itself
        try:
            self._release_verification()
        except (OSError, StoreError) as error:     # (the others take over once this process ends)
            log.info("xmlstore/basex: could not leave the verification's steps to the other processes (%s)", error)
        if self._checkpointer is not None and self._applier_pid == os.getpid():
            self._checkpointer.join()     # it stops within 10,000 documents of _closing (the journal stays whole)
        try:
            if not self.read_only and not self._needs_repair():
                self._apply_backlog(blocking=False, gather=False)
        except Exception as error:  # noqa: BLE001 — best effort: the next applier or open does it
            log.info("xmlstore/basex: not applied at close (%s); the journal has it", error)
        self._pins.close()
        self._pool.close()
        if not keep_journal:
            self._journal.close()
