"""Who may do what in the JARM: every operation's decision is made here (gridcredit/policy.py).

==============  ===========================================================================
WhoAmI          anyone authenticated
GetPriceTable   anyone authenticated (a site's prices are public to its users)
Quote           anyone authenticated
SetPriceTable   the JARM's price administrators (``JarmPolicy.price_admins``), never with a
                limited proxy
Reserve,        the batch system's controllers (``JarmPolicy.controllers``: this host and the
Extend,         ``[jarm]`` section's ``controllers``), never with a limited proxy
Complete,
Cancel
Reconcile       the controllers and the price administrators
GetReservation  the job's user (its DN), the controllers and the price administrators
ListReservations  a caller their own; the controllers and the price administrators anyone's
RequestDelegation, CompleteDelegation, DestroyDelegation
                anyone authenticated, for themselves only (the caller's DN is the
                delegation's), never with a limited proxy: a limited proxy may not delegate
GetDelegation   anyone authenticated: their own delegation
==============  ===========================================================================

Every rule here is an operation of ``wsdl/jarm.wsdl`` (tests/test_policy_points.py walks them); an
operation that is not (yet) served says ``soap=False``. The price administrators are the ``[jarm]``
section's ``price_admins``.
"""
from __future__ import annotations

from dataclasses import dataclass

from gridcredit.policy import PolicyBook, Rule
from gridcredit.security.principal import Principal

_ANYONE = "anyone authenticated"
BOOK = PolicyBook("JARM", {
    "WhoAmI": Rule(_ANYONE, False),
    "GetPriceTable": Rule(_ANYONE, False),
    "Quote": Rule(_ANYONE, False),        # a guaranteed quote is kept, but changes nobody's money or prices
    "SetPriceTable": Rule("price administrators", True),
    "Reserve": Rule("the batch system's controllers", True),
    "Extend": Rule("the batch system's controllers", True),
    "Complete": Rule("the batch system's controllers", True),
    "Reconcile": Rule("the batch system's controllers, price administrators", True),
    "Cancel": Rule("the batch system's controllers", True),
    "GetReservation": Rule("the job's user, controllers, price administrators", False),
    "ListReservations": Rule("anyone authenticated (their own); controllers and price administrators (anyone's)",
                             False),
    # delegation.py: each caller their own delegation, never through a limited proxy
    "RequestDelegation": Rule(_ANYONE + ", for themselves, with a full credential", True),
    "CompleteDelegation": Rule(_ANYONE + ", for themselves, with a full credential", True),
    "GetDelegation": Rule(_ANYONE + ": their own", False),
    "DestroyDelegation": Rule(_ANYONE + ", their own, with a full credential", True),
})


@dataclass(frozen=True, slots=True)
class JarmPolicy:
    """What the JARM's configuration says of callers: the DNs that may set its price tables."""

    price_admins: frozenset[str] = frozenset()
    controllers: frozenset[str] = frozenset()     # the batch system's controllers: they report jobs


def authorize_anyone(operation: str) -> None:
    BOOK.allow(operation)


def authorize_set_price_table(policy: JarmPolicy, principal: Principal) -> None:
    """A price administrator with a full credential; anyone else is refused (``NotAuthorized``)."""
    BOOK.require_full_credential(principal, "SetPriceTable", "set price tables")
    BOOK.decide("SetPriceTable", principal.dn in policy.price_admins,
                f"{principal.dn} is not a price administrator of this JARM: only they may set price tables")


def authorize_report_job(policy: JarmPolicy, principal: Principal, operation: str) -> None:
    """Reserve, Complete, Cancel: what the batch system's controller says of its jobs."""
    BOOK.require_full_credential(principal, operation, "report jobs")
    BOOK.decide(operation, principal.dn in policy.controllers,
                f"{principal.dn} is not a batch system controller of this JARM: only they report jobs "
                f"(the [jarm] section's controllers, and this host)")


def authorize_view_reservation(policy: JarmPolicy, principal: Principal, user_dn: str) -> None:
    BOOK.decide("GetReservation", principal.dn == user_dn or principal.dn in policy.controllers
                or principal.dn in policy.price_admins,
                f"{principal.dn} may not see another user's reservation")


def authorize_list_reservations(policy: JarmPolicy, principal: Principal, user_dn: str | None) -> None:
    """``user_dn`` None: everyone's (controllers and price administrators only)."""
    overseer = principal.dn in policy.controllers or principal.dn in policy.price_admins
    BOOK.decide("ListReservations", overseer or user_dn == principal.dn,
                f"{principal.dn} may list only their own reservations (give your own DN, or none)")


def authorize_delegation(principal: Principal, operation: str) -> None:
    """RequestDelegation, CompleteDelegation, DestroyDelegation: anyone for themselves (the core
    keys every delegation by the caller's DN), but never with a limited proxy — a limited proxy
    may not delegate, nor undo a delegation (``NotAuthorized``)."""
    BOOK.require_full_credential(principal, operation, "delegate to JARM or destroy a delegation")
    BOOK.allow(operation)


def authorize_reconcile(policy: JarmPolicy, principal: Principal) -> None:
    BOOK.require_full_credential(principal, "Reconcile", "reconcile reservations")
    BOOK.decide("Reconcile", principal.dn in policy.controllers or principal.dn in policy.price_admins,
                f"{principal.dn} is neither a batch system controller nor a price administrator of this JARM")
