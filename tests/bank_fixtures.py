"""A real Bank host for the service, concurrency and crash tests (import explicitly).

``BankHost`` runs ``gridcredit serve`` (``host.serve``: one listening socket, 2 worker processes
forked from a supervisor) in its own process group, configured only through ``GRIDCREDIT_*``
environment variables, on the embedded store or on a BaseX server of its own (every BaseX-backed
host gets its own server: a host's journal owns every ``gc_`` database of the server it uses).

    with bank_host(tmp_path, "basex", bank_users(pki)) as host:
        admin = host.client(host.users.admin)
        admin.call("CreateAccount", request_id="a1", …)
        host.kill9()               # every process of the server, at once
        host.start()               # the same state, the same port

``BankUsers`` are made from the session ``pki``: an administrator, a second administrator, an
auditor, owners, managers, members, viewers, a service identity and a stranger.
``offline_audit(host)`` opens the store in the test process and runs ``audit_store``;
``ledger_snapshot(host)`` reads every account, hold and transaction from the store.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gridcredit.client import ServiceClient
from gridcredit.config import StoreConfig
from gridcredit.errors import GridcreditError, RemoteFault, SecurityError
from gridcredit.services.bank import documents
from gridcredit.services.bank.bank import (ACCOUNTS, HOLDS_ACTIVE, HOLDS_ENDED, TRANSACTIONS, LedgerKey,
                                           audit_store)
from gridcredit.xmlstore import open_store
from gridcredit.xmlstore.basex_server import BaseXServer

from security_fixtures import free_port, wait_for_tls

BACKENDS = ["embedded", "basex"]
WORKERS = 2
SERVER_START_S = 60.0


# ----------------------------------------------------------------------------------------- users

@dataclasses.dataclass(frozen=True)
class BankUsers:
    admin: object          # UserFiles (cert_path, key_path, credential, dn)
    admin2: object
    auditor: object
    owners: tuple
    managers: tuple
    members: tuple
    viewers: tuple
    service: object
    stranger: object

    @property
    def everyone(self) -> list:
        return [self.admin, self.admin2, self.auditor, *self.owners, *self.managers, *self.members,
                *self.viewers, self.service, self.stranger]


def bank_users(pki, *, members: int = 2) -> BankUsers:
    """The session PKI's bank users (made once per session, each with its own key)."""
    return BankUsers(
        admin=pki.user("Bank Admin"), admin2=pki.user("Bank Admin Two"), auditor=pki.user("Bank Auditor"),
        owners=(pki.user("Olivia Owner"), pki.user("Oscar Owner")),
        managers=(pki.user("Mia Manager"),),
        members=tuple(pki.user(f"Member {index}") for index in range(members)),
        viewers=(pki.user("Victor Viewer"),),
        service=pki.user("JARM Service"), stranger=pki.user("Sam Stranger"))


# ------------------------------------------------------------------------------------------ host

