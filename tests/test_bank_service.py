"""The Bank over signed SOAP on a real host (2 worker processes), on both stores.

* the authorization matrix: every operation × every role — owner, manager, member, the hold's
  creator, viewer, stranger, administrator, auditor, a service identity (holding the member
  role), a limited proxy of the owner (reads only) and a full proxy of a member — allowed or
  refused with ``NotAuthorized`` exactly as the table in ``services/bank/policy.py`` says, with
  the ledger unchanged after every refusal;
* bad input: zero, negative and overflowing amounts (beyond AMOUNT_MAX and beyond xs:long),
  unknown accounts and holds, expiries in the past, absurd XPath filters (syntax errors, escapes
  from the account's scope, expensive expressions bounded by the time limit), bad pages — a
  clear fault and nothing changed;
* money supply, statement and holds listing against what the test did;
* a hold expired by the server's sweep returns its remainder exactly once.
"""
from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta, timezone

import pytest

from gridcredit.errors import RemoteFault
from gridcredit.services.bank.client import BankClient
from gridcredit.timeunits import datetime_from_us
from gridcredit.wiretypes import array_items

from bank_fixtures import BACKENDS, bank_host, bank_users, refused_code, snapshot_of, utc_in

pytestmark = [pytest.mark.slow]

APPROVAL_ABOVE = 1_000_000
MAIN, PAYEE, FROZEN, OTHER = "acct-main", "acct-payee", "acct-frozen", "acct-other"
_ids = itertools.count(1)


def rid(prefix: str = "r") -> str:
    return f"{prefix}-{next(_ids)}"


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, pki, tmp_path_factory):
    """A host with MAIN (owner, manager, two members, viewer, the service as member), PAYEE,
    OTHER (someone else's, with money) and FROZEN accounts; clients for every role."""
    users = bank_users(pki)
    with bank_host(tmp_path_factory.mktemp(f"bank-{request.param}"), request.param, users, pki,
                   extra_env={"GRIDCREDIT_BANK_APPROVAL_ABOVE": str(APPROVAL_ABOVE)}) as host:
        clients = {
            "owner": host.client(users.owners[0]), "manager": host.client(users.managers[0]),
            "member": host.client(users.members[0]), "creator": host.client(users.members[1]),
            "viewer": host.client(users.viewers[0]), "stranger": host.client(users.stranger),
            "admin": host.client(users.admin), "auditor": host.client(users.auditor),
            "service": host.client(users.service),
            "limited": host.client(pki.proxy("Olivia Owner", limited=True)),
            "proxy": host.client(pki.proxy("Member 0")),
            "admin2": host.client(users.admin2), "owner2": host.client(users.owners[1]),
        }
        world = World(host, users, clients)
        world.make_account(MAIN, money=1_000_000)
        world.admin.call("CreateAccount", request_id=rid(), account_id=PAYEE, project="site",
                         owner_dn=users.owners[1].dn)
        world.admin.call("CreateAccount", request_id=rid(), account_id=OTHER, project="cms",
                         owner_dn=users.owners[1].dn)
        world.admin.call("Mint", request_id=rid(), account_id=OTHER, amount=5000)
        world.make_account(FROZEN, money=100)
        world.admin.call("SetStatus", request_id=rid(), account_id=FROZEN, status="frozen")
        yield world


class World:
    def __init__(self, host, users, clients) -> None:
        self.host, self.users, self.clients = host, users, clients
        self.admin = clients["admin"]

    def make_account(self, account_id: str, *, money: int = 0) -> str:
        users = self.users
        self.admin.call("CreateAccount", request_id=rid(), account_id=account_id, project="atlas",
                        owner_dn=users.owners[0].dn)
        for who, role in ((users.managers[0], "manager"), (users.members[0], "member"),
                          (users.members[1], "member"), (users.viewers[0], "viewer"), (users.service, "member")):
            # the owner gives the roles: administrators can give none that spends
            self.clients["owner"].call("SetHolder", request_id=rid(), account_id=account_id, holder_dn=who.dn,
                                       role=role)
        if money:
            self.admin.call("Mint", request_id=rid(), account_id=account_id, amount=money)
        return account_id

    def hold(self, *, by: str = "creator", account_id: str = MAIN, amount: int = 10, seconds: float = 3600,
             collector_dn: str | None = None, payee_account_id: str | None = None) -> str:
        if collector_dn is not None and payee_account_id is None:
            payee_account_id = PAYEE
        receipt = self.clients[by].call("CreateHold", request_id=rid("h"), account_id=account_id, amount=amount,
                                        expires=utc_in(seconds), reference="matrix", collector_dn=collector_dn,
                                        payee_account_id=payee_account_id)
        return receipt.transaction.hold_id

    def fingerprint(self, *, accounts=(MAIN, PAYEE), hold_id: str | None = None) -> tuple:
        audit = self.admin.call("Audit")
        supply = self.admin.call("MoneySupply")
        parts = [audit.head_seq, audit.head_hash, audit.clean, supply.issued, supply.retired]
        for account_id in accounts:
            account = self.admin.call("GetAccount", account_id=account_id)
            parts.append((account.status, account.balance, account.held, account.credit_limit,
                          account.spending_limit, tuple((h.dn, h.role) for h in account.holders.HolderInfo),
                          tuple((g.service_dn, g.hold_max, g.period_max, g.period_us, g.held_in_period)
                                for g in array_items(account.grants, "GrantInfo"))))
        if hold_id is not None:
            hold = self.admin.call("GetHold", hold_id=hold_id)
            parts.append((hold.amount, hold.charged, hold.state, hold.expires_at_us))
        return tuple(parts)


# --------------------------------------------------------------------------------- the matrix

VIEWERS = {"owner", "manager", "member", "creator", "viewer", "admin", "service", "limited", "proxy"}
ROLES = ["owner", "manager", "member", "creator", "viewer", "stranger", "admin", "auditor", "service", "limited",
         "proxy"]
SPENDERS = {"owner", "manager", "member", "creator", "proxy"}


def _new_dn() -> str:
    return f"/DC=org/DC=example/O=gridcredit-test/CN=New Holder {next(_ids)}"


