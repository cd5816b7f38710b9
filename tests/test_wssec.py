"""WS-Security 1.1 signing and verification (security/wssec.py) without a server: round trips,
SignatureConfirmation, Timestamp rules with an injected clock, and the replay cache (memory and
SQLite, across processes and re-opens; refused messages never enter it)."""
from __future__ import annotations

import base64
import hashlib
import multiprocessing
import sqlite3
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from gridcredit.errors import SecurityError
from gridcredit.security import pki as pki_module
from gridcredit.security.replay import SqliteReplayCache
from gridcredit.security.wssec import (DS_NS, ECDSA_SHA256, RSA_SHA256, SOAP11_NS, WSSE11_NS, WSSE_NS, WSU_NS, X509_PKIPATH,
                                       X509V3, MemoryReplayCache, Signer, Verifier, VerifyPolicy, decode_pkipath,
                                       encode_pkipath)

from security_fixtures import (BANK_NS, find, parse, refusal, resign, set_transforms, signature_value, signed_request,
                               whoami_envelope)

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture(scope="module")
def alice(pki):
    return pki.user("Alice").credential


@pytest.fixture(scope="module")
def ec_user(pki):
    return pki.user("Erin EC", key=pki_module.generate_key("ec")).credential


def verifier(pki, **options) -> Verifier:
    return Verifier(trust=pki.trust_store(), **options)


def fixed_clock(moment: float):
    return lambda: moment


# ------------------------------------------------------------------------------ round trips

def test_rsa_round_trip_returns_the_signed_body_and_the_caller(pki, alice):
    data = signed_request(alice)
    envelope = parse(data)
    assert find(envelope, ".//ds:SignatureMethod").get("Algorithm") == RSA_SHA256
    assert find(envelope, ".//wsse:BinarySecurityToken").get("ValueType") == X509V3
    verified = verifier(pki).verify(data)
    assert verified.principal.dn == alice.dn and not verified.principal.is_proxy
    assert verified.body.tag == f"{{{SOAP11_NS}}}Body" and verified.body[0].tag == f"{{{BANK_NS}}}WhoAmI"
    assert verified.body.getparent() is verified.envelope
    assert {etree.QName(node).localname for node in verified.signed_elements} == {"Body", "Timestamp"}
    assert verified.signature_value == signature_value(data)
    assert verified.signer == alice.cert


def test_ec_round_trip(pki, ec_user):
    data = signed_request(ec_user)
    assert find(parse(data), ".//ds:SignatureMethod").get("Algorithm") == ECDSA_SHA256
    verified = verifier(pki).verify(data)
    assert verified.principal.dn == ec_user.dn


def test_security_header_shape(alice):
    envelope = parse(signed_request(alice))
    security = find(envelope, "soap:Header/wsse:Security")
    assert security.get(f"{{{SOAP11_NS}}}mustUnderstand") == "1"
    created = find(security, "wsu:Timestamp/wsu:Created").text
    expires = find(security, "wsu:Timestamp/wsu:Expires").text
    from gridcredit.security.wssec import parse_xsd_datetime
    assert (parse_xsd_datetime(expires) - parse_xsd_datetime(created)).total_seconds() == 300
    for reference in security.iterfind(".//ds:Reference", {"ds": DS_NS}):
        assert [t.get("Algorithm") for t in reference.iterfind(".//ds:Transform", {"ds": DS_NS})] == \
            ["http://www.w3.org/2001/10/xml-exc-c14n#"]
        assert reference.find(f"{{{DS_NS}}}DigestMethod").get("Algorithm") == "http://www.w3.org/2001/04/xmlenc#sha256"
    token_id = find(security, "wsse:BinarySecurityToken").get(f"{{{WSU_NS}}}Id")
    assert find(security, "ds:Signature/ds:KeyInfo/wsse:SecurityTokenReference/wsse:Reference").get("URI") == f"#{token_id}"


