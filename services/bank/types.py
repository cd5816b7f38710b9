"""The Bank's domain types: frozen, slotted dataclasses and their enums (no behaviour beyond
derived values). The ledger's operations (``ledger.py``), its chain (``ledger_chain.py``), its
audit (``audit.py``), its policy (``policy.py``) and its documents (``documents.py``) share them.

* **Time** is integer microseconds since the Unix epoch (UTC), assigned by the server. Field
  names end in ``_us``.
* **Money** is a Python ``int`` in the smallest unit; no floats.
"""
from __future__ import annotations

import dataclasses
import enum
import operator
from dataclasses import dataclass

from gridcredit.errors import invariant

GENESIS_HASH = "0" * 64                  # the previous hash of the first transaction


_FIELDS_OF: dict[type, tuple[tuple[str, ...], operator.attrgetter]] = {}


def evolve(instance, /, **changes):
    """``dataclasses.replace`` for the states here (every field an init field): the same new instance, made
    through its constructor, without asking ``dataclasses.fields`` each time (a batch of 1,000 charges makes
    4,000 new states)."""
    cls = type(instance)
    known = _FIELDS_OF.get(cls)
    if known is None:
        fields = dataclasses.fields(cls)
        invariant(all(field.init for field in fields), "evolve takes states whose fields are all init fields")
        names = tuple(field.name for field in fields)
        known = _FIELDS_OF[cls] = (names, operator.attrgetter(*names))
    names, values_of = known
    values = dict(zip(names, values_of(instance)))
    values.update(changes)
    return cls(**values)


class Role(enum.Enum):
    OWNER = "owner"
    MANAGER = "manager"
    MEMBER = "member"
    VIEWER = "viewer"


SPENDING_ROLES = frozenset({Role.OWNER, Role.MANAGER, Role.MEMBER})
CONTROLLING_ROLES = frozenset({Role.OWNER, Role.MANAGER})


class AccountStatus(enum.Enum):
    OPEN = "open"
    FROZEN = "frozen"
    CLOSED = "closed"


class HoldState(enum.Enum):
    ACTIVE = "active"
    CHARGED_OUT = "charged-out"
    RELEASED = "released"
    EXPIRED = "expired"
    SETTLED = "settled"                  # its final charge made and the rest released, in one transaction


class SupplyChange(enum.Enum):
    """What a pending mint does once approved: issue credits, or retire them."""

    MINT = "mint"
    RETIRE = "retire"