def case_create_account(world, allowed):
    return "CreateAccount", dict(request_id=rid(), account_id=f"new-{next(_ids)}", project="p",
                                 owner_dn=world.users.owners[0].dn), {}


def case_set_holder_member(world, allowed):
    return "SetHolder", dict(request_id=rid(), account_id=MAIN, holder_dn=_new_dn(), role="member"), {}


def case_set_holder_viewer(world, allowed):
    return "SetHolder", dict(request_id=rid(), account_id=MAIN, holder_dn=_new_dn(), role="viewer"), {}


def case_set_holder_owner(world, allowed):
    return "SetHolder", dict(request_id=rid(), account_id=MAIN, holder_dn=_new_dn(), role="owner"), {}


def case_remove_holder(world, allowed):
    dn = _new_dn()
    world.clients["owner"].call("SetHolder", request_id=rid(), account_id=MAIN, holder_dn=dn, role="member")
    return "RemoveHolder", dict(request_id=rid(), account_id=MAIN, holder_dn=dn), {}


def case_freeze(world, allowed):
    account_id = world.make_account(f"st-{next(_ids)}") if allowed else MAIN
    return "SetStatus", dict(request_id=rid(), account_id=account_id, status="frozen"), {}


def case_unfreeze(world, allowed):
    account_id = FROZEN
    if allowed:
        account_id = world.make_account(f"fz-{next(_ids)}")
        world.admin.call("SetStatus", request_id=rid(), account_id=account_id, status="frozen")
    return "SetStatus", dict(request_id=rid(), account_id=account_id, status="open"), {"accounts": (FROZEN, MAIN)}


def case_set_credit_limit(world, allowed):
    return "SetCreditLimit", dict(request_id=rid(), account_id=MAIN, credit_limit=100), {}


def case_set_spending_limit(world, allowed):
    return "SetSpendingLimit", dict(request_id=rid(), account_id=MAIN, spending_limit=10**12,
                                    spending_period_s=86_400), {}


def case_grant_service(world, allowed):
    return "GrantService", dict(request_id=rid(), account_id=MAIN, service_dn=_new_dn(), hold_max=100), {}


def case_revoke_service(world, allowed):
    dn = _new_dn()
    world.clients["owner"].call("GrantService", request_id=rid(), account_id=MAIN, service_dn=dn)
    return "RevokeService", dict(request_id=rid(), account_id=MAIN, service_dn=dn), {}


def case_mint(world, allowed):
    return "Mint", dict(request_id=rid(), account_id=MAIN, amount=1), {}


def case_approve_mint(world, allowed):
    receipt = world.admin.call("Mint", request_id=rid(), account_id=PAYEE, amount=APPROVAL_ABOVE + 1)
    assert receipt.transaction.kind == "mint-request"
    return "ApproveMint", dict(request_id=rid(), pending_mint_id=receipt.transaction.pending_mint_id), {}


def case_cancel_mint(world, allowed):
    receipt = world.admin.call("Mint", request_id=rid(), account_id=PAYEE, amount=APPROVAL_ABOVE + 1)
    return "CancelMint", dict(request_id=rid(), pending_mint_id=receipt.transaction.pending_mint_id), {}


def case_list_pending_mints(world, allowed):
    return "ListPendingMints", dict(ended=True, limit=5), None


def case_retire(world, allowed):
    return "Retire", dict(request_id=rid(), account_id=MAIN, amount=1), {}


def case_transfer(world, allowed):
    return "Transfer", dict(request_id=rid(), from_account_id=MAIN, to_account_id=PAYEE, amount=1), {}


def case_create_hold(world, allowed):
    return "CreateHold", dict(request_id=rid(), account_id=MAIN, amount=1, expires=utc_in(3600)), {}


def case_extend_hold(world, allowed):
    hold_id = world.hold()
    return "ExtendHold", dict(request_id=rid(), hold_id=hold_id, expires=utc_in(7200), amount=20), {"hold_id": hold_id}


def case_charge_hold(world, allowed):
    hold_id = world.hold()
    return "ChargeHold", dict(request_id=rid(), hold_id=hold_id, payee_account_id=PAYEE, amount=4), {"hold_id": hold_id}


def case_settle_hold(world, allowed):
    hold_id = world.hold()
    return "SettleHold", dict(request_id=rid(), hold_id=hold_id, payee_account_id=PAYEE, amount=4), {"hold_id": hold_id}


def case_release_hold(world, allowed):
    hold_id = world.hold()
    return "ReleaseHold", dict(request_id=rid(), hold_id=hold_id), {"hold_id": hold_id}


def case_get_balance(world, allowed):
    return "GetBalance", dict(account_id=MAIN), None


def case_get_account(world, allowed):
    return "GetAccount", dict(account_id=MAIN), None


def case_get_hold(world, allowed):
    return "GetHold", dict(hold_id=world.shared_hold), None


def case_list_holds(world, allowed):
    return "ListHolds", dict(account_id=MAIN), None


def case_list_ended_holds(world, allowed):
    return "ListHolds", dict(account_id=MAIN, ended=True, offset=0, limit=5), None


def case_history(world, allowed):
    return "History", dict(account_id=MAIN, xpath_filter="t:kind = 'mint'", limit=5), None


def case_statement(world, allowed):
    return "Statement", dict(account_id=MAIN, period_start=utc_in(-3600), period_end=utc_in(60)), None


def case_money_supply(world, allowed):
    return "MoneySupply", {}, None


def case_audit(world, allowed):
    return "Audit", {}, None


def case_whoami(world, allowed):
    return "WhoAmI", {}, None