def test_a_signed_fault_does_not_say_its_security_header_must_be_understood(pki, alice):
    """A stub without WS-Security handling (JAX-WS, Axis, plain gSOAP) must read our fault, not
    replace it with its own MustUnderstand fault (issue 11.9b); the fault still verifies."""
    from gridcredit.soapfault import security_fault
    envelope = Signer(alice).sign(security_fault("FailedCheck", "the signature does not verify"))
    security = find(envelope, "soap:Header/wsse:Security")
    assert security.get(f"{{{SOAP11_NS}}}mustUnderstand") is None
    verified = verifier(pki).verify(etree.tostring(envelope))
    assert etree.QName(verified.body[0]).localname == "Fault"


def test_proxy_chain_travels_as_pkipath(pki, alice):
    proxy = pki.proxy("Alice")
    data = signed_request(proxy)
    token = find(parse(data), ".//wsse:BinarySecurityToken")
    assert token.get("ValueType") == X509_PKIPATH
    path = decode_pkipath(base64.b64decode(token.text))
    assert path == [alice.cert, proxy.cert]  # from the anchor's side down to the signer
    principal = verifier(pki).verify(data).principal
    assert principal.dn == alice.dn and principal.is_proxy and principal.signer_dn == proxy.dn


def test_proxy_of_a_proxy(pki, alice):
    inner = pki.proxy(pki.proxy("Alice"))
    principal = verifier(pki).verify(signed_request(inner)).principal
    assert principal.dn == alice.dn and principal.is_proxy and principal.signer_dn == inner.dn


@pytest.mark.parametrize("signer_first", [True, False])
def test_proxy_chain_as_several_x509v3_tokens(pki, alice, signer_first):
    """WSS4J-style: one X509v3 token per certificate; the STR names the signer's. The tokens are
    not signed, so replacing the PKIPath token keeps the signature valid."""
    proxy = pki.proxy("Alice")
    envelope = parse(signed_request(proxy))
    token = find(envelope, ".//wsse:BinarySecurityToken")
    token.set("ValueType", X509V3)
    token.text = base64.b64encode(proxy.cert.public_bytes(serialization.Encoding.DER)).decode()
    other = etree.Element(f"{{{WSSE_NS}}}BinarySecurityToken", ValueType=X509V3)
    other.text = base64.b64encode(alice.cert.public_bytes(serialization.Encoding.DER)).decode()
    (token.addnext if signer_first else token.addprevious)(other)
    principal = verifier(pki).verify(etree.tostring(envelope)).principal
    assert principal.dn == alice.dn and principal.is_proxy and principal.signer_dn == proxy.dn


def test_proxy_without_its_chain_is_refused(pki):
    proxy = pki.proxy("Alice")
    envelope = parse(signed_request(proxy))
    token = find(envelope, ".//wsse:BinarySecurityToken")
    token.set("ValueType", X509V3)
    token.text = base64.b64encode(proxy.cert.public_bytes(serialization.Encoding.DER)).decode()
    assert refusal(verifier(pki), etree.tostring(envelope)).code in ("InvalidSecurityToken", "FailedAuthentication")


def test_pkipath_encoding_round_trip_and_garbage(alice, pki):
    certificates = [pki.ca.certificate, alice.cert]
    assert decode_pkipath(encode_pkipath(certificates)) == certificates
    for garbage in (b"", b"\x30\x00", b"\x31\x03abc", encode_pkipath(certificates) + b"\x00", b"\x30\x84\xff\xff\xff\xff"):
        with pytest.raises(SecurityError) as refused:
            decode_pkipath(garbage)
        assert refused.value.code == "InvalidSecurityToken"


@pytest.mark.parametrize("where", ["body", "timestamp", "signed_info"])
def test_any_change_to_signed_content_fails(pki, alice, where):
    envelope = parse(signed_request(alice))
    if where == "body":
        etree.SubElement(find(envelope, "soap:Body/*"), "extra").text = "1"
    elif where == "timestamp":
        created = find(envelope, ".//wsu:Created")
        created.text = created.text.replace(".", ".9", 1)[:-2] + "Z"
    else:
        find(envelope, ".//ds:Reference").set("Id", "changed")
    assert refusal(verifier(pki), etree.tostring(envelope)).code == "FailedCheck"


