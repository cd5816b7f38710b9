"""The Bank's pure core: the ledger's rules and operations.

No I/O, no SOAP, no store. Each operation is a pure function of the few documents it touches
(accounts, a hold, a pending mint, the money supply, the ledger head, a request record), the
request, the server-assigned time ``now_us`` and the caller's :class:`Principal`. It returns
new states and ONE immutable :class:`Transaction`, or raises :class:`DomainError` with a
precise ``code``. :func:`execute` wraps every operation with idempotency and sealing (the hash
chain and the bank's signature: ``ledger_chain.py``); the service runs it inside one store
transaction. Who may do what is decided by ``policy.py``, which every operation asks at one
point of the refusal precedence below; the audit of a stored ledger is ``audit.py``; the
domain types are ``types.py``.

Decisions (see also the module constants):

* **Time** is integer microseconds since the Unix epoch (UTC), assigned by the server
  (``now_us``). Field names end in ``_us``.
* **Money** is a Python ``int`` in the smallest unit. Amounts in requests are 1..10**15;
  balances and supply totals stay within ±10**18 (fits xs:long in BaseX). No floats.
* **A hold is expired when** ``now_us >= hold.expires_at_us``. From that instant every
  operation on it except :class:`ExpireHold` is refused with ``HoldExpired``, whether or not the
  sweep has run; ``ExpireHold`` is refused before that instant with ``HoldNotExpired``. A hold
  ends exactly once: charged out (its last credit charged), settled (:class:`SettleHold`: a final
  charge of 0 up to what is left and the rest released, in one transaction), released, or expired.
  Active holds always have at least one credit left, so ``account.held == 0`` iff the account
  has no active hold.
* **A pending mint** (a mint above ``BankPolicy.mint_approval_threshold``) waits for a second
  administrator until ``expires_at_us`` (its request time + ``mint_approval_duration_us``), with
  the same time rule as a hold: from that instant only :class:`ExpireMint` may end it (the sweep
  does), before it :class:`ApproveMint` or :class:`CancelMint`. A pending mint ends exactly once —
  approved (a ``mint`` transaction), cancelled (``mint-cancel``) or expired (``mint-expire``) —
  each a signed transaction whose ``principal_dn`` names who (or which sweeper) ended it.
* **Service grants**: an account's owner may let a service identity hold on the account on behalf
  of its spending holders (:class:`GrantService`, :class:`RevokeService`), capped per hold and per
  period (``ServiceGrant``; over a cap: ``GrantLimitExceeded``). A :class:`CreateHold` with
  ``on_behalf_of_dn`` records both DNs (creator: the service), and so does every transaction on
  that hold.
* **Idempotency** is scoped by caller: the record key is ``SHA-256(principal DN, request id)``,
  and the request hash covers the operation, the caller's DN and every request field. A retry
  returns the original transaction; a different request under a used id is ``RequestIdReused``.
  Refused requests change nothing and are not recorded, so a retry is evaluated afresh.

Refusal precedence (one order for every operation, mirrored by the model test):
request id → request shape (InvalidAmount, InvalidArgument, InvalidExpiry for the past) →
existence (Unknown*) → authorization (NotAuthorized) → state (AccountClosed, AccountFrozen,
HoldEnded, HoldExpired, …) → funds and limits (InsufficientFunds, ExceedsHold,
SpendingLimitExceeded, overflow).

Authorization is ``policy.py``'s: its docstring has the table of who may do what; each
operation below asks it at the authorization step of this precedence. A limited proxy's change
is refused before the precedence starts (``policy.require_full_credential``).
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from gridcredit.errors import DomainError, invariant
from gridcredit.text import hidden_character

from .audit import AuditFinding, AuditReport, audit  # noqa: F401 — AuditFinding: the client mirrors ledger.AuditFinding
from .ledger_chain import seal
from .policy import (Principal, authorize_approve_mint, authorize_batch, authorize_cancel_mint, authorize_charge_hold,
                     authorize_create_account, authorize_create_hold, authorize_expire_hold, authorize_expire_mint,
                     authorize_extend_hold, authorize_grant_service, authorize_mint, authorize_release_hold,
                     authorize_remove_holder, authorize_retire, authorize_revoke_service, authorize_set_credit_limit,
                     authorize_set_holder, authorize_set_spending_limit, authorize_set_status, authorize_settle_hold,
                     authorize_transfer, authorize_view, needs_second_administrator, require_full_credential,
                     serves_hold)
from .types import (Account, AccountStatus, BankPolicy, Hold, Holder, HoldState, LedgerHead, MoneySupply, PendingMint,
                    PendingMintState, RequestRecord, Role, ServiceGrant, SupplyChange, Transaction, TransactionKind, evolve)

AMOUNT_MIN = 1
AMOUNT_MAX = 10**15
BALANCE_ABS_MAX = 10**18
SUPPLY_MAX = 10**18
TIME_MAX_US = 2**62
IDENTIFIER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
DN_LENGTH_MAX = 1024
REFERENCE_LENGTH_MAX = 256
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
SPENDING_PERIOD_MIN_US = 1_000_000
SPENDING_PERIOD_MAX_US = 366 * 86_400 * 1_000_000
GRANTS_MAX = 32                          # service grants one account holds at most


# ---------------------------------------------------------------------------------------------
# Requests: one frozen type per mutating operation; every one carries the client's request id.


@dataclass(frozen=True, slots=True)
class CreateAccount:
    request_id: str
    account_id: str
    project: str
    owner_dn: str
    credit_limit: int = 0


@dataclass(frozen=True, slots=True)
class SetHolder:
    """Add a holder, or change an existing holder's role."""

    request_id: str
    account_id: str
    holder_dn: str
    role: Role


@dataclass(frozen=True, slots=True)
class RemoveHolder:
    request_id: str
    account_id: str
    holder_dn: str


@dataclass(frozen=True, slots=True)
class SetStatus:
    request_id: str
    account_id: str
    status: AccountStatus


@dataclass(frozen=True, slots=True)
class SetCreditLimit:
    request_id: str
    account_id: str
    credit_limit: int


@dataclass(frozen=True, slots=True)
class SetSpendingLimit:
    """Both ``None`` removes the limit."""

    request_id: str
    account_id: str
    spending_limit: int | None
    spending_period_us: int | None


@dataclass(frozen=True, slots=True)
class GrantService:
    """An owner lets a service identity place holds on the account on behalf of its spending holders, each
    hold at most ``hold_max`` and at most ``period_max`` per ``period_us`` in all (None: no cap). Granting
    again changes the caps."""

    request_id: str
    account_id: str
    service_dn: str
    hold_max: int | None = None
    period_max: int | None = None
    period_us: int | None = None


@dataclass(frozen=True, slots=True)
class RevokeService:
    """The holds the service made stay: it may still extend their expiry, charge, settle and release them."""

    request_id: str
    account_id: str
    service_dn: str


@dataclass(frozen=True, slots=True)
class Mint:
    request_id: str
    account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class ApproveMint:
    request_id: str
    pending_mint_id: str


@dataclass(frozen=True, slots=True)
class CancelMint:
    request_id: str
    pending_mint_id: str


@dataclass(frozen=True, slots=True)
class ExpireMint:
    request_id: str
    pending_mint_id: str


@dataclass(frozen=True, slots=True)
class Retire:
    request_id: str
    account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Transfer:
    request_id: str
    from_account_id: str
    to_account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class CreateHold:
    request_id: str
    account_id: str
    amount: int
    expires_at_us: int
    reference: str = ""
    collector_dn: str | None = None
    payee_account_id: str | None = None  # charges go only there; required when a collector is named
    on_behalf_of_dn: str | None = None   # a service with a grant on the account, for this spending holder


