"""``gridcredit market best-response``: a bidder's best split of a budget over the market's hosts.

For each host the directory gives the exact Σ of its live bids' rates; the bidder's own live bids there
(read from that host's auctioneer, ``own_rates``) are taken off, leaving y_j, what the others bid. The
split is Feldman, Lai & Zhang's (services/auctioneer/best_response.py, integer µcr/s, Σ = the budget
exactly) with each host's weight w_j its capacity in CPUs, so the bidder's total share is the CPUs it
can expect: Σ w_j·x_j/(x_j + y_j) — adjusted so that no bid is below its host's reserve price
(:func:`split_meeting_reserves`). The budget is a rate (credits per second), or credits over
``--duration`` D: the rate floor(B·10^6 / D) µcr/s, never more than the budget.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from typing import Callable, Mapping, Sequence

from gridcredit.cli_support import EXIT_OK, print_result, usage_error
from gridcredit.errors import GridcreditError

from .types import HostEntry, rate_text, rate_to_decimal

SHARE_DIGITS = 6


def offers(entries: Sequence[HostEntry], own_rates_ucps: Mapping[str, int]):
    """The best response's view of each host: its weight (CPUs) and what the others bid there (y_j ≥ 0)."""
    from ..auctioneer.best_response import HostOffer

    return [HostOffer(entry.host_id, entry.capacity_cpus, max(0, entry.total_rate_ucps - own_rates_ucps.get(
        entry.host_id, 0))) for entry in entries]


EXACT_SUBSETS_HOSTS_MAX = 10          # up to this many hosts every subset is tried (2^10 splits)


def split_meeting_reserves(budget_ucps: int, hosts: Sequence, reserves_ucps: Mapping[str, int]) -> dict[str, int]:
    """The best response when a host gives no share to a bid below its reserve price: every bid is 0 or at
    least its host's reserve; Σ ≤ the budget. With no reserve above one unit it is best_response.py's split.

    For a given set of hosts to bid on, the bids with floors (x_j ≥ r_j) are found by clamping: split what is
    left over the hosts still free (best_response.py), put every host whose bid falls below its reserve at
    its reserve, and split again — the marginal value of a host at its floor is then at most that of the
    others (concave utilities), the KKT conditions of the problem with floors. Which hosts to bid on is the
    non-convex part: up to ``EXACT_SUBSETS_HOSTS_MAX`` hosts every set is tried; beyond, the sets found by
    leaving out, one at a time, the host whose FLZ bid is the smallest part of its reserve."""
    from ..auctioneer.best_response import best_response, utility

    def reserve(host) -> int:
        return reserves_ucps.get(host.host_id, 0)

    def with_floors(chosen: list) -> dict[str, int] | None:
        fixed: dict[str, int] = {}
        free = list(chosen)
        while True:
            left = budget_ucps - sum(fixed.values())
            if left < 0:
                return None
            split = best_response(left, free) if free and left > 0 else {}
            short = [host for host in free if split.get(host.host_id, 0) < reserve(host)]
            if not short:
                return {**{host.host_id: split.get(host.host_id, 0) for host in free}, **fixed}
            for host in short:
                fixed[host.host_id] = reserve(host)
                free.remove(host)

    hosts = list(hosts)
    relaxed = best_response(budget_ucps, hosts)         # the optimum without floors bounds every other
    if all(bid == 0 or bid >= reserve(host) for host, bid in ((host, relaxed[host.host_id]) for host in hosts)):
        return relaxed
    affordable = [host for host in hosts if reserve(host) <= budget_ucps]
    if len(affordable) <= EXACT_SUBSETS_HOSTS_MAX:
        chosen_sets = [[host for index, host in enumerate(affordable) if mask >> index & 1]
                       for mask in range(1, 1 << len(affordable))]
    else:
        chosen_sets, active = [], list(affordable)
        while active:
            chosen_sets.append(list(active))
            split = best_response(budget_ucps, active)
            short = [host for host in active if split[host.host_id] < reserve(host)]
            if not short:
                break
            active.remove(min(short, key=lambda host: Fraction(split[host.host_id], reserve(host))))
    best: dict[str, int] = {}
    best_utility = Fraction(0)
    for chosen in chosen_sets:
        split = with_floors(chosen)
        if split is not None and utility(split, hosts) > best_utility:   # of equals, the first found
            best, best_utility = split, utility(split, hosts)
    return {host.host_id: best.get(host.host_id, 0) for host in hosts}


