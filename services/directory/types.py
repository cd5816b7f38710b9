"""The directory's domain types: a host's registration as an auctioneer sends it, and as it is listed.

Units (notes/MARKET-DESIGN.md): a rate is integer micro-credits per second (``*_ucps``; 1 credit/s =
1,000,000); a price is a rate per CPU. On the wire and the command line both are decimal credits per
second with at most six fraction digits (:func:`rate_from_decimal`, :func:`rate_to_decimal`), exact: no
float anywhere. Times are integer µs since the epoch (``*_us``), durations whole seconds (``*_s``).

An auctioneer registers the exact sum of its live bids' rates (``total_rate_ucps``); the directory
derives the current price from it, floor(Σ rates / capacity) µcr/s per CPU (:attr:`HostEntry.price_ucps`)
— one source of truth, and the exact Σ a bidder's best response needs (price × capacity would lose up to
capacity − 1 µcr/s).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from gridcredit.errors import DomainError
from gridcredit.text import hidden_character

INVALID_ARGUMENT = "InvalidArgument"
UNKNOWN_HOST = "UnknownHost"
HOST_ID_TAKEN = "HostIdTaken"
TOO_MANY_HOSTS = "TooManyHosts"

UCPS_PER_CREDIT = 1_000_000
HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
URL_CHARS_MAX = 512
CAPACITY_CPUS_MAX = 4_096
RATE_UCPS_MAX = 10**15                  # a billion credits per second: beyond any market, below 2**53
LIVE_BIDS_MAX = 1_000_000
INTERVAL_S_MIN, INTERVAL_S_MAX = 1, 3_600
TTL_S_MIN, TTL_S_MAX = 10, 86_400       # the configuration may lower the most (ttl_s_max)


_MICRO = Decimal("0.000001")
_RATE_MAX = Decimal(RATE_UCPS_MAX).scaleb(-6)


def _refuse(message: str) -> DomainError:
    return DomainError(message, INVALID_ARGUMENT)


def rate_from_decimal(value, what: str = "a rate") -> int:
    """A decimal number of credits per second (``Decimal``, ``int`` or its text) as integer µcr/s,
    exactly; more than six fraction digits, a negative, non-finite or absurd value is refused
    (``InvalidArgument``)."""
    if isinstance(value, float) or isinstance(value, bool):
        raise _refuse(f"{what} is a decimal number of credits per second, never a float: {value!r}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise _refuse(f"{what} must be a decimal number of credits per second, not {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise _refuse(f"{what} must be a finite number of credits per second, not {number}")
    if number < 0:
        raise _refuse(f"{what} cannot be negative ({number} credits/s)")
    if number > _RATE_MAX:          # before any arithmetic: 1E+100000000 must not become a huge integer
        raise _refuse(f"{what} of {number:.6E} credits/s is beyond the most the directory takes "
                      f"({RATE_UCPS_MAX // UCPS_PER_CREDIT:,} credits/s)")
    if number.as_tuple().exponent < -6 and number != number.quantize(_MICRO):
        raise _refuse(f"{what} has at most 6 decimals (a micro-credit per second), not {number:.12g}")
    return int(number.scaleb(6))


def rate_to_decimal(ucps: int) -> Decimal:
    """Integer µcr/s as decimal credits per second with six decimals (``Decimal('1.500000')``)."""
    return Decimal(ucps).scaleb(-6).quantize(_MICRO)


def rate_text(ucps: int) -> str:
    """µcr/s as a person reads it: credits per second, trailing zeros dropped (``1.5``, ``0.000001``, ``2``)."""
    whole, fraction = divmod(ucps, UCPS_PER_CREDIT)
    return f"{whole:,}" + (f".{fraction:06d}".rstrip("0") if fraction else "")


@dataclass(frozen=True, slots=True)
class Registration:
    """What an auctioneer says of its host in one Register (heartbeat)."""
    host_id: str
    auctioneer_url: str
    capacity_cpus: int
    total_rate_ucps: int                # Σ of the live bids' rates (at or above the reserve price)
    hour_average_price_ucps: int        # the average price over the last hour, µcr/s per CPU
    live_bids: int
    interval_s: int
    ttl_s: int
    reserve_price_ucps: int = 0         # the reserve price: a bid below it gets no share (µcr/s)

    def check(self, *, ttl_s_max: int = TTL_S_MAX) -> None:
        """Refuse what is out of range (``InvalidArgument``, with what and why)."""
        check_host_id(self.host_id)
        check_url(self.auctioneer_url)
        for name, low, high in (("capacity_cpus", 1, CAPACITY_CPUS_MAX), ("total_rate_ucps", 0, RATE_UCPS_MAX),
                                ("hour_average_price_ucps", 0, RATE_UCPS_MAX),
                                ("reserve_price_ucps", 0, RATE_UCPS_MAX), ("live_bids", 0, LIVE_BIDS_MAX),
                                ("interval_s", INTERVAL_S_MIN, INTERVAL_S_MAX), ("ttl_s", TTL_S_MIN, ttl_s_max)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise _refuse(f"{name} must be a whole number from {low:,} to {high:,}, not {value!r}")


def check_host_id(host_id) -> str:
    if not isinstance(host_id, str) or not HOST_ID.fullmatch(host_id):
        shown = host_id if not isinstance(host_id, str) else host_id[:80]
        raise _refuse(f"a host id is 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit, "
                      f"not {shown!r}")
    return host_id


def check_url(url) -> str:
    """The auctioneer's base URL: ``https://host[:port][/path]``, at most 512 characters, nothing hidden."""
    if not isinstance(url, str) or not url:
        raise _refuse("the auctioneer URL is missing: give its https:// base URL")
    if len(url) > URL_CHARS_MAX:
        raise _refuse(f"the auctioneer URL has at most {URL_CHARS_MAX} characters, not {len(url):,}")
    hidden = hidden_character(url)
    if hidden is not None or any(character.isspace() for character in url):
        raise _refuse(f"the auctioneer URL holds {hidden or 'a space'}: {url[:80]!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise _refuse(f"the auctioneer URL {url[:80]!r} cannot be read: {error}") from None
    if parts.scheme != "https":
        raise _refuse(f"the auctioneer URL must be https:// (every call to it is signed over TLS), not {url[:80]!r}")
    if not parts.hostname or parts.username is not None or parts.password is not None or parts.query \
            or parts.fragment:
        raise _refuse(f"the auctioneer URL is https://host[:port][/path], with no user, query or fragment: "
                      f"{url[:80]!r}")
    if port == 0:
        raise _refuse(f"the auctioneer URL names port 0: {url[:80]!r}")
    return url


def url_host(url: str) -> str:
    """The host name of a checked URL, lower case (an IPv6 address without its brackets)."""
    return (urlsplit(url).hostname or "").lower()


@dataclass(frozen=True, slots=True)
class HostEntry:
    """A host as the directory lists it: the auctioneer's last registration and the directory's own fields
    (who registered it first and owns the id, when, until when it is listed)."""
    host_id: str
    auctioneer_url: str
    capacity_cpus: int
    total_rate_ucps: int
    price_ucps: int                     # floor(total_rate_ucps / capacity_cpus): µcr/s per CPU
    hour_average_price_ucps: int
    live_bids: int
    interval_s: int
    ttl_s: int
    registrant_dn: str
    registered_us: int                  # the first registration of this id by its owner
    updated_us: int                     # the last heartbeat
    expires_us: int                     # not listed after this (updated_us + ttl_s)
    reserve_price_ucps: int = 0         # a bid below it gets no share there (µcr/s)


def current_price_ucps(total_rate_ucps: int, capacity_cpus: int) -> int:
    """Σ rates / capacity, rounded down to a micro-credit per second per CPU."""
    return total_rate_ucps // capacity_cpus
