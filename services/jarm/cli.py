"""``gridcredit jarm …``: the site's prices and quotes, a thin layer over :class:`JarmClient`.

    gridcredit jarm prices                                  # the version in force now
    gridcredit jarm prices --version 3                      # or --at 2026-12-01T00:00:00Z
    gridcredit jarm set-prices prices.toml [--version 4] [--effective 2027-01-01T00:00:00Z]
    gridcredit jarm quote --partition batch --qos normal --cores 16 --time-limit 2:00:00 --memory-mb 32768
    gridcredit jarm quote … --guarantee 3600                # a guaranteed quote, honoured by a reservation
    gridcredit jarm delegate --lifetime 7d --renew-within 1d   # hand JARM a proxy (from cron: only when due)
    gridcredit jarm delegation [--destroy]                  # the delegation JARM holds for you
    gridcredit jarm status r-cluster1-1234-0                # a reservation (the job's user, controllers)
    gridcredit jarm list [--user DN] [--all]                # your reservations (controllers: anyone's)
    gridcredit jarm unfunded                                # runs admitted without the Bank, and how settled
    gridcredit jarm reconcile                               # one pass of the reconciler now (controllers)
    gridcredit jarm prolog | epilog                         # Slurm's PrologSlurmctld / EpilogSlurmctld
    gridcredit jarm whoami

A price table file is TOML (``.toml``) or JSON (``.json``), the README's "JARM: prices and
quotes" shows one: ``site``, ``version``, ``effective`` (RFC 3339 with a zone) and ``memory_basis``
are optional; ``rates`` lists each partition and QoS with its ``prices`` in micro-credits per
price unit for every metric (core-wall per core-hour, cpu per CPU-hour, memory per GB-hour, gpu per
GPU-hour, job per job) and an optional ``load`` (DGAS load pricing, permille).

Options, output and exit codes are gridcredit.cli_support's, as in every command group: ``--json``
prints the result (times as ``*_us``, exact amounts as integers), a refusal prints ``TypeName:
message`` on stderr. Exit codes: 0 done, 1 refused or failed, 2 usage.

``delegate`` (GSI delegation, delegation.py): JARM makes a key pair and keeps the private key; this
signs an RFC 3820 proxy of your credential for its public key (``--lifetime``, default 7 days, capped
by your credential's own expiry: delegate from your certificate for the whole of it). With
``--renew-within D`` it does nothing while the delegation JARM holds is valid for more than D, so a
daily cron job keeps one current; exit 0 either way (``delegated`` in ``--json`` says which), 1 when
refused or failed.
"""
from __future__ import annotations

import argparse
import json
import re
import tomllib
from datetime import datetime
from pathlib import Path

from gridcredit.cli_support import (EXIT_OK, CommandGroup, LazyClient, add_client_arguments, client_of, number_in,
                                    print_result, show_identity)
from gridcredit.client import InvalidRequest
from gridcredit.errors import DomainError
from gridcredit.timeunits import datetime_from_us, now_us, rfc3339

from ..bank.cli import duration_s
from .agent import add_agent_commands
from .delegation import LIFETIME_S_MAX, LIFETIME_S_MIN
from .pricing import METRIC_UNITS, PRICE_SCALE, QUOTE_GUARANTEE_S_MAX, round_half_up
from .types import (CORES_MAX, GPUS_MAX, MEMORY_MB_MAX, NODES_MAX, TIME_LIMIT_S_MAX, VERSION_MAX, JobRequest,
                    LoadPricing, MemoryBasis, Metric, Rate)

PRICE_FILE_BYTES_MAX = 4_000_000
_TABLE_KEYS = {"site", "version", "effective", "memory_basis", "rates"}
_RATE_KEYS = {"partition", "qos", "prices", "load"}
_LOAD_KEYS = ("low_permille", "high_permille", "min_permille", "max_permille")
DELEGATE_LIFETIME_S = 7 * 86_400
LIFETIME_SHORT_BY_US = 600 * 1_000_000     # a delegation this much shorter than asked for is pointed out
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


