"""``gridcredit serve`` with BaseX unreachable (issue 10.10): it starts anyway, says once that it
serves from the journal, answers signed WhoAmI and the bank's reads by id (they read the journal's
mirror), says "serving on" only once a request sent then is answered, and applies the journal to
BaseX when BaseX returns. Two outages: nothing listening on BaseX's port, and a BaseX that is
SIGSTOPped (it accepts connections and answers nothing)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bank_fixtures import bank_host, bank_users
from gridcredit.client import ServiceClient
from gridcredit.errors import RemoteFault

pytestmark = [pytest.mark.basex]

UNREACHABLE = "unreachable; serving from the journal"


def wait_for_line(host, text: str, timeout_s: float) -> str:
    """The output of the host's current start once it holds ``text``."""
    path = host.state_dir / f"server-{host.starts}.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace")
        if text in log:
            return log
        assert host.process.poll() is None, log
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in the server's output:\n{path.read_text(errors='replace')}")


@pytest.mark.parametrize("outage", ["stopped", "sigstop"])
def test_serve_starts_without_basex_and_catches_up(pki, tmp_path, outage):
    users = bank_users(pki)
    with bank_host(tmp_path, "basex", users, pki) as host:
        admin = host.client(users.admin)
        admin.call("CreateAccount", request_id="a1", account_id="vo-a", project="a", owner_dn=users.owners[0].dn)
        admin.call("Mint", request_id="m1", account_id="vo-a", amount=1000)
        host.stop()
        if outage == "stopped":
            host.basex.stop()
        else:
            os.kill(host.basex.process.pid, signal.SIGSTOP)
        try:
            host.starts += 1              # start as BankHost.start does, but watch the output from the first line
            log = open(host.state_dir / f"server-{host.starts}.log", "ab")
            host.process = subprocess.Popen([sys.executable, "-m", "gridcredit.server.cli", "serve"],
                                            env=host.environment(), cwd=host.state_dir, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
            log.close()
            output = wait_for_line(host, "gridcredit serving on", 60)
            # the moment it says so, a signed request is answered — by every worker
            for _ in range(4):
                assert ServiceClient(host.url, "bank", credential=users.admin.credential,
                                     trust_dir=pki.trust_dir, timeout_s=10).call("WhoAmI").dn == users.admin.dn
            warned = [line for line in output.splitlines() if UNREACHABLE in line and " WARNING " in line]
            assert len(warned) == 1, output     # one warning, not one per worker (they say it at INFO)
            assert output.index(UNREACHABLE) < output.index("gridcredit serving on")
            owner = host.client(users.owners[0])
            assert owner.call("GetBalance", account_id="vo-a").total == 1000      # reads the journal's mirror
            receipt = admin.call("Mint", request_id="m2", account_id="vo-a", amount=5)   # commits to the journal
            assert receipt.transaction.amount == 5
            assert owner.call("GetBalance", account_id="vo-a").total == 1005
            with pytest.raises(RemoteFault):
                owner.call("History", account_id="vo-a")      # a query: BaseX is needed
        finally:
            if outage == "stopped":
                host.basex.start()
            else:
                os.kill(host.basex.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:
            try:
                page = owner.call("History", account_id="vo-a")
                break
            except RemoteFault:
                assert time.monotonic() < deadline, host.log_text()
                time.sleep(0.5)
        assert sorted(t.amount for t in page.transactions.TransactionInfo if t.kind == "mint") == [5, 1000]
        assert "answers again: verified against the journal and caught up" in host.log_text()
        with host.open_store() as store:
            assert all(entry["ok"] for entry in store.check().values())
