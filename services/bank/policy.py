"""Who may do what in the Bank: every operation's decision — principal × operation × resource — is
made here, and nowhere else.

The caller is one :class:`~gridcredit.security.principal.Principal`, resolved once per request by
:func:`principal_for` from the verified chain (DN, proxy, limited proxy) and the ``[bank]``
configuration (administrators, auditors, service identities). The SOAP face (``service.py``)
resolves it and passes it on; it decides nothing. What needs no resource (the audit, the pending
mints, the money supply, ``WhoAmI``) it asks here before it calls the Bank; everything else is
asked by the pure core (``ledger.py``) and the Bank's queries (``bank.py``) once they have loaded
what the request names — at one point of the ledger's refusal precedence: request id → request
shape → existence → **authorization** → state → funds and limits. One exception comes first of
all: a limited proxy (RFC 3820, made for data transfer) may read but never change the ledger, so
any change it asks for is refused before its request is even read (:func:`require_full_credential`).

A refusal is a ``DomainError`` with the code ``NotAuthorized`` (the SOAP fault
``Client.NotAuthorized``) — or ``SecondAdministratorRequired`` for an administrator approving
their own mint — made in this module only, through its ``BOOK`` (``gridcredit/policy.py``, the
mechanism every service's policy shares): a rule for every operation, and every decision, allowed
or refused, counted per operation (``BOOK.decisions()``), so that a test walks every operation of
``wsdl/bank.wsdl`` to a decision here (tests/test_bank_policy.py).

Authorization (``R`` = the caller's role on the account *at the time of the request*). Who
controls the bank: administrators get no spending power from their office and cannot give any —
to themselves or anyone — so no sequence of administrator operations moves money out of an
account they do not own; they issue and retire money in the open (a mint or a retirement above
``mint_approval_threshold`` waits for a second administrator), and every holder change they make
is a transaction in the account's history:

==========================  =====================================================================
create account              administrator (names the first owner; the account starts empty)
set holder                  owner (any role); manager (member and viewer roles only);
                            administrator: give the viewer role only, take any role away
remove holder               owner; manager (members and viewers); administrator
set status                  administrator (any change); owner (freeze, close); only
                            administrators unfreeze; closed is final
set credit limit            administrator
set spending limit          administrator, owner, manager
grant, revoke a service     owner (never an administrator as such: a grant lets a service spend)
mint, retire, approve mint  administrator (an approval by a different administrator)
cancel mint                 administrator (the one who requested it too)
list pending mints, audit   administrator, auditor
transfer                    owner, manager, member of the paying account; not service identities
create hold                 owner, manager, member (service identities too, if they hold the role);
                            on behalf of a holder: a service the owners granted, for a current
                            owner, manager or member (the caps are the ledger's: GrantLimitExceeded)
charge, settle              a *current spender for the hold*: its creator while still owner,
                            manager or member, or an owner or manager (not service identities);
                            or the named collector — always to the hold's payee when it has one;
                            or the service that made it on behalf of a holder
extend                      a current spender (later expiry, larger amount, another payee); the
                            collector only a later expiry; the service that made it on behalf of a
                            holder a later expiry, and a larger amount while its grant stands and
                            the holder still spends
release                     a current spender, the collector, the service that made it on behalf
                            of a holder, an administrator
apply a batch               anyone with a full credential: each item (a charge, settlement,
                            release, transfer or extension) is decided by its own operation's rule
view (balance, account,     administrator and every holder (viewer too); a hold also its creator
holds, history, statement)  and its collector
money supply, WhoAmI        anyone authenticated
transparency (web page)     anyone, without a certificate too: the money supply over time, every
                            mint and retirement (amount, account, administrators), the last audit
expire (a hold, a mint)     anyone, and only once due (the ledger checks when)
viewer, stranger            nothing that changes state
==========================  =====================================================================

A service grant gives the service no role: it acts only on behalf of a holder who may spend at
that moment, and only through holds. Revoking it, or removing that holder, stops new holds and
raises; the holds already made stay for the service to extend in time, charge, settle or release
(their funds were authorized when they were made).

A holder who is removed or demoted to viewer loses every power over the holds they made: those
holds stay as they are (their funds reserved, their collector still able to take what was
authorized) for the account's owners and managers to charge or release, or they expire.
"""
from __future__ import annotations

