"""Embedded backend: SQLite (WAL, synchronous=FULL) holds the bytes, lxml evaluates XPath.

Writers serialize with ``BEGIN IMMEDIATE`` (SQLite's one write lock, shared by threads and
processes); the lock is held while ``fn`` runs, so a transaction's reads cannot go stale and no
optimistic conflict is possible: ``ConflictError`` comes only from a busy timeout (or from ``fn``),
and the transaction is then re-run. A delete leaves a tombstone row (``xml IS NULL``) so that
versions stay monotonic. A per-collection extracted index can later be a second table
``idx_<collection>(doc_id, key, value)`` written in the same SQLite transaction.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from gridcredit.errors import ConflictError, QueryError, StoreError, invariant

from ._api import (DEFAULT_LIMITS, Document, QueryPage, StoreLimits, Transaction, XmlStore, check_collection,
                   check_doc_id, check_query_args, normalize, run_with_retries)
from ._xpath import TreeCache, compile_xpath, matches

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    xml        BLOB,               -- NULL: deleted (tombstone keeps the version)
    PRIMARY KEY (collection, doc_id)
) WITHOUT ROWID;
"""


class _EmbeddedTransaction(Transaction):
    def __init__(self, store: "EmbeddedStore", connection: sqlite3.Connection) -> None:
        self._store = store
        self._connection = connection
        self._staged: dict[tuple[str, str], tuple[int, bytes | None]] = {}   # key -> (new version, xml|None)
        self._bytes = 0

    def _current(self, collection: str, doc_id: str) -> tuple[int, bytes | None]:
        key = (check_collection(collection), check_doc_id(doc_id))
        if key in self._staged:
            return self._staged[key]
        row = self._connection.execute("SELECT version, xml FROM documents WHERE collection=? AND doc_id=?",
                                       key).fetchone()
        return (row[0], row[1]) if row else (0, None)

    def _base_version(self, key: tuple[str, str]) -> int:
        row = self._connection.execute("SELECT version FROM documents WHERE collection=? AND doc_id=?",
                                       key).fetchone()
        return row[0] if row else 0

    def get(self, collection: str, doc_id: str) -> Document | None:
        version, xml = self._current(collection, doc_id)
        return None if xml is None else Document(collection, doc_id, bytes(xml), version)

    def _stage(self, key: tuple[str, str], xml: bytes | None) -> int:
        if key not in self._staged and len(self._staged) >= self._store.limits.transaction_writes_max:
            raise StoreError(f"a transaction writes at most {self._store.limits.transaction_writes_max} documents")
        self._bytes += len(xml or b"")
        if self._bytes > self._store.limits.transaction_bytes_max:
            raise StoreError(f"a transaction writes at most {self._store.limits.transaction_bytes_max} bytes")
        version = self._staged[key][0] if key in self._staged else self._base_version(key) + 1
        self._staged[key] = (version, xml)
        return version

    def put(self, collection: str, doc_id: str, xml: bytes) -> int:
        key = (check_collection(collection), check_doc_id(doc_id))
        return self._stage(key, normalize(xml, self._store.limits))

    def delete(self, collection: str, doc_id: str) -> bool:
        key = (check_collection(collection), check_doc_id(doc_id))
        existed = self._current(*key)[1] is not None
        if existed:
            self._stage(key, None)
        return existed

    def write(self) -> None:
        self._connection.executemany(
            "INSERT INTO documents (collection, doc_id, version, xml) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (collection, doc_id) DO UPDATE SET version=excluded.version, xml=excluded.xml",
            [(c, d, v, x) for (c, d), (v, x) in self._staged.items()])


