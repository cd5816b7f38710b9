"""The Auctioneer's pieces without a host (fast): the [auctioneer] section's checks and environment overrides, the
wire's rates, the market's document round trip in the embedded store, and the console files (offsets, the kept
tail, input taken once)."""
from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from gridcredit.config import StoreConfig
from gridcredit.errors import ConfigError, DomainError
from gridcredit.server.registry import load_config
from gridcredit.services.auctioneer import console
from gridcredit.services.auctioneer import market as core
from gridcredit.services.auctioneer.config import AuctioneerConfig
from gridcredit.services.auctioneer.console import ConsoleFiles
from gridcredit.services.auctioneer.runtime import market_config
from gridcredit.services.auctioneer.service import rate_of
from gridcredit.services.auctioneer.store import INDEXES, BidRecord, MarketStore, bid_id_for
from gridcredit.xmlstore import open_store


def test_the_section_from_the_environment():
    config = load_config(env={"GRIDCREDIT_AUCTIONEER_HOST_ID": "host-a", "GRIDCREDIT_AUCTIONEER_OWNER_ACCOUNT": "own",
                              "GRIDCREDIT_AUCTIONEER_INTERVAL_S": "2", "GRIDCREDIT_AUCTIONEER_MODE": "work-conserving",
                              "GRIDCREDIT_AUCTIONEER_PAY_FOR_USE": "true",
                              "GRIDCREDIT_AUCTIONEER_TEMPLATES": "small=spin,big=/etc/t.toml"})
    section = config.auctioneer
    assert (section.host_id, section.owner_account, section.interval_s, section.mode, section.pay_for_use) == (
        "host-a", "own", 2, "work-conserving", True)
    assert section.template_files() == {"small": "spin", "big": "/etc/t.toml"} and section.enabled
    assert not AuctioneerConfig().enabled


@pytest.mark.parametrize("settings, words", [
    ({"host_id": "bad host"}, "host_id"),
    ({"host_id": "a_b", "owner_account": "x"}, "host_id"),           # market.py's ids: no underscore
    ({"host_id": "host-a"}, "owner_account"),
    ({"interval_s": 0}, "interval_s"),
    ({"interval_s": 3_601}, "interval_s"),
    ({"capacity_cpus": 0}, "capacity_cpus"),
    ({"mode": "fair"}, "mode"),
    ({"cpuset": "1;2"}, "cpuset"),
    ({"reserve_ucps": -1}, "reserve_ucps"),
    ({"templates": ("small=relative.toml",)}, "templates"),
    ({"templates": ("small=spin", "small=idle")}, "twice"),
    ({"vm_prefix": "Bad"}, "vm_prefix"),
])
def test_bad_settings_are_refused_with_the_setting_named(settings, words):
    with pytest.raises(ConfigError) as error:
        AuctioneerConfig(**settings).check()
    assert words in str(error.value)


@pytest.mark.parametrize("rate, budget, duration_s, expected", [
    (Decimal("0.25"), None, None, 250_000),
    (Decimal("1.000000"), None, None, 1_000_000),
    (Decimal("1E+3"), None, None, 1_000_000_000),        # xs:decimal has no exponent; spyne may hand one over
    (None, 900, 3_600, 250_000),
    (None, 100, 3_600, 27_777),
])
def test_wire_rates(rate, budget, duration_s, expected):
    assert rate_of(rate, budget, duration_s) == expected


@pytest.mark.parametrize("rate, budget, duration_s", [
    (Decimal("0"), None, None), (Decimal("-1"), None, None), (Decimal("0.0000001"), None, None),
    (Decimal("NaN"), None, None), (Decimal("Infinity"), None, None), (Decimal("1e400"), None, None),
    (Decimal("1"), 10, 10), (None, None, None), (None, 10, None), (None, 0, 10), (None, 10**16, 10),
])
def test_bad_wire_rates_are_invalid_arguments(rate, budget, duration_s):
    with pytest.raises(DomainError) as error:
        rate_of(rate, budget, duration_s)
    assert error.value.code == "InvalidArgument"


def test_the_market_document_keeps_every_bid_and_the_pending_batch(tmp_path):
    settings = AuctioneerConfig(host_id="host-a", owner_account="own", interval_s=1)
    with open_store(StoreConfig(backend="embedded"), tmp_path, indexes=INDEXES) as store:
        market_store = MarketStore(store, market_config(settings))
        now = 1_000_000_000_000_000 + 250_000
        bid_id = bid_id_for("host-a", "h-1")

        def place(tx, market):
            placed = core.place_bid(market, bid_id=bid_id, owner_dn="/CN=Alice", hold_id="h-1", rate_ucps=3_000_000,
                                    max_duration_s=60, mode=core.Mode.CAPPED, hold_remaining=100,
                                    hold_expires_us=now + 3_600_000_000, now_us=now)
            MarketStore.put_record(tx, BidRecord(bid_id, "host-a", "/CN=Alice", "h-1", "acct", "small", 60, now))
            return placed, None
        market_store.change(place, now_us=now)
        closing = market_store.change(lambda tx, market: (lambda c: (c.market, c))(
            core.close_interval(market, interval=market.interval)), now_us=now)
        again = market_store.market(now_us=now + 1_000_000)
        assert again == closing.market                      # bids, interval, the batch awaiting the Bank
        assert again.pending_charges == closing.charges and closing.charges[0].amount == 2     # 3 cr/s × 0.75 s
        assert again.allocation.shares[bid_id].ppm == 1_000_000
        record, final = market_store.record(bid_id)
        assert record.owner_dn == "/CN=Alice" and final is None
        assert [pair[0].bid_id for pair in market_store.records(owner_dn="/CN=Alice", include_ended=False,
                                                                 offset=0, limit=10)] == [bid_id]
        assert market_store.records(owner_dn="/CN=Bob", include_ended=True, offset=0, limit=10) == []


