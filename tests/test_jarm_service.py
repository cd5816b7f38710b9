"""JARM's Price Authority over signed SOAP, against a real host process on both stores (issue 13.1):
versioned price tables set by price administrators only, quotes by the version in force equal to
hand calculations, guaranteed quotes kept by id until they expire, bad tables refused with clear
faults and nothing changed."""
from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from gridcredit.config import StoreConfig
from gridcredit.errors import DomainError, RemoteFault
from gridcredit.services.jarm import pricing
from gridcredit.services.jarm.client import JarmClient
from gridcredit.services.jarm.store import QUOTE_ID_IN_USE, TOO_MANY_QUOTES, PriceStore
from gridcredit.services.jarm.types import JobRequest, LoadPricing, Metric, Rate
from gridcredit.timeunits import datetime_from_us, now_us
from gridcredit.xmlstore import open_store

from bank_fixtures import BankUsers, bank_host

SITE = "testsite"
GUARANTEE_S_MAX = 3_600
QUOTES_MAX = 4


def prices(core_wall: int, cpu: int, memory: int, gpu: int, job: int) -> dict:
    return {Metric.CORE_WALL: core_wall, Metric.CPU: cpu, Metric.MEMORY: memory, Metric.GPU: gpu, Metric.JOB: job}


# Version 1: one credit per core-hour in batch/normal, nothing else.
V1 = (Rate("batch", "normal", prices(1_000_000, 0, 0, 0, 0)),)
# Version 2 (micro-credits per price unit): batch/normal 1.5 per core-hour, 0.1 per GB-hour, 0.25 per job;
# batch/long adds 0.2 per CPU-hour; gpu/normal 1.5 per core-hour, 20 per GPU-hour, 0.25 per job.
V2 = (Rate("batch", "normal", prices(1_500_000, 0, 100_000, 0, 250_000)),
      Rate("batch", "long", prices(1_500_000, 200_000, 100_000, 0, 250_000)),
      Rate("gpu", "normal", prices(1_500_000, 0, 0, 20_000_000, 250_000)))

# (request, the exact amount per metric by hand in credits, the credits: the total rounded once, half up)
V2_QUOTES = [
    # 16 cores × 2 h × 1.5 = 48; 32 GB × 2 h × 0.1 = 6.4; fee 0.25 → 54.65 → 55
    (JobRequest("batch", "normal", cores=16, time_limit_s=7_200, memory_mb=32_768),
     {Metric.CORE_WALL: Fraction(48), Metric.MEMORY: Fraction(64, 10), Metric.JOB: Fraction(1, 4)}, 55),
    # + CPU: 16 cores busy 2 h × 0.2 = 6.4 → 61.05 → 61
    (JobRequest("batch", "long", cores=16, time_limit_s=7_200, memory_mb=32_768),
     {Metric.CORE_WALL: Fraction(48), Metric.CPU: Fraction(64, 10), Metric.MEMORY: Fraction(64, 10),
      Metric.JOB: Fraction(1, 4)}, 61),
    # 4 cores × 1.5 h × 1.5 = 9; 2 GPUs × 1.5 h × 20 = 60; fee 0.25 → 69.25 → 69
    (JobRequest("gpu", "normal", cores=4, time_limit_s=5_400, gpus=2),
     {Metric.CORE_WALL: Fraction(9), Metric.GPU: Fraction(60), Metric.JOB: Fraction(1, 4)}, 69),
    # 1 core × 1 s × 1.5/3600 + 0.25 → 0.250416… → 0
    (JobRequest("batch", "normal", cores=1, time_limit_s=1),
     {Metric.CORE_WALL: Fraction(15, 36_000), Metric.JOB: Fraction(1, 4)}, 0),
    # 1 core × 3000 s × 1.5/3600 = 1.25; + 0.25 → exactly 1.5 → 2 (the half goes up)
    (JobRequest("batch", "normal", cores=1, time_limit_s=3_000),
     {Metric.CORE_WALL: Fraction(5, 4), Metric.JOB: Fraction(1, 4)}, 2),
]


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Price Admin"), "alice": pki.user("Alice Quoter"), "bob": pki.user("Bob Quoter"),
            "carol": pki.user("Carol Quoter"), "stranger": pki.user("Price Stranger")}


