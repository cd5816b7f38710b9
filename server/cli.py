"""The ``gridcredit`` command: a thin layer over the library.

Each area registers its own sub-commands (``register(subparsers)``); a sub-command's handler
takes the parsed arguments and returns an exit code. Expected errors (``GridcreditError``) are
printed as ``TypeName: message`` with exit code 1; usage errors as ``UsageError: …`` with exit
code 2 (gridcredit.cli_support.ArgumentParser); Ctrl-C exits 130; output cut short by the reader
(``… | head``) ends quietly. A client command's options not given are taken from the
configuration (``[client]``) before its handler runs, so ``args.url`` is the URL used.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from gridcredit import __version__
from gridcredit.cli_support import ArgumentParser, UsageError, error_text, resolve_client_options
from gridcredit.errors import GridcreditError

from . import registry

# Modules that add sub-commands, in the order they appear in --help; then each registered
# service's own (server/registry.py).
HOST_COMMAND_MODULES = (
    "gridcredit.server.host_cli",   # serve, whoami, wsdl
    "gridcredit.security.pki_cli",  # pki …
)


def command_modules() -> tuple[str, ...]:
    return HOST_COMMAND_MODULES + tuple(contract.cli_module for contract in registry.services() if contract.cli_module)


class LocalInstallation:
    """The configuration and store of this machine, for commands that work on them directly
    (offline audit, held records): ``args.local`` in every handler."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def config(self):
        return registry.load_config(self.config_path)

    def open_store(self, config, *, read_only: bool = False):
        return registry.open_service_store(config, read_only=read_only)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
        resolve_client_options(args)
        code = int(args.handler(args) or 0)
        sys.stdout.flush()          # here, where a reader that has gone is seen (below), not at exit
        return code
    except UsageError as error:
        error.exit()
    except GridcreditError as error:
        print(error_text(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped reading (`| head`): nothing more to say. Python would complain again
        # when it flushes stdout at exit, so stdout goes to /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
