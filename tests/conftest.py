"""Shared fixtures: a session-wide test PKI (CA, exported trust directory, localhost host
certificate, users made on demand). Keys are made once and reused from a small pool, so the
whole session pays for a handful of RSA key generations.

    def test_something(pki):
        alice = pki.user("Alice")            # UserFiles(cert_path, key_path, credential)
        proxy = pki.proxy("Alice")           # a Credential holding an RFC 3820 proxy
        store = pki.trust_store()            # a TrustStore on pki.trust_dir
        pki.host_cert, pki.host_key          # hostcert.pem / hostkey.pem for localhost

Tests that revoke or expire things should use ``fresh_pki`` (a function-scoped CA of their own).
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gridcredit.security import pki as pki_module
from gridcredit.security.chain import TrustStore
from gridcredit.security.credentials import Credential, load_credential

TEST_CA_DN = "/DC=org/DC=example/O=gridcredit-test/CN=gridcredit Test CA"


class KeyPool:
    """Pre-made keys, handed out round-robin: ``fresh()`` gives a key no one else got yet (made on
    demand), ``any()`` a shared one (for proxies, whose key identity rarely matters in tests)."""

    def __init__(self, key_type: str = "rsa", shared_size: int = 4) -> None:
        self.key_type = key_type
        self._lock = threading.Lock()
        self._shared = [pki_module.generate_key(key_type) for _ in range(shared_size)]
        self._cycle = itertools.cycle(self._shared)

    def fresh(self) -> pki_module.PrivateKey:
        return pki_module.generate_key(self.key_type)

    def any(self) -> pki_module.PrivateKey:
        with self._lock:
            return next(self._cycle)


@dataclass(frozen=True)
class UserFiles:
    cert_path: Path
    key_path: Path
    credential: Credential

    @property
    def dn(self) -> str:
        return self.credential.dn


@dataclass
class PkiFixture:
    ca: pki_module.CertificateAuthority
    root: Path
    trust_dir: Path
    host_cert: Path
    host_key: Path
    keys: KeyPool
    _users: dict[str, UserFiles] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ca_dir(self) -> Path:
        return self.ca.directory

    def user(self, cn: str, **options) -> UserFiles:
        """The user ``cn`` (made once per PKI, with its own key); ``options`` (days, not_before,
        not_after, key) make a new certificate each call instead."""
        with self._lock:
            if cn in self._users and not options:
                return self._users[cn]
            out_dir = self.root / "users" / f"{cn}-{len(self._users)}"
            key = options.pop("key", None) or self.keys.fresh()
            cert_path, key_path = self.ca.issue_user(cn, out_dir, key=key, **options)
            files = UserFiles(cert_path, key_path, load_credential(cert_path, key_path, allow_expired=True))
            if not options:
                self._users[cn] = files
            return files

    def proxy(self, cn_or_credential: str | Credential, *, hours: float = 12, limited: bool = False,
              path_length: int | None = None) -> Credential:
        """An RFC 3820 proxy of the user ``cn`` (or of a credential, e.g. another proxy)."""
        issuer = (self.user(cn_or_credential).credential if isinstance(cn_or_credential, str)
                  else cn_or_credential)
        proxy, key = pki_module.make_proxy(issuer.cert, issuer.key, issuer.chain, hours=hours, limited=limited,
                                           path_length=path_length, proxy_key=self.keys.any())
        return Credential(proxy, key, issuer.certificates, "test proxy")

    def publish(self) -> None:
        """Re-export the CA certificate and current CRL into the trust directory."""
        self.ca.export_trust(self.trust_dir)

    def trust_store(self, **options) -> TrustStore:
        return TrustStore.from_directory(self.trust_dir, **options)

    def host_credential(self) -> Credential:
        return load_credential(self.host_cert, self.host_key)


def make_test_pki(root: Path, keys: KeyPool, dn: str = TEST_CA_DN) -> PkiFixture:
    ca = pki_module.CertificateAuthority.create(root / "ca", dn, key=keys.fresh())
    trust_dir = root / "certificates"
    ca.export_trust(trust_dir)
    host_cert, host_key = ca.issue_host("localhost", root / "host", key=keys.fresh())
    return PkiFixture(ca, root, trust_dir, host_cert, host_key, keys)


@pytest.fixture(scope="session")
def key_pool() -> KeyPool:
    return KeyPool("rsa")


@pytest.fixture(scope="session")
def pki(tmp_path_factory, key_pool) -> PkiFixture:
    """The session's test PKI (do not revoke or expire its shared users; use ``fresh_pki``)."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), key_pool)


@pytest.fixture
def fresh_pki(tmp_path, key_pool) -> PkiFixture:
    """A CA of this test's own, for tests that revoke certificates or expire CRLs."""
    return make_test_pki(tmp_path / "pki", key_pool, dn="/DC=org/DC=example/O=gridcredit-test/CN=Fresh Test CA")


_BASEX_FIXTURES = {"basex_server", "private_basex"}


def _runs_on_basex(item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "basex" in [value for value in callspec.params.values() if isinstance(value, str)]:
        return True
    if _BASEX_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    return "basex" in item.module.__name__ or "basex" in item.originalname.lower()


def _uses_the_cluster(nodeid: str) -> bool:
    return "slurm" in nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (scripts/test.sh): a module is a unit of work (its module-scoped servers are made
    once, its tests run in order), and every module using the one Slurm cluster — global hooks, two CPUs —
    is one unit together, started first because it is the longest. (pytest-xdist's own xdist_group marker
    renames node ids, which pytest 9 no longer allows: its groups silently fell apart.)"""
    from xdist.scheduler import LoadScopeScheduling

    class SlurmFirstThenModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "slurm" if _uses_the_cluster(nodeid) else nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node) -> None:
            if "slurm" in self.workqueue:
                self.workqueue.move_to_end("slurm", last=False)
            super()._assign_work_unit(node)

    return SlurmFirstThenModules(config, log)


def pytest_collection_modifyitems(config, items):
    """Every test that runs against BaseX carries the ``basex`` marker, wherever that comes from (a
    ``"basex"`` backend parameter, a BaseX fixture, a module or test named for it), and ``slow``
    too: ``pytest -m "not slow"`` is the developer's loop of a few minutes without BaseX (and
    ``-m "not basex"`` all that needs no BaseX). In such a run a test that starts a BaseX server
    anyway fails at once, naming the marker it lacks. CI runs everything (scripts/test.sh): first all but
    the ``alone`` tests in parallel (pytest-xdist, the Slurm tests on one worker: pytest_xdist_make_scheduler),
    then the ``alone`` ones."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "slurm_cluster" in fixtures and not _uses_the_cluster(item.nodeid):
            raise pytest.UsageError(f"{item.nodeid} uses the Slurm cluster: its module's name must contain 'slurm' "
                                    "(pytest_xdist_make_scheduler keeps those modules on one worker)")
        if "libvirt_host" in fixtures and item.get_closest_marker("alone") is None:
            # CPU shares of real guests are measured: any other process on the cores shows up as error.
            item.add_marker(pytest.mark.alone)
        if item.get_closest_marker("basex") is None and _runs_on_basex(item):
            item.add_marker(pytest.mark.basex)
        if item.get_closest_marker("basex") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
    words = " ".join((config.getoption("markexpr") or "").split())
    if "not basex" in words or "not slow" in words:
        from gridcredit.xmlstore import basex_server

        def refuse_start(self, *args, **kwargs):
            raise RuntimeError("this test starts a BaseX server but is not marked basex: add "
                               "@pytest.mark.basex (or a 'basex' backend parameter)")
        basex_server.BaseXServer.start = refuse_start
