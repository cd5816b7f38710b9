"""The ledger's audit: the chain, the signatures and the invariants of a stored ledger, checked
by replaying its transactions.

:func:`audit` streams the transactions in stored order, recomputes every hash (one SHA-256
each, ``ledger_chain``) and verifies the bank's signatures at checkpoints (every
``signature_check_interval`` transactions and always the last), then, where a checkpoint
fails, every signature since the last good checkpoint to name the forged ones.
``signature_check_interval=1`` verifies them all (Ed25519 verify is ~90 µs here: 1,000,000
transactions would take 90 s; checkpoints keep audit well under 60 s). The transactions of a batch
(ApplyBatch) but its last are stored unsigned: the signature of the next signed transaction covers
them through the chain (``ledger_chain``), so only signed ones are checkpoints, and the last stored
transaction must be signed (else nothing covers the ones after the last signature: a finding). It replays the money
effects of each transaction and compares them with the stored documents (accounts, holds,
pending mints, the money supply, the ledger head, each account's service grants — their caps and
what each held in its period —, and who made each hold for whom).
Findings name what was edited, deleted,
reordered, inserted or forged; at most ``AUDIT_FINDINGS_MAX`` are listed.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import operator
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from gridcredit.errors import invariant

from .ledger_chain import TRANSACTION_FIELDS, canonical_bytes_of_values, signing_input, transaction_values
from .types import (GENESIS_HASH, Account, Hold, HoldState, LedgerHead, MoneySupply, PendingMint, PendingMintState,
                    Transaction, TransactionKind)

AUDIT_FINDINGS_MAX = 1000
AUDIT_HASH_WINDOW = 4096



@dataclass(frozen=True, slots=True)
class AuditFinding:
    kind: str            # edited, deleted, reordered, inserted, chain-broken, bad-signature, invariant
    seq: int | None
    message: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    transaction_count: int
    head: LedgerHead                     # of the last transaction read
    issued: int                          # recomputed from the transactions
    retired: int
    signatures_checked: int
    findings: tuple[AuditFinding, ...]
    findings_omitted: int                # beyond AUDIT_FINDINGS_MAX

    @property
    def clean(self) -> bool:
        return not self.findings and not self.findings_omitted

    def seqs(self, kind: str) -> set[int]:
        return {finding.seq for finding in self.findings if finding.kind == kind and finding.seq is not None}


class _Findings:
    def __init__(self) -> None:
        self.items: list[AuditFinding] = []
        self.omitted = 0

    def add(self, kind: str, seq: int | None, message: str) -> None:
        if len(self.items) < AUDIT_FINDINGS_MAX:
            self.items.append(AuditFinding(kind, seq, message))
        else:
            self.omitted += 1


def _verify(verify_signature: Callable[[bytes, bytes], bool], hash_hex: str, signature: str) -> bool:
    try:
        return bool(verify_signature(signing_input(hash_hex), base64.b64decode(signature, validate=True)))
    except Exception:  # a malformed signature or key error is a failed check, reported as such
        return False


class AuditRow(NamedTuple):
    """What the audit reads of one stored transaction, and the hash recomputed from all of it."""

    seq: int
    kind: TransactionKind
    at_us: int
    principal_dn: str
    account_id: str | None
    counterparty_account_id: str | None
    amount: int | None
    released_amount: int | None
    hold_id: str | None
    hold_amount: int | None
    hold_state: HoldState | None
    credit_limit: int | None
    pending_mint_id: str | None
    expires_at_us: int | None
    on_behalf_of_dn: str | None
    service_dn: str | None
    grant_hold_max: int | None
    grant_period_max: int | None
    grant_period_us: int | None
    prev_hash: str
    hash: str
    signature: str
    recomputed_hash: str


_row_values = operator.itemgetter(*(TRANSACTION_FIELDS.index(name) for name in AuditRow._fields[:-1]))


def audit_row(transaction: Transaction) -> AuditRow:
    return audit_row_of_values(transaction_values(transaction))


def audit_row_of_values(values) -> AuditRow:
    """The audit's row of the transaction with these values (in field order)."""
    return AuditRow(*_row_values(values), hashlib.sha256(canonical_bytes_of_values(values)).hexdigest())


