"""Path validation: what must be accepted (our chains, real grid tools' proxies) and the attack
corpus of chains that must be refused, each with a message that names the problem."""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gridcredit.errors import CertificateError, CredentialError
from gridcredit.security import pki as pki_module
from gridcredit.security.chain import Principal, TrustStore
from gridcredit.security.credentials import Credential, load_credential

UTC = dt.timezone.utc


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def forge_proxy(issuer: x509.Certificate, signing_key, *, subject: x509.Name | None = None,
                not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
                language=pki_module.OID_PPL_INHERIT_ALL, path_length: int | None = None,
                pci: bool = True, pci_critical: bool = True, ca: bool = False, key=None,
                issuer_name: x509.Name | None = None, draft_pci: bool = False):
    """A proxy-like certificate with every knob exposed (made with `cryptography` directly, so
    the tests do not depend on the code under test to build their attacks)."""
    key = key or pki_module.generate_key("ec")
    serial = 4242424242
    subject = subject or x509.Name(list(issuer.subject.rdns) + [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or issuer.subject)
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(not_before or now() - dt.timedelta(minutes=5))
               .not_valid_after(not_after or now() + dt.timedelta(hours=1)))
    if pci:
        oid = pki_module.OID_PROXY_CERT_INFO_DRAFT if draft_pci else pki_module.OID_PROXY_CERT_INFO
        builder = builder.add_extension(x509.UnrecognizedExtension(
            oid, pki_module.encode_proxy_cert_info(language, path_length)), critical=pci_critical)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(signing_key, hashes.SHA256()), key


def refused(store: TrustStore, chain, match: str, at: dt.datetime | None = None) -> str:
    with pytest.raises(CertificateError, match=match) as info:
        store.validate(chain, at=at)
    assert info.value.code == "InvalidSecurityToken"
    return str(info.value)


@pytest.fixture(scope="module")
def store(pki) -> TrustStore:
    return pki.trust_store()


# ------------------------------------------------------------------------------------- accepted

def test_end_entity_certificate_is_accepted(pki, store):
    alice = pki.user("Alice").credential
    principal = store.validate(alice.certificates)
    assert isinstance(principal, Principal)
    assert principal.dn == "/DC=org/DC=example/O=gridcredit-test/CN=Alice"
    assert principal.signer_dn == principal.dn and not principal.is_proxy and not principal.limited
    assert principal.ca_dn == pki.ca.dn
    assert principal.not_after == alice.cert.not_valid_after_utc


def test_chain_may_include_the_ca(pki, store):
    alice = pki.user("Alice").credential
    assert store.validate([*alice.certificates, pki.ca.certificate]).dn == alice.dn


def test_host_certificate_is_accepted(pki, store):
    assert store.validate(pki.host_credential().certificates).dn.endswith("/CN=localhost")


def test_proxy_and_proxy_of_proxy_carry_the_end_entity_identity(pki, store):
    proxy = pki.proxy("Alice", hours=2)
    principal = store.validate(proxy.certificates)
    assert principal.dn == pki.user("Alice").dn
    assert principal.signer_dn == pki_module.grid_dn(proxy.cert.subject) != principal.dn
    assert principal.is_proxy and not principal.limited
    assert principal.not_after == proxy.cert.not_valid_after_utc
    second = pki.proxy(proxy, hours=1)
    assert store.validate(second.certificates).dn == principal.dn


def test_limited_proxy_is_accepted_and_marked(pki, store):
    limited = pki.proxy("Alice", limited=True)
    principal = store.validate(limited.certificates)
    assert principal.is_proxy and principal.limited
    # make_proxy makes a proxy of a limited proxy limited, as Globus does
    assert store.validate(pki.proxy(limited).certificates).limited