def test_comment_splitting_signed_text_is_refused(pki, alice):
    """Exclusive C14N drops comments: '1<!---->00' digests as '100' but reads as '1'."""
    payload = etree.fromstring('<p:Pay xmlns:p="urn:test"><amount>100</amount></p:Pay>')
    data = signed_request(alice, payload=payload)
    verifier(pki).verify(data)
    split = data.replace(b"<amount>100</amount>", b"<amount>1<!---->00</amount>")
    assert split != data
    assert refusal(verifier(pki), split).code == "InvalidSecurity"
    pi = data.replace(b"<amount>100</amount>", b"<amount>100<?x y?></amount>")
    assert refusal(verifier(pki), pi).code in ("FailedCheck", "InvalidSecurity")  # C14N keeps PIs: the digest breaks


# ------------------------------------------------------------------- SignatureConfirmation

def test_signature_confirmation_binds_a_response_to_its_request(pki, alice):
    request = signed_request(alice)
    request_value = verifier(pki).verify(request).signature_value
    host_signer = Signer(pki.host_credential())
    check = verifier(pki)

    response = etree.tostring(host_signer.sign(whoami_envelope(), confirm_signature_value=request_value))
    verified = check.verify(response, expected_confirmation=request_value)
    confirmation = find(verified.envelope, ".//wsse11:SignatureConfirmation".replace("wsse11:", f"{{{WSSE11_NS}}}"))
    assert any(node is confirmation for node in verified.signed_elements)

    other = etree.tostring(host_signer.sign(whoami_envelope(), confirm_signature_value="c29tZXRoaW5nIGVsc2U="))
    error = refusal(verifier(pki), other, expected_confirmation=request_value)
    assert error.code == "FailedCheck" and "different request" in str(error)

    unconfirmed = etree.tostring(host_signer.sign(whoami_envelope()))
    assert refusal(verifier(pki), unconfirmed, expected_confirmation=request_value).code == "FailedCheck"

    # A confirmation added after signing (not covered by the signature) does not count.
    envelope = parse(unconfirmed)
    added = etree.SubElement(find(envelope, ".//wsse:Security"), f"{{{WSSE11_NS}}}SignatureConfirmation", Value=request_value)
    added.set(f"{{{WSU_NS}}}Id", "SC-added")
    assert refusal(verifier(pki), etree.tostring(envelope), expected_confirmation=request_value).code == "FailedCheck"

    # Changing the confirmed value after signing breaks the digest.
    envelope = parse(response)
    find(envelope, f".//{{{WSSE11_NS}}}SignatureConfirmation").set("Value", "c29tZXRoaW5nIGVsc2U=")
    assert refusal(verifier(pki), etree.tostring(envelope), expected_confirmation="c29tZXRoaW5nIGVsc2U=").code == "FailedCheck"


# -------------------------------------------------------------------------------- Timestamp

T0 = float(int(time.time()))


@pytest.mark.parametrize("offset_s, accepted", [
    (0, True), (299, True), (300 + 60, True),    # TTL 300 s plus 60 s skew
    (300 + 61, False), (3600, False),
    (-60, True), (-61, False),                  # created in the future: skew 60 s
])
def test_timestamp_ttl_and_skew_default_policy(pki, alice, offset_s, accepted):
    data = signed_request(alice, clock=fixed_clock(T0))
    check = verifier(pki, clock=fixed_clock(T0 + offset_s))
    if accepted:
        check.verify(data)
    else:
        error = refusal(check, data)
        assert error.code == "MessageExpired"
        assert ("future" in str(error)) == (offset_s < 0)


