"""The BaseX backend's journal framing, and the store's public surface."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gridcredit.xmlstore as xmlstore
from gridcredit.config import StoreConfig
from gridcredit.errors import StoreError
from gridcredit.xmlstore._embedded import EmbeddedStore
from gridcredit.xmlstore import _journal as journal_module
from gridcredit.xmlstore._journal import Journal


def test_public_names_are_pinned():
    assert sorted(xmlstore.__all__) == sorted(["open_store", "AttributeIndex", "Document", "QueryPage", "StoreLimits",
                                               "Transaction", "XmlStore", "DEFAULT_LIMITS", "Backlog",
                                               "NormalXml"])


def test_open_store_embedded_default(tmp_path):
    with xmlstore.open_store(StoreConfig(), tmp_path) as store:
        assert isinstance(store, EmbeddedStore) and store.path == tmp_path / "store.sqlite"
    with pytest.raises(StoreError):
        xmlstore.open_store(StoreConfig(backend="nosql"), tmp_path)


def write_frames(directory, count):
    journal = Journal(directory)
    with journal.lock():
        journal.read_new(repair=True)
        for seq in range(1, count + 1):
            journal.append(seq, [("c", f"d{seq}", 1, f"<d n='{seq}'/>")])
    journal.close()
    return directory / "journal.gcj"


def read_all(directory):
    journal = Journal(directory)
    with journal.lock():
        entries = journal.read_new(repair=True)
    journal.close()
    return entries


def test_frames_round_trip(tmp_path):
    write_frames(tmp_path, 5)
    entries = read_all(tmp_path)
    assert [seq for seq, _ in entries] == [1, 2, 3, 4, 5]
    assert entries[2][1] == [("c", "d3", 1, "<d n='3'/>")]


@pytest.mark.parametrize("cut", [1, 5, 13, 20])
def test_torn_tail_is_cut_off(tmp_path, cut):
    path = write_frames(tmp_path, 3)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - cut)
    assert [seq for seq, _ in read_all(tmp_path)] == [1, 2]
    # the torn bytes are gone: the next append follows frame 2
    journal = Journal(tmp_path)
    with journal.lock():
        journal.read_new(repair=True)
        journal.append(3, [("c", "again", 1, "<a/>")])
    journal.close()
    assert [seq for seq, _ in read_all(tmp_path)] == [1, 2, 3]


def test_garbage_tail_is_cut_off(tmp_path):
    path = write_frames(tmp_path, 2)
    with open(path, "ab") as handle:
        handle.write(b"\0" * 100)
    assert len(read_all(tmp_path)) == 2


def test_corruption_before_a_good_frame_is_an_error(tmp_path):
    path = write_frames(tmp_path, 3)
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF                       # inside frame 1's payload: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        read_all(tmp_path)


def test_appends_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_frames(tmp_path, 2)
    assert len(synced) >= 2


def test_unsynced_append_then_sync(tmp_path, monkeypatch):
    journal = Journal(tmp_path)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with journal.lock():
        journal.read_new(repair=True)
        journal.append(1, [("c", "d", 1, "<d/>")], sync=False)
    assert synced == [] and journal.size() == journal.offset > 0
    journal.sync()                        # the writer's acknowledgement point, after the lock
    assert len(synced) == 1
    journal.close()
    assert [seq for seq, _ in read_all(tmp_path)] == [1]


def test_reading_without_the_lock_stops_before_a_frame_being_written(tmp_path):
    path = write_frames(tmp_path, 2)
    complete = path.read_bytes()
    frame2 = complete[len(complete) // 2:]          # frames are the same size here
    with open(path, "r+b") as handle:
        handle.truncate(len(complete) - 7)          # frame 2 half written by another process
    reader = Journal(tmp_path)
    assert [seq for seq, _ in reader.read_new(repair=False)] == [1]
    assert path.stat().st_size == len(complete) - 7     # nothing cut without the lock
    with open(path, "ab") as handle:
        handle.write(frame2[-7:])                   # the writer finishes its frame
    assert [seq for seq, _ in reader.read_new(repair=False)] == [2]
    reader.close()


def test_apply_lock_excludes_other_holders(tmp_path):
    first, second = Journal(tmp_path), Journal(tmp_path)   # two opens: as two processes
    with first.apply_lock() as taken:
        assert taken
        with second.apply_lock(blocking=False) as other:
            assert not other
        with second.lock():                          # the writer lock is a different lock
            pass
    with second.apply_lock(blocking=False) as other:
        assert other
    first.close()
    second.close()


def test_reading_in_chunks_and_frames_read_back(tmp_path):
    write_frames(tmp_path, 50)
    journal = Journal(tmp_path)
    chunks = []
    with journal.lock():
        while True:
            entries = journal.read_new(repair=True, bytes_max=100)   # ~ two frames a call
            if not entries:
                break
            chunks.append([seq for seq, _ in entries])
    assert [seq for chunk in chunks for seq in chunk] == list(range(1, 51)) and len(chunks) > 10
    assert journal.frame_writes(17) == [("c", "d17", 1, "<d n='17'/>")]
    with journal.lock():
        journal.append(51, [("c", "x", 1, "<x/>")])
    assert journal.frame_writes(51) == [("c", "x", 1, "<x/>")]
    journal.close()


def test_read_only_journal_creates_and_cuts_nothing(tmp_path):
    with pytest.raises(StoreError):
        Journal(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()
    path = write_frames(tmp_path, 3)
    with open(path, "ab") as handle:
        handle.write(b"GCJ1\0\0")                    # a torn tail a live writer may still finish
    reader = Journal(tmp_path, read_only=True)
    assert [seq for seq, _ in reader.read_new(repair=False)] == [1, 2, 3]
    assert path.read_bytes().endswith(b"GCJ1\0\0")   # not cut
    with pytest.raises(AssertionError, match="writer lock of a read-only journal"):
        with reader.lock():
            pass
    with reader.query_gate(exclusive=True):          # no query.lock yet: nothing created
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.gcj", "journal.lock"]
    reader.close()


def test_one_write_read_back_without_the_others(tmp_path):
    journal = Journal(tmp_path)
    tricky = '<a x=\'["c","d2",1,"<fake/>"]\'>["c","d2",</a>'     # the marker's text inside a document
    with journal.lock():
        journal.read_new(repair=True)
        journal.append(1, [("c", "d1", 1, tricky), ("c", "d2", 4, "<real/>"), ("c", "d3", 2, None)])
    assert journal.frame_write(1, "c", "d2") == ("c", "d2", 4, "<real/>")
    assert journal.frame_write(1, "c", "d1") == ("c", "d1", 1, tricky)
    assert journal.frame_write(1, "c", "d3") == ("c", "d3", 2, None)
    assert journal.frame_write(1, "c", "d4") is None and journal.frame_write(1, "other", "d1") is None
    journal.close()
    data = bytearray((tmp_path / "journal.gcj").read_bytes())
    data[-3] ^= 0x01                                             # the frame no longer matches its CRC
    (tmp_path / "journal.gcj").write_bytes(bytes(data))
    reader = Journal(tmp_path, read_only=True)
    reader.read_new(repair=False)
    reader._starts.append(0)                                     # as if read before it was damaged
    with pytest.raises(StoreError, match="does not read back"):
        reader.frame_write(1, "c", "d2")
    reader.close()


# -- checkpoints: segments and snapshots (issue 10.10) -----------------------------------------

def state_of(journal):
    """collection/doc_id -> (version, xml, seq) after the snapshot and every frame (as the mirror)."""
    state = {}
    for chunk in journal.snapshot_writes():
        for collection, doc_id, version, xml, seq in chunk:
            state[(collection, doc_id)] = (version, xml, seq)
    while True:
        entries = journal.read_new(repair=not journal.read_only, bytes_max=200)
        if not entries:
            return state
        for seq, writes in entries:
            for collection, doc_id, version, xml in writes:
                state[(collection, doc_id)] = (version, xml, seq)


def commit(journal, state, writes):
    """Append one transaction of (collection, doc_id, xml-or-None) writes; versions from ``state``."""
    with journal.lock():
        journal.read_new(repair=True)
        seq = journal.last_seq + 1
        frame = [(c, d, state.get((c, d), (0, None, 0))[0] + 1, x) for c, d, x in writes]
        journal.append(seq, frame)
    for c, d, v, x in frame:
        state[(c, d)] = (v, x, seq)
    return seq


def checkpoint(journal, state):
    """What BaseXStore.checkpoint does, with ``state`` as the mirror."""
    with journal.checkpoint_lock() as taken:
        assert taken
        with journal.lock():
            journal.read_new(repair=True)
            seq = journal.begin_checkpoint()
        if seq is None:
            return None
        writes = sorted(((c, d, v, x, s) for (c, d), (v, x, s) in state.items() if s <= seq), key=lambda w: w[4])
        journal.write_snapshot(seq, writes)
        return seq


def fill(journal, state, transactions, start=0):
    for n in range(start, start + transactions):
        commit(journal, state, [("acc", f"a{n % 7}", f"<a n='{n}'/>"), ("log", f"l{n}", f"<l n='{n}'>{'x' * 50}</l>")]
               + ([("log", f"l{n - 3}", None)] if n % 5 == 0 and n >= 3 else []))


def test_a_checkpoint_replaces_history_with_a_snapshot_and_the_tail(tmp_path):
    journal, state = Journal(tmp_path), {}
    fill(journal, state, 40)
    assert checkpoint(journal, state) == 40
    assert checkpoint(journal, state) is None                  # nothing new
    fill(journal, state, 10, start=40)
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".gcj", ".gcs"))
    assert names == ["journal.00000000000000000041.gcj", "snapshot.00000000000000000040.gcs"]
    # frames from the removed segment are read back from the snapshot (the documents' state)
    assert journal.frame_write(state[("acc", "a3")][2], "acc", "a3")[3] == state[("acc", "a3")][1]
    assert journal.frame_write(1, "log", "l0") == ("log", "l0", 1, "<l n='0'>" + "x" * 50 + "</l>")
    assert journal.frame_write(1, "acc", "a0") is None         # written again later: its state is a later write
    assert ("log", "l2", 2, None) in journal.frame_writes(state[("log", "l2")][2])   # a tombstone
    journal.close()
    reopened = Journal(tmp_path)
    assert state_of(reopened) == state and reopened.last_seq == 50
    assert commit(reopened, state, [("acc", "new", "<n/>")]) == 51
    reopened.close()
    reader = Journal(tmp_path, read_only=True)
    assert state_of(reader) == state
    reader.close()


def test_a_running_reader_follows_the_segments_and_adopts_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "ADOPT_CHECK_S", 0.0)
    writer, state = Journal(tmp_path), {}
    fill(writer, state, 20)
    reader = Journal(tmp_path)                                 # another process, caught up
    assert len(state_of(reader)) == len(state)
    checkpoint(writer, state)
    fill(writer, state, 5, start=20)
    seen = {}
    for seq, writes in reader.read_new(repair=False):
        assert seq > 20
        for c, d, v, x in writes:
            seen[(c, d)] = (v, x, seq)
    assert reader.snapshot is not None and reader.snapshot.seq == 20    # adopted: the old segment closed
    assert [s.base for s in reader._segments] == [21]
    assert reader.frame_write(state[("log", "l2")][2], "log", "l2")[3] == state[("log", "l2")][1]
    assert reader.jumps == 0
    writer.close()
    reader.close()


def test_a_reader_left_behind_two_checkpoints_takes_the_snapshot(tmp_path):
    writer, state = Journal(tmp_path), {}
    fill(writer, state, 10)
    reader = Journal(tmp_path)
    mirror = state_of(reader)
    checkpoint(writer, state)
    fill(writer, state, 10, start=10)
    checkpoint(writer, state)                                  # segment 11..20 removed before the reader saw it
    fill(writer, state, 3, start=20)
    for seq, writes in reader.read_new(repair=False):
        for c, d, v, x in writes:
            mirror[(c, d)] = (v, x, seq)
    assert mirror == state and reader.jumps == 1 and reader.last_seq == 23
    writer.close()
    reader.close()


CRASH_CHILD = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
from gridcredit.xmlstore import _journal
from gridcredit.xmlstore._journal import Journal
from test_xmlstore_journal import fill, checkpoint
step = {step!r}
journal, state = Journal({directory!r}), {{}}
fill(journal, state, 30)
checkpoint(journal, state)
fill(journal, state, 30, start=30)
_journal.checkpoint_fault = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
_journal.SNAPSHOT_CHUNK_BYTES = 300          # several chunks: the kill at "snapshot-chunk" is mid-file
checkpoint(journal, state)
print("not killed", flush=True)
"""