def test_ec_keys_throughout(tmp_path):
    ca = pki_module.CertificateAuthority.create(tmp_path / "ca", "/DC=org/O=EC/CN=EC CA", key_type="ec")
    ca.export_trust(tmp_path / "trust")
    cert_path, key_path = ca.issue_user("Eve", tmp_path / "eve", key_type="ec")
    eve = load_credential(cert_path, key_path)
    proxy, key = pki_module.make_proxy(eve.cert, eve.key, eve.chain, key_type="ec")
    assert TrustStore.from_directory(tmp_path / "trust").validate([proxy, *eve.certificates]).dn == "/DC=org/O=EC/CN=Eve"


# --------------------------------------------------------------------------- real grid tools

def _tool_proxy(pki, tmp_path: Path, command: list[str]) -> Credential:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "X509_CERT_DIR": str(pki.trust_dir)})
    assert result.returncode == 0, f"{command[0]} failed: {result.stdout}{result.stderr}"
    return load_credential(proxy_path=tmp_path / "proxy.pem")


def _grid_proxy_init(pki, tmp_path, *options) -> Credential:
    alice = pki.user("Alice")
    return _tool_proxy(pki, tmp_path, ["grid-proxy-init", "-q", "-cert", str(alice.cert_path), "-key",
                                       str(alice.key_path), "-certdir", str(pki.trust_dir),
                                       "-out", str(tmp_path / "proxy.pem"), *options])


def test_grid_proxy_init_rfc_proxy_is_accepted(pki, store, tmp_path):
    proxy = _grid_proxy_init(pki, tmp_path, "-rfc", "-hours", "2")
    principal = store.validate(proxy.certificates)
    assert principal.dn == pki.user("Alice").dn and principal.is_proxy and not principal.limited


def test_grid_proxy_init_limited_proxy_is_accepted_as_limited(pki, store, tmp_path):
    proxy = _grid_proxy_init(pki, tmp_path, "-rfc", "-limited")
    assert store.validate(proxy.certificates).limited


def test_grid_proxy_init_proxy_with_path_length(pki, store, tmp_path):
    # (grid-proxy-init -path-length 0 writes no constraint at all: Globus reads 0 as "unset")
    proxy = _grid_proxy_init(pki, tmp_path, "-rfc", "-path-length", "1")
    assert pki_module.proxy_info(proxy.cert).path_length == 1
    assert store.validate(proxy.certificates).is_proxy
    second = pki.proxy(proxy)
    assert store.validate(second.certificates).dn == pki.user("Alice").dn
    forged, _ = forge_proxy(second.cert, second.key)
    refused(store, [forged, *second.certificates], "allows 1 proxies below it, but 2 follow")


def test_grid_proxy_init_legacy_proxy_is_refused_clearly(pki, store, tmp_path):
    proxy = _grid_proxy_init(pki, tmp_path, "-old")
    assert proxy.cert.subject.rdns[-1] == x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, "proxy")])
    message = refused(store, proxy.certificates, "legacy .*pre-RFC 3820.* Globus proxy")
    assert "grid-proxy-init -rfc" in message


def test_grid_proxy_init_draft_proxy_is_refused_clearly(pki, store, tmp_path):
    proxy = _grid_proxy_init(pki, tmp_path, "-draft")
    refused(store, proxy.certificates, "GT3 draft proxy")


def test_arcproxy_proxy_is_accepted(pki, store, tmp_path):
    assert shutil.which("arcproxy"), "arcproxy is missing: install Debian nordugrid-arc-client"
    alice = pki.user("Alice")
    proxy = _tool_proxy(pki, tmp_path, ["arcproxy", "-C", str(alice.cert_path), "-K", str(alice.key_path),
                                        "-T", str(pki.trust_dir), "-P", str(tmp_path / "proxy.pem"),
                                        "-c", "validityPeriod=3H"])
    principal = store.validate(proxy.certificates)
    assert principal.dn == alice.dn and principal.is_proxy


# ----------------------------------------------------------------------------------- time

