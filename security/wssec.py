"""OASIS WS-Security 1.1 (X.509 Token Profile) signing and verification for SOAP messages.

Outbound (``Signer``): a ``wsse:Security`` header with a ``wsu:Timestamp`` (Created, Expires =
Created + TTL), the signer's certificate as a ``wsse:BinarySecurityToken`` (X509v3, or
X509PKIPathv1 carrying the whole chain when the signer is a proxy), and a ``ds:Signature`` over
the Body, the Timestamp (and a ``wsse11:SignatureConfirmation`` on responses) with exclusive
C14N, SHA-256 digests and RSA-SHA256 or ECDSA-SHA256, the key named by a DirectReference.

Inbound (``Verifier``), on the raw bytes before any SOAP framework sees them:
hardened parse → exactly one Envelope/Header/Body/Security/Timestamp/Signature → unique Ids →
algorithm and transform allow-list (each reference: exclusive C14N, optionally after
enveloped-signature, as WS-I BSP 1.1 allows and node-soap sends) → every reference resolved *by
node identity*, and the Body and Timestamp that the service will read among them (signature
wrapping), none of them holding the Signature → Timestamp freshness →
digests and signature → the key only from our own Security header (or a pinned peer) → chain
validation → replay cache. What comes back (``VerifiedMessage``) is the verified Body element;
later code reads only that.

Canonicalization and digests are done here with lxml and ``cryptography`` so that every step
above is explicit; python-xmlsec and Debian's ``xmlsec1`` verify our output independently in
the tests.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from lxml import etree

from ..errors import SecurityError
from .xmlparse import ParseLimits, parse_untrusted

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSSE11_NS = "http://docs.oasis-open.org/wss/oasis-wss-wssecurity-secext-1.1.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED_SIGNATURE = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
X509V3 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
X509_PKIPATH = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509PKIPathv1"
BASE64_BINARY = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"

_DIGESTS = {SHA256: hashlib.sha256, SHA384: hashlib.sha384, SHA512: hashlib.sha512}
_SIGNATURE_HASHES = {RSA_SHA256: hashes.SHA256, RSA_SHA384: hashes.SHA384, RSA_SHA512: hashes.SHA512,
                     ECDSA_SHA256: hashes.SHA256}
_LEGACY_DIGESTS = {SHA1: hashlib.sha1}
_LEGACY_SIGNATURE_HASHES = {RSA_SHA1: hashes.SHA1}

NS = {"soap": SOAP11_NS, "soap12": SOAP12_NS, "wsse": WSSE_NS, "wsse11": WSSE11_NS, "wsu": WSU_NS,
      "ds": DS_NS, "ec": EXC_C14N}

# The attributes that name an element a signature may reference (wsu:Id, and unqualified Id, ID and id) on an
# element and its descendants, and the Body's descendants with an unqualified href or id: found by libxml2
# instead of a Python loop over every element.
_ID_ATTRIBUTES_OF = etree.XPath(
    f"descendant-or-self::*/@*[(namespace-uri() = '{WSU_NS}' and local-name() = 'Id') or "
    f"(namespace-uri() = '' and (local-name() = 'Id' or local-name() = 'ID' or local-name() = 'id'))]")
_REFERENCING_DESCENDANTS = etree.XPath("descendant::*[@href or @id]")
_REFERENCES_MAX = 16
_TOKENS_MAX = 8


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _canonical(node: etree._Element, prefixes: Sequence[str] | None = None) -> bytes:
    """Exclusive XML canonicalization (without comments) of ``node`` in its document context."""
    return etree.tostring(node, method="c14n", exclusive=True, with_comments=False,
                          inclusive_ns_prefixes=list(prefixes) if prefixes else None)


def _xsd_datetime(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_xsd_datetime(text: str) -> datetime:
    """xsd:dateTime as sent in Timestamps (``Z`` or an offset; fractions allowed); timezone required."""
    value = (text or "").strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SecurityError(f"the Timestamp value {text!r} is not an xsd:dateTime", "InvalidSecurity") from None
    if moment.tzinfo is None:
        raise SecurityError(f"the Timestamp value {text!r} has no time zone", "InvalidSecurity")
    return moment.astimezone(timezone.utc)


def encode_pkipath(certificates: Sequence[x509.Certificate]) -> bytes:
    """X509PKIPathv1: DER SEQUENCE OF Certificate, ordered from the trust anchor's side to the signer."""
    content = b"".join(cert.public_bytes(serialization.Encoding.DER) for cert in certificates)
    return b"\x30" + _der_length(len(content)) + content


