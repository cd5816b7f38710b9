"""The market's directory from the shell, a thin layer over :class:`DirectoryClient`.

Two commands of the ``gridcredit market`` group (the Auctioneer's, services/auctioneer/cli.py, which adds
them with :func:`add_market_commands`):

    gridcredit market hosts [--mine] [--json]             # hosts, capacity, current and hour-average price
                                                          # (--mine: your bids there and your share)
    gridcredit market best-response --budget 2.5 [--hosts a,b] [--json]
    gridcredit market best-response --budget 900 --duration 1h      # 900 credits over an hour: 0.25 cr/s

``best-response`` spreads a budget — a rate, credits per second, or credits over ``--duration`` (the rate
floor(N·10^6 / D) µcr/s, never more than the budget) — over the listed hosts to maximize the bidder's
total share (Feldman, Lai & Zhang; services/auctioneer/best_response.py). For each host it reads the Σ of
the live bids' rates from the directory and takes off the caller's own live bids there, read from that
host's auctioneer (``--no-own-bids``: the caller has none, do not ask): y_j = what the others bid.

And the administrators' group ``gridcredit directory remove HOST|whoami``. Rates and prices are printed as
decimal credits per second (per CPU for a price), in ``--json`` as exact decimal strings beside the
integer µcr/s (``*_ucps``). Exit codes: 0 done, 1 refused or failed (``TypeName: message``), 2 usage.
"""
from __future__ import annotations

import argparse
import sys

from gridcredit.cli_support import (EXIT_FAILED, EXIT_OK, CommandGroup, LazyClient, add_client_arguments, client_of,
                                    error_text, print_result, show_identity)
from gridcredit.errors import DomainError, GridcreditError
from gridcredit.timeunits import datetime_from_us, rfc3339

from .types import HOST_ID, HostEntry, rate_from_decimal, rate_text, rate_to_decimal

HOSTS_NAMED_MAX = 1_000
DURATION_S_MAX = 366 * 86_400


# ---------------------------------------------------------------------------------------------
# Arguments


def rate_type(text: str) -> int:
    """A decimal number of credits (per second) as integer micro-credits: at most 6 decimals, positive."""
    try:
        ucps = rate_from_decimal(text.replace(",", "").replace("_", ""), "the budget")
    except DomainError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if ucps <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a budget must be more than 0")
    return ucps


def hosts_type(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or len(names) > HOSTS_NAMED_MAX:
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: name 1 to {HOSTS_NAMED_MAX:,} host ids, separated by commas")
    for name in names:
        if not HOST_ID.fullmatch(name):
            raise argparse.ArgumentTypeError(f"{name[:80]!r} is not a host id")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} names a host twice")
    return names


