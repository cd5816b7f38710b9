"""Who may do what in the JARM: every operation's decision is made here (gridcredit/policy.py).

==============  ===========================================================================
WhoAmI          anyone authenticated
GetPriceTable   anyone authenticated (a site's prices are public to its users)
Quote           anyone authenticated
SetPriceTable   the JARM's price administrators (``JarmPolicy.price_admins``), never with a
                limited proxy
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
})


@dataclass(frozen=True, slots=True)
class JarmPolicy:
    """What the JARM's configuration says of callers: the DNs that may set its price tables."""

    price_admins: frozenset[str] = frozenset()


def authorize_anyone(operation: str) -> None:
    BOOK.allow(operation)


def authorize_set_price_table(policy: JarmPolicy, principal: Principal) -> None:
    """A price administrator with a full credential; anyone else is refused (``NotAuthorized``)."""
    BOOK.require_full_credential(principal, "SetPriceTable", "set price tables")
    BOOK.decide("SetPriceTable", principal.dn in policy.price_admins,
                f"{principal.dn} is not a price administrator of this JARM: only they may set price tables")
