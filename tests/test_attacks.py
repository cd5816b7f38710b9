"""The attack corpus: each attack against the running host over HTTPS, and against ``Verifier``.

Every attack must get a SOAP 1.1 fault (HTTP 500, text/xml, never HTML) whose faultcode is a
``wsse:`` QName bound to the WS-Security namespace, with a sentence a person understands, signed
by the host; and it must change no state: the replay cache gains nothing, and a fresh valid
request right after it still succeeds.
"""
from __future__ import annotations

import copy
import http.client
import os
import sqlite3
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from lxml import etree

from gridcredit.errors import SecurityError
from gridcredit.security.chain import TrustStore
from gridcredit.security.credentials import Credential
from gridcredit.security.replay import SqliteReplayCache
from gridcredit.security.wssec import (ENVELOPED_SIGNATURE, EXC_C14N, SOAP11_NS, SOAP12_NS, WSSE_NS, WSU_NS, Signer,
                                       Verifier)

from security_fixtures import (MD5, RSA_MD5, RSA_SHA1, SHA1, assert_wsse_fault, expired_proxy, find, host_process,
                               https_session, parse, post_soap, read_fault_response, refusal, resign, self_made_ca,
                               set_transforms, signed_request, trust_dir_of, whoami_envelope)

BIG_BYTES = 50 * 1024 * 1024


@dataclass
class Cast:
    """Who plays in the attacks."""
    alice: Credential
    untrusted: Credential
    revoked: Credential
    expired_proxy: Credential
    host_trust_dir: Path
    misleading: Credential              # a user of the trusted CA whose CN holds a right-to-left override


@pytest.fixture(scope="module")
def cast(pki, key_pool, tmp_path_factory) -> Cast:
    root = tmp_path_factory.mktemp("attack-pki")
    _, untrusted = self_made_ca(root / "mallory", key_pool)
    # Revocation needs a CA of our own (the session CA's users are shared).
    from gridcredit.security import pki as pki_module
    from gridcredit.security.credentials import load_credential
    revoking = pki_module.CertificateAuthority.create(root / "revoking-ca", "/DC=org/DC=example/O=gridcredit-test/CN=Revoking CA",
                                                      key=key_pool.fresh())
    cert, key = revoking.issue_user("Rita Revoked", root / "rita", key=key_pool.fresh())
    revoked = load_credential(cert, key)
    revoking.revoke(revoked.cert)
    revoking.export_trust(root / "revoking-trust")
    trust = trust_dir_of(pki.trust_dir, root / "revoking-trust", into=root / "host-trust")
    alice = pki.user("Alice").credential
    misleading = pki.user("Ali\u202ece").credential
    return Cast(alice, untrusted, revoked, expired_proxy(alice, key_pool.any()), trust, misleading)


@pytest.fixture(scope="module")
def host(pki, cast, tmp_path_factory):
    state = tmp_path_factory.mktemp("attack-host")
    with host_process(state, host_cert=pki.host_cert, host_key=pki.host_key, trust_dir=cast.host_trust_dir) as running:
        yield running


@pytest.fixture(scope="module")
def session(pki):
    return https_session(pki.trust_dir)


# ------------------------------------------------------------------------------- the attacks

def _signed(cast: Cast, **options) -> etree._Element:
    return parse(signed_request(cast.alice, **options))


def unsigned_body(cast):
    return etree.tostring(whoami_envelope())


def unsigned_with_timestamp_only(cast):
    """A Security header with a Timestamp and a token, but no signature at all."""
    envelope = _signed(cast)
    signature = find(envelope, ".//ds:Signature")
    signature.getparent().remove(signature)
    return etree.tostring(envelope)


def partly_signed(cast):
    """Only the Timestamp is signed; the Body is whatever the attacker wants."""
    envelope = _signed(cast)
    timestamp_id = find(envelope, ".//wsu:Timestamp").get(f"{{{WSU_NS}}}Id")
    resign(envelope, cast.alice.key, references=[f"#{timestamp_id}"])
    return etree.tostring(envelope)


def _forged_body() -> etree._Element:
    body = etree.Element(f"{{{SOAP11_NS}}}Body")
    etree.SubElement(body, "{urn:gridcredit:bank:1}Transfer").text = "everything to Mallory"
    return body


