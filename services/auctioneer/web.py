"""The Auctioneer's page of the web view (issue 15): this host's market — its capacity and prices,
the price over the last hour, and the person's own bids with their shares.

Asked as GetHost (anyone authenticated) and ListBids of the person's own bids
(``policy.authorize_list_bids`` with everyone False), from the same store.
"""
from __future__ import annotations

from datetime import datetime, timezone

from lxml import etree

from gridcredit.timeunits import now_us
from gridcredit.web import Markup, WebPage, WebRequest, bar_chart, credits, definition_list, join, moment, section, table

from . import policy
from .runtime import Auctioneer
from .store import PRICES

BIDS_SHOWN_MAX = 100


def rate_text(rate_ucps: int) -> str:
    return f"{rate_ucps // 1_000_000:,}.{rate_ucps % 1_000_000:06d}"


def _clock(at_us: int) -> str:
    return datetime.fromtimestamp(at_us // 1_000_000, tz=timezone.utc).strftime("%H:%M:%S")


def _market_page(request: WebRequest) -> Markup:
    part: Auctioneer = request.part
    policy.authorize_anyone("GetHost")
    settings = part.settings
    moment_us = now_us()
    market = part.market.market(now_us=moment_us)
    total = market.allocation.total_ucps
    prices = part.market.prices(now_us=moment_us)
    document = part.market.store.get(PRICES, part.market.host)
    samples = [] if document is None else [(int(e.get("at_us")), int(e.get("price_ucps")))
                                           for e in etree.fromstring(document.xml)]
    policy.authorize_list_bids(part.policy, request.principal, False)
    found = part.market.records(owner_dn=request.principal.dn, include_ended=True, offset=0, limit=BIDS_SHOWN_MAX)
    rows, shares = [], []
    for record, final in found:
        bid = market.bids.get(record.bid_id, final)
        share = market.allocation.shares.get(record.bid_id)
        ppm = 0 if share is None or bid is None else share.ppm
        rows.append((record.bid_id, bid.state.value if bid else record.state, rate_text(bid.rate_ucps) if bid else "—",
                     f"{ppm // 10_000}.{ppm % 10_000 // 100:02d} %", credits(bid.charged_credits if bid else None),
                     record.hold_id, record.account_id, moment(record.placed_us), record.enforced or ""))
        if bid is not None and bid.state.value == "live":
            shares.append((record.bid_id, ppm // 10_000))
    return join(
        section(f"Host {settings.host_id}",
                definition_list([("CPUs sold", f"{settings.capacity_cpus:,}"), ("mode", settings.mode),
                                 ("interval", f"{settings.interval_s:,} s"),
                                 ("price now (cr/s per CPU)", rate_text(total // settings.capacity_cpus)),
                                 ("hour average (cr/s per CPU)", rate_text(prices.hour_average_ucps)),
                                 ("reserve (cr/s)", rate_text(settings.reserve_ucps)),
                                 ("live bids", f"{len(market.live_bids()):,}")]), id_="host"),
        section("Price over the last hour",
                bar_chart("Price of a CPU at each interval (µcr/s)", [(_clock(at), price) for at, price in samples]),
                id_="prices"),
        section("Your bids",
                bar_chart("Your live bids' shares of the host (%)", shares) if shares else None,
                table(("bid", "state", "rate (cr/s)", "share", "charged", "hold", "account", "placed", "enforced"),
                      rows, numeric=(2, 3, 4), empty="You have no bids on this host.", class_="bids"),
                id_="bids"))


def web_pages(part: Auctioneer, config) -> list[WebPage]:
    """The market page, when this host sells CPUs (its [auctioneer] section names a host_id)."""
    if not part.enabled:
        return []
    return [WebPage("market", "Market", _market_page, summary="this host's prices and your bids' shares")]