@dataclass(frozen=True, slots=True)
class ExtendHold:
    """A later expiry, a larger total amount and/or another payee (at least one)."""

    request_id: str
    hold_id: str
    expires_at_us: int | None = None
    amount: int | None = None
    payee_account_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeHold:
    request_id: str
    hold_id: str
    payee_account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class SettleHold:
    """The final charge of a hold: ``amount`` (0 up to what is left) to the payee and the rest released,
    in one transaction; the hold ends."""

    request_id: str
    hold_id: str
    payee_account_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class ReleaseHold:
    request_id: str
    hold_id: str


@dataclass(frozen=True, slots=True)
class ExpireHold:
    request_id: str
    hold_id: str


Request = (CreateAccount | SetHolder | RemoveHolder | SetStatus | SetCreditLimit | SetSpendingLimit
           | GrantService | RevokeService | Mint | ApproveMint | CancelMint | ExpireMint | Retire | Transfer
           | CreateHold | ExtendHold | ChargeHold | SettleHold | ReleaseHold | ExpireHold)


# ---------------------------------------------------------------------------------------------
# Validation of request shape (bad input is an operating error, not an assertion)


def _refuse(code: str, message: str) -> DomainError:
    return DomainError(message, code)


def check_amount(amount: object, what: str = "amount") -> int:
    if type(amount) is not int:
        raise _refuse("InvalidAmount", f"{what} must be an integer number of credits, not {amount!r}")
    if amount < AMOUNT_MIN:
        raise _refuse("InvalidAmount", f"{what} must be at least {AMOUNT_MIN} credit; got {amount}")
    if amount > AMOUNT_MAX:
        raise _refuse("InvalidAmount", f"{what} must be at most {AMOUNT_MAX} credits; got {amount}")
    return amount


def _check_limit(value: object, what: str) -> int:
    """A limit: 0..AMOUNT_MAX."""
    if type(value) is not int or value < 0 or value > AMOUNT_MAX:
        raise _refuse("InvalidAmount", f"{what} must be an integer from 0 to {AMOUNT_MAX}; got {value!r}")
    return value


def check_identifier(value: object, what: str) -> str:
    if type(value) is not str or not IDENTIFIER_PATTERN.fullmatch(value):
        raise _refuse("InvalidArgument",
                      f"{what} must be 1-128 characters of letters, digits and . _ : @ -, "
                      f"starting with a letter or digit; got {value!r}")
    return value


# A grid one-line DN: /NAME=value/NAME=value…; a value may hold '/' when no NAME= follows it
# (CN=host/jarm.example.org), as security.pki.parse_grid_dn reads it.
_DN_RDN_START = re.compile(r"/(?=[A-Za-z0-9][A-Za-z0-9.-]*=)")
_DN_RDN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*=.+", re.S)


def is_grid_dn(value: str) -> bool:
    """Whether ``value`` is written as a DN in grid form (``/DC=org/DC=example/CN=Alice``)."""
    parts = _DN_RDN_START.split(value)
    return value.startswith("/") and parts[0] == "" and len(parts) > 1 and all(_DN_RDN.fullmatch(p) for p in parts[1:])


def check_dn(value: object, what: str, *, grid_form: bool = True) -> str:
    """A DN a request names (owner, holder, service, collector, on behalf of): printable, and in grid
    form — text no certificate has (``Bob``, RFC 2253's ``CN=Bob,O=Example``) would name a holder
    who can never act. ``grid_form=False`` for a caller's own identity (internal principals such as
    the expiry sweeper have names, not DNs)."""
    if type(value) is not str or not value or len(value) > DN_LENGTH_MAX or value != value.strip():
        raise _refuse("InvalidArgument", f"{what} must be a distinguished name of 1-{DN_LENGTH_MAX} "
                                         f"printable characters; got {value!r}")
    hidden = hidden_character(value)
    if hidden is not None:   # a bidi override or zero-width character makes one DN look like another
        raise _refuse("InvalidArgument", f"{what} {value!r} contains an invisible or control character "
                                         f"({hidden}); a DN must show every character it has")
    if grid_form and not is_grid_dn(value):   # no certificate has such a DN: a holder written so could never act
        parts = [part.strip() for part in value.split(",")]
        hint = (f" (RFC 2253 order: in grid form it is /{'/'.join(reversed(parts))})"
                if len(parts) > 1 and all("=" in part for part in parts) else "")
        raise _refuse("InvalidArgument", f"{what} {value!r} is not a DN in grid form such as "
                                         f"/DC=org/DC=example/CN=Alice{hint}; `gridcredit pki show` prints a "
                                         "certificate's")
    return value


def _check_reference(value: object) -> str:
    if type(value) is not str or len(value) > REFERENCE_LENGTH_MAX or hidden_character(value) is not None:
        raise _refuse("InvalidArgument", f"reference must be at most {REFERENCE_LENGTH_MAX} printable "
                                         f"characters; got {value!r}")
    return value


def _check_time(value: object, what: str) -> int:
    if type(value) is not int or value < 0 or value > TIME_MAX_US:
        raise _refuse("InvalidArgument", f"{what} must be integer microseconds since the epoch; got {value!r}")
    return value


def _check_request_id(value: object) -> str:
    if type(value) is not str or not REQUEST_ID_PATTERN.fullmatch(value):
        raise _refuse("InvalidArgument", f"request id must be 1-128 characters of letters, digits and "
                                         f". _ : @ -; got {value!r}")
    return value


