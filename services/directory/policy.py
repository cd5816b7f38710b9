"""Who may do what in the directory: every operation's decision is made here (gridcredit/policy.py).

==============  ===========================================================================
WhoAmI          anyone authenticated
ListHosts,      anyone authenticated (the market's prices are public to its bidders)
GetHostInfo
Register        the auctioneer of the host, never with a limited proxy: its signature must come from
                a host certificate naming the auctioneer URL's host (``require_host_certificate``),
                and from one of the ``registrars`` when the section names any. A host id belongs to
                the identity that registered it first: only that DN may register it again (its
                heartbeat), until an administrator removes it.
RemoveHost      the directory's administrators (``[directory] admins``), never with a limited proxy
==============  ===========================================================================

Every rule here is an operation of ``wsdl/directory.wsdl`` (tests/test_policy_points.py walks them).
"""
from __future__ import annotations

from dataclasses import dataclass

from gridcredit.policy import PolicyBook, Rule
from gridcredit.security.principal import Principal

from .types import HOST_ID_TAKEN, url_host

_ANYONE = "anyone authenticated"
BOOK = PolicyBook("Directory", {
    "WhoAmI": Rule(_ANYONE, False),
    "ListHosts": Rule(_ANYONE, False),
    "GetHostInfo": Rule(_ANYONE, False),
    "Register": Rule("the host's auctioneer (a host certificate naming its URL's host); a host id only by the "
                     "identity that registered it first", True),
    "RemoveHost": Rule("the directory's administrators", True),
})


@dataclass(frozen=True, slots=True)
class DirectoryPolicy:
    """What the ``[directory]`` section says of callers."""
    admins: frozenset[str] = frozenset()
    registrars: frozenset[str] = frozenset()      # empty: any identity may register (its own URL's host)
    require_host_certificate: bool = True


def authorize_anyone(operation: str) -> None:
    BOOK.allow(operation)


def authorize_registrant(policy: DirectoryPolicy, principal: Principal, *, auctioneer_url: str) -> None:
    """Register, first part: whether ``principal`` may register ``auctioneer_url`` at all — before the store
    is read, so a caller who may not costs no more than this. Refuses (a decision recorded); records
    nothing when it passes: :func:`authorize_register` decides the rest, and records the decision."""
    BOOK.require_full_credential(principal, "Register", "register a host")
    if policy.registrars and principal.dn not in policy.registrars:
        raise BOOK.refuse("Register", f"{principal.dn} may not register hosts in this directory: only its "
                                      f"registrars may ([directory] registrars)")
    host = url_host(auctioneer_url)
    if policy.require_host_certificate and host not in principal.host_names:
        names = ", ".join(principal.host_names) or "no host"
        raise BOOK.refuse("Register", f"the auctioneer registers itself: the request must be signed by a host "
                                      f"certificate for {host} (the URL's host); it was signed by {principal.dn}, "
                                      f"a certificate for {names}")


def authorize_register(policy: DirectoryPolicy, principal: Principal, *, host_id: str, auctioneer_url: str,
                       owner_dn: str | None) -> None:
    """Register (a first registration or a heartbeat) of ``host_id`` at ``auctioneer_url``; ``owner_dn``
    is the DN that owns the id now (None: nobody, it is free). Decided inside the store's transaction
    that writes it, so two identities racing for a free id cannot both win. (The service asks
    :func:`authorize_registrant` first; asking it again here costs nothing and keeps this whole.)"""
    authorize_registrant(policy, principal, auctioneer_url=auctioneer_url)
    if owner_dn is not None and owner_dn != principal.dn:
        raise BOOK.refuse("Register", f"host id {host_id} belongs to {owner_dn}, who registered it first: only "
                                      f"they may update it (or an administrator remove it); choose another id",
                          HOST_ID_TAKEN)
    BOOK.allow("Register")


def authorize_remove(policy: DirectoryPolicy, principal: Principal) -> None:
    BOOK.require_full_credential(principal, "RemoveHost", "remove a host")
    BOOK.decide("RemoveHost", principal.dn in policy.admins,
                f"{principal.dn} is not an administrator of this directory: only they remove hosts "
                f"([directory] admins)")