def test_expired_user_certificate_is_refused(pki, store):
    old = pki.user("Old", not_before=now() - dt.timedelta(days=30), not_after=now() - dt.timedelta(days=1))
    refused(store, old.credential.certificates, r"certificate /.*CN=Old expired at \d{4}-")


def test_not_yet_valid_certificate_is_refused(pki, store):
    future = pki.user("Future", not_before=now() + dt.timedelta(days=1), not_after=now() + dt.timedelta(days=30))
    refused(store, future.credential.certificates, "CN=Future is not valid before")


def test_validation_at_a_given_time(pki, store):
    proxy = pki.proxy("Alice", hours=1)
    assert store.validate(proxy.certificates, at=now() + dt.timedelta(minutes=30)).is_proxy
    refused(store, proxy.certificates, r"proxy certificate .* expired at", at=now() + dt.timedelta(hours=2))
    refused(store, proxy.certificates, "is not valid before", at=now() - dt.timedelta(days=2))


def test_cached_validation_still_checks_expiry(pki):
    store = pki.trust_store(cache_ttl_s=3600)
    proxy = pki.proxy("Alice", hours=3 / 3600)     # two to three seconds
    store.validate(proxy.certificates)
    refused(store, proxy.certificates, "proxy certificate .* expired", at=now() + dt.timedelta(seconds=5))
    time.sleep(max(0.0, (proxy.cert.not_valid_after_utc - dt.datetime.now(UTC)).total_seconds()) + 1.1)
    refused(store, proxy.certificates, "proxy certificate .* expired")


def test_proxy_outliving_its_issuer_is_refused(pki, store):
    alice = pki.user("Alice").credential
    forged, _ = forge_proxy(alice.cert, alice.key, not_after=alice.cert.not_valid_after_utc + dt.timedelta(hours=1))
    refused(store, [forged, *alice.certificates], "outlives its issuer")


def test_make_proxy_caps_lifetime_at_the_issuer(pki):
    short = pki.user("Short", not_after=now() + dt.timedelta(hours=1)).credential
    proxy, _ = pki_module.make_proxy(short.cert, short.key, short.chain, hours=12, proxy_key=pki.keys.any())
    assert proxy.not_valid_after_utc == short.cert.not_valid_after_utc


# ----------------------------------------------------------------------------------- revocation

def test_revoked_user_and_their_proxies_are_refused(fresh_pki):
    store = fresh_pki.trust_store()
    bob = fresh_pki.user("Bob").credential
    proxy = fresh_pki.proxy("Bob")
    assert store.validate(proxy.certificates).dn == bob.dn      # cached now
    fresh_pki.ca.revoke(bob.cert)
    fresh_pki.publish()                                          # the store notices the directory changed
    refused(store, bob.certificates, r"certificate /.*CN=Bob was revoked on \d{4}-")
    message = refused(store, proxy.certificates, "CN=Bob was revoked on")
    assert fresh_pki.ca.dn in message
    assert store.validate(fresh_pki.user("Carol").credential.certificates).dn.endswith("CN=Carol")


def test_revocation_is_seen_when_a_crl_file_is_rewritten_in_place(fresh_pki):
    store = fresh_pki.trust_store(rescan_interval_s=0)
    dave = fresh_pki.user("Dave").credential
    store.validate(dave.certificates)
    crl = fresh_pki.ca.revoke(dave.cert)
    crl_file = fresh_pki.trust_dir / f"{fresh_pki.ca.hash}.r0"
    mtime = os.stat(fresh_pki.trust_dir).st_mtime_ns
    with open(crl_file, "wb") as stream:                         # in place: the directory mtime stays
        stream.write(crl.public_bytes(serialization.Encoding.PEM))
    os.utime(fresh_pki.trust_dir, ns=(mtime, mtime))
    os.utime(crl_file, ns=(mtime + 10**9, mtime + 10**9))
    refused(store, dave.certificates, "was revoked")


