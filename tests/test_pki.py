"""The test PKI: names, CA, host/user certificates, RFC 3820 proxies, CRLs, trust export, and the
``gridcredit pki`` command end to end. Cross-checked with the openssl, Globus and ARC tools."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridcredit.server import cli
from gridcredit.errors import CertificateError, CredentialError
from gridcredit.security import pki as pki_module
from gridcredit.security.credentials import load_credential


def openssl(*arguments: str) -> str:
    result = subprocess.run(["openssl", *arguments], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ------------------------------------------------------------------------------------ names

def test_grid_dn_matches_openssl_compat(pki):
    for path in (pki.ca_dir / "ca.pem", pki.host_cert, pki.user("Alice").cert_path):
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        printed = openssl("x509", "-noout", "-subject", "-nameopt", "compat", "-in", str(path)).strip()
        assert printed == "subject=" + pki_module.grid_dn(certificate.subject)


def test_parse_grid_dn_round_trips():
    for text in ("/DC=org/DC=example/O=Grid/CN=Alice", "/C=SE/O=NorduGrid/OU=hpc2n.umu.se/CN=Jane Doe",
                 "/DC=org/CN=host/bank.example.org", "/O=Grid/CN=A+UID=a1", "/emailAddress=a@b.org/CN=x"):
        assert pki_module.grid_dn(pki_module.parse_grid_dn(text)) == text
    name = pki_module.parse_grid_dn("/DC=org/O=Grid/CN=Alice")
    assert [rdn.get_attributes_for_oid(NameOID.DOMAIN_COMPONENT) for rdn in name.rdns][0][0].value == "org"
    assert name.rdns[-1] == x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "Alice")])


@pytest.mark.parametrize("bad", ["", "CN=Alice", "/", "/CN", "/XX=1", "/C=Sweden/CN=a"])
def test_parse_grid_dn_refuses_bad_names(bad):
    with pytest.raises(CertificateError):
        pki_module.parse_grid_dn(bad)


def test_subject_hash_matches_openssl(pki):
    path = pki.ca_dir / "ca.pem"
    assert pki.ca.hash == openssl("x509", "-noout", "-hash", "-in", str(path)).strip()
    assert (pki.trust_dir / f"{pki.ca.hash}.0").exists() and (pki.trust_dir / f"{pki.ca.hash}.r0").exists()
    assert (pki.trust_dir / f"{pki.ca.hash}.signing_policy").read_text().count(f"access_id_CA      X509         '{pki.ca.dn}'") == 1


# --------------------------------------------------------------------------------------- CA

def test_ca_files_and_extensions(pki):
    assert stat.S_IMODE(os.stat(pki.ca_dir / "ca.key").st_mode) == 0o600
    certificate = pki.ca.certificate
    assert certificate.subject == certificate.issuer
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    reloaded = pki_module.CertificateAuthority.load(pki.ca_dir)
    assert reloaded.certificate == certificate and reloaded.dn == pki.ca.dn


def test_ca_refuses_to_overwrite_and_load_explains_missing(pki, tmp_path):
    with pytest.raises(CredentialError, match="already exists"):
        pki_module.CertificateAuthority.create(pki.ca_dir, "/CN=Other")
    with pytest.raises(CredentialError, match="no CA in"):
        pki_module.CertificateAuthority.load(tmp_path)


def test_host_certificate(pki):
    certificate = x509.load_pem_x509_certificate(pki.host_cert.read_bytes())
    assert pki_module.grid_dn(certificate.subject).endswith("/CN=localhost")
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(os.stat(pki.host_key).st_mode) == 0o600
    openssl("verify", "-CApath", str(pki.trust_dir), str(pki.host_cert))


def test_user_certificates_by_cn_and_by_dn(fresh_pki):
    alice = fresh_pki.user("Alice")
    assert alice.dn == "/DC=org/DC=example/O=gridcredit-test/CN=Alice"
    assert stat.S_IMODE(os.stat(alice.key_path).st_mode) == 0o600
    cert_path, _ = fresh_pki.ca.issue_user("/DC=org/DC=other/OU=People/CN=Bob Smith", fresh_pki.root / "bob",
                                           key=fresh_pki.keys.any())
    bob = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert pki_module.grid_dn(bob.subject) == "/DC=org/DC=other/OU=People/CN=Bob Smith"
    serials = [entry["serial"] for entry in json.loads((fresh_pki.ca_dir / "index.json").read_text())["issued"]]
    assert bob.serial_number in serials and len(set(serials)) == len(serials)


def test_service_certificate(fresh_pki, tmp_path):
    cert_path, key_path = fresh_pki.ca.issue_service("bank", "bank.example.org", tmp_path, key=fresh_pki.keys.any())
    assert load_credential(cert_path, key_path).dn.endswith("/CN=bank/bank.example.org")


# ----------------------------------------------------------------------------------- proxies

def test_proxy_structure(pki):
    alice = pki.user("Alice").credential
    proxy, key = pki_module.make_proxy(alice.cert, alice.key, alice.chain, hours=3)
    extension = proxy.extensions.get_extension_for_oid(pki_module.OID_PROXY_CERT_INFO)
    assert extension.critical
    info = pki_module.proxy_info(proxy)
    assert info.policy_language == pki_module.OID_PPL_INHERIT_ALL and info.path_length is None
    assert proxy.issuer == alice.cert.subject
    assert list(proxy.subject.rdns[:-1]) == list(alice.cert.subject.rdns)
    assert proxy.subject.rdns[-1] == x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, str(proxy.serial_number))])
    lifetime = proxy.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=2, minutes=59) < lifetime <= dt.timedelta(hours=3)
    usage = proxy.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        proxy.extensions.get_extension_for_class(x509.BasicConstraints)
    assert pki_module.key_matches(proxy, key)
    proxy.verify_directly_issued_by(alice.cert)


def test_limited_and_path_length_encoding(pki, tmp_path):
    alice = pki.user("Alice").credential
    proxy, _ = pki_module.make_proxy(alice.cert, alice.key, limited=True, path_length=3, proxy_key=pki.keys.any())
    info = pki_module.proxy_info(proxy)
    assert info.limited and info.policy_language == pki_module.OID_PPL_LIMITED and info.path_length == 3
    path = tmp_path / "limited.pem"
    pki_module.write_pem_certificates(path, [proxy])
    text = openssl("x509", "-noout", "-text", "-in", str(path))      # OpenSSL's own decoding
    assert "Path Length Constraint: 03" in text and "1.3.6.1.4.1.3536.1.1.1.9" in text


def test_make_proxy_refuses_mismatched_key_and_ca(pki):
    alice, bob = pki.user("Alice").credential, pki.user("Bob").credential
    with pytest.raises(CredentialError, match="does not match"):
        pki_module.make_proxy(alice.cert, bob.key)
    with pytest.raises(CredentialError, match="CA certificate"):
        pki_module.make_proxy(pki.ca.certificate, pki.ca.key)


def test_proxy_file_is_globus_ordered_and_private(pki, tmp_path):
    proxy = pki.proxy("Alice")
    path = pki_module.write_proxy_file(tmp_path / "x509up", proxy.cert, proxy.key, proxy.chain)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    begins = [line for line in text.splitlines() if line.startswith("-----BEGIN")]
    assert begins == ["-----BEGIN CERTIFICATE-----", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN CERTIFICATE-----"]
    # openssl, Globus and ARC read it as a valid RFC 3820 proxy
    openssl("verify", "-allow_proxy_certs", "-CApath", str(pki.trust_dir), "-untrusted", str(path), str(path))
    info = subprocess.run(["grid-proxy-info", "-file", str(path), "-type", "-identity"], capture_output=True,
                          text=True, timeout=30)
    assert info.returncode == 0, info.stderr
    assert "RFC 3820 compliant impersonation proxy" in info.stdout and pki.user("Alice").dn in info.stdout
    arc = subprocess.run(["arcproxy", "-I", "-P", str(path), "-T", str(pki.trust_dir)], capture_output=True,
                         text=True, timeout=30)
    assert arc.returncode == 0 and "RFC compliant impersonation proxy" in arc.stdout, arc.stdout + arc.stderr
    assert pki_module.default_proxy_path().name == f"x509up_u{os.getuid()}"


def test_grid_proxy_init_makes_a_proxy_of_our_proxy(pki, tmp_path):
    proxy = pki.proxy("Alice")
    path = pki_module.write_proxy_file(tmp_path / "p1", proxy.cert, proxy.key, proxy.chain)
    result = subprocess.run(["grid-proxy-init", "-q", "-rfc", "-cert", str(path), "-key", str(path), "-certdir",
                             str(pki.trust_dir), "-out", str(tmp_path / "p2"), "-hours", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    second = load_credential(proxy_path=tmp_path / "p2")
    assert pki.trust_store().validate(second.certificates).dn == pki.user("Alice").dn


# -------------------------------------------------------------------------------------- CRLs

def test_revoke_updates_crl(fresh_pki):
    bob = fresh_pki.user("Bob").credential
    crl = fresh_pki.ca.revoke(bob.cert)
    assert crl.get_revoked_certificate_by_serial_number(bob.cert.serial_number) is not None
    assert crl.is_signature_valid(fresh_pki.ca.certificate.public_key())
    again = fresh_pki.ca.revoke(bob.cert.serial_number)          # idempotent
    assert len(again) == 1
    number = again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    with pytest.raises(CertificateError, match="never issued"):
        fresh_pki.ca.revoke(999999)
    fresh_pki.publish()
    crl_file = fresh_pki.trust_dir / f"{fresh_pki.ca.hash}.r0"
    assert str(bob.cert.serial_number) in openssl("crl", "-noout", "-text", "-in", str(crl_file)).replace(
        " ", "") or format(bob.cert.serial_number, "X") in openssl("crl", "-noout", "-text", "-in", str(crl_file))


def test_revoke_refuses_foreign_certificate(pki, fresh_pki):
    with pytest.raises(CertificateError, match="not by this CA"):
        fresh_pki.ca.revoke(pki.user("Alice").credential.cert)


# ------------------------------------------------------------------------------------- the CLI

def run(capsys, *arguments: str) -> tuple[int, str, str]:
    code = cli.main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    ca_dir, trust, users = tmp_path / "ca", tmp_path / "certificates", tmp_path / "alice"
    code, out, _ = run(capsys, "pki", "ca", "--dir", str(ca_dir), "--dn", "/DC=org/DC=cli/CN=CLI CA")
    assert code == 0 and "CLI CA" in out and str(ca_dir) in out
    code, out, _ = run(capsys, "pki", "trust", "--ca", str(ca_dir), "--dir", str(trust), "--json")
    assert code == 0 and json.loads(out)["certificate"].endswith(".0")
    code, out, _ = run(capsys, "pki", "host", "--ca", str(ca_dir), "--hostname", "localhost", "--out",
                       str(tmp_path / "host"), "--key-type", "ec")
    assert code == 0 and "hostcert.pem" in out
    # a host certificate is issued for its host name (dNSName SAN): the host identity services use
    code, out, _ = run(capsys, "pki", "verify", str(tmp_path / "host" / "hostcert.pem"), "--trust", str(trust), "--json")
    assert code == 0 and json.loads(out)["hosts"] == ["localhost"]
    code, out, _ = run(capsys, "pki", "verify", str(tmp_path / "host" / "hostcert.pem"), "--trust", str(trust))
    assert code == 0 and "issued for host localhost" in out
    code, out, _ = run(capsys, "pki", "user", "--ca", str(ca_dir), "--cn", "Alice", "--out", str(users), "--json")
    assert code == 0 and json.loads(out)["dn"] == "/DC=org/DC=cli/CN=Alice"
    monkeypatch.setenv("X509_USER_CERT", str(users / "usercert.pem"))
    monkeypatch.setenv("X509_USER_KEY", str(users / "userkey.pem"))
    proxy_file = tmp_path / "x509up"
    code, out, _ = run(capsys, "pki", "proxy", "--hours", "2", "--out", str(proxy_file))
    assert code == 0 and str(proxy_file) in out and "/DC=org/DC=cli/CN=Alice" in out
    assert stat.S_IMODE(os.stat(proxy_file).st_mode) == 0o600

    code, out, _ = run(capsys, "pki", "show", str(proxy_file), "--json")
    shown = json.loads(out)["certificates"]
    assert code == 0 and shown[0]["type"] == "RFC 3820 impersonation proxy" and shown[1]["type"] == "end entity"

    code, out, _ = run(capsys, "pki", "verify", str(proxy_file), "--trust", str(trust))
    assert code == 0 and out.startswith("OK: proxy of /DC=org/DC=cli/CN=Alice")
    monkeypatch.setenv("X509_CERT_DIR", str(trust))
    code, out, _ = run(capsys, "pki", "verify", str(proxy_file), "--json")
    assert code == 0 and json.loads(out)["identity"] == "/DC=org/DC=cli/CN=Alice"
    assert json.loads(out)["hosts"] == []                   # a user's proxy is no host

    code, out, _ = run(capsys, "pki", "proxy", "--limited", "--out", str(tmp_path / "limited"))
    code, out, _ = run(capsys, "pki", "verify", str(tmp_path / "limited"), "--json")
    assert code == 0 and json.loads(out)["limited"] is True

    code, out, _ = run(capsys, "pki", "revoke", "--ca", str(ca_dir), "--cert", str(users / "usercert.pem"))
    assert code == 0 and "revoked" in out
    run(capsys, "pki", "trust", "--ca", str(ca_dir), "--dir", str(trust))
    code, out, err = run(capsys, "pki", "verify", str(proxy_file))
    assert code == 1 and "CertificateError:" in err and "was revoked on" in err
    code, out, _ = run(capsys, "pki", "verify", str(proxy_file), "--json")
    assert code == 1 and "was revoked" in json.loads(out)["reason"]


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("X509_USER_CERT", "X509_USER_KEY", "X509_USER_PROXY"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(capsys, "pki", "proxy", "--out", str(tmp_path / "p"))
    assert code == 1 and "CredentialError:" in err and ".globus/usercert.pem" in err
    code, _, err = run(capsys, "pki", "host", "--ca", str(tmp_path / "none"), "--hostname", "h", "--out", str(tmp_path))
    assert code == 1 and "no CA in" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pki", "user", "--ca", str(tmp_path), "--out", str(tmp_path)])   # neither --dn nor --cn
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_cli_help_for_every_pki_command(capsys):
    for command in ("ca", "host", "user", "proxy", "revoke", "trust", "show", "verify"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["pki", command, "--help"])
        assert exit_info.value.code == 0
        assert len(capsys.readouterr().out) > 200
