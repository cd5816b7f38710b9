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
backend's mirror keeps no XML of ``store_text=False`` collections). ``read_only`` opens the file
for reading alone: no folder or lock file is created, no torn tail cut, the writer and applier
locks refused.

TODO (documented, not done): checkpoint/compaction — write a snapshot of the current state and
start a new journal, so that opening does not replay the whole history.
"""
from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Iterator

from gridcredit.errors import StoreError, invariant

MAGIC = b"GCJ1"
HEADER = struct.Struct(">4sII")
FRAME_BYTES_MAX = 512_000_000
READ_BYTES_MAX = 8_000_000      # journal bytes one read_new call reads (more than one frame only if it fits)
_DECODER = json.JSONDecoder()

Write = tuple[str, str, int, "str | None"]   # collection, doc_id, version, xml (None: deleted)


class Journal:
    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        self.directory = Path(directory)
        self.read_only = read_only
        self.path = self.directory / "journal.gcj"
        if read_only:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as error:
                raise StoreError(f"cannot open the journal {self.path} read-only: {error}") from None
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            if created:
                _fsync_directory(self.directory)
        self._lock_path = self.directory / "journal.lock"
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._pid = os.getpid()
        self._apply_lock = _FileLock(self.directory / "apply.lock")
        self._query_lock_path = self.directory / "query.lock"
        self.offset = 0        # bytes of the journal already read into the caller's state
        self.last_seq = 0
        self._starts = array.array("q")   # byte offset of frame seq at [seq - 1]

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

    def size(self) -> int:
        """Bytes in the journal file now (frames of other processes included; a tail may be torn)."""
        return os.fstat(self._fd).st_size

    def sync(self) -> None:
        """fsync the journal: every frame written so far, by any process, is durable after this."""
        os.fsync(self._fd)

    def read_new(self, *, repair: bool, bytes_max: int | None = None) -> list[tuple[int, list[Write]]]:
        """Frames appended since the last call; with ``repair`` (lock held) cut off a torn tail.

        Without ``repair`` it may run without the writer lock: it stops before a frame still being
        written (or torn) and takes it on a later call. Callers serialize calls on one ``Journal``.
        With ``bytes_max`` it reads about that many bytes at most (at least one frame): call again
        while it returns frames to read a long journal without holding all of it in memory.
        """
        invariant(not (repair and self.read_only), "repairing a read-only journal")
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
            invariant(payload["seq"] == self.last_seq + 1,
                      f"journal sequence {payload['seq']} follows {self.last_seq}")
            self.last_seq = payload["seq"]
            self._starts.append(self.offset + position)
            entries.append((payload["seq"], [tuple(w) for w in payload["writes"]]))
            position += length
        self.offset += position
        return entries

    def append(self, seq: int, writes: list[Write], *, sync: bool = True) -> None:
        """Append one frame and fsync it (the caller holds the lock and has read up to the end).

        With ``sync=False`` the fsync is the caller's (``sync()``, after releasing the lock).
        """
        invariant(seq == self.last_seq + 1, "append out of sequence")
        payload = json.dumps({"seq": seq, "writes": writes}, separators=(",", ":")).encode()
        if len(payload) > FRAME_BYTES_MAX:
            raise StoreError("transaction too large for one journal frame")
        frame = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        size = os.fstat(self._fd).st_size
        invariant(size == self.offset, "journal grew while we held the lock")
        written = os.write(self._fd, frame)
        if written != len(frame):
            os.ftruncate(self._fd, size)
            raise StoreError("short write to the journal")
        if sync:
            os.fsync(self._fd)
        self._starts.append(self.offset)
        self.offset += len(frame)
        self.last_seq = seq

    def _payload(self, seq: int) -> bytes:
        invariant(1 <= seq <= len(self._starts), f"frame {seq} is not known to this process")
        start = self._starts[seq - 1]
        head = os.pread(self._fd, HEADER.size, start)
        magic, length, crc = HEADER.unpack(head)
        payload = os.pread(self._fd, length, start + HEADER.size) if magic == MAGIC else b""
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            raise StoreError(f"journal {self.path}: frame {seq} at byte {start} does not read back")
        return payload

    def frame_writes(self, seq: int) -> list[Write]:
        """The writes of frame ``seq`` (already read or appended by this process), read back."""
        payload = json.loads(self._payload(seq))
        invariant(payload["seq"] == seq, "a frame's sequence number")
        return [tuple(w) for w in payload["writes"]]

    def frame_write(self, seq: int, collection: str, doc_id: str) -> Write | None:
        """The write of one document in frame ``seq``, decoding only that write: a document's
        ``[collection, doc_id, ...]`` array is found by its JSON text (quotes inside JSON strings
        are escaped, so the text cannot occur inside a string) and decoded alone."""
        text = self._payload(seq).decode("utf-8")
        marker = f"[{json.dumps(collection)},{json.dumps(doc_id)},"
        position = text.find(marker)
        if position < 0:
            return None
        write, _end = _DECODER.raw_decode(text, position)
        invariant(write[0] == collection and write[1] == doc_id, "the write found is the one asked for")
        return tuple(write)

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._apply_lock.close()


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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
