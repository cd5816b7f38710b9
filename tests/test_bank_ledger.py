"""Unit tests of the Bank's pure core: operations, refusals, authorization, audit, documents."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from lxml import etree

from gridcredit.errors import DomainError, StoreError
from gridcredit.services.bank import documents, ledger, ledger_chain, types
from gridcredit.xmlstore import NormalXml
from gridcredit.xmlstore._api import normalize
from gridcredit.services.bank.ledger import (AccountStatus, ApproveMint, BankPolicy, CancelMint, ChargeHold,
                                             CreateAccount, CreateHold, ExpireHold, ExpireMint, ExtendHold,
                                             GrantService, HoldState, MemoryLedger, Mint, PendingMintState, Principal,
                                             ReleaseHold, RemoveHolder, Retire, RevokeService, Role, SetCreditLimit,
                                             SetHolder, SetSpendingLimit, SetStatus, SettleHold, Transfer)

from bank_fixtures import assert_vouched_bytes_are_normal

KEY = b"unit-test-key"
SECOND_US = 1_000_000
NOW_US = 1_700_000_000 * SECOND_US
MINT_APPROVAL_US = 600 * SECOND_US


def sign(message: bytes) -> bytes:
    return hmac.new(KEY, message, hashlib.sha256).digest()


def verify(message: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(sign(message), signature)


ADMIN = Principal("/DC=org/DC=grid/CN=Ada Admin", is_administrator=True)
ADMIN_TWO = Principal("/DC=org/DC=grid/CN=Bo Admin", is_administrator=True)
OWNER = Principal("/DC=org/DC=grid/CN=Olga Owner")
MANAGER = Principal("/DC=org/DC=grid/CN=Mona Manager")
MEMBER = Principal("/DC=org/DC=grid/CN=Mel Member")
VIEWER = Principal("/DC=org/DC=grid/CN=Vic Viewer")
STRANGER = Principal("/DC=org/DC=grid/CN=Stan Stranger")
SERVICE = Principal("/DC=org/DC=grid/CN=host/jarm.example.org", is_service=True)
ROLES = {"owner": OWNER, "manager": MANAGER, "member": MEMBER, "viewer": VIEWER, "stranger": STRANGER,
         "admin": ADMIN, "service": SERVICE}

_counter = iter(range(10**9))


def rid() -> str:
    return f"r-{next(_counter)}"


def refused(code: str, bank: MemoryLedger, request, principal: Principal, now_us: int = NOW_US) -> DomainError:
    """Run a request that must be refused with `code` and change nothing."""
    def state():
        return (dict(bank.accounts), dict(bank.holds), dict(bank.pending_mints), bank.supply, bank.ledger_head,
                len(bank.transactions))

    before = state()
    with pytest.raises(DomainError) as caught:
        bank.run(request, principal=principal, now_us=now_us)
    assert caught.value.code == code, str(caught.value)
    assert state() == before
    return caught.value


@pytest.fixture
def bank() -> MemoryLedger:
    """vo-atlas (1000 credits; owner, manager, member, viewer) and site-north (owned by someone else)."""
    bank = MemoryLedger(sign=sign, policy=BankPolicy(mint_approval_threshold=10_000,
                                                     hold_duration_max_us=3600 * SECOND_US,
                                                     mint_approval_duration_us=MINT_APPROVAL_US))
    bank.run(CreateAccount(rid(), "vo-atlas", "atlas", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    for principal, role in ((MANAGER, Role.MANAGER), (MEMBER, Role.MEMBER), (VIEWER, Role.VIEWER)):
        bank.run(SetHolder(rid(), "vo-atlas", principal.dn, role), principal=OWNER, now_us=NOW_US)
    bank.run(CreateAccount(rid(), "site-north", "north", "/DC=org/CN=Site Admin"), principal=ADMIN, now_us=NOW_US)
    bank.run(Mint(rid(), "vo-atlas", 1000), principal=ADMIN, now_us=NOW_US)
    return bank


def hold(bank: MemoryLedger, amount: int = 100, principal: Principal = MEMBER, lifetime_us: int = 60 * SECOND_US,
         collector: str | None = None, payee: str | None = None) -> str:
    if collector is not None and payee is None:
        payee = "site-north"
    outcome = bank.run(CreateHold(rid(), "vo-atlas", amount, NOW_US + lifetime_us, "job-1", collector, payee),
                       principal=principal, now_us=NOW_US)
    return outcome.transaction.hold_id


# ---------------------------------------------------------------------------------------------
# Accounts


def test_create_account_and_balance(bank):
    account = bank.accounts["vo-atlas"]
    assert (account.balance, account.held, account.available, account.status) == (1000, 0, 1000, AccountStatus.OPEN)
    assert [(holder.dn, holder.role) for holder in account.holders] == sorted(
        [(OWNER.dn, Role.OWNER), (MANAGER.dn, Role.MANAGER), (MEMBER.dn, Role.MEMBER), (VIEWER.dn, Role.VIEWER)])
    assert ledger.balance(account, "vo-atlas", principal=VIEWER) == ledger.Balance("vo-atlas", 1000, 0, 1000, 0)
    with pytest.raises(DomainError) as caught:
        ledger.balance(account, "vo-atlas", principal=STRANGER)
    assert caught.value.code == "NotAuthorized"
    refused("AccountExists", bank, CreateAccount(rid(), "vo-atlas", "atlas", OWNER.dn), ADMIN)
    refused("InvalidArgument", bank, CreateAccount(rid(), "bad id!", "atlas", OWNER.dn), ADMIN)
    refused("InvalidArgument", bank, CreateAccount(rid(), "x", "atlas", "/CN=a\nb"), ADMIN)
    refused("InvalidAmount", bank, CreateAccount(rid(), "x", "atlas", OWNER.dn, -1), ADMIN)


def test_holders(bank):
    bank.run(SetHolder(rid(), "vo-atlas", STRANGER.dn, Role.VIEWER), principal=MANAGER, now_us=NOW_US)
    assert bank.accounts["vo-atlas"].role_of(STRANGER.dn) is Role.VIEWER
    refused("HolderUnchanged", bank, SetHolder(rid(), "vo-atlas", STRANGER.dn, Role.VIEWER), OWNER)
    refused("NotAuthorized", bank, SetHolder(rid(), "vo-atlas", STRANGER.dn, Role.MANAGER), MANAGER)
    refused("NotAuthorized", bank, RemoveHolder(rid(), "vo-atlas", OWNER.dn), MANAGER)
    refused("LastOwner", bank, RemoveHolder(rid(), "vo-atlas", OWNER.dn), OWNER)
    refused("LastOwner", bank, SetHolder(rid(), "vo-atlas", OWNER.dn, Role.MEMBER), OWNER)
    refused("NotAHolder", bank, RemoveHolder(rid(), "vo-atlas", "/CN=nobody"), OWNER)
    refused("UnknownAccount", bank, RemoveHolder(rid(), "vo-nowhere", MEMBER.dn), OWNER)
    bank.run(RemoveHolder(rid(), "vo-atlas", STRANGER.dn), principal=MANAGER, now_us=NOW_US)
    assert bank.accounts["vo-atlas"].role_of(STRANGER.dn) is None


def test_status_frozen_and_closed(bank):
    hold_id = hold(bank, 100)
    bank.run(SetStatus(rid(), "vo-atlas", AccountStatus.FROZEN), principal=OWNER, now_us=NOW_US)
    refused("AccountFrozen", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US + SECOND_US), MEMBER)
    refused("AccountFrozen", bank, Transfer(rid(), "vo-atlas", "site-north", 1), MEMBER)
    refused("AccountFrozen", bank, ChargeHold(rid(), hold_id, "site-north", 1), MEMBER)
    refused("AccountFrozen", bank, ExtendHold(rid(), hold_id, amount=200), MEMBER)
    refused("NotAuthorized", bank, SetStatus(rid(), "vo-atlas", AccountStatus.OPEN), OWNER)  # only admins unfreeze
    refused("StatusUnchanged", bank, SetStatus(rid(), "vo-atlas", AccountStatus.FROZEN), ADMIN)
    bank.run(ReleaseHold(rid(), hold_id), principal=MEMBER, now_us=NOW_US)      # release still works
    refused("AccountNotEmpty", bank, SetStatus(rid(), "vo-atlas", AccountStatus.CLOSED), OWNER)
    bank.run(Retire(rid(), "vo-atlas", 1000), principal=ADMIN, now_us=NOW_US)
    bank.run(SetStatus(rid(), "vo-atlas", AccountStatus.CLOSED), principal=OWNER, now_us=NOW_US)
    refused("AccountClosed", bank, SetStatus(rid(), "vo-atlas", AccountStatus.OPEN), ADMIN)
    refused("AccountClosed", bank, Mint(rid(), "vo-atlas", 5), ADMIN)
    refused("AccountClosed", bank, Transfer(rid(), "site-north", "vo-atlas", 1),
            Principal("/DC=org/CN=Site Admin"))


def test_close_refused_with_active_hold(bank):
    bank.run(Retire(rid(), "vo-atlas", 900), principal=ADMIN, now_us=NOW_US)
    hold_id = hold(bank, 100)
    bank.run(ChargeHold(rid(), hold_id, "site-north", 50), principal=MEMBER, now_us=NOW_US)
    assert (bank.accounts["vo-atlas"].balance, bank.accounts["vo-atlas"].held) == (50, 50)
    error = refused("AccountNotEmpty", bank, SetStatus(rid(), "vo-atlas", AccountStatus.CLOSED), ADMIN)
    assert "50 credits are held" in str(error)


def test_credit_limit_allows_overdraft_and_cannot_uncover_holds(bank):
    bank.run(SetCreditLimit(rid(), "vo-atlas", 500), principal=ADMIN, now_us=NOW_US)
    hold(bank, 1400)
    assert bank.accounts["vo-atlas"].available == 100
    refused("CreditLimitTooLow", bank, SetCreditLimit(rid(), "vo-atlas", 399), ADMIN)
    bank.run(SetCreditLimit(rid(), "vo-atlas", 400), principal=ADMIN, now_us=NOW_US)
    refused("InvalidAmount", bank, SetCreditLimit(rid(), "vo-atlas", -1), ADMIN)


def test_spending_limit_per_period(bank):
    period_us = 86_400 * SECOND_US
    day_start_us = (NOW_US // period_us) * period_us
    bank.run(SetSpendingLimit(rid(), "vo-atlas", 300, period_us), principal=MANAGER, now_us=NOW_US)
    bank.run(Transfer(rid(), "vo-atlas", "site-north", 200), principal=MEMBER, now_us=NOW_US)
    hold_id = hold(bank, 200)
    error = refused("SpendingLimitExceeded", bank, ChargeHold(rid(), hold_id, "site-north", 101), MEMBER)
    assert "200 already spent" in str(error) and "exceed it by 1" in str(error)
    bank.run(ChargeHold(rid(), hold_id, "site-north", 100), principal=MEMBER, now_us=NOW_US)
    refused("SpendingLimitExceeded", bank, Transfer(rid(), "vo-atlas", "site-north", 1), MEMBER)
    next_day_us = day_start_us + period_us
    bank.run(Transfer(rid(), "vo-atlas", "site-north", 300), principal=MEMBER, now_us=next_day_us)
    assert bank.accounts["vo-atlas"].spent_at(next_day_us) == 300
    refused("InvalidArgument", bank, SetSpendingLimit(rid(), "vo-atlas", 300, None), OWNER)
    refused("InvalidArgument", bank, SetSpendingLimit(rid(), "vo-atlas", 300, 5), OWNER)
    bank.run(SetSpendingLimit(rid(), "vo-atlas", None, None), principal=OWNER, now_us=next_day_us)
    bank.run(Transfer(rid(), "vo-atlas", "site-north", 10), principal=MEMBER, now_us=next_day_us)


# ---------------------------------------------------------------------------------------------
# Money supply


def test_mint_retire_and_supply(bank):
    assert (bank.supply.issued, bank.supply.retired, bank.supply.outstanding) == (1000, 0, 1000)
    bank.run(Retire(rid(), "vo-atlas", 400), principal=ADMIN, now_us=NOW_US)
    assert bank.supply.outstanding == 600 and bank.accounts["vo-atlas"].balance == 600
    hold(bank, 500)
    error = refused("InsufficientFunds", bank, Retire(rid(), "vo-atlas", 101), ADMIN)
    assert "short by 1" in str(error)
    transaction = bank.transactions[-1]
    assert transaction.kind is ledger.TransactionKind.HOLD


def test_mint_above_threshold_needs_a_second_administrator(bank):
    outcome = bank.run(Mint(rid(), "vo-atlas", 10_001), principal=ADMIN, now_us=NOW_US)
    assert outcome.transaction.kind is ledger.TransactionKind.MINT_REQUEST
    pending_id = outcome.transaction.pending_mint_id
    assert bank.supply.issued == 1000 and bank.accounts["vo-atlas"].balance == 1000
    refused("SecondAdministratorRequired", bank, ApproveMint(rid(), pending_id), ADMIN)
    refused("NotAuthorized", bank, ApproveMint(rid(), pending_id), OWNER)
    refused("UnknownPendingMint", bank, ApproveMint(rid(), "mint-0"), ADMIN_TWO)
    approved = bank.run(ApproveMint(rid(), pending_id), principal=ADMIN_TWO, now_us=NOW_US).transaction
    assert (approved.kind, approved.amount, approved.approver_dn) == (ledger.TransactionKind.MINT, 10_001,
                                                                      ADMIN_TWO.dn)
    assert bank.supply.issued == 11_001 and bank.accounts["vo-atlas"].balance == 11_001
    refused("PendingMintEnded", bank, ApproveMint(rid(), pending_id), ADMIN_TWO)
    refused("PendingMintEnded", bank, CancelMint(rid(), pending_id), ADMIN)
    ended = bank.pending_mints[pending_id]
    assert (ended.state, ended.ended_by_dn, ended.ended_seq) == (PendingMintState.APPROVED, ADMIN_TWO.dn, approved.seq)
    bank.run(Mint(rid(), "vo-atlas", 10_000), principal=ADMIN, now_us=NOW_US)   # at the threshold: direct


def request_mint(bank, principal=ADMIN, amount=20_000) -> str:
    outcome = bank.run(Mint(rid(), "vo-atlas", amount), principal=principal, now_us=NOW_US)
    assert outcome.transaction.expires_at_us == NOW_US + MINT_APPROVAL_US
    return outcome.transaction.pending_mint_id


def test_cancel_mint_by_any_administrator_issues_nothing(bank):
    supply = bank.supply
    mine, theirs = request_mint(bank), request_mint(bank)
    refused("NotAuthorized", bank, CancelMint(rid(), mine), OWNER)
    refused("UnknownPendingMint", bank, CancelMint(rid(), "mint-0"), ADMIN)
    refused("InvalidArgument", bank, CancelMint(rid(), "no such/id"), ADMIN)
    cancelled = bank.run(CancelMint(rid(), mine), principal=ADMIN, now_us=NOW_US + 1).transaction   # its requester
    assert (cancelled.kind, cancelled.principal_dn, cancelled.pending_mint_id, cancelled.amount,
            cancelled.account_id) == (ledger.TransactionKind.MINT_CANCEL, ADMIN.dn, mine, 20_000, "vo-atlas")
    bank.run(CancelMint(rid(), theirs), principal=ADMIN_TWO, now_us=NOW_US + 1)                      # another one
    assert bank.pending_mints[theirs].ended_by_dn == ADMIN_TWO.dn
    assert bank.supply == supply and bank.accounts["vo-atlas"].balance == 1000
    refused("PendingMintEnded", bank, ApproveMint(rid(), mine), ADMIN_TWO)
    refused("PendingMintEnded", bank, CancelMint(rid(), mine), ADMIN_TWO)
    refused("PendingMintEnded", bank, ExpireMint(rid(), mine), STRANGER, NOW_US + MINT_APPROVAL_US)
    assert bank.audit(verify).clean


def test_pending_mint_expires_once_at_its_time(bank):
    pending_id = request_mint(bank)
    due_us = NOW_US + MINT_APPROVAL_US
    error = refused("PendingMintNotExpired", bank, ExpireMint(rid(), pending_id), STRANGER, due_us - 1)
    assert str(due_us) in str(error)
    refused("PendingMintExpired", bank, ApproveMint(rid(), pending_id), ADMIN_TWO, due_us)
    refused("PendingMintExpired", bank, CancelMint(rid(), pending_id), ADMIN, due_us)
    sweeper = Principal("gridcredit bank expiry sweeper", is_service=True)
    expired = bank.run(ExpireMint(rid(), pending_id), principal=sweeper, now_us=due_us).transaction
    assert (expired.kind, expired.principal_dn, expired.amount) == (ledger.TransactionKind.MINT_EXPIRE, sweeper.dn,
                                                                    20_000)
    pending = bank.pending_mints[pending_id]
    assert (pending.state, pending.ended_by_dn, pending.ended_seq, pending.ended_at_us) == (
        PendingMintState.EXPIRED, sweeper.dn, expired.seq, due_us)
    refused("PendingMintEnded", bank, ExpireMint(rid(), pending_id), STRANGER, due_us + 1)
    refused("PendingMintEnded", bank, ApproveMint(rid(), pending_id), ADMIN_TWO, due_us + 1)
    assert bank.supply.issued == 1000 and bank.audit(verify).clean


def test_approval_one_microsecond_before_expiry(bank):
    pending_id = request_mint(bank)
    bank.run(ApproveMint(rid(), pending_id), principal=ADMIN_TWO, now_us=NOW_US + MINT_APPROVAL_US - 1)
    refused("PendingMintEnded", bank, ExpireMint(rid(), pending_id), STRANGER, NOW_US + MINT_APPROVAL_US)
    assert bank.supply.issued == 21_000 and bank.audit(verify).clean


def test_mint_approval_duration_is_bounded():
    with pytest.raises(AssertionError, match="mint approval duration is within its bounds"):
        BankPolicy(mint_approval_duration_us=0)
    with pytest.raises(AssertionError, match="mint approval duration is within its bounds"):
        BankPolicy(mint_approval_duration_us=types.MINT_APPROVAL_DURATION_MAX_US + 1)


def test_supply_and_balance_bounds(bank):
    for _ in range(1000):
        bank.run(Mint(rid(), "vo-atlas", 10_000), principal=ADMIN, now_us=NOW_US)
    big = MemoryLedger(sign=sign)
    big.run(CreateAccount(rid(), "a", "p", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    big.supply = ledger.MoneySupply(issued=ledger.SUPPLY_MAX - 5)
    refused("InvalidAmount", big, Mint(rid(), "a", 6), ADMIN)


# ---------------------------------------------------------------------------------------------
# Transfers


def test_transfer(bank):
    bank.run(Transfer(rid(), "vo-atlas", "site-north", 250), principal=MEMBER, now_us=NOW_US)
    assert (bank.accounts["vo-atlas"].balance, bank.accounts["site-north"].balance) == (750, 250)
    error = refused("InsufficientFunds", bank, Transfer(rid(), "vo-atlas", "site-north", 751), MEMBER)
    assert str(error) == "account vo-atlas has 750 credits available; the transfer needs 751 (short by 1)"
    refused("InvalidArgument", bank, Transfer(rid(), "vo-atlas", "vo-atlas", 1), MEMBER)
    refused("UnknownAccount", bank, Transfer(rid(), "vo-atlas", "nowhere", 1), MEMBER)


# ---------------------------------------------------------------------------------------------
# Holds


def test_hold_refused_naming_the_shortfall(bank):
    bank.run(Retire(rid(), "vo-atlas", 880), principal=ADMIN, now_us=NOW_US)
    error = refused("InsufficientFunds", bank, CreateHold(rid(), "vo-atlas", 200, NOW_US + SECOND_US), MEMBER)
    assert str(error) == "account vo-atlas has 120 credits available; the hold needs 200 (short by 80)"


def test_hold_partial_charges_then_charged_out(bank):
    hold_id = hold(bank, 100)
    assert bank.accounts["vo-atlas"].held == 100 and bank.accounts["vo-atlas"].available == 900
    bank.run(ChargeHold(rid(), hold_id, "site-north", 30), principal=MEMBER, now_us=NOW_US)
    error = refused("ExceedsHold", bank, ChargeHold(rid(), hold_id, "site-north", 71), MEMBER)
    assert "70 credits left" in str(error)
    outcome = bank.run(ChargeHold(rid(), hold_id, "site-north", 70), principal=MEMBER, now_us=NOW_US)
    assert outcome.transaction.hold_state is HoldState.CHARGED_OUT
    assert bank.holds[hold_id].state is HoldState.CHARGED_OUT and bank.holds[hold_id].ended_seq == outcome.transaction.seq
    assert (bank.accounts["vo-atlas"].balance, bank.accounts["vo-atlas"].held) == (900, 0)
    assert bank.accounts["site-north"].balance == 100
    refused("HoldEnded", bank, ChargeHold(rid(), hold_id, "site-north", 1), MEMBER)
    refused("HoldEnded", bank, ReleaseHold(rid(), hold_id), MEMBER)
    refused("HoldEnded", bank, ExpireHold(rid(), hold_id), ADMIN, NOW_US + 3600 * SECOND_US)
    refused("InvalidArgument", bank, ChargeHold(rid(), hold(bank, 5), "vo-atlas", 1), MEMBER)


def test_release_returns_the_remainder_once(bank):
    hold_id = hold(bank, 100)
    bank.run(ChargeHold(rid(), hold_id, "site-north", 40), principal=MEMBER, now_us=NOW_US)
    outcome = bank.run(ReleaseHold(rid(), hold_id), principal=MEMBER, now_us=NOW_US)
    assert (outcome.transaction.kind, outcome.transaction.amount) == (ledger.TransactionKind.RELEASE, 60)
    assert (bank.accounts["vo-atlas"].balance, bank.accounts["vo-atlas"].held) == (960, 0)
    refused("HoldEnded", bank, ReleaseHold(rid(), hold_id), MEMBER)


def test_expiry_rule_is_now_at_or_after_expires_at(bank):
    hold_id = hold(bank, 100, lifetime_us=10 * SECOND_US)
    expires_at_us = NOW_US + 10 * SECOND_US
    bank.run(ChargeHold(rid(), hold_id, "site-north", 10), principal=MEMBER, now_us=expires_at_us - 1)
    refused("HoldNotExpired", bank, ExpireHold(rid(), hold_id), STRANGER, expires_at_us - 1)
    # The sweep has not run, but the hold is expired from expires_at on: charges are refused.
    error = refused("HoldExpired", bank, ChargeHold(rid(), hold_id, "site-north", 10), MEMBER, expires_at_us)
    assert "expired" in str(error)
    refused("HoldExpired", bank, ReleaseHold(rid(), hold_id), MEMBER, expires_at_us)
    refused("HoldExpired", bank, ExtendHold(rid(), hold_id, expires_at_us=expires_at_us + SECOND_US), MEMBER,
            expires_at_us)
    outcome = bank.run(ExpireHold(rid(), hold_id), principal=STRANGER, now_us=expires_at_us + 5)
    assert (outcome.transaction.kind, outcome.transaction.amount) == (ledger.TransactionKind.EXPIRE, 90)
    assert bank.holds[hold_id].state is HoldState.EXPIRED and bank.accounts["vo-atlas"].held == 0
    refused("HoldEnded", bank, ExpireHold(rid(), hold_id), ADMIN, expires_at_us + 10)
    refused("HoldEnded", bank, ChargeHold(rid(), hold_id, "site-north", 1), MEMBER, expires_at_us + 10)


def test_hold_expiry_bounds(bank):
    refused("InvalidExpiry", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US), MEMBER)
    refused("InvalidExpiry", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US - 1), MEMBER)
    refused("InvalidExpiry", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US + 3600 * SECOND_US + 1), MEMBER)
    refused("InvalidArgument", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US + 1, "x" * 257), MEMBER)
    refused("UnknownAccount", bank, CreateHold(rid(), "nowhere", 1, NOW_US + 1), MEMBER)
    refused("UnknownHold", bank, ChargeHold(rid(), "hold-77", "site-north", 1), MEMBER)
    refused("UnknownHold", bank, ReleaseHold(rid(), "hold-77"), MEMBER)
    refused("UnknownHold", bank, ExpireHold(rid(), "hold-77"), MEMBER)
    refused("UnknownHold", bank, ExtendHold(rid(), "hold-77", amount=5), MEMBER)


def test_extend(bank):
    hold_id = hold(bank, 100, lifetime_us=10 * SECOND_US)
    outcome = bank.run(ExtendHold(rid(), hold_id, expires_at_us=NOW_US + 20 * SECOND_US, amount=150),
                       principal=MEMBER, now_us=NOW_US)
    assert (outcome.transaction.amount, outcome.transaction.hold_amount) == (50, 150)
    assert bank.holds[hold_id].expires_at_us == NOW_US + 20 * SECOND_US and bank.accounts["vo-atlas"].held == 150
    only_later = bank.run(ExtendHold(rid(), hold_id, expires_at_us=NOW_US + 30 * SECOND_US),
                          principal=MEMBER, now_us=NOW_US)
    assert only_later.transaction.amount is None
    refused("InvalidExpiry", bank, ExtendHold(rid(), hold_id, expires_at_us=NOW_US + 30 * SECOND_US), MEMBER)
    refused("InvalidAmount", bank, ExtendHold(rid(), hold_id, amount=150), MEMBER)
    refused("InvalidArgument", bank, ExtendHold(rid(), hold_id), MEMBER)
    error = refused("InsufficientFunds", bank, ExtendHold(rid(), hold_id, amount=1001), MEMBER)
    assert "short by 1" in str(error)
    refused("InvalidExpiry", bank, ExtendHold(rid(), hold_id, expires_at_us=NOW_US + 3601 * SECOND_US), MEMBER)


# ---------------------------------------------------------------------------------------------
# SettleHold: the final charge and the release of the rest, in one transaction


def _money(bank: MemoryLedger) -> tuple[int, int, int]:
    return bank.accounts["vo-atlas"].balance, bank.accounts["vo-atlas"].held, bank.accounts["site-north"].balance


def test_settle_charges_and_releases_the_rest_in_one_transaction(bank):
    hold_id = hold(bank, 100)
    bank.run(ChargeHold(rid(), hold_id, "site-north", 10), principal=MEMBER, now_us=NOW_US)
    head = bank.ledger_head.seq
    outcome = bank.run(SettleHold(rid(), hold_id, "site-north", 35), principal=MEMBER, now_us=NOW_US)
    settled = outcome.transaction
    assert settled.seq == head + 1 == len(bank.transactions)                 # one transaction
    assert (settled.kind, settled.account_id, settled.counterparty_account_id, settled.amount,
            settled.released_amount, settled.hold_id, settled.hold_amount, settled.hold_state) == (
        ledger.TransactionKind.SETTLE, "vo-atlas", "site-north", 35, 55, hold_id, 100, HoldState.SETTLED)
    assert (bank.holds[hold_id].state, bank.holds[hold_id].charged, bank.holds[hold_id].ended_seq,
            bank.holds[hold_id].ended_at_us) == (HoldState.SETTLED, 45, settled.seq, NOW_US)
    assert _money(bank) == (955, 0, 45)
    assert bank.audit(verify, signature_check_interval=1).clean
    # it ended once: nothing ends it again, not even its expiry
    refused("HoldEnded", bank, SettleHold(rid(), hold_id, "site-north", 0), MEMBER)
    refused("HoldEnded", bank, ChargeHold(rid(), hold_id, "site-north", 1), MEMBER)
    refused("HoldEnded", bank, ReleaseHold(rid(), hold_id), MEMBER)
    refused("HoldEnded", bank, ExpireHold(rid(), hold_id), ADMIN, NOW_US + 3600 * SECOND_US)


def test_settle_zero_releases_everything_and_the_remainder_charges_it_out(bank):
    nothing = hold(bank, 100)
    outcome = bank.run(SettleHold(rid(), nothing, "site-north", 0), principal=MEMBER, now_us=NOW_US)
    assert (outcome.transaction.amount, outcome.transaction.released_amount) == (0, 100)
    assert bank.holds[nothing].state is HoldState.SETTLED and bank.holds[nothing].charged == 0
    assert _money(bank) == (1000, 0, 0)
    everything = hold(bank, 100)
    bank.run(ChargeHold(rid(), everything, "site-north", 30), principal=MEMBER, now_us=NOW_US)
    outcome = bank.run(SettleHold(rid(), everything, "site-north", 70), principal=MEMBER, now_us=NOW_US)
    assert (outcome.transaction.amount, outcome.transaction.released_amount) == (70, 0)
    assert bank.holds[everything].state is HoldState.SETTLED and bank.holds[everything].charged == 100
    assert _money(bank) == (900, 0, 100)
    assert bank.audit(verify, signature_check_interval=1).clean


def test_settle_more_than_is_left_is_refused_with_the_excess(bank):
    hold_id = hold(bank, 100)
    bank.run(ChargeHold(rid(), hold_id, "site-north", 30), principal=MEMBER, now_us=NOW_US)
    error = refused("ExceedsHold", bank, SettleHold(rid(), hold_id, "site-north", 71), MEMBER)
    assert str(error) == f"hold {hold_id} has 70 credits left; the settlement charges 71 (over by 1)"
    refused("InvalidArgument", bank, SettleHold(rid(), hold_id, "vo-atlas", 1), MEMBER)       # its own account
    refused("UnknownAccount", bank, SettleHold(rid(), hold_id, "vo-nowhere", 1), MEMBER)
    refused("UnknownHold", bank, SettleHold(rid(), "hold-77", "site-north", 1), MEMBER)
    for amount in (-1, 10**15 + 1, 1.5, True, "5", None):
        refused("InvalidAmount", bank, SettleHold(rid(), hold_id, "site-north", amount), MEMBER)
    assert bank.holds[hold_id].state is HoldState.ACTIVE and bank.holds[hold_id].charged == 30


def test_settle_at_expiry_is_refused_and_the_sweep_ends_it(bank):
    hold_id = hold(bank, 100, lifetime_us=10 * SECOND_US)
    expires_at_us = NOW_US + 10 * SECOND_US
    refused("HoldExpired", bank, SettleHold(rid(), hold_id, "site-north", 10), MEMBER, expires_at_us)
    bank.run(ExpireHold(rid(), hold_id), principal=STRANGER, now_us=expires_at_us)
    refused("HoldEnded", bank, SettleHold(rid(), hold_id, "site-north", 0), MEMBER, expires_at_us + 1)


def test_settle_follows_the_charge_rules_of_collector_and_payee(bank):
    collected = hold(bank, 100, collector=STRANGER.dn, payee="site-north")
    bank.run(CreateAccount(rid(), "vo-cms", "cms", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    error = refused("NotAuthorized", bank, SettleHold(rid(), collected, "vo-cms", 10), STRANGER)
    assert "go to account site-north only" in str(error)
    refused("NotAuthorized", bank, SettleHold(rid(), collected, "vo-cms", 10), MEMBER)      # a spender too
    refused("NotAuthorized", bank, SettleHold(rid(), hold(bank), "site-north", 10), STRANGER)
    refused("NotAuthorized", bank, SettleHold(rid(), collected, "site-north", 10), VIEWER)
    refused("NotAuthorized", bank, SettleHold(rid(), collected, "site-north", 10), ADMIN)   # administrators release only
    outcome = bank.run(SettleHold(rid(), collected, "site-north", 60), principal=STRANGER, now_us=NOW_US)
    assert (outcome.transaction.principal_dn, outcome.transaction.released_amount) == (STRANGER.dn, 40)


def test_settle_on_a_frozen_account_or_past_the_spending_limit_only_when_it_charges_nothing(bank):
    hold_id, other = hold(bank, 100), hold(bank, 100)
    bank.run(SetSpendingLimit(rid(), "vo-atlas", 50, 3600 * SECOND_US), principal=OWNER, now_us=NOW_US)
    error = refused("SpendingLimitExceeded", bank, SettleHold(rid(), hold_id, "site-north", 51), MEMBER)
    assert "exceed it by 1" in str(error)
    bank.run(SettleHold(rid(), hold_id, "site-north", 50), principal=MEMBER, now_us=NOW_US)
    bank.run(SetStatus(rid(), "vo-atlas", AccountStatus.FROZEN), principal=OWNER, now_us=NOW_US)
    refused("AccountFrozen", bank, SettleHold(rid(), other, "site-north", 1), MEMBER)
    outcome = bank.run(SettleHold(rid(), other, "site-north", 0), principal=MEMBER, now_us=NOW_US)
    assert outcome.transaction.released_amount == 100 and _money(bank) == (950, 0, 50)


def test_settle_retry_settles_once(bank):
    hold_id = hold(bank, 100)
    request = SettleHold("settle-1", hold_id, "site-north", 60)
    first = bank.run(request, principal=MEMBER, now_us=NOW_US)
    for _ in range(3):
        again = bank.run(request, principal=MEMBER, now_us=NOW_US + SECOND_US)
        assert again.replayed and again.transaction == first.transaction
    assert _money(bank) == (940, 0, 60) and len(bank.transactions) == first.transaction.seq
    refused("RequestIdReused", bank, SettleHold("settle-1", hold_id, "site-north", 61), MEMBER)


def test_audit_checks_settlements(bank):
    """A settlement that returns more or less than the hold's remainder, or ends a hold again, is found
    even when the bank signed it."""
    hold_id = hold(bank, 100)
    bank.run(SettleHold(rid(), hold_id, "site-north", 30), principal=MEMBER, now_us=NOW_US)
    assert bank.audit(verify, signature_check_interval=1).clean
    settled = bank.transactions[-1]
    unsealed = dataclasses.replace(settled, released_amount=71, prev_hash="", hash="", signature="")
    forged, head = ledger.seal(unsealed, ledger.LedgerHead(settled.seq - 1, settled.prev_hash), sign)
    report = ledger.audit([*bank.transactions[:-1], forged], bank.accounts.values(), bank.holds.values(),
                          bank.supply, verify, head=head)
    assert any(f.seq == settled.seq and "30 charged and 71 returned; its remainder is 100" in f.message for f in report.findings), report.findings
    again = dataclasses.replace(settled, seq=settled.seq + 1, request_id="again", prev_hash="", hash="", signature="")
    again, head = ledger.seal(again, bank.ledger_head, sign)
    report = ledger.audit([*bank.transactions, again], bank.accounts.values(), bank.holds.values(), bank.supply,
                          verify, head=head)
    assert any(f.seq == again.seq and "not active" in f.message for f in report.findings), report.findings


OLD_LEDGER = Path(__file__).parent / "data" / "bank" / "ledger-81777a5.json"


def test_a_ledger_written_before_settlements_and_grants_loads_and_audits_clean():
    """The store's documents of a ledger made by commit 81777a5 (tests/data/bank/ledger-81777a5.py): they
    decode, every hash is what the chain says (new fields are absent, so left out of the hashed bytes),
    they are written back byte for byte as the store keeps them, and the audit finds nothing."""
    old = json.loads(OLD_LEDGER.read_text())
    key = old["key"].encode()

    def old_verify(message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), signature)

    decoded = {}
    for name, cls in (("transactions", ledger.Transaction), ("accounts", ledger.Account), ("holds", ledger.Hold),
                      ("pending_mints", ledger.PendingMint)):
        decoded[name] = [documents.from_xml(text.encode(), cls) for text in old[name]]
        # as the store keeps them: the old writer wrote an empty text <x></x> (lxml), today's <x/> (the store's form)
        assert [normalize(documents.to_xml(state)) for state in decoded[name]] == [normalize(text.encode())
                                                                                  for text in old[name]]
    assert {t.kind for t in decoded["transactions"]} >= {ledger.TransactionKind.CHARGE, ledger.TransactionKind.RELEASE,
                                                         ledger.TransactionKind.EXPIRE, ledger.TransactionKind.EXTEND}
    assert all(ledger_chain.transaction_hash(t) == t.hash for t in decoded["transactions"])
    report = ledger.audit(decoded["transactions"], decoded["accounts"], decoded["holds"],
                          documents.money_supply_from_xml(old["money_supply"].encode()), old_verify,
                          head=documents.ledger_head_from_xml(old["ledger_head"].encode()), signature_check_interval=1,
                          pending_mints=decoded["pending_mints"])
    assert report.clean, report.findings
    assert report.transaction_count == len(old["transactions"]) == 19


# ---------------------------------------------------------------------------------------------
# Service grants: a site's JARM holds on behalf of an account's spending holders

JARM = Principal("/DC=org/DC=grid/CN=host/jarm.site-north.org", is_service=True)
OTHER_SERVICE = Principal("/DC=org/DC=grid/CN=host/jarm.elsewhere.org", is_service=True)
HOUR_US = 3600 * SECOND_US


def granted(bank: MemoryLedger, *, hold_max: int | None = 500, period_max: int | None = 800,
            period_us: int | None = HOUR_US, service: Principal = JARM) -> MemoryLedger:
    bank.run(GrantService(rid(), "vo-atlas", service.dn, hold_max, period_max, period_us), principal=OWNER,
             now_us=NOW_US)
    return bank


def hold_for(bank: MemoryLedger, amount: int, dn: str = MEMBER.dn, service: Principal = JARM,
             now_us: int = NOW_US, account_id: str = "vo-atlas") -> str:
    outcome = bank.run(CreateHold(rid(), account_id, amount, now_us + 60 * SECOND_US, "job 7", None, None, dn),
                       principal=service, now_us=now_us)
    return outcome.transaction.hold_id


def test_a_granted_service_holds_for_a_spending_holder_and_the_ledger_names_both(bank):
    granted(bank)
    hold_id = hold_for(bank, 300)
    made = bank.holds[hold_id]
    assert (made.creator_dn, made.on_behalf_of_dn, made.amount) == (JARM.dn, MEMBER.dn, 300)
    bank.run(ExtendHold(rid(), hold_id, NOW_US + 120 * SECOND_US, 400), principal=JARM, now_us=NOW_US)
    bank.run(ChargeHold(rid(), hold_id, "site-north", 50), principal=JARM, now_us=NOW_US)
    settled = bank.run(SettleHold(rid(), hold_id, "site-north", 100), principal=JARM, now_us=NOW_US).transaction
    assert (settled.amount, settled.released_amount) == (100, 250)
    on_the_hold = [t for t in bank.transactions if t.hold_id == hold_id]
    assert [t.kind.value for t in on_the_hold] == ["hold", "extend", "charge", "settle"]
    assert all((t.principal_dn, t.on_behalf_of_dn) == (JARM.dn, MEMBER.dn) for t in on_the_hold)
    assert _money(bank) == (850, 0, 150)
    grant = bank.accounts["vo-atlas"].grant_of(JARM.dn)
    assert (grant.hold_max, grant.period_max, grant.period_us, grant.held_at(NOW_US)) == (500, 800, HOUR_US, 400)
    # the holder it acts for does not control it; the account's owner does
    refused("NotAuthorized", bank, ReleaseHold(rid(), hold_for(bank, 10)), MEMBER)
    bank.run(ReleaseHold(rid(), hold_for(bank, 10)), principal=OWNER, now_us=NOW_US)
    assert bank.audit(verify, signature_check_interval=1).clean


def test_only_owners_grant_and_revoke(bank):
    request = GrantService(rid(), "vo-atlas", JARM.dn, 500, None, None)
    for caller in (ADMIN, MANAGER, MEMBER, VIEWER, STRANGER, JARM):
        error = refused("NotAuthorized", bank, request, caller)
        assert "only its owners may" in str(error)
    bank.run(request, principal=OWNER, now_us=NOW_US)
    refused("GrantUnchanged", bank, GrantService(rid(), "vo-atlas", JARM.dn, 500, None, None), OWNER)
    bank.run(GrantService(rid(), "vo-atlas", JARM.dn, 600, None, None), principal=OWNER, now_us=NOW_US)
    assert bank.accounts["vo-atlas"].grant_of(JARM.dn).hold_max == 600
    for caller in (ADMIN, MANAGER, JARM):
        refused("NotAuthorized", bank, RevokeService(rid(), "vo-atlas", JARM.dn), caller)
    bank.run(RevokeService(rid(), "vo-atlas", JARM.dn), principal=OWNER, now_us=NOW_US)
    assert bank.accounts["vo-atlas"].grants == ()
    error = refused("NotGranted", bank, RevokeService(rid(), "vo-atlas", JARM.dn), OWNER)
    assert str(error) == f"{JARM.dn} holds no grant on account vo-atlas"
    # an administrator who owns an account grants on it as its owner, like anyone else
    bank.run(CreateAccount(rid(), "vo-admins", "own", ADMIN.dn), principal=ADMIN_TWO, now_us=NOW_US)
    bank.run(GrantService(rid(), "vo-admins", JARM.dn), principal=ADMIN, now_us=NOW_US)


def test_grant_requests_are_checked(bank):
    refused("InvalidAmount", bank, GrantService(rid(), "vo-atlas", JARM.dn, 0, None, None), OWNER)
    refused("InvalidAmount", bank, GrantService(rid(), "vo-atlas", JARM.dn, None, -5, HOUR_US), OWNER)
    refused("InvalidArgument", bank, GrantService(rid(), "vo-atlas", JARM.dn, None, 100, None), OWNER)
    refused("InvalidArgument", bank, GrantService(rid(), "vo-atlas", JARM.dn, None, None, HOUR_US), OWNER)
    refused("InvalidArgument", bank, GrantService(rid(), "vo-atlas", JARM.dn, None, 100, 1), OWNER)
    refused("InvalidArgument", bank, GrantService(rid(), "vo-atlas", "/CN=host/\u202ejarm", None, None, None), OWNER)
    refused("InvalidArgument", bank, GrantService(rid(), "vo-atlas", "", None, None, None), OWNER)
    refused("UnknownAccount", bank, GrantService(rid(), "vo-nowhere", JARM.dn, None, None, None), OWNER)
    for number in range(ledger.GRANTS_MAX):
        bank.run(GrantService(rid(), "vo-atlas", f"/CN=service {number}"), principal=OWNER, now_us=NOW_US)
    error = refused("TooManyGrants", bank, GrantService(rid(), "vo-atlas", JARM.dn), OWNER)
    assert f"at most {ledger.GRANTS_MAX}" in str(error)


def test_attacks_on_a_grant_are_refused_and_change_nothing(bank):
    """Each refused with a message saying why, and nothing changed (the `refused` helper compares every
    document and the ledger head before and after)."""
    no_grant = refused("NotAuthorized", bank, CreateHold(rid(), "vo-atlas", 10, NOW_US + SECOND_US, "", None, None,
                                                          MEMBER.dn), JARM)
    assert str(no_grant) == (f"{JARM.dn} may not place holds on account vo-atlas on behalf of {MEMBER.dn}: it holds "
                             f"no grant on account vo-atlas (an owner gives one with grant-service)")
    granted(bank)

    def attempt(dn, *, amount=10, account_id="vo-atlas"):
        return CreateHold(rid(), account_id, amount, NOW_US + SECOND_US, "", None, None, dn)

    stranger = refused("NotAuthorized", bank, attempt(STRANGER.dn), JARM)
    assert "that DN is not a holder of account vo-atlas" in str(stranger)
    viewer = refused("NotAuthorized", bank, attempt(VIEWER.dn), JARM)
    assert "that DN is only a viewer of account vo-atlas" in str(viewer)
    over_hold = refused("GrantLimitExceeded", bank, attempt(MEMBER.dn, amount=501), JARM)
    assert str(over_hold) == (f"the grant of account vo-atlas to {JARM.dn} allows holds of at most 500 credits; "
                              f"this hold would be 501 (over by 1)")
    hold_for(bank, 500)
    over_period = refused("GrantLimitExceeded", bank, attempt(OWNER.dn, amount=301), JARM)
    assert "allows 800 credits of holds per 3600000000 µs period; 500 already held in this period, so 301 more " \
           "would exceed it by 1" in str(over_period)
    refused("NotAuthorized", bank, attempt(MEMBER.dn), OTHER_SERVICE)          # a service without a grant
    refused("NotAuthorized", bank, attempt(MEMBER.dn), ADMIN)                  # an administrator, no grant
    refused("NotAuthorized", bank, attempt(MEMBER.dn, account_id="site-north"), JARM)   # another account
    limited = dataclasses.replace(JARM, is_proxy=True, limited=True)
    refused("NotAuthorized", bank, attempt(MEMBER.dn), limited)               # a limited proxy of the service
    refused("NotAuthorized", bank, GrantService(rid(), "vo-atlas", OTHER_SERVICE.dn), ADMIN)  # administrators
    refused("NotAuthorized", bank, GrantService(rid(), "vo-atlas", OTHER_SERVICE.dn),
            dataclasses.replace(OWNER, is_proxy=True, limited=True))          # an owner's limited proxy
    refused("InvalidArgument", bank, attempt(JARM.dn), JARM)                  # for itself
    bank.run(RemoveHolder(rid(), "vo-atlas", MEMBER.dn), principal=OWNER, now_us=NOW_US)
    removed = refused("NotAuthorized", bank, attempt(MEMBER.dn), JARM)        # a holder who was removed
    assert "that DN is not a holder of account vo-atlas" in str(removed)
    assert bank.audit(verify, signature_check_interval=1).clean


def test_the_period_cap_counts_holds_and_raises_per_period(bank):
    granted(bank, hold_max=None, period_max=300, period_us=HOUR_US)
    start = (NOW_US // HOUR_US) * HOUR_US + 10 * SECOND_US
    hold_id = hold_for(bank, 200, now_us=start)
    refused("GrantLimitExceeded", bank, ExtendHold(rid(), hold_id, amount=301), JARM, start)
    bank.run(ExtendHold(rid(), hold_id, amount=300), principal=JARM, now_us=start)
    bank.run(ReleaseHold(rid(), hold_id), principal=JARM, now_us=start)        # what is released does not count back
    refused("GrantLimitExceeded", bank, CreateHold(rid(), "vo-atlas", 1, start + SECOND_US, "", None, None, MEMBER.dn),
            JARM, start)
    next_period = start + HOUR_US
    hold_for(bank, 300, now_us=next_period)
    assert bank.accounts["vo-atlas"].grant_of(JARM.dn).held_at(next_period) == 300


def test_after_a_revocation_or_a_removal_the_service_ends_its_holds_but_raises_nothing(bank):
    granted(bank)
    revoked_hold, removed_hold = hold_for(bank, 100), hold_for(bank, 100, dn=MANAGER.dn)
    bank.run(RevokeService(rid(), "vo-atlas", JARM.dn), principal=OWNER, now_us=NOW_US)
    error = refused("NotAuthorized", bank, ExtendHold(rid(), revoked_hold, amount=101), JARM)
    assert "it holds no grant on account vo-atlas" in str(error)
    refused("NotAuthorized", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US + SECOND_US, "", None, None, MEMBER.dn),
            JARM)
    bank.run(ExtendHold(rid(), revoked_hold, NOW_US + 90 * SECOND_US), principal=JARM, now_us=NOW_US)
    bank.run(ChargeHold(rid(), revoked_hold, "site-north", 10), principal=JARM, now_us=NOW_US)
    bank.run(SettleHold(rid(), revoked_hold, "site-north", 20), principal=JARM, now_us=NOW_US)
    granted(bank)
    bank.run(RemoveHolder(rid(), "vo-atlas", MANAGER.dn), principal=OWNER, now_us=NOW_US)
    error = refused("NotAuthorized", bank, ExtendHold(rid(), removed_hold, amount=101), JARM)
    assert f"{MANAGER.dn}: that DN is not a holder" in str(error)
    bank.run(ReleaseHold(rid(), removed_hold), principal=JARM, now_us=NOW_US)
    assert bank.audit(verify, signature_check_interval=1).clean


def test_a_service_acts_only_on_the_holds_it_made_and_never_readdresses_them(bank):
    granted(bank)
    granted(bank, service=OTHER_SERVICE)
    mine, members = hold_for(bank, 100), hold(bank, 100)
    for request in (ChargeHold(rid(), mine, "site-north", 1), SettleHold(rid(), mine, "site-north", 1),
                    ReleaseHold(rid(), mine), ExtendHold(rid(), mine, NOW_US + 90 * SECOND_US)):
        refused("NotAuthorized", bank, request, OTHER_SERVICE)
    for request in (ChargeHold(rid(), members, "site-north", 1), ReleaseHold(rid(), members)):
        refused("NotAuthorized", bank, request, JARM)
    bank.run(CreateAccount(rid(), "vo-cms", "cms", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    error = refused("NotAuthorized", bank, ExtendHold(rid(), mine, payee_account_id="vo-cms"), JARM)
    assert "may not change its payee" in str(error)
    refused("NotAuthorized", bank, Transfer(rid(), "vo-atlas", "site-north", 1), JARM)   # pays only through holds


def test_requests_that_do_not_act_for_anyone_hash_as_before():
    """The new CreateHold field is left out of the request hash while unused: a retry of a hold requested
    before grants existed still matches its record."""
    request = CreateHold("job-1", "vo-atlas", 5, NOW_US, "r", None, "site-north")
    old_body = {"operation": "CreateHold", "principal": MEMBER.dn, "request_id": "job-1", "account_id": "vo-atlas",
                "amount": 5, "expires_at_us": NOW_US, "reference": "r", "collector_dn": None,
                "payee_account_id": "site-north"}
    expected = hashlib.sha256(json.dumps(old_body, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=False).encode("utf-8")).hexdigest()
    assert ledger.request_hash(request, MEMBER) == expected
    assert ledger.request_hash(dataclasses.replace(request, on_behalf_of_dn=OWNER.dn), MEMBER) != expected


def test_grants_in_documents_and_in_the_audit(bank):
    granted(bank)
    granted(bank, hold_max=None, period_max=None, period_us=None, service=OTHER_SERVICE)
    hold_for(bank, 100)
    account = bank.accounts["vo-atlas"]
    assert documents.from_xml(documents.to_xml(account)) == account
    assert documents.from_xml(documents.to_xml(bank.holds[hold_for(bank, 5)])).on_behalf_of_dn == MEMBER.dn
    text = documents.to_xml(account)
    assert b'<grant holdMax="500" periodMax="800"' in text and b"<grant heldInPeriod=" not in text
    with pytest.raises(StoreError):
        documents.from_xml(text.replace(b'holdMax="500"', b'holdMax="500" admin="yes"'))
    with pytest.raises(StoreError):
        documents.from_xml(text.replace(b'holdMax="500"', b'holdMax="5x"'))
    account = bank.accounts["vo-atlas"]          # with the second hold counted
    assert bank.audit(verify).clean
    # a grant added to the account document behind the bank's back (a rogue service) is found
    rogue = dataclasses.replace(account.grants[0], service_dn="/CN=rogue")
    bank.accounts["vo-atlas"] = dataclasses.replace(account, grants=account.grants + (rogue,))
    assert any("service grants differ from its transactions" in f.message for f in bank.audit(verify).findings)
    bank.accounts["vo-atlas"] = dataclasses.replace(account, grants=(dataclasses.replace(account.grants[0],
                                                                                         hold_max=10**9),
                                                                     account.grants[1]))
    assert any("service grants differ" in f.message for f in bank.audit(verify).findings)
    # the period's count set back, so that the service may hold more this period: found
    counted = account.grant_of(JARM.dn)
    assert counted.held_in_period == 105
    bank.accounts["vo-atlas"] = dataclasses.replace(account, grants=tuple(
        dataclasses.replace(grant, held_in_period=0) if grant is counted else grant for grant in account.grants))
    assert any("service grants differ" in f.message for f in bank.audit(verify).findings)
    bank.accounts["vo-atlas"] = account
    assert bank.audit(verify).clean
    # a hold document that says it was made for someone else (or by someone else): found
    some_hold = next(iter(bank.holds.values()))
    for edited in (dataclasses.replace(some_hold, on_behalf_of_dn=OWNER.dn),
                   dataclasses.replace(some_hold, creator_dn=STRANGER.dn)):
        bank.holds[some_hold.hold_id] = edited
        assert any(f"hold {some_hold.hold_id} says it was made by" in f.message for f in bank.audit(verify).findings)
    bank.holds[some_hold.hold_id] = some_hold
    # a hold for someone that the bank signed although the service had no grant (a bug, or a forgery)
    forged = ledger.Transaction(seq=bank.ledger_head.seq + 1, kind=ledger.TransactionKind.HOLD, at_us=NOW_US,
                                request_id="forged", principal_dn=STRANGER.dn, account_id="vo-atlas", amount=1,
                                hold_id="hold-forged", hold_amount=1, hold_state=HoldState.ACTIVE,
                                expires_at_us=NOW_US + SECOND_US, on_behalf_of_dn=MEMBER.dn)
    forged, head = ledger.seal(forged, bank.ledger_head, sign)
    report = ledger.audit([*bank.transactions, forged], bank.accounts.values(), bank.holds.values(), bank.supply,
                          verify, head=head)
    assert any(f.seq == forged.seq and "without a grant" in f.message for f in report.findings), report.findings
    # one over the grant's period cap, likewise
    over = dataclasses.replace(forged, principal_dn=JARM.dn, amount=696, hold_amount=696, prev_hash="", hash="",
                               signature="")
    over, head = ledger.seal(over, bank.ledger_head, sign)
    report = ledger.audit([*bank.transactions, over], bank.accounts.values(), bank.holds.values(), bank.supply,
                          verify, head=head)
    assert any(f.seq == over.seq and "holds 801 in its grant's period; the grant allows 800" in f.message
               for f in report.findings), report.findings
    assert any(f.seq == over.seq and "of 696 exceeds its grant's 500 per hold" in f.message for f in report.findings)


# ---------------------------------------------------------------------------------------------
# Idempotency


def test_retry_answers_the_original_and_reuse_is_refused(bank):
    request = Transfer("pay-1", "vo-atlas", "site-north", 100)
    first = bank.run(request, principal=MEMBER, now_us=NOW_US)
    again = bank.run(request, principal=MEMBER, now_us=NOW_US + 99 * SECOND_US)
    assert again.replayed and again.transaction == first.transaction
    assert bank.accounts["vo-atlas"].balance == 900 and len(bank.transactions) == first.transaction.seq
    error = refused("RequestIdReused", bank, Transfer("pay-1", "vo-atlas", "site-north", 101), MEMBER)
    assert "pay-1" in str(error)
    refused("RequestIdReused", bank, Mint("pay-1", "vo-atlas", 100), MEMBER)
    # Request ids are per caller: another caller's id does not collide (nor read the first answer).
    other = bank.run(Transfer("pay-1", "vo-atlas", "site-north", 100), principal=OWNER, now_us=NOW_US)
    assert not other.replayed and other.transaction.seq == first.transaction.seq + 1


def test_refused_request_is_not_recorded(bank):
    request = Transfer("pay-2", "vo-atlas", "site-north", 5000)
    refused("InsufficientFunds", bank, request, MEMBER)
    bank.run(Mint(rid(), "vo-atlas", 5000), principal=ADMIN, now_us=NOW_US)
    assert not bank.run(request, principal=MEMBER, now_us=NOW_US).replayed


def test_charge_retry_charges_once(bank):
    hold_id = hold(bank, 100)
    request = ChargeHold("charge-1", hold_id, "site-north", 60)
    for _ in range(3):
        bank.run(request, principal=MEMBER, now_us=NOW_US)
    assert bank.holds[hold_id].charged == 60 and bank.accounts["site-north"].balance == 60


# ---------------------------------------------------------------------------------------------
# Bad amounts: zero, negative, overflow, not an integer — refused for every operation that takes one

BAD_AMOUNTS = [0, -1, -10**15, 10**15 + 1, 2**64, 2**200, 1.5, 100.0, True, "100", None]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
@pytest.mark.parametrize("operation", ["mint", "retire", "transfer", "hold", "extend", "charge"])
def test_bad_amounts_are_refused(bank, operation, amount):
    hold_id = hold(bank, 100)
    request, principal = {
        "mint": (Mint(rid(), "vo-atlas", amount), ADMIN),
        "retire": (Retire(rid(), "vo-atlas", amount), ADMIN),
        "transfer": (Transfer(rid(), "vo-atlas", "site-north", amount), MEMBER),
        "hold": (CreateHold(rid(), "vo-atlas", amount, NOW_US + SECOND_US), MEMBER),
        "extend": (ExtendHold(rid(), hold_id, amount=amount), MEMBER),
        "charge": (ChargeHold(rid(), hold_id, "site-north", amount), MEMBER),
    }[operation]
    if operation == "extend" and amount is None:
        refused("InvalidArgument", bank, request, principal)
    else:
        refused("InvalidAmount", bank, request, principal)


def test_the_largest_amount_is_accepted(bank):
    big = MemoryLedger(sign=sign)
    big.run(CreateAccount(rid(), "a", "p", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    big.run(Mint(rid(), "a", ledger.AMOUNT_MAX), principal=ADMIN, now_us=NOW_US)
    assert big.accounts["a"].balance == 10**15


# ---------------------------------------------------------------------------------------------
# Authorization matrix: every operation × every kind of caller

ALL = set(ROLES)


def _operation_cases():
    """name → (allowed caller names, function(bank) -> request)."""

    def unfreeze(bank):
        bank.run(SetStatus(rid(), "vo-atlas", AccountStatus.FROZEN), principal=ADMIN, now_us=NOW_US)
        return SetStatus(rid(), "vo-atlas", AccountStatus.OPEN)

    def due_hold(bank):
        hold_id = hold(bank, 10, lifetime_us=SECOND_US)
        return ExpireHold(rid(), hold_id)

    def pending_mint(bank):  # requested by ADMIN: its requester may cancel it as well as any other administrator
        return bank.run(Mint(rid(), "vo-atlas", 20_000), principal=ADMIN, now_us=NOW_US).transaction.pending_mint_id

    return {
        "create-account": ({"admin"}, lambda bank: CreateAccount(rid(), "vo-new", "new", OWNER.dn)),
        # Administrators may give the viewer role only: never a spending one (to anyone, themselves included).
        "set-holder-member": ({"owner", "manager"}, lambda bank: SetHolder(rid(), "vo-atlas", "/CN=new", Role.MEMBER)),
        "set-holder-manager": ({"owner"}, lambda bank: SetHolder(rid(), "vo-atlas", "/CN=new", Role.MANAGER)),
        "set-holder-viewer": ({"owner", "manager", "admin"},
                              lambda bank: SetHolder(rid(), "vo-atlas", "/CN=new", Role.VIEWER)),
        "promote-member-to-owner": ({"owner"}, lambda bank: SetHolder(rid(), "vo-atlas", MEMBER.dn, Role.OWNER)),
        "demote-member-to-viewer": ({"owner", "manager", "admin"},
                                    lambda bank: SetHolder(rid(), "vo-atlas", MEMBER.dn, Role.VIEWER)),
        "remove-viewer": ({"owner", "manager", "admin"}, lambda bank: RemoveHolder(rid(), "vo-atlas", VIEWER.dn)),
        "remove-manager": ({"owner", "admin"}, lambda bank: RemoveHolder(rid(), "vo-atlas", MANAGER.dn)),
        "freeze": ({"owner", "admin"}, lambda bank: SetStatus(rid(), "vo-atlas", AccountStatus.FROZEN)),
        "unfreeze": ({"admin"}, unfreeze),
        "set-credit-limit": ({"admin"}, lambda bank: SetCreditLimit(rid(), "vo-atlas", 50)),
        "set-spending-limit": ({"owner", "manager", "admin"},
                               lambda bank: SetSpendingLimit(rid(), "vo-atlas", 50, 3600 * SECOND_US)),
        "mint": ({"admin"}, lambda bank: Mint(rid(), "vo-atlas", 5)),
        "retire": ({"admin"}, lambda bank: Retire(rid(), "vo-atlas", 5)),
        "transfer": ({"owner", "manager", "member"}, lambda bank: Transfer(rid(), "vo-atlas", "site-north", 5)),
        "hold": ({"owner", "manager", "member"},
                 lambda bank: CreateHold(rid(), "vo-atlas", 5, NOW_US + SECOND_US)),
        # A hold the member created: its creator and the account's owner and manager control it.
        "extend": ({"owner", "manager", "member"}, lambda bank: ExtendHold(rid(), hold(bank), amount=150)),
        "charge": ({"owner", "manager", "member"}, lambda bank: ChargeHold(rid(), hold(bank), "site-north", 5)),
        "settle": ({"owner", "manager", "member"}, lambda bank: SettleHold(rid(), hold(bank), "site-north", 5)),
        "release": ({"owner", "manager", "member", "admin"}, lambda bank: ReleaseHold(rid(), hold(bank))),
        "expire-when-due": (ALL, due_hold),
        "cancel-mint": ({"admin"}, lambda bank: CancelMint(rid(), pending_mint(bank))),
        "expire-mint-when-due": (ALL, lambda bank: ExpireMint(rid(), pending_mint(bank))),
    }


NOW_BY_OPERATION = {"expire-when-due": NOW_US + 2 * SECOND_US, "expire-mint-when-due": NOW_US + MINT_APPROVAL_US}


OPERATIONS = _operation_cases()


@pytest.mark.parametrize("caller", sorted(ROLES))
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_authorization_matrix(bank, operation, caller):
    allowed, make = OPERATIONS[operation]
    request = make(bank)
    now_us = NOW_BY_OPERATION.get(operation, NOW_US)
    if caller in allowed:
        outcome = bank.run(request, principal=ROLES[caller], now_us=now_us)
        assert outcome.transaction.principal_dn == ROLES[caller].dn
    else:
        error = refused("NotAuthorized", bank, request, ROLES[caller], now_us)
        assert ROLES[caller].dn in str(error)


def test_approve_mint_matrix(bank):
    for caller in sorted(ROLES):
        pending_id = bank.run(Mint(rid(), "vo-atlas", 20_000), principal=ADMIN_TWO,
                              now_us=NOW_US).transaction.pending_mint_id
        if caller == "admin":
            bank.run(ApproveMint(rid(), pending_id), principal=ADMIN, now_us=NOW_US)
        else:
            refused("NotAuthorized", bank, ApproveMint(rid(), pending_id), ROLES[caller])


def test_service_identity_controls_only_holds_it_created_or_collects(bank):
    bank.run(SetHolder(rid(), "vo-atlas", SERVICE.dn, Role.MEMBER), principal=OWNER, now_us=NOW_US)
    own = hold(bank, 100, principal=SERVICE)
    bank.run(ChargeHold(rid(), own, "site-north", 10), principal=SERVICE, now_us=NOW_US)
    bank.run(ReleaseHold(rid(), own), principal=SERVICE, now_us=NOW_US)
    refused("NotAuthorized", bank, Transfer(rid(), "vo-atlas", "site-north", 1), SERVICE)  # pays only via holds
    collected = hold(bank, 100, principal=MEMBER, collector=SERVICE.dn)
    bank.run(ChargeHold(rid(), collected, "site-north", 100), principal=SERVICE, now_us=NOW_US)
    others = hold(bank, 100, principal=MEMBER)
    refused("NotAuthorized", bank, ChargeHold(rid(), others, "site-north", 1), SERVICE)
    refused("NotAuthorized", bank, ReleaseHold(rid(), others), SERVICE)
    # Even as an owner of the account, a service identity acts only on its own holds.
    bank.run(SetHolder(rid(), "vo-atlas", SERVICE.dn, Role.OWNER), principal=OWNER, now_us=NOW_US)
    refused("NotAuthorized", bank, ChargeHold(rid(), others, "site-north", 1), SERVICE)
    # A member may not charge another member's hold; the manager may.
    bank.run(SetHolder(rid(), "vo-atlas", STRANGER.dn, Role.MEMBER), principal=OWNER, now_us=NOW_US)
    refused("NotAuthorized", bank, ChargeHold(rid(), others, "site-north", 1), STRANGER)
    bank.run(ChargeHold(rid(), others, "site-north", 1), principal=MANAGER, now_us=NOW_US)


# ---------------------------------------------------------------------------------------------
# Hash chain and canonical form


def test_canonical_bytes_and_hash_are_as_documented(bank):
    transaction = bank.transactions[-1]
    body = {name: (value.value if hasattr(value, "value") else value)
            for name, value in ((field.name, getattr(transaction, field.name))
                                for field in dataclasses.fields(transaction))
            if value is not None and name not in ("hash", "signature")}
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert ledger_chain.canonical_bytes(transaction) == expected
    assert transaction.hash == hashlib.sha256(expected).hexdigest()
    assert transaction.prev_hash == bank.transactions[-2].hash and bank.transactions[0].prev_hash == "0" * 64
    assert verify(ledger_chain.signing_input(transaction.hash), base64.b64decode(transaction.signature))
    assert [transaction.seq for transaction in bank.transactions] == list(range(1, len(bank.transactions) + 1))


def test_ed25519_signing_and_audit():
    key = Ed25519PrivateKey.generate()
    public = key.public_key()

    def ed_verify(message: bytes, signature: bytes) -> bool:
        try:
            public.verify(signature, message)
            return True
        except InvalidSignature:
            return False

    bank = MemoryLedger(sign=key.sign)
    bank.run(CreateAccount(rid(), "a", "p", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    bank.run(Mint(rid(), "a", 10), principal=ADMIN, now_us=NOW_US)
    report = bank.audit(ed_verify, signature_check_interval=1)
    assert report.clean and report.signatures_checked == 2
    other_key = Ed25519PrivateKey.generate()
    forged = dataclasses.replace(bank.transactions[1], signature=base64.b64encode(
        other_key.sign(ledger_chain.signing_input(bank.transactions[1].hash))).decode())
    bank.transactions[1] = forged
    assert bank.audit(ed_verify).seqs("bad-signature") == {2}


# ---------------------------------------------------------------------------------------------
# Audit: tampering behind the bank's back is named by seq


@pytest.fixture
def busy_bank(bank) -> MemoryLedger:
    bank.run(SetCreditLimit(rid(), "vo-atlas", 100), principal=ADMIN, now_us=NOW_US)
    for number in range(10):
        hold_id = hold(bank, 50)
        bank.run(ChargeHold(rid(), hold_id, "site-north", 20), principal=MEMBER, now_us=NOW_US)
        if number % 2:
            bank.run(ReleaseHold(rid(), hold_id), principal=MEMBER, now_us=NOW_US)
        else:
            bank.run(ChargeHold(rid(), hold_id, "site-north", 30), principal=MEMBER, now_us=NOW_US)
        bank.run(Transfer(rid(), "vo-atlas", "site-north", 3), principal=MEMBER, now_us=NOW_US)
    hold(bank, 40)
    bank.run(Retire(rid(), "site-north", 5), principal=ADMIN, now_us=NOW_US)
    report = bank.audit(verify)
    assert report.clean, report.findings
    assert report.transaction_count == len(bank.transactions) > 40
    return bank


def audit_of(bank: MemoryLedger, transactions=None, **options) -> ledger.AuditReport:
    return ledger.audit(bank.transactions if transactions is None else transactions, bank.accounts.values(),
                        bank.holds.values(), bank.supply, verify, head=bank.ledger_head, **options)


def test_audit_names_an_edited_transaction(busy_bank):
    transactions = list(busy_bank.transactions)
    transactions[19] = dataclasses.replace(transactions[19], amount=transactions[19].amount + 1)
    report = audit_of(busy_bank, transactions)
    assert report.seqs("edited") == {20}
    assert not report.clean


def test_audit_names_an_edit_with_recomputed_hash(busy_bank):
    transactions = list(busy_bank.transactions)
    edited = dataclasses.replace(transactions[19], amount=transactions[19].amount + 1)
    transactions[19] = dataclasses.replace(edited, hash=ledger_chain.transaction_hash(edited))
    report = audit_of(busy_bank, transactions, signature_check_interval=1000)
    assert report.seqs("bad-signature") == {20}
    assert report.seqs("chain-broken") == {21}
    assert not report.seqs("edited")


def test_audit_names_a_rechained_forgery_between_checkpoints(busy_bank):
    """Edit one transaction and recompute every hash after it: only signatures can tell."""
    transactions = list(busy_bank.transactions)
    previous_hash = transactions[9].hash
    for index in range(10, len(transactions)):
        changed = dataclasses.replace(transactions[index], prev_hash=previous_hash, hash="")
        if index == 10:
            changed = dataclasses.replace(changed, principal_dn="/CN=Mallory")
        digest = ledger_chain.transaction_hash(changed)
        transactions[index] = dataclasses.replace(changed, hash=digest)
        previous_hash = digest
    report = ledger.audit(transactions, busy_bank.accounts.values(), busy_bank.holds.values(), busy_bank.supply,
                          verify, head=ledger.LedgerHead(transactions[-1].seq, transactions[-1].hash),
                          signature_check_interval=1000)
    assert report.seqs("bad-signature") == set(range(11, len(transactions) + 1))
    assert not report.seqs("edited") and not report.seqs("chain-broken")


def test_audit_names_a_deleted_transaction(busy_bank):
    transactions = [transaction for transaction in busy_bank.transactions if transaction.seq != 17]
    report = audit_of(busy_bank, transactions)
    assert report.seqs("deleted") == {17}
    assert not report.seqs("edited") and not report.seqs("reordered") and not report.seqs("inserted")


def test_audit_names_deleted_transactions_at_the_end(busy_bank):
    transactions = busy_bank.transactions[:-2]
    report = audit_of(busy_bank, transactions)
    assert report.seqs("deleted") == {len(busy_bank.transactions) - 1}
    assert any("ledger head" in finding.message for finding in report.findings)


def test_audit_names_reordered_transactions(busy_bank):
    transactions = list(busy_bank.transactions)
    transactions[24], transactions[25] = transactions[25], transactions[24]
    report = audit_of(busy_bank, transactions)
    assert report.seqs("reordered") == {25}
    assert not report.seqs("deleted") and not report.seqs("edited")


def test_audit_names_renumbered_reordering(busy_bank):
    """Swap the contents of two documents and renumber them, as a store edit by id would."""
    transactions = list(busy_bank.transactions)
    first, second = transactions[24], transactions[25]
    transactions[24] = dataclasses.replace(second, seq=first.seq)
    transactions[25] = dataclasses.replace(first, seq=second.seq)
    report = audit_of(busy_bank, transactions)
    assert report.seqs("edited") == {25, 26}


def test_audit_names_an_inserted_transaction(busy_bank):
    transactions = list(busy_bank.transactions)
    copy = dataclasses.replace(transactions[29], amount=1)
    copy = dataclasses.replace(copy, hash=ledger_chain.transaction_hash(copy))
    transactions.insert(30, copy)
    report = audit_of(busy_bank, transactions)
    assert report.seqs("inserted") == {30}
    assert 30 in report.seqs("bad-signature")


def test_audit_names_a_forged_appended_transaction(busy_bank):
    head = busy_bank.ledger_head
    forged = ledger.Transaction(seq=head.seq + 1, kind=ledger.TransactionKind.MINT, at_us=NOW_US,
                                request_id="x", principal_dn=ADMIN.dn, account_id="vo-atlas", amount=10**6)
    forged, _ = ledger.seal(forged, head, lambda message: b"not the bank's key")
    report = audit_of(busy_bank, [*busy_bank.transactions, forged])
    assert report.seqs("bad-signature") == {forged.seq}


def test_audit_detects_broken_invariants(busy_bank):
    bank = busy_bank
    account = bank.accounts["site-north"]
    bank.accounts["site-north"] = dataclasses.replace(account, balance=account.balance + 1)
    messages = [finding.message for finding in bank.audit(verify).findings]
    assert any("differs from its transactions" in message for message in messages)
    assert any("balances add up to" in message for message in messages)
    bank.accounts["site-north"] = account

    bank.supply = dataclasses.replace(bank.supply, issued=bank.supply.issued + 7)
    assert any("money supply document" in finding.message for finding in bank.audit(verify).findings)
    bank.supply = dataclasses.replace(bank.supply, issued=bank.supply.issued - 7)

    some_hold = next(hold for hold in bank.holds.values() if hold.state is HoldState.RELEASED)
    bank.holds[some_hold.hold_id] = dataclasses.replace(some_hold, charged=some_hold.amount + 1)
    assert any(f"hold {some_hold.hold_id} is charged" in finding.message for finding in bank.audit(verify).findings)
    bank.holds[some_hold.hold_id] = some_hold

    atlas = bank.accounts["vo-atlas"]
    bank.accounts["vo-atlas"] = dataclasses.replace(atlas, held=atlas.balance + atlas.credit_limit + 1)
    assert any("more than balance" in finding.message for finding in bank.audit(verify).findings)
    bank.accounts["vo-atlas"] = atlas
    assert bank.audit(verify).clean


def test_audit_detects_a_hold_ended_twice_even_when_signed(busy_bank):
    """A buggy (or malicious) bank signs a second end of the same hold: the replay catches it."""
    bank = busy_bank
    released = next(hold for hold in bank.holds.values() if hold.state is HoldState.RELEASED)
    again = ledger.Transaction(seq=bank.ledger_head.seq + 1, kind=ledger.TransactionKind.RELEASE, at_us=NOW_US,
                               request_id="again", principal_dn=MEMBER.dn, account_id=released.account_id,
                               amount=released.remaining, hold_id=released.hold_id,
                               hold_state=HoldState.RELEASED)
    again, head = ledger.seal(again, bank.ledger_head, sign)
    report = ledger.audit([*bank.transactions, again], bank.accounts.values(), bank.holds.values(), bank.supply,
                          verify, head=head)
    assert any(finding.seq == again.seq and "again" in finding.message for finding in report.findings)


def test_audit_replays_pending_mints(bank):
    """Each pending mint ends once, by the kind its expiry allows, as its stored document says."""
    approved, cancelled, expired, waiting = (request_mint(bank) for _ in range(4))
    bank.run(ApproveMint(rid(), approved), principal=ADMIN_TWO, now_us=NOW_US + 1)
    bank.run(CancelMint(rid(), cancelled), principal=ADMIN, now_us=NOW_US + 1)
    bank.run(ExpireMint(rid(), expired), principal=STRANGER, now_us=NOW_US + MINT_APPROVAL_US)
    assert bank.audit(verify).clean

    def audit_with(*extra, pending=None) -> list[ledger.AuditFinding]:
        transactions, head = list(bank.transactions), bank.ledger_head
        for entry in extra:
            entry = dataclasses.replace(entry, seq=head.seq + 1)
            sealed, head = ledger.seal(entry, head, sign)
            transactions.append(sealed)
        stored = {**bank.pending_mints, **(pending or {})}
        return list(ledger.audit(transactions, bank.accounts.values(), bank.holds.values(), bank.supply, verify,
                                 head=head, pending_mints=stored.values()).findings)

    def end(kind, pending_id, at_us=NOW_US + 2):
        return ledger.Transaction(seq=0, kind=kind, at_us=at_us, request_id=rid(), principal_dn=ADMIN_TWO.dn,
                                  account_id="vo-atlas", amount=20_000, pending_mint_id=pending_id)

    # A second end of one pending mint, signed by a buggy bank: named, whichever kind it is.
    for kind in (ledger.TransactionKind.MINT_CANCEL, ledger.TransactionKind.MINT_EXPIRE):
        findings = audit_with(end(kind, approved, NOW_US + MINT_APPROVAL_US))
        assert any(f"ends pending mint {approved} again" in finding.message for finding in findings), findings
    # An approval after the expiry, an expiry before it.
    findings = audit_with(end(ledger.TransactionKind.MINT_CANCEL, waiting, NOW_US + MINT_APPROVAL_US))
    assert any("it expires at" in finding.message for finding in findings), findings
    findings = audit_with(end(ledger.TransactionKind.MINT_EXPIRE, waiting, NOW_US + MINT_APPROVAL_US - 1))
    assert any("it expires at" in finding.message for finding in findings), findings
    # A stored pending mint edited behind the bank's back: said approved although it expired.
    edited = dataclasses.replace(bank.pending_mints[expired], state=PendingMintState.APPROVED)
    findings = audit_with(pending={expired: edited})
    assert any(f"pending mint {expired} differs" in finding.message for finding in findings), findings
    # …or deleted.
    kept = [pending for pending in bank.pending_mints.values() if pending.pending_mint_id != waiting]
    findings = ledger.audit(bank.transactions, bank.accounts.values(), bank.holds.values(), bank.supply, verify,
                            head=bank.ledger_head, pending_mints=kept).findings
    assert any(f"pending mint {waiting} is in the transactions" in finding.message for finding in findings), findings


def test_audit_over_xml_documents(busy_bank):
    stored = [documents.to_xml(transaction) for transaction in busy_bank.transactions]
    stored[5] = stored[5].replace(b"<amount>1000</amount>", b"<amount>1001</amount>")
    report = ledger.audit(documents.transactions_from_xml(stored), busy_bank.accounts.values(),
                          busy_bank.holds.values(), busy_bank.supply, verify, head=busy_bank.ledger_head)
    assert report.seqs("edited") == {6}


def test_audit_of_a_long_ledger_is_clean_and_linear():
    """9,003 transactions audit clean. The speed target (1,000,000 in under 60 s) is bench/audit.py's to
    measure: CPU per transaction here ranged 15-61 µs with the machine's load, so a unit test only guards
    against an audit that grows worse than linearly (that would cost milliseconds per transaction here)."""
    bank = MemoryLedger(sign=sign)
    bank.run(CreateAccount(rid(), "a", "p", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    bank.run(CreateAccount(rid(), "b", "p", OWNER.dn), principal=ADMIN, now_us=NOW_US)
    bank.run(Mint(rid(), "a", 10**12), principal=ADMIN, now_us=NOW_US)
    for _ in range(3000):
        hold_id = bank.run(CreateHold(rid(), "a", 100, NOW_US + SECOND_US, "job"), principal=OWNER,
                           now_us=NOW_US).transaction.hold_id
        bank.run(ChargeHold(rid(), hold_id, "b", 60), principal=OWNER, now_us=NOW_US)
        bank.run(ReleaseHold(rid(), hold_id), principal=OWNER, now_us=NOW_US)
    started = time.process_time()          # CPU time: other work on a shared machine does not count
    report = bank.audit(verify)
    elapsed_s = time.process_time() - started
    assert report.clean and report.transaction_count == 9003
    assert report.issued == 10**12 and report.retired == 0
    assert elapsed_s / report.transaction_count < 1e-3, elapsed_s


# ---------------------------------------------------------------------------------------------
# Documents


def test_documents_round_trip_and_xpath(busy_bank):
    bank = busy_bank
    bank.run(Mint(rid(), "vo-atlas", 20_000), principal=ADMIN, now_us=NOW_US)
    bank.run(SetSpendingLimit(rid(), "vo-atlas", 10, 60 * SECOND_US), principal=OWNER, now_us=NOW_US)
    states = [*bank.accounts.values(), *bank.holds.values(), *bank.pending_mints.values(), bank.supply,
              bank.ledger_head, *bank.request_records.values(), *bank.transactions]
    assert bank.pending_mints
    for state in states:
        data = documents.to_xml(state)
        assert documents.from_xml(data) == state
        assert documents.from_xml(data, type(state)) == state
    charges = [etree.fromstring(documents.to_xml(transaction)) for transaction in bank.transactions]
    matching = [element for element in charges
                if element.xpath("/t:Transaction[t:kind='charge' and t:amount > 25]", namespaces=documents.NAMESPACES)]
    assert len(matching) == 5
    atlas = etree.fromstring(documents.to_xml(bank.accounts["vo-atlas"]))
    assert atlas.xpath("string(t:holders/t:holder[@role='owner'])", namespaces=documents.NAMESPACES) == OWNER.dn


def test_documents_decoding_is_strict(bank):
    data = documents.to_xml(bank.accounts["vo-atlas"])
    with pytest.raises(StoreError):
        documents.from_xml(data.replace(b"<balance>1000</balance>", b"<balance>1e3</balance>"))
    with pytest.raises(StoreError):
        documents.from_xml(data.replace(b"<status>open</status>", b"<status>opened</status>"))
    with pytest.raises(StoreError):
        documents.from_xml(data.replace(b"<balance>", b"<extra>1</extra><balance>"))
    with pytest.raises(StoreError):
        documents.from_xml(data.replace(b"<balance>1000</balance>", b""))
    with pytest.raises(StoreError):
        documents.from_xml(data, ledger.Hold)
    with pytest.raises(StoreError):
        documents.from_xml(b"<!DOCTYPE x [<!ENTITY e 'boom'>]><x>&e;</x>")
    with pytest.raises(StoreError):
        documents.from_xml(b"<Account xmlns='urn:other'/>")


# ---------------------------------------------------------------------------------------------
# The two document readers give one answer: the scanner reads only what the parser reads the same


def _outcome(read):
    try:
        return "state", read()
    except StoreError as error:
        return "refused", str(error)


def _both_readers_agree(data: bytes, cls: type) -> None:
    by_parser = _outcome(lambda: documents.from_element(documents.parse(data), cls))
    assert _outcome(lambda: documents.from_xml(data, cls)) == by_parser
    values = documents.flat_fields(data, cls)
    if values is not None:
        assert by_parser == ("state", cls(*values)), data


PLAIN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="&<>"), max_size=12)
ANY_TEXT = st.text(st.sampled_from(list("aZ09 /=:-_.'\"\t\n\r&<>]é€\x01\U0001F600")), max_size=12)
TEXTS = st.one_of(PLAIN_TEXT, ANY_TEXT, st.sampled_from(["", " ", "\n", "]]>", "&amp;", "a\rb"]))
NUMBERS = st.one_of(st.integers(-10**18, 10**18), st.sampled_from([0, -1, 10**19, 2**62]))


def _states(cls: type):
    """Random states of a flat document type, with texts plain or not."""
    fields = {}
    for field_name, _name, value_type, optional in documents._schema(cls):
        base = NUMBERS if value_type is int else TEXTS if value_type is str else st.sampled_from(list(value_type))
        fields[field_name] = st.one_of(st.none(), base) if optional else base
    return st.builds(cls, **fields)


def _is_plain(state) -> bool:
    """Every text printable ASCII without markup characters: the store's form the scanner reads."""
    return all(type(value) is not str or (value.isascii() and value.isprintable() and not {"&", "<", ">"} & set(value))
               for value in (getattr(state, field.name) for field in dataclasses.fields(state)))


