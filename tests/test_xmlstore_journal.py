"""The BaseX backend's journal framing, and the store's public surface."""
from __future__ import annotations

import os

import pytest

import gridcredit.xmlstore as xmlstore
from gridcredit.config import StoreConfig
from gridcredit.errors import StoreError
from gridcredit.xmlstore._embedded import EmbeddedStore
from gridcredit.xmlstore._journal import Journal


def test_public_names_are_pinned():
    assert sorted(xmlstore.__all__) == sorted(["open_store", "AttributeIndex", "Document", "QueryPage", "StoreLimits",
                                               "Transaction", "XmlStore", "DEFAULT_LIMITS"])


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
    with pytest.raises(Exception):
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
