"""What ``serve`` does once before it forks its workers (server/host.py prepare_state)."""
from __future__ import annotations

import gc
import os
from pathlib import Path

from gridcredit.config import Config
from gridcredit.server import registry
from gridcredit.server.host import prepare_state, replay_cache_path


def open_files() -> set[str]:
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return names


def test_the_workers_inherit_no_replay_cache_connection(tmp_path):
    """The replay cache made before the fork is closed: an SQLite connection carried into the workers
    left its descriptors there, and the BaseX store's journal, opened next, answered 'disk I/O error'
    through them (seen in bench/bank.py). The collector is off, as between serve's start and its fork."""
    config = registry.complete(Config(state_dir=str(tmp_path / "state")))
    gc.disable()
    try:
        prepare_state(config)
        cache = Path(replay_cache_path(config))
        left_open = sorted(name for name in open_files() if name.startswith(str(cache)))
    finally:
        gc.enable()
    assert cache.exists() and left_open == []
