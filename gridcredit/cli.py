"""The ``gridcredit`` command: a thin layer over the library.

Each area registers its own sub-commands (``register(subparsers)``); a sub-command's handler
takes the parsed arguments and returns an exit code. Expected errors (``GridcreditError``) are
printed as ``TypeName: message`` with exit code 1; usage errors exit 2 (argparse).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Callable

from . import __version__
from .errors import GridcreditError

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "gridcredit.host_cli",          # serve, whoami
    "gridcredit.security.pki_cli",  # pki …
    "gridcredit.services.bank.cli",  # bank …
    "gridcredit.services.luts.cli",  # luts …
)


def print_result(args: argparse.Namespace, value: object, text: str | None = None) -> None:
    """Print ``value`` as JSON under ``--json``, else the human text (or a readable default)."""
    if getattr(args, "json", False):
        print(json.dumps(value, indent=2, sort_keys=True, default=str))
    elif text is not None:
        print(text)
    elif isinstance(value, dict):
        for key, item in value.items():
            print(f"{key}: {item}")
    else:
        print(value)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridcredit",
        description="Grid accounting and a CPU market as signed SOAP services.",
    )
    parser.add_argument("--version", action="version", version=f"gridcredit {__version__}")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML); default $GRIDCREDIT_CONFIG or ./gridcredit.toml")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except GridcreditError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