def body_moved_into_header(cast):
    envelope = _signed(cast)
    header, body = find(envelope, "soap:Header"), find(envelope, "soap:Body")
    envelope.remove(body)
    header.append(body)
    envelope.append(_forged_body())
    return etree.tostring(envelope)


def body_moved_into_header_wrapper(cast):
    envelope = _signed(cast)
    header, body = find(envelope, "soap:Header"), find(envelope, "soap:Body")
    envelope.remove(body)
    etree.SubElement(header, "{urn:attacker}Wrapper").append(body)
    envelope.append(_forged_body())
    return etree.tostring(envelope)


def body_wrapped_inside_new_body(cast):
    envelope = _signed(cast)
    body = find(envelope, "soap:Body")
    envelope.remove(body)
    forged = _forged_body()
    etree.SubElement(forged, "{urn:attacker}Wrapper").append(body)
    envelope.append(forged)
    return etree.tostring(envelope)


def duplicate_ids(cast):
    """The signed Body goes into a header; a forged Body takes its Id."""
    envelope = _signed(cast)
    header, body = find(envelope, "soap:Header"), find(envelope, "soap:Body")
    envelope.remove(body)
    header.append(body)
    forged = _forged_body()
    forged.set(f"{{{WSU_NS}}}Id", body.get(f"{{{WSU_NS}}}Id"))
    envelope.append(forged)
    return etree.tostring(envelope)


def second_timestamp(cast):
    envelope = _signed(cast)
    timestamp = find(envelope, ".//wsu:Timestamp")
    twin = copy.deepcopy(timestamp)
    twin.set(f"{{{WSU_NS}}}Id", "TS-forged")
    timestamp.addnext(twin)
    return etree.tostring(envelope)


def timestamp_wrapping(cast):
    """A captured, expired message: its signed Timestamp is moved out of the Security header and a
    fresh (unsigned) one put in its place."""
    envelope = _signed(cast, clock=lambda: time.time() - 3600)
    security, header = find(envelope, ".//wsse:Security"), find(envelope, "soap:Header")
    old = find(security, "wsu:Timestamp")
    fresh = parse(signed_request(cast.alice)).find(f".//{{{WSU_NS}}}Timestamp")
    fresh.set(f"{{{WSU_NS}}}Id", "TS-fresh")
    old.addprevious(fresh)
    security.remove(old)
    header.append(old)
    return etree.tostring(envelope)


def security_header_duplicated(cast):
    envelope = _signed(cast)
    security = find(envelope, ".//wsse:Security")
    twin = copy.deepcopy(security)
    for node in twin.iter():
        if node.get(f"{{{WSU_NS}}}Id"):
            node.set(f"{{{WSU_NS}}}Id", "copy-" + node.get(f"{{{WSU_NS}}}Id"))
    security.addnext(twin)
    return etree.tostring(envelope)


def expired_timestamp(cast):
    return signed_request(cast.alice, clock=lambda: time.time() - 3600)


def future_timestamp(cast):
    return signed_request(cast.alice, clock=lambda: time.time() + 3600)


def missing_timestamp(cast):
    envelope = _signed(cast)
    timestamp = find(envelope, ".//wsu:Timestamp")
    timestamp.getparent().remove(timestamp)
    resign(envelope, cast.alice.key, references=["#" + find(envelope, "soap:Body").get(f"{{{WSU_NS}}}Id")])
    return etree.tostring(envelope)


def wrong_key(cast):
    """Alice's certificate in the token, the signature made with someone else's key."""
    return signed_request(Credential(cast.alice.cert, cast.untrusted.key, ()))


def untrusted_ca(cast):
    return signed_request(cast.untrusted)


def revoked_user(cast):
    return signed_request(cast.revoked)


def expired_proxy_signer(cast):
    return signed_request(cast.expired_proxy)


def _weak_key_proxy(label: str, make_key):
    """A proxy that Alice really signed, whose own key is too weak; the message is signed with it."""
    def attack(cast):
        from gridcredit.security import pki as pki_module
        alice = cast.alice
        proxy, key = pki_module.make_proxy(alice.cert, alice.key, alice.chain, hours=1, proxy_key=make_key())
        return signed_request(Credential(proxy, key, alice.certificates, f"{label} proxy"))
    attack.__name__ = f"proxy_with_{label}_key"
    return attack


