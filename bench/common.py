"""Shared by the benchmarks: recording results in BENCHMARKS.md, one section per benchmark."""
from __future__ import annotations

import datetime
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nMeasured on the project's own machines (2 cores, shared and noisy): compare the ratios "
          "within one run rather than absolute figures across runs. Each section names the command that made it.\n")


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