import dataclasses

from gridcredit.policy import PolicyBook, Rule
from gridcredit.security.principal import Principal

from .types import CONTROLLING_ROLES, SPENDING_ROLES, Account, AccountStatus, BankPolicy, Hold, PendingMint, Role


_VIEWERS = "administrators and every holder of the account"
_OVERSEERS = "administrators and auditors"
_ANYONE = "anyone authenticated"

BOOK = PolicyBook("Bank", {
    "CreateAccount": Rule("administrators", True),
    "SetHolder": Rule("owners any role; managers member and viewer; administrators give viewer only, take any", True),
    "RemoveHolder": Rule("owners; managers (members and viewers); administrators", True),
    "SetStatus": Rule("administrators any change; owners freeze and close", True),
    "SetCreditLimit": Rule("administrators", True),
    "SetSpendingLimit": Rule("administrators, owners, managers", True),
    "GrantService": Rule("owners (not administrators)", True),
    "RevokeService": Rule("owners (not administrators)", True),
    "Mint": Rule("administrators", True),
    "ApproveMint": Rule("an administrator other than the one who asked", True),
    "CancelMint": Rule("administrators (the one who asked too)", True),
    "ListPendingMints": Rule(_OVERSEERS, False),
    "Retire": Rule("administrators", True),
    "Transfer": Rule("owners, managers, members of the paying account; not service identities", True),
    "CreateHold": Rule("owners, managers, members (service identities too); a granted service on behalf of "
                       "one of them", True),
    "ExtendHold": Rule("a current spender for the hold; its collector a later expiry only; the service that made "
                       "it for a holder within its grant", True),
    "ChargeHold": Rule("a current spender for the hold, its collector or the service that made it for a holder, "
                       "to its payee", True),
    "SettleHold": Rule("a current spender for the hold, its collector or the service that made it for a holder, "
                       "to its payee", True),
    "ReleaseHold": Rule("a current spender for the hold, its collector, the service that made it for a holder, "
                        "administrators", True),
    "ApplyBatch": Rule("anyone with a full credential; each item decided by its own operation's rule", True),
    "GetBalance": Rule(_VIEWERS, False),
    "GetAccount": Rule(_VIEWERS, False),
    "GetHold": Rule(_VIEWERS + ", the hold's creator and collector", False),
    "ListHolds": Rule(_VIEWERS, False),
    "History": Rule(_VIEWERS, False),
    "Statement": Rule(_VIEWERS, False),
    "MoneySupply": Rule(_ANYONE, False),
    "Audit": Rule(_OVERSEERS, False),
    "WhoAmI": Rule(_ANYONE, False),
    "Transparency": Rule("anyone, with or without a certificate: the money supply, every mint and retirement, "
                         "the last audit's result (the web view's public page)", False, soap=False),
    "ExpireHold": Rule("anyone, once due (the expiry sweep)", True, soap=False),
    "ExpireMint": Rule("anyone, once due (the expiry sweep)", True, soap=False),
})

def _decide(operation: str, principal: Principal, allowed: bool, action: str, subject: str) -> None:
    """Record the decision; refuse with ``<dn> may not <action> <subject>`` unless ``allowed``."""
    if allowed:
        BOOK.allow(operation)
    else:
        raise BOOK.refuse(operation, f"{principal.dn} may not {action} {subject}")


# What a refusal of an operation only administrators may do tells someone who is not one
ADMINISTRATORS_HINT = ("only the bank's administrators may: they are the DNs listed in the host's "
                       "bank.admins setting ([bank] admins = [...] in its configuration file, or "
                       "GRIDCREDIT_BANK_ADMINS); the host's operator adds a DN there and serves again "
                       "(README: The first hour)")


def _decide_administrator(operation: str, principal: Principal, action: str, subject: str) -> None:
    """Administrators only: the refusal says who they are and how one becomes one."""
    if principal.is_administrator:
        BOOK.allow(operation)
    else:
        raise BOOK.refuse(operation, f"{principal.dn} may not {action} {subject}: {ADMINISTRATORS_HINT}")


# ---------------------------------------------------------------------------------------------
# The principal, once per request


