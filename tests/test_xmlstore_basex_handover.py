"""BaseX backend (issue 10.10): a store handed over (``hand_over()``: serve's supervisor after
prepare_state) leaves its mirror to the processes forked next — their open takes it instead of
reading the journal's snapshot and frames again (the mirror of a million documents was built once
per process: three times per serve start), and goes on as any open does: the frames written
since read, what BaseX lacks applied, the verification shared, every crash recovered from the
journal."""
from __future__ import annotations

import fcntl
import gc
import os
import signal
import time
from pathlib import Path

import pytest

from gridcredit.xmlstore._basex import BaseXStore
from gridcredit.xmlstore._basex_wire import Session
from store_fixtures import *  # noqa: F401,F403
from store_fixtures import _prefixes, child_answer, in_child, open_from_spec

pytestmark = [pytest.mark.basex]

DOCUMENTS = 300


@pytest.fixture
def spec(basex_server, tmp_path):
    return {"backend": "basex", "state_dir": str(tmp_path / "state"), "port": basex_server.port,
            "prefix": f"h{os.getpid()}x{next(_prefixes)}_"}


def _count_builds(monkeypatch) -> list[int]:
    """The pids of the opens that build their mirror from the journal (its snapshot, then frames):
    every writable open read it before this change; a process that took a handed-over one does not.
    (Instrumentation only: the real reading runs.)"""
    builds: list[int] = []
    real = BaseXStore._absorb_snapshot

    def counted(self):
        builds.append(os.getpid())
        return real(self)

    monkeypatch.setattr(BaseXStore, "_absorb_snapshot", counted)
    return builds


def _filled(spec: dict) -> int:
    """A store of DOCUMENTS documents, checkpointed (the mirror is read from a snapshot), and 10
    transactions after the snapshot (frames); BaseX verified. Returns the last transaction."""
    with open_from_spec(spec) as store:
        store.transact(lambda tx: [tx.put("big", f"d{n:05d}", f"<d n='{n}'>{'x' * 100}</d>".encode())
                                   for n in range(DOCUMENTS)])
        assert store.checkpoint() is not None
        for n in range(10):
            store.put("big", f"d{n:05d}", f"<d n='{n}' again='1'/>".encode())
        assert store.wait_verified(30)
        return store._journal.last_seq


def _worker(spec: dict, builds: list[int], name: str):
    """What a serve worker does with the store: open, read by id, commit, query (BaseX verified)."""
    def work(lines: list[str]) -> dict:
        store = open_from_spec(spec)
        try:
            again = store.get("big", "d00003")
            late = store.get("big", "late")
            store.put("big", name, f"<w name='{name}'/>".encode())
            verified = store.wait_verified(60)
            return {"pid": os.getpid(), "builds": [b for b in builds if b == os.getpid()],
                    "mirror_from": getattr(store, "mirror_from", None), "again": again.xml.decode() if again else None,
                    "late": late.xml.decode() if late else None, "verified": verified, "count": store.count("big"),
                    "name": store.get("big", name) is not None, "lines": lines}
        finally:
            store.close()
    return work


def test_processes_forked_after_a_hand_over_take_its_mirror_instead_of_reading_the_journal(spec, monkeypatch):
    builds = _count_builds(monkeypatch)
    _filled(spec)
    del builds[:]
    parent = open_from_spec(spec)                 # (serve's supervisor: prepare_state)
    drop = parent.hand_over()
    assert builds == [os.getpid()]                # the one build of this start
    with open_from_spec(spec) as other:           # a commit after the hand-over (another process's, as far as
        other.put("big", "late", b"<late/>")      # the handed mirror knows: this process took nothing)
    del builds[:]
    answers = [child_answer(*in_child(_worker(spec, builds, f"w{k}"))) for k in range(2)]
    for answer in answers:
        assert answer["builds"] == [], answer                       # no second or third build ...
        assert answer["mirror_from"] == os.getpid(), answer         # ... the parent's mirror taken
        assert any("took the mirror of the journal up to transaction" in line and f"process {os.getpid()}" in line
                   for line in answer["lines"]), answer
        assert answer["again"] == "<d n=\"3\" again=\"1\"/>", answer  # frames after the snapshot: in it
        assert answer["late"] == "<late/>", answer                  # the frame written since: read by the open
        assert answer["verified"] and answer["name"], answer
    assert [a["count"] for a in answers] == [DOCUMENTS + 2, DOCUMENTS + 3]
    drop()


