"""Delegation to JARM, GSI-style: a user's RFC 3820 proxy whose private key JARM made and keeps.

JARM makes the Bank holds of a user's jobs with the user's own authority (issue 13.2a, as SGAS
required) when it holds a delegation of theirs. The exchange, each step a signed SOAP call of the
user (``gridcredit jarm delegate``)::

    RequestDelegation(lifetime_s)  JARM makes a key pair, keeps the private key (sealed, below) in a
                                   pending request and answers its id and a PKCS#10 request of the
                                   public key. One pending request per caller (a new one replaces
                                   it); it lasts PENDING_S.
    (the user)                     signs an RFC 3820 proxy of their own credential for that public
                                   key (``proxy_for_request``): the private key never leaves JARM,
                                   and the user's never reaches it.
    CompleteDelegation(id, chain)  JARM checks the chain: parsed within bounds; valid against the
                                   host's trust directory (``security/chain.py``: signatures, times,
                                   RFC 3820 rules, CRLs); its leaf an RFC 3820 proxy, not limited, of
                                   the pending public key; its identity (end-entity DN) the caller's;
                                   valid for at least USEFUL_S_MIN and no longer than asked. Then,
                                   in one transaction, the pending request becomes the caller's
                                   delegation (replacing an earlier one). Any refusal stores nothing.
    GetDelegation / DestroyDelegation   the caller's own.

JARM's Bank client signs as the user with ``DelegationStore.credential_for(dn, valid_for_s=…)``:
a ``Credential`` (the proxy, JARM's key, the user's chain), checked against the trust directory
again (a CRL may have revoked it since), or None.

Why a limited proxy is refused: it may not change state at the Bank (RFC 3820 / Globus: limited
proxies are for data transfer), so every hold made with it would be refused; and a caller
signing with a limited proxy may not delegate at all (``policy.py``).

Keys at rest. The private keys are in the shared XML store (so every worker, and a host rebuilt
from the store, finds them), each **sealed**: AES-256-GCM with a key-encryption key kept in the
state directory (``<state_dir>/jarm/delegation.kek``, mode 0600, made on first use), bound to the
delegation id and the DN (a sealed key copied into another user's document does not open). So the
store's journal, its backups and BaseX hold no usable key; the key-encryption key is backed up, or
lost (users delegate again), separately. Hosts serving one store need the same file. No key, sealed
or not, is ever in an answer, a fault or a log line.

Documents (collections declared in ``SERVICE.collections``; id: ``store.requester_key(dn)``, so one
of each per DN)::

    jarm_delegation_requests   <DelegationRequest> pending: id, DN, lifetime asked, public key, sealed key
    jarm_delegations           <Delegation>: id, DN, the proxy chain (PEM), its validity, sealed key

Both carry ``expires_hour`` (indexed): the sweep (``sweep_expired``) deletes what has expired.
"""
from __future__ import annotations

import base64
import logging
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from lxml import etree

from gridcredit.durable import write_exclusively
from gridcredit.errors import CertificateError, ConfigError, CredentialError, DomainError, StoreError, invariant
from gridcredit.security.chain import EC_CURVES_ALLOWED, RSA_BITS_MIN, TrustStore, load_pem_chain
from gridcredit.security.credentials import Credential, trust_directory
from gridcredit.security.pki import PrivateKey, generate_key, grid_dn, proxy_info, sign_proxy
from gridcredit.timeunits import datetime_from_us, datetime_to_us, now_us, rfc3339
from gridcredit.xmlstore import AttributeIndex, Transaction, XmlStore

from .store import requester_key

log = logging.getLogger("gridcredit.services.jarm.delegation")

DELEGATIONS = "jarm_delegations"
DELEGATION_REQUESTS = "jarm_delegation_requests"
COLLECTIONS = (DELEGATIONS, DELEGATION_REQUESTS)
INDEXES = (AttributeIndex(DELEGATIONS, ("expires_hour",)), AttributeIndex(DELEGATION_REQUESTS, ("expires_hour",)))