ALL = set(ROLES)
MATRIX = [  # (case, roles allowed) — from the table in services/bank/policy.py
    (case_create_account, {"admin"}),
    (case_set_holder_member, {"owner", "manager"}),   # administrators give no spending role (issue 10.2)
    (case_set_holder_viewer, {"admin", "owner", "manager"}),
    (case_set_holder_owner, {"owner"}),
    (case_remove_holder, {"admin", "owner", "manager"}),
    (case_freeze, {"admin", "owner"}),
    (case_unfreeze, {"admin"}),
    (case_set_credit_limit, {"admin"}),
    (case_set_spending_limit, {"admin", "owner", "manager"}),
    (case_grant_service, {"owner"}),   # never administrators: a grant lets a service spend
    (case_revoke_service, {"owner"}),
    (case_mint, {"admin"}),
    (case_approve_mint, {"admin2"}),   # "admin" requested it: SecondAdministratorRequired
    (case_cancel_mint, {"admin", "admin2"}),  # its requester too
    (case_list_pending_mints, {"admin", "auditor"}),
    (case_retire, {"admin"}),
    (case_transfer, SPENDERS),         # not the service identity, not administrators
    (case_create_hold, SPENDERS | {"service"}),
    (case_extend_hold, {"creator", "owner", "manager"}),
    (case_charge_hold, {"creator", "owner", "manager"}),
    (case_settle_hold, {"creator", "owner", "manager"}),
    (case_release_hold, {"creator", "owner", "manager", "admin"}),
    (case_get_balance, VIEWERS),
    (case_get_account, VIEWERS),
    (case_get_hold, VIEWERS),
    (case_list_holds, VIEWERS),
    (case_list_ended_holds, VIEWERS),
    (case_history, VIEWERS),
    (case_statement, VIEWERS),
    (case_money_supply, ALL),
    (case_audit, {"admin", "auditor"}),
    (case_whoami, ALL),
]


def test_authorization_matrix(world):
    world.shared_hold = world.hold()
    failures = []
    for case, allowed_roles in MATRIX:
        for role in ROLES + (["admin2"] if case in (case_approve_mint, case_cancel_mint) else []):
            allowed = role in allowed_roles
            operation, arguments, scope = case(world, allowed)
            client = world.clients[role]
            label = f"{operation} by {role} ({case.__name__})"
            if allowed:
                try:
                    answer = client.call(operation, **arguments)
                except Exception as error:  # noqa: BLE001 — collected, reported together
                    failures.append(f"{label}: refused but should be allowed: {error}")
                    continue
                if scope is not None and (answer.replayed or not answer.transaction.seq):
                    failures.append(f"{label}: no new transaction: {answer}")
                continue
            before = world.fingerprint(**scope) if scope is not None else None
            try:
                answer = client.call(operation, **arguments)
            except Exception as error:  # noqa: BLE001
                code = getattr(error, "code", repr(error))
                expected = ("SecondAdministratorRequired" if (case is case_approve_mint and role == "admin")
                            else "NotAuthorized")
                if code != expected:
                    failures.append(f"{label}: refused with {code}, expected {expected}: {error}")
            else:
                failures.append(f"{label}: allowed but should be refused: {answer}")
                continue
            if scope is not None and world.fingerprint(**scope) != before:
                failures.append(f"{label}: a refusal changed the ledger")
    assert not failures, "\n".join(failures)


def test_service_identity_acts_only_on_its_own_or_collected_holds(world):
    service, creator = world.clients["service"], world.clients["creator"]
    users = world.users
    # its own hold: charge and release
    own = world.hold(by="service", amount=30)
    assert service.call("ChargeHold", request_id=rid(), hold_id=own, payee_account_id=PAYEE, amount=10).transaction.kind == "charge"
    assert service.call("ReleaseHold", request_id=rid(), hold_id=own).transaction.amount == 20
    # a hold that names it collector: charge
    collected = world.hold(by="creator", amount=30, collector_dn=users.service.dn)
    receipt = service.call("ChargeHold", request_id=rid(), hold_id=collected, payee_account_id=PAYEE, amount=30)
    assert receipt.transaction.hold_state == "charged-out"
    # someone else's hold, although the service holds the member role (and even the manager role)
    other = world.hold(by="creator", amount=30)
    world.clients["owner"].call("SetHolder", request_id=rid(), account_id=MAIN, holder_dn=users.service.dn,
                                role="manager")
    try:
        before = world.fingerprint(hold_id=other)
        for operation, arguments in (("ChargeHold", dict(hold_id=other, payee_account_id=PAYEE, amount=1)),
                                     ("ReleaseHold", dict(hold_id=other)),
                                     ("ExtendHold", dict(hold_id=other, amount=31)),
                                     ("Transfer", dict(from_account_id=MAIN, to_account_id=PAYEE, amount=1))):
            assert refused_code(lambda: service.call(operation, request_id=rid(), **arguments)) == "NotAuthorized", operation
        assert world.fingerprint(hold_id=other) == before
    finally:
        world.clients["owner"].call("SetHolder", request_id=rid(), account_id=MAIN, holder_dn=users.service.dn,
                                    role="member")
    creator.call("ReleaseHold", request_id=rid(), hold_id=other)


def test_a_demoted_creator_loses_its_holds_and_admin_holder_changes_show_in_history(world):
    """Issue 10.1 and 10.2 through the signed service: a member demoted to viewer cannot raise or charge
    the hold it made; a collector cannot raise it or charge it elsewhere; an administrator gives no
    spending role, and the holder changes it makes are in the owners' history."""
    owner, creator, admin, stranger = (world.clients[name] for name in ("owner", "creator", "admin", "stranger"))
    users = world.users
    collected = world.hold(by="creator", amount=40, collector_dn=users.stranger.dn)
    mine = world.hold(by="creator", amount=40)
    assert refused_code(lambda: stranger.call("ExtendHold", request_id=rid(), hold_id=collected, amount=900_000)) \
        == "NotAuthorized"
    assert refused_code(lambda: stranger.call("ChargeHold", request_id=rid(), hold_id=collected,
                                              payee_account_id=OTHER, amount=1)) == "NotAuthorized"
    admin.call("SetHolder", request_id=rid(), account_id=MAIN, holder_dn=users.members[1].dn, role="viewer")
    try:
        before = world.fingerprint(hold_id=mine)
        for operation, arguments in (("ExtendHold", dict(hold_id=mine, amount=900_000)),
                                     ("ChargeHold", dict(hold_id=mine, payee_account_id=PAYEE, amount=40)),
                                     ("ReleaseHold", dict(hold_id=mine))):
            assert refused_code(lambda: creator.call(operation, request_id=rid(), **arguments)) == "NotAuthorized"
        assert world.fingerprint(hold_id=mine) == before
        for role in ("member", "manager", "owner"):
            assert refused_code(lambda: admin.call("SetHolder", request_id=rid(), account_id=MAIN,
                                                   holder_dn=users.admin.dn, role=role)) == "NotAuthorized"
        by_admin = f"t:kind = 'set-holder' and t:principalDn = '{users.admin.dn}'"
        history = owner.call("History", account_id=MAIN, xpath_filter=by_admin, limit=500)
        changes = [(t.principal_dn, t.holder_dn, t.role) for t in history.transactions.TransactionInfo]
        assert (users.admin.dn, users.members[1].dn, "viewer") in changes
    finally:
        owner.call("SetHolder", request_id=rid(), account_id=MAIN, holder_dn=users.members[1].dn, role="member")
    receipt = stranger.call("ChargeHold", request_id=rid(), hold_id=collected, payee_account_id=PAYEE, amount=40)
    assert receipt.transaction.hold_state == "charged-out"
    creator.call("ReleaseHold", request_id=rid(), hold_id=mine)


