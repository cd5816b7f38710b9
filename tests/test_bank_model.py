"""Model-based test of the Bank's pure core.

Hypothesis runs long random sequences of every mutating operation — by every kind of caller,
with a fake clock that moves so holds expire and charges race expiry, with retries under the
same request id and reused ids with different requests — against the real core
(``ledger.MemoryLedger``) and the separately written model (``model.BankModel``). Every reply is
compared (answer or refusal code), then every state, the invariants and a full audit of the
hash chain after every step; every document is round-tripped through XML.
"""
from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gridcredit.errors import DomainError
from gridcredit.services.bank import documents, ledger
from gridcredit.services.bank.ledger import AccountStatus, Principal, Role
from bank_model import BankModel, Refusal

KEY = b"model-test-key"
SECOND_US = 1_000_000
START_US = 1_700_000_000 * SECOND_US
HOLD_DURATION_MAX_US = 60 * SECOND_US
MINT_APPROVAL_THRESHOLD = 5_000
MINT_APPROVAL_DURATION_US = 30 * SECOND_US


def sign(message: bytes) -> bytes:
    return hmac.new(KEY, message, hashlib.sha256).digest()


def verify(message: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(sign(message), signature)


ADMIN = Principal("/O=Grid/CN=Admin One", is_administrator=True)
ADMIN_TWO = Principal("/O=Grid/CN=Admin Two", is_administrator=True)
OWNER = Principal("/O=Grid/CN=Olga Owner")
MANAGER = Principal("/O=Grid/CN=Mona Manager")
MEMBER = Principal("/O=Grid/CN=Mel Member")
VIEWER = Principal("/O=Grid/CN=Vic Viewer")
STRANGER = Principal("/O=Grid/CN=Stan Stranger")
SERVICE = Principal("/O=Grid/CN=host/jarm.example.org", is_service=True)
JARM = Principal("/O=Grid/CN=host/jarm.site.org", is_service=True)     # no role anywhere: acts only by grants
PRINCIPALS = (ADMIN, ADMIN_TWO, OWNER, MANAGER, MEMBER, VIEWER, STRANGER, SERVICE, JARM)
ACCOUNTS = ("vo-atlas", "vo-cms", "site-north", "site-south")
ROLES = tuple(Role)

principals = st.sampled_from(PRINCIPALS)
# Callers weighted towards those who may act, so that most requests get past authorization.
actors = st.sampled_from((OWNER, MANAGER, MEMBER, MEMBER, SERVICE, OWNER, ADMIN, VIEWER, STRANGER))
account_ids = st.sampled_from(ACCOUNTS * 3 + ("extra-0", "extra-1", "no-such-account"))
spenders = st.sampled_from((OWNER, MANAGER, MEMBER, MEMBER, SERVICE))
good_amounts = st.integers(1, 400)
amounts = good_amounts
bad_amounts = st.sampled_from([0, -1, -400, 10**15 + 1, 2**80, True, 1.5, "12"])
indices = st.integers(0, 10_000)


def caller_of(principal: Principal) -> tuple[str, bool, bool]:
    return principal.dn, principal.is_administrator, principal.is_service


class BankMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.policy = ledger.BankPolicy(mint_approval_threshold=MINT_APPROVAL_THRESHOLD,
                                        hold_duration_max_us=HOLD_DURATION_MAX_US,
                                        mint_approval_duration_us=MINT_APPROVAL_DURATION_US)
        self.real = ledger.MemoryLedger(sign=sign, policy=self.policy)
        self.model = BankModel(mint_approval_threshold=MINT_APPROVAL_THRESHOLD,
                               hold_duration_max_us=HOLD_DURATION_MAX_US,
                               mint_approval_duration_us=MINT_APPROVAL_DURATION_US)
        self.now_us = START_US
        self.request_counter = 0
        self.sent: list[tuple[Principal, object, str, tuple]] = []   # for retries and reuse
        self.answers: dict[tuple[str, str], ledger.Transaction] = {}

    # -- sending one request to both ------------------------------------------------------------

    def send(self, principal: Principal, request: object, operation: str, *arguments: object,
             remember: bool = True) -> None:
        if remember:
            self.sent.append((principal, request, operation, arguments))
        try:
            expected = self.model.request(operation, request.request_id, caller_of(principal), self.now_us,
                                          *arguments)
        except Refusal as refusal:
            expected = refusal
        try:
            outcome = self.real.run(request, principal=principal, now_us=self.now_us)
        except DomainError as error:
            assert isinstance(expected, Refusal), (
                f"{operation}{arguments} by {principal.dn}: model answers {expected}, core refuses "
                f"{error.code}: {error}")
            assert error.code == expected.code, (
                f"{operation}{arguments} by {principal.dn}: model refuses {expected.code}, core refuses "
                f"{error.code}: {error}")
            assert str(error)                  # every refusal explains itself
            return
        assert not isinstance(expected, Refusal), (
            f"{operation}{arguments} by {principal.dn}: model refuses {expected.code}, core answers "
            f"{outcome.transaction}")
        transaction = outcome.transaction
        assert outcome.replayed == expected["replayed"]
        key = (principal.dn, request.request_id)
        if outcome.replayed:
            assert transaction == self.answers[key], "a retry answers the original transaction"
        else:
            self.answers[key] = transaction
        assert transaction.seq == expected["seq"]
        assert transaction.kind.value == expected["kind"]
        assert transaction.principal_dn == principal.dn and transaction.request_id == request.request_id
        assert transaction.account_id == expected["account"]
        assert transaction.counterparty_account_id == expected.get("counterparty")
        if "amount" in expected:
            assert transaction.amount == expected["amount"]
        assert transaction.released_amount == expected.get("released")
        assert transaction.hold_id == expected.get("hold")
        assert (transaction.hold_state.value if transaction.hold_state else None) == expected.get("hold_state")
        assert transaction.pending_mint_id == expected.get("pending")
        if transaction.hold_id is not None:        # every transaction on a hold made for someone names them
            assert transaction.on_behalf_of_dn == self.real.holds[transaction.hold_id].on_behalf_of_dn

    def next_request_id(self) -> str:
        self.request_counter += 1
        return f"request-{self.request_counter}"

    def hold_id_at(self, index: int) -> str:
        """Mostly an active hold; sometimes any hold, sometimes one that does not exist."""
        holds = sorted(self.model.holds, key=lambda hold_id: int(hold_id.split("-")[1]))
        active = [hold_id for hold_id in holds if self.model.holds[hold_id]["state"] == "active"]
        if not holds or index % 11 == 10:
            return "hold-999999"
        if active and index % 4:
            return active[index % len(active)]
        return holds[index % len(holds)]

    def pending_mint_id_at(self, index: int) -> str:
        """Mostly one still pending; sometimes any pending mint, sometimes one that does not exist."""
        every = sorted(self.model.pending, key=lambda pending_id: int(pending_id.split("-")[1]))
        pending = [pending_id for pending_id in every if self.model.pending[pending_id]["state"] == "pending"]
        if not every or index % 7 == 6:
            return "mint-0"
        if pending and index % 3:
            return pending[index % len(pending)]
        return every[index % len(every)]

    def acting_for(self, principal: Principal, hold_id: str, as_creator: bool) -> Principal:
        """The hold's creator when asked (and known), else the drawn principal."""
        if as_creator and hold_id in self.model.holds:
            creator = self.model.holds[hold_id]["creator"]
            return next(candidate for candidate in PRINCIPALS if candidate.dn == creator)
        return principal

    # -- setup ----------------------------------------------------------------------------------

    @initialize()
    def open_accounts(self) -> None:
        for account_id in ACCOUNTS:
            self.send(ADMIN, ledger.CreateAccount(self.next_request_id(), account_id, "project-" + account_id,
                                                  OWNER.dn), "create_account", account_id,
                      "project-" + account_id, OWNER.dn, 0)
            for principal, role in ((MANAGER, Role.MANAGER), (MEMBER, Role.MEMBER), (VIEWER, Role.VIEWER),
                                    (SERVICE, Role.MEMBER)):
                self.send(OWNER, ledger.SetHolder(self.next_request_id(), account_id, principal.dn, role),
                          "set_holder", account_id, principal.dn, role.value)
            self.send(ADMIN, ledger.Mint(self.next_request_id(), account_id, 1_000), "mint", account_id, 1_000)
        self.send(ADMIN, ledger.CreateAccount(self.next_request_id(), "extra-0", "extra", OWNER.dn),
                  "create_account", "extra-0", "extra", OWNER.dn, 0)

    # -- the clock ------------------------------------------------------------------------------

    @rule(seconds=st.integers(0, 20))
    def advance_clock(self, seconds: int) -> None:
        self.now_us += seconds * SECOND_US + 1

    @precondition(lambda self: self.model.holds)
    @rule(index=indices, offset_us=st.sampled_from([-1, 0, 1]))
    def race_expiry(self, index: int, offset_us: int) -> None:
        """Move the clock to one microsecond before, at, or after a hold's expiry."""
        hold_id = self.hold_id_at(index)
        if hold_id in self.model.holds:
            target = self.model.holds[hold_id]["expires"] + offset_us
            self.now_us = max(self.now_us, target)

    # -- accounts -------------------------------------------------------------------------------

    @rule(principal=principals, credit_limit=st.sampled_from([0, 50, 10**15, 10**15 + 1, -1]),
          suffix=st.integers(0, 3))
    def create_account(self, principal: Principal, credit_limit: int, suffix: int) -> None:
        account_id = f"extra-{suffix}"
        self.send(principal, ledger.CreateAccount(self.next_request_id(), account_id, "extra", OWNER.dn,
                                                  credit_limit),
                  "create_account", account_id, "extra", OWNER.dn, credit_limit)

    @rule(principal=principals, account_id=account_ids, holder=principals, role=st.sampled_from(ROLES))
    def set_holder(self, principal, account_id, holder, role) -> None:
        self.send(principal, ledger.SetHolder(self.next_request_id(), account_id, holder.dn, role),
                  "set_holder", account_id, holder.dn, role.value)

    @rule(principal=principals, account_id=account_ids, holder=principals)
    def remove_holder(self, principal, account_id, holder) -> None:
        self.send(principal, ledger.RemoveHolder(self.next_request_id(), account_id, holder.dn),
                  "remove_holder", account_id, holder.dn)

    @rule(suffix=st.integers(0, 1), status=st.sampled_from([AccountStatus.CLOSED, AccountStatus.FROZEN]))
    def owner_closes_or_freezes_extra_account(self, suffix, status) -> None:
        account_id = f"extra-{suffix}"
        self.send(OWNER, ledger.SetStatus(self.next_request_id(), account_id, status),
                  "set_status", account_id, status.value)

    @rule(principal=st.sampled_from((ADMIN, ADMIN, OWNER, OWNER, MANAGER, STRANGER)), account_id=account_ids,
          status=st.sampled_from([AccountStatus.OPEN, AccountStatus.OPEN, AccountStatus.FROZEN,
                                  AccountStatus.CLOSED]))
    def set_status(self, principal, account_id, status) -> None:
        self.send(principal, ledger.SetStatus(self.next_request_id(), account_id, status),
                  "set_status", account_id, status.value)

    @rule(suffix=st.integers(0, 1), status=st.sampled_from([AccountStatus.CLOSED, AccountStatus.FROZEN]))
    def owner_closes_or_freezes_extra_account(self, suffix, status) -> None:
        account_id = f"extra-{suffix}"
        self.send(OWNER, ledger.SetStatus(self.next_request_id(), account_id, status),
                  "set_status", account_id, status.value)

    @rule(principal=st.sampled_from((ADMIN, ADMIN, OWNER)), account_id=account_ids,
          credit_limit=st.sampled_from([0, 0, 100, 500, -5]))
    def set_credit_limit(self, principal, account_id, credit_limit) -> None:
        self.send(principal, ledger.SetCreditLimit(self.next_request_id(), account_id, credit_limit),
                  "set_credit_limit", account_id, credit_limit)

    @rule(principal=principals, account_id=account_ids,
          limit_and_period_us=st.sampled_from([(None, None), (0, 10 * SECOND_US), (100, 10 * SECOND_US),
                                               (300, 30 * SECOND_US), (1000, 30 * SECOND_US), (300, 10 * SECOND_US),
                                               (-1, 10 * SECOND_US), (100, 1), (100, None), (None, 10 * SECOND_US)]))
    def set_spending_limit(self, principal, account_id, limit_and_period_us) -> None:
        limit, period_us = limit_and_period_us
        self.send(principal, ledger.SetSpendingLimit(self.next_request_id(), account_id, limit, period_us),
                  "set_spending_limit", account_id, limit, period_us)

    @rule(account_id=st.sampled_from(ACCOUNTS), limit=st.integers(0, 500),
          period_us=st.sampled_from([10 * SECOND_US, 30 * SECOND_US]))
    def owner_sets_spending_limit(self, account_id, limit, period_us) -> None:
        self.send(OWNER, ledger.SetSpendingLimit(self.next_request_id(), account_id, limit, period_us),
                  "set_spending_limit", account_id, limit, period_us)

    # -- service grants -------------------------------------------------------------------------

    @rule(principal=st.sampled_from((OWNER, OWNER, OWNER, MANAGER, ADMIN, JARM, STRANGER)), account_id=account_ids,
          service=st.sampled_from((JARM, JARM, SERVICE)),
          caps=st.sampled_from([(None, None, None), (150, None, None), (None, 400, 30 * SECOND_US),
                                (200, 500, 30 * SECOND_US), (100, 300, 10 * SECOND_US), (0, None, None),
                                (None, 100, None), (None, 100, 1)]))
    def grant_service(self, principal, account_id, service, caps) -> None:
        hold_max, period_max, period_us = caps
        self.send(principal, ledger.GrantService(self.next_request_id(), account_id, service.dn, hold_max,
                                                 period_max, period_us),
                  "grant_service", account_id, service.dn, hold_max, period_max, period_us)

    @rule(principal=st.sampled_from((OWNER, OWNER, ADMIN, JARM)), account_id=account_ids,
          service=st.sampled_from((JARM, SERVICE)))
    def revoke_service(self, principal, account_id, service) -> None:
        self.send(principal, ledger.RevokeService(self.next_request_id(), account_id, service.dn),
                  "revoke_service", account_id, service.dn)

    @rule(principal=st.sampled_from((JARM, JARM, JARM, SERVICE, MEMBER, ADMIN)), account_id=account_ids,
          granted_account=st.booleans(), amount=st.integers(1, 300),
          for_dn=st.sampled_from((MEMBER.dn, MEMBER.dn, MEMBER.dn, OWNER.dn, MANAGER.dn, VIEWER.dn, STRANGER.dn,
                                  JARM.dn)),
          lifetime_us=st.sampled_from([1, 5 * SECOND_US, 20 * SECOND_US, 40 * SECOND_US]),
          payee=st.sampled_from([None, None, "site-south"]))
    def create_hold_on_behalf(self, principal, account_id, granted_account, amount, for_dn, lifetime_us,
                              payee) -> None:
        """A service holds for a holder: with a grant, within its caps, for a current spender only (mostly on an
        account that granted it, sometimes on any)."""
        granting = sorted(name for name, account in self.model.accounts.items() if principal.dn in account["grants"])
        if granted_account and granting:
            account_id = granting[amount % len(granting)]
        expires = self.now_us + lifetime_us
        self.send(principal, ledger.CreateHold(self.next_request_id(), account_id, amount, expires, "job-9", None,
                                               payee, for_dn),
                  "create_hold", account_id, amount, expires, "job-9", None, payee, for_dn)

    @rule(account_id=st.sampled_from(ACCOUNTS), amount=st.integers(1, 300),
          caps=st.sampled_from([(None, None, None), (150, None, None), (200, 500, 30 * SECOND_US),
                                (100, 300, 10 * SECOND_US)]),
          for_dn=st.sampled_from((MEMBER.dn, MEMBER.dn, OWNER.dn, MANAGER.dn, VIEWER.dn)))
    def owner_grants_then_service_holds(self, account_id, amount, caps, for_dn) -> None:
        """An owner grants the site's JARM (or changes its caps), which then holds for a holder at once."""
        self.grant_service(OWNER, account_id, JARM, caps)
        self.create_hold_on_behalf(JARM, account_id, False, amount, for_dn, 20 * SECOND_US, None)

    @precondition(lambda self: any(hold["for"] for hold in self.model.holds.values()))
    @rule(index=indices, operation=st.sampled_from(["later", "raise", "charge", "settle", "release", "re-address"]),
          amount=st.integers(0, 200))
    def service_acts_on_its_hold(self, index, operation, amount) -> None:
        """The service that made a hold for a holder extends, raises, charges, settles or releases it."""
        made = sorted((hold_id for hold_id, hold in self.model.holds.items() if hold["for"]),
                      key=lambda hold_id: int(hold_id.split("-")[1]))
        hold_id = made[index % len(made)]
        hold = self.model.holds[hold_id]
        service = next(candidate for candidate in PRINCIPALS if candidate.dn == hold["creator"])
        request_id = self.next_request_id()
        payee = hold["payee"] or "site-south"
        if operation == "later":
            expires = hold["expires"] + max(amount, 1) * 100_000
            self.send(service, ledger.ExtendHold(request_id, hold_id, expires), "extend_hold", hold_id, expires, None)
        elif operation == "raise":
            self.send(service, ledger.ExtendHold(request_id, hold_id, None, hold["amount"] + max(amount, 1)),
                      "extend_hold", hold_id, None, hold["amount"] + max(amount, 1))
        elif operation == "charge":
            self.send(service, ledger.ChargeHold(request_id, hold_id, payee, max(amount, 1)),
                      "charge_hold", hold_id, payee, max(amount, 1))
        elif operation == "settle":
            self.send(service, ledger.SettleHold(request_id, hold_id, payee, amount),
                      "settle_hold", hold_id, payee, amount)
        elif operation == "re-address":
            self.send(service, ledger.ExtendHold(request_id, hold_id, None, None, "vo-cms"),
                      "extend_hold", hold_id, None, None, "vo-cms")
        else:
            self.send(service, ledger.ReleaseHold(request_id, hold_id), "release_hold", hold_id)

    # -- money supply ---------------------------------------------------------------------------

    @rule(principal=st.sampled_from((ADMIN, ADMIN_TWO, OWNER, STRANGER)), account_id=account_ids,
          amount=st.one_of(amounts, st.integers(5_000, 6_000)))
    def mint(self, principal, account_id, amount) -> None:
        self.send(principal, ledger.Mint(self.next_request_id(), account_id, amount), "mint", account_id, amount)

    @rule(principal=st.sampled_from((ADMIN, ADMIN_TWO)), account_id=st.sampled_from(ACCOUNTS),
          amount=st.integers(MINT_APPROVAL_THRESHOLD - 1, MINT_APPROVAL_THRESHOLD + 1000))
    def mint_large(self, principal, account_id, amount) -> None:
        self.send(principal, ledger.Mint(self.next_request_id(), account_id, amount), "mint", account_id, amount)

    @precondition(lambda self: self.model.pending)
    @rule(principal=st.sampled_from((ADMIN, ADMIN_TWO, ADMIN_TWO, OWNER)), index=indices)
    def approve_mint(self, principal, index) -> None:
        pending_id = self.pending_mint_id_at(index)
        self.send(principal, ledger.ApproveMint(self.next_request_id(), pending_id), "approve_mint", pending_id)

    @precondition(lambda self: self.model.pending)
    @rule(principal=st.sampled_from((ADMIN, ADMIN_TWO, OWNER, STRANGER, SERVICE)), index=indices)
    def cancel_mint(self, principal, index) -> None:
        pending_id = self.pending_mint_id_at(index)
        self.send(principal, ledger.CancelMint(self.next_request_id(), pending_id), "cancel_mint", pending_id)

    @precondition(lambda self: self.model.pending)
    @rule(principal=principals, index=indices)
    def expire_mint(self, principal, index) -> None:
        pending_id = self.pending_mint_id_at(index)
        self.send(principal, ledger.ExpireMint(self.next_request_id(), pending_id), "expire_mint", pending_id)

    @precondition(lambda self: self.model.pending)
    @rule(index=indices, offset_us=st.sampled_from([-1, 0, 1]))
    def race_mint_expiry(self, index: int, offset_us: int) -> None:
        """Move the clock to one microsecond before, at, or after a pending mint's expiry."""
        pending_id = self.pending_mint_id_at(index)
        if pending_id in self.model.pending:
            self.now_us = max(self.now_us, self.model.pending[pending_id]["expires"] + offset_us)

    @rule(principal=st.sampled_from((ADMIN, ADMIN_TWO, OWNER)), account_id=account_ids, amount=amounts)
    def retire(self, principal, account_id, amount) -> None:
        self.send(principal, ledger.Retire(self.next_request_id(), account_id, amount),
                  "retire", account_id, amount)

    @rule(principal=st.sampled_from((ADMIN, ADMIN_TWO)), account_id=st.sampled_from(ACCOUNTS),
          amount=st.integers(MINT_APPROVAL_THRESHOLD - 1, MINT_APPROVAL_THRESHOLD + 1000))
    def retire_large(self, principal, account_id, amount) -> None:
        """Above the threshold a retirement waits for a second administrator, like a mint."""
        self.send(principal, ledger.Retire(self.next_request_id(), account_id, amount),
                  "retire", account_id, amount)

    # -- transfers and holds --------------------------------------------------------------------

    @rule(principal=actors, payer=account_ids, payee=account_ids, amount=amounts)
    def transfer(self, principal, payer, payee, amount) -> None:
        self.send(principal, ledger.Transfer(self.next_request_id(), payer, payee, amount),
                  "transfer", payer, payee, amount)

    @rule(principal=actors, account_id=account_ids, amount=amounts,
          lifetime_us=st.sampled_from([1, 5 * SECOND_US, 20 * SECOND_US, 20 * SECOND_US, 40 * SECOND_US,
                                       HOLD_DURATION_MAX_US, HOLD_DURATION_MAX_US + 1, 0, -1]),
          collector=st.sampled_from([None, None, SERVICE.dn, MEMBER.dn, STRANGER.dn]),
          payee=st.sampled_from([None, None, "site-north", "site-south", "vo-atlas", "no-such-account"]))
    def create_hold(self, principal, account_id, amount, lifetime_us, collector, payee) -> None:
        expires = self.now_us + lifetime_us
        self.send(principal, ledger.CreateHold(self.next_request_id(), account_id, amount, expires,
                                               "job-42", collector, payee),
                  "create_hold", account_id, amount, expires, "job-42", collector, payee)

    @rule(principal=spenders, account_id=st.sampled_from(ACCOUNTS), amount=st.integers(1, 300),
          lifetime_us=st.integers(1, 30 * SECOND_US),
          collector_and_payee=st.sampled_from([(None, None), (None, "site-north"), (SERVICE.dn, "site-north"),
                                               (STRANGER.dn, "site-south")]))
    def create_hold_by_spender(self, principal, account_id, amount, lifetime_us, collector_and_payee) -> None:
        expires = self.now_us + lifetime_us
        collector, payee = collector_and_payee
        self.send(principal, ledger.CreateHold(self.next_request_id(), account_id, amount, expires, "job-7",
                                               collector, payee),
                  "create_hold", account_id, amount, expires, "job-7", collector, payee)

    @precondition(lambda self: any(hold["collector"] for hold in self.model.holds.values()))
    @rule(index=indices, operation=st.sampled_from(["charge", "charge-elsewhere", "raise", "later", "re-address",
                                                    "release", "settle", "settle-elsewhere"]),
          amount=st.integers(1, 200))
    def collector_acts(self, index, operation, amount) -> None:
        """The named collector (a stranger to the account, or a service) acts on a hold it collects:
        it may take what was authorized, never more, never elsewhere."""
        collected = sorted((hold_id for hold_id, hold in self.model.holds.items() if hold["collector"]),
                           key=lambda hold_id: int(hold_id.split("-")[1]))
        hold_id = collected[index % len(collected)]
        hold = self.model.holds[hold_id]
        collector = next(candidate for candidate in PRINCIPALS if candidate.dn == hold["collector"])
        request_id = self.next_request_id()
        if operation in ("charge", "charge-elsewhere"):
            payee = hold["payee"] if operation == "charge" else "vo-cms"
            self.send(collector, ledger.ChargeHold(request_id, hold_id, payee, amount),
                      "charge_hold", hold_id, payee, amount)
        elif operation in ("settle", "settle-elsewhere"):
            payee = hold["payee"] if operation == "settle" else "vo-cms"
            amount = min(amount, hold["amount"] - hold["charged"]) if amount % 2 else amount
            self.send(collector, ledger.SettleHold(request_id, hold_id, payee, amount),
                      "settle_hold", hold_id, payee, amount)
        elif operation == "raise":
            self.send(collector, ledger.ExtendHold(request_id, hold_id, None, hold["amount"] + amount),
                      "extend_hold", hold_id, None, hold["amount"] + amount)
        elif operation == "later":
            self.send(collector, ledger.ExtendHold(request_id, hold_id, hold["expires"] + amount * SECOND_US),
                      "extend_hold", hold_id, hold["expires"] + amount * SECOND_US, None)
        elif operation == "re-address":
            self.send(collector, ledger.ExtendHold(request_id, hold_id, None, None, "vo-cms"),
                      "extend_hold", hold_id, None, None, "vo-cms")
        else:
            self.send(collector, ledger.ReleaseHold(request_id, hold_id), "release_hold", hold_id)

    @precondition(lambda self: self.model.holds)
    @rule(index=indices, payee=st.sampled_from(["site-north", "site-south", "vo-cms", "vo-atlas"]))
    def spender_readdresses_hold(self, index, payee) -> None:
        hold_id = self.hold_id_at(index)
        principal = self.acting_for(OWNER, hold_id, True)
        self.send(principal, ledger.ExtendHold(self.next_request_id(), hold_id, None, None, payee),
                  "extend_hold", hold_id, None, None, payee)

    @precondition(lambda self: self.model.holds)
    @rule(principal=actors, index=indices,
          later_us=st.sampled_from([None, None, 0, -1, 10 * SECOND_US, 10 * SECOND_US, HOLD_DURATION_MAX_US + 1]),
          increase=st.one_of(st.none(), st.integers(-3, 300)), as_creator=st.booleans())
    def extend_hold(self, principal, index, later_us, increase, as_creator) -> None:
        hold_id = self.hold_id_at(index)
        principal = self.acting_for(principal, hold_id, as_creator)
        amount = None
        if increase is not None:
            amount = (self.model.holds[hold_id]["amount"] if hold_id in self.model.holds else 100) + increase
        expires = None
        if later_us is not None:
            base = self.model.holds[hold_id]["expires"] if hold_id in self.model.holds else self.now_us
            expires = base + later_us
        self.send(principal, ledger.ExtendHold(self.next_request_id(), hold_id, expires, amount),
                  "extend_hold", hold_id, expires, amount)

    @precondition(lambda self: self.model.holds)
    @rule(principal=st.sampled_from((OWNER, MANAGER, MEMBER, SERVICE, SERVICE, VIEWER, STRANGER, ADMIN)),
          index=indices, payee=account_ids, amount=st.integers(1, 200), as_creator=st.booleans())
    def charge_hold(self, principal, index, payee, amount, as_creator) -> None:
        hold_id = self.hold_id_at(index)
        principal = self.acting_for(principal, hold_id, as_creator)
        if hold_id in self.model.holds and index % 3 == 0:
            hold = self.model.holds[hold_id]
            amount = hold["amount"] - hold["charged"]            # use it up exactly
        self.send(principal, ledger.ChargeHold(self.next_request_id(), hold_id, payee, amount),
                  "charge_hold", hold_id, payee, amount)

    @precondition(lambda self: self.model.holds)
    @rule(principal=st.sampled_from((OWNER, MANAGER, MEMBER, SERVICE, SERVICE, VIEWER, STRANGER, ADMIN)),
          index=indices, payee=account_ids, amount=st.integers(0, 200),
          exact=st.sampled_from([None, None, 0, -1, 1]), as_creator=st.booleans())
    def settle_hold(self, principal, index, payee, amount, exact, as_creator) -> None:
        """The final charge: any amount, or exactly what is left (−1, +1), with the rest released at once."""
        hold_id = self.hold_id_at(index)
        principal = self.acting_for(principal, hold_id, as_creator)
        if hold_id in self.model.holds and exact is not None:
            hold = self.model.holds[hold_id]
            amount = max(0, hold["amount"] - hold["charged"] + exact)
        self.send(principal, ledger.SettleHold(self.next_request_id(), hold_id, payee, amount),
                  "settle_hold", hold_id, payee, amount)

    @precondition(lambda self: self.model.holds)
    @rule(principal=actors, index=indices, as_creator=st.booleans())
    def release_hold(self, principal, index, as_creator) -> None:
        hold_id = self.hold_id_at(index)
        principal = self.acting_for(principal, hold_id, as_creator)
        self.send(principal, ledger.ReleaseHold(self.next_request_id(), hold_id), "release_hold", hold_id)

    @precondition(lambda self: self.model.holds)
    @rule(principal=principals, index=indices)
    def expire_hold(self, principal, index) -> None:
        hold_id = self.hold_id_at(index)
        self.send(principal, ledger.ExpireHold(self.next_request_id(), hold_id), "expire_hold", hold_id)

    @rule()
    def sweep_expired_holds(self) -> None:
        """What the server's sweep does: expire every due hold and pending mint, once."""
        for hold_id, hold in sorted(self.model.holds.items()):
            if hold["state"] == "active" and self.now_us >= hold["expires"]:
                self.send(ADMIN, ledger.ExpireHold(self.next_request_id(), hold_id), "expire_hold", hold_id)
        for pending_id, pending in sorted(self.model.pending.items()):
            if pending["state"] == "pending" and self.now_us >= pending["expires"]:
                self.send(SERVICE, ledger.ExpireMint(self.next_request_id(), pending_id), "expire_mint", pending_id)

    @rule(principal=st.sampled_from((OWNER, MEMBER)), account_id=st.sampled_from(ACCOUNTS),
          operation=st.sampled_from(["transfer", "create_hold", "retire"]),
          bound=st.sampled_from(["available", "spending"]), delta=st.sampled_from([-1, 0, 1]))
    def spend_at_the_boundary(self, principal, account_id, operation, bound, delta) -> None:
        """Amounts of exactly the available funds or the rest of the spending limit, and one either side."""
        limited = sorted(name for name in ACCOUNTS if self.model.accounts[name]["limit"] is not None)
        if bound == "spending" and limited:
            account_id = limited[delta % len(limited)]
        model_account = self.model.accounts[account_id]
        if bound == "spending" and model_account["limit"] is not None:
            amount = model_account["limit"] - self.model.spent(account_id, self.now_us) + delta
        else:
            amount = self.model.available(account_id) + delta
            if operation == "retire":
                amount = model_account["balance"] - self.model.held(account_id) + delta
        amount = max(amount, 1)
        payee = "site-north" if account_id != "site-north" else "site-south"
        request_id = self.next_request_id()
        if operation == "transfer":
            self.send(principal, ledger.Transfer(request_id, account_id, payee, amount),
                      "transfer", account_id, payee, amount)
        elif operation == "create_hold":
            expires = self.now_us + 5 * SECOND_US
            self.send(principal, ledger.CreateHold(request_id, account_id, amount, expires, "", None),
                      "create_hold", account_id, amount, expires, "", None)
        else:
            self.send(ADMIN, ledger.Retire(request_id, account_id, amount), "retire", account_id, amount)

    @precondition(lambda self: self.model.holds)
    @rule(index=indices, delta=st.sampled_from([-1, 0, 1]), payee=st.sampled_from(ACCOUNTS))
    def charge_at_the_boundary(self, index, delta, payee) -> None:
        """The hold's creator charges its remainder or the rest of the spending limit, ±1."""
        hold_id = self.hold_id_at(index)
        principal = self.acting_for(STRANGER, hold_id, True)
        amount = 1
        if hold_id in self.model.holds:
            hold = self.model.holds[hold_id]
            amount = hold["amount"] - hold["charged"] + delta
            account = self.model.accounts[hold["account"]]
            if account["limit"] is not None and index % 2:
                amount = account["limit"] - self.model.spent(hold["account"], self.now_us) + delta
        amount = max(amount, 1)
        self.send(principal, ledger.ChargeHold(self.next_request_id(), hold_id, payee, amount),
                  "charge_hold", hold_id, payee, amount)

    @rule(principal=actors, index=indices, account_id=account_ids, amount=bad_amounts,
          operation=st.sampled_from(["mint", "retire", "transfer", "create_hold", "extend_hold", "charge_hold",
                                     "settle_hold"]))
    def bad_amount(self, principal, index, account_id, amount, operation) -> None:
        """Zero, negative, overflowing and non-integer amounts: refused, nothing changed."""
        request_id = self.next_request_id()
        hold_id = self.hold_id_at(index)
        expires = self.now_us + 10 * SECOND_US
        request, arguments = {
            "mint": (ledger.Mint(request_id, account_id, amount), (account_id, amount)),
            "retire": (ledger.Retire(request_id, account_id, amount), (account_id, amount)),
            "transfer": (ledger.Transfer(request_id, account_id, "site-north", amount),
                         (account_id, "site-north", amount)),
            "create_hold": (ledger.CreateHold(request_id, account_id, amount, expires, "", None),
                            (account_id, amount, expires, "", None)),
            "extend_hold": (ledger.ExtendHold(request_id, hold_id, None, amount), (hold_id, None, amount)),
            "charge_hold": (ledger.ChargeHold(request_id, hold_id, "site-north", amount),
                            (hold_id, "site-north", amount)),
            "settle_hold": (ledger.SettleHold(request_id, hold_id, "site-north", amount),   # 0 is a good one here
                            (hold_id, "site-north", amount)),
        }[operation]
        self.send(principal if operation not in ("mint", "retire") else ADMIN, request, operation, *arguments)

    # -- idempotency ----------------------------------------------------------------------------

    @precondition(lambda self: self.sent)
    @rule(index=indices)
    def retry_same_request(self, index) -> None:
        """A retry answers the original transaction and appends nothing; a refused one is re-evaluated."""
        principal, request, operation, arguments = self.sent[index % len(self.sent)]
        key = (principal.dn, request.request_id)
        answered_before = key in self.answers
        transactions_before = len(self.real.transactions)
        self.send(principal, request, operation, *arguments, remember=False)
        if answered_before:
            assert len(self.real.transactions) == transactions_before

    @precondition(lambda self: self.sent)
    @rule(index=indices, amount=good_amounts)
    def reuse_request_id(self, index, amount) -> None:
        """Same id, a different request: the core must refuse when the id was used successfully."""
        principal, request, _operation, _arguments = self.sent[index % len(self.sent)]
        different = ledger.Mint(request.request_id, "vo-atlas", amount)
        if isinstance(request, ledger.Mint) and request.account_id == "vo-atlas" and request.amount == amount:
            different = ledger.Mint(request.request_id, "vo-cms", amount)
        self.send(principal, different, "mint", different.account_id, different.amount)

    # -- invariants after every step ------------------------------------------------------------

    @invariant()
    def states_agree_with_the_model(self) -> None:
        real, model = self.real, self.model
        assert set(real.accounts) == set(model.accounts)
        for account_id, account in real.accounts.items():
            expected = model.accounts[account_id]
            assert account.balance == expected["balance"], account_id
            assert account.held == model.held(account_id), account_id
            assert account.credit_limit == expected["credit"]
            assert account.status.value == expected["status"]
            assert {holder.dn: holder.role.value for holder in account.holders} == expected["holders"]
            assert account.spending_limit == expected["limit"]
            assert account.spent_at(self.now_us) == model.spent(account_id, self.now_us)
            assert {grant.service_dn: (grant.hold_max, grant.period_max, grant.period_us, grant.held_at(self.now_us))
                    for grant in account.grants} == {
                dn: (grant["hold_max"], grant["period_max"], grant["period"],
                     grant["held"] if grant["period"] and self.now_us // grant["period"] == grant["window"] else 0)
                for dn, grant in expected["grants"].items()}
        assert set(real.holds) == set(model.holds)
        for hold_id, hold in real.holds.items():
            expected = model.holds[hold_id]
            assert (hold.account_id, hold.amount, hold.charged, hold.expires_at_us, hold.state.value,
                    hold.collector_dn, hold.payee_account_id, hold.creator_dn, hold.on_behalf_of_dn) == (
                expected["account"], expected["amount"], expected["charged"], expected["expires"],
                expected["state"], expected["collector"], expected["payee"], expected["creator"], expected["for"])
        assert {pending_id: (pending.account_id, pending.amount, pending.change.value, pending.expires_at_us,
                             pending.state.value, pending.ended_by_dn)
                for pending_id, pending in real.pending_mints.items()} == {
            pending_id: (pending["account"], pending["amount"], pending["change"], pending["expires"], pending["state"],
                         pending["ended_by"]) for pending_id, pending in model.pending.items()}
        assert (real.supply.issued, real.supply.retired) == (model.issued, model.retired)

    @invariant()
    def money_is_conserved_and_holds_are_covered(self) -> None:
        accounts = self.real.accounts.values()
        assert sum(account.balance for account in accounts) == self.real.supply.outstanding
        for account in accounts:
            assert account.held <= account.balance + account.credit_limit, account
            assert account.available >= 0
            assert account.balance >= -account.credit_limit
        ended_by: dict[str, int] = {}
        for transaction in self.real.transactions:
            if transaction.hold_state is not None and transaction.hold_state is not ledger.HoldState.ACTIVE:
                ended_by[transaction.hold_id] = ended_by.get(transaction.hold_id, 0) + 1
        assert all(count == 1 for count in ended_by.values()), "every hold ends exactly once"
        mint_ends: dict[str, int] = {}
        for transaction in self.real.transactions:
            if transaction.pending_mint_id is not None and transaction.kind not in (
                    ledger.TransactionKind.MINT_REQUEST, ledger.TransactionKind.RETIRE_REQUEST):
                mint_ends[transaction.pending_mint_id] = mint_ends.get(transaction.pending_mint_id, 0) + 1
        assert all(count == 1 for count in mint_ends.values()), "every pending mint ends exactly once"
        for pending in self.real.pending_mints.values():
            assert (pending.state is ledger.PendingMintState.PENDING) == (pending.pending_mint_id not in mint_ends)
            assert (pending.state is ledger.PendingMintState.PENDING) == (pending.ended_seq is None)
        for hold in self.real.holds.values():
            assert 0 <= hold.charged <= hold.amount
            assert (hold.state is ledger.HoldState.ACTIVE) == (hold.ended_seq is None)
            assert (hold.state is ledger.HoldState.ACTIVE) == (hold.hold_id not in ended_by)

    @invariant()
    def audit_is_clean(self) -> None:
        report = self.real.audit(verify, signature_check_interval=7)
        assert report.clean, report.findings
        assert report.transaction_count == len(self.real.transactions) == self.model.seq

    @invariant()
    def documents_round_trip(self) -> None:
        real = self.real
        states = [*real.accounts.values(), *real.holds.values(), *real.pending_mints.values(), real.supply,
                  real.ledger_head, *real.transactions[-3:], *list(real.request_records.values())[-3:]]
        for state in states:
            assert documents.from_xml(documents.to_xml(state)) == state


BankMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestBankModel = BankMachine.TestCase
TestBankModel.pytestmark = [pytest.mark.slow]     # hypothesis searches long: CI runs it, -m 'not slow' does not
