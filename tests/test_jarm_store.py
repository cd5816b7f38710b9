"""JARM's price store over the real store (embedded and BaseX) (issue 13.1): versions written once, racing
administrators serialized, the version in force at any time found by reads by key (no query: on BaseX a
query waits for every earlier write to be applied), guaranteed
quotes kept by id; and the ``[jarm]`` section's checks."""
from __future__ import annotations

import itertools
import threading

import pytest

from gridcredit.errors import ConfigError, DomainError
from gridcredit.server import registry
from gridcredit.services.jarm import pricing
from gridcredit.services.jarm.config import JarmConfig
from gridcredit.services.jarm.store import (EFFECTIVE_US_MAX, HOUR_US, INDEXES, PRICES, QUOTE_ID_IN_USE, QUOTES,
                                            TOO_MANY_QUOTES, UNKNOWN_QUOTE, PriceChange, PriceStore, table_id)
from gridcredit.services.jarm.types import JobRequest, Metric, Rate

from store_fixtures import basex_server, open_from_spec, store_spec  # noqa: F401 — fixtures

SITE = "site1"


def rates(core_hour_micro: int) -> tuple[Rate, ...]:
    return (Rate("batch", "normal", {Metric.CORE_WALL: core_hour_micro, Metric.CPU: 0, Metric.MEMORY: 0,
                                     Metric.GPU: 0, Metric.JOB: 0}),)


@pytest.fixture
def store(store_spec):
    """The real store, on each backend (store_fixtures), with the JARM's indexes."""
    with open_from_spec(store_spec, indexes=INDEXES) as opened:
        yield opened


def code_of(call) -> str:
    with pytest.raises(DomainError) as refused:
        call()
    return refused.value.code


def test_versions_are_written_once_and_found_in_force_at_every_time(store):
    prices = PriceStore(store)
    start = 1_000 * HOUR_US
    effective = [start, start + HOUR_US, start + 5 * HOUR_US, start + 5 * HOUR_US + 1]
    for version, at in enumerate(effective, 1):
        stored, replayed = prices.set_table(PriceChange(SITE, rates(version * 1_000_000), effective_us=at),
                                            set_by="/CN=Admin", clock=lambda: start)
        assert (stored.table.version, stored.table.effective_us, replayed) == (version, at, False)
    assert code_of(lambda: prices.in_force(SITE, start - 1)) == pricing.NO_PRICE_TABLE
    for version, at in enumerate(effective, 1):
        assert prices.in_force(SITE, at).table.version == version
        if version > 1:
            assert prices.in_force(SITE, at - 1).table.version == version - 1
    assert prices.in_force(SITE, start + 5 * HOUR_US).table.version == 3        # v4 is one µs later
    assert prices.in_force(SITE, 2**62).table.version == 4                      # beyond 2**53: every version
    assert code_of(lambda: prices.in_force("othersite", 2**62)) == pricing.NO_PRICE_TABLE

    # a version, once written, is never written again: the same number with other prices is refused
    assert code_of(lambda: prices.set_table(PriceChange(SITE, rates(7), version=2, effective_us=start + 9 * HOUR_US),
                                            set_by="/CN=Admin", clock=lambda: start)) == pricing.PRICE_TABLE_VERSION
    assert store.get(PRICES, table_id(SITE, 2)).version == 1
    assert prices.table(SITE, 2).table.rates == rates(2_000_000)
    # the same change again (a retry) answers it
    again, replayed = prices.set_table(PriceChange(SITE, rates(2_000_000), version=2), set_by="/CN=Admin",
                                       clock=lambda: start + 10 * HOUR_US)
    assert replayed and again.table.effective_us == start + HOUR_US and again.set_us == start

    assert code_of(lambda: prices.table(SITE, 5)) == pricing.NO_PRICE_TABLE
    assert code_of(lambda: prices.set_table(PriceChange(SITE, rates(1), effective_us=EFFECTIVE_US_MAX + 1),
                                            set_by="/CN=Admin", clock=lambda: start)) == "InvalidPriceTable"


