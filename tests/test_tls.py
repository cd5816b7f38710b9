"""TLS of the service host: the host certificate, and optional or required client certificates
(grid users present RFC 3820 proxies, which Python's ssl accepts only when told to); handshakes
off the accept path, the listen backlog and the per-address connection limit."""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import socket
import ssl
import subprocess
import time

import pytest
import requests
from cryptography import x509

from gridcredit.server.host import HostFiles, run_worker
from gridcredit.security.pki import write_proxy_file
from gridcredit.security.wssec import Verifier

from security_fixtures import free_port, host_config, signature_value, signed_request, wait_for_tls


@contextlib.contextmanager
def tls_host(pki, tmp_path, client_cert: str, *, build=None, **server):
    """``run_worker`` in a child process; ``server``: further [server] settings."""
    port = free_port()
    config = host_config(tmp_path / "state", port, host_cert=pki.host_cert, host_key=pki.host_key,
                         trust_dir=pki.trust_dir)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, client_cert=client_cert, **server))
    files = HostFiles(pki.host_cert, pki.host_key, pki.trust_dir)
    process = multiprocessing.get_context("fork").Process(target=run_worker, args=(config, files),
                                                          kwargs={"build": build}, daemon=True)
    process.start()
    try:
        wait_for_tls(port, process=process)
        yield port
    finally:
        process.terminate()
        process.join(10)


def get_wsdl(port: int, trust_dir, cert_file=None, key_file=None) -> bytes:
    """A raw HTTPS GET of /bank?wsdl, presenting ``cert_file`` (a chain file) as the client certificate."""
    context = ssl.create_default_context(capath=str(trust_dir))
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as connection:
            connection.sendall(b"GET /bank?wsdl HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
    return data


def test_host_certificate_is_verified_by_clients(pki, tmp_path):
    with tls_host(pki, tmp_path, "none") as port:
        assert get_wsdl(port, pki.trust_dir).startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLCertVerificationError):
            get_wsdl(port, tmp_path)  # an empty trust directory: the host is not trusted


def test_required_client_certificate(pki, tmp_path):
    user = pki.user("TLS Alice")
    proxy = pki.proxy("TLS Alice")
    proxy_file = write_proxy_file(tmp_path / "proxy.pem", proxy.cert, proxy.key, proxy.chain)
    with tls_host(pki, tmp_path, "required") as port:
        assert get_wsdl(port, pki.trust_dir, user.cert_path, user.key_path).startswith(b"HTTP/1.1 200")
        # An RFC 3820 proxy as the TLS client certificate (chain in the file, Globus order).
        assert get_wsdl(port, pki.trust_dir, proxy_file).startswith(b"HTTP/1.1 200")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            answer = get_wsdl(port, pki.trust_dir)  # no client certificate: the handshake is refused
            if not answer:  # TLS 1.3 may report the refusal only as a closed connection
                raise ConnectionError("closed")


def test_optional_client_certificate(pki, tmp_path):
    user = pki.user("TLS Bob")
    with tls_host(pki, tmp_path, "optional") as port:
        assert get_wsdl(port, pki.trust_dir).startswith(b"HTTP/1.1 200")
        assert get_wsdl(port, pki.trust_dir, user.cert_path, user.key_path).startswith(b"HTTP/1.1 200")


# ------------------------------------------------------------- handshakes off the accept path