def test_timestamp_policy_ttl_is_shorter_than_expires(pki, alice):
    data = signed_request(alice, clock=fixed_clock(T0))
    policy = VerifyPolicy(ttl_s=100, clock_skew_s=5)
    verifier(pki, policy=policy, clock=fixed_clock(T0 + 105)).verify(data)
    assert refusal(verifier(pki, policy=policy, clock=fixed_clock(T0 + 106)), data).code == "MessageExpired"


def test_timestamp_expires_earlier_than_the_policy_ttl(pki, alice):
    data = etree.tostring(Signer(alice, ttl_s=30, clock=fixed_clock(T0)).sign(whoami_envelope()))
    verifier(pki, clock=fixed_clock(T0 + 90)).verify(data)
    assert refusal(verifier(pki, clock=fixed_clock(T0 + 91)), data).code == "MessageExpired"


def test_zero_skew_policy(pki, alice):
    data = signed_request(alice, clock=fixed_clock(T0 + 1))
    policy = VerifyPolicy(clock_skew_s=0)
    assert refusal(verifier(pki, policy=policy, clock=fixed_clock(T0)), data).code == "MessageExpired"
    verifier(pki, policy=policy, clock=fixed_clock(T0 + 1)).verify(data)


def test_missing_timestamp_is_refused_unless_the_policy_allows_it(pki, alice):
    from security_fixtures import resign
    envelope = parse(signed_request(alice))
    timestamp = find(envelope, ".//wsu:Timestamp")
    body_uri = "#" + find(envelope, "soap:Body").get(f"{{{WSU_NS}}}Id")
    timestamp.getparent().remove(timestamp)
    resign(envelope, alice.key, references=[body_uri])
    data = etree.tostring(envelope)
    error = refusal(verifier(pki), data)
    assert error.code == "InvalidSecurity" and "Timestamp" in str(error)
    verifier(pki, policy=VerifyPolicy(require_timestamp=False)).verify(data)


def test_timestamp_that_expires_before_it_was_created(pki, alice):
    from security_fixtures import resign
    envelope = parse(signed_request(alice, clock=fixed_clock(T0)))
    find(envelope, ".//wsu:Expires").text = find(envelope, ".//wsu:Created").text.replace(
        str(time.gmtime(T0).tm_year), str(time.gmtime(T0).tm_year - 1), 1)
    resign(envelope, alice.key)
    assert refusal(verifier(pki, clock=fixed_clock(T0)), etree.tostring(envelope)).code == "InvalidSecurity"


# ----------------------------------------------------------------------------- replay cache

def test_memory_replay_cache_refuses_the_second_copy(pki, alice):
    check = verifier(pki, replay_cache=MemoryReplayCache())
    data = signed_request(alice)
    check.verify(data)
    error = refusal(check, data)
    assert error.code == "InvalidSecurity" and "already received" in str(error)
    check.verify(signed_request(alice))  # a new message is fine


def test_replay_is_recognised_whatever_the_spelling_of_the_signature(pki, alice, ec_user):
    """The last base64 character has unused bits, and ECDSA's (r, s) and (r, n - s) both verify:
    neither may open a second pass through the replay cache."""
    check = verifier(pki, replay_cache=MemoryReplayCache())
    data = signed_request(alice)
    check.verify(data)
    value = signature_value(data)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stem, padding_chars = value.rstrip("="), value[len(value.rstrip("=")):]
    assert padding_chars, "an RSA-2048 signature's base64 ends in padding"
    last = alphabet.index(stem[-1])
    respelled = stem[:-1] + alphabet[last ^ 1] + padding_chars
    assert base64.b64decode(respelled) == base64.b64decode(value)
    assert "already received" in str(refusal(check, data.replace(value.encode(), respelled.encode())))

    data = signed_request(ec_user)
    check.verify(data)
    value = signature_value(data)
    raw = base64.b64decode(value)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    malleated = base64.b64encode(r + (P256_ORDER - s).to_bytes(32, "big")).decode()
    twin = data.replace(value.encode(), malleated.encode())
    verifier(pki).verify(twin)  # the malleated signature is valid on its own...
    assert "already received" in str(refusal(check, twin))  # ...but it is the same message