def test_a_hand_over_is_taken_once_within_fork_trust_s_and_dropped_by_its_function(spec, monkeypatch):
    builds = _count_builds(monkeypatch)
    _filled(spec)

    def two_opens(lines: list[str]) -> dict:
        first = open_from_spec(spec)
        second = open_from_spec(spec)               # a second store in the same process reads the journal itself
        try:
            return {"from": [first.mirror_from, second.mirror_from], "builds": [b for b in builds if b == os.getpid()],
                    "counts": [len(first._state["big"]), len(second._state["big"])]}
        finally:
            first.close()
            second.close()

    del builds[:]
    drop = open_from_spec(spec).hand_over()
    answer = child_answer(*in_child(two_opens))
    assert answer["from"] == [os.getpid(), None] and len(answer["builds"]) == 1, answer
    assert answer["counts"] == [DOCUMENTS, DOCUMENTS], answer
    drop()                                           # dropped here: a process forked now reads the journal
    answer = child_answer(*in_child(two_opens))
    assert answer["from"] == [None, None] and len(answer["builds"]) == 2, answer
    monkeypatch.setattr(BaseXStore, "fork_trust_s", 0.5)
    drop = open_from_spec(spec).hand_over()
    time.sleep(1.0)                                  # forked too long after it: not trusted
    answer = child_answer(*in_child(two_opens))
    assert answer["from"] == [None, None] and len(answer["builds"]) == 2, answer
    drop()


def test_an_open_from_a_handed_mirror_applies_the_frames_basex_lacks(spec, basex_server):
    """BaseX behind the handed mirror (its applied number went back after the hand-over): the open
    applies the frames after BaseX's number, read back from the journal, as an open that read the
    journal itself would — not a verification of every database in the open."""
    last = _filled(spec)
    drop = open_from_spec(spec).hand_over()
    session = Session("127.0.0.1", basex_server.port, "admin", "admin", timeout_s=5)
    session.query(f"db:replace('{spec['prefix']}_meta', '.seq', <seq n='{last - 4}'/>)")
    session.close()

    def work(lines: list[str]) -> dict:
        with open_from_spec(spec) as store:
            return {"from": store.mirror_from, "log": store.recovery_log, "verified": store.wait_verified(60),
                    "count": store.count("big"), "ok": all(entry["ok"] for entry in store.check().values())}

    answer = child_answer(*in_child(work))
    drop()
    assert answer["from"] == os.getpid(), answer
    assert any("4 committed transaction(s) not yet in BaseX" in line for line in answer["log"]), answer
    assert not any("verifying every database" in line for line in answer["log"]), answer
    assert answer["verified"] and answer["ok"] and answer["count"] == DOCUMENTS, answer


def test_commits_of_a_process_that_took_a_handed_mirror_survive_its_kill_9(spec):
    _filled(spec)
    drop = open_from_spec(spec).hand_over()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            store = open_from_spec(spec)
            store._closing.set()                     # its applier stopped: commits reach the journal only
            for n in range(20):
                store.put("killed", f"k{n}", f"<k n='{n}'/>".encode())
                os.write(write_end, b"a")            # acknowledged
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        acknowledged = len(pipe.read())
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    drop()
    assert acknowledged == 20
    with open_from_spec(spec) as store:
        assert store.wait_verified(30)
        assert store.count("killed") == 20 and store.get("killed", "k19").xml == b'<k n="19"/>'
        assert all(entry["ok"] for entry in store.check().values())


def test_the_verification_after_open_lets_a_waiting_open_go_first(spec, monkeypatch):
    """serve's workers open together: the one that opened first verifies BaseX in steps that hold
    the journal's applier lock, which the other's open waits for — and flock is not FIFO, so a
    step taken again at once won over the waiting open step after step. While an open waits
    (``opening()``), no step begins; once it is through, the verification goes on."""
    monkeypatch.setattr(BaseXStore, "verify_chunk_docs", 20)
    _filled(spec)
    journal = Path(spec["state_dir"]) / "journal"
    with open(journal / "open.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)            # an open waiting for the locks (another process's)
        store = open_from_spec(spec)
        try:
            assert store.verifying
            time.sleep(1.5)
            assert store.verifying and store._verify_docs[0] == 0, store._verify_docs   # no step taken meanwhile
            fcntl.flock(lock, fcntl.LOCK_UN)
            assert store.wait_verified(30)
            assert store._verify_docs[0] >= DOCUMENTS
        finally:
            store.close()


def test_no_garbage_collection_walks_the_mirror_while_the_snapshot_is_read(spec, monkeypatch):
    """The one build of a start (serve's supervisor): Python's cyclic GC, run every 700 new
    containers, walked the young mirror again and again while a snapshot of a million documents
    was read (~40 % of its time, measured). It is paused for the read (and on again after)."""
    with open_from_spec(spec) as store:
        store.transact(lambda tx: [tx.put("big", f"d{n:05d}", f"<d n='{n}'/>".encode()) for n in range(2000)])
        assert store.checkpoint() is not None
    collections_during: list[int] = []
    reading = [False]

    def note(phase: str, info: dict) -> None:
        if phase == "start" and reading[0]:
            collections_during.append(info["generation"])

    real = BaseXStore._absorb_snapshot

    def observed(self):
        reading[0] = True
        try:
            return real(self)
        finally:
            reading[0] = False

    monkeypatch.setattr(BaseXStore, "_absorb_snapshot", observed)
    gc.callbacks.append(note)
    try:
        with open_from_spec(spec) as store:
            assert len(store._state["big"]) == 2000
    finally:
        gc.callbacks.remove(note)
    assert collections_during == []
    assert gc.isenabled()