FLAT_TYPES = (ledger.Transaction, ledger.Hold, ledger.PendingMint, ledger.RequestRecord, ledger.LedgerHead,
              ledger.MoneySupply)
MUTATIONS = [b" ", b"\n", b"<!-- c -->", b"<?pi x?>", b"&amp;", b"&#65;", b"\r", b"]]>", b"\xc3\xa9", b"\xff",
             b"<seq>1</seq>", b"<amount/>", b"<x>1</x>", b"</Transaction>", b"<", b">", b"a", b"'", b"\t", b"\x00"]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_direct_writer_writes_the_stores_form_of_what_lxml_writes(data):
    cls = data.draw(st.sampled_from(FLAT_TYPES))
    state = data.draw(_states(cls))
    written = _outcome_of_writing(lambda: documents.to_xml(state))
    by_lxml = _outcome_of_writing(lambda: etree.tostring(documents.to_element(state), encoding="UTF-8",
                                                         xml_declaration=False))
    if type(written[1]) is NormalXml:                 # written directly: the store's form of lxml's bytes
        assert by_lxml[0] == "written" and written[1] == normalize(by_lxml[1])
        assert_vouched_bytes_are_normal(written[1])
    else:
        assert written == by_lxml
    if _is_plain(state):
        assert documents._flat_xml(state) is not None


