"""The BaseX store's recovery: BaseX verified against the journal (at open, in the background
after open, shared by the processes of one start) and repaired where it differs.

``_Recovery`` is the part of ``BaseXStore`` (``_basex``, whose docstring's "Recovery" section
says what is verified when) that verifies and repairs; it works on the store's state (mirror,
journal, sessions) and is not used alone. The verification after open runs in steps
(``_verify_step``) whose progress processes of one start share through
``<journal>/verification.json`` (``_SharedVerification``).
"""
from __future__ import annotations

import bisect
import heapq
import json
import logging
import os
import random
import threading
import time
from pathlib import Path

from lxml import etree

from gridcredit.durable import write_atomically
from gridcredit.errors import StoreError, StoreUnavailable

from ._basex_queries import (INDEX_MAXLEN, Q_DATABASES, Q_INDEX_OPTIONS, Q_INDEX_SAMPLE, Q_REINDEX, Q_STATUS,
                             Q_STATUS_LIVE, Q_STATUS_RANGE, Q_STATUS_VERSIONS, RESULT_PARSER, versions_of)
from ._basex_sessions import BaseXUnavailable
from ._basex_wire import ServerError

log = logging.getLogger("gridcredit.xmlstore._basex")     # (the store's log lines, as before the split)

# (journal folder, host, port) of the opens without BaseX this process said: its forked workers,
# which open the store again, say it at INFO (one warning for a server, not one per worker)
_SAID_UNREACHABLE: set[tuple[str, str, int]] = set()

# (journal folder, host, port) -> (pid, transaction, time.monotonic()) of the last verification of
# BaseX against that journal this process completed (open, background or repair). A process forked
# soon after (``fork_trust_s``: serve's workers after prepare_state) skips its own verification when
# BaseX's applied number and quick checks agree (see BaseXStore._open_verify_locked); a close with
# BaseX in doubt, or a later repair, withdraws it
_VERIFIED: dict[tuple[str, str, int], tuple[int, int, float]] = {}
_FORKED_AT: list[float] = [0.0]        # time.monotonic() of this process's fork (0: never forked)


def _note_fork() -> None:
    _FORKED_AT[0] = time.monotonic()


os.register_at_fork(after_in_child=_note_fork)

