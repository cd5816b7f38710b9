"""Shared by the benchmarks: a scratch folder, and recording results in BENCHMARKS.md (one section each)."""
from __future__ import annotations

import atexit
import datetime
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nMeasured on the project's own machines (2 cores, shared and noisy): compare the ratios "
          "within one run rather than absolute figures across runs. Each section names the command that made it.\n")


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for one benchmark run, removed when the benchmark ends (a million usage
    records leave ~15 GB); set GRIDCREDIT_BENCH_KEEP=1 to keep it for a look afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if not os.environ.get("GRIDCREDIT_BENCH_KEEP"):
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def write_section(title: str, command: str, lines: list[str]) -> None:
    """Replace (or add) the section ``## title`` of BENCHMARKS.md with fresh results."""
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else HEADER
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"## {title}\n\nCommand: `{command}` — run {stamp} on {platform.machine()}, "
               f"Python {platform.python_version()}.\n\n" + "\n".join(lines) + "\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