@dataclasses.dataclass
class BankHost:
    state_dir: Path
    backend: str
    users: BankUsers
    pki: object
    sweep_s: int = 1
    port: int = dataclasses.field(default_factory=free_port)
    basex: BaseXServer | None = None
    process: subprocess.Popen | None = None
    starts: int = 0
    extra_env: dict = dataclasses.field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def environment(self) -> dict[str, str]:
        users = self.users
        env = {key: value for key, value in os.environ.items() if not key.startswith("GRIDCREDIT_")}
        env.update({
            "GRIDCREDIT_STATE_DIR": str(self.state_dir),
            "GRIDCREDIT_LOG_LEVEL": "INFO",
            "GRIDCREDIT_SERVER_PORT": str(self.port),
            "GRIDCREDIT_SERVER_WORKERS": str(WORKERS),
            "GRIDCREDIT_SECURITY_HOST_CERT": str(self.pki.host_cert),
            "GRIDCREDIT_SECURITY_HOST_KEY": str(self.pki.host_key),
            "GRIDCREDIT_SECURITY_CERT_DIR": str(self.pki.trust_dir),
            "GRIDCREDIT_STORE_BACKEND": self.backend,
            "GRIDCREDIT_BANK_ADMINS": f"{users.admin.dn},{users.admin2.dn}",
            "GRIDCREDIT_BANK_AUDITORS": users.auditor.dn,
            "GRIDCREDIT_BANK_SERVICES": users.service.dn,
            "GRIDCREDIT_BANK_EXPIRY_SWEEP_S": str(self.sweep_s),
        })
        if self.basex is not None:
            env["GRIDCREDIT_STORE_BASEX_PORT"] = str(self.basex.port)
        env.update(self.extra_env)
        return env

    def start(self) -> "BankHost":
        """``gridcredit serve`` in a new process group; returns once TLS answers."""
        invariant_stopped = self.process is None or self.process.poll() is not None
        assert invariant_stopped, "the host is already running"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = open(self.state_dir / f"server-{self.starts}.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "gridcredit.cli", "serve"], env=self.environment(),
                                        cwd=self.state_dir, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            _wait_for_tls(self.port, self.process, SERVER_START_S)
        except BaseException:
            self.kill9()
            raise
        return self

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.state_dir.glob("server-*.log")))

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the supervisor (it stops its workers), else kill -9 of the group."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill9()

    def kill9(self) -> None:
        """kill -9 of every process of the server (supervisor and workers) at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(self.process.pid) and time.monotonic() < deadline:  # the reaped workers
            time.sleep(0.02)

    def client(self, who, *, timeout_s: float = 30.0) -> ServiceClient:
        credential = getattr(who, "credential", who)
        return ServiceClient(self.url, "bank", credential=credential, trust_dir=self.pki.trust_dir,
                             timeout_s=timeout_s)

    # -- the store, read from the test process --
    def store_config(self) -> StoreConfig:
        if self.backend == "basex":
            return StoreConfig(backend="basex", basex_port=self.basex.port, timeout_s=30)
        return StoreConfig(backend="embedded")

    @contextlib.contextmanager
    def open_store(self):
        store = open_store(self.store_config(), self.state_dir)
        try:
            yield store
        finally:
            store.close()

    def public_key(self):
        return LedgerKey.load_or_create(self.state_dir / "bank" / "ledger-signing-key.pem").public


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies of the group count as gone: their parent is dead, init reaps them
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_for_tls(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    class _Alive:  # wait_for_tls wants is_alive()/exitcode
        def is_alive(self):
            return process.poll() is None

        @property
        def exitcode(self):
            return process.returncode

    wait_for_tls(port, timeout_s=timeout_s, process=_Alive())


@contextlib.contextmanager
def bank_host(tmp_path: Path, backend: str, users: BankUsers, pki, *, sweep_s: int = 1, extra_env: dict | None = None):
    """A running BankHost on ``backend`` (with a BaseX server of its own for ``basex``)."""
    basex = None
    if backend == "basex":
        basex = BaseXServer(tmp_path / "basex", port=free_port()).start()
    host = BankHost(tmp_path / "state", backend, users, pki, sweep_s=sweep_s, basex=basex, extra_env=dict(extra_env or {}))
    try:
        host.start()
        yield host
    finally:
        host.stop()
        if basex is not None:
            basex.stop()


# ---------------------------------------------------------------------------------------- calls

OK, REFUSED, UNKNOWN = "ok", "refused", "unknown"


def classify(call):
    """Run ``call()``; return (outcome, value): ok with the answer, refused with the fault code (a
    Client fault: nothing was applied), unknown with the error (transport, server faults)."""
    try:
        return OK, call()
    except RemoteFault as fault:
        if fault.faultcode.split(":")[-1].startswith("Client"):
            return REFUSED, fault.code
        return UNKNOWN, f"{fault.faultcode} {fault.code}: {fault.text}"
    except (GridcreditError, SecurityError, OSError) as error:
        return UNKNOWN, f"{type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001 — zeep/requests internals on a dying server
        return UNKNOWN, f"{type(error).__name__}: {error}"


def refused_code(call) -> str:
    """The reason code of a refused call (fails the test if it was accepted)."""
    try:
        value = call()
    except RemoteFault as fault:
        return fault.code
    raise AssertionError(f"the call was accepted: {value}")


def utc_in(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------ the store

@dataclasses.dataclass
class LedgerSnapshot:
    accounts: dict          # account_id -> ledger.Account
    active_holds: dict      # hold_id -> ledger.Hold
    ended_holds: dict
    transactions: list      # ledger.Transaction, by seq
    supply: object          # ledger.MoneySupply


def _all_documents(store, collection: str):
    offset = 0
    while True:
        ids = store.ids(collection, offset, 1000)
        for doc_id in ids:
            document = store.get(collection, doc_id)
            if document is not None:
                yield document.xml
        if len(ids) < 1000:
            return
        offset += len(ids)


def ledger_snapshot(store) -> LedgerSnapshot:
    from gridcredit.services.bank.bank import BANK
    from gridcredit.services.bank.ledger import MoneySupply

    accounts = {a.account_id: a for a in map(documents.account_from_xml, _all_documents(store, ACCOUNTS))}
    active = {h.hold_id: h for h in map(documents.hold_from_xml, _all_documents(store, HOLDS_ACTIVE))}
    ended = {h.hold_id: h for h in map(documents.hold_from_xml, _all_documents(store, HOLDS_ENDED))}
    transactions = sorted(documents.transactions_from_xml(_all_documents(store, TRANSACTIONS)), key=lambda t: t.seq)
    supply_document = store.get(BANK, documents.MONEY_SUPPLY_ID)
    supply = documents.money_supply_from_xml(supply_document.xml) if supply_document else MoneySupply()
    return LedgerSnapshot(accounts, active, ended, transactions, supply)


def offline_audit(host: BankHost):
    """``audit_store`` over the host's store opened in this process (every signature checked)."""
    with host.open_store() as store:
        return audit_store(store, host.public_key(), signature_check_interval=1)


def snapshot_of(host: BankHost) -> LedgerSnapshot:
    with host.open_store() as store:
        return ledger_snapshot(store)
