"""Finding and loading our own credential the way grid tools do."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gridcredit.errors import CredentialError
from gridcredit.security import credentials as credentials_module
from gridcredit.security import pki as pki_module
from gridcredit.security.credentials import Credential, load_credential, trust_directory


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No grid variables, an empty home and no default proxy file."""
    for name in ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "X509_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    default_proxy = tmp_path / "x509up_default"
    monkeypatch.setattr(credentials_module, "default_proxy_path", lambda: default_proxy)
    return {"home": home, "default_proxy": default_proxy}


def write_proxy(pki, path: Path) -> Credential:
    proxy = pki.proxy("Alice")
    pki_module.write_proxy_file(path, proxy.cert, proxy.key, proxy.chain)
    return proxy


def test_explicit_cert_and_key(pki, clean_env):
    alice = pki.user("Alice")
    credential = load_credential(alice.cert_path, alice.key_path)
    assert credential.dn == alice.dn and credential.identity_dn == alice.dn
    assert credential.chain == () and credential.certificates == (credential.cert,)
    assert not credential.is_proxy


def test_explicit_proxy_file(pki, clean_env, tmp_path):
    proxy = write_proxy(pki, tmp_path / "proxy")
    credential = load_credential(proxy_path=tmp_path / "proxy")
    assert credential.cert == proxy.cert and credential.is_proxy
    assert credential.certificates == (proxy.cert, *proxy.chain)     # leaf first
    assert credential.identity_dn == pki.user("Alice").dn
    assert credential.not_after == proxy.cert.not_valid_after_utc


def test_search_order(pki, clean_env, tmp_path, monkeypatch):
    alice, bob = pki.user("Alice"), pki.user("Bob")
    # 5. ~/.globus
    globus = clean_env["home"] / ".globus"
    globus.mkdir()
    (globus / "usercert.pem").write_bytes(bob.cert_path.read_bytes())
    (globus / "userkey.pem").write_bytes(bob.key_path.read_bytes())
    os.chmod(globus / "userkey.pem", 0o600)
    assert load_credential().dn == bob.dn
    # 4. X509_USER_CERT / X509_USER_KEY beat ~/.globus
    monkeypatch.setenv("X509_USER_CERT", str(alice.cert_path))
    monkeypatch.setenv("X509_USER_KEY", str(alice.key_path))
    assert load_credential().dn == alice.dn
    # 3. the default proxy file beats both
    write_proxy(pki, clean_env["default_proxy"])
    assert load_credential().is_proxy
    # 2. X509_USER_PROXY beats the default proxy file
    other = pki.proxy("Bob")
    pki_module.write_proxy_file(tmp_path / "bob-proxy", other.cert, other.key, other.chain)
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "bob-proxy"))
    assert load_credential().identity_dn == bob.dn
    # 1. explicit arguments beat everything
    assert load_credential(alice.cert_path, alice.key_path).dn == alice.dn


def test_nothing_found_names_what_was_tried(clean_env):
    with pytest.raises(CredentialError) as info:
        load_credential()
    message = str(info.value)
    assert "X509_USER_PROXY" in message and str(clean_env["default_proxy"]) in message
    assert "X509_USER_CERT" in message and str(clean_env["home"] / ".globus" / "usercert.pem") in message
    assert info.value.code == "SecurityTokenUnavailable"


def test_named_but_missing_files_are_errors(pki, clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "gone"))
    with pytest.raises(CredentialError, match="X509_USER_PROXY names .*gone, which does not exist"):
        load_credential()
    monkeypatch.delenv("X509_USER_PROXY")
    monkeypatch.setenv("X509_USER_CERT", str(pki.user("Alice").cert_path))
    with pytest.raises(CredentialError, match="set both X509_USER_CERT and X509_USER_KEY"):
        load_credential()
    with pytest.raises(CredentialError, match="key file .*nokey does not exist"):
        load_credential(pki.user("Alice").cert_path, tmp_path / "nokey")


def test_encrypted_key_needs_its_passphrase(pki, clean_env, tmp_path):
    alice = pki.user("Alice")
    encrypted = alice.credential.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.BestAvailableEncryption(b"sesame"))
    key_path = tmp_path / "userkey.pem"
    key_path.write_bytes(encrypted)
    os.chmod(key_path, 0o400)
    with pytest.raises(CredentialError, match="is encrypted; give its passphrase"):
        load_credential(alice.cert_path, key_path)
    with pytest.raises(CredentialError, match="wrong passphrase"):
        load_credential(alice.cert_path, key_path, passphrase="wrong")
    assert load_credential(alice.cert_path, key_path, passphrase="sesame").dn == alice.dn


def test_key_must_match_and_be_private(pki, clean_env, tmp_path):
    alice, bob = pki.user("Alice"), pki.user("Bob")
    with pytest.raises(CredentialError, match="does not match the certificate"):
        load_credential(alice.cert_path, bob.key_path)
    loose = tmp_path / "loose.pem"
    loose.write_bytes(alice.key_path.read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(CredentialError, match="accessible by group or others .*chmod 600"):
        load_credential(alice.cert_path, loose)


def test_expired_credential_is_refused_unless_allowed(pki, clean_env):
    now = dt.datetime.now(dt.timezone.utc)
    old = pki.user("Expired", not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1))
    with pytest.raises(CredentialError, match="expired at"):
        load_credential(old.cert_path, old.key_path)
    assert load_credential(old.cert_path, old.key_path, allow_expired=True).dn == old.dn


def test_garbage_files(clean_env, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    os.chmod(junk, 0o600)
    with pytest.raises(CredentialError, match="no PEM certificate"):
        load_credential(junk, junk)


def test_trust_directory_order(clean_env, monkeypatch, tmp_path):
    assert trust_directory() == Path("/etc/grid-security/certificates")
    monkeypatch.setenv("X509_CERT_DIR", str(tmp_path / "env"))
    assert trust_directory() == tmp_path / "env"
    assert trust_directory(tmp_path / "explicit") == tmp_path / "explicit"