class EmbeddedStore(XmlStore):
    def __init__(self, path: Path, *, timeout_s: float = 30.0, limits: StoreLimits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._trees = TreeCache()
        self._closed = False
        self._pid = os.getpid()
        # Writers queue on a kernel lock (woken at once) rather than in SQLite's busy handler,
        # which sleeps in steps of up to 100 ms and made concurrent writers slow and jittery.
        self._writer_thread_lock = threading.Lock()
        self._writer_lock_path = self.path.with_name(self.path.name + ".writelock")
        self._writer_lock_fd: int | None = None
        self._writer_lock_pid = 0
        connection = self._connection()
        connection.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _writer_lock(self):
        with self._writer_thread_lock:
            if self._writer_lock_fd is None or self._writer_lock_pid != os.getpid():
                self._writer_lock_fd = os.open(self._writer_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                self._writer_lock_pid = os.getpid()
            fcntl.flock(self._writer_lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._writer_lock_fd, fcntl.LOCK_UN)

    # -- connections: one per thread (and per process: a forked child opens its own) --
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("store is closed")
        if self._pid != os.getpid():   # forked: never touch the parent's connections
            self._pid, self._local, self._connections = os.getpid(), threading.local(), []
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute(f"PRAGMA busy_timeout={int(self._timeout_s * 1000)}")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        if self._writer_lock_fd is not None and self._writer_lock_pid == os.getpid():
            os.close(self._writer_lock_fd)
            self._writer_lock_fd = None

    # -- reads --
    def get(self, collection: str, doc_id: str) -> Document | None:
        key = (check_collection(collection), check_doc_id(doc_id))
        row = self._connection().execute(
            "SELECT version, xml FROM documents WHERE collection=? AND doc_id=? AND xml IS NOT NULL", key).fetchone()
        return Document(collection, doc_id, bytes(row[1]), row[0]) if row else None

    def collections(self) -> list[str]:
        rows = self._connection().execute(
            "SELECT DISTINCT collection FROM documents WHERE xml IS NOT NULL ORDER BY collection")
        return [row[0] for row in rows]

    def ids(self, collection: str, offset: int = 0, limit: int = 1000) -> list[str]:
        check_collection(collection)
        if offset < 0 or not 1 <= limit <= 100_000:
            raise StoreError("ids: offset >= 0 and 1 <= limit <= 100000")
        rows = self._connection().execute(
            "SELECT doc_id FROM documents WHERE collection=? AND xml IS NOT NULL ORDER BY doc_id LIMIT ? OFFSET ?",
            (collection, limit, offset))
        return [row[0] for row in rows]

    def scan(self, collection: str, *, after_id: str | None = None, limit: int = 1000) -> list[Document]:
        check_collection(collection)
        if not 1 <= limit <= self.limits.query_limit_max:
            raise QueryError(f"limit must be 1..{self.limits.query_limit_max}")
        rows = self._connection().execute(
            "SELECT doc_id, version, xml FROM documents WHERE collection=? AND doc_id > ? AND xml IS NOT NULL "
            "ORDER BY doc_id LIMIT ?", (collection, after_id or "", limit))
        return [Document(collection, doc_id, bytes(xml), version) for doc_id, version, xml in rows]

    def _scan(self, collection: str, xpath: str, variables: Mapping[str, str | int], namespaces: Mapping[str, str],
              time_limit_s: float, scan_limit: int | None, want: int):
        """Yield matching documents in doc_id order, at most ``want``."""
        compiled = compile_xpath(xpath, namespaces)
        scan_limit = self.limits.scan_limit_default if scan_limit is None else scan_limit
        connection = self._connection()
        connection.execute("BEGIN")   # one snapshot for count and scan
        rows = None
        try:
            total = connection.execute("SELECT count(*) FROM documents WHERE collection=? AND xml IS NOT NULL",
                                       (collection,)).fetchone()[0]
            if total > scan_limit:
                raise QueryError(f"collection {collection!r} holds {total} documents, more than the scan limit "
                                 f"{scan_limit}: narrow the collection or raise scan_limit")
            deadline = time.monotonic() + time_limit_s
            found = 0
            rows = connection.execute("SELECT doc_id, version, xml FROM documents WHERE collection=? "
                                      "AND xml IS NOT NULL ORDER BY doc_id", (collection,))
            for doc_id, version, xml in rows:
                if time.monotonic() > deadline:
                    raise QueryError(f"query exceeded its time limit of {time_limit_s} s")
                tree = self._trees.tree((collection, doc_id, version), xml, self.limits)
                if matches(compiled, tree, variables):
                    yield Document(collection, doc_id, bytes(xml), version)
                    found += 1
                    if found >= want:
                        return
        finally:
            # A cursor left open (a query cut off by its time limit) would pin this thread's
            # read snapshot and make every later write on the connection fail as "locked".
            if rows is not None:
                rows.close()
            connection.execute("COMMIT")

    def query(self, collection: str, xpath: str, variables: Mapping[str, str | int] = {}, *,
              namespaces: Mapping[str, str] = {}, offset: int = 0, limit: int = 100,
              time_limit_s: float = 5.0, scan_limit: int | None = None) -> QueryPage:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, offset, limit, time_limit_s, self.limits)
        found = list(self._scan(collection, xpath, variables, namespaces, time_limit_s, scan_limit,
                                offset + limit + 1))
        page = found[offset:offset + limit]
        return QueryPage(page, offset + limit if len(found) > offset + limit else None)

    def count(self, collection: str, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
              namespaces: Mapping[str, str] = {}, time_limit_s: float = 5.0,
              scan_limit: int | None = None) -> int:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, 0, 1, time_limit_s, self.limits)
        if xpath is None:
            return self._connection().execute(
                "SELECT count(*) FROM documents WHERE collection=? AND xml IS NOT NULL", (collection,)).fetchone()[0]
        return sum(1 for _ in self._scan(collection, xpath, variables, namespaces, time_limit_s, scan_limit,
                                         1 << 62))

    # -- writes --
    def transact(self, fn: Callable[[Transaction], T], *, retries: int | None = None) -> T:
        retries = self.limits.retries_default if retries is None else retries

        def attempt() -> T:
            with self._writer_lock():
                return locked_attempt()

        def locked_attempt() -> T:
            connection = self._connection()
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise ConflictError(f"store is busy: {error}") from None
            try:
                tx = _EmbeddedTransaction(self, connection)
                result = fn(tx)
                tx.write()
                connection.execute("COMMIT")
                return result
            except sqlite3.OperationalError as error:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                if "locked" in str(error) or "busy" in str(error):
                    raise ConflictError(f"store is busy: {error}") from None
                raise StoreError(f"embedded store failed: {error}") from None
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            finally:
                invariant(not connection.in_transaction, "transaction left open")

        return run_with_retries(attempt, retries)
