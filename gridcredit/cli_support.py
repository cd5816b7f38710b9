"""What every ``gridcredit`` command group shares, written once: the client options, the output
(readable text, or ``--json``), usage errors and exit codes.

    def register(subparsers):
        p = commands.add_parser("balance", …)
        add_client_arguments(p, timeout_s=30.0)          # --url --cert --key --proxy --trust --json --timeout --retries
        p.set_defaults(handler=checked(_balance), parser_of_command=p)

    def _balance(args):
        bank = client_of(args, BankClient)
        print_result(args, bank.get_balance(args.account), "readable text")
        return EXIT_OK

Output. Without ``--json`` a command prints its readable text; with it, the result as JSON
(:func:`jsonable`): dataclasses as objects, tuples as arrays, bytes as UTF-8 text, money and
durations as the integers the services send (``*_us``, ``*_micro``), and every ``datetime`` as
RFC 3339 in UTC with a ``Z`` (``2026-11-01T00:00:00Z``, microseconds when not zero) — the same
in every command group.

Errors. An expected error (``GridcreditError``) is printed once on stderr as
``TypeName: message`` (:func:`error_text`; the message carries the hint, e.g. the request id to
repeat after :class:`OutcomeUnknown`) and the command exits ``EXIT_FAILED``; a usage error exits
``EXIT_USAGE``, printed by :class:`ArgumentParser` as ``UsageError: <command>: message`` with the
command's usage line (argparse's own refusals, and :class:`UsageError` from a handler after its
own checks).

Where a client goes. ``--url``, ``--cert/--key``, ``--proxy`` and ``--trust`` default to the
configuration's ``[client]`` section (``gridcredit.config.client_settings``: the URL of this
host's ``server.port``, the trust directory of ``X509_CERT_DIR`` or of this host), worked out once
per command by :func:`resolve_client_options` — so after ``gridcredit serve --port 9443`` and
``[client] url = "https://localhost:9443"`` (or ``GRIDCREDIT_CLIENT_URL``) no command needs ``--url``.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import re
import sys
from datetime import datetime
from typing import Callable

from .errors import GridcreditError

from .client import RETRIES_DEFAULT, RETRIES_MAX
from .timeunits import rfc3339

EXIT_OK = 0
EXIT_FAILED = 1          # refused, failed, or only partly done (some records not stored)
EXIT_USAGE = 2           # argparse's own


# ---------------------------------------------------------------------------------------------
# Argument types (a bad value is a usage error: exit 2)


def number_in(low: float, high: float, *, kind: type = int, unit: str = "",
              low_excluded: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for a number from ``low`` to ``high``, with an error a person understands."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number"
                                              f"{' of ' + unit if unit else ''}") from None
        if value < low or (low_excluded and value == low) or value > high:
            lower = f"more than {low:g}" if low_excluded else f"{low:,}"
            raise argparse.ArgumentTypeError(f"{text!r}: give {lower} to {high:,}{' ' + unit if unit else ''}")
        return value
    return parse


seconds_type = number_in(0, 3600, kind=float, unit="seconds", low_excluded=True)   # --timeout

_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])")
DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def duration_type(text: str) -> int:
    """Seconds from a duration with its unit: ``90s``, ``30m``, ``2h``, ``1d``, ``1w`` or ``1h30m``.

    A bare number is refused: ``--expires-in 2`` could mean 2 seconds or 2 hours, and a hold that
    expires two seconds later is not what anyone asked for."""
    cleaned = text.strip().lower()
    if cleaned.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} has no unit: write {cleaned}s, {cleaned}m, {cleaned}h or {cleaned}d")
    parts = _DURATION_PART.findall(cleaned)
    if not parts or _DURATION_PART.sub("", cleaned).strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m, 2h, 1d or 1h30m")
    seconds = sum(int(number) * DURATION_UNITS_S[unit] for number, unit in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def url_type(text: str) -> str:
    """``--url``: an https:// URL with a host (a usage error otherwise, saying how to write it)."""
    from .config import check_url
    from .errors import ConfigError

    try:
        return check_url(text, "--url").rstrip("/")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--url ")) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors read like every other error: ``UsageError: …`` with
    the hint to ask for ``--help``, after the usage line; exit ``EXIT_USAGE``. Sub-parsers made
    from it (``add_subparsers``) are of this class too."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"UsageError: {self.prog}: {message} (see: {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# Client options


def add_credential_arguments(parser: argparse.ArgumentParser) -> None:
    """--url/--cert/--key/--proxy/--trust/--json: how every client command reaches a host."""
    parser.add_argument("--url", type=url_type, help="base URL of the gridcredit host (default: [client] url, "
                        "GRIDCREDIT_CLIENT_URL, else https://localhost:<server.port>, 8443)")
    parser.add_argument("--cert", help="certificate, with --key (default: [client] cert, else grid conventions: "
                        "X509_USER_PROXY, /tmp/x509up_u<uid>, X509_USER_CERT, ~/.globus/usercert.pem)")
    parser.add_argument("--key", help="private key for --cert")
    parser.add_argument("--proxy", help="proxy certificate file (default: [client] proxy, $X509_USER_PROXY or /tmp/x509up_u<uid>)")
    parser.add_argument("--trust", help="trust directory of CA certificates and CRLs (default: [client] trust_dir, "
                        "$X509_CERT_DIR, this host's, /etc/grid-security/certificates)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_client_arguments(parser: argparse.ArgumentParser, *, timeout_s: float, retries_note: str = "") -> None:
    """The credential options, ``--timeout`` (seconds per attempt) and ``--retries`` (the client's
    retry rule, gridcredit.client)."""
    add_credential_arguments(parser)
    parser.add_argument("--timeout", type=seconds_type, default=timeout_s, metavar="S",
                        help="seconds to wait for each attempt (default %(default)s)")
    parser.add_argument("--retries", type=int, default=RETRIES_DEFAULT, choices=range(RETRIES_MAX + 1), metavar="N",
                        help=f"attempts to repeat when there is no answer (0-{RETRIES_MAX}, default %(default)s)"
                             + (f"; {retries_note}" if retries_note else ""))


def resolve_client_options(args: argparse.Namespace) -> None:
    """Fill the client options not given on the command line from the configuration (``[client]``,
    ``gridcredit.config.client_settings``), once: ``args.url`` is then the URL used, and
    ``args.trust_from`` says where the trust directory came from (for the hint of a TLS failure).
    ``--cert`` without ``--key`` (or the reverse) is a usage error."""
    if getattr(args, "client_options_resolved", False) or not hasattr(args, "url"):
        return
    if bool(args.cert) != bool(args.key):
        given, missing = ("--cert", "--key") if args.cert else ("--key", "--cert")
        raise _usage(args, f"{given} needs {missing}: give both (or --proxy FILE for a proxy file that holds its key)")
    from .config import client_settings

    local = getattr(args, "local", None)
    if local is not None:
        settings = client_settings(local.config())
    else:  # a namespace built without gridcredit.server.cli.main (a test): the defaults alone
        from .config import Config

        settings = client_settings(Config())
    if args.url is None:
        args.url = settings.url
    if not (args.cert or args.proxy):
        args.cert, args.key, args.proxy = settings.cert, settings.key, settings.proxy
    if args.trust is None:
        args.trust, args.trust_from = settings.trust_dir, settings.trust_from
    else:
        args.trust_from = "--trust"
    args.client_options_resolved = True


def _usage(args: argparse.Namespace, message: str) -> "UsageError":
    parser = getattr(args, "parser_of_command", None)
    return UsageError(parser, message)


def client_of(args: argparse.Namespace, client_class, **options):
    """``client_class`` (a ServiceClient) for the host of ``--url``, signing with the credential of
    ``--cert/--key/--proxy`` (grid conventions by default), trusting ``--trust`` — each, when not
    given, from the configuration (:func:`resolve_client_options`)."""
    from .security.credentials import load_credential, trust_directory

    resolve_client_options(args)
    credential = load_credential(cert_path=args.cert, key_path=args.key, proxy_path=args.proxy)
    return client_class(args.url, credential=credential, trust_dir=trust_directory(args.trust),
                        timeout_s=args.timeout, retries=args.retries,
                        trust_hint=getattr(args, "trust_from", None), **options)


class LazyClient:
    """The client, made (credential loaded) when a handler first uses it — after its usage checks."""

    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make
        self._client = None

    def __getattr__(self, name: str):
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)


# ---------------------------------------------------------------------------------------------
# Output


def jsonable(value):
    """What ``--json`` prints: dataclasses as dicts, tuples as lists, datetimes as RFC 3339 UTC
    (``…Z``), bytes as UTF-8 text, enums as their value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def print_result(args: argparse.Namespace, value: object, text: str | None = None) -> None:
    """Print ``value`` as JSON under ``--json`` (:func:`jsonable`), else the readable ``text``
    (or, without one, the value's items one a line)."""
    if getattr(args, "json", False):
        print(json.dumps(jsonable(value), indent=2, sort_keys=True, default=str))
    elif text is not None:
        print(text)
    elif isinstance(value, dict):
        for key, item in value.items():
            print(f"{key}: {item}")
    else:
        print(value)


def show_identity(args: argparse.Namespace, client, name: str) -> int:
    """Every group's ``whoami``: a signed WhoAmI through ``client`` (a ServiceClient), shown."""
    identity = client.whoami()
    text = f"the {name} at {args.url} knows you as {identity.dn}"
    if identity.proxy:
        text += f" (through {'a limited' if identity.limited else 'a'} proxy {identity.signer_dn})"
    print_result(args, identity, text)
    return EXIT_OK


def error_text(error: BaseException) -> str:
    """``TypeName: message``: how an error is shown to a person, on stderr or inside a report."""
    return f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------
# Usage errors found by a handler


class UsageError(GridcreditError):
    """A combination of options argparse cannot check (``--remove`` with an amount): exit 2."""

    def __init__(self, parser: argparse.ArgumentParser | None, message: str) -> None:
        super().__init__(message)
        self.parser = parser

    def exit(self):
        """Shown by the command's parser (its usage line, then the error); exits ``EXIT_USAGE``."""
        if self.parser is not None:
            self.parser.error(str(self))
        print(f"UsageError: {self}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def usage_error(args: argparse.Namespace, message: str) -> UsageError:
    """A usage error of the command being run (its parser is ``args.parser_of_command``)."""
    return UsageError(args.parser_of_command, message)


def checked(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` with its :class:`UsageError` shown by the command's parser (exit 2)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except UsageError as error:
            error.exit()
    return run


# ---------------------------------------------------------------------------------------------
# A service's command group


class CommandGroup:
    """``gridcredit <name> COMMAND …``: one service's commands, each made the same way — its summary
    as help and description, an example in the epilog, the group's common options
    (``add_common(parser, **options)``) and its handler wrapped (``wrap``, default ``checked``)."""

    def __init__(self, subparsers, name: str, *, help: str, description: str,
                 add_common: Callable[..., None], wrap: Callable = None) -> None:
        group = subparsers.add_parser(name, help=help, description=description)
        self.commands = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        self.commands.required = True
        self._add_common = add_common
        self._wrap = wrap or checked

    def command(self, name: str, summary: str, example: str, handler, *, aliases=(), wrap: Callable = None,
                **common_options) -> argparse.ArgumentParser:
        parser = self.commands.add_parser(name, help=summary, description=summary, aliases=list(aliases),
                                          epilog=f"example:\n  {example}",
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        self._add_common(parser, **common_options)
        parser.set_defaults(handler=(wrap or self._wrap)(handler), parser_of_command=parser)
        return parser
