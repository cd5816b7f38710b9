"""The BaseX store's mirror and transactions: every document's current version (and XML) as the
journal says, in each process's memory; the transaction object ``tx``; checkpoints; and how far
BaseX is behind the committed frames (back-pressure, ``_BacklogWatch``).

``_Mirror`` is the part of ``BaseXStore`` (``_basex``, whose docstring's "Writes", "Reads",
"Memory" and "Opening and checkpoints" sections say how) that reads the journal into the mirror,
checkpoints it and holds writers back; it works on the store's state and is not used alone.
"""
from __future__ import annotations

import collections
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from gridcredit.errors import StoreError, StoreUnavailable, invariant

from ._api import Document, Transaction, check_collection, check_doc_id, normalized_for_put
from ._basex_recovery import _FORKED_AT
from ._journal import READ_BYTES_MAX, Journal

if TYPE_CHECKING:
    from ._basex import BaseXStore

log = logging.getLogger("gridcredit.xmlstore._basex")     # (the store's log lines, as before the split)

# The mirror's stand-in for the XML of a ``store_text=False`` collection's live document: a
# singleton Python's cyclic GC does not track. (An instance of a class of ours is tracked, and so
# is every (version, it, seq) tuple holding it: at 1,000,000 documents each full collection walked
# them all, a ~0.2 s stall of every thread of the process.)
NOT_KEPT = False


@dataclass
class _Handover:
    """What ``hand_over()`` left to the processes this one forks next (see ``_Mirror.hand_over``):
    the mirror as of transaction ``seq`` and the journal it was read from, held open at that
    position (its files are the same open files in a forked child: O_APPEND writes, positioned reads)."""
    pid: int
    at: float             # time.monotonic() of the hand-over
    seq: int              # the mirror holds every transaction up to this one
    journal: Journal
    state: dict
    catalog: object       # the _IndexCatalog the mirror's kept XML follows, and its generation seen
    keeps: dict
    generation: int


# resolved journal folder -> the hand-over a closed store left there (one per folder: the newest)
_HANDED: dict[str, _Handover] = {}


def take_handover(journal_dir: Path, trust_s: float) -> _Handover | None:
    """In a process forked within ``trust_s`` of its parent's ``hand_over()`` of this journal: the
    mirror it left, taken once (a second store opened in this process reads the journal itself).
    Otherwise None — an older one is dropped (its journal's descriptors closed in this process)."""
    handed = _HANDED.pop(str(Path(journal_dir).resolve()), None)
    if handed is None or handed.pid == os.getpid():
        if handed is not None:
            _HANDED[str(Path(journal_dir).resolve())] = handed      # (the parent keeps it for its next forks)
        return None
    if 0 < _FORKED_AT[0] - handed.at <= trust_s:
        return handed
    handed.journal.close()
    return None



class _BaseXTransaction(Transaction):
    def __init__(self, store: "BaseXStore") -> None:
        self._store = store
        self.staged: dict[tuple[str, str], tuple[int, bytes | None]] = {}
        self._bytes = 0

    def _current(self, key: tuple[str, str]) -> tuple[int, bytes | None]:
        if key in self.staged:
            return self.staged[key]
        version, xml, seq = self._store._state.get(key[0], {}).get(key[1], (0, None, 0))
        if xml is NOT_KEPT:
            xml = self._store._kept_xml(key[0], key[1], version, seq)
        return version, (None if xml is None else xml.encode())

    def get(self, collection: str, doc_id: str) -> Document | None:
        key = (check_collection(collection), check_doc_id(doc_id))
        version, xml = self._current(key)
        return None if xml is None else Document(collection, doc_id, xml, version)

    def exists(self, collection: str, doc_id: str) -> bool:
        key = (check_collection(collection), check_doc_id(doc_id))
        if key in self.staged:
            return self.staged[key][1] is not None
        return self._store._state.get(key[0], {}).get(key[1], (0, None, 0))[1] is not None

    def _stage(self, key: tuple[str, str], xml: bytes | None) -> int:
        limits = self._store.limits
        if key not in self.staged and len(self.staged) >= limits.transaction_writes_max:
            raise StoreError(f"a transaction writes at most {limits.transaction_writes_max} documents")
        self._bytes += len(xml or b"")
        if self._bytes > limits.transaction_bytes_max:
            raise StoreError(f"a transaction writes at most {limits.transaction_bytes_max} bytes")
        if key in self.staged:
            version = self.staged[key][0]
        else:
            version = self._store._state.get(key[0], {}).get(key[1], (0, None))[0] + 1
        self.staged[key] = (version, xml)
        return version

    def put(self, collection: str, doc_id: str, xml: bytes) -> int:
        key = (check_collection(collection), check_doc_id(doc_id))
        return self._stage(key, normalized_for_put(xml, self._store.limits)[0])

    def delete(self, collection: str, doc_id: str) -> bool:
        key = (check_collection(collection), check_doc_id(doc_id))
        existed = self.exists(*key)
        if existed:
            self._stage(key, None)
        return existed