def _duration_type(text: str) -> int:
    from ..bank.cli import duration_s

    seconds = duration_s(text)
    if seconds > DURATION_S_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {DURATION_S_MAX // 86_400} days")
    return seconds


# ---------------------------------------------------------------------------------------------
# Output


def _when(us: int) -> str:
    return rfc3339(datetime_from_us(us).replace(microsecond=0))


def host_json(entry: HostEntry) -> dict:
    """A host as ``--json`` prints it: decimals as exact strings (credits/s) beside the integer µcr/s."""
    return {"host_id": entry.host_id, "auctioneer_url": entry.auctioneer_url, "capacity_cpus": entry.capacity_cpus,
            "total_rate": str(rate_to_decimal(entry.total_rate_ucps)), "total_rate_ucps": entry.total_rate_ucps,
            "price": str(rate_to_decimal(entry.price_ucps)), "price_ucps": entry.price_ucps,
            "hour_average_price": str(rate_to_decimal(entry.hour_average_price_ucps)),
            "hour_average_price_ucps": entry.hour_average_price_ucps,
            "reserve_price": str(rate_to_decimal(entry.reserve_price_ucps)),
            "reserve_price_ucps": entry.reserve_price_ucps, "live_bids": entry.live_bids,
            "interval_s": entry.interval_s, "ttl_s": entry.ttl_s, "registrant_dn": entry.registrant_dn,
            "registered_us": entry.registered_us, "updated_us": entry.updated_us, "updated": _when(entry.updated_us),
            "expires_us": entry.expires_us, "expires": _when(entry.expires_us)}


def table_lines(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """A plain-text table: columns as wide as their widest cell, the ``right`` ones right-aligned."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return ["  ".join(cell.rjust(width) if column in right else cell.ljust(width)
                      for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in [header, *rows]]


def hosts_text(entries: list[HostEntry], shares: dict[str, str] | None = None) -> str:
    """The hosts as a table; ``shares``: the caller's share of each host (``--mine``), as text."""
    if not entries:
        return "no hosts are registered in the directory"
    header = ["host", "CPUs", "price", "hour avg", "bids", "Σ rates", "reserve", "auctioneer", "listed until"]
    rows = [[entry.host_id, f"{entry.capacity_cpus:,}", rate_text(entry.price_ucps),
             rate_text(entry.hour_average_price_ucps), f"{entry.live_bids:,}", rate_text(entry.total_rate_ucps),
             rate_text(entry.reserve_price_ucps), entry.auctioneer_url, _when(entry.expires_us)] for entry in entries]
    if shares is not None:
        header.insert(7, "your share")
        for entry, row in zip(entries, rows):
            row.insert(7, shares[entry.host_id])
    return "\n".join(["prices in credits per second per CPU; Σ rates and the reserve price (the least bid that gets "
                      "a share) in credits per second",
                      *table_lines(header, rows, {1, 2, 3, 4, 5, 6} | ({7} if shares is not None else set()))])


# ---------------------------------------------------------------------------------------------
# Commands


def _client_at(args, url: str | None, client_class):
    """``client_class`` for ``url`` (None: ``--url``), with the credential and trust every client of the command
    resolves from the options and the configuration (cli_support.client_of)."""
    return client_of(args if not url else argparse.Namespace(**{**vars(args), "url": url}), client_class)


def _directory(args):
    from .client import DirectoryClient

    return LazyClient(lambda: _client_at(args, getattr(args, "directory", None), DirectoryClient))


def _hosts(args) -> int:
    entries = _directory(args).hosts()
    if not args.mine:
        print_result(args, [host_json(entry) for entry in entries], hosts_text(entries))
        return EXIT_OK
    own, rows, shares, failed = _own_bids(args), [], {}, []
    for entry in entries:
        row = host_json(entry)
        try:
            bids = own(entry)
        except GridcreditError as error:         # one auctioneer not answering does not hide the others
            failed.append(error)
            row.update(mine=None, mine_error=error_text(error))
            shares[entry.host_id] = "?"
        else:
            row["mine"] = [{"bid_id": bid.bid_id, "rate": str(rate_to_decimal(bid.rate_ucps)), "rate_ucps": bid.rate_ucps,
                            "share_ppm": bid.share_ppm} for bid in bids]
            total_ppm = sum(bid.share_ppm for bid in bids)
            shares[entry.host_id] = f"{total_ppm // 10_000}.{total_ppm % 10_000 // 100:02d} %" if bids else "-"
        rows.append(row)
    print_result(args, rows, hosts_text(entries, shares))
    for error in failed:
        print(error_text(error), file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _whoami(args) -> int:
    return show_identity(args, _directory(args), "directory")


def _remove(args) -> int:
    removed = _directory(args).remove(args.host_id)
    print_result(args, {"host_id": args.host_id, "removed": removed},
                 f"removed host {args.host_id}: its id is free again" if removed
                 else f"no host {args.host_id} was registered: nothing to remove")
    return EXIT_OK


def _best_response(args) -> int:
    from .best import best_response_command

    return best_response_command(args, directory=_directory(args), own_rates=_own_rates(args))


def _own_bids(args):
    """``own(entry)``: the caller's live bids on the host ``entry``, read from its auctioneer (signed as the caller,
    ``AuctioneerClient.my_bids``; asked once per auctioneer URL)."""
    from ..auctioneer.client import AuctioneerClient

    asked: dict[str, list] = {}

    def own(entry: HostEntry) -> list:
        if entry.auctioneer_url not in asked:
            try:
                asked[entry.auctioneer_url] = _client_at(args, entry.auctioneer_url, AuctioneerClient).my_bids()
            except GridcreditError as error:
                raise GridcreditError(f"your own bids on host {entry.host_id} cannot be read from its auctioneer "
                                      f"{entry.auctioneer_url}: {error}") from None
        # (an auctioneer's URL may serve another host id too: only this host's bids count)
        return [bid for bid in asked[entry.auctioneer_url] if bid.live and bid.host_id == entry.host_id]
    return own


def _own_rates(args):
    """The Σ rates of the caller's own live bids on a host (best-response's y_j takes them off)."""
    bids = _own_bids(args)

    def own(entry: HostEntry) -> int:
        try:
            return sum(bid.rate_ucps for bid in bids(entry))
        except GridcreditError as error:
            raise GridcreditError(f"{error} (--no-own-bids if you have none there)") from None
    return own


def add_directory_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directory", metavar="URL",
                        help="base URL of the directory's host (default: --url, the same host)")


def add_market_commands(group: CommandGroup) -> None:
    """``market hosts`` and ``market best-response``, added to the Auctioneer's ``market`` group."""
    p = group.command("hosts", "the hosts of the market: capacity, current price (Σ rates / capacity), "
                               "the hour's average price", "gridcredit market hosts --mine --json", _hosts)
    add_directory_options(p)
    p.add_argument("--mine", action="store_true",
                   help="with your live bids on each host and your share of it (asked of each host's auctioneer)")
    p = group.command("best-response", "split a budget over the market's hosts for the most CPU in all (Feldman, "
                                       "Lai & Zhang), from the directory's current rates less your own bids",
                      "gridcredit market best-response --budget 2.5 --hosts host-a,host-b", _best_response)
    add_directory_options(p)
    p.add_argument("--budget", type=rate_type, required=True, metavar="N",
                   help="credits per second to spread (at most 6 decimals), or credits over --duration")
    p.add_argument("--duration", type=_duration_type, metavar="D",
                   help="the budget is N credits over D (e.g. 3600, 1h, 2d): the rate floor(N·10^6/D) µcr/s")
    p.add_argument("--hosts", type=hosts_type, metavar="A,B,…", help="only these hosts (default: every listed host)")
    p.add_argument("--no-own-bids", action="store_true",
                   help="you bid on none of these hosts now: do not ask their auctioneers for your own bids")


def register(subparsers) -> None:
    group = CommandGroup(subparsers, "directory", help="the market's directory of hosts (administrators)",
                         description="The market's directory (Tycoon's Service Location Service): auctioneers "
                                     "register their hosts; `gridcredit market hosts` lists them. --json prints "
                                     "results for scripts. Exit codes: 0 done, 1 refused or failed, 2 usage.",
                         add_common=lambda parser: add_client_arguments(parser, timeout_s=30.0))
    p = group.command("remove", "remove a host's registration and free its id (the directory's administrators)",
                      "gridcredit directory remove host-a", _remove)
    p.add_argument("host_id", metavar="HOST", help="the host id")
    group.command("whoami", "make a signed call and show who the directory thinks you are",
                  "gridcredit directory whoami", _whoami)