def test_the_version_in_force_is_found_among_many_without_a_query(store, monkeypatch):
    prices = PriceStore(store)
    start = 1_000 * HOUR_US
    for version in range(1, 38):
        prices.set_table(PriceChange(SITE, rates(version), effective_us=start + version * HOUR_US), set_by="/CN=A",
                         clock=lambda: start)

    def no_query(*args, **kwargs):
        raise AssertionError("in_force ran a query")
    monkeypatch.setattr(store, "count", no_query)
    monkeypatch.setattr(store, "query", no_query)
    assert code_of(lambda: prices.in_force(SITE, start + HOUR_US - 1)) == pricing.NO_PRICE_TABLE
    for version in range(1, 38):
        at = start + version * HOUR_US
        assert [prices.in_force(SITE, moment).table.version for moment in (at, at + HOUR_US // 2)] == [version] * 2
    assert prices.in_force(SITE, 2**62).table.version == 37


def test_racing_administrators_are_serialized(store):
    prices = PriceStore(store)
    ticks = itertools.count(10**15, 1_000)
    lock = threading.Lock()

    def clock() -> int:
        with lock:
            return next(ticks)

    prices.set_table(PriceChange(SITE, rates(1)), set_by="/CN=Admin", clock=clock)
    barrier = threading.Barrier(8)
    results: list = []

    def change(index: int, version: int | None) -> None:
        barrier.wait()
        try:
            results.append(prices.set_table(PriceChange(SITE, rates(100 + index), version=version),
                                            set_by=f"/CN=Admin {index}", clock=clock)[0].table.version)
        except DomainError as error:
            results.append(error.code)

    # eight administrators each store "version 2": one wins, seven are told another change came first
    threads = [threading.Thread(target=change, args=(index, 2)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=str) == [2] + [pricing.PRICE_TABLE_VERSION] * 7

    # eight administrators each store "the next version": eight versions, one after the other
    results.clear()
    barrier = threading.Barrier(8)
    threads = [threading.Thread(target=change, args=(index, None)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(3, 11))
    tables = [prices.table(SITE, version).table for version in range(1, 11)]
    assert all(earlier.effective_us < later.effective_us for earlier, later in zip(tables, tables[1:]))


def test_guaranteed_quotes_are_kept_by_id(store):
    prices = PriceStore(store)
    prices.set_table(PriceChange(SITE, rates(1_000_000)), set_by="/CN=Admin", clock=lambda: 10**15)
    table = prices.in_force(SITE, 10**15).table
    request = JobRequest("batch", "normal", cores=4, time_limit_s=3_600)
    quote = pricing.quote(table, request, now_us=10**15 + 5, quote_id="q1", guarantee_s=60)
    stored, replayed = prices.save_quote(quote, requester="/CN=Alice", active_max=10)
    assert not replayed and prices.quote("q1").quote == quote and prices.quote("q1").requester == "/CN=Alice"
    assert prices.save_quote(quote, requester="/CN=Alice", active_max=10) == (stored, True)
    assert code_of(lambda: prices.save_quote(quote, requester="/CN=Bob", active_max=10)) == QUOTE_ID_IN_USE
    assert code_of(lambda: prices.quote("q2")) == UNKNOWN_QUOTE
    # kept after the prices change, priced by its own version
    prices.set_table(PriceChange(SITE, rates(9_000_000)), set_by="/CN=Admin", clock=lambda: 10**15 + 10)
    assert prices.quote("q1").quote.cost.credits == 4
    assert pricing.honour(prices.quote("q1").quote, request, site=SITE, now_us=quote.valid_until_us).version == 1
    assert code_of(lambda: pricing.honour(prices.quote("q1").quote, request, site=SITE,
                                          now_us=quote.valid_until_us + 1)) == pricing.QUOTE_EXPIRED


@pytest.mark.parametrize("env, words", [
    ({"GRIDCREDIT_JARM_SITE": "two words"}, "jarm.site must be a name"),
    ({"GRIDCREDIT_JARM_QUOTE_GUARANTEE_S_MAX": "604801"}, "jarm.quote_guarantee_s_max must be 0-604800"),
    ({"GRIDCREDIT_JARM_QUOTE_GUARANTEE_S_MAX": "-1"}, "jarm.quote_guarantee_s_max must be 0-604800"),
    ({"GRIDCREDIT_JARM_QUOTES_PER_REQUESTER_MAX": "0"}, "jarm.quotes_per_requester_max must be 1-100000"),
])
def test_the_jarm_section_refuses_values_out_of_range(env, words, tmp_path):
    with pytest.raises(ConfigError) as refused:
        registry.load_config(None, {**env, "GRIDCREDIT_STATE_DIR": str(tmp_path)})
    assert words in str(refused.value)


def test_the_jarm_section_from_the_environment(tmp_path):
    config = registry.load_config(None, {"GRIDCREDIT_STATE_DIR": str(tmp_path), "GRIDCREDIT_JARM_SITE": "cluster1",
                                         "GRIDCREDIT_JARM_PRICE_ADMINS": "/CN=Paula,/CN=Peter"})
    assert config.jarm == JarmConfig(site="cluster1", price_admins=("/CN=Paula", "/CN=Peter"))


def test_a_change_is_stamped_when_it_is_applied_not_when_it_was_asked(store):
    """"Now" is read inside the transaction: a change that waited while another was applied comes
    into force after it (read before, the waiting one would be refused as earlier than the other)."""
    prices = PriceStore(store)
    ticks = itertools.count(10**15, 1_000)
    other_done = threading.Event()
    answers: list = []

    def other() -> None:
        answers.append(prices.set_table(PriceChange(SITE, rates(2)), set_by="/CN=Other", clock=lambda: next(ticks)))
        other_done.set()

    started: list[threading.Thread] = []

    def first_clock() -> int:
        moment = next(ticks)
        if not started:                   # once: the other change goes first if it can (not while we apply)
            started.append(threading.Thread(target=other))
            started[0].start()
            other_done.wait(1.0)
        return moment

    mine, _ = prices.set_table(PriceChange(SITE, rates(1)), set_by="/CN=Mine", clock=first_clock)
    started[0].join()
    versions = sorted([mine, answers[0][0]], key=lambda stored: stored.table.version)
    assert [stored.table.version for stored in versions] == [1, 2]
    assert versions[0].table.effective_us < versions[1].table.effective_us


def test_a_caller_holds_a_bounded_number_of_unexpired_guaranteed_quotes(store):
    prices = PriceStore(store)
    prices.set_table(PriceChange(SITE, rates(1_000_000)), set_by="/CN=Admin", clock=lambda: 10**15)
    table = prices.in_force(SITE, 10**15).table
    request = JobRequest("batch", "normal", cores=1, time_limit_s=60)

    def guaranteed(quote_id: str, at_us: int):
        return pricing.quote(table, request, now_us=at_us, quote_id=quote_id, guarantee_s=60)

    start = 10**15 + 1
    for index in range(3):
        prices.save_quote(guaranteed(f"a{index}", start), requester="/CN=Alice", active_max=3)
    assert code_of(lambda: prices.save_quote(guaranteed("a3", start), requester="/CN=Alice", active_max=3)) == \
        TOO_MANY_QUOTES
    assert prices.save_quote(guaranteed("a0", start), requester="/CN=Alice", active_max=3)[1]     # a retry: kept
    assert not prices.save_quote(guaranteed("b0", start), requester="/CN=Bob", active_max=3)[1]   # another caller
    # once they expire (valid up to and including valid_until), the caller may hold new ones
    assert code_of(lambda: prices.save_quote(guaranteed("a3", start + 60 * 10**6), requester="/CN=Alice",
                                             active_max=3)) == TOO_MANY_QUOTES
    assert not prices.save_quote(guaranteed("a3", start + 60 * 10**6 + 1), requester="/CN=Alice", active_max=3)[1]


def test_expired_quotes_are_swept_an_hour_after_their_hour(store):
    prices = PriceStore(store)
    base_hour = 10**15 // HOUR_US
    prices.set_table(PriceChange(SITE, rates(1_000_000)), set_by="/CN=Admin", clock=lambda: base_hour * HOUR_US)
    table = prices.table(SITE, 1).table
    request = JobRequest("batch", "normal", cores=1, time_limit_s=60)
    # quote "h<N>" expires in hour base + N (issued 10 minutes before the end of that hour, held 5 minutes)
    for hour in range(0, 10):
        issued_us = (base_hour + hour + 1) * HOUR_US - 600 * 10**6
        prices.save_quote(pricing.quote(table, request, now_us=issued_us, quote_id=f"h{hour}", guarantee_s=300),
                          requester=f"/CN=User {hour}", active_max=10)

    def kept() -> list[str]:
        return sorted(doc_id for doc_id in store.ids(QUOTES) if not doc_id.startswith("sweep"))

    # in hour base + 5: quotes that expired in hours up to base + 3 go; base + 4 (the previous hour) stays
    assert prices.sweep_expired_quotes(now_us=(base_hour + 5) * HOUR_US + 1) == 4
    assert kept() == [f"h{hour}" for hour in range(4, 10)]
    assert code_of(lambda: prices.quote("h3")) == UNKNOWN_QUOTE
    assert prices.sweep_expired_quotes(now_us=(base_hour + 5) * HOUR_US + 2) == 0
    # a day later, from where it stopped
    assert prices.sweep_expired_quotes(now_us=(base_hour + 30) * HOUR_US) == 6
    assert kept() == []
    # nothing of the prices is touched
    assert prices.in_force(SITE, (base_hour + 30) * HOUR_US).table == table