def test_settle_hold_over_signed_soap(world):
    """SettleHold through the typed client: the final charge and the release of the rest in one
    transaction, a retry answers that same transaction, an overcharge and a second settlement are
    refused with faults a person understands, and the account's history shows it."""
    host, users = world.host, world.users
    creator = BankClient(host.url, credential=users.members[1].credential, trust_dir=host.pki.trust_dir)
    hold_id = world.hold(amount=100)
    creator.charge_hold(hold_id, payee_account_id=PAYEE, amount=10)
    main_before, payee_before = (world.admin.call("GetAccount", account_id=a) for a in (MAIN, PAYEE))
    with pytest.raises(RemoteFault) as refusal:
        creator.settle_hold(hold_id, payee_account_id=PAYEE, amount=91)
    assert refusal.value.code == "ExceedsHold"
    assert f"hold {hold_id} has 90 credits left; the settlement charges 91 (over by 1)" in refusal.value.text
    request_id = rid("settle")
    receipt = creator.settle_hold(hold_id, payee_account_id=PAYEE, amount=25, request_id=request_id)
    settled = receipt.transaction
    assert not receipt.replayed
    assert (settled.kind, settled.amount, settled.released_amount, settled.hold_state, settled.counterparty_account_id,
            settled.hold_id) == ("settle", 25, 65, "settled", PAYEE, hold_id)
    again = creator.settle_hold(hold_id, payee_account_id=PAYEE, amount=25, request_id=request_id)
    assert again.replayed and (again.transaction.seq, again.transaction.hash) == (settled.seq, settled.hash)
    main_after, payee_after = (world.admin.call("GetAccount", account_id=a) for a in (MAIN, PAYEE))
    assert (main_after.balance, main_after.held) == (main_before.balance - 25, main_before.held - 90)
    assert payee_after.balance == payee_before.balance + 25
    hold = creator.get_hold(hold_id)
    assert (hold.state, hold.charged, hold.ended_seq) == ("settled", 35, settled.seq)
    with pytest.raises(RemoteFault) as refusal:
        creator.settle_hold(hold_id, payee_account_id=PAYEE, amount=0)
    assert refusal.value.code == "HoldEnded" and f"(settled in transaction {settled.seq})" in refusal.value.text
    history = creator.history(MAIN, xpath_filter=f"t:kind = 'settle' and t:holdId = '{hold_id}'")
    assert [(t.seq, t.released_amount) for t in history.transactions] == [(settled.seq, 65)]