def _check_enum(value: object, enum_type: type[enum.Enum], what: str) -> None:
    if not isinstance(value, enum_type):
        raise _refuse("InvalidArgument", f"{what} must be one of "
                                         f"{', '.join(member.value for member in enum_type)}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# Refusal helpers: state checks with messages a person understands


def require_account(account: Account | None, account_id: str) -> Account:
    if account is None:
        raise _refuse("UnknownAccount", f"there is no account {account_id}")
    return account


def _require_hold(hold: Hold | None, hold_id: str) -> Hold:
    if hold is None:
        raise _refuse("UnknownHold", f"there is no hold {hold_id}")
    return hold


def _require_not_closed(account: Account) -> None:
    if account.status is AccountStatus.CLOSED:
        raise _refuse("AccountClosed", f"account {account.account_id} is closed")


def _require_open(account: Account, action: str) -> None:
    _require_not_closed(account)
    if account.status is AccountStatus.FROZEN:
        raise _refuse("AccountFrozen", f"account {account.account_id} is frozen: it refuses {action}")


def _require_active_hold(hold: Hold, now_us: int) -> None:
    if hold.state is not HoldState.ACTIVE:
        raise _refuse("HoldEnded", f"hold {hold.hold_id} has already ended ({hold.state.value} "
                                   f"in transaction {hold.ended_seq})")
    if hold.is_expired_at(now_us):
        raise _refuse("HoldExpired", f"hold {hold.hold_id} expired at {hold.expires_at_us} µs; "
                                     f"it is now {now_us} µs")


def _require_available(account: Account, needed: int, what: str) -> None:
    if account.available < needed:
        raise _refuse("InsufficientFunds",
                      f"account {account.account_id} has {account.available} credits available; "
                      f"{what} needs {needed} (short by {needed - account.available})")


def _spend(account: Account, amount: int, now_us: int) -> Account:
    """Count a charge or transfer out against the spending limit of the current period."""
    if account.spending_limit is None or account.spending_period_us is None:
        return account
    spent = account.spent_at(now_us)
    if spent + amount > account.spending_limit:
        raise _refuse("SpendingLimitExceeded",
                      f"account {account.account_id} may spend {account.spending_limit} credits per "
                      f"{account.spending_period_us} µs period; {spent} already spent in this period, "
                      f"so {amount} more would exceed it by {spent + amount - account.spending_limit}")
    return evolve(account, spending_period_index=now_us // account.spending_period_us,
                               spent_in_period=spent + amount)


def _credit(account: Account, amount: int) -> Account:
    if account.balance + amount > BALANCE_ABS_MAX:
        raise _refuse("InvalidAmount", f"crediting {amount} to account {account.account_id} would overflow "
                                       f"its balance (at most {BALANCE_ABS_MAX})")
    return evolve(account, balance=account.balance + amount)


def _debit(account: Account, amount: int, *, unheld: int = 0) -> Account:
    """``amount`` out of the balance, and ``unheld`` out of what is held (a hold charged or settled)."""
    invariant(account.balance - amount >= -BALANCE_ABS_MAX, "a debit stays within the balance bound")
    return evolve(account, balance=account.balance - amount, held=account.held - unheld)


def _entry(kind: TransactionKind, request: Request, principal: Principal, now_us: int, seq: int,
           **fields: object) -> Transaction:
    return Transaction(seq=seq, kind=kind, at_us=now_us, request_id=request.request_id,
                       principal_dn=principal.dn, **fields)


# ---------------------------------------------------------------------------------------------
# Operations: pure functions of the loaded states; each returns the new states and one
# unsealed Transaction (hash and signature are added by seal()).


def create_account(existing: Account | None, request: CreateAccount, *, principal: Principal,
                   now_us: int, seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    check_identifier(request.project, "project")
    check_dn(request.owner_dn, "owner DN")
    _check_limit(request.credit_limit, "credit limit")
    authorize_create_account(principal, request.account_id)
    if existing is not None:
        raise _refuse("AccountExists", f"account {request.account_id} already exists")
    account = Account(account_id=request.account_id, project=request.project,
                      holders=(Holder(request.owner_dn, Role.OWNER),), status=AccountStatus.OPEN,
                      balance=0, held=0, credit_limit=request.credit_limit, spending_limit=None,
                      spending_period_us=None, spending_period_index=0, spent_in_period=0,
                      created_at_us=now_us)
    return account, _entry(TransactionKind.CREATE_ACCOUNT, request, principal, now_us, seq,
                           account_id=account.account_id, project=account.project,
                           holder_dn=request.owner_dn, role=Role.OWNER, credit_limit=request.credit_limit)


def _owner_count(holders: Iterable[Holder]) -> int:
    return sum(1 for holder in holders if holder.role is Role.OWNER)


def set_holder(account: Account | None, request: SetHolder, *, principal: Principal, now_us: int,
               seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    check_dn(request.holder_dn, "holder DN")
    _check_enum(request.role, Role, "role")
    account = require_account(account, request.account_id)
    previous_role = account.role_of(request.holder_dn)
    authorize_set_holder(principal, account, request.role, previous_role)
    _require_not_closed(account)
    if previous_role is request.role:
        raise _refuse("HolderUnchanged", f"{request.holder_dn} already is {request.role.value} of "
                                         f"account {account.account_id}")
    holders = [holder for holder in account.holders if holder.dn != request.holder_dn]
    holders.append(Holder(request.holder_dn, request.role))
    if _owner_count(holders) == 0:
        raise _refuse("LastOwner", f"{request.holder_dn} is the last owner of account {account.account_id}")
    updated = evolve(account, holders=tuple(sorted(holders, key=lambda holder: holder.dn)))
    return updated, _entry(TransactionKind.SET_HOLDER, request, principal, now_us, seq,
                           account_id=account.account_id, holder_dn=request.holder_dn, role=request.role)


def remove_holder(account: Account | None, request: RemoveHolder, *, principal: Principal, now_us: int,
                  seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    check_dn(request.holder_dn, "holder DN")
    account = require_account(account, request.account_id)
    previous_role = account.role_of(request.holder_dn)
    authorize_remove_holder(principal, account, previous_role)
    _require_not_closed(account)
    if previous_role is None:
        raise _refuse("NotAHolder", f"{request.holder_dn} is not a holder of account {account.account_id}")
    holders = tuple(holder for holder in account.holders if holder.dn != request.holder_dn)
    if _owner_count(holders) == 0:
        raise _refuse("LastOwner", f"{request.holder_dn} is the last owner of account {account.account_id}")
    return evolve(account, holders=holders), _entry(
        TransactionKind.REMOVE_HOLDER, request, principal, now_us, seq, account_id=account.account_id,
        holder_dn=request.holder_dn, role=previous_role)


def set_status(account: Account | None, request: SetStatus, *, principal: Principal, now_us: int,
               seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    _check_enum(request.status, AccountStatus, "status")
    account = require_account(account, request.account_id)
    authorize_set_status(principal, account, request.status)
    _require_not_closed(account)
    if account.status is request.status:
        raise _refuse("StatusUnchanged", f"account {account.account_id} already is {request.status.value}")
    if request.status is AccountStatus.CLOSED and (account.balance != 0 or account.held != 0):
        raise _refuse("AccountNotEmpty", f"account {account.account_id} cannot close: its balance is "
                                         f"{account.balance} and {account.held} credits are held; "
                                         f"both must be 0")
    return evolve(account, status=request.status), _entry(
        TransactionKind.SET_STATUS, request, principal, now_us, seq, account_id=account.account_id,
        status=request.status)


def set_credit_limit(account: Account | None, request: SetCreditLimit, *, principal: Principal,
                     now_us: int, seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    _check_limit(request.credit_limit, "credit limit")
    account = require_account(account, request.account_id)
    authorize_set_credit_limit(principal, account)
    _require_not_closed(account)
    if account.held > account.balance + request.credit_limit:
        raise _refuse("CreditLimitTooLow",
                      f"account {account.account_id} has balance {account.balance} and {account.held} held; "
                      f"a credit limit below {account.held - account.balance} would leave holds uncovered")
    return evolve(account, credit_limit=request.credit_limit), _entry(
        TransactionKind.SET_CREDIT_LIMIT, request, principal, now_us, seq, account_id=account.account_id,
        credit_limit=request.credit_limit)


def _check_period(period_us: object, what: str) -> None:
    if type(period_us) is not int or not SPENDING_PERIOD_MIN_US <= period_us <= SPENDING_PERIOD_MAX_US:
        raise _refuse("InvalidArgument", f"{what} must be {SPENDING_PERIOD_MIN_US} to {SPENDING_PERIOD_MAX_US} µs; "
                                         f"got {period_us!r}")


def set_spending_limit(account: Account | None, request: SetSpendingLimit, *, principal: Principal,
                       now_us: int, seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    if (request.spending_limit is None) != (request.spending_period_us is None):
        raise _refuse("InvalidArgument", "a spending limit needs both an amount and a period (or neither, "
                                         "to remove it)")
    if request.spending_limit is not None:
        _check_limit(request.spending_limit, "spending limit")
        _check_period(request.spending_period_us, "spending period")
    account = require_account(account, request.account_id)
    authorize_set_spending_limit(principal, account)
    _require_not_closed(account)
    if request.spending_period_us is None:
        index, spent = 0, 0
    elif request.spending_period_us == account.spending_period_us:
        index, spent = now_us // request.spending_period_us, account.spent_at(now_us)
    else:
        index, spent = now_us // request.spending_period_us, 0
    updated = evolve(account, spending_limit=request.spending_limit,
                                  spending_period_us=request.spending_period_us,
                                  spending_period_index=index, spent_in_period=spent)
    return updated, _entry(TransactionKind.SET_SPENDING_LIMIT, request, principal, now_us, seq,
                           account_id=account.account_id, spending_limit=request.spending_limit,
                           spending_period_us=request.spending_period_us)


def grant_service(account: Account | None, request: GrantService, *, principal: Principal, now_us: int,
                  seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    check_dn(request.service_dn, "service DN")
    if request.hold_max is not None:
        check_amount(request.hold_max, "the grant's largest hold")
    if (request.period_max is None) != (request.period_us is None):
        raise _refuse("InvalidArgument", "a grant's cap per period needs both an amount and a period (or neither)")
    if request.period_max is not None:
        check_amount(request.period_max, "the grant's cap per period")
        _check_period(request.period_us, "the grant's period")
    account = require_account(account, request.account_id)
    authorize_grant_service(principal, account)
    _require_not_closed(account)
    previous = account.grant_of(request.service_dn)
    if previous is not None and (previous.hold_max, previous.period_max, previous.period_us) == (
            request.hold_max, request.period_max, request.period_us):
        raise _refuse("GrantUnchanged", f"{request.service_dn} already holds this grant on account "
                                        f"{account.account_id}")
    if previous is None and len(account.grants) >= GRANTS_MAX:
        raise _refuse("TooManyGrants", f"account {account.account_id} already grants {len(account.grants)} services; "
                                       f"at most {GRANTS_MAX}: revoke one first")
    if previous is not None and request.period_us is not None and request.period_us == previous.period_us:
        index, held = previous.period_index, previous.held_in_period     # the same period: what it held counts
    else:
        index, held = (now_us // request.period_us if request.period_us else 0), 0
    grant = ServiceGrant(service_dn=request.service_dn, hold_max=request.hold_max, period_max=request.period_max,
                         period_us=request.period_us, period_index=index, held_in_period=held,
                         granted_at_us=now_us)
    grants = [other for other in account.grants if other.service_dn != request.service_dn] + [grant]
    updated = evolve(account, grants=tuple(sorted(grants, key=lambda other: other.service_dn)))
    return updated, _entry(TransactionKind.GRANT_SERVICE, request, principal, now_us, seq,
                           account_id=account.account_id, service_dn=request.service_dn,
                           grant_hold_max=request.hold_max, grant_period_max=request.period_max,
                           grant_period_us=request.period_us)


def revoke_service(account: Account | None, request: RevokeService, *, principal: Principal, now_us: int,
                   seq: int) -> tuple[Account, Transaction]:
    check_identifier(request.account_id, "account id")
    check_dn(request.service_dn, "service DN")
    account = require_account(account, request.account_id)
    authorize_revoke_service(principal, account)
    _require_not_closed(account)
    if account.grant_of(request.service_dn) is None:
        raise _refuse("NotGranted", f"{request.service_dn} holds no grant on account {account.account_id}")
    updated = evolve(account, grants=tuple(grant for grant in account.grants
                                                        if grant.service_dn != request.service_dn))
    return updated, _entry(TransactionKind.REVOKE_SERVICE, request, principal, now_us, seq,
                           account_id=account.account_id, service_dn=request.service_dn)


def _hold_under_grant(account: Account, service_dn: str, hold_total: int, increase: int, now_us: int) -> Account:
    """The account with ``increase`` more counted against the service's grant, whose caps allow a hold of
    ``hold_total`` (GrantLimitExceeded if not)."""
    grant = account.grant_of(service_dn)
    invariant(grant is not None, "the policy found the grant")
    what = f"the grant of account {account.account_id} to {service_dn}"
    if grant.hold_max is not None and hold_total > grant.hold_max:
        raise _refuse("GrantLimitExceeded", f"{what} allows holds of at most {grant.hold_max} credits; this hold "
                                            f"would be {hold_total} (over by {hold_total - grant.hold_max})")
    if grant.period_max is None or grant.period_us is None:
        return account
    held = grant.held_at(now_us)
    if held + increase > grant.period_max:
        raise _refuse("GrantLimitExceeded", f"{what} allows {grant.period_max} credits of holds per "
                                            f"{grant.period_us} µs period; {held} already held in this period, so "
                                            f"{increase} more would exceed it by {held + increase - grant.period_max}")
    counted = evolve(grant, period_index=now_us // grant.period_us, held_in_period=held + increase)
    return evolve(account, grants=tuple(counted if other.service_dn == service_dn else other
                                                     for other in account.grants))


def _issue(account: Account, supply: MoneySupply, amount: int) -> tuple[Account, MoneySupply]:
    if supply.issued + amount > SUPPLY_MAX:
        raise _refuse("InvalidAmount", f"issuing {amount} would exceed the money supply bound {SUPPLY_MAX}")
    return _credit(account, amount), evolve(supply, issued=supply.issued + amount)


def mint(account: Account | None, supply: MoneySupply, request: Mint, *, principal: Principal, now_us: int,
         seq: int, policy: BankPolicy) -> tuple[Account, MoneySupply, PendingMint | None, Transaction]:
    """Issue credits; above the policy threshold, record a pending mint for a second administrator."""
    check_identifier(request.account_id, "account id")
    check_amount(request.amount)
    account = require_account(account, request.account_id)
    authorize_mint(principal, account)
    _require_not_closed(account)
    if needs_second_administrator(policy, request.amount):
        pending = PendingMint(pending_mint_id=f"mint-{seq}", account_id=account.account_id,
                              amount=request.amount, change=SupplyChange.MINT, requester_dn=principal.dn,
                              requested_at_us=now_us,
                              expires_at_us=now_us + policy.mint_approval_duration_us,
                              state=PendingMintState.PENDING, ended_by_dn=None, ended_seq=None, ended_at_us=None)
        return account, supply, pending, _entry(
            TransactionKind.MINT_REQUEST, request, principal, now_us, seq, account_id=account.account_id,
            amount=request.amount, pending_mint_id=pending.pending_mint_id, expires_at_us=pending.expires_at_us)
    account, supply = _issue(account, supply, request.amount)
    return account, supply, None, _entry(TransactionKind.MINT, request, principal, now_us, seq,
                                         account_id=account.account_id, amount=request.amount)


def _require_pending_mint(pending: PendingMint | None, pending_mint_id: str) -> PendingMint:
    if pending is None:
        raise _refuse("UnknownPendingMint", f"there is no pending mint {pending_mint_id}")
    return pending


def _require_not_ended(pending: PendingMint) -> None:
    if pending.state is not PendingMintState.PENDING:
        raise _refuse("PendingMintEnded", f"mint {pending.pending_mint_id} has already ended "
                                          f"({pending.state.value} in transaction {pending.ended_seq})")


def _require_pending(pending: PendingMint, now_us: int) -> None:
    _require_not_ended(pending)
    if pending.is_expired_at(now_us):
        raise _refuse("PendingMintExpired", f"mint {pending.pending_mint_id} expired unapproved at "
                                            f"{pending.expires_at_us} µs; it is now {now_us} µs")


def _end_pending_mint(pending: PendingMint, state: PendingMintState, kind: TransactionKind, request: Request,
                      principal: Principal, now_us: int, seq: int) -> tuple[PendingMint, Transaction]:
    ended = evolve(pending, state=state, ended_by_dn=principal.dn, ended_seq=seq, ended_at_us=now_us)
    return ended, _entry(kind, request, principal, now_us, seq, account_id=pending.account_id,
                         amount=pending.amount, pending_mint_id=pending.pending_mint_id)


def approve_mint(pending: PendingMint | None, account: Account | None, supply: MoneySupply,
                 request: ApproveMint, *, principal: Principal, now_us: int,
                 seq: int) -> tuple[PendingMint, Account, MoneySupply, Transaction]:
    check_identifier(request.pending_mint_id, "pending mint id")
    pending = _require_pending_mint(pending, request.pending_mint_id)
    account = require_account(account, pending.account_id)
    authorize_approve_mint(principal, pending)
    _require_pending(pending, now_us)
    _require_not_closed(account)
    if pending.change is SupplyChange.RETIRE:
        account, supply = _withdraw(account, supply, pending.amount)
        kind = TransactionKind.RETIRE
    else:
        account, supply = _issue(account, supply, pending.amount)
        kind = TransactionKind.MINT
    approved = evolve(pending, state=PendingMintState.APPROVED, ended_by_dn=principal.dn,
                                   ended_seq=seq, ended_at_us=now_us)
    return approved, account, supply, _entry(
        kind, request, principal, now_us, seq, account_id=account.account_id,
        amount=pending.amount, pending_mint_id=pending.pending_mint_id, approver_dn=principal.dn)


def cancel_mint(pending: PendingMint | None, request: CancelMint, *, principal: Principal, now_us: int,
                seq: int) -> tuple[PendingMint, Transaction]:
    """Withdraw a pending mint: any administrator, the one who requested it too; nothing is issued."""
    check_identifier(request.pending_mint_id, "pending mint id")
    pending = _require_pending_mint(pending, request.pending_mint_id)
    authorize_cancel_mint(principal, pending)
    _require_pending(pending, now_us)
    return _end_pending_mint(pending, PendingMintState.CANCELLED, TransactionKind.MINT_CANCEL, request,
                             principal, now_us, seq)


def expire_mint(pending: PendingMint | None, request: ExpireMint, *, principal: Principal, now_us: int,
                seq: int) -> tuple[PendingMint, Transaction]:
    """End a pending mint nobody approved in time (the sweep does this); nothing is issued."""
    check_identifier(request.pending_mint_id, "pending mint id")
    pending = _require_pending_mint(pending, request.pending_mint_id)
    authorize_expire_mint(principal, pending)
    _require_not_ended(pending)
    if not pending.is_expired_at(now_us):
        raise _refuse("PendingMintNotExpired", f"mint {pending.pending_mint_id} expires at "
                                               f"{pending.expires_at_us} µs; it is now {now_us} µs")
    return _end_pending_mint(pending, PendingMintState.EXPIRED, TransactionKind.MINT_EXPIRE, request,
                             principal, now_us, seq)


def _withdraw(account: Account, supply: MoneySupply, amount: int) -> tuple[Account, MoneySupply]:
    """Retire ``amount``: only from the account's own unheld balance (no overdraft)."""
    unheld = account.balance - account.held
    if unheld < amount:
        raise _refuse("InsufficientFunds",
                      f"account {account.account_id} has {max(unheld, 0)} unheld credits (credit limit not "
                      f"counted); retiring {amount} needs {amount} (short by {amount - max(unheld, 0)})")
    return _debit(account, amount), evolve(supply, retired=supply.retired + amount)


def retire(account: Account | None, supply: MoneySupply, request: Retire, *, principal: Principal,
           now_us: int, seq: int, policy: BankPolicy) -> tuple[Account, MoneySupply, PendingMint | None, Transaction]:
    """Take credits out of circulation; above the policy threshold, record a pending retirement for a
    second administrator (the funds are checked now and again at approval)."""
    check_identifier(request.account_id, "account id")
    check_amount(request.amount)
    account = require_account(account, request.account_id)
    authorize_retire(principal, account)
    _require_not_closed(account)
    retired_account, retired_supply = _withdraw(account, supply, request.amount)
    if needs_second_administrator(policy, request.amount):
        pending = PendingMint(pending_mint_id=f"retire-{seq}", account_id=account.account_id,
                              amount=request.amount, change=SupplyChange.RETIRE, requester_dn=principal.dn,
                              requested_at_us=now_us, expires_at_us=now_us + policy.mint_approval_duration_us,
                              state=PendingMintState.PENDING, ended_by_dn=None, ended_seq=None, ended_at_us=None)
        return account, supply, pending, _entry(
            TransactionKind.RETIRE_REQUEST, request, principal, now_us, seq, account_id=account.account_id,
            amount=request.amount, pending_mint_id=pending.pending_mint_id, expires_at_us=pending.expires_at_us)
    return retired_account, retired_supply, None, _entry(TransactionKind.RETIRE, request, principal, now_us, seq,
                                                         account_id=account.account_id, amount=request.amount)


def transfer(payer: Account | None, payee: Account | None, request: Transfer, *, principal: Principal,
             now_us: int, seq: int) -> tuple[Account, Account, Transaction]:
    check_identifier(request.from_account_id, "paying account id")
    check_identifier(request.to_account_id, "receiving account id")
    check_amount(request.amount)
    if request.from_account_id == request.to_account_id:
        raise _refuse("InvalidArgument", f"a transfer needs two different accounts; both are "
                                         f"{request.from_account_id}")
    payer = require_account(payer, request.from_account_id)
    payee = require_account(payee, request.to_account_id)
    authorize_transfer(principal, payer)
    _require_open(payer, "spending")
    _require_not_closed(payee)
    _require_available(payer, request.amount, "the transfer")
    payer = _debit(_spend(payer, request.amount, now_us), request.amount)
    payee = _credit(payee, request.amount)
    return payer, payee, _entry(TransactionKind.TRANSFER, request, principal, now_us, seq,
                                account_id=payer.account_id, counterparty_account_id=payee.account_id,
                                amount=request.amount)


def _check_expiry(expires_at_us: int, now_us: int, policy: BankPolicy) -> None:
    if expires_at_us <= now_us:
        raise _refuse("InvalidExpiry", f"expiry {expires_at_us} µs is not after now ({now_us} µs)")
    if expires_at_us - now_us > policy.hold_duration_max_us:
        raise _refuse("InvalidExpiry", f"expiry {expires_at_us} µs is more than "
                                       f"{policy.hold_duration_max_us} µs after now ({now_us} µs)")


def _check_payee(payee_account_id: object, account_id: object) -> None:
    if payee_account_id is None:
        return
    check_identifier(payee_account_id, "payee account id")
    if payee_account_id == account_id:
        raise _refuse("InvalidArgument", f"a hold on account {account_id} cannot be paid to that same account")


def create_hold(account: Account | None, payee: Account | None, request: CreateHold, *, principal: Principal,
                now_us: int, seq: int, policy: BankPolicy) -> tuple[Account, Hold, Transaction]:
    check_identifier(request.account_id, "account id")
    check_amount(request.amount)
    _check_time(request.expires_at_us, "expiry")
    _check_reference(request.reference)
    if request.collector_dn is not None:
        check_dn(request.collector_dn, "collector DN")
        if request.payee_account_id is None:
            raise _refuse("InvalidArgument", f"a hold with a collector ({request.collector_dn}) must name the "
                                             f"payee account its charges go to")
        if request.collector_dn == principal.dn:
            raise _refuse("InvalidArgument", "a hold's collector must be another identity than its creator")
    if request.on_behalf_of_dn is not None:
        check_dn(request.on_behalf_of_dn, "on-behalf-of DN")
        if request.on_behalf_of_dn == principal.dn:
            raise _refuse("InvalidArgument", "a hold on behalf of someone names another identity than its creator; "
                                             "leave on-behalf-of out to hold for yourself")
    _check_payee(request.payee_account_id, request.account_id)
    _check_expiry(request.expires_at_us, now_us, policy)
    account = require_account(account, request.account_id)
    if request.payee_account_id is not None:
        payee = require_account(payee, request.payee_account_id)
    authorize_create_hold(principal, account, on_behalf_of_dn=request.on_behalf_of_dn)
    _require_open(account, "new holds")
    if request.payee_account_id is not None:
        _require_not_closed(payee)
    if request.on_behalf_of_dn is not None:
        account = _hold_under_grant(account, principal.dn, request.amount, request.amount, now_us)
    _require_available(account, request.amount, "the hold")
    hold = Hold(hold_id=f"hold-{seq}", account_id=account.account_id, amount=request.amount, charged=0,
                expires_at_us=request.expires_at_us, reference=request.reference, creator_dn=principal.dn,
                collector_dn=request.collector_dn, payee_account_id=request.payee_account_id,
                state=HoldState.ACTIVE, created_at_us=now_us, created_seq=seq, ended_seq=None, ended_at_us=None,
                on_behalf_of_dn=request.on_behalf_of_dn)
    account = evolve(account, held=account.held + request.amount)
    return account, hold, _entry(TransactionKind.HOLD, request, principal, now_us, seq,
                                 account_id=account.account_id, amount=request.amount, hold_id=hold.hold_id,
                                 hold_amount=hold.amount, hold_state=hold.state,
                                 expires_at_us=hold.expires_at_us, reference=hold.reference,
                                 collector_dn=hold.collector_dn, payee_account_id=hold.payee_account_id,
                                 on_behalf_of_dn=hold.on_behalf_of_dn)


def extend_hold(hold: Hold | None, account: Account | None, payee: Account | None, request: ExtendHold, *,
                principal: Principal, now_us: int, seq: int, policy: BankPolicy) -> tuple[Account, Hold, Transaction]:
    """A later expiry (a spender or the collector), a larger amount or another payee (a spender only:
    both change what the collector may take)."""
    check_identifier(request.hold_id, "hold id")
    if request.expires_at_us is None and request.amount is None and request.payee_account_id is None:
        raise _refuse("InvalidArgument", "an extension needs a later expiry, a larger amount or another payee")
    if request.amount is not None:
        check_amount(request.amount)
    if request.expires_at_us is not None:
        _check_time(request.expires_at_us, "expiry")
    if request.payee_account_id is not None:
        check_identifier(request.payee_account_id, "payee account id")
    hold = _require_hold(hold, request.hold_id)
    invariant(account is not None and account.account_id == hold.account_id, "a hold's account is loaded")
    _check_payee(request.payee_account_id, hold.account_id)
    if request.payee_account_id is not None:
        payee = require_account(payee, request.payee_account_id)
    authorize_extend_hold(principal, account, hold, raises=request.amount is not None,
                          redirects=request.payee_account_id is not None)
    _require_active_hold(hold, now_us)
    _require_open(account, "extending holds")
    if request.payee_account_id is not None:
        _require_not_closed(payee)
    expires_at_us = hold.expires_at_us
    if request.expires_at_us is not None:
        if request.expires_at_us <= hold.expires_at_us:
            raise _refuse("InvalidExpiry", f"hold {hold.hold_id} already expires at {hold.expires_at_us} µs; "
                                           f"an extension must be later, not {request.expires_at_us} µs")
        _check_expiry(request.expires_at_us, now_us, policy)
        expires_at_us = request.expires_at_us
    increase = 0
    if request.amount is not None:
        if request.amount <= hold.amount:
            raise _refuse("InvalidAmount", f"hold {hold.hold_id} already holds {hold.amount}; an extension "
                                           f"must be larger, not {request.amount}")
        increase = request.amount - hold.amount
        if serves_hold(principal, hold):  # the service that made it under its grant: within the grant's caps
            account = _hold_under_grant(account, principal.dn, request.amount, increase, now_us)
        _require_available(account, increase, "the larger hold")
    extended = evolve(hold, amount=hold.amount + increase, expires_at_us=expires_at_us,
                                   payee_account_id=request.payee_account_id or hold.payee_account_id)
    account = evolve(account, held=account.held + increase)
    return account, extended, _entry(TransactionKind.EXTEND, request, principal, now_us, seq,
                                     account_id=account.account_id, amount=increase or None,
                                     hold_id=hold.hold_id, hold_amount=extended.amount,
                                     hold_state=extended.state, expires_at_us=expires_at_us,
                                     payee_account_id=request.payee_account_id, on_behalf_of_dn=hold.on_behalf_of_dn)


def charge_hold(hold: Hold | None, account: Account | None, payee: Account | None, request: ChargeHold, *,
                principal: Principal, now_us: int, seq: int) -> tuple[Account, Account, Hold, Transaction]:
    check_identifier(request.hold_id, "hold id")
    check_identifier(request.payee_account_id, "payee account id")
    check_amount(request.amount)
    hold = _require_hold(hold, request.hold_id)
    invariant(account is not None and account.account_id == hold.account_id, "a hold's account is loaded")
    payee = require_account(payee, request.payee_account_id)
    authorize_charge_hold(principal, account, hold, payee)
    _require_active_hold(hold, now_us)
    _require_open(account, "spending")
    _require_not_closed(payee)
    if payee.account_id == account.account_id:
        raise _refuse("InvalidArgument", f"hold {hold.hold_id} cannot be charged to its own account "
                                         f"{account.account_id}; release it instead")
    if request.amount > hold.remaining:
        raise _refuse("ExceedsHold", f"hold {hold.hold_id} has {hold.remaining} credits left; the charge "
                                     f"is {request.amount} (over by {request.amount - hold.remaining})")
    account = _spend(account, request.amount, now_us)
    payee = _credit(payee, request.amount)
    charged = hold.charged + request.amount
    ended = charged == hold.amount
    updated = evolve(hold, charged=charged,
                                  state=HoldState.CHARGED_OUT if ended else HoldState.ACTIVE,
                                  ended_seq=seq if ended else None, ended_at_us=now_us if ended else None)
    account = _debit(account, request.amount, unheld=request.amount)
    return account, payee, updated, _entry(
        TransactionKind.CHARGE, request, principal, now_us, seq, account_id=account.account_id,
        counterparty_account_id=payee.account_id, amount=request.amount, hold_id=hold.hold_id,
        hold_amount=hold.amount, hold_state=updated.state, on_behalf_of_dn=hold.on_behalf_of_dn)


def settle_hold(hold: Hold | None, account: Account | None, payee: Account | None, request: SettleHold, *,
                principal: Principal, now_us: int, seq: int) -> tuple[Account, Account, Hold, Transaction]:
    """Charge ``amount`` (0 up to the hold's remainder) to the payee and return the rest to the account,
    in one transaction: the hold ends, settled. Who may: as for a charge. Settling 0 moves no money out
    of the account: like a release, a frozen account or a spent spending limit does not refuse it."""
    check_identifier(request.hold_id, "hold id")
    check_identifier(request.payee_account_id, "payee account id")
    _check_limit(request.amount, "amount")
    hold = _require_hold(hold, request.hold_id)
    invariant(account is not None and account.account_id == hold.account_id, "a hold's account is loaded")
    payee = require_account(payee, request.payee_account_id)
    authorize_settle_hold(principal, account, hold, payee)
    _require_active_hold(hold, now_us)
    if request.amount > 0:
        _require_open(account, "spending")
    _require_not_closed(payee)
    if payee.account_id == account.account_id:
        raise _refuse("InvalidArgument", f"hold {hold.hold_id} cannot be settled to its own account "
                                         f"{account.account_id}; release it instead")
    if request.amount > hold.remaining:
        raise _refuse("ExceedsHold", f"hold {hold.hold_id} has {hold.remaining} credits left; the settlement "
                                     f"charges {request.amount} (over by {request.amount - hold.remaining})")
    remainder = hold.remaining
    invariant(remainder >= 1 and account.held >= remainder, "an active hold has credits left, all held")
    if request.amount > 0:               # settling 0 spends nothing: it is a release
        account = _spend(account, request.amount, now_us)
    payee = _credit(payee, request.amount)
    settled = evolve(hold, charged=hold.charged + request.amount, state=HoldState.SETTLED,
                                  ended_seq=seq, ended_at_us=now_us)
    account = _debit(account, request.amount, unheld=remainder)
    return account, payee, settled, _entry(
        TransactionKind.SETTLE, request, principal, now_us, seq, account_id=account.account_id,
        counterparty_account_id=payee.account_id, amount=request.amount, released_amount=remainder - request.amount,
        hold_id=hold.hold_id, hold_amount=hold.amount, hold_state=HoldState.SETTLED,
        on_behalf_of_dn=hold.on_behalf_of_dn)


def _end_hold(hold: Hold, account: Account, state: HoldState, kind: TransactionKind, request: Request,
              principal: Principal, now_us: int, seq: int) -> tuple[Account, Hold, Transaction]:
    remainder = hold.remaining
    invariant(remainder >= 1 and account.held >= remainder, "an active hold has credits left, all held")
    ended = evolve(hold, state=state, ended_seq=seq, ended_at_us=now_us)
    account = evolve(account, held=account.held - remainder)
    return account, ended, _entry(kind, request, principal, now_us, seq, account_id=account.account_id,
                                  amount=remainder, hold_id=hold.hold_id, hold_amount=hold.amount,
                                  hold_state=state, on_behalf_of_dn=hold.on_behalf_of_dn)


def release_hold(hold: Hold | None, account: Account | None, request: ReleaseHold, *, principal: Principal,
                 now_us: int, seq: int) -> tuple[Account, Hold, Transaction]:
    check_identifier(request.hold_id, "hold id")
    hold = _require_hold(hold, request.hold_id)
    invariant(account is not None and account.account_id == hold.account_id, "a hold's account is loaded")
    authorize_release_hold(principal, account, hold)
    _require_active_hold(hold, now_us)
    return _end_hold(hold, account, HoldState.RELEASED, TransactionKind.RELEASE, request, principal, now_us, seq)


def expire_hold(hold: Hold | None, account: Account | None, request: ExpireHold, *, principal: Principal,
                now_us: int, seq: int) -> tuple[Account, Hold, Transaction]:
    check_identifier(request.hold_id, "hold id")
    hold = _require_hold(hold, request.hold_id)
    invariant(account is not None and account.account_id == hold.account_id, "a hold's account is loaded")
    authorize_expire_hold(principal, hold)
    if hold.state is not HoldState.ACTIVE:
        raise _refuse("HoldEnded", f"hold {hold.hold_id} has already ended ({hold.state.value} "
                                   f"in transaction {hold.ended_seq})")
    if not hold.is_expired_at(now_us):
        raise _refuse("HoldNotExpired", f"hold {hold.hold_id} expires at {hold.expires_at_us} µs; "
                                        f"it is now {now_us} µs")
    return _end_hold(hold, account, HoldState.EXPIRED, TransactionKind.EXPIRE, request, principal, now_us, seq)


# ---------------------------------------------------------------------------------------------
# Idempotency: a request id answers once per caller


_KEY_JSON = json.JSONEncoder(ensure_ascii=False)    # json.dumps(..., ensure_ascii=False) made one per call


@functools.lru_cache(maxsize=4096)       # asked twice per item of a batch: by its prefetch, then by execute
def request_record_key(principal_dn: str, request_id: str) -> str:
    return hashlib.sha256(_KEY_JSON.encode([principal_dn, request_id]).encode("utf-8")).hexdigest()


# Request fields added after requests were first recorded: left out of the request hash while unused, so
# that a retry of a request recorded before them still matches its record.
_FIELDS_HASHED_ONLY_WHEN_SET = frozenset({"on_behalf_of_dn"})


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}      # per request type (dataclasses.fields is slow to ask)
_REQUEST_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(request: Request, principal: Principal) -> str:
    body: dict[str, object] = {"operation": type(request).__name__, "principal": principal.dn}
    names = _FIELD_NAMES.get(type(request))
    if names is None:
        names = _FIELD_NAMES[type(request)] = tuple(field.name for field in dataclasses.fields(request))
    for name in names:
        value = getattr(request, name)
        if value is None and name in _FIELDS_HASHED_ONLY_WHEN_SET:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        elif value is not None and type(value) not in (int, str):
            value = repr(value)          # malformed input still hashes; validation refuses it later
        body[name] = value
    return hashlib.sha256(_REQUEST_JSON.encode(body).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# execute(): idempotency + one operation + sealing


class LedgerView(Protocol):
    """Read access to the documents one operation may touch (the service backs it by one store
    transaction; the model test by dictionaries). Every getter returns None when absent."""

    def account(self, account_id: str) -> Account | None: ...
    def hold(self, hold_id: str) -> Hold | None: ...
    def pending_mint(self, pending_mint_id: str) -> PendingMint | None: ...
    def money_supply(self) -> MoneySupply: ...
    def head(self) -> LedgerHead: ...
    def request_record(self, key: str) -> RequestRecord | None: ...
    def transaction(self, seq: int) -> Transaction | None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to write (all in one store transaction) and what to answer."""

    transaction: Transaction             # the answer; on a retry, the original transaction
    replayed: bool
    accounts: tuple[Account, ...] = ()
    holds: tuple[Hold, ...] = ()
    pending_mints: tuple[PendingMint, ...] = ()
    money_supply: MoneySupply | None = None
    head: LedgerHead | None = None
    request_record: RequestRecord | None = None


def _hold_and_account(view: LedgerView, hold_id: object) -> tuple[Hold | None, Account | None]:
    if type(hold_id) is not str:
        return None, None
    hold = view.hold(hold_id)
    return hold, (view.account(hold.account_id) if hold is not None else None)


def _maybe_account(view: LedgerView, account_id: object) -> Account | None:
    return view.account(account_id) if type(account_id) is str else None


def _maybe_pending_mint(view: LedgerView, pending_mint_id: object) -> PendingMint | None:
    return view.pending_mint(pending_mint_id) if type(pending_mint_id) is str else None


def _apply(view: LedgerView, request: Request, principal: Principal, now_us: int, seq: int,
           policy: BankPolicy) -> tuple[Transaction, dict]:
    common = {"principal": principal, "now_us": now_us, "seq": seq}
    match request:
        case CreateAccount():
            account, entry = create_account(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case SetHolder():
            account, entry = set_holder(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case RemoveHolder():
            account, entry = remove_holder(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case SetStatus():
            account, entry = set_status(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case SetCreditLimit():
            account, entry = set_credit_limit(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case SetSpendingLimit():
            account, entry = set_spending_limit(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case GrantService():
            account, entry = grant_service(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case RevokeService():
            account, entry = revoke_service(_maybe_account(view, request.account_id), request, **common)
            return entry, {"accounts": (account,)}
        case Mint():
            account, supply, pending, entry = mint(_maybe_account(view, request.account_id), view.money_supply(),
                                                   request, policy=policy, **common)
            if pending is not None:
                return entry, {"pending_mints": (pending,)}
            return entry, {"accounts": (account,), "money_supply": supply}
        case ApproveMint():
            pending = _maybe_pending_mint(view, request.pending_mint_id)
            account = view.account(pending.account_id) if pending is not None else None
            pending, account, supply, entry = approve_mint(pending, account, view.money_supply(), request, **common)
            return entry, {"pending_mints": (pending,), "accounts": (account,), "money_supply": supply}
        case CancelMint():
            pending, entry = cancel_mint(_maybe_pending_mint(view, request.pending_mint_id), request, **common)
            return entry, {"pending_mints": (pending,)}
        case ExpireMint():
            pending, entry = expire_mint(_maybe_pending_mint(view, request.pending_mint_id), request, **common)
            return entry, {"pending_mints": (pending,)}
        case Retire():
            account, supply, pending, entry = retire(_maybe_account(view, request.account_id), view.money_supply(),
                                                     request, policy=policy, **common)
            if pending is not None:
                return entry, {"pending_mints": (pending,)}
            return entry, {"accounts": (account,), "money_supply": supply}
        case Transfer():
            payer, payee, entry = transfer(_maybe_account(view, request.from_account_id),
                                           _maybe_account(view, request.to_account_id), request, **common)
            return entry, {"accounts": (payer, payee)}
        case CreateHold():
            account, hold, entry = create_hold(_maybe_account(view, request.account_id),
                                               _maybe_account(view, request.payee_account_id), request,
                                               policy=policy, **common)
            return entry, {"accounts": (account,), "holds": (hold,)}
        case ExtendHold():
            account, hold, entry = extend_hold(*_hold_and_account(view, request.hold_id),
                                               _maybe_account(view, request.payee_account_id), request,
                                               policy=policy, **common)
            return entry, {"accounts": (account,), "holds": (hold,)}
        case ChargeHold():
            hold, account = _hold_and_account(view, request.hold_id)
            payee = _maybe_account(view, request.payee_account_id)
            account, payee, hold, entry = charge_hold(hold, account, payee, request, **common)
            return entry, {"accounts": (account, payee), "holds": (hold,)}
        case SettleHold():
            hold, account = _hold_and_account(view, request.hold_id)
            payee = _maybe_account(view, request.payee_account_id)
            account, payee, hold, entry = settle_hold(hold, account, payee, request, **common)
            return entry, {"accounts": (account, payee), "holds": (hold,)}
        case ReleaseHold():
            account, hold, entry = release_hold(*_hold_and_account(view, request.hold_id), request, **common)
            return entry, {"accounts": (account,), "holds": (hold,)}
        case ExpireHold():
            account, hold, entry = expire_hold(*_hold_and_account(view, request.hold_id), request, **common)
            return entry, {"accounts": (account,), "holds": (hold,)}
    raise _refuse("InvalidArgument", f"unknown operation {type(request).__name__}")


def execute(view: LedgerView, request: Request, *, principal: Principal, now_us: int,
            sign: Callable[[bytes], bytes] | None, policy: BankPolicy = BankPolicy()) -> Outcome:
    """Run one mutating request: a retry answers the original transaction, a reused id is refused,
    a new request yields its new states, one sealed transaction, the new head and its record.
    ``sign=None`` leaves the new transaction unsigned (an item of a batch, see :func:`check_batch`)."""
    invariant(type(now_us) is int and 0 <= now_us <= TIME_MAX_US, "the server's clock is sane")
    require_full_credential(principal, type(request).__name__)
    check_dn(principal.dn, "caller DN", grid_form=False)
    _check_request_id(request.request_id)
    key = request_record_key(principal.dn, request.request_id)
    digest = request_hash(request, principal)
    record = view.request_record(key)
    if record is not None:
        if record.request_hash != digest:
            raise _refuse("RequestIdReused", f"request id {request.request_id} was already used by "
                                             f"{principal.dn} for a different request "
                                             f"(transaction {record.transaction_seq})")
        original = view.transaction(record.transaction_seq)
        invariant(original is not None and original.hash == record.transaction_hash
                  and original.request_id == request.request_id, "a request record points at its transaction")
        return Outcome(transaction=original, replayed=True)
    head = view.head()
    entry, changes = _apply(view, request, principal, now_us, head.seq + 1, policy)
    transaction, new_head = seal(entry, head, sign)
    return Outcome(transaction=transaction, replayed=False, head=new_head,
                   request_record=RequestRecord(key=key, request_id=request.request_id, principal_dn=principal.dn,
                                                request_hash=digest, transaction_seq=transaction.seq,
                                                transaction_hash=transaction.hash, recorded_at_us=now_us),
                   **changes)


# ---------------------------------------------------------------------------------------------
# Batches (ApplyBatch): many requests of one caller, applied in order in one store transaction


BATCH_ITEMS_MAX = 1_500
BATCH_OPERATIONS = (ChargeHold, SettleHold, ReleaseHold, Transfer, ExtendHold)


def check_batch(requests: Sequence[Request], principal: Principal) -> None:
    """Refuse a whole batch before any of it is applied: a limited proxy's (as any change); none or more
    than BATCH_ITEMS_MAX items; an operation a batch does not carry; a request id twice.

    Each item is then run by :func:`execute` as the single operation would be — the same checks, the same
    policy decision, its own request record (``request_record_key(principal, request id)``: a retried
    batch answers the applied items' original transactions) — seeing the effect of the items before it.
    A refused item changes nothing and the others still apply; the applied ones are stored together (one
    store transaction). Their transactions are sealed unsigned but the last, which the bank signs: its
    signature covers the others through the chain (``ledger_chain``).

    At most 1,500 items: an item writes up to 6 documents (a charge that ends its hold: the payer, the
    payee, the hold moved to the ended ones, the transaction and the request record), and one store
    transaction writes at most 10,000 (``StoreLimits.transaction_writes_max``)."""
    authorize_batch(principal)
    if not requests:
        raise _refuse("InvalidArgument", "a batch needs at least one item")
    if len(requests) > BATCH_ITEMS_MAX:
        raise _refuse("BatchTooLarge", f"a batch holds at most {BATCH_ITEMS_MAX} items; this one has {len(requests)}: "
                                       f"send it as {-(-len(requests) // BATCH_ITEMS_MAX)} batches")
    first_item: dict[object, int] = {}
    for number, request in enumerate(requests, 1):
        if type(request) not in BATCH_OPERATIONS:
            raise _refuse("InvalidArgument", f"item {number} is a {type(request).__name__}; a batch carries "
                                             f"{', '.join(kind.__name__ for kind in BATCH_OPERATIONS)} only")
        earlier = first_item.setdefault(request.request_id, number)
        if earlier != number:
            raise _refuse("InvalidArgument", f"request id {request.request_id!r} is used by items {earlier} and "
                                             f"{number} of the batch; every item needs its own")


# ---------------------------------------------------------------------------------------------
# Queries (pure)


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    total: int
    held: int
    available: int
    credit_limit: int


@dataclass(frozen=True, slots=True)
class Statement:
    """An account's opening balance at ``from_us``, its transactions in [from_us, to_us), the closing
    balance (the bank's answer holds Transactions; the client's, its mirror of them)."""

    account_id: str
    from_us: int
    to_us: int
    opening_balance: int
    closing_balance: int
    transactions: tuple
    truncated: bool                      # more transactions in the period than a statement lists


def viewed_account(account: Account | None, account_id: str, *, principal: Principal, operation: str) -> Account:
    """The account a query shows (GetAccount, ListHolds, History, Statement): it exists, and the
    policy lets the caller view it."""
    account = require_account(account, account_id)
    authorize_view(principal, operation, account)
    return account


def balance(account: Account | None, account_id: str, *, principal: Principal) -> Balance:
    account = viewed_account(account, account_id, principal=principal, operation="GetBalance")
    return Balance(account.account_id, account.balance, account.held, account.available, account.credit_limit)


# ---------------------------------------------------------------------------------------------
# An in-memory ledger: the core over dictionaries (tests, offline tools, the model test)


class MemoryLedger:
    """A LedgerView over dictionaries that applies each Outcome; no I/O."""

    def __init__(self, *, sign: Callable[[bytes], bytes], policy: BankPolicy = BankPolicy()) -> None:
        self.sign = sign
        self.policy = policy
        self.accounts: dict[str, Account] = {}
        self.holds: dict[str, Hold] = {}
        self.pending_mints: dict[str, PendingMint] = {}
        self.supply = MoneySupply()
        self.ledger_head = LedgerHead()
        self.request_records: dict[str, RequestRecord] = {}
        self.transactions: list[Transaction] = []

    def account(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id)

    def hold(self, hold_id: str) -> Hold | None:
        return self.holds.get(hold_id)

    def pending_mint(self, pending_mint_id: str) -> PendingMint | None:
        return self.pending_mints.get(pending_mint_id)

    def money_supply(self) -> MoneySupply:
        return self.supply

    def head(self) -> LedgerHead:
        return self.ledger_head

    def request_record(self, key: str) -> RequestRecord | None:
        return self.request_records.get(key)

    def transaction(self, seq: int) -> Transaction | None:
        return self.transactions[seq - 1] if 1 <= seq <= len(self.transactions) else None

    def apply(self, outcome: Outcome) -> None:
        if outcome.replayed:
            return
        for account in outcome.accounts:
            self.accounts[account.account_id] = account
        for hold in outcome.holds:
            self.holds[hold.hold_id] = hold
        for pending in outcome.pending_mints:
            self.pending_mints[pending.pending_mint_id] = pending
        if outcome.money_supply is not None:
            self.supply = outcome.money_supply
        invariant(outcome.head is not None and outcome.request_record is not None
                  and outcome.head.seq == len(self.transactions) + 1, "a new outcome extends the ledger")
        self.ledger_head = outcome.head
        self.request_records[outcome.request_record.key] = outcome.request_record
        self.transactions.append(outcome.transaction)

    def run(self, request: Request, *, principal: Principal, now_us: int) -> Outcome:
        outcome = execute(self, request, principal=principal, now_us=now_us, sign=self.sign, policy=self.policy)
        self.apply(outcome)
        return outcome

    def audit(self, verify_signature: Callable[[bytes, bytes], bool], **options: object) -> AuditReport:
        return audit(self.transactions, self.accounts.values(), self.holds.values(), self.supply,
                     verify_signature, head=self.ledger_head, pending_mints=self.pending_mints.values(), **options)