def _decimal_text(value: Fraction, digits: int = SHARE_DIGITS) -> str:
    """A non-negative fraction rounded down to ``digits`` decimals."""
    scaled = value.numerator * 10**digits // value.denominator
    whole, fraction = divmod(scaled, 10**digits)
    return f"{whole}.{fraction:0{digits}d}"


def split_report(budget_ucps: int, entries: Sequence[HostEntry], own_rates_ucps: Mapping[str, int]) -> dict:
    """The split, with what each host gives for it (``--json``'s shape)."""
    from ..auctioneer.best_response import utility

    hosts = offers(entries, own_rates_ucps)
    split = split_meeting_reserves(budget_ucps, hosts, {entry.host_id: entry.reserve_price_ucps for entry in entries})
    rows = []
    for entry, offer in zip(entries, hosts):
        bid = split.get(entry.host_id, 0)
        share = Fraction(bid, bid + offer.others) if bid + offer.others else Fraction(0)
        rows.append({"host_id": entry.host_id, "capacity_cpus": entry.capacity_cpus,
                     "others_rate": str(rate_to_decimal(offer.others)), "others_rate_ucps": offer.others,
                     "own_rate_ucps": own_rates_ucps.get(entry.host_id, 0),
                     "reserve_price_ucps": entry.reserve_price_ucps,
                     "rate": str(rate_to_decimal(bid)), "rate_ucps": bid,
                     "share": _decimal_text(share), "cpus": _decimal_text(share * entry.capacity_cpus),
                     "auctioneer_url": entry.auctioneer_url})
    spent = sum(split.values())
    return {"budget": str(rate_to_decimal(budget_ucps)), "budget_ucps": budget_ucps, "hosts": rows,
            "spent": str(rate_to_decimal(spent)), "spent_ucps": spent,
            "cpus": _decimal_text(utility(split, hosts))}


def report_text(report: dict) -> str:
    from .cli import table_lines

    rows = report["hosts"]
    mine = any(row["own_rate_ucps"] for row in rows)
    header = ["host", "CPUs", *(["your bids now"] if mine else []), "others' Σ rates", "your bid", "your share",
              "CPUs for you"]
    cells = [[row["host_id"], f"{row['capacity_cpus']:,}", *([rate_text(row["own_rate_ucps"])] if mine else []),
              rate_text(row["others_rate_ucps"]), rate_text(row["rate_ucps"]),
              f"{_decimal_text(Fraction(row['share']) * 100, 2)} %", row["cpus"]] for row in rows]
    lines = [f"best response for {rate_text(report['budget_ucps'])} credits/s over {len(rows)} host(s) "
             f"(rates in credits per second" + ("; your bids now are not counted among the others', and your bid is "
                                                 "what all yours there should add up to" if mine else "")
             + "):", *table_lines(header, cells, set(range(1, len(header))))]
    lines.append(f"you can expect {report['cpus']} CPUs in all; bid only where your bid is above 0")
    if report["spent_ucps"] < report["budget_ucps"]:
        lines.append(f"{rate_text(report['budget_ucps'] - report['spent_ucps'])} credits/s of the budget buy nothing "
                     f"more: the hosts left out ask a reserve price above what they would get")
    return "\n".join(lines)


def chosen_hosts(entries: Sequence[HostEntry], names: Sequence[str] | None) -> list[HostEntry]:
    """The hosts named (in that order), or every listed host; a name not listed is an error."""
    if not names:
        return list(entries)
    by_id = {entry.host_id: entry for entry in entries}
    missing = [name for name in names if name not in by_id]
    if missing:
        raise GridcreditError(f"the directory lists no host {', '.join(missing)} now (not registered, or its "
                              f"registration expired): see gridcredit market hosts")
    return [by_id[name] for name in names]


def best_response_command(args: argparse.Namespace, *, directory, own_rates: Callable[[HostEntry], int]) -> int:
    budget_ucps = args.budget if args.duration is None else args.budget // args.duration
    if budget_ucps <= 0:
        raise usage_error(args, f"{rate_text(args.budget)} credits over {args.duration:,} s is less than a "
                                f"micro-credit per second")
    entries = chosen_hosts(directory.hosts(), args.hosts)
    if not entries:
        raise GridcreditError("the directory lists no hosts now: nothing to bid on")
    own = {} if args.no_own_bids else {entry.host_id: own_rates(entry) for entry in entries}
    report = split_report(budget_ucps, entries, own)
    print_result(args, report, report_text(report))
    return EXIT_OK