def test_a_service_grant_over_signed_soap(world, pki):
    """Issue 13.2 through the signed service and the typed client: an owner grants the site's service, which
    holds for a member, raises, settles; the ledger and the member's history name both; then every misuse of
    a grant is refused with a fault a person understands and nothing changes (balances, holds, grants and
    the ledger head, by the fingerprint)."""
    host, users = world.host, world.users

    def client(who):
        return BankClient(host.url, credential=getattr(who, "credential", who), trust_dir=host.pki.trust_dir)

    owner, service, member, admin = (client(who) for who in (users.owners[0], users.service, users.members[0],
                                                             users.admin))
    account = f"acct-grant-{next(_ids)}"
    admin.create_account(account, project="jarm", owner_dn=users.owners[0].dn)
    owner.set_holder(account, holder_dn=users.members[0].dn, role="member")
    owner.set_holder(account, holder_dn=users.viewers[0].dn, role="viewer")
    admin.mint(account, 10_000)
    granted = owner.grant_service(account, users.service.dn, hold_max=500, period_max=800, period_s=30 * 86_400)
    assert (granted.transaction.kind, granted.transaction.service_dn, granted.transaction.grant_hold_max,
            granted.transaction.grant_period_max, granted.transaction.grant_period_us) == (
        "grant-service", users.service.dn, 500, 800, 30 * 86_400 * 10**6)
    hold = service.create_hold(account, amount=300, expires=3600, reference="job 1",
                               on_behalf_of_dn=users.members[0].dn).transaction
    assert (hold.principal_dn, hold.on_behalf_of_dn, hold.amount) == (users.service.dn, users.members[0].dn, 300)
    service.extend_hold(hold.hold_id, amount=400)
    settled = service.settle_hold(hold.hold_id, payee_account_id=PAYEE, amount=120).transaction
    assert (settled.amount, settled.released_amount, settled.on_behalf_of_dn) == (120, 280, users.members[0].dn)
    shown = member.get_hold(hold.hold_id)
    assert (shown.creator_dn, shown.on_behalf_of_dn, shown.state) == (users.service.dn, users.members[0].dn, "settled")
    mine = member.history(account, xpath_filter=f"t:onBehalfOfDn = '{users.members[0].dn}'").transactions
    assert [(t.kind, t.principal_dn) for t in mine] == [(kind, users.service.dn)
                                                        for kind in ("hold", "extend", "settle")]
    grants = owner.get_account(account).grants
    assert [(g.service_dn, g.hold_max, g.period_max, g.period_us, g.held_in_period) for g in grants] == [
        (users.service.dn, 500, 800, 30 * 86_400 * 10**6, 400)]

    limited_service = client(pki.proxy("JARM Service", limited=True))

    def hold_for(who, dn, amount=10, account_id=account):
        return lambda: who.create_hold(account_id, amount=amount, expires=600, on_behalf_of_dn=dn)

    attacks = [
        (hold_for(service, users.stranger.dn), "NotAuthorized", "that DN is not a holder of account"),
        (hold_for(service, users.viewers[0].dn), "NotAuthorized", "that DN is only a viewer of account"),
        (hold_for(service, users.members[0].dn, 501), "GrantLimitExceeded", "allows holds of at most 500 credits"),
        (hold_for(service, users.members[0].dn, 401), "GrantLimitExceeded", "400 already held in this period, so 401"),
        (hold_for(service, users.members[0].dn, account_id=OTHER), "NotAuthorized", "holds no grant on account"),
        (hold_for(client(users.stranger), users.members[0].dn), "NotAuthorized", "holds no grant on account"),
        (hold_for(limited_service, users.members[0].dn), "NotAuthorized", "limited proxy"),
        (hold_for(admin, users.members[0].dn), "NotAuthorized", "holds no grant on account"),
        (lambda: admin.grant_service(account, users.stranger.dn), "NotAuthorized", "only its owners may"),
        (lambda: admin.revoke_service(account, users.service.dn), "NotAuthorized", "only its owners may"),
        (lambda: client(users.members[0]).grant_service(account, users.stranger.dn), "NotAuthorized",
         "only its owners may"),
    ]

    def refuse_all(attempts) -> list[str]:
        before = world.fingerprint(accounts=(account, PAYEE, OTHER))
        problems = []
        for call, code, words in attempts:
            try:
                answer = call()
            except RemoteFault as fault:
                if fault.code != code or words not in fault.text or "Traceback" in fault.text:
                    problems.append(f"refused with {fault.code}: {fault.text!r}; expected {code} saying {words!r}")
            else:
                problems.append(f"accepted, expected {code}: {answer}")
        if world.fingerprint(accounts=(account, PAYEE, OTHER)) != before:
            problems.append("a refused request changed the ledger")
        return problems

    problems = refuse_all(attacks)
    assert not problems, "\n".join(problems)
    owner.remove_holder(account, holder_dn=users.members[0].dn)
    owner.revoke_service(account, users.service.dn)
    problems = refuse_all([(hold_for(service, users.members[0].dn), "NotAuthorized", "holds no grant on account")])
    owner.grant_service(account, users.service.dn, hold_max=500)
    problems += refuse_all([(hold_for(service, users.members[0].dn), "NotAuthorized", "that DN is not a holder")])
    assert not problems, "\n".join(problems)


def test_limited_proxy_reads_but_changes_nothing(world):
    limited = world.clients["limited"]
    assert limited.call("WhoAmI").limited is True
    assert limited.call("GetBalance", account_id=MAIN).account_id == MAIN
    before = world.fingerprint()
    for operation, arguments in (
            ("Transfer", dict(from_account_id=MAIN, to_account_id=PAYEE, amount=1)),
            ("CreateHold", dict(account_id=MAIN, amount=1, expires=utc_in(60))),
            ("SetStatus", dict(account_id=MAIN, status="frozen")),
            ("SetHolder", dict(account_id=MAIN, holder_dn=_new_dn(), role="viewer")),
            ("Transfer", dict(from_account_id=MAIN, to_account_id=PAYEE, amount=-5))):  # even bad input: refused first
        assert refused_code(lambda: limited.call(operation, request_id=rid(), **arguments)) == "NotAuthorized"
    assert world.fingerprint() == before


# -------------------------------------------------------------------------------- bad input

XS_LONG_MAX = 2**63 - 1


def _refusals(world, attempts, *, hold_id=None):
    """Each (client, operation, arguments, codes) refused with one of ``codes``; ledger unchanged."""
    before = world.fingerprint(hold_id=hold_id)
    problems = []
    for client, operation, arguments, codes in attempts:
        try:
            answer = client.call(operation, **arguments)
        except Exception as error:  # noqa: BLE001
            code = getattr(error, "code", None)
            text = getattr(error, "text", str(error))
            if code not in codes:
                problems.append(f"{operation} {arguments}: {code} ({text}), expected one of {codes}")
            elif len(text.split()) < 3 or "Traceback" in text:
                problems.append(f"{operation}: unclear message {text!r}")
        else:
            problems.append(f"{operation} {arguments}: accepted: {answer}")
    assert world.fingerprint(hold_id=hold_id) == before, "a refused request changed the ledger"
    assert not problems, "\n".join(problems)


