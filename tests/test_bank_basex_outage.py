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

from gridcredit.services.bank.config import BankConfig
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


def test_a_refusal_of_the_store_is_a_fault_in_words_and_no_traceback(caplog):
    """Our services' faults for expected store states: the client reads why; spyne logs no traceback."""
    import io
    import logging

    from lxml import etree
    from spyne import Application, Unicode, rpc
    from spyne.protocol.soap import Soap11
    from spyne.server.wsgi import WsgiApplication

    from gridcredit.errors import StoreError, StoreUnavailable
    from gridcredit.services.common import GridcreditService

    class Refusing(GridcreditService):
        @rpc(Unicode, _returns=Unicode)
        def write(ctx, kind):
            if kind == "held":
                raise StoreUnavailable("writes are held back: 380 committed transactions (3.0 MB) wait for the "
                                       "store's database; this request was not applied — retry once it has caught up")
            raise StoreError("journal fsync failed")

    application = WsgiApplication(Application([Refusing], "urn:test:refusing", in_protocol=Soap11(),
                                              out_protocol=Soap11()))

    def call(kind: str) -> tuple[str, str]:
        body = (f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
                f'<write xmlns="urn:test:refusing"><kind>{kind}</kind></write></soap:Body></soap:Envelope>').encode()
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
                   "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "text/xml; charset=utf-8"}
        answer = etree.fromstring(b"".join(application(environ, lambda status, headers, exc_info=None: None)))
        return answer.findtext(".//faultcode"), answer.findtext(".//faultstring")

    with caplog.at_level(logging.DEBUG):
        held = call("held")
        failed = call("failed")
    assert held[0].endswith("Server.StoreUnavailable") and held[1].startswith("writes are held back: ")
    assert failed[0].endswith("Server.StoreUnavailable") and "retry later" in failed[1]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "store failure in write: journal fsync failed"]