NAMESPACE = "urn:gridcredit:jarm:delegation:1"
LIFETIME_S_MIN = 3_600                  # a delegation shorter than an hour is of no use to jobs
LIFETIME_S_MAX = 30 * 86_400            # a stolen store and key file give at most this much
PENDING_S = 600                         # a request is completed within this, or forgotten
USEFUL_S_MIN = 900                      # a proxy valid for less than this is refused as of no use
CLOCK_SKEW_S = 300                      # a proxy may outlive the lifetime asked by this much (pki.BACKDATE)
CHAIN_PEM_CHARS_MAX = 64_000            # a proxy chain of CHAIN_LENGTH_MAX certificates fits many times
CSR_PEM_CHARS_MAX = 16_000
KEY_TYPE = "rsa"                        # what every grid peer reads (pki.generate_key: RSA 2048)
SWEEP_S = 600                           # how often expired requests and delegations are deleted
SWEEP_HOURS_BACK = (LIFETIME_S_MAX // 3_600) + 48   # the hours each sweep looks back over (< 1,000)
SWEEP_BATCH = 200
HOUR_US = 3_600 * 1_000_000
KEY_FILE = Path("jarm") / "delegation.kek"

INVALID_DELEGATION = "InvalidDelegation"     # the chain or the lifetime is refused
UNKNOWN_DELEGATION = "UnknownDelegation"     # no such pending request of the caller's
DELEGATION_COMPLETED = "DelegationCompleted"  # that request was completed already

_DELEGATION_ID = re.compile(r"d-[0-9a-f]{32}")
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----")


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _utc(us: int) -> str:
    return rfc3339(datetime_from_us(us).replace(microsecond=0))


# -- what the service answers -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingDelegation:
    """A request of the caller's: sign a proxy for the public key of ``csr_pem`` and complete it
    (CompleteDelegation) with ``delegation_id`` before ``expires_us``."""

    delegation_id: str
    csr_pem: str
    lifetime_s: int
    expires_us: int


@dataclass(frozen=True, slots=True)
class Delegation:
    """A delegation JARM holds (never its key): whose (``dn``, the end-entity DN), the proxy's own DN,
    when it became valid and when it expires (the earliest expiry on its chain), when it was stored."""

    delegation_id: str
    dn: str
    proxy_dn: str
    not_before_us: int
    not_after_us: int
    created_us: int


# -- keys at rest ------------------------------------------------------------------------------------


class KeyVault:
    """Seals private keys for the store: AES-256-GCM with a key-encryption key from a file of the
    state directory (mode 0600, in a 0700 folder), made on first use by whichever process comes
    first (``write_exclusively``: every worker reads the one that won)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        with self._lock:
            if self._aead is None:
                self._aead = AESGCM(self._load_or_create())
            return self._aead

    def _load_or_create(self) -> bytes:
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            write_exclusively(self.path, (secrets.token_hex(32) + "\n").encode("ascii"), mode=0o600)
        mode = self.path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"JARM's delegation key file {self.path} is accessible by group or others (mode "
                              f"{stat.S_IMODE(mode):04o}); run: chmod 600 {self.path}")
        text = self.path.read_text(encoding="ascii").strip()
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise ConfigError(f"JARM's delegation key file {self.path} does not hold a key (64 hex digits); remove "
                              f"it to make a new one (the delegations sealed with it are then lost: users "
                              f"delegate again)")
        return bytes.fromhex(text)

    def seal(self, key: PrivateKey, *, context: bytes) -> tuple[str, str]:
        """(nonce, ciphertext), base64: ``key`` as PKCS#8 DER, bound to ``context``."""
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        nonce = secrets.token_bytes(12)
        return _b64(nonce), _b64(self._cipher().encrypt(nonce, der, context))

    def unseal(self, nonce: str, ciphertext: str, *, context: bytes) -> PrivateKey:
        try:
            der = self._cipher().decrypt(base64.b64decode(nonce), base64.b64decode(ciphertext), context)
        except (InvalidTag, ValueError):
            raise CredentialError(f"a delegated key in the store does not open with {self.path} (another host's "
                                  f"key file, or the document was altered)") from None
        # The bytes are authenticated by the seal: this vault made them from a key it generated. The RSA
        # key check cryptography otherwise makes on every load costs ~45 ms (2048 bits), at every hold.
        return serialization.load_der_private_key(der, password=None, unsafe_skip_rsa_key_validation=True)


def _context(delegation_id: str, dn: str) -> bytes:
    return f"gridcredit-jarm-delegation\n{delegation_id}\n{dn}".encode("utf-8", "surrogatepass")


# -- the user's side: a proxy for JARM's request ------------------------------------------------------


def proxy_for_request(credential: Credential, csr_pem: str, *, lifetime_s: int) -> str:
    """The chain (PEM: the new proxy, then ``credential``'s certificates) that delegates
    ``credential`` for ``lifetime_s`` to the holder of the key in ``csr_pem``: an RFC 3820 proxy
    (impersonation, path length 0: it signs no further proxies) of the user's credential for that
    public key. The lifetime is capped by the credential's own (pki.sign_proxy). Refused here
    (``CredentialError``): a limited credential, a request whose signature does not verify (not
    made by the key's holder), a weak key."""
    info = proxy_info(credential.cert)
    if info is not None and info.limited:
        raise CredentialError(f"{credential.dn} is a limited proxy, which cannot delegate (JARM could make no "
                              f"hold with it); delegate from your certificate or a full proxy")
    if not isinstance(csr_pem, str) or len(csr_pem) > CSR_PEM_CHARS_MAX:
        raise CredentialError("JARM's certificate request is missing or too large")
    try:
        request = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        signed = request.is_signature_valid
        public_key = request.public_key()
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise CredentialError("JARM's certificate request is not a PEM PKCS#10 request") from None
    if not signed:
        raise CredentialError("the signature of JARM's certificate request does not verify: not signed by the "
                              "key it names; nothing was delegated")
    if isinstance(public_key, rsa.RSAPublicKey):
        strong = public_key.key_size >= RSA_BITS_MIN
    else:
        strong = isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in EC_CURVES_ALLOWED
    if not strong:
        raise CredentialError("JARM's certificate request names a key too weak to delegate to (RSA of at least "
                              f"{RSA_BITS_MIN} bits or EC P-256 or stronger required)")
    proxy = sign_proxy(credential.cert, credential.key, public_key, credential.chain, hours=lifetime_s / 3_600,
                       path_length=0)
    return "".join(certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
                   for certificate in (proxy, *credential.certificates))


# -- the store ---------------------------------------------------------------------------------------


def host_trust_directory(config) -> Path:
    """The trust directory the host verifies callers with (``server/host_cli.host_files`` decides it
    the same way, without making anything here): ``[security] cert_dir``; else, with a configured
    host certificate, ``$X509_CERT_DIR`` or /etc/grid-security/certificates; else the development
    PKI's under the state directory."""
    security = config.security
    if security.cert_dir:
        return Path(security.cert_dir)
    if security.host_cert:
        return trust_directory(None)
    return config.state_path / "pki" / "certificates"


def open_delegations(config, store: XmlStore, *, files=None) -> "DelegationStore":
    """The DelegationStore of a JARM host: over ``store``, trusting what the host trusts (``files``,
    the host's ``HostFiles``: its trust directory; None: as ``host_trust_directory`` finds it),
    opened on first use; its keys sealed with ``<state_dir>/jarm/delegation.kek``."""
    security = config.security
    directory = Path(files.trust_dir) if files is not None else host_trust_directory(config)
    return DelegationStore(store, trust=lambda: TrustStore.from_directory(
        directory, require_crl=security.require_crl, allow_weak_keys=security.allow_weak_keys),
        vault=KeyVault(config.state_path / KEY_FILE))


class DelegationStore:
    """Pending requests and delegations over the shared store; one transaction per change.

    ``trust``: the TrustStore the proxy chains are validated against, or a function making it
    (called once, on first use). ``clock()``: now in µs (tests)."""

    def __init__(self, store: XmlStore, *, trust: TrustStore | Callable[[], TrustStore], vault: KeyVault,
                 lifetime_s_max: int = LIFETIME_S_MAX, clock: Callable[[], int] = now_us) -> None:
        invariant(LIFETIME_S_MIN <= lifetime_s_max <= LIFETIME_S_MAX, "the longest delegation is within the bounds")
        self.store = store
        self.vault = vault
        self.lifetime_s_max = lifetime_s_max
        self._clock = clock
        self._trust = trust if isinstance(trust, TrustStore) else None
        self._make_trust = None if isinstance(trust, TrustStore) else trust
        self._trust_lock = threading.Lock()
        self._swept_all = False

    @property
    def trust(self) -> TrustStore:
        with self._trust_lock:
            if self._trust is None:
                self._trust = self._make_trust()
            return self._trust

    # -- RequestDelegation

    def request(self, dn: str, lifetime_s: int) -> PendingDelegation:
        """A new pending request of ``dn`` (replacing theirs, if any) for a delegation of ``lifetime_s``."""
        if type(lifetime_s) is not int or not LIFETIME_S_MIN <= lifetime_s <= self.lifetime_s_max:
            raise DomainError(f"a delegation lasts {LIFETIME_S_MIN:,} to {self.lifetime_s_max:,} s "
                              f"({self.lifetime_s_max // 86_400} days) at this JARM, not {lifetime_s!r} s",
                              INVALID_DELEGATION)
        delegation_id = f"d-{secrets.token_hex(16)}"
        key = generate_key(KEY_TYPE)
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, delegation_id)]))
               .sign(key, hashes.SHA256()))
        nonce, sealed = self.vault.seal(key, context=_context(delegation_id, dn))
        created_us = self._clock()
        expires_us = created_us + PENDING_S * 1_000_000
        root = etree.Element(_q("DelegationRequest"), nsmap={None: NAMESPACE}, delegation_id=delegation_id, dn=dn,
                             lifetime_s=str(lifetime_s), created_us=str(created_us), expires_us=str(expires_us),
                             expires_hour=str(expires_us // HOUR_US))
        etree.SubElement(root, _q("PublicKey")).text = _b64(_public_der(key.public_key()))
        etree.SubElement(root, _q("SealedKey"), nonce=nonce).text = sealed
        self.store.put(DELEGATION_REQUESTS, requester_key(dn), etree.tostring(root, encoding="UTF-8"))
        return PendingDelegation(delegation_id, csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                                 lifetime_s, expires_us)

    # -- CompleteDelegation

    def complete(self, dn: str, delegation_id: str, chain_pem: str) -> Delegation:
        """Store ``dn``'s delegation from their pending request ``delegation_id`` and the proxy chain
        they signed for it (see the module docstring for every check); refused with a DomainError
        (``InvalidDelegation``, ``UnknownDelegation``, ``DelegationCompleted``), nothing stored."""
        if not isinstance(delegation_id, str) or not _DELEGATION_ID.fullmatch(delegation_id):
            shown = ascii(delegation_id[:80]) if isinstance(delegation_id, str) else "nothing"
            raise DomainError(f"{shown} is not a delegation id (d- and 32 hex digits, as RequestDelegation "
                              f"answers)", UNKNOWN_DELEGATION)
        now = self._clock()
        pending = self._pending(dn, delegation_id, now)
        chain = _parse_chain(chain_pem)
        moment = datetime_from_us(now)
        try:
            principal = self.trust.validate(chain, at=moment)
        except CertificateError as error:
            raise DomainError(f"the delegated proxy chain is refused: {error}", INVALID_DELEGATION) from None
        leaf = chain[0]
        info = proxy_info(leaf)
        if info is None or not principal.is_proxy:
            raise DomainError(f"the delegated certificate {grid_dn(leaf.subject)} is not an RFC 3820 proxy: sign a "
                              f"proxy of your credential for JARM's request (gridcredit jarm delegate)",
                              INVALID_DELEGATION)
        if info.limited:
            raise DomainError(f"the delegated proxy {grid_dn(leaf.subject)} is a limited proxy, with which JARM "
                              f"could make no hold (the Bank refuses changes by limited proxies); delegate from "
                              f"your certificate or a full proxy", INVALID_DELEGATION)
        if _public_der(leaf.public_key()) != base64.b64decode(pending.findtext(_q("PublicKey"))):
            raise DomainError(f"the delegated proxy {grid_dn(leaf.subject)} certifies another key than the one JARM "
                              f"made for request {delegation_id}: sign a proxy for the key of that request's "
                              f"certificate request", INVALID_DELEGATION)
        if principal.dn != dn:
            raise DomainError(f"the delegated proxy is {principal.dn}'s, but you are {dn}: delegate your own "
                              f"credential", INVALID_DELEGATION)
        not_after_us = datetime_to_us(principal.not_after)
        if not_after_us < now + USEFUL_S_MIN * 1_000_000:
            raise DomainError(f"the delegated proxy expires at {_utc(not_after_us)}, too soon to be of use (at least "
                              f"{USEFUL_S_MIN} s); delegate from a credential valid longer", INVALID_DELEGATION)
        lifetime_s = int(pending.get("lifetime_s"))
        leaf_after_us = datetime_to_us(leaf.not_valid_after_utc)
        if leaf_after_us > now + (lifetime_s + CLOCK_SKEW_S) * 1_000_000:
            raise DomainError(f"the delegated proxy is valid until {_utc(leaf_after_us)}, longer than the "
                              f"{lifetime_s:,} s asked for in request {delegation_id}", INVALID_DELEGATION)
        delegation = Delegation(delegation_id, dn, grid_dn(leaf.subject),
                                datetime_to_us(leaf.not_valid_before_utc), not_after_us, now)
        document = _delegation_xml(delegation, chain, pending.find(_q("SealedKey")))
        doc_id = requester_key(dn)

        def apply(tx: Transaction) -> None:
            found = tx.get(DELEGATION_REQUESTS, doc_id)
            if found is None or etree.fromstring(found.xml).get("delegation_id") != delegation_id:
                raise self._not_pending(tx, dn, delegation_id)
            tx.put(DELEGATIONS, doc_id, document)
            tx.delete(DELEGATION_REQUESTS, doc_id)

        self.store.transact(apply)
        return delegation

    def _pending(self, dn: str, delegation_id: str, now: int) -> etree._Element:
        document = self.store.get(DELEGATION_REQUESTS, requester_key(dn))
        root = None if document is None else etree.fromstring(document.xml)
        if root is None or root.get("delegation_id") != delegation_id or root.get("dn") != dn:
            raise self._not_pending(self.store, dn, delegation_id)
        if int(root.get("expires_us")) < now:
            raise DomainError(f"delegation request {delegation_id} expired at {_utc(int(root.get('expires_us')))} "
                              f"(a request lasts {PENDING_S} s): request a new one", UNKNOWN_DELEGATION)
        return root

    @staticmethod
    def _not_pending(reader, dn: str, delegation_id: str) -> DomainError:
        stored = reader.get(DELEGATIONS, requester_key(dn))
        if stored is not None:
            root = etree.fromstring(stored.xml)
            if root.get("delegation_id") == delegation_id and root.get("dn") == dn:
                return DomainError(f"delegation request {delegation_id} was completed already, at "
                                   f"{_utc(int(root.get('created_us')))}; GetDelegation shows it",
                                   DELEGATION_COMPLETED)
        return DomainError(f"you have no pending delegation request {delegation_id}: it was replaced by a newer "
                           f"request, destroyed, expired ({PENDING_S} s) or is someone else's; request a new one",
                           UNKNOWN_DELEGATION)

    # -- GetDelegation / DestroyDelegation

    def get(self, dn: str) -> Delegation | None:
        """``dn``'s delegation as stored (an expired one too, until the sweep deletes it), or None."""
        document = self.store.get(DELEGATIONS, requester_key(dn))
        if document is None:
            return None
        root = etree.fromstring(document.xml)
        return None if root.get("dn") != dn else _delegation_from(root)

    def destroy(self, dn: str) -> bool:
        """Delete ``dn``'s delegation and pending request; whether there was a delegation."""
        doc_id = requester_key(dn)

        def apply(tx: Transaction) -> bool:
            found = tx.get(DELEGATIONS, doc_id)
            mine = found is not None and etree.fromstring(found.xml).get("dn") == dn
            if mine:
                tx.delete(DELEGATIONS, doc_id)
            pending = tx.get(DELEGATION_REQUESTS, doc_id)
            if pending is not None and etree.fromstring(pending.xml).get("dn") == dn:
                tx.delete(DELEGATION_REQUESTS, doc_id)
            return mine

        return self.store.transact(apply)

    # -- for JARM's Bank client

    def credential_for(self, dn: str, *, valid_for_s: int) -> Credential | None:
        """The credential to act as ``dn`` with (their delegated proxy and JARM's key), when JARM
        holds a delegation of theirs that is valid now and for ``valid_for_s`` more seconds and that
        the trust directory still accepts (a CRL may have revoked it since) and whose key opens with
        this host's key file; else None (a delegation refused now is logged, once per call, at
        WARNING). The Bank sees ``dn`` as the caller."""
        if type(valid_for_s) is not int or valid_for_s < 0:
            raise ValueError(f"valid_for_s must be a whole number of seconds, 0 or more, not {valid_for_s!r}")
        document = self.store.get(DELEGATIONS, requester_key(dn))
        if document is None:
            return None
        root = etree.fromstring(document.xml)
        if root.get("dn") != dn:
            return None
        delegation = _delegation_from(root)
        now = self._clock()
        if delegation.not_after_us < now + valid_for_s * 1_000_000:
            return None
        chain = load_pem_chain(root.findtext(_q("Chain")).encode("ascii"))
        try:
            principal = self.trust.validate(chain, at=datetime_from_us(now))
        except CertificateError as error:
            log.warning("JARM's delegation %s of %s is not used: %s", delegation.delegation_id, dn, error)
            return None
        invariant(principal.dn == dn, "a stored delegation is its owner's")
        sealed = root.find(_q("SealedKey"))
        try:
            key = self.vault.unseal(sealed.get("nonce"), sealed.text, context=_context(delegation.delegation_id, dn))
        except CredentialError as error:
            log.warning("JARM's delegation %s of %s is not used: %s", delegation.delegation_id, dn, error)
            return None
        invariant(_public_der(key.public_key()) == _public_der(chain[0].public_key()),
                  "a delegation's key is its proxy's")
        return Credential(chain[0], key, tuple(chain[1:]), f"JARM's delegation {delegation.delegation_id} of {dn}")

    # -- the sweep

    def sweep_expired(self) -> int:
        """Delete the pending requests and delegations that have expired; the number deleted. The
        first sweep of a process reads both collections whole (documents of any age); later ones
        look up the last SWEEP_HOURS_BACK hours by the ``expires_hour`` index. Safe in several
        workers at once: each deletion re-reads its document in its transaction."""
        now = self._clock()
        deleted = 0
        for collection in COLLECTIONS:
            if self._swept_all:
                hours = tuple(str(hour) for hour in range(now // HOUR_US - SWEEP_HOURS_BACK, now // HOUR_US + 1))
                offset = 0
                while True:
                    page = self.store.query(collection, None, where={"expires_hour": hours}, offset=offset,
                                            limit=SWEEP_BATCH)
                    deleted += self._delete_expired(collection, page.documents, now)
                    if page.next_offset is None:
                        break
                    offset = page.next_offset
            else:
                after = None
                while True:
                    documents = self.store.scan(collection, after_id=after, limit=SWEEP_BATCH)
                    if not documents:
                        break
                    deleted += self._delete_expired(collection, documents, now)
                    after = documents[-1].doc_id
        self._swept_all = True
        return deleted

    def _delete_expired(self, collection: str, documents, now: int) -> int:
        expired = [document.doc_id for document in documents if _expires_us(document.xml) < now]
        if not expired:
            return 0

        def apply(tx: Transaction) -> int:
            count = 0
            for doc_id in expired:
                found = tx.get(collection, doc_id)
                if found is not None and _expires_us(found.xml) < now:
                    tx.delete(collection, doc_id)
                    count += 1
            return count

        return self.store.transact(apply)


def _expires_us(xml: bytes) -> int:
    root = etree.fromstring(xml)
    return int(root.get("expires_us") or root.get("not_after_us"))


def _parse_chain(chain_pem) -> list[x509.Certificate]:
    if not isinstance(chain_pem, str) or not chain_pem.strip():
        raise DomainError("no proxy chain was sent: the PEM certificates, the new proxy first", INVALID_DELEGATION)
    if len(chain_pem) > CHAIN_PEM_CHARS_MAX:
        raise DomainError(f"a delegated proxy chain has at most {CHAIN_PEM_CHARS_MAX:,} characters of PEM, not "
                          f"{len(chain_pem):,}", INVALID_DELEGATION)
    if "PRIVATE KEY" in chain_pem:
        raise DomainError("the chain holds a private key: send certificates only (JARM made its own key; yours "
                          "stays with you)", INVALID_DELEGATION)
    try:
        chain = load_pem_chain(chain_pem.encode("ascii"))
    except (CertificateError, UnicodeEncodeError):
        raise DomainError("the proxy chain is not PEM certificates", INVALID_DELEGATION) from None
    if len(chain) != len(_PEM_CERTIFICATE.findall(chain_pem)):
        raise DomainError("the proxy chain holds something besides readable PEM certificates", INVALID_DELEGATION)
    return chain


def _delegation_xml(delegation: Delegation, chain: list[x509.Certificate], sealed_key: etree._Element) -> bytes:
    root = etree.Element(_q("Delegation"), nsmap={None: NAMESPACE}, delegation_id=delegation.delegation_id,
                         dn=delegation.dn, proxy_dn=delegation.proxy_dn, not_before_us=str(delegation.not_before_us),
                         not_after_us=str(delegation.not_after_us), created_us=str(delegation.created_us),
                         expires_hour=str(delegation.not_after_us // HOUR_US))
    etree.SubElement(root, _q("Chain")).text = "".join(
        certificate.public_bytes(serialization.Encoding.PEM).decode("ascii") for certificate in chain)
    etree.SubElement(root, _q("SealedKey"), nonce=sealed_key.get("nonce")).text = sealed_key.text
    return etree.tostring(root, encoding="UTF-8")


def _delegation_from(root: etree._Element) -> Delegation:
    return Delegation(root.get("delegation_id"), root.get("dn"), root.get("proxy_dn"), int(root.get("not_before_us")),
                      int(root.get("not_after_us")), int(root.get("created_us")))


def sweep_delegations_forever(context) -> None:
    """The background task (once per host): ``sweep_expired`` when the host starts (what expired while
    it was down) and every SWEEP_S after; a store that cannot be used now is tried at the next round."""
    delegations, stop = context.part.delegations, context.stop
    while True:
        try:
            deleted = delegations.sweep_expired()
        except StoreError as error:     # the store busy or behind: expected, and the next round does it
            log.warning("the sweep of expired delegations cannot use the store (%s); retrying in %d s", error, SWEEP_S)
        else:
            if deleted:
                log.info("deleted %d expired delegations and delegation requests", deleted)
        if stop.wait(SWEEP_S):
            return


__all__ = ["COLLECTIONS", "DELEGATION_COMPLETED", "INDEXES", "INVALID_DELEGATION", "UNKNOWN_DELEGATION",
           "Delegation", "DelegationStore", "KeyVault", "PendingDelegation", "host_trust_directory",
           "open_delegations", "proxy_for_request", "sweep_delegations_forever"]
