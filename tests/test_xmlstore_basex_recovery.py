"""BaseX backend: the journal is the record; BaseX a checked view rebuilt after crashes and damage."""
from __future__ import annotations

import os
import time

import pytest
from lxml import etree

from gridcredit.errors import StoreError
from store_fixtures import *  # noqa: F401,F403
from store_fixtures import kill9, open_from_spec, read_acks, spawn_worker
from test_xmlstore_conformance import check_pairs


@pytest.fixture
def spec(private_basex, tmp_path):
    return {"backend": "basex", "state_dir": str(tmp_path / "state"), "port": private_basex.port, "prefix": "gc_"}


def test_writer_killed_between_journal_and_basex_update(spec):
    child = spawn_worker(spec, "pairs-crash-after-journal")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == -9
    acked = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ack ")]
    assert len(acked) == 30
    with open_from_spec(spec) as store:
        assert check_pairs(store, acked) == 31          # journaled, not acknowledged, but committed
        assert any("behind the journal" in line for line in store.recovery_log)
        assert all(entry["ok"] for entry in store.check().values())


def test_another_process_repairs_what_a_dead_writer_left(spec):
    with open_from_spec(spec) as store:
        store.put("other", "w", b"<w/>")
        child = spawn_worker(spec, "pairs-crash-after-journal")
        child.communicate(timeout=60)
        # this store was open all along: its next transaction sees the foreign frame and repairs
        store.put("other", "x", b"<x/>")
        assert check_pairs(store, list(range(1, 31))) == 31
        assert all(entry["ok"] for entry in store.check().values())


def test_kill9_of_basex_server_during_writes(private_basex, spec):
    for round_number in range(2):
        child = spawn_worker(spec, "pairs", "2000")
        acked = read_acks(child, 40, timeout_s=60)
        private_basex.kill()                      # kill -9 of the server mid-stream
        time.sleep(0.3)
        kill9(child)
        acked += [int(line.split()[1]) for line in child.stdout.read().splitlines() if line.startswith("ack ")]
        private_basex.start()
        with open_from_spec(spec) as store:
            check_pairs(store, acked)
            report = store.check()
            assert all(entry["ok"] for entry in report.values()), (report, store.recovery_log)


def corrupt_database(data_dir, name: str) -> list[str]:
    damaged = []
    for path in sorted((data_dir / name).iterdir()):
        if path.suffix == ".basex" and path.stat().st_size > 64:
            with open(path, "r+b") as handle:
                handle.truncate(path.stat().st_size // 3)
            damaged.append(path.name)
    return damaged


def test_damaged_database_files_are_detected_and_rebuilt(private_basex, spec):
    with open_from_spec(spec) as store:
        store.transact(lambda tx: [tx.put("usage", f"u{n:04d}", f"<u n='{n}'>{'y' * 50}</u>".encode())
                                   for n in range(300)])
        store.transact(lambda tx: tx.delete("usage", "u0007"))
        store.put("bank", "acct", b"<account balance='10'/>")
    private_basex.stop()
    assert corrupt_database(private_basex.data_dir, "gc_usage")
    private_basex.start()
    with open_from_spec(spec) as store:
        assert any("usage" in line and "rebuil" in line for line in store.recovery_log), store.recovery_log
        assert store.count("usage") == 299
        assert store.get("usage", "u0007") is None
        assert etree.fromstring(store.get("usage", "u0299").xml).get("n") == "299"
        assert store.put("usage", "u0007", b"<u/>") == 3            # version survived the rebuild
        assert all(entry["ok"] for entry in store.check().values())


def test_lagging_database_is_caught_up_at_open(private_basex, spec):
    with open_from_spec(spec) as store:
        for n in range(5):
            store.put("acc", f"a{n}", f"<a n='{n}'/>".encode())
    # make BaseX lag: delete a document behind our back (as if its update was lost)
    from gridcredit.xmlstore._basex_wire import Session
    session = Session("127.0.0.1", private_basex.port, "admin", "admin", timeout_s=5)
    session.query("db:delete('gc_acc', 'a3')")
    session.query("db:replace('gc_acc', 'a1', <a n='tampered'/>)")
    session.close()
    with open_from_spec(spec) as store:
        assert store.get("acc", "a3") is not None
        assert store.check()["acc"]["different"] == ["a1"]    # same version, other content: only check() sees it
        store.rebuild("acc")
        assert etree.fromstring(store.get("acc", "a1").xml).get("n") == "1"
        assert store.check()["acc"]["ok"]


def test_unknown_database_refused(private_basex, spec, tmp_path):
    with open_from_spec(spec) as store:
        store.put("acc", "a", b"<a/>")
    other = dict(spec, state_dir=str(tmp_path / "other-state"))
    with pytest.raises(StoreError, match="does not know"):
        open_from_spec(other)


def test_server_down_gives_store_error_not_a_hang(private_basex, spec):
    with open_from_spec(spec) as store:
        store.put("acc", "a", b"<a/>")
        private_basex.kill()
        started = time.monotonic()
        with pytest.raises(StoreError):
            store.get("acc", "a")
        with pytest.raises(StoreError):
            store.put("acc", "b", b"<b/>")
        assert time.monotonic() - started < 10
        private_basex.start()
        assert store.get("acc", "a").version == 1          # the store reconnects and re-verifies
        assert store.put("acc", "b", b"<b/>") == 1
