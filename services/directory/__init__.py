"""The market directory (Tycoon's Service Location Service): auctioneers register their hosts — URL,
capacity, the Σ of their live bids' rates (the current price), the hour's average price — with a
heartbeat and a TTL; anyone authenticated lists them; a bidder's best response reads them.

``SERVICE`` is what the host, the runtime and the command line take from this folder. The `market`
command group is the Auctioneer's (services/auctioneer/cli.py); this folder's commands join it through
``cli.add_market_commands(group)`` (``market hosts``, ``market best-response``); ``gridcredit directory``
holds the administrators' ``remove`` and ``whoami``.
"""
from gridcredit.contract import BackgroundTask, ServiceContract

from . import runtime as _runtime
from .config import DirectoryConfig


def _web_pages(part, config):
    from .web import web_pages

    return web_pages(part, config)


SERVICE = ServiceContract(
    name="directory",
    summary="the market's directory: auctioneers register their hosts and prices, bidders list them",
    soap_module="gridcredit.services.directory.service",
    config_section=DirectoryConfig,
    # who owns each host id (until an administrator removes it); each host's last registration (store.py)
    collections=("directory_owners", "directory_hosts"),
    build=_runtime.build,
    # Every worker sweeps: a registration deleted twice is deleted once.
    background_tasks=(BackgroundTask("directory-expiry", _runtime.sweep_forever, once_per_host=False),),
    cli_module="gridcredit.services.directory.cli",
    web_pages=_web_pages,
    gauges=_runtime.gauges,
)
