"""Open time of a BaseX store with a long journal, without and with a checkpoint (issue 10.10).

    python bench/checkpoint.py [--transactions 1000000] [--shape bank|updates] [--repeat 3]

1. The journal is written directly (``Journal.append``, one fsync at the end: committing a million
   transactions through the store costs a million fsyncs), in one of two shapes: ``bank`` — each
   transaction rewrites one of 1,000 account documents and adds a ledger entry of ~150 bytes
   (history and state grow together, like the bank's ledger); ``updates`` — each rewrites one of
   10,000 documents (history grows, the state does not).
2. A first writable open applies it to BaseX (verified and rebuilt from the journal); closed.
3. Measured ``--repeat`` times each (median): a read-only open (the journal into the mirror; BaseX
   asked for its applied number only) and a writable open (the same, and every BaseX database
   verified against the mirror — in the background once the quick checks pass: the time until
   ``wait_verified`` returns is printed too). Then ``checkpoint()``, and the same opens again. Printed: the
   times and the ratio without / with the checkpoint, measured in this run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import scratch_dir  # noqa: E402

from gridcredit.xmlstore._basex import BaseXStore  # noqa: E402
from gridcredit.xmlstore._journal import Journal  # noqa: E402
from gridcredit.xmlstore.basex_server import BaseXServer, free_port  # noqa: E402


def write_journal(directory: Path, transactions: int, shape: str) -> None:
    journal = Journal(directory)
    versions: dict[tuple[str, str], int] = {}
    with journal.lock():
        journal.read_new(repair=True)
        for n in range(1, transactions + 1):
            if shape == "bank":
                account = f"acct{n % 1000:04d}"
                writes = [("accounts", account, f'<account id="{account}" balance="{n}" seq="{n}"/>'),
                          ("ledger", f"t{n:09d}", f'<t seq="{n}" kind="charge" account="{account}" amount="{n % 97}" '
                                                  f'at="{1_700_000_000_000_000 + n}"/>')]
            else:
                doc = f"d{n % 10_000:05d}"
                writes = [("docs", doc, f'<d id="{doc}" value="{n}">{"v" * 100}</d>')]
            frame = []
            for collection, doc_id, xml in writes:
                version = versions[(collection, doc_id)] = versions.get((collection, doc_id), 0) + 1
                frame.append((collection, doc_id, version, xml))
            journal.append(n, frame, sync=False)
        journal.sync()
    journal.close()


def open_time(directory: Path, port: int, *, read_only: bool) -> tuple[float, float]:
    """Seconds until the open returns, and until BaseX is verified (a writable open verifies in
    the background: queries wait for it)."""
    started = time.perf_counter()
    store = BaseXStore(directory, port=port, timeout_s=600, read_only=read_only)
    elapsed = time.perf_counter() - started
    if not read_only and hasattr(store, "wait_verified"):
        store.wait_verified()
    verified = time.perf_counter() - started
    store.close()
    return elapsed, verified


def measure(directory: Path, port: int, repeat: int) -> tuple[float, float, float]:
    reads = [open_time(directory, port, read_only=True)[0] for _ in range(repeat)]
    writes = [open_time(directory, port, read_only=False) for _ in range(repeat)]
    return (statistics.median(reads), statistics.median(w[0] for w in writes),
            statistics.median(w[1] for w in writes))


def journal_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".gcj", ".gcs"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--shape", choices=["bank", "updates"], default="bank")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    BaseXStore.checkpoint_bytes_min = 1 << 62    # no automatic checkpoint: this run makes its own, measured
    root = scratch_dir("gridcredit-bench-checkpoint-")
    server = BaseXServer(root / "basex", port=free_port(), heap_mb=2048).start()
    try:
        directory = root / "journal"
        started = time.perf_counter()
        write_journal(directory, args.transactions, args.shape)
        print(f"{args.transactions:,} transactions ({args.shape}) written to the journal in "
              f"{time.perf_counter() - started:.1f} s ({journal_bytes(directory) / 1e6:.0f} MB)", flush=True)
        started = time.perf_counter()
        store = BaseXStore(directory, port=server.port, timeout_s=600)
        documents = sum(len(entries) for entries in store._state.values())
        store.close()
        print(f"first open (BaseX filled from the journal, {documents:,} documents): "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        without = measure(directory, server.port, args.repeat)
        print(f"without a checkpoint: read-only open {without[0]:.2f} s, writable open {without[1]:.2f} s "
              f"(BaseX verified {without[2]:.2f} s after the open began)", flush=True)
        store = BaseXStore(directory, port=server.port, timeout_s=600)
        started = time.perf_counter()
        seq = store.checkpoint()
        checkpoint_s = time.perf_counter() - started
        store.close()
        print(f"checkpoint at transaction {seq:,}: {checkpoint_s:.1f} s; journal and snapshot now "
              f"{journal_bytes(directory) / 1e6:.0f} MB", flush=True)
        with_ = measure(directory, server.port, args.repeat)
        print(f"with the checkpoint: read-only open {with_[0]:.2f} s, writable open {with_[1]:.2f} s "
              f"(BaseX verified {with_[2]:.2f} s after the open began)", flush=True)
        print(f"open time without / with the checkpoint: read-only {without[0] / with_[0]:.1f}x, "
              f"writable {without[1] / with_[1]:.1f}x (median of {args.repeat})")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