def decode_pkipath(data: bytes) -> list[x509.Certificate]:
    content_start, content_end = _der_sequence(data, 0)
    if content_end != len(data):
        raise SecurityError("the X509PKIPathv1 token has trailing bytes", "InvalidSecurityToken")
    certificates = []
    position = content_start
    while position < content_end:
        if len(certificates) >= _TOKENS_MAX:
            raise SecurityError("the certificate path is too long", "InvalidSecurityToken")
        _, end = _der_sequence(data, position)
        try:
            certificates.append(x509.load_der_x509_certificate(data[position:end]))
        except ValueError:
            raise SecurityError("the X509PKIPathv1 token holds an unreadable certificate", "InvalidSecurityToken") from None
        position = end
    if not certificates:
        raise SecurityError("the X509PKIPathv1 token is empty", "InvalidSecurityToken")
    return certificates


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _der_sequence(data: bytes, position: int) -> tuple[int, int]:
    """Return (content_start, content_end) of the DER SEQUENCE at ``position``; content_end is where it ends."""
    refuse = SecurityError("the X509PKIPathv1 token is not valid DER", "InvalidSecurityToken")
    if position + 2 > len(data) or data[position] != 0x30:
        raise refuse
    first = data[position + 1]
    header = 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or position + 2 + count > len(data):
            raise refuse
        length = int.from_bytes(data[position + 2: position + 2 + count], "big")
        header += count
    start = position + header
    end = start + length
    if end > len(data):
        raise refuse
    return start, end


# ---------------------------------------------------------------------------------------------
# Signing


