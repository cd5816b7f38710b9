"""The Bank over the XML store: the pure ledger core run inside one store transaction per request.

``Bank.execute(request, principal)`` loads the documents the operation touches through a
``LedgerView`` backed by the store transaction, runs ``ledger.execute`` and writes everything
it returns — the new states, the sealed transaction, the ledger head and the request record —
in that same transaction: a request is applied entirely or not at all, and durable once it
returns. Requests that arrive while the store is busy with another transaction of this process
are applied together in the next one (group commit, :class:`_GroupCommit`): one fsync for many,
each still all or nothing, refusals refused alone. Holds and pending mints that ended live in collections of their own so that the
expiry sweep reads only the active ones.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from lxml import etree

from gridcredit.durable import write_exclusively
from gridcredit.errors import ConfigError, ConflictError, DomainError, QueryError, StoreError, invariant
from gridcredit.timeunits import US_PER_S, now_us
from gridcredit.xmlstore import XmlStore

from . import audit, documents, holders, ledger, ledger_chain, policy, types
from .audit import AuditReport
from .ledger import (Account, Balance, BankPolicy, ExpireHold, ExpireMint, Hold, HoldState, LedgerHead,
                     MoneySupply, Outcome, PendingMint, PendingMintState, Principal, RequestRecord, Statement,
                     Transaction)

log = logging.getLogger("gridcredit.bank")

ACCOUNTS = documents.COLLECTIONS[Account]
HOLDS_ACTIVE = documents.COLLECTIONS[Hold]
HOLDS_ENDED = "holds_ended"
PENDING_MINTS = documents.COLLECTIONS[PendingMint]
PENDING_MINTS_ENDED = "pending_mints_ended"
BANK = documents.COLLECTIONS[LedgerHead]
REQUESTS = documents.COLLECTIONS[RequestRecord]
TRANSACTIONS = documents.COLLECTIONS[Transaction]
NAMESPACES = documents.NAMESPACES
PAGE_SIZE_MAX = 500
FILTER_LENGTH_MAX = 2000
SWEEP_BATCH_MAX = 200
SWEEP_SCAN_PAGE = 1000               # active holds / pending mints the sweep reads at once
GROUP_COMMIT_MAX = 64                # requests one store transaction applies at most
GROUP_COMMIT_ITEMS_MAX = 1_600       # ... and items in all (a batch's count, see ledger.check_batch): at most
                                     # 6 documents each, within the store's 10,000 per transaction
DECODED_MAX = 50_000                 # decoded states the bank keeps (see _Decoded): ~50 MB at most
GROUP_COMMIT_WAIT_S = 60.0           # how long a request waits for its turn before it is given up (not applied)
AUDIT_PAGE_SIZE = 1000               # transaction documents read (and handed to the helper) at once
AUDIT_HELPER_FROM = 20_000           # transactions: a larger ledger is decoded and hashed by a helper process too
AUDIT_PAGES_AHEAD = 16               # pages read ahead of the replay (about 1 MB each)
AUDIT_HELPER_PAGES = 4               # pages queued to the helper at once (it idles less while this one decodes)
AUDIT_HELPER_TIMEOUT_S = 60.0        # a page takes the helper milliseconds: this long means it is gone
ACCOUNT_TRANSACTIONS = "/t:Transaction[t:accountId = $account or t:counterpartyAccountId = $account]"
EXPIRY_SWEEPER_DN = "gridcredit bank expiry sweeper"   # not a certificate DN: no caller can be it


MICROSECONDS_PER_DAY = 86_400 * US_PER_S
MINT_APPROVAL_DAYS_MAX = types.MINT_APPROVAL_DURATION_MAX_US // MICROSECONDS_PER_DAY


def policy_from_config(bank_config) -> BankPolicy:
    """The ledger's policy from the ``[bank]`` section of the configuration (a ConfigError if out of range)."""
    if not 1 <= bank_config.mint_approval_days <= MINT_APPROVAL_DAYS_MAX:
        raise ConfigError(f"bank.mint_approval_days must be 1 to {MINT_APPROVAL_DAYS_MAX}, "
                          f"not {bank_config.mint_approval_days}")
    if bank_config.approval_above < 0:
        raise ConfigError(f"bank.approval_above must be 0 (no approval) or more, not {bank_config.approval_above}")
    if bank_config.hold_days_max < 1:
        raise ConfigError(f"bank.hold_days_max must be at least 1, not {bank_config.hold_days_max}")
    return BankPolicy(mint_approval_threshold=bank_config.approval_above or None,
                      hold_duration_max_us=bank_config.hold_days_max * MICROSECONDS_PER_DAY,
                      mint_approval_duration_us=bank_config.mint_approval_days * MICROSECONDS_PER_DAY)


# ---------------------------------------------------------------------------------------------
# The bank's signing key (Ed25519: fast to verify, so audits stay quick)