def _replay_mint_end(findings: _Findings, mint_replay: dict[str, list], transaction: AuditRow,
                     state: PendingMintState) -> None:
    """One end of a pending mint, as the audit replays it: once, by the kind its expiry allows."""
    seq, pending_mint_id = transaction.seq, transaction.pending_mint_id
    replay = mint_replay.get(pending_mint_id)
    if replay is None or replay[3] is not PendingMintState.PENDING:
        earlier = "was never requested" if replay is None else f"ended in transaction {replay[4]}"
        findings.add("invariant", seq, f"transaction {seq}: ends pending mint {pending_mint_id} again (it {earlier})")
        return
    if state is PendingMintState.APPROVED and transaction.kind is not replay[5]:
        findings.add("invariant", seq, f"transaction {seq}: a {transaction.kind.value} approves pending "
                                       f"{pending_mint_id}, which asked for a {replay[5].value}")
    if (transaction.account_id, transaction.amount) != (replay[0], replay[1]):
        findings.add("invariant", seq, f"transaction {seq}: ends pending mint {pending_mint_id} with "
                                       f"{transaction.amount} for {transaction.account_id}; it was requested "
                                       f"with {replay[1]} for {replay[0]}")
    expires_at_us = replay[2]
    if expires_at_us is not None and (transaction.at_us >= expires_at_us) != (state is PendingMintState.EXPIRED):
        findings.add("invariant", seq, f"transaction {seq}: {state.value} pending mint {pending_mint_id} at "
                                       f"{transaction.at_us} µs; it expires at {expires_at_us} µs")
    replay[3], replay[4] = state, seq