def test_revoked_proxy_itself_is_refused(fresh_pki):
    """A proxy is revoked by a CRL its issuer (the user) signed; the CA's CRL cannot name it."""
    erin = fresh_pki.user("Erin").credential
    proxy = fresh_pki.proxy("Erin")
    other = fresh_pki.proxy("Erin")
    crl = pki_module.make_crl(erin.cert, erin.key, [(proxy.cert.serial_number, now())])
    (fresh_pki.trust_dir / "erin-proxies.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    store = fresh_pki.trust_store()
    refused(store, proxy.certificates, r"proxy certificate /.*CN=Erin/CN=\d+ was revoked on")
    assert store.validate(other.certificates).dn == erin.dn
    # the CA revoking the proxy's serial does not touch it (wrong issuer) …
    assert store.validate(other.certificates).is_proxy
    # … and a CRL with the user's name but someone else's key is ignored
    mallory = fresh_pki.user("Mallory").credential
    fake = pki_module.make_crl(erin.cert, mallory.key, [(other.cert.serial_number, now())])
    (fresh_pki.trust_dir / "fake.crl").write_bytes(fake.public_bytes(serialization.Encoding.PEM))
    store.reload()
    assert store.validate(other.certificates).is_proxy


def test_expired_crl_refuses(fresh_pki):
    frank = fresh_pki.user("Frank").credential
    fresh_pki.ca.crl(this_update=now() - dt.timedelta(days=10), next_update=now() - dt.timedelta(days=1))
    fresh_pki.publish()
    message = refused(fresh_pki.trust_store(), frank.certificates, "the CRL of .* expired at")
    assert "fetch-crl" in message


def test_missing_crl_is_accepted_unless_required(fresh_pki):
    (fresh_pki.trust_dir / f"{fresh_pki.ca.hash}.r0").unlink()
    grace = fresh_pki.user("Grace").credential
    assert fresh_pki.trust_store().validate(grace.certificates).dn == grace.dn
    refused(fresh_pki.trust_store(require_crl=True), grace.certificates, "no CRL of")


# ----------------------------------------------------------------------------------- forgery

def test_mis_chained_proxy_is_refused(pki, store):
    """Alice's proxy presented with Bob's certificate as its issuer."""
    proxy = pki.proxy("Alice")
    bob = pki.user("Bob").credential
    refused(store, [proxy.cert, bob.cert], "broken chain: proxy certificate .*CN=Alice/CN=.* was issued by .*CN=Alice")


def test_proxy_signed_by_a_non_matching_key_is_refused(pki, store):
    alice, bob = pki.user("Alice").credential, pki.user("Bob").credential
    forged, _ = forge_proxy(alice.cert, bob.key)        # Alice's name, Bob's key
    refused(store, [forged, *alice.certificates], "signature on proxy certificate .* does not verify")


def test_same_dn_different_key_is_refused(pki, store):
    """A second certificate with Alice's DN (another key) cannot carry proxies of the first."""
    proxy = pki.proxy("Alice")
    twin = pki.user("Alice", days=30).credential
    assert twin.cert.subject == proxy.chain[0].subject and twin.cert != proxy.chain[0]
    refused(store, [proxy.cert, twin.cert], "does not verify")


def test_self_made_ca_is_refused(pki, store, tmp_path):
    evil = pki_module.CertificateAuthority.create(tmp_path / "evil", "/DC=org/DC=evil/CN=Evil CA",
                                                  key=pki.keys.fresh())
    cert_path, key_path = evil.issue_user("Alice", tmp_path / "mallory", key=pki.keys.any())
    mallory = load_credential(cert_path, key_path)
    refused(store, mallory.certificates, "issuer /DC=org/DC=evil/CN=Evil CA of .* is not trusted")
    refused(store, [*mallory.certificates, evil.certificate], "Evil CA is not trusted")


def test_self_made_ca_with_the_trusted_name_is_refused(pki, store, tmp_path):
    impostor = pki_module.CertificateAuthority.create(tmp_path / "impostor", pki.ca.dn, key=pki.keys.fresh())
    cert_path, key_path = impostor.issue_user("Alice", tmp_path / "mallory", key=pki.keys.any())
    mallory = load_credential(cert_path, key_path)
    assert mallory.cert.issuer == pki.ca.certificate.subject
    refused(store, mallory.certificates, "does not verify|not trusted")
    refused(store, [*mallory.certificates, impostor.certificate], "does not verify|not trusted")


def _flip(der: bytes, offset: int) -> x509.Certificate:
    data = bytearray(der)
    data[offset] ^= 0x01
    return x509.load_der_x509_certificate(bytes(data))


def test_tampered_signature_is_refused(pki, store):
    alice = pki.user("Alice").credential
    tampered = _flip(alice.cert.public_bytes(serialization.Encoding.DER), -5)
    refused(store, [tampered], "signature on certificate .*CN=Alice does not verify")


def test_tampered_tbs_is_refused(pki, store):
    alice = pki.user("Alice").credential
    der = alice.cert.public_bytes(serialization.Encoding.DER)
    offset = der.index(b"Alice")                        # Alice -> @lice inside the signed subject
    tampered = _flip(der, offset)
    assert pki_module.grid_dn(tampered.subject).endswith("CN=@lice")
    refused(store, [tampered], "does not verify")
    proxy = pki.proxy("Alice")
    der = proxy.cert.public_bytes(serialization.Encoding.DER)
    spki = proxy.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    tampered_proxy = _flip(der, der.index(spki) + len(spki) // 2)   # a key swapped inside the signed part
    assert tampered_proxy.public_key() != proxy.cert.public_key()
    refused(store, [tampered_proxy, *proxy.chain], "signature on proxy certificate .* does not verify")


def test_subject_rule_violations_are_refused(pki, store):
    alice = pki.user("Alice").credential
    name = alice.cert.subject
    cases = {
        "another person's name": x509.Name(list(pki.user("Bob").credential.cert.subject.rdns) + [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "1")])]),
        "not a CN": x509.Name(list(name.rdns) + [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "1")])]),
        "two RDNs": x509.Name(list(name.rdns) + [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "1")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "2")])]),
        "issuer's own name": name,
    }
    for label, subject in cases.items():
        forged, _ = forge_proxy(alice.cert, alice.key, subject=subject)
        refused(store, [forged, *alice.certificates], "subject rule")


