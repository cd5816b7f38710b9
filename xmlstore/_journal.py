"""Our fsynced, append-only journal: the record of every BaseX-backend transaction.

A frame is ``MAGIC (4) | payload length (u32 BE) | CRC-32 of payload (u32 BE) | payload``; the
payload is JSON ``{"seq": n, "writes": [[collection, doc_id, version, xml-or-null], …]}``.
Sequence numbers start at 1 and increase by one. A frame is durable once ``append`` returns
(write + fsync). After a crash the last frame may be torn: a bad frame with no valid frame after
it is cut off (by a process holding the lock); a bad frame followed by a good one is corruption
and raises ``StoreError``.

Locking: ``lock()`` (the writer lock) takes a process-local mutex and ``flock`` on
``journal.lock`` (flock locks belong to the open file, so they also exclude the other processes
sharing the store). ``apply_lock()`` is a second lock of the same kind on ``apply.lock``: the
BaseX backend's applier holds it while it pushes committed frames to BaseX. Order: a holder of
both takes ``apply_lock`` first. ``query_gate()`` (``query.lock``) is a readers-writer lock for
the backend's BaseX calls.

Group commit: ``append(..., sync=False)`` writes a frame under the writer lock and leaves the
fsync to ``sync()``, called after the lock is released — the writer acknowledges only after its
``sync()`` returns, and an fsync covers every frame written before it (by any process), so a
transaction that read an earlier, not yet synced frame is never acknowledged before that frame is
durable. Frames may thus be *visible* (to ``read_new``) a moment before they are durable: only a
crash of the operating system in that window loses them, and then no writer had acknowledged them.

The journal remembers where each frame starts (``frame_writes(seq)`` reads one back: the BaseX
backend's mirror keeps no XML of ``store_text=False`` collections). ``read_only`` opens the files
for reading alone: no folder or lock file is created, no torn tail cut, the writer and applier
locks refused.

Segments and snapshots (checkpointing). The journal is a chain of *segments*: ``journal.gcj``
holds frames from 1, ``journal.<B>.gcj`` (B zero-padded to 20 digits) frames from B. A segment
ends with an end frame ``{"end": S}`` (S its last sequence number) and the next one starts at
S + 1. A *snapshot* ``snapshot.<S>.gcs`` is the state after transaction S: every document's
latest write (tombstones included) as ``[collection, doc_id, version, xml-or-null, seq]`` — seq
the transaction that wrote it — sorted by seq, in frames of ~64 KB (a header frame
``{"snapshot": S}`` first; then a footer frame ``{"end": S, "writes": n, "chunks": [[first seq,
last seq, offset], …], "sha256": …}`` over every byte before it; then 12 bytes: the footer's
offset and ``GCSE``). A document whose frame is gone is read back from the snapshot's frame that
holds it (``frame_write`` looks in the segments, then in the snapshot: the seq-sorted chunks are
found by bisection).

``checkpoint(seq_writes)`` runs in steps, each safe to be killed after (``CHECKPOINT_STEPS``):
under the writer lock, the current segment gets its end frame (fsynced) and the next segment is
created (file and folder fsynced) — writers go on in it at once; then, without the writer lock
(under ``checkpoint.lock``: one checkpoint at a time), the snapshot is written to
``snapshot.<S>.gcs.tmp``, fsynced, read back and checked against its hash, renamed into place and
the folder fsynced; only then are the older snapshots and the segments wholly at or before S
removed. An open takes the newest snapshot and the segments from S + 1 (``snapshot_writes``
reads the snapshot once, checking every frame's CRC and the whole file's hash), and ignores older
files; a crash before the rename leaves the old snapshot and every segment, so an open replays a
little more. A process that has read past S adopts the new snapshot at its next read (``read_new``
checks for one at most once a second while it holds older segments) and closes the segments it
replaces; one that fell so far behind that its next segment is gone reads the snapshot's writes
after its last frame instead (``jumps`` counts that: its caller must re-verify what it derived
from frames).
"""
from __future__ import annotations

import array
import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

from gridcredit.durable import fsync_directory
from gridcredit.errors import StoreError, invariant

