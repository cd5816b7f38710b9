"""Who may do what in the Auctioneer: every operation's decision is made here (gridcredit/policy.py).

==============  ===========================================================================
WhoAmI          anyone authenticated
GetHost         anyone authenticated (capacity, prices and the number of live bids are public)
PlaceBid        anyone authenticated, with a full credential, on a hold they may spend: its
                creator (or the user a service made it for) — the service checks the rest of
                the hold (its collector this auctioneer, its payee the owner's account)
ChangeBid,      the bid's owner (the DN that placed it), with a full credential
CancelBid
GetBid          the bid's owner; the host's owners (``[auctioneer] owners``) and the host itself
ListBids        anyone authenticated: their own bids; the host's owners and the host: everyone's
ConsoleWrite    the bid's owner only, with a full credential (nobody else reaches a bidder's VM,
                not the host's owners)
ConsoleRead     the bid's owner only
==============  ===========================================================================

Every rule here is an operation of ``wsdl/auctioneer.wsdl`` (tests/test_policy_points.py walks them).
A refusal is ``NotAuthorized`` with the reason; a bid that is not the caller's is refused the same
way whether it exists or not (nobody learns of others' bids by guessing ids).
"""
from __future__ import annotations

from dataclasses import dataclass

from gridcredit.policy import PolicyBook, Rule
from gridcredit.security.principal import Principal

_ANYONE = "anyone authenticated"
_OWNER = "the bid's owner"
BOOK = PolicyBook("Auctioneer", {
    "WhoAmI": Rule(_ANYONE, False),
    "GetHost": Rule(_ANYONE, False),
    "PlaceBid": Rule(_ANYONE + ", on a hold they may spend", True),
    "ChangeBid": Rule(_OWNER, True),
    "CancelBid": Rule(_OWNER, True),
    "GetBid": Rule(_OWNER + ", the host's owners", False),
    "ListBids": Rule(_ANYONE + " (their own); the host's owners (everyone's)", False),
    "ConsoleWrite": Rule(_OWNER + " only", True),
    "ConsoleRead": Rule(_OWNER + " only", False),
})


@dataclass(frozen=True, slots=True)
class AuctioneerPolicy:
    """What the configuration says of callers: the DNs that see every bid of this host (its owners,
    and the host's own identity)."""

    overseers: frozenset[str] = frozenset()

    def oversees(self, principal: Principal) -> bool:
        return principal.dn in self.overseers


def authorize_anyone(operation: str) -> None:
    BOOK.allow(operation)


def authorize_place_bid(principal: Principal, *, hold_creator_dn: str, hold_for_dn: str | None,
                        hold_id: str) -> None:
    """A hold bids for whoever may spend it: its creator, or the user a service made it for."""
    BOOK.require_full_credential(principal, "PlaceBid", "place bids")
    BOOK.decide("PlaceBid", principal.dn in (hold_creator_dn, hold_for_dn),
                f"hold {hold_id} is not yours: {principal.dn} may bid only with a hold they made")


def authorize_own_bid(principal: Principal, operation: str, *, owner_dn: str | None, bid_id: str,
                      policy: AuctioneerPolicy | None = None) -> None:
    """ChangeBid, CancelBid, ConsoleWrite, ConsoleRead (and GetBid, where the host's owners may too).
    ``owner_dn`` None: there is no such bid — refused alike, so ids cannot be probed."""
    if operation in ("ChangeBid", "CancelBid", "ConsoleWrite"):
        BOOK.require_full_credential(principal, operation, "change bids or write to a VM's console")
    allowed = owner_dn is not None and principal.dn == owner_dn
    if operation == "GetBid" and policy is not None and policy.oversees(principal):
        allowed = True
    BOOK.decide(operation, allowed, f"bid {bid_id} is not yours: only the DN that placed a bid may "
                                    f"{_WHAT[operation]}")


_WHAT = {"ChangeBid": "change it", "CancelBid": "cancel it", "GetBid": "see it (and the host's owners)",
         "ConsoleWrite": "reach its VM's console", "ConsoleRead": "read its VM's console"}


def authorize_list_bids(policy: AuctioneerPolicy, principal: Principal, everyone: bool) -> None:
    BOOK.decide("ListBids", not everyone or policy.oversees(principal),
                f"{principal.dn} may list only their own bids: everyone's are for the host's owners")
