"""The Bank over each store, in this process with a fake clock: pending mints that wait days.

A pending mint's expiry is counted in days (``bank.mint_approval_days``), too long for a test
against a running host; here the Bank runs over the real embedded store and a real BaseX server
with a clock the test moves: the sweep (``Bank.expire_due``) ends each due pending mint once,
cancelled, approved and expired ones move to their own collection, listing shows their state,
and the audit of the stored documents is clean — then names a pending mint edited behind the
bank's back. Concurrent requests share store transactions (group commit), each applied once.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from gridcredit.errors import ConfigError, DomainError
from gridcredit.services.bank.config import BankConfig
from gridcredit.services.bank import documents, ledger
from gridcredit.services.bank.bank import (PENDING_MINTS, PENDING_MINTS_ENDED, Bank, LedgerKey, audit_store,
                                           policy_from_config)

from store_fixtures import basex_server, store, store_spec  # noqa: F401 — fixtures

DAY_US = 86_400 * 1_000_000
START_US = 1_800_000_000 * 1_000_000
ADMIN = ledger.Principal("/CN=Admin One", is_administrator=True)
ADMIN_TWO = ledger.Principal("/CN=Admin Two", is_administrator=True)
OWNER = ledger.Principal("/CN=Owner")


class Clock:
    def __init__(self) -> None:
        self.now_us = START_US

    def __call__(self) -> int:
        return self.now_us


@pytest.fixture
def bank(store, tmp_path):  # noqa: F811 — the store fixture
    clock = Clock()
    policy = policy_from_config(BankConfig(approval_above=1000, mint_approval_days=2))
    bank = Bank(store, LedgerKey.load_or_create(tmp_path / "key.pem"), policy=policy, clock=clock)
    bank.clock = clock
    bank.execute(ledger.CreateAccount("a1", "vo", "p", OWNER.dn), ADMIN)
    return bank


def request_mint(bank: Bank, request_id: str, amount: int = 5000) -> str:
    transaction = bank.execute(ledger.Mint(request_id, "vo", amount), ADMIN).transaction
    assert transaction.kind is ledger.TransactionKind.MINT_REQUEST
    return transaction.pending_mint_id


def test_pending_mints_end_once_and_move_to_the_ended_collection(bank):
    approved, cancelled, expired, late = (request_mint(bank, f"m{n}") for n in range(4))
    listed = bank.pending_mints()
    assert [(p.pending_mint_id, p.state.value, p.expires_at_us) for p in listed.items] == [
        (pending_id, "pending", START_US + 2 * DAY_US) for pending_id in (approved, cancelled, expired, late)]
    bank.execute(ledger.ApproveMint("ok", approved), ADMIN_TWO)
    bank.execute(ledger.CancelMint("no", cancelled), ADMIN)
    bank.clock.now_us = START_US + 2 * DAY_US - 1
    assert bank.expire_due() == 0                      # not yet due
    bank.clock.now_us = START_US + 2 * DAY_US
    with pytest.raises(DomainError) as refused:
        bank.execute(ledger.ApproveMint("too-late", late), ADMIN_TWO)
    assert refused.value.code == "PendingMintExpired"
    assert bank.expire_due() == 2 and bank.expire_due() == 0   # each due one once; a second sweep finds none
    assert bank.store.query(PENDING_MINTS, "/*", {}).documents == []
    ended = {p.pending_mint_id: p for p in bank.pending_mints(ended=True).items}
    assert {pending_id: p.state.value for pending_id, p in ended.items()} == {
        approved: "approved", cancelled: "cancelled", expired: "expired", late: "expired"}
    assert (ended[approved].ended_by_dn, ended[cancelled].ended_by_dn) == (ADMIN_TWO.dn, ADMIN.dn)
    assert ended[expired].ended_by_dn == "gridcredit bank expiry sweeper"
    # Another worker's sweep sends the same request id: it answers the original and applies nothing.
    assert bank.execute(ledger.ExpireMint(f"expire-{late}", late),
                        ledger.Principal("gridcredit bank expiry sweeper", is_service=True)).replayed
    assert bank.money_supply().issued == 5000
    report = audit_store(bank.store, bank.key.public, signature_check_interval=1)
    assert report.clean, report.findings

    # Edited behind the bank's back: an expired pending mint said to be cancelled.
    document = bank.store.get(PENDING_MINTS_ENDED, documents.numbered_document_id(expired))
    edited = dataclasses.replace(documents.pending_mint_from_xml(document.xml),
                                 state=ledger.PendingMintState.CANCELLED)
    bank.store.put(PENDING_MINTS_ENDED, document.doc_id, documents.to_xml(edited))
    report = audit_store(bank.store, bank.key.public)
    assert [finding.kind for finding in report.findings] == ["invariant"]
    assert f"pending mint {expired} differs" in report.findings[0].message


def test_holds_and_pending_mints_list_in_the_order_they_were_made(bank):
    bank.execute(ledger.Mint("fund", "vo", 900), ADMIN)
    holds = [bank.execute(ledger.CreateHold(f"h{n}", "vo", 1, START_US + DAY_US, ""), OWNER).transaction.hold_id
             for n in range(12)]                        # hold-<seq>: one-digit and two-digit numbers
    assert holds[0] != sorted(holds)[0]                 # text order is not the order they were made
    assert [h.hold_id for h in bank.holds("vo", OWNER).items] == holds
    assert [h.hold_id for h in bank.holds("vo", OWNER, offset=5, limit=4).items] == holds[5:9]
    pending = [request_mint(bank, f"m{n}", 2000) for n in range(3)]
    assert [p.pending_mint_id for p in bank.pending_mints().items] == pending
    assert bank.hold(holds[0], OWNER).hold_id == holds[0]
    number = holds[0].split("-")[1]
    for other_spelling in (f"hold-0{number}", documents.numbered_document_id(holds[0])):
        with pytest.raises(DomainError) as unknown:
            bank.hold(other_spelling, OWNER)
        assert unknown.value.code == "UnknownHold"
        with pytest.raises(DomainError) as unknown:
            bank.execute(ledger.ReleaseHold(f"r-{other_spelling}", other_spelling), OWNER)
        assert unknown.value.code == "UnknownHold"
    bank.execute(ledger.ReleaseHold("r", holds[3]), OWNER)
    assert [h.hold_id for h in bank.holds("vo", OWNER, ended=True).items] == [holds[3]]


def test_mint_approval_days_are_bounded():
    assert policy_from_config(BankConfig()).mint_approval_duration_us == 7 * DAY_US
    for days in (0, -1, 367):
        with pytest.raises(ConfigError, match="mint_approval_days"):
            policy_from_config(BankConfig(mint_approval_days=days))


class SlowCommits:
    """The store, with every transaction taking 20 ms longer (a slow disk's fsync), counted."""

    def __init__(self, store) -> None:
        self._store, self.transactions = store, 0

    def transact(self, fn, **options):
        self.transactions += 1

        def slow(tx):
            result = fn(tx)
            time.sleep(0.02)
            return result
        return self._store.transact(slow, **options)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_concurrent_requests_commit_together_each_once(store, tmp_path):  # noqa: F811 — the store fixture
    """16 threads at once: requests share store transactions (group commit), yet each is applied
    once, in order, refusals alone, repeated request ids answering their first answer."""
    slow = SlowCommits(store)
    bank = Bank(slow, LedgerKey.load_or_create(tmp_path / "key.pem"))
    bank.execute(ledger.CreateAccount("a1", "payer", "p", OWNER.dn), ADMIN)
    bank.execute(ledger.CreateAccount("a2", "payee", "p", OWNER.dn), ADMIN)
    bank.execute(ledger.Mint("m1", "payer", 1000), ADMIN)
    slow.transactions = 0
    answers: dict[str, list] = {}
    lock = threading.Lock()

    def client(number: int) -> None:
        for round_number in range(5):
            request_id = f"t-{number}-{round_number}"
            amount = 10 if number % 4 else 10**6          # every fourth client asks for too much
            for _attempt in range(2 if number % 3 == 0 else 1):   # some send each request twice
                try:
                    outcome = bank.execute(ledger.Transfer(request_id, "payer", "payee", amount), OWNER)
                    answer = ("ok", outcome.transaction.seq, outcome.replayed)
                except DomainError as refusal:
                    answer = ("refused", refusal.code, None)
                with lock:
                    answers.setdefault(request_id, []).append(answer)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    requests = sum(len(attempts) for attempts in answers.values())
    assert requests == 5 * (16 + 6) and slow.transactions < requests / 2, (requests, slow.transactions)
    applied = {request_id: attempts for request_id, attempts in answers.items() if attempts[0][0] == "ok"}
    assert len(applied) == 5 * 12
    for attempts in applied.values():          # a repeat answers the first answer
        assert [a[2] for a in attempts] == [False, True][:len(attempts)] and len({a[1] for a in attempts}) == 1
    assert all(attempts == [("refused", "InsufficientFunds", None)] * len(attempts)
               for request_id, attempts in answers.items() if request_id not in applied)
    assert sorted(attempts[0][1] for attempts in applied.values()) == list(range(4, 4 + 60))
    assert bank.balance("payee", ADMIN).total == 600 and bank.balance("payer", ADMIN).total == 400
    report = audit_store(bank.store, bank.key.public, signature_check_interval=1)
    assert report.clean and report.transaction_count == 63, report.findings


def test_the_expiry_sweep_says_in_one_line_when_the_store_is_behind(tmp_path, caplog):
    import logging
    from dataclasses import replace

    from gridcredit.server.registry import load_config
    from gridcredit.errors import StoreError
    from gridcredit.server.runtime import Runtime

    class StoreBehind:                          # three rounds while BaseX catches up, then it works
        def __init__(self) -> None:
            self.sweeps = 0

        def expire_due(self) -> int:
            self.sweeps += 1
            if self.sweeps <= 3:
                raise StoreError("BaseX has applied the journal up to transaction 9, this read needs 12: not caught up")
            return 1 if self.sweeps in (5, 7) else 0    # nothing due in round 4: no news about the store

    config = load_config(env={"GRIDCREDIT_STATE_DIR": str(tmp_path)})
    config = config.with_section("bank", replace(config.bank, expiry_sweep_s=1))
    bank = StoreBehind()
    runtime = Runtime(config=config, store=None, parts={"bank": bank})
    with caplog.at_level(logging.WARNING, logger="gridcredit.services.bank"):
        runtime.start_background_work()
        deadline = time.monotonic() + 10
        while bank.sweeps < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        runtime._stop.set()
    assert bank.sweeps >= 8
    records = [r for r in caplog.records if "expiry sweep" in r.getMessage()]
    assert all(r.exc_info is None for r in records)     # one line when it begins, one when it ends
    assert [("not caught up" in r.getMessage(), "works again" in r.getMessage()) for r in records] == [
        (True, False), (False, True)]