@pytest.mark.parametrize("step", journal_module.CHECKPOINT_STEPS)
def test_a_kill9_at_any_step_of_a_checkpoint_leaves_a_journal_that_opens_to_the_same_state(tmp_path, step):
    directory = tmp_path / "j"
    child = subprocess.run([sys.executable, "-c", CRASH_CHILD.format(tests=str(Path(__file__).parent), step=step,
                                                                     directory=str(directory))],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, (child.stdout, child.stderr)
    expected = {}
    fill(Journal(tmp_path / "expected"), expected, 60)
    journal = Journal(directory)
    assert state_of(journal) == expected and journal.last_seq == 60
    state = dict(expected)
    fill(journal, state, 5, start=60)                          # goes on writing, and checkpointing
    assert checkpoint(journal, state) == 65
    journal.close()
    assert not list(directory.glob("*.tmp"))
    reopened = Journal(directory)
    assert state_of(reopened) == state
    assert sorted(p.name for p in directory.iterdir() if p.suffix in (".gcj", ".gcs")) == [
        "journal.00000000000000000066.gcj", "snapshot.00000000000000000065.gcs"]
    reopened.close()


def test_a_damaged_snapshot_is_refused(tmp_path):
    journal, state = Journal(tmp_path), {}
    fill(journal, state, 20)
    checkpoint(journal, state)
    journal.close()
    path = next(tmp_path.glob("snapshot.*.gcs"))
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged|hash"):
        state_of(Journal(tmp_path))
