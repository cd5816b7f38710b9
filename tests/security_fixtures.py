"""Helpers for the WS-Security, attack, interop and host tests (imported explicitly).

- building and signing SOAP requests, and re-signing a tampered envelope with chosen algorithms
  (so that a test refuses a message for the reason it names, not because a digest broke);
- credentials the session PKI does not make (an expired proxy, a self-made CA);
- a real host: ``run_worker`` in a subprocess on a free port with a temp state directory, or a
  ``SignedSoapHost`` variant served by cheroot in a thread;
- checks of the SOAP faults the host answers with.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import multiprocessing
import os
import shutil
import socket
import sqlite3
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from lxml import etree

from gridcredit.config import Config, SecurityConfig, ServerConfig
from gridcredit.errors import SecurityError
from gridcredit.security import pki as pki_module
from gridcredit.security.chain import TrustStore
from gridcredit.security.credentials import Credential, load_credential
from gridcredit.security.wssec import (DS_NS, ECDSA_SHA256, ENVELOPED_SIGNATURE, EXC_C14N, RSA_SHA256, SHA256, SOAP11_NS,
                                       WSSE_NS, WSU_NS, Signer, Verifier, VerifyPolicy)

BANK_NS = "urn:gridcredit:bank:1"
SERVICE_NAMESPACES = {"bank": "urn:gridcredit:bank:1", "luts": "urn:gridcredit:luts:1",
                      "jarm": "urn:gridcredit:jarm:1", "auctioneer": "urn:gridcredit:auctioneer:1"}
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
MD5 = "http://www.w3.org/2001/04/xmldsig-more#md5"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_MD5 = "http://www.w3.org/2001/04/xmldsig-more#rsa-md5"
_DIGEST_FUNCTIONS = {SHA256: hashlib.sha256, SHA1: hashlib.sha1, MD5: hashlib.md5}
_RSA_HASHES = {RSA_SHA256: hashes.SHA256, RSA_SHA1: hashes.SHA1, RSA_MD5: hashes.MD5}
ID_ATTRIBUTES = (f"{{{WSU_NS}}}Id", "Id", "ID", "id")


# ------------------------------------------------------------------------------------ messages

def whoami_envelope(service_ns: str = BANK_NS, payload: etree._Element | None = None) -> etree._Element:
    """An unsigned SOAP 1.1 ``WhoAmI`` request (or a Body holding ``payload``)."""
    envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap": SOAP11_NS})
    etree.SubElement(envelope, f"{{{SOAP11_NS}}}Header")
    body = etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body")
    if payload is None:
        etree.SubElement(body, f"{{{service_ns}}}WhoAmI", nsmap={"tns": service_ns})
    else:
        body.append(payload)
    return envelope


def signed_request(credential, *, clock=time.time, service_ns: str = BANK_NS, payload=None) -> bytes:
    envelope = Signer(credential, clock=clock).sign(whoami_envelope(service_ns, payload))
    return etree.tostring(envelope)


def parse(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def find(envelope: etree._Element, path: str) -> etree._Element:
    namespaces = {"soap": SOAP11_NS, "wsse": WSSE_NS, "wsu": WSU_NS, "ds": DS_NS}
    found = envelope.find(path, namespaces)
    assert found is not None, f"{path} not found"
    return found


def signature_value(data: bytes | etree._Element) -> str:
    envelope = parse(data) if isinstance(data, bytes) else data
    return "".join((find(envelope, ".//ds:SignatureValue").text or "").split())


def element_with_id(envelope: etree._Element, identifier: str) -> etree._Element:
    matches = [node for node in envelope.iter() if isinstance(node.tag, str)
               and any(node.get(attribute) == identifier for attribute in ID_ATTRIBUTES)]
    assert len(matches) == 1, f"{len(matches)} elements have Id {identifier!r}"
    return matches[0]


def resign(envelope: etree._Element, key, *, digest_method: str = SHA256, signature_method: str | None = None,
           references: list[str] | None = None) -> etree._Element:
    """Recompute every reference digest (``references``: keep only these URIs, e.g. ``["#TS-…"]``)
    with ``digest_method`` and re-sign SignedInfo with ``signature_method`` (in place). A reference
    with the enveloped-signature transform is digested without the Signature inside its target.

    Independent of ``Signer``: what a capable attacker or a foreign stack would produce."""
    if signature_method is None:
        signature_method = ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey) else RSA_SHA256
    signed_info = find(envelope, ".//ds:SignedInfo")
    find(signed_info, "ds:SignatureMethod").set("Algorithm", signature_method)
    for reference in signed_info.findall(f"{{{DS_NS}}}Reference"):
        uri = reference.get("URI")
        if references is not None and uri not in references:
            signed_info.remove(reference)
            continue
        target = element_with_id(envelope, uri[1:])
        find(reference, "ds:DigestMethod").set("Algorithm", digest_method)
        algorithms = [transform.get("Algorithm") for transform in reference.iterfind(f"{{{DS_NS}}}Transforms/{{{DS_NS}}}Transform")]
        if ENVELOPED_SIGNATURE in algorithms:
            target = _without_signature(target, signed_info.getparent())
        canonical = etree.tostring(target, method="c14n", exclusive=True, with_comments=False)
        find(reference, "ds:DigestValue").text = base64.b64encode(_DIGEST_FUNCTIONS[digest_method](canonical).digest()).decode()
    data = etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False)
    if signature_method == ECDSA_SHA256:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        value = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        value = key.sign(data, padding.PKCS1v15(), _RSA_HASHES[signature_method]())
    find(envelope, ".//ds:SignatureValue").text = base64.b64encode(value).decode()
    return envelope


def _without_signature(target: etree._Element, signature: etree._Element) -> etree._Element:
    """What XMLDSig's enveloped-signature transform digests: ``target`` without ``signature``."""
    if not any(ancestor is target for ancestor in signature.iterancestors()):
        return target
    path = []
    node = signature
    while node is not target:
        path.append(node.getparent().index(node))
        node = node.getparent()
    target_copy = copy.deepcopy(target)  # keeps the namespace declarations in scope
    signature_copy = target_copy
    for index in reversed(path):
        signature_copy = signature_copy[index]
    signature_copy.getparent().remove(signature_copy)
    return target_copy


