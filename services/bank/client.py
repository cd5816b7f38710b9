"""The typed Bank client: one method per SOAP operation, plain frozen results, safe retries.

    bank = BankClient("https://bank.example.org:8443", credential=load_credential(), trust_dir=trust_directory())
    bank.mint("vo-atlas", 1_000_000)                       # Receipt(transaction=Transaction(...), replayed=False)
    hold = bank.create_hold("vo-atlas", amount=500, expires=timedelta(hours=2), reference="job 7")
    bank.charge_hold(hold.transaction.hold_id, payee_account_id="site-x", amount=120)
    bank.settle_hold(hold.transaction.hold_id, payee_account_id="site-x", amount=200)   # the rest released
    site = bank.as_credential(site_credential)             # the same client signing as another credential

Retries follow the one rule of :class:`gridcredit.client.ServiceClient`. Every mutating method
sends a client request id (``request_id=``, or a fresh ``gc-<uuid4>``). When an attempt ends
without an answer — the connection failed or was reset, the reply timed out, a gateway answered
502/503/504 — the outcome is unknown, so the method sends the *identical* request again under the
*same* request id (at most ``retries`` more times, with exponential backoff): the bank answers a
request id it has seen with the original transaction (``replayed=True``) and applies nothing
twice. Refusals (:class:`RemoteFault`) and security failures are answers and are never retried.
When every attempt failed after the request may have reached the bank, :class:`OutcomeUnknown`
names the request id to repeat. Queries retry the same way. The WSDL is the checked-in
``wsdl/bank.wsdl``: nothing is fetched before the first call.

Times on the wire are integer microseconds since the epoch (fields ending ``_us``); use
:func:`gridcredit.timeunits.datetime_from_us` to read them.

Exceptions (all :class:`GridcreditError`)::

    GridcreditError                 "cannot reach …" after the last attempt of a query
    ├── RemoteFault                 the bank refused (``.code``: InsufficientFunds, NotAuthorized, …)
    ├── SecurityError               the answer failed verification (not retried)
    └── ClientError
        ├── InvalidRequest          refused here, before sending (bad request id, naive datetime…)
        └── OutcomeUnknown          no answer to a mutating request; ``.request_id`` to repeat it
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from gridcredit.client import RETRIES_DEFAULT, RETRIES_MAX, Effect, InvalidRequest, OutcomeUnknown, ServiceClient
from gridcredit.timeunits import datetime_from_us
from gridcredit.wiretypes import array_items, from_wire, text_mirror

from . import ledger
from .ledger import REQUEST_ID_PATTERN
from .types import BatchItemResult

__all__ = ["BankClient", "BatchItemResult", "BatchResult", "InvalidRequest", "OutcomeUnknown", "RETRIES_DEFAULT",
           "RETRIES_MAX", "Receipt", "expiry", "new_request_id", "audit_report_of", "datetime_from_us"]


# ---------------------------------------------------------------------------------------------
# Results: plain frozen dataclasses mirroring the WSDL types (money int, times µs since the epoch).
# The ledger's own types where the wire carries them as they are (Balance, AuditFinding,
# Statement); where the ledger has enums, a mirror with the same fields holding their text.


Transaction = text_mirror(ledger.Transaction, __name__)
Hold = text_mirror(ledger.Hold, __name__)
PendingMint = text_mirror(ledger.PendingMint, __name__)      # state: pending, approved, cancelled or expired
Holder = text_mirror(ledger.Holder, __name__)
Balance = ledger.Balance
AuditFinding = ledger.AuditFinding
Statement = ledger.Statement                   # its transactions: the client's Transaction


@dataclass(frozen=True, slots=True)
class Receipt:
    """The answer to a mutating operation; ``replayed``: the bank had applied this request id before."""

    transaction: Transaction
    replayed: bool


@dataclass(frozen=True, slots=True)
class Grant:
    """A service grant on an account (``None``: no such cap); ``held_in_period`` counts the holds made
    under it in the current period."""

    service_dn: str
    hold_max: int | None
    period_max: int | None
    period_us: int | None
    held_in_period: int
    granted_at_us: int


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    project: str
    status: str
    balance: int
    held: int
    available: int
    credit_limit: int
    spending_limit: int | None
    spending_period_us: int | None
    spent_in_period: int
    created_at_us: int
    holders: tuple[Holder, ...]
    grants: tuple[Grant, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingMintPage:
    pending_mints: tuple[PendingMint, ...]
    next_offset: int | None


@dataclass(frozen=True, slots=True)
class HoldPage:
    holds: tuple[Hold, ...]
    next_offset: int | None


@dataclass(frozen=True, slots=True)
class TransactionPage:
    transactions: tuple[Transaction, ...]
    next_offset: int | None


@dataclass(frozen=True, slots=True)
class MoneySupply:
    issued: int
    retired: int
    outstanding: int


@dataclass(frozen=True, slots=True)
class AuditReport:
    clean: bool
    transaction_count: int
    head_seq: int
    head_hash: str
    issued: int
    retired: int
    signatures_checked: int
    findings: tuple[AuditFinding, ...]
    findings_omitted: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The answer to :meth:`BankClient.apply_batch`: a result per item in order, and how many were applied
    now, answered from before (``replayed``) and refused."""

    results: tuple[BatchItemResult, ...]
    applied: int
    replayed: int
    refused: int


