"""gridcredit/singleton.py: a task runs in one process of the host; kill -9 of that process hands it on.

Real processes (subprocesses of this test) contend for the lock, as a host's workers do.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from gridcredit.singleton import SingletonLock, run_holding, run_rounds

# A worker: runs rounds once per host, each round appending "<pid>\n" to a shared log. With
# "fork", the holder first forks a child that outlives it (sleeping), as a worker may.
WORKER = textwrap.dedent("""
    import os, sys, threading, time
    from pathlib import Path
    from gridcredit.singleton import SingletonLock, run_holding, run_rounds
    lock_path, log_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    lock, stop = SingletonLock(lock_path), threading.Event()

    def note():
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()}\\n")

    def work():
        if mode == "fork" and not getattr(work, "forked", False):
            work.forked = True
            if os.fork() == 0:                 # a child of the holder, outliving it
                time.sleep(60)
                os._exit(0)
        note()
        return False

    def loops():
        while not stop.wait(0.05):
            note()

    print("started", flush=True)
    if mode == "holding":
        run_holding(lock, stop, retry_s=0.05, run=loops)
    else:
        run_rounds(stop, interval_s=0.05, work=work, lock=lock)
""")


def start_worker(lock_path: Path, log_path: Path, mode: str) -> subprocess.Popen:
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(lock_path), str(log_path), mode],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert worker.stdout.readline().strip() == "started"
    return worker


def pids_logged(log_path: Path) -> list[int]:
    try:
        return [int(line) for line in log_path.read_text().split()]
    except FileNotFoundError:
        return []


def wait_until(condition, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def run_takeover(tmp_path: Path, mode: str) -> None:
    lock_path, log_path = tmp_path / "state" / "task.lock", tmp_path / "rounds.log"
    workers = [start_worker(lock_path, log_path, mode) for _ in range(3)]
    try:
        first = wait_until(lambda: set(pids_logged(log_path)), "a first round")
        assert len(first) == 1                                  # one worker of three does the work
        (holder,) = first
        assert SingletonLock(lock_path).holder() == f"pid {holder}"
        time.sleep(0.5)
        assert set(pids_logged(log_path)) == {holder}           # still only that one
        os.kill(holder, signal.SIGKILL)
        wait_until(lambda: set(pids_logged(log_path)) - {holder}, "another worker to take over")
        after = len(pids_logged(log_path))
        time.sleep(0.5)
        later = pids_logged(log_path)[after:]
        assert len(set(later)) == 1 and holder not in later     # again exactly one, and another
    finally:
        for worker in workers:
            with_group = worker.pid
            try:
                os.killpg(with_group, signal.SIGKILL)           # the worker and any child it forked
            except ProcessLookupError:
                pass
            worker.wait()


def test_rounds_run_in_one_process_and_another_takes_over_after_kill_9(tmp_path):
    run_takeover(tmp_path, "rounds")


def test_a_looping_task_runs_in_one_process_and_another_takes_over_after_kill_9(tmp_path):
    run_takeover(tmp_path, "holding")


def test_a_child_forked_by_the_holder_does_not_keep_the_lock(tmp_path):
    """A worker that forks (and whose child outlives it) still hands the task on when it dies."""
    run_takeover(tmp_path, "fork")


def test_the_lock_in_one_process(tmp_path):
    path = tmp_path / "a" / "b.lock"
    first, second = SingletonLock(path), SingletonLock(path)
    assert first.try_acquire() and first.try_acquire() and first.held      # made with its folder; again: held
    assert not second.try_acquire() and not second.acquire(wait_s=0.3)
    assert second.holder() == f"pid {os.getpid()}"
    first.release()
    assert not first.held and second.acquire(wait_s=1.0)
    second.release()


def test_run_rounds_repeats_at_once_while_there_is_more_and_survives_a_failed_round(tmp_path, caplog):
    stop = threading.Event()
    calls = []

    def work() -> bool:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise OSError("the disk went away")
        if len(calls) == 5:
            stop.set()
        return len(calls) < 4              # rounds 1 (more), 2 (fails), 3 (more), 4, 5

    lock = SingletonLock(tmp_path / "rounds.lock")
    started = time.monotonic()
    run_rounds(stop, interval_s=0.2, work=work, name="test round", lock=lock)
    assert len(calls) == 5 and not lock.held
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:])]
    assert gaps[0] < 0.15 and gaps[1] >= 0.2 and gaps[2] < 0.15 and gaps[3] >= 0.2, gaps
    assert time.monotonic() - started < 5
    assert [record.getMessage() for record in caplog.records] == ["test round failed; retrying in 0.2 s"]


def test_run_holding_gives_up_waiting_when_stopped(tmp_path):
    path = tmp_path / "task.lock"
    other = SingletonLock(path)
    assert other.try_acquire()
    stop = threading.Event()
    ran = []
    thread = threading.Thread(target=run_holding, args=(SingletonLock(path), stop),
                              kwargs=dict(retry_s=0.05, run=lambda: ran.append(1)))
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and ran == []
    other.release()