class PendingMintState(enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class TransactionKind(enum.Enum):
    CREATE_ACCOUNT = "create-account"
    SET_HOLDER = "set-holder"
    REMOVE_HOLDER = "remove-holder"
    SET_STATUS = "set-status"
    SET_CREDIT_LIMIT = "set-credit-limit"
    SET_SPENDING_LIMIT = "set-spending-limit"
    MINT_REQUEST = "mint-request"
    MINT = "mint"
    MINT_CANCEL = "mint-cancel"
    MINT_EXPIRE = "mint-expire"
    RETIRE_REQUEST = "retire-request"
    RETIRE = "retire"
    TRANSFER = "transfer"
    GRANT_SERVICE = "grant-service"
    REVOKE_SERVICE = "revoke-service"
    HOLD = "hold"
    EXTEND = "extend"
    CHARGE = "charge"
    SETTLE = "settle"
    RELEASE = "release"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class Holder:
    dn: str
    role: Role


@dataclass(frozen=True, slots=True)
class ServiceGrant:
    """An owner's grant to a service identity (a site's JARM): it may place holds on the account on behalf
    of the account's spending holders — each hold at most ``hold_max`` credits and, per period of
    ``period_us``, at most ``period_max`` credits put on hold in all (new holds and raises; what is later
    released does not count back). None: no such cap."""

    service_dn: str
    hold_max: int | None
    period_max: int | None
    period_us: int | None
    period_index: int                    # now_us // period_us of the window `held_in_period` counts
    held_in_period: int
    granted_at_us: int

    def held_at(self, now_us: int) -> int:
        """Credits put on hold under the grant in the period that contains ``now_us``."""
        if self.period_us is None:
            return 0
        return self.held_in_period if now_us // self.period_us == self.period_index else 0


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    project: str
    holders: tuple[Holder, ...]          # sorted by DN, one entry per DN
    status: AccountStatus
    balance: int
    held: int                            # Σ (amount − charged) of the account's active holds
    credit_limit: int                    # overdraft allowed: balance may go down to −credit_limit
    spending_limit: int | None           # credits per period (charges + transfers out), None: no limit
    spending_period_us: int | None
    spending_period_index: int           # now_us // spending_period_us of the window `spent_in_period` counts
    spent_in_period: int
    created_at_us: int
    grants: tuple[ServiceGrant, ...] = ()   # sorted by service DN, one per DN (absent from older documents)

    @property
    def available(self) -> int:
        return self.balance - self.held + self.credit_limit

    def role_of(self, dn: str) -> Role | None:
        for holder in self.holders:
            if holder.dn == dn:
                return holder.role
        return None

    def grant_of(self, service_dn: str) -> ServiceGrant | None:
        for grant in self.grants:
            if grant.service_dn == service_dn:
                return grant
        return None

    def spent_at(self, now_us: int) -> int:
        if self.spending_period_us is None:
            return 0
        return self.spent_in_period if now_us // self.spending_period_us == self.spending_period_index else 0


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    account_id: str
    amount: int
    charged: int
    expires_at_us: int
    reference: str
    creator_dn: str
    collector_dn: str | None             # another identity that may charge (to the payee, up to the amount),
                                         # extend the expiry and release it
    payee_account_id: str | None         # where every charge goes; required with a collector
    state: HoldState
    created_at_us: int
    created_seq: int
    ended_seq: int | None                # the transaction that ended it, exactly one
    ended_at_us: int | None
    on_behalf_of_dn: str | None = None   # made by a service (creator_dn) under its grant for this holder

    @property
    def remaining(self) -> int:
        return self.amount - self.charged

    def is_expired_at(self, now_us: int) -> bool:
        return now_us >= self.expires_at_us


@dataclass(frozen=True, slots=True)
class PendingMint:
    """A change of the money supply above the approval threshold, waiting for a second administrator:
    a mint (``mint-<seq>``) or a retirement (``retire-<seq>``)."""

    pending_mint_id: str
    account_id: str
    amount: int
    change: SupplyChange
    requester_dn: str
    requested_at_us: int
    expires_at_us: int                   # from then on only ExpireMint ends it
    state: PendingMintState
    ended_by_dn: str | None              # who approved or cancelled it, or the sweeper that expired it
    ended_seq: int | None                # the transaction that ended it, exactly one
    ended_at_us: int | None

    def is_expired_at(self, now_us: int) -> bool:
        return now_us >= self.expires_at_us


@dataclass(frozen=True, slots=True)
class MoneySupply:
    issued: int = 0
    retired: int = 0

    @property
    def outstanding(self) -> int:
        return self.issued - self.retired


@dataclass(frozen=True, slots=True)
class LedgerHead:
    seq: int = 0                         # seq of the last transaction; 0 for an empty ledger
    hash: str = GENESIS_HASH


@dataclass(frozen=True, slots=True)
class RequestRecord:
    key: str                             # request_record_key(principal_dn, request_id)
    request_id: str
    principal_dn: str
    request_hash: str
    transaction_seq: int                 # the first answer: that transaction, immutable
    transaction_hash: str                # …and its hash, to check the answer loaded on a retry
    recorded_at_us: int


@dataclass(frozen=True, slots=True)
class Transaction:
    """One immutable ledger entry. Money effects by kind (``account`` = ``account_id``):

    mint: account += amount, issued += amount (``pending_mint_id`` and ``approver_dn`` when it
    approves a pending mint) · mint-request, mint-cancel, mint-expire: nothing moves (``amount`` is
    the pending mint's; a mint-request's ``expires_at_us`` is its expiry) · retire: account −=
    amount, retired += amount · transfer and charge: account −= amount, counterparty += amount (a
    charge also lowers the account's held by amount) · settle: account −= amount, counterparty += amount, held −=
    amount + released_amount (the final charge, 0 or more, and the remainder returned; the hold ends) · hold: held +=
    amount · extend: held += amount (the increase; None when only the expiry moves) · release, expire: held −= amount
    (the remainder returned) · grant-service, revoke-service: nothing moves.
    ``hold_state`` is the hold's state after the transaction.
    """

    seq: int
    kind: TransactionKind
    at_us: int
    request_id: str
    principal_dn: str
    account_id: str | None = None
    counterparty_account_id: str | None = None
    amount: int | None = None
    hold_id: str | None = None
    hold_amount: int | None = None
    hold_state: HoldState | None = None
    expires_at_us: int | None = None
    reference: str | None = None
    collector_dn: str | None = None
    payee_account_id: str | None = None  # hold, extend: where the hold's charges must go
    pending_mint_id: str | None = None
    approver_dn: str | None = None
    project: str | None = None
    holder_dn: str | None = None
    role: Role | None = None
    status: AccountStatus | None = None
    credit_limit: int | None = None
    spending_limit: int | None = None
    spending_period_us: int | None = None
    released_amount: int | None = None   # settle: the remainder returned to the account
    on_behalf_of_dn: str | None = None   # a hold made under a service grant, and each transaction on it: the
                                         # holder the service (principal_dn, or the hold's creator) acts for
    service_dn: str | None = None        # grant-service, revoke-service: the service identity
    grant_hold_max: int | None = None    # grant-service: its caps (None: none)
    grant_period_max: int | None = None
    grant_period_us: int | None = None
    prev_hash: str = ""
    hash: str = ""
    signature: str = ""                  # base64 of the bank's signature over signing_input()


MINT_APPROVAL_DURATION_MIN_US = 1_000_000
MINT_APPROVAL_DURATION_MAX_US = 366 * 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class BankPolicy:
    mint_approval_threshold: int | None = None   # mints above this need a second administrator
    hold_duration_max_us: int = 31 * 86_400 * 1_000_000
    mint_approval_duration_us: int = 7 * 86_400 * 1_000_000  # a pending mint expires this long after its request

    def __post_init__(self) -> None:
        invariant(MINT_APPROVAL_DURATION_MIN_US <= self.mint_approval_duration_us <= MINT_APPROVAL_DURATION_MAX_US,
                  "the mint approval duration is within its bounds")


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    """What became of one item of an ApplyBatch, in the order of the items — the WSDL's BatchItemResult (the
    service's spyne type is made from this one, and the service answers with it; ``BankClient.apply_batch``
    reads it back into it). Applied (now, or before: ``replayed``): the transaction it made — its ``seq``,
    ``kind``, ``at_us``, ``amount``, the hold's ``hold_state`` after it, a settlement's ``released_amount``,
    its ``hash`` and, for the last one the batch made, the bank's ``signature`` over it (which covers the
    others through the ledger's chain). Refused: ``fault_code`` (the single operation's fault code, e.g.
    ``Client.ExceedsHold``) and ``fault_message``; it changed nothing. ``code`` is the reason alone
    (``ExceedsHold``), as ``RemoteFault.code``."""

    request_id: str
    applied: bool
    replayed: bool | None = None
    seq: int | None = None
    kind: str | None = None
    at_us: int | None = None
    hold_id: str | None = None
    hold_state: str | None = None
    amount: int | None = None
    released_amount: int | None = None
    hash: str | None = None
    signature: str | None = None
    fault_code: str | None = None
    fault_message: str | None = None

    @property
    def ok(self) -> bool:
        """Applied, now or before (the name MARKET-DESIGN.md gives it)."""
        return self.applied

    @property
    def code(self) -> str | None:
        return None if self.fault_code is None else self.fault_code.split(".")[-1]
