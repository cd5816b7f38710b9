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
    assert sorted(xmlstore.__all__) == sorted(["open_store", "Document", "QueryPage", "StoreLimits", "Transaction",
                                               "XmlStore", "DEFAULT_LIMITS"])


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
