"""Who controls the bank: no sequence of administrator operations moves a user's money (issue 10.2).

Hypothesis searches sequences of every mutating operation, each sent by one of two administrators
(alone or taking turns), with arguments drawn from everything in the ledger — the users' accounts
and holds, the administrators' own DNs and accounts, a second identity of an administrator, and
pending mints — against the real core (``ledger.MemoryLedger``). After every step:

* no money left a user's account except by a retirement (a ``retire`` transaction on that account,
  in its history; a hold's charge or a transfer out of it never happens);
* no DN gained a spending role (owner, manager, member) on a user's account, no service grant on it
  was given, changed or taken, and the users' holds were neither raised, re-addressed, charged nor
  settled;
* every holder change an administrator made is a transaction of that account (its owners see it
  in their history), and the audit is clean.

Users act only in the setup; the administrators then act alone.
"""
from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gridcredit.errors import DomainError
from gridcredit.services.bank import ledger
from gridcredit.services.bank.ledger import AccountStatus, Principal, Role, TransactionKind

KEY = b"admin-powers-test-key"
SECOND_US = 1_000_000
START_US = 1_700_000_000 * SECOND_US
APPROVAL_ABOVE = 500

ADMIN = Principal("/DC=org/DC=grid/CN=Ada Admin", is_administrator=True)
ADMIN_TWO = Principal("/DC=org/DC=grid/CN=Bo Admin", is_administrator=True)
ADMIN_ALIAS = "/DC=org/DC=grid/CN=Ada Admin/CN=laptop"   # a second certificate of Ada's, not configured as admin
OWNER = Principal("/DC=org/DC=grid/CN=Olga Owner")
MEMBER = Principal("/DC=org/DC=grid/CN=Mel Member")
SITE_OWNER = Principal("/DC=org/DC=grid/CN=Sid Site")
SERVICE = Principal("/DC=org/DC=grid/CN=host/jarm.example.org", is_service=True)
USER_ACCOUNTS = ("vo-atlas", "site-north")
ADMIN_ACCOUNTS = ("ada-own", "bo-own")
ACCOUNT_IDS = USER_ACCOUNTS + ADMIN_ACCOUNTS + ("new-0", "new-1")
DNS = (ADMIN.dn, ADMIN_TWO.dn, ADMIN_ALIAS, OWNER.dn, MEMBER.dn, SITE_OWNER.dn, SERVICE.dn)
SPENDING_ROLES = {Role.OWNER, Role.MANAGER, Role.MEMBER}


def sign(message: bytes) -> bytes:
    return hmac.new(KEY, message, hashlib.sha256).digest()


