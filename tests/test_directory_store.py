"""The directory's store and rules (services/directory): registrations listed until their TTL, swept
after, each host id its first registrant's, bounds on ids, and the exact decimal ↔ µcr/s conversion —
on the embedded store and BaseX, with a fake clock."""
from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from gridcredit.errors import ConfigError
from gridcredit.errors import DomainError
from gridcredit.security.principal import Principal
from gridcredit.server import registry
from gridcredit.services.directory import policy
from gridcredit.services.directory.config import DirectoryConfig
from gridcredit.services.directory.store import HOSTS, INDEXES, OWNERS, HostDirectory
from gridcredit.services.directory.types import (RATE_UCPS_MAX, Registration, rate_from_decimal, rate_text,
                                                 rate_to_decimal)

from store_fixtures import basex_server, open_from_spec, private_basex, store_spec  # noqa: F401 — fixtures

S = 1_000_000
HOST_A = Principal("/DC=org/CN=host/auction-a.example.org", host_names=("auction-a.example.org",))
HOST_B = Principal("/DC=org/CN=host/auction-b.example.org", host_names=("auction-b.example.org",))
RULES = policy.DirectoryPolicy(admins=frozenset({"/CN=Admin"}))


@pytest.fixture
def store(store_spec):
    with open_from_spec(store_spec, indexes=INDEXES) as opened:
        yield opened


class Clock:
    def __init__(self, now_us: int = 1_800_000_000 * S) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


def registration(host_id: str = "host-a", *, url: str = "https://auction-a.example.org:8443", ttl_s: int = 60,
                 total_rate_ucps: int = 7 * S, capacity_cpus: int = 2) -> Registration:
    return Registration(host_id, url, capacity_cpus, total_rate_ucps, 1_200_000, 3, 10, ttl_s)


def register(directory: HostDirectory, principal: Principal, clock: Clock, **options):
    made = registration(**options)
    made.check()
    return directory.register(made, registrant_dn=principal.dn, clock=clock, authorize=lambda owner_dn: (
        policy.authorize_register(RULES, principal, host_id=made.host_id, auctioneer_url=made.auctioneer_url,
                                  owner_dn=owner_dn)))


def code_of(call) -> str:
    with pytest.raises(DomainError) as refused:
        call()
    return refused.value.code


def test_a_registration_is_listed_until_its_ttl_then_swept(store):
    clock = Clock()
    directory = HostDirectory(store, hosts_max=100, hosts_per_registrant_max=10)
    entry = register(directory, HOST_A, clock, ttl_s=30)
    assert (entry.price_ucps, entry.registrant_dn, entry.expires_us) == (3_500_000, HOST_A.dn, clock.now_us + 30 * S)
    register(directory, HOST_B, clock, host_id="host-b", url="https://auction-b.example.org", ttl_s=90)
    assert [e.host_id for e in directory.listed(now_us=clock.now_us + 30 * S)] == ["host-a", "host-b"]
    assert [e.host_id for e in directory.listed(now_us=clock.now_us + 30 * S + 1)] == ["host-b"]
    assert code_of(lambda: directory.entry("host-a", now_us=clock.now_us + 31 * S)) == "UnknownHost"
    # a heartbeat before the sweep renews it; the sweep deletes only what is still expired
    clock.now_us += 20 * S
    register(directory, HOST_A, clock, ttl_s=30, total_rate_ucps=9 * S)
    assert directory.sweep_expired(now_us=clock.now_us + 31 * S) == 1          # host-a's renewal ended too
    assert store.get(HOSTS, "host-a") is None and store.get(HOSTS, "host-b") is not None
    assert directory.sweep_expired(now_us=clock.now_us + 31 * S) == 0
    # the expired host's id stays its owner's
    assert store.get(OWNERS, "host-a") is not None
    assert code_of(lambda: register(directory, HOST_B, clock, url="https://auction-b.example.org")) == "HostIdTaken"


