"""Time as gridcredit counts it: integer microseconds since the Unix epoch, UTC (fields ``*_us``).

Every conversion between such a count and a ``datetime`` goes through this module, and is exact:
integer arithmetic on ``timedelta`` days, seconds and microseconds, never a float. A float holds
53 bits: ``datetime.fromtimestamp(us / 1e6)`` is off by microseconds for instants far from 1970
(it reads 9999-12-31T23:59:59.999999Z as a later instant that does not exist) and its rounding
differs between platforms.

    datetime_to_us(datetime(2026, 11, 1, tzinfo=timezone.utc))   # 1_793_491_200_000_000
    datetime_from_us(1_793_491_200_000_000)                       # 2026-11-01 00:00:00+00:00
    rfc3339(datetime_from_us(1_793_491_200_000_001))             # '2026-11-01T00:00:00.000001Z'

A naive ``datetime`` (no zone) is refused with ``ValueError``: which instant it means is the
caller's decision (the Bank's SOAP face reads an xs:dateTime without a zone as UTC, and says so).
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

US_PER_S = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def datetime_to_us(moment: datetime) -> int:
    """Integer microseconds from 1970-01-01T00:00:00Z to the aware ``moment`` (negative before)."""
    if not isinstance(moment, datetime):
        raise TypeError(f"datetime_to_us takes a datetime, not {type(moment).__name__}")
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        raise ValueError(f"datetime_to_us needs an aware datetime, not {moment.isoformat()} (naive)")
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def datetime_from_us(us: int) -> datetime:
    """The aware UTC datetime ``us`` microseconds after the Unix epoch (``OverflowError`` outside
    years 1–9999)."""
    if type(us) is not int:  # noqa: E721 — bool and floats are refused, an int subclass is not a count
        raise TypeError(f"datetime_from_us takes an int number of microseconds, not {us!r}")
    return EPOCH + timedelta(microseconds=us)


def rfc3339(moment: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ss[.ffffff]Z``: the aware ``moment`` in UTC, microseconds only when not zero.

    How every ``--json`` writes a time."""
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        raise ValueError(f"rfc3339 needs an aware datetime, not {moment.isoformat()} (naive)")
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"


def now_us() -> int:
    """The wall clock as integer microseconds since the epoch."""
    return time.time_ns() // 1000