@pytest.fixture(params=["embedded", "basex"], scope="module")
def host(request, pki, people, tmp_path_factory):
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    env = {"GRIDCREDIT_JARM_SITE": SITE, "GRIDCREDIT_JARM_PRICE_ADMINS": people["admin"].dn,
           "GRIDCREDIT_JARM_QUOTE_GUARANTEE_S_MAX": str(GUARANTEE_S_MAX),
           "GRIDCREDIT_JARM_QUOTES_PER_REQUESTER_MAX": str(QUOTES_MAX)}
    with bank_host(tmp_path_factory.mktemp(f"jarm-{request.param}"), request.param, users, pki,
                   extra_env=env) as running:
        yield running


def client(host, who) -> JarmClient:
    return JarmClient(host.url, credential=getattr(who, "credential", who), trust_dir=host.pki.trust_dir, timeout_s=60)


def latest(host, people) -> int:
    try:
        return client(host, people["alice"]).price_table().table.version
    except RemoteFault as fault:
        assert fault.code == pricing.NO_PRICE_TABLE
        return 0


def refusal(call) -> RemoteFault:
    with pytest.raises(RemoteFault) as fault:
        call()
    return fault.value


def exact_lines(quote) -> dict:
    return {line.metric: Fraction(line.numerator, quote.cost.denominator) for line in quote.cost.lines
            if line.numerator}


def test_an_administrator_sets_v1_then_v2_and_quotes_follow_the_version_in_force(host, people):
    admin, alice = client(host, people["admin"]), client(host, people["alice"])
    start = latest(host, people)
    first = admin.set_price_table(V1, version=start + 1)
    assert (first.stored.table.version, first.replayed, first.stored.set_by) == (start + 1, False, people["admin"].dn)
    one = JobRequest("batch", "normal", cores=16, time_limit_s=7_200, memory_mb=32_768)
    assert alice.quote(one).quote.cost.credits == 32                  # 16 cores × 2 h × 1 credit
    second = admin.set_price_table(V2)                                # the next version, in force now
    assert second.stored.table.version == start + 2
    assert second.stored.table.effective_us > first.stored.table.effective_us

    current = alice.price_table()
    assert (current.table.version, current.table.rates, current.set_by) == (start + 2, V2, people["admin"].dn)
    assert alice.price_table(version=start + 1).table.rates == V1
    # the version in force at a time, found by the store's query: just before v2 came into force, v1
    before = datetime_from_us(second.stored.table.effective_us - 1)
    assert alice.price_table(at=before).table.version == start + 1
    assert alice.price_table(at=datetime_from_us(second.stored.table.effective_us)).table.version == start + 2

    for request, by_hand, credits in V2_QUOTES:
        quote = alice.quote(request).quote
        assert (quote.basis.site, quote.basis.version) == (SITE, start + 2)
        assert exact_lines(quote) == by_hand, request
        assert Fraction(quote.cost.numerator, quote.cost.denominator) == sum(by_hand.values())
        assert quote.cost.credits == credits, request
        assert not quote.guaranteed and quote.quote_id == ""

    # the same change sent again (a retry after no answer) answers the stored version
    again = admin.set_price_table(V2, version=start + 2)
    assert again.replayed and again.stored == second.stored
    assert latest(host, people) == start + 2


def test_a_non_administrator_cannot_set_prices_and_nothing_changes(host, people, pki):
    admin = client(host, people["admin"])
    if latest(host, people) == 0:
        admin.set_price_table(V1)
    before = client(host, people["alice"]).price_table()
    for who in (people["stranger"], people["alice"], pki.proxy("Price Admin", limited=True)):
        fault = refusal(lambda: client(host, who).set_price_table(V2, version=before.table.version + 1))
        assert fault.code == "NotAuthorized", fault
    fault = refusal(lambda: client(host, people["stranger"]).set_price_table(V2))
    assert "is not a price administrator" in str(fault)
    assert client(host, people["bob"]).price_table() == before
    assert refusal(lambda: client(host, people["bob"]).price_table(version=before.table.version + 1)).code == \
        pricing.NO_PRICE_TABLE


