"""The Bank over the BaseX store while BaseX stands still (SIGSTOP) or is gone (kill -9).

The journal is the record: holds and pending mints that come due while BaseX is unavailable are
expired on time by the sweep (it lists them from the store's mirror of the journal, not with a
BaseX query), their funds are free for a transfer at once, and once BaseX is back it holds
exactly what the journal says and the audit is clean. (The whole server through an outage longer
than the backlog limit: tests/test_bank_crash.py.)
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from gridcredit.config import BankConfig
from gridcredit.services.bank import ledger
from gridcredit.services.bank.bank import Bank, LedgerKey, audit_store, policy_from_config
from gridcredit.xmlstore.basex_server import BaseXServer

from store_fixtures import open_from_spec, private_basex  # noqa: F401 — fixture

pytestmark = [pytest.mark.basex]

START_US = 1_800_000_000 * 1_000_000
HOUR_US = 3_600 * 1_000_000
DAY_US = 24 * HOUR_US
ADMIN = ledger.Principal("/CN=Admin One", is_administrator=True)
ADMIN_TWO = ledger.Principal("/CN=Admin Two", is_administrator=True)
OWNER = ledger.Principal("/CN=Owner")


class Clock:
    def __init__(self) -> None:
        self.now_us = START_US

    def __call__(self) -> int:
        return self.now_us


@pytest.mark.parametrize("outage", ["sigstop", "kill9"])
def test_holds_and_pending_mints_expire_on_time_while_basex_is_unavailable(private_basex, tmp_path, outage):
    spec = {"backend": "basex", "state_dir": str(tmp_path / "state"), "port": private_basex.port, "prefix": "gc_"}
    clock = Clock()
    policy = policy_from_config(BankConfig(approval_above=1000, mint_approval_days=1))
    with open_from_spec(spec) as store:
        bank = Bank(store, LedgerKey.load_or_create(tmp_path / "key.pem"), policy=policy, clock=clock)
        bank.execute(ledger.CreateAccount("a1", "vo", "p", OWNER.dn), ADMIN)
        bank.execute(ledger.CreateAccount("a2", "site", "p", OWNER.dn), ADMIN)
        bank.execute(ledger.Mint("m1", "vo", 1000), ADMIN)
        pending = bank.execute(ledger.Mint("m2", "vo", 5000), ADMIN).transaction.pending_mint_id
        short = bank.execute(ledger.CreateHold("h1", "vo", 600, START_US + HOUR_US), OWNER).transaction.hold_id
        long = bank.execute(ledger.CreateHold("h2", "vo", 300, START_US + 3 * HOUR_US), OWNER).transaction.hold_id
        with pytest.raises(ledger.DomainError):      # 100 available: the holds keep 900
            bank.execute(ledger.Transfer("t0", "vo", "site", 500), OWNER)
        if outage == "sigstop":
            os.kill(private_basex.process.pid, signal.SIGSTOP)
        else:
            private_basex.kill()
        try:
            clock.now_us = START_US + HOUR_US           # the short hold is due; the long one is not
            started = time.monotonic()
            assert bank.expire_due() == 1
            assert bank.expire_due() == 0
            assert time.monotonic() - started < 2.0, "the sweep waited for BaseX"
            bank.execute(ledger.Transfer("t1", "vo", "site", 500), OWNER)    # its 600 are free at once
            clock.now_us = START_US + DAY_US            # the pending mint and the long hold come due
            assert bank.expire_due() == 2
        finally:
            if outage == "sigstop":
                os.kill(private_basex.process.pid, signal.SIGCONT)
            else:
                private_basex.start()
        assert bank.balance("vo", OWNER).total == 500 and bank.balance("vo", OWNER).held == 0
        assert bank.hold(short, OWNER).state.value == "expired" and bank.hold(long, OWNER).state.value == "expired"
        assert {p.pending_mint_id: p.state.value for p in bank.pending_mints(ended=True).items} == {pending: "expired"}
        assert all(entry["ok"] for entry in store.check().values())
        report = audit_store(store, bank.key.public, signature_check_interval=1)
        assert report.clean, report.findings
