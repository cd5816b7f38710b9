"""``gridcredit serve`` on a BaseX store (issue 10.10): a start does not wait for the full
verification of BaseX against the journal. prepare_state opens the store (the quick checks) and
leaves the verification to the background; the workers answer while one of them verifies, and
the other adopts its result: one full verification per start, not one per process."""
from __future__ import annotations

import dataclasses
import fcntl
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
from store_fixtures import private_basex  # noqa: F401 — a fixture

pytestmark = [pytest.mark.basex]

DOCUMENTS = 2000


def _fill(store_config: StoreConfig, state_path: Path) -> None:
    code = 1
    try:
        store = open_store(store_config, state_path)
        store.transact(lambda tx: [tx.put("big", f"d{n:05d}", f"<d n='{n}'/>".encode()) for n in range(DOCUMENTS)])
        code = 0 if store.wait_verified(30) else 1
        store.close()
    finally:
        os._exit(code)


def test_serve_answers_while_one_worker_verifies_basex_and_the_other_adopts_it(pki, private_basex, tmp_path,
                                                                               monkeypatch):
    from gridcredit.server.host import HostFiles

    # small steps (a real setting of the store, inherited by serve's processes through the fork), so
    # that the verification is not over before the test holds it up below
    monkeypatch.setattr(BaseXStore, "verify_chunk_docs", 20)
    base = host_config(tmp_path / "state", free_port(), host_cert=pki.host_cert, host_key=pki.host_key,
                       trust_dir=pki.trust_dir)
    config = dataclasses.replace(base, server=dataclasses.replace(base.server, workers=2),
                                 store=StoreConfig(backend="basex", basex_port=private_basex.port))
    filler = multiprocessing.get_context("fork").Process(target=_fill, args=(config.store, config.state_path))
    filler.start()             # (in a process of its own: a process forked from one that verified BaseX
    filler.join(120)           # moments ago trusts that verification, see _VERIFIED)
    assert filler.exitcode == 0
    files = HostFiles(Path(pki.host_cert), Path(pki.host_key), Path(pki.trust_dir))
    log_path = tmp_path / "serve.log"
    server = multiprocessing.get_context("fork").Process(target=serve_logging_to, args=(config, files, log_path))
    server.start()
    try:
        # both workers have opened the store (the supervisor's open came first) ...
        wait_for_log(log_path, r"(?s)(forked from.*){2}", server, 120)
        # ... now every verification step waits: the journal's applier lock is held here
        with open(config.state_path / "basex-journal" / "apply.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            log = wait_for_log(log_path, re.escape(SERVING), server, 120)
            assert not re.search(r"verified \d+ documents of BaseX", log), log    # serving, BaseX not verified yet ...
            alice = pki.user("Alice")
            answer = ServiceClient(f"https://localhost:{config.server.port}", "bank", credential=alice.credential,
                                   trust_dir=pki.trust_dir, timeout_s=10).call("WhoAmI")
            assert answer.dn == alice.dn                                            # ... and answering
            fcntl.flock(lock, fcntl.LOCK_UN)
        log = wait_for_log(log_path, r"verified \d+ documents of BaseX against the journal in", server, 120)
        log = wait_for_log(log_path, r"verified against the journal by process \d+ .*not verifying again", server, 30)
        verified = re.findall(r" (\d+) INFO \S+: xmlstore/basex: verified (\d+) documents of BaseX", log)
        assert len(verified) == 1, log                          # one full verification for the start ...
        verifier, documents = verified[0]
        assert int(documents) >= DOCUMENTS
        adopted = re.findall(r" (\d+) INFO \S+: xmlstore/basex: BaseX was verified against the journal by process "
                             r"(\d+) ", log)
        assert len(adopted) == 1 and adopted[0][1] == verifier and adopted[0][0] != verifier, log  # the other adopts it
        shared = re.findall(r" (\d+) INFO \S+: xmlstore/basex: verifying \d+ documents of BaseX against the journal "
                            r"in the background, with the other processes forked from process (\d+)", log)
        assert {pid for pid, _parent in shared} == {verifier, adopted[0][0]}, log
        assert {parent for _pid, parent in shared} == {str(server.pid)}, log
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.join(30)
        if server.is_alive():
            server.kill()
            server.join(5)
    assert server.exitcode == 0, log_path.read_text(errors="replace")[-3000:]