MAGIC = b"GCJ1"
HEADER = struct.Struct(">4sII")
TRAILER = struct.Struct(">Q4s")
TRAILER_MAGIC = b"GCSE"
FRAME_BYTES_MAX = 512_000_000
READ_BYTES_MAX = 8_000_000      # journal bytes one read_new call reads (more than one frame only if it fits)
SNAPSHOT_CHUNK_BYTES = 64_000   # XML in one snapshot frame (a read-back decodes one such frame)
ADOPT_CHECK_S = 1.0             # how often a process holding older segments looks for a newer snapshot
_DECODER = json.JSONDecoder()
_SEGMENT_NAME = re.compile(r"^journal(?:\.([0-9]{20}))?\.gcj$")
_SNAPSHOT_NAME = re.compile(r"^snapshot\.([0-9]{20})\.gcs$")

Write = tuple[str, str, int, "str | None"]   # collection, doc_id, version, xml (None: deleted)

# The steps of a checkpoint, in order; ``checkpoint_fault(step)`` is called after each (a test's
# fault injection: a kill -9 there must leave a store that opens to the same state).
CHECKPOINT_STEPS = ("segment-ended", "segment-created", "snapshot-chunk", "snapshot-synced", "snapshot-renamed",
                    "snapshot-durable", "old-file-removed", "old-files-removed")
checkpoint_fault: Callable[[str], None] | None = None


def _step(name: str) -> None:
    invariant(name in CHECKPOINT_STEPS, "a known checkpoint step")
    if checkpoint_fault is not None:
        checkpoint_fault(name)


def segment_name(base: int) -> str:
    return "journal.gcj" if base == 1 else f"journal.{base:020d}.gcj"


def snapshot_name(seq: int) -> str:
    return f"snapshot.{seq:020d}.gcs"


class _Segment:
    """One segment file held open: frames ``base`` .. ``base + len(starts) - 1`` read so far."""
    __slots__ = ("base", "path", "fd", "starts")

    def __init__(self, base: int, path: Path, fd: int) -> None:
        self.base, self.path, self.fd = base, path, fd
        self.starts = array.array("q")   # byte offset of frame base + i at [i]


class _Snapshot:
    """A snapshot file held open, with its chunk index (from its footer)."""

    def __init__(self, seq: int, path: Path, fd: int) -> None:
        self.seq, self.path, self.fd = seq, path, fd
        size = os.fstat(fd).st_size
        tail = os.pread(fd, TRAILER.size, size - TRAILER.size) if size >= TRAILER.size else b""
        if len(tail) != TRAILER.size:
            raise StoreError(f"snapshot {path} is truncated")
        footer_at, magic = TRAILER.unpack(tail)
        footer = _decode(os.pread(fd, size - TRAILER.size - footer_at, footer_at), 0) if magic == TRAILER_MAGIC \
            and footer_at < size else None
        if footer is None or footer[0].get("end") != seq or footer_at + footer[1] != size - TRAILER.size:
            raise StoreError(f"snapshot {path} has no valid footer: damaged")
        payload = footer[0]
        self.footer_at = footer_at
        self.size = size
        self.writes = int(payload["writes"])
        self.sha256 = payload["sha256"]
        chunks = payload["chunks"]
        self.firsts = array.array("q", (c[0] for c in chunks))
        self.lasts = array.array("q", (c[1] for c in chunks))
        self.offsets = array.array("q", (c[2] for c in chunks))
        self._cache: tuple[int, bytes] | None = None   # (offset, payload) of the last chunk read back
        self._decoded: tuple[int, list] | None = None  # (index, writes) of the last chunk decoded whole

    def chunk_writes(self, index: int) -> list[list]:
        decoded = self._decoded
        if decoded is None or decoded[0] != index:
            decoded = self._decoded = (index, json.loads(self.chunk_payload(index))["writes"])
        return decoded[1]

    def chunk_payload(self, index: int) -> bytes:
        offset = self.offsets[index]
        cached = self._cache
        if cached is not None and cached[0] == offset:
            return cached[1]
        head = os.pread(self.fd, HEADER.size, offset)
        magic, length, crc = HEADER.unpack(head) if len(head) == HEADER.size else (b"", 0, 0)
        payload = os.pread(self.fd, length, offset + HEADER.size) if magic == MAGIC else b""
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            raise StoreError(f"snapshot {self.path}: the frame at byte {offset} does not read back")
        self._cache = (offset, payload)
        return payload

    def chunks_holding(self, seq: int) -> range:
        """Indexes of the chunks that may hold writes of transaction ``seq`` (sorted chunks: consecutive)."""
        end = bisect.bisect_right(self.firsts, seq)
        start = end
        while start > 0 and self.lasts[start - 1] >= seq:
            start -= 1
        return range(start, end)


