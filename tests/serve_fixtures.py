"""A `gridcredit serve` forked from the test with its log in a file, for tests that read what the supervisor
and its workers say (tests/test_serve_basex_*.py).

    server = multiprocessing.get_context("fork").Process(target=serve_logging_to, args=(config, files, log_path))
    server.start()
    log = wait_for_log(log_path, re.escape(SERVING), server, 120)
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

SERVING = "TEST: every worker is ready"


def serve_logging_to(config, files, log_path: Path) -> None:
    """The forked server: ``serve`` as ``gridcredit serve`` runs it, its log (every process's) in a file;
    logs SERVING when every worker is ready, and the process ends with serve's exit code."""
    from gridcredit.server.host import serve

    logging.basicConfig(filename=str(log_path), level=logging.INFO, force=True,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    code = 1
    try:
        code = serve(config, files, announce=lambda: logging.getLogger("test").info(SERVING))
    finally:
        logging.shutdown()
        os._exit(code)


def wait_for_log(log_path: Path, pattern: str, process, timeout_s: float) -> str:
    """The log once ``pattern`` is in it (fails at once if ``process`` ended, or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if re.search(pattern, log):
            return log
        assert process.is_alive(), log
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} not in the server's log:\n{log_path.read_text(errors='replace')[-5000:]}")
