"""``gridcredit market hosts|best-response`` and ``gridcredit directory remove|whoami`` against a real host
with registered hosts (issue 14.5, 14.6): --json and text, the best response as best_response.py computes it
from the directory's Σ rates, refusals as ``TypeName: message``."""
from __future__ import annotations

from fractions import Fraction
from itertools import product
import random

import pytest

from gridcredit.security.credentials import load_credential
from gridcredit.services.auctioneer.best_response import HostOffer, best_response, utility
from gridcredit.services.directory.best import EXACT_SUBSETS_HOSTS_MAX, offers, split_meeting_reserves, split_report
from gridcredit.services.directory.client import DirectoryClient
from gridcredit.services.directory.types import HostEntry

from bank_fixtures import BankUsers, bank_host
from cli_runner import Cli

S = 1_000_000
# (host id, CPUs, Σ rates of its live bids in µcr/s)
HOSTS = [("cli-h1", 1, 1 * S), ("cli-h2", 2, 4 * S), ("cli-h3", 4, 2_500_000)]


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Directory CLI Admin"), "bob": pki.user("Directory CLI Bob")}


@pytest.fixture(scope="module")
def host(pki, people, tmp_path_factory):
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    env = {"GRIDCREDIT_DIRECTORY_ADMINS": people["admin"].dn}
    with bank_host(tmp_path_factory.mktemp("directory-cli"), "embedded", users, pki, extra_env=env) as running:
        # the auctioneers of three hosts, all served by this host (its certificate names localhost)
        auctioneer = DirectoryClient(running.url, credential=load_credential(pki.host_cert, pki.host_key),
                                     trust_dir=pki.trust_dir)
        for host_id, cpus, total in HOSTS:
            auctioneer.register(host_id, auctioneer_url=running.url, capacity_cpus=cpus, total_rate_ucps=total,
                                hour_average_price_ucps=total // cpus // 2, live_bids=2, interval_s=10, ttl_s=600)
        yield running


@pytest.fixture
def market(capsys, pki, host):
    return Cli("market", capsys, pki, host.url)


def test_market_hosts_lists_capacity_and_prices(market, people):
    listed = {row["host_id"]: row for row in market.ok(people["bob"], "hosts")}
    assert {host_id for host_id, _, _ in HOSTS} <= set(listed)
    h2 = listed["cli-h2"]
    assert (h2["capacity_cpus"], h2["price"], h2["price_ucps"], h2["total_rate"]) == (2, "2.000000", 2 * S, "4.000000")
    assert (h2["hour_average_price"], h2["live_bids"], h2["auctioneer_url"]) == ("1.000000", 2, market.url)
    assert listed["cli-h3"]["price"] == "0.625000" and listed["cli-h3"]["expires"].endswith("Z")
    # --directory: the directory's host, when --url names an auctioneer's elsewhere
    assert market.ok(people["bob"], "hosts", "--directory", market.url, url="https://localhost:1") == \
        market.ok(people["bob"], "hosts")
    code, text, err = market(people["bob"], "hosts", as_json=False)
    assert code == 0 and err == ""
    row = next(line for line in text.splitlines() if line.startswith("cli-h3"))
    assert row.split()[:5] == ["cli-h3", "4", "0.625", "0.3125", "2"]


def test_best_response_splits_the_budget_as_feldman_lai_zhang(market, people):
    report = market.ok(people["bob"], "best-response", "--budget", "3", "--hosts", "cli-h1,cli-h2,cli-h3",
                       "--no-own-bids")
    offers = [HostOffer(host_id, cpus, total) for host_id, cpus, total in HOSTS]
    expected = best_response(3 * S, offers)
    rows = {row["host_id"]: row for row in report["hosts"]}
    assert {host_id: row["rate_ucps"] for host_id, row in rows.items()} == expected
    assert sum(row["rate_ucps"] for row in rows.values()) == 3 * S and report["budget"] == "3.000000"
    assert {host_id: row["others_rate_ucps"] for host_id, row in rows.items()} == {h: t for h, _, t in HOSTS}
    assert Fraction(report["cpus"]) == Fraction(int(utility(expected, offers) * 10**6), 10**6)
    for host_id, cpus, total in HOSTS:
        bid = expected[host_id]
        assert Fraction(rows[host_id]["cpus"]) == Fraction(cpus * bid * 10**6 // (bid + total), 10**6)
    # no split of the budget in whole credits per second does better
    for split in product(range(4), repeat=3):
        if sum(split) == 3:
            assert utility({h: x * S for (h, _, _), x in zip(HOSTS, split)}, offers) <= utility(expected, offers)


def test_best_response_of_credits_over_a_duration_and_text(market, people):
    report = market.ok(people["bob"], "best-response", "--budget", "900", "--duration", "1h", "--hosts",
                       "cli-h2,cli-h3", "--no-own-bids")
    assert report["budget_ucps"] == 250_000 and [row["host_id"] for row in report["hosts"]] == ["cli-h2", "cli-h3"]
    assert sum(row["rate_ucps"] for row in report["hosts"]) == 250_000
    code, text, err = market(people["bob"], "best-response", "--budget", "0.25", "--hosts", "cli-h2,cli-h3",
                             "--no-own-bids", as_json=False)
    assert code == 0 and err == "" and "best response for 0.25 credits/s over 2 host(s)" in text
    assert "CPUs in all" in text


def test_refusals_are_typename_message(market, people):
    code, out, err = market(people["bob"], "best-response", "--budget", "1", "--hosts", "cli-h1,nowhere",
                            "--no-own-bids")
    assert code == 1 and err.startswith("GridcreditError: the directory lists no host nowhere now")
    for bad in ("1.0000001", "0", "-1", "lots"):
        with pytest.raises(SystemExit) as usage:
            market(people["bob"], "best-response", "--budget", bad, "--no-own-bids")
        assert usage.value.code == 2


def test_directory_remove_is_for_administrators(capsys, pki, host, people):
    directory = Cli("directory", capsys, pki, host.url)
    code, out, err = directory(people["bob"], "remove", "cli-h1")
    assert code == 1 and err.startswith("RemoteFault: ") and "not an administrator of this directory" in err
    assert directory.ok(people["admin"], "whoami")["dn"] == people["admin"].dn
    auctioneer = DirectoryClient(host.url, credential=load_credential(pki.host_cert, pki.host_key),
                                 trust_dir=pki.trust_dir)
    auctioneer.register("cli-gone", auctioneer_url=host.url, capacity_cpus=1, total_rate_ucps=0,
                        hour_average_price_ucps=0, live_bids=0, interval_s=10, ttl_s=600)
    assert directory.ok(people["admin"], "remove", "cli-gone") == {"host_id": "cli-gone", "removed": True}
    assert directory.ok(people["admin"], "remove", "cli-gone") == {"host_id": "cli-gone", "removed": False}



def test_your_own_bids_are_taken_off_the_hosts_rates():
    entries = [HostEntry("own-1", "https://a.example.org", 2, 5 * S, 2_500_000, 0, 3, 10, 60, "/CN=a", 1, 1, 2),
               HostEntry("own-2", "https://b.example.org", 1, 1 * S, 1 * S, 0, 1, 10, 60, "/CN=b", 1, 1, 2)]
    assert offers(entries, {"own-1": 2 * S, "own-2": 1 * S}) == [HostOffer("own-1", 2, 3 * S), HostOffer("own-2", 1, 0)]
    report = split_report(4 * S, entries, {"own-1": 2 * S})
    assert [row["others_rate_ucps"] for row in report["hosts"]] == [3 * S, 1 * S]
    assert [row["own_rate_ucps"] for row in report["hosts"]] == [2 * S, 0]
    assert {row["host_id"]: row["rate_ucps"] for row in report["hosts"]} == best_response(
        4 * S, [HostOffer("own-1", 2, 3 * S), HostOffer("own-2", 1, 1 * S)])


def test_best_response_asks_each_hosts_auctioneer_for_your_own_bids(market, people, pki, host):
    # cli-h1's auctioneer (this host, selling nothing) answers: you have no bids there
    report = market.ok(people["bob"], "best-response", "--budget", "1", "--hosts", "cli-h1")
    assert [(row["own_rate_ucps"], row["others_rate_ucps"]) for row in report["hosts"]] == [(0, 1 * S)]
    # an auctioneer that does not answer: said, with the way out
    DirectoryClient(host.url, credential=load_credential(pki.host_cert, pki.host_key), trust_dir=pki.trust_dir
                    ).register("cli-silent", auctioneer_url="https://localhost:1", capacity_cpus=1,
                               total_rate_ucps=S, hour_average_price_ucps=0, live_bids=1, interval_s=10, ttl_s=600)
    code, out, err = market(people["bob"], "best-response", "--budget", "1", "--hosts", "cli-h1,cli-silent",
                            "--retries", "0")
    assert code == 1 and err.startswith("GridcreditError: your own bids on host cli-silent cannot be read from its "
                                        "auctioneer https://localhost:1: ")
    assert "(--no-own-bids if you have none there)" in err


def brute_force(budget: int, hosts: list, reserves: dict) -> Fraction:
    """The best utility of any integer split with every bid 0 or at least its host's reserve."""
    best = Fraction(0)
    for split in product(range(budget + 1), repeat=len(hosts)):
        if sum(split) <= budget and all(x == 0 or x >= reserves[h.host_id] for x, h in zip(split, hosts)):
            best = max(best, utility({h.host_id: x for h, x in zip(hosts, split)}, hosts))
    return best


def test_a_split_meeting_reserve_prices_is_the_best_such_split():
    generator = random.Random(14)
    for _ in range(400):
        hosts = [HostOffer(f"h{index}", generator.randint(1, 4), generator.choice([0, 0, 1, 2, 3, 5, 8]))
                 for index in range(generator.randint(1, 3))]
        reserves = {host.host_id: generator.choice([0, 0, 1, 2, 3, 4, 6]) for host in hosts}
        budget = generator.randint(0, 10)
        split = split_meeting_reserves(budget, hosts, reserves)
        assert sum(split.values()) <= budget
        assert all(bid == 0 or bid >= reserves[host_id] for host_id, bid in split.items()), (hosts, reserves, split)
        assert utility(split, hosts) == brute_force(budget, hosts, reserves), (budget, hosts, reserves, split)
    # no reserve in the way: best_response.py's split itself
    hosts = [HostOffer("a", 2, 3 * S), HostOffer("b", 1, 1 * S), HostOffer("c", 4, 0)]
    assert split_meeting_reserves(5 * S, hosts, {"a": S}) == best_response(5 * S, hosts)
    # a host nobody bids on is wholly yours for its reserve: bid exactly that, the rest elsewhere
    split = split_meeting_reserves(5 * S, hosts, {"c": 2 * S})
    assert split["c"] == 2 * S and split["a"] + split["b"] == 3 * S
    # a budget under every reserve buys nothing
    assert split_meeting_reserves(S, hosts[:2], {"a": 2 * S, "b": 3 * S}) == {"a": 0, "b": 0}


def test_a_split_meeting_reserves_over_many_hosts_is_feasible():
    generator = random.Random(15)
    hosts = [HostOffer(f"m{index}", generator.randint(1, 8), generator.randint(0, 20) * S // 2)
             for index in range(EXACT_SUBSETS_HOSTS_MAX + 5)]
    reserves = {host.host_id: generator.randint(0, 3) * S for host in hosts}
    split = split_meeting_reserves(12 * S, hosts, reserves)
    assert 0 < sum(split.values()) <= 12 * S
    assert all(bid == 0 or bid >= reserves[host_id] for host_id, bid in split.items())
    assert utility(split, hosts) >= max(utility({host.host_id: 12 * S}, hosts) for host in hosts
                                        if reserves[host.host_id] <= 12 * S)


def test_best_response_never_bids_below_a_hosts_reserve_price(market, people, pki, host):
    DirectoryClient(host.url, credential=load_credential(pki.host_cert, pki.host_key), trust_dir=pki.trust_dir
                    ).register("cli-reserve", auctioneer_url=host.url, capacity_cpus=2, total_rate_ucps=S,
                               hour_average_price_ucps=0, live_bids=1, interval_s=10, ttl_s=600,
                               reserve_price_ucps=2 * S)
    row = next(row for row in market.ok(people["bob"], "hosts") if row["host_id"] == "cli-reserve")
    assert (row["reserve_price"], row["reserve_price_ucps"]) == ("2.000000", 2 * S)
    # without the reserve, FLZ would put about 0.7 cr/s of 1.5 on cli-reserve: below its 2, it would buy nothing
    offers_ = [HostOffer("cli-h1", 1, 1 * S), HostOffer("cli-reserve", 2, 1 * S)]
    assert 0 < best_response(1_500_000, offers_)["cli-reserve"] < 2 * S
    report = market.ok(people["bob"], "best-response", "--budget", "1.5", "--hosts", "cli-h1,cli-reserve",
                       "--no-own-bids")
    assert {row["host_id"]: row["rate_ucps"] for row in report["hosts"]} == {"cli-h1": 1_500_000, "cli-reserve": 0}
    report = market.ok(people["bob"], "best-response", "--budget", "4", "--hosts", "cli-h1,cli-reserve",
                       "--no-own-bids")
    rates = {row["host_id"]: row["rate_ucps"] for row in report["hosts"]}
    assert rates == split_meeting_reserves(4 * S, offers_, {"cli-reserve": 2 * S}) and rates["cli-reserve"] >= 2 * S