def _raw_rate(partition="batch", qos="normal", **overrides) -> dict:
    prices = {"core-wall": 1_234_567, "cpu": 0, "memory": 0, "gpu": 0, "job": 0, **overrides}
    return {"partition": partition, "qos": qos,
            "prices": {"PriceInfo": [{"metric": metric, "price_micro": price} for metric, price in prices.items()
                                     if price is not None]}}


def test_bad_tables_are_refused_with_clear_faults_and_nothing_changes(host, people):
    admin = client(host, people["admin"])
    if latest(host, people) == 0:
        admin.set_price_table(V1)
    before = admin.price_table()
    following = before.table.version + 1

    def set_raw(rates, **table):
        # past the client's own checks (the Rate type refuses these before sending): the service must refuse
        return admin.invoke("SetPriceTable", {"table": {"version": following, "rates": {"RateInfo": rates}, **table}})

    cases = [
        ([_raw_rate(cpu=-5)], {}, "InvalidPriceTable", "outside 0..1,000,000,000,000"),
        ([_raw_rate(gpu=None)], {}, "InvalidPriceTable", "does not price gpu"),
        ([_raw_rate(disk=7)], {}, "InvalidPriceTable", "'disk' is not one of core-wall, cpu, memory, gpu, job"),
        ([_raw_rate(), _raw_rate()], {}, "InvalidPriceTable", "two rates for partition 'batch'"),
        ([_raw_rate(partition="bad name")], {}, "InvalidPriceTable", "is not a name"),
        ([], {}, "InvalidPriceTable", "at least one rate"),
        ([_raw_rate()], {"site": "elsewhere"}, "InvalidPriceTable", f"keeps the prices of site {SITE}"),
        ([_raw_rate()], {"memory_basis": "peak"}, "InvalidPriceTable", "'peak' is not one of allocated, max-rss"),
        ([_raw_rate()], {"effective_us": now_us() - 60_000_000}, "InvalidPriceTable", "never changed after the fact"),
        ([_raw_rate()], {"version": following + 1}, "PriceTableVersion", f"is {following}, not {following + 1}"),
        ([_raw_rate()], {"version": before.table.version}, "PriceTableVersion", "another change may have come first"),
        ([dict(_raw_rate(), load={"low_permille": 800, "high_permille": 200, "min_permille": 1000,
                                  "max_permille": 2000})], {}, "InvalidPriceTable", "must be below its high"),
    ]
    for rates, table, code, words in cases:
        fault = refusal(lambda: set_raw(rates, **table))
        assert (fault.code, fault.faultcode.split(":")[-1]) == (code, f"Client.{code}"), (table, fault)
        assert words in str(fault), (words, str(fault))
    assert admin.price_table() == before
    assert refusal(lambda: admin.price_table(version=following)).code == pricing.NO_PRICE_TABLE


def test_a_guaranteed_quote_is_kept_by_id_honoured_after_a_price_change_and_expires(host, people):
    admin, alice, bob = (client(host, people[name]) for name in ("admin", "alice", "bob"))
    admin.set_price_table(V2)
    request = JobRequest("batch", "normal", cores=16, time_limit_s=7_200, memory_mb=32_768)
    quote_id = f"q-{host.backend}-1"
    held = alice.quote(request, guarantee_s=600, quote_id=quote_id)
    quote = held.quote
    assert (held.replayed, quote.quote_id, quote.cost.credits) == (False, quote_id, 55)
    assert quote.valid_until_us == quote.issued_us + 600_000_000

    again = alice.quote(request, guarantee_s=600, quote_id=quote_id)            # a retry: the kept quote
    assert again.replayed and again.quote == quote
    assert refusal(lambda: bob.quote(request, guarantee_s=600, quote_id=quote_id)).code == QUOTE_ID_IN_USE
    bigger = JobRequest("batch", "normal", cores=32, time_limit_s=7_200)
    assert refusal(lambda: alice.quote(bigger, guarantee_s=600, quote_id=quote_id)).code == QUOTE_ID_IN_USE
    fresh = alice.quote(request, guarantee_s=60)                                # the client makes an id
    assert fresh.quote.quote_id.startswith("q-") and fresh.quote.quote_id != quote_id
    too_long = refusal(lambda: alice.quote(request, guarantee_s=GUARANTEE_S_MAX + 1))
    assert too_long.code == "InvalidQuote" and f"at most {GUARANTEE_S_MAX:,} s" in str(too_long)

    # the prices double; the guaranteed quote keeps its version for a later Reserve
    admin.set_price_table(tuple(Rate(rate.partition, rate.qos, {m: 2 * p for m, p in rate.prices}) for rate in V2))
    assert alice.quote(request).quote.cost.credits == 109                      # 109.3 now
    if host.backend != "embedded":
        return     # the host's BaseX store is read through its journal by the host alone
    with open_store(StoreConfig(backend="embedded"), Path(host.state_dir), read_only=True) as store:
        found = PriceStore(store).quote(quote_id)
    assert (found.quote, found.requester) == (quote, people["alice"].dn)
    assert pricing.honour(found.quote, request, site=SITE, now_us=quote.valid_until_us) == quote.basis
    with pytest.raises(DomainError) as expired:
        pricing.honour(found.quote, request, site=SITE, now_us=quote.valid_until_us + 1)
    assert expired.value.code == pricing.QUOTE_EXPIRED