class LedgerKey:
    """The key that signs ledger transactions; made once, kept at mode 0600 beside the store."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public: Ed25519PublicKey = private_key.public_key()

    @classmethod
    def load_or_create(cls, path: Path) -> LedgerKey:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        if write_exclusively(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()), mode=0o600):
            log.info("created the ledger signing key %s", path)
            return cls(key)
        data = path.read_bytes()     # another worker's, whole (a key is never seen half-written)
        if not data:                 # (written before keys were made whole: a crash mid-write)
            raise StoreError(f"the ledger signing key {path} is empty")
        return cls(serialization.load_pem_private_key(data, password=None))

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def signature_verifier(public_key: Ed25519PublicKey) -> Callable[[bytes, bytes], bool]:
    def verify(message: bytes, signature: bytes) -> bool:
        try:
            public_key.verify(signature, message)
            return True
        except InvalidSignature:
            return False
    return verify


# ---------------------------------------------------------------------------------------------
# The ledger view over one store transaction


_READ_AGAIN = frozenset({ACCOUNTS, HOLDS_ACTIVE, PENDING_MINTS, BANK})
_NAMED_ACCOUNTS = ("account_id", "payee_account_id", "from_account_id", "to_account_id")   # request fields


class _Decoded:
    """States decoded from stored documents, each with the version it was read at: a document read again at
    the same version is not parsed again (an auctioneer charges the same bidders' accounts and holds every
    interval; an account is parsed by lxml, ~60 µs). A version names one content for good — the store
    numbers a document's writes and never reuses a committed number — and only committed documents are
    read through here. Frozen states, shared by the threads of this process; at most DECODED_MAX."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], tuple[int, object]] = {}

    def state(self, document, parse):
        key = (document.collection, document.doc_id)
        known = self._states.get(key)
        if known is not None and known[0] == document.version:
            return known[1]
        state = parse(document.xml)
        self._keep(key, document.version, state)
        return state

    def remember(self, written: list[tuple[str, str, int, object]]) -> None:
        """What a store transaction wrote, once it committed: (collection, doc id, version, state)."""
        for collection, doc_id, version, state in written:
            self._keep((collection, doc_id), version, state)

    def _keep(self, key: tuple[str, str], version: int, state) -> None:
        if len(self._states) >= DECODED_MAX:
            self._states.clear()
        self._states[key] = (version, state)