def test_a_heartbeat_updates_the_figures_and_keeps_the_first_registration_time(store):
    clock = Clock()
    directory = HostDirectory(store, hosts_max=100, hosts_per_registrant_max=10)
    first = register(directory, HOST_A, clock)
    clock.now_us += 10 * S
    second = register(directory, HOST_A, clock, total_rate_ucps=5 * S + 1, capacity_cpus=4)
    assert (second.registered_us, second.updated_us) == (first.registered_us, clock.now_us)
    assert (second.total_rate_ucps, second.price_ucps) == (5 * S + 1, (5 * S + 1) // 4)
    assert directory.entry("host-a", now_us=clock.now_us) == second


def test_another_identity_cannot_register_over_a_host_id_until_an_administrator_removes_it(store):
    clock = Clock()
    directory = HostDirectory(store, hosts_max=100, hosts_per_registrant_max=10)
    register(directory, HOST_A, clock)
    before = (store.get(OWNERS, "host-a"), store.get(HOSTS, "host-a"))
    # B signs for its own URL, under A's id: refused, nothing changed
    assert code_of(lambda: register(directory, HOST_B, clock, url="https://auction-b.example.org")) == "HostIdTaken"
    assert (store.get(OWNERS, "host-a"), store.get(HOSTS, "host-a")) == before
    # B signing for A's URL: not its host
    assert code_of(lambda: register(directory, HOST_B, clock, host_id="host-x")) == "NotAuthorized"
    assert store.get(OWNERS, "host-x") is None
    admin = Principal("/CN=Admin")
    policy.authorize_remove(RULES, admin)
    assert directory.remove("host-a") is True and directory.remove("host-a") is False
    assert register(directory, HOST_B, clock, url="https://auction-b.example.org").registrant_dn == HOST_B.dn
    assert code_of(lambda: policy.authorize_remove(RULES, HOST_A)) == "NotAuthorized"


def test_two_identities_racing_for_a_free_id_one_wins(store):
    clock = Clock()
    directory = HostDirectory(store, hosts_max=100, hosts_per_registrant_max=10)
    outcomes: dict[str, str] = {}
    start = threading.Barrier(2)

    def claim(principal: Principal, url: str) -> None:
        start.wait()
        try:
            register(directory, principal, clock, host_id="contested", url=url)
            outcomes[principal.dn] = "won"
        except DomainError as error:
            outcomes[principal.dn] = error.code

    threads = [threading.Thread(target=claim, args=(HOST_A, "https://auction-a.example.org")),
               threading.Thread(target=claim, args=(HOST_B, "https://auction-b.example.org"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes.values()) == ["HostIdTaken", "won"]
    winner = next(dn for dn, outcome in outcomes.items() if outcome == "won")
    assert directory.entry("contested", now_us=clock.now_us).registrant_dn == winner


def test_the_numbers_of_host_ids_are_bounded(store):
    clock = Clock()
    directory = HostDirectory(store, hosts_max=3, hosts_per_registrant_max=2)
    register(directory, HOST_A, clock, host_id="a1")
    register(directory, HOST_A, clock, host_id="a2")
    assert code_of(lambda: register(directory, HOST_A, clock, host_id="a3")) == "TooManyHosts"
    register(directory, HOST_A, clock, host_id="a2")                       # its own ids: still renewed
    register(directory, HOST_B, clock, host_id="b1", url="https://auction-b.example.org")
    assert code_of(lambda: register(directory, HOST_B, clock, host_id="b2",
                                    url="https://auction-b.example.org")) == "TooManyHosts"
    assert store.get(OWNERS, "a3") is None and store.get(OWNERS, "b2") is None


@pytest.mark.parametrize("change, words", [
    (dict(capacity_cpus=-1), "capacity_cpus must be a whole number from 1"),
    (dict(capacity_cpus=0), "capacity_cpus must be a whole number from 1"),
    (dict(auctioneer_url="http://auction-a.example.org"), "must be https://"),
    (dict(auctioneer_url="https://auction-a.example.org/" + "x" * 600), "at most 512 characters"),
    (dict(auctioneer_url="https://user@auction-a.example.org"), "no user, query or fragment"),
    (dict(auctioneer_url="https://auction-a.example.org/\u202eevil"), r"U\+202E RIGHT-TO-LEFT"),
    (dict(host_id="a" * 65), "a host id is 1-64 characters"),
    (dict(host_id="../a"), "a host id is 1-64 characters"),
    (dict(total_rate_ucps=-1), "total_rate_ucps must be"),
    (dict(ttl_s=5), "ttl_s must be a whole number from 10"),
    (dict(interval_s=0), "interval_s must be"),
    (dict(live_bids=-3), "live_bids must be"),
])
def test_bad_registrations_are_refused_with_what_and_why(change, words):
    fields = dict(host_id="host-a", auctioneer_url="https://auction-a.example.org", capacity_cpus=2,
                  total_rate_ucps=1, hour_average_price_ucps=1, live_bids=0, interval_s=10, ttl_s=60)
    fields.update(change)
    with pytest.raises(DomainError, match=words) as refused:
        Registration(**fields).check()
    assert refused.value.code == "InvalidArgument"


def test_rates_are_exact_decimals_of_at_most_six_digits():
    assert rate_from_decimal("1.5") == 1_500_000 and rate_from_decimal(Decimal("0.000001")) == 1
    assert rate_from_decimal("2.5000000") == 2_500_000 and rate_from_decimal(1) == S
    assert rate_from_decimal(str(RATE_UCPS_MAX // S)) == RATE_UCPS_MAX
    for bad, words in (("1.0000001", "at most 6 decimals"), ("-0.5", "cannot be negative"), ("NaN", "finite"),
                       ("1E+100000000", "beyond the most"), ("lots", "decimal number"), (0.5, "never a float")):
        with pytest.raises(DomainError, match=words):
            rate_from_decimal(bad)
    assert str(rate_to_decimal(1_500_000)) == "1.500000" and rate_text(1_500_000) == "1.5"
    assert rate_text(1) == "0.000001" and rate_text(12_000_000) == "12"


def test_the_directory_section_refuses_values_out_of_range(tmp_path):
    DirectoryConfig().check()
    for env, words in (({"GRIDCREDIT_DIRECTORY_TTL_S_MAX": "5"}, "directory.ttl_s_max must be 10-86400"),
                       ({"GRIDCREDIT_DIRECTORY_HOSTS_MAX": "0"}, "directory.hosts_max and"),
                       ({"GRIDCREDIT_DIRECTORY_SWEEP_INTERVAL_S": "0"}, "directory.sweep_interval_s must be 1-3600")):
        with pytest.raises(ConfigError, match=words):
            registry.load_config(None, {**env, "GRIDCREDIT_STATE_DIR": str(tmp_path)})


def test_the_directory_section_from_the_environment(tmp_path):
    config = registry.load_config(None, {"GRIDCREDIT_STATE_DIR": str(tmp_path),
                                         "GRIDCREDIT_DIRECTORY_ADMINS": "/CN=Ann,/CN=Bo",
                                         "GRIDCREDIT_DIRECTORY_REQUIRE_HOST_CERTIFICATE": "false",
                                         "GRIDCREDIT_DIRECTORY_TTL_S_MAX": "600"})
    assert config.directory == DirectoryConfig(admins=("/CN=Ann", "/CN=Bo"), require_host_certificate=False,
                                               ttl_s_max=600)


def test_a_limited_proxy_and_a_stranger_to_the_registrars_may_not_register():
    limited = Principal(HOST_A.dn, limited=True, host_names=HOST_A.host_names)
    assert code_of(lambda: policy.authorize_register(RULES, limited, host_id="h", auctioneer_url="https://auction-a.example.org",
                                                     owner_dn=None)) == "NotAuthorized"
    closed = policy.DirectoryPolicy(registrars=frozenset({HOST_B.dn}))
    assert code_of(lambda: policy.authorize_register(closed, HOST_A, host_id="h",
                                                     auctioneer_url="https://auction-a.example.org",
                                                     owner_dn=None)) == "NotAuthorized"
    # without require_host_certificate, a user may register (a site without host certificates)
    user = Principal("/CN=Site Operator")
    policy.authorize_register(policy.DirectoryPolicy(require_host_certificate=False), user, host_id="h",
                              auctioneer_url="https://auction-a.example.org", owner_dn=None)
    assert code_of(lambda: policy.authorize_register(RULES, user, host_id="h",
                                                     auctioneer_url="https://auction-a.example.org",
                                                     owner_dn=None)) == "NotAuthorized"


def test_listing_heartbeats_and_the_sweep_go_on_while_basex_is_down(private_basex, tmp_path):
    spec = {"backend": "basex", "state_dir": str(tmp_path / "state"), "port": private_basex.port, "prefix": "gc_"}
    clock = Clock()
    with open_from_spec(spec, indexes=INDEXES) as store:
        directory = HostDirectory(store, hosts_max=100, hosts_per_registrant_max=10)
        register(directory, HOST_A, clock, ttl_s=60)
        register(directory, HOST_B, clock, host_id="host-b", url="https://auction-b.example.org", ttl_s=10)
        private_basex.kill()
        started = time.monotonic()
        # the store's own record (its journal) answers: no query waits for BaseX
        assert [e.host_id for e in directory.listed(now_us=clock.now_us)] == ["host-a", "host-b"]
        clock.now_us += 30 * S
        assert register(directory, HOST_A, clock, ttl_s=60).updated_us == clock.now_us      # a heartbeat
        assert [e.host_id for e in directory.listed(now_us=clock.now_us)] == ["host-a"]
        assert directory.sweep_expired(now_us=clock.now_us) == 1
        assert code_of(lambda: directory.entry("host-b", now_us=clock.now_us)) == "UnknownHost"
        # a new host id too: the ids are counted from the record
        register(directory, HOST_B, clock, host_id="host-c", url="https://auction-b.example.org")
        assert directory.counts(now_us=clock.now_us) == (2, 3)
        assert time.monotonic() - started < 10
        private_basex.start()