class Signer:
    """Signs SOAP 1.1 envelopes for one credential (thread-safe; keep one per credential).

    ``credential`` has ``cert``, ``key`` and ``chain`` (certificates after the leaf).
    """

    def __init__(self, credential, *, ttl_s: int = 300, clock: Callable[[], float] = time.time) -> None:
        self._key = credential.key
        self._ttl_s = ttl_s
        self._clock = clock
        if isinstance(self._key, rsa.RSAPrivateKey):
            self.signature_method = RSA_SHA256
        elif isinstance(self._key, ec.EllipticCurvePrivateKey):
            self.signature_method = ECDSA_SHA256
        else:
            raise SecurityError("only RSA and EC keys can sign messages", "UnsupportedAlgorithm")
        chain = tuple(credential.chain)
        if chain:
            # PKIPath runs from the anchor's side down to the signer.
            self._token_type = X509_PKIPATH
            self._token = base64.b64encode(encode_pkipath((*reversed(chain), credential.cert))).decode()
        else:
            self._token_type = X509V3
            self._token = base64.b64encode(credential.cert.public_bytes(serialization.Encoding.DER)).decode()

    def sign(self, envelope: etree._Element, *, confirm_signature_value: str | None = None) -> etree._Element:
        """Add a ``wsse:Security`` header to ``envelope`` (in place) and return it.

        ``confirm_signature_value``: on a response, the request's SignatureValue, echoed in a
        signed ``wsse11:SignatureConfirmation`` so the client knows the answer is to its request.
        """
        if envelope.tag != f"{{{SOAP11_NS}}}Envelope":
            raise ValueError("Signer.sign takes a SOAP 1.1 Envelope element")
        body = envelope.find(f"{{{SOAP11_NS}}}Body")
        header = envelope.find(f"{{{SOAP11_NS}}}Header")
        if body is None:
            raise ValueError("the envelope has no Body")
        if header is None:
            header = etree.Element(f"{{{SOAP11_NS}}}Header")
            body.addprevious(header)
        suffix = secrets.token_hex(8)
        body_id = body.get(f"{{{WSU_NS}}}Id")
        if body_id is None:
            body_id = f"Body-{suffix}"
            body.set(f"{{{WSU_NS}}}Id", body_id)

        security = etree.SubElement(header, f"{{{WSSE_NS}}}Security", nsmap={"wsse": WSSE_NS, "wsu": WSU_NS})
        if body.find(f"{{{SOAP11_NS}}}Fault") is None:
            # Not on a fault: a receiver that does not process WS-Security (a stub from JAX-WS, Axis,
            # plain gSOAP) would answer mustUnderstand="1" with its own MustUnderstand fault in place
            # of ours, and never learn why it was refused. Our clients verify every answer anyway.
            security.set(f"{{{SOAP11_NS}}}mustUnderstand", "1")
        header.insert(0, security)
        token = etree.SubElement(security, f"{{{WSSE_NS}}}BinarySecurityToken")
        token_id = f"X509-{suffix}"
        token.set(f"{{{WSU_NS}}}Id", token_id)
        token.set("ValueType", self._token_type)
        token.set("EncodingType", BASE64_BINARY)
        token.text = self._token

        created = datetime.fromtimestamp(self._clock(), timezone.utc)
        timestamp = etree.SubElement(security, f"{{{WSU_NS}}}Timestamp")
        timestamp_id = f"TS-{suffix}"
        timestamp.set(f"{{{WSU_NS}}}Id", timestamp_id)
        etree.SubElement(timestamp, f"{{{WSU_NS}}}Created").text = _xsd_datetime(created)
        etree.SubElement(timestamp, f"{{{WSU_NS}}}Expires").text = _xsd_datetime(created + timedelta(seconds=self._ttl_s))
        targets = [(body_id, body), (timestamp_id, timestamp)]

        if confirm_signature_value is not None:
            confirmation = etree.SubElement(security, f"{{{WSSE11_NS}}}SignatureConfirmation",
                                            nsmap={"wsse11": WSSE11_NS})
            confirmation_id = f"SC-{suffix}"
            confirmation.set(f"{{{WSU_NS}}}Id", confirmation_id)
            confirmation.set("Value", confirm_signature_value)
            targets.append((confirmation_id, confirmation))

        signature = etree.SubElement(security, f"{{{DS_NS}}}Signature", nsmap={"ds": DS_NS})
        signed_info = etree.SubElement(signature, f"{{{DS_NS}}}SignedInfo")
        etree.SubElement(signed_info, f"{{{DS_NS}}}CanonicalizationMethod", Algorithm=EXC_C14N)
        etree.SubElement(signed_info, f"{{{DS_NS}}}SignatureMethod", Algorithm=self.signature_method)
        for target_id, target in targets:
            reference = etree.SubElement(signed_info, f"{{{DS_NS}}}Reference", URI=f"#{target_id}")
            transforms = etree.SubElement(reference, f"{{{DS_NS}}}Transforms")
            etree.SubElement(transforms, f"{{{DS_NS}}}Transform", Algorithm=EXC_C14N)
            etree.SubElement(reference, f"{{{DS_NS}}}DigestMethod", Algorithm=SHA256)
            digest = hashlib.sha256(_canonical(target)).digest()
            etree.SubElement(reference, f"{{{DS_NS}}}DigestValue").text = base64.b64encode(digest).decode()
        signature_value = etree.SubElement(signature, f"{{{DS_NS}}}SignatureValue")
        key_info = etree.SubElement(signature, f"{{{DS_NS}}}KeyInfo")
        reference_token = etree.SubElement(key_info, f"{{{WSSE_NS}}}SecurityTokenReference")
        etree.SubElement(reference_token, f"{{{WSSE_NS}}}Reference", URI=f"#{token_id}", ValueType=self._token_type)
        signature_value.text = base64.b64encode(self._sign_bytes(_canonical(signed_info))).decode()
        return envelope

    def _sign_bytes(self, data: bytes) -> bytes:
        if self.signature_method == RSA_SHA256:
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        der = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        size = (self._key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """What a valid message must look like. Defaults are the secure ones."""

    ttl_s: int = 300                      # a Timestamp is honoured at most this long after Created
    clock_skew_s: int = 60                # tolerated difference between clocks
    allow_sha1: bool = False              # legacy interop: SHA-1 digests and RSA-SHA1 signatures
    require_timestamp: bool = True        # WS-Security profiles without a Timestamp are legacy only
    soap_versions: frozenset[str] = frozenset({SOAP11_NS})
    limits: ParseLimits = field(default_factory=ParseLimits)


@dataclass(frozen=True, slots=True)
class VerifiedMessage:
    """The result of verification: read the Body from here, never from the raw message again."""

    body: etree._Element                  # the SOAP Body that the signature covers
    envelope: etree._Element
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]   # certificates after the signer (for proxies)
    principal: object                     # what the trust store returned (a chain.Principal), or None when pinned
    signature_value: str                  # base64, as sent: the replay key and the value a response confirms
    created: datetime | None
    signed_elements: tuple[etree._Element, ...]


