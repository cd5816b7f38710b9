"""The directory with a real auctioneer (issue 14.5): a host selling 2 CPUs registers itself in the directory by
its own heartbeat (services/auctioneer/runtime.py, [auctioneer] directory_url), the directory lists the Σ of its
live bids and its price, and a bidder's best response takes the bidder's own bid off that Σ (read from the
auctioneer). libvirt is ``test:///default``: no VM is made (as in tests/test_auctioneer_service.py), the bids
are live and pay."""
from __future__ import annotations

import time

import pytest

from gridcredit.security.credentials import load_credential
from gridcredit.services.auctioneer.client import AuctioneerClient
from gridcredit.services.bank.client import BankClient
from gridcredit.services.directory.client import DirectoryClient

from bank_fixtures import BankHost, BankUsers
from cli_runner import Cli
from security_fixtures import free_port

pytestmark = pytest.mark.slow

HOST_ID = "market-dir"
OWNER_ACCOUNT = "owner-acct"
S = 1_000_000


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Directory Market Admin"), "owner": pki.user("Directory Market Owner"),
            "alice": pki.user("Directory Market Alice"), "bob": pki.user("Directory Market Bob")}


@pytest.fixture(scope="module")
def host(pki, people, tmp_path_factory):
    port = free_port()
    url = f"https://localhost:{port}"
    env = {"GRIDCREDIT_AUCTIONEER_HOST_ID": HOST_ID, "GRIDCREDIT_AUCTIONEER_CAPACITY_CPUS": "2",
           "GRIDCREDIT_AUCTIONEER_OWNER_ACCOUNT": OWNER_ACCOUNT, "GRIDCREDIT_AUCTIONEER_OWNERS": people["owner"].dn,
           "GRIDCREDIT_AUCTIONEER_INTERVAL_S": "1", "GRIDCREDIT_AUCTIONEER_TEMPLATES": "small=spin",
           "GRIDCREDIT_AUCTIONEER_LIBVIRT_URI": "test:///default",
           "GRIDCREDIT_AUCTIONEER_DIRECTORY_URL": url, "GRIDCREDIT_AUCTIONEER_PUBLIC_URL": url}
    users = BankUsers(people["admin"], pki.user("Directory Market Admin Two"), pki.user("Directory Market Auditor"),
                      (), (), (), (), pki.user("Directory Market Service"), pki.user("Directory Market Stranger"))
    running = BankHost(tmp_path_factory.mktemp("directory-market") / "state", "embedded", users, pki, port=port,
                       extra_env=env)
    try:
        running.start()
        admin = BankClient(url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
        for account, owner in ((OWNER_ACCOUNT, "owner"), ("alice-acct", "alice"), ("bob-acct", "bob")):
            admin.create_account(account, project="market", owner_dn=people[owner].dn)
            if owner != "owner":
                admin.mint(account, 10_000)
        yield running
    finally:
        running.stop()


def bid(host, who, account: str, rate_ucps: int):
    auctioneer = AuctioneerClient(host.url, credential=who.credential, trust_dir=host.pki.trust_dir)
    bank = BankClient(host.url, credential=who.credential, trust_dir=host.pki.trust_dir)
    return auctioneer, auctioneer.bid_with_hold(bank, account, template="small", rate_ucps=rate_ucps,
                                                max_duration_s=600)


def listed_with(host, who, total_rate_ucps: int, timeout_s: float = 30.0):
    directory = DirectoryClient(host.url, credential=who.credential, trust_dir=host.pki.trust_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        found = {entry.host_id: entry for entry in directory.hosts()}.get(HOST_ID)
        if found is not None and found.total_rate_ucps == total_rate_ucps:
            return found
        assert time.monotonic() < deadline, f"the directory lists {found} after {timeout_s} s"
        time.sleep(0.3)


def test_the_auctioneer_registers_itself_and_best_response_takes_your_own_bid_off(host, people, capsys):
    alice, alice_bid = bid(host, people["alice"], "alice-acct", 2 * S)
    bob, bob_bid = bid(host, people["bob"], "bob-acct", 1 * S)
    try:
        entry = listed_with(host, people["bob"], 3 * S)
        assert (entry.capacity_cpus, entry.price_ucps, entry.live_bids, entry.auctioneer_url) == (2, 1_500_000, 2,
                                                                                                   host.url)
        assert entry.registrant_dn == load_credential(host.pki.host_cert, host.pki.host_key).identity_dn
        market = Cli("market", capsys, host.pki, host.url)
        row = next(row for row in market.ok(people["bob"], "hosts") if row["host_id"] == HOST_ID)
        assert (row["total_rate"], row["price"], row["live_bids"]) == ("3.000000", "1.500000", 2)
        report = market.ok(people["bob"], "best-response", "--budget", "0.5", "--hosts", HOST_ID)
        (only,) = report["hosts"]
        # Bob's own 1 cr/s is his, not a rival's: only Alice's 2 cr/s compete with what he would bid
        assert (only["own_rate_ucps"], only["others_rate_ucps"], only["rate_ucps"]) == (1 * S, 2 * S, 500_000)
        assert only["cpus"] == "0.400000"                      # 2 CPUs × 0.5 / (0.5 + 2)
        code, text, err = market(people["bob"], "best-response", "--budget", "0.5", "--hosts", HOST_ID, as_json=False)
        assert code == 0 and "your bids now are not counted among the others'" in text
        assert next(line for line in text.splitlines() if line.startswith(HOST_ID)).split()[:5] == [
            HOST_ID, "2", "1", "2", "0.5"]                       # CPUs, yours now, the others', your bid
        # hosts --mine: each of your own bids there and its share of the host
        row = next(row for row in market.ok(people["bob"], "hosts", "--mine") if row["host_id"] == HOST_ID)
        assert row["mine"] == [{"bid_id": bob_bid.bid_id, "rate": "1.000000", "rate_ucps": S, "share_ppm": 333_333}]
        code, text, err = market(people["alice"], "hosts", "--mine", as_json=False)
        assert code == 0 and err == ""
        assert next(line for line in text.splitlines() if line.startswith(HOST_ID)).split()[7] == "66.66"
        mine = market.ok(people["alice"], "best-response", "--budget", "0.5", "--hosts", HOST_ID)["hosts"][0]
        assert (mine["own_rate_ucps"], mine["others_rate_ucps"]) == (2 * S, 1 * S)
        # another host id served at the same URL: Bob's bid on market-dir is not his bid there
        DirectoryClient(host.url, credential=load_credential(host.pki.host_cert, host.pki.host_key),
                        trust_dir=host.pki.trust_dir).register(
            "market-twin", auctioneer_url=host.url, capacity_cpus=1, total_rate_ucps=5 * S, hour_average_price_ucps=0,
            live_bids=1, interval_s=1, ttl_s=600)
        rows = {row["host_id"]: row for row in market.ok(people["bob"], "best-response", "--budget", "1", "--hosts",
                                                         f"{HOST_ID},market-twin")["hosts"]}
        assert [(rows[h]["own_rate_ucps"], rows[h]["others_rate_ucps"]) for h in (HOST_ID, "market-twin")] == [
            (1 * S, 2 * S), (0, 5 * S)]
        # an auctioneer that does not answer: its host says so, the others are listed, exit 1 (partly done)
        DirectoryClient(host.url, credential=load_credential(host.pki.host_cert, host.pki.host_key),
                        trust_dir=host.pki.trust_dir).register(
            "market-silent", auctioneer_url="https://localhost:1", capacity_cpus=1, total_rate_ucps=0,
            hour_average_price_ucps=0, live_bids=0, interval_s=1, ttl_s=600)
        code, listed, err = market(people["bob"], "hosts", "--mine", "--retries", "0")
        by_id = {row["host_id"]: row for row in listed}
        assert code == 1 and by_id["market-silent"]["mine"] is None and len(by_id[HOST_ID]["mine"]) == 1
        assert err.startswith("GridcreditError: your own bids on host market-silent cannot be read from its "
                              "auctioneer https://localhost:1: ")
    finally:
        alice.cancel_bid(alice_bid.bid_id)
        bob.cancel_bid(bob_bid.bid_id)
    # the next heartbeats say so
    assert listed_with(host, people["bob"], 0).live_bids == 0
