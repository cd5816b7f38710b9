"""gridcredit/outbox.py: items kept durably, sent in batches, removed only once answered.

The receiver here is a file the deliver function appends to (what it "took"); a sender killed -9
mid-send is a real subprocess. The LUTS spool's own tests (test_luts_spool.py) run the same
mechanism with usage records.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from gridcredit.outbox import (ALONE, Batcher, DeliveryStopped, Item, Outbox, OutboxBusy, OutboxError, OutboxFull,
                               Part, Settled, Unreadable)


class Receiver:
    """Takes batches; answers "ok" per part, or what ``answers`` says for a part's data."""

    def __init__(self) -> None:
        self.batches: list[tuple[object, list[bytes]]] = []
        self.answers: dict[bytes, str] = {}
        self.down_from: int | None = None           # batches from this number (1-based) fail

    def deliver(self, key, parts: list[Part]) -> list[str]:
        if self.down_from is not None and len(self.batches) + 1 >= self.down_from:
            raise DeliveryStopped("cannot reach the receiver: connection refused")
        self.batches.append((key, [part.data for part in parts]))
        return [self.answers.get(part.data, "ok") for part in parts]


def batcher(receiver: Receiver, **options) -> Batcher:
    return Batcher(receiver.deliver, **{"batch_parts": 3, "batch_bytes_max": 1000, **options})


def test_add_is_durable_ordered_and_counted(tmp_path):
    outbox = Outbox(tmp_path / "out")
    paths = [outbox.add(f"item {n}".encode()) for n in range(5)]
    assert outbox.pending() == paths and all(path.suffix == ".item" for path in paths)
    assert [path.read_bytes() for path in paths] == [f"item {n}".encode() for n in range(5)]
    assert outbox.usage() == (5, 30) and os.listdir(outbox.tmp_dir) == []
    assert [item.data for item in outbox.items(paths)] == [f"item {n}".encode() for n in range(5)]


def test_a_full_outbox_refuses_with_its_limits(tmp_path):
    outbox = Outbox(tmp_path / "out", items_max=2)
    outbox.add(b"a")
    outbox.add(b"b")
    with pytest.raises(OutboxFull, match=r"the outbox .* is full \(2 items, 2 bytes; limits 2 items, .*"
                                         r"send it before adding more"):
        outbox.add(b"c")
    outbox = Outbox(tmp_path / "out2", bytes_max=10)
    outbox.add(b"12345")
    with pytest.raises(OutboxFull, match=r"\(1 items, 5 bytes; limits 100,000 items, 10 bytes\)"):
        outbox.add(b"123456")
    assert len(outbox.pending()) == 1


def test_drain_sends_in_batches_and_removes_what_was_answered(tmp_path):
    outbox = Outbox(tmp_path / "out")
    for n in range(7):
        outbox.add(b"x%d" % n)
    receiver = Receiver()
    seen = []
    report = outbox.drain(batcher(receiver, on_settled=lambda batch: seen.extend(s.item.data for s in batch)))
    assert (report.items_done, report.items_left, report.stopped) == (7, 0, None)
    assert [parts for _, parts in receiver.batches] == [[b"x0", b"x1", b"x2"], [b"x3", b"x4", b"x5"], [b"x6"]]
    assert seen == [b"x%d" % n for n in range(7)] and outbox.pending() == []


def test_batches_are_bounded_by_bytes_and_split_by_key(tmp_path):
    outbox = Outbox(tmp_path / "out")
    for data in (b"a" * 400, b"b" * 400, b"c" * 400, b"big", b"d", b"e"):
        outbox.add(data)

    def split(item: Item) -> list[Part]:
        if item.data == b"big":
            return [Part(b"big", ALONE)]
        return [Part(item.data, "letters")]

    receiver = Receiver()
    report = outbox.drain(batcher(receiver, split=split))
    assert report.items_done == 6
    assert [(key, [len(data) for data in parts]) for key, parts in receiver.batches] == [
        ("letters", [400, 400]), ("letters", [400]), (ALONE, [3]), ("letters", [1, 1])]