class _StoreView(ledger.LedgerView):
    """The ledger's documents as one store transaction holds them. What the requests applied in it
    write is kept here decoded (``write``) — a later request of the same batch reads it without a
    parse — and given to the store once per document at the end (``flush``): a payee charged by 1,000
    items of a batch is serialized and stored once. What it reads from the store is decoded through
    ``decoded`` (see _Decoded)."""

    def __init__(self, tx, decoded: _Decoded | None = None) -> None:
        self._tx = tx
        self._decoded = decoded
        self._written: dict[tuple[str, str], object | None] = {}   # (collection, doc id) -> state; None: deleted
        self._holders: dict[str, bytes | None] = {}   # the holder index's entries (holders.py): doc id -> xml; None: deleted

    def _load(self, collection: str, doc_id: str, parse):
        key = (collection, doc_id)
        if key in self._written:
            return self._written[key]
        document = self._tx.get(collection, doc_id)
        if document is None:
            return None
        return parse(document.xml) if self._decoded is None else self._decoded.state(document, parse)

    def write(self, outcome: Outcome) -> None:
        """Everything a new outcome changes: its states, its transaction, the head and its request record."""
        written = self._written
        if outcome.transaction.kind in holders.HOLDER_CHANGES:
            for account in outcome.accounts:
                self._holders.update(holders.changes(self.account(account.account_id), account))
        for account in outcome.accounts:
            written[ACCOUNTS, account.account_id] = account
        for hold in outcome.holds:
            self._place((HOLDS_ACTIVE, HOLDS_ENDED), hold.hold_id, hold, hold.state is HoldState.ACTIVE)
        for pending in outcome.pending_mints:
            self._place((PENDING_MINTS, PENDING_MINTS_ENDED), pending.pending_mint_id, pending,
                        pending.state is PendingMintState.PENDING)
        if outcome.money_supply is not None:
            written[BANK, documents.MONEY_SUPPLY_ID] = outcome.money_supply
        written[TRANSACTIONS, documents.transaction_document_id(outcome.transaction.seq)] = outcome.transaction
        written[BANK, documents.LEDGER_HEAD_ID] = outcome.head
        written[REQUESTS, outcome.request_record.key] = outcome.request_record

    def _place(self, collections: tuple[str, str], object_id: str, state, active: bool) -> None:
        """An active hold or waiting pending mint in the first collection, an ended one moved to the second."""
        active_collection, ended_collection = collections
        doc_id = documents.numbered_document_id(object_id)
        if active:
            self._written[active_collection, doc_id] = state
        else:
            self._written[active_collection, doc_id] = None
            self._written[ended_collection, doc_id] = state

    def flush(self) -> list[tuple[str, str, int, object]]:
        """Store what was written (each document once, as it was last); returns the states that are read
        again — accounts, active holds and pending mints, the bank's own documents — with their new
        versions, for ``_Decoded.remember`` once the transaction committed."""
        kept = []
        for (collection, doc_id), state in self._written.items():
            if state is None:
                self._tx.delete(collection, doc_id)
                continue
            version = self._tx.put(collection, doc_id, documents.to_xml(state))
            if collection in _READ_AGAIN:
                kept.append((collection, doc_id, version, state))
        for doc_id, xml in self._holders.items():
            if xml is None:
                self._tx.delete(holders.HOLDERS, doc_id)
            else:
                self._tx.put(holders.HOLDERS, doc_id, xml)
        return kept

    def prefetch(self, batch: list[_Waiting]) -> None:
        """Read at once, before they are applied, what these requests' items will read one by one — their
        request records, holds and accounts — and the transactions they may write (a batch charging 1,000
        bidders asked the store 4,000 times)."""
        tx, valid = self._tx, ledger.IDENTIFIER_PATTERN.fullmatch
        keys, hold_ids, account_ids = [], [], []
        for waiting in batch:
            for request in waiting.requests:
                if type(request.request_id) is str:
                    keys.append(ledger.request_record_key(waiting.principal.dn, request.request_id))
                for name in _NAMED_ACCOUNTS:
                    value = getattr(request, name, None)
                    if type(value) is str and valid(value):
                        account_ids.append(value)
                hold_id = getattr(request, "hold_id", None)
                if type(hold_id) is str and valid(hold_id):
                    hold_ids.append(documents.numbered_document_id(hold_id))
        tx.prefetch(REQUESTS, keys)
        tx.prefetch(HOLDS_ACTIVE, hold_ids)
        active = {doc_id: self._load(HOLDS_ACTIVE, doc_id, documents.hold_from_xml) for doc_id in hold_ids}
        ended = [doc_id for doc_id, hold in active.items() if hold is None]
        tx.prefetch(HOLDS_ENDED, ended)
        holds = [*active.values(), *(self._load(HOLDS_ENDED, doc_id, documents.hold_from_xml) for doc_id in ended)]
        account_ids += [hold.account_id for hold in holds if hold is not None]
        tx.prefetch(ACCOUNTS, account_ids)
        # the transaction documents they may write (the store asks for the version of each new one)
        first = self.head().seq + 1
        tx.prefetch(TRANSACTIONS, [documents.transaction_document_id(seq) for seq in range(first, first + len(keys))])

    # A malformed identifier names no document: answer None and let the operation refuse it
    # (InvalidArgument) instead of the store (whose id check would fail as a StoreError).
    def account(self, account_id: str) -> Account | None:
        if not ledger.IDENTIFIER_PATTERN.fullmatch(account_id):
            return None
        return self._load(ACCOUNTS, account_id, documents.account_from_xml)

    def hold(self, hold_id: str) -> Hold | None:
        if not ledger.IDENTIFIER_PATTERN.fullmatch(hold_id):
            return None
        doc_id = documents.numbered_document_id(hold_id)
        hold = (self._load(HOLDS_ACTIVE, doc_id, documents.hold_from_xml)
                or self._load(HOLDS_ENDED, doc_id, documents.hold_from_xml))
        return hold if hold is not None and hold.hold_id == hold_id else None

    def pending_mint(self, pending_mint_id: str) -> PendingMint | None:
        if not ledger.IDENTIFIER_PATTERN.fullmatch(pending_mint_id):
            return None
        doc_id = documents.numbered_document_id(pending_mint_id)
        pending = (self._load(PENDING_MINTS, doc_id, documents.pending_mint_from_xml)
                   or self._load(PENDING_MINTS_ENDED, doc_id, documents.pending_mint_from_xml))
        return pending if pending is not None and pending.pending_mint_id == pending_mint_id else None

    def money_supply(self) -> MoneySupply:
        return self._load(BANK, documents.MONEY_SUPPLY_ID, documents.money_supply_from_xml) or MoneySupply()

    def head(self) -> LedgerHead:
        return self._load(BANK, documents.LEDGER_HEAD_ID, documents.ledger_head_from_xml) or LedgerHead()

    def request_record(self, key: str) -> RequestRecord | None:
        return self._load(REQUESTS, key, documents.request_record_from_xml)

    def transaction(self, seq: int) -> Transaction | None:
        return self._load(TRANSACTIONS, documents.transaction_document_id(seq), documents.transaction_from_xml)


