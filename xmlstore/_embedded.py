"""Embedded backend: SQLite (WAL, synchronous=FULL) holds the bytes, lxml evaluates XPath.

Writers serialize with ``BEGIN IMMEDIATE`` (SQLite's one write lock, shared by threads and
processes); the lock is held while ``fn`` runs, so a transaction's reads cannot go stale and no
optimistic conflict is possible: ``ConflictError`` comes only from a busy timeout (or from ``fn``),
and the transaction is then re-run. A delete leaves a tombstone row (``xml IS NULL``) so that
versions stay monotonic.

Attribute indexes: table ``attributes(collection, name, value, doc_id)`` (primary key in that
order: the index a ``where`` lookup reads) holds the declared root attributes of every live
document of a covered collection. It is written in the same SQLite transaction as the document, so
it is exactly as durable and consistent as the documents (a killed writer leaves neither). The
declarations live in ``attribute_indexes`` with a generation number in ``store_meta``; every write
transaction and every query reads that number (one row) and reloads the declarations when another
process changed them, so no writer maintains a stale set. A writable open that declares a new or
changed index rebuilds the rows of the collections it covers, in one transaction, under the
writer lock. ``read_only`` opens the file with SQLite's ``mode=ro`` and uses the stored
declarations only (SQLite still creates the empty ``-wal`` and the ``-shm`` WAL-index beside the
file when no other connection has them open: every WAL reader needs them; they hold no data).

XPath: checked by ``_xpath.check_xpath`` (XPath 1.0, core functions only), then a query or count
with an XPath runs in a sandbox process (``_sandbox``) that opens this file (and never writes) and
is killed when the query's time limit (plus 0.5 s) has passed: libxml2 cannot be stopped from a
thread. Queries without an XPath run in the caller's thread.

Lookups: with every ``where`` name indexed, one join over the ``attributes`` primary key (one
alias per name, ``value IN (...)`` for a tuple) drives the query in doc_id order and pages in SQL
(``lookup_plan`` shows SQLite's plan); an XPath or an unindexed name is then evaluated on the
documents the index found (at most ``scan_limit`` of them). Without an indexed name the collection
is scanned as for an XPath.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from gridcredit.errors import ConflictError, QueryError, StoreError, invariant

from ._api import (DEFAULT_LIMITS, DOC_ID_PATTERN, NOT_COVERED, AttributeIndex, Coverage, Document, QueryPage,
                   StoreLimits, Transaction, XmlStore, check_collection, check_doc_id, check_indexes, check_query_args,
                   check_where, coverage, normalized_for_put, parse_untrusted, root_attributes, run_with_retries,
                   where_matches)
from ._sandbox import pool as sandbox_pool
from ._xpath import TreeCache, check_xpath, compile_xpath, matches

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    xml        BLOB,               -- NULL: deleted (tombstone keeps the version)
    PRIMARY KEY (collection, doc_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attributes (
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    PRIMARY KEY (collection, name, value, doc_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attribute_indexes (
    collection_prefix TEXT PRIMARY KEY,
    attributes        TEXT NOT NULL,     -- names separated by spaces
    store_text        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

_PREFETCH_CHUNK = 500     # ids per SELECT of a prefetch (SQLite's bound on a statement's parameters)
_GENERATION = "SELECT value FROM store_meta WHERE key = 'indexes_generation'"


class _Declarations:
    """The declared indexes as this process last read them from the store (with their generation)."""

    def __init__(self) -> None:
        self.generation = -1
        self.indexes: dict[str, AttributeIndex] = {}
        self._coverage: dict[str, Coverage] = {}
        self.lock = threading.Lock()

    def refresh(self, connection: sqlite3.Connection) -> None:
        """Reload when the stored generation differs (call inside a transaction or snapshot)."""
        try:
            row = connection.execute(_GENERATION).fetchone()
        except sqlite3.OperationalError as error:   # a store file older than indexes (read-only open)
            if "no such table" in str(error):
                return
            raise
        generation = row[0] if row else 0
        with self.lock:
            if generation == self.generation:
                return
        rows = connection.execute("SELECT collection_prefix, attributes, store_text FROM attribute_indexes")
        indexes = {prefix: AttributeIndex(prefix, tuple(attributes.split()), bool(store_text))
                   for prefix, attributes, store_text in rows}
        with self.lock:
            self.indexes, self._coverage, self.generation = indexes, {}, generation

    def coverage(self, collection: str) -> Coverage:
        with self.lock:
            found = self._coverage.get(collection)
            if found is None:
                found = coverage(self.indexes, collection) if self.indexes else NOT_COVERED
                if len(self._coverage) > 100_000:
                    self._coverage.clear()
                self._coverage[collection] = found
            return found


class _EmbeddedTransaction(Transaction):
    def __init__(self, store: "EmbeddedStore", connection: sqlite3.Connection) -> None:
        self._store = store
        self._connection = connection
        self._staged: dict[tuple[str, str], tuple[int, bytes | None]] = {}   # key -> (new version, xml|None)
        self._attributes: dict[tuple[str, str], dict[str, str]] = {}         # key -> root attributes of a put
        # key -> the committed version this transaction read (0: no row): BEGIN IMMEDIATE holds the write lock,
        # so it stays so until the commit, and a put of a document read first needs no SELECT of its version
        self._committed: dict[tuple[str, str], int] = {}
        self._fetched: dict[tuple[str, str], tuple[int, bytes | None]] = {}   # prefetch: key -> (version, xml|None)
        self._bytes = 0

    def _current(self, collection: str, doc_id: str) -> tuple[int, bytes | None]:
        key = (check_collection(collection), check_doc_id(doc_id))
        if key in self._staged:
            return self._staged[key]
        if key in self._fetched:
            return self._fetched[key]
        row = self._connection.execute("SELECT version, xml FROM documents WHERE collection=? AND doc_id=?",
                                       key).fetchone()
        self._committed[key] = row[0] if row else 0
        read = self._fetched[key] = (row[0], row[1]) if row else (0, None)    # under the write lock: it stays so
        return read

    def _base_version(self, key: tuple[str, str]) -> int:
        version = self._committed.get(key)
        if version is None:
            row = self._connection.execute("SELECT version FROM documents WHERE collection=? AND doc_id=?",
                                           key).fetchone()
            version = self._committed[key] = row[0] if row else 0
        return version

    def get(self, collection: str, doc_id: str) -> Document | None:
        version, xml = self._current(collection, doc_id)
        return None if xml is None else Document(collection, doc_id, bytes(xml), version)

    def prefetch(self, collection: str, doc_ids: Iterable[str]) -> None:
        check_collection(collection)
        wanted = [doc_id for doc_id in dict.fromkeys(doc_ids)
                  if isinstance(doc_id, str) and DOC_ID_PATTERN.match(doc_id)
                  and (collection, doc_id) not in self._staged and (collection, doc_id) not in self._fetched]
        for start in range(0, len(wanted), _PREFETCH_CHUNK):
            chunk = wanted[start:start + _PREFETCH_CHUNK]
            found = {doc_id: (version, xml) for doc_id, version, xml in self._connection.execute(
                f"SELECT doc_id, version, xml FROM documents WHERE collection=? AND doc_id IN "
                f"({','.join('?' * len(chunk))})", (collection, *chunk))}
            for doc_id in chunk:
                version, xml = found.get(doc_id, (0, None))
                self._fetched[collection, doc_id] = (version, xml)
                self._committed[collection, doc_id] = version

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
        data, attributes = normalized_for_put(xml, self._store.limits)
        version = self._stage(key, data)
        self._attributes[key] = attributes
        return version

    def delete(self, collection: str, doc_id: str) -> bool:
        key = (check_collection(collection), check_doc_id(doc_id))
        existed = self._current(*key)[1] is not None
        if existed:
            self._stage(key, None)
            self._attributes.pop(key, None)
        return existed

    def write(self) -> None:
        declarations = self._store._declarations
        declarations.refresh(self._connection)    # under the write lock: current for sure
        removed, added = [], []
        for (collection, doc_id), (_version, xml) in self._staged.items():
            indexed = declarations.coverage(collection).attributes
            if not indexed:
                continue
            row = self._connection.execute("SELECT xml FROM documents WHERE collection=? AND doc_id=?",
                                           (collection, doc_id)).fetchone()
            if row is not None and row[0] is not None:
                old = root_attributes(parse_untrusted(bytes(row[0]), self._store.limits))
                removed += [(collection, name, value, doc_id) for name, value in old.items() if name in indexed]
            if xml is not None:
                added += [(collection, name, value, doc_id)
                          for name, value in self._attributes[(collection, doc_id)].items() if name in indexed]
        if removed:
            self._connection.executemany(
                "DELETE FROM attributes WHERE collection=? AND name=? AND value=? AND doc_id=?", removed)
        if added:
            self._connection.executemany(
                "INSERT INTO attributes (collection, name, value, doc_id) VALUES (?, ?, ?, ?)", added)
        self._connection.executemany(
            "INSERT INTO documents (collection, doc_id, version, xml) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (collection, doc_id) DO UPDATE SET version=excluded.version, xml=excluded.xml",
            [(c, d, v, x) for (c, d), (v, x) in self._staged.items()])


class EmbeddedStore(XmlStore):
    def __init__(self, path: Path, *, timeout_s: float = 30.0, limits: StoreLimits = DEFAULT_LIMITS,
                 indexes: Sequence[AttributeIndex] = (), read_only: bool = False, sandboxed: bool = False) -> None:
        self.path = Path(path)
        self.read_only = bool(read_only)
        # False: XPath queries run in a sandbox process (see _sandbox); True: this IS that process
        self._sandboxed = bool(sandboxed)
        declared = check_indexes(indexes, limits)
        if self.read_only:
            if not self.path.exists():
                raise StoreError(f"no store at {self.path} to open read-only")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._trees = TreeCache()
        self._declarations = _Declarations()
        self._closed = False
        self._pid = os.getpid()
        # Writers queue on a kernel lock (woken at once) rather than in SQLite's busy handler,
        # which sleeps in steps of up to 100 ms and made concurrent writers slow and jittery.
        self._writer_thread_lock = threading.Lock()
        self._writer_lock_path = self.path.with_name(self.path.name + ".writelock")
        self._writer_lock_fd: int | None = None
        self._writer_lock_pid = 0
        connection = self._connection()
        if not self.read_only:
            connection.executescript(_SCHEMA)
            if declared:
                self._declare(declared)
        self._declarations.refresh(connection)

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
            try:
                if self.read_only:
                    connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                                 timeout=self._timeout_s, isolation_level=None,
                                                 check_same_thread=False)
                else:
                    connection = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None,
                                                 check_same_thread=False)
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute("PRAGMA synchronous=FULL")
                connection.execute(f"PRAGMA busy_timeout={int(self._timeout_s * 1000)}")
            except sqlite3.Error as error:
                raise StoreError(f"cannot open the embedded store {self.path}: {error}") from None
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

    # -- attribute indexes --
    @property
    def indexes(self) -> tuple[AttributeIndex, ...]:
        self._declarations.refresh(self._connection())
        return tuple(self._declarations.indexes[p] for p in sorted(self._declarations.indexes))

    def _declare(self, declared: dict[str, AttributeIndex]) -> None:
        """Remember new or changed declarations and (re)build the rows of the collections they
        cover, in one transaction under the writer lock."""
        with self._writer_lock():
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._declarations.refresh(connection)
                stored = dict(self._declarations.indexes)
                changed = {p: i for p, i in declared.items() if stored.get(p) != i}
                if not changed:
                    connection.execute("COMMIT")
                    return
                connection.executemany(
                    "INSERT INTO attribute_indexes (collection_prefix, attributes, store_text) VALUES (?, ?, ?) "
                    "ON CONFLICT (collection_prefix) DO UPDATE SET attributes=excluded.attributes, "
                    "store_text=excluded.store_text",
                    [(p, " ".join(i.attributes), int(i.store_text)) for p, i in changed.items()])
                stored.update(changed)
                if len(stored) > self.limits.indexes_max:
                    raise StoreError(f"more than {self.limits.indexes_max} attribute indexes")
                names = [row[0] for row in connection.execute("SELECT DISTINCT collection FROM documents")]
                for collection in names:
                    if any(collection.startswith(p) for p in changed):
                        self._rebuild_rows(connection, collection, coverage(stored, collection).attributes)
                connection.execute(
                    "INSERT INTO store_meta (key, value) VALUES ('indexes_generation', 1) "
                    "ON CONFLICT (key) DO UPDATE SET value = value + 1")
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        self._declarations.refresh(self._connection())

    def _rebuild_rows(self, connection: sqlite3.Connection, collection: str, indexed: frozenset[str]) -> None:
        connection.execute("DELETE FROM attributes WHERE collection=?", (collection,))
        after = ""
        while True:   # in pages: a collection's documents are never all in memory
            rows = connection.execute(
                "SELECT doc_id, xml FROM documents WHERE collection=? AND doc_id > ? AND xml IS NOT NULL "
                "ORDER BY doc_id LIMIT 1000", (collection, after)).fetchall()
            if not rows:
                return
            added = []
            for doc_id, xml in rows:
                attributes = root_attributes(parse_untrusted(bytes(xml), self.limits))
                added += [(collection, name, value, doc_id) for name, value in attributes.items() if name in indexed]
            connection.executemany("INSERT INTO attributes (collection, name, value, doc_id) VALUES (?, ?, ?, ?)",
                                   added)
            after = rows[-1][0]

    def check_indexes(self) -> dict[str, list[str]]:
        """Compare every covered collection's index rows with its documents: collection -> ids whose
        rows differ (empty lists: consistent). For tests and operators."""
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            self._declarations.refresh(connection)
            report: dict[str, list[str]] = {}
            names = [row[0] for row in connection.execute("SELECT DISTINCT collection FROM documents")]
            names += [row[0] for row in connection.execute("SELECT DISTINCT collection FROM attributes")]
            for collection in sorted(set(names)):
                indexed = self._declarations.coverage(collection).attributes
                expected: dict[str, set] = {}
                for doc_id, xml in connection.execute(
                        "SELECT doc_id, xml FROM documents WHERE collection=? AND xml IS NOT NULL", (collection,)):
                    attributes = root_attributes(parse_untrusted(bytes(xml), self.limits))
                    rows = {(n, v) for n, v in attributes.items() if n in indexed}
                    if rows:
                        expected[doc_id] = rows
                found: dict[str, set] = {}
                for name, value, doc_id in connection.execute(
                        "SELECT name, value, doc_id FROM attributes WHERE collection=?", (collection,)):
                    found.setdefault(doc_id, set()).add((name, value))
                report[collection] = sorted(d for d in set(expected) | set(found) if expected.get(d) != found.get(d))
            return report
        finally:
            connection.execute("COMMIT")

    # -- reads --
    def get(self, collection: str, doc_id: str) -> Document | None:
        key = (check_collection(collection), check_doc_id(doc_id))
        row = self._connection().execute(
            "SELECT version, xml FROM documents WHERE collection=? AND doc_id=? AND xml IS NOT NULL", key).fetchone()
        return Document(collection, doc_id, bytes(row[1]), row[0]) if row else None

    def collections(self) -> list[str]:
        # One primary-key seek per collection, not a scan of every document (a DISTINCT over the
        # table reads every row: seconds at a million documents).
        connection, names, after = self._connection(), [], ""
        while True:
            row = connection.execute("SELECT collection FROM documents WHERE collection > ? ORDER BY collection LIMIT 1",
                                     (after,)).fetchone()
            if row is None:
                return names
            after = row[0]
            if connection.execute("SELECT 1 FROM documents WHERE collection = ? AND xml IS NOT NULL LIMIT 1",
                                  (after,)).fetchone():
                names.append(after)

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

    def scan_local(self, collection: str, *, after_id: str | None = None, limit: int = 1000) -> list[Document]:
        """``scan``: the SQLite file is this store's own record (no query server to wait for)."""
        return self.scan(collection, after_id=after_id, limit=limit)

    @staticmethod
    def _lookup_sql(indexed: list[tuple[str, tuple[str, ...]]]) -> tuple[str, list]:
        """Live documents of collection ``?`` whose indexed attributes match: a join over the
        ``attributes`` primary key, one alias per name, in doc_id order."""
        joins, conditions, parameters = [], [], []
        for number, (name, values) in enumerate(indexed):
            alias = f"a{number}"
            marks = ", ".join("?" * len(values))
            if number:
                joins.append(f"JOIN attributes {alias} ON {alias}.collection = a0.collection "
                             f"AND {alias}.name = ? AND {alias}.value IN ({marks}) AND {alias}.doc_id = a0.doc_id")
                parameters += [name, *values]
        first_name, first_values = indexed[0]
        conditions.append(f"a0.collection = ? AND a0.name = ? AND a0.value IN ({', '.join('?' * len(first_values))})")
        sql = ("FROM attributes a0 " + " ".join(joins) +
               " JOIN documents d ON d.collection = a0.collection AND d.doc_id = a0.doc_id"
               " WHERE " + " AND ".join(conditions) + " AND d.xml IS NOT NULL")
        return sql, parameters + ["<collection>", first_name, *first_values]

    def lookup_plan(self, collection: str, where: Mapping[str, str | tuple[str, ...]]) -> list[str]:
        """SQLite's plan for an indexed ``where`` lookup (tests show it searches the index)."""
        checked = check_where(where, self.limits)
        sql, parameters = self._lookup_sql(sorted(checked.items()))
        parameters = [collection if p == "<collection>" else p for p in parameters]
        rows = self._connection().execute("EXPLAIN QUERY PLAN SELECT d.doc_id, d.version, d.xml " + sql +
                                          " ORDER BY a0.doc_id", parameters)
        return [row[-1] for row in rows]

    def _matching(self, collection: str, xpath: str | None, variables: Mapping[str, str | int],
                  where: dict[str, tuple[str, ...]], namespaces: Mapping[str, str], time_limit_s: float,
                  scan_limit: int | None, skip: int, want: int):
        """Yield matching documents in doc_id order after skipping ``skip`` of them, at most ``want``."""
        compiled = (compile_xpath(check_xpath(xpath, namespaces, variables, self.limits), namespaces)
                    if xpath is not None else None)
        scan_limit = self.limits.scan_limit_default if scan_limit is None else scan_limit
        if any(not values for values in where.values()):
            return                                  # an empty tuple matches nothing
        connection = self._connection()
        connection.execute("BEGIN")   # one snapshot for the checks and the scan
        rows = None
        try:
            self._declarations.refresh(connection)
            covered = self._declarations.coverage(collection).attributes
            indexed = sorted((n, v) for n, v in where.items() if n in covered)
            rest = {n: v for n, v in where.items() if n not in covered}
            if indexed:
                sql, parameters = self._lookup_sql(indexed)
                parameters = [collection if p == "<collection>" else p for p in parameters]
                if compiled is None and not rest:     # the index alone answers: page in SQL
                    rows = connection.execute(f"SELECT d.doc_id, d.version, d.xml {sql} ORDER BY a0.doc_id "
                                              f"LIMIT ? OFFSET ?", parameters + [want, skip])
                    for doc_id, version, xml in rows:
                        yield Document(collection, doc_id, bytes(xml), version)
                    return
                total = connection.execute(f"SELECT count(*) {sql}", parameters).fetchone()[0]
                if total > scan_limit:
                    raise QueryError(f"the index finds {total} documents in {collection!r} to examine, more than "
                                     f"the scan limit {scan_limit}: narrow the where or raise scan_limit")
                rows = connection.execute(f"SELECT d.doc_id, d.version, d.xml {sql} ORDER BY a0.doc_id", parameters)
            elif compiled is None and not rest:       # no condition at all: every document
                rows = connection.execute("SELECT doc_id, version, xml FROM documents WHERE collection=? "
                                          "AND xml IS NOT NULL ORDER BY doc_id LIMIT ? OFFSET ?",
                                          (collection, want, skip))
                for doc_id, version, xml in rows:
                    yield Document(collection, doc_id, bytes(xml), version)
                return
            else:
                total = connection.execute("SELECT count(*) FROM documents WHERE collection=? AND xml IS NOT NULL",
                                           (collection,)).fetchone()[0]
                if total > scan_limit:
                    raise QueryError(f"collection {collection!r} holds {total} documents, more than the scan limit "
                                     f"{scan_limit}: narrow the collection or raise scan_limit")
                rows = connection.execute("SELECT doc_id, version, xml FROM documents WHERE collection=? "
                                          "AND xml IS NOT NULL ORDER BY doc_id", (collection,))
            deadline = time.monotonic() + time_limit_s
            found = 0
            for doc_id, version, xml in rows:
                if time.monotonic() > deadline:
                    raise QueryError(f"query exceeded its time limit of {time_limit_s} s")
                tree = self._trees.tree((collection, doc_id, version), xml, self.limits)
                if rest and not where_matches(root_attributes(tree.getroot()), rest):
                    continue
                if compiled is not None and not matches(compiled, tree, variables):
                    continue
                if skip:
                    skip -= 1
                    continue
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

    def query(self, collection: str, xpath: str | None, variables: Mapping[str, str | int] = {}, *,
              where: Mapping[str, str | tuple[str, ...]] = {}, namespaces: Mapping[str, str] = {},
              offset: int = 0, limit: int = 100, time_limit_s: float = 5.0,
              scan_limit: int | None = None) -> QueryPage:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, offset, limit, time_limit_s, self.limits)
        checked = check_where(where, self.limits)
        if xpath is not None and not self._sandboxed:
            return self._in_sandbox("query", collection=collection, xpath=xpath, variables=variables,
                                    where=where, namespaces=namespaces, offset=offset, limit=limit,
                                    time_limit_s=time_limit_s, scan_limit=scan_limit)
        found = list(self._matching(collection, xpath, variables, checked, namespaces, time_limit_s, scan_limit,
                                    offset, limit + 1))
        return QueryPage(found[:limit], offset + limit if len(found) > limit else None)

    def count(self, collection: str, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
              where: Mapping[str, str | tuple[str, ...]] = {}, namespaces: Mapping[str, str] = {},
              time_limit_s: float = 5.0, scan_limit: int | None = None) -> int:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, 0, 1, time_limit_s, self.limits)
        checked = check_where(where, self.limits)
        if xpath is not None and not self._sandboxed:
            return self._in_sandbox("count", collection=collection, xpath=xpath, variables=variables,
                                    where=where, namespaces=namespaces, time_limit_s=time_limit_s,
                                    scan_limit=scan_limit)
        if xpath is None and not checked:
            return self._connection().execute(
                "SELECT count(*) FROM documents WHERE collection=? AND xml IS NOT NULL", (collection,)).fetchone()[0]
        if xpath is None and all(checked.values()):
            connection = self._connection()
            connection.execute("BEGIN")
            try:
                self._declarations.refresh(connection)
                covered = self._declarations.coverage(collection).attributes
                if all(name in covered for name in checked):
                    sql, parameters = self._lookup_sql(sorted(checked.items()))
                    parameters = [collection if p == "<collection>" else p for p in parameters]
                    return connection.execute(f"SELECT count(*) {sql}", parameters).fetchone()[0]
            finally:
                connection.execute("COMMIT")
        return sum(1 for _ in self._matching(collection, xpath, variables, checked, namespaces, time_limit_s,
                                             scan_limit, 0, 1 << 62))

    def _in_sandbox(self, operation: str, **args):
        """Run a query or count with an XPath in a sandbox process, killed past the time limit
        (see _sandbox). The expression is checked here first: a refusal costs no process."""
        if self._closed:
            raise StoreError("store is closed")
        check_xpath(args["xpath"], args["namespaces"], args["variables"], self.limits)
        args = {**args, "variables": dict(args["variables"]), "namespaces": dict(args["namespaces"]),
                "where": {name: value if isinstance(value, str) else tuple(value)
                          for name, value in args["where"].items()}}
        answer = sandbox_pool().run((operation, str(self.path.resolve()), self.limits, self.read_only, args),
                                    time_limit_s=args["time_limit_s"], size=self.limits.xpath_sandboxes)
        if operation == "count":
            return answer
        found, next_offset = answer
        return QueryPage([Document(args["collection"], doc_id, xml, version) for doc_id, version, xml in found],
                         next_offset)

    # -- writes --
    def transact(self, fn: Callable[[Transaction], T], *, retries: int | None = None) -> T:
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only: no transactions")
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