def idle_connection(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection that never sends a ClientHello."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def half_done_handshake(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection that sends its ClientHello and then nothing more."""
    raw = idle_connection(port, source)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    raw.sendall(outgoing.read())
    return raw


def silent_tls_connection(port: int) -> ssl.SSLSocket:
    """A connection that completes its TLS handshake and then sends no request."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(idle_connection(port), server_hostname="localhost")


def signed_whoami_seconds(pki, port: int, credential) -> float:
    """A signed WhoAmI on a new connection; the seconds it took (the answer checked)."""
    data = signed_request(credential)
    started = time.monotonic()
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(f"https://localhost:{port}/bank", data=data, verify=str(pki.trust_dir), timeout=20,
                              headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.content[:300]
    verified = Verifier(trust=pki.trust_store()).verify(answer.content, expected_confirmation=signature_value(data))
    assert credential.dn.encode() in answer.content and verified.body is not None
    return elapsed


def test_idle_connections_and_half_done_handshakes_do_not_stall_the_service(pki, tmp_path):
    """Before: the handshake ran on cheroot's accept path, so each silent client held every other
    client for the socket timeout (30 s). A connection that completes its handshake and then says
    nothing holds no request thread either."""
    alice = pki.user("Alice").credential
    with tls_host(pki, tmp_path, "optional") as port:
        signed_whoami_seconds(pki, port, alice)  # warm: the services are built
        silent = [idle_connection(port) for _ in range(20)] + [half_done_handshake(port) for _ in range(20)]
        silent += [silent_tls_connection(port) for _ in range(20)]  # more than the worker's 8 request threads
        try:
            time.sleep(0.3)  # accepted (or queued) before the real client comes
            assert signed_whoami_seconds(pki, port, alice) < 2.0
            assert max(signed_whoami_seconds(pki, port, alice) for _ in range(3)) < 2.0
        finally:
            for connection in silent:
                connection.close()


def test_a_silent_client_is_closed_after_the_handshake_timeout(pki, tmp_path):
    with tls_host(pki, tmp_path, "optional", handshake_timeout_s=1) as port:
        for connect in (idle_connection, half_done_handshake):
            started = time.monotonic()
            with connect(port) as connection:
                connection.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    while connection.recv(65536):  # a ServerHello may come first; then the close
                        pass
                assert 0.8 < time.monotonic() - started < 5


def _listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``, as the kernel reports it (ss's Send-Q)."""
    lines = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout.split()
    return int(lines[2])


def test_the_listen_backlog_is_the_configured_one(pki, tmp_path):
    with tls_host(pki, tmp_path, "optional", listen_backlog=300) as port:
        assert _listen_backlog(port) == 300
    with tls_host(pki, tmp_path, "optional") as port:
        somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
        assert _listen_backlog(port) == min(1024, somaxconn)


def test_connections_beyond_the_per_address_limit_are_closed_at_once(pki, tmp_path):
    alice = pki.user("Alice").credential
    with tls_host(pki, tmp_path, "optional", connections_per_address_max=4) as port:
        held = [idle_connection(port, "127.0.0.2") for _ in range(2)] + \
               [half_done_handshake(port, "127.0.0.2") for _ in range(2)]
        try:
            time.sleep(0.3)
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):  # the reset may come while connecting
                with idle_connection(port, "127.0.0.2") as excess:
                    excess.settimeout(3)
                    assert excess.recv(1) == b""  # closed by the host, not left waiting
            assert time.monotonic() - started < 1.0
            # Another address is unaffected, and so are the connections already held.
            assert signed_whoami_seconds(pki, port, alice) < 2.0
            assert held[0].fileno() != -1
        finally:
            for connection in held:
                connection.close()
        # Once they are closed, the address may connect again.
        deadline = time.monotonic() + 5
        while True:
            try:
                with half_done_handshake(port, "127.0.0.2") as again:
                    again.settimeout(2)
                    assert again.recv(1) != b""  # the ServerHello: this one was taken
                break
            except (AssertionError, ConnectionResetError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _environ_echo(config, files):
    """An application that answers with the TLS fields of its environ."""
    def app(environ, start_response):
        body = "\n".join(f"{key}={environ.get(key, '')}" for key in
                         ("SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN", "wsgi.url_scheme")).encode()
        body += b"\n" + (environ.get("SSL_CLIENT_CERT") or "").encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app


def test_the_client_certificate_reaches_the_application(pki, tmp_path):
    """The handshake moved off the accept path; the verified certificate (a proxy too) still
    reaches the WSGI environ, as /sgas/ur needs it."""
    proxy = pki.proxy("TLS Carol")
    proxy_file = write_proxy_file(tmp_path / "proxy.pem", proxy.cert, proxy.key, proxy.chain)
    with tls_host(pki, tmp_path, "optional", build=_environ_echo) as port:
        answer = get_wsdl(port, pki.trust_dir, proxy_file)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"SSL_CLIENT_VERIFY=SUCCESS" in body and b"wsgi.url_scheme=https" in body
        pem = body[body.index(b"-----BEGIN CERTIFICATE-----"):]
        assert x509.load_pem_x509_certificate(pem) == proxy.cert
        anonymous = get_wsdl(port, pki.trust_dir)
        assert b"SSL_CLIENT_VERIFY=NONE" in anonymous and b"BEGIN CERTIFICATE" not in anonymous
