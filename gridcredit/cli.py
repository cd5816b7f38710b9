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

# Modules that add sub-commands, in the order they appear in --help; then each registered
# service's own (server/registry.py).
HOST_COMMAND_MODULES = (
    "gridcredit.server.host_cli",   # serve, whoami, wsdl
    "gridcredit.security.pki_cli",  # pki …
)


def command_modules() -> tuple[str, ...]:
    from gridcredit.server import registry

    return HOST_COMMAND_MODULES + tuple(contract.cli_module for contract in registry.services() if contract.cli_module)


class LocalInstallation:
    """The configuration and store of this machine, for commands that work on them directly
    (offline audit, held records): ``args.local`` in every handler."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def config(self):
        from gridcredit.server import registry

        return registry.load_config(self.config_path)

    def open_store(self, config, *, read_only: bool = False):
        from gridcredit.server import registry

        return registry.open_service_store(config, read_only=read_only)


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
    for module_name in command_modules():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.local = LocalInstallation(args.config)
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