# ---------------------------------------------------------------------------------------------
# Arguments


def time_limit_type(text: str) -> int:
    """Slurm's time limit (``--time``): minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS → seconds."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time limit as Slurm writes one (minutes, HH:MM:SS, "
                                         f"D-HH:MM:SS)")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is not None:        # D-HH[:MM[:SS]]
        seconds = days * 86_400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:     # HH:MM:SS
        seconds = first * 3600 + second * 60 + third
    elif second is not None:    # MM:SS
        seconds = first * 60 + second
    else:                       # minutes
        seconds = first * 60
    if not 1 <= seconds <= TIME_LIMIT_S_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: a time limit is 1 s to 366 days")
    return seconds


def _lifetime_type(text: str) -> int:
    seconds = duration_s(text)
    if not LIFETIME_S_MIN <= seconds <= LIFETIME_S_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: a delegation lasts {LIFETIME_S_MIN // 3600} h to "
                                         f"{LIFETIME_S_MAX // 86_400} d")
    return seconds


def _renew_within_type(text: str) -> int:
    seconds = duration_s(text)
    if seconds > LIFETIME_S_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {LIFETIME_S_MAX // 86_400} d")
    return seconds

def moment_type(text: str) -> datetime:
    moment = _moment(text)
    if moment is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time written RFC 3339 with a zone "
                                         f"(2027-01-01T00:00:00Z)")
    return moment


def _moment(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


# ---------------------------------------------------------------------------------------------
# The price table file


def read_price_file(path: Path) -> dict:
    """The price change a TOML or JSON file describes, as ``JarmClient.set_price_table``'s arguments
    (``rates`` and what the file gives of ``site``, ``version``, ``effective``, ``memory_basis``)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidRequest(f"cannot read the price table {path}: {error.strerror or error}") from None
    if len(data) > PRICE_FILE_BYTES_MAX:
        raise InvalidRequest(f"{path}: a price table file has at most {PRICE_FILE_BYTES_MAX:,} bytes")
    try:
        if path.suffix == ".toml":
            table = tomllib.loads(data.decode("utf-8"))
        elif path.suffix == ".json":
            table = json.loads(data)
        else:
            raise InvalidRequest(f"{path}: a price table is a .toml or a .json file")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequest(f"{path} cannot be read as {path.suffix[1:].upper()}: {error}") from None
    try:
        return _price_change(table)
    except DomainError as error:
        raise InvalidRequest(f"{path}: {error}") from None


def _keys(value, allowed, where: str) -> dict:
    if not isinstance(value, dict):
        raise DomainError(f"{where} must be a table of names and values")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise DomainError(f"{where} has unknown key(s) {', '.join(unknown)}; it may have {', '.join(sorted(allowed))}")
    return value


def _price_change(table) -> dict:
    _keys(table, _TABLE_KEYS, "the price table")
    change: dict = {"rates": [_rate(rate, index) for index, rate in enumerate(_list(table.get("rates")), 1)]}
    if "site" in table:
        change["site"] = table["site"]
    if "version" in table:
        change["version"] = table["version"]
    if "memory_basis" in table:
        try:
            change["memory_basis"] = MemoryBasis(table["memory_basis"])
        except ValueError:
            raise DomainError(f"memory_basis {table['memory_basis']!r} is not one of "
                              f"{', '.join(basis.value for basis in MemoryBasis)}") from None
    if "effective" in table:
        effective = table["effective"]
        moment = effective if isinstance(effective, datetime) else _moment(effective) if isinstance(effective, str) \
            else None
        if moment is None or moment.tzinfo is None:
            raise DomainError(f"effective {effective!r} is not a time with a zone (2027-01-01T00:00:00Z)")
        change["effective"] = moment
    return change


def _list(value) -> list:
    if not isinstance(value, list) or not value:
        raise DomainError("the price table needs rates: a list of partition, qos and prices")
    return value