# ---------------------------------------------------------------------------------------------
# Converting zeep's objects


def _transaction(value) -> Transaction:
    return from_wire(Transaction, value)


def _receipt(value) -> Receipt:
    return Receipt(transaction=_transaction(value.transaction), replayed=bool(value.replayed))


def _hold(value) -> Hold:
    return from_wire(Hold, value)


def _transactions(value) -> tuple[Transaction, ...]:
    return tuple(_transaction(item) for item in array_items(value, "TransactionInfo"))


# ---------------------------------------------------------------------------------------------
# Times and request ids (µs <-> datetime: gridcredit.timeunits)


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        raise InvalidRequest(f"{what} must be a timezone-aware datetime, not {moment.isoformat()} (naive)")
    return moment.astimezone(timezone.utc)


def expiry(expires: datetime | timedelta | int | float, *, now: Callable[[], datetime] | None = None) -> datetime:
    """An absolute expiry in UTC from an aware datetime, a timedelta or seconds from now."""
    if isinstance(expires, datetime):
        return _aware(expires, "expires")
    if isinstance(expires, bool) or not isinstance(expires, (timedelta, int, float)):
        raise InvalidRequest(f"expires must be a datetime, a timedelta or seconds from now, not {expires!r}")
    delta = expires if isinstance(expires, timedelta) else timedelta(seconds=expires)
    return (now or (lambda: datetime.now(timezone.utc)))() + delta


def new_request_id() -> str:
    """A fresh client request id: ``gc-`` and 32 hex digits of a uuid4 (fits the ledger's pattern)."""
    return f"gc-{uuid.uuid4().hex}"


def _checked_request_id(request_id: str | None) -> str:
    if request_id is None:
        return new_request_id()
    if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise InvalidRequest(f"request id {request_id!r} must match {REQUEST_ID_PATTERN.pattern}")
    return request_id


def _checked_amount(value, what: str) -> int:
    # bool is an int in Python; the bank wants whole credits, and says so for the range
    if type(value) is not int:
        raise InvalidRequest(f"{what} must be an int number of credits, not {value!r}")
    return value


_BATCH_ITEM_FIELDS = {ledger.ChargeHold: ("hold_id", "payee_account_id", "amount"),
                      ledger.SettleHold: ("hold_id", "payee_account_id", "amount"),
                      ledger.ReleaseHold: ("hold_id",),
                      ledger.Transfer: ("from_account_id", "to_account_id", "amount"),
                      ledger.ExtendHold: ("hold_id", "expires_at_us", "amount", "payee_account_id")}


def _batch_item(number: int, item) -> dict:
    """A ledger request as the wire's BatchItem (``expires_at_us`` as the ``expires`` dateTime)."""
    names = _BATCH_ITEM_FIELDS.get(type(item))
    if names is None:
        raise InvalidRequest(f"item {number} of a batch is {item!r}; a batch carries ledger "
                             f"{', '.join(kind.__name__ for kind in _BATCH_ITEM_FIELDS)} requests")
    wire = {"operation": type(item).__name__, "request_id": _checked_request_id(item.request_id)}
    for name in names:
        value = getattr(item, name)
        if name == "expires_at_us":
            wire["expires"] = None if value is None else datetime_from_us(value)
        elif name == "amount" and value is not None:
            wire[name] = _checked_amount(value, f"item {number}'s amount")
        else:
            wire[name] = value
    return wire