# ---------------------------------------------------------------------------------------------
# The Bank


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple
    next_offset: int | None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of a batch: its outcome (the new or, on a retry, the original transaction) or its refusal."""

    request: ledger.Request
    outcome: Outcome | None
    error: DomainError | StoreError | None


@dataclass(eq=False)
class _Waiting:
    """One request in the group commit — a single operation, or a batch of them (``batch``) — and its
    answer once its store transaction is done: one result per item, or the error of the whole."""

    requests: tuple[ledger.Request, ...]
    principal: Principal
    batch: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    results: list[ItemResult] | None = None
    error: BaseException | None = None
    leads: bool = False                  # this request's thread runs the batches (set under the lock)

    @property
    def answered(self) -> bool:
        return self.results is not None or self.error is not None


class _GroupCommit:
    """Requests of this process's threads applied together, one store transaction per batch.

    The embedded store and the BaseX journal fsync every commit and admit one writer at a time,
    so under load a bank of one transaction per request spends its time waiting for the disk.
    Here the first request to arrive leads: it takes every request waiting (up to
    GROUP_COMMIT_MAX requests of GROUP_COMMIT_ITEMS_MAX items in all, and always the first) and
    applies them in order in one store transaction, each seeing the ones before it (and a repeated
    request id answering the first). An ApplyBatch is one request of many items: all of them are
    in the same store transaction. Meanwhile new requests queue; when the leader's own request is
    answered it hands the lead to the oldest waiting one. A refused request (or item) is refused
    alone (the core refuses before it writes); a failed store transaction fails its whole batch,
    none of it applied. Nobody waits unboundedly: a request still queued after
    GROUP_COMMIT_WAIT_S is withdrawn, not applied.
    """

    def __init__(self, apply_batch: Callable[[list[_Waiting]], None]) -> None:
        self._apply_batch = apply_batch
        self._lock = threading.Lock()
        self._queue: deque[_Waiting] = deque()
        self._leading = False

    def submit(self, requests: tuple[ledger.Request, ...], principal: Principal, *, batch: bool) -> list[ItemResult]:
        waiting = _Waiting(requests, principal, batch)
        with self._lock:
            self._queue.append(waiting)
            if not self._leading:
                self._leading = waiting.leads = True
        while not (waiting.leads or waiting.answered):
            if not waiting.done.wait(GROUP_COMMIT_WAIT_S):
                with self._lock:
                    if not waiting.leads and waiting in self._queue:   # never taken into a batch: withdrawn
                        self._queue.remove(waiting)
                        raise StoreError(f"the bank's store was busy for {GROUP_COMMIT_WAIT_S:.0f} s; the request "
                                         f"was not applied")
        if not waiting.answered:
            self._lead(waiting)
        if waiting.error is not None:
            raise waiting.error
        return waiting.results

    def _take(self) -> list[_Waiting]:
        """The next batch: the oldest request, and those after it while the bounds allow (under the lock)."""
        batch = [self._queue.popleft()]
        items = len(batch[0].requests)
        while (self._queue and len(batch) < GROUP_COMMIT_MAX
               and items + len(self._queue[0].requests) <= GROUP_COMMIT_ITEMS_MAX):
            items += len(self._queue[0].requests)
            batch.append(self._queue.popleft())
        return batch

    def _lead(self, own: _Waiting) -> None:
        try:
            while not own.answered:
                with self._lock:
                    batch = self._take()
                try:
                    self._apply_batch(batch)
                except BaseException as error:  # noqa: BLE001 — the batch's transaction failed: none applied
                    for waiting in batch:
                        waiting.results, waiting.error = None, error
                for waiting in batch:
                    invariant(waiting.answered, "every request of a batch is answered")
                    if waiting is not own:
                        waiting.done.set()
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.leads = True
                    successor.done.set()
                else:
                    self._leading = False


class Bank:
    def __init__(self, store: XmlStore, key: LedgerKey, *, policy: BankPolicy = BankPolicy(),
                 clock: Callable[[], int] = now_us) -> None:
        self.store = store
        self.key = key
        self.policy = policy
        self._clock = clock
        self._group_commit = _GroupCommit(self._apply_batch)
        self._decoded = _Decoded()
        # the sweep's decoded expiries: collection -> doc_id -> (version, expires_at_us, object id)
        self._expiries: dict[str, dict[str, tuple[int, int, str]]] = {}

    # -- mutations -------------------------------------------------------------------------------
    def execute(self, request: ledger.Request, principal: Principal) -> Outcome:
        """Apply one mutating request atomically; a retry of a used request id answers the original.
        Durable when it returns (applied with whatever else waited for the store, see _GroupCommit)."""
        (result,) = self._group_commit.submit((request,), principal, batch=False)
        if result.error is not None:
            raise result.error
        return result.outcome

    def execute_batch(self, requests: Sequence[ledger.Request], principal: Principal) -> list[ItemResult]:
        """Apply a batch of requests (ApplyBatch, see ``ledger.check_batch``) in order, in one store
        transaction: one result per item, applied or refused alone. The whole batch is refused
        (DomainError) before anything is applied when it is empty, too large, carries an operation a
        batch does not, or one request id twice; a StoreError means none of it was applied. Durable
        when it returns."""
        requests = tuple(requests)
        ledger.check_batch(requests, principal)
        return self._group_commit.submit(requests, principal, batch=True)

    def _apply_batch(self, batch: list[_Waiting]) -> None:
        """Apply the requests in order in one store transaction; each item answered or refused."""

        def run(tx) -> list[list[ItemResult]]:
            view = _StoreView(tx, self._decoded)
            view.prefetch(batch)
            answers = []
            for waiting in batch:
                sign = None if waiting.batch else self.key.sign    # a batch: its last new transaction signed
                results = []
                last_new = None
                for request in waiting.requests:
                    try:
                        outcome = ledger.execute(view, request, principal=waiting.principal,
                                                 now_us=self._clock(), sign=sign, policy=self.policy)
                    except ConflictError:
                        raise                        # the store re-runs the whole batch
                    except (DomainError, StoreError) as refusal:   # refused, or a document it read is unreadable:
                        results.append(ItemResult(request, None, refusal))   # before it wrote anything: alone
                        continue
                    if not outcome.replayed:
                        view.write(outcome)
                        last_new = len(results)
                    results.append(ItemResult(request, outcome, None))
                if sign is None and last_new is not None:
                    last = results[last_new]
                    outcome = dataclasses.replace(last.outcome, transaction=ledger_chain.signed(
                        last.outcome.transaction, self.key.sign))
                    view.write(outcome)
                    results[last_new] = ItemResult(last.request, outcome, None)
                answers.append(results)
            return answers, view.flush()

        answers, written = self.store.transact(run)
        self._decoded.remember(written)                  # committed: these versions hold these states
        for waiting, results in zip(batch, answers, strict=True):
            waiting.results, waiting.error = results, None

    def expire_due(self, limit: int = SWEEP_BATCH_MAX) -> int:
        """One round of the expiry sweep: due holds, then due pending mints; how many it ended."""
        return self.expire_due_holds(limit) + self.expire_due_mints(limit)

    def expire_due_holds(self, limit: int = SWEEP_BATCH_MAX) -> int:
        """Expire active holds whose time has come; returns how many this call ended.

        Each expiry is its own ledger transaction with request id ``expire-<hold>``, so a sweep
        racing another (several workers) or a charge at the same instant ends the hold once:
        the loser is refused by the core and skipped.
        """
        return self._expire_due(HOLDS_ACTIVE, documents.hold_from_xml, ExpireHold,
                                operator.attrgetter("hold_id"), limit)

    def expire_due_mints(self, limit: int = SWEEP_BATCH_MAX) -> int:
        """Expire pending mints nobody approved in time, the same way (request id ``expire-<mint>``)."""
        return self._expire_due(PENDING_MINTS, documents.pending_mint_from_xml, ExpireMint,
                                operator.attrgetter("pending_mint_id"), limit)

    def _due(self, collection: str, parse, id_of, now_us: int, limit: int) -> list[str]:
        """The ids of at most ``limit`` due objects of the collection (in the order they were made).

        Read with ``scan_local`` — from the store's own record (the BaseX backend's mirror of its
        journal), not with a query — so the sweep runs on time while BaseX is down, stopped or
        catching up (a query waits for BaseX: holds expired minutes late during an outage, their
        funds still reserved). Each document is decoded once per version (``_expiries``)."""
        known = self._expiries.get(collection, {})
        seen: dict[str, tuple[int, int, str]] = {}
        due: list[str] = []
        after = None
        while True:
            page = self.store.scan_local(collection, after_id=after, limit=SWEEP_SCAN_PAGE)
            for document in page:
                entry = known.get(document.doc_id)
                if entry is None or entry[0] != document.version:
                    state = parse(document.xml)
                    entry = (document.version, state.expires_at_us, id_of(state))
                seen[document.doc_id] = entry
                if entry[1] <= now_us and len(due) < limit:
                    due.append(entry[2])
            if len(page) < SWEEP_SCAN_PAGE:
                break
            after = page[-1].doc_id
        self._expiries[collection] = seen
        return due

    def _expire_due(self, collection: str, parse, request_type, id_of, limit: int) -> int:
        sweeper = Principal(dn=EXPIRY_SWEEPER_DN, is_service=True)
        ended = 0
        for object_id in self._due(collection, parse, id_of, self._clock(), limit):
            try:
                outcome = self.execute(request_type(f"expire-{object_id}", object_id), sweeper)
            except DomainError as error:
                log.debug("%s not expired by the sweep: %s", object_id, error)
                continue
            if not outcome.replayed:
                ended += 1
                log.info("expired %s (%s credits)", object_id, outcome.transaction.amount)
        return ended

    # -- queries ---------------------------------------------------------------------------------
    def _stored_account(self, account_id: str) -> Account | None:
        document = self.store.get(ACCOUNTS, ledger.check_identifier(account_id, "account id"))
        return documents.account_from_xml(document.xml) if document else None

    def _account_for_viewing(self, account_id: str, principal: Principal, operation: str) -> Account:
        """The account ``operation`` shows; UnknownAccount, or NotAuthorized by the policy."""
        return ledger.viewed_account(self._stored_account(account_id), account_id, principal=principal,
                                     operation=operation)

    def balance(self, account_id: str, principal: Principal) -> Balance:
        return ledger.balance(self._stored_account(account_id), account_id, principal=principal)

    def account(self, account_id: str, principal: Principal) -> Account:
        return self._account_for_viewing(account_id, principal, "GetAccount")

    def hold(self, hold_id: str, principal: Principal) -> Hold:
        hold_id = ledger.check_identifier(hold_id, "hold id")
        doc_id = documents.numbered_document_id(hold_id)
        document = self.store.get(HOLDS_ACTIVE, doc_id) or self.store.get(HOLDS_ENDED, doc_id)
        hold = documents.hold_from_xml(document.xml) if document is not None else None
        if hold is None or hold.hold_id != hold_id:
            raise DomainError(f"there is no hold {hold_id}", "UnknownHold")
        account = ledger.require_account(self._stored_account(hold.account_id), hold.account_id)
        policy.authorize_view_hold(principal, hold, account)
        return hold

    def holds(self, account_id: str, principal: Principal, *, ended: bool = False, offset: int = 0,
              limit: int = 100) -> Page:
        self._account_for_viewing(account_id, principal, "ListHolds")
        page = self.store.query(HOLDS_ENDED if ended else HOLDS_ACTIVE, "/t:Hold[t:accountId = $account]",
                                {"account": account_id}, namespaces=NAMESPACES, offset=_offset(offset),
                                limit=_page_size(limit))
        return Page(tuple(documents.hold_from_xml(d.xml) for d in page.documents), page.next_offset)

    def history(self, account_id: str, principal: Principal, *, xpath_filter: str = "", variables: dict | None = None,
                offset: int = 0, limit: int = 100, time_limit_s: float = 5.0) -> Page:
        """Transactions touching the account, oldest first, optionally filtered by an XPath
        predicate over the transaction document (prefix ``t:``, camelCase element names; e.g.
        ``t:kind='charge' and t:amount > 100``)."""
        self._account_for_viewing(account_id, principal, "History")
        scope = ACCOUNT_TRANSACTIONS
        expression = scope if not xpath_filter.strip() else f"{scope}[boolean({checked_filter(xpath_filter)})]"
        bound = dict(variables or {})
        if "account" in bound:
            raise QueryError("the variable $account is reserved")
        bound["account"] = account_id
        page = self.store.query(TRANSACTIONS, expression, bound, namespaces=NAMESPACES, offset=_offset(offset),
                                limit=_page_size(limit), time_limit_s=min(time_limit_s, 10.0))
        return Page(tuple(documents.transaction_from_xml(d.xml) for d in page.documents), page.next_offset)

    def statement(self, account_id: str, principal: Principal, *, from_us: int, to_us: int,
                  transactions_max: int = 10_000) -> Statement:
        """Opening balance at ``from_us``, the transactions in [from_us, to_us), the closing balance."""
        self._account_for_viewing(account_id, principal, "Statement")
        if to_us <= from_us:
            raise DomainError("a statement period must end after it starts", "InvalidArgument")
        opening = closing = 0
        inside: list[Transaction] = []
        truncated = False
        for transaction in self._account_transactions(account_id):
            effect = balance_effect(transaction, account_id)
            if transaction.at_us < from_us:
                opening += effect
            if transaction.at_us < to_us:
                closing += effect
            if from_us <= transaction.at_us < to_us:
                if len(inside) < transactions_max:
                    inside.append(transaction)
                else:
                    truncated = True
        return Statement(account_id, from_us, to_us, opening, closing, tuple(inside), truncated)

    def _account_transactions(self, account_id: str) -> Iterator[Transaction]:
        offset = 0
        while True:
            page = self.store.query(TRANSACTIONS, ACCOUNT_TRANSACTIONS,
                                    {"account": account_id}, namespaces=NAMESPACES, offset=offset, limit=PAGE_SIZE_MAX,
                                    time_limit_s=30.0)
            for document in page.documents:
                yield documents.transaction_from_xml(document.xml)
            if page.next_offset is None:
                return
            offset = page.next_offset

    def pending_mints(self, *, ended: bool = False, offset: int = 0, limit: int = 100) -> Page:
        """Pending mints awaiting a second administrator (or those that ended), in the order of their
        ids. Whom to show them to is the policy's decision (``policy.authorize_oversight``), asked by
        the service before it calls this."""
        page = self.store.query(PENDING_MINTS_ENDED if ended else PENDING_MINTS, "/t:PendingMint", {},
                                namespaces=NAMESPACES, offset=_offset(offset), limit=_page_size(limit))
        return Page(tuple(documents.pending_mint_from_xml(d.xml) for d in page.documents), page.next_offset)

    def money_supply(self) -> MoneySupply:
        document = self.store.get(BANK, documents.MONEY_SUPPLY_ID)
        return documents.money_supply_from_xml(document.xml) if document else MoneySupply()

    def audit(self, *, signature_check_interval: int = 1000) -> AuditReport:
        """The online audit, while the bank runs (see ``audit_store``)."""
        return audit_store(self.store, self.key.public, signature_check_interval=signature_check_interval, live=True)


def balance_effect(transaction: Transaction, account_id: str) -> int:
    """How a transaction changed ``account_id``'s balance (holds change only what is held)."""
    kind = transaction.kind
    amount = transaction.amount or 0
    if kind is types.TransactionKind.MINT and transaction.account_id == account_id:
        return amount
    if kind is types.TransactionKind.RETIRE and transaction.account_id == account_id:
        return -amount
    if kind in (types.TransactionKind.TRANSFER, types.TransactionKind.CHARGE, types.TransactionKind.SETTLE):
        effect = 0
        if transaction.account_id == account_id:
            effect -= amount
        if transaction.counterparty_account_id == account_id:
            effect += amount
        return effect
    return 0


