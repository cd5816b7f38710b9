"""Who may do what in the JARM: every operation's decision is made here (gridcredit/policy.py).

==============  ===========================================================================
WhoAmI          anyone authenticated
GetPriceTable   anyone authenticated (a site's prices are public to its users)
Quote           anyone authenticated
SetPriceTable   the JARM's price administrators (``JarmPolicy.price_admins``), never with a
                limited proxy
==============  ===========================================================================

The Price Authority's operations are not in the WSDL yet (its pure core, ``pricing.py``, comes
first; the SOAP operations follow on the service contract): their rules say ``soap=False`` until
then, so that the WSDL walk (tests/test_policy_points.py) checks exactly the operations served.
When an operation joins the WSDL, drop its ``soap=False``.
"""
from __future__ import annotations

from dataclasses import dataclass

from gridcredit.policy import PolicyBook, Rule
from gridcredit.security.principal import Principal

_ANYONE = "anyone authenticated"
BOOK = PolicyBook("JARM", {
    "WhoAmI": Rule(_ANYONE, False),
    # soap=False: not served yet (the Price Authority's SOAP face comes later, issue 13.1)
    "GetPriceTable": Rule(_ANYONE, False, soap=False),
    "Quote": Rule(_ANYONE, False, soap=False),
    "SetPriceTable": Rule("price administrators", True, soap=False),
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
