"""The BaseX store's sessions: connecting, a pool of sessions for queries and updates, and the
sessions that hold large databases open (``Pins``).

The Python client of BaseX is not thread-safe and has no socket timeout: our wire client
(``_basex_wire.Session``) has one, and a session is used by one thread at a time (``Pool``). A
session whose connection broke is dropped and counted (``Pool.broken_seen``: the store then
verifies BaseX, see ``_basex``). ``BaseXUnavailable``: BaseX did not answer.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import re
import threading
from typing import Callable, Iterator

from gridcredit.errors import StoreError, StoreUnavailable

from ._basex_queries import db_name
from ._basex_wire import ServerError, Session, WireError

log = logging.getLogger("gridcredit.xmlstore._basex")     # (the store's log lines, as before the split)


def connect(host: str, port: int, user: str, password: str, timeout_s: float) -> Session:
    """A logged-in session that keeps documents' whitespace and writes no indentation."""
    session = Session(host, port, user, password, timeout_s=timeout_s)
    try:
        session.command("SET CHOP false")
        session.command("SET SERIALIZER indent=no")
    except (ServerError, WireError):
        session.close()
        raise
    return session


class BaseXUnavailable(StoreUnavailable):
    """BaseX did not answer (refused, closed or timed out): the journal goes on without it (an
    expected state: a request it fails gets Server.StoreUnavailable and no traceback)."""


class Pool:
    """At most ``size`` sessions; one thread uses a session at a time; broken sessions are dropped."""

    def __init__(self, connect: Callable[[], Session], size: int, wait_s: float) -> None:
        self._connect = connect
        self._size = size
        self._wait_s = wait_s
        self._idle: list[Session] = []
        self._open = 0
        self._condition = threading.Condition()
        self.broken_seen = 0

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self._condition:
            if not self._condition.wait_for(lambda: self._idle or self._open < self._size, timeout=self._wait_s):
                raise StoreError(f"no BaseX session free within {self._wait_s} s (pool of {self._size})")
            session = self._idle.pop() if self._idle else None
            if session is None:
                self._open += 1
        try:
            if session is None:
                session = self._connect()
        except BaseException:
            with self._condition:
                self._open -= 1
                self._condition.notify()
            raise
        try:
            yield session
        finally:
            with self._condition:
                if session.broken:
                    self._open -= 1
                    self.broken_seen += 1
                    session.close()
                else:
                    self._idle.append(session)
                self._condition.notify()

    def close(self) -> None:
        with self._condition:
            for session in self._idle:
                session.close()
            self._open -= len(self._idle)
            self._idle.clear()


# a line of SHOW SESSIONS: "- <user> [<address>]" and, for a session that has OPENed one, ": <database>"
SESSION_LINE = re.compile(r"^- (\S+) \[([^\]]+)\](?:: (\S+))?$")
SESSION_ADDRESS = re.compile(r"^[0-9A-Za-z.:%-]+:[0-9]+$")


class Pins:
    """Sessions that hold large databases open in BaseX (``OPEN``), so that queries find them open.

    BaseX 9.7 opens a database for each query that names it — reading its resource list (the pre
    value of every document, in inf.basex) — and closes it when the last query using it ends.
    Measured here: a query on a database of 600,000 resources (300,000 LUTS id entries, each
    with its version document) spent 20-60 ms compiling, nearly all of it opening, whatever it
    then did; 0.1 ms while another session held the database open (an open database is shared
    by every query of the server). At most ``size`` pins, the least recently used closed first;
    a pin that the server ended (``KILL``, a restart) is replaced at the next use. A database
    held open cannot be dropped or rebuilt in place (DROP DB, db:optimize ALL): see
    ``BaseXStore._without_pins``; ``held(db)`` keeps this process from pinning it meanwhile.
    """

    def __init__(self, connect: Callable[[], Session], size: int) -> None:
        self._connect = connect
        self._size = size
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._held: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def pin(self, db: str, gate: Callable[[], contextlib.AbstractContextManager]) -> bool:
        """Hold ``db`` open (best effort: False when it is missing, held or BaseX refuses)."""
        with self._lock:
            session = self._sessions.get(db)
            if session is not None and not session.peer_closed():
                self._sessions.move_to_end(db)
                return True
            if session is not None:
                del self._sessions[db]
                session.close()
            if self._held[db] or self._size <= 0:
                return False
            while len(self._sessions) >= self._size:
                self._sessions.popitem(last=False)[1].close()
            try:
                with gate():
                    session = self._connect()
                    try:
                        session.command(f"OPEN {db_name(db)}")
                    except BaseException:
                        session.close()
                        raise
            except (ServerError, WireError, StoreError) as error:
                log.info("xmlstore/basex: not holding %s open (%s)", db, str(error)[:200])
                return False
            self._sessions[db] = session
            return True

    def pinned(self) -> list[str]:
        with self._lock:
            return [db for db, session in self._sessions.items() if not session.peer_closed()]

    @contextlib.contextmanager
    def held(self, db: str) -> Iterator[None]:
        """Close this process's pin of ``db`` and pin it no more until the block ends."""
        with self._lock:
            self._held[db] += 1
            session = self._sessions.pop(db, None)
            if session is not None:
                session.close()
        try:
            yield
        finally:
            with self._lock:
                self._held[db] -= 1
                if not self._held[db]:
                    del self._held[db]

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()
