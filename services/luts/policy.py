"""Who may do what in the LUTS: every operation's decision is made here, and nowhere else.

The caller is the one principal type (security/principal.py) the host's verification gives; the
``[luts]`` configuration says what its DN is here (``LutsPolicy``: administrators, VO managers,
site publishers; a host certificate publishes for the machines it names).

==================  ==========================================================================
Publish, SGAS       a site publisher for the machines configured, a host certificate for the
                    machines it was issued for, an administrator for any; replacing a stored
                    record: site administrators and LUTS administrators; never a limited proxy
Query, Summary      anyone authenticated, within a scope of theirs (refused: a scope not theirs)
GetRecord,          anyone authenticated; they see only the records their scopes admit
JobUsage
WhoAmI              anyone authenticated
==================  ==========================================================================

Who sees what (``Scope``): administrators everything; a VO manager the records of the VOs they
manage; a site (a configured site publisher, or a host identity) the records of its machines; a
user the records whose user DN is theirs. The scope becomes the store's indexed ``where`` filter,
and the caller's XPath is only a further condition on each record of that set, so no expression
can widen it. Every decision is counted per operation (``BOOK.decisions()``; gridcredit/policy.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from gridcredit.errors import DomainError
from gridcredit.policy import PolicyBook, Rule
from gridcredit.security.principal import Principal

_ANYONE = "anyone authenticated"
BOOK = PolicyBook("LUTS", {
    "Publish": Rule("site publishers, hosts for their machines, administrators; replace: site and LUTS administrators", True),
    "RegisterUsageRecords": Rule("as Publish, by TLS client certificate (SGAS's /sgas/ur)", True, soap=False),
    "Query": Rule(_ANYONE + ", within a scope of theirs", False),
    "Summary": Rule(_ANYONE + ", within a scope of theirs", False),
    "GetRecord": Rule(_ANYONE + "; records their scopes admit", False),
    "JobUsage": Rule(_ANYONE + "; records their scopes admit", False),
    "WhoAmI": Rule(_ANYONE, False),
})


@dataclass(frozen=True, slots=True)
class LutsPolicy:
    admins: frozenset[str] = frozenset()
    vo_managers: Mapping[str, frozenset[str]] = field(default_factory=dict)     # manager DN → VOs
    site_publishers: Mapping[str, frozenset[str]] = field(default_factory=dict)  # DN → machines ("*": any)
    host_publishers: bool = True      # a host certificate may publish for the hosts it was issued for

    @classmethod
    def from_config(cls, config) -> "LutsPolicy":
        managers: dict[str, set[str]] = {}
        for vo, dns in config.vo_managers.items():
            for dn in dns:
                managers.setdefault(dn, set()).add(vo)
        return cls(admins=frozenset(config.admins),
                   vo_managers={dn: frozenset(vos) for dn, vos in managers.items()},
                   site_publishers={dn: frozenset(m.lower() for m in machines)
                                    for dn, machines in config.site_publishers.items()},
                   host_publishers=config.host_publishers)

    def publish_machines(self, caller: Caller) -> frozenset[str] | None:
        """Machines ``caller`` may publish for (``{"*"}``: any); None: may not publish.

        A host is known only by its certificate (``Caller.host_names``: the dNSName subjectAltNames of
        an end-entity host certificate), never by the text of a DN: a user certificate whose CN looks
        like a host name publishes nothing."""
        if caller.dn in self.admins:
            return frozenset({"*"})
        machines = set(self.site_publishers.get(caller.dn, ()))
        if self.host_publishers:
            machines.update(name.lower() for name in caller.host_names)
        return frozenset(machines) if machines else None

    def may_replace(self, dn: str) -> bool:
        """Site administrators (configured site publishers) and LUTS administrators; not bare hosts."""
        return dn in self.admins or dn in self.site_publishers


# Who calls: the one principal type (security/principal.py), as the verified chain proves it. The LUTS
# reads its DN, whether it is a limited proxy, and the hosts its certificate was issued for
# (``host_names``; empty for users and proxies); what the LUTS configuration says of the DN is
# ``LutsPolicy``'s to look up.
Caller = Principal


@dataclass(frozen=True, slots=True)
class Scope:
    """What one query may see: ``where`` for the store, and a description for people."""
    name: str                                   # all | vo | site | own
    where: Mapping[str, str | tuple[str, ...]]

    def admits(self, attributes: Mapping[str, str]) -> bool:
        for name, wanted in self.where.items():
            value = attributes.get(name)
            if isinstance(wanted, tuple) and value not in wanted or isinstance(wanted, str) and value != wanted:
                return False
        return True


SCOPE_NAMES = ("all", "vo", "site", "own")


def _scopes(policy: LutsPolicy, caller: Caller) -> dict[str, Scope]:
    scopes = {"own": Scope("own", {"user": caller.dn})}
    machines = policy.publish_machines(caller)
    if machines and "*" not in machines:
        scopes["site"] = Scope("site", {"machine": tuple(sorted(machines))})
    elif machines:
        scopes["site"] = Scope("site", {"publisher": caller.dn})
    vos = policy.vo_managers.get(caller.dn)
    if vos:
        scopes["vo"] = Scope("vo", {"vo": tuple(sorted({vo.lower() for vo in vos}))})   # as the view has them
    if caller.dn in policy.admins:
        scopes["all"] = Scope("all", {})
    return scopes


def scopes_of(policy: LutsPolicy, caller: Caller, operation: str) -> dict[str, Scope]:
    """What ``caller`` may see, for a read ``operation`` that gives every authenticated caller an
    answer in their scopes (``GetRecord``, ``JobUsage``): recorded as that operation's decision."""
    BOOK.allow(operation)
    return _scopes(policy, caller)