def test_limited_proxy_may_not_sign_a_full_proxy(pki, store):
    limited = pki.proxy("Alice", limited=True)
    forged, _ = forge_proxy(limited.cert, limited.key)
    refused(store, [forged, *limited.certificates], "full proxy signed by the limited proxy")


def test_path_length_violation_is_refused(pki, store):
    one = pki.proxy("Alice", path_length=1)
    two = pki.proxy(one)
    assert store.validate(two.certificates).is_proxy
    three = pki.proxy(two)
    refused(store, three.certificates, "allows 1 proxies below it, but 2 follow")


def test_ca_issued_certificate_pretending_to_be_a_proxy_is_refused(pki, store):
    alice = pki.user("Alice").credential
    forged, _ = forge_proxy(pki.ca.certificate, pki.ca.key, subject=x509.Name(list(alice.cert.subject.rdns) + [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "4242")])]))
    refused(store, [forged], "issued by the CA .*: a CA does not issue proxies")
    refused(store, [forged, pki.ca.certificate], "a CA does not issue proxies")


def test_proxy_info_must_be_critical_and_known(pki, store):
    alice = pki.user("Alice").credential
    forged, _ = forge_proxy(alice.cert, alice.key, pci_critical=False)
    refused(store, [forged, *alice.certificates], "must be critical")
    forged, _ = forge_proxy(alice.cert, alice.key, language=pki_module.OID_PPL_INDEPENDENT)
    refused(store, [forged, *alice.certificates], "independent proxy")
    forged, _ = forge_proxy(alice.cert, alice.key, language=x509.ObjectIdentifier("1.2.3.4"))
    refused(store, [forged, *alice.certificates], "unsupported proxy policy language 1.2.3.4")


