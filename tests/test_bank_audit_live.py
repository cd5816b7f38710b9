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