def principal_for(verified: Principal, bank_config) -> Principal:
    """The caller as the Bank sees it: the verified chain's principal with what the ``[bank]``
    section of the configuration (``admins``, ``auditors``, ``services``) says of its DN."""
    dn = verified.dn
    return dataclasses.replace(verified, is_administrator=dn in bank_config.admins,
                               is_auditor=dn in bank_config.auditors, is_service=dn in bank_config.services)


def require_full_credential(principal: Principal, operation: str) -> None:
    """A limited proxy may read but never change the ledger (asked before anything else)."""
    BOOK.require_full_credential(principal, operation, "change the ledger")


# ---------------------------------------------------------------------------------------------
# What the roles allow


def _may_view(principal: Principal, account: Account) -> bool:
    """Balances, holds, history and statements: administrators and every holder (viewer too)."""
    return principal.is_administrator or account.role_of(principal.dn) is not None


def _spends_for_hold(principal: Principal, account: Account, hold: Hold) -> bool:
    """Whether the caller may spend from the hold's account for this hold *now*: its creator while
    the creator still has a spending role there, or an owner or manager (not a service identity).
    A creator who was removed or demoted to viewer has no power over the holds they made."""
    role = account.role_of(principal.dn)
    if principal.dn == hold.creator_dn and hold.on_behalf_of_dn is None and role in SPENDING_ROLES:
        return True
    return not principal.is_service and role in CONTROLLING_ROLES


def serves_hold(principal: Principal, hold: Hold) -> bool:
    """The service that made the hold under its grant, on behalf of a holder: it may extend its expiry,
    charge, settle and release it — and raise it only while its grant stands and the holder still spends."""
    return hold.on_behalf_of_dn is not None and principal.dn == hold.creator_dn


def _collects_hold(principal: Principal, hold: Hold) -> bool:
    """The named collector: it may charge what a spender authorized (the amount, to the payee),
    move the expiry and release — never raise the amount or pick another payee."""
    return hold.collector_dn is not None and principal.dn == hold.collector_dn


def _may_grant(principal: Principal, account: Account, role: Role) -> bool:
    """Giving a DN ``role``: owners any role; managers member and viewer; administrators viewer only,
    so that no administrator can make anyone — themself included — a spender of an account."""
    caller_role = account.role_of(principal.dn)
    if caller_role is Role.OWNER:
        return True
    if caller_role is Role.MANAGER and role in (Role.MEMBER, Role.VIEWER):
        return True
    return principal.is_administrator and role is Role.VIEWER


def _may_revoke(principal: Principal, account: Account, role: Role | None) -> bool:
    """Taking ``role`` from a DN (None: it holds none yet): owners and administrators any role (taking
    power away moves no money); managers member and viewer."""
    caller_role = account.role_of(principal.dn)
    if caller_role is Role.OWNER or principal.is_administrator:
        return True
    return caller_role is Role.MANAGER and role in (None, Role.MEMBER, Role.VIEWER)


# ---------------------------------------------------------------------------------------------
# The decisions, one per operation (in the order of the WSDL)


def authorize_create_account(principal: Principal, account_id: str) -> None:
    _decide_administrator("CreateAccount", principal, "create", f"account {account_id}")


def authorize_set_holder(principal: Principal, account: Account, role: Role, previous_role: Role | None) -> None:
    """Giving ``role`` to a DN that now holds ``previous_role`` (None: none)."""
    _decide("SetHolder", principal,
            _may_grant(principal, account, role) and _may_revoke(principal, account, previous_role),
            f"give the {role.value} role on", f"account {account.account_id}")


def authorize_remove_holder(principal: Principal, account: Account, previous_role: Role | None) -> None:
    _decide("RemoveHolder", principal, _may_revoke(principal, account, previous_role), "remove holders of",
            f"account {account.account_id}")


def authorize_set_status(principal: Principal, account: Account, status: AccountStatus) -> None:
    owner_may = status in (AccountStatus.FROZEN, AccountStatus.CLOSED)
    _decide("SetStatus", principal,
            principal.is_administrator or (owner_may and account.role_of(principal.dn) is Role.OWNER),
            f"set status {status.value} on", f"account {account.account_id}")


def authorize_set_credit_limit(principal: Principal, account: Account) -> None:
    _decide_administrator("SetCreditLimit", principal, "set the credit limit of", f"account {account.account_id}")