def checked_filter(expression: str) -> str:
    """A client's XPath predicate, checked to be one complete XPath 1.0 expression on its own.

    It is embedded as ``[boolean(…)]`` after the scope; an expression that compiles alone has
    balanced brackets and closed literals, so it cannot reach outside that predicate.
    """
    if len(expression) > FILTER_LENGTH_MAX:
        raise QueryError(f"the filter is {len(expression)} characters; at most {FILTER_LENGTH_MAX} are accepted")
    try:
        etree.XPath(expression, namespaces=NAMESPACES)
    except etree.XPathSyntaxError as error:
        raise QueryError(f"the filter is not a valid XPath expression: {error}") from None
    except etree.XPathEvalError as error:  # e.g. an unknown namespace prefix
        raise QueryError(f"the filter cannot be evaluated: {error}") from None
    if "(:" in expression:  # an XQuery comment would read differently on BaseX
        raise QueryError("the filter may not contain '(:'")
    return expression


def _page_size(limit: int) -> int:
    if not 1 <= limit <= PAGE_SIZE_MAX:
        raise DomainError(f"a page holds 1 to {PAGE_SIZE_MAX} items, not {limit}", "InvalidArgument")
    return limit


def _offset(offset: int) -> int:
    if offset < 0:
        raise DomainError("a page offset cannot be negative", "InvalidArgument")
    return offset