def choose_scope(policy: LutsPolicy, caller: Caller, requested: str | None, operation: str) -> Scope:
    """The scope asked for (``vo:NAME`` narrows to one managed VO), else the widest the caller has:
    the decision of ``operation`` (``Query``, ``Summary``); a scope that is not the caller's is refused."""
    scopes = _scopes(policy, caller)
    if not requested:
        BOOK.allow(operation)
        return next(scopes[name] for name in SCOPE_NAMES if name in scopes)
    name, _, detail = requested.partition(":")
    if name not in SCOPE_NAMES:
        raise DomainError(f"scope must be one of {', '.join(SCOPE_NAMES)} (or vo:NAME), not {requested!r}",
                          "InvalidArgument")
    BOOK.decide(operation, name in scopes, f"{caller.dn} has no {name!r} scope here (theirs: {', '.join(scopes)})")
    scope = scopes[name]
    if detail:
        if name != "vo" or detail.lower() not in scope.where["vo"]:
            raise BOOK.refuse(operation, f"{caller.dn} does not manage VO {detail!r}")
        scope = Scope("vo", {"vo": detail.lower()})
    return scope


def authorize_publish(policy: LutsPolicy, caller: Caller, *, replace: bool, operation: str) -> frozenset[str]:
    """The machines ``caller`` may publish for (``{"*"}``: any), or the refusal: a limited proxy never
    publishes; a caller who is no site publisher, administrator or host of a machine does not;
    replacing stored records is for site administrators and LUTS administrators."""
    BOOK.require_full_credential(caller, operation, "publish usage records")
    machines = policy.publish_machines(caller)
    if machines is None:
        raise BOOK.refuse(operation, f"{caller.dn} may not publish usage records here (not a site publisher, an "
                                     f"administrator, or a host certificate issued for a machine)")
    BOOK.decide(operation, not replace or policy.may_replace(caller.dn),
                "only site administrators and LUTS administrators may replace stored records")
    return machines


def authorize_anyone(operation: str) -> None:
    """``WhoAmI``: anyone the host authenticated."""
    BOOK.allow(operation)