def authorize_set_spending_limit(principal: Principal, account: Account) -> None:
    _decide("SetSpendingLimit", principal,
            principal.is_administrator or account.role_of(principal.dn) in CONTROLLING_ROLES,
            "set the spending limit of", f"account {account.account_id}")


def authorize_grant_service(principal: Principal, account: Account) -> None:
    """Owners only: a grant lets a service spend from the account, which no administrator may give."""
    _decide("GrantService", principal, account.role_of(principal.dn) is Role.OWNER, "grant services on",
            f"account {account.account_id} (only its owners may)")


def authorize_revoke_service(principal: Principal, account: Account) -> None:
    _decide("RevokeService", principal, account.role_of(principal.dn) is Role.OWNER, "revoke services' grants on",
            f"account {account.account_id} (only its owners may)")


def authorize_mint(principal: Principal, account: Account) -> None:
    _decide_administrator("Mint", principal, "mint credits into", f"account {account.account_id}")


def needs_second_administrator(settings: BankPolicy, amount: int) -> bool:
    """Whether a mint or a retirement of ``amount`` waits for a second administrator's approval."""
    return settings.mint_approval_threshold is not None and amount > settings.mint_approval_threshold


def authorize_approve_mint(principal: Principal, pending: PendingMint) -> None:
    """An administrator, and not the one who asked for it."""
    _decide_administrator("ApproveMint", principal, "approve", f"mint {pending.pending_mint_id}")
    if principal.dn == pending.requester_dn:
        raise BOOK.refuse("ApproveMint", f"mint {pending.pending_mint_id} was requested by {principal.dn}; a different "
                                     f"administrator must approve it", "SecondAdministratorRequired")


def authorize_cancel_mint(principal: Principal, pending: PendingMint) -> None:
    _decide_administrator("CancelMint", principal, "cancel", f"mint {pending.pending_mint_id}")


def authorize_expire_mint(principal: Principal, pending: PendingMint) -> None:
    """Anyone (the sweep does it); the ledger refuses it before the mint is due."""
    _decide("ExpireMint", principal, True, "expire", f"mint {pending.pending_mint_id}")


def authorize_oversight(principal: Principal, operation: str) -> None:
    """The audit and the list of pending mints: administrators and auditors."""
    if principal.is_administrator or principal.is_auditor:
        BOOK.allow(operation)
    else:
        action = {"Audit": "run an audit", "ListPendingMints": "list pending mints"}[operation]
        raise BOOK.refuse(operation, f"only bank administrators and auditors may {action}")


def authorize_retire(principal: Principal, account: Account) -> None:
    _decide_administrator("Retire", principal, "retire credits from", f"account {account.account_id}")


def authorize_transfer(principal: Principal, payer: Account) -> None:
    _decide("Transfer", principal, not principal.is_service and payer.role_of(principal.dn) in SPENDING_ROLES,
            "transfer from", f"account {payer.account_id}")


def _refuse_grant_use(operation: str, principal: Principal, account: Account, on_behalf_of_dn: str,
                      action: str) -> None:
    """Refuse a service's use of its grant when it has none (any more) or the holder it acts for does not
    spend from the account (any more)."""
    if account.grant_of(principal.dn) is None:
        raise BOOK.refuse(operation, f"{principal.dn} may not {action} on behalf of {on_behalf_of_dn}: it holds no "
                                     f"grant on account {account.account_id} (an owner gives one with grant-service)")
    role = account.role_of(on_behalf_of_dn)
    if role not in SPENDING_ROLES:
        what = "is not a holder" if role is None else f"is only a {role.value}"
        raise BOOK.refuse(operation, f"{principal.dn} may not {action} on behalf of {on_behalf_of_dn}: that DN {what} "
                                     f"of account {account.account_id}; a grant serves its owners, managers and "
                                     f"members only")


def authorize_create_hold(principal: Principal, account: Account, *, on_behalf_of_dn: str | None = None) -> None:
    """A spender for itself; a service with a grant on the account for one of its current spenders."""
    if on_behalf_of_dn is not None:
        _refuse_grant_use("CreateHold", principal, account, on_behalf_of_dn,
                          f"place holds on account {account.account_id}")
        BOOK.allow("CreateHold")
        return
    _decide("CreateHold", principal, account.role_of(principal.dn) in SPENDING_ROLES, "place holds on",
            f"account {account.account_id}")