def set_transforms(envelope: etree._Element, algorithms: list[str]) -> etree._Element:
    """Replace the transforms of every reference with ``algorithms`` (in place; re-sign after)."""
    for reference in envelope.iterfind(f".//{{{DS_NS}}}Reference"):
        transforms = reference.find(f"{{{DS_NS}}}Transforms")
        for transform in list(transforms):
            transforms.remove(transform)
        for algorithm in algorithms:
            etree.SubElement(transforms, f"{{{DS_NS}}}Transform", Algorithm=algorithm)
    return envelope


# --------------------------------------------------------------------------------- credentials

def expired_proxy(user: Credential, proxy_key=None) -> Credential:
    """An RFC 3820 proxy of ``user`` that expired an hour ago (make_proxy refuses to make one)."""
    proxy_key = proxy_key or pki_module.generate_key("rsa")
    now = dt.datetime.now(dt.timezone.utc)
    serial = int.from_bytes(hashlib.sha256(str(now).encode()).digest()[:7], "big")
    subject = x509.Name(list(user.cert.subject.rdns) + [x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])])
    proxy = (x509.CertificateBuilder().subject_name(subject).issuer_name(user.cert.subject)
             .public_key(proxy_key.public_key()).serial_number(serial)
             .not_valid_before(now - dt.timedelta(hours=3)).not_valid_after(now - dt.timedelta(hours=1))
             .add_extension(x509.UnrecognizedExtension(pki_module.OID_PROXY_CERT_INFO,
                                                       pki_module.encode_proxy_cert_info(pki_module.OID_PPL_INHERIT_ALL)),
                            critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .sign(user.key, hashes.SHA256()))
    return Credential(proxy, proxy_key, user.certificates, "expired test proxy")


def self_made_ca(root: Path, key_pool, cn: str = "Mallory Self-Made CA"):
    """A CA nobody trusts, with the same name prefix as the test CA, and a user it issued."""
    ca = pki_module.CertificateAuthority.create(root / "ca", f"/DC=org/DC=example/O=gridcredit-test/CN={cn}",
                                                key=key_pool.fresh())
    cert, key = ca.issue_user("Alice", root / "alice", key=key_pool.fresh())
    return ca, load_credential(cert, key)


def trust_dir_of(*sources: Path, into: Path) -> Path:
    """A trust directory holding the files of several (one CA per source)."""
    into.mkdir(parents=True, exist_ok=True)
    for source in sources:
        for path in source.iterdir():
            shutil.copy2(path, into / path.name)
    return into


def host_verifier(pki, **options) -> Verifier:
    """What a client uses to check the host's answers (the host signs with pki.host_cert)."""
    return Verifier(trust=pki.trust_store(), **options)


# -------------------------------------------------------------------------------------- hosts

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_tls(port: int, timeout_s: float = 20.0, process=None) -> None:
    deadline = time.monotonic() + timeout_s
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    while time.monotonic() < deadline:
        if process is not None and not process.is_alive():
            raise RuntimeError(f"the host process ended with {process.exitcode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with context.wrap_socket(raw, server_hostname="localhost"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered TLS on port {port} within {timeout_s} s")


@dataclasses.dataclass
class RunningHost:
    url: str
    port: int
    state_dir: Path
    replay_path: Path
    process: multiprocessing.Process | None = None

    def replay_entries(self) -> int:
        with contextlib.closing(sqlite3.connect(self.replay_path, timeout=5)) as connection:
            return connection.execute("SELECT count(*) FROM seen").fetchone()[0]

    def replay_keys(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.replay_path, timeout=5)) as connection:
            return {row[0] for row in connection.execute("SELECT key FROM seen")}


