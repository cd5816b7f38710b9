"""``gridcredit market …``: bids on a host's CPUs, a thin layer over :class:`AuctioneerClient`.

    gridcredit market host                                   # the host's market: capacity, price, templates
    gridcredit market bid proj1 --rate 0.25 --max-duration 2h --template small
    gridcredit market bid proj1 --budget 900 --duration 1h --template small   # the rate 900/3600 credits/s
    gridcredit market change BID 0.5 [--raise-hold 2000]     # a new rate from now (raise the hold first)
    gridcredit market cancel BID
    gridcredit market status [BID] [--all] [--ended]         # your bids (the host's owners: --all)
    gridcredit market connect BID                            # the VM's serial console (Ctrl-] leaves)
    gridcredit market connect BID --send 'hello' --read      # for scripts
    gridcredit market hosts | best-response …                # the directory (services/directory/cli.py)

``bid`` makes the Bank hold first — on ACCOUNT, collector the auctioneer's DN (GetHost says it), payee
the host owner's account, ``--amount`` credits (default: the budget, or the rate over the maximum
duration and one interval), until the maximum duration and three intervals more — then places the bid
on it (``--hold ID``: a hold of yours made before). Options, output and exit codes are
gridcredit.cli_support's: ``--json`` prints results (rates ``*_ucps`` micro-credits per second, times
``*_us``), a refusal prints ``TypeName: message``. Exit codes: 0 done, 1 refused or failed, 2 usage.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from datetime import datetime, timezone

from gridcredit.cli_support import (EXIT_OK, CommandGroup, LazyClient, add_client_arguments, client_of, print_result,
                                    show_identity, usage_error)
from gridcredit.errors import DomainError

from ..bank.cli import duration_s
from . import market as core
from .client import AuctioneerClient, BidView

DETACH = b"\x1d"                 # Ctrl-]: leave an interactive console
READ_WAIT_MS = 1_000


def rate_type(text: str) -> int:
    try:
        return core.parse_rate(text.strip())
    except DomainError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _duration(text: str) -> int:
    seconds = duration_s(text)
    if seconds > core.DURATION_MAX_S:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {core.DURATION_MAX_S // 86_400} days")
    return seconds


def _credits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of credits") from None
    if not 1 <= value <= 10**15:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 10^15 credits")
    return value


def _client(args) -> AuctioneerClient:
    if getattr(args, "auctioneer", None) is None:
        args.auctioneer = LazyClient(lambda: client_of(args, AuctioneerClient))
    return args.auctioneer


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if us else "-"


def bid_text(bid: BidView) -> str:
    lines = [f"{bid.bid_id}: {core.format_rate(bid.rate_ucps)} credits/s on host {bid.host_id}, {bid.state}"
             + (f" ({bid.end_reason} at {_when(bid.ended_us)})" if bid.end_reason else "")
             + (" (placed before: the same bid)" if bid.replayed else ""),
             f"  share {bid.share_ppm / 10_000:.2f} % of the host; charged {bid.charged:,} credits, owes {bid.owed:,}; "
             f"hold {bid.hold_id} ({bid.account_id}) covers {bid.hold_remaining:,} more until {_when(bid.hold_expires_us)}",
             f"  template {bid.template}, live from {_when(bid.started_us)} until {_when(bid.max_end_us)} at most"]
    if bid.enforced:
        lines.append(f"  {bid.enforced}")
    return "\n".join(lines)


def _host(args) -> int:
    host = _client(args).host()
    if not host.enabled:
        text = f"{args.url} sells no CPU (its [auctioneer] section names no host)"
    else:
        text = (f"host {host.host_id}: {host.capacity_cpus} CPU(s), {host.mode}"
                f"{', pay-for-use' if host.pay_for_use else ''}, interval {host.interval_s} s\n"
                f"  price {core.format_rate(host.price_ucps)} credits/s per CPU now, "
                f"{core.format_rate(host.hour_average_price_ucps)} on average over the last hour; "
                f"{host.live_bids} live bid(s); reserve {core.format_rate(host.reserve_ucps)}\n"
                f"  pays account {host.owner_account}; holds name collector {host.auctioneer_dn}\n"
                f"  templates: {', '.join(host.templates) or 'none'}")
    print_result(args, host, text)
    return EXIT_OK


def _bid(args) -> int:
    auctioneer = _client(args)
    if (args.rate is None) == (args.budget is None):
        raise usage_error(args, "give --rate, or --budget with --duration")
    if args.budget is not None and args.duration is None:
        raise usage_error(args, "--budget needs --duration")
    if args.rate is not None and args.max_duration is None:
        raise usage_error(args, "--rate needs --max-duration")
    if not args.hold and not args.account:
        raise usage_error(args, "name the ACCOUNT to hold on, or --hold a hold of yours")
    options = dict(template=args.template, rate_ucps=args.rate, budget=args.budget, duration_s=args.duration,
                   max_duration_s=args.max_duration)
    if args.hold:
        bid = auctioneer.place_bid(args.hold, **options)
    else:
        from ..bank.client import BankClient

        bank = client_of(args, BankClient)
        bid = auctioneer.bid_with_hold(bank, args.account, amount=args.amount, **options)
    print_result(args, bid, bid_text(bid))
    return EXIT_OK


def _change(args) -> int:
    auctioneer = _client(args)
    if args.raise_hold is not None:
        from ..bank.client import BankClient

        current = auctioneer.bid(args.bid_id)
        client_of(args, BankClient).extend_hold(current.hold_id, amount=args.raise_hold)
    bid = auctioneer.change_bid(args.bid_id, rate_ucps=args.rate)
    print_result(args, bid, bid_text(bid))
    return EXIT_OK


def _cancel(args) -> int:
    bid = _client(args).cancel_bid(args.bid_id)
    print_result(args, bid, bid_text(bid))
    return EXIT_OK


def _status(args) -> int:
    auctioneer = _client(args)
    if args.bid_id:
        bid = auctioneer.bid(args.bid_id)
        print_result(args, bid, bid_text(bid))
        return EXIT_OK
    found, offset = [], 0
    while True:
        page = auctioneer.bids(everyone=args.all, include_ended=args.ended, offset=offset, limit=1000)
        found.extend(page)
        if len(page) < 1000:
            break
        offset += 1000
    print_result(args, found, "\n".join(bid_text(bid) for bid in found) or "no bids")
    return EXIT_OK


def _connect(args) -> int:
    auctioneer = _client(args)
    if not 0 <= args.wait <= 5:
        raise usage_error(args, "--wait is 0 to 5 seconds")
    if args.send is not None or args.read:
        if args.send is not None:
            auctioneer.console_write(args.bid_id, args.send.encode("utf-8"))
        output = b""
        if args.read:
            output = auctioneer.console_read(args.bid_id, offset=args.offset, wait_ms=int(args.wait * 1000)).data
        if args.json:
            print_result(args, {"sent": args.send or "", "output": output.decode("utf-8", "replace")})
        else:
            sys.stdout.buffer.write(output)
            sys.stdout.flush()
        return EXIT_OK
    return _interactive(auctioneer, args.bid_id)


def _interactive(auctioneer: AuctioneerClient, bid_id: str) -> int:
    """Relay stdin to the VM and its output to stdout until Ctrl-] (or the end of stdin)."""
    import termios
    import tty

    stop = threading.Event()
    offset = auctioneer.console_read(bid_id, offset=2**62).next_offset    # from now on: the newest byte
    terminal = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if terminal else None
    if terminal:
        tty.setraw(sys.stdin.fileno())
        sys.stderr.write(f"connected to bid {bid_id}'s console; Ctrl-] leaves\r\n")

    def reader():
        nonlocal offset
        while not stop.is_set():
            output = auctioneer.console_read(bid_id, offset=offset, wait_ms=READ_WAIT_MS)
            if output.data:
                sys.stdout.buffer.write(output.data)
                sys.stdout.flush()
            offset = output.next_offset
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        while True:
            data = os.read(sys.stdin.fileno(), 1024)
            if not data or DETACH in data:
                data = data.split(DETACH)[0]
                if data:
                    auctioneer.console_write(bid_id, data)
                break
            auctioneer.console_write(bid_id, data)
    finally:
        stop.set()
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
    thread.join(READ_WAIT_MS / 1000 + 2)
    return EXIT_OK


def _whoami(args) -> int:
    return show_identity(args, _client(args), "auctioneer")


def register(subparsers) -> None:
    group = CommandGroup(subparsers, "market", help="bid for a host's CPUs (the Auctioneer) and find hosts",
                         description="The CPU market (Tycoon): bids funded by your Bank holds, shares in proportion "
                                     "to rates, enforced on your VM; --url is the auctioneer's host. --json prints "
                                     "results for scripts. Exit codes: 0 done, 1 refused or failed, 2 usage.",
                         add_common=lambda parser: add_client_arguments(parser, timeout_s=30.0))
    command = group.command
    command("host", "the host's market: capacity, current and hour-average price, templates, the collector DN",
            "gridcredit market host --url https://host-a.example.org:8443", _host)

    p = command("bid", "hold credits on your account and bid them for a share of the host's CPUs",
                "gridcredit market bid proj1 --rate 0.25 --max-duration 2h --template small", _bid)
    p.add_argument("account", metavar="ACCOUNT", nargs="?", help="your Bank account to hold on (not with --hold)")
    p.add_argument("--rate", type=rate_type, metavar="CR/S", help="credits per second (at most 6 decimals)")
    p.add_argument("--budget", type=_credits, metavar="N", help="credits to spend over --duration (the rate "
                                                                "floor(N·10^6/D) µcr/s)")
    p.add_argument("--duration", type=_duration, metavar="D", help="the budget's duration (90s, 30m, 2h, 1d)")
    p.add_argument("--max-duration", type=_duration, metavar="D",
                   help="the bid ends after this at most (default with --budget: --duration)")
    p.add_argument("--template", required=True, help="the VM template (gridcredit market host lists them)")
    p.add_argument("--amount", type=_credits, metavar="N", help="credits to hold (default: the budget, or the rate "
                                                                "over the maximum duration and one interval)")
    p.add_argument("--hold", metavar="HOLD_ID", help="bid on this hold of yours instead of making one")

    p = command("change", "a bid's new rate, from now (raise its hold first with --raise-hold)",
                "gridcredit market change b-0123… 0.5 --raise-hold 4000", _change)
    p.add_argument("bid_id", metavar="BID")
    p.add_argument("rate", type=rate_type, metavar="CR/S", help="the new rate, credits per second")
    p.add_argument("--raise-hold", type=_credits, metavar="N", help="first raise the bid's hold to N credits in all")

    p = command("cancel", "end a bid now: it pays until now, the rest of its hold goes back, its VM is removed",
                "gridcredit market cancel b-0123…", _cancel)
    p.add_argument("bid_id", metavar="BID")

    p = command("status", "a bid, or your bids on the host (its owners: everyone's with --all)",
                "gridcredit market status --ended --json", _status)
    p.add_argument("bid_id", metavar="BID", nargs="?")
    p.add_argument("--all", action="store_true", help="every bidder's (the host's owners)")
    p.add_argument("--ended", action="store_true", help="ended bids too")

    p = command("connect", "your bid's VM's serial console over the signed service (Ctrl-] leaves)",
                "gridcredit market connect b-0123… --send 'hello' --read", _connect)
    p.add_argument("bid_id", metavar="BID")
    p.add_argument("--send", metavar="TEXT", help="send TEXT and leave (for scripts)")
    p.add_argument("--read", action="store_true", help="print what the VM wrote (from --offset) and leave")
    p.add_argument("--offset", type=int, default=0, help="read from this byte of the VM's output (default 0)")
    p.add_argument("--wait", type=float, default=1.0, metavar="S", help="with --read: wait up to S seconds (≤ 5) for "
                                                                         "output (default 1)")
    command("whoami", "make a signed call and show who the auctioneer thinks you are", "gridcredit market whoami",
            _whoami)
    try:
        from ..directory.cli import add_market_commands
    except ImportError:         # a build without the directory
        return
    add_market_commands(group)
