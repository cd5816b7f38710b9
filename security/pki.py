"""A small PKI for demos and tests: a CA, host and user certificates, RFC 3820 proxies.

Names are written in the grid one-line form (``/DC=org/DC=example/O=Grid/CN=Alice``), the RDNs in
certificate order, as ``openssl x509 -subject -nameopt compat`` prints them.

A CA directory (``CertificateAuthority``) holds::

    ca.pem        the CA certificate
    ca.key        its private key (mode 0600)
    serial        the next serial number (decimal)
    index.json    every certificate issued (serial, subject, expiry) and every revocation
    crl.pem       the current CRL (rewritten by ``revoke`` and ``crl``)

``export_trust`` writes the CA the way grid tools expect a trust directory
(``/etc/grid-security/certificates``): ``<hash>.0`` (certificate), ``<hash>.r0`` (CRL),
``<hash>.signing_policy`` (Globus), where ``<hash>`` is OpenSSL's subject-name hash.

Proxies follow RFC 3820: a critical ProxyCertInfo extension (id-ppl-inheritAll, or the Globus
limited-proxy policy), subject = issuer subject + ``CN=<serial>``, lifetime within the issuer's.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from OpenSSL import crypto as openssl_crypto

from gridcredit.durable import write_atomically
from gridcredit.errors import CertificateError, CredentialError

__all__ = [
    "OID_PROXY_CERT_INFO", "OID_PROXY_CERT_INFO_DRAFT", "OID_PPL_INHERIT_ALL",
    "OID_PPL_INDEPENDENT", "OID_PPL_LIMITED", "PrivateKey",
    "grid_dn", "parse_grid_dn", "subject_hash", "generate_key", "proxy_info", "ProxyInfo",
    "CertificateAuthority", "make_crl", "make_proxy", "sign_proxy", "write_proxy_file", "default_proxy_path",
    "write_pem_certificates", "write_private_key",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

OID_PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")          # RFC 3820
OID_PROXY_CERT_INFO_DRAFT = ObjectIdentifier("1.3.6.1.4.1.3536.1.222")  # GT3 pre-RFC draft
OID_PPL_INHERIT_ALL = ObjectIdentifier("1.3.6.1.5.5.7.21.1")
OID_PPL_INDEPENDENT = ObjectIdentifier("1.3.6.1.5.5.7.21.2")
OID_PPL_LIMITED = ObjectIdentifier("1.3.6.1.4.1.3536.1.1.1.9")        # Globus limited proxy

RSA_KEY_BITS = 2048
BACKDATE = dt.timedelta(minutes=5)      # tolerate clock skew between hosts, as grid tools do
PROXY_HOURS_MAX = 24 * 366
CERT_DAYS_MAX = 100 * 366

# OpenSSL short names, so that grid_dn() prints what `openssl x509 -nameopt compat` prints.
_SHORT_NAMES: dict[ObjectIdentifier, str] = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.STREET_ADDRESS: "street",
    NameOID.TITLE: "title",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
}
_OIDS_BY_SHORT_NAME = {name.lower(): oid for oid, name in _SHORT_NAMES.items()}
_OIDS_BY_SHORT_NAME.update({"e": NameOID.EMAIL_ADDRESS, "email": NameOID.EMAIL_ADDRESS,
                            "userid": NameOID.USER_ID, "s": NameOID.STATE_OR_PROVINCE_NAME})
_RDN_START = re.compile(r"/(?=[A-Za-z][A-Za-z0-9]*=|[0-9]+(?:\.[0-9]+)+=)")
_ATTRIBUTE_START = re.compile(r"\+(?=[A-Za-z][A-Za-z0-9]*=|[0-9]+(?:\.[0-9]+)+=)")


# ---------------------------------------------------------------------------------------- names

def grid_dn(name: x509.Name) -> str:
    """The grid one-line form of ``name``: ``/DC=org/DC=example/O=Grid/CN=Alice``.

    RDNs in certificate order (most significant first), multi-valued RDNs joined by ``+``,
    attribute names as OpenSSL's short names (dotted OIDs for names OpenSSL does not know).
    """
    parts = []
    for rdn in name.rdns:
        attributes = []
        for attribute in rdn:
            label = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
            value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
            attributes.append(f"{label}={value}")
        parts.append("+".join(attributes))
    return "".join("/" + part for part in parts)


def parse_grid_dn(text: str) -> x509.Name:
    """Parse a grid one-line DN (``/DC=org/O=Grid/CN=Alice``) into an ``x509.Name``.

    A ``/`` or ``+`` inside a value is kept when it is not followed by ``NAME=`` (the one-line
    form cannot express that case unambiguously; neither can OpenSSL's).
    """
    text = text.strip()
    if not text.startswith("/") or len(text) < 4:
        raise CertificateError(f"not a grid DN (expected /NAME=value/…): {text!r}")
    rdns = []
    for rdn_text in _RDN_START.split(text[1:]):
        attributes = []
        for attribute_text in _ATTRIBUTE_START.split(rdn_text):
            label, separator, value = attribute_text.partition("=")
            if not separator or not value:
                raise CertificateError(f"bad attribute {attribute_text!r} in DN {text!r}")
            if re.fullmatch(r"[0-9]+(\.[0-9]+)+", label):
                oid = ObjectIdentifier(label)
            else:
                oid = _OIDS_BY_SHORT_NAME.get(label.lower())
                if oid is None:
                    raise CertificateError(f"unknown attribute name {label!r} in DN {text!r}")
            if oid == NameOID.COUNTRY_NAME and len(value) != 2:
                raise CertificateError(f"country must be two letters in DN {text!r}")
            attributes.append(x509.NameAttribute(oid, value))
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


def subject_hash(certificate: x509.Certificate) -> str:
    """OpenSSL's subject-name hash (``openssl x509 -hash``), the file name stem in trust dirs."""
    return f"{openssl_crypto.X509.from_cryptography(certificate).subject_name_hash():08x}"


# ----------------------------------------------------------------------------------------- keys

def generate_key(key_type: str = "rsa") -> PrivateKey:
    """A new private key: ``rsa`` (2048 bits) or ``ec`` (P-256)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key_type must be 'rsa' or 'ec', not {key_type!r}")


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA256()


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    return _public_der(certificate.public_key()) == _public_der(key.public_key())


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` (made with its folder when missing): never half-written, never
    briefly readable by others (gridcredit.durable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, mode=mode)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM key with mode 0600."""
    _atomic_write(path, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600)


def write_pem_certificates(path: Path, certificates: Sequence[x509.Certificate], mode: int = 0o644) -> None:
    _atomic_write(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates), mode)