def audit_store(store: XmlStore, public_key: Ed25519PublicKey, *, signature_check_interval: int = 1000,
                live: bool = False, attempts: int = 10, helper_from: int = AUDIT_HELPER_FROM) -> AuditReport:
    """Verify the stored ledger: the chain, the signatures and the invariants (see ``audit.audit``).

    The store gives no snapshot across many reads, so the states are read between two readings of
    the ledger head and read again if a transaction committed meanwhile. ``live``: the bank may be
    running — transactions after the head read are not audited (they are still being written);
    offline (``live=False``) every stored transaction is, so one appended behind the head is found.
    A ledger of ``helper_from`` transactions or more is decoded and hashed by a helper process as
    well as by this one (see :class:`_AuditDecoding`); the report is the same either way.
    """
    def read_head() -> LedgerHead | None:
        document = store.get(BANK, documents.LEDGER_HEAD_ID)
        return documents.ledger_head_from_xml(document.xml) if document else None

    for _ in range(attempts):
        head = read_head()
        supply_document = store.get(BANK, documents.MONEY_SUPPLY_ID)
        accounts = [documents.account_from_xml(xml) for xml in _documents(store, ACCOUNTS)]
        hold_pages = [page for collection in (HOLDS_ACTIVE, HOLDS_ENDED) for page in _pages(store, collection)]
        pending_mints = [documents.pending_mint_from_xml(xml) for collection in (PENDING_MINTS, PENDING_MINTS_ENDED)
                         for xml in _documents(store, collection)]
        if read_head() == head:
            break
    else:
        raise StoreError("the ledger kept changing while the audit read it; audit again in a quieter moment")
    last_id = documents.transaction_document_id(head.seq if head else 0) if live else None
    decoding = _AuditDecoding(_pages(store, TRANSACTIONS, last_id=last_id), hold_pages,
                              helper=head is not None and head.seq >= helper_from)
    return audit.audit_rows(
        decoding.rows(), accounts, decoding.holds(),
        documents.money_supply_from_xml(supply_document.xml) if supply_document else MoneySupply(),
        signature_verifier(public_key), head=head, signature_check_interval=signature_check_interval,
        pending_mints=pending_mints,
    )