def test_a_restart_with_a_new_configuration_applies_it_from_the_next_change_and_charges_what_ran_before(tmp_path,
                                                                                                      caplog):
    """The market document keeps the configuration it ran under: a host restarted with a raised reserve price
    and two CPUs charges the time before under the old one and applies the new one from its first change on
    (a bid now below the reserve pays nothing meanwhile); a new interval is refused at start while the market has
    bids, and begins a new market when it has none."""
    old = AuctioneerConfig(host_id="host-a", owner_account="own", interval_s=10)
    new = AuctioneerConfig(host_id="host-a", owner_account="own", interval_s=10, capacity_cpus=2,
                           reserve_ucps=2_000_000)
    start = 1_000_000_000_000_000
    with open_store(StoreConfig(backend="embedded"), tmp_path, indexes=INDEXES) as store:
        def place(bid, hold_id, rate_ucps, at_us):
            def step(tx, market):
                return core.place_bid(market, bid_id=bid, owner_dn="/CN=Alice", hold_id=hold_id, rate_ucps=rate_ucps,
                                      max_duration_s=600, mode=core.Mode.CAPPED, hold_remaining=10_000,
                                      hold_expires_us=start + 3_600_000_000, now_us=at_us), None
            return step
        before = MarketStore(store, market_config(old))
        before.change(place("b-low", "h-1", 1_000_000, start), now_us=start)
        before.change(place("b-high", "h-2", 3_000_000, start), now_us=start)
        assert before.market(now_us=start + 1).config.reserve_ucps == 0

        after = MarketStore(store, market_config(new))              # the restart, 4 s into the interval
        view = after.market(now_us=start + 4_000_000)
        assert view.config.capacity_cpus == 2 and view.allocation.below_reserve == ("b-low",)
        with caplog.at_level("INFO", logger="gridcredit.auctioneer"):
            after.change(lambda tx, market: (core.advance(market, now_us=start + 4_000_000), None),
                         now_us=start + 4_000_000)
        assert "reserve_ucps 0 → 2000000" in caplog.text and "capacity_cpus 1 → 2" in caplog.text
        stored = MarketStore(store, market_config(new)).market(now_us=start + 5_000_000)
        assert stored.config == market_config(new)
        closing = after.change(lambda tx, market: (lambda c: (c.market, c))(
            core.close_interval(market, interval=market.interval)), now_us=start + 10_000_000)
        charged = {charge.bid_id: charge.amount for charge in closing.charges}
        assert charged == {"b-low": 4, "b-high": 30}         # low: its 4 s before the restart only
        with pytest.raises(ConfigError, match="cannot change"):
            MarketStore(store, market_config(dataclasses.replace(new, interval_s=5)))
    with open_store(StoreConfig(backend="embedded"), tmp_path / "empty", indexes=INDEXES) as store:
        MarketStore(store, market_config(old)).change(
            lambda tx, market: (core.advance(market, now_us=start), None), now_us=start)
        shorter = MarketStore(store, market_config(dataclasses.replace(old, interval_s=5)))   # no bids: it may
        shorter.change(lambda tx, market: (core.advance(market, now_us=start + 12_000_000), None),
                       now_us=start + 12_000_000)
        market = shorter.market(now_us=start + 12_000_000)
        assert market.config.interval_us == 5_000_000 and market.interval == (start + 12_000_000) // 5_000_000


def test_console_files_offsets_the_kept_tail_and_input_taken_once(tmp_path, monkeypatch):
    files = ConsoleFiles(tmp_path)
    assert files.read("b-1", 0).data == b""
    files.append_output("b-1", b"hello ")
    files.append_output("b-1", b"world")
    assert files.read("b-1", 0).data == b"hello world"
    later = files.read("b-1", 6)
    assert (later.data, later.offset, later.next_offset) == (b"world", 6, 11)
    beyond = files.read("b-1", 2**62)                       # beyond the end: the end
    assert (beyond.data, beyond.next_offset) == (b"", 11)
    monkeypatch.setattr(console, "OUTPUT_BYTES_MAX", 16)
    files.append_output("b-1", b"0123456789")              # 21 bytes: the newer half kept
    kept = files.read("b-1", 0)
    assert kept.offset == 13 and kept.data == b"23456789" and kept.next_offset == 21
    assert files.write("b-1", b"ls\n") == 3 and files.write("b-1", b"pwd\n") == 4
    assert files.take_input("b-1") == b"ls\npwd\n" and files.take_input("b-1") == b""
    with pytest.raises(DomainError) as error:
        files.write("b-1", b"x" * (console.WRITE_BYTES_MAX + 1))
    assert error.value.code == "InvalidArgument"