# ------------------------------------------------------------------------------- proxy inspection

class ProxyInfo:
    """What a certificate's ProxyCertInfo says (``None`` from ``proxy_info`` for non-proxies)."""

    __slots__ = ("critical", "path_length", "policy_language", "draft")

    def __init__(self, critical: bool, path_length: int | None, policy_language: ObjectIdentifier,
                 draft: bool) -> None:
        self.critical = critical
        self.path_length = path_length
        self.policy_language = policy_language
        self.draft = draft

    @property
    def limited(self) -> bool:
        return self.policy_language == OID_PPL_LIMITED

    @property
    def kind(self) -> str:
        if self.policy_language == OID_PPL_LIMITED:
            return "limited"
        if self.policy_language == OID_PPL_INHERIT_ALL:
            return "impersonation"
        if self.policy_language == OID_PPL_INDEPENDENT:
            return "independent"
        return f"policy {self.policy_language.dotted_string}"


def _der_length(data: bytes, offset: int) -> tuple[int, int]:
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    count = first & 0x7F
    if count == 0 or count > 4 or offset + 1 + count > len(data):
        raise ValueError("bad DER length")
    return int.from_bytes(data[offset + 1:offset + 1 + count], "big"), offset + 1 + count


def _der_read(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """One DER element at ``offset``: (tag, contents, offset after it)."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    length, start = _der_length(data, offset + 1)
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, data[start:end], end


def _decode_oid(contents: bytes) -> ObjectIdentifier:
    if not contents:
        raise ValueError("empty OID")
    arcs: list[int] = []
    value = 0
    for byte in contents:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ObjectIdentifier(".".join(str(arc) for arc in head + arcs[1:]))


def _encode_oid(oid: ObjectIdentifier) -> bytes:
    arcs = [int(part) for part in oid.dotted_string.split(".")]
    numbers = [arcs[0] * 40 + arcs[1]] + arcs[2:]
    out = bytearray()
    for number in numbers:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def _der(tag: int, contents: bytes) -> bytes:
    length = len(contents)
    if length < 0x80:
        return bytes([tag, length]) + contents
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + contents


def encode_proxy_cert_info(policy_language: ObjectIdentifier, path_length: int | None = None) -> bytes:
    """DER of ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL,
    proxyPolicy SEQUENCE { policyLanguage OID, policy OCTET STRING OPTIONAL } } (RFC 3820 §3.8)."""
    body = b""
    if path_length is not None:
        if not 0 <= path_length < 2**31:
            raise ValueError("path_length must be a non-negative integer")
        size = max(1, (path_length.bit_length() + 8) // 8)
        body += _der(0x02, path_length.to_bytes(size, "big"))
    body += _der(0x30, _der(0x06, _encode_oid(policy_language)))
    return _der(0x30, body)


def _decode_proxy_cert_info(value: bytes) -> tuple[int | None, ObjectIdentifier]:
    tag, contents, end = _der_read(value, 0)
    if tag != 0x30 or end != len(value):
        raise ValueError("ProxyCertInfo is not a SEQUENCE")
    path_length = None
    tag, element, offset = _der_read(contents, 0)
    if tag == 0x02:
        if not element or element[0] & 0x80:
            raise ValueError("bad pCPathLenConstraint")
        path_length = int.from_bytes(element, "big")
        tag, element, offset = _der_read(contents, offset)
    if tag != 0x30 or offset != len(contents):
        raise ValueError("bad proxyPolicy")
    oid_tag, oid_contents, _ = _der_read(element, 0)
    if oid_tag != 0x06:
        raise ValueError("bad policyLanguage")
    return path_length, _decode_oid(oid_contents)


def _decode_draft_proxy_cert_info(value: bytes) -> tuple[int | None, ObjectIdentifier]:
    """GT3 draft: SEQUENCE { proxyPolicy SEQUENCE {...}, pCPathLenConstraint [1] EXPLICIT INTEGER OPTIONAL }."""
    tag, contents, end = _der_read(value, 0)
    if tag != 0x30 or end != len(value):
        raise ValueError("draft ProxyCertInfo is not a SEQUENCE")
    path_length = None
    policy_language = None
    offset = 0
    while offset < len(contents):
        tag, element, offset = _der_read(contents, offset)
        if tag == 0x30 and policy_language is None:
            oid_tag, oid_contents, _ = _der_read(element, 0)
            if oid_tag == 0x06:
                policy_language = _decode_oid(oid_contents)
        elif tag in (0x02, 0xA1):
            if tag == 0xA1:
                _, element, _ = _der_read(element, 0)
            path_length = int.from_bytes(element, "big") if element else None
    if policy_language is None:
        raise ValueError("draft ProxyCertInfo has no policy language")
    return path_length, policy_language


def proxy_info(certificate: x509.Certificate) -> ProxyInfo | None:
    """The RFC 3820 (or GT3 draft) ProxyCertInfo of ``certificate``; ``None`` when it has none.

    Raises ``CertificateError`` for an undecodable extension.
    """
    for oid, draft in ((OID_PROXY_CERT_INFO, False), (OID_PROXY_CERT_INFO_DRAFT, True)):
        try:
            extension = certificate.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        raw = extension.value.value if isinstance(extension.value, x509.UnrecognizedExtension) \
            else extension.value.public_bytes()
        try:
            path_length, language = (_decode_draft_proxy_cert_info if draft else _decode_proxy_cert_info)(raw)
        except (ValueError, IndexError) as error:
            raise CertificateError(
                f"certificate {grid_dn(certificate.subject)} has a malformed ProxyCertInfo: {error}") from None
        return ProxyInfo(extension.critical, path_length, language, draft)
    return None


def is_ca_certificate(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def legacy_proxy_kind(certificate: x509.Certificate) -> str | None:
    """``"legacy"``/``"legacy limited"`` for a pre-RFC Globus proxy (no ProxyCertInfo, subject =
    issuer + ``CN=proxy`` or ``CN=limited proxy``), else ``None``."""
    subject, issuer = certificate.subject.rdns, certificate.issuer.rdns
    if len(subject) != len(issuer) + 1 or subject[:-1] != issuer:
        return None
    values = [a.value for a in subject[-1] if a.oid == NameOID.COMMON_NAME]
    if values == ["proxy"]:
        return "legacy"
    if values == ["limited proxy"]:
        return "legacy limited"
    return None


# ------------------------------------------------------------------------------------------ CRLs

def make_crl(issuer_cert: x509.Certificate, issuer_key: PrivateKey,
             revoked: Sequence[tuple[int, dt.datetime]], *,
             this_update: dt.datetime | None = None, next_update: dt.datetime | None = None,
             days: int = 30, crl_number: int = 1) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer_key``, listing ``(serial, revocation time)`` pairs."""
    now = dt.datetime.now(dt.timezone.utc)
    this_update = this_update or now - BACKDATE
    next_update = next_update or now + dt.timedelta(days=days)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(issuer_cert.subject)
               .last_update(this_update)
               .next_update(next_update)
               .add_extension(x509.CRLNumber(crl_number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),
                              critical=False))
    for serial, revoked_at in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build())
    return builder.sign(issuer_key, _signature_hash(issuer_key))


