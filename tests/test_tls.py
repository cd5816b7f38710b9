"""TLS of the service host: the host certificate, and optional or required client certificates
(grid users present RFC 3820 proxies, which Python's ssl accepts only when told to)."""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import socket
import ssl

import pytest

from gridcredit.host import HostFiles, run_worker
from gridcredit.security.pki import write_proxy_file

from security_fixtures import free_port, host_config, wait_for_tls


@contextlib.contextmanager
def tls_host(pki, tmp_path, client_cert: str):
    port = free_port()
    config = host_config(tmp_path / "state", port, host_cert=pki.host_cert, host_key=pki.host_key,
                         trust_dir=pki.trust_dir)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, client_cert=client_cert))
    files = HostFiles(pki.host_cert, pki.host_key, pki.trust_dir)
    process = multiprocessing.get_context("fork").Process(target=run_worker, args=(config, files), daemon=True)
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