def _rsa_1024():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def _p192():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP192R1())


def right_to_left_override_in_dn(cast):
    """A certificate of the trusted CA whose CN reads as another name (U+202E)."""
    return signed_request(cast.misleading)


def _algorithm(digest_method=None, signature_method=None):
    def attack(cast):
        envelope = _signed(cast)
        options = {}
        if digest_method:
            options["digest_method"] = digest_method
        if signature_method:
            options["signature_method"] = signature_method
        resign(envelope, cast.alice.key, **options)
        return etree.tostring(envelope)
    attack.__name__ = f"algorithm_{(digest_method or signature_method).rsplit('#', 1)[-1]}"
    return attack


def xxe(cast):
    data = signed_request(cast.alice).decode()
    data = data.replace("<tns:WhoAmI", "<tns:WhoAmI><leak>&xxe;</leak></tns:WhoAmI><tns:Ignored", 1)
    return ('<?xml version="1.0"?>\n<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n' + data).encode()


def billion_laughs(cast):
    entities = ['<!ENTITY lol "lol">'] + [f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
                                            for i in range(1, 10)]
    return (f'<?xml version="1.0"?><!DOCTYPE Envelope [{"".join(entities)}]>'
            f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Header/><soap:Body>&lol9;</soap:Body></soap:Envelope>').encode()


def fifty_megabytes(cast):
    data = signed_request(cast.alice)
    return data.replace(b"</soap:Body>", b"<pad>" + b"A" * BIG_BYTES + b"</pad></soap:Body>")


def nesting_100k(cast):
    depth = 100_000
    return (f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Header/><soap:Body>'.encode()
            + b"<a>" * depth + b"</a>" * depth + b"</soap:Body></soap:Envelope>")


def garbage_bytes(cast):
    return os.urandom(4096)


def soap12(cast):
    """A properly signed SOAP 1.2 envelope (the host speaks 1.1)."""
    envelope = _signed(cast)
    for node in (envelope, find(envelope, "soap:Header"), find(envelope, "soap:Body")):
        node.tag = f"{{{SOAP12_NS}}}{etree.QName(node).localname}"
    resign(envelope, cast.alice.key)
    return etree.tostring(envelope)


def _body_payload(attributes: str):
    def attack(cast):
        payload = etree.fromstring(f'<tns:WhoAmI xmlns:tns="urn:gridcredit:bank:1"><tns:x {attributes}/></tns:WhoAmI>')
        return signed_request(cast.alice, payload=payload)
    attack.__name__ = "body_" + attributes.split("=")[0]
    return attack


# node-soap signs with the transforms [enveloped-signature, exc-c14n] (issue 11.8): they must open no
# new way round the wrapping defences. Enveloped-signature leaves out of a digest the Signature that
# sits inside the signed element; ours must sit in the Security header, beside what it signs.

def _node_soap_style(cast) -> etree._Element:
    """A valid request whose references carry [enveloped-signature, exc-c14n]."""
    envelope = set_transforms(_signed(cast), [ENVELOPED_SIGNATURE, EXC_C14N])
    return resign(envelope, cast.alice.key)


def enveloped_signature_inside_body(cast):
    """The Signature moved into the Body it signs: a valid XMLDSig enveloped signature (xmlsec1
    verifies it), refused because our Signature lives in the Security header."""
    envelope = _node_soap_style(cast)
    find(envelope, "soap:Body").append(find(envelope, ".//ds:Signature"))
    return etree.tostring(resign(envelope, cast.alice.key))


def enveloped_signature_over_security_header(cast):
    """A reference to the whole Security header, digested without the Signature it holds."""
    envelope = _node_soap_style(cast)
    security = find(envelope, ".//wsse:Security")
    security.set(f"{{{WSU_NS}}}Id", "SEC-1")
    first = find(envelope, ".//ds:Reference")
    extra = copy.deepcopy(first)
    extra.set("URI", "#SEC-1")
    first.addnext(extra)
    return etree.tostring(resign(envelope, cast.alice.key))


def enveloped_body_moved_into_header(cast):
    envelope = _node_soap_style(cast)
    header, body = find(envelope, "soap:Header"), find(envelope, "soap:Body")
    envelope.remove(body)
    header.append(body)
    envelope.append(_forged_body())
    return etree.tostring(envelope)


def enveloped_body_wrapped_inside_new_body(cast):
    envelope = _node_soap_style(cast)
    body = find(envelope, "soap:Body")
    envelope.remove(body)
    forged = _forged_body()
    etree.SubElement(forged, "{urn:attacker}Wrapper").append(body)
    envelope.append(forged)
    return etree.tostring(envelope)


def transforms_xslt_before_exc_c14n(cast):
    envelope = set_transforms(_signed(cast), ["http://www.w3.org/TR/1999/REC-xslt-19991116", EXC_C14N])
    return etree.tostring(resign(envelope, cast.alice.key))


def token_outside_security(cast):
    envelope = _signed(cast)
    token = find(envelope, ".//wsse:BinarySecurityToken")
    token.getparent().remove(token)
    find(envelope, "soap:Header").append(token)
    return etree.tostring(envelope)


# (attack, wsse codes accepted, words the faultstring must contain)
ATTACKS: list[tuple[Callable, tuple[str, ...], str | None]] = [
    (unsigned_body, ("InvalidSecurity",), "Security"),
    (unsigned_with_timestamp_only, ("InvalidSecurity",), "Signature"),
    (partly_signed, ("FailedCheck",), "does not cover the SOAP Body"),
    (body_moved_into_header, ("FailedCheck",), "does not cover the SOAP Body"),
    (body_moved_into_header_wrapper, ("InvalidSecurity",), "outside the Body"),
    (body_wrapped_inside_new_body, ("InvalidSecurity",), "outside the Body"),
    (duplicate_ids, ("InvalidSecurity",), "more than once"),
    (second_timestamp, ("InvalidSecurity",), "Timestamp"),
    (timestamp_wrapping, ("FailedCheck",), "Timestamp"),
    (security_header_duplicated, ("InvalidSecurity",), "Security"),
    (expired_timestamp, ("MessageExpired",), "expired"),
    (future_timestamp, ("MessageExpired",), "future"),
    (missing_timestamp, ("InvalidSecurity",), "Timestamp"),
    (wrong_key, ("FailedCheck",), "signature is not valid"),
    (untrusted_ca, ("InvalidSecurityToken", "FailedAuthentication"), None),
    (revoked_user, ("InvalidSecurityToken", "FailedAuthentication"), "revoked"),
    (expired_proxy_signer, ("InvalidSecurityToken", "FailedAuthentication"), "expired"),
    (_weak_key_proxy("rsa1024", _rsa_1024), ("InvalidSecurityToken",), "RSA key of 1024 bits"),
    (_weak_key_proxy("p192", _p192), ("InvalidSecurityToken",), "secp192r1"),
    (right_to_left_override_in_dn, ("InvalidSecurityToken",), "U+202E RIGHT-TO-LEFT OVERRIDE"),
    (_algorithm(digest_method=SHA1), ("UnsupportedAlgorithm",), "sha1"),
    (_algorithm(signature_method=RSA_SHA1), ("UnsupportedAlgorithm",), "rsa-sha1"),
    (_algorithm(digest_method=MD5), ("UnsupportedAlgorithm",), "md5"),
    (_algorithm(signature_method=RSA_MD5), ("UnsupportedAlgorithm",), "rsa-md5"),
    (xxe, ("InvalidSecurity",), "DTD"),
    (billion_laughs, ("InvalidSecurity",), "DTD"),
    (fifty_megabytes, ("InvalidSecurity",), "bytes"),
    (nesting_100k, ("InvalidSecurity",), "nested deeper"),
    (garbage_bytes, ("InvalidSecurity",), "XML"),
    (soap12, ("InvalidSecurity",), "SOAP 1.2"),
    (_body_payload('href="#x"'), ("InvalidSecurity",), "href"),
    (_body_payload('id="x"'), ("InvalidSecurity",), "href/id"),
    (token_outside_security, ("InvalidSecurityToken",), "Security header"),
    (enveloped_signature_inside_body, ("InvalidSecurity",), "no ds:Signature in the Security header"),
    (enveloped_signature_over_security_header, ("InvalidSecurity",), "element that holds it"),
    (enveloped_body_moved_into_header, ("FailedCheck",), "does not cover the SOAP Body"),
    (enveloped_body_wrapped_inside_new_body, ("InvalidSecurity",), "outside the Body"),
    (transforms_xslt_before_exc_c14n, ("UnsupportedAlgorithm",), "REC-xslt-19991116"),
]
IDS = [attack.__name__ for attack, _, _ in ATTACKS]


def _xmlsec1_verifies(tmp_path: Path, data: bytes, cert, more_id_nodes: tuple[str, ...] = ()) -> bool:
    from test_interop import xmlsec1_verify
    (tmp_path / "signer.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result = xmlsec1_verify(tmp_path, data, tmp_path / "signer.pem", more_id_nodes=more_id_nodes)
    return result.returncode == 0 and "OK" in result.stderr


def test_the_attack_helpers_are_sound(pki, cast, tmp_path):
    """Controls: what the attacks are built from is valid, so each refusal is for its own reason."""
    check = Verifier(trust=TrustStore.from_directory(cast.host_trust_dir))
    check.verify(signed_request(cast.alice))
    envelope = parse(signed_request(cast.alice))
    resign(envelope, cast.alice.key)  # re-signing a genuine message with the defaults keeps it valid
    check.verify(etree.tostring(envelope))
    from gridcredit.security.wssec import VerifyPolicy
    Verifier(trust=TrustStore.from_directory(cast.host_trust_dir), policy=VerifyPolicy(allow_sha1=True)).verify(
        _algorithm(digest_method=SHA1)(cast))
    Verifier(trust=TrustStore.from_directory(cast.host_trust_dir), policy=VerifyPolicy(allow_sha1=True)).verify(
        _algorithm(signature_method=RSA_SHA1)(cast))
    # The weak-key proxies are valid apart from their keys.
    legacy = Verifier(trust=TrustStore.from_directory(cast.host_trust_dir, allow_weak_keys=True))
    legacy.verify(_weak_key_proxy("rsa1024", _rsa_1024)(cast))
    legacy.verify(_weak_key_proxy("p192", _p192)(cast))
    # node-soap's transforms on a genuine message are accepted; the enveloped attacks built from it are
    # genuine XMLDSig signatures (xmlsec1 verifies them), so each is refused for our own rule.
    check.verify(etree.tostring(_node_soap_style(cast)))
    assert _xmlsec1_verifies(tmp_path, enveloped_signature_inside_body(cast), cast.alice.cert)
    assert _xmlsec1_verifies(tmp_path, enveloped_signature_over_security_header(cast), cast.alice.cert,
                             (f"{WSSE_NS}:Security",))
    # The revoked user is valid apart from the revocation; the expired proxy's user is fine.
    revoked_elsewhere = Verifier(pinned_certificates=[cast.revoked.cert])
    revoked_elsewhere.verify(signed_request(cast.revoked))


# --------------------------------------------------------------------------- direct Verifier

@pytest.mark.parametrize("attack, codes, words", ATTACKS, ids=IDS)
def test_verifier_refuses(cast, tmp_path, attack, codes, words):
    cache = SqliteReplayCache(tmp_path / "replay.sqlite")
    check = Verifier(trust=TrustStore.from_directory(cast.host_trust_dir), replay_cache=cache)
    error = refusal(check, attack(cast))
    assert error.code in codes, (error.code, str(error))
    if words:
        assert words.lower() in str(error).lower(), str(error)
    assert "root:" not in str(error)
    with sqlite3.connect(tmp_path / "replay.sqlite") as connection:
        assert connection.execute("SELECT count(*) FROM seen").fetchone()[0] == 0, "a refused message entered the cache"


def test_verifier_refuses_a_replay(cast, tmp_path):
    check = Verifier(trust=TrustStore.from_directory(cast.host_trust_dir), replay_cache=SqliteReplayCache(tmp_path / "r.sqlite"))
    data = signed_request(cast.alice)
    check.verify(data)
    assert "already received" in str(refusal(check, data))


# ------------------------------------------------------------------------------ over HTTPS

def _send(host, data: bytes) -> tuple[int, str, bytes]:
    """POST raw bytes to /bank; a body the host refuses unread may end the upload early."""
    context = ssl.create_default_context(capath=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", host.port, context=context, timeout=60)
    try:
        connection.putrequest("POST", "/bank")
        connection.putheader("Content-Type", "text/xml; charset=utf-8")
        connection.putheader("SOAPAction", '""')
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders()
        try:
            view = memoryview(data)
            for start in range(0, len(data), 1 << 20):
                connection.send(view[start:start + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the host answered and closed before reading it all
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def _valid_call_succeeds(host, pki, cast, session) -> None:
    data = signed_request(cast.alice)
    response = post_soap(session, f"{host.url}/bank", data)
    assert response.status_code == 200, response.content[:500]
    from gridcredit.security.wssec import Verifier as _Verifier
    verified = _Verifier(trust=pki.trust_store()).verify(response.content,
                                                         expected_confirmation="".join(
                                                             find(parse(data), ".//ds:SignatureValue").text.split()))
    assert verified.body.find(".//{urn:gridcredit:common:1}dn") is not None or b"Alice" in response.content


def _check_refused_over_https(host, pki, cast, session, data: bytes, codes, words) -> None:
    before = host.replay_entries()
    status, content_type, body = _send(host, data)
    fault = read_fault_response(status, content_type, body, Verifier(trust=pki.trust_store()))
    assert_wsse_fault(fault, codes, words)
    assert "root:" not in fault.message  # nothing of /etc/passwd leaks
    assert host.replay_entries() == before, "a refused message entered the replay cache"
    _valid_call_succeeds(host, pki, cast, session)
    assert host.replay_entries() == before + 1


@pytest.mark.parametrize("attack, codes, words", ATTACKS, ids=IDS)
def test_host_refuses(host, pki, cast, session, attack, codes, words):
    _check_refused_over_https(host, pki, cast, session, attack(cast), codes, words)


def test_host_refuses_a_replayed_request(host, pki, cast, session):
    data = signed_request(cast.alice)
    first = post_soap(session, f"{host.url}/bank", data)
    assert first.status_code == 200
    _check_refused_over_https(host, pki, cast, session, data, ("InvalidSecurity",), "already received")


def test_the_host_fault_is_signed_by_the_host(host, pki, cast):
    status, content_type, body = _send(host, unsigned_body(cast))
    verified = Verifier(trust=pki.trust_store()).verify(body)
    assert verified.signer == pki.host_credential().cert
    code = verified.body.find(f"{{{SOAP11_NS}}}Fault/faultcode")
    assert code.nsmap[code.text.split(":")[0]] == WSSE_NS


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32", "utf-32-le", "utf-7"])
def test_xxe_in_other_encodings_is_refused(cast, codec):
    declared = {"utf-16-be": "UTF-16BE", "utf-32-le": "UTF-32LE"}.get(codec, codec.upper())
    text = (f'<?xml version="1.0" encoding="{declared}"?><!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            + signed_request(cast.alice).decode().replace("<tns:WhoAmI", "<tns:WhoAmI>&xxe;</tns:WhoAmI><tns:X", 1))
    error = refusal(Verifier(trust=TrustStore.from_directory(cast.host_trust_dir)), text.encode(codec))
    assert error.code == "InvalidSecurity" and "root:" not in str(error)


def test_the_untrusted_parser_counts_elements_and_checks_a_lower_depth_itself():
    # Depth above 256 is libxml2's own refusal (nesting_100k above); a lower configured limit and
    # the element count are checked by our parser after the parse.
    from gridcredit.security.xmlparse import ParseLimits, parse_untrusted
    parse_untrusted(b"<a>" * 8 + b"</a>" * 8, ParseLimits(depth_max=8))
    with pytest.raises(SecurityError, match="nested deeper than 8"):
        parse_untrusted(b"<r><b/>" + b"<a>" * 8 + b"</a>" * 8 + b"</r>", ParseLimits(depth_max=8))
    parse_untrusted(b"<r>" + b"<a/>" * 9 + b"</r>", ParseLimits(elements_max=10))
    with pytest.raises(SecurityError, match="more than 10 elements"):
        parse_untrusted(b"<r>" + b"<a/>" * 10 + b"</r>", ParseLimits(elements_max=10))


# ------------------------------------------------------------------- SOAP processing rules

WSA_NS = "http://www.w3.org/2005/08/addressing"
SOAP11_NEXT_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"


def _signed_with(cast: Cast, *, operations: int = 1, headers: tuple[etree._Element, ...] = ()) -> bytes:
    """A signed request whose Body holds ``operations`` operation elements, with ``headers`` besides Security."""
    envelope = whoami_envelope()
    body = envelope.find(f"{{{SOAP11_NS}}}Body")
    body.remove(body[0])
    for index in range(operations):
        etree.SubElement(body, "{urn:gridcredit:bank:1}" + ("WhoAmI" if index % 2 == 0 else "MoneySupply"))
    header = envelope.find(f"{{{SOAP11_NS}}}Header")
    for element in headers:
        header.append(element)
    return etree.tostring(Signer(cast.alice).sign(envelope))


def _header(tag: str, **attributes) -> etree._Element:
    element = etree.Element(tag)
    for name, value in attributes.items():
        element.set({"must_understand": f"{{{SOAP11_NS}}}mustUnderstand", "actor": f"{{{SOAP11_NS}}}actor"}[name], value)
    return element


def _soap_fault(pki, data: bytes, host):
    status, content_type, body = _send(host, data)
    return read_fault_response(status, content_type, body, Verifier(trust=pki.trust_store()))


@pytest.mark.parametrize("operations", [2, 3, 0])
def test_host_refuses_a_body_that_does_not_hold_exactly_one_operation(host, pki, cast, session, operations):
    """Before: a signed Body with two operations ran the first and ignored the second."""
    fault = _soap_fault(pki, _signed_with(cast, operations=operations), host)
    assert fault.namespace == SOAP11_NS and fault.code == "Client", fault
    assert "exactly one" in fault.message and f"holds {operations}" in fault.message
    _valid_call_succeeds(host, pki, cast, session)


@pytest.mark.parametrize("value", ["1", "true", " 1 "])
@pytest.mark.parametrize("tag", ["{urn:example:tracing}Trace", f"{{{WSA_NS}}}Action"])
def test_host_answers_mustunderstand_for_a_header_it_does_not_process(host, pki, cast, tag, value):
    fault = _soap_fault(pki, _signed_with(cast, headers=(_header(tag, must_understand=value),)), host)
    assert fault.namespace == SOAP11_NS and fault.code == "MustUnderstand", fault
    assert etree.QName(tag).localname in fault.message and etree.QName(tag).namespace in fault.message


@pytest.mark.parametrize("attributes", [{"must_understand": "0"}, {"must_understand": "false"}, {},
                                        {"must_understand": "1", "actor": "http://example.org/some-other-node"}])
def test_host_processes_headers_it_need_not_understand(host, pki, cast, session, attributes):
    data = _signed_with(cast, headers=(_header("{urn:example:tracing}Trace", **attributes),))
    response = post_soap(session, f"{host.url}/bank", data)
    assert response.status_code == 200, response.content[:500]


def test_host_answers_mustunderstand_for_a_header_aimed_at_the_next_node(host, pki, cast):
    header = _header("{urn:example:tracing}Trace", must_understand="1", actor=SOAP11_NEXT_ACTOR)
    assert _soap_fault(pki, _signed_with(cast, headers=(header,)), host).code == "MustUnderstand"


def test_host_refuses_a_mustunderstand_value_that_is_not_a_boolean(host, pki, cast):
    fault = _soap_fault(pki, _signed_with(cast, headers=(_header("{urn:example:tracing}Trace", must_understand="yes"),)), host)
    assert fault.namespace == SOAP11_NS and fault.code == "Client" and "mustUnderstand" in fault.message


def test_a_host_for_legacy_peers_accepts_weak_keys_only_when_configured(pki, cast, session, tmp_path):
    """security.allow_weak_keys reaches the running host's trust store (off: refused above)."""
    with host_process(tmp_path, host_cert=pki.host_cert, host_key=pki.host_key, trust_dir=cast.host_trust_dir,
                      allow_weak_keys=True) as legacy:
        for proxy in (_weak_key_proxy("rsa1024", _rsa_1024), _weak_key_proxy("p192", _p192)):
            response = post_soap(session, f"{legacy.url}/bank", proxy(cast))
            assert response.status_code == 200, response.content[:500]
            assert b"Alice" in response.content
