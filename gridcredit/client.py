"""The client library: signed SOAP calls to a gridcredit host, with zeep and our WS-Security.

zeep's own WS-Security verifier is unsafe (PITFALLS): our ``Signer``/``Verifier`` plug in
through zeep's wsse interface (``apply``/``verify``). Every response must be signed by a host
our trust directory accepts and must confirm the signature of the request it answers.
"""
from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from urllib.parse import urlsplit

import requests
import zeep
import zeep.exceptions
from cryptography import x509
from lxml import etree

from .errors import GridcreditError, RemoteFault, SecurityError
from .security.pki import proxy_info
from .security.wssec import SOAP11_NS, WSSE_NS, MemoryReplayCache, Signer, Verifier, VerifyPolicy


class WsseClientPlugin:
    """zeep's wsse interface: sign what leaves, verify what arrives (before zeep reads it)."""

    def __init__(self, signer: Signer, verifier: Verifier, *, host_name: str | None = None) -> None:
        self._signer = signer
        self._verifier = verifier
        self._host_name = host_name  # when set, responses must be signed by that host's certificate
        self._sent = threading.local()

    def apply(self, envelope, headers):
        self._signer.sign(envelope)
        value = envelope.findtext(".//{http://www.w3.org/2000/09/xmldsig#}SignatureValue")
        self._sent.signature_value = value
        return envelope, headers

    def verify(self, envelope):
        raw = etree.tostring(envelope)
        body = envelope.find(f"{{{SOAP11_NS}}}Body")
        fault = body.find(f"{{{SOAP11_NS}}}Fault") if body is not None else None
        expected = getattr(self._sent, "signature_value", None)
        if fault is not None and _is_security_fault(fault):
            # The host refused our request's security, so it verified no signature it could confirm;
            # such a fault must still be signed by the host, and it carries nothing to act upon.
            expected = None
        verified = self._verifier.verify(raw, expected_confirmation=expected)
        if self._host_name is not None and not signed_by_host(verified.signer, self._host_name):
            # Any certificate our CAs trust (a user's, a proxy) would otherwise pass as the host.
            raise SecurityError(f"the response is not signed by the host {self._host_name}", "FailedAuthentication")
        return envelope


def _is_security_fault(fault) -> bool:
    code = (fault.findtext("faultcode") or "").strip()
    prefix, _, _ = code.rpartition(":")
    return bool(prefix) and fault.nsmap.get(prefix) == WSSE_NS


def signed_by_host(certificate: x509.Certificate, host_name: str) -> bool:
    """Whether ``certificate`` is a host certificate naming ``host_name`` in its subjectAltName (DNS
    or IP, as TLS checks it; a CN is not enough, since a user's CN could read like a host name)."""
    if proxy_info(certificate) is not None:
        return False
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if x509.ExtendedKeyUsageOID.SERVER_AUTH not in usages:
            return False
    except x509.ExtensionNotFound:
        pass
    wanted = host_name.strip("[]").lower()
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if any(name.lower() == wanted for name in names.get_values_for_type(x509.DNSName)):
        return True
    try:
        address = ipaddress.ip_address(wanted)
    except ValueError:
        return False
    return address in names.get_values_for_type(x509.IPAddress)


def response_verifier(trust_dir: Path) -> Verifier:
    from .security.chain import TrustStore

    return Verifier(trust=TrustStore.from_directory(trust_dir), policy=VerifyPolicy(), replay_cache=MemoryReplayCache())


class ServiceClient:
    """One service of one host, e.g. ``ServiceClient("https://localhost:8443", "bank", credential=…)``."""

    def __init__(self, base_url: str, service: str, *, credential, trust_dir: Path, timeout_s: float = 30.0) -> None:
        self.url = f"{base_url.rstrip('/')}/{service}"
        session = requests.Session()
        session.verify = str(trust_dir)
        # Otherwise REQUESTS_CA_BUNDLE and friends silently replace our grid trust directory.
        session.trust_env = False
        transport = zeep.Transport(session=session, timeout=timeout_s, operation_timeout=timeout_s)
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True, xml_huge_tree=False)
        self._plugin = WsseClientPlugin(Signer(credential), response_verifier(trust_dir),
                                        host_name=urlsplit(self.url).hostname)
        try:
            self._zeep = zeep.Client(f"{self.url}?wsdl", transport=transport, wsse=self._plugin, settings=settings)
        except requests.RequestException as error:
            raise GridcreditError(f"cannot reach {self.url}: {error}") from None

    def call(self, operation: str, **arguments):
        try:
            return getattr(self._zeep.service, operation)(**arguments)
        except zeep.exceptions.Fault as fault:
            code = None
            if fault.detail is not None:
                code = fault.detail.findtext("{urn:gridcredit:fault:1}code")
            raise RemoteFault(fault.code or "Server", fault.message or "", code) from None
        except SecurityError:
            raise
        except requests.RequestException as error:
            raise GridcreditError(f"cannot reach {self.url}: {error}") from None
