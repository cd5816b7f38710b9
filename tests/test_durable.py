"""gridcredit/durable.py: atomic replacement, exclusive creation, directory fsync.

A file written is whole or absent, its name durable once the call returns (the directory is
fsynced: checked by recording which descriptors were fsynced — a power cut cannot be staged here);
processes racing to create one file, or killed (-9) while rewriting one, never leave a part of it.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gridcredit.durable import fsync_directory, write_atomically, write_exclusively


@pytest.fixture
def fsynced(monkeypatch):
    """(path of each fsynced descriptor, whether it was a directory), in order."""
    seen: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def record(descriptor):
        seen.append((os.readlink(f"/proc/self/fd/{descriptor}"), stat.S_ISDIR(os.fstat(descriptor).st_mode)))
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_write_atomically_replaces_the_file_and_syncs_file_then_directory(tmp_path, fsynced):
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["a.json"]                    # no temporary file left
    assert [is_directory for _, is_directory in fsynced] == [False, True]
    assert fsynced[1][0] == str(tmp_path)


def test_the_caller_may_sync_the_directory_once_for_many_files(tmp_path, fsynced):
    (tmp_path / "tmp").mkdir()
    for number in range(3):
        write_atomically(tmp_path / f"{number}.xml", b"x", tmp_dir=tmp_path / "tmp", sync_directory=False)
    assert not any(is_directory for _, is_directory in fsynced)
    fsync_directory(tmp_path)
    assert fsynced[-1] == (str(tmp_path), True)
    assert sorted(os.listdir(tmp_path)) == ["0.xml", "1.xml", "2.xml", "tmp"] and os.listdir(tmp_path / "tmp") == []


def test_mode_is_exact_and_the_default_follows_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        write_atomically(tmp_path / "public.pem", b"cert", mode=0o644)
        write_atomically(tmp_path / "private.pem", b"key", mode=0o600)
        write_atomically(tmp_path / "plain", b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "public.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o600     # 0o666 less the umask 0o077


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "tmp").mkdir()
    with pytest.raises(FileNotFoundError):        # the target's folder does not exist: the rename fails
        write_atomically(tmp_path / "missing" / "a", b"x", tmp_dir=tmp_path / "tmp")
    assert os.listdir(tmp_path / "tmp") == []
    with pytest.raises(IsADirectoryError):
        write_atomically(tmp_path / "tmp", b"x")
    assert sorted(os.listdir(tmp_path)) == ["tmp"]


def test_write_exclusively_never_replaces(tmp_path, fsynced):
    target = tmp_path / "key.pem"
    assert write_exclusively(target, b"first", mode=0o600)
    assert fsynced[-1] == (str(tmp_path), True)
    assert not write_exclusively(target, b"second", mode=0o600)
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["key.pem"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gridcredit.durable import write_exclusively
    target, me, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    while time.time() < start:
        pass
    won = write_exclusively(target, me.encode() * 200_000, mode=0o600)
    print("won" if won else "lost")
""")


def test_processes_racing_to_create_one_file_one_wins_and_no_reader_sees_a_part(tmp_path):
    """The ledger key's case: workers starting at once each try to create it."""
    target = tmp_path / "ledger-signing-key.pem"
    start = time.time() + 1.0
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(target), letter, str(start)],
                               stdout=subprocess.PIPE, text=True) for letter in "ABCDE"]
    seen = set()
    while any(racer.poll() is None for racer in racers):
        try:
            seen.add(len(target.read_bytes()))
        except FileNotFoundError:
            pass
    answers = [racer.communicate()[0].strip() for racer in racers]
    assert sorted(answers) == ["lost"] * 4 + ["won"]
    winner = "ABCDE"[answers.index("won")]
    assert target.read_bytes() == winner.encode() * 200_000
    assert seen <= {200_000}                                    # whole or absent, never empty or short
    assert os.listdir(tmp_path) == [target.name]


REWRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from gridcredit.durable import write_atomically
    target = Path(sys.argv[1])
    number = 0
    while True:
        number += 1
        write_atomically(target, (b"%09d" % number) * 100_000)
        if number == 3:
            print("writing", flush=True)
""")


def test_a_writer_killed_mid_write_leaves_the_last_whole_version(tmp_path):
    target = tmp_path / "state.json"
    for delay_s in (0.05, 0.13, 0.31):
        writer = subprocess.Popen([sys.executable, "-c", REWRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(delay_s)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        data = target.read_bytes()
        assert len(data) == 900_000 and data == data[:9] * 100_000
        for leftover in Path(tmp_path).glob(".state.json.*.tmp"):      # at most the one being written
            leftover.unlink()


KEY_MAKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gridcredit.services.bank import bank

    real_generate = bank.Ed25519PrivateKey.generate

    class Slow:                       # the worker is killed while it makes the key
        @staticmethod
        def generate():
            print("generating", flush=True)
            time.sleep(60)
            return real_generate()

    bank.Ed25519PrivateKey = Slow
    bank.LedgerKey.load_or_create(Path(sys.argv[1]))
""")


def test_a_worker_killed_while_making_the_ledger_key_leaves_none_and_the_next_makes_it(tmp_path):
    """The ledger key was created empty (O_EXCL) and then written: a worker killed in between left an
    empty key, and every later start failed with 'the ledger signing key … is empty'."""
    from gridcredit.services.bank.bank import LedgerKey

    path = tmp_path / "bank" / "ledger-signing-key.pem"
    maker = subprocess.Popen([sys.executable, "-c", KEY_MAKER, str(path)], stdout=subprocess.PIPE, text=True)
    assert maker.stdout.readline().strip() == "generating"
    maker.send_signal(signal.SIGKILL)
    maker.wait()
    assert not path.exists()
    key = LedgerKey.load_or_create(path)
    assert LedgerKey.load_or_create(path).public_pem() == key.public_pem()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
