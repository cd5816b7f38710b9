"""A browser holding a certificate from a CA the host does not trust (issue 15, the web view): with
optional client certificates its TLS handshake completes — it sees the public pages as anyone, told
why — instead of failing; the verdict reaches the application as SSL_CLIENT_VERIFY=FAILED:<reason>,
and ``client_cert = "required"`` still ends such a handshake. (The pages themselves, through the
real host and a real browser: tests/test_web_browser.py.)"""
from __future__ import annotations

import ssl

import pytest

from conftest import make_test_pki
from test_tls import _environ_echo, get_wsdl, tls_host


@pytest.fixture(scope="module")
def stranger(tmp_path_factory, key_pool):
    """A user of a CA that is not in the host's trust directory."""
    other = make_test_pki(tmp_path_factory.mktemp("other-pki"), key_pool,
                          dn="/DC=org/DC=example/O=elsewhere/CN=Another CA")
    return other.user("Ursula Elsewhere")


def test_an_untrusted_client_certificate_completes_the_handshake_marked_as_failed(pki, tmp_path, stranger):
    trusted = pki.user("TLS Tom")
    with tls_host(pki, tmp_path, "optional", build=_environ_echo) as port:
        answer = get_wsdl(port, pki.trust_dir, stranger.cert_path, stranger.key_path)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"SSL_CLIENT_VERIFY=FAILED:unable to get local issuer certificate (certificate 0 of the chain)" in body
        assert b"BEGIN CERTIFICATE" in body          # the application sees it, to say whose it was
        # the next handshake of the same thread with a trusted one is not marked by the one before
        assert b"SSL_CLIENT_VERIFY=SUCCESS" in get_wsdl(port, pki.trust_dir, trusted.cert_path, trusted.key_path)
        assert b"SSL_CLIENT_VERIFY=NONE" in get_wsdl(port, pki.trust_dir)


def test_required_client_certificates_still_end_an_untrusted_handshake(pki, tmp_path, stranger):
    with tls_host(pki, tmp_path, "required", build=_environ_echo) as port:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            get_wsdl(port, pki.trust_dir, stranger.cert_path, stranger.key_path)
        trusted = pki.user("TLS Tom")
        assert b"SSL_CLIENT_VERIFY=SUCCESS" in get_wsdl(port, pki.trust_dir, trusted.cert_path, trusted.key_path)
