"""XPath query cost at the store: one user's month, with and without an XPath, on both stores.

    python bench/xpath_query.py [--records 5000] [--users 50] [--repeat 50] [--stores embedded,basex]

The store alone (no HTTP, no WS-Security): ``--records`` LUTS-like documents in one collection
with an attribute index on ``user``; timed, median / p95 of ``--repeat``: the user's documents
(``where``), the same narrowed by ``n:Usage/n:wall_us > $w`` (the embedded store evaluates it in
its sandbox process), and the count of those. Each is asked once, untimed, first.
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

from gridcredit.config import StoreConfig
from gridcredit.xmlstore import AttributeIndex, open_store
from gridcredit.xmlstore.basex_server import BaseXServer, free_port

NS = "urn:gridcredit:luts:1"


def document(number: int, users: int) -> bytes:
    return (f'<n:Stored xmlns:n="{NS}" user="u{number % users}" vo="vo{number % 20}" month="202503">'
            f'<n:Usage><n:wall_us>{(60 + number % 7200) * 1_000_000}</n:wall_us>'
            f'<n:cpu_us>{(30 + number % 3600) * 1_000_000}</n:cpu_us></n:Usage>'
            f'<n:Ids><n:rid>rec-{number}</n:rid><n:job>gsiftp://bench/jobs/{number}</n:job></n:Ids>'
            f'<n:Where><n:site>site{number % 5}</n:site><n:machine>ce{number % 10}.example.org</n:machine>'
            f'<n:queue>q{number % 3}</n:queue></n:Where></n:Stored>').encode()


def timed(call, repeat: int) -> tuple[float, float]:
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(1000 * (time.perf_counter() - started))
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="embedded,basex")
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    root = scratch_dir("gridcredit-bench-xpath-")
    print(f"{args.records} documents, {args.users} users ({args.records // args.users} documents a user), "
          f"median / p95 of {args.repeat}")
    print("| store | user's documents (where) | with an XPath | count with an XPath |")
    print("|---|---|---|---|")
    for name in args.stores.split(","):
        server = None
        if name == "basex":
            server = BaseXServer(root / "basex", port=free_port(), heap_mb=1024).start()
            config = StoreConfig(backend="basex", basex_port=server.port, timeout_s=60)
        else:
            config = StoreConfig(backend="embedded")
        store = open_store(config, root / name, indexes=[AttributeIndex("ur_", ("user",))])
        try:
            for start in range(0, args.records, 1000):
                store.transact(lambda tx, start=start: [tx.put("ur_202503", f"r{n:07d}", document(n, args.users))
                                                        for n in range(start, min(args.records, start + 1000))])
            where, namespaces = {"user": "u7"}, {"n": NS}
            expected = len(range(7, args.records, args.users))
            assert len(store.query("ur_202503", None, where=where, limit=1000).documents) == expected
            results = [
                timed(lambda: store.query("ur_202503", None, where=where, limit=1000), args.repeat),
                timed(lambda: store.query("ur_202503", "n:Usage/n:wall_us > $w", {"w": 0}, where=where,
                                          namespaces=namespaces, limit=1000), args.repeat),
                timed(lambda: store.count("ur_202503", "n:Usage/n:wall_us > $w", {"w": 0}, where=where,
                                          namespaces=namespaces), args.repeat),
            ]
        finally:
            store.close()
            if server is not None:
                server.stop()
        print(f"| {name} | " + " | ".join(f"{p50:.1f} / {p95:.1f} ms" for p50, p95 in results) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