def test_refused_messages_do_not_enter_the_replay_cache(pki, alice, tmp_path):
    """A tampered copy carries the genuine SignatureValue: if refusing it stored anything, the
    genuine message would then be refused as a replay (an attacker's denial of service)."""
    for cache in (MemoryReplayCache(), SqliteReplayCache(tmp_path / "replay.sqlite")):
        data = signed_request(alice, clock=fixed_clock(T0))
        tampered = data.replace(b"WhoAmI", b"WhoAreYou")
        assert refusal(verifier(pki, replay_cache=cache, clock=fixed_clock(T0)), tampered).code == "FailedCheck"
        # Too old for this verifier's clock; untrusted signer.
        assert refusal(verifier(pki, replay_cache=cache, clock=fixed_clock(T0 + 3600)), data).code == "MessageExpired"
        stranger = Verifier(pinned_certificates=[pki.ca.certificate], replay_cache=cache, clock=fixed_clock(T0))
        assert refusal(stranger, data).code == "FailedAuthentication"
        if isinstance(cache, SqliteReplayCache):
            with sqlite3.connect(tmp_path / "replay.sqlite") as connection:
                assert connection.execute("SELECT count(*) FROM seen").fetchone()[0] == 0
        verifier(pki, replay_cache=cache, clock=fixed_clock(T0)).verify(data)
        assert "already received" in str(refusal(verifier(pki, replay_cache=cache, clock=fixed_clock(T0)), data))


def _verify_in_child(trust_dir: str, replay_path: str, data: bytes, outcomes) -> None:
    from gridcredit.security.chain import TrustStore
    try:
        Verifier(trust=TrustStore.from_directory(trust_dir), replay_cache=SqliteReplayCache(replay_path)).verify(data)
        outcomes.put("accepted")
    except SecurityError as error:
        outcomes.put(f"refused: {error}")


