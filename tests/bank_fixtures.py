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
        self.process = subprocess.Popen([sys.executable, "-m", "gridcredit.server.cli", "serve"], env=self.environment(),
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
        for server in {id(s): s for s in (basex, host.basex) if s is not None}.values():
            server.stop()  # a crash test replaces host.basex with a restarted server: stop that one too


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


# ------------------------------------------------------------------------------- random load
#
# 16+ threads, each a signed client (its own identity, member of every load account; one thread
# is the service identity), run random operations: holds (some short-lived, to race the sweep),
# partial and full charges, settlements, releases, extensions, transfers, retries of an earlier request id
# and requests sent twice at once. Every attempt is classified ok / refused / unknown.

import random
import threading
from collections import Counter, defaultdict

LOAD_ACCOUNTS = [f"load-{index}" for index in range(6)]
LOAD_CREDIT_LIMITS = {"load-0": 3000, "load-1": 1000}
LOAD_MINT = 20_000


@dataclasses.dataclass
class OpRecord:
    principal_dn: str
    request_id: str
    operation: str
    arguments: dict
    attempts: list = dataclasses.field(default_factory=list)   # (outcome, value) per attempt

    def add(self, outcome: str, value) -> None:
        if outcome == OK:
            transaction = value.transaction
            value = {"seq": transaction.seq, "hash": transaction.hash, "kind": transaction.kind,
                     "replayed": bool(value.replayed), "hold_id": transaction.hold_id}
        self.attempts.append((outcome, value))

    @property
    def acknowledged(self) -> bool:
        return any(outcome == OK for outcome, _ in self.attempts)

    @property
    def outcomes(self) -> set:
        return {outcome for outcome, _ in self.attempts}


def setup_load(host: BankHost, identities: list) -> int:
    """Create the load accounts (every identity a member), mint; returns the money supply."""
    admin, owner = host.client(host.users.admin), host.client(host.users.owners[0])
    for account_id in LOAD_ACCOUNTS:
        admin.call("CreateAccount", request_id=f"setup-{account_id}", account_id=account_id, project="load",
                   owner_dn=host.users.owners[0].dn, credit_limit=LOAD_CREDIT_LIMITS.get(account_id, 0))
        for index, who in enumerate(identities):
            owner.call("SetHolder", request_id=f"setup-{account_id}-{index}", account_id=account_id,
                       holder_dn=who.dn, role="member")
        admin.call("Mint", request_id=f"setup-mint-{account_id}", account_id=account_id, amount=LOAD_MINT)
    return admin.call("MoneySupply").outstanding


class LoadThread(threading.Thread):
    def __init__(self, host: BankHost, who, index: int, operations: int, stop: threading.Event, seed: int,
                 *, timeout_s: float = 15.0) -> None:
        super().__init__(name=f"load-{index}", daemon=True)
        self.host, self.who, self.index, self.operations, self.stop = host, who, index, operations, stop
        self.random = random.Random(seed)
        self.records: list[OpRecord] = []
        self.holds: dict[str, dict] = {}      # my active holds as I believe them
        self.counter = 0
        self.steps = 0                        # operations sent (a retry is one, a request sent twice at once is one)
        self.requests = 0                     # requests sent
        self.timeout_s = timeout_s
        self.error: BaseException | None = None
        self.is_service = who.dn in host.users.service.dn

    def run(self) -> None:
        try:
            self.client = self.host.client(self.who, timeout_s=self.timeout_s)
            self.twin = self.host.client(self.who, timeout_s=self.timeout_s)
            while not self.stop.is_set() and self.steps < self.operations:
                self.steps += 1
                self.step()
        except BaseException as error:  # noqa: BLE001 — reported by the test
            self.error = error

    # -- helpers --
    def new_record(self, operation: str, **arguments) -> OpRecord:
        self.counter += 1
        record = OpRecord(self.who.dn, f"t{self.index}-{self.counter}", operation, arguments)
        self.records.append(record)
        return record

    def send(self, record: OpRecord, client=None):
        self.requests += 1
        outcome, value = classify(lambda: (client or self.client).call(record.operation, request_id=record.request_id,
                                                                        **record.arguments))
        record.add(outcome, value)
        if outcome == UNKNOWN and "cannot reach" in str(value):
            time.sleep(0.05)  # the server is down: do not spin
        return outcome, value

    def send_twice_at_once(self, record: OpRecord):
        results = []
        other = threading.Thread(target=lambda: results.append(self.send(record, self.twin)))
        other.start()
        mine = self.send(record)
        other.join()
        return mine

    def learn(self, record: OpRecord, outcome: str, value) -> None:
        operation, arguments = record.operation, record.arguments
        if outcome == OK:
            if operation == "CreateHold":
                self.holds[value.transaction.hold_id] = {"account": arguments["account_id"],
                                                         "amount": arguments["amount"], "charged": 0,
                                                         "expires": arguments["expires"]}
            elif operation == "ChargeHold" and arguments["hold_id"] in self.holds:
                hold = self.holds[arguments["hold_id"]]
                if value.transaction.hold_state != "active":
                    self.holds.pop(arguments["hold_id"], None)
                else:
                    hold["charged"] += arguments["amount"] if not value.replayed else 0
            elif operation in ("ReleaseHold", "SettleHold"):
                self.holds.pop(arguments["hold_id"], None)
            elif operation == "ExtendHold" and arguments["hold_id"] in self.holds and not value.replayed:
                # (a replayed extension is an earlier one: a later one may have raised the hold since)
                hold = self.holds[arguments["hold_id"]]
                if arguments.get("amount"):
                    hold["amount"] = arguments["amount"]
                if arguments.get("expires"):
                    hold["expires"] = arguments["expires"]
        elif outcome == REFUSED and value in ("HoldEnded", "HoldExpired", "UnknownHold"):
            self.holds.pop(arguments.get("hold_id"), None)

    def pick_hold(self):
        now = datetime.now(timezone.utc)
        for hold_id in [h for h, hold in self.holds.items() if hold["expires"] < now - timedelta(seconds=5)]:
            self.holds.pop(hold_id)
        if not self.holds:
            return None, None
        hold_id = self.random.choice(sorted(self.holds))
        return hold_id, self.holds[hold_id]

    def step(self) -> None:
        rnd = self.random
        roll = rnd.random()
        accounts = LOAD_ACCOUNTS
        hold_id, hold = self.pick_hold()
        if roll < 0.06 and self.records:                       # retry an earlier request, same id and arguments
            record = rnd.choice(self.records[-50:])
            self.learn(record, *self.send(record))
            return
        if roll < 0.30 or hold is None:
            short = rnd.random() < 0.5
            seconds = rnd.uniform(1.0, 4.0) if short else rnd.uniform(8.0, 20.0)
            record = self.new_record("CreateHold", account_id=rnd.choice(accounts), amount=rnd.randint(1, 400),
                                     expires=utc_in(seconds), reference=f"job {self.counter}")
        elif roll < 0.58:
            remaining = hold["amount"] - hold["charged"]
            amount = remaining if rnd.random() < 0.35 else rnd.randint(1, max(1, remaining + 20))
            payee = rnd.choice([a for a in accounts if a != hold["account"]])
            record = self.new_record("ChargeHold", hold_id=hold_id, payee_account_id=payee, amount=amount)
        elif roll < 0.62:
            record = self.new_record("ReleaseHold", hold_id=hold_id)
        elif roll < 0.66:                                       # the final charge, the rest released at once
            remaining = hold["amount"] - hold["charged"]
            amount = rnd.choice([0, remaining, rnd.randint(0, remaining + 20)])
            payee = rnd.choice([a for a in accounts if a != hold["account"]])
            record = self.new_record("SettleHold", hold_id=hold_id, payee_account_id=payee, amount=amount)
        elif roll < 0.74:
            arguments = {}
            if rnd.random() < 0.6:
                arguments["expires"] = hold["expires"] + timedelta(seconds=rnd.uniform(0.5, 5))
            if rnd.random() < 0.6 or not arguments:
                arguments["amount"] = hold["amount"] + rnd.randint(1, 100)
            record = self.new_record("ExtendHold", hold_id=hold_id, **arguments)
        else:
            source, target = rnd.sample(accounts, 2)
            record = self.new_record("Transfer", from_account_id=source, to_account_id=target,
                                     amount=rnd.randint(1, 600))
        if rnd.random() < 0.08:                                 # the same request twice, at once
            outcome, value = self.send_twice_at_once(record)
        else:
            outcome, value = self.send(record)
        self.learn(record, outcome, value)


def run_load(host: BankHost, identities: list, operations_total: int, *, seed: int = 1, stop=None,
             timeout_s: float = 15.0) -> list:
    stop = stop or threading.Event()
    per_thread = -(-operations_total // len(identities))
    threads = [LoadThread(host, who, index, per_thread, stop, seed * 1000 + index, timeout_s=timeout_s)
               for index, who in enumerate(identities)]
    for thread in threads:
        thread.start()
    return threads


def join_load(threads: list, timeout_s: float = 600) -> list:
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"load threads still running: {stuck}"
    errors = [f"{thread.name}: {thread.error!r}" for thread in threads if thread.error]
    assert not errors, errors
    return [record for thread in threads for record in thread.records]


def attempt_counts(threads_records: list) -> Counter:
    counts = Counter()
    for record in threads_records:
        for outcome, _ in record.attempts:
            counts[outcome] += 1
    return counts


def retry_unknowns(host: BankHost, records: list, users_by_dn: dict) -> None:
    """Send every request whose outcome is still unknown once more (same id, same arguments)."""
    clients = {}
    for record in records:
        if record.acknowledged or REFUSED in record.outcomes or UNKNOWN not in record.outcomes:
            continue
        client = clients.get(record.principal_dn) or clients.setdefault(record.principal_dn,
                                                                       host.client(users_by_dn[record.principal_dn]))
        outcome, value = classify(lambda: client.call(record.operation, request_id=record.request_id,
                                                      **record.arguments))
        record.add(outcome, value)
        # refused now (not as a reused id): no request record exists, so the first attempt was never
        # applied — and nothing of it can still be in flight (call this once earlier attempts ended)
        record.settled = outcome == REFUSED and value != "RequestIdReused"


def wait_for_expiry_sweep(host: BankHost, margin_s: float = 4.0, timeout_s: float = 60.0) -> None:
    """Wait until no active hold is more than ``margin_s`` past its expiry (the sweep runs every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = snapshot_of(host)
        now_us = time.time_ns() // 1000
        late = [h.hold_id for h in snapshot.active_holds.values() if h.expires_at_us <= now_us - int(margin_s * 1e6)]
        if not late:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"holds past their expiry by more than {margin_s} s are still active: {late[:10]}")
        time.sleep(1)


def verify_ledger(host: BankHost, records: list, supply_before: int, *, late_margin_s: float = 4.0) -> dict:
    """Call after ``wait_for_expiry_sweep`` (which checks that holds past expiry were ended)."""
    # Every check of the issue on the stored ledger; returns a summary for the test's report.
    problems: list[str] = []
    admin = host.client(host.users.admin)
    # Audits read the store page by page, not as one snapshot: a sweep committing meanwhile shows as
    # findings. So first make the ledger quiet: an administrator releases every hold still active.
    for hold_id in sorted(snapshot_of(host).active_holds):
        outcome, value = classify(lambda: admin.call("ReleaseHold", request_id=f"quiesce-{hold_id}", hold_id=hold_id))
        assert outcome == OK or value in ("HoldExpired", "HoldEnded"), (hold_id, outcome, value)
    deadline = time.monotonic() + 30
    while snapshot_of(host).active_holds and time.monotonic() < deadline:
        time.sleep(0.5)                       # those that expired meanwhile: the sweep ends them
    online = admin.call("Audit")
    if not online.clean:
        problems.append(f"online audit: {[(f.kind, f.seq, f.message) for f in online.findings.AuditFindingInfo][:10]}")
    report = offline_audit(host)
    if not report.clean:
        problems.append(f"offline audit: {report.findings[:10]}")
    snapshot = snapshot_of(host)
    # money: conserved, available never below zero (balance never below −credit limit)
    total = sum(account.balance for account in snapshot.accounts.values())
    if not (total == snapshot.supply.outstanding == supply_before):
        problems.append(f"money: Σ balances {total}, outstanding {snapshot.supply.outstanding}, before {supply_before}")
    for account in snapshot.accounts.values():
        if account.available < 0 or account.balance < -account.credit_limit:
            problems.append(f"{account.account_id}: balance {account.balance}, held {account.held}, "
                            f"credit limit {account.credit_limit}")
        held = sum(h.amount - h.charged for h in snapshot.active_holds.values() if h.account_id == account.account_id)
        if held != account.held:
            problems.append(f"{account.account_id}: held {account.held} but its active holds keep {held}")
    # holds: ended at most once, ended iff one ending transaction, charges within the amount, none after expiry
    endings, charges = defaultdict(list), defaultdict(list)
    for transaction in snapshot.transactions:
        kind = transaction.kind.value
        if kind in ("charge", "settle"):
            charges[transaction.hold_id].append(transaction)
        if kind in ("release", "expire", "settle") or (kind == "charge" and transaction.hold_state.value == "charged-out"):
            endings[transaction.hold_id].append(transaction)
    both = set(snapshot.active_holds) & set(snapshot.ended_holds)
    if both:
        problems.append(f"holds both active and ended: {sorted(both)[:10]}")
    for hold_id, ends in endings.items():
        if len(ends) > 1:
            problems.append(f"hold {hold_id} ended {len(ends)} times: {[(t.seq, t.kind.value) for t in ends]}")
    for hold in snapshot.ended_holds.values():
        ends = endings.get(hold.hold_id, [])
        if len(ends) != 1 or ends[0].seq != hold.ended_seq:
            problems.append(f"ended hold {hold.hold_id} ({hold.state.value}, seq {hold.ended_seq}) has endings "
                            f"{[(t.seq, t.kind.value) for t in ends]}")
        if hold.state.value == "expired" and hold.ended_at_us < hold.expires_at_us:
            problems.append(f"hold {hold.hold_id} expired before its time")
    for hold in list(snapshot.active_holds.values()) + list(snapshot.ended_holds.values()):
        charged = sum(t.amount for t in charges.get(hold.hold_id, []))
        if charged != hold.charged or hold.charged > hold.amount:
            problems.append(f"hold {hold.hold_id}: charged {hold.charged} of {hold.amount}, charges sum {charged}")
        late = [t.seq for t in charges.get(hold.hold_id, []) if t.at_us >= hold.expires_at_us]
        if late:
            problems.append(f"hold {hold.hold_id} charged at or after its expiry: {late}")
    for hold_id in snapshot.active_holds:
        if endings.get(hold_id):
            problems.append(f"active hold {hold_id} has an ending transaction")
    if snapshot.active_holds:
        problems.append(f"holds still active after quiescing: {sorted(snapshot.active_holds)[:10]}")
    # requests: each acknowledged one exactly once (with the answer it got), refused ones never
    by_request = defaultdict(list)
    for transaction in snapshot.transactions:
        by_request[(transaction.principal_dn, transaction.request_id)].append(transaction)
    for key, found in by_request.items():
        if len(found) > 1:
            problems.append(f"request {key[1]} of {key[0]} appears {len(found)} times")
    outcomes = Counter()
    for record in records:
        found = by_request.get((record.principal_dn, record.request_id), [])
        oks = [value for outcome, value in record.attempts if outcome == OK]
        if oks:
            outcomes["acknowledged"] += 1
            fresh = [value for value in oks if not value["replayed"]]
            if len(found) != 1:
                problems.append(f"acknowledged {record.operation} {record.request_id} appears {len(found)} times")
            elif any(value["seq"] != found[0].seq or value["hash"] != found[0].hash for value in oks):
                problems.append(f"{record.request_id}: answers {oks} differ from the ledger's seq {found[0].seq}")
            if len(fresh) > 1:
                problems.append(f"{record.request_id}: applied {len(fresh)} times by its answers (not replayed)")
        elif record.outcomes == {REFUSED}:
            outcomes["refused"] += 1
            if found:
                problems.append(f"refused {record.operation} {record.request_id} is in the ledger (seq {found[0].seq})")
        elif getattr(record, "settled", False):
            outcomes["unknown, then refused"] += 1
            if found:
                problems.append(f"{record.operation} {record.request_id}: refused when sent again, yet in the "
                                f"ledger (seq {found[0].seq})")
        else:
            outcomes["unknown"] += 1
            if len(found) > 1:
                problems.append(f"unknown {record.request_id} appears {len(found)} times")
    assert not problems, "\n".join(problems[:40])
    return {"transactions": len(snapshot.transactions), "holds": len(snapshot.active_holds) + len(snapshot.ended_holds),
            "expired": sum(1 for h in snapshot.ended_holds.values() if h.state.value == "expired"),
            "settled": sum(1 for h in snapshot.ended_holds.values() if h.state.value == "settled"),
            "audited": report.transaction_count, **outcomes}


def assert_vouched_bytes_are_normal(xml: bytes) -> None:
    """Bytes the Bank's writer marks NormalXml are stored as they are (no parse): they must be exactly what
    the store's normalize makes of them, with no attribute on the root (the attribute indexes read none)."""
    from gridcredit.xmlstore import NormalXml
    from gridcredit.xmlstore._api import normalize_with_attributes
    if type(xml) is NormalXml:
        assert normalize_with_attributes(bytes(xml)) == (bytes(xml), {})
