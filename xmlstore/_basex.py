"""BaseX backend: one database per collection, our own fsynced journal as the record.

BaseX updates its files in place with no journal, so a kill -9 can leave a database behind or
unreadable. Every transaction therefore runs under the journal's cross-process lock:

1. catch up: read frames other processes appended; if one of them was not applied to BaseX (its
   writer died between fsync and apply) or a BaseX error was seen, verify and repair;
2. run ``fn``; its reads come from the journal state (current under the lock);
3. append the writes (full documents + versions + sequence number) to the journal and fsync —
   from here the transaction is committed;
4. apply them to BaseX in ONE updating query that also records the sequence number in each
   database it touches (``.seq``) and the versions (``.v/<doc_id>``).

If step 4 fails the transaction stays committed (``transact`` returns) and the store is marked
suspect: the next operation verifies BaseX against the journal and repairs it first.

On open, every database is verified: readable (every document read in full), and its live
documents and versions equal the journal's; a lagging or half-applied database gets the missing
writes re-applied, an unreadable or inconsistent one is dropped and rebuilt from the journal.
``check()`` compares content hashes too; ``rebuild()`` rebuilds on demand.

Reads outside transactions go to BaseX. XPath runs inside ``xquery:eval`` with permission
``none`` (no file, db, fetch or proc functions) and a timeout; variables are bound, never
formatted into query text (only validated names, prefixes and integers are).

Each process keeps the journal state (every document) in memory: fine for now; the TODO is a
checkpoint (snapshot + new journal) to bound both memory and the replay at open.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar
import contextlib

from lxml import etree

from gridcredit.errors import ConflictError, QueryError, StoreError, invariant

from ._api import (DEFAULT_LIMITS, Document, QueryPage, StoreLimits, Transaction, XmlStore, check_collection,
                   check_doc_id, check_query_args, normalize, run_with_retries)
from ._basex_wire import ServerError, Session, WireError
from ._journal import Journal

T = TypeVar("T")
log = logging.getLogger(__name__)

_RESULT_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True,
                                 remove_blank_text=False)

Q_GET = """declare variable $db external; declare variable $id external;
if (db:exists($db) and db:exists($db, $id))
then <r v="{db:open($db, '.v/' || $id)/v/@n}">{db:open($db, $id)}</r> else <none/>"""

Q_DOCS = """declare variable $db external; declare variable $ids external;
<r>{for $id in tokenize($ids, ' ') where db:exists($db, $id)
    return <d id="{$id}" v="{db:open($db, '.v/' || $id)/v/@n}">{db:open($db, $id)}</d>}</r>"""

Q_IDS = """declare variable $db external; declare variable $offset external; declare variable $limit external;
if (db:exists($db)) then string-join(subsequence(sort(db:list($db)[not(starts-with(., '.'))]),
  xs:integer($offset) + 1, xs:integer($limit)), ' ') else ''"""

Q_COUNT_ALL = """declare variable $db external;
if (db:exists($db)) then count(db:list($db)[not(starts-with(., '.'))]) else 0"""

Q_COLLECTIONS = """declare variable $prefix external;
string-join(for $n in sort(db:list()[starts-with(., $prefix)])
            where exists(db:list($n)[not(starts-with(., '.'))]) return $n, ' ')"""

Q_DATABASES = """declare variable $prefix external; string-join(sort(db:list()[starts-with(., $prefix)]), ' ')"""

Q_ENSURE = """declare variable $names external;
for $n in tokenize($names, ' ') where not(db:exists($n))
return db:create($n, (), (), map{'chop': false(), 'updindex': true(), 'autooptimize': false()})"""

Q_SEQS = """declare variable $names external;
string-join(for $n in tokenize($names, ' ')
  return if (db:exists($n)) then (db:open($n, '.seq')/seq/@n/string(), '0')[1] else '0', ' ')"""

Q_APPLY = """declare variable $ops external;
let $o := parse-xml($ops)/ops
return (
  for $op in $o/op
  let $db := string($op/@db), $id := string($op/@id)
  return if ($op/@del = '1') then (
    if (db:exists($db, $id)) then db:delete($db, $id) else (),
    db:replace($db, '.v/' || $id, <v n="{$op/@v}" del="1"/>))
  else (
    db:replace($db, $id, $op/*[1]),
    db:replace($db, '.v/' || $id, <v n="{$op/@v}"/>)),
  for $db in distinct-values($o/op/@db) return db:replace($db, '.seq', <seq n="{$o/@seq}"/>)
)"""

# readable = every live document read in full; versions as "id version l|d" triples
Q_STATUS = """declare variable $db external;
if (not(db:exists($db))) then 'missing' else
try {
  let $seq := (db:open($db, '.seq')/seq/@n/string(), '0')[1]
  let $live := db:list($db)[not(starts-with(., '.'))]
  let $chars := sum(for $p in $live return string-length(serialize(db:open($db, $p))))
  let $versions := for $v in db:open($db, '.v')
                   return substring(db:path($v), 4) || ' ' || $v/v/@n || ' ' || (if ($v/v/@del) then 'd' else 'l')
  return string-join(('ok ' || $seq || ' ' || $chars, string-join($live, ' '), $versions), '&#10;')
} catch * { 'damaged ' || $err:code || ' ' || $err:description }"""

Q_QUERY = """declare variable $db external; declare variable $expr external; declare variable $scan external;
declare variable $timeout external; {declarations}
let $vars := map:merge(({entries}))
let $paths := if (db:exists($db)) then sort(db:list($db)[not(starts-with(., '.'))]) else ()
return if (count($paths) > xs:integer($scan))
then error(xs:QName('err:FOER0000'), 'gridcredit-scan-limit ' || count($paths))
else
  let $docs := for $p in $paths return db:open($db, $p)/*
  let $hits := xquery:eval($expr, map:merge(($vars, map{{'_docs': $docs}})),
                           map{{'permission': 'none', 'timeout': xs:integer($timeout)}})
  return {result}"""

R_PAGE = """<r>{for $h in $hits let $id := db:path($h)
  return <d id="{$id}" v="{db:open($db, '.v/' || $id)/v/@n}">{$h}</d>}</r>"""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sha(xml: bytes) -> str:
    return hashlib.sha256(xml).hexdigest()


class _Pool:
    """At most ``size`` sessions; one thread uses a session at a time; broken sessions are dropped."""

    def __init__(self, connect: Callable[[], Session], size: int, wait_s: float,
                 on_close: Callable[[Session], None] | None = None) -> None:
        self._connect = connect
        self._on_close = on_close
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
                broken = session.broken
                if broken:
                    self._open -= 1
                    self.broken_seen += 1
                    session.close()
                else:
                    self._idle.append(session)
                self._condition.notify()
            if broken and self._on_close is not None:
                self._on_close(session)

    def close(self) -> None:
        with self._condition:
            closing = list(self._idle)
            for session in closing:
                session.close()
            self._open -= len(closing)
            self._idle.clear()
        if self._on_close is not None:
            for session in closing:
                self._on_close(session)


class _BaseXTransaction(Transaction):
    def __init__(self, store: "BaseXStore") -> None:
        self._store = store
        self.staged: dict[tuple[str, str], tuple[int, bytes | None]] = {}
        self._bytes = 0

    def _current(self, key: tuple[str, str]) -> tuple[int, bytes | None]:
        if key in self.staged:
            return self.staged[key]
        version, xml = self._store._state.get(key[0], {}).get(key[1], (0, None))
        return version, (None if xml is None else xml.encode())

    def get(self, collection: str, doc_id: str) -> Document | None:
        key = (check_collection(collection), check_doc_id(doc_id))
        version, xml = self._current(key)
        return None if xml is None else Document(collection, doc_id, xml, version)

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
        return self._stage(key, normalize(xml, self._store.limits))

    def delete(self, collection: str, doc_id: str) -> bool:
        key = (check_collection(collection), check_doc_id(doc_id))
        existed = self._current(key)[1] is not None
        if existed:
            self._stage(key, None)
        return existed


class BaseXStore(XmlStore):
    def __init__(self, journal_dir: Path, *, host: str = "127.0.0.1", port: int = 1984, user: str = "admin",
                 password: str = "admin", timeout_s: float = 30.0, limits: StoreLimits = DEFAULT_LIMITS,
                 db_prefix: str = "gc_") -> None:
        invariant(bool(db_prefix) and db_prefix.replace("_", "").isalnum(), "db_prefix is alphanumeric")
        self.limits = limits
        self.db_prefix = db_prefix
        self._timeout_s = float(timeout_s)
        self._address = (host, port, user, password)
        self._pool = _Pool(self._connect, limits.pool_size, wait_s=self._timeout_s)
        # Sessions that evaluate callers' XPath, each logged in as a BaseX user of its own (see
        # _connect_query_user): xquery:eval's 'permission' option lowers the permission of the
        # *user*, for every session of that user, while it runs (BaseX 9.7) — so sandboxed queries
        # on the shared admin user made other sessions' reads fail at random.
        self._query_pool = _Pool(self._connect_query_user, limits.pool_size, wait_s=self._timeout_s,
                                 on_close=self._drop_query_user)
        self._query_users = itertools.count(1)
        self._journal = Journal(journal_dir)
        # collection -> doc_id -> (version, xml text or None for a tombstone): the journal's state
        self._state: dict[str, dict[str, tuple[int, str | None]]] = {}
        self._suspect = False
        self._broken_checked = 0
        self._known_databases: set[str] = set()   # databases this process created or saw (skip db:create)
        self.recovery_log: list[str] = []    # what open/repair did, for operators and tests
        with self._journal.lock():
            self._read_journal()
            self._verify_and_repair(list(self._state), check_unknown=True)
        self._drop_stale_query_users()

    # -- sessions --
    def _connect(self) -> Session:
        host, port, user, password = self._address
        session = Session(host, port, user, password, timeout_s=self._timeout_s)
        try:
            session.command("SET CHOP false")
            session.command("SET SERIALIZER indent=no")
        except (ServerError, WireError):
            session.close()
            raise
        return session

    def _connect_query_user(self) -> Session:
        host, port, _user, _password = self._address
        name = f"{self.db_prefix}q{os.getpid()}n{next(self._query_users)}"
        password = secrets.token_hex(16)
        with self._pool.session() as admin:
            admin.command(f"CREATE USER {name} {password}")
            admin.command(f"GRANT admin TO {name}")  # xquery:eval's permission option needs admin
        session = Session(host, port, name, password, timeout_s=self._timeout_s)
        session.query_user = name
        try:
            session.command("SET CHOP false")
            session.command("SET SERIALIZER indent=no")
        except (ServerError, WireError):
            session.close()
            self._drop_query_user(session)
            raise
        return session

    def _drop_query_user(self, session: Session) -> None:
        name = getattr(session, "query_user", None)
        if name is None:
            return
        try:
            with self._pool.session() as admin:
                admin.command(f"DROP USER {name}")
        except (StoreError, ServerError, WireError):
            pass  # BaseX down, or the user still logged in: dropped at the next open (stale pid)

    def _drop_stale_query_users(self) -> None:
        """Query users of processes that no longer run (killed before they could drop them)."""
        pattern = re.compile(rf"{re.escape(self.db_prefix)}q(\d+)n\d+")
        for name in self._run("string-join(user:list(), ' ')").split():
            match = pattern.fullmatch(name)
            if match is None or int(match.group(1)) == os.getpid() or _process_alive(int(match.group(1))):
                continue
            try:
                self._run_command(f"DROP USER {name}")
            except (StoreError, ServerError):
                pass

    def _run_command(self, command: str) -> str:
        try:
            with self._pool.session() as session:
                return session.command(command)
        except WireError as error:
            self._suspect = True
            raise StoreError(f"BaseX unavailable: {error}") from None

    def _run(self, text: str, bindings: dict[str, tuple[str, str]] | None = None, *,
             timeout_s: float | None = None, pool: "_Pool | None" = None) -> str:
        try:
            with (pool or self._pool).session() as session:
                if timeout_s is not None:
                    session.settimeout(timeout_s)
                try:
                    return session.query(text, bindings)
                finally:
                    if timeout_s is not None and not session.broken:
                        session.settimeout(self._timeout_s)
        except WireError as error:
            self._suspect = True
            raise StoreError(f"BaseX unavailable: {error}") from None

    def _db(self, collection: str) -> str:
        return self.db_prefix + check_collection(collection)

    # -- journal state --
    def _read_journal(self) -> list[tuple[int, list]]:
        entries = self._journal.read_new(repair=True)
        for _seq, writes in entries:
            for collection, doc_id, version, xml in writes:
                self._state.setdefault(collection, {})[doc_id] = (version, xml)
        return entries

    # -- verification and repair (journal lock held) --
    def _status(self, collection: str) -> tuple[str, int, set[str], dict[str, tuple[int, bool]]]:
        try:
            text = self._run(Q_STATUS, {"$db": (self._db(collection), "")})
        except ServerError as error:   # damage shows as errors XQuery cannot catch, e.g. "Java heap space"
            text = f"damaged {error}"
        if text == "missing":
            return "missing", 0, set(), {}
        if not text.startswith("ok "):
            return text, 0, set(), {}
        lines = text.split("\n")
        seq = int(lines[0].split()[1])
        live = set(lines[1].split()) if len(lines) > 1 else set()
        versions = {}
        for line in lines[2:]:
            doc_id, version, flag = line.split()
            versions[doc_id] = (int(version), flag == "l")
        return "ok", seq, live, versions

    def _verify_and_repair(self, collections: list[str], *, check_unknown: bool = False) -> None:
        self._known_databases.clear()
        if check_unknown:
            names = self._run(Q_DATABASES, {"$prefix": (self.db_prefix, "")}).split()
            unknown = [n for n in names if n[len(self.db_prefix):] not in self._state]
            if unknown:
                raise StoreError(f"BaseX holds database(s) {', '.join(unknown)} that our journal "
                                 f"{self._journal.path} does not know: wrong journal or wrong server?")
        for collection in collections:
            expected = self._state.get(collection, {})
            status, _seq, live, versions = self._status(collection)
            if status == "missing" and not expected:
                continue
            want_versions = {d: (v, x is not None) for d, (v, x) in expected.items()}
            want_live = {d for d, (_v, x) in expected.items() if x is not None}
            if status not in ("ok", "missing"):
                self._note(f"{collection}: unreadable ({status[:200]}); rebuilding from the journal")
                self.rebuild(collection, _locked=True)
                continue
            if live == want_live and versions == want_versions:
                continue
            if (live - want_live) or any(d not in want_versions for d in versions) or any(
                    versions[d][0] > want_versions[d][0] for d in versions):
                self._note(f"{collection}: BaseX holds writes the journal does not; rebuilding")
                self.rebuild(collection, _locked=True)
                continue
            behind = sorted(d for d in want_versions if versions.get(d) != want_versions[d] or
                            (d in want_live) != (d in live))
            self._note(f"{collection}: {len(behind)} document(s) behind the journal; re-applying")
            self._apply_state(collection, behind)
            status, _seq, live, versions = self._status(collection)
            if status != "ok" or live != want_live or versions != want_versions:
                self._note(f"{collection}: still inconsistent after re-applying; rebuilding")
                self.rebuild(collection, _locked=True)

    def _note(self, message: str) -> None:
        log.warning("xmlstore/basex: %s", message)
        self.recovery_log.append(message)

    def _apply_state(self, collection: str, doc_ids: list[str], batch: int = 1000) -> None:
        expected = self._state.get(collection, {})
        for start in range(0, len(doc_ids), batch):
            writes = [(collection, d, expected[d][0], expected[d][1]) for d in doc_ids[start:start + batch]]
            self._apply(self._journal.last_seq, writes)

    def _apply(self, seq: int, writes: list) -> None:
        names = sorted({self._db(w[0]) for w in writes} - self._known_databases)
        if names:
            self._run(Q_ENSURE, {"$names": (" ".join(names), "")})
            self._known_databases.update(names)
        parts = [f'<ops seq="{seq}">']
        for collection, doc_id, version, xml in writes:
            db = self._db(collection)
            if xml is None:
                parts.append(f'<op db="{db}" id="{doc_id}" v="{version}" del="1"/>')
            else:
                parts.append(f'<op db="{db}" id="{doc_id}" v="{version}">{xml}</op>')
        parts.append("</ops>")
        self._run(Q_APPLY, {"$ops": ("".join(parts), "")})

    def _catch_up(self) -> None:
        entries = self._read_journal()
        if self._suspect or self._pool.broken_seen != self._broken_checked:
            self._broken_checked = self._pool.broken_seen
            self._suspect = False
            try:
                self._verify_and_repair(list(self._state))
            except BaseException:
                self._suspect = True
                raise
            return
        if not entries:
            return
        touched: dict[str, int] = {}
        for seq, writes in entries:
            for w in writes:
                touched[w[0]] = seq
        names = sorted(touched)
        seqs = self._run(Q_SEQS, {"$names": (" ".join(self._db(c) for c in names), "")}).split()
        behind = [c for c, s in zip(names, seqs) if int(s) < touched[c]]
        if behind:
            self._note(f"writes of another process not applied to {', '.join(behind)}; repairing")
            self._verify_and_repair(behind)

    def _ensure_current(self) -> None:
        if self._suspect or self._pool.broken_seen != self._broken_checked:
            with self._journal.lock():
                self._catch_up()

    # -- public maintenance --
    def check(self) -> dict[str, dict]:
        """Compare BaseX with the journal: counts, versions and content hashes of every document."""
        report: dict[str, dict] = {}
        with self._journal.lock():
            self._read_journal()
            for collection in sorted(self._state):
                expected = {d: (v, x) for d, (v, x) in self._state[collection].items() if x is not None}
                status, _seq, live, _versions = self._status(collection)
                entry: dict = {"expected": len(expected), "found": len(live), "status": status[:200],
                               "missing": sorted(set(expected) - live), "extra": sorted(live - set(expected)),
                               "different": []}
                ids = sorted(live & set(expected))
                for start in range(0, len(ids), 500):
                    for doc in self._fetch(collection, ids[start:start + 500]):
                        version, xml = expected[doc.doc_id]
                        if doc.version != version or _sha(doc.xml) != _sha(xml.encode()):
                            entry["different"].append(doc.doc_id)
                entry["ok"] = status in ("ok", "missing") and not (entry["missing"] or entry["extra"] or
                                                                   entry["different"])
                report[collection] = entry
        return report

    def rebuild(self, collection: str | None = None, *, _locked: bool = False) -> None:
        """Drop the collection's database (or all) and load it again from the journal."""
        if not _locked:
            with self._journal.lock():
                self._read_journal()
                return self.rebuild(collection, _locked=True)
        for name in ([collection] if collection else sorted(self._state)):
            db = self._db(name)
            self._known_databases.discard(db)
            try:
                with self._pool.session() as session:
                    session.command(f"DROP DB {db}")   # db is a validated name
            except ServerError as error:
                raise StoreError(f"cannot drop damaged database {db}: {error}; remove its folder by hand "
                                 f"and reopen") from None
            except WireError as error:
                self._suspect = True
                raise StoreError(f"BaseX unavailable: {error}") from None
            self._apply_state(name, sorted(self._state.get(name, {})))
            self._note(f"{name}: rebuilt from the journal ({len(self._state.get(name, {}))} documents)")

    # -- reads --
    def _parse_result(self, text: str) -> etree._Element:
        return etree.fromstring(text.encode(), parser=_RESULT_PARSER)

    def _fetch(self, collection: str, ids: list[str]) -> list[Document]:
        root = self._parse_result(self._run(Q_DOCS, {"$db": (self._db(collection), ""),
                                                     "$ids": (" ".join(ids), "")}))
        return [self._document(collection, d) for d in root]

    def _document(self, collection: str, element: etree._Element) -> Document:
        children = [c for c in element if isinstance(c.tag, str)]
        invariant(len(children) == 1, "a stored document has one root element")
        xml = etree.tostring(children[0], encoding="UTF-8", with_tail=False)
        return Document(collection, element.get("id"), xml, int(element.get("v") or 0))

    def get(self, collection: str, doc_id: str) -> Document | None:
        db, doc_id = self._db(collection), check_doc_id(doc_id)
        self._ensure_current()
        root = self._parse_result(self._run(Q_GET, {"$db": (db, ""), "$id": (doc_id, "")}))
        if root.tag == "none":
            return None
        root.set("id", doc_id)
        return self._document(collection, root)

    def collections(self) -> list[str]:
        self._ensure_current()
        names = self._run(Q_COLLECTIONS, {"$prefix": (self.db_prefix, "")}).split()
        return [n[len(self.db_prefix):] for n in names]

    def ids(self, collection: str, offset: int = 0, limit: int = 1000) -> list[str]:
        if offset < 0 or not 1 <= limit <= 100_000:
            raise StoreError("ids: offset >= 0 and 1 <= limit <= 100000")
        self._ensure_current()
        return self._run(Q_IDS, {"$db": (self._db(collection), ""), "$offset": (str(offset), "xs:integer"),
                                 "$limit": (str(limit), "xs:integer")}).split()

    def _xpath_query(self, collection: str, xpath: str, variables: Mapping[str, str | int],
                     namespaces: Mapping[str, str], time_limit_s: float, scan_limit: int | None,
                     start: int | None, count: int | None) -> str:
        db = self._db(collection)
        scan_limit = self.limits.scan_limit_default if scan_limit is None else int(scan_limit)
        # only validated prefixes/URIs, validated variable names and integers enter query text
        prolog = "".join(f'declare namespace {p} = "{u}";\n' for p, u in namespaces.items())
        prolog += "".join(f"declare variable ${name} external;\n" for name in variables)
        prolog += "declare variable $_docs external;\n"
        selected = f"$_docs[boolean((\n{xpath}\n))]"
        body = f"subsequence({selected}, {int(start)}, {int(count)})" if count is not None else f"count({selected})"
        names = list(variables)
        declarations = "".join(f"declare variable $n{i} external; declare variable $v{i} external;\n"
                               for i in range(len(names)))
        entries = ", ".join(f"map{{$n{i}: $v{i}}}" for i in range(len(names))) or "map{}"
        text = Q_QUERY.format(declarations=declarations, entries=entries,
                              result=R_PAGE if count is not None else "$hits")
        bindings = {"$db": (db, ""), "$expr": (prolog + body, ""), "$scan": (str(scan_limit), "xs:integer"),
                    "$timeout": (str(max(1, math.ceil(time_limit_s))), "xs:integer")}
        for i, name in enumerate(names):
            value = variables[name]
            bindings[f"$n{i}"] = (name, "xs:string")
            bindings[f"$v{i}"] = (str(value), "xs:integer" if isinstance(value, int) else "xs:string")
        self._ensure_current()
        try:
            return self._run(text, bindings, timeout_s=time_limit_s + self._timeout_s, pool=self._query_pool)
        except ServerError as error:
            message = str(error)
            if "gridcredit-scan-limit" in message:
                raise QueryError(f"collection {collection!r} holds more documents than the scan limit "
                                 f"{scan_limit}: narrow the collection or raise scan_limit") from None
            if "xquery:timeout" in message:
                raise QueryError(f"query exceeded its time limit of {time_limit_s} s") from None
            if "xquery:permission" in message:
                raise QueryError(f"XPath refused (not allowed in queries): {message}") from None
            raise QueryError(f"XPath error in {xpath!r}: {message}") from None

    def query(self, collection: str, xpath: str, variables: Mapping[str, str | int] = {}, *,
              namespaces: Mapping[str, str] = {}, offset: int = 0, limit: int = 100,
              time_limit_s: float = 5.0, scan_limit: int | None = None) -> QueryPage:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, offset, limit, time_limit_s, self.limits)
        deadline = time.monotonic() + time_limit_s
        text = self._xpath_query(collection, xpath, variables, namespaces, time_limit_s, scan_limit,
                                 offset + 1, limit + 1)
        if time.monotonic() > deadline:
            raise QueryError(f"query exceeded its time limit of {time_limit_s} s")
        documents = [self._document(collection, d) for d in self._parse_result(text)]
        more = len(documents) > limit
        return QueryPage(documents[:limit], offset + limit if more else None)

    def count(self, collection: str, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
              namespaces: Mapping[str, str] = {}, time_limit_s: float = 5.0,
              scan_limit: int | None = None) -> int:
        check_collection(collection)
        check_query_args(xpath, variables, namespaces, 0, 1, time_limit_s, self.limits)
        if xpath is None:
            self._ensure_current()
            return int(self._run(Q_COUNT_ALL, {"$db": (self._db(collection), "")}))
        return int(self._xpath_query(collection, xpath, variables, namespaces, time_limit_s, scan_limit,
                                     None, None))

    # -- writes --
    def transact(self, fn: Callable[[Transaction], T], *, retries: int | None = None) -> T:
        retries = self.limits.retries_default if retries is None else retries

        def attempt() -> T:
            with self._journal.lock():
                self._catch_up()
                tx = _BaseXTransaction(self)
                result = fn(tx)
                if not tx.staged:
                    return result
                seq = self._journal.last_seq + 1
                writes = [(c, d, v, None if x is None else x.decode()) for (c, d), (v, x) in tx.staged.items()]
                self._journal.append(seq, writes)          # committed from here on
                for collection, doc_id, version, xml in writes:
                    self._state.setdefault(collection, {})[doc_id] = (version, xml)
                try:
                    self._apply(seq, writes)
                except (StoreError, ServerError) as error:
                    self._suspect = True
                    self._note(f"transaction {seq} is in the journal but not yet in BaseX ({error}); "
                               f"it will be re-applied")
                return result

        return run_with_retries(attempt, retries)

    def close(self) -> None:
        self._query_pool.close()
        self._pool.close()
        self._journal.close()