def _replay_grant(grant_replay: dict[str, dict[str, list]], transaction: AuditRow) -> None:
    """A grant-service transaction, as the ledger applies it: new caps; the period's count kept when the
    period stays the same."""
    grants = grant_replay.setdefault(transaction.account_id, {})
    previous = grants.get(transaction.service_dn)
    period_us = transaction.grant_period_us
    if previous is not None and period_us is not None and period_us == previous[2]:
        index, held = previous[3], previous[4]
    else:
        index, held = (transaction.at_us // period_us if period_us else 0), 0
    grants[transaction.service_dn] = [transaction.grant_hold_max, transaction.grant_period_max, period_us, index, held]


def _replay_hold_under_grant(findings: _Findings, grant_replay: dict[str, dict[str, list]], transaction: AuditRow,
                             service_dn: str, increase: int) -> None:
    """A hold (or a raise) a service made under its grant: within its caps, counted in its period."""
    seq = transaction.seq
    grant = grant_replay.get(transaction.account_id, {}).get(service_dn)
    if grant is None:
        findings.add("invariant", seq, f"transaction {seq}: {service_dn} holds on account {transaction.account_id} "
                                       f"for {transaction.on_behalf_of_dn} without a grant")
        return
    hold_max, period_max, period_us, index, held = grant
    if hold_max is not None and (transaction.hold_amount or 0) > hold_max:
        findings.add("invariant", seq, f"transaction {seq}: hold {transaction.hold_id} of {transaction.hold_amount} "
                                       f"exceeds its grant's {hold_max} per hold")
    if period_max is None or period_us is None:
        return
    held = held if transaction.at_us // period_us == index else 0
    if held + increase > period_max:
        findings.add("invariant", seq, f"transaction {seq}: holds {held + increase} in its grant's period; the grant "
                                       f"allows {period_max}")
    grant[3], grant[4] = transaction.at_us // period_us, held + increase


def audit(transactions: Iterable[Transaction], accounts: Iterable[Account], holds: Iterable[Hold],
          supply: MoneySupply, verify_signature: Callable[[bytes, bytes], bool], *,
          head: LedgerHead | None = None, signature_check_interval: int = 1000,
          pending_mints: Iterable[PendingMint] | None = None) -> AuditReport:
    """Stream the transactions in stored order; check the chain, signatures and invariants.

    ``verify_signature(message, signature) -> bool``. ``head``, if given, is the stored ledger
    head, which must name the last transaction (detects deleting the tail). ``pending_mints``, if
    given, are the stored pending mints, compared with their replay (each ends exactly once:
    approved before its expiry, cancelled before it, or expired at or after it).
    """
    return audit_rows(map(audit_row, transactions), accounts, holds, supply, verify_signature, head=head,
                      signature_check_interval=signature_check_interval, pending_mints=pending_mints)


def audit_rows(rows: Iterable[AuditRow], accounts: Iterable[Account], holds: Iterable[Hold],
               supply: MoneySupply, verify_signature: Callable[[bytes, bytes], bool], *,
               head: LedgerHead | None = None, signature_check_interval: int = 1000,
               pending_mints: Iterable[PendingMint] | None = None) -> AuditReport:
    """:func:`audit` of transactions already read as rows (decoded and hashed elsewhere, e.g. by a
    helper process while this one replays)."""
    invariant(signature_check_interval >= 1, "signature check interval is positive")
    findings = _Findings()
    kinds = TransactionKind
    expected_seq = 1
    hash_by_seq: dict[int, tuple[str, str, str]] = {}  # recent window: seq → (hash, prev_hash, signature)
    window = collections.deque()                # its seqs, oldest first (each seq enters it once)
    missing: set[int] = set()
    seen_high = 0
    unchecked: list[tuple[int, str, str]] = []  # since the last good signature checkpoint
    signatures_checked = 0
    count = 0
    last: AuditRow | None = None
    balances: dict[str, int] = {}
    held: dict[str, int] = {}
    credit_limits: dict[str, int] = {}
    hold_replay: dict[str, list] = {}           # hold_id → [account_id, amount, charged, state, ended_seq]
    grant_replay: dict[str, dict[str, list]] = {}    # account_id → service DN → [hold max, period max, period,
                                                     #                            period index, held in period]
    hold_parties: dict[str, tuple[str, str | None]] = {}   # hold_id → (its creator, for whom)
    mint_replay: dict[str, list] = {}           # pending_mint_id → [account_id, amount, expires_at_us, state,
                                                #                   ended_seq]
    issued = retired = 0

    def check_signatures() -> None:
        nonlocal signatures_checked
        seq, digest, signature = unchecked[-1]
        signatures_checked += 1
        if not _verify(verify_signature, digest, signature):
            for earlier_seq, earlier_digest, earlier_signature in unchecked:
                signatures_checked += 1
                if not _verify(verify_signature, earlier_digest, earlier_signature):
                    findings.add("bad-signature", earlier_seq,
                                 f"transaction {earlier_seq}: the bank's signature does not verify "
                                 f"(forged, or edited with its hash recomputed)")
        unchecked.clear()

    def blame_signatures(previous_seq: int, previous: tuple[str, str, str], seq: int,
                         transaction: AuditRow) -> None:
        """At a chain break, check both sides' signatures now to name the edited one (a batch's unsigned
        transaction has none to check: the chain names it)."""
        nonlocal signatures_checked
        if previous_seq >= 1 and previous[2]:
            signatures_checked += 1
            if not _verify(verify_signature, previous[0], previous[2]):
                findings.add("bad-signature", previous_seq,
                             f"transaction {previous_seq}: the bank's signature does not verify "
                             f"(edited with its hash recomputed)")
        if transaction.signature:
            signatures_checked += 1
            if not _verify(verify_signature, transaction.hash, transaction.signature):
                findings.add("bad-signature", seq, f"transaction {seq}: the bank's signature does not verify")

    for transaction in rows:
        count += 1
        seq = transaction.seq
        if transaction.recomputed_hash != transaction.hash:
            findings.add("edited", seq, f"transaction {seq}: its content does not match its hash (edited)")
        duplicate = False
        if seq > expected_seq:
            if seq - expected_seq <= AUDIT_HASH_WINDOW:
                missing.update(range(expected_seq, seq))
            else:
                findings.add("deleted", expected_seq, f"transactions {expected_seq}..{seq - 1} are missing")
        elif seq < expected_seq:
            if seq in missing:
                missing.discard(seq)
                findings.add("reordered", seq, f"transaction {seq} is stored after transaction {seen_high}")
            else:
                duplicate = True
                findings.add("inserted", seq, f"transaction {seq} appears more than once (a copy was inserted)")
                if transaction.signature:
                    signatures_checked += 1
                    if not _verify(verify_signature, transaction.hash, transaction.signature):
                        findings.add("bad-signature", seq, f"transaction {seq}: the inserted copy is not signed "
                                                           f"by the bank")
        previous = hash_by_seq.get(seq - 1) if seq > 1 else (GENESIS_HASH, "", "")
        if previous is not None and transaction.prev_hash != previous[0]:
            findings.add("chain-broken", seq,
                         f"transaction {seq}: its previous hash does not match transaction {seq - 1} "
                         f"(transaction {seq - 1} was edited or replaced, or {seq} was inserted)")
            blame_signatures(seq - 1, previous, seq, transaction)
        follower = hash_by_seq.get(seq + 1)
        if follower is not None and follower[1] != transaction.hash:
            findings.add("chain-broken", seq + 1,
                         f"transaction {seq + 1}: its previous hash does not match transaction {seq}")
        if not duplicate:
            hash_by_seq[seq] = (transaction.hash, transaction.prev_hash, transaction.signature)
            window.append(seq)
            if len(window) > AUDIT_HASH_WINDOW:
                del hash_by_seq[window.popleft()]
        if seq > seen_high:
            seen_high = seq
        if seq >= expected_seq:
            expected_seq = seq + 1
        if transaction.signature:           # else covered by the next signed one (a batch's, see above)
            unchecked.append((seq, transaction.hash, transaction.signature))
        if count % signature_check_interval == 0 and unchecked:
            check_signatures()
        last = transaction

        # Replay the money effects.
        kind = transaction.kind
        account_id = transaction.account_id
        amount = transaction.amount or 0
        if kind is kinds.CREATE_ACCOUNT:
            if account_id in balances:
                findings.add("invariant", seq, f"transaction {seq}: account {account_id} created twice")
            balances[account_id] = 0
            held[account_id] = 0
            credit_limits[account_id] = transaction.credit_limit or 0
            continue
        if account_id is not None and account_id not in balances:
            findings.add("invariant", seq, f"transaction {seq}: names account {account_id}, never created")
            balances[account_id] = held[account_id] = credit_limits[account_id] = 0
        if kind is kinds.SET_CREDIT_LIMIT:
            credit_limits[account_id] = transaction.credit_limit
        elif kind is kinds.GRANT_SERVICE:
            _replay_grant(grant_replay, transaction)
        elif kind is kinds.REVOKE_SERVICE:
            if grant_replay.get(account_id, {}).pop(transaction.service_dn, None) is None:
                findings.add("invariant", seq, f"transaction {seq}: revokes the grant of account {account_id} to "
                                               f"{transaction.service_dn}, which it did not hold")
        elif kind is kinds.MINT:
            balances[account_id] += amount
            issued += amount
            if transaction.pending_mint_id is not None:
                _replay_mint_end(findings, mint_replay, transaction, PendingMintState.APPROVED)
        elif kind is kinds.MINT_REQUEST or kind is kinds.RETIRE_REQUEST:
            if transaction.pending_mint_id in mint_replay:
                findings.add("invariant", seq, f"transaction {seq}: pending mint {transaction.pending_mint_id} "
                                               f"requested twice")
            mint_replay[transaction.pending_mint_id] = [account_id, amount, transaction.expires_at_us,
                                                        PendingMintState.PENDING, None,
                                                        kinds.MINT if kind is kinds.MINT_REQUEST else kinds.RETIRE]
        elif kind is kinds.MINT_CANCEL:
            _replay_mint_end(findings, mint_replay, transaction, PendingMintState.CANCELLED)
        elif kind is kinds.MINT_EXPIRE:
            _replay_mint_end(findings, mint_replay, transaction, PendingMintState.EXPIRED)
        elif kind is kinds.RETIRE:
            balances[account_id] -= amount
            retired += amount
            if transaction.pending_mint_id is not None:
                _replay_mint_end(findings, mint_replay, transaction, PendingMintState.APPROVED)
        elif kind is kinds.TRANSFER or kind is kinds.CHARGE:
            payee = transaction.counterparty_account_id
            if payee not in balances:
                findings.add("invariant", seq, f"transaction {seq}: pays account {payee}, never created")
                balances[payee] = held[payee] = credit_limits[payee] = 0
            balances[account_id] -= amount
            balances[payee] += amount
            if kind is kinds.CHARGE:
                held[account_id] -= amount
                replay = hold_replay.get(transaction.hold_id)
                if replay is None or replay[3] is not HoldState.ACTIVE:
                    findings.add("invariant", seq, f"transaction {seq}: charges hold {transaction.hold_id}, "
                                                   f"which is not active")
                else:
                    replay[2] += amount
                    if replay[2] > replay[1]:
                        findings.add("invariant", seq, f"transaction {seq}: hold {transaction.hold_id} is "
                                                       f"charged {replay[2]}, more than its {replay[1]}")
                    if transaction.hold_state is HoldState.CHARGED_OUT:
                        replay[3], replay[4] = HoldState.CHARGED_OUT, seq
        elif kind is kinds.SETTLE:
            payee = transaction.counterparty_account_id
            if payee not in balances:
                findings.add("invariant", seq, f"transaction {seq}: pays account {payee}, never created")
                balances[payee] = held[payee] = credit_limits[payee] = 0
            released = transaction.released_amount or 0
            balances[account_id] -= amount
            balances[payee] += amount
            held[account_id] -= amount + released
            replay = hold_replay.get(transaction.hold_id)
            if replay is None or replay[3] is not HoldState.ACTIVE:
                findings.add("invariant", seq, f"transaction {seq}: settles hold {transaction.hold_id}, which is "
                                               f"not active (it ended in transaction {replay[4] if replay else None})")
            else:
                if amount + released != replay[1] - replay[2] or released < 0:
                    findings.add("invariant", seq, f"transaction {seq}: settles hold {transaction.hold_id} with "
                                                   f"{amount} charged and {released} returned; its remainder is "
                                                   f"{replay[1] - replay[2]}")
                replay[2] += amount
                replay[3], replay[4] = HoldState.SETTLED, seq
        elif kind is kinds.HOLD:
            held[account_id] += amount
            if transaction.hold_id in hold_replay:
                findings.add("invariant", seq, f"transaction {seq}: hold {transaction.hold_id} created twice")
            hold_replay[transaction.hold_id] = [account_id, amount, 0, HoldState.ACTIVE, None]
            for_dn = transaction.on_behalf_of_dn     # DNs interned: a few callers make millions of holds
            hold_parties[transaction.hold_id] = (sys.intern(transaction.principal_dn),
                                                 None if for_dn is None else sys.intern(for_dn))
            if transaction.on_behalf_of_dn is not None:
                _replay_hold_under_grant(findings, grant_replay, transaction, transaction.principal_dn, amount)
        elif kind is kinds.EXTEND:
            held[account_id] += amount
            replay = hold_replay.get(transaction.hold_id)
            if replay is None or replay[3] is not HoldState.ACTIVE:
                findings.add("invariant", seq, f"transaction {seq}: extends hold {transaction.hold_id}, "
                                               f"which is not active")
            else:
                replay[1] += amount
                creator, for_dn = hold_parties.get(transaction.hold_id, (None, None))
                if for_dn is not None and amount and transaction.principal_dn == creator:
                    _replay_hold_under_grant(findings, grant_replay, transaction, creator, amount)
        elif kind is kinds.RELEASE or kind is kinds.EXPIRE:
            held[account_id] -= amount
            replay = hold_replay.get(transaction.hold_id)
            if replay is None or replay[3] is not HoldState.ACTIVE:
                findings.add("invariant", seq, f"transaction {seq}: ends hold {transaction.hold_id} again "
                                               f"(it ended in transaction {replay[4] if replay else None})")
            else:
                if amount != replay[1] - replay[2]:
                    findings.add("invariant", seq, f"transaction {seq}: returns {amount} from hold "
                                                   f"{transaction.hold_id}, whose remainder is {replay[1] - replay[2]}")
                replay[3], replay[4] = transaction.hold_state, seq
        if account_id is not None and held[account_id] > balances[account_id] + credit_limits[account_id]:
            findings.add("invariant", seq, f"transaction {seq}: account {account_id} holds {held[account_id]}, "
                                           f"more than balance {balances[account_id]} + credit limit "
                                           f"{credit_limits[account_id]}")

    if unchecked:
        check_signatures()
    if last is not None and not last.signature:
        findings.add("bad-signature", last.seq,
                     f"transaction {last.seq}: the last transaction carries no signature, so none covers it (the "
                     f"bank signs the last transaction of every batch: transactions were appended, or a "
                     f"signature removed)")
    for seq in sorted(missing):
        findings.add("deleted", seq, f"transaction {seq} is missing (deleted)")
    if head is not None and (last is None or head.seq != last.seq or head.hash != last.hash):
        findings.add("deleted", (last.seq + 1) if last else 1,
                     f"the ledger head names transaction {head.seq}, but the last stored is "
                     f"{last.seq if last else 'none'} (transactions at the end deleted or replaced)")

    # Invariants over the stored documents, against the replay.
    if supply.issued != issued or supply.retired != retired:
        findings.add("invariant", None, f"the money supply document says issued {supply.issued}, retired "
                                        f"{supply.retired}; the transactions say {issued} and {retired}")
    stored_total = 0
    held_by_holds: dict[str, int] = {}
    for hold in holds:
        replay = hold_replay.pop(hold.hold_id, None)
        parties = hold_parties.get(hold.hold_id)
        if parties is not None and parties != (hold.creator_dn, hold.on_behalf_of_dn):
            findings.add("invariant", None, f"hold {hold.hold_id} says it was made by {hold.creator_dn} for "
                                            f"{hold.on_behalf_of_dn}; its transaction says by {parties[0]} for "
                                            f"{parties[1]}")
        if hold.charged > hold.amount or hold.charged < 0:
            findings.add("invariant", None, f"hold {hold.hold_id} is charged {hold.charged} of {hold.amount}")
        if hold.state is HoldState.ACTIVE:
            held_by_holds[hold.account_id] = held_by_holds.get(hold.account_id, 0) + hold.remaining
        if replay is None:
            findings.add("invariant", None, f"hold {hold.hold_id} has no transaction that created it")
        elif (replay[0], replay[1], replay[2], replay[3], replay[4]) != (
                hold.account_id, hold.amount, hold.charged, hold.state, hold.ended_seq):
            findings.add("invariant", None, f"hold {hold.hold_id} differs from its transactions: stored "
                                            f"amount {hold.amount}, charged {hold.charged}, {hold.state.value}, "
                                            f"ended in {hold.ended_seq}; replayed {replay[1]}, {replay[2]}, "
                                            f"{replay[3].value}, ended in {replay[4]}")
    for hold_id in sorted(hold_replay):
        findings.add("invariant", None, f"hold {hold_id} is in the transactions but has no document")
    if pending_mints is not None:
        for pending in pending_mints:
            replay = mint_replay.pop(pending.pending_mint_id, None)
            if replay is None:
                findings.add("invariant", None, f"pending mint {pending.pending_mint_id} has no transaction that "
                                                f"requested it")
            elif (replay[0], replay[1], replay[2], replay[3], replay[4]) != (
                    pending.account_id, pending.amount, pending.expires_at_us, pending.state, pending.ended_seq):
                findings.add("invariant", None, f"pending mint {pending.pending_mint_id} differs from its "
                                                f"transactions: stored {pending.amount} for {pending.account_id}, "
                                                f"{pending.state.value}, ended in {pending.ended_seq}; replayed "
                                                f"{replay[1]} for {replay[0]}, {replay[3].value}, ended in {replay[4]}")
        for pending_mint_id in sorted(mint_replay):
            findings.add("invariant", None, f"pending mint {pending_mint_id} is in the transactions but has no "
                                            f"document")
    for account in accounts:
        stored_total += account.balance
        account_id = account.account_id
        if account.held > account.balance + account.credit_limit:
            findings.add("invariant", None, f"account {account_id} holds {account.held}, more than balance "
                                            f"{account.balance} + credit limit {account.credit_limit}")
        if held_by_holds.get(account_id, 0) != account.held:
            findings.add("invariant", None, f"account {account_id} says {account.held} held; its active "
                                            f"holds add up to {held_by_holds.get(account_id, 0)}")
        stored_grants = {grant.service_dn: [grant.hold_max, grant.period_max, grant.period_us, grant.period_index,
                                            grant.held_in_period] for grant in account.grants}
        if stored_grants != grant_replay.get(account_id, {}):
            findings.add("invariant", None, f"account {account_id}'s service grants differ from its transactions: "
                                            f"stored {sorted(stored_grants.items())}, replayed "
                                            f"{sorted(grant_replay.get(account_id, {}).items())}")
        if account_id not in balances:
            findings.add("invariant", None, f"account {account_id} has no transaction that created it")
            continue
        if (balances.pop(account_id), held.pop(account_id), credit_limits.pop(account_id)) != (
                account.balance, account.held, account.credit_limit):
            findings.add("invariant", None, f"account {account_id} differs from its transactions "
                                            f"(balance, held or credit limit edited)")
    for account_id in sorted(balances):
        findings.add("invariant", None, f"account {account_id} is in the transactions but has no document")
    if stored_total != supply.issued - supply.retired:
        findings.add("invariant", None, f"the balances add up to {stored_total}; issued − retired is "
                                        f"{supply.issued - supply.retired}")
    return AuditReport(transaction_count=count,
                       head=LedgerHead(last.seq, last.hash) if last is not None else LedgerHead(),
                       issued=issued, retired=retired, signatures_checked=signatures_checked,
                       findings=tuple(findings.items), findings_omitted=findings.omitted)

