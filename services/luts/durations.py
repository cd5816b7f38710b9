"""Exact xsd:duration and xsd:dateTime reading for usage records: integers, never floats.

Durations
    ``parse_duration(text)`` reads an xsd:duration (``P1DT2H3M4.5S``, ``PT3600S``, ``-PT1S``) or
    the plain-seconds form some reporters write (``3600``, ``3600.0``) into integer
    **microseconds** (the unit of time everywhere in gridcredit; the Bank counts time in µs too).
    Arithmetic is on digit strings and integers only.

    * Days are 86,400 s, hours 3,600 s, minutes 60 s (a usage duration is elapsed time).
    * Years and months have no fixed length in seconds: a duration with a non-zero ``Y`` or ``M``
      (date part) is refused with a message saying so; ``P0Y0M1D`` is accepted.
    * Only the seconds may have a fraction (as in XSD). Digits finer than a microsecond are
      rounded half to even and the result says so (``rounded``); callers record a warning.
    * The sign is kept: ``-PT1S`` is −1,000,000 µs. Whether a negative duration makes sense is
      for the caller (a usage record refuses it).
    * Magnitudes above ``DURATION_US_MAX`` (10**18 µs, about 31,700 years: still an int64) are
      refused; the text is at most ``DURATION_TEXT_MAX`` characters.
    * Surrounding XML whitespace is ignored (xsd whitespace="collapse").

    ``format_duration(us)`` writes the canonical xsd:duration (``P1DT2H3M4.5S``, ``PT0S``), which
    ``parse_duration`` reads back to the same integer.

Date-times
    ``parse_datetime(text)`` reads an xsd:dateTime into an aware UTC ``datetime``:

    * ``YYYY-MM-DDThh:mm:ss[.fff…][Z|±hh:mm]``, years 0001–9999 (Python's range).
    * No time zone: the value is taken as UTC and ``notes`` says so (a record's warnings carry it).
    * ``24:00:00`` is the first instant of the next day (XSD allows it).
    * Digits finer than a microsecond are truncated (never rounded: rounding could move the
      instant to the next second, day or year) and ``notes`` says so.
    * Leap seconds (``:60``) are refused: ``datetime`` cannot hold them.

    ``format_datetime(dt)`` writes ``YYYY-MM-DDThh:mm:ss[.ffffff]Z`` (fraction only when non-zero);
    ``datetime_to_us``/``datetime_from_us`` (from ``gridcredit.timeunits``, the one conversion)
    convert to and from integer µs since the Unix epoch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from gridcredit.errors import DomainError
from gridcredit.timeunits import US_PER_S, datetime_from_us, datetime_to_us  # noqa: F401 — re-exported

US_PER_MINUTE = 60 * US_PER_S
US_PER_HOUR = 3_600 * US_PER_S
US_PER_DAY = 86_400 * US_PER_S
DURATION_US_MAX = 10**18
DURATION_TEXT_MAX = 64
DATETIME_TEXT_MAX = 64
OFFSET_MINUTES_MAX = 14 * 60


class DurationError(DomainError):
    """A duration or date-time that cannot be read; the message quotes it and says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="InvalidUsageRecord")


@dataclass(frozen=True, slots=True)
class Duration:
    us: int                     # signed microseconds
    form: str                   # "xsd" (xsd:duration) or "seconds" (a plain number of seconds)
    rounded: bool = False       # digits below a microsecond were rounded half to even


@dataclass(frozen=True, slots=True)
class Instant:
    value: datetime                     # aware, tzinfo=UTC
    notes: tuple[str, ...] = ()         # lenient readings (no time zone, truncated digits)


_XSD_DURATION = re.compile(
    r"(?P<sign>-)?P"
    r"(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d*)?|\.\d+)S)?)?"
)
_PLAIN_SECONDS = re.compile(r"(?P<sign>[-+])?(?P<seconds>\d+(?:\.\d*)?|\.\d+)")


def _quote(text: str) -> str:
    shown = text if len(text) <= 40 else text[:40] + "…"
    return repr(shown)


def _seconds_to_us(digits: str) -> tuple[int, bool]:
    """``"4.5"`` → (4_500_000, False): decimal seconds to µs, half-even below a microsecond."""
    whole, _, fraction = digits.partition(".")
    us = int(whole or "0") * US_PER_S
    if len(fraction) <= 6:
        return us + int((fraction + "000000")[:6]), False
    kept, rest = int(fraction[:6]), fraction[6:]
    if rest.strip("0") == "":
        return us + kept, False
    half = "5" + "0" * (len(rest) - 1)
    if rest > half or (rest == half and kept % 2 == 1):
        kept += 1
    return us + kept, True


