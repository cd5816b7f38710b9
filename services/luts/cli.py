"""``gridcredit luts …``: publish usage records and ask what was used, a thin layer over :class:`LutsClient`.

    gridcredit luts publish /var/spool/arc/urs/*.xml          # batches across files, progress on a TTY
    gridcredit luts publish --spool /var/spool/gc-ur FILE…    # keep them durably; send later
    gridcredit luts send --spool /var/spool/gc-ur             # send what is spooled (cron, systemd timer)
    gridcredit luts query "n:Usage/n:wall_us > \\$w" --int-var w=3600000000 --from 2026-07 --to 2026-09
    gridcredit luts job gsiftp://ce1.example.org/jobs/4711
    gridcredit luts record RECORD_ID [--machine HOST] --original
    gridcredit luts summary --by vo,month --from 2026-01 --to 2026-12
    gridcredit luts whoami

Every command signs with the user's certificate or proxy (``--cert/--key/--proxy``, grid
conventions by default; a site publishes with its host certificate), prints readable text or,
with ``--json``, the result as JSON (durations in µs, charges in millionths in ``*_micro``, a
datetime as RFC 3339 UTC ``…Z``; a summary's charges are per unit, ``charges: [{unit, jobs,
charge_micro}]``, never added across units). Options, output and exit codes are
gridcredit.cli_support's, as in every command group.
Exit codes: 0 done, 1 refused or partial (some records not stored, the LUTS unreachable;
``TypeName: message`` on stderr for a refused command), 2 usage.

XPath in ``query`` is evaluated with each stored record's ``n:Stored`` element as the context:
``n:Usage/…`` is the normalized view, ``urf:JobUsageRecord/…`` (or ``ur:``, ``car:``…) the record as
its reporter wrote it; the LUTS limits it to the records the caller may see.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from gridcredit.cli_support import (EXIT_FAILED, EXIT_OK, CommandGroup, UsageError, add_client_arguments, checked, client_of,
                                    error_text, jsonable, number_in, print_result, show_identity)
from gridcredit.timeunits import US_PER_S, rfc3339

from .spool import BATCH_RECORDS_DEFAULT, BATCH_RECORDS_MAX, Outgoing, Progress, SendReport

SUMMARY_BY = ("user", "vo", "site", "machine", "queue", "month")   # luts.SUMMARY_DIMENSIONS
QUERY_LIMIT_MAX = 1000
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


# ---------------------------------------------------------------------------------------------
# Argument types (a bad value is a usage error: exit 2)


def month_type(text: str) -> str:
    if not _MONTH.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month written YYYY-MM")
    return text.strip()


def _binding(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not _NAME.match(name):
        raise argparse.ArgumentTypeError(f"{text!r}: give {what} as NAME=VALUE (NAME: a letter, then letters, "
                                         "digits or _)")
    return name, value


def string_variable(text: str) -> tuple[str, str]:
    return _binding(text, "a variable")


def int_variable(text: str) -> tuple[str, int]:
    name, value = _binding(text, "an integer variable")
    try:
        return name, int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not an integer") from None


def namespace_binding(text: str) -> tuple[str, str]:
    prefix, uri = _binding(text, "a namespace")
    if not uri:
        raise argparse.ArgumentTypeError(f"{text!r}: the namespace URI is empty")
    return prefix, uri


def by_type(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SUMMARY_BY]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: summarize by a comma-separated list of {', '.join(SUMMARY_BY)}")
    return names


limit_type = number_in(1, QUERY_LIMIT_MAX, unit="records")
batch_type = number_in(1, BATCH_RECORDS_MAX, unit="records per batch")
wait_type = number_in(0.0, 86_400, kind=float, unit="seconds")


# ---------------------------------------------------------------------------------------------
# Output


def hours(us: int | None) -> str:
    return "-" if us is None else f"{us / 3_600_000_000:,.2f} h"


def charge_text(micro: int | None) -> str:
    if micro is None:
        return "-"
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), US_PER_S)
    return f"{sign}{whole:,}" + (f".{fraction:06d}".rstrip("0") if fraction else "")


def charges_text(charges) -> str:
    """``5 EUR, 10 SEK, 7 (no unit)``: one amount per unit, never a sum across units."""
    return ", ".join(f"{charge_text(c.charge_micro)} {c.unit if c.unit is not None else '(no unit)'}"
                     for c in charges) or "-"


def charge_totals(rows) -> list[dict]:
    """The charges of several summary rows, per unit (as ``ChargeTotal``'s fields)."""
    totals: dict[str | None, list[int]] = {}
    for row in rows:
        for charge in row.charges:
            total = totals.setdefault(charge.unit, [0, 0])
            total[0] += charge.jobs
            total[1] += charge.charge_micro
    return [{"unit": unit, "jobs": jobs, "charge_micro": micro} for unit, (jobs, micro)
            in sorted(totals.items(), key=lambda item: (item[0] is None, item[0] or ""))]


def record_json(record, *, original: bool = False) -> dict:
    value = {"record_id": record.record_id, "month": record.month, "publisher": record.publisher,
             "received_us": record.received_us, "usage": record.usage}
    if original:
        text = record.original_text
        value["original"] = text if text is not None else None
        if text is None:
            import base64
            value["original_base64"] = base64.b64encode(record.original).decode("ascii")
    return value


def record_line(record) -> str:
    usage = record.usage
    end = usage.end_time.strftime("%Y-%m-%dT%H:%M:%SZ") if usage.end_time else "-"
    user = usage.user_dn or usage.global_user or usage.local_user or "-"
    return (f"{record.record_id}  {record.month}  end {end}  user {user}  "
            f"vo {usage.vo or '-'}  machine {usage.machine or '-'}  wall {hours(usage.wall_us)}  "
            f"cpu {hours(usage.cpu_us)}  charge {charge_text(usage.charge_micro)}"
            + (f" {usage.charge_unit}" if usage.charge_unit and usage.charge_micro is not None else ""))


def record_text(record) -> str:
    usage = record.usage
    lines = [f"record {record.record_id} ({usage.format}), month {record.month}, published by {record.publisher}"]
    for field in dataclasses.fields(usage):
        value = getattr(usage, field.name)
        if field.name in ("format", "record_id") or value is None or value == ():
            continue
        if field.name in ("wall_us", "cpu_us", "cpu_user_us", "cpu_system_us"):
            value = f"{value:,} µs ({hours(value)})"
        elif isinstance(value, datetime):
            value = rfc3339(value)
        elif isinstance(value, tuple):
            value = "; ".join(value)
        lines.append(f"  {field.name}: {value}")
    return "\n".join(lines)


def report_json(report: SendReport) -> dict:
    value = jsonable(report)
    value["records_acknowledged"] = report.records_acknowledged
    value["ok"] = report.ok
    return value


def report_text(report: SendReport, what: str) -> str:
    lines = [f"{what}: {report.records_stored:,} records stored, {report.records_duplicate:,} already stored"
             + (f", {report.records_replaced:,} replaced" if report.records_replaced else "")
             + f", {report.records_rejected:,} not stored; {report.documents_done:,} documents done, "
               f"{report.documents_left:,} left"]
    for rejection in report.rejections:
        where = rejection.document if rejection.index < 0 else f"{rejection.document} record {rejection.index + 1}"
        lines.append(f"  {rejection.status}: {where}"
                     + (f" ({rejection.record_id})" if rejection.record_id else "") + f": {rejection.message}")
    if report.records_rejected > len(report.rejections):
        lines.append(f"  … and {report.records_rejected - len(report.rejections):,} more")
    if report.stopped:
        lines.append(f"stopped: {report.stopped}")
    return "\n".join(lines)


class ProgressBar:
    """One line on stderr, redrawn at most every 0.2 s: bytes of documents done, files, records."""

    WIDTH = 30

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.drawn_at = 0.0
        self.drawn = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.documents_done >= progress.documents_total
        if not final and now - self.drawn_at < 0.2:
            return
        self.drawn_at = now
        fraction = progress.bytes_done / progress.bytes_total if progress.bytes_total else 1.0
        filled = int(self.WIDTH * min(1.0, fraction))
        self.stream.write(f"\r[{'#' * filled}{' ' * (self.WIDTH - filled)}] {fraction:4.0%}  "
                          f"{progress.documents_done:,}/{progress.documents_total:,} files, "
                          f"{progress.records_acknowledged:,} records acknowledged"
                          + (f", {progress.records_rejected:,} not stored" if progress.records_rejected else ""))
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _progress(args) -> ProgressBar | None:
    if args.progress or (not args.json and sys.stderr.isatty()):
        return ProgressBar()
    return None


# ---------------------------------------------------------------------------------------------
# Handlers: (args, client) -> exit code


def _client(args):
    from .client import LutsClient

    return client_of(args, LutsClient)


def _publish(args) -> int:
    paths = [Path(name) for name in args.files]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UsageError(args.parser_of_command, f"no such file: {', '.join(missing)}")
    if args.spool:
        return _spool_files(args, paths)
    sizes = [path.stat().st_size for path in paths]

    def documents():
        for path in paths:
            try:
                yield Outgoing(str(path), path.read_bytes())
            except OSError as error:
                yield Outgoing(str(path), b"", unreadable=error.strerror or str(error))

    from .spool import send_documents

    bar = _progress(args)
    try:
        report = send_documents(_client(args), documents(), batch_records=args.batch_records, replace=args.replace,
                                progress=bar, documents_total=len(paths), bytes_total=sum(sizes))
    finally:
        if bar is not None:
            bar.close()
    print_result(args, report_json(report), report_text(report, f"published {len(paths):,} files to {args.url}"))
    return EXIT_OK if report.ok else EXIT_FAILED


def _spool_files(args, paths: list[Path]) -> int:
    from gridcredit.errors import GridcreditError

    from .spool import Spool

    spool = Spool(args.spool)
    added, failed = [], []
    for path in paths:
        try:
            added.append(str(spool.add(path.read_bytes())))
        except OSError as error:
            failed.append({"file": str(path), "error": f"cannot read it: {error.strerror}"})
        except GridcreditError as error:
            failed.append({"file": str(path), "error": error_text(error)})
            if type(error).__name__ == "SpoolFull":
                failed.extend({"file": str(rest), "error": "not spooled: the spool is full"}
                              for rest in paths[paths.index(path) + 1:])
                break
    lines = [f"spooled {len(added):,} of {len(paths):,} files in {spool.directory}"
             + (f"; send them with: gridcredit luts send --spool {spool.directory}" if added else "")]
    lines += [f"  not spooled: {item['file']}: {item['error']}" for item in failed]
    print_result(args, {"spool": str(spool.directory), "spooled": added, "failed": failed}, "\n".join(lines))
    return EXIT_OK if not failed else EXIT_FAILED


def _send(args) -> int:
    from .spool import Spool

    spool = Spool(args.spool)
    if not spool.pending():
        print_result(args, report_json(SendReport(0, 0, 0, 0, 0, 0, (), None)), f"the spool {spool.directory} is empty")
        return EXIT_OK
    bar = _progress(args)
    try:
        report = spool.send(_client(args), batch_records=args.batch_records, progress=bar, lock_wait_s=args.wait)
    finally:
        if bar is not None:
            bar.close()
    text = report_text(report, f"sent the spool {spool.directory} to {args.url}")
    if report.records_rejected:
        text += f"\nrecords not stored are kept with the reason in {spool.rejected_dir}"
    print_result(args, report_json(report), text)
    return EXIT_OK if report.ok else EXIT_FAILED


def _query_options(args) -> dict:
    variables = dict(args.var or []) | dict(args.int_var or [])
    return dict(namespaces=dict(args.ns or []), scope=args.scope, from_month=args.from_month,
                to_month=args.to_month, variables=variables)


def _query(args) -> int:
    client = _client(args)
    options = _query_options(args)
    variables = options.pop("variables")
    if args.all:
        records = list(client.query_all(args.xpath, variables, page_size=args.limit, **options))
        cursor = None
        scope = options["scope"]
    else:
        page = client.query(args.xpath, variables, cursor=args.cursor, limit=args.limit, **options)
        records, cursor, scope = list(page.records), page.cursor, page.scope
    value = {"records": [record_json(record, original=args.original) for record in records], "cursor": cursor,
             "count": len(records)}
    if scope:
        value["scope"] = scope
    lines = [record_line(record) for record in records] or ["no records match"]
    if cursor:
        lines.append(f"(more: --cursor {cursor}, or --all)")
    print_result(args, value, "\n".join(lines))
    return EXIT_OK


def _job(args) -> int:
    records = _client(args).job(args.job_id)
    lines = [record_line(record) for record in records] or [f"no usage records of job {args.job_id} that you may see"]
    print_result(args, {"job_id": args.job_id, "records": [record_json(r, original=args.original) for r in records]},
           "\n".join(lines))
    return EXIT_OK


def _record(args) -> int:
    record = _client(args).record(args.record_id, args.machine)
    if args.original and not args.json:
        sys.stdout.buffer.write(record.original)      # byte for byte: not even a newline is added
        sys.stdout.flush()
        return EXIT_OK
    print_result(args, record_json(record, original=args.original), record_text(record))
    return EXIT_OK


def _summary(args) -> int:
    summary = _client(args).summary(list(args.by), from_month=args.from_month, to_month=args.to_month,
                                    scope=args.scope)
    header = [*summary.by, "jobs", "wall", "cpu", "charge"]
    rows = [[row.key.get(name) or "-" for name in summary.by]
            + [f"{row.jobs:,}", hours(row.wall_us), hours(row.cpu_us), charges_text(row.charges)]
            for row in summary.rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    period = f"{summary.from_month or 'the start'} to {summary.to_month or 'now'}"
    lines = [f"usage by {', '.join(summary.by)} from {period} (scope {summary.scope})",
             "  ".join(cell.ljust(width) for cell, width in zip(header, widths))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    if not rows:
        lines.append("(no usage)")
    totals = {"jobs": sum(r.jobs for r in summary.rows), "wall_us": sum(r.wall_us for r in summary.rows),
              "cpu_us": sum(r.cpu_us for r in summary.rows), "charges": charge_totals(summary.rows)}
    value = {"by": list(summary.by), "from_month": summary.from_month, "to_month": summary.to_month,
             "scope": summary.scope, "rows": list(summary.rows), "totals": totals}
    print_result(args, value, "\n".join(lines))
    return EXIT_OK


def _whoami(args) -> int:
    return show_identity(args, _client(args), "LUTS")


# ---------------------------------------------------------------------------------------------
# Held documents (operator, on the LUTS host: the store of the local configuration)


def _local_luts(args):
    from .luts import Luts, LutsPolicy
    from .runtime import luts_held_dir

    config = args.local.config()
    store = args.local.open_store(config)
    return Luts(store, LutsPolicy.from_config(config.luts), held_dir=luts_held_dir(config))


def _with_local_luts(args, work):
    luts = _local_luts(args)
    try:
        return work(luts)
    finally:
        luts.store.close()


def held_line(held) -> str:
    who = f" from {held.publisher}" if held.publisher else ""
    return f"{held.kind}/{held.held_id}{who}, {held.size_bytes:,} bytes: {'; '.join(held.reasons)}"


def _held_list(args) -> int:
    from .held import KINDS, list_held

    kinds = (args.kind,) if args.kind else tuple(KINDS)
    found = _with_local_luts(args, lambda luts: list_held(luts, kinds))
    print_result(args, found, "\n".join(held_line(h) for h in found) or "nothing is held")
    return EXIT_OK


def _held_show(args) -> int:
    from .held import show

    held, content = _with_local_luts(args, lambda luts: show(luts, args.kind, args.held_id))
    if args.output:
        Path(args.output).write_bytes(content)
    if args.json:
        print_result(args, {**jsonable(held), "content": None if args.output else content.decode("utf-8", "replace")}, "")
    elif args.output:
        print(f"{held_line(held)}\nwritten to {args.output}")
    else:
        sys.stdout.buffer.write(content if content.endswith(b"\n") else content + b"\n")
        sys.stdout.flush()
    return EXIT_OK


def _held_retry(args) -> int:
    from .held import retry_forward, retry_record, retry_sgas

    if args.kind == "forward":
        if args.corrected:
            raise UsageError(args.parser_of_command, "--corrected is for sgas documents and records only")
        _with_local_luts(args, lambda luts: retry_forward(luts, args.held_id, replace=args.replace))
        print_result(args, {"kind": "forward", "held_id": args.held_id, "queued": True},
               f"forward/{args.held_id} is queued for the upstream LUTS again")
        return EXIT_OK
    if args.replace:
        raise UsageError(args.parser_of_command, "--replace is for forward entries only")
    corrected = Path(args.corrected).read_bytes() if args.corrected else None
    retry = retry_record if args.kind == "record" else retry_sgas
    report = _with_local_luts(args, lambda luts: retry(luts, args.held_id, corrected))
    not_stored = [r for r in report.results if r.status in ("refused", "invalid")]
    lines = [f"{args.kind}/{args.held_id} published again: stored {report.count('stored')}, already stored "
             f"{report.count('duplicate')}, not stored {len(not_stored)} of {len(report.results)} records"]
    lines += [f"{r.status}: {r.record_id or r.index + 1}: {r.message}" for r in not_stored]
    if not_stored:
        lines.append(f"{args.kind}/{args.held_id} is still held" if args.kind == "record" else
                     "the records not stored are held: luts held list --kind record")
    print_result(args, {"kind": args.kind, "held_id": args.held_id, "results": list(report.results)},
           "\n".join(lines))
    return EXIT_OK if report.ok else EXIT_FAILED


def _held_drop(args) -> int:
    from .held import drop

    _with_local_luts(args, lambda luts: drop(luts, args.kind, args.held_id))
    print_result(args, {"kind": args.kind, "held_id": args.held_id, "dropped": True}, f"{args.kind}/{args.held_id} dropped")
    return EXIT_OK


def _register_held(commands) -> None:
    held = commands.add_parser(
        "held", help="operator: documents kept instead of stored (unreadable SGAS posts, records of SGAS posts "
                     "that were not stored, records the upstream LUTS rejected) — list, show, retry, drop",
        description="Run on the LUTS host: works on the store of the configuration (--config before 'luts'). "
                    "sgas = documents an SGAS reporter posted that could not be read (kept exactly as "
                    "received); record = records of an SGAS post that were refused or invalid (kept exactly "
                    "as received, with the reason); forward = records the higher-level LUTS refused or found "
                    "invalid.",
        epilog="examples:\n  gridcredit --config /etc/gridcredit.toml luts held list\n"
               "  gridcredit luts held show sgas ID --output posted.xml\n"
               "  gridcredit luts held retry sgas ID --corrected fixed.xml\n"
               "  gridcredit luts held retry record ID --corrected fixed-record.xml\n"
               "  gridcredit luts held retry forward ID --replace\n  gridcredit luts held drop sgas ID",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = held.add_subparsers(dest="held_command", metavar="ACTION")
    actions.required = True

    def action(name: str, summary: str, handler) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=summary, description=summary)
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(handler=checked(handler), parser_of_command=parser)
        return parser

    p = action("list", "every held document, with who sent it and why it is held", _held_list)
    p.add_argument("--kind", choices=("sgas", "record", "forward"), help="only this kind")
    for name, summary, handler in (("show", "a held document: an SGAS post or record exactly as received",
                                    _held_show),
                                   ("retry", "sgas: publish again as its publisher (leaves when readable); record: "
                                             "publish again as its publisher (leaves when stored); forward: queue "
                                             "for the upstream LUTS again", _held_retry),
                                   ("drop", "delete a held document for good", _held_drop)):
        p = action(name, summary, handler)
        p.add_argument("kind", choices=("sgas", "record", "forward"))
        p.add_argument("held_id", metavar="ID", help="as 'held list' shows it (after KIND/)")
        if name == "show":
            p.add_argument("--output", metavar="FILE", help="write the content to FILE")
        if name == "retry":
            p.add_argument("--corrected", metavar="FILE", help="sgas, record: publish this corrected document instead")
            p.add_argument("--replace", action="store_true",
                           help="forward: replace the upstream LUTS's different record under the same id")


# ---------------------------------------------------------------------------------------------
# Registration


def _common(parser: argparse.ArgumentParser, *, timeout_s: float) -> None:
    add_client_arguments(parser, timeout_s=timeout_s,
                         retries_note="publishing again is safe: the LUTS stores a record once")


def _period(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_month", type=month_type, metavar="YYYY-MM",
                        help="first month (the month a record counts in: its end, else start, else creation)")
    parser.add_argument("--to", dest="to_month", type=month_type, metavar="YYYY-MM", help="last month, included")
    parser.add_argument("--scope", metavar="SCOPE",
                        help="all | vo | vo:NAME | site | own (default: the widest you have)")


def _sending(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-records", type=batch_type, default=BATCH_RECORDS_DEFAULT, metavar="N",
                        help="records per request (default %(default)s)")
    parser.add_argument("--progress", action="store_true",
                        help="show a progress bar on stderr (default: only when stderr is a terminal)")


def register(subparsers) -> None:
    group = CommandGroup(subparsers, "luts", help="publish usage records and ask what was used (LUTS)",
                         description="The Logging and Usage Tracking Service: publish usage records (OGF UR 1.0/2.0, "
                                     "EMI CAR, Gratia), query them by XPath, per job and in summaries. --json prints "
                                     "results for scripts. Exit codes: 0 done, 1 refused or partial (some records not "
                                     "stored), 2 usage.",
                         add_common=_common)
    commands = group.commands

    def command(name: str, summary: str, example: str, handler, *, timeout_s: float = 60.0) -> argparse.ArgumentParser:
        return group.command(name, summary, example, handler, timeout_s=timeout_s)

    p = command("publish", "publish usage-record files (batched across files), or spool them with --spool",
                "gridcredit luts publish --cert hostcert.pem --key hostkey.pem /var/spool/arc/urs/*.xml",
                _publish, timeout_s=300.0)
    p.add_argument("files", nargs="+", metavar="FILE", help="a usage record or a UsageRecords document")
    p.add_argument("--spool", metavar="DIR", help="keep the files durably in this spool instead of sending them "
                                                  "(send later with: gridcredit luts send --spool DIR)")
    p.add_argument("--replace", action="store_true",
                   help="replace stored records that differ under the same record id (site administrators)")
    _sending(p)

    p = command("send", "send what is spooled; a file leaves the spool once all its records are settled",
                "gridcredit luts send --spool /var/spool/gridcredit/ur", _send, timeout_s=300.0)
    p.add_argument("--spool", metavar="DIR", required=True, help="the spool directory")
    p.add_argument("--wait", type=wait_type, default=0.0, metavar="S",
                   help="wait up to S seconds for another sender of this spool to finish (default: do not wait)")
    _sending(p)

    p = command("query", "usage records for which an XPath expression is true, in your scope",
                "gridcredit luts query \"n:Usage/n:wall_us > \\$w and @vo = \\$vo\" --int-var w=3600000000 "
                "--var vo=atlas --from 2026-07", _query)
    p.add_argument("xpath", nargs="?", metavar="XPATH",
                   help="condition on each record (context: n:Stored; n:Usage/… is the normalized view); "
                        "omit it for every record in scope")
    p.add_argument("--var", action="append", type=string_variable, metavar="NAME=VALUE",
                   help="bind $NAME to a string (repeatable)")
    p.add_argument("--int-var", action="append", type=int_variable, metavar="NAME=N",
                   help="bind $NAME to an integer (repeatable)")
    p.add_argument("--ns", action="append", type=namespace_binding, metavar="PREFIX=URI",
                   help="declare a namespace prefix (n, urf, ur, gratia, car, vo, sgas are predefined)")
    _period(p)
    p.add_argument("--limit", type=limit_type, default=100, metavar="N",
                   help=f"records per page, 1-{QUERY_LIMIT_MAX} (default %(default)s)")
    p.add_argument("--cursor", metavar="CURSOR", help="continue after a previous page")
    p.add_argument("--all", action="store_true", help="every matching record, page by page")
    p.add_argument("--original", action="store_true", help="--json: include each record as its reporter sent it")

    p = command("job", "the usage records of one job, by global or local job id",
                "gridcredit luts job gsiftp://ce1.example.org/jobs/4711", _job)
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--original", action="store_true", help="--json: include each record as its reporter sent it")

    p = command("record", "one usage record by its record id (and machine: one id may be used by several)",
                "gridcredit luts record 'ce1.example.org:4711' --machine ce1.example.org --original", _record)
    p.add_argument("record_id", metavar="RECORD_ID")
    p.add_argument("--machine", metavar="HOST",
                   help="the record's machine (needed when the id is stored for several machines you may see)")
    p.add_argument("--original", action="store_true",
                   help="print the record exactly as its reporter sent it, byte for byte — a whole file with its "
                        "XML declaration and the whitespace around the record (with --json: as a field)")

    p = command("summary", "jobs, wall and CPU time and charge, grouped",
                "gridcredit luts summary --by vo,month --from 2026-01 --to 2026-12", _summary)
    p.add_argument("--by", type=by_type, required=True, metavar="LIST",
                   help=f"comma-separated, from: {', '.join(SUMMARY_BY)}")
    _period(p)

    command("whoami", "make a signed call and show who the LUTS thinks you are", "gridcredit luts whoami", _whoami)
    _register_held(commands)

