"""The online audit reads a ledger that keeps changing: it must not report what is only a race."""
from __future__ import annotations

import time

from gridcredit.config import StoreConfig
from gridcredit.services.bank import ledger
from gridcredit.services.bank.bank import ACCOUNTS, Bank, LedgerKey, audit_store
from gridcredit.xmlstore import open_store

ADMIN = ledger.Principal("/CN=Admin", is_administrator=True)
OWNER = ledger.Principal("/CN=Owner")


class CommitsDuringReads:
    """A store whose reads of the accounts let a bank transaction commit in between (``times`` times)."""

    def __init__(self, store, bank: Bank, times: int) -> None:
        self._store, self._bank, self._left = store, bank, times
        self.commits = 0

    def scan(self, collection, **options):
        page = self._store.scan(collection, **options)
        if collection == ACCOUNTS and self._left > 0:
            self._left -= 1
            self.commits += 1
            expires = time.time_ns() // 1000 + 60_000_000
            self._bank.execute(ledger.CreateHold(f"during-{self.commits}", "acct", 1, expires), OWNER)
        return page

    def __getattr__(self, name):
        return getattr(self._store, name)


def make_bank(tmp_path) -> Bank:
    bank = Bank(open_store(StoreConfig(), tmp_path), LedgerKey.load_or_create(tmp_path / "key.pem"))
    bank.execute(ledger.CreateAccount("a", "acct", "p", OWNER.dn), ADMIN)
    bank.execute(ledger.Mint("m", "acct", 1000), ADMIN)
    return bank


def test_audit_rereads_when_a_transaction_commits_meanwhile(tmp_path):
    bank = make_bank(tmp_path)
    racing = CommitsDuringReads(bank.store, bank, times=2)
    report = audit_store(racing, bank.key.public, live=True)
    assert racing.commits == 2
    assert report.clean, report.findings
    assert report.transaction_count == 4 and report.head.seq == 4


def test_audit_gives_up_clearly_when_the_ledger_never_settles(tmp_path):
    import pytest
    from gridcredit.errors import StoreError

    bank = make_bank(tmp_path)
    with pytest.raises(StoreError, match="kept changing"):
        audit_store(CommitsDuringReads(bank.store, bank, times=100), bank.key.public, live=True, attempts=3)


def test_offline_audit_finds_a_transaction_appended_behind_the_head(tmp_path):
    from gridcredit.services.bank import documents
    from gridcredit.services.bank.bank import TRANSACTIONS

    bank = make_bank(tmp_path)
    last = documents.transaction_from_xml(bank.store.get(TRANSACTIONS, documents.transaction_document_id(2)).xml)
    forged = ledger.Transaction(**{**{f: getattr(last, f) for f in last.__slots__}, "seq": 3, "request_id": "forged"})
    bank.store.put(TRANSACTIONS, documents.transaction_document_id(3), documents.to_xml(forged))
    assert not audit_store(bank.store, bank.key.public).clean


def test_audit_with_a_helper_process_reports_the_same(tmp_path, monkeypatch):
    """A large ledger is decoded by a helper process too: the same report, findings included."""
    import dataclasses

    import pytest

    from gridcredit.errors import StoreError
    from gridcredit.services.bank import bank as bank_module, documents
    from gridcredit.services.bank.bank import HOLDS_ENDED, TRANSACTIONS

    bank = make_bank(tmp_path)
    expires = time.time_ns() // 1000 + 60_000_000
    for number in range(40):
        hold_id = bank.execute(ledger.CreateHold(f"h{number}", "acct", 5, expires), OWNER).transaction.hold_id
        bank.execute(ledger.ReleaseHold(f"r{number}", hold_id), OWNER)

    monkeypatch.setattr(bank_module, "AUDIT_PAGE_SIZE", 7)   # many pages: the helper and this process share them

    def audits():
        return (audit_store(bank.store, bank.key.public, helper_from=10**9),
                audit_store(bank.store, bank.key.public, helper_from=0))

    alone, helped = audits()
    assert alone.clean and helped == alone and helped.transaction_count == 82
    # Edited, deleted and undecodable documents: the same findings, the same refusal.
    seventh = documents.transaction_document_id(7)
    edited = documents.transaction_from_xml(bank.store.get(TRANSACTIONS, seventh).xml)
    bank.store.put(TRANSACTIONS, seventh, documents.to_xml(dataclasses.replace(edited, amount=4)))
    bank.store.delete(TRANSACTIONS, documents.transaction_document_id(30))
    hold_doc_id = bank.store.ids(HOLDS_ENDED)[20]      # a hold the helper decodes (pages of 7)
    ended = documents.hold_from_xml(bank.store.get(HOLDS_ENDED, hold_doc_id).xml)
    hold_id = ended.hold_id
    bank.store.put(HOLDS_ENDED, hold_doc_id, documents.to_xml(dataclasses.replace(ended, charged=1)))
    alone, helped = audits()
    assert helped == alone and alone.seqs("edited") == {7} and alone.seqs("deleted") == {30}
    assert any(f"hold {hold_id} differs" in finding.message for finding in alone.findings)
    bank.store.put(TRANSACTIONS, documents.transaction_document_id(50), b"<Transaction xmlns='urn:gridcredit:bank:1'/>")
    refusals = []
    for helper_from in (10**9, 0):
        with pytest.raises(StoreError) as refused:
            audit_store(bank.store, bank.key.public, helper_from=helper_from)
        refusals.append(str(refused.value))
    assert refusals[0] == refusals[1] and "required element" in refusals[0]
