"""gridcredit/https_server.py: a worker that loses the race for a connection on the listener all
workers share must not block in accept() — for up to cheroot's 1 s socket timeout, while its
kept-alive connections wait with their requests unread (found by bench/jarm_lifecycle.py: ~1 s
stalls in 3-12 % of the Bank calls of a JARM that opens new connections beside a kept-alive one,
with 2 workers; none with 1)."""
import socket
import threading
import time

import requests

from conftest import KeyPool, make_test_pki
from gridcredit.config import Config, ServerConfig
from gridcredit.https_server import HttpsServer
from gridcredit.server import host as host_module


def _plain_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _worker(pki, listener):
    files = host_module.HostFiles(pki.host_cert, pki.host_key, pki.trust_dir)
    server = HttpsServer(listener.getsockname()[:2], _plain_app,
                         context=host_module.tls_context(Config(server=ServerConfig()), files),
                         cert_file=str(pki.host_cert), key_file=str(pki.host_key), handshake_timeout_s=10,
                         listen_backlog=64, connections_per_address_max=64, listener=listener, numthreads=4,
                         timeout=10)
    server.prepare()
    return server


def test_an_accept_that_finds_no_connection_returns_at_once(tmp_path):
    """What the worker that loses the race sees: the listener readable, then no connection to accept."""
    pki = make_test_pki(tmp_path / "pki", KeyPool("rsa", shared_size=1))
    listener = socket.create_server(("127.0.0.1", 0))
    server = _worker(pki, listener)
    try:
        began = time.monotonic()
        assert server._connections._from_server_socket(server.socket) is None
        assert time.monotonic() - began < 0.2
    finally:
        server.stop()
        listener.close()


def test_two_workers_on_one_listener_answer_a_kept_alive_connection_without_a_stall(tmp_path):
    """Two workers (threads here, processes in `gridcredit serve`) share the listener; one client keeps
    its connection, another opens a new one for each request, alternately."""
    pki = make_test_pki(tmp_path / "pki", KeyPool("rsa", shared_size=1))
    listener = socket.create_server(("127.0.0.1", 0))
    servers = [_worker(pki, listener) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve, daemon=True).start()
    url = f"https://localhost:{listener.getsockname()[1]}/"
    kept = requests.Session()
    kept.verify = str(pki.trust_dir)
    slow = []
    try:
        for _ in range(100):
            with requests.Session() as fresh:
                fresh.verify = str(pki.trust_dir)
                assert fresh.get(url, timeout=10, verify=str(pki.trust_dir)).text == "ok"
            began = time.monotonic()
            assert kept.get(url, timeout=10, verify=str(pki.trust_dir)).text == "ok"
            took = time.monotonic() - began
            if took > 0.5:
                slow.append(round(took, 2))
        assert slow == []
    finally:
        kept.close()
        for server in servers:
            server.stop()
        listener.close()