def _rate(value, index: int) -> Rate:
    where = f"rate {index}"
    _keys(value, _RATE_KEYS, where)
    prices = _keys(value.get("prices"), [metric.value for metric in Metric], f"{where}'s prices")
    load = value.get("load")
    if load is not None:
        _keys(load, _LOAD_KEYS, f"{where}'s load")
        missing = [name for name in _LOAD_KEYS if name not in load]
        if missing:
            raise DomainError(f"{where}'s load needs {', '.join(missing)}")
        load = LoadPricing(**load)
    return Rate(value.get("partition"), value.get("qos"), {Metric(name): price for name, price in prices.items()},
                load)


# ---------------------------------------------------------------------------------------------
# Output


def credits_text(numerator: int, denominator: int) -> str:
    """An exact amount to six decimals (rounded half up: for reading; the charge is the whole credits)."""
    micro = round_half_up(numerator * PRICE_SCALE, denominator)
    whole, fraction = divmod(micro, PRICE_SCALE)
    return f"{whole:,}.{fraction:06d}"


def table_json(stored) -> dict:
    """A stored version as ``--json`` prints it: the file's shape (prices by metric) and who set it when."""
    table = stored.table
    return {"site": table.site, "version": table.version, "effective_us": table.effective_us,
            "effective": rfc3339(datetime_from_us(table.effective_us)), "memory_basis": table.memory_basis.value,
            "rates": [{"partition": rate.partition, "qos": rate.qos,
                       "prices": {metric.value: price for metric, price in rate.prices},
                       **({} if rate.load is None else {"load": {name: getattr(rate.load, name) for name in _LOAD_KEYS}})}
                      for rate in table.rates],
            "set_by": stored.set_by, "set_us": stored.set_us}