def test_a_caller_holds_at_most_the_sites_number_of_guaranteed_quotes(host, people):
    admin, carol = client(host, people["admin"]), client(host, people["carol"])
    if latest(host, people) == 0:
        admin.set_price_table(V1)
    request = JobRequest("batch", "normal", cores=1, time_limit_s=60)
    for _ in range(QUOTES_MAX):
        carol.quote(request, guarantee_s=600)
    fault = refusal(lambda: carol.quote(request, guarantee_s=600))
    assert fault.code == TOO_MANY_QUOTES and f"you hold {QUOTES_MAX} guaranteed quotes" in str(fault)
    assert not carol.quote(request).quote.guaranteed                                            # estimates: no limit
    client(host, people["bob"]).quote(request, guarantee_s=600)                                 # another caller


def test_a_load_priced_rate_is_not_quoted_on_the_callers_word(host, people):
    admin = client(host, people["admin"])
    loaded = (*V2, Rate("busy", "normal", prices(1_000_000, 0, 0, 0, 0), LoadPricing(500, 900, 1000, 2000)))
    admin.set_price_table(loaded)
    fault = refusal(lambda: client(host, people["alice"]).quote(JobRequest("busy", "normal", cores=1,
                                                                          time_limit_s=60)))
    assert fault.code == pricing.OCCUPANCY_REQUIRED
    assert client(host, people["alice"]).price_table().table.rate("busy", "normal").load == \
        LoadPricing(500, 900, 1000, 2000)


def test_exact_amounts_beyond_a_long_travel_exactly(host, people):
    admin, alice = client(host, people["admin"]), client(host, people["alice"])
    admin.set_price_table((*V2, Rate("big", "normal", prices(10**9, 10**9, 10**9, 10**9, 10**9))))
    request = JobRequest("big", "normal", cores=1_024, time_limit_s=30 * 86_400, memory_mb=2**20, gpus=64)
    quote = alice.quote(request).quote
    assert quote.cost.lines[0].numerator > 2**63                 # xs:integer on the wire, not xs:long
    # 1,024 cores × 720 h × 1,000 (core-wall) and again (cpu); 1,024 GB × 720 h × 1,000; 64 × 720 × 1,000; 1,000
    assert exact_lines(quote) == {Metric.CORE_WALL: Fraction(737_280_000), Metric.CPU: Fraction(737_280_000),
                                  Metric.MEMORY: Fraction(737_280_000), Metric.GPU: Fraction(46_080_000),
                                  Metric.JOB: Fraction(1_000)}
    assert quote.cost.credits == 3 * 737_280_000 + 46_080_000 + 1_000


def test_a_version_set_for_later_is_in_force_only_from_then(host, people):
    # last in this module: nothing can be set in force now before it (a later version comes after it)
    admin, alice = client(host, people["admin"]), client(host, people["alice"])
    if latest(host, people) == 0:
        admin.set_price_table(V1)
    now = alice.price_table()
    later = datetime_from_us(now_us()) + timedelta(hours=1)
    future = admin.set_price_table(V2, version=now.table.version + 1, effective=later).stored
    assert alice.price_table() == now
    assert alice.price_table(at=later).table.version == future.table.version
    assert alice.price_table(at=later - timedelta(microseconds=1)) == now
    assert alice.quote(V2_QUOTES[0][0]).quote.basis.version == now.table.version
