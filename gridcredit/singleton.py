"""One holder at a time on this host: a task that must run once per host, not once per worker.

    lock = SingletonLock(state_dir / "locks" / "luts-forwarder.lock")
    run_rounds(stop, interval_s=30, work=one_round, lock=lock)     # in a thread of every worker
    run_holding(lock, stop, retry_s=30, run=task_that_loops)       # the same for a task with its own loop

The lock is an ``fcntl.flock`` on a file (in the state directory, shared by the host's workers),
held for the life of the process — until ``release()`` or the process ends, however it ends: the
kernel releases it when the last descriptor of it closes, so after a ``kill -9`` of its holder
another process takes it at its next try. A process forked by the holder does not keep it (its
copy is closed in the child), so a child outliving its parent cannot hold the task hostage. The
holder writes ``pid N`` into the file; ``holder()`` reads it back for messages.

Every worker runs ``run_rounds`` (or ``run_holding``): the one holding the lock does the work,
the others try the lock again every interval. A lock is for processes; threads of one process share it (a
second ``try_acquire`` on the same object answers True), so use one object per task.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

__all__ = ["SingletonLock", "run_holding", "run_rounds"]

log = logging.getLogger("gridcredit.singleton")

WAIT_STEP_S = 0.1           # how often acquire(wait_s) tries again

_held: "weakref.WeakSet[SingletonLock]" = weakref.WeakSet()


def _close_in_child() -> None:
    for lock in list(_held):
        lock._forget()


os.register_at_fork(after_in_child=_close_in_child)


class SingletonLock:
    """An exclusive ``flock`` on ``path`` (made with its folder when missing), held until
    ``release()`` or the end of the process."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._handle is not None

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this process holds it now."""
        with self._mutex:
            if self._handle is not None:
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                handle.close()
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            self._handle = handle
            _held.add(self)
            return True

    def acquire(self, wait_s: float = 0.0) -> bool:
        """``try_acquire`` again every WAIT_STEP_S for up to ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_STEP_S)
        return True

    def holder(self) -> str:
        """What the holder wrote (``pid N``), or "" (none yet, or unreadable)."""
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def release(self) -> None:
        with self._mutex:
            if self._handle is not None:
                _held.discard(self)
                self._handle.close()            # closing the last descriptor releases the flock
                self._handle = None

    def _forget(self) -> None:
        """In a forked child: close this process' copy of the descriptor (the parent keeps the lock)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._mutex = threading.Lock()          # another thread may have held it at the fork

    def __enter__(self) -> SingletonLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def run_rounds(stop: threading.Event, *, interval_s: float, work: Callable[[], bool], name: str = "task",
               lock: SingletonLock | None = None) -> None:
    """Call ``work()`` until ``stop`` is set: at once again when it returns True (more to do), else
    after ``interval_s``; an exception from it is logged and the call retried after ``interval_s``.

    With ``lock``: only while this process holds it — while another does, try it again every
    ``interval_s`` —, and released when this returns. Without: the caller runs this once per host
    (``run_holding``) or the work is safe in every worker."""
    try:
        while not stop.is_set():
            if lock is not None and not lock.try_acquire():
                stop.wait(interval_s)
                continue
            try:
                more = work()
            except Exception:  # noqa: BLE001 — a failed round is retried at the next interval
                log.exception("%s failed; retrying in %s s", name, interval_s)
                stop.wait(interval_s)
                continue
            if not more:
                stop.wait(interval_s)
    finally:
        if lock is not None:
            lock.release()


def run_holding(lock: SingletonLock, stop: threading.Event, *, retry_s: float, run: Callable[[], None]) -> None:
    """Run a task that loops by itself until ``stop`` (``run()``) in the one process of the host
    holding ``lock``: wait for it, trying every ``retry_s``, until this process holds it or ``stop``
    is set; release it when ``run`` returns."""
    try:
        while not stop.is_set():
            if lock.try_acquire():
                run()
                return
            stop.wait(retry_s)
    finally:
        lock.release()
