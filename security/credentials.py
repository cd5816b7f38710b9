"""Our own credential (certificate, key, chain), found the way grid tools find it.

Search order of ``load_credential`` (the first that applies wins; a path that is named but
missing is an error, not a reason to look further):

1. explicit arguments: ``proxy_path``, or ``cert_path`` (+ ``key_path``, default: the same file);
2. ``$X509_USER_PROXY``;
3. ``/tmp/x509up_u<uid>`` if it exists;
4. ``$X509_USER_CERT`` / ``$X509_USER_KEY``;
5. ``~/.globus/usercert.pem`` / ``~/.globus/userkey.pem``.

Key files must not be readable by group or others (as Globus and ssh insist). Encrypted keys
need ``passphrase``; without it they are refused with a clear message.
"""
from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gridcredit.errors import CredentialError

from .pki import PrivateKey, default_proxy_path, grid_dn, key_matches, proxy_info

__all__ = ["Credential", "load_credential", "trust_directory", "DEFAULT_TRUST_DIRECTORY", "read_chain_file"]

DEFAULT_TRUST_DIRECTORY = Path("/etc/grid-security/certificates")
CREDENTIAL_BYTES_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Credential:
    """A certificate with its private key and the certificates after it (for a proxy: the
    end-entity certificate and any intermediate proxies; CA certificates may follow)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    source: str = ""

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """Leaf first, then its issuers: what a signed message carries."""
        return (self.cert, *self.chain)

    @property
    def dn(self) -> str:
        """Grid DN of the leaf (a proxy's own DN for a proxy)."""
        return grid_dn(self.cert.subject)

    @property
    def identity_dn(self) -> str:
        """Grid DN of the end-entity certificate: the identity services will see."""
        for certificate in self.certificates:
            if proxy_info(certificate) is None:
                return grid_dn(certificate.subject)
        return self.dn

    @property
    def is_proxy(self) -> bool:
        return proxy_info(self.cert) is not None

    @property
    def not_after(self) -> dt.datetime:
        return min(c.not_valid_after_utc for c in self.certificates)


def trust_directory(explicit: str | os.PathLike | None = None) -> Path:
    """The trust directory: ``explicit``, else ``$X509_CERT_DIR``, else ``/etc/grid-security/certificates``."""
    if explicit:
        return Path(explicit)
    if os.environ.get("X509_CERT_DIR"):
        return Path(os.environ["X509_CERT_DIR"])
    return DEFAULT_TRUST_DIRECTORY


def _read(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > CREDENTIAL_BYTES_MAX:
            raise CredentialError(f"{what} {path} is too large ({size} bytes) to be a credential")
        return path.read_bytes()
    except FileNotFoundError:
        raise CredentialError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise CredentialError(f"{what} {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise CredentialError(f"{what} {path} is a directory") from None


def _check_key_permissions(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialError(f"private key file {path} is accessible by group or others "
                              f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")


def _load_key(data: bytes, path: Path, passphrase: str | bytes | None) -> PrivateKey:
    if b"PRIVATE KEY-----" not in data:
        raise CredentialError(f"no private key in {path}")
    password = passphrase.encode() if isinstance(passphrase, str) else passphrase
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        if password is None:
            raise CredentialError(f"private key {path} is encrypted; give its passphrase") from None
        raise CredentialError(f"private key {path} is not encrypted, but a passphrase was given") from None
    except ValueError as error:
        if password is not None and "ENCRYPTED" in data.decode("ascii", "replace"):
            raise CredentialError(f"cannot decrypt private key {path}: wrong passphrase?") from None
        raise CredentialError(f"cannot read private key {path}: {error}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CredentialError(f"private key {path} is neither RSA nor EC")
    return key


def _load_certificates(data: bytes, path: Path) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialError(f"no PEM certificate in {path}") from None
    return certificates


def _build(cert_path: Path, key_path: Path, passphrase, allow_expired: bool, source: str) -> Credential:
    cert_data = _read(cert_path, "certificate file")
    certificates = _load_certificates(cert_data, cert_path)
    key_data = cert_data if key_path == cert_path else _read(key_path, "key file")
    _check_key_permissions(key_path)
    key = _load_key(key_data, key_path, passphrase)
    leaf = certificates[0]
    if not key_matches(leaf, key):
        raise CredentialError(f"the private key in {key_path} does not match the certificate "
                              f"{grid_dn(leaf.subject)} in {cert_path}")
    credential = Credential(leaf, key, tuple(certificates[1:]), source)
    if not allow_expired:
        now = dt.datetime.now(dt.timezone.utc)
        if credential.not_after < now:
            hint = " (make a new one: grid-proxy-init or gridcredit pki proxy)" if credential.is_proxy else ""
            raise CredentialError(f"credential {credential.dn} in {cert_path} expired at "
                                  f"{credential.not_after:%Y-%m-%d %H:%M:%S} UTC{hint}")
    return credential


def load_credential(cert_path: str | os.PathLike | None = None, key_path: str | os.PathLike | None = None,
                    proxy_path: str | os.PathLike | None = None, *, passphrase: str | bytes | None = None,
                    allow_expired: bool = False) -> Credential:
    """Load our credential following grid conventions (see the module docstring)."""
    if proxy_path is not None:
        path = Path(proxy_path)
        return _build(path, path, passphrase, allow_expired, f"proxy {path}")
    if cert_path is not None:
        cert = Path(cert_path)
        key = Path(key_path) if key_path is not None else cert
        return _build(cert, key, passphrase, allow_expired, f"certificate {cert}")
    if key_path is not None:
        raise CredentialError("a key file was given without its certificate file")

    tried: list[str] = []
    environment_proxy = os.environ.get("X509_USER_PROXY")
    if environment_proxy:
        path = Path(environment_proxy)
        if not path.exists():
            raise CredentialError(f"X509_USER_PROXY names {path}, which does not exist "
                                  f"(make a proxy with grid-proxy-init or gridcredit pki proxy)")
        return _build(path, path, passphrase, allow_expired, f"X509_USER_PROXY {path}")
    tried.append("X509_USER_PROXY (unset)")

    default_proxy = default_proxy_path()
    if default_proxy.exists():
        return _build(default_proxy, default_proxy, passphrase, allow_expired, f"proxy {default_proxy}")
    tried.append(str(default_proxy))

    environment_cert, environment_key = os.environ.get("X509_USER_CERT"), os.environ.get("X509_USER_KEY")
    if environment_cert or environment_key:
        if not (environment_cert and environment_key):
            raise CredentialError("set both X509_USER_CERT and X509_USER_KEY (only one is set)")
        return _build(Path(environment_cert), Path(environment_key), passphrase, allow_expired,
                      f"X509_USER_CERT {environment_cert}")
    tried.append("X509_USER_CERT/X509_USER_KEY (unset)")

    globus = Path.home() / ".globus"
    cert, key = globus / "usercert.pem", globus / "userkey.pem"
    if cert.exists() or key.exists():
        return _build(cert, key, passphrase, allow_expired, f"certificate {cert}")
    tried.append(f"{cert} and {key}")
    raise CredentialError("no credential found; tried " + ", ".join(tried)
                          + " (make one with `gridcredit pki user` and `gridcredit pki proxy`)")


def read_chain_file(path: str | os.PathLike) -> list[x509.Certificate]:
    """The certificates of a PEM file (cert, proxy or bundle), in file order; keys are ignored."""
    path = Path(path)
    return _load_certificates(_read(path, "certificate file"), path)
