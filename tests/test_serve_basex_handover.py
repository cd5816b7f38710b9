"""``gridcredit serve`` on a BaseX store (issue 10.10): the mirror of the journal (every document,
a million of them in seconds per build) is built once per start — by the supervisor's open in
prepare_state — and the workers forked next take it (``XmlStore.hand_over``) instead of each
reading the journal again."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import signal
from pathlib import Path

import pytest

from gridcredit.client import ServiceClient
from gridcredit.config import StoreConfig
from gridcredit.xmlstore import open_store
from gridcredit.xmlstore._basex import BaseXStore
from gridcredit.xmlstore.basex_server import free_port
from security_fixtures import host_config
from serve_fixtures import SERVING, serve_logging_to, wait_for_log
from store_fixtures import basex_server  # noqa: F401 — a fixture

pytestmark = [pytest.mark.basex]



def _fill(store_config: StoreConfig, state_path: Path) -> None:
    code = 1
    try:
        store = open_store(store_config, state_path)
        store.transact(lambda tx: [tx.put("big", f"d{n:05d}", f"<d n='{n}'/>".encode()) for n in range(200)])
        code = 0 if store.wait_verified(30) else 1
        store.close()
    finally:
        os._exit(code)


def _serve_counting_builds(config, files, log_path: Path, builds_path: Path) -> None:
    """``serve_logging_to``, writing the pid of every open that builds its mirror from the journal to
    ``builds_path`` (the real reading runs: counted, not replaced)."""
    real = BaseXStore._absorb_snapshot

    def counted(self):
        with open(builds_path, "a") as builds:
            builds.write(f"{os.getpid()}\n")
        return real(self)

    BaseXStore._absorb_snapshot = counted
    serve_logging_to(config, files, log_path)


def test_serve_builds_the_mirror_once_and_its_workers_take_it(pki, basex_server, tmp_path):
    from gridcredit.server.host import HostFiles

    base = host_config(tmp_path / "state", free_port(), host_cert=pki.host_cert, host_key=pki.host_key,
                       trust_dir=pki.trust_dir)
    config = dataclasses.replace(base, server=dataclasses.replace(base.server, workers=2),
                                 store=StoreConfig(backend="basex", basex_port=basex_server.port,
                                                   path=str(tmp_path / "journal")))
    filler = multiprocessing.get_context("fork").Process(target=_fill, args=(config.store, config.state_path))
    filler.start()
    filler.join(120)
    assert filler.exitcode == 0
    files = HostFiles(Path(pki.host_cert), Path(pki.host_key), Path(pki.trust_dir))
    log_path, builds_path = tmp_path / "serve.log", tmp_path / "builds"
    server = multiprocessing.get_context("fork").Process(target=_serve_counting_builds,
                                                         args=(config, files, log_path, builds_path))
    server.start()
    try:
        log = wait_for_log(log_path, re.escape(SERVING), server, 120)
        alice = pki.user("Alice")
        answer = ServiceClient(f"https://localhost:{config.server.port}", "bank", credential=alice.credential,
                               trust_dir=pki.trust_dir, timeout_s=10).call("WhoAmI")
        assert answer.dn == alice.dn
        assert builds_path.read_text().split() == [str(server.pid)], log      # built once: by the supervisor
        took = re.findall(r" (\d+) INFO \S+: xmlstore/basex: took the mirror of the journal up to transaction \d+ "
                          r"\(200 documents\) from the parent process (\d+)", log)
        assert len(took) == 2 and {parent for _pid, parent in took} == {str(server.pid)}, log   # each worker took it
        assert str(server.pid) not in {pid for pid, _parent in took}, log
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.join(30)
        if server.is_alive():
            server.kill()
            server.join(5)
    assert server.exitcode == 0, log_path.read_text(errors="replace")[-3000:]