def test_an_item_of_several_parts_is_removed_once_all_are_answered(tmp_path):
    """Parts of one item may go in several batches; the item goes when the last one is answered,
    and a part answered before sending is not sent."""
    outbox = Outbox(tmp_path / "out")
    outbox.add(b"1,2,3,4,5")
    outbox.add(b"6,bad,7")

    def split(item: Item) -> list[Part]:
        return [Part(value, answer="invalid" if value == b"bad" else None) for value in item.data.split(b",")]

    receiver = Receiver()
    receiver.down_from = 3                            # batches: [1,2,3], [4,5,6], then down
    report = outbox.drain(batcher(receiver, split=split))
    assert report.items_done == 1 and report.items_left == 1 and "connection refused" in report.stopped
    settled: list[Settled] = []
    receiver.down_from = None
    report = outbox.drain(batcher(receiver, split=split, on_settled=settled.extend))
    assert report.items_done == 1 and report.items_left == 0
    assert [parts for _, parts in receiver.batches] == [[b"1", b"2", b"3"], [b"4", b"5", b"6"], [b"6", b"7"]]
    assert settled[0].answers == ("ok", "invalid", "ok")


def test_an_outage_keeps_everything_not_answered_and_the_next_drain_resumes(tmp_path):
    outbox = Outbox(tmp_path / "out")
    for n in range(10):
        outbox.add(b"%d" % n)
    receiver = Receiver()
    receiver.down_from = 3
    report = outbox.drain(batcher(receiver))
    assert report.items_done == 6 and report.items_left == 4 and report.stopped
    assert [path.read_bytes() for path in outbox.pending()] == [b"6", b"7", b"8", b"9"]
    receiver.down_from = None
    report = outbox.drain(batcher(receiver))
    assert report.items_done == 4 and report.items_left == 0 and report.stopped is None
    assert [data for _, parts in receiver.batches for data in parts] == [b"%d" % n for n in range(10)]


def test_refusals_are_set_aside_before_the_item_goes(tmp_path):
    outbox = Outbox(tmp_path / "out")
    good, bad = outbox.add(b"good"), outbox.add(b"bad")
    receiver = Receiver()
    receiver.answers[b"bad"] = "refused"

    def rejected(settled: Settled) -> dict[str, bytes]:
        assert settled.item.context.exists()                 # written while the item is still there
        if settled.answers == ("refused",):
            return {settled.item.name + ".json": json.dumps({"answer": "refused"}).encode(),
                    settled.item.name: settled.item.data}
        return {}

    report = outbox.drain(batcher(receiver), rejected=rejected)
    assert report.items_done == 2 and outbox.pending() == []
    assert sorted(os.listdir(outbox.rejected_dir)) == [bad.name, bad.name + ".json"]
    assert (outbox.rejected_dir / bad.name).read_bytes() == b"bad" and not good.exists()


def test_an_unreadable_item_is_settled_with_its_error(tmp_path):
    outbox = Outbox(tmp_path / "out")
    outbox.add(b"fine")
    outbox.add(b"garbled")

    def split(item: Item) -> list[Part]:
        if item.data == b"garbled":
            raise Unreadable("the item cannot be read: garbled")
        return [Part(item.data)]

    settled: list[Settled] = []
    report = outbox.drain(batcher(Receiver(), split=split, on_settled=settled.extend))
    assert report.items_done == 2
    assert [(s.item.data, s.error) for s in settled] == [(b"fine", None),
                                                         (b"garbled", "the item cannot be read: garbled")]


def test_a_receiver_that_answers_the_wrong_number_stops_the_drain(tmp_path):
    outbox = Outbox(tmp_path / "out")
    outbox.add(b"a")
    outbox.add(b"b")
    report = outbox.drain(Batcher(lambda key, parts: ["ok"], batch_parts=5, batch_bytes_max=100))
    assert "answered 1 results for a batch of 2" in report.stopped and report.items_left == 2


