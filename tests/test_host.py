"""The service host over HTTPS: WhoAmI on every service (user certificate and proxy), the WSDL
served and checked in, SOAP faults for every failure, the ``gridcredit serve`` command with two
workers, and the client's checks of the host's signature and SignatureConfirmation."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zeep
from lxml import etree

from gridcredit.client import ServiceClient, WsseClientPlugin, response_verifier
from gridcredit.errors import RemoteFault, SecurityError
from gridcredit.server import registry
from gridcredit.server.host import SignedSoapHost, wsdl_document
from gridcredit.security.credentials import load_credential
from gridcredit.security.wssec import SOAP11_NS, MemoryReplayCache, Signer, Verifier

from security_fixtures import (app_in_thread, free_port, host_process, https_session, read_fault_response,
                               self_made_ca, wait_for_tls)

WSDL_DIR = Path(__file__).resolve().parents[1] / "wsdl"
SERVICES = registry.names()
WSDL_NS = {"wsdl": "http://schemas.xmlsoap.org/wsdl/", "soap": "http://schemas.xmlsoap.org/wsdl/soap/"}


@pytest.fixture(scope="module")
def host(pki, tmp_path_factory):
    state = tmp_path_factory.mktemp("host")
    with host_process(state, host_cert=pki.host_cert, host_key=pki.host_key, trust_dir=pki.trust_dir) as running:
        yield running


@pytest.fixture(scope="module")
def session(pki):
    return https_session(pki.trust_dir)


# ------------------------------------------------------------------------------------ WhoAmI

@pytest.mark.parametrize("service", SERVICES)
def test_whoami_with_a_user_certificate(host, pki, service):
    alice = pki.user("Alice")
    identity = ServiceClient(host.url, service, credential=alice.credential, trust_dir=pki.trust_dir).call("WhoAmI")
    assert identity.dn == alice.dn and identity.signer_dn == alice.dn
    assert identity.proxy is False and identity.limited is False
    assert identity.service == service


@pytest.mark.parametrize("service", SERVICES)
def test_whoami_with_a_proxy(host, pki, service):
    alice = pki.user("Alice")
    proxy = pki.proxy("Alice")
    identity = ServiceClient(host.url, service, credential=proxy, trust_dir=pki.trust_dir).call("WhoAmI")
    assert identity.dn == alice.dn  # the end-entity DN, not the proxy's
    assert identity.signer_dn == proxy.dn != alice.dn
    assert identity.proxy is True


def test_whoami_with_a_limited_proxy_of_a_proxy(host, pki):
    proxy = pki.proxy(pki.proxy("Alice"), limited=True)
    identity = ServiceClient(host.url, "bank", credential=proxy, trust_dir=pki.trust_dir).call("WhoAmI")
    assert identity.dn == pki.user("Alice").dn and identity.proxy and identity.limited


def test_a_security_refusal_reaches_the_client_as_a_wsse_fault(host, pki, key_pool, tmp_path):
    _, stranger = self_made_ca(tmp_path, key_pool)
    client = ServiceClient(host.url, "bank", credential=stranger, trust_dir=pki.trust_dir)
    with pytest.raises(RemoteFault) as refused:
        client.call("WhoAmI")
    assert refused.value.faultcode.startswith("wsse:") and refused.value.code == "InvalidSecurityToken"
    assert "not trusted" in refused.value.text


# -------------------------------------------------------------------------------------- WSDL

def _with_location(document: bytes, location: str) -> bytes:
    root = etree.fromstring(document)
    addresses = root.findall("wsdl:service/wsdl:port/soap:address", WSDL_NS)
    assert len(addresses) == 1
    return document.replace(f'location="{addresses[0].get("location")}"'.encode(), f'location="{location}"'.encode(), 1)


def _location(document: bytes) -> str:
    return etree.fromstring(document).find("wsdl:service/wsdl:port/soap:address", WSDL_NS).get("location")


@pytest.mark.parametrize("service", SERVICES)
def test_served_wsdl_equals_the_checked_in_file(host, session, service):
    response = session.get(f"{host.url}/{service}?wsdl", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/xml")
    served = response.content
    assert _location(served) == f"{host.url}/{service}"  # https, this host and port
    checked_in = (WSDL_DIR / f"{service}.wsdl").read_bytes()
    assert _with_location(served, "X") == _with_location(checked_in, "X")


@pytest.mark.parametrize("service", SERVICES)
def test_wsdl_document_regenerates_the_checked_in_file(service):
    assert wsdl_document(service) == (WSDL_DIR / f"{service}.wsdl").read_bytes(), \
        f"wsdl/{service}.wsdl is stale: run `gridcredit wsdl --out wsdl`"


@pytest.mark.parametrize("service", SERVICES)
def test_wsdl_is_document_literal_soap11(service):
    root = etree.fromstring((WSDL_DIR / f"{service}.wsdl").read_bytes())
    binding = root.find("wsdl:binding/soap:binding", WSDL_NS)
    assert binding.get("style") == "document" and binding.get("transport") == "http://schemas.xmlsoap.org/soap/http"
    assert all(body.get("use") == "literal" for body in root.iterfind(".//soap:body", WSDL_NS))
    assert root.find("wsdl:binding/wsdl:operation[@name='WhoAmI']", WSDL_NS) is not None


# ------------------------------------------------------------------------- faults for HTTP

def _fault(pki, response, status):
    return read_fault_response(response.status_code, response.headers.get("Content-Type", ""), response.content,
                               Verifier(trust=pki.trust_store()), expected_status=status)


def test_unknown_path_is_a_soap_fault_404(host, pki, session):
    response = session.post(f"{host.url}/nowhere", data=b"<x/>", timeout=30, headers={"Content-Type": "text/xml"})
    fault = _fault(pki, response, 404)
    assert fault.namespace == SOAP11_NS and fault.code == "Client"
    assert "/nowhere" in fault.message and "/bank" in fault.message
    assert _fault(pki, session.get(f"{host.url}/", timeout=30), 404).code == "Client"


def test_get_without_wsdl_is_a_soap_fault_405(host, pki, session):
    response = session.get(f"{host.url}/bank", timeout=30)
    fault = _fault(pki, response, 405)
    assert fault.namespace == SOAP11_NS and fault.code == "Client" and "?wsdl" in fault.message
    assert "POST" in response.headers.get("Allow", "")
    assert _fault(pki, session.put(f"{host.url}/bank", data=b"x", timeout=30), 405).code == "Client"


# --------------------------------------------------------------------- the serve command

def _listening_socket_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
    return inodes


def _sockets_of(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def test_gridcredit_serve_with_two_workers(tmp_path):
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GRIDCREDIT_", "X509_"))}
    env.update(HOME=str(home), GRIDCREDIT_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([sys.executable, "-m", "gridcredit.server.cli", "serve", "--port", str(port), "--workers", "2"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_tls(port, timeout_s=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            workers = _children(server.pid)
            listening = _listening_socket_inodes(port)
            owners = [pid for pid in workers if _sockets_of(pid) & listening]
            if len(owners) == 2:
                break
            time.sleep(0.1)
        # Two worker processes accepting on the one listening socket they inherited.
        assert len(workers) == 2 and len(owners) == 2, (workers, open(log.name).read())
        assert len(listening) == 1
        assert all(_sockets_of(pid) & listening == listening for pid in owners)

        from gridcredit.security.pki import CertificateAuthority
        state = tmp_path / "state" / "pki"
        ca = CertificateAuthority.load(state / "ca")
        cert, key = ca.issue_user("Bob", tmp_path / "bob")
        credential = load_credential(cert, key)
        for attempt in range(6):  # new connections: the kernel spreads them over both workers
            identity = ServiceClient(f"https://localhost:{port}", SERVICES[attempt % 4], credential=credential,
                                     trust_dir=state / "certificates").call("WhoAmI")
            assert identity.dn == credential.dn
        output = open(log.name).read()
        assert "created a development CA" in output and "gridcredit pki user" in output

        # While a worker is dead the other keeps answering on the shared socket; the dead one is replaced.
        os.kill(owners[0], signal.SIGKILL)
        for service in SERVICES:
            identity = ServiceClient(f"https://localhost:{port}", service, credential=credential,
                                     trust_dir=state / "certificates").call("WhoAmI")
            assert identity.dn == credential.dn
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (len(_children(server.pid)) == 2 and owners[0] not in _children(server.pid)):
            time.sleep(0.1)
        assert len(_children(server.pid)) == 2 and owners[0] not in _children(server.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(_sockets_of(pid) & _listening_socket_inodes(port)
                                                      for pid in _children(server.pid)):
            time.sleep(0.1)
        for service in SERVICES:
            identity = ServiceClient(f"https://localhost:{port}", service, credential=credential,
                                     trust_dir=state / "certificates").call("WhoAmI")
            assert identity.dn == credential.dn
    finally:
        _stop(server)
        log.close()
    assert server.returncode == 0


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to ``gridcredit serve``; its whole session killed if it is not gone in 20 s."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(5)


# ---------------------------------------------------------------- the client checks the host

def _fake_host(pki, signer_credential, host_class=SignedSoapHost):
    verifier = Verifier(trust=pki.trust_store(), replay_cache=MemoryReplayCache())
    return host_class(signer=Signer(signer_credential), verifier=verifier, request_bytes_max=1_000_000, services=("bank",))


def test_client_refuses_a_response_signed_by_an_untrusted_host(pki, key_pool, tmp_path):
    _, impostor = self_made_ca(tmp_path, key_pool, cn="Impostor CA")
    app = _fake_host(pki, impostor)
    with app_in_thread(app, host_cert=pki.host_cert, host_key=pki.host_key) as url:  # TLS itself is trusted
        client = ServiceClient(url, "bank", credential=pki.user("Alice").credential, trust_dir=pki.trust_dir)
        with pytest.raises(SecurityError) as refused:
            client.call("WhoAmI")
        assert refused.value.code == "InvalidSecurityToken" and "not trusted" in str(refused.value)
    # The same fake host signing with the real host credential is accepted (the control).
    with app_in_thread(_fake_host(pki, pki.host_credential()), host_cert=pki.host_cert, host_key=pki.host_key) as url:
        client = ServiceClient(url, "bank", credential=pki.user("Alice").credential, trust_dir=pki.trust_dir)
        assert client.call("WhoAmI").dn == pki.user("Alice").dn


@pytest.mark.parametrize("who", ["user", "proxy"])
def test_client_refuses_a_response_signed_by_a_trusted_certificate_that_is_not_the_host(pki, who):
    """Our CAs also vouch for users and their proxies: only the host named in the URL may answer."""
    signer = pki.user("Bob").credential if who == "user" else pki.proxy("Bob")
    with app_in_thread(_fake_host(pki, signer), host_cert=pki.host_cert, host_key=pki.host_key) as url:
        client = ServiceClient(url, "bank", credential=pki.user("Alice").credential, trust_dir=pki.trust_dir)
        with pytest.raises(SecurityError) as refused:
            client.call("WhoAmI")
        assert refused.value.code == "FailedAuthentication" and "not signed by the host localhost" in str(refused.value)


def test_the_host_name_check_follows_the_certificate_names(pki):
    from gridcredit.client import signed_by_host
    host = pki.host_credential().cert
    assert signed_by_host(host, "localhost") and signed_by_host(host, "LOCALHOST") and signed_by_host(host, "127.0.0.1")
    assert signed_by_host(host, "::1") and signed_by_host(host, "[::1]")
    assert not signed_by_host(host, "example.org") and not signed_by_host(host, "10.0.0.1")
    assert not signed_by_host(pki.user("Bob").credential.cert, "Bob")


class _WrongConfirmationHost(SignedSoapHost):
    def _reply(self, start_response, status, envelope, *, confirm=None, extra_headers=()):
        return super()._reply(start_response, status, envelope,
                              confirm=None if confirm is None else "d3Jvbmcgc2lnbmF0dXJlIHZhbHVl",
                              extra_headers=extra_headers)


class _NoConfirmationHost(SignedSoapHost):
    def _reply(self, start_response, status, envelope, *, confirm=None, extra_headers=()):
        return super()._reply(start_response, status, envelope, confirm=None, extra_headers=extra_headers)


@pytest.mark.parametrize("host_class, words", [(_WrongConfirmationHost, "different request"),
                                                (_NoConfirmationHost, "does not confirm")])
def test_client_refuses_a_response_that_does_not_confirm_its_request(pki, host_class, words):
    app = _fake_host(pki, pki.host_credential(), host_class)
    with app_in_thread(app, host_cert=pki.host_cert, host_key=pki.host_key) as url:
        client = ServiceClient(url, "bank", credential=pki.user("Alice").credential, trust_dir=pki.trust_dir)
        with pytest.raises(SecurityError) as refused:
            client.call("WhoAmI")
        assert refused.value.code == "FailedCheck" and words in str(refused.value)


# ------------------------------------------------------------------- zeep from the WSDL file

def test_zeep_stubs_from_the_checked_in_wsdl_call_whoami(host, pki):
    alice = pki.user("Alice").credential
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    transport = zeep.Transport(session=https_session(pki.trust_dir), timeout=30, operation_timeout=30)
    plugin = WsseClientPlugin(Signer(alice), response_verifier(pki.trust_dir))
    client = zeep.Client(str(WSDL_DIR / "bank.wsdl"), transport=transport, wsse=plugin, settings=settings)
    service = client.create_service("{urn:gridcredit:bank:1}Bank", f"{host.url}/bank")
    identity = service.WhoAmI()
    assert identity.dn == alice.dn and identity.service == "bank" and identity.proxy is False


def test_listening_socket_disables_nagle(tmp_path):
    """Accepted connections inherit TCP_NODELAY; without it each reply waits ~40 ms for a delayed ACK."""
    import socket as socket_module
    from gridcredit.server.registry import load_config
    from gridcredit.server.host import listening_socket

    config = load_config(env={"GRIDCREDIT_STATE_DIR": str(tmp_path), "GRIDCREDIT_SERVER_PORT": str(free_port())})
    listener = listening_socket(config)
    try:
        assert listener.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY) != 0
    finally:
        listener.close()


@pytest.mark.slow
def test_wsdl_is_the_same_under_any_hash_seed(tmp_path):
    """spyne orders some schema members by hash; the documents must not change with PYTHONHASHSEED."""
    for seed in ("1", "2", "12345"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-m", "gridcredit.server.cli", "wsdl", "--out", str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True)
        for name in SERVICES:
            assert (out / f"{name}.wsdl").read_bytes() == (WSDL_DIR / f"{name}.wsdl").read_bytes(), (seed, name)


def _stuck_app(entered):
    def app(environ, start_response):       # a request that never finishes (e.g. a wedged backend)
        entered.set()
        time.sleep(3600)
    return lambda config, files: app


def test_a_worker_told_to_stop_ends_even_with_a_request_stuck(pki, tmp_path, monkeypatch):
    """cheroot's stop() joins a busy request thread without a bound once its own timeout is spent;
    the worker ends WORKER_STOP_GRACE_S after SIGTERM anyway (exit status 1, and says why)."""
    import multiprocessing
    import threading
    from gridcredit.server import host as host_module
    from gridcredit.server.host import HostFiles, run_worker
    from security_fixtures import host_config, wait_for_tls

    monkeypatch.setattr(host_module, "WORKER_STOP_GRACE_S", 2.0)
    port = free_port()
    config = host_config(tmp_path, port, host_cert=pki.host_cert, host_key=pki.host_key, trust_dir=pki.trust_dir)
    files = HostFiles(Path(pki.host_cert), Path(pki.host_key), Path(pki.trust_dir))
    context = multiprocessing.get_context("fork")
    entered = context.Event()
    worker = context.Process(target=run_worker, args=(config, files), kwargs={"build": _stuck_app(entered)})
    worker.start()
    try:
        wait_for_tls(port, process=worker)
        session = https_session(pki.trust_dir)
        threading.Thread(target=lambda: _ignore_errors(lambda: session.get(f"https://localhost:{port}/x", timeout=60)),
                         daemon=True).start()
        assert entered.wait(10)
        started = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(30)
        assert not worker.is_alive()
        assert worker.exitcode == 1
        assert 2.0 <= time.monotonic() - started < 15
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join(5)


def _ignore_errors(call):
    try:
        call()
    except Exception:  # noqa: BLE001 — the server goes away under this request
        pass


# ------------------------------------------------- clients that stall: the log says so, in a line

@pytest.fixture(scope="module")
def served(pki, tmp_path_factory):
    """``gridcredit serve`` (one worker, 2 s request timeout, backlog 300) with its log in a file."""
    root = tmp_path_factory.mktemp("served")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GRIDCREDIT_", "X509_"))}
    env.update(HOME=str(root), GRIDCREDIT_STATE_DIR=str(root / "state"), PYTHONUNBUFFERED="1",
               GRIDCREDIT_SERVER_REQUEST_TIMEOUT_S="2", GRIDCREDIT_SERVER_LISTEN_BACKLOG="300",
               GRIDCREDIT_SECURITY_HOST_CERT=str(pki.host_cert), GRIDCREDIT_SECURITY_HOST_KEY=str(pki.host_key),
               GRIDCREDIT_SECURITY_CERT_DIR=str(pki.trust_dir))
    log_path = root / "serve.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "gridcredit.server.cli", "serve", "--port", str(port), "--workers", "1"],
                                  cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_tls(port, timeout_s=60)
        yield port, log_path
    finally:
        _stop(server)


def _wait_for_log(log_path: Path, text: str, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the server log:\n{log_path.read_text(errors='replace')[-3000:]}")


def _tls_to(port: int, trust_dir: Path):
    import socket as socket_module
    import ssl
    context = ssl.create_default_context(capath=str(trust_dir))
    raw = socket_module.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def _partial_post(connection, announced: int, sent: bytes, path: str = "/bank") -> None:
    connection.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\n".encode()
                       + f"Content-Length: {announced}\r\n\r\n".encode() + sent)


def test_the_serve_listener_has_the_configured_backlog(served):
    import subprocess as run
    port, _ = served
    line = run.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout.split()
    assert int(line[2]) == 300  # cheroot re-listened the shared socket with a backlog of 5


def test_a_client_that_stalls_mid_body_is_logged_as_timed_out(served, pki):
    port, log_path = served
    with _tls_to(port, pki.trust_dir) as connection:
        _partial_post(connection, 1000, b"<soap:Envelope")
        connection.settimeout(15)
        started = time.monotonic()
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        assert time.monotonic() - started < 8  # answered and closed after the 2 s timeout, not later
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"Client" in body and b"did not arrive" in body
    log = _wait_for_log(log_path, "timed out sending the request body")
    line = next(line for line in log.splitlines() if "timed out sending the request body" in line)
    assert "127.0.0.1:" in line and "1,000" in line
    assert "Traceback" not in log and "internal error" not in log


def test_a_client_that_disconnects_mid_body_is_logged_as_such(served, pki):
    port, log_path = served
    with _tls_to(port, pki.trust_dir) as connection:
        _partial_post(connection, 1000, b"<soap:Envelope xmlns")
    log = _wait_for_log(log_path, "closed the connection after 20 of 1,000 bytes of the request body")
    time.sleep(0.5)  # anything the server logs after the request's line
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log and "internal error" not in log
    after = log[log.index("closed the connection after 20 of 1,000 bytes"):].splitlines()
    assert len(after) == 1, after  # one line, no socket errors after it
    assert "wsse:" not in log  # not reported as a refused (malformed) message


# ------------------------------------------------------------- ?wsdl is built once per service

def _get_wsdl_in_process(app, host_header: str | None, scheme: str = "https") -> tuple[str, bytes]:
    import io
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/bank", "QUERY_STRING": "wsdl", "wsgi.url_scheme": scheme,
               "SERVER_NAME": "gridcredit", "SERVER_PORT": "8443", "wsgi.input": io.BytesIO(b"")}
    if host_header is not None:
        environ["HTTP_HOST"] = host_header
    seen = {}
    body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.setdefault("status", status)))
    return seen["status"], body


def test_wsdl_is_built_once_whatever_the_host_header(pki, monkeypatch):
    """Unauthenticated work: each new Host header rebuilt the whole WSDL (tens of ms of spyne)."""
    from gridcredit.server import host as host_module
    builds = []
    real = host_module.wsdl_document
    monkeypatch.setattr(host_module, "wsdl_document", lambda *args, **kwargs: builds.append(args) or real(*args, **kwargs))
    app = _fake_host(pki, pki.host_credential())
    expected = _with_location(real("bank"), "X")
    for index in range(200):
        status, document = _get_wsdl_in_process(app, f"host{index}.example.org:{8000 + index}")
        assert status.startswith("200")
        assert _location(document) == f"https://host{index}.example.org:{8000 + index}/bank"
        assert _with_location(document, "X") == expected
    assert len(builds) == 1
    # The soap:address is https even when the request's scheme says http (TLS terminated in front).
    assert _location(_get_wsdl_in_process(app, "grid.example.org", scheme="http")[1]) == "https://grid.example.org/bank"
    assert _location(_get_wsdl_in_process(app, "[2001:db8::1]:8443")[1]) == "https://[2001:db8::1]:8443/bank"


@pytest.mark.parametrize("host_header", ['evil.org"/><x a="', "a b", "x" * 300, "host:99999999", "", None,
                                         "h\u202eo.org", "host:80:80"])
def test_wsdl_ignores_a_host_header_that_is_not_a_host(pki, host_header):
    app = _fake_host(pki, pki.host_credential())
    status, document = _get_wsdl_in_process(app, host_header)
    assert status.startswith("200")
    assert _location(document) == "https://gridcredit:8443/bank"  # the server's own name and port


def test_a_reporter_that_stalls_mid_body_is_logged_as_timed_out(served, pki):
    """The same for the plain HTTPS registration (/sgas/ur), authenticated by the TLS certificate."""
    port, log_path = served
    with _tls_to(port, pki.trust_dir) as connection:
        _partial_post(connection, 2000, b"<UsageRecords", path="/sgas/ur")
        connection.settimeout(15)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
    log = _wait_for_log(log_path, "(2,000 bytes announced")
    line = next(line for line in log.splitlines() if "(2,000 bytes announced" in line)
    assert "/sgas/ur POST" in line and "timed out sending the request body" in line
    assert "Traceback" not in log and "internal error" not in log
