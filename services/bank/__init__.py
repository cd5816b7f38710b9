"""The Bank: accounts, holds and transfers of integer credits on a signed, chained ledger.

``SERVICE`` is what the host, the runtime and the command line take from this folder.
"""
from gridcredit.contract import BackgroundTask, ServiceContract

from . import runtime as _runtime
from .config import BankConfig


def _indexes():
    from .holders import INDEX

    return (INDEX,)


def _web_pages(part, config):
    from .web import web_pages

    return web_pages(part, config)


SERVICE = ServiceContract(
    name="bank",
    summary="accounts, holds and transfers of credits on a signed ledger",
    soap_module="gridcredit.services.bank.service",
    config_section=BankConfig,
    collections=("accounts", "holds", "holds_ended", "pending_mints", "pending_mints_ended", "bank", "requests",
                 "transactions", "holders"),
    indexes=_indexes,
    prepare=_runtime.prepare,
    build=_runtime.build,
    # Every worker sweeps: the ledger ends each hold once, whichever worker gets there first.
    background_tasks=(BackgroundTask("hold-expiry", _runtime.sweep_expired_forever, once_per_host=False),),
    cli_module="gridcredit.services.bank.cli",
    web_pages=_web_pages,
)
