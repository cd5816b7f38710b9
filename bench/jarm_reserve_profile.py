"""Where a JARM Reserve's time goes, per store (issue 13): the Lifecycle of bench/jarm_lifecycle.py's World
(a Bank host and the JARM's store of the same kind; the Bank call is a real signed CreateHold).

    python bench/jarm_reserve_profile.py [--reserves 40] [--stores embedded,basex]

Prints each store's Reserve p50/min/max over ``--reserves`` runs, then a cProfile (wall clock: waiting
shows) of as many more, sorted by cumulative time. Nothing is written to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import os
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import jarm_lifecycle  # noqa: E402
from common import scratch_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reserves", type=int, default=40)
    parser.add_argument("--stores", default="embedded,basex")
    parser.add_argument("--lines", type=int, default=40, help="profile lines printed per store")
    args = parser.parse_args()
    root = scratch_dir("gridcredit-bench-jarm-reserve-")
    logging.basicConfig(filename=str(root / "bench.log"), level=logging.WARNING)
    pki = jarm_lifecycle.make_test_pki(root / "pki", jarm_lifecycle.KeyPool("rsa", shared_size=2))
    import bank_fixtures
    bank_fixtures.WORKERS = 2
    print(f"load before: {', '.join(f'{value:.1f}' for value in os.getloadavg())}")
    for backend in args.stores.split(","):
        with contextlib.ExitStack() as stack:
            world = jarm_lifecycle.World(stack, root / backend, backend, pki, args.reserves)
            for number in range(1, 11):                                     # warm-up
                world.lifecycle.reserve(world.job(number))
            each = []
            for number in range(100, 100 + args.reserves):
                began = time.perf_counter()
                world.lifecycle.reserve(world.job(number))
                each.append(time.perf_counter() - began)
            each.sort()
            print(f"{backend}: Reserve p50 {1000 * each[len(each) // 2]:.1f} ms, min {1000 * each[0]:.1f}, max "
                  f"{1000 * each[-1]:.1f} ({args.reserves}; load {os.getloadavg()[0]:.1f})", flush=True)
            profile = cProfile.Profile()
            profile.enable()
            for number in range(100_000, 100_000 + args.reserves):
                world.lifecycle.reserve(world.job(number))
            profile.disable()
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.lines)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
