"""The typed Auctioneer client: one method per SOAP operation, plain frozen results, safe retries.

    auctioneer = AuctioneerClient("https://host-a.example.org:8443", credential=load_credential(),
                                  trust_dir=trust_directory())
    host = auctioneer.host()                               # HostView: capacity, price, the auctioneer's DN
    bid = auctioneer.bid_with_hold(bank, "proj1", rate_ucps=250_000, max_duration_s=3600, template="small")
    auctioneer.change_bid(bid.bid_id, rate_ucps=500_000)   # from now on
    auctioneer.cancel_bid(bid.bid_id)

Rates are integer micro-credits per second (``rate_ucps``; the wire carries decimal credits per
second). Retries follow the one rule of :class:`gridcredit.client.ServiceClient`: a PlaceBid is keyed
by its hold (one bid per hold: sent again, it answers the bid, ``replayed``), a ChangeBid sets a rate
and a CancelBid ends a bid — each safe to send again; a ConsoleWrite is sent again only when it
cannot have arrived (its bytes would reach the VM twice).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from gridcredit.client import Effect, InvalidRequest, ServiceClient
from gridcredit.wiretypes import array_items

__all__ = ["AuctioneerClient", "BidView", "ConsoleOutput", "HostView", "HOLD_MARGIN_INTERVALS"]

HOLD_MARGIN_INTERVALS = 3        # a hold must outlive a bid's maximum end by two intervals (market.py), and one more


@dataclass(frozen=True, slots=True)
class BidView:
    """A bid as the auctioneer shows it (BidInfo): money whole credits, times µs since the epoch."""

    bid_id: str
    host_id: str
    owner_dn: str
    hold_id: str
    account_id: str
    rate_ucps: int
    template: str
    max_duration_s: int
    state: str                   # live | ended
    end_reason: str              # "" while live; cancelled, max-duration, hold-exhausted, hold-expiring, hold-refused
    placed_us: int
    started_us: int
    max_end_us: int
    ended_us: int
    hold_expires_us: int
    hold_remaining: int
    charged: int
    owed: int
    accrued_pico: int
    share_ppm: int
    vm_name: str
    enforced: str
    replayed: bool = False

    @property
    def live(self) -> bool:
        return self.state == "live"


@dataclass(frozen=True, slots=True)
class HostView:
    host_id: str
    enabled: bool
    auctioneer_dn: str
    owner_account: str
    capacity_cpus: int
    mode: str
    pay_for_use: bool
    interval_s: int
    reserve_ucps: int
    price_ucps: int
    hour_average_price_ucps: int
    total_rate_ucps: int
    live_bids: int
    templates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConsoleOutput:
    data: bytes
    offset: int
    next_offset: int


def _ucps(value) -> int:
    return int(Decimal(value).scaleb(6))


def _bid(info) -> BidView:
    return BidView(info.bid_id, info.host_id, info.owner_dn, info.hold_id, info.account_id, info.rate_ucps,
                   info.template, info.max_duration_s, info.state, info.end_reason or "", info.placed_us,
                   info.started_us, info.max_end_us, info.ended_us or 0, info.hold_expires_us, info.hold_remaining,
                   info.charged, info.owed, int(info.accrued_pico), info.share_ppm, info.vm_name or "",
                   info.enforced or "", bool(info.replayed))


def rate_wire(rate_ucps: int) -> Decimal:
    if type(rate_ucps) is not int:
        raise InvalidRequest(f"a rate is a whole number of micro-credits per second, not {rate_ucps!r}")
    return Decimal(rate_ucps).scaleb(-6)


class AuctioneerClient(ServiceClient):
    """The Auctioneer's SOAP operations as typed methods (see the module docstring for retries)."""

    SERVICE = "auctioneer"

    def host(self) -> HostView:
        info = self.invoke("GetHost")
        return HostView(info.host_id, info.enabled, info.auctioneer_dn, info.owner_account, info.capacity_cpus,
                        info.mode, info.pay_for_use, info.interval_s, _ucps(info.reserve), info.price_ucps,
                        info.hour_average_price_ucps, info.total_rate_ucps, info.live_bids,
                        array_items(info.templates))

    def place_bid(self, hold_id: str, *, template: str, rate_ucps: int | None = None, budget: int | None = None,
                  duration_s: int | None = None, max_duration_s: int | None = None) -> BidView:
        """A bid on hold ``hold_id`` (collector: this auctioneer, payee: the host owner's account) at
        ``rate_ucps``, or ``budget`` credits over ``duration_s``; for at most ``max_duration_s``."""
        answer = self.invoke("PlaceBid", {
            "hold_id": hold_id, "rate": None if rate_ucps is None else rate_wire(rate_ucps), "budget": budget,
            "duration_s": duration_s, "max_duration_s": max_duration_s, "template": template},
            effect=Effect.ONCE_PER_KEY, request_id=f"bid:{hold_id}")
        return _bid(answer)

    def bid_with_hold(self, bank, account_id: str, *, template: str, rate_ucps: int | None = None,
                      budget: int | None = None, duration_s: int | None = None, max_duration_s: int | None = None,
                      amount: int | None = None, host: HostView | None = None) -> BidView:
        """Make the Bank hold a bid needs (on ``account_id``, through ``bank``, a BankClient signing as
        the bidder: collector this auctioneer's DN, payee the owner's account, ``amount`` credits —
        default the budget, or the rate over the maximum duration and one interval — until the maximum
        duration and three intervals more), then place the bid on it."""
        host = host or self.host()
        if not host.enabled:
            raise InvalidRequest(f"{self.base_url} sells no CPU (its auctioneer is not configured)")
        if max_duration_s is None:
            max_duration_s = duration_s
        if max_duration_s is None:
            raise InvalidRequest("give the bid's maximum duration")
        if amount is None:
            if budget is not None:
                amount = budget
            elif rate_ucps is not None:
                amount = math.ceil(rate_ucps * (max_duration_s + host.interval_s) / 1_000_000)
            else:
                raise InvalidRequest("give a rate, or a budget and its duration")
        expires_s = max_duration_s + HOLD_MARGIN_INTERVALS * host.interval_s + 60
        receipt = bank.create_hold(account_id, amount=amount, expires=expires_s, collector_dn=host.auctioneer_dn,
                                   payee_account_id=host.owner_account,
                                   reference=f"market bid on {host.host_id}"[:100])
        return self.place_bid(receipt.transaction.hold_id, template=template, rate_ucps=rate_ucps, budget=budget,
                              duration_s=duration_s, max_duration_s=max_duration_s)

    def change_bid(self, bid_id: str, *, rate_ucps: int) -> BidView:
        return _bid(self.invoke("ChangeBid", {"bid_id": bid_id, "rate": rate_wire(rate_ucps)},
                                effect=Effect.ONCE_PER_KEY, request_id=f"change:{bid_id}:{rate_ucps}"))

    def cancel_bid(self, bid_id: str) -> BidView:
        return _bid(self.invoke("CancelBid", {"bid_id": bid_id}, effect=Effect.ONCE_PER_KEY,
                                request_id=f"cancel:{bid_id}"))

    def bid(self, bid_id: str) -> BidView:
        return _bid(self.invoke("GetBid", {"bid_id": bid_id}))

    def bids(self, *, everyone: bool = False, include_ended: bool = False, offset: int = 0,
             limit: int = 100) -> list[BidView]:
        """Your bids on this host (``everyone``: every bidder's — the host's owners only)."""
        answer = self.invoke("ListBids", {"everyone": everyone, "include_ended": include_ended, "offset": offset,
                                          "limit": limit})
        return [_bid(info) for info in array_items(answer, "BidInfo")]

    def my_bids(self) -> list[BidView]:
        """Every live bid of yours on this host (all pages)."""
        found, offset = [], 0
        while True:
            page = self.bids(offset=offset, limit=1000)
            found.extend(page)
            if len(page) < 1000:
                return found
            offset += 1000

    def console_write(self, bid_id: str, data: bytes) -> int:
        """Send ``data`` to your bid's VM's serial console; the bytes taken."""
        return int(self.invoke("ConsoleWrite", {"bid_id": bid_id, "data": data}, effect=Effect.UNKEYED))

    def console_read(self, bid_id: str, *, offset: int = 0, wait_ms: int = 0) -> ConsoleOutput:
        """What your bid's VM wrote from ``offset`` (waiting up to ``wait_ms`` for something)."""
        answer = self.invoke("ConsoleRead", {"bid_id": bid_id, "offset": offset, "wait_ms": wait_ms})
        return ConsoleOutput(bytes(answer.data or b""), answer.offset, answer.next_offset)