def _frame_bytes(writes: list) -> int:
    """What a journal frame's writes weigh in the pending queue (their XML, and a little per write)."""
    return sum(64 + (len(xml) if xml is not None else 0) for _collection, _doc_id, _version, xml in writes)


def _duration(seconds: float) -> str:
    """A duration for people: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(size: int) -> str:
    """A size for people: 312 bytes, 18 KB, 31.9 MB."""
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1000:.0f} KB"
    return f"{size / 1e6:.1f} MB"


class _LagMarks:
    """When this process read the committed frames BaseX has not applied yet, to about a second: at
    most one mark a second (frames read within a second of a mark join it), the applied ones
    dropped — so ``lag_s`` is how long the oldest frame still waiting has waited (from when this
    process read it: its own commits at once, the others' at its next commit or applier round)."""

    RESOLUTION_S = 1.0
    MARKS_MAX = 86_400          # a day behind at one mark a second; older marks are dropped (lag then at most that)

    def __init__(self) -> None:
        self._marks: collections.deque[tuple[int, float]] = collections.deque()   # (last seq, time.time())

    def note(self, seq: int, now: float, applied: int) -> None:
        """Frames up to ``seq`` were read at ``now`` (the mirror lock held)."""
        marks = self._marks
        while marks and marks[0][0] <= applied:
            marks.popleft()
        if marks and now - marks[-1][1] < self.RESOLUTION_S:
            marks[-1] = (max(seq, marks[-1][0]), marks[-1][1])
        elif seq > applied:
            marks.append((seq, now))
            if len(marks) > self.MARKS_MAX:
                marks.popleft()

    def lag_s(self, applied: int, now: float) -> float:
        """How long the oldest frame after ``applied`` has waited (0: none waits; the mirror lock held)."""
        marks = self._marks
        while marks and marks[0][0] <= applied:
            marks.popleft()
        return max(0.0, now - marks[0][1]) if marks else 0.0


class _BacklogWatch:
    """How far BaseX is behind the journal, said in ONE log line per change of state — never per
    request, per retry or per second — and the words a held-back write is refused with.

    An *episode* begins when BaseX has applied nothing for ``behind_after_s`` while committed
    transactions wait for it (down, stopped, or stuck), or when the backlog reaches a quarter of its
    limit (``backlog_bytes_max`` bytes or ``backlog_max`` transactions, whichever is nearer). Its
    lines: BaseX applying nothing since T (with the applier's last error); the backlog at 25, 50
    and 75 % of the limit, each with how long until writes are held back at the rate it grew in the
    last ``RATE_WINDOW_S``; writes held back; BaseX applying again; writes accepted again; caught
    up (the backlog below 5 % of the limit with BaseX applying), which ends the episode. Each
    process watches its own view of the backlog (the frames it has read: its own commits and,
    at each commit, the other processes') from its commits and its applier's rounds.
    """

    LEVELS = (0.25, 0.5, 0.75)
    CAUGHT_UP = 0.05
    RATE_WINDOW_S = 30.0       # the backlog's growth rate is measured over this long

    def __init__(self, store: "BaseXStore") -> None:
        self._store = store
        self._lock = threading.Lock()
        self._applied_seen = -1
        self._progress_at = time.monotonic()       # BaseX last applied something (or nothing waited)
        self._episode: float | None = None          # time.monotonic() the episode began
        self._level = 0                            # levels said in this episode (4: writes held back)
        self._stall_said = False
        self._held_said = False
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()   # (monotonic, bytes, transactions)

    def _measure(self, now: float) -> tuple[int, int, float, bool]:
        """(bytes waiting, transactions waiting, fraction of the limit, BaseX applying nothing)."""
        store = self._store
        pending = store._pending_bytes
        behind = max(0, store._journal.last_seq - store._applied_seq)
        if store._applied_seq != self._applied_seen or behind == 0:
            self._applied_seen = store._applied_seq
            self._progress_at = now
        fill = max(pending / max(1, store.backlog_bytes_max), behind / max(1, store.backlog_max))
        if not self._samples or now - self._samples[-1][0] >= 0.5:    # the last RATE_WINDOW_S, for _eta
            self._samples.append((now, pending, behind))
            while now - self._samples[0][0] > self.RATE_WINDOW_S:
                self._samples.popleft()
        return pending, behind, fill, now - self._progress_at >= store.behind_after_s

    def _since(self, now: float) -> str:
        """The wall-clock time BaseX last applied something, for people (UTC)."""
        return time.strftime("%H:%M:%S UTC", time.gmtime(time.time() - (now - self._progress_at)))

    def stalled(self) -> bool:
        """BaseX has applied nothing for ``behind_after_s`` while transactions wait for it."""
        with self._lock:
            return self._measure(time.monotonic())[3]

    def refusal(self) -> str:
        """Why a write is held back, for the person who sent it."""
        with self._lock:
            now = time.monotonic()
            pending, behind, _fill, stalled = self._measure(now)
            limit = _size(self._store.backlog_bytes_max)
        why = (f"which has applied nothing since {self._since(now)}" if stalled
               else "which applies them more slowly than they arrive")
        return (f"writes are held back: {behind:,} committed transactions ({_size(pending)}, the limit is "
                f"{limit}) wait for the store's database, {why}; this request was not applied — retry once it "
                f"has caught up")

    def _eta(self, now: float, pending: int, behind: int) -> str:
        """How long until writes are held back, at the rate the backlog grew in the last RATE_WINDOW_S."""
        store = self._store
        started, bytes0, behind0 = self._samples[0]
        elapsed = now - started
        etas = []
        if elapsed >= 0.5:
            for now_value, start_value, limit in ((pending, bytes0, store.backlog_bytes_max),
                                                   (behind, behind0, store.backlog_max)):
                rate = (now_value - start_value) / elapsed
                if rate > 0:
                    etas.append(max(0.0, limit - now_value) / rate)
        if not etas:
            return "the rate it grows at is not known yet" if elapsed < 0.5 else "it is not growing"
        return f"writes are held back in about {_duration(min(etas))} at the current rate"

    def observe(self) -> None:
        """Look at the backlog; say a line if its state changed (cheap: called at every commit)."""
        store = self._store
        with self._lock:
            now = time.monotonic()
            pending, behind, fill, stalled = self._measure(now)
            if self._episode is None:
                if not stalled and fill < self.LEVELS[0]:
                    return
                self._episode = now
                self._level, self._stall_said, self._held_said = 0, False, False
            waiting = f"{behind:,} transactions ({_size(pending)})"
            if stalled and not self._stall_said:
                self._stall_said = True
                log.warning("xmlstore/basex: BaseX has applied nothing since %s (BaseX: %s); %s wait "
                            "for it in the journal: commits go on, queries wait; writes are held back at %s or "
                            "%s transactions", self._since(now), store._apply_error or "no answer yet", waiting,
                            _size(store.backlog_bytes_max), f"{store.backlog_max:,}")
            elif not stalled and self._stall_said:
                self._stall_said = False
                if fill < self.CAUGHT_UP:
                    self._end(now, f"BaseX applies again and has caught up (transaction {store._applied_seq:,})"
                                   + ("; writes are accepted again" if self._held_said else ""))
                    return
                log.warning("xmlstore/basex: BaseX applies again (transaction %s); catching up %s",
                            f"{store._applied_seq:,}", waiting)
            level = 4 if fill >= 1 else sum(fill >= mark for mark in self.LEVELS)
            if level > self._level:
                self._level = level
                if level == 4:
                    self._held_said = True
                    log.warning("xmlstore/basex: writes are held back: %s wait for BaseX (the limit is %s or %s "
                                "transactions); requests that write are refused until it catches up",
                                waiting, _size(store.backlog_bytes_max), f"{store.backlog_max:,}")
                else:
                    log.warning("xmlstore/basex: BaseX backlog at %d %% of its limit: %s wait for it; %s",
                                int(self.LEVELS[level - 1] * 100), waiting, self._eta(now, pending, behind))
            elif self._held_said and fill < 1 and not stalled:
                self._held_said = False
                log.warning("xmlstore/basex: writes are accepted again (%s wait for BaseX, which applies them)",
                            waiting)
            if fill < self.CAUGHT_UP and not stalled:
                self._end(now, f"BaseX has caught up (transaction {store._applied_seq:,})")

    def _end(self, now: float, what: str) -> None:
        log.warning("xmlstore/basex: %s, %s after it fell behind", what, _duration(now - self._episode))
        self._episode = None


class _Mirror:
    """The mirror, checkpoints and back-pressure (mixed into BaseXStore)."""

    def _absorb_chunk(self, applied: int | None, *, repair: bool = False) -> list[tuple[int, list]]:
        """Read up to ~8 MB of frames into the mirror (frames after ``applied`` also into the
        pending queue); returns the frames (empty at the journal's end)."""
        entries = self._journal.read_new(repair=repair, bytes_max=READ_BYTES_MAX)
        if applied is None:
            self._absorb(entries, pending=False)
        else:
            self._absorb([entry for entry in entries if entry[0] <= applied], pending=False)
            self._absorb([entry for entry in entries if entry[0] > applied])
        return entries

    def _keeps_text(self, collection: str) -> bool:
        """Whether the mirror keeps this collection's XML (mirror lock held; _refresh_keeps first)."""
        keeps = self._keeps.get(collection)
        if keeps is None:
            keeps = self._keeps[collection] = self._catalog.coverage(collection).store_text
        return keeps

    def _refresh_keeps(self) -> None:
        """Follow changed declarations (mirror lock held): drop XML they now say not to keep."""
        if self._catalog.refresh() or self._catalog_generation != self._catalog.generation:
            self._catalog_generation = self._catalog.generation
            self._keeps.clear()
            for name, entries in self._state.items():    # drop XML the declarations now say not to keep
                if not self._catalog.coverage(name).store_text:
                    for doc_id, (version, xml, seq) in entries.items():
                        if isinstance(xml, str):
                            entries[doc_id] = (version, NOT_KEPT, seq)

    # -- the mirror --
    def _absorb(self, entries: list[tuple[int, list]], *, pending: bool = True) -> None:
        """Take journal frames into the mirror and (unless known to be in BaseX) the pending queue."""
        with self._mirror_lock:
            if entries:
                self._refresh_keeps()
            for seq, writes in entries:
                for collection, doc_id, version, xml in writes:
                    if xml is not None and not self._keeps_text(collection):
                        xml = NOT_KEPT
                    self._state.setdefault(collection, {})[doc_id] = (version, xml, seq)
                    if self._verify_left is not None:
                        self._verify_new.setdefault(collection, set()).add(doc_id)
                if pending:
                    self._pending.append((seq, writes))
                    self._pending_bytes += _frame_bytes(writes)
            if pending and entries:
                self._lag_marks.note(entries[-1][0], time.time(), self._applied_seq)
            if self._journal.jumps != self._jumps_seen:
                self._jumps_seen = self._journal.jumps
                self._suspect = True       # frames we never read: apply from a verification, not from frames
                self._note("this process fell behind two checkpoints; took the snapshot's writes instead of the "
                           "removed frames; verifying BaseX")

    def _adopt_handover(self, handed: _Handover) -> int:
        """Open in a process forked from one that handed its mirror over: take that mirror and the
        journal at the position it was read to, instead of reading the snapshot and the frames again
        (a second copy of a million documents built in seconds, per process). Returns the
        transaction the mirror holds; the open then reads the frames after it, like a snapshot's."""
        with self._mirror_lock:
            self._state = handed.state
            self._catalog, self._keeps, self._catalog_generation = handed.catalog, handed.keeps, handed.generation
            self._jumps_seen = self._journal.jumps
        self.mirror_from = handed.pid
        log.info("xmlstore/basex: took the mirror of the journal up to transaction %d (%s documents) from the parent "
                 "process %d: not reading the journal again", handed.seq,
                 f"{sum(len(entries) for entries in handed.state.values()):,}", handed.pid)
        return handed.seq

    def hand_over(self) -> Callable[[], None]:
        """Close this store, leaving its mirror and its journal (held open) to the processes this one
        forks next: a writable open of the same journal there, within ``fork_trust_s``, takes them
        instead of reading the journal again (serve's workers after prepare_state). Everything else
        is closed as by ``close()``, and each such open goes on as any open does — the frames after
        the mirror's transaction read, BaseX's applied number and quick checks looked at, the frames
        BaseX lacks applied, verification shared. Returns the function that drops it in this process
        (its memory and descriptors; the processes forked meanwhile keep their copies)."""
        if self.read_only:
            self.close()
            return lambda: None
        self._close(keep_journal=True)
        with self._mirror_lock:
            self._catch_up_unlocked()         # (the mirror and the journal's position agree: the frames up to last_seq)
            key = str(self._journal.directory.resolve())
            previous = _HANDED.pop(key, None)
            if previous is not None and previous.pid == os.getpid():
                previous.journal.close()
            handed = _HANDED[key] = _Handover(os.getpid(), time.monotonic(), self._journal.last_seq, self._journal,
                                              self._state, self._catalog, self._keeps, self._catalog_generation)
            self._state = {}                  # (this closed store's cycles are collected late: they hold nothing big)

        def drop() -> None:
            if _HANDED.get(key) is handed:
                del _HANDED[key]
            handed.journal.close()
            handed.state = {}

        return drop

    def _absorb_snapshot(self) -> int:
        """Open: take the journal's snapshot into the mirror (each document's state after the
        snapshot's sequence number, which is returned: 0 without a snapshot)."""
        # The cyclic GC is paused meanwhile: it walked the young tuples of the mirror again and again as
        # they were made (~40 % of reading a million documents); one collection afterwards sees them once.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with self._mirror_lock:
                self._refresh_keeps()
                state, keeps = self._state, {}
                for chunk in self._journal.snapshot_writes():
                    for collection, doc_id, version, xml, seq in chunk:
                        entries = state.get(collection)
                        if entries is None:
                            entries = state[collection] = {}
                        if xml is not None:
                            kept = keeps.get(collection)
                            if kept is None:
                                kept = keeps[collection] = self._keeps_text(collection)
                            if not kept:
                                xml = NOT_KEPT
                        entries[doc_id] = (version, xml, seq)
                return self._journal.snapshot.seq if self._journal.snapshot is not None else 0
        finally:
            if collecting:
                gc.enable()

    def _live_document(self, collection: str, doc_id: str, entry: tuple) -> Document | None:
        """The document of a mirror entry read outside the mirror lock. Not kept: its XML is read
        back from the journal; if a checkpoint replaced that frame meanwhile, the document changed
        since, and its newer entry is read."""
        for _attempt in range(3):
            version, xml, seq = entry
            if xml is None:
                return None
            if xml is not NOT_KEPT:
                return Document(collection, doc_id, xml.encode(), version)
            try:
                return Document(collection, doc_id, self._kept_xml(collection, doc_id, version, seq).encode(), version)
            except StoreError:
                with self._mirror_lock:
                    self._catch_up_unlocked()
                    newer = self._state.get(collection, {}).get(doc_id, (0, None, 0))
                if newer[2] == seq:
                    raise
                entry = newer
        raise StoreError(f"{collection}/{doc_id} changed under three reads in a row")

    # -- checkpoints --
    def checkpoint(self) -> int | None:
        """Snapshot the state so that opening reads the snapshot and the frames after it, not the
        whole history (see ``_journal``: end the segment under the writer lock, write the
        snapshot without it, remove what it replaces). Returns the snapshot's sequence number, or
        None when another process is at it or the newest snapshot is current. The applier calls
        it by itself once the journal after the snapshot is larger than the snapshot (and than
        ``checkpoint_bytes_min``)."""
        self._refuse_if_read_only("checkpoint")
        with self._journal.checkpoint_lock() as taken:
            if not taken:
                return None
            started = time.monotonic()
            with self._journal.lock():
                with self._mirror_lock:
                    self._absorb(self._journal.read_new(repair=True))
                    seq = self._journal.begin_checkpoint()
                    if seq is None:
                        return None
                    state = {collection: dict(entries) for collection, entries in self._state.items()}
            path = self._journal.write_snapshot(seq, self._snapshot_writes(state))
            log.info("xmlstore/basex: checkpoint: %s (%d documents) in %.1f s", path.name,
                     sum(len(entries) for entries in state.values()), time.monotonic() - started)
            return seq

    def _snapshot_writes(self, state: dict) -> Iterator[tuple[str, str, int, str | None, int]]:
        """Every document's state as of the snapshot, by seq; the XML the mirror does not keep read
        back from the journal (each frame or snapshot chunk decoded once)."""
        order = sorted((seq, collection, doc_id) for collection, entries in state.items()
                       for doc_id, (_version, _xml, seq) in entries.items())
        frame_seq, frame = 0, {}
        for number, (seq, collection, doc_id) in enumerate(order):
            if number % 10_000 == 0 and self._closing.is_set():
                raise StoreError("the store is closing: checkpoint abandoned")
            version, xml, _seq = state[collection][doc_id]
            if xml is NOT_KEPT:
                if seq != frame_seq:
                    frame_seq, frame = seq, {(w[0], w[1]): w for w in self._journal.frame_writes(seq)}
                write = frame.get((collection, doc_id))
                invariant(write is not None and write[2] == version and write[3] is not None,
                          "the journal holds the XML of every document the mirror does not keep")
                xml = write[3]
            yield collection, doc_id, version, xml, seq

    def _maybe_checkpoint(self) -> None:
        """From the applier: start a checkpoint in a thread of its own when the journal after the
        snapshot has grown past ``checkpoint_bytes_min`` and the snapshot's size (so that writing
        snapshots costs at most about as much as the journal itself, and an open reads at most
        about twice the state). Looked at every ``checkpoint_check_s``."""
        now = time.monotonic()
        if now < self._checkpoint_next or (self._checkpointer is not None and self._checkpointer.is_alive()):
            return
        self._checkpoint_next = now + self.checkpoint_check_s
        snapshot = self._journal.snapshot
        if self._journal.tail_bytes() < max(self.checkpoint_bytes_min, snapshot.size if snapshot is not None else 0):
            return

        def run() -> None:
            try:
                self.checkpoint()
            except Exception as error:  # noqa: BLE001 — a failed checkpoint leaves the journal as it was
                log.warning("xmlstore/basex: checkpoint failed (%s: %s); the journal is replayed from the last "
                            "snapshot until one succeeds", type(error).__name__, error)

        self._checkpointer = threading.Thread(target=run, name="xmlstore-basex-checkpoint", daemon=True)
        self._checkpointer.start()

    def _kept_xml(self, collection: str, doc_id: str, version: int, seq: int) -> str:
        """The XML that transaction ``seq`` wrote for a document whose text the mirror does not
        keep, read back from the journal (that one write decoded; no BaseX round trip: BaseX
        9.7 looks a document up by path in ~0.1-0.5 s in a database of 400,000 resources).
        Never waits, works while BaseX is behind or down."""
        write = self._journal.frame_write(seq, collection, doc_id)
        if write is None or write[2] != version or write[3] is None:
            raise StoreError(f"journal frame {seq} does not hold version {version} of {collection}/{doc_id}")
        return write[3]

    def _catch_up_unlocked(self) -> int:
        """Read the complete frames appended since our offset (no writer lock needed); returns the
        journal's last sequence number as this process now knows it."""
        with self._mirror_lock:
            self._absorb(self._journal.read_new(repair=False))
            return self._journal.last_seq

    def _hold_back_writes(self) -> None:
        """Back-pressure: while more than ``backlog_bytes_max`` of committed XML waits for BaseX, a
        writer first waits, up to ``timeout_s``, until the appliers have brought it down to half,
        else it is refused with StoreUnavailable (retry later, in words for people: see
        ``_BacklogWatch``) — at once when BaseX has applied nothing for ``behind_after_s``.
        Acknowledging from the journal alone let a fast writer (a million usage records) run
        minutes ahead of BaseX: every read then waited for it, and the backlog's XML filled memory.
        (Other processes' frames count from this process's next commit, which reads them under the
        writer lock: no extra journal read per transaction.)"""
        with self._mirror_lock:
            if self._pending_bytes <= self.backlog_bytes_max:
                return
            left, target = self._pending_bytes, None
            for seq, writes in self._pending:
                if left <= self.backlog_bytes_max // 2:
                    break
                left -= _frame_bytes(writes)
                target = seq
        if target is not None:
            self._watch.observe()
            if self._watch.stalled():     # waiting would only hold the request up: refused at once
                raise StoreUnavailable(self._watch.refusal())
            try:
                self._await_applied(target, waiting="this write")
            except StoreError:
                raise StoreUnavailable(self._watch.refusal()) from None