def _outcome_of_writing(write):
    try:
        return "written", write()
    except ValueError as error:          # lxml: a string that is not XML compatible
        return "refused", str(error)


def _stored_document(data) -> tuple[type, object, bytes | None]:
    """A random state of a flat type and its document as the store keeps it (lxml's serialization);
    None for a state that is not XML at all (a control character): it is never stored."""
    cls = data.draw(st.sampled_from(FLAT_TYPES))
    state = data.draw(_states(cls))
    try:
        return cls, state, normalize(documents.to_xml(state))
    except (StoreError, ValueError):
        return cls, state, None


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_document_readers_agree_on_store_documents(data):
    cls, state, stored = _stored_document(data)
    if stored is None:
        return
    _both_readers_agree(stored, cls)
    if _is_plain(state):
        assert documents.flat_fields(stored, cls) is not None, stored     # the scanner does read it


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_document_readers_agree_on_edited_documents(data):
    cls, _state, stored = _stored_document(data)
    if stored is None:
        return
    stored = bytearray(stored)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(stored)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        snippet = data.draw(st.sampled_from(MUTATIONS))
        if action == "insert":
            stored[position:position] = snippet
        elif action == "delete":
            del stored[position:position + data.draw(st.integers(1, 12))]
        elif action == "replace":
            stored[position:position + len(snippet)] = snippet
        else:
            start = stored.find(b"<", position)
            end = stored.find(b">", stored.find(b"</", start)) + 1 if start >= 0 else -1
            if 0 <= start < end:
                stored[end:end] = stored[start:end]
    _both_readers_agree(bytes(stored), cls)


