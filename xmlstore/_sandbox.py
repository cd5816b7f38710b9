"""Sandbox processes for the embedded store's XPath: a query that runs past its time limit is killed.

libxml2 evaluates an XPath without ever returning to Python, so a thread cannot stop it (lxml
lets go of the GIL meanwhile: the thread just stays busy, for as long as the expression takes —
nested ``count(//…)`` filters grow ×30 per level). The embedded store therefore evaluates every
query that has an XPath in a child process of its own (``python -m gridcredit.xmlstore._sandbox``):
the child opens the store file (read-only when the parent did; it never writes), runs the query
exactly as the store would (its own
SQLite snapshot, its own parsed-document cache) and sends back the page or the count. The parent
waits until the query's time limit (plus ``GRACE_S``); past it, it kills the child (SIGKILL),
starts another one at the next query and raises ``QueryError``. A child's address space is
bounded by ``StoreLimits.xpath_sandbox_bytes_max`` (an XPath that builds larger strings fails with
``QueryError``). A process keeps at most
``StoreLimits.xpath_sandboxes`` children (one per query running at once; more queries wait for one,
within their time limit), shared by every embedded store it opens; they are started on demand (and
one spare beside those in use, so a query rarely waits for a start) and
end with it (their stdin closes; a child also ends within 0.5 s when its parent is gone, and it
is in its parent's process group, so a signal to the server's group reaches it).

Protocol: 8-byte big-endian length, then a pickle, both ways (parent and child are the same
program; nothing else writes to these pipes).
"""
from __future__ import annotations

import atexit
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from gridcredit.errors import QueryError, StoreError

GRACE_S = 0.5           # how long past the time limit a query may take before its child is killed
_LENGTH = struct.Struct(">Q")


def _write_message(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, missing = [], size
    while missing:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError()
        chunk = os.read(fd, min(missing, 1 << 20))
        if not chunk:
            raise EOFError()
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int, deadline: float | None) -> Any:
    size = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size, deadline))[0]
    return pickle.loads(_read_exactly(fd, size, deadline))


class _Child:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "gridcredit.xmlstore._sandbox"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)

    def ask(self, request: tuple, deadline: float) -> Any:
        _write_message(self.process.stdin.fileno(), request)
        return _read_message(self.process.stdout.fileno(), deadline)

    def kill(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class SandboxPool:
    """The children of this process (see the module docstring)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._idle: list[_Child] = []
        self._running = 0
        self._starting = 0           # spares being started
        self._condition = threading.Condition()
        self.killed = 0              # children killed at a time limit (for tests and operators)

    def run(self, request: tuple, *, time_limit_s: float, size: int) -> Any:
        deadline = time.monotonic() + time_limit_s
        child = self._take(deadline, size, time_limit_s)
        healthy = False
        try:
            try:
                answer = child.ask(request, deadline + GRACE_S)
            except TimeoutError:
                self.killed += 1
                raise QueryError(f"query exceeded its time limit of {time_limit_s} s "
                                 f"(its evaluation was stopped)") from None
            except (EOFError, OSError, pickle.UnpicklingError) as error:
                raise StoreError(f"the XPath sandbox process ended unexpectedly ({type(error).__name__}); "
                                 f"the next query starts another") from None
            healthy = True
        finally:
            self._give_back(child, healthy)
        status, value = answer
        if status == "ok":
            return value
        kind, message = value
        raise (QueryError if kind == "QueryError" else StoreError)(message)

    def _take(self, deadline: float, size: int, time_limit_s: float) -> _Child:
        with self._condition:
            while not self._idle and self._running >= max(1, size):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueryError(f"query exceeded its time limit of {time_limit_s} s "
                                     f"(waiting for a free XPath sandbox)")
                self._condition.wait(remaining)
            self._running += 1
            child = self._idle.pop() if self._idle else None
            spare = not self._idle and self._running + self._starting < size
            if spare:
                self._starting += 1
        if spare:   # the next query at once finds a child started (python + lxml take ~0.1-1 s to start)
            threading.Thread(target=self._start_spare, daemon=True, name="xpath-sandbox-spare").start()
        if child is not None:
            return child
        try:
            return _Child()
        except OSError as error:
            with self._condition:
                self._running -= 1
                self._condition.notify()
            raise StoreError(f"cannot start an XPath sandbox process: {error}") from None

    def _start_spare(self) -> None:
        try:
            child = _Child()
        except OSError:
            child = None
        with self._condition:
            self._starting -= 1
            if child is not None:
                self._idle.append(child)
            self._condition.notify()

    def _give_back(self, child: _Child, healthy: bool) -> None:
        if not healthy:
            child.kill()
        with self._condition:
            self._running -= 1
            if healthy:
                self._idle.append(child)
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()


_pool: SandboxPool | None = None
_pool_lock = threading.Lock()


def pool() -> SandboxPool:
    """This process's pool (a forked child gets a new one: it never uses its parent's children)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._pid != os.getpid():
            _pool = SandboxPool()
        return _pool


@atexit.register
def _close_pool() -> None:
    if _pool is not None and _pool._pid == os.getpid():
        _pool.close()


# -- the child ---------------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def _serve() -> None:
    from pathlib import Path

    from ._embedded import EmbeddedStore

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    stores: OrderedDict[tuple, EmbeddedStore] = OrderedDict()
    hard_memory = resource.getrlimit(resource.RLIMIT_AS)[1]
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr          # nothing but answers on the pipe
    while True:
        try:
            request = _read_message(stdin, None)
        except EOFError:
            return
        operation, path, limits, read_only, args = request
        try:
            # strings an XPath builds (concat of a large document's text, again and again) stop
            # here, not in the machine's memory
            resource.setrlimit(resource.RLIMIT_AS, (limits.xpath_sandbox_bytes_max, hard_memory))
            key = (path, limits, read_only)
            store = stores.get(key)
            if store is not None:
                stores.move_to_end(key)
            else:
                # opened as the parent opened it: a read-only SQLite connection alone in its process
                # reads the WAL index into memory at every transaction (7 ms a query, measured here)
                store = EmbeddedStore(Path(path), limits=limits, read_only=read_only, sandboxed=True)
                stores[key] = store
                while len(stores) > 16:
                    stores.popitem(last=False)[1].close()
            if operation == "query":    # plain tuples: pickled ~10x faster than Document objects
                page = store.query(**args)
                answer = ("ok", ([(d.doc_id, d.version, d.xml) for d in page.documents], page.next_offset))
            elif operation == "count":
                answer = ("ok", store.count(**args))
            else:
                answer = ("error", ("StoreError", f"unknown sandbox operation {operation!r}"))
        except (QueryError, StoreError) as error:
            message = str(error)
            if "memory" in message.lower() or "unknown error" in message:   # libxml2's failed allocation
                message = f"{message} (an XPath may use at most {limits.xpath_sandbox_bytes_max >> 20} MB)"
            answer = ("error", (type(error).__name__, message))
        except MemoryError:
            answer = ("error", ("QueryError", f"XPath needs more than {limits.xpath_sandbox_bytes_max >> 20} MB"))
        except Exception as error:     # a bug: tell the parent, keep serving
            answer = ("error", ("StoreError", f"XPath sandbox failed: {type(error).__name__}: {error}"))
        _write_message(stdout, answer)


if __name__ == "__main__":
    _serve()
