"""Open time of a BaseX store with a long journal, without and with a checkpoint (issue 10.10).

    python bench/checkpoint.py [--transactions 1000000] [--shape bank|updates] [--repeat 3] [--serve]
                               [--data DIR [--serve-only]]

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
4. ``--serve``: then ``--repeat`` starts of ``gridcredit serve`` (``--workers``, default 2; this Python's
   gridcredit, so an older checkout's venv measures the older code) on the checkpointed store: seconds
   until it says "serving on" (every worker accepts), and until its log says BaseX is verified against
   the journal (before or after that). A first start that makes the development PKI is not timed.

``--data DIR`` keeps the journal and BaseX's files in DIR (made there by the first run, reused by the
next: ``--serve-only`` then times the serve starts alone), so that two checkouts are compared on the
same store.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
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


def serve_start(root: Path, journal: Path, basex_port: int, workers: int, number: int) -> tuple[float, float]:
    """Seconds from starting ``gridcredit serve`` until it says "serving on", and until its log
    says BaseX is verified against the journal; then stops it (SIGTERM)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GRIDCREDIT_", "X509_"))}
    env.update(GRIDCREDIT_STATE_DIR=str(root / "state"), GRIDCREDIT_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
               GRIDCREDIT_SERVER_PORT=str(free_port()), GRIDCREDIT_SERVER_WORKERS=str(workers),
               GRIDCREDIT_STORE_BACKEND="basex", GRIDCREDIT_STORE_PATH=str(journal),
               GRIDCREDIT_STORE_BASEX_PORT=str(basex_port), GRIDCREDIT_STORE_TIMEOUT_S="600")
    log_path = root / f"serve-{number}.log"
    serving = verified = None
    with log_path.open("wb") as log:
        started = time.perf_counter()
        command = [str(Path(sys.executable).parent / "gridcredit"), "serve"]    # (this venv's; the CLI's module moved)
        process = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while verified is None or serving is None:
            text = log_path.read_text(errors="replace")
            now = time.perf_counter() - started
            if serving is None and "gridcredit serving on" in text:
                serving = now
            if verified is None and re.search(r"verified \d+ documents of BaseX against the journal", text):
                verified = now
            if process.poll() is not None:
                raise SystemExit(f"gridcredit serve ended with {process.returncode}:\n{text[-3000:]}")
            if now > 1800:
                raise SystemExit(f"gridcredit serve not serving and verified within 1800 s:\n{text[-3000:]}")
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    return serving, verified


def journal_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".gcj", ".gcs"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--shape", choices=["bank", "updates"], default="bank")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", action="store_true",
                        help="also time `gridcredit serve` starts on the checkpointed store")
    parser.add_argument("--workers", type=int, default=2, help="serve's workers (default %(default)s)")
    parser.add_argument("--data", help="keep the journal and BaseX's files in this folder (reused when there)")
    parser.add_argument("--serve-only", action="store_true",
                        help="with --data of an earlier run: time serve starts alone")
    args = parser.parse_args(argv)
    BaseXStore.checkpoint_bytes_min = 1 << 62    # no automatic checkpoint: this run makes its own, measured
    root = Path(args.data).resolve() if args.data else scratch_dir("gridcredit-bench-checkpoint-")
    server = BaseXServer(root / "basex", port=free_port(), heap_mb=2048).start()
    try:
        directory = root / "journal"
        if args.serve_only:
            if not directory.exists():
                raise SystemExit(f"--serve-only: no journal in {root} (make it with --data {root} --serve first)")
            measure_serve(root, directory, server.port, args.workers, args.repeat)
            return 0
        if directory.exists():
            raise SystemExit(f"{directory} exists: time serve starts on it with --serve-only, "
                             f"or give a new --data folder")
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
              f"writable {without[1] / with_[1]:.1f}x (median of {args.repeat})", flush=True)
        if args.serve:
            measure_serve(root, directory, server.port, args.workers, args.repeat)
    finally:
        server.stop()
    return 0


def measure_serve(root: Path, directory: Path, basex_port: int, workers: int, repeat: int) -> None:
    if not (root / "state" / "pki").exists():
        serve_start(root, directory, basex_port, workers, 0)      # makes the development PKI: not timed
    starts = [serve_start(root, directory, basex_port, workers, n) for n in range(1, repeat + 1)]
    load = os.getloadavg()
    print(f"gridcredit serve ({workers} workers, {sys.executable}): serving after "
          f"{statistics.median(s[0] for s in starts):.2f} s, BaseX verified after "
          f"{statistics.median(s[1] for s in starts):.2f} s (median of {repeat}: "
          f"{', '.join(f'{s[0]:.1f}/{s[1]:.1f}' for s in starts)}; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