def test_proxy_claiming_to_be_a_ca_is_refused(pki, store):
    alice = pki.user("Alice").credential
    forged, _ = forge_proxy(alice.cert, alice.key, ca=True)
    refused(store, [forged, *alice.certificates], "claims to be a CA")


def test_proxy_without_its_issuer_is_refused(pki, store):
    refused(store, [pki.proxy("Alice").cert], "presented without its issuer")


def test_end_entity_signing_a_plain_certificate_is_refused(pki, store):
    """A user certificate used as a CA (no ProxyCertInfo): OpenSSL's CA rules apply."""
    alice = pki.user("Alice").credential
    forged, _ = forge_proxy(alice.cert, alice.key, pci=False)
    refused(store, [forged, *alice.certificates], "is not a CA and may not issue")


def test_ca_certificate_is_not_an_identity(pki, store):
    refused(store, [pki.ca.certificate], "is a CA certificate, not a user")


def test_empty_and_overlong_chains_are_refused(pki, store):
    refused(store, [], "no certificate presented")
    refused(store, [pki.user("Alice").credential.cert] * 11, "too long")


# ------------------------------------------------------------------------------ key strength

def _weak_keys():
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
    return {
        "RSA 1024": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), r"RSA key of 1024 bits"),
        "P-192": (lambda: ec.generate_private_key(ec.SECP192R1()), r"EC key on the curve secp192r1"),
        "P-224": (lambda: ec.generate_private_key(ec.SECP224R1()), r"EC key on the curve secp224r1"),
        "DSA 2048": (lambda: dsa.generate_private_key(key_size=2048), r"DSA key"),
    }


@pytest.mark.parametrize("kind", ["RSA 1024", "P-192", "P-224", "DSA 2048"])
def test_proxy_with_a_weak_key_is_refused(pki, store, kind):
    """A real user signs a proxy whose key is too weak: the proxy is refused, naming it, its key and the rule."""
    make, what = _weak_keys()[kind]
    alice = pki.user("Alice").credential
    proxy, _ = pki_module.make_proxy(alice.cert, alice.key, alice.chain, proxy_key=make())
    message = refused(store, [proxy, *alice.certificates], what)
    assert pki_module.grid_dn(proxy.subject) in message and "proxy certificate" in message
    assert "at least 2048 bits" in message and "P-256" in message


def test_weak_key_anywhere_in_the_chain_is_refused(pki, store, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    alice = pki.user("Alice").credential
    # a weak proxy in the middle, signing a strong one
    weak, weak_key = pki_module.make_proxy(alice.cert, alice.key, alice.chain,
                                           proxy_key=ec.generate_private_key(ec.SECP192R1()))
    strong, _ = pki_module.make_proxy(weak, weak_key, [alice.cert], proxy_key=pki.keys.any())
    refused(store, [strong, weak, *alice.certificates],
            re.escape(pki_module.grid_dn(weak.subject)) + " has an EC key on the curve secp192r1")
    # an end-entity certificate with a weak key
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_user = pki.user("Wendy Weak", key=small)
    refused(store, weak_user.credential.certificates, r"certificate /.*CN=Wendy Weak has an RSA key of 1024 bits")
    # the CA, as found in the trust directory (the chain presented holds only the user)
    weak_ca = pki_module.CertificateAuthority.create(tmp_path / "ca", "/DC=org/O=Weak/CN=Weak CA",
                                                     key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    weak_ca.export_trust(tmp_path / "trust")
    cert_path, key_path = weak_ca.issue_user("Carl", tmp_path / "carl", key=pki.keys.any())
    carl = load_credential(cert_path, key_path)
    refused(TrustStore.from_directory(tmp_path / "trust"), carl.certificates,
            r"certificate /DC=org/O=Weak/CN=Weak CA has an RSA key of 1024 bits")


def test_strong_keys_are_accepted(pki, store):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    alice = pki.user("Alice").credential
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP521R1()),
            ed25519.Ed25519PrivateKey.generate()]
    for key in keys:
        proxy, _ = pki_module.make_proxy(alice.cert, alice.key, alice.chain, proxy_key=key)
        assert store.validate([proxy, *alice.certificates]).dn == alice.dn


