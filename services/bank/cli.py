"""``gridcredit bank …``: every Bank operation from the shell, a thin layer over :class:`BankClient`.

Each command signs with the user's certificate or proxy (``--cert/--key/--proxy``, grid
conventions by default), prints readable text (amounts with thousands separators, times in ISO
UTC) or, with ``--json``, the result as JSON (money as integers, times as microseconds since the
epoch in fields ending ``_us``, a datetime as RFC 3339 UTC ``…Z``). Mutating commands take ``--request-id``; without one a fresh id
is made, and it is retried under that same id when an attempt gets no answer, so nothing is
applied twice. Exit codes: 0 done, 1 refused or failed (``TypeName: message`` on stderr), 2 usage.
Options, output and exit codes are gridcredit.cli_support's, as in every command group.

``gridcredit bank audit --offline`` reads the store of the local configuration directly
(``--config``), with the ledger key beside it; it exits 1 and lists the findings when the ledger
is not clean.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from datetime import datetime, timedelta, timezone

from gridcredit.cli_support import (EXIT_FAILED, EXIT_OK, CommandGroup, LazyClient, add_client_arguments, checked, client_of,
                                    duration_type, print_result, show_identity, usage_error)
from gridcredit.errors import GridcreditError
from gridcredit.timeunits import US_PER_S, datetime_from_us, datetime_to_us, rfc3339

from . import ledger
from .client import AuditReport, BankClient, Receipt, Transaction, audit_report_of

PERIODS_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400}


# ---------------------------------------------------------------------------------------------
# Argument types (a bad value is a usage error: exit 2)


def amount_type(text: str) -> int:
    """An integer number of credits; ``1_000_000`` and ``1,000,000`` read as 1000000."""
    cleaned = text.replace(",", "").replace("_", "").strip()
    if not re.fullmatch(r"-?\d+", cleaned):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of credits")
    return int(cleaned)


# Seconds from ``90s``, ``30m``, ``2h``, ``1d``, ``1w`` or ``1h30m``: a unit is required (``--expires-in 2``
# is refused, not read as two seconds); the one duration type of every command group.
duration_s = duration_type


def period_s(text: str) -> int:
    """A spending period: second, minute, hour, day, week, a number of seconds (``3600``) or a
    duration (``12h``)."""
    cleaned = text.strip().lower()
    if cleaned.isdigit() and int(cleaned) > 0:
        return int(cleaned)
    return PERIODS_S.get(cleaned) or duration_s(text)


def moment_type(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC (``2025-01-31``, ``2025-01-31T12:00:00Z``)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2025-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def request_id_type(text: str) -> str:
    from .ledger import REQUEST_ID_PATTERN

    if not REQUEST_ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a request id is 1-128 characters of letters, digits and ._:@- "
                                         "starting with a letter or digit")
    return text


# ---------------------------------------------------------------------------------------------
# Output


def money(amount: int | None) -> str:
    return "-" if amount is None else f"{amount:,}"


def when(microseconds: int | None) -> str:
    if microseconds is None:
        return "-"
    return rfc3339(datetime_from_us(microseconds).replace(microsecond=0))


def period_text(period_us: int | None) -> str:
    if period_us is None:
        return "-"
    seconds = period_us // US_PER_S
    for name, length in sorted(PERIODS_S.items(), key=lambda item: -item[1]):
        if seconds == length:
            return name
    return f"{seconds:,} s"


def describe(t: Transaction) -> str:
    """One line saying what a ledger transaction did."""
    kind = t.kind
    if kind == "create-account":
        text = (f"account {t.account_id} created for project {t.project}, owner {t.holder_dn}, "
                f"credit limit {money(t.credit_limit)}")
    elif kind == "set-holder":
        text = f"{t.holder_dn} is {t.role} of {t.account_id}"
    elif kind == "remove-holder":
        text = f"{t.holder_dn} removed from {t.account_id}"
    elif kind == "set-status":
        text = f"{t.account_id} is {t.status}"
    elif kind == "set-credit-limit":
        text = f"credit limit of {t.account_id} is {money(t.credit_limit)}"
    elif kind == "set-spending-limit":
        text = (f"spending limit of {t.account_id} removed" if t.spending_limit is None else
                f"spending limit of {t.account_id} is {money(t.spending_limit)} per {period_text(t.spending_period_us)}")
    elif kind == "grant-service":
        caps = [f"at most {money(t.grant_hold_max)} per hold"] if t.grant_hold_max is not None else []
        if t.grant_period_max is not None:
            caps.append(f"{money(t.grant_period_max)} per {period_text(t.grant_period_us)}")
        text = (f"{t.service_dn} may hold on {t.account_id} for its owners, managers and members"
                f" ({', '.join(caps) if caps else 'no caps'})")
    elif kind == "revoke-service":
        text = f"{t.service_dn} may no longer hold on {t.account_id} for its holders"
    elif kind == "mint-request":
        text = (f"mint of {money(t.amount)} into {t.account_id} awaits a second administrator until "
                f"{when(t.expires_at_us)}: pending mint {t.pending_mint_id}")
    elif kind == "mint-cancel":
        text = (f"pending mint {t.pending_mint_id} of {money(t.amount)} into {t.account_id} cancelled by "
                f"{t.principal_dn}")
    elif kind == "mint-expire":
        text = f"pending mint {t.pending_mint_id} of {money(t.amount)} into {t.account_id} expired unapproved"
    elif kind == "mint":
        text = f"{money(t.amount)} minted into {t.account_id}"
        if t.approver_dn:
            text += f" (pending mint {t.pending_mint_id}, approved by {t.approver_dn})"
    elif kind == "retire-request":
        text = (f"retirement of {money(t.amount)} from {t.account_id} awaits a second administrator until "
                f"{when(t.expires_at_us)}: pending {t.pending_mint_id}")
    elif kind == "retire":
        text = f"{money(t.amount)} retired from {t.account_id}"
        if t.approver_dn:
            text += f" (pending {t.pending_mint_id}, approved by {t.approver_dn})"
    elif kind == "transfer":
        text = f"{money(t.amount)} from {t.account_id} to {t.counterparty_account_id}"
    elif kind == "hold":
        text = f"hold {t.hold_id}: {money(t.amount)} on {t.account_id} until {when(t.expires_at_us)}"
        if t.reference:
            text += f" ({t.reference})"
    elif kind == "extend":
        text = f"hold {t.hold_id} now {money(t.hold_amount)}"
        if t.expires_at_us is not None:
            text += f" until {when(t.expires_at_us)}"
    elif kind == "charge":
        text = (f"{money(t.amount)} charged on hold {t.hold_id} from {t.account_id} to {t.counterparty_account_id}"
                f" (hold {t.hold_state})")
    elif kind == "settle":
        text = (f"hold {t.hold_id} settled: {money(t.amount)} charged from {t.account_id} to "
                f"{t.counterparty_account_id}, {money(t.released_amount)} back to {t.account_id}")
    elif kind in ("release", "expire"):
        text = f"hold {t.hold_id} {'released' if kind == 'release' else 'expired'}: {money(t.amount)} back to {t.account_id}"
    else:
        text = f"{kind} {t.account_id or ''} {money(t.amount)}".strip()
    if t.on_behalf_of_dn:                # a hold a service made under its grant, and what was done with it
        text += f" — by {t.principal_dn} for {t.on_behalf_of_dn}"
    return text


def transaction_line(t: Transaction) -> str:
    return f"#{t.seq:<6} {when(t.at_us)}  {t.kind:<18} {describe(t)}"


def receipt_text(receipt: Receipt) -> str:
    t = receipt.transaction
    lines = [f"{describe(t)}", f"  transaction #{t.seq} ({t.kind}) at {when(t.at_us)}, request id {t.request_id}"]
    if receipt.replayed:
        lines.append("  (a retry: the bank had already applied this request id; nothing changed now)")
    return "\n".join(lines)


def audit_text(report: AuditReport, where: str) -> str:
    if report.clean:
        return (f"{where}: clean — {report.transaction_count:,} transactions, head #{report.head_seq} "
                f"{report.head_hash[:16]}…, issued {money(report.issued)}, retired {money(report.retired)}, "
                f"{report.signatures_checked:,} signature checkpoint(s) verified")
    count = len(report.findings) + report.findings_omitted
    lines = [f"{where}: NOT clean — {count:,} finding(s) over {report.transaction_count:,} transactions"]
    for finding in report.findings:
        seq = "-" if finding.seq is None else f"#{finding.seq}"
        lines.append(f"  {finding.kind:<14} {seq:<8} {finding.message}")
    if report.findings_omitted:
        lines.append(f"  … and {report.findings_omitted:,} more")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Handlers: (args, bank) -> exit code


def _receipt(args, receipt: Receipt) -> int:
    print_result(args, receipt, receipt_text(receipt))
    return EXIT_OK


def _create_account(args, bank):
    return _receipt(args, bank.create_account(args.account, project=args.project, owner_dn=args.owner,
                                              credit_limit=args.credit_limit, request_id=args.request_id))


def _set_holder(args, bank):
    return _receipt(args, bank.set_holder(args.account, holder_dn=args.dn, role=args.role, request_id=args.request_id))


def _remove_holder(args, bank):
    return _receipt(args, bank.remove_holder(args.account, holder_dn=args.dn, request_id=args.request_id))


def _set_status(args, bank):
    return _receipt(args, bank.set_status(args.account, status=args.status, request_id=args.request_id))


def _set_credit_limit(args, bank):
    return _receipt(args, bank.set_credit_limit(args.account, credit_limit=args.amount, request_id=args.request_id))


def _set_spending_limit(args, bank):
    if args.remove:
        if args.amount is not None or args.per is not None:
            raise usage_error(args, "--remove takes neither an amount nor --per")
        limit = period = None
    else:
        if args.amount is None or args.per is None:
            raise usage_error(args, "give an amount and --per (or --remove)")
        limit, period = args.amount, args.per
    return _receipt(args, bank.set_spending_limit(args.account, spending_limit=limit, period_s=period,
                                                  request_id=args.request_id))


def _grant_service(args, bank):
    if (args.period_max is None) != (args.period is None):
        raise usage_error(args, "--period-max and --period go together")
    return _receipt(args, bank.grant_service(args.account, args.dn, hold_max=args.hold_max, period_max=args.period_max,
                                             period_s=args.period, request_id=args.request_id))


def _revoke_service(args, bank):
    return _receipt(args, bank.revoke_service(args.account, args.dn, request_id=args.request_id))


def _mint(args, bank):
    return _receipt(args, bank.mint(args.account, args.amount, request_id=args.request_id))


def _approve_mint(args, bank):
    return _receipt(args, bank.approve_mint(args.pending_mint, request_id=args.request_id))


def _cancel_mint(args, bank):
    return _receipt(args, bank.cancel_mint(args.pending_mint, request_id=args.request_id))


def _pending_mint_line(p) -> str:
    line = (f"{p.pending_mint_id:<14} {p.state:<9} {money(p.amount)} into {p.account_id}, requested by "
            f"{p.requester_dn} at {when(p.requested_at_us)}")
    if p.ended_seq is None:
        return line + f", expires {when(p.expires_at_us)}"
    return line + f"; {p.state} by {p.ended_by_dn} (#{p.ended_seq} at {when(p.ended_at_us)})"


def _pending_mints(args, bank):
    page = bank.list_pending_mints(ended=args.ended, offset=args.offset, limit=args.limit)
    lines = [_pending_mint_line(p) for p in page.pending_mints] or [
        "no ended pending mints" if args.ended else "no mints await approval"]
    print_result(args, page, "\n".join(lines + _more(page.next_offset)))
    return EXIT_OK


def _retire(args, bank):
    return _receipt(args, bank.retire(args.account, args.amount, request_id=args.request_id))


def _transfer(args, bank):
    return _receipt(args, bank.transfer(args.from_account, args.to_account, args.amount, request_id=args.request_id))


def _expires(args, *, required: bool):
    if args.expires is not None:
        return args.expires
    if args.expires_in is not None:
        return timedelta(seconds=args.expires_in)  # made absolute once by the client, before any attempt
    if required:
        raise usage_error(args, "give --expires-in (e.g. 2h) or --expires (ISO time)")
    return None


def _hold(args, bank):
    return _receipt(args, bank.create_hold(args.account, amount=args.amount, expires=_expires(args, required=True),
                                           reference=args.reference, collector_dn=args.collector,
                                           payee_account_id=args.payee, on_behalf_of_dn=args.on_behalf_of,
                                           request_id=args.request_id))


def _extend_hold(args, bank):
    expires = _expires(args, required=False)
    if expires is None and args.amount is None and args.payee is None:
        raise usage_error(args, "give a later expiry (--expires-in/--expires), a larger --amount and/or another --payee")
    return _receipt(args, bank.extend_hold(args.hold, expires=expires, amount=args.amount, payee_account_id=args.payee,
                                           request_id=args.request_id))


def _charge(args, bank):
    return _receipt(args, bank.charge_hold(args.hold, payee_account_id=args.payee, amount=args.amount,
                                           request_id=args.request_id))


def _settle(args, bank):
    return _receipt(args, bank.settle_hold(args.hold, payee_account_id=args.payee, amount=args.amount,
                                           request_id=args.request_id))


def _release(args, bank):
    return _receipt(args, bank.release_hold(args.hold, request_id=args.request_id))


_BATCH_OPERATIONS = {kind.__name__: kind for kind in ledger.BATCH_OPERATIONS}


def _batch_items(args) -> list:
    """The ledger requests of a batch file: one JSON object a line (blank lines skipped), each an item as the
    WSDL's BatchItem names it; an ExtendHold's ``expires`` an ISO 8601 time."""
    source = sys.stdin if args.file == "-" else None
    try:
        lines = (source.read() if source else Path(args.file).read_text(encoding="utf-8")).splitlines()
    except OSError as error:
        raise usage_error(args, f"cannot read {args.file}: {error.strerror or error}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise usage_error(args, f"{args.file} line {number}: not JSON ({error.msg})") from None
        kind = _BATCH_OPERATIONS.get(item.pop("operation", None) if isinstance(item, dict) else None)
        if kind is None:
            raise usage_error(args, f"{args.file} line {number}: each line is an object whose operation is one of "
                                    f"{', '.join(_BATCH_OPERATIONS)}")
        if kind is ledger.ExtendHold and "expires" in item:
            expires = item.pop("expires")
            try:
                item["expires_at_us"] = None if expires is None else datetime_to_us(moment_type(str(expires)))
            except argparse.ArgumentTypeError as error:
                raise usage_error(args, f"{args.file} line {number}: {error}") from None
        try:
            items.append(kind(**item))
        except TypeError as error:
            raise usage_error(args, f"{args.file} line {number}: {error}") from None
    return items


def _batch(args, bank):
    result = bank.apply_batch(_batch_items(args))
    lines = []
    for item in result.results:
        if not item.applied:
            lines.append(f"{item.request_id}: refused [{item.code}] {item.fault_message}")
        else:
            done = "applied before" if item.replayed else "applied"
            lines.append(f"{item.request_id}: {done}: {item.kind} {money(item.amount or 0)} (transaction {item.seq})")
    lines.append(f"{result.applied} applied, {result.replayed} applied before, {result.refused} refused")
    print_result(args, result, "\n".join(lines))
    return EXIT_FAILED if result.refused else EXIT_OK


def _balance(args, bank):
    b = bank.get_balance(args.account)
    print_result(args, b, f"{b.account_id}: balance {money(b.total)}, held {money(b.held)}, available {money(b.available)}"
                    f" (credit limit {money(b.credit_limit)})")
    return EXIT_OK


def _account(args, bank):
    a = bank.get_account(args.account)
    limit = ("none" if a.spending_limit is None else
             f"{money(a.spending_limit)} per {period_text(a.spending_period_us)} ({money(a.spent_in_period)} spent)")
    lines = [f"account {a.account_id} (project {a.project}), {a.status}, created {when(a.created_at_us)}",
             f"  balance {money(a.balance)}, held {money(a.held)}, available {money(a.available)}",
             f"  credit limit {money(a.credit_limit)}, spending limit {limit}",
             "  holders:"] + [f"    {h.role:<8} {h.dn}" for h in a.holders]
    for g in a.grants:
        caps = [f"at most {money(g.hold_max)} per hold"] if g.hold_max is not None else []
        if g.period_max is not None:
            caps.append(f"{money(g.period_max)} per {period_text(g.period_us)} ({money(g.held_in_period)} held)")
        lines.append(f"  service {g.service_dn} may hold for its holders ({', '.join(caps) if caps else 'no caps'}), "
                     f"granted {when(g.granted_at_us)}")
    print_result(args, a, "\n".join(lines))
    return EXIT_OK


def _hold_line(h) -> str:
    line = (f"{h.hold_id:<14} {h.state:<11} {money(h.charged)} of {money(h.amount)} charged, "
            f"expires {when(h.expires_at_us)}")
    if h.ended_seq is not None:
        line += f", ended by #{h.ended_seq} at {when(h.ended_at_us)}"
    return line + (f"  {h.reference}" if h.reference else "")


def _show_hold(args, bank):
    h = bank.get_hold(args.hold)
    lines = [_hold_line(h), f"  account {h.account_id}, created {when(h.created_at_us)} by {h.creator_dn} (#{h.created_seq})"]
    if h.payee_account_id:
        lines.append(f"  charges go to account {h.payee_account_id}")
    if h.collector_dn:
        lines.append(f"  collector {h.collector_dn}")
    if h.on_behalf_of_dn:
        lines.append(f"  on behalf of {h.on_behalf_of_dn} (by {h.creator_dn}, under its grant)")
    print_result(args, h, "\n".join(lines))
    return EXIT_OK


def _more(next_offset: int | None) -> list[str]:
    return [] if next_offset is None else [f"(more: --offset {next_offset})"]


def _holds(args, bank):
    page = bank.list_holds(args.account, ended=args.ended, offset=args.offset, limit=args.limit)
    what = "ended" if args.ended else "active"
    lines = [_hold_line(h) for h in page.holds] or [f"no {what} holds on {args.account}"]
    print_result(args, page, "\n".join(lines + _more(page.next_offset)))
    return EXIT_OK


def _history(args, bank):
    page = bank.history(args.account, xpath_filter=args.filter, offset=args.offset, limit=args.limit)
    lines = [transaction_line(t) for t in page.transactions] or [f"no transactions on {args.account}"]
    print_result(args, page, "\n".join(lines + _more(page.next_offset)))
    return EXIT_OK


def _statement(args, bank):
    start = args.period_start
    end = args.period_end or datetime.now(timezone.utc)
    s = bank.statement(args.account, start=start, end=end)
    lines = [f"statement of {s.account_id} from {when(s.from_us)} to {when(s.to_us)}",
             f"  opening balance {money(s.opening_balance)}"]
    lines += [f"  {transaction_line(t)}" for t in s.transactions]
    if s.truncated:
        lines.append("  (truncated: more transactions in the period than a statement lists)")
    lines.append(f"  closing balance {money(s.closing_balance)}")
    print_result(args, s, "\n".join(lines))
    return EXIT_OK


def _money_supply(args, bank):
    m = bank.money_supply()
    print_result(args, m, f"issued {money(m.issued)}, retired {money(m.retired)}, outstanding {money(m.outstanding)}")
    return EXIT_OK


def _whoami(args, bank):
    return show_identity(args, bank, "bank")


def _audit(args):
    if args.offline:
        report, where = offline_audit(args), "ledger (offline)"
    else:
        report, where = client_of(args, BankClient).audit(), f"ledger at {args.url}"
    print_result(args, report, audit_text(report, where))
    return EXIT_OK if report.clean else EXIT_FAILED


def offline_audit(args) -> AuditReport:
    """Audit the store of the local configuration directly, with the ledger key beside it."""
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization

    from gridcredit.xmlstore import open_store

    from .bank import audit_store
    from .runtime import ledger_key_path

    config = args.local.config()
    key_path = Path(args.public_key) if args.public_key else ledger_key_path(config)
    try:
        data = key_path.read_bytes()
    except OSError as error:
        raise GridcreditError(f"cannot read the ledger key {key_path}: {error.strerror}; "
                              "give the bank's public key with --public-key") from None
    try:
        if b"PRIVATE KEY" in data:
            public_key = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            public_key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise GridcreditError(f"{key_path} is not a PEM ledger key: {error}") from None
    store = open_store(config.store, config.state_path)
    try:
        return audit_report_of(audit_store(store, public_key,
                                           signature_check_interval=1 if args.every_signature else 1000))
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Registration


def _online(handler):
    """A handler of (args, bank): the BankClient is made when the handler first uses it."""
    return checked(lambda args: handler(args, LazyClient(lambda: client_of(args, BankClient))))


def _common(parser: argparse.ArgumentParser, *, mutating: bool) -> None:
    add_client_arguments(parser, timeout_s=30.0)
    if mutating:
        parser.add_argument("--request-id", type=request_id_type, metavar="ID",
                            help="client request id (default: a new one); repeating a request under its id "
                                 "answers the original and applies nothing twice")


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
    parser.add_argument("--limit", type=int, default=100, help="at most this many, 1-500 (default 100)")


def _expiry_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--expires-in", type=duration_s, metavar="DURATION", help="e.g. 90s, 30m, 2h, 1d, 1h30m")
    group.add_argument("--expires", type=moment_type, metavar="TIME", help="ISO 8601 time, UTC unless a zone is given")


def register(subparsers) -> None:
    group = CommandGroup(subparsers, "bank", help="accounts, holds, charges and the ledger of the Bank",
                         description="Every Bank operation, signed with your certificate or proxy. --json prints "
                                     "results for scripts. Exit codes: 0 done, 1 refused or failed, 2 usage.",
                         add_common=_common, wrap=_online)

    def command(name: str, summary: str, example: str, handler, *, mutating: bool = False, aliases=(),
                online: bool = True) -> argparse.ArgumentParser:
        return group.command(name, summary, example, handler, aliases=aliases, wrap=None if online else checked,
                             mutating=mutating)

    p = command("create-account", "create an account owned by a user (administrators)",
                "gridcredit bank create-account vo-atlas --project atlas --owner '/DC=org/DC=example/CN=Alice'",
                _create_account, mutating=True)
    p.add_argument("account", help="account id")
    p.add_argument("--project", required=True, help="the project or VO that owns it")
    p.add_argument("--owner", required=True, metavar="DN", help="the owner's certificate subject DN")
    p.add_argument("--credit-limit", type=amount_type, metavar="AMOUNT", help="overdraft allowed (default 0)")

    p = command("set-holder", "add a holder or change a holder's role (owners any role; managers member and viewer; "
                              "administrators viewer only)",
                "gridcredit bank add-holder vo-atlas '/DC=org/DC=example/CN=Bob' --role member",
                _set_holder, mutating=True, aliases=("add-holder",))
    p.add_argument("account")
    p.add_argument("dn", help="the holder's certificate subject DN")
    p.add_argument("--role", required=True, choices=["owner", "manager", "member", "viewer"])

    p = command("remove-holder", "remove a holder from an account",
                "gridcredit bank remove-holder vo-atlas '/DC=org/DC=example/CN=Bob'", _remove_holder, mutating=True)
    p.add_argument("account")
    p.add_argument("dn")

    for name, status, summary in (("freeze", "frozen", "freeze an account: no new holds or spending"),
                                  ("unfreeze", "open", "reopen a frozen account (administrators)"),
                                  ("close", "closed", "close an account for good (zero balance, no active holds)")):
        p = command(name, summary, f"gridcredit bank {name} vo-atlas", _set_status, mutating=True)
        p.add_argument("account")
        p.set_defaults(status=status)
    p = command("set-status", "set an account's status", "gridcredit bank set-status vo-atlas frozen",
                _set_status, mutating=True)
    p.add_argument("account")
    p.add_argument("status", choices=["open", "frozen", "closed"])

    p = command("set-credit-limit", "set how far an account may go below zero (administrators)",
                "gridcredit bank set-credit-limit vo-atlas 50,000", _set_credit_limit, mutating=True)
    p.add_argument("account")
    p.add_argument("amount", type=amount_type)

    p = command("set-spending-limit", "limit what an account spends per period (charges and transfers out)",
                "gridcredit bank set-spending-limit vo-atlas 10000 --per day", _set_spending_limit, mutating=True)
    p.add_argument("account")
    p.add_argument("amount", type=amount_type, nargs="?", help="credits per period")
    p.add_argument("--per", type=period_s, metavar="PERIOD",
                   help="second, minute, hour, day, week, or a duration such as 3600 or 12h")
    p.add_argument("--remove", action="store_true", help="remove the spending limit")

    p = command("grant-service", "let a service (a site's JARM) hold on an account for its owners, managers and "
                                 "members, within caps (owners)",
                "gridcredit bank grant-service vo-atlas '/DC=org/DC=example/CN=host/jarm.example.org' "
                "--hold-max 5000 --period-max 100000 --period 30d", _grant_service, mutating=True)
    p.add_argument("account")
    p.add_argument("dn", help="the service's certificate subject DN")
    p.add_argument("--hold-max", type=amount_type, metavar="AMOUNT", help="the largest hold it may place")
    p.add_argument("--period-max", type=amount_type, metavar="AMOUNT",
                   help="at most this much held per --period in all (new holds and raises)")
    p.add_argument("--period", type=period_s, metavar="PERIOD", help="day, week, 30d, …")

    p = command("revoke-service", "end a service's grant on an account (owners); its holds stay",
                "gridcredit bank revoke-service vo-atlas '/DC=org/DC=example/CN=host/jarm.example.org'",
                _revoke_service, mutating=True)
    p.add_argument("account")
    p.add_argument("dn")

    p = command("mint", "issue new credits into an account (administrators; a ledger transaction naming you)",
                "gridcredit bank mint vo-atlas 1,000,000", _mint, mutating=True)
    p.add_argument("account")
    p.add_argument("amount", type=amount_type)

    p = command("approve-mint", "approve another administrator's mint above the approval threshold",
                "gridcredit bank approve-mint mint-12", _approve_mint, mutating=True)
    p.add_argument("pending_mint", metavar="PENDING_MINT_ID")

    p = command("cancel-mint", "withdraw a mint awaiting approval (administrators, its requester too)",
                "gridcredit bank cancel-mint mint-12", _cancel_mint, mutating=True)
    p.add_argument("pending_mint", metavar="PENDING_MINT_ID")

    p = command("pending-mints", "mints awaiting a second administrator, with their state and expiry "
                                 "(administrators, auditors)", "gridcredit bank pending-mints --ended", _pending_mints)
    p.add_argument("--ended", action="store_true", help="those that were approved, cancelled or expired")
    _paging(p)

    p = command("retire", "take credits out of circulation from an account (administrators)",
                "gridcredit bank retire vo-atlas 5000", _retire, mutating=True)
    p.add_argument("account")
    p.add_argument("amount", type=amount_type)

    command("money-supply", "credits issued, retired and outstanding", "gridcredit bank money-supply", _money_supply)

    p = command("transfer", "move credits between accounts (members of the paying account)",
                "gridcredit bank transfer vo-atlas vo-cms 2500", _transfer, mutating=True)
    p.add_argument("from_account", metavar="FROM")
    p.add_argument("to_account", metavar="TO")
    p.add_argument("amount", type=amount_type)

    p = command("hold", "reserve credits on an account until charged, released or expired",
                "gridcredit bank hold vo-atlas --amount 500 --expires-in 2h --reference 'job 4711'",
                _hold, mutating=True, aliases=("create-hold",))
    p.add_argument("account")
    p.add_argument("--amount", type=amount_type, required=True)
    _expiry_options(p, required=True)
    p.add_argument("--reference", help="free text, e.g. the job it pays for")
    p.add_argument("--payee", metavar="ACCOUNT", help="the account every charge goes to (needed with --collector)")
    p.add_argument("--collector", metavar="DN", help="another identity that may charge it (to --payee, up to "
                                                     "--amount), move its expiry and release it")
    p.add_argument("--on-behalf-of", metavar="DN", help="a service with a grant on the account: hold for this "
                                                        "owner, manager or member")

    p = command("extend-hold", "give a hold a later expiry, a larger amount or another payee",
                "gridcredit bank extend-hold hold-42 --expires-in 4h --amount 800", _extend_hold, mutating=True)
    p.add_argument("hold", metavar="HOLD_ID")
    p.add_argument("--amount", type=amount_type, help="the new, larger total amount")
    p.add_argument("--payee", metavar="ACCOUNT", help="the account its charges go to from now on")
    _expiry_options(p)

    p = command("charge", "charge part or all of a hold to a payee account",
                "gridcredit bank charge hold-42 --payee site-x --amount 120", _charge, mutating=True)
    p.add_argument("hold", metavar="HOLD_ID")
    p.add_argument("--payee", required=True, metavar="ACCOUNT")
    p.add_argument("--amount", type=amount_type, required=True)

    p = command("settle", "end a hold with its final charge to a payee and return the rest, in one transaction",
                "gridcredit bank settle hold-42 --payee site-x --amount 120", _settle, mutating=True)
    p.add_argument("hold", metavar="HOLD_ID")
    p.add_argument("--payee", required=True, metavar="ACCOUNT")
    p.add_argument("--amount", type=amount_type, required=True, help="the final charge, 0 up to what is left")

    p = command("release", "end a hold and return what is left of it", "gridcredit bank release hold-42",
                _release, mutating=True)
    p.add_argument("hold", metavar="HOLD_ID")

    p = command("batch", "apply many charges, settlements, releases, transfers and extensions in one request and "
                         "one ledger transaction, each with its own request id (exit 1 if any was refused)",
                "gridcredit bank batch items.jsonl   # a line: {\"operation\": \"ChargeHold\", \"request_id\": "
                "\"c1\", \"hold_id\": \"hold-42\", \"payee_account_id\": \"site-x\", \"amount\": 120}", _batch)
    p.add_argument("file", metavar="FILE", help="one JSON object a line, as the WSDL's BatchItem ('-': stdin)")

    p = command("balance", "total, held and available credits of an account", "gridcredit bank balance vo-atlas",
                _balance)
    p.add_argument("account")

    p = command("account", "an account: status, balances, limits and holders", "gridcredit bank account vo-atlas",
                _account)
    p.add_argument("account")

    p = command("show-hold", "one hold", "gridcredit bank show-hold hold-42", _show_hold)
    p.add_argument("hold", metavar="HOLD_ID")

    p = command("holds", "an account's active holds (or ended ones)", "gridcredit bank holds vo-atlas --ended", _holds)
    p.add_argument("account")
    p.add_argument("--ended", action="store_true", help="holds that were charged out, released or expired")
    _paging(p)

    p = command("history", "transactions touching an account, oldest first",
                "gridcredit bank history vo-atlas --filter \"t:kind='charge' and t:amount > 100\" --limit 20", _history)
    p.add_argument("account")
    p.add_argument("--filter", metavar="XPATH",
                   help="XPath predicate over the transaction document (prefix t:, e.g. t:kind='transfer')")
    _paging(p)

    p = command("statement", "opening balance, the transactions of a period, closing balance",
                "gridcredit bank statement vo-atlas --from 2025-01-01 --to 2025-02-01", _statement)
    p.add_argument("account")
    p.add_argument("--from", dest="period_start", type=moment_type, required=True, metavar="TIME",
                   help="start (ISO 8601, UTC unless a zone is given), included")
    p.add_argument("--to", dest="period_end", type=moment_type, metavar="TIME", help="end, excluded (default now)")

    p = command("audit", "verify the ledger: hash chain, signatures, invariants (exit 1 when not clean)",
                "gridcredit bank audit            # the bank audits itself (administrators, auditors)\n"
                "  gridcredit --config /etc/gridcredit.toml bank audit --offline   # read the store directly",
                _audit, online=False)
    p.add_argument("--offline", action="store_true",
                   help="read the store of the local configuration (--config) instead of asking the bank")
    p.add_argument("--public-key", metavar="PEM", help="offline: the bank's ledger key (default: beside the store)")
    p.add_argument("--every-signature", action="store_true",
                   help="offline: verify every transaction's signature, not checkpoints")

    command("whoami", "make a signed call and show who the bank thinks you are", "gridcredit bank whoami", _whoami)