class ReplayCacheProtocol:
    def check_and_store(self, key: str, expires_at: float, now: float | None = None) -> bool:
        """Store ``key`` until ``expires_at``; True when it was not already stored (and unexpired at ``now``,
        the verifier's clock; default the real time)."""
        raise NotImplementedError


class MemoryReplayCache(ReplayCacheProtocol):
    """A bounded in-process replay cache (clients; single-process tests)."""

    def __init__(self, entries_max: int = 100_000) -> None:
        self._entries: dict[str, float] = {}
        self._entries_max = entries_max
        self._lock = threading.Lock()

    def check_and_store(self, key: str, expires_at: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            if key in self._entries and self._entries[key] > now:
                return False
            if len(self._entries) >= self._entries_max:
                self._entries = {k: v for k, v in self._entries.items() if v > now}
                if len(self._entries) >= self._entries_max:
                    raise SecurityError("the replay cache is full; try again later", "InvalidSecurity")
            self._entries[key] = expires_at
            return True


def replay_key(signer: x509.Certificate, signed_info_bytes: bytes) -> str:
    """The replay-cache key of a verified message: SHA-256 over the signer's certificate and the
    canonical SignedInfo it signed (the same for every spelling of the same signature)."""
    return hashlib.sha256(signer.fingerprint(hashes.SHA256()) + signed_info_bytes).hexdigest()


def _only(parent: etree._Element, tag: str, what: str, required: bool = True) -> etree._Element | None:
    found = [child for child in parent if child.tag == tag]
    if len(found) > 1:
        raise SecurityError(f"the message has {len(found)} {what} elements; exactly one is allowed", "InvalidSecurity")
    if not found:
        if required:
            raise SecurityError(f"the message has no {what}", "InvalidSecurity")
        return None
    return found[0]


class Verifier:
    """Verifies signed SOAP messages; thread-safe.

    ``trust`` validates the signer's chain (``trust.validate(chain, at=...) -> principal``).
    ``pinned_certificates``: certificates accepted as signers without a chain (a client that
    knows its server, or a peer that names its key by X509IssuerSerial).
    """

    def __init__(self, *, trust=None, policy: VerifyPolicy = VerifyPolicy(), replay_cache: ReplayCacheProtocol | None = None,
                 pinned_certificates: Sequence[x509.Certificate] = (), clock: Callable[[], float] = time.time) -> None:
        if trust is None and not pinned_certificates:
            raise ValueError("a Verifier needs a trust store or pinned certificates")
        self._trust = trust
        self._policy = policy
        self._replay_cache = replay_cache
        self._pinned = tuple(pinned_certificates)
        self._clock = clock
        digests = dict(_DIGESTS)
        signatures = dict(_SIGNATURE_HASHES)
        if policy.allow_sha1:
            digests.update(_LEGACY_DIGESTS)
            signatures.update(_LEGACY_SIGNATURE_HASHES)
        self._digests = digests
        self._signature_hashes = signatures

    # The steps below run in this order; each refuses with a wsse: code and a plain message.
    def verify(self, raw: bytes, *, expected_confirmation: str | None = None) -> VerifiedMessage:
        tree = parse_untrusted(raw, self._policy.limits)
        envelope = tree.getroot()
        soap_ns = self._soap_namespace(envelope)
        header, body = self._header_and_body(envelope, soap_ns)
        security = self._security_header(header)
        identified = self._collect_ids(envelope)
        self._refuse_references_in_body(body)
        timestamp = _only(security, f"{{{WSU_NS}}}Timestamp", "wsu:Timestamp", required=self._policy.require_timestamp)
        signature = _only(security, f"{{{DS_NS}}}Signature", "ds:Signature in the Security header")
        if len(envelope.findall(f".//{{{DS_NS}}}Signature")) != 1:
            raise SecurityError("the message carries more than one ds:Signature", "InvalidSecurity")
        now = self._clock()
        created, honoured_until = self._check_timestamp(timestamp, now)
        signed_info = _only(signature, f"{{{DS_NS}}}SignedInfo", "ds:SignedInfo")
        signed = self._check_references(signed_info, identified, header, body, timestamp, security)
        signer, chain = self._signing_certificates(signature, security, identified)
        signature_value, signed_bytes = self._check_signature(signature, signed_info, signer)
        principal = self._validate_signer(signer, chain, now)
        if expected_confirmation is not None:
            self._check_confirmation(security, signed, expected_confirmation)
        if self._replay_cache is not None:
            # Keyed on what was signed (the canonical SignedInfo, which holds the Timestamp's and the
            # Body's digests) and by whom, not on the SignatureValue text: base64 has several spellings
            # of one value and ECDSA signatures are malleable ((r, s) and (r, n - s) both verify).
            key = replay_key(signer, signed_bytes)
            if not self._replay_cache.check_and_store(key, honoured_until + self._policy.clock_skew_s, now):
                raise SecurityError("this message was already received once (replay refused)", "InvalidSecurity")
        return VerifiedMessage(body=body, envelope=envelope, signer=signer, chain=tuple(chain), principal=principal,
                               signature_value=signature_value, created=created, signed_elements=tuple(signed))

    def _soap_namespace(self, envelope: etree._Element) -> str:
        namespace = etree.QName(envelope).namespace
        if etree.QName(envelope).localname != "Envelope" or namespace not in (SOAP11_NS, SOAP12_NS):
            raise SecurityError("the message is not a SOAP envelope", "InvalidSecurity")
        if namespace not in self._policy.soap_versions:
            version = "1.2" if namespace == SOAP12_NS else "1.1"
            raise SecurityError(f"SOAP {version} is not accepted here; this service speaks SOAP 1.1", "InvalidSecurity")
        return namespace

    @staticmethod
    def _header_and_body(envelope: etree._Element, soap_ns: str) -> tuple[etree._Element, etree._Element]:
        children = [child for child in envelope if isinstance(child.tag, str)]
        header = _only(envelope, f"{{{soap_ns}}}Header", "SOAP Header")
        body = _only(envelope, f"{{{soap_ns}}}Body", "SOAP Body")
        if children != [header, body]:
            raise SecurityError("the SOAP envelope must hold exactly one Header followed by one Body", "InvalidSecurity")
        return header, body

    @staticmethod
    def _security_header(header: etree._Element) -> etree._Element:
        everywhere = header.getroottree().getroot().findall(f".//{{{WSSE_NS}}}Security")
        security = _only(header, f"{{{WSSE_NS}}}Security", "wsse:Security header")
        if len(everywhere) != 1:
            raise SecurityError("the message carries more than one wsse:Security element", "InvalidSecurity")
        return security

    @staticmethod
    def _collect_ids(envelope: etree._Element) -> dict[str, etree._Element]:
        identified: dict[str, etree._Element] = {}
        for attribute in _ID_ATTRIBUTES_OF(envelope):     # in C: a 1,000-item Body has ~7,000 elements
            value = str(attribute)
            if value in identified:
                raise SecurityError(f"the Id {value!r} appears more than once in the message", "InvalidSecurity")
            identified[value] = attribute.getparent()
        return identified

    @staticmethod
    def _refuse_references_in_body(body: etree._Element) -> None:
        # SOAP encoding's href/id would let a framework copy content from outside the signed Body.
        if _REFERENCING_DESCENDANTS(body):
            raise SecurityError("href/id references are not accepted in a signed Body", "InvalidSecurity")

    def _check_timestamp(self, timestamp: etree._Element | None, now: float) -> tuple[datetime | None, float]:
        policy = self._policy
        if timestamp is None:
            return None, now + policy.ttl_s
        created_node = _only(timestamp, f"{{{WSU_NS}}}Created", "wsu:Created in the Timestamp")
        expires_node = _only(timestamp, f"{{{WSU_NS}}}Expires", "wsu:Expires", required=False)
        created = parse_xsd_datetime(created_node.text).timestamp()
        honoured_until = created + policy.ttl_s
        if expires_node is not None:
            expires = parse_xsd_datetime(expires_node.text).timestamp()
            if expires < created:
                raise SecurityError("the Timestamp expires before it was created", "InvalidSecurity")
            honoured_until = min(honoured_until, expires)
        if created > now + policy.clock_skew_s:
            raise SecurityError("the message Timestamp is in the future; check the sender's clock", "MessageExpired")
        if now > honoured_until + policy.clock_skew_s:
            stamp = datetime.fromtimestamp(honoured_until, timezone.utc).isoformat(timespec="seconds")
            raise SecurityError(f"the message expired at {stamp}", "MessageExpired")
        return datetime.fromtimestamp(created, timezone.utc), honoured_until

    def _check_references(self, signed_info, identified, header, body, timestamp, security) -> list[etree._Element]:
        signature = signed_info.getparent()
        method = _only(signed_info, f"{{{DS_NS}}}CanonicalizationMethod", "ds:CanonicalizationMethod")
        if method.get("Algorithm") != EXC_C14N:
            raise SecurityError("SignedInfo must be canonicalized with exclusive C14N", "UnsupportedAlgorithm")
        signature_method = _only(signed_info, f"{{{DS_NS}}}SignatureMethod", "ds:SignatureMethod").get("Algorithm")
        if signature_method not in self._signature_hashes:
            raise SecurityError(f"the signature algorithm {signature_method} is not accepted", "UnsupportedAlgorithm")
        references = signed_info.findall(f"{{{DS_NS}}}Reference")
        if not references or len(references) > _REFERENCES_MAX:
            raise SecurityError("the signature has no or too many references", "InvalidSecurity")
        signed: list[etree._Element] = []
        for reference in references:
            uri = reference.get("URI") or ""
            if not uri.startswith("#") or uri[1:] not in identified:
                raise SecurityError(f"the signature reference {uri!r} does not name an element of this message", "InvalidSecurity")
            target = identified[uri[1:]]
            if any(target is seen for seen in signed):
                raise SecurityError("the signature references one element twice", "InvalidSecurity")
            # Signed elements must be the Body or direct parts of our own headers: never content nested elsewhere.
            if not (target is body or target.getparent() is security or target.getparent() is header):
                raise SecurityError("the signature covers an element outside the Body and the headers", "InvalidSecurity")
            # An element that holds the Signature (the Security header, the Signature itself) could only
            # be signed through enveloped-signature, which would then digest it without the Signature: a
            # detached signature over the Body and our own headers' parts is all we accept (BSP R3103/R3104).
            if target is signature or any(ancestor is target for ancestor in signature.iterancestors()):
                raise SecurityError("the signature covers the element that holds it (an enveloped signature); "
                                    "sign the Body and the Timestamp instead", "InvalidSecurity")
            prefixes = self._transforms(reference)
            digest_method = _only(reference, f"{{{DS_NS}}}DigestMethod", "ds:DigestMethod").get("Algorithm")
            if digest_method not in self._digests:
                raise SecurityError(f"the digest algorithm {digest_method} is not accepted", "UnsupportedAlgorithm")
            expected = _only(reference, f"{{{DS_NS}}}DigestValue", "ds:DigestValue").text or ""
            actual = self._digests[digest_method](_canonical(target, prefixes)).digest()
            try:
                sent = base64.b64decode(expected, validate=False)
            except ValueError:
                sent = b""
            if not secrets.compare_digest(sent, actual):
                raise SecurityError("the message was altered after it was signed (digest mismatch)", "FailedCheck")
            # C14N drops comments, so a comment splitting a text node leaves the digest intact while a
            # reader of the tree sees other text ("1<!---->00" reads as "1"): refuse them where it is signed.
            if any(not isinstance(node.tag, str) for node in target.iterdescendants()):
                raise SecurityError("comments and processing instructions are not accepted in signed content", "InvalidSecurity")
            signed.append(target)
        if not any(target is body for target in signed):
            raise SecurityError("the signature does not cover the SOAP Body", "FailedCheck")
        if timestamp is not None and not any(target is timestamp for target in signed):
            raise SecurityError("the signature does not cover the Timestamp", "FailedCheck")
        return signed

    @staticmethod
    def _transforms(reference: etree._Element) -> list[str] | None:
        """Check a reference's transforms; return the exclusive C14N InclusiveNamespaces prefixes.

        WS-I BSP 1.1: a reference has Transforms (R5416) with at least one Transform (R5411), each
        exc-c14n, xmldsig-filter2, STR-Transform, enveloped-signature or an SwA attachment transform
        (R5423), the last one exc-c14n, STR-Transform or an attachment transform (R5412). Of these we
        accept exactly [exc-c14n] and [enveloped-signature, exc-c14n] (node-soap's WSSecurityCert
        default): we reference elements by Id only (no XPath filter), sign no token through an STR
        and take no attachments. Enveloped-signature removes the Signature from what is digested; on
        the Body or a part of our headers, which cannot hold the one Signature of the message (checked
        by the caller), it removes nothing. XSLT, XPath, inclusive C14N and every other list: refused.
        """
        transforms = _only(reference, f"{{{DS_NS}}}Transforms", "ds:Transforms in a reference", required=False)
        if transforms is None:
            raise SecurityError("every reference must use the exclusive C14N transform", "UnsupportedAlgorithm")
        steps = list(transforms)
        algorithms = [step.get("Algorithm") if step.tag == f"{{{DS_NS}}}Transform" else None for step in steps]
        if algorithms not in ([EXC_C14N], [ENVELOPED_SIGNATURE, EXC_C14N]):
            named = ", ".join((algorithm or "(not a ds:Transform)")[:120] for algorithm in algorithms[:_REFERENCES_MAX]) or "none"
            raise SecurityError(f"the reference transforms [{named}] are not accepted: only exclusive C14N, optionally "
                                f"after enveloped-signature (WS-I Basic Security Profile)", "UnsupportedAlgorithm")
        if len(steps) == 2 and (len(steps[0]) or (steps[0].text or "").strip()):
            raise SecurityError("the enveloped-signature transform takes no parameters", "UnsupportedAlgorithm")
        inclusive = steps[-1].find(f"{{{EXC_C14N}}}InclusiveNamespaces")
        if inclusive is None:
            return None
        return [prefix for prefix in (inclusive.get("PrefixList") or "").split() if prefix]

    def _signing_certificates(self, signature, security, identified) -> tuple[x509.Certificate, list[x509.Certificate]]:
        key_info = _only(signature, f"{{{DS_NS}}}KeyInfo", "ds:KeyInfo")
        reference_token = key_info.find(f"{{{WSSE_NS}}}SecurityTokenReference")
        if reference_token is not None:
            direct = reference_token.find(f"{{{WSSE_NS}}}Reference")
            if direct is not None:
                token = identified.get((direct.get("URI") or "")[1:]) if (direct.get("URI") or "").startswith("#") else None
                if token is not None:
                    if token.tag != f"{{{WSSE_NS}}}BinarySecurityToken" or token.getparent() is not security:
                        raise SecurityError("the signing key must come from a token in the message's own Security header", "InvalidSecurityToken")
                    return self._token_certificates(token, security)
            issuer_serial = reference_token.find(f"{{{DS_NS}}}X509Data/{{{DS_NS}}}X509IssuerSerial")
            if issuer_serial is not None:
                return self._pinned_by_issuer_serial(issuer_serial), []
        embedded = key_info.findall(f".//{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate")
        if len(embedded) == 1:
            return self._load_certificate(embedded[0].text), []
        raise SecurityError("the signature does not name a usable X.509 token", "SecurityTokenUnavailable")

    def _token_certificates(self, token, security) -> tuple[x509.Certificate, list[x509.Certificate]]:
        value_type = token.get("ValueType")
        encoding = token.get("EncodingType")
        if encoding not in (None, BASE64_BINARY):
            raise SecurityError("the security token is not Base64Binary", "UnsupportedSecurityToken")
        try:
            data = base64.b64decode("".join((token.text or "").split()), validate=True)
        except ValueError:
            raise SecurityError("the security token is not valid base64", "InvalidSecurityToken") from None
        if value_type == X509_PKIPATH:
            path = decode_pkipath(data)
            return path[-1], list(reversed(path[:-1]))
        if value_type == X509V3:
            try:
                signer = x509.load_der_x509_certificate(data)
            except ValueError:
                raise SecurityError("the security token holds an unreadable certificate", "InvalidSecurityToken") from None
            # Further X509v3 tokens in the same header travel as the chain (proxy certificates).
            chain = []
            for other in security.findall(f"{{{WSSE_NS}}}BinarySecurityToken"):
                if other is token or other.get("ValueType") != X509V3:
                    continue
                if len(chain) >= _TOKENS_MAX:
                    raise SecurityError("too many security tokens", "InvalidSecurityToken")
                try:
                    chain.append(x509.load_der_x509_certificate(base64.b64decode("".join((other.text or "").split()))))
                except ValueError:
                    raise SecurityError("a security token holds an unreadable certificate", "InvalidSecurityToken") from None
            return signer, chain
        raise SecurityError(f"the security token type {value_type} is not supported", "UnsupportedSecurityToken")

    @staticmethod
    def _load_certificate(text: str | None) -> x509.Certificate:
        try:
            return x509.load_der_x509_certificate(base64.b64decode("".join((text or "").split()), validate=True))
        except ValueError:
            raise SecurityError("the embedded certificate is unreadable", "InvalidSecurityToken") from None

    def _pinned_by_issuer_serial(self, issuer_serial) -> x509.Certificate:
        serial_text = issuer_serial.findtext(f"{{{DS_NS}}}X509SerialNumber") or ""
        issuer_text = (issuer_serial.findtext(f"{{{DS_NS}}}X509IssuerName") or "").replace(" ", "")
        for certificate in self._pinned:
            if str(certificate.serial_number) == serial_text.strip() and \
                    certificate.issuer.rfc4514_string().replace(" ", "") == issuer_text:
                return certificate
        raise SecurityError("the signer named by issuer and serial is not known here", "SecurityTokenUnavailable")

    def _check_signature(self, signature, signed_info, signer: x509.Certificate) -> tuple[str, bytes]:
        """Return (the SignatureValue as sent, the canonical SignedInfo bytes that it signs)."""
        method = _only(signed_info, f"{{{DS_NS}}}SignatureMethod", "ds:SignatureMethod").get("Algorithm")
        value_text = _only(signature, f"{{{DS_NS}}}SignatureValue", "ds:SignatureValue").text or ""
        try:
            value = base64.b64decode("".join(value_text.split()), validate=True)
        except ValueError:
            raise SecurityError("the SignatureValue is not valid base64", "FailedCheck") from None
        method_node = signed_info.find(f"{{{DS_NS}}}CanonicalizationMethod")
        inclusive = method_node.find(f"{{{EXC_C14N}}}InclusiveNamespaces")
        prefixes = [p for p in (inclusive.get("PrefixList") or "").split() if p] if inclusive is not None else None
        data = _canonical(signed_info, prefixes)
        public_key = signer.public_key()
        hash_algorithm = self._signature_hashes[method]()
        try:
            if method == ECDSA_SHA256:
                if not isinstance(public_key, ec.EllipticCurvePublicKey):
                    raise InvalidSignature
                half = len(value) // 2
                der = encode_dss_signature(int.from_bytes(value[:half], "big"), int.from_bytes(value[half:], "big"))
                public_key.verify(der, data, ec.ECDSA(hash_algorithm))
            else:
                if not isinstance(public_key, rsa.RSAPublicKey):
                    raise InvalidSignature
                public_key.verify(value, data, padding.PKCS1v15(), hash_algorithm)
        except InvalidSignature:
            raise SecurityError("the signature is not valid for the signer's key", "FailedCheck") from None
        return "".join(value_text.split()), data

    def _validate_signer(self, signer: x509.Certificate, chain: list[x509.Certificate], now: float):
        if any(signer == pinned for pinned in self._pinned):
            return None
        if self._trust is None:
            raise SecurityError("the signer is not the expected peer", "FailedAuthentication")
        return self._trust.validate([signer, *chain], at=datetime.fromtimestamp(now, timezone.utc))

    @staticmethod
    def _check_confirmation(security, signed, expected: str) -> None:
        confirmations = security.findall(f"{{{WSSE11_NS}}}SignatureConfirmation")
        if len(confirmations) != 1 or not any(confirmations[0] is target for target in signed):
            raise SecurityError("the response does not confirm the request's signature", "FailedCheck")
        if confirmations[0].get("Value") != expected:
            raise SecurityError("the response answers a different request (signature confirmation mismatch)", "FailedCheck")