def _pages(store: XmlStore, collection: str, *, last_id: str | None = None) -> Iterator[list[bytes]]:
    """A collection's documents in id order, a page at a time (up to ``last_id``, if given)."""
    after_id = None
    while True:
        page = store.scan(collection, after_id=after_id, limit=AUDIT_PAGE_SIZE)
        wanted = [document.xml for document in page if last_id is None or document.doc_id <= last_id]
        if wanted:
            yield wanted
        if len(wanted) < len(page) or len(page) < AUDIT_PAGE_SIZE:
            return
        after_id = page[-1].doc_id


def _documents(store: XmlStore, collection: str) -> Iterator[bytes]:
    for page in _pages(store, collection):
        yield from page


def audit_rows_of_page(page: list[bytes]) -> tuple[list[audit.AuditRow], str | None]:
    """Decode and hash one page of transaction documents: the rows, and why it stopped early (a
    document that does not decode), if it did. Runs in the helper process or in this one."""
    rows = []
    for data in page:
        values = documents.flat_fields(data, Transaction)
        if values is None:      # not in the store's own form: the parser reads it, or refuses it
            try:
                values = ledger_chain.transaction_values(documents.transaction_from_xml(data))
            except StoreError as error:
                return rows, str(error)
        rows.append(audit.audit_row_of_values(values))
    return rows, None