def verify(message: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(sign(message), signature)


admins = st.sampled_from((ADMIN, ADMIN_TWO))
account_ids = st.sampled_from(ACCOUNT_IDS)
dns = st.sampled_from(DNS)
roles = st.sampled_from(tuple(Role))
amounts = st.sampled_from((1, 7, 100, APPROVAL_ABOVE + 1, 5_000, 10**6))
indices = st.integers(0, 1_000)


class AdministratorsAlone(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bank = ledger.MemoryLedger(sign=sign, policy=ledger.BankPolicy(mint_approval_threshold=APPROVAL_ABOVE))
        self.now_us = START_US
        self.counter = 0
        self.setup_seq = 0
        self.accepted: dict[str, int] = {}

    def run(self, principal: Principal, request) -> None:
        try:
            self.bank.run(request, principal=principal, now_us=self.now_us)
        except DomainError:
            return
        self.accepted[type(request).__name__] = self.accepted.get(type(request).__name__, 0) + 1

    def request_id(self) -> str:
        self.counter += 1
        return f"r-{self.counter}"

    def user_run(self, principal: Principal, request) -> None:
        self.bank.run(request, principal=principal, now_us=self.now_us)

    @initialize()
    def users_set_up_their_accounts(self) -> None:
        bank, rid = self, self.request_id
        bank.user_run(ADMIN, ledger.CreateAccount(rid(), "vo-atlas", "atlas", OWNER.dn))
        bank.user_run(ADMIN, ledger.CreateAccount(rid(), "site-north", "north", SITE_OWNER.dn))
        bank.user_run(ADMIN, ledger.CreateAccount(rid(), "ada-own", "ada", ADMIN.dn))
        bank.user_run(ADMIN_TWO, ledger.CreateAccount(rid(), "bo-own", "bo", ADMIN_TWO.dn))
        bank.user_run(OWNER, ledger.SetHolder(rid(), "vo-atlas", MEMBER.dn, Role.MEMBER))
        bank.user_run(OWNER, ledger.SetHolder(rid(), "vo-atlas", SERVICE.dn, Role.MEMBER))
        bank.user_run(ADMIN, ledger.Mint(rid(), "vo-atlas", 400))
        bank.user_run(ADMIN, ledger.Mint(rid(), "site-north", 300))
        bank.user_run(ADMIN, ledger.Mint(rid(), "ada-own", 200))
        expires = self.now_us + 3600 * SECOND_US
        # Users' holds: one plain, one a site collects (to its account), one the service made.
        bank.user_run(MEMBER, ledger.CreateHold(rid(), "vo-atlas", 50, expires, "job-1"))
        bank.user_run(MEMBER, ledger.CreateHold(rid(), "vo-atlas", 60, expires, "job-2", SITE_OWNER.dn, "site-north"))
        bank.user_run(SERVICE, ledger.CreateHold(rid(), "vo-atlas", 70, expires, "job-3"))
        # The owner grants the service, which holds for the member under the grant.
        bank.user_run(OWNER, ledger.GrantService(rid(), "vo-atlas", SERVICE.dn, 100, None, None))
        bank.user_run(SERVICE, ledger.CreateHold(rid(), "vo-atlas", 40, expires, "job-4", None, None, MEMBER.dn))
        self.setup_seq = bank.bank.ledger_head.seq
        self.spenders = {account_id: self.spenders_of(account_id) for account_id in USER_ACCOUNTS}
        self.balances = {account_id: self.bank.accounts[account_id].balance for account_id in USER_ACCOUNTS}
        self.user_holds = {hold_id: hold for hold_id, hold in self.bank.holds.items()}
        self.grants = {account_id: self.bank.accounts[account_id].grants for account_id in USER_ACCOUNTS}

    def spenders_of(self, account_id: str) -> set[str]:
        return {holder.dn for holder in self.bank.accounts[account_id].holders if holder.role in SPENDING_ROLES}

    def hold_id(self, index: int) -> str:
        hold_ids = sorted(self.bank.holds, key=lambda hold_id: int(hold_id.split("-")[1]))
        return hold_ids[index % len(hold_ids)] if hold_ids else "hold-1"

    def pending_id(self, index: int) -> str:
        pending = sorted(self.bank.pending_mints)
        return pending[index % len(pending)] if pending else "mint-1"

    # -- the clock --------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from((1, 600, 3600, 7 * 86_400)))
    def time_passes(self, seconds: int) -> None:
        self.now_us += seconds * SECOND_US

    # -- every mutating operation, by administrators -------------------------------------------------

    @rule(admin=admins, account_id=account_ids, owner=dns)
    def create_account(self, admin, account_id, owner) -> None:
        self.run(admin, ledger.CreateAccount(self.request_id(), account_id, "p", owner))

    @rule(admin=admins, account_id=account_ids, dn=dns, role=roles)
    def set_holder(self, admin, account_id, dn, role) -> None:
        self.run(admin, ledger.SetHolder(self.request_id(), account_id, dn, role))

    @rule(admin=admins, account_id=account_ids, dn=dns)
    def remove_holder(self, admin, account_id, dn) -> None:
        self.run(admin, ledger.RemoveHolder(self.request_id(), account_id, dn))

    @rule(admin=admins, account_id=account_ids, status=st.sampled_from(tuple(AccountStatus)))
    def set_status(self, admin, account_id, status) -> None:
        self.run(admin, ledger.SetStatus(self.request_id(), account_id, status))

    @rule(admin=admins, account_id=account_ids, limit=st.sampled_from((0, 100, 10**15)))
    def set_credit_limit(self, admin, account_id, limit) -> None:
        self.run(admin, ledger.SetCreditLimit(self.request_id(), account_id, limit))

    @rule(admin=admins, account_id=account_ids, limit=st.sampled_from((None, 0, 100)))
    def set_spending_limit(self, admin, account_id, limit) -> None:
        period = None if limit is None else 3600 * SECOND_US
        self.run(admin, ledger.SetSpendingLimit(self.request_id(), account_id, limit, period))

    @rule(admin=admins, account_id=account_ids, amount=amounts)
    def mint(self, admin, account_id, amount) -> None:
        self.run(admin, ledger.Mint(self.request_id(), account_id, amount))

    @rule(admin=admins, account_id=account_ids, amount=amounts)
    def retire(self, admin, account_id, amount) -> None:
        self.run(admin, ledger.Retire(self.request_id(), account_id, amount))

    @rule(admin=admins, index=indices)
    def approve_mint(self, admin, index) -> None:
        self.run(admin, ledger.ApproveMint(self.request_id(), self.pending_id(index)))

    @rule(admin=admins, index=indices)
    def cancel_mint(self, admin, index) -> None:
        self.run(admin, ledger.CancelMint(self.request_id(), self.pending_id(index)))

    @rule(admin=admins, index=indices)
    def expire_mint(self, admin, index) -> None:
        self.run(admin, ledger.ExpireMint(self.request_id(), self.pending_id(index)))

    @rule(admin=admins, payer=account_ids, payee=account_ids, amount=amounts)
    def transfer(self, admin, payer, payee, amount) -> None:
        self.run(admin, ledger.Transfer(self.request_id(), payer, payee, amount))

    @rule(admin=admins, account_id=account_ids, amount=amounts, collector=st.sampled_from((None,) + DNS),
          payee=st.sampled_from((None,) + ACCOUNT_IDS))
    def create_hold(self, admin, account_id, amount, collector, payee) -> None:
        self.run(admin, ledger.CreateHold(self.request_id(), account_id, amount, self.now_us + 600 * SECOND_US,
                                          "admin", collector, payee))

    @rule(admin=admins, index=indices, amount=st.sampled_from((None, 1_000, 10**6)),
          later=st.sampled_from((None, 600)), payee=st.sampled_from((None,) + ACCOUNT_IDS))
    def extend_hold(self, admin, index, amount, later, payee) -> None:
        hold_id = self.hold_id(index)
        hold = self.bank.holds.get(hold_id)
        expires = None if later is None or hold is None else hold.expires_at_us + later * SECOND_US
        self.run(admin, ledger.ExtendHold(self.request_id(), hold_id, expires, amount, payee))

    @rule(admin=admins, index=indices, payee=account_ids, amount=amounts)
    def charge_hold(self, admin, index, payee, amount) -> None:
        self.run(admin, ledger.ChargeHold(self.request_id(), self.hold_id(index), payee, amount))

    @rule(admin=admins, index=indices, payee=account_ids, amount=st.sampled_from((0, 1, 40, 100)))
    def settle_hold(self, admin, index, payee, amount) -> None:
        self.run(admin, ledger.SettleHold(self.request_id(), self.hold_id(index), payee, amount))

    @rule(admin=admins, account_id=account_ids, service=dns,
          caps=st.sampled_from(((None, None, None), (10**6, None, None), (None, 10**6, 3600 * SECOND_US))))
    def grant_service(self, admin, account_id, service, caps) -> None:
        self.run(admin, ledger.GrantService(self.request_id(), account_id, service, *caps))

    @rule(admin=admins, account_id=account_ids, service=dns)
    def revoke_service(self, admin, account_id, service) -> None:
        self.run(admin, ledger.RevokeService(self.request_id(), account_id, service))

    @rule(admin=admins, account_id=account_ids, amount=amounts, for_dn=dns)
    def create_hold_on_behalf(self, admin, account_id, amount, for_dn) -> None:
        self.run(admin, ledger.CreateHold(self.request_id(), account_id, amount, self.now_us + 600 * SECOND_US,
                                          "admin", None, None, for_dn))

    @rule(admin=admins, index=indices)
    def release_hold(self, admin, index) -> None:
        self.run(admin, ledger.ReleaseHold(self.request_id(), self.hold_id(index)))

    @rule(admin=admins, index=indices)
    def expire_hold(self, admin, index) -> None:
        self.run(admin, ledger.ExpireHold(self.request_id(), self.hold_id(index)))

    @rule(admin=admins, index=indices)
    def reuse_a_users_request_id(self, admin, index) -> None:
        """A user's request id under an administrator's name is the administrator's own request."""
        self.run(admin, ledger.Transfer(f"r-{1 + index % max(self.setup_seq, 1)}", "vo-atlas", "ada-own", 1))

    # -- what must hold after every step --------------------------------------------------------------

    @invariant()
    def no_money_left_a_users_account_but_by_retirement(self) -> None:
        since_setup = [t for t in self.bank.transactions if t.seq > self.setup_seq]
        for account_id in USER_ACCOUNTS:
            outflows = [t for t in since_setup if t.account_id == account_id
                        and t.kind in (TransactionKind.TRANSFER, TransactionKind.CHARGE, TransactionKind.SETTLE)
                        and t.amount]
            assert not outflows, f"administrators moved money out of {account_id}: {outflows}"
            inflow = sum(t.amount for t in since_setup if t.counterparty_account_id == account_id
                         or (t.kind is TransactionKind.MINT and t.account_id == account_id))
            retired = sum(t.amount for t in since_setup if t.kind is TransactionKind.RETIRE and t.account_id == account_id)
            assert self.bank.accounts[account_id].balance == self.balances[account_id] + inflow - retired

    @invariant()
    def no_one_became_a_spender_and_the_users_holds_stayed_as_made(self) -> None:
        for account_id in USER_ACCOUNTS:
            assert self.spenders_of(account_id) <= self.spenders[account_id], account_id
            assert self.bank.accounts[account_id].grants == self.grants[account_id], account_id
        for hold_id, made in self.user_holds.items():
            hold = self.bank.holds[hold_id]
            assert (hold.amount, hold.charged, hold.payee_account_id, hold.collector_dn) == (
                made.amount, made.charged, made.payee_account_id, made.collector_dn), hold_id

    @invariant()
    def holder_changes_are_in_the_accounts_history(self) -> None:
        for transaction in self.bank.transactions:
            if transaction.kind in (TransactionKind.SET_HOLDER, TransactionKind.REMOVE_HOLDER):
                assert transaction.account_id is not None and transaction.holder_dn is not None

    @invariant()
    def the_audit_is_clean(self) -> None:
        report = self.bank.audit(verify, signature_check_interval=5)
        assert report.clean, report.findings


AdministratorsAlone.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None,
                                                 suppress_health_check=[HealthCheck.too_slow])
TestAdministratorsAlone = AdministratorsAlone.TestCase
TestAdministratorsAlone.pytestmark = [pytest.mark.slow]     # hypothesis searches long: CI runs it, -m 'not slow' does not


def test_the_search_reaches_what_administrators_may_do():
    """The search is not vacuous: administrators' own powers succeed in the same machine."""
    machine = AdministratorsAlone()
    machine.users_set_up_their_accounts()
    machine.set_holder(ADMIN, "vo-atlas", ADMIN.dn, Role.VIEWER)
    machine.remove_holder(ADMIN_TWO, "vo-atlas", MEMBER.dn)
    machine.retire(ADMIN, "site-north", 100)
    machine.mint(ADMIN, "vo-atlas", 7)
    machine.release_hold(ADMIN, 0)
    machine.transfer(ADMIN, "ada-own", "site-north", 100)          # from an account the administrator owns
    assert machine.accepted == {"SetHolder": 1, "RemoveHolder": 1, "Retire": 1, "Mint": 1, "ReleaseHold": 1,
                                "Transfer": 1}
    machine.no_money_left_a_users_account_but_by_retirement()
    machine.no_one_became_a_spender_and_the_users_holds_stayed_as_made()
    machine.the_audit_is_clean()