class Journal:
    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        self.directory = Path(directory)
        self.read_only = read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.directory / "journal.lock"
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._pid = os.getpid()
        self._apply_lock = _FileLock(self.directory / "apply.lock")
        self._checkpoint_lock = _FileLock(self.directory / "checkpoint.lock")
        self._query_lock_path = self.directory / "query.lock"
        self._files_lock = threading.RLock()     # _segments and snapshot (read-backs run beside read_new)
        self._segments: list[_Segment] = []      # held open; the last is the current one
        self.snapshot: _Snapshot | None = None
        self.offset = 0        # bytes of the current segment already read into the caller's state
        self.last_seq = 0
        self.jumps = 0         # times this journal read a snapshot's writes for frames deleted before it read them
        self._ended = False    # the current segment's end frame is read, its successor not yet open
        self._adopt_checked = 0.0
        self._unread_snapshot = False   # opened with a snapshot that snapshot_writes has not read yet
        try:
            self._open_files()
        except BaseException:
            self.close()
            raise

    # -- the files --
    def _listing(self) -> tuple[dict[int, Path], dict[int, Path]]:
        segments, snapshots = {}, {}
        try:
            names = os.listdir(self.directory)
        except OSError as error:
            raise StoreError(f"cannot read the journal folder {self.directory}: {error}") from None
        for name in names:
            match = _SEGMENT_NAME.match(name)
            if match:
                segments[int(match.group(1)) if match.group(1) else 1] = self.directory / name
            match = _SNAPSHOT_NAME.match(name)
            if match:
                snapshots[int(match.group(1))] = self.directory / name
        return segments, snapshots

    def _open_fd(self, path: Path, *, create: bool = False) -> int:
        if self.read_only:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        return os.open(path, flags, 0o600)

    def _open_files(self) -> None:
        if not self.read_only and any(name.endswith(".gcs.tmp") for name in os.listdir(self.directory)):
            with self._checkpoint_lock.hold(False) as taken:   # a live checkpointer's file is not stale
                if taken:
                    for name in os.listdir(self.directory):
                        if name.endswith(".gcs.tmp"):
                            os.unlink(self.directory / name)
        segments, snapshots = self._listing()
        damaged: StoreError | None = None
        for seq in sorted(snapshots, reverse=True):    # the newest whose footer reads (an older one if its
            if seq + 1 not in segments:                # segments are still there)
                if damaged is None:
                    damaged = StoreError(f"journal {self.directory}: snapshot {seq} has no segment after it "
                                         f"({segment_name(seq + 1)} is missing)")
                continue
            try:
                self.snapshot = _Snapshot(seq, snapshots[seq], os.open(snapshots[seq], os.O_RDONLY | os.O_CLOEXEC))
                break
            except StoreError as error:
                damaged = damaged or error
        if snapshots and self.snapshot is None and not (1 in segments and damaged is not None):
            raise damaged or StoreError(f"journal {self.directory}: no usable snapshot")
        if self.snapshot is not None:
            seq = self.snapshot.seq
            self.last_seq = seq
            self._unread_snapshot = True
            base = seq + 1
        else:
            if segments and 1 not in segments:
                raise StoreError(f"journal {self.directory}: the first segment is missing "
                                 f"(the oldest is {segment_name(min(segments))}) and there is no snapshot")
            base = 1
        path = self.directory / segment_name(base)
        try:
            fd = self._open_fd(path, create=base == 1)
        except OSError as error:
            raise StoreError(f"cannot open the journal {path}{' read-only' if self.read_only else ''}: "
                             f"{error}") from None
        if not self.read_only and base == 1 and not segments:
            fsync_directory(self.directory)
        self._segments.append(_Segment(base, path, fd))

    @property
    def path(self) -> Path:
        """The current segment (the one appended to)."""
        return self._segments[-1].path

    @property
    def _fd(self) -> int:
        return self._segments[-1].fd

    @property
    def _starts(self) -> array.array:
        return self._segments[-1].starts

    def snapshot_writes(self) -> Iterator[list[list]]:
        """The opened snapshot's writes, a chunk at a time (``[collection, doc_id, version, xml,
        seq]`` lists, by seq), each frame's CRC and at the end the file's hash checked. Once, at
        open, before the first ``read_new``."""
        invariant(not self._starts and self.offset == 0, "the snapshot is read before the segments")
        if not self._unread_snapshot:
            return
        self._unread_snapshot = False
        yield from _snapshot_chunks(self.snapshot, after=0, check=True)

    # -- locks --
    def _lock_file(self) -> int:
        if self._lock_fd is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        invariant(not self.read_only, "the writer lock of a read-only journal")
        with self._thread_lock:
            fd = self._lock_file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def apply_lock(self, *, blocking: bool = True) -> Iterator[bool]:
        """The applier lock; yields whether it was taken (always True when ``blocking``)."""
        invariant(not self.read_only, "the applier lock of a read-only journal")
        with self._apply_lock.hold(blocking) as taken:
            yield taken

    @contextlib.contextmanager
    def checkpoint_lock(self, *, blocking: bool = False) -> Iterator[bool]:
        """One checkpoint at a time (across processes); yields whether it was taken."""
        invariant(not self.read_only, "the checkpoint lock of a read-only journal")
        with self._checkpoint_lock.hold(blocking) as taken:
            yield taken

    @contextlib.contextmanager
    def query_gate(self, *, exclusive: bool) -> Iterator[None]:
        """A readers-writer lock over ``query.lock`` for the BaseX backend's calls: shared for
        ordinary ones, exclusive for sandboxed XPath queries (see ``_basex.Q_QUERY``). Each hold
        opens the file anew, so holders in one process exclude each other like processes do."""
        try:
            if self.read_only:   # flock works on a read-only descriptor; create nothing
                fd = os.open(self._query_lock_path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                fd = os.open(self._query_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:   # read-only and no process ever queried: nobody to exclude
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)      # releases the lock

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """Held (shared, on ``open.lock``) by a writable open from before it waits for the applier and
        writer locks until it has them back: ``open_waiting()`` tells the background verification,
        whose steps hold the applier lock for seconds, to let it through first (flock is not FIFO: a
        step taken again at once would win over a waiting open, step after step)."""
        fd = os.open(self.directory / "open.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)      # releases the lock

    def open_waiting(self) -> bool:
        """Whether a process is inside ``opening()`` now (a glance: it may come a moment later)."""
        try:
            fd = os.open(self.directory / "open.lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def size(self) -> int:
        """Bytes in the current segment now (frames of other processes included; a tail may be torn)."""
        return os.fstat(self._fd).st_size

    def tail_bytes(self) -> int:
        """Bytes of the segments held (those after the snapshot, once adopted)."""
        with self._files_lock:
            return sum(os.fstat(segment.fd).st_size for segment in self._segments)

    def sync(self) -> None:
        """fsync the journal: every frame written so far, by any process, is durable after this."""
        os.fsync(self._fd)

    # -- reading --
    def read_new(self, *, repair: bool, bytes_max: int | None = None) -> list[tuple[int, list[Write]]]:
        """Frames appended since the last call; with ``repair`` (lock held) cut off a torn tail.

        Without ``repair`` it may run without the writer lock: it stops before a frame still being
        written (or torn) and takes it on a later call. Callers serialize calls on one ``Journal``.
        With ``bytes_max`` it reads about that many bytes at most (at least one frame): call again
        while it returns frames to read a long journal without holding all of it in memory. It
        follows the chain of segments (see the module's docstring).
        """
        invariant(not (repair and self.read_only), "repairing a read-only journal")
        invariant(not self._unread_snapshot, "the snapshot is read before the segments")
        entries: list[tuple[int, list[Write]]] = []
        while True:
            if self._ended:
                entries.extend(self._next_segment())
                if self._ended:
                    break
            entries.extend(self._read_segment(repair, bytes_max))
            if not self._ended or (bytes_max is not None and entries):
                break
        if len(self._segments) > 1 and time.monotonic() - self._adopt_checked >= ADOPT_CHECK_S:
            self._adopt_checked = time.monotonic()
            self._adopt_newer_snapshot()
        return entries

    def _read_segment(self, repair: bool, bytes_max: int | None) -> list[tuple[int, list[Write]]]:
        size = os.fstat(self._fd).st_size
        if size < self.offset:
            raise StoreError(f"journal {self.path} shrank below what was already read")
        want = size - self.offset
        if bytes_max is not None and want > bytes_max:
            want = bytes_max
            head = os.pread(self._fd, HEADER.size, self.offset)
            if len(head) == HEADER.size:
                magic, length, _crc = HEADER.unpack(head)
                if magic == MAGIC and length <= FRAME_BYTES_MAX:
                    want = min(size - self.offset, max(want, HEADER.size + length))
        data = os.pread(self._fd, want, self.offset)
        partial = self.offset + len(data) < size      # more follows: a frame cut at our end is not torn
        entries, position = [], 0
        while position < len(data):
            frame = _decode(data, position)
            if frame is None and partial:
                if position > 0:
                    break       # cut by our read's end: the next call starts with this frame
                # the first frame is whole in ``data`` and still bad: judge it (torn tail or
                # corruption) against everything after it, as an unchunked read does
                data = os.pread(self._fd, size - self.offset, self.offset)
                partial = False
                continue
            if frame is None:
                if data.find(MAGIC, position + 1) >= 0 and _any_valid_after(data, position + 1):
                    raise StoreError(f"journal {self.path} is corrupt at byte {self.offset + position}")
                if repair:
                    os.ftruncate(self._fd, self.offset + position)
                    os.fsync(self._fd)
                break
            payload, length = frame
            if "end" in payload:    # the segment's end frame: the next segment follows
                invariant(payload["end"] == self.last_seq, f"journal segment {self.path} ends at {payload['end']}, "
                                                           f"its last frame is {self.last_seq}")
                position += length
                self._ended = True
                break
            invariant(payload["seq"] == self.last_seq + 1,
                      f"journal sequence {payload['seq']} follows {self.last_seq}")
            self.last_seq = payload["seq"]
            self._starts.append(self.offset + position)
            entries.append((payload["seq"], [tuple(w) for w in payload["writes"]]))
            position += length
        self.offset += position
        return entries

    def _next_segment(self) -> list[tuple[int, list[Write]]]:
        """After an end frame: open the next segment (a writable journal creates it if the writer
        that ended this one died first); if it is gone, a newer snapshot replaced it: jump."""
        path = self.directory / segment_name(self.last_seq + 1)
        try:
            fd = self._open_fd(path)
        except FileNotFoundError:
            _segments, snapshots = self._listing()
            newer = max((seq for seq in snapshots if seq > self.last_seq), default=None)
            if newer is not None:
                return self._jump(newer, snapshots[newer])
            if self.read_only:
                return []        # (a checkpointer is creating it)
            fd = self._open_fd(path, create=True)
            fsync_directory(self.directory)
        with self._files_lock:
            self._segments.append(_Segment(self.last_seq + 1, path, fd))
            self.offset = 0
            self._ended = False
        return []

    def _jump(self, seq: int, path: Path) -> list[tuple[int, list[Write]]]:
        """Our next segment was removed (we fell behind two checkpoints): take snapshot ``seq``'s
        writes after our last frame, grouped as frames (of those writes only), and go on after it."""
        snapshot = _Snapshot(seq, path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        frames: list[tuple[int, list[Write]]] = []
        for chunk in _snapshot_chunks(snapshot, after=self.last_seq, check=False):
            for collection, doc_id, version, xml, wseq in chunk:
                if not frames or frames[-1][0] != wseq:
                    frames.append((wseq, []))
                frames[-1][1].append((collection, doc_id, version, xml))
        self.last_seq = seq
        self.jumps += 1
        self._ended = True          # "after seq": _next_segment opens journal.<seq + 1> (or jumps again)
        frames += self._next_segment()
        with self._files_lock:
            if self.snapshot is None or self.snapshot.seq < seq:
                self._replace_snapshot(snapshot)
            else:
                os.close(snapshot.fd)
        return frames

    def _adopt_newer_snapshot(self) -> None:
        _segments, snapshots = self._listing()
        held = self.snapshot.seq if self.snapshot is not None else 0
        usable = [seq for seq in snapshots if held < seq <= self.last_seq
                  and any(segment.base == seq + 1 for segment in self._segments)]
        if not usable:
            return
        seq = max(usable)
        try:
            snapshot = _Snapshot(seq, snapshots[seq], os.open(snapshots[seq], os.O_RDONLY | os.O_CLOEXEC))
        except (OSError, StoreError):
            return               # removed meanwhile by a newer checkpoint: next time
        with self._files_lock:
            self._replace_snapshot(snapshot)

    def _replace_snapshot(self, snapshot: _Snapshot) -> None:
        """Hold ``snapshot`` instead of the older one and of the segments it replaces (files lock held)."""
        old = self.snapshot
        self.snapshot = snapshot
        if old is not None:
            os.close(old.fd)
        keep = [segment for segment in self._segments if segment.base > snapshot.seq]
        for segment in self._segments:
            if segment.base <= snapshot.seq:
                os.close(segment.fd)
        self._segments[:] = keep

    # -- writing --
    def append(self, seq: int, writes: list[Write], *, sync: bool = True) -> None:
        """Append one frame and fsync it (the caller holds the lock and has read up to the end).

        With ``sync=False`` the fsync is the caller's (``sync()``, after releasing the lock).
        """
        invariant(seq == self.last_seq + 1 and not self._ended, "append out of sequence")
        payload = json.dumps({"seq": seq, "writes": writes}, separators=(",", ":")).encode()
        if len(payload) > FRAME_BYTES_MAX:
            raise StoreError("transaction too large for one journal frame")
        self._append_frame(payload, sync=sync, transaction=True)
        self.last_seq = seq

    def _append_frame(self, payload: bytes, *, sync: bool, transaction: bool) -> None:
        frame = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        size = os.fstat(self._fd).st_size
        invariant(size == self.offset, "journal grew while we held the lock")
        written = os.write(self._fd, frame)
        if written != len(frame):
            os.ftruncate(self._fd, size)
            raise StoreError("short write to the journal")
        if sync:
            os.fsync(self._fd)
        if transaction:
            self._starts.append(self.offset)
        self.offset += len(frame)

    # -- checkpoints --
    def begin_checkpoint(self) -> int | None:
        """The first steps of a checkpoint (writer lock held, read up to the end): end the current
        segment and start the next; returns S, the last transaction the snapshot must hold (None:
        the newest snapshot holds it already)."""
        invariant(not self.read_only and not self._ended, "a checkpoint of a writable journal read to its end")
        seq = self.last_seq
        if seq == (self.snapshot.seq if self.snapshot is not None else 0):
            return None
        if self._segments[-1].base != seq + 1:     # (else an earlier checkpoint ended here and died)
            self._append_frame(json.dumps({"end": seq}).encode(), sync=True, transaction=False)
            _step("segment-ended")
            self._ended = True
            self._next_segment()
            _step("segment-created")
        return seq

    def write_snapshot(self, seq: int, writes: Iterable[tuple[str, str, int, "str | None", int]]) -> Path:
        """Write snapshot ``seq`` from ``writes`` (by seq, each document once: its state after
        ``seq``), make it durable, adopt it and remove what it replaces (checkpoint lock held).
        Without the writer lock: writers go on in the segment ``begin_checkpoint`` started."""
        final = self.directory / snapshot_name(seq)
        temporary = final.with_name(final.name + ".tmp")
        for name in os.listdir(self.directory):   # an abandoned checkpoint's (we hold the checkpoint lock)
            if name.endswith(".gcs.tmp"):
                os.unlink(self.directory / name)
        digest = hashlib.sha256()
        chunks: list[list[int]] = []
        count = 0
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            offset = 0

            def put(payload: bytes) -> int:
                nonlocal offset
                frame = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
                at = offset
                view = memoryview(frame)
                while view:
                    view = view[os.write(fd, view):]
                digest.update(frame)
                offset += len(frame)
                return at

            put(json.dumps({"snapshot": seq, "format": 1}).encode())
            batch: list = []
            batch_bytes = 0
            previous = 0

            def flush() -> None:
                nonlocal batch, batch_bytes
                at = put(json.dumps({"writes": batch}, separators=(",", ":")).encode())
                chunks.append([batch[0][4], batch[-1][4], at])
                if len(chunks) == 1:
                    _step("snapshot-chunk")
                batch, batch_bytes = [], 0

            for write in writes:
                invariant(previous <= write[4] <= seq, "snapshot writes come by seq, none after the snapshot")
                previous = write[4]
                batch.append(list(write))
                batch_bytes += 64 + len(write[3] or "")
                count += 1
                if batch_bytes >= SNAPSHOT_CHUNK_BYTES:
                    flush()
            if batch:
                flush()
            footer_at = offset
            footer = json.dumps({"end": seq, "writes": count, "chunks": chunks, "sha256": digest.hexdigest()},
                                separators=(",", ":")).encode()
            frame = HEADER.pack(MAGIC, len(footer), zlib.crc32(footer)) + footer + TRAILER.pack(footer_at, TRAILER_MAGIC)
            view = memoryview(frame)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _step("snapshot-synced")
        check = hashlib.sha256()
        with open(temporary, "rb") as handle:
            remaining = footer_at
            while remaining > 0:
                block = handle.read(min(remaining, 8_000_000))
                if not block:
                    break
                check.update(block)
                remaining -= len(block)
        if check.hexdigest() != digest.hexdigest():
            raise StoreError(f"snapshot {temporary} does not read back as written (disk error?); not used")
        os.replace(temporary, final)
        _step("snapshot-renamed")
        fsync_directory(self.directory)
        _step("snapshot-durable")
        snapshot = _Snapshot(seq, final, os.open(final, os.O_RDONLY | os.O_CLOEXEC))
        with self._files_lock:
            self._replace_snapshot(snapshot)
        segments, snapshots = self._listing()
        old = [path for older, path in sorted(snapshots.items()) if older < seq] + \
              [path for base, path in sorted(segments.items()) if base <= seq]
        for number, path in enumerate(old):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if number == 0:
                _step("old-file-removed")
        fsync_directory(self.directory)
        _step("old-files-removed")
        return final

    # -- reading frames back --
    def _locate(self, seq: int) -> tuple[_Segment | None, _Snapshot | None]:
        for segment in reversed(self._segments):
            if segment.base <= seq < segment.base + len(segment.starts):
                return segment, None
        if self.snapshot is not None and seq <= self.snapshot.seq:
            return None, self.snapshot
        raise StoreError(f"journal {self.directory}: frame {seq} is not known to this process")

    def _payload(self, segment: _Segment, seq: int) -> bytes:
        start = segment.starts[seq - segment.base]
        head = os.pread(segment.fd, HEADER.size, start)
        magic, length, crc = HEADER.unpack(head)
        payload = os.pread(segment.fd, length, start + HEADER.size) if magic == MAGIC else b""
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            raise StoreError(f"journal {segment.path}: frame {seq} at byte {start} does not read back")
        return payload

    def holds_frames_from(self, seq: int) -> bool:
        """Whether every frame from ``seq`` to the last read is held whole in a segment (not only a
        snapshot's writes): ``frame_writes`` then returns each as written."""
        with self._files_lock:
            return bool(self._segments) and self._segments[0].base <= seq and \
                (self.snapshot is None or seq > self.snapshot.seq)

    def frame_writes(self, seq: int) -> list[Write]:
        """The writes of frame ``seq`` (already read or appended by this process), read back — from
        a snapshot: those of its writes that are still the documents' state."""
        with self._files_lock:
            segment, snapshot = self._locate(seq)
            if segment is not None:
                payload = json.loads(self._payload(segment, seq))
                invariant(payload["seq"] == seq, "a frame's sequence number")
                return [tuple(w) for w in payload["writes"]]
            found = []
            for index in snapshot.chunks_holding(seq):
                found.extend(tuple(w[:4]) for w in snapshot.chunk_writes(index) if w[4] == seq)
            return found

    def frame_write(self, seq: int, collection: str, doc_id: str) -> Write | None:
        """The write of one document in frame ``seq``, decoding only that write: a document's
        ``[collection, doc_id, ...]`` array is found by its JSON text (quotes inside JSON strings
        are escaped, so the text cannot occur inside a string) and decoded alone. None if the
        frame has no write of it (from a snapshot: if its state there is a later write)."""
        marker = f"[{json.dumps(collection)},{json.dumps(doc_id)},"
        with self._files_lock:
            segment, snapshot = self._locate(seq)
            texts = [self._payload(segment, seq)] if segment is not None else \
                [snapshot.chunk_payload(index) for index in snapshot.chunks_holding(seq)]
        for text in texts:
            text = text.decode("utf-8")
            position = text.find(marker)
            if position < 0:
                continue
            write, _end = _DECODER.raw_decode(text, position)
            invariant(write[0] == collection and write[1] == doc_id, "the write found is the one asked for")
            if segment is None and write[4] != seq:
                return None
            return tuple(write[:4])
        return None

    def close(self) -> None:
        with self._files_lock:
            fds = [segment.fd for segment in self._segments] + [self._lock_fd]
            if self.snapshot is not None:
                fds.append(self.snapshot.fd)
            self._segments = []
            self.snapshot = None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._lock_fd = None
        self._apply_lock.close()
        self._checkpoint_lock.close()


def _snapshot_chunks(snapshot: _Snapshot, *, after: int, check: bool) -> Iterator[list[list]]:
    """The writes of a snapshot's chunks with seq > ``after`` (with ``check``: every frame read,
    and the file's hash and write count verified at the end), read ~8 MB at a time."""
    digest = hashlib.sha256() if check else None
    count, header_seen = 0, False
    data, at, position = b"", 0, 0      # bytes read, where the next frame starts in them, file offset after them
    while True:
        available = len(data) - at
        need = HEADER.size
        if available >= HEADER.size:
            magic, length, _crc = HEADER.unpack_from(data, at)
            if magic != MAGIC or length > FRAME_BYTES_MAX:
                raise StoreError(f"snapshot {snapshot.path} is damaged at byte {position - available}: move it "
                                 f"aside and restore the store from a backup")
            need = HEADER.size + length
        if available < need:
            if position >= snapshot.footer_at:
                if available == 0:
                    break
                raise StoreError(f"snapshot {snapshot.path} is truncated inside a frame")
            block = os.pread(snapshot.fd, min(max(need - available, READ_BYTES_MAX), snapshot.footer_at - position),
                             position)
            if not block:
                raise StoreError(f"snapshot {snapshot.path} is truncated")
            if digest is not None:
                digest.update(block)
            position += len(block)
            data, at = data[at:] + block, 0
            continue
        frame = _decode(data, at)
        if frame is None:
            raise StoreError(f"snapshot {snapshot.path} is damaged (a frame does not match its CRC): move it "
                             f"aside and restore the store from a backup")
        payload, length = frame
        at += length
        if not header_seen:
            invariant(payload.get("snapshot") == snapshot.seq, "a snapshot's header names its sequence number")
            header_seen = True
            continue
        writes = payload["writes"]
        count += len(writes)
        if writes and writes[-1][4] <= after:
            continue
        yield [w for w in writes if w[4] > after] if after else writes
    if digest is not None and (digest.hexdigest() != snapshot.sha256 or count != snapshot.writes):
        raise StoreError(f"snapshot {snapshot.path} does not match its hash: damaged; move it aside and restore "
                         f"the store from a backup")


class _FileLock:
    """A process-local mutex plus ``flock`` on a file of its own (excludes threads and processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()

    @contextlib.contextmanager
    def hold(self, blocking: bool) -> Iterator[bool]:
        if not self._thread_lock.acquire(blocking):
            yield False
            return
        try:
            if self._fd is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
            except BlockingIOError:
                taken = False
            try:
                yield taken
            finally:
                if taken:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _decode(data: bytes, position: int):
    if len(data) - position < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack_from(data, position)
    if magic != MAGIC or length > FRAME_BYTES_MAX:
        return None
    end = position + HEADER.size + length
    if end > len(data):
        return None
    payload = data[position + HEADER.size:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return json.loads(payload), HEADER.size + length
    except ValueError:
        return None


def _any_valid_after(data: bytes, start: int) -> bool:
    position = data.find(MAGIC, start)
    while position >= 0:
        if _decode(data, position) is not None:
            return True
        position = data.find(MAGIC, position + 1)
    return False