# -------------------------------------------------------------------------------------------- CA

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _random_serial() -> int:
    return secrets.randbits(63) | (1 << 62)   # positive, always 19 decimal digits


class CertificateAuthority:
    """A file-backed test CA. Create with ``create``, reopen with ``load``.

    Not meant for production trust: its purpose is demos, CI and test fixtures. The key is
    stored unencrypted (mode 0600) in ``directory``.
    """

    CERT_FILE = "ca.pem"
    KEY_FILE = "ca.key"
    SERIAL_FILE = "serial"
    INDEX_FILE = "index.json"
    CRL_FILE = "crl.pem"

    def __init__(self, directory: Path, certificate: x509.Certificate, key: PrivateKey) -> None:
        self.directory = Path(directory)
        self.certificate = certificate
        self.key = key

    # -- life cycle
    @classmethod
    def create(cls, directory: Path, dn: str, days: int = 3650, key_type: str = "rsa", *,
               key: PrivateKey | None = None) -> CertificateAuthority:
        """Make a new self-signed CA in ``directory`` (refuses to overwrite an existing CA)."""
        directory = Path(directory)
        if (directory / cls.CERT_FILE).exists():
            raise CredentialError(f"a CA already exists in {directory} ({cls.CERT_FILE}); refusing to overwrite it")
        if not 0 < days <= CERT_DAYS_MAX:
            raise ValueError(f"days must be within 1..{CERT_DAYS_MAX}")
        directory.mkdir(parents=True, exist_ok=True)
        key = key or generate_key(key_type)
        name = parse_grid_dn(dn)
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (x509.CertificateBuilder()
                       .subject_name(name).issuer_name(name)
                       .public_key(key.public_key())
                       .serial_number(_random_serial())
                       .not_valid_before(now - BACKDATE)
                       .not_valid_after(now + dt.timedelta(days=days))
                       .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                       .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                    key_encipherment=False, data_encipherment=False,
                                                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                    encipher_only=False, decipher_only=False), critical=True)
                       .add_extension(ski, critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                                      critical=False)
                       .sign(key, _signature_hash(key)))
        write_private_key(directory / cls.KEY_FILE, key)
        write_pem_certificates(directory / cls.CERT_FILE, [certificate])
        _atomic_write(directory / cls.SERIAL_FILE, b"1000\n", 0o644)
        _atomic_write(directory / cls.INDEX_FILE, b'{"issued": [], "revoked": [], "crl_number": 0}\n', 0o644)
        ca = cls(directory, certificate, key)
        ca.crl()
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        directory = Path(directory)
        try:
            certificate = x509.load_pem_x509_certificate((directory / cls.CERT_FILE).read_bytes())
            key = serialization.load_pem_private_key((directory / cls.KEY_FILE).read_bytes(), password=None)
        except FileNotFoundError as error:
            raise CredentialError(f"no CA in {directory}: {error.filename} is missing "
                                  f"(make one with `gridcredit pki ca --dir {directory}`)") from None
        except (ValueError, TypeError) as error:
            raise CredentialError(f"the CA in {directory} is unreadable: {error}") from None
        return cls(directory, certificate, key)

    @property
    def dn(self) -> str:
        return grid_dn(self.certificate.subject)

    @property
    def hash(self) -> str:
        return subject_hash(self.certificate)

    # -- bookkeeping
    def _index(self) -> dict:
        return json.loads((self.directory / self.INDEX_FILE).read_text())

    def _save_index(self, index: dict) -> None:
        _atomic_write(self.directory / self.INDEX_FILE,
                      (json.dumps(index, indent=1, sort_keys=True) + "\n").encode(), 0o644)

    def _next_serial(self) -> int:
        path = self.directory / self.SERIAL_FILE
        serial = int(path.read_text().strip())
        _atomic_write(path, f"{serial + 1}\n".encode(), 0o644)
        return serial

    # -- issuing
    def _name_for(self, dn_or_cn: str) -> x509.Name:
        if dn_or_cn.startswith("/"):
            return parse_grid_dn(dn_or_cn)
        if not dn_or_cn or "/" in dn_or_cn:
            raise CertificateError(f"a common name must be non-empty and contain no '/': {dn_or_cn!r}")
        base = list(self.certificate.subject.rdns[:-1])
        return x509.Name(base + [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, dn_or_cn)])])

    def issue(self, subject: x509.Name, *, days: int = 365, key_type: str = "rsa",
              key: PrivateKey | None = None, usages: Sequence[ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
              san: Sequence[x509.GeneralName] = (), not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None) -> tuple[x509.Certificate, PrivateKey]:
        """Issue an end-entity certificate; returns (certificate, key). ``not_before``/``not_after``
        override the validity (for tests of expired or future certificates)."""
        if not 0 < days <= CERT_DAYS_MAX:
            raise ValueError(f"days must be within 1..{CERT_DAYS_MAX}")
        key = key or generate_key(key_type)
        now = _now()
        not_before = not_before or now - BACKDATE
        not_after = not_after or min(now + dt.timedelta(days=days), self.certificate.not_valid_after_utc)
        serial = self._next_serial()
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(self.certificate.subject)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                                                data_encipherment=False,
                                                key_agreement=isinstance(key, ec.EllipticCurvePrivateKey),
                                                key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key()),
                                  critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        certificate = builder.sign(self.key, _signature_hash(self.key))
        index = self._index()
        index["issued"].append({"serial": serial, "subject": grid_dn(subject),
                                "not_after": certificate.not_valid_after_utc.isoformat()})
        self._save_index(index)
        return certificate, key

    def _write_pair(self, out_dir: Path, stem: str, certificate: x509.Certificate,
                    key: PrivateKey) -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        cert_path, key_path = out_dir / f"{stem}cert.pem", out_dir / f"{stem}key.pem"
        write_private_key(key_path, key)
        write_pem_certificates(cert_path, [certificate])
        return cert_path, key_path

    def issue_user(self, dn_or_cn: str, out_dir: Path, days: int = 365, key_type: str = "rsa", *,
                   key: PrivateKey | None = None, not_before: dt.datetime | None = None,
                   not_after: dt.datetime | None = None) -> tuple[Path, Path]:
        """A user certificate: writes ``usercert.pem`` and ``userkey.pem`` (0600) into ``out_dir``.
        ``dn_or_cn``: a full grid DN, or a CN placed under the CA's own name prefix."""
        certificate, key = self.issue(self._name_for(dn_or_cn), days=days, key_type=key_type, key=key,
                                      usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
                                      not_before=not_before, not_after=not_after)
        return self._write_pair(out_dir, "user", certificate, key)

    def issue_host(self, hostname: str, out_dir: Path, days: int = 365, key_type: str = "rsa", *,
                   key: PrivateKey | None = None) -> tuple[Path, Path]:
        """A host certificate (``CN=<hostname>``, SAN dNSName, plus IP 127.0.0.1/::1 for localhost;
        serverAuth and clientAuth): writes ``hostcert.pem`` and ``hostkey.pem`` (0600)."""
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", hostname):
            raise CertificateError(f"not a host name: {hostname!r}")
        san: list[x509.GeneralName] = [x509.DNSName(hostname)]
        if hostname == "localhost":
            san += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
        certificate, key = self.issue(self._name_for(hostname), days=days, key_type=key_type, key=key,
                                      usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
                                      san=san)
        return self._write_pair(out_dir, "host", certificate, key)

    def issue_service(self, service: str, hostname: str, out_dir: Path, days: int = 365,
                      key_type: str = "rsa", *, key: PrivateKey | None = None) -> tuple[Path, Path]:
        """A service certificate ``CN=<service>/<hostname>`` (Globus convention, e.g. ``bank/host``):
        writes ``<service>cert.pem`` and ``<service>key.pem``."""
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", service):
            raise CertificateError(f"not a service name: {service!r}")
        name = self._name_for("x")
        name = x509.Name(list(name.rdns[:-1]) + [x509.RelativeDistinguishedName(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"{service}/{hostname}")])])
        certificate, key = self.issue(name, days=days, key_type=key_type, key=key,
                                      usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
                                      san=[x509.DNSName(hostname)])
        return self._write_pair(out_dir, service, certificate, key)

    # -- revocation
    def revoke(self, serial_or_cert: int | x509.Certificate, *, revoked_at: dt.datetime | None = None
               ) -> x509.CertificateRevocationList:
        """Revoke a certificate this CA issued (by serial or certificate) and rewrite the CRL."""
        if isinstance(serial_or_cert, x509.Certificate):
            if serial_or_cert.issuer != self.certificate.subject:
                raise CertificateError(
                    f"certificate {grid_dn(serial_or_cert.subject)} was issued by "
                    f"{grid_dn(serial_or_cert.issuer)}, not by this CA ({self.dn})")
            serial = serial_or_cert.serial_number
        else:
            serial = int(serial_or_cert)
        index = self._index()
        if not any(entry["serial"] == serial for entry in index["issued"]):
            raise CertificateError(f"this CA ({self.dn}) never issued serial {serial}")
        if not any(entry["serial"] == serial for entry in index["revoked"]):
            when = (revoked_at or _now()).astimezone(dt.timezone.utc)
            index["revoked"].append({"serial": serial, "revoked_at": when.isoformat()})
            self._save_index(index)
        return self.crl()

    def crl(self, *, days: int = 30, this_update: dt.datetime | None = None,
            next_update: dt.datetime | None = None) -> x509.CertificateRevocationList:
        """Make, store (``crl.pem``) and return a fresh CRL. ``this_update``/``next_update``
        override its validity (an expired CRL, for tests)."""
        index = self._index()
        index["crl_number"] = index.get("crl_number", 0) + 1
        revoked = [(e["serial"], dt.datetime.fromisoformat(e["revoked_at"])) for e in index["revoked"]]
        crl = make_crl(self.certificate, self.key, revoked, this_update=this_update, next_update=next_update,
                       days=days, crl_number=index["crl_number"])
        self._save_index(index)
        _atomic_write(self.directory / self.CRL_FILE, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return crl

    def current_crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl((self.directory / self.CRL_FILE).read_bytes())

    def export_trust(self, trust_dir: Path) -> dict[str, Path]:
        """Write ``<hash>.0``, ``<hash>.r0`` and ``<hash>.signing_policy`` into ``trust_dir``."""
        trust_dir = Path(trust_dir)
        trust_dir.mkdir(parents=True, exist_ok=True)
        stem = self.hash
        paths = {"certificate": trust_dir / f"{stem}.0", "crl": trust_dir / f"{stem}.r0",
                 "signing_policy": trust_dir / f"{stem}.signing_policy"}
        write_pem_certificates(paths["certificate"], [self.certificate])
        _atomic_write(paths["crl"], self.current_crl().public_bytes(serialization.Encoding.PEM), 0o644)
        policy = (f"# Signing policy of {self.dn} (written by gridcredit pki)\n"
                  f"access_id_CA      X509         '{self.dn}'\n"
                  f"pos_rights        globus        CA:sign\n"
                  f"cond_subjects     globus       '\"*\"'\n")
        _atomic_write(paths["signing_policy"], policy.encode(), 0o644)
        return paths


# ------------------------------------------------------------------------------------- proxies

def make_proxy(cert: x509.Certificate, key: PrivateKey, chain: Sequence[x509.Certificate] = (), *,
               hours: float = 12, limited: bool = False, key_type: str = "rsa",
               path_length: int | None = None, proxy_key: PrivateKey | None = None
               ) -> tuple[x509.Certificate, PrivateKey]:
    """An RFC 3820 proxy of ``cert`` signed with ``key``.

    ``chain``: the certificates after ``cert`` (for a proxy of a proxy, the issuer's chain), used
    to cap the lifetime. A proxy made from a limited proxy is always limited. ``proxy_key``
    reuses an existing key (tests); otherwise a new ``key_type`` key is made.
    """
    proxy_key = proxy_key or generate_key(key_type)
    proxy = sign_proxy(cert, key, proxy_key.public_key(), chain, hours=hours, limited=limited,
                       path_length=path_length)
    return proxy, proxy_key


def sign_proxy(cert: x509.Certificate, key: PrivateKey, public_key, chain: Sequence[x509.Certificate] = (), *,
               hours: float = 12, limited: bool = False, path_length: int | None = None) -> x509.Certificate:
    """An RFC 3820 proxy of ``cert``, signed with ``key``, certifying ``public_key`` — a key whose
    private half someone else holds (GSI delegation: the delegatee sends a certificate request, the
    delegator signs its public key). The rules are ``make_proxy``'s."""
    if not key_matches(cert, key):
        raise CredentialError(f"the private key does not match certificate {grid_dn(cert.subject)}")
    if is_ca_certificate(cert):
        raise CredentialError(f"{grid_dn(cert.subject)} is a CA certificate; a proxy is made from a "
                              f"user, host or proxy certificate")
    if not 0 < hours <= PROXY_HOURS_MAX:
        raise ValueError(f"hours must be within (0, {PROXY_HOURS_MAX}]")
    issuer_info = proxy_info(cert)
    if issuer_info is not None and issuer_info.limited:
        limited = True
    if issuer_info is not None and issuer_info.path_length == 0:
        raise CredentialError(f"proxy {grid_dn(cert.subject)} has path length 0 and may not sign proxies")
    now = _now()
    not_before = max(now - BACKDATE, cert.not_valid_before_utc)
    expiries = [cert.not_valid_after_utc] + [c.not_valid_after_utc for c in chain]
    not_after = min([now + dt.timedelta(hours=hours)] + expiries)
    if not_after <= now:
        raise CredentialError(f"certificate {grid_dn(cert.subject)} (or its chain) has expired "
                              f"at {min(expiries).isoformat()}; cannot make a proxy")
    serial = _random_serial()
    subject = x509.Name(list(cert.subject.rdns) + [x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])])
    language = OID_PPL_LIMITED if limited else OID_PPL_INHERIT_ALL
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(cert.subject)
            .public_key(public_key).serial_number(serial)
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.UnrecognizedExtension(
                OID_PROXY_CERT_INFO, encode_proxy_cert_info(language, path_length)), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=is_rsa, data_encipherment=False,
                                         key_agreement=not is_rsa, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, _signature_hash(key)))


def default_proxy_path() -> Path:
    """Where grid tools put a user's proxy: ``/tmp/x509up_u<uid>``."""
    return Path("/tmp") / f"x509up_u{os.getuid()}"


def write_proxy_file(path: Path, proxy_cert: x509.Certificate, proxy_key: PrivateKey,
                     chain: Sequence[x509.Certificate]) -> Path:
    """Write a Globus proxy file (proxy certificate, its key, then the issuer chain), mode 0600.

    The key is written in traditional (PKCS#1 / SEC1) PEM, which every grid tool reads.
    """
    path = Path(path)
    data = (proxy_cert.public_bytes(serialization.Encoding.PEM)
            + proxy_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())
            + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    _atomic_write(path, data, 0o600)
    return path