# (journal folder, host, port) -> (pid, token, time.monotonic()) of the verification after open this
# process left to the background (see BaseXStore._verify_later). The processes forked from it within
# ``fork_trust_s`` (serve's workers after prepare_state) take part in that one verification instead
# of each verifying in full (see _SharedVerification).
_BACKGROUND: dict[tuple[str, str, int], tuple[int, str, float]] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _SharedVerification:
    """One verification after open shared by the processes of one start: ``<journal>/verification.json``.

    A writable open that leaves the verification to the background makes a *token* (or takes its
    parent's: see ``_BACKGROUND``); the processes holding one token verify BaseX once between them.
    The file maps each token to its progress — the collections left, the last id verified in the
    first of them (``after``), documents read and to read — the process doing the steps (``owner``)
    and, once BaseX is verified, the journal's transaction it was verified at (``done``). Every
    change is made under the journal's applier lock (each step holds it) and replaces the file
    atomically, so a glance without the lock reads a whole one. A process steps only when no other
    live process owns the token's steps: it then goes on from the progress recorded (the owner died
    or closed its store); one that sees ``done`` adopts it. At most ``KEPT`` tokens are kept (the
    oldest dropped: a process of a dropped token verifies again from the start)."""

    KEPT = 16

    def __init__(self, path: Path) -> None:
        self.path = path

    def _all(self) -> dict[str, dict]:
        try:
            tokens = json.loads(self.path.read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return tokens if isinstance(tokens, dict) else {}

    def read(self, token: str) -> dict | None:
        entry = self._all().get(token)
        return entry if isinstance(entry, dict) else None

    def write(self, token: str, **fields) -> None:
        """Applier lock held: set ``fields`` of ``token``'s entry (made if missing)."""
        tokens = self._all()
        entry = tokens.pop(token, None)
        entry = dict(entry if isinstance(entry, dict) else {}, **fields, updated=time.time())
        kept = sorted(tokens.items(), key=lambda item: item[1].get("updated", 0) if isinstance(item[1], dict) else 0)
        tokens = dict(kept[-(self.KEPT - 1):] if self.KEPT > 1 else [])
        tokens[token] = entry
        write_atomically(self.path, json.dumps(tokens).encode())

    @staticmethod
    def stepped_by_another(entry: dict | None) -> bool:
        """Whether another live process does the steps of this (unfinished) verification."""
        if entry is None or entry.get("done") is not None:
            return False
        owner = entry.get("owner")
        return isinstance(owner, int) and owner != os.getpid() and _alive(owner)


class _Recovery:
    """Verification and repair of BaseX against the journal (mixed into BaseXStore)."""

    def _open_verify_locked(self, applied: int | None, written: set[str], last: int) -> None:
        pending_writes = sum(len(writes) for _seq, writes in self._pending)
        if pending_writes > self.blind_apply_max:
            self._note(f"{pending_writes} committed write(s) not yet in BaseX by its applied number "
                       f"({applied}); verifying instead of applying them blindly")
        quick = applied is not None and applied <= last and pending_writes <= self.blind_apply_max and \
            not self._unhealthy(sorted(written))
        if quick:
            if self._pending:
                self._note(f"{len(self._pending)} committed transaction(s) not yet in BaseX (an applier is behind, "
                           f"or a writer stopped before they were applied); applying them")
                try:
                    self._apply_pending_locked(writer_locked=True, verify_first=False)
                except StoreError as error:
                    self._note(f"applying them failed ({error}); verifying every database")
                    quick = False
        else:
            with self._mirror_lock:
                self._pending.clear()
                self._pending_bytes = 0
        if quick and self._verify_later(applied, last):
            return
        self._verify_and_repair(list(self._state), check_unknown=True)
        self._check_index_options()
        self._set_meta(last)
        self._note_applied(last)
        self._suspect = False
        self._broken_checked = self._pool.broken_seen
        self._verification_done(last)

    # -- verification after open, in the background --
    def _verify_later(self, applied: int, last: int) -> bool:
        """Open, both locks held, every pending frame applied: if BaseX passes the quick checks
        (applied number at the journal's end, no database of another journal, every database's
        metadata readable, the attribute indexes' options as declared), leave the full verification
        (every document read) to the applier thread (``_verify_step``) and return True — or skip it
        in a process forked right after its parent verified (``_VERIFIED``), or share it with the
        other processes forked from a parent that left it to the background (``_BACKGROUND``,
        ``_SharedVerification``: one of them verifies, the others adopt its result). False: verify now."""
        if self._read_meta() != last:
            return False
        self._refuse_unknown_databases()
        if self._unhealthy([self._db(c) for c in self._state] + [self._meta_db]) or self._index_options_differ():
            return False
        self._note_applied(last)
        self._suspect = False
        self._broken_checked = self._pool.broken_seen
        fact = _VERIFIED.get(self._verified_key())
        if fact is not None and fact[0] != os.getpid() and 0 < _FORKED_AT[0] - fact[2] <= self.fork_trust_s \
                and fact[1] <= applied:
            log.info("xmlstore/basex: BaseX was verified against the journal by the process this one was forked "
                     "from (at transaction %d; BaseX has applied %d): not verifying again", fact[1], applied)
            self._verification_done(last, adopted=True)
            return True
        key, shared_with = self._verified_key(), ""
        parent = _BACKGROUND.get(key)
        if parent is not None and parent[0] != os.getpid() and 0 < _FORKED_AT[0] - parent[2] <= self.fork_trust_s:
            self._verify_token = parent[1]
            shared_with = f", with the other processes forked from process {parent[0]}"
            entry = self._shared.read(self._verify_token)
            if entry is not None and entry.get("done") is not None:
                return self._adopt_verification(entry)
        else:
            self._verify_token = f"{os.getpid()}-{os.urandom(8).hex()}"
            _BACKGROUND[key] = (os.getpid(), self._verify_token, time.monotonic())
        with self._mirror_lock:
            total = sum(len(entries) for entries in self._state.values())
            self._verify_left = sorted(self._state)
            self._verify_new = {}
        self._verify_after = ""
        self._verify_bounds, self._verify_bounds_of = [], None
        self._verify_docs = (0, total)
        self._verify_started = time.monotonic()
        self._verified.clear()
        log.info("xmlstore/basex: verifying %d documents of BaseX against the journal in the background%s "
                 "(queries wait for it; reads by id and commits go on)", total, shared_with)
        return True

    def _adopt_verification(self, entry: dict) -> bool:
        """Applier lock held: another process of this start verified BaseX (``entry``: see
        _SharedVerification); adopt it unless BaseX's applied number went back since (then this
        store is suspect: the next apply or query verifies and repairs). True when adopted."""
        applied = self._read_meta()
        if applied < entry["done"]:
            self._note(f"BaseX's applied number ({applied}) is below the transaction at which process "
                       f"{entry.get('owner')} verified it ({entry['done']}); verifying every database")
            self._suspect = True
            return False
        log.info("xmlstore/basex: BaseX was verified against the journal by process %s (%s documents, at "
                 "transaction %d; BaseX has applied %d): not verifying again", entry.get("owner"),
                 f"{entry.get('total', 0):,}", entry["done"], applied)
        self._verify_left = None       # (no "verified" line of its own)
        self._verification_done(applied, adopted=True)
        return True

    def _verified_key(self) -> tuple[str, str, int]:
        return (str(self._journal.directory), self._address[0], self._address[1])

    def _verification_done(self, seq: int, *, adopted: bool = False) -> None:
        """BaseX holds exactly the journal up to ``seq``: say so to waiting queries, to forks and
        (applier lock held) to the other processes sharing this start's verification."""
        if self._verify_left is not None:
            log.info("xmlstore/basex: verified %d documents of BaseX against the journal in %.1f s",
                     self._verify_docs[1], time.monotonic() - self._verify_started)
        self._verify_left = None
        self._verify_new = {}
        self._verify_bounds, self._verify_bounds_of = [], None
        self._verify_failed = None
        if not adopted:
            _VERIFIED[self._verified_key()] = (os.getpid(), seq, time.monotonic())
            if self._verify_token is not None:
                self._shared.write(self._verify_token, owner=os.getpid(), done=seq, left=[], after="",
                                   read=self._verify_docs[0], total=self._verify_docs[1])
        self._verify_token = None
        self._verified.set()

    def _refuse_unknown_databases(self) -> None:
        names = self._run(Q_DATABASES, {"$prefix": (self.db_prefix, "")}).split()
        unknown = [n for n in names if n != self._meta_db and n[len(self.db_prefix):] not in self._state]
        if unknown:
            raise StoreError(f"BaseX holds database(s) {', '.join(unknown)} that our journal "
                             f"{self._journal.path} does not know: wrong journal or wrong server?")

    def _index_options_differ(self) -> bool:
        for collection in sorted(self._state):
            indexed = self._coverage(collection).attributes
            if indexed:
                found = self._run(Q_INDEX_OPTIONS, {"$db": (self._db(collection), "")})
                if found not in ("missing", f"true|false|{','.join(sorted(indexed))}|{INDEX_MAXLEN}"):
                    return True
        return False

    @property
    def verifying(self) -> bool:
        """Whether BaseX is still being verified against the journal after open (queries wait)."""
        return not self._verified.is_set()

    def wait_verified(self, timeout_s: float | None = None, *, at_once: bool = False) -> bool:
        """Wait until BaseX is verified against the journal (and repaired where it differed);
        False if that did not happen within ``timeout_s`` (None: no limit), BaseX does not answer
        (the store then serves from the journal: see _open_without_basex) or the verification
        failed (the applier retries it, as a repair; the error is logged). ``at_once``: verify
        what is left here, in one pass over each database under the writer lock — quicker than
        the background's steps (each walks the database for its ids), but commits wait: for a
        process that serves nothing yet (serve's supervisor before it starts its workers)."""
        self._refuse_if_read_only("verification")
        if at_once and self._verify_left is not None:
            try:
                with self._journal.apply_lock():
                    if self._verify_left is not None and self.waiting_for_basex is None:
                        self._repair_locked(writer_locked=False)     # (ends the background verification)
            except StoreError as error:
                log.warning("xmlstore/basex: verifying BaseX against the journal failed (%s); the applier "
                            "retries", error)
                self._suspect = True
                return False
        self._start_applier()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._verified.is_set() and not self._needs_repair():
                return True
            if self.waiting_for_basex is not None or self._verify_failed is not None or self._closing.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._wake.set()
            self._verified.wait(0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic())))

    def _verify_step(self) -> bool:
        """One step of the background verification (the applier thread, applier lock held for the
        step): the next ``verify_chunk_docs`` ids of one collection are read in full from BaseX and
        compared with the journal as of BaseX's applied number — documents that frames after it
        write are left to those frames (a first write, which the applier adds, must not be in BaseX
        yet). A collection found to differ is verified and repaired whole under the writer lock
        (``_verify_and_repair``); the last step checks the attribute indexes and ends it. The
        progress is the start's (``_SharedVerification``): False when another live process does
        the steps (this one waits for its result), True otherwise."""
        token = self._verify_token
        entry = None if token is None else self._shared.read(token)
        if _SharedVerification.stepped_by_another(entry):      # a glance without the lock
            self._verify_docs = (entry.get("read", 0), entry.get("total", self._verify_docs[1]))
            return False
        if self._journal.open_waiting():     # an open (serve's other workers) goes first: a step holds the
            return False                     # applier lock for seconds, and flock lets the step win again
        with self._journal.apply_lock():
            if self._verify_left is None or self._needs_repair():
                return True
            if token is not None:
                entry = self._shared.read(token)
                if entry is not None and entry.get("done") is not None:
                    self._adopt_verification(entry)
                    return True
                if _SharedVerification.stepped_by_another(entry):
                    return False
                if entry is not None:      # go on from where the start's verification is
                    self._verify_left = [c for c in entry.get("left", []) if isinstance(c, str)]
                    self._verify_after = entry.get("after") or ""
                    self._verify_docs = (entry.get("read", 0), entry.get("total", self._verify_docs[1]))
                    if entry.get("owner") != os.getpid():
                        log.info("xmlstore/basex: going on with the verification of BaseX after open that process %s "
                                 "left (%s of %s documents read)", entry.get("owner") or entry.get("released_by"),
                                 f"{self._verify_docs[0]:,}", f"{self._verify_docs[1]:,}")
            if not self._verify_left:
                self._verify_finish_locked()
                return True
            collection = self._verify_left[0]
            size = self.verify_chunk_docs
            if self._verify_bounds_of != collection:
                with self._mirror_lock:
                    self._verify_bounds = sorted(self._state.get(collection, {}))
                    self._verify_bounds_of = collection
                    self._verify_new[collection] = set()
            ids, after = self._verify_bounds, self._verify_after
            start = bisect.bisect_right(ids, after) if after else 0
            upto = ids[start + size - 1] if start + size < len(ids) else ""
            applied = self._read_meta()
            if applied < self._applied_seq:
                self._note(f"BaseX's applied number went back from {self._applied_seq} to {applied} during the "
                           f"verification after open; verifying every database")
                self._suspect = True
                return True
            self._catch_up_unlocked()       # (every frame up to BaseX's number is in the journal) ...
            self._note_applied(applied)     # ... so the pending frames are then exactly those after it
            status, live, versions, found = self._status_range(collection, after, upto)
            with self._mirror_lock:
                if self._pending and self._pending[0][0] != applied + 1:
                    self._suspect = True       # frames BaseX has not got that we never read: verify all
                    return True
                touched: dict[str, int] = {}   # written after BaseX's number: first version written
                for _seq, writes in self._pending:
                    for written, doc_id, version, _xml in writes:
                        if written == collection:
                            touched.setdefault(doc_id, version)
                entries = self._state.get(collection, {})
                candidates = set(ids[start:start + size]) | found | {
                    d for d in self._verify_new.get(collection, ()) if (not after or d > after) and (not upto or d <= upto)}
                want_versions = {d: (entries[d][0], entries[d][1] is not None) for d in candidates
                                 if d in entries and d not in touched}
            want_live = {d for d, (_v, is_live) in want_versions.items() if is_live}
            live = {d for d in live if d not in touched}
            versions = {d: v for d, v in versions.items() if d not in touched}
            early = [d for d in found if touched.get(d) == 1]    # BaseX holds what the journal writes first later
            self._verify_docs = (self._verify_docs[0] + len(candidates), self._verify_docs[1])
            if status in ("ok", "missing") and live == want_live and versions == want_versions and not early:
                if upto:
                    self._verify_after = upto
                    self._publish_progress()
                    return True
            else:
                why = status if status not in ("ok", "missing") else (
                    f"{len(want_live ^ live) + len(early)} document(s) and "
                    f"{sum(1 for d in want_versions.keys() | versions.keys() if want_versions.get(d) != versions.get(d))}"
                    f" version(s) differ")
                self._note(f"{collection}: BaseX differs from the journal ({why[:200]}; found by the verification "
                           f"after open); verifying and repairing it")
                self._verify_repair_locked(collection)
            self._verify_left.pop(0)
            self._verify_after = ""
            self._verify_bounds, self._verify_bounds_of = [], None
            self._publish_progress()
            return True

    def _publish_progress(self) -> None:
        """Applier lock held: record this start's verification progress, this process doing its steps."""
        if self._verify_token is not None and self._verify_left is not None:
            self._shared.write(self._verify_token, owner=os.getpid(), left=self._verify_left, after=self._verify_after,
                               read=self._verify_docs[0], total=self._verify_docs[1], done=None)

    def _release_verification(self) -> None:
        """At close: steps of this start's verification that this process owned are left to the
        others (a process that goes on living after closing its store — serve's supervisor — would
        otherwise hold them)."""
        token = self._verify_token
        if token is None or self._verify_left is None or self.read_only:
            return
        with self._journal.apply_lock():
            entry = self._shared.read(token)
            if entry is not None and entry.get("owner") == os.getpid() and entry.get("done") is None:
                self._shared.write(token, owner=None, released_by=os.getpid())

    def _verify_repair_locked(self, collection: str) -> None:
        """Applier lock held: verify and repair one collection under the writer lock (writers wait
        for this repair only); every committed frame is applied first, so the applied number can
        then be set to the journal's end."""
        with self._journal.lock():
            with self._mirror_lock:
                self._absorb(self._journal.read_new(repair=True))
            try:
                self._apply_pending_locked(writer_locked=True, verify_first=False)
            except StoreError as error:
                self._note(f"applying the journal before the repair failed ({error}); verifying every database")
                self._suspect = True
                return
            self._verify_and_repair([collection])
            self._set_meta(self._journal.last_seq)
            self._note_applied(self._journal.last_seq)

    def _verify_finish_locked(self) -> None:
        """The last step: attribute indexes checked (and rebuilt) under the writer lock, the applied
        number at the journal's end; BaseX is verified."""
        with self._journal.lock():
            with self._mirror_lock:
                self._absorb(self._journal.read_new(repair=True))
            self._apply_pending_locked(writer_locked=True, verify_first=False)
            self._check_index_options()
            last = self._journal.last_seq
            self._set_meta(last)
            self._note_applied(last)
            self._verification_done(last)

    def _status_range(self, collection: str, after: str, upto: str) -> tuple[str, set[str], dict[str, tuple[int, bool]],
                                                                             set[str]]:
        """(status, live ids, id -> (version, live), every id found) of the documents and tombstones
        with ids in (after, upto] (see Q_STATUS_RANGE)."""
        bindings = {"$db": (self._db(collection), ""), "$after": (after, ""), "$upto": (upto, "")}
        try:
            text = self._run(Q_STATUS_RANGE, bindings)
        except ServerError as error:   # damage shows as errors XQuery cannot catch, e.g. "Java heap space"
            text = f"damaged {error}"
        if text == "missing":
            return "missing", set(), {}, set()
        lines = text.split("\n")
        if lines[0] != "ok":
            return text, set(), {}, set()
        status, versions = versions_of(line.split()[:3] for line in lines[1:] if line)
        found = {line.split(" ", 1)[0] for line in lines[1:] if line}
        live = {d for d, (_v, is_live) in versions.items() if is_live}
        return status, live, versions, found

    def _index_sample_errors(self, collection: str, indexed: frozenset[str], recent: int = 50,
                             spread: int = 25) -> int:
        """How many sampled (attribute, value, document) lookups the attribute index gets wrong."""
        entries = self._state.get(collection, {})
        live = [(seq, doc_id) for doc_id, (_v, xml, seq) in entries.items() if xml is not None]
        sample = {doc_id for _seq, doc_id in heapq.nlargest(recent, live)}
        sample.update(doc_id for _seq, doc_id in random.sample(live, min(spread, len(live))))
        checks = etree.Element("c")
        for doc_id, xml in self._texts(collection, sorted(sample)).items():
            root = etree.fromstring(xml.encode(), parser=RESULT_PARSER)
            for name, value in root.attrib.items():
                if name in indexed and 0 < len(value) <= 250:
                    etree.SubElement(checks, "a", n=name, v=value, d=doc_id)
        if not len(checks):
            return 0
        return int(self._run(Q_INDEX_SAMPLE, {"$db": (self._db(collection), ""),
                                              "$checks": (etree.tostring(checks, encoding="unicode"), "")}))

    def _check_index_options(self) -> None:
        """Give every existing database of a covered collection the attribute index its
        declarations ask for (declared after it was created, or changed), and one that agrees
        with its data: db:optimize rebuilds it (a rebuild from the journal if that fails)."""
        for collection in sorted(self._state):
            indexed = self._coverage(collection).attributes
            if not indexed:
                continue
            db, include = self._db(collection), ",".join(sorted(indexed))
            found = self._run(Q_INDEX_OPTIONS, {"$db": (db, "")})
            if found == "missing":
                continue
            if found == f"true|false|{include}|{INDEX_MAXLEN}":
                wrong = self._index_sample_errors(collection, indexed)
                if not wrong:
                    continue
                self._note(f"{collection}: its attribute index disagrees with its data ({wrong} sampled "
                           f"lookups wrong); rebuilding the index")
            else:
                self._note(f"{collection}: building its attribute index on {include} (was {found})")
            try:
                self._without_pins(db, lambda: self._run(Q_REINDEX, {"$db": (db, ""), "$include": (include, "")}))
            except ServerError as error:
                self._note(f"{collection}: re-indexing failed ({str(error)[:200]}); rebuilding from the journal")
                self._set_meta(0)          # readers of other processes wait while we rebuild
                self.rebuild(collection, _locked=True)

    def _repair_locked(self, *, writer_locked: bool) -> None:
        """Verify every database against the mirror, repair, and set the applied number (applier
        lock held; takes the writer lock unless held)."""
        if not writer_locked:
            unreachable = self._probe()    # never hold writers up waiting for a BaseX that does not answer
            if unreachable is not None:
                self._suspect = True
                raise BaseXUnavailable(f"BaseX unavailable: {unreachable}")
            with self._journal.lock():
                return self._repair_locked(writer_locked=True)
        # _suspect is cleared before the repair (what goes wrong during it sets it again), so the
        # other threads of this process must not take that for a repaired BaseX: while _repairing
        # names this thread, they find a repair needed and wait for this one on the applier lock
        self._repairing = threading.get_ident()
        try:
            with self._mirror_lock:
                self._absorb(self._journal.read_new(repair=True))
            self._broken_checked = self._pool.broken_seen
            self._suspect = False
            try:
                self._verify_and_repair(list(self._state), check_unknown=self.waiting_for_basex is not None)
                self._check_index_options()
                self._set_meta(self._journal.last_seq)
            except BaseException:
                self._suspect = True
                raise
            self._note_applied(self._journal.last_seq)
            self._verification_done(self._journal.last_seq)
            if self.waiting_for_basex is not None:
                self.waiting_for_basex = None
                host, port = self._address[:2]
                _SAID_UNREACHABLE.discard((str(self._journal.directory), host, port))
                self._note(f"BaseX at {host}:{port} answers again: verified against the journal and caught up "
                           f"(transaction {self._journal.last_seq})")
        finally:
            self._repairing = None

    def _await_verified(self, waiting: str) -> None:
        """Wait (bounded by ``timeout_s``) for the background verification after open (or for a
        repair to be needed: the caller then verifies and repairs itself)."""
        deadline = time.monotonic() + self._timeout_s
        while self._verify_left is not None and not self._needs_repair():
            self._wake.set()
            if self._verified.wait(max(0.0, min(0.05, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                read, total = self._verify_docs
                raise StoreUnavailable(f"the store's database (BaseX) is being verified against the journal after "
                                       f"the store's open ({read} of {total} documents so far): {waiting} waits for "
                                       f"that, not done within {self._timeout_s} s (applier's last error: "
                                       f"{self._apply_error or 'none'}); retry later")

    # -- verification and repair (both locks held) --
    def _status(self, collection: str, unhealthy: set[str] = frozenset()) -> tuple[str, int, set[str],
                                                                                dict[str, tuple[int, bool]]]:
        if self._db(collection) in unhealthy:
            return "damaged: metadata unreadable (not opened)", 0, set(), {}
        bindings = {"$db": (self._db(collection), "")}
        try:
            text = self._run(Q_STATUS, bindings)
            if text.startswith("ok "):
                listed_text = self._run(Q_STATUS_LIVE, bindings)
                versions_text = self._run(Q_STATUS_VERSIONS, bindings)
        except ServerError as error:   # damage shows as errors XQuery cannot catch, e.g. "Java heap space"
            text = f"damaged {error}"
        if text == "missing":
            return "missing", 0, set(), {}
        if not text.startswith("ok "):
            return text, 0, set(), {}
        listed = listed_text.split()
        live = set(listed)
        if len(listed) != len(live):
            return "damaged: a document path held twice (a batch of db:add interrupted?)", 0, set(), {}
        status, versions = versions_of(line.split() for line in versions_text.split("\n") if line)
        if status != "ok":
            return status, 0, set(), {}
        return "ok", 0, live, versions

    def _verify_and_repair(self, collections: list[str], *, check_unknown: bool = False) -> None:
        self._known_databases.clear()
        if check_unknown:
            self._refuse_unknown_databases()
        invalidated = False
        unhealthy = self._unhealthy([self._db(c) for c in collections]) if collections else set()
        for collection in collections:
            expected = self._state.get(collection, {})
            status, _seq, live, versions = self._status(collection, unhealthy)
            if status == "missing" and not expected:
                continue
            want_versions = {d: (v, x is not None) for d, (v, x, _s) in expected.items()}
            want_live = {d for d, (_v, x, _s) in expected.items() if x is not None}
            if status == "ok" and live == want_live and versions == want_versions:
                continue
            if not invalidated:   # readers of other processes wait while we repair
                self._set_meta(0)
                invalidated = True
            if status not in ("ok", "missing"):
                self._note(f"{collection}: unreadable ({status[:200]}); rebuilding from the journal")
                self.rebuild(collection, _locked=True)
                continue
            if (live - want_live) or any(d not in want_versions for d in versions) or any(
                    versions[d][0] > want_versions[d][0] for d in versions):
                self._note(f"{collection}: BaseX holds writes the journal does not; rebuilding")
                self.rebuild(collection, _locked=True)
                continue
            behind = sorted(d for d in want_versions if versions.get(d) != want_versions[d] or
                            (d in want_live) != (d in live))
            if len(behind) > self.rebuild_above and len(behind) * 10 > len(want_versions):
                # db:replace looks each path up (seconds per 1,000 in a big database): a rebuild
                # adds everything into a fresh one instead
                self._note(f"{collection}: {len(behind)} document(s) behind the journal; rebuilding")
                self.rebuild(collection, _locked=True)
                continue
            self._note(f"{collection}: {len(behind)} document(s) behind the journal; re-applying")
            try:
                self._apply_state(collection, behind)
            except ServerError as error:     # e.g. an index a crash left behind: "Key does not exist"
                self._note(f"{collection}: re-applying failed ({str(error)[:200]}); rebuilding")
                self.rebuild(collection, _locked=True)
                continue
            status, _seq, live, versions = self._status(collection)
            if status != "ok" or live != want_live or versions != want_versions:
                self._note(f"{collection}: still inconsistent after re-applying; rebuilding")
                self.rebuild(collection, _locked=True)
