"""Shared fixtures and a worker process for the XML store tests.

Import explicitly: ``from store_fixtures import *``. Run as a script, this file is the child
process of the concurrency and crash tests:
``python tests/store_fixtures.py SPEC_JSON MODE [ARG]`` where SPEC_JSON says how to open the store.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

import pytest

from gridcredit.config import StoreConfig
from gridcredit.xmlstore import AttributeIndex, open_store
from gridcredit.xmlstore.basex_server import BaseXServer, free_port

BACKENDS = ["embedded", "basex"]
_prefixes = itertools.count()


def spec_indexes(spec: dict) -> list[AttributeIndex]:
    """``spec["indexes"]``: [[prefix, [attribute, ...], store_text], ...] (JSON-able for child processes)."""
    return [AttributeIndex(prefix, tuple(names), store_text) for prefix, names, store_text in spec.get("indexes", ())]


def open_from_spec(spec: dict, *, indexes=None, read_only: bool = False):
    """Open a store from a JSON-able spec (same in the test and in its child processes)."""
    state_dir = Path(spec["state_dir"])
    indexes = spec_indexes(spec) if indexes is None else indexes
    if spec["backend"] == "embedded":
        return open_store(StoreConfig(backend="embedded"), state_dir, indexes=indexes, read_only=read_only)
    from gridcredit.xmlstore._basex import BaseXStore
    return BaseXStore(state_dir / "journal", port=spec["port"], db_prefix=spec["prefix"], timeout_s=10,
                      indexes=indexes, read_only=read_only)


@pytest.fixture(scope="session")
def basex_server(tmp_path_factory):
    server = BaseXServer(tmp_path_factory.mktemp("basex-shared"), port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def store_spec(request, tmp_path):
    spec = {"backend": request.param, "state_dir": str(tmp_path / "state")}
    if request.param == "basex":
        server = request.getfixturevalue("basex_server")
        spec.update(port=server.port, prefix=f"t{os.getpid()}x{next(_prefixes)}_")
    return spec


@pytest.fixture
def store(store_spec):
    opened = open_from_spec(store_spec)
    yield opened
    opened.close()


@pytest.fixture
def private_basex(tmp_path):
    """A BaseX server of this test's own (for tests that kill or damage it)."""
    server = BaseXServer(tmp_path / "basex", port=free_port()).start()
    yield server
    server.kill()


class LogLines(logging.Handler):
    """The messages of INFO and above, collected (``logger.addHandler``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def in_child(work) -> tuple[int, int]:
    """Fork a child that runs ``work(lines)`` (the BaseX store's INFO log lines collected in ``lines``) and
    writes the dict it returns as JSON to a pipe; returns (pid, read end) for ``child_answer``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            lines = LogLines()
            logger = logging.getLogger("gridcredit.xmlstore._basex")
            logger.addHandler(lines)
            logger.setLevel(logging.INFO)
            answer = work(lines.lines)
            os.write(write_end, json.dumps(answer).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def child_answer(pid: int, read_end: int) -> dict:
    """What an ``in_child`` child wrote, once it ended with status 0."""
    with os.fdopen(read_end) as pipe:
        said = json.loads(pipe.read() or "{}")
    assert os.waitpid(pid, 0)[1] == 0, said
    return said


def spawn_worker(spec: dict, mode: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "store_fixtures.py"), json.dumps(spec), mode, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_acks(process: subprocess.Popen, count: int, timeout_s: float) -> list[int]:
    """Read acknowledged transaction numbers from a worker until ``count`` arrived."""
    acks, deadline = [], time.monotonic() + timeout_s
    while len(acks) < count and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("ack "):
            acks.append(int(line.split()[1]))
    return acks


def kill9(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def pair_xml(number: int, side: str, padding: int = 0) -> bytes:
    return f'<pair side="{side}" n="{number}"><pad>{"x" * padding}</pad></pair>'.encode()


def increment(tx, collection: str, doc_id: str) -> None:
    document = tx.get(collection, doc_id)
    value = 0 if document is None else int(document.xml.split(b'v="')[1].split(b'"')[0])
    tx.put(collection, doc_id, f'<counter v="{value + 1}"/>'.encode())


def _worker(spec: dict, mode: str, args: list[str]) -> None:
    store = open_from_spec(spec)
    if mode == "increment":             # ARG: rounds; each round increments three counters in one transaction
        for _ in range(int(args[0])):
            store.transact(lambda tx: [increment(tx, "counters", f"c{i}") for i in range(3)])
        print("done", flush=True)
    elif mode == "pairs":
        # each transaction writes the pair (a, b) with the same number; print it once acknowledged
        padding = int(args[0]) if args else 0
        number = 0
        while True:
            number += 1

            def write(tx, n=number):
                tx.put("pairs", "a", pair_xml(n, "a", padding))
                time.sleep(0.001)
                tx.put("pairs", "b", pair_xml(n, "b", padding))
                tx.put("log", f"n{n:07d}", f"<entry n='{n}'/>".encode())
            try:
                store.transact(write)
            except Exception as error:   # e.g. BaseX down: not acknowledged
                print(f"error {type(error).__name__}: {error}", flush=True)
                time.sleep(0.05)
                continue
            print(f"ack {number}", flush=True)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:])