RAW_TEXTS = [b"", b"1", b"-0", b"007", b"12a", b" 5", b"&amp;", b"&#65;", b"&#x20;", b"a&lt;b", b"]]&gt;", b"x]]y",
             b"\t", b"\n", b"\r\n", b"\xc3\xa9", b"active", b"released", b"pending", b"mint", b"charge", b"Ab ."]
SEPARATORS = [b"", b"", b"", b" ", b"\n", b"<!--c-->", b"<?p?>"]


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_document_readers_agree_on_rebuilt_documents(data):
    """Documents rebuilt element by element: dropped, repeated, reordered, renamed or re-texted
    elements, other spellings of the root and of empty elements, white space and comments between."""
    cls, _state, stored = _stored_document(data)
    if stored is None:
        return
    names = [name.encode() for _field, name, _type, _optional in documents._schema(cls)]
    elements = re.findall(rb"<([A-Za-z]+)(?:/>|>([^<]*)</\1>)", stored.split(b">", 1)[1])
    elements = [list(element) for element in elements]
    for _ in range(data.draw(st.integers(0, 3))):
        if not elements:
            break
        index = data.draw(st.integers(0, len(elements) - 1))
        action = data.draw(st.sampled_from(["drop", "repeat", "swap", "rename", "text"]))
        if action == "drop":
            del elements[index]
        elif action == "repeat":
            elements.insert(index, list(elements[index]))
        elif action == "swap":
            other = data.draw(st.integers(0, len(elements) - 1))
            elements[index], elements[other] = elements[other], elements[index]
        elif action == "rename":
            elements[index][0] = data.draw(st.sampled_from(names + [b"extra", b"Seq"]))
        else:
            elements[index][1] = data.draw(st.sampled_from(RAW_TEXTS))
    parts = []
    for name, text in elements:
        parts.append(data.draw(st.sampled_from(SEPARATORS)))
        if not text and data.draw(st.booleans()):
            parts.append(b"<" + name + b"/>")
        else:
            parts.append(b"<" + name + b">" + text + b"</" + name + b">")
    root = cls.__name__.encode()
    start = data.draw(st.sampled_from([b'<%s xmlns="urn:gridcredit:bank:1">', b"<%s xmlns='urn:gridcredit:bank:1'>",
                                       b'<%s  xmlns="urn:gridcredit:bank:1">', b'<%s xmlns="urn:other">',
                                       b'<%s xmlns="urn:gridcredit:bank:1" a="1">']))
    _both_readers_agree(start % root + b"".join(parts) + b"</" + root + b">", cls)