def table_text(stored) -> str:
    table = stored.table
    lines = [f"site {table.site}, version {table.version}, in force from {rfc3339(datetime_from_us(table.effective_us))}"
             f" (set by {stored.set_by} at {rfc3339(datetime_from_us(stored.set_us))}); memory priced by "
             f"{table.memory_basis.value}",
             "prices in credits per " + ", ".join(f"{metric.value}: {METRIC_UNITS[metric].price_unit}"
                                                  for metric in Metric)]
    header = ["partition", "qos", *(metric.value for metric in Metric), "load"]
    rows = [[rate.partition, rate.qos, *(credits_text(price, PRICE_SCALE) for _, price in rate.prices),
             "-" if rate.load is None else f"{rate.load.min_permille}-{rate.load.max_permille}‰ over "
                                           f"{rate.load.low_permille}-{rate.load.high_permille}‰ full"]
            for rate in table.rates]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def quote_text(quoted) -> str:
    quote = quoted.quote
    cost, basis = quote.cost, quote.basis
    multiplier = basis.multiplier
    lines = [f"{cost.credits:,} credits for {quote.request.cores} cores × {quote.request.time_limit_s:,} s in "
             f"{basis.partition}/{basis.qos} (site {basis.site}, prices version {basis.version}"
             + (f", load multiplier {multiplier.numerator}/{multiplier.denominator}" if multiplier.denominator != 1
                or multiplier.numerator != 1 else "") + ")"]
    for line in cost.lines:
        unit = METRIC_UNITS[line.metric]
        lines.append(f"  {line.metric.value:9} {line.quantity:>22,} {unit.base_unit}{'' if line.quantity == 1 else 's'} at "
                     f"{credits_text(line.price_micro, PRICE_SCALE)} per {unit.price_unit}: "
                     f"{credits_text(line.numerator, cost.denominator)}")
    lines.append(f"  exact total {credits_text(cost.numerator, cost.denominator)}, rounded once half up to "
                 f"{cost.credits:,}")
    if quote.guaranteed:
        lines.append(f"guaranteed as quote {quote.quote_id} until {rfc3339(datetime_from_us(quote.valid_until_us))}"
                     + (" (kept before: the same quote)" if quoted.replayed else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Commands


def _client(args):
    from .client import JarmClient

    return LazyClient(lambda: client_of(args, JarmClient))


def _prices(args) -> int:
    stored = _client(args).price_table(version=args.version, at=args.at)
    print_result(args, table_json(stored), table_text(stored))
    return EXIT_OK


def _set_prices(args) -> int:
    change = read_price_file(Path(args.file))
    if args.version is not None:
        change["version"] = args.version
    if args.effective is not None:
        change["effective"] = args.effective
    receipt = _client(args).set_price_table(**change)
    text = table_text(receipt.stored)
    print_result(args, {"table": table_json(receipt.stored), "replayed": receipt.replayed},
                 ("already stored by this change: " if receipt.replayed else "stored: ") + text)
    return EXIT_OK


def _quote(args) -> int:
    try:
        request = JobRequest(args.partition, args.qos, args.cores, args.time_limit, args.memory_mb, args.gpus,
                             args.nodes)
    except DomainError as error:
        raise InvalidRequest(str(error)) from None
    quoted = _client(args).quote(request, guarantee_s=args.guarantee, quote_id=args.quote_id)
    print_result(args, quoted, quote_text(quoted))
    return EXIT_OK


def _when(us: int) -> str:
    return rfc3339(datetime_from_us(us).replace(microsecond=0))


def delegation_text(delegation) -> str:
    until = "until" if delegation.not_after_us > now_us() else "which expired at"
    return (f"JARM holds your delegation {delegation.delegation_id} {until} {_when(delegation.not_after_us)} "
            f"(proxy {delegation.proxy_dn}, stored {_when(delegation.created_us)})")


def _delegate(args) -> int:
    outcome = _client(args).delegate(lifetime_s=args.lifetime, renew_within_s=args.renew_within)
    delegation = outcome.delegation
    if not outcome.delegated:
        text = (delegation_text(delegation) + f"; renewal is due from "
                f"{_when(delegation.not_after_us - args.renew_within * 1_000_000)}: nothing done")
    else:
        text = "delegated: " + delegation_text(delegation)
        asked_us = delegation.created_us + args.lifetime * 1_000_000
        if delegation.not_after_us < asked_us - LIFETIME_SHORT_BY_US:
            text += (f"\nnote: sooner than the {args.lifetime:,} s asked for: the credential you signed with expires "
                     f"then (delegate from your certificate, not a proxy, for the whole lifetime)")
    print_result(args, outcome, text)
    return EXIT_OK


def _delegation(args) -> int:
    client = _client(args)
    if args.destroy:
        destroyed = client.destroy_delegation()
        print_result(args, {"destroyed": destroyed},
                     "destroyed: JARM holds no delegation of yours now" if destroyed
                     else "JARM held no delegation of yours: nothing to destroy")
        return EXIT_OK
    delegation = client.delegation()
    print_result(args, {"delegation": delegation},
                 "JARM holds no delegation of yours (gridcredit jarm delegate)" if delegation is None
                 else delegation_text(delegation))
    return EXIT_OK

def reservation_text(view) -> str:
    lines = [f"{view.reservation_id}: job {view.key.job} (run {view.key.restarts}) of {view.user} ({view.user_dn}), "
             f"account {view.account}: {view.state}" + (f", pending {view.pending}" if view.pending else "")]
    if view.hold_id:
        lines.append(f"  hold {view.hold_id}: {view.hold_amount:,} credits until {rfc3339(datetime_from_us(view.hold_expires_us))}"
                     f" ({view.authority})")
    lines.append(f"  estimate {view.estimate:,} credits by price version {view.version}; cost {view.cost:,}, charged "
                 f"{view.charged:,} to {view.payee}" + (f", uncharged {view.uncharged:,}" if view.uncharged else ""))
    if view.message:
        lines.append(f"  {view.message}")
    return "\n".join(lines)


def _status(args) -> int:
    view = _client(args).reservation(args.reservation_id)
    print_result(args, view, reservation_text(view))
    return EXIT_OK


def _all_reservations(client, user_dn):
    offset, page_size = 0, 1000
    while True:
        page = client.reservations(user_dn=user_dn, offset=offset, limit=page_size)
        yield from page
        if len(page) < page_size:
            return
        offset += page_size


def _list_reservations(args) -> int:
    found = list(_all_reservations(_client(args), args.user))
    print_result(args, found, "\n".join(reservation_text(view) for view in found) or "no reservations")
    return EXIT_OK


def _unfunded(args) -> int:
    """The runs admitted while the Bank did not answer (the site's admit_capped policy) and those
    the Bank charged less than they cost, with how each was settled."""
    found = [view for view in _all_reservations(_client(args), None)
             if view.unfunded_us or view.uncharged]
    rows = []
    for view in found:
        if view.state == "charged" and not view.uncharged:
            how = f"settled: {view.charged:,} credits charged"
        elif view.state == "charged":
            how = f"charged {view.charged:,} of {view.cost:,} credits: {view.uncharged:,} uncharged"
        else:
            how = f"not settled yet ({view.state}{', pending ' + view.pending if view.pending else ''})"
        rows.append({"reservation": view, "settlement": how})
    text = "\n".join(f"{row['reservation'].reservation_id} job {row['reservation'].key.job} account "
                     f"{row['reservation'].account}: {row['settlement']}" for row in rows)
    print_result(args, rows, text or "no unfunded runs")
    return EXIT_OK


def _reconcile(args) -> int:
    done = _client(args).reconcile()
    print_result(args, done, f"{done['ended']} run(s) found ended, {done['steps']} step(s) tried "
                             f"({done['left']} still pending), {done['extended']} hold(s) extended")
    return EXIT_OK


def _slurm_hook(args, which) -> int:
    import shutil

    config = args.local.config().jarm
    # Slurm runs its prologs and epilogs without a search path: find scontrol where Slurm installs it
    scontrol = args.scontrol or (f"{config.slurm_bin_dir}/scontrol" if config.slurm_bin_dir else
                                 shutil.which("scontrol", path="/usr/bin:/bin:/usr/local/bin") or "scontrol")
    return which(_client(args), scontrol=scontrol)


def _whoami(args) -> int:
    return show_identity(args, _client(args), "JARM")


def register(subparsers) -> None:
    group = CommandGroup(subparsers, "jarm", help="the site's prices, quotes and job reservations (JARM)",
                         description="The Job Account Reservation Manager's Price Authority: the site's price tables "
                                     "(versioned, set by price administrators) and quotes. --json prints results "
                                     "for scripts. Exit codes: 0 done, 1 refused or failed, 2 usage.",
                         add_common=lambda parser: add_client_arguments(parser, timeout_s=30.0))
    command, commands = group.command, group.commands

    version_type = number_in(1, VERSION_MAX, unit="(a version number)")
    p = command("prices", "the site's prices: the version in force now, at a time, or a given version",
                "gridcredit jarm prices --at 2026-12-01T00:00:00Z", _prices)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=version_type, metavar="N", help="version N")
    which.add_argument("--at", type=moment_type, metavar="TIME", help="the version in force at TIME (RFC 3339)")

    p = command("set-prices", "store the next version of the site's prices from a TOML or JSON file "
                              "(price administrators)",
                "gridcredit jarm set-prices prices.toml --version 2 --effective 2027-01-01T00:00:00Z", _set_prices)
    p.add_argument("file", metavar="FILE", help="the price table (.toml or .json; see the README)")
    p.add_argument("--version", type=version_type, metavar="N",
                   help="the version to store (default: the file's, else the next; naming it makes a retry safe)")
    p.add_argument("--effective", type=moment_type, metavar="TIME",
                   help="when it comes into force, RFC 3339 (default: the file's, else now)")

    p = command("quote", "what a job would cost by the prices in force now, with the breakdown",
                "gridcredit jarm quote --partition batch --qos normal --cores 16 --time-limit 2:00:00 --guarantee 3600",
                _quote)
    p.add_argument("--partition", required=True, help="the partition (queue)")
    p.add_argument("--qos", default="normal", help="the QoS (default %(default)s)")
    p.add_argument("--cores", type=number_in(1, CORES_MAX, unit="cores"), required=True, help="CPUs in all")
    p.add_argument("--time-limit", type=time_limit_type, required=True, metavar="TIME",
                   help="as sbatch --time: minutes, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--memory-mb", type=number_in(0, MEMORY_MB_MAX, unit="MB"), default=0, metavar="MB",
                   help="memory in all, MB (default 0)")
    p.add_argument("--gpus", type=number_in(0, GPUS_MAX, unit="GPUs"), default=0, help="GPUs in all (default 0)")
    p.add_argument("--nodes", type=number_in(1, NODES_MAX, unit="nodes"), default=1, help="nodes (default 1)")
    p.add_argument("--guarantee", type=number_in(0, QUOTE_GUARANTEE_S_MAX, unit="seconds"), default=0, metavar="S",
                   help="guarantee the quote for S seconds (a reservation presenting its id is priced by it)")
    p.add_argument("--quote-id", metavar="ID", help="the guaranteed quote's id (default: a fresh one)")

    p = command("delegate", "hand JARM a proxy of your credential, its key made by JARM (GSI delegation), for "
                            "the holds of your jobs",
                "gridcredit jarm delegate --lifetime 7d --renew-within 1d", _delegate)
    p.add_argument("--lifetime", type=_lifetime_type, default=DELEGATE_LIFETIME_S, metavar="DURATION",
                   help=f"how long the delegation lasts (e.g. 12h, 7d; {LIFETIME_S_MIN // 3600} h to "
                        f"{LIFETIME_S_MAX // 86_400} d, default 7d), at most your credential's own lifetime")
    p.add_argument("--renew-within", type=_renew_within_type, metavar="DURATION",
                   help="only when JARM holds no delegation of yours valid for longer than this (e.g. 1d): "
                        "for cron; exit 0 when nothing was due")
    p = command("delegation", "the delegation JARM holds for you (or --destroy it)", "gridcredit jarm delegation",
                _delegation)
    p.add_argument("--destroy", action="store_true", help="have JARM delete your delegation and its key")

    p = command("status", "a reservation: its hold, cost and charge", "gridcredit jarm status r-cluster1-1234-0",
                _status)
    p.add_argument("reservation_id", metavar="RESERVATION", help="r-<cluster>-<job>[.<task>]-<run>")
    p = command("list", "your reservations (controllers and price administrators: anyone's or everyone's)",
                "gridcredit jarm list --user '/DC=org/CN=Alice'", _list_reservations)
    p.add_argument("--user", metavar="DN", help="this user's (default: yours; everyone's for controllers)")
    command("unfunded", "runs admitted while the Bank did not answer, or charged less than they cost, and how "
                        "each was settled (controllers)", "gridcredit jarm unfunded --json", _unfunded)
    command("reconcile", "one pass of the JARM's reconciler now: pending Bank work, ended runs, extensions "
                         "(controllers)", "gridcredit jarm reconcile", _reconcile)
    from .slurm import hooks
    for name, which, summary in (("prolog", hooks.prolog, "Slurm's PrologSlurmctld: reserve the starting job "
                                                          "(exit 1 and a user hold when refused)"),
                                 ("epilog", hooks.epilog, "Slurm's EpilogSlurmctld: report the job's end (always "
                                                          "exit 0: the reconciler finds what this misses)")):
        p = command(name, summary, f"PrologSlurmctld=/etc/slurm/jarm-{name} (a script running gridcredit jarm {name})",
                    lambda args, which=which: _slurm_hook(args, which))
        p.add_argument("--scontrol", metavar="PATH", help="Slurm's scontrol (default: [jarm] slurm_bin_dir's, else "
                                                          "the PATH)")
    command("whoami", "make a signed call and show who the JARM thinks you are", "gridcredit jarm whoami", _whoami)
    add_agent_commands(commands)       # agent, agent-hook: the admission agent on the Slurm controller (agent.py)
