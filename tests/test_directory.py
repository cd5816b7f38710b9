"""The market directory through a real host (issue 14.5): auctioneers register with signed heartbeats, anyone
authenticated lists them, each host id stays its first registrant's, expired registrations are not listed and
are swept, bad input is refused with clear faults and changes nothing — on the embedded store and on BaseX."""
from __future__ import annotations

import time

import pytest

from gridcredit.client import InvalidRequest, ServiceClient
from gridcredit.errors import RemoteFault
from gridcredit.security.credentials import load_credential
from gridcredit.services.directory.client import DirectoryClient
from gridcredit.services.directory.store import HOSTS, OWNERS

from bank_fixtures import BACKENDS, BankUsers, bank_host
from test_metrics import scrape

S = 1_000_000
URL_A = "https://auction-a.example.org:8443"
URL_B = "https://auction-b.example.org:8443"


@pytest.fixture(scope="module")
def people(pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("directory-hosts")
    hosts = {}
    for name in ("auction-a.example.org", "auction-b.example.org"):
        cert, key = pki.ca.issue_host(name, root / name, key=pki.keys.fresh())
        hosts[name] = load_credential(cert, key)
    return {"a": hosts["auction-a.example.org"], "b": hosts["auction-b.example.org"],
            "admin": pki.user("Directory Admin"), "alice": pki.user("Directory Alice")}


@pytest.fixture(scope="module", params=BACKENDS)
def host(request, pki, people, tmp_path_factory):
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    env = {"GRIDCREDIT_DIRECTORY_ADMINS": people["admin"].dn, "GRIDCREDIT_DIRECTORY_SWEEP_INTERVAL_S": "1"}
    with bank_host(tmp_path_factory.mktemp("directory"), request.param, users, pki, extra_env=env) as running:
        yield running


def directory(host, pki, who) -> DirectoryClient:
    return DirectoryClient(host.url, credential=getattr(who, "credential", who), trust_dir=pki.trust_dir)


def register(client: DirectoryClient, host_id: str, url: str, **figures):
    values = dict(capacity_cpus=2, total_rate_ucps=7 * S, hour_average_price_ucps=1_200_000, live_bids=3,
                  interval_s=10, ttl_s=1_200)       # beyond the module: only the TTL test lets one expire
    values.update(figures)
    return client.register(host_id, auctioneer_url=url, **values)


def code_of(call) -> str:
    with pytest.raises(RemoteFault) as refused:
        call()
    return refused.value.code


def test_auctioneers_register_and_anyone_lists_them(host, pki, people):
    a = register(directory(host, pki, people["a"]), "list-a", URL_A, total_rate_ucps=7_000_001,
                 reserve_price_ucps=250_000)
    assert (a.price_ucps, a.total_rate_ucps, a.registrant_dn, a.capacity_cpus) == (3_500_000, 7_000_001,
                                                                                 people["a"].dn, 2)
    assert a.reserve_price_ucps == 250_000
    assert a.expires_us == a.updated_us + 1_200 * S
    register(directory(host, pki, people["b"]), "list-b", URL_B, capacity_cpus=4, total_rate_ucps=0, live_bids=0)
    alice = directory(host, pki, people["alice"])
    listed = {entry.host_id: entry for entry in alice.hosts()}
    assert {"list-a", "list-b"} <= set(listed)
    assert listed["list-a"] == a
    assert (listed["list-b"].price_ucps, listed["list-b"].capacity_cpus) == (0, 4)
    assert alice.host("list-a") == a
    assert code_of(lambda: alice.host("nowhere")) == "UnknownHost"
    # a heartbeat: new figures, the same first registration
    again = register(directory(host, pki, people["a"]), "list-a", URL_A, total_rate_ucps=9 * S, live_bids=4)
    assert (again.registered_us, again.price_ucps, again.live_bids) == (a.registered_us, 4_500_000, 4)
    assert again.updated_us > a.updated_us


def test_only_the_first_registrant_updates_a_host_and_an_administrator_frees_it(host, pki, people):
    first = register(directory(host, pki, people["a"]), "owned-a", URL_A)
    b = directory(host, pki, people["b"])
    assert code_of(lambda: register(b, "owned-a", URL_B, total_rate_ucps=1)) == "HostIdTaken"
    # B signing for A's URL, under a new id: not its host; a user: not a host at all
    assert code_of(lambda: register(b, "owned-x", URL_A)) == "NotAuthorized"
    assert code_of(lambda: register(directory(host, pki, people["alice"]), "owned-y", URL_A)) == "NotAuthorized"
    alice = directory(host, pki, people["alice"])
    assert alice.host("owned-a") == first                                   # nothing changed
    assert code_of(lambda: alice.host("owned-x")) == "UnknownHost"
    assert code_of(lambda: alice.remove("owned-a")) == "NotAuthorized"
    admin = directory(host, pki, people["admin"])
    assert admin.remove("owned-a") is True and admin.remove("owned-a") is False
    taken = register(b, "owned-a", URL_B)
    assert (taken.registrant_dn, taken.auctioneer_url) == (people["b"].dn, URL_B)


GOOD = {"host_id": "bad-input", "auctioneer_url": URL_A, "capacity_cpus": 2, "total_rate": "1.5",
        "hour_average_price": "0.25", "live_bids": 1, "interval_s": 10, "ttl_s": 60}


@pytest.mark.parametrize("change, words", [
    ({"capacity_cpus": -2}, "capacity_cpus must be a whole number from 1"),
    ({"auctioneer_url": "http://auction-a.example.org:8443"}, "must be https://"),
    ({"auctioneer_url": URL_A + "/" + "x" * 5000}, "at most 512 characters"),
    ({"host_id": "h" * 10_000}, "a host id is 1-64 characters"),
    ({"total_rate": "1.0000001"}, "at most 6 decimals"),
    ({"total_rate": "-3"}, "cannot be negative"),
    ({"hour_average_price": "1000000000000.5"}, "beyond the most"),
    ({"ttl_s": 999_999}, "ttl_s must be a whole number from 10 to 3,600"),
    ({"reserve_price": "0.0000005"}, "the reserve price has at most 6 decimals"),
])
def test_bad_input_is_refused_with_a_clear_fault_and_changes_nothing(host, pki, people, change, words):
    before = register(directory(host, pki, people["a"]), "bad-input", URL_A)
    raw = ServiceClient(host.url, "directory", credential=people["a"], trust_dir=pki.trust_dir)
    with pytest.raises(RemoteFault, match=words) as refused:
        raw.call("Register", **{**GOOD, **change})
    assert refused.value.code == "InvalidArgument" and refused.value.faultcode.endswith("Client.InvalidArgument")
    assert directory(host, pki, people["alice"]).host("bad-input") == before


def test_the_client_refuses_bad_figures_before_sending(host, pki, people):
    with pytest.raises(InvalidRequest, match="capacity_cpus must be"):
        register(directory(host, pki, people["a"]), "client-side", URL_A, capacity_cpus=-1)
    with pytest.raises(InvalidRequest, match="must be https://"):
        register(directory(host, pki, people["a"]), "client-side", "http://auction-a.example.org")


def test_an_expired_registration_is_not_listed_and_is_swept(host, pki, people):
    register(directory(host, pki, people["a"]), "short-lived", URL_A, ttl_s=10)
    alice = directory(host, pki, people["alice"])
    assert "short-lived" in {entry.host_id for entry in alice.hosts()}
    time.sleep(10.2)
    assert "short-lived" not in {entry.host_id for entry in alice.hosts()}
    assert code_of(lambda: alice.host("short-lived")) == "UnknownHost"
    deadline = time.monotonic() + 15                         # the sweep runs every second
    while True:
        with host.open_store() as store:
            swept = store.get(HOSTS, "short-lived") is None
            owner = store.get(OWNERS, "short-lived")
        if swept or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert swept and owner is not None                       # the id stays its owner's
    assert code_of(lambda: register(directory(host, pki, people["b"]), "short-lived", URL_B)) == "HostIdTaken"
    assert register(directory(host, pki, people["a"]), "short-lived", URL_A).registrant_dn == people["a"].dn


def test_metrics_count_the_hosts_listed_and_the_ids_kept(host, pki, people):
    register(directory(host, pki, people["b"]), "metered", URL_B)
    alice = directory(host, pki, people["alice"])
    listed = len(alice.hosts())
    with host.open_store() as store:
        owned = len(store.ids(OWNERS))
    samples = scrape(host)
    assert samples[("gridcredit_directory_hosts_listed", ())] == listed >= 1
    assert samples[("gridcredit_directory_host_ids", ())] == owned >= listed


def test_a_caller_who_may_not_register_is_refused_before_the_ids_are_counted(pki, people, tmp_path):
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    with bank_host(tmp_path, "embedded", users, pki, extra_env={"GRIDCREDIT_DIRECTORY_HOSTS_MAX": "1"}) as full:
        register(directory(full, pki, people["a"]), "the-one", URL_A)
        # the directory is full, yet a stranger's new id is refused as theirs to refuse: who they are, not room
        assert code_of(lambda: register(directory(full, pki, people["alice"]), "another", URL_A)) == "NotAuthorized"
        assert code_of(lambda: register(directory(full, pki, people["b"]), "another", URL_A)) == "NotAuthorized"
        assert code_of(lambda: register(directory(full, pki, people["b"]), "another", URL_B)) == "TooManyHosts"
        assert code_of(lambda: register(directory(full, pki, people["b"]), "the-one", URL_B)) == "HostIdTaken"