# ---------------------------------------------------------------------------------------------
# A hold's power follows the right to spend (issue 10.1) and administrators move no one's money (10.2)


def test_a_removed_or_demoted_creator_loses_power_over_their_holds(bank):
    for take_away in (lambda: RemoveHolder(rid(), "vo-atlas", MEMBER.dn),
                      lambda: SetHolder(rid(), "vo-atlas", MEMBER.dn, Role.VIEWER)):
        if bank.accounts["vo-atlas"].role_of(MEMBER.dn) is not Role.MEMBER:
            bank.run(SetHolder(rid(), "vo-atlas", MEMBER.dn, Role.MEMBER), principal=OWNER, now_us=NOW_US)
        hold_id = hold(bank, 100, principal=MEMBER)
        bank.run(take_away(), principal=OWNER, now_us=NOW_US)
        # Before the fix the former member could raise the hold to everything and charge it anywhere.
        refused("NotAuthorized", bank, ExtendHold(rid(), hold_id, amount=bank.accounts["vo-atlas"].available), MEMBER)
        refused("NotAuthorized", bank, ExtendHold(rid(), hold_id, expires_at_us=NOW_US + 120 * SECOND_US), MEMBER)
        refused("NotAuthorized", bank, ChargeHold(rid(), hold_id, "site-north", 100), MEMBER)
        refused("NotAuthorized", bank, ReleaseHold(rid(), hold_id), MEMBER)
        # The hold stays, reserved, for the account's owners and managers.
        assert bank.holds[hold_id].state is HoldState.ACTIVE
        bank.run(ChargeHold(rid(), hold_id, "site-north", 30), principal=MANAGER, now_us=NOW_US)
        bank.run(ReleaseHold(rid(), hold_id), principal=OWNER, now_us=NOW_US)
        assert bank.holds[hold_id].state is HoldState.RELEASED