def test_one_sender_at_a_time(tmp_path):
    outbox = Outbox(tmp_path / "out")
    outbox.add(b"a")
    with outbox.locked():
        with pytest.raises(OutboxBusy, match=f"another sender \\(pid {os.getpid()}\\) is sending the outbox"):
            Outbox(tmp_path / "out").drain(batcher(Receiver()))
    assert Outbox(tmp_path / "out").drain(batcher(Receiver())).items_done == 1


def test_stale_temporary_files_are_removed_by_a_drain(tmp_path):
    outbox = Outbox(tmp_path / "out")
    stale, fresh = outbox.tmp_dir / "a.tmp", outbox.tmp_dir / "b.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    outbox.drain(batcher(Receiver()))
    assert not stale.exists() and fresh.exists()


def test_a_directory_that_cannot_be_used_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutboxError, match=r"cannot use .*/file/out as the outbox directory: Not a directory"):
        Outbox(tmp_path / "file" / "out")


def test_bad_batch_limits_are_refused():
    with pytest.raises(ValueError, match="batch_parts must be positive"):
        Batcher(Receiver().deliver, batch_parts=0, batch_bytes_max=10)
    with pytest.raises(ValueError, match="batch_bytes_max must be positive"):
        Batcher(Receiver().deliver, batch_parts=1, batch_bytes_max=0)


# -- kill -9 of a real sender ---------------------------------------------------------------------------

# Drains the outbox into RECEIVED (one line per part taken, fsynced: the receiver's own record),
# batches of 5. Prints "batch N" after the receiver took batch N and before the answer comes
# back; with HOLD, sleeps there on batch HOLD (the test kills it in that window).
SENDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from gridcredit.outbox import Batcher, Outbox
    directory, received, hold = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    batches = 0

    def deliver(key, parts):
        global batches
        batches += 1
        with open(received, "ab") as log:
            log.write(b"".join(part.data + b"\\n" for part in parts))
            log.flush()
            os.fsync(log.fileno())
        print(f"batch {batches}", flush=True)
        if batches == hold:
            time.sleep(60)
        time.sleep(0.01)
        return ["ok"] * len(parts)

    report = Outbox(directory).drain(Batcher(deliver, batch_parts=5, batch_bytes_max=10_000))
    print(f"done {report.items_done} left {report.items_left}", flush=True)
""")


def start_sender(directory: Path, received: Path, hold: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SENDER, str(directory), str(received), str(hold)],
                            stdout=subprocess.PIPE, text=True)


def taken(received: Path) -> Counter:
    return Counter(received.read_bytes().split()) if received.exists() else Counter()


def test_a_sender_killed_mid_send_loses_nothing_and_repeats_only_what_was_in_flight(tmp_path):
    directory, received = tmp_path / "out", tmp_path / "received"
    outbox = Outbox(directory)
    items = [b"item-%03d" % n for n in range(100)]
    for item in items:
        outbox.add(item)

    # killed while batch 4 is taken by the receiver but not yet answered
    sender = start_sender(directory, received, hold=4)
    assert [sender.stdout.readline().strip() for _ in range(4)] == [f"batch {n}" for n in range(1, 5)]
    sender.send_signal(signal.SIGKILL)
    sender.wait()
    assert sum(taken(received).values()) == 20 and len(outbox.pending()) == 85    # batches 1-3 removed
    # killed at moments the test does not choose
    for delay_s in (0.05, 0.12, 0.2):
        sender = start_sender(directory, received)
        sender.stdout.readline()
        time.sleep(delay_s)
        sender.send_signal(signal.SIGKILL)
        sender.wait()
    left = len(outbox.pending())
    # the last run: nobody holds the dead senders' lock; everything left goes
    sender = start_sender(directory, received)
    output = sender.communicate(timeout=120)[0].split("\n")
    assert output[-2] == f"done {left} left 0", output[-3:]
    assert outbox.pending() == []
    counts = taken(received)
    assert set(counts) == set(items)                          # nothing lost
    repeated = sum(counts.values()) - len(items)
    assert 5 <= repeated <= 5 * 4, counts                     # at most the batch in flight at each kill
    assert counts[b"item-015"] == 2                           # the one held at the first kill
