"""gridcredit.timeunits: the one µs ↔ datetime conversion, integer-exact at the extremes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridcredit.timeunits import EPOCH, datetime_from_us, datetime_to_us, rfc3339

UTC = timezone.utc
FIRST = datetime.min.replace(tzinfo=UTC)          # 0001-01-01T00:00:00Z
LAST = datetime.max.replace(tzinfo=UTC)           # 9999-12-31T23:59:59.999999Z


@pytest.mark.parametrize("moment, us", [
    (EPOCH, 0),
    (EPOCH + timedelta(microseconds=1), 1),
    (EPOCH - timedelta(microseconds=1), -1),
    (datetime(2026, 11, 1, tzinfo=UTC), 1_793_491_200_000_000),
    (FIRST, -62_135_596_800_000_000),
    (LAST, 253_402_300_799_999_999),
])
def test_known_instants(moment, us):
    assert datetime_to_us(moment) == us
    assert datetime_from_us(us) == moment and datetime_from_us(us).tzinfo == UTC


def test_the_last_microsecond_of_year_9999_round_trips_where_a_float_cannot():
    us = datetime_to_us(LAST)
    assert datetime_from_us(us) == LAST
    # What the LUTS did before (datetime.fromtimestamp(us / 1e6)): the float is a later instant.
    with pytest.raises(ValueError):
        datetime.fromtimestamp(us / 1e6, UTC)
    near_end = us - 10 * 365 * 86_400 * 1_000_000
    assert datetime.fromtimestamp(near_end / 1e6, UTC) != datetime_from_us(near_end)


def test_an_aware_time_in_any_zone_is_the_same_instant():
    in_utc = datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=UTC)
    for hours in (-12, -5, 0, 1, 5.5, 14):
        zone = timezone(timedelta(hours=hours))
        assert datetime_to_us(in_utc.astimezone(zone)) == datetime_to_us(in_utc)
    assert datetime_to_us(FIRST.astimezone(timezone(timedelta(hours=5)))) == datetime_to_us(FIRST)


def test_naive_times_floats_and_bools_are_refused():
    with pytest.raises(ValueError, match="naive"):
        datetime_to_us(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        datetime_from_us(1.5)
    with pytest.raises(TypeError):
        datetime_from_us(True)
    with pytest.raises(OverflowError):
        datetime_from_us(datetime_to_us(LAST) + 1)


@given(st.integers(min_value=datetime_to_us(FIRST), max_value=datetime_to_us(LAST)))
def test_every_microsecond_in_range_round_trips(us):
    assert datetime_to_us(datetime_from_us(us)) == us


@given(st.datetimes(min_value=datetime.min, max_value=datetime.max,
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-9)), timezone(timedelta(minutes=330))])))
def test_every_aware_datetime_round_trips(moment):
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return  # an offset that pushes it outside years 1-9999 in UTC: not an instant datetime can hold
    assert datetime_from_us(datetime_to_us(moment)) == moment


@pytest.mark.parametrize("moment, text", [
    (datetime(2026, 11, 1, tzinfo=UTC), "2026-11-01T00:00:00Z"),
    (datetime(2026, 11, 1, 1, 0, 0, 120, tzinfo=timezone(timedelta(hours=1))), "2026-11-01T00:00:00.000120Z"),
    (FIRST, "0001-01-01T00:00:00Z"),
    (LAST, "9999-12-31T23:59:59.999999Z"),
])
def test_rfc3339_is_utc_with_a_z(moment, text):
    assert rfc3339(moment) == text