def test_legacy_setting_accepts_weak_keys(pki):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    legacy = pki.trust_store(allow_weak_keys=True)
    alice = pki.user("Alice").credential
    for key in (rsa.generate_private_key(public_exponent=65537, key_size=1024), ec.generate_private_key(ec.SECP192R1())):
        proxy, _ = pki_module.make_proxy(alice.cert, alice.key, alice.chain, proxy_key=key)
        assert legacy.validate([proxy, *alice.certificates]).dn == alice.dn
    # a key that cannot sign at all is refused even so
    from cryptography.hazmat.primitives.asymmetric import x25519
    proxy, _ = forge_proxy(alice.cert, alice.key, key=x25519.X25519PrivateKey.generate())
    refused(legacy, [proxy, *alice.certificates], "X25519PublicKey key, which cannot sign")


def test_allow_weak_keys_is_off_unless_configured():
    from gridcredit.server.registry import load_config
    assert load_config(env={}).security.allow_weak_keys is False
    assert load_config(env={"GRIDCREDIT_SECURITY_ALLOW_WEAK_KEYS": "true"}).security.allow_weak_keys is True


# ------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("hidden, name", [("\u202e", "RIGHT-TO-LEFT OVERRIDE"), ("\u200b", "ZERO WIDTH SPACE")])
def test_names_with_invisible_characters_are_refused(pki, store, hidden, name):
    """A DN that can look like another (a bidi override, a zero-width space) is refused wherever it is."""
    user = pki.user(f"Ali{hidden}ce")
    message = refused(store, user.credential.certificates, f"subject DN contains U\\+{ord(hidden):04X} {name}")
    assert "\\u" in message and hidden not in message          # the message shows the character, escaped
    alice = pki.user("Alice").credential
    proxy, _ = forge_proxy(alice.cert, alice.key, subject=x509.Name(list(alice.cert.subject.rdns) + [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, f"12{hidden}34")])]))
    refused(store, [proxy, *alice.certificates], f"proxy certificate .* subject DN contains U\\+{ord(hidden):04X}")


def test_issuer_name_with_invisible_characters_is_refused(pki, store):
    alice = pki.user("Alice").credential
    proxy, _ = forge_proxy(alice.cert, alice.key, issuer_name=x509.Name(list(alice.cert.subject.rdns[:-1]) + [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "Ali\u202ece")])]))
    refused(store, [proxy, *alice.certificates], r"issuer DN .* contains U\+202E RIGHT-TO-LEFT OVERRIDE")


# ---------------------------------------------------------------------------- host identity