def test_a_collector_takes_only_what_a_spender_authorized(bank):
    bank.run(CreateAccount(rid(), "site-south", "south", "/DC=org/CN=South Admin"), principal=ADMIN, now_us=NOW_US)
    bank.run(CreateAccount(rid(), "stan", "stan", STRANGER.dn), principal=ADMIN, now_us=NOW_US)
    refused("InvalidArgument", bank, CreateHold(rid(), "vo-atlas", 100, NOW_US + SECOND_US, "", STRANGER.dn), MEMBER)
    refused("InvalidArgument", bank, CreateHold(rid(), "vo-atlas", 100, NOW_US + SECOND_US, "", MEMBER.dn,
                                                "site-north"), MEMBER)
    refused("InvalidArgument", bank, CreateHold(rid(), "vo-atlas", 100, NOW_US + SECOND_US, "", None, "vo-atlas"),
            MEMBER)
    refused("UnknownAccount", bank, CreateHold(rid(), "vo-atlas", 100, NOW_US + SECOND_US, "", STRANGER.dn, "nowhere"),
            MEMBER)
    hold_id = hold(bank, 100, principal=MEMBER, collector=STRANGER.dn, payee="site-north")
    assert bank.holds[hold_id].payee_account_id == "site-north"
    assert bank.transactions[-1].payee_account_id == "site-north"
    # The collector cannot raise the hold, re-address it, or charge it anywhere but the payee.
    refused("NotAuthorized", bank, ExtendHold(rid(), hold_id, amount=900), STRANGER)
    refused("NotAuthorized", bank, ExtendHold(rid(), hold_id, payee_account_id="stan"), STRANGER)
    refused("NotAuthorized", bank, ChargeHold(rid(), hold_id, "stan", 10), STRANGER)
    refused("ExceedsHold", bank, ChargeHold(rid(), hold_id, "site-north", 101), STRANGER)
    bank.run(ExtendHold(rid(), hold_id, expires_at_us=NOW_US + 120 * SECOND_US), principal=STRANGER, now_us=NOW_US)
    bank.run(ChargeHold(rid(), hold_id, "site-north", 60), principal=STRANGER, now_us=NOW_US)
    # A spender changes the payee; from then on the charges go there only — for spenders too.
    bank.run(ExtendHold(rid(), hold_id, payee_account_id="site-south"), principal=MEMBER, now_us=NOW_US)
    refused("NotAuthorized", bank, ChargeHold(rid(), hold_id, "site-north", 10), STRANGER)
    refused("NotAuthorized", bank, ChargeHold(rid(), hold_id, "site-north", 10), OWNER)
    bank.run(ChargeHold(rid(), hold_id, "site-south", 10), principal=STRANGER, now_us=NOW_US)
    # The creator removed: the collector still takes what was authorized, no more; the owners may release.
    bank.run(RemoveHolder(rid(), "vo-atlas", MEMBER.dn), principal=OWNER, now_us=NOW_US)
    refused("NotAuthorized", bank, ExtendHold(rid(), hold_id, amount=500), STRANGER)
    bank.run(ChargeHold(rid(), hold_id, "site-south", 10), principal=STRANGER, now_us=NOW_US)
    bank.run(ReleaseHold(rid(), hold_id), principal=OWNER, now_us=NOW_US)
    assert (bank.holds[hold_id].charged, bank.holds[hold_id].state) == (80, HoldState.RELEASED)
    assert (bank.accounts["site-north"].balance, bank.accounts["site-south"].balance, bank.accounts["stan"].balance) \
        == (60, 20, 0)


