"""A durable outbox: items written locally, sent in batches, removed only once acknowledged.

    outbox = Outbox("/var/spool/gridcredit/out", items_max=100_000, bytes_max=1 << 30)
    outbox.add(b"...")                               # durable when it returns; OutboxFull at a limit
    batcher = Batcher(deliver, batch_parts=100, batch_bytes_max=1_000_000)
    report = outbox.drain(batcher)                   # everything waiting, oldest first
    report.items_done, report.items_left, report.stopped

It knows nothing of what it carries: its users (the LUTS spool, services/luts/spool.py) say how an
item splits into parts, how a batch of parts is delivered and what a refusal sets aside.

Items (``Outbox``)
    One file per item, ``<dir>/<arrival ns>-<pid>-<n><SUFFIX>``, written to ``<dir>/tmp/`` first,
    fsynced, renamed into place and the directory fsynced (gridcredit.durable): once ``add``
    returns the item survives a crash, and a crash during ``add`` leaves at most a temporary file
    (removed by a later ``drain`` once it is TMP_AGE_MAX_S old). ``add`` refuses with
    ``OutboxFull`` when the outbox holds ``items_max`` items or ``bytes_max`` bytes (counted again
    at most every USAGE_RECOUNT_S: another process' adds in that time may overshoot by what they
    add). A ``fcntl`` lock on ``<dir>/.lock`` (gridcredit.singleton) keeps two senders of one
    outbox from interleaving (``OutboxBusy`` names the holder); it is released when its process
    dies.

Batches (``Batcher``)
    Each item is split into parts (``split``; by default the item is one part), in order. Parts
    are packed into batches of at most ``batch_parts`` parts and ``batch_bytes_max`` bytes; parts
    with different ``key`` go into different batches, and a part keyed ``ALONE`` goes by itself.
    ``deliver(key, parts)`` sends one batch and answers one value per part (any value but None),
    or raises ``DeliveryStopped`` (the receiver unreachable or refusing the sender: nothing more
    is sent). A part may come with its answer already (found wrong before sending); an item that
    cannot be split at all (``split`` raises ``Unreadable``) is settled with that error. An item
    is settled once every part has an answer; settled items are handed on in the order they were
    added (``Settled``), a batch's worth at a time.

Removal (``Outbox.drain``)
    Items are read in arrival order as the batches need them. When items are settled, what the
    ``rejected`` callback of the user makes of each (files: the refused parts with their reasons)
    is written to ``<dir>/rejected/`` and that directory fsynced; only then are the items removed
    and the outbox directory fsynced. A crash at any point — a ``kill -9`` mid-batch included —
    leaves every item that was not removed, and the next ``drain`` sends it again: the receiver
    must take a repeated part as the same one (a request id, a record id), and rejected files are
    written under fixed names (written again, not twice).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

from .durable import fsync_directory, write_atomically
from .errors import GridcreditError, invariant
from .singleton import SingletonLock

__all__ = ["ALONE", "Batcher", "DeliveryStopped", "DrainReport", "Item", "Outbox", "OutboxBusy", "OutboxError",
           "OutboxFull", "Part", "Settled", "Unreadable"]

log = logging.getLogger("gridcredit.outbox")

ITEMS_MAX_DEFAULT = 100_000
BYTES_MAX_DEFAULT = 1 << 30
TMP_AGE_MAX_S = 3600
ALONE = ("alone",)          # the key of a part that is delivered in a batch of its own

_names = itertools.count()  # one counter for every outbox of the process: names never repeat


class OutboxError(GridcreditError):
    """The outbox cannot take or send an item (its directory cannot be used or read)."""


class OutboxFull(OutboxError):
    """The outbox holds as many items or bytes as it may: send them before adding more."""


class OutboxBusy(OutboxError):
    """Another process is sending this outbox."""


class DeliveryStopped(GridcreditError):
    """Raised by a ``deliver``: the receiver cannot take the batch (unreachable, refusing the sender).
    Sending ends; nothing unsettled is removed."""


class Unreadable(OutboxError):
    """Raised by a ``split``: the item cannot be read at all (it is settled with this message)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to send."""
    name: str                   # how reports name it (a file name, a queue entry id)
    data: bytes
    context: object = None      # the owner's own handle (the outbox's: the item's path)
    unreadable: str | None = None   # why its bytes could not be had (a ``split`` settles it so)


@dataclass(frozen=True, slots=True)
class Part:
    """What one item contributes to a batch."""
    data: bytes                 # what is delivered (its length counts towards batch_bytes_max)
    key: Hashable = None        # parts of different keys never share a batch; ALONE: a batch of its own
    answer: object = None       # not None: settled without sending (e.g. found wrong before sending)
    source: object = None       # the owner's own handle on the part


@dataclass(frozen=True, slots=True)
class Settled:
    """An item all of whose parts have an answer (or that could not be read: ``error``)."""
    item: Item
    parts: tuple[Part, ...]
    answers: tuple[object, ...]  # one per part, in order
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DrainReport:
    items_done: int             # settled and removed
    items_left: int             # still in the outbox
    stopped: str | None         # why sending ended before every item was settled


def whole(item: Item) -> list[Part]:
    """The default ``split``: the item is one part."""
    if item.unreadable is not None:
        raise Unreadable(item.unreadable)
    return [Part(item.data)]


@dataclass(eq=False, slots=True)
class _Open:
    item: Item
    parts: tuple[Part, ...]
    answers: list
    complete: bool = False
    error: str | None = None

    def settled(self) -> bool:
        return self.complete and all(answer is not None for answer in self.answers)


class Batcher:
    """Packs the parts of items into batches, delivers them, and hands back each item once all its
    parts are answered (see the module docstring). ``on_batch()`` is called after each batch."""

    def __init__(self, deliver: Callable[[Hashable, list[Part]], Sequence[object]], *,
                 split: Callable[[Item], Sequence[Part]] = whole, batch_parts: int, batch_bytes_max: int,
                 on_settled: Callable[[list[Settled]], None] | None = None,
                 on_batch: Callable[[], None] | None = None) -> None:
        if batch_parts < 1:
            raise ValueError("batch_parts must be positive")
        if batch_bytes_max < 1:
            raise ValueError("batch_bytes_max must be positive")
        self.deliver = deliver
        self.split = split
        self.batch_parts = batch_parts
        self.batch_bytes_max = batch_bytes_max
        self.on_batch = on_batch
        self._listeners: list[Callable[[list[Settled]], None]] = [] if on_settled is None else [on_settled]
        self._open: list[_Open] = []
        self._batch: list[tuple[_Open, int]] = []
        self._bytes = 0
        self._key: Hashable = None
        self.batches = 0

    def listen(self, on_settled: Callable[[list[Settled]], None], *, first: bool = False) -> None:
        """Also hand settled items to ``on_settled`` (``first``: before the others)."""
        self._listeners.insert(0 if first else len(self._listeners), on_settled)

    def add(self, item: Item) -> None:
        try:
            parts = tuple(self.split(item))
        except Unreadable as error:
            self._open.append(_Open(item, (), [], complete=True, error=str(error)))
            if not self._batch:
                self._settle()
            return
        opened = _Open(item, parts, [part.answer for part in parts])
        self._open.append(opened)
        for index, part in enumerate(parts):
            if part.answer is not None:
                continue
            if self._batch and (part.key == ALONE or part.key != self._key or len(self._batch) >= self.batch_parts
                                or self._bytes + len(part.data) > self.batch_bytes_max):
                self.flush()
            self._batch.append((opened, index))
            self._bytes += len(part.data)
            self._key = part.key
            if part.key == ALONE:
                self.flush()
        opened.complete = True
        if not self._batch:
            self._settle()

    def flush(self) -> None:
        """Deliver the batch being packed (if any)."""
        batch, key = self._batch, self._key
        self._batch, self._bytes, self._key = [], 0, None
        if not batch:
            return
        answers = self.deliver(key, [opened.parts[index] for opened, index in batch])
        self.batches += 1
        if len(answers) != len(batch) or any(answer is None for answer in answers):
            raise DeliveryStopped(f"the receiver answered {len(answers)} results for a batch of {len(batch)} "
                                  "parts; nothing was removed")
        for (opened, index), answer in zip(batch, answers):
            opened.answers[index] = answer
        self._settle()
        if self.on_batch is not None:
            self.on_batch()

    def finish(self) -> None:
        """Deliver what is left; every item added is settled when this returns."""
        self.flush()
        self._settle()
        invariant(not self._open, "every item added was settled once all batches were answered")

    def _settle(self) -> None:
        done: list[Settled] = []
        while self._open and self._open[0].settled():
            opened = self._open.pop(0)
            done.append(Settled(opened.item, opened.parts, tuple(opened.answers), opened.error))
        if done:
            for listener in self._listeners:
                listener(done)


class Outbox:
    """A directory of items waiting to be sent (see the module docstring).

    Subclasses name what they hold (NAME, NOUN, SUFFIX), raise their own errors (Error, Full,
    Busy: subclasses of the Outbox ones) and say how to empty a full one (``full_hint``).
    """

    NAME = "outbox"
    NOUN = "items"
    SUFFIX = ".item"
    LOCK = ".lock"
    USAGE_RECOUNT_S = 2.0
    Error: type[OutboxError] = OutboxError
    Full: type[OutboxFull] = OutboxFull
    Busy: type[OutboxBusy] = OutboxBusy

    def __init__(self, directory: str | os.PathLike, *, items_max: int = ITEMS_MAX_DEFAULT,
                 bytes_max: int = BYTES_MAX_DEFAULT) -> None:
        self.directory = Path(directory)
        self.tmp_dir = self.directory / "tmp"
        self.rejected_dir = self.directory / "rejected"
        self.items_max = items_max
        self.bytes_max = bytes_max
        try:
            for path in (self.directory, self.tmp_dir, self.rejected_dir):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self.Error(f"cannot use {self.directory} as the {self.NAME} directory: {error.strerror}") from None
        # (items, bytes, when counted): ``add`` counts again only when this is older than
        # USAGE_RECOUNT_S — a scan per add made adding N items cost N² directory reads.
        self._usage: tuple[int, int, float] | None = None

    def full_hint(self) -> str:
        return "send it before adding more"

    # -- adding --
    def usage(self) -> tuple[int, int]:
        """(items, bytes) waiting."""
        count = size = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(self.SUFFIX) and entry.is_file(follow_symlinks=False):
                    count += 1
                    with contextlib.suppress(FileNotFoundError):
                        size += entry.stat(follow_symlinks=False).st_size
        return count, size

    def add(self, data: bytes) -> Path:
        """Keep ``data`` until it is sent; durable when this returns (its file's path)."""
        if self._usage is None or time.monotonic() - self._usage[2] > self.USAGE_RECOUNT_S:
            self._usage = (*self.usage(), time.monotonic())
        count, size, counted = self._usage
        if count + 1 > self.items_max or size + len(data) > self.bytes_max:
            raise self.Full(f"the {self.NAME} {self.directory} is full ({count:,} {self.NOUN}, {size:,} bytes; limits "
                            f"{self.items_max:,} {self.NOUN}, {self.bytes_max:,} bytes): {self.full_hint()}")
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{next(_names):06d}{self.SUFFIX}"
        try:
            write_atomically(path, data, tmp_dir=self.tmp_dir)
        except OSError as error:
            raise self.Error(f"cannot write to the {self.NAME} {self.directory}: {error.strerror}") from None
        self._usage = (count + 1, size + len(data), counted)
        return path

    def pending(self) -> list[Path]:
        """The items waiting, oldest first."""
        with os.scandir(self.directory) as entries:
            names = sorted(entry.name for entry in entries
                           if entry.name.endswith(self.SUFFIX) and entry.is_file(follow_symlinks=False))
        return [self.directory / name for name in names]

    def items(self, paths: Iterable[Path]) -> Iterator[Item]:
        """The items at ``paths``, read one at a time (one removed meanwhile is passed over)."""
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise self.Error(f"cannot read {path}: {error.strerror}") from None
            yield Item(path.name, data, path)

    # -- sending --
    @contextlib.contextmanager
    def locked(self, wait_s: float = 0.0) -> Iterator[None]:
        """The sender's lock (held until the block ends or the process dies)."""
        lock = SingletonLock(self.directory / self.LOCK)
        if not lock.acquire(wait_s):
            raise self.Busy(f"another sender ({lock.holder() or 'another process'}) is sending the {self.NAME} "
                            f"{self.directory}")
        try:
            yield
        finally:
            lock.release()

    def drain(self, batcher: Batcher, *, wait_s: float = 0.0,
              rejected: Callable[[Settled], Mapping[str, bytes]] | None = None,
              started: Callable[[list[Path]], None] | None = None) -> DrainReport:
        """Send every item waiting through ``batcher`` (a new one for each drain), removing each
        once settled (see the module docstring). ``rejected(settled)``: the files to keep in
        ``rejected_dir`` for it (name → bytes), written before it is removed. ``started(paths)``:
        told what is about to be sent. Never raises for the receiver being away: the report says
        why sending stopped."""
        done = 0

        def remove(batch: list[Settled]) -> None:
            nonlocal done
            files: dict[str, bytes] = {}
            if rejected is not None:
                for settled in batch:
                    files.update(rejected(settled))
            self.remove([settled.item.context for settled in batch], rejected=files)
            done += len(batch)

        with self.locked(wait_s):
            self._remove_stale_tmp()
            paths = self.pending()
            if started is not None:
                started(paths)
            batcher.listen(remove, first=True)
            stopped = None
            try:
                for item in self.items(paths):
                    batcher.add(item)
                batcher.finish()
            except DeliveryStopped as error:
                stopped = str(error)
            return DrainReport(items_done=done, items_left=len(self.pending()), stopped=stopped)

    def remove(self, paths: Sequence[Path], *, rejected: Mapping[str, bytes] | None = None) -> None:
        """Remove settled items, after writing ``rejected`` (name → bytes) into ``rejected_dir``
        (a crash between leaves the items, sent again and rejected again under the same names)."""
        if rejected:
            for name, data in rejected.items():
                write_atomically(self.rejected_dir / name, data, tmp_dir=self.tmp_dir, sync_directory=False)
            fsync_directory(self.rejected_dir)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        fsync_directory(self.directory)

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - TMP_AGE_MAX_S
        for path in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