def test_bad_amounts(world):
    admin, member, creator = world.admin, world.clients["member"], world.clients["creator"]
    hold_id = world.hold(amount=100)
    amount_codes = {"InvalidAmount"}
    long_codes = {"InvalidAmount", "ValidationError", "InvalidArgument"}  # beyond xs:long: the schema refuses it
    attempts = []
    for bad in (0, -1, -(10**15), 10**15 + 1, XS_LONG_MAX, -XS_LONG_MAX - 1):
        codes = amount_codes
        attempts += [
            (admin, "Mint", dict(request_id=rid(), account_id=MAIN, amount=bad), codes),
            (admin, "Retire", dict(request_id=rid(), account_id=MAIN, amount=bad), codes),
            (member, "Transfer", dict(request_id=rid(), from_account_id=MAIN, to_account_id=PAYEE, amount=bad), codes),
            (member, "CreateHold", dict(request_id=rid(), account_id=MAIN, amount=bad, expires=utc_in(60)), codes),
            (creator, "ChargeHold", dict(request_id=rid(), hold_id=hold_id, payee_account_id=PAYEE, amount=bad), codes),
            (creator, "ExtendHold", dict(request_id=rid(), hold_id=hold_id, amount=bad), codes),
        ]
        if bad != 0:                     # settling 0 is allowed: it releases the whole hold
            attempts.append((creator, "SettleHold", dict(request_id=rid(), hold_id=hold_id, payee_account_id=PAYEE,
                                                         amount=bad), codes))
    for bad in (-1, 10**15 + 1):
        attempts += [(admin, "SetCreditLimit", dict(request_id=rid(), account_id=MAIN, credit_limit=bad), amount_codes),
                     (admin, "SetSpendingLimit", dict(request_id=rid(), account_id=MAIN, spending_limit=bad,
                                                      spending_period_s=3600), amount_codes)]
    # more than is there / more than the hold
    attempts += [
        (member, "Transfer", dict(request_id=rid(), from_account_id=MAIN, to_account_id=PAYEE, amount=10**15),
         {"InsufficientFunds"}),
        (member, "CreateHold", dict(request_id=rid(), account_id=MAIN, amount=10**15, expires=utc_in(60)),
         {"InsufficientFunds"}),
        (creator, "ChargeHold", dict(request_id=rid(), hold_id=hold_id, payee_account_id=PAYEE, amount=101),
         {"ExceedsHold"}),
        (admin, "Retire", dict(request_id=rid(), account_id=MAIN, amount=10**15), {"InsufficientFunds"}),
        (admin, "CreateAccount", dict(request_id=rid(), account_id="neg-credit", project="p",
                                      owner_dn=world.users.owners[0].dn, credit_limit=-1), amount_codes),
    ]
    _refusals(world, attempts, hold_id=hold_id)
    # beyond xs:long: zeep will not even send it; the raw envelope is refused by the host's schema
    for operation, arguments in (("Mint", dict(request_id=rid(), account_id=MAIN, amount=2**63)),
                                 ("Transfer", dict(request_id=rid(), from_account_id=MAIN, to_account_id=PAYEE,
                                                   amount=2**64 + 5))):
        before = world.fingerprint()
        client = admin if operation == "Mint" else member
        try:
            client.call(operation, **arguments)
        except Exception as error:  # noqa: BLE001 — refused by the client or the server, never applied
            assert "Traceback" not in str(error)
        else:
            raise AssertionError(f"{operation} of {arguments['amount']} accepted")
        assert world.fingerprint() == before
    _raw_overflow_refused(world)


def _raw_overflow_refused(world):
    """A signed envelope whose amount is beyond xs:long reaches the host: a clear Client fault."""
    from lxml import etree

    from gridcredit.security.wssec import SOAP11_NS, Signer
    from security_fixtures import BANK_NS, https_session, post_soap, read_fault_response, whoami_envelope, host_verifier

    before = world.fingerprint()
    for amount in ("9223372036854775808", "-9223372036854775809", "1e3", "12.5", "ten"):
        payload = etree.Element(f"{{{BANK_NS}}}Mint", nsmap={"tns": BANK_NS})
        for name, value in (("request_id", rid()), ("account_id", MAIN), ("amount", amount)):
            etree.SubElement(payload, f"{{{BANK_NS}}}{name}").text = value
        envelope = Signer(world.users.admin.credential).sign(whoami_envelope(BANK_NS, payload))
        response = post_soap(https_session(world.host.pki.trust_dir), f"{world.host.url}/bank", etree.tostring(envelope))
        fault = read_fault_response(response.status_code, response.headers.get("Content-Type", ""), response.content,
                                    host_verifier(world.host.pki))
        assert fault.code.startswith("Client"), (amount, fault.code, fault.message)
    assert world.fingerprint() == before


def test_unknown_accounts_holds_and_past_expiry(world):
    admin, member, creator = world.admin, world.clients["member"], world.clients["creator"]
    hold_id = world.hold(amount=50)
    current_expiry = admin.call("GetHold", hold_id=hold_id).expires_at_us
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    attempts = [
        (admin, "Mint", dict(request_id=rid(), account_id="no-such-account", amount=5), {"UnknownAccount"}),
        (member, "Transfer", dict(request_id=rid(), from_account_id=MAIN, to_account_id="no-such", amount=5),
         {"UnknownAccount"}),
        (member, "Transfer", dict(request_id=rid(), from_account_id="no-such", to_account_id=MAIN, amount=5),
         {"UnknownAccount"}),
        (member, "CreateHold", dict(request_id=rid(), account_id="no-such", amount=5, expires=utc_in(60)),
         {"UnknownAccount"}),
        (creator, "ChargeHold", dict(request_id=rid(), hold_id="hold-999999999", payee_account_id=PAYEE, amount=1),
         {"UnknownHold"}),
        (creator, "ChargeHold", dict(request_id=rid(), hold_id=hold_id, payee_account_id="no-such", amount=1),
         {"UnknownAccount"}),
        (creator, "ReleaseHold", dict(request_id=rid(), hold_id="hold-999999999"), {"UnknownHold"}),
        (creator, "ExtendHold", dict(request_id=rid(), hold_id="hold-999999999", amount=99), {"UnknownHold"}),
        (admin, "SetStatus", dict(request_id=rid(), account_id="no-such", status="frozen"), {"UnknownAccount"}),
        (admin, "ApproveMint", dict(request_id=rid(), pending_mint_id="mint-999999"), {"UnknownPendingMint"}),
        (admin, "CancelMint", dict(request_id=rid(), pending_mint_id="mint-999999"), {"UnknownPendingMint"}),
        (admin, "CancelMint", dict(request_id=rid(), pending_mint_id="../mint"), {"InvalidArgument"}),
        (member, "CreateHold", dict(request_id=rid(), account_id=MAIN, amount=5, expires=past), {"InvalidExpiry"}),
        (member, "CreateHold", dict(request_id=rid(), account_id=MAIN, amount=5,
                                    expires=datetime.now(timezone.utc) + timedelta(days=400)), {"InvalidExpiry"}),
        (creator, "ExtendHold", dict(request_id=rid(), hold_id=hold_id, expires=past), {"InvalidExpiry"}),
        (creator, "ExtendHold", dict(request_id=rid(), hold_id=hold_id,
                                     expires=datetime_from_us(current_expiry)),
         {"InvalidExpiry"}),
        (creator, "ExtendHold", dict(request_id=rid(), hold_id=hold_id), {"InvalidArgument"}),
        (member, "Transfer", dict(request_id=rid(), from_account_id=MAIN, to_account_id=MAIN, amount=5),
         {"InvalidArgument"}),
        (creator, "ChargeHold", dict(request_id=rid(), hold_id=hold_id, payee_account_id=MAIN, amount=1),
         {"InvalidArgument"}),
        (member, "Transfer", dict(request_id="bad id with spaces", from_account_id=MAIN, to_account_id=PAYEE,
                                  amount=5), {"InvalidArgument"}),
        (member, "Transfer", dict(request_id=rid(), from_account_id="../etc", to_account_id=PAYEE, amount=5),
         {"InvalidArgument"}),
        (admin, "SetStatus", dict(request_id=rid(), account_id=MAIN, status="deleted"), {"InvalidArgument"}),
        (admin, "SetHolder", dict(request_id=rid(), account_id=MAIN, holder_dn=_new_dn(), role="god"),
         {"InvalidArgument"}),
    ]
    _refusals(world, attempts, hold_id=hold_id)
    for operation, arguments in (("GetBalance", dict(account_id="no-such")), ("GetAccount", dict(account_id="no-such")),
                                 ("ListHolds", dict(account_id="no-such")), ("History", dict(account_id="no-such")),
                                 ("GetHold", dict(hold_id="hold-999999999"))):
        assert refused_code(lambda: admin.call(operation, **arguments)) in ("UnknownAccount", "UnknownHold")
    # a reused request id with a different request is refused, the original answer kept
    request_id = rid("reuse")
    first = member.call("Transfer", request_id=request_id, from_account_id=MAIN, to_account_id=PAYEE, amount=3)
    again = member.call("Transfer", request_id=request_id, from_account_id=MAIN, to_account_id=PAYEE, amount=3)
    assert again.replayed and again.transaction.seq == first.transaction.seq and again.transaction.hash == first.transaction.hash
    assert refused_code(lambda: member.call("Transfer", request_id=request_id, from_account_id=MAIN,
                                            to_account_id=PAYEE, amount=4)) == "RequestIdReused"