def test_administrators_cannot_make_anyone_a_spender(bank):
    for dn in (ADMIN.dn, ADMIN_TWO.dn, STRANGER.dn, "/DC=org/DC=grid/CN=Ada Admin/CN=second identity"):
        for role in (Role.OWNER, Role.MANAGER, Role.MEMBER):
            refused("NotAuthorized", bank, SetHolder(rid(), "vo-atlas", dn, role), ADMIN)
    refused("NotAuthorized", bank, SetHolder(rid(), "vo-atlas", VIEWER.dn, Role.MEMBER), ADMIN)   # no promotion
    # What administrators may do with holders moves nothing: viewers, demotions, removals.
    bank.run(SetHolder(rid(), "vo-atlas", ADMIN.dn, Role.VIEWER), principal=ADMIN, now_us=NOW_US)
    bank.run(SetHolder(rid(), "vo-atlas", MANAGER.dn, Role.VIEWER), principal=ADMIN, now_us=NOW_US)
    bank.run(RemoveHolder(rid(), "vo-atlas", MEMBER.dn), principal=ADMIN_TWO, now_us=NOW_US)
    refused("NotAuthorized", bank, Transfer(rid(), "vo-atlas", "site-north", 1), ADMIN)
    refused("NotAuthorized", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US + SECOND_US), ADMIN)
    assert bank.accounts["vo-atlas"].balance == 1000
    # An administrator who owns an account is its owner like anyone else.
    bank.run(CreateAccount(rid(), "ada", "ada", ADMIN.dn), principal=ADMIN, now_us=NOW_US)
    bank.run(SetHolder(rid(), "ada", STRANGER.dn, Role.MEMBER), principal=ADMIN, now_us=NOW_US)