def host_config(state_dir: Path, port: int, *, host_cert: Path, host_key: Path, trust_dir: Path,
                request_bytes_max: int = 10_000_000, allow_weak_keys: bool = False) -> Config:
    return Config(state_dir=str(state_dir),
                  server=ServerConfig(port=port, workers=1, threads=8, request_bytes_max=request_bytes_max),
                  security=SecurityConfig(host_cert=str(host_cert), host_key=str(host_key), cert_dir=str(trust_dir),
                                          allow_weak_keys=allow_weak_keys))


@contextlib.contextmanager
def host_process(state_dir: Path, *, host_cert: Path, host_key: Path, trust_dir: Path, allow_weak_keys: bool = False):
    """``gridcredit.server.host.run_worker`` in a child process on a free port; yields a RunningHost."""
    from gridcredit.server.host import HostFiles, run_worker

    port = free_port()
    config = host_config(state_dir, port, host_cert=host_cert, host_key=host_key, trust_dir=trust_dir,
                         allow_weak_keys=allow_weak_keys)
    files = HostFiles(Path(host_cert), Path(host_key), Path(trust_dir))
    process = multiprocessing.get_context("fork").Process(target=run_worker, args=(config, files), daemon=True)
    process.start()
    try:
        wait_for_tls(port, process=process)
        yield RunningHost(f"https://localhost:{port}", port, state_dir, state_dir / "replay.sqlite", process)
    finally:
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)


@contextlib.contextmanager
def app_in_thread(app, *, host_cert: Path, host_key: Path):
    """Serve a WSGI ``app`` over TLS (cheroot, as the real host) in a thread; yields the base URL."""
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    port = free_port()
    server = wsgi.Server(("127.0.0.1", port), app, numthreads=4, timeout=10)
    server.ssl_adapter = BuiltinSSLAdapter(str(host_cert), str(host_key))
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{port}"
    finally:
        server.stop()
        thread.join(10)


def https_session(trust_dir: Path) -> requests.Session:
    session = requests.Session()
    session.verify = str(trust_dir)
    session.trust_env = False
    return session


def post_soap(session: requests.Session, url: str, data: bytes, **headers) -> requests.Response:
    return session.post(url, data=data, timeout=30,
                        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""', **headers})


# ------------------------------------------------------------------------------------- faults

@dataclasses.dataclass(frozen=True)
class FaultSeen:
    namespace: str
    code: str
    message: str
    envelope: etree._Element


def read_fault_response(status: int, content_type: str, body: bytes, verifier: Verifier, *,
                        expected_status: int = 500) -> FaultSeen:
    """Check the shape every refusal must have and return the fault: the HTTP status, an XML
    content type (never HTML), a SOAP 1.1 Fault, signed by the host."""
    assert status == expected_status, (status, body[:300])
    assert content_type.startswith("text/xml"), content_type
    assert b"<html" not in body.lower() and b"traceback" not in body.lower()
    verified = verifier.verify(body)  # the host signs its faults; SecurityError here fails the test
    fault = verified.body.find(f"{{{SOAP11_NS}}}Fault")
    assert fault is not None, body[:300]
    code_node = fault.find("faultcode")
    prefix, _, local = (code_node.text or "").strip().partition(":")
    namespace = code_node.nsmap.get(prefix)
    message = (fault.findtext("faultstring") or "").strip()
    return FaultSeen(namespace, local, message, verified.envelope)


def assert_wsse_fault(fault: FaultSeen, code: str | tuple[str, ...] | None = None, words: str | None = None) -> None:
    """A ``wsse:`` fault (prefix bound to the WS-Security namespace) with a sentence a person reads."""
    assert fault.namespace == WSSE_NS, (fault.namespace, fault.code, fault.message)
    if code is not None:
        codes = (code,) if isinstance(code, str) else code
        assert fault.code in codes, (fault.code, fault.message)
    # A person understands it: words, not a repr, an exception name or a stack trace.
    assert len(fault.message.split()) >= 4, fault.message
    assert "Traceback" not in fault.message and "Error(" not in fault.message, fault.message
    if words is not None:
        assert words.lower() in fault.message.lower(), (words, fault.message)


def refusal(verifier: Verifier, data: bytes, **options) -> SecurityError:
    """The SecurityError ``verifier`` raises for ``data`` (fails the test if it accepts)."""
    try:
        verifier.verify(data, **options)
    except SecurityError as error:
        return error
    raise AssertionError("the verifier accepted the message")


def skip_unless_ci(reason: str | None) -> None:
    """A component the tests need is missing: skip on a developer's machine, fail under CI (scripts/test.sh
    installs it there, so a skip would hide that the component never ran)."""
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
