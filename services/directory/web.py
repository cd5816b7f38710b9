"""The directory's page of the web view (issue 15): the market's hosts and their prices.

Shown to whom ListHosts answers (anyone authenticated: ``policy.authorize_anyone``), read from the
same listing (expired registrations are not listed).
"""
from __future__ import annotations

from gridcredit.timeunits import now_us
from gridcredit.web import Markup, WebPage, WebRequest, bar_chart, join, link, moment, section, table, tag

from . import policy
from .runtime import Directory


def rate_text(rate_ucps: int) -> str:
    """µcr/s as credits per second with six decimals (exact: integer arithmetic)."""
    return f"{rate_ucps // 1_000_000:,}.{rate_ucps % 1_000_000:06d}"


def _hosts_page(request: WebRequest) -> Markup:
    directory: Directory = request.part
    policy.authorize_anyone("ListHosts")
    hosts = directory.hosts.listed(now_us=now_us())
    rows = [(link(entry.auctioneer_url, entry.host_id), f"{entry.capacity_cpus:,}", rate_text(entry.price_ucps),
             rate_text(entry.hour_average_price_ucps), rate_text(entry.reserve_price_ucps), f"{entry.live_bids:,}",
             f"{entry.interval_s:,} s", moment(entry.updated_us)) for entry in hosts]
    return join(
        tag("p", "The hosts whose auctioneers registered here, with the price of a CPU now (the sum of the live "
                 "bids' rates over the host's CPUs) and over the last hour, in credits per second per CPU."),
        section("Hosts and prices",
                bar_chart("Price now by host (µcr/s per CPU)", [(entry.host_id, entry.price_ucps) for entry in hosts]),
                table(("host", "CPUs", "price now", "hour average", "reserve", "live bids", "interval", "last heard"),
                      rows, numeric=(1, 2, 3, 4, 5, 6), empty="no host is registered now", class_="hosts"),
                id_="hosts"))


def web_pages(directory: Directory, config) -> list[WebPage]:
    return [WebPage("hosts", "Market hosts", _hosts_page, summary="the market's hosts and their prices")]