SYNTAX_ERRORS = ["t:kind = ", "[[", "t:amount >", "t:kind = 'mint", ")", "t:kind = 'a'] | //x[1", "1]|/t:Transaction[1",
                 "true()) or (true()", "true()] | /t:Transaction[true()", "x:kind = 'mint'", "t:kind (: c :)",
                 "true() (: ", "']", "\"", "1]/..//t:Transaction[1", "boolean(", "t:kind = $nope",
                 "x" * 3000]
ESCAPES = ["$account", "/t:Transaction", "//t:Transaction", "../t:Transaction", "..", ".. | /", "/ | //*", "true() or true()",
           "not(false())", "count(/*) > 0", "t:kind | /t:Transaction", "(//t:accountId)[1] != $account",
           "document('/etc/passwd')", "doc('/etc/passwd')", "count(ancestor-or-self::node()) > 0",
           "boolean(//node()[. = 'acct-other'])", "t:accountId = 'acct-other' or true()"]
EXPENSIVE = ("count(//node()[count(//node()[count(//node()[count(//node()[count(//node()) >= 0]) >= 0]) >= 0])"
             " >= 0]) >= 0")


def test_absurd_history_filters(world, monkeypatch):
    member = world.clients["member"]
    snapshot = snapshot_of(world.host)
    own = {t.seq for t in snapshot.transactions if MAIN in (t.account_id, t.counterparty_account_id)}
    assert any(t.account_id == OTHER for t in snapshot.transactions)
    for expression in SYNTAX_ERRORS:
        code = refused_code(lambda: member.call("History", account_id=MAIN, xpath_filter=expression))
        assert code == "InvalidQuery", (expression, code)
    for expression in ESCAPES:
        try:
            page = member.call("History", account_id=MAIN, xpath_filter=expression, limit=500)
        except Exception as error:  # noqa: BLE001 — refusing is fine, leaking is not
            assert getattr(error, "code", None) == "InvalidQuery", (expression, error)
            continue
        seqs = {t.seq for t in (page.transactions.TransactionInfo if page.transactions else [])}
        assert seqs <= own, f"{expression!r} reached transactions of other accounts: {sorted(seqs - own)[:5]}"
    # expensive: bounded by the time limit (5 s for History), answered within it plus slack
    started = time.monotonic()
    try:
        member.call("History", account_id=MAIN, xpath_filter=EXPENSIVE, limit=500)
    except Exception as error:  # noqa: BLE001
        assert getattr(error, "code", None) == "InvalidQuery", error
    assert time.monotonic() - started < 20
    # the worker thread that ran out of time still writes (a leaked store cursor once made it fail)
    for _ in range(3):
        member.call("Transfer", request_id=rid(), from_account_id=MAIN, to_account_id=PAYEE, amount=1)
    # pages: bounded
    for arguments in (dict(limit=501), dict(limit=-1), dict(offset=-1)):
        assert refused_code(lambda: member.call("History", account_id=MAIN, **arguments)) == "InvalidArgument", arguments
    assert refused_code(lambda: member.call("ListHolds", account_id=MAIN, limit=100_000)) == "InvalidArgument"
    # and a legitimate filter works
    mints = member.call("History", account_id=MAIN, xpath_filter="t:kind = 'mint' and t:amount >= 1000000", limit=500)
    assert [t.kind for t in mints.transactions.TransactionInfo] == ["mint"]


# ---------------------------------------------------------------- supply, statement, holds listing