_hold_values = operator.attrgetter(*(field.name for field in dataclasses.fields(Hold)))


def hold_values_of_page(page: list[bytes]) -> tuple[list[tuple], str | None]:
    """Decode one page of hold documents to their values (cheap to send between processes; a Hold
    is not), and why it stopped early, if it did."""
    holds = []
    for data in page:
        values = documents.flat_fields(data, Hold)
        if values is None:
            try:
                values = _hold_values(documents.hold_from_xml(data))
            except StoreError as error:
                return holds, str(error)
        holds.append(tuple(values))
    return holds, None


class _AuditDecoding:
    """The decoding of one audit: its transaction pages into rows in ledger order, and its hold
    pages into holds (read after the rows).

    Decoding and hashing cost about twice the replay, so with ``helper`` one helper process
    (spawned, never forked from a threaded server) decodes pages while this one replays: with each
    transaction page it is given, it is given a hold page too; whenever its oldest transaction page
    is not ready, this process decodes the next one itself, so the work splits by the speed of
    each. A document that does not decode ends the audit with its StoreError, exactly as without
    a helper. Bounded: pages read ahead, pages queued at the helper, the wait for each.
    """

    def __init__(self, transaction_pages: Iterator[list[bytes]], hold_pages: list[list[bytes]], *,
                 helper: bool) -> None:
        self._transaction_pages = transaction_pages
        self._hold_pages = deque(hold_pages)
        self._hold_results: list = []      # per hold page, in order: the helper's AsyncResult or (values, error)
        self._helper = helper
        self._rows_read = False

    def rows(self) -> Iterator[audit.AuditRow]:
        if not self._helper:
            for page in self._transaction_pages:
                yield from self._each(audit_rows_of_page(page))
            self._rows_read = True
            return
        pool = multiprocessing.get_context("spawn").Pool(processes=1)
        finished = False
        try:
            yield from self._rows_with(pool)
            while self._hold_pages:        # what is left of the holds: shared the same way
                if sum(1 for entry in self._hold_results if not isinstance(entry, tuple) and not entry.ready()) \
                        < AUDIT_HELPER_PAGES:
                    self._hold_results.append(pool.apply_async(hold_values_of_page, (self._hold_pages.popleft(),)))
                else:
                    self._hold_results.append(hold_values_of_page(self._hold_pages.popleft()))
            finished = True
        finally:
            if finished:
                pool.close()
            else:           # stopped early (a bad document, a failed replay): nothing more is wanted
                pool.terminate()
            pool.join()
        self._rows_read = True

    def _rows_with(self, pool) -> Iterator[audit.AuditRow]:
        pending: deque = deque()     # in ledger order: the helper's AsyncResult, or (rows, error) made here
        queued = 0                   # of them, at the helper
        exhausted = False
        while True:
            while not exhausted and queued < AUDIT_HELPER_PAGES and len(pending) < AUDIT_PAGES_AHEAD:
                page = next(self._transaction_pages, None)
                if page is None:
                    exhausted = True
                else:
                    pending.append(pool.apply_async(audit_rows_of_page, (page,)))
                    queued += 1
                    if self._hold_pages:
                        self._hold_results.append(pool.apply_async(hold_values_of_page,
                                                                   (self._hold_pages.popleft(),)))
            if not pending:
                return
            first = pending[0]
            if (not isinstance(first, tuple) and not first.ready() and not exhausted
                    and len(pending) < AUDIT_PAGES_AHEAD):
                page = next(self._transaction_pages, None)   # the helper is busy: decode the next page here
                if page is None:
                    exhausted = True
                else:
                    pending.append(audit_rows_of_page(page))
                continue
            pending.popleft()
            if not isinstance(first, tuple):
                queued -= 1
            yield from self._each(first)

    def holds(self) -> Iterator[Hold]:
        invariant(self._rows_read, "the holds are read after the rows")
        for entry in self._hold_results:
            for values in self._each(entry):
                yield Hold(*values)
        for page in self._hold_pages:      # without a helper: decoded now
            for values in self._each(hold_values_of_page(page)):
                yield Hold(*values)

    @staticmethod
    def _each(entry) -> Iterator:
        """A page's results (the helper's when it is an AsyncResult), then its StoreError if it has one."""
        if not isinstance(entry, tuple):
            try:
                entry = entry.get(timeout=AUDIT_HELPER_TIMEOUT_S)
            except multiprocessing.TimeoutError:
                raise StoreError(f"the audit's helper process decoded nothing for {AUDIT_HELPER_TIMEOUT_S:.0f} s; "
                                 f"audit again") from None
        results, error = entry
        yield from results
        if error is not None:
            raise StoreError(error)


def public_key_from_pem(data: bytes) -> Ed25519PublicKey:
    return serialization.load_pem_public_key(data)