@pytest.mark.parametrize("hidden", ["\u202e", "\u200b", "\u2066", "\ufeff", "\x00", "\u2028"])
def test_dns_and_references_with_hidden_characters_are_refused(bank, hidden):
    """A bidi override or zero-width character makes one DN look like another (issue 10.11)."""
    error = refused("InvalidArgument", bank, SetHolder(rid(), "vo-atlas", f"/DC=org/CN=Mel{hidden}Member", Role.VIEWER),
                    OWNER)
    assert "U+" in str(error)
    refused("InvalidArgument", bank, CreateAccount(rid(), "vo-x", "x", f"/CN=Olga{hidden}"), ADMIN)
    refused("InvalidArgument", bank, CreateHold(rid(), "vo-atlas", 1, NOW_US + SECOND_US, f"job{hidden}1"), MEMBER)
    with pytest.raises(DomainError):
        bank.run(Mint(rid(), "vo-atlas", 1), principal=Principal(f"/CN=Ada{hidden}", is_administrator=True),
                 now_us=NOW_US)


def test_a_large_retirement_waits_for_a_second_administrator(bank):
    """Retiring credits stays possible for administrators, in the open — above the approval threshold
    only with a second administrator, like a mint (issue 10.2)."""
    bank.run(Mint(rid(), "vo-atlas", 10_000), principal=ADMIN, now_us=NOW_US)
    requested = bank.run(Retire(rid(), "vo-atlas", 10_500), principal=ADMIN, now_us=NOW_US).transaction
    assert (requested.kind, requested.account_id, requested.amount) == (ledger.TransactionKind.RETIRE_REQUEST,
                                                                       "vo-atlas", 10_500)
    pending_id = requested.pending_mint_id
    assert pending_id.startswith("retire-") and bank.pending_mints[pending_id].change is ledger.SupplyChange.RETIRE
    assert (bank.accounts["vo-atlas"].balance, bank.supply.retired) == (11_000, 0)        # nothing moved yet
    refused("SecondAdministratorRequired", bank, ApproveMint(rid(), pending_id), ADMIN)
    hold(bank, 600, principal=MEMBER)                    # the funds are checked again at approval
    refused("InsufficientFunds", bank, ApproveMint(rid(), pending_id), ADMIN_TWO)
    bank.run(ReleaseHold(rid(), next(iter(h for h in bank.holds if bank.holds[h].state is HoldState.ACTIVE))),
             principal=MEMBER, now_us=NOW_US)
    approved = bank.run(ApproveMint(rid(), pending_id), principal=ADMIN_TWO, now_us=NOW_US).transaction
    assert (approved.kind, approved.amount, approved.approver_dn) == (ledger.TransactionKind.RETIRE, 10_500,
                                                                      ADMIN_TWO.dn)
    assert (bank.accounts["vo-atlas"].balance, bank.supply.retired) == (500, 10_500)
    assert bank.pending_mints[pending_id].state is PendingMintState.APPROVED
    # Below the threshold a retirement is immediate, and either can be cancelled or expire like a mint.
    assert bank.run(Retire(rid(), "vo-atlas", 100), principal=ADMIN,
                    now_us=NOW_US).transaction.kind is ledger.TransactionKind.RETIRE
    bank.run(Mint(rid(), "site-north", 9_000), principal=ADMIN, now_us=NOW_US)
    bank.run(Mint(rid(), "site-north", 9_000), principal=ADMIN_TWO, now_us=NOW_US)
    cancelled = bank.run(Retire(rid(), "site-north", 10_001), principal=ADMIN, now_us=NOW_US).transaction
    bank.run(CancelMint(rid(), cancelled.pending_mint_id), principal=ADMIN_TWO, now_us=NOW_US)
    expiring = bank.run(Retire(rid(), "site-north", 10_002), principal=ADMIN, now_us=NOW_US).transaction
    refused("PendingMintExpired", bank, ApproveMint(rid(), expiring.pending_mint_id), ADMIN_TWO,
            NOW_US + MINT_APPROVAL_US)
    bank.run(ExpireMint(rid(), expiring.pending_mint_id), principal=ADMIN, now_us=NOW_US + MINT_APPROVAL_US)
    assert bank.accounts["site-north"].balance == 18_000
    assert [bank.pending_mints[p].state for p in (cancelled.pending_mint_id, expiring.pending_mint_id)] == [
        PendingMintState.CANCELLED, PendingMintState.EXPIRED]
    assert bank.audit(verify).clean