def test_money_supply_statement_and_holds(world):
    admin, owner = world.admin, world.clients["owner"]
    member, creator = world.clients["member"], world.clients["creator"]
    supply = admin.call("MoneySupply")
    assert supply.outstanding == supply.issued - supply.retired
    snapshot = snapshot_of(world.host)
    assert sum(a.balance for a in snapshot.accounts.values()) == supply.outstanding
    account_id = world.make_account(f"stmt-{next(_ids)}")
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    admin.call("Mint", request_id=rid(), account_id=account_id, amount=1000)
    admin.call("Retire", request_id=rid(), account_id=account_id, amount=100)
    assert admin.call("MoneySupply").outstanding == supply.outstanding + 900
    member.call("Transfer", request_id=rid(), from_account_id=account_id, to_account_id=PAYEE, amount=50)
    hold_a = world.hold(by="creator", account_id=account_id, amount=200)
    hold_b = world.hold(by="member", account_id=account_id, amount=100)
    hold_c = world.hold(by="owner", account_id=account_id, amount=10)
    creator.call("ChargeHold", request_id=rid(), hold_id=hold_a, payee_account_id=PAYEE, amount=70)
    creator.call("ChargeHold", request_id=rid(), hold_id=hold_a, payee_account_id=OTHER, amount=30)
    member.call("ChargeHold", request_id=rid(), hold_id=hold_b, payee_account_id=PAYEE, amount=100)  # charged out
    owner.call("ReleaseHold", request_id=rid(), hold_id=hold_c)
    balance = owner.call("GetBalance", account_id=account_id)
    assert (balance.total, balance.held, balance.available) == (1000 - 100 - 50 - 70 - 30 - 100, 100, 550)
    active = owner.call("ListHolds", account_id=account_id)
    assert [(h.hold_id, h.amount, h.charged, h.state) for h in active.holds.HoldInfo] == [(hold_a, 200, 100, "active")]
    ended = owner.call("ListHolds", account_id=account_id, ended=True)
    assert sorted((h.hold_id, h.state) for h in ended.holds.HoldInfo) == sorted([(hold_b, "charged-out"),
                                                                               (hold_c, "released")])
    page = owner.call("ListHolds", account_id=account_id, ended=True, limit=1)
    assert len(page.holds.HoldInfo) == 1 and page.next_offset == 1
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    statement = owner.call("Statement", account_id=account_id, period_start=start, period_end=end)
    kinds = [t.kind for t in statement.transactions.TransactionInfo if t.kind not in ("create-account", "set-holder")]
    assert kinds == ["mint", "retire", "transfer", "hold", "hold", "hold", "charge", "charge", "charge", "release"]
    assert (statement.opening_balance, statement.closing_balance) == (0, 650) and not statement.truncated
    # a later period: opening = closing of the earlier one, nothing inside
    later = owner.call("Statement", account_id=account_id, period_start=end, period_end=end + timedelta(hours=1))
    assert (later.opening_balance, later.closing_balance) == (650, 650) and not later.transactions
    assert refused_code(lambda: owner.call("Statement", account_id=account_id, period_start=end,
                                           period_end=start)) == "InvalidArgument"
    creator.call("ReleaseHold", request_id=rid(), hold_id=hold_a)
    assert owner.call("GetBalance", account_id=account_id).held == 0


def test_pending_mints_are_listed_with_their_state(world):
    admin, admin2, auditor = world.admin, world.clients["admin2"], world.clients["auditor"]
    supply = admin.call("MoneySupply")
    requested = admin.call("Mint", request_id=rid(), account_id=OTHER, amount=APPROVAL_ABOVE + 7).transaction
    pending_id = requested.pending_mint_id
    assert requested.expires_at_us == requested.at_us + 7 * 86_400 * 1_000_000   # bank.mint_approval_days = 7
    waiting = {p.pending_mint_id: p for p in auditor.call("ListPendingMints", limit=500).pending_mints.PendingMintInfo}
    assert (waiting[pending_id].state, waiting[pending_id].requester_dn) == ("pending", world.users.admin.dn)
    cancelled = admin2.call("CancelMint", request_id=rid(), pending_mint_id=pending_id).transaction
    assert (cancelled.kind, cancelled.principal_dn, cancelled.amount) == ("mint-cancel", world.users.admin2.dn,
                                                                          APPROVAL_ABOVE + 7)
    assert refused_code(lambda: admin2.call("ApproveMint", request_id=rid(), pending_mint_id=pending_id)) == \
        "PendingMintEnded"
    ended = [p for p in auditor.call("ListPendingMints", ended=True, limit=500).pending_mints.PendingMintInfo
             if p.pending_mint_id == pending_id]
    assert [(p.state, p.ended_by_dn, p.ended_seq) for p in ended] == [("cancelled", world.users.admin2.dn,
                                                                       cancelled.seq)]
    page = auditor.call("ListPendingMints")
    assert pending_id not in {p.pending_mint_id for p in (page.pending_mints.PendingMintInfo if page.pending_mints else [])}
    assert admin.call("MoneySupply").issued == supply.issued
    assert admin.call("Audit").clean


def test_hold_expired_by_the_sweep_returns_its_remainder_once(world):
    creator, owner = world.clients["creator"], world.clients["owner"]
    account_id = world.make_account(f"exp-{next(_ids)}", money=500)
    hold_id = world.hold(by="creator", account_id=account_id, amount=300, seconds=2)
    creator.call("ChargeHold", request_id=rid(), hold_id=hold_id, payee_account_id=PAYEE, amount=120)
    assert owner.call("GetBalance", account_id=account_id).held == 180
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        hold = owner.call("GetHold", hold_id=hold_id)
        if hold.state != "active":
            break
        time.sleep(0.3)
    assert hold.state == "expired", hold
    # after expiry and before or after the sweep: no charge, release or extension
    for operation, arguments in (("ChargeHold", dict(hold_id=hold_id, payee_account_id=PAYEE, amount=1)),
                                 ("ReleaseHold", dict(hold_id=hold_id)), ("ExtendHold", dict(hold_id=hold_id, amount=400))):
        assert refused_code(lambda: creator.call(operation, request_id=rid(), **arguments)) in ("HoldEnded", "HoldExpired")
    time.sleep(2.5)  # more sweeps by both workers: still ended once
    balance = owner.call("GetBalance", account_id=account_id)
    assert (balance.total, balance.held, balance.available) == (380, 0, 380)
    history = owner.call("History", account_id=account_id, limit=500)
    ending = [t for t in history.transactions.TransactionInfo if t.hold_id == hold_id and t.kind in ("expire", "release")]
    assert [(t.kind, t.amount, t.principal_dn) for t in ending] == [("expire", 180, "gridcredit bank expiry sweeper")]
    ended = owner.call("ListHolds", account_id=account_id, ended=True).holds.HoldInfo
    assert [(h.hold_id, h.state, h.charged, h.ended_seq) for h in ended] == [(hold_id, "expired", 120, ending[0].seq)]
    assert world.admin.call("Audit").clean