def test_sqlite_replay_cache_is_shared_between_processes(pki, alice, tmp_path):
    context = multiprocessing.get_context("fork")
    outcomes = context.Queue()
    path = tmp_path / "replay.sqlite"
    data = signed_request(alice)
    first = context.Process(target=_verify_in_child, args=(str(pki.trust_dir), str(path), data, outcomes))
    first.start()
    first.join(30)
    assert first.exitcode == 0 and outcomes.get(timeout=5) == "accepted"
    # Another process (this one, with its own connection) sees the replay.
    error = refusal(verifier(pki, replay_cache=SqliteReplayCache(path)), data)
    assert "already received" in str(error)

    # Two processes racing on one new message: exactly one wins.
    data = signed_request(alice)
    racers = [context.Process(target=_verify_in_child, args=(str(pki.trust_dir), str(path), data, outcomes))
              for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    results = sorted(outcomes.get(timeout=5) for _ in racers)
    assert results[0] == "accepted" and results[1].startswith("refused: this message was already received"), results


def test_sqlite_replay_cache_survives_reopening(pki, alice, tmp_path):
    path = tmp_path / "replay.sqlite"
    data = signed_request(alice)
    cache = SqliteReplayCache(path)
    verifier(pki, replay_cache=cache).verify(data)
    del cache  # the process "restarts": a new cache object on the same file
    assert "already received" in str(refusal(verifier(pki, replay_cache=SqliteReplayCache(path)), data))


def test_sqlite_replay_entries_expire(tmp_path):
    cache = SqliteReplayCache(tmp_path / "replay.sqlite")
    assert cache.check_and_store("k", time.time() + 60)
    assert not cache.check_and_store("k", time.time() + 60)
    assert cache.check_and_store("old", time.time() - 1)
    assert cache.check_and_store("old", time.time() + 60)  # an expired entry does not block a key


def test_replay_cache_follows_the_verifiers_clock(pki, alice, tmp_path):
    """Entries expire by the verifier's clock, not the wall clock: a verifier whose time is behind
    (a test clock, or a slow suite) must still refuse the replay within its window."""
    policy = VerifyPolicy(ttl_s=5, clock_skew_s=1)   # a short window, so "behind" fits the test PKI's validity
    past = time.time() - 120
    for cache in (MemoryReplayCache(), SqliteReplayCache(tmp_path / "replay.sqlite")):
        data = signed_request(alice, clock=fixed_clock(past))
        verifier(pki, replay_cache=cache, policy=policy, clock=fixed_clock(past + 1)).verify(data)
        replayed = refusal(verifier(pki, replay_cache=cache, policy=policy, clock=fixed_clock(past + 2)), data)
        assert "already received" in str(replayed)


# ---------------------------------------------------------------- reference transforms (WS-I BSP)

ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
EXC = "http://www.w3.org/2001/10/xml-exc-c14n#"
EXC_WITH_COMMENTS = "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N11 = "http://www.w3.org/2006/12/xml-c14n11"
XPATH = "http://www.w3.org/TR/1999/REC-xpath-19991116"
XPATH_FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
XSLT = "http://www.w3.org/TR/1999/REC-xslt-19991116"
BASE64 = "http://www.w3.org/2000/09/xmldsig#base64"
STR_TRANSFORM = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#STR-Transform"


def with_transforms(credential, algorithms: list[str], *, envelope=None) -> bytes:
    """A request signed by ``credential`` whose every reference carries ``algorithms``, with correct
    digests (enveloped-signature honoured) and a valid signature: refused only for its transforms."""
    envelope = parse(signed_request(credential)) if envelope is None else envelope
    set_transforms(envelope, algorithms)
    resign(envelope, credential.key)
    return etree.tostring(envelope)


@pytest.mark.parametrize("who", ["rsa", "ec"])
def test_enveloped_signature_then_exclusive_c14n_is_accepted(pki, alice, ec_user, who):
    """node-soap's WSSecurityCert default (issue 11.8): WS-I BSP allows enveloped-signature before a
    final exc-c14n (R5423, R5412); it removes nothing from a Body or a Timestamp."""
    credential = alice if who == "rsa" else ec_user
    data = with_transforms(credential, [ENVELOPED, EXC])
    verified = verifier(pki).verify(data)
    assert verified.principal.dn == credential.dn
    assert {etree.QName(node).localname for node in verified.signed_elements} == {"Body", "Timestamp"}


def test_enveloped_signature_with_inclusive_namespaces_on_the_exc_c14n(pki, alice):
    """The InclusiveNamespaces PrefixList of the final exc-c14n still counts after enveloped-signature:
    a prefix that is only declared, not used, is part of the digest when listed."""
    envelope = whoami_envelope()
    envelope.find(f"{{{SOAP11_NS}}}Body")[0].set("{urn:example:note}tag", "x")
    signed = parse(etree.tostring(Signer(alice).sign(envelope)))
    set_transforms(signed, [ENVELOPED, EXC])
    for transform in signed.iterfind(f".//{{{DS_NS}}}Transform[@Algorithm='{EXC}']"):
        etree.SubElement(transform, "{http://www.w3.org/2001/10/xml-exc-c14n#}InclusiveNamespaces",
                         PrefixList="soap tns")
    # Digests with the listed prefixes, as the verifier must compute them.
    for reference in signed.iterfind(f".//{{{DS_NS}}}Reference"):
        target = next(node for node in signed.iter() if isinstance(node.tag, str)
                      and node.get(f"{{{WSU_NS}}}Id") == reference.get("URI")[1:])
        canonical = etree.tostring(target, method="c14n", exclusive=True, inclusive_ns_prefixes=["soap", "tns"])
        reference.find(f"{{{DS_NS}}}DigestValue").text = base64.b64encode(hashlib.sha256(canonical).digest()).decode()
    signed_info = signed.find(f".//{{{DS_NS}}}SignedInfo")
    value = alice.key.sign(etree.tostring(signed_info, method="c14n", exclusive=True), padding.PKCS1v15(), hashes.SHA256())
    signed.find(f".//{{{DS_NS}}}SignatureValue").text = base64.b64encode(value).decode()
    verifier(pki).verify(etree.tostring(signed))
    # Without the prefix list in the message the same digests no longer match.
    for inclusive in signed.iterfind(".//{http://www.w3.org/2001/10/xml-exc-c14n#}InclusiveNamespaces"):
        inclusive.getparent().remove(inclusive)
    assert refusal(verifier(pki), etree.tostring(signed)).code == "FailedCheck"


@pytest.mark.parametrize("algorithms", [
    [ENVELOPED],                      # R5412: the last transform must be exc-c14n
    [EXC, ENVELOPED],                 # R5412 again
    [ENVELOPED, ENVELOPED, EXC],
    [EXC, EXC],
    [XPATH, EXC],                     # not in R5423's list
    [XSLT, EXC],
    [BASE64, EXC],
    [XPATH_FILTER2, EXC],             # BSP allows it; we reference by Id only
    [STR_TRANSFORM],                  # BSP allows it (tokens); we sign no token through an STR
    [C14N], [C14N11], [EXC_WITH_COMMENTS], [ENVELOPED, C14N],
    [],                               # R5411: at least one transform
], ids=lambda algorithms: "+".join(a.rsplit("#", 1)[-1].rsplit("/", 1)[-1] for a in algorithms) or "none")
def test_other_transform_lists_are_refused(pki, alice, algorithms):
    error = refusal(verifier(pki), with_transforms(alice, algorithms))
    assert error.code == "UnsupportedAlgorithm", str(error)
    assert "transform" in str(error)


def test_a_reference_without_transforms_is_refused(pki, alice):
    """R5416: every reference has ds:Transforms."""
    envelope = parse(signed_request(alice))
    for transforms in envelope.iterfind(f".//{{{DS_NS}}}Transforms"):
        transforms.getparent().remove(transforms)
    resign(envelope, alice.key)
    assert refusal(verifier(pki), etree.tostring(envelope)).code == "UnsupportedAlgorithm"


def test_an_enveloped_signature_transform_with_parameters_is_refused(pki, alice):
    envelope = set_transforms(parse(signed_request(alice)), [ENVELOPED, EXC])
    for transform in envelope.iterfind(f".//{{{DS_NS}}}Transform[@Algorithm='{ENVELOPED}']"):
        etree.SubElement(transform, f"{{{DS_NS}}}XPath").text = "1"
    resign(envelope, alice.key)
    error = refusal(verifier(pki), etree.tostring(envelope))
    assert error.code == "UnsupportedAlgorithm" and "no parameters" in str(error)


def test_something_other_than_a_transform_in_transforms_is_refused(pki, alice):
    envelope = set_transforms(parse(signed_request(alice)), [EXC])
    for transforms in envelope.iterfind(f".//{{{DS_NS}}}Transforms"):
        transforms.insert(0, etree.Element("{urn:attacker}Transform", Algorithm=ENVELOPED))
    resign(envelope, alice.key)
    assert refusal(verifier(pki), etree.tostring(envelope)).code == "UnsupportedAlgorithm"


def test_two_transforms_elements_in_a_reference_are_refused(pki, alice):
    envelope = set_transforms(parse(signed_request(alice)), [ENVELOPED, EXC])
    for transforms in list(envelope.iterfind(f".//{{{DS_NS}}}Transforms")):
        transforms.addnext(etree.fromstring(f'<ds:Transforms xmlns:ds="{DS_NS}"><ds:Transform Algorithm="{XSLT}"/></ds:Transforms>'))
    resign(envelope, alice.key)
    assert refusal(verifier(pki), etree.tostring(envelope)).code == "InvalidSecurity"