class BankClient(ServiceClient):
    """The Bank's SOAP operations as typed methods (see the module docstring for retries)."""

    SERVICE = "bank"

    def _query(self, operation: str, **arguments):
        return self.invoke(operation, arguments)

    def _mutate(self, operation: str, request_id: str | None, **arguments) -> Receipt:
        request_id = _checked_request_id(request_id)
        return _receipt(self.invoke(operation, {"request_id": request_id, **arguments}, effect=Effect.ONCE_PER_KEY,
                                    request_id=request_id))

    # -- accounts ----------------------------------------------------------------------------------
    def create_account(self, account_id: str, *, project: str, owner_dn: str, credit_limit: int | None = None,
                       request_id: str | None = None) -> Receipt:
        if credit_limit is not None:
            _checked_amount(credit_limit, "credit limit")
        return self._mutate("CreateAccount", request_id, account_id=account_id, project=project, owner_dn=owner_dn,
                            credit_limit=credit_limit)

    def set_holder(self, account_id: str, *, holder_dn: str, role: str, request_id: str | None = None) -> Receipt:
        """Add a holder or change its role (owner, manager, member, viewer)."""
        return self._mutate("SetHolder", request_id, account_id=account_id, holder_dn=holder_dn, role=role)

    def remove_holder(self, account_id: str, *, holder_dn: str, request_id: str | None = None) -> Receipt:
        return self._mutate("RemoveHolder", request_id, account_id=account_id, holder_dn=holder_dn)

    def set_status(self, account_id: str, *, status: str, request_id: str | None = None) -> Receipt:
        """open, frozen or closed."""
        return self._mutate("SetStatus", request_id, account_id=account_id, status=status)

    def set_credit_limit(self, account_id: str, *, credit_limit: int, request_id: str | None = None) -> Receipt:
        return self._mutate("SetCreditLimit", request_id, account_id=account_id,
                            credit_limit=_checked_amount(credit_limit, "credit limit"))

    def set_spending_limit(self, account_id: str, *, spending_limit: int | None, period_s: int | None,
                           request_id: str | None = None) -> Receipt:
        """At most ``spending_limit`` credits per ``period_s`` seconds; both None removes the limit."""
        if spending_limit is not None:
            _checked_amount(spending_limit, "spending limit")
        if period_s is not None:
            _checked_amount(period_s, "spending period")
        return self._mutate("SetSpendingLimit", request_id, account_id=account_id, spending_limit=spending_limit,
                            spending_period_s=period_s)

    def grant_service(self, account_id: str, service_dn: str, *, hold_max: int | None = None,
                      period_max: int | None = None, period_s: int | None = None,
                      request_id: str | None = None) -> Receipt:
        """Let a service identity (a site's JARM) place holds on the account on behalf of its owners,
        managers and members: each at most ``hold_max``, and at most ``period_max`` per ``period_s``
        seconds in all (None: no cap). Owners only; granting again changes the caps."""
        if hold_max is not None:
            _checked_amount(hold_max, "the grant's largest hold")
        if period_max is not None:
            _checked_amount(period_max, "the grant's cap per period")
        if period_s is not None:
            _checked_amount(period_s, "the grant's period")
        return self._mutate("GrantService", request_id, account_id=account_id, service_dn=service_dn,
                            hold_max=hold_max, period_max=period_max, period_s=period_s)

    def revoke_service(self, account_id: str, service_dn: str, *, request_id: str | None = None) -> Receipt:
        """End a service's grant (owners only); the holds it made stay for it to charge, settle or release."""
        return self._mutate("RevokeService", request_id, account_id=account_id, service_dn=service_dn)

    # -- money supply ------------------------------------------------------------------------------
    def mint(self, account_id: str, amount: int, *, request_id: str | None = None) -> Receipt:
        return self._mutate("Mint", request_id, account_id=account_id, amount=_checked_amount(amount, "amount"))

    def approve_mint(self, pending_mint_id: str, *, request_id: str | None = None) -> Receipt:
        return self._mutate("ApproveMint", request_id, pending_mint_id=pending_mint_id)

    def cancel_mint(self, pending_mint_id: str, *, request_id: str | None = None) -> Receipt:
        """Withdraw a mint awaiting approval (any administrator, its requester too); nothing is issued."""
        return self._mutate("CancelMint", request_id, pending_mint_id=pending_mint_id)

    def list_pending_mints(self, *, ended: bool = False, offset: int = 0, limit: int = 100) -> PendingMintPage:
        """Mints awaiting a second administrator (``ended``: those approved, cancelled or expired)."""
        value = self._query("ListPendingMints", ended=ended, offset=offset, limit=limit)
        return PendingMintPage(pending_mints=tuple(from_wire(PendingMint, item)
                                                   for item in array_items(value.pending_mints, "PendingMintInfo")),
                               next_offset=value.next_offset)

    def retire(self, account_id: str, amount: int, *, request_id: str | None = None) -> Receipt:
        return self._mutate("Retire", request_id, account_id=account_id, amount=_checked_amount(amount, "amount"))

    # -- moving money ------------------------------------------------------------------------------
    def transfer(self, from_account_id: str, to_account_id: str, amount: int, *,
                 request_id: str | None = None) -> Receipt:
        return self._mutate("Transfer", request_id, from_account_id=from_account_id, to_account_id=to_account_id,
                            amount=_checked_amount(amount, "amount"))

    def create_hold(self, account_id: str, *, amount: int, expires: datetime | timedelta | int | float,
                    reference: str | None = None, collector_dn: str | None = None,
                    payee_account_id: str | None = None, on_behalf_of_dn: str | None = None,
                    request_id: str | None = None) -> Receipt:
        """Reserve ``amount``; ``expires``: an aware datetime, a timedelta or seconds from now
        (made absolute once, so every attempt sends the same expiry). With ``payee_account_id``
        every charge goes to that account; a ``collector_dn`` (who may charge it there) needs one.
        ``on_behalf_of_dn``: a service with a grant on the account holds for that owner, manager or member."""
        return self._mutate("CreateHold", request_id, account_id=account_id, amount=_checked_amount(amount, "amount"),
                            expires=expiry(expires), reference=reference, collector_dn=collector_dn,
                            payee_account_id=payee_account_id, on_behalf_of_dn=on_behalf_of_dn)

    def extend_hold(self, hold_id: str, *, expires: datetime | timedelta | int | float | None = None,
                    amount: int | None = None, payee_account_id: str | None = None,
                    request_id: str | None = None) -> Receipt:
        """A later expiry, a larger total amount and/or another payee."""
        return self._mutate("ExtendHold", request_id, hold_id=hold_id,
                            expires=None if expires is None else expiry(expires),
                            amount=None if amount is None else _checked_amount(amount, "amount"),
                            payee_account_id=payee_account_id)

    def charge_hold(self, hold_id: str, *, payee_account_id: str, amount: int, request_id: str | None = None) -> Receipt:
        return self._mutate("ChargeHold", request_id, hold_id=hold_id, payee_account_id=payee_account_id,
                            amount=_checked_amount(amount, "amount"))

    def settle_hold(self, hold_id: str, *, payee_account_id: str, amount: int, request_id: str | None = None) -> Receipt:
        """The final charge: ``amount`` (0 up to what is left) to the payee and the rest released, in one
        ledger transaction; the hold ends (``hold_state`` settled, ``released_amount`` what went back)."""
        return self._mutate("SettleHold", request_id, hold_id=hold_id, payee_account_id=payee_account_id,
                            amount=_checked_amount(amount, "amount"))

    def release_hold(self, hold_id: str, *, request_id: str | None = None) -> Receipt:
        return self._mutate("ReleaseHold", request_id, hold_id=hold_id)

    def apply_batch(self, items: Sequence[ledger.Request]) -> BatchResult:
        """Apply many operations in one signed request and one ledger transaction, in order, each seeing the
        ones before it: ``ledger.ChargeHold``, ``SettleHold``, ``ReleaseHold``, ``Transfer`` and
        ``ExtendHold`` requests (at most ``ledger.BATCH_ITEMS_MAX``), each with its own request id. Each
        item is applied or refused alone (see :class:`BatchItemResult`); the applied ones are stored
        together. Sending the same batch again is safe (retries do): its applied items answer what they
        made, ``replayed``. Refused whole (:class:`RemoteFault`): empty, too large (``BatchTooLarge``), a
        request id twice."""
        wire = [_batch_item(number, item) for number, item in enumerate(items, 1)]
        value = self.invoke("ApplyBatch", {"items": {"BatchItem": wire}}, effect=Effect.ONCE_PER_KEY)
        return BatchResult(results=tuple(from_wire(BatchItemResult, item)
                                         for item in array_items(value.results, "BatchItemResult")),
                           applied=value.applied, replayed=value.replayed, refused=value.refused)

    # -- queries -----------------------------------------------------------------------------------
    def get_balance(self, account_id: str) -> Balance:
        return from_wire(Balance, self._query("GetBalance", account_id=account_id))

    def get_account(self, account_id: str) -> Account:
        value = self._query("GetAccount", account_id=account_id)
        holders = tuple(Holder(dn=h.dn, role=h.role) for h in array_items(value.holders, "HolderInfo"))
        grants = tuple(from_wire(Grant, g) for g in array_items(getattr(value, "grants", None), "GrantInfo"))
        return Account(**{f.name: getattr(value, f.name, None) for f in fields(Account)
                          if f.name not in ("holders", "grants")}, holders=holders, grants=grants)

    def get_hold(self, hold_id: str) -> Hold:
        return _hold(self._query("GetHold", hold_id=hold_id))

    def list_holds(self, account_id: str, *, ended: bool = False, offset: int = 0, limit: int = 100) -> HoldPage:
        value = self._query("ListHolds", account_id=account_id, ended=ended, offset=offset, limit=limit)
        return HoldPage(holds=tuple(_hold(item) for item in array_items(value.holds, "HoldInfo")),
                        next_offset=value.next_offset)

    def history(self, account_id: str, *, xpath_filter: str | None = None, offset: int = 0,
                limit: int = 100) -> TransactionPage:
        """Transactions touching the account, oldest first; ``xpath_filter`` a predicate over the
        transaction document (prefix ``t:``), e.g. ``t:kind='charge' and t:amount > 100``."""
        value = self._query("History", account_id=account_id, xpath_filter=xpath_filter, offset=offset, limit=limit)
        return TransactionPage(transactions=_transactions(value.transactions), next_offset=value.next_offset)

    def statement(self, account_id: str, *, start: datetime, end: datetime) -> Statement:
        """Opening balance at ``start``, the transactions in [start, end), the closing balance."""
        value = self._query("Statement", account_id=account_id, period_start=_aware(start, "start"),
                            period_end=_aware(end, "end"))
        return Statement(account_id=value.account_id, from_us=value.from_us, to_us=value.to_us,
                         opening_balance=value.opening_balance, closing_balance=value.closing_balance,
                         transactions=_transactions(value.transactions), truncated=bool(value.truncated))

    def money_supply(self) -> MoneySupply:
        return from_wire(MoneySupply, self._query("MoneySupply"))

    def audit(self) -> AuditReport:
        """The bank's own audit of its stored ledger (administrators and auditors)."""
        value = self._query("Audit")
        findings = tuple(from_wire(AuditFinding, item) for item in array_items(value.findings, "AuditFindingInfo"))
        return AuditReport(**{f.name: getattr(value, f.name) for f in fields(AuditReport) if f.name != "findings"},
                           findings=findings)


def audit_report_of(report) -> AuditReport:
    """The client's AuditReport from the core's (``ledger.AuditReport``), for the offline audit."""
    return AuditReport(clean=report.clean, transaction_count=report.transaction_count, head_seq=report.head.seq,
                       head_hash=report.head.hash, issued=report.issued, retired=report.retired,
                       signatures_checked=report.signatures_checked,
                       findings=report.findings,
                       findings_omitted=report.findings_omitted)
