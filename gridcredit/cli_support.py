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
``EXIT_USAGE`` with argparse's message (:class:`UsageError` from a handler, after its own checks).
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
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


# ---------------------------------------------------------------------------------------------
# Client options


def add_credential_arguments(parser: argparse.ArgumentParser) -> None:
    """--url/--cert/--key/--proxy/--trust/--json: how every client command reaches a host."""
    parser.add_argument("--url", default="https://localhost:8443", help="base URL of the gridcredit host (default %(default)s)")
    parser.add_argument("--cert", help="certificate (default: grid conventions, X509_USER_PROXY / X509_USER_CERT)")
    parser.add_argument("--key", help="private key for --cert")
    parser.add_argument("--proxy", help="proxy certificate file (default $X509_USER_PROXY or /tmp/x509up_u<uid>)")
    parser.add_argument("--trust", help="trust directory of CA certificates and CRLs (default $X509_CERT_DIR)")
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


def client_of(args: argparse.Namespace, client_class, **options):
    """``client_class`` (a ServiceClient) for the host of ``--url``, signing with the credential of
    ``--cert/--key/--proxy`` (grid conventions by default), trusting ``--trust``."""
    from .security.credentials import load_credential, trust_directory

    credential = load_credential(cert_path=args.cert, key_path=args.key, proxy_path=args.proxy)
    return client_class(args.url, credential=credential, trust_dir=trust_directory(args.trust),
                        timeout_s=args.timeout, retries=args.retries, **options)


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

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


def usage_error(args: argparse.Namespace, message: str) -> UsageError:
    """A usage error of the command being run (its parser is ``args.parser_of_command``)."""
    return UsageError(args.parser_of_command, message)


def checked(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` with its :class:`UsageError` shown by the command's parser (exit 2)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except UsageError as error:
            error.parser.error(str(error))  # exits 2
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