def parse_duration(text: str) -> Duration:
    """Read an xsd:duration or plain seconds into µs; ``DurationError`` says what is wrong."""
    if not isinstance(text, str):
        raise TypeError("parse_duration takes a str")
    value = text.strip(" \t\r\n")
    if not value:
        raise DurationError("the duration is empty")
    if len(value) > DURATION_TEXT_MAX:
        raise DurationError(f"the duration {_quote(value)} is longer than {DURATION_TEXT_MAX} characters")
    match = _XSD_DURATION.fullmatch(value)
    if match is not None:
        parts = match.groupdict()
        has_date = any(parts[name] is not None for name in ("years", "months", "days"))
        has_time = any(parts[name] is not None for name in ("hours", "minutes", "seconds"))
        if not (has_date or has_time):
            raise DurationError(f"the duration {_quote(value)} has no number in it (e.g. PT0S)")
        if "T" in value and not has_time:
            raise DurationError(f"the duration {_quote(value)} has a 'T' with no hours, minutes or seconds after it")
        if int(parts["years"] or "0") or int(parts["months"] or "0"):
            raise DurationError(
                f"the duration {_quote(value)} counts years or months, whose length in seconds is ambiguous;"
                " write it in days, hours, minutes and seconds")
        seconds_us, rounded = _seconds_to_us(parts["seconds"] or "0")
        us = (int(parts["days"] or "0") * US_PER_DAY + int(parts["hours"] or "0") * US_PER_HOUR
              + int(parts["minutes"] or "0") * US_PER_MINUTE + seconds_us)
        form = "xsd"
    else:
        match = _PLAIN_SECONDS.fullmatch(value)
        if match is None:
            raise DurationError(
                f"the duration {_quote(value)} is neither an xsd:duration (e.g. PT1H2M3.5S) nor a number of seconds")
        parts = match.groupdict()
        us, rounded = _seconds_to_us(parts["seconds"])
        form = "seconds"
    if abs(us) > DURATION_US_MAX:
        raise DurationError(f"the duration {_quote(value)} is longer than {DURATION_US_MAX // US_PER_DAY:,} days")
    if parts["sign"] == "-":
        us = -us
    return Duration(us=us, form=form, rounded=rounded)


def parse_duration_us(text: str) -> int:
    """Shortcut: the signed microseconds of ``parse_duration(text)``."""
    return parse_duration(text).us


def format_duration(us: int) -> str:
    """The canonical xsd:duration of ``us`` microseconds: ``P1DT2H3M4.5S``, ``PT0S``, ``-PT1S``."""
    if type(us) is not int:
        raise TypeError("format_duration takes an int (microseconds)")
    sign = "-" if us < 0 else ""
    rest = abs(us)
    days, rest = divmod(rest, US_PER_DAY)
    hours, rest = divmod(rest, US_PER_HOUR)
    minutes, rest = divmod(rest, US_PER_MINUTE)
    seconds, micro = divmod(rest, US_PER_S)
    date_part = f"{days}D" if days else ""
    time_part = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or micro:
        time_part += str(seconds) + (f".{micro:06d}".rstrip("0") if micro else "") + "S"
    if not date_part and not time_part:
        return "PT0S"
    return f"{sign}P{date_part}" + (f"T{time_part}" if time_part else "")


_XSD_DATETIME = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d\d)-(?P<day>\d\d)T"
    r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>Z|[+-]\d\d:\d\d)?"
)


def parse_datetime(text: str) -> Instant:
    """Read an xsd:dateTime into an aware UTC datetime; ``DurationError`` says what is wrong."""
    if not isinstance(text, str):
        raise TypeError("parse_datetime takes a str")
    value = text.strip(" \t\r\n")
    if not value:
        raise DurationError("the date-time is empty")
    if len(value) > DATETIME_TEXT_MAX:
        raise DurationError(f"the date-time {_quote(value)} is longer than {DATETIME_TEXT_MAX} characters")
    match = _XSD_DATETIME.fullmatch(value)
    if match is None:
        raise DurationError(f"the date-time {_quote(value)} is not an xsd:dateTime (e.g. 2013-02-09T15:39:16Z)")
    parts = match.groupdict()
    notes: list[str] = []
    year, month, day = int(parts["year"]), int(parts["month"]), int(parts["day"])
    hour, minute, second = int(parts["hour"]), int(parts["minute"]), int(parts["second"])
    fraction = parts["fraction"] or ""
    if len(fraction) > 6 and fraction[6:].strip("0"):
        notes.append(f"the date-time {_quote(value)} has digits below a microsecond; they were dropped")
    micro = int((fraction + "000000")[:6])
    if year == 0:
        raise DurationError(f"the date-time {_quote(value)} has year 0000, which xsd:dateTime does not have")
    if second == 60:
        raise DurationError(f"the date-time {_quote(value)} is a leap second, which cannot be stored")
    next_day = False
    if hour == 24:
        if minute or second or micro:
            raise DurationError(f"the date-time {_quote(value)} is past 24:00:00")
        hour, next_day = 0, True
    try:
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone.utc)
    except ValueError as error:
        raise DurationError(f"the date-time {_quote(value)} is not a real date or time ({error})") from None
    zone = parts["zone"]
    offset_minutes = 0
    if zone is None:
        notes.append(f"the date-time {_quote(value)} has no time zone; it was taken as UTC")
    elif zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        offset_minutes = zone_hours * 60 + zone_minutes
        if zone_minutes >= 60 or offset_minutes > OFFSET_MINUTES_MAX:
            raise DurationError(f"the date-time {_quote(value)} has a time-zone offset beyond ±14:00")
        if zone[0] == "-":
            offset_minutes = -offset_minutes
    try:
        moment = moment + timedelta(days=1 if next_day else 0) - timedelta(minutes=offset_minutes)
    except OverflowError:
        raise DurationError(f"the date-time {_quote(value)} is outside the years 0001–9999 in UTC") from None
    return Instant(value=moment, notes=tuple(notes))


def format_datetime(moment: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ss[.ffffff]Z`` of an aware datetime (converted to UTC)."""
    if moment.tzinfo is None:
        raise ValueError("format_datetime needs an aware datetime")
    utc = moment.astimezone(timezone.utc)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.year < 1000:
        text = f"{utc.year:04d}" + text[text.index("-"):]
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"