def _issue(pki, tmp_path, subject: str, *, san=(), usages=None) -> Credential:
    from cryptography.x509.oid import ExtendedKeyUsageOID
    usages = usages if usages is not None else (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    cert, key = pki.ca.issue(pki_module.parse_grid_dn(subject), key=pki.keys.any(), usages=usages,
                             san=[x509.DNSName(name) for name in san])
    return Credential(cert, key, (), subject)


def test_host_names_come_from_the_certificate_not_the_dn(pki, store, tmp_path):
    from cryptography.x509.oid import ExtendedKeyUsageOID
    assert store.validate(pki.host_credential().certificates).host_names == ("localhost",)
    # a user certificate whose CN looks like a host name is no host
    user = pki.user("ce1.example.org")
    assert store.validate(user.credential.certificates).host_names == ()
    assert store.validate(pki.user("Alice").credential.certificates).host_names == ()
    # the names are the dNSName subjectAltNames, whatever the CN says (wildcards name no host)
    other = _issue(pki, tmp_path, "/DC=org/DC=example/O=gridcredit-test/CN=gateway.example.org",
                   san=["CE1.Example.org", "ce2.example.org", "*.example.org"])
    assert store.validate(other.certificates).host_names == ("ce1.example.org", "ce2.example.org")
    # an extendedKeyUsage without serverAuth/clientAuth: not issued for a host
    signing = _issue(pki, tmp_path, "/DC=org/DC=example/O=gridcredit-test/CN=ce3.example.org",
                     san=["ce3.example.org"], usages=(ExtendedKeyUsageOID.CODE_SIGNING,))
    assert store.validate(signing.certificates).host_names == ()
    # a proxy of a host certificate acts for the host's DN, but is no host certificate
    host_proxy = pki.proxy(pki.host_credential())
    principal = store.validate(host_proxy.certificates)
    assert principal.is_proxy and principal.host_names == ()


# ----------------------------------------------------------------------------- the store itself

def test_trust_directory_must_exist(tmp_path):
    with pytest.raises(CertificateError, match="does not exist"):
        TrustStore.from_directory(tmp_path / "nowhere")


def test_store_ignores_junk_and_non_ca_files(pki, tmp_path):
    shutil.copytree(pki.trust_dir, tmp_path / "trust")
    (tmp_path / "trust" / "deadbeef.0").write_text("not a certificate")
    (tmp_path / "trust" / "user.pem").write_bytes(pki.user("Alice").cert_path.read_bytes())
    store = TrustStore.from_directory(tmp_path / "trust")
    assert [c.subject for c in store.ca_certificates] == [pki.ca.certificate.subject]
    assert store.validate(pki.user("Alice").credential.certificates).is_proxy is False


def test_new_ca_in_directory_is_picked_up(pki, tmp_path):
    other = pki_module.CertificateAuthority.create(tmp_path / "other", "/DC=org/O=Other/CN=Other CA",
                                                   key=pki.keys.fresh())
    cert_path, key_path = other.issue_user("Olga", tmp_path / "olga", key=pki.keys.any())
    olga = load_credential(cert_path, key_path)
    shutil.copytree(pki.trust_dir, tmp_path / "trust")
    store = TrustStore.from_directory(tmp_path / "trust")
    refused(store, olga.certificates, "not trusted")
    other.export_trust(tmp_path / "trust")
    assert store.validate(olga.certificates).dn == "/DC=org/O=Other/CN=Olga"


def test_concurrent_validation(pki):
    store = pki.trust_store(cache_ttl_s=0)
    chains = [pki.proxy("Alice").certificates, pki.user("Bob").credential.certificates]
    errors: list[BaseException] = []

    def work():
        try:
            for index in range(50):
                store.validate(chains[index % 2])
        except BaseException as error:      # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_validation_cost(pki, capsys):
    """Measured, and bounded loosely so a regression of an order of magnitude fails."""
    chain = pki.proxy("Alice").certificates
    uncached = pki.trust_store(cache_ttl_s=0)
    cached = pki.trust_store()
    rounds = 200
    for label, store in (("uncached", uncached), ("cached", cached)):
        store.validate(chain)
        started = time.perf_counter()
        for _ in range(rounds):
            store.validate(chain, at=dt.datetime.now(UTC))
        cost_ms = (time.perf_counter() - started) / rounds * 1000
        with capsys.disabled():
            print(f"\nvalidation of a proxy chain, {label}: {cost_ms:.3f} ms")
        assert cost_ms < (20 if label == "uncached" else 2)