def authorize_extend_hold(principal: Principal, account: Account, hold: Hold, *, raises: bool,
                          redirects: bool) -> None:
    """A current spender any extension; the collector a later expiry only; the service that made it for a
    holder a later expiry, and a larger amount while its grant stands and the holder still spends."""
    if serves_hold(principal, hold):
        if redirects:
            raise BOOK.refuse("ExtendHold", f"{principal.dn} made hold {hold.hold_id} on behalf of "
                                            f"{hold.on_behalf_of_dn} and may not change its payee")
        if raises:
            _refuse_grant_use("ExtendHold", principal, account, hold.on_behalf_of_dn, f"raise hold {hold.hold_id}")
        BOOK.allow("ExtendHold")
        return
    raises_or_redirects = raises or redirects
    spender = _spends_for_hold(principal, account, hold)
    collector = not spender and _collects_hold(principal, hold)
    if collector and raises_or_redirects:
        raise BOOK.refuse("ExtendHold", f"{principal.dn} collects hold {hold.hold_id} and may only move its expiry; "
                                    f"raising its amount or changing its payee needs the right to spend from "
                                    f"account {account.account_id}")
    _decide("ExtendHold", principal, spender or collector, "extend", f"hold {hold.hold_id}")


def _authorize_charging(operation: str, action: str, principal: Principal, account: Account, hold: Hold,
                        payee: Account) -> None:
    """A charge or a settlement: a current spender or the collector; always to the hold's payee when it
    names one."""
    allowed = (_spends_for_hold(principal, account, hold) or _collects_hold(principal, hold)
               or serves_hold(principal, hold))
    if allowed and hold.payee_account_id is not None and payee.account_id != hold.payee_account_id:
        raise BOOK.refuse(operation, f"{principal.dn} may not {action} to account {payee.account_id} hold "
                                     f"{hold.hold_id}: its charges go to account {hold.payee_account_id} only")
    _decide(operation, principal, allowed, action, f"hold {hold.hold_id}")


def authorize_charge_hold(principal: Principal, account: Account, hold: Hold, payee: Account) -> None:
    _authorize_charging("ChargeHold", "charge", principal, account, hold, payee)


def authorize_settle_hold(principal: Principal, account: Account, hold: Hold, payee: Account) -> None:
    """The final charge and release in one: who may charge the hold."""
    _authorize_charging("SettleHold", "settle", principal, account, hold, payee)


def authorize_release_hold(principal: Principal, account: Account, hold: Hold) -> None:
    _decide("ReleaseHold", principal, principal.is_administrator or _spends_for_hold(principal, account, hold)
            or _collects_hold(principal, hold) or serves_hold(principal, hold), "release", f"hold {hold.hold_id}")


def authorize_expire_hold(principal: Principal, hold: Hold) -> None:
    """Anyone (the sweep does it); the ledger refuses it before the hold is due."""
    _decide("ExpireHold", principal, True, "expire", f"hold {hold.hold_id}")


def authorize_batch(principal: Principal) -> None:
    """ApplyBatch itself: any full credential (a limited proxy changes nothing); the ledger then asks the
    rule of each item's own operation, exactly as for the single operation."""
    require_full_credential(principal, "ApplyBatch")
    BOOK.allow("ApplyBatch")


def authorize_view(principal: Principal, operation: str, account: Account) -> None:
    """GetBalance, GetAccount, ListHolds, History, Statement of ``account``."""
    _decide(operation, principal, _may_view(principal, account), "view", f"account {account.account_id}")


def authorize_view_hold(principal: Principal, hold: Hold, account: Account) -> None:
    """GetHold: who may view its account, and the hold's creator and collector."""
    _decide("GetHold", principal, principal.dn in (hold.creator_dn, hold.collector_dn) or _may_view(principal, account),
            "view", f"account {account.account_id}")


def authorize_anyone(principal: Principal, operation: str) -> None:
    """MoneySupply, WhoAmI: every authenticated caller (the host refused the others)."""
    _decide(operation, principal, True, "call", operation)


def authorize_transparency() -> None:
    """The web view's public page: how much money exists, every issue and retirement of it and the
    last audit's result are for everyone, without a certificate too (the answer to "who controls the
    bank?" must not depend on being let in by it)."""
    BOOK.allow("Transparency")
