"""Unit tests of the Price Authority's pure core (services/jarm/pricing.py, types.py) and of who may
set prices (services/jarm/policy.py): hand-calculated costs, properties against an exact Fraction
oracle, and the refusals."""
from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridcredit.errors import DomainError
from gridcredit.security.principal import Principal
from gridcredit.services.jarm import policy, pricing, types
from gridcredit.services.jarm.pricing import charge, check_successor, estimate, honour, in_force, quote
from gridcredit.services.jarm.types import (JobRequest, LoadPricing, MemoryBasis, Metric, Multiplier, Occupancy,
                                            PriceTable, Rate, Usage)

SECOND_US = 1_000_000
HOUR_S = 3600
T0_US = 1_790_000_000 * SECOND_US           # version 1 in force from here
T1_US = T0_US + 86_400 * SECOND_US          # version 2 from here
CREDIT = 1_000_000                          # a price of one credit per price unit, in micro-credits


def prices(core_hour=0, cpu_hour=0, gb_hour=0, gpu_hour=0, job=0) -> dict[Metric, int]:
    return {Metric.CORE_WALL: core_hour, Metric.CPU: cpu_hour, Metric.MEMORY: gb_hour, Metric.GPU: gpu_hour,
            Metric.JOB: job}


LOAD = LoadPricing(low_permille=500, high_permille=900, min_permille=800, max_permille=2000)
RATES_V1 = (
    Rate("batch", "normal", prices(core_hour=CREDIT, gb_hour=CREDIT // 4, job=CREDIT // 10)),
    Rate("batch", "high", prices(core_hour=2 * CREDIT, gb_hour=CREDIT // 2, job=CREDIT // 10)),
    Rate("gpu", "normal", prices(core_hour=CREDIT // 2, gpu_hour=20 * CREDIT, job=CREDIT)),
    Rate("cpu", "normal", prices(cpu_hour=3 * CREDIT // 2)),
    Rate("load", "normal", prices(core_hour=CREDIT, job=CREDIT), load=LOAD),
)
V1 = PriceTable("north", 1, T0_US, RATES_V1)
V2 = PriceTable("north", 2, T1_US, (Rate("batch", "normal", prices(core_hour=2 * CREDIT, job=CREDIT // 10)),
                                    *RATES_V1[1:]))


def request(partition="batch", qos="normal", cores=1, time_limit_s=HOUR_S, memory_mb=0, gpus=0, nodes=1):
    return JobRequest(partition, qos, cores, time_limit_s, memory_mb, gpus, nodes)


def usage(partition="batch", qos="normal", elapsed_s=HOUR_S, total_cpu_ms=0, cores=1, memory_mb=0, gpus=0, nodes=1,
          max_rss_mb=0):
    return Usage(partition, qos, elapsed_s, total_cpu_ms, cores, memory_mb, gpus, nodes, max_rss_mb)


def refused(code: str, call, *args, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, str(caught.value)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Hand-calculated costs


# (what, request, occupancy, credits, exact credits by metric — each worked out by hand)
QUOTE_CASES = [
    ("4 cores 2 h 16 GB: 4×2×1 + 16×2×0.25 + 0.1 = 16.1", request(cores=4, time_limit_s=2 * HOUR_S, memory_mb=16384),
     None, 16, {Metric.CORE_WALL: 8, Metric.MEMORY: 8, Metric.JOB: Fraction(1, 10)}),
    ("1 core 30 min: 0.5 + 0.1 = 0.6 → 1", request(time_limit_s=1800), None, 1,
     {Metric.CORE_WALL: Fraction(1, 2), Metric.JOB: Fraction(1, 10)}),
    ("an exact half goes up: 1 core 1440 s = 0.4 + 0.1 = 0.5 → 1", request(time_limit_s=1440), None, 1,
     {Metric.CORE_WALL: Fraction(2, 5), Metric.JOB: Fraction(1, 10)}),
    ("just below a half goes down: 1439 s = 1439/3600 + 0.1 → 0", request(time_limit_s=1439), None, 0,
     {Metric.CORE_WALL: Fraction(1439, 3600), Metric.JOB: Fraction(1, 10)}),
    ("just above a half goes up: 1441 s → 1", request(time_limit_s=1441), None, 1,
     {Metric.CORE_WALL: Fraction(1441, 3600), Metric.JOB: Fraction(1, 10)}),
    ("QoS high: 2 cores 1 h 1 GB = 2×2 + 0.5 + 0.1 = 4.6 → 5", request(qos="high", cores=2, memory_mb=1024), None, 5,
     {Metric.CORE_WALL: 4, Metric.MEMORY: Fraction(1, 2), Metric.JOB: Fraction(1, 10)}),
    ("GPUs: 8 cores 2 GPUs 30 min = 8×0.5×0.5 + 2×0.5×20 + 1 = 23",
     request("gpu", cores=8, gpus=2, time_limit_s=1800, nodes=2), None, 23,
     {Metric.CORE_WALL: 2, Metric.GPU: 20, Metric.JOB: 1}),
    ("CPU time: 2 cores 1 h, every core busy = 2 CPU-h × 1.5 = 3", request("cpu", cores=2), None, 3,
     {Metric.CPU: 3}),
    ("load 0 % (below low): ×0.8: 10×0.8 + 1 (fee unscaled) = 9", request("load", cores=10), Occupancy(0, 100), 9,
     {Metric.CORE_WALL: 8, Metric.JOB: 1}),
    ("load at low (500‰): ×0.8 = 9", request("load", cores=10), Occupancy(500, 1000), 9,
     {Metric.CORE_WALL: 8, Metric.JOB: 1}),
    ("load at high (900‰): ×2.0 = 21", request("load", cores=10), Occupancy(900, 1000), 21,
     {Metric.CORE_WALL: 20, Metric.JOB: 1}),
    ("load full: ×2.0 = 21", request("load", cores=10), Occupancy(64, 64), 21, {Metric.CORE_WALL: 20, Metric.JOB: 1}),
    ("load oversubscribed (120 %): still ×2.0 = 21", request("load", cores=10), Occupancy(1200, 1000), 21,
     {Metric.CORE_WALL: 20, Metric.JOB: 1}),
    ("load 700‰: 0.8 + 1.2×200/400 = 1.4: 14 + 1 = 15", request("load", cores=10), Occupancy(7, 10), 15,
     {Metric.CORE_WALL: 14, Metric.JOB: 1}),
    ("load 2/3 (666.67‰): 0.8 + 1.2×(2/3 − 1/2)/0.4 = 1.3 exactly: 13 + 1 = 14", request("load", cores=10),
     Occupancy(2, 3), 14, {Metric.CORE_WALL: 13, Metric.JOB: 1}),
    ("load 1 core 1 h at 2/3 of 7: 0.8 + 1.2×(4/7 − 1/2)/0.4 = 0.8 + 3/14 = 71/70; + 1 = 2.014 → 2",
     request("load"), Occupancy(4, 7), 2, {Metric.CORE_WALL: Fraction(71, 70), Metric.JOB: 1}),
]


@pytest.mark.parametrize("what, job, occupancy, credits, exact", QUOTE_CASES, ids=[case[0] for case in QUOTE_CASES])
def test_quote_equals_the_hand_calculation(what, job, occupancy, credits, exact):
    answer = quote(V1, job, now_us=T0_US, occupancy=occupancy)
    cost = answer.cost
    assert cost.credits == credits
    assert {line.metric: Fraction(line.numerator, cost.denominator) for line in cost.lines} == \
        {metric: Fraction(exact.get(metric, 0)) for metric in Metric}
    assert sum(line.numerator for line in cost.lines) == cost.numerator
    assert [line.metric for line in cost.lines] == list(Metric)
    assert (answer.basis.site, answer.basis.version) == ("north", 1) and not answer.guaranteed


def test_load_multiplier_at_its_bounds_and_between():
    assert pricing.load_multiplier(LOAD, Occupancy(0, 10)) == Multiplier(4, 5)
    assert pricing.load_multiplier(LOAD, Occupancy(1, 2)) == Multiplier(4, 5)
    assert pricing.load_multiplier(LOAD, Occupancy(9, 10)) == Multiplier(2, 1)
    assert pricing.load_multiplier(LOAD, Occupancy(10**12, 1)) == Multiplier(2, 1)
    assert pricing.load_multiplier(LOAD, Occupancy(7, 10)) == Multiplier(7, 5)
    assert pricing.load_multiplier(None, None) == types.ONE
    flat = LoadPricing(0, 1000, 1500, 1500)
    assert pricing.load_multiplier(flat, Occupancy(3, 7)) == Multiplier(3, 2)


# (what, usage, table, credits)
CHARGE_CASES = [
    ("4 cores 1 h, 8 GB allocated: 4 + 8×0.25 + 0.1 = 6.1 → 6", usage(cores=4, memory_mb=8192, max_rss_mb=2048), V1, 6),
    ("MaxRSS basis: 4 cores 1 h, 2 GB peak: 4 + 2×0.25 + 0.1 = 4.6 → 5",
     usage(cores=4, memory_mb=8192, max_rss_mb=2048), dataclasses.replace(V1, memory_basis=MemoryBasis.MAX_RSS), 5),
    ("CPU 1.5 CPU-h × 1.5 = 2.25 → 2", usage("cpu", cores=2, total_cpu_ms=5_400_000), V1, 2),
    ("CPU 6,000 s × 1.5/3600 = 2.5 → 3 (half up)", usage("cpu", cores=2, total_cpu_ms=6_000_000), V1, 3),
    ("CPU 5,999.999 s → 2.4999996 → 2", usage("cpu", cores=2, total_cpu_ms=5_999_999), V1, 2),
    ("never started: the fee only, 0.1 → 0", usage(elapsed_s=0, cores=0, nodes=0), V1, 0),
    ("GPU job ran 45 min: 8×0.75×0.5 + 2×0.75×20 + 1 = 34", usage("gpu", elapsed_s=2700, cores=8, gpus=2), V1, 34),
]


@pytest.mark.parametrize("what, measured, table, credits", CHARGE_CASES, ids=[case[0] for case in CHARGE_CASES])
def test_charge_equals_the_hand_calculation(what, measured, table, credits):
    basis = types.PricingBasis("north", 1, measured.partition, measured.qos)
    assert charge(table, measured, basis).credits == credits


def test_the_load_multiplier_is_fixed_at_reservation():
    job = request("load", cores=10)
    reserved = quote(V1, job, now_us=T0_US, occupancy=Occupancy(1, 10))      # quiet: ×0.8
    assert reserved.cost.credits == 9
    ran = usage("load", cores=10)
    assert charge(V1, ran, reserved.basis).credits == 9                       # whatever the load is now
    busy = pricing.basis_for(V1, job, now_us=T0_US, occupancy=Occupancy(10, 10))
    assert charge(V1, ran, busy).credits == 21


def test_a_version_change_mid_stream_prices_each_job_by_the_version_of_its_reservation():
    tables = (V1, V2)
    stream = [  # (job, reserved at, estimate by hand, elapsed, charge by hand)
        ("a", T0_US + 1, 2 * 1 + Fraction(1, 10), 3600, 2),        # v1: 2 cores × 1 h × 1 credit + 0.1 = 2.1
        ("b", T1_US - 1, 2 * 1 + Fraction(1, 10), 7200, 4),        # v1 still: ran 2 h, 4.1 by v1 after the change
                                                                   # (by v2 it would be 8.1)
        ("c", T1_US, 2 * 2 + Fraction(1, 10), 3600, 4),            # v2: 2 cores × 1 h × 2 credits + 0.1 = 4.1
        ("d", T1_US + 5, 2 * 2 + Fraction(1, 10), 1800, 2),        # v2: 2 × 0.5 × 2 + 0.1 = 2.1
    ]
    reservations = {}
    for name, at_us, expected, _, _ in stream:
        table = in_force(tables, at_us)
        job = request(cores=2)
        answer = quote(table, job, now_us=at_us)
        assert Fraction(answer.cost.numerator, answer.cost.denominator) == expected, name
        reservations[name] = answer.basis
    assert [reservations[name].version for name, *_ in stream] == [1, 1, 2, 2]
    by_version = {table.version: table for table in tables}
    for name, _, _, elapsed_s, credits in stream:
        basis = reservations[name]
        assert charge(by_version[basis.version], usage(cores=2, elapsed_s=elapsed_s), basis).credits == credits, name
    refused("PriceTableMismatch", charge, V2, usage(cores=2), reservations["a"])
    refused("PriceTableMismatch", estimate, V1, request(cores=2), reservations["c"])


def test_versions_in_force_and_successors():
    assert in_force([V2, V1], T1_US - 1) is V1
    assert in_force([V1, V2], T1_US) is V2
    refused("NoPriceTable", in_force, [V1, V2], T0_US - 1)
    refused("NoPriceTable", in_force, [], T0_US)
    check_successor(None, V1, now_us=T0_US)
    check_successor(V1, V2, now_us=T0_US + 1)
    refused("PriceTableVersion", check_successor, None, V2, now_us=T0_US)
    refused("PriceTableVersion", check_successor, V1, dataclasses.replace(V2, version=3), now_us=T0_US)
    refused("PriceTableVersion", check_successor, V2, V2, now_us=T0_US)
    refused("InvalidPriceTable", check_successor, V1, V2, now_us=T1_US + 1)                 # after the fact
    refused("InvalidPriceTable", check_successor, V1, dataclasses.replace(V2, effective_us=T0_US), now_us=T0_US)
    refused("InvalidPriceTable", check_successor, V1, dataclasses.replace(V2, site="south"), now_us=T0_US)
    refused("PriceTableNotInForce", quote, V2, request(), now_us=T1_US - 1)


# ---------------------------------------------------------------------------------------------
# Guaranteed quotes


def test_a_guaranteed_quote_is_honoured_until_it_expires_after_a_price_change():
    job = request(cores=4, time_limit_s=2 * HOUR_S)
    promised = quote(V1, job, now_us=T1_US - 10 * SECOND_US, quote_id="q-1", guarantee_s=600)
    assert promised.guaranteed and promised.valid_until_us == T1_US + 590 * SECOND_US
    at_us = T1_US + 60 * SECOND_US                                # version 2 in force now
    assert in_force((V1, V2), at_us) is V2
    basis = honour(promised, job, site="north", now_us=at_us)
    assert basis.version == 1 and estimate(V1, job, basis).credits == promised.cost.credits == 8
    smaller = request(cores=2, time_limit_s=HOUR_S)
    assert estimate(V1, smaller, honour(promised, smaller, site="north", now_us=promised.valid_until_us)).credits == 2
    refused("QuoteExpired", honour, promised, job, site="north", now_us=promised.valid_until_us + 1)
    refused("QuoteMismatch", honour, promised, request(cores=5, time_limit_s=2 * HOUR_S), site="north", now_us=at_us)
    refused("QuoteMismatch", honour, promised, request(cores=4, time_limit_s=2 * HOUR_S, memory_mb=1), site="north",
            now_us=at_us)
    refused("QuoteMismatch", honour, promised, request(qos="high", cores=4), site="north", now_us=at_us)
    refused("QuoteMismatch", honour, promised, job, site="south", now_us=at_us)
    refused("QuoteNotGuaranteed", honour, quote(V1, job, now_us=T0_US), job, site="north", now_us=T0_US)


def test_a_guaranteed_load_priced_quote_keeps_its_multiplier():
    job = request("load", cores=10)
    promised = quote(V1, job, now_us=T0_US, occupancy=Occupancy(0, 1), quote_id="q-quiet", guarantee_s=60)
    basis = honour(promised, job, site="north", now_us=T0_US + 60 * SECOND_US)
    assert basis.multiplier == Multiplier(4, 5) and estimate(V1, job, basis).credits == 9


def test_quote_guarantee_refusals():
    refused("InvalidQuote", quote, V1, request(), now_us=T0_US, guarantee_s=60)                 # no quote id
    refused("InvalidQuote", quote, V1, request(), now_us=T0_US, quote_id="q 1", guarantee_s=60)
    refused("InvalidQuote", quote, V1, request(), now_us=T0_US, quote_id="q-1",
            guarantee_s=pricing.QUOTE_GUARANTEE_S_MAX + 1)
    refused("InvalidQuote", quote, V1, request(), now_us=T0_US, quote_id="q-1", guarantee_s=-1)
    refused("InvalidQuote", quote, V1, request(), now_us=T0_US, quote_id="q-1", guarantee_s=1.5)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("price", [-1, types.PRICE_MICRO_MAX + 1, 1.5, True, "1", None])
def test_a_bad_price_is_refused(price):
    error = refused("InvalidPriceTable", Rate, "batch", "normal", {**prices(), Metric.GPU: price})
    assert "gpu price" in str(error)


def test_bad_price_tables_are_refused():
    error = refused("InvalidPriceTable", Rate, "batch", "normal", {Metric.CORE_WALL: 1, Metric.JOB: 0})
    assert "does not price cpu, memory, gpu" in str(error)
    refused("InvalidPriceTable", Rate, "batch", "normal", {**prices(), "disk": 1})
    refused("InvalidPriceTable", Rate, "batch", "normal", tuple(prices().items()) + ((Metric.GPU, 0),))
    refused("InvalidPriceTable", Rate, "batch", "normal", 5)
    assert Rate("batch", "normal", tuple(prices(job=1).items())) == Rate("batch", "normal", prices(job=1))
    refused("InvalidPriceTable", Rate, "bad name", "normal", prices())
    refused("InvalidPriceTable", Rate, "batch", "", prices())
    refused("InvalidPriceTable", Rate, "batch", "x" * 65, prices())
    refused("InvalidPriceTable", Rate, "batch\u202e", "normal", prices())
    refused("InvalidPriceTable", PriceTable, "north", 1, T0_US, ())
    refused("InvalidPriceTable", PriceTable, "north", 1, T0_US, RATES_V1 + RATES_V1[:1])        # twice
    refused("InvalidPriceTable", PriceTable, "north", 0, T0_US, RATES_V1)
    refused("InvalidPriceTable", PriceTable, "north", 1, -1, RATES_V1)
    refused("InvalidPriceTable", PriceTable, "north", 1, T0_US, RATES_V1, "allocated")
    many = tuple(Rate(f"p{index}", "normal", prices()) for index in range(types.RATES_MAX + 1))
    refused("InvalidPriceTable", PriceTable, "north", 1, T0_US, many)
    PriceTable("north", 1, T0_US, many[:-1])


@pytest.mark.parametrize("low, high, least, greatest", [(500, 500, 800, 2000), (900, 500, 800, 2000),
                                                         (0, 1000, 2000, 800), (0, 1000, 0, 1000),
                                                         (0, 1001, 800, 2000), (-1, 1000, 800, 2000),
                                                         (0, 1000, 800, types.MULTIPLIER_PERMILLE_MAX + 1)])
def test_bad_load_pricing_is_refused(low, high, least, greatest):
    refused("InvalidPriceTable", LoadPricing, low, high, least, greatest)


@pytest.mark.parametrize("field, value", [
    ("cores", 0), ("cores", types.CORES_MAX + 1), ("cores", 2.0), ("cores", True),
    ("time_limit_s", 0), ("time_limit_s", types.TIME_LIMIT_S_MAX + 1),
    ("memory_mb", -1), ("memory_mb", types.MEMORY_MB_MAX + 1),
    ("gpus", -1), ("gpus", types.GPUS_MAX + 1), ("nodes", 0), ("nodes", 2),          # 2 nodes for 1 core
    ("partition", "a b"), ("qos", ""),
])
def test_absurd_job_requests_are_refused(field, value):
    refused("InvalidJobRequest", dataclasses.replace, request(), **{field: value})


@pytest.mark.parametrize("field, value", [
    ("elapsed_s", -1), ("elapsed_s", types.ELAPSED_S_MAX + 1), ("total_cpu_ms", -1),
    ("total_cpu_ms", types.TOTAL_CPU_MS_MAX + 1), ("cores", -1), ("memory_mb", -1), ("gpus", -1),
    ("max_rss_mb", types.MEMORY_MB_MAX + 1), ("elapsed_s", 1.0),
])
def test_bad_usage_is_refused(field, value):
    refused("InvalidUsage", dataclasses.replace, usage(), **{field: value})


def test_unknown_partition_and_qos():
    error = refused("UnknownPartition", quote, V1, request("debug"), now_us=T0_US)
    assert "'batch', 'cpu', 'gpu', 'load'" in str(error)
    error = refused("UnknownQos", quote, V1, request(qos="low"), now_us=T0_US)
    assert "'high', 'normal'" in str(error)
    basis = types.PricingBasis("north", 1, "batch", "normal")
    refused("UnknownPartition", charge, V1, usage("debug"), basis)
    refused("UnknownQos", charge, V1, usage(qos="low"), basis)


def test_load_pricing_needs_the_occupancy():
    refused("OccupancyRequired", quote, V1, request("load"), now_us=T0_US)
    refused("InvalidOccupancy", Occupancy, 1, 0)
    refused("InvalidOccupancy", Occupancy, -1, 10)
    quote(V1, request(), now_us=T0_US, occupancy=Occupancy(3, 4))              # ignored where the rate has none


def test_a_cost_too_large_is_refused_and_the_limit_is_the_banks():
    from gridcredit.services.bank.ledger import AMOUNT_MAX
    assert pricing.COST_CREDITS_MAX == AMOUNT_MAX
    dear = PriceTable("north", 1, T0_US, (Rate("batch", "normal", prices(core_hour=types.PRICE_MICRO_MAX)),))
    refused("CostTooLarge", quote, dear, request(cores=types.CORES_MAX, time_limit_s=types.TIME_LIMIT_S_MAX),
            now_us=T0_US)
    # the largest job at the largest price of every metric and multiplier is still computed exactly
    greatest = types.MULTIPLIER_PERMILLE_MAX
    everything = PriceTable("north", 1, T0_US, (Rate("batch", "normal", {metric: 1 for metric in Metric},
                                                      load=LoadPricing(0, 1000, greatest, greatest)),))
    job = request(cores=types.CORES_MAX, time_limit_s=types.TIME_LIMIT_S_MAX, memory_mb=types.MEMORY_MB_MAX,
                  gpus=types.GPUS_MAX, nodes=types.NODES_MAX)
    cost = quote(everything, job, now_us=T0_US, occupancy=Occupancy(1, 1)).cost
    assert Fraction(cost.numerator, cost.denominator) == fraction_oracle(everything.rates[0],
                                                                         pricing.request_quantities(job),
                                                                         Fraction(greatest, 1000))


def float_uses(source: str) -> list[str]:
    """Float literals, true divisions and float-making names in Python ``source`` (strings and
    comments aside)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        text = token.string.lower()
        if token.type == tokenize.NUMBER and not text.startswith(("0x", "0o", "0b")) \
                and any(mark in text for mark in (".", "e", "j")):
            found.append(f"{token.string} at line {token.start[0]}")
        elif token.type == tokenize.OP and token.string in ("/", "/="):
            found.append(f"{token.string} at line {token.start[0]}")
        elif token.type == tokenize.NAME and token.string in ("float", "Fraction", "Decimal", "round", "truediv"):
            found.append(f"{token.string} at line {token.start[0]}")
    return found


def test_the_pricing_code_has_no_floats():
    """No float literal, no true division, no float() in the pricing core: integers only."""
    assert float_uses('x = 1.5\ny = a / b\nz = float(c) // 2  # 2.5 / 3\nw = "1.5 / 2"\nv = 1e3\n') == \
        ["1.5 at line 1", "/ at line 2", "float at line 3", "1e3 at line 5"]
    for module in (pricing, types):
        assert float_uses(inspect.getsource(module)) == [], module.__name__


# ---------------------------------------------------------------------------------------------
# Properties, against an exact Fraction oracle


def fraction_oracle(rate: Rate, quantities: dict[Metric, int], multiplier: Fraction) -> Fraction:
    total = Fraction(0)
    for metric in Metric:
        amount = Fraction(quantities[metric] * rate.price_micro(metric),
                          pricing.METRIC_UNITS[metric].base_per_price_unit * 1_000_000)
        total += amount * multiplier if metric is not Metric.JOB else amount
    return total


def half_up(amount: Fraction) -> int:
    return (amount + Fraction(1, 2)).__floor__()


price_values = st.integers(0, 10**9)
loads = st.integers(0, 999).flatmap(lambda low: st.builds(
    lambda high, least, extra: LoadPricing(low, high, least, least + extra),
    st.integers(low + 1, 1000), st.integers(1, 5000), st.integers(0, 5000)))
rates = st.builds(lambda values, load: Rate("batch", "normal", dict(zip(Metric, values)), load=load),
                  st.lists(price_values, min_size=5, max_size=5), st.none() | loads)
occupancies = st.builds(lambda capacity, used: Occupancy(used % (2 * capacity + 1), capacity),
                        st.integers(1, 10**6), st.integers(0, 10**7))
requests = st.builds(lambda cores, time_limit_s, memory_mb, gpus: request(cores=cores, time_limit_s=time_limit_s,
                                                                           memory_mb=memory_mb, gpus=gpus),
                     st.integers(1, 4096), st.integers(1, 10**6), st.integers(0, 10**7), st.integers(0, 64))
usages = st.builds(lambda elapsed_s, total_cpu_ms, cores, memory_mb, gpus, max_rss_mb:
                   usage(elapsed_s=elapsed_s, total_cpu_ms=total_cpu_ms, cores=cores, memory_mb=memory_mb,
                         gpus=gpus, max_rss_mb=max_rss_mb),
                   st.integers(0, 10**6), st.integers(0, 10**12), st.integers(0, 4096), st.integers(0, 10**7),
                   st.integers(0, 64), st.integers(0, 10**7))
memory_bases = st.sampled_from(MemoryBasis)


def table_of(rate: Rate, memory_basis: MemoryBasis = MemoryBasis.ALLOCATED) -> PriceTable:
    return PriceTable("north", 1, T0_US, (rate,), memory_basis)


@settings(max_examples=300, deadline=None)
@given(rates, requests, occupancies)
def test_a_quote_is_exact_against_the_fraction_oracle(rate, job, occupancy):
    table = table_of(rate)
    cost = quote(table, job, now_us=T0_US, occupancy=occupancy).cost
    multiplier = Fraction(cost.multiplier.numerator, cost.multiplier.denominator)
    exact = fraction_oracle(rate, pricing.request_quantities(job), multiplier)
    assert sum(line.numerator for line in cost.lines) == cost.numerator                # breakdown = total, unrounded
    assert Fraction(cost.numerator, cost.denominator) == exact
    assert cost.credits == half_up(exact)
    if rate.load is not None:
        assert Fraction(rate.load.min_permille, 1000) <= multiplier <= Fraction(rate.load.max_permille, 1000)
    else:
        assert multiplier == 1


@settings(max_examples=300, deadline=None)
@given(rates, usages, memory_bases)
def test_a_charge_is_exact_against_the_fraction_oracle(rate, measured, memory_basis):
    table = table_of(rate, memory_basis)
    basis = types.PricingBasis("north", 1, "batch", "normal", Multiplier(3, 2))
    cost = charge(table, measured, basis)
    memory_mb = measured.memory_mb if memory_basis is MemoryBasis.ALLOCATED else measured.max_rss_mb
    quantities = {Metric.CORE_WALL: measured.cores * measured.elapsed_s, Metric.CPU: measured.total_cpu_ms,
                  Metric.MEMORY: memory_mb * measured.elapsed_s, Metric.GPU: measured.gpus * measured.elapsed_s,
                  Metric.JOB: 1}
    exact = fraction_oracle(rate, quantities, Fraction(3, 2))
    assert sum(line.numerator for line in cost.lines) == cost.numerator
    assert Fraction(cost.numerator, cost.denominator) == exact
    assert cost.credits == half_up(exact)


USAGE_FIELDS = ("elapsed_s", "total_cpu_ms", "cores", "memory_mb", "gpus", "max_rss_mb")


@settings(max_examples=300, deadline=None)
@given(rates, usages, memory_bases, st.sampled_from(USAGE_FIELDS), st.integers(1, 1000))
def test_a_charge_is_monotone_in_each_usage_metric(rate, measured, memory_basis, field, more):
    table = table_of(rate, memory_basis)
    basis = types.PricingBasis("north", 1, "batch", "normal", Multiplier(7, 5))
    larger = dataclasses.replace(measured, **{field: getattr(measured, field) + more})
    before, after = charge(table, measured, basis), charge(table, larger, basis)
    assert after.credits >= before.credits
    assert after.numerator >= before.numerator            # one denominator: the exact amounts compare directly


REQUEST_FIELDS = ("cores", "time_limit_s", "memory_mb", "gpus")


@settings(max_examples=200, deadline=None)
@given(rates, requests, occupancies, st.sampled_from(REQUEST_FIELDS), st.integers(1, 1000))
def test_an_estimate_is_monotone_in_the_request_and_covers_a_smaller_usage(rate, job, occupancy, field, more):
    table = table_of(rate)
    basis = pricing.basis_for(table, job, now_us=T0_US, occupancy=occupancy)
    larger = dataclasses.replace(job, **{field: getattr(job, field) + more})
    assert estimate(table, larger, basis).credits >= estimate(table, job, basis).credits
    # a job that used at most what it asked for is never charged more than its estimate
    within = usage(elapsed_s=job.time_limit_s, total_cpu_ms=job.cores * job.time_limit_s * 1000, cores=job.cores,
                   memory_mb=job.memory_mb, gpus=job.gpus)
    assert charge(table, within, basis).credits <= estimate(table, job, basis).credits


@settings(max_examples=200, deadline=None)
@given(loads, occupancies, st.integers(0, 10**6))
def test_the_load_multiplier_is_bounded_and_monotone_in_occupancy(load, occupancy, more):
    least, extra = load.min_permille, load.max_permille - load.min_permille
    now = pricing.load_multiplier(load, occupancy)
    busier = pricing.load_multiplier(load, Occupancy(occupancy.used + more, occupancy.capacity))
    as_fraction = Fraction(now.numerator, now.denominator)
    assert Fraction(least, 1000) <= as_fraction <= Fraction(least + extra, 1000)
    assert Fraction(busier.numerator, busier.denominator) >= as_fraction
    occupancy_permille = Fraction(1000 * occupancy.used, occupancy.capacity)
    clamped = min(max(occupancy_permille, load.low_permille), load.high_permille)
    expected = (Fraction(least) + Fraction(extra) * (clamped - load.low_permille)
                / (load.high_permille - load.low_permille)) / 1000
    assert as_fraction == expected


# ---------------------------------------------------------------------------------------------
# Who may set prices (services/jarm/policy.py)


def test_only_price_administrators_set_price_tables():
    admin = Principal("/DC=org/DC=grid/CN=Paula Prices")
    rules = policy.BOOK.rules
    assert rules["SetPriceTable"].changes_state and not rules["Quote"].changes_state
    # served since the SOAP face exists (services/jarm/service.py; the WSDL walk checks it)
    assert all(rules[name].soap for name in ("SetPriceTable", "GetPriceTable", "Quote", "WhoAmI"))
    book = policy.JarmPolicy(price_admins=frozenset({admin.dn}))
    before = policy.BOOK.decisions()
    policy.authorize_set_price_table(book, admin)
    error = refused("NotAuthorized", policy.authorize_set_price_table, book, Principal("/DC=org/DC=grid/CN=Stan"))
    assert "not a price administrator" in str(error)
    refused("NotAuthorized", policy.authorize_set_price_table, book,
            dataclasses.replace(admin, is_proxy=True, limited=True))
    policy.authorize_anyone("Quote")
    policy.authorize_anyone("GetPriceTable")
    after = policy.BOOK.decisions()
    changes = {key: after.get(key, 0) - before.get(key, 0) for key in after if after.get(key, 0) != before.get(key, 0)}
    assert changes == {("SetPriceTable", True): 1, ("SetPriceTable", False): 2, ("Quote", True): 1,
                       ("GetPriceTable", True): 1}


def test_the_sites_longest_guarantee_is_the_cores():
    from gridcredit.services.jarm.config import QUOTE_GUARANTEE_S_MAX

    assert QUOTE_GUARANTEE_S_MAX == pricing.QUOTE_GUARANTEE_S_MAX
