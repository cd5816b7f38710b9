"""The Auctioneer: sells a host's CPUs by proportional share (Tycoon), paid from Bank holds, enforced
on libvirt VMs.

``SERVICE`` is what the host, the runtime and the command line take from this folder: the SOAP face
(service.py), the ``[auctioneer]`` section (config.py), the market in the store (store.py; the rules
in market.py), the allocation loop once per host (runtime.py) and ``gridcredit market …`` (cli.py).
"""
from gridcredit.contract import BackgroundTask, ServiceContract

from . import runtime as _runtime
from .config import AuctioneerConfig


def _indexes():
    from .store import INDEXES

    return INDEXES


def _web_pages(part, config):
    from .web import web_pages

    return web_pages(part, config)


SERVICE = ServiceContract(
    name="auctioneer",
    summary="sells CPU shares of virtual machines and enforces them through libvirt",
    soap_module="gridcredit.services.auctioneer.service",
    config_section=AuctioneerConfig,
    # each host's market (bids, open interval, the batch awaiting the Bank), each bid's own document,
    # the closed intervals' batches and answers, the price samples (store.py)
    collections=("market_state", "market_bids", "market_intervals", "market_prices"),
    indexes=_indexes,
    build=_runtime.build,
    background_tasks=(BackgroundTask("auctioneer-allocation", _runtime.allocate_forever, once_per_host=True,
                                     enabled=lambda config: config.auctioneer.enabled),),
    gauges=_runtime.gauges,
    cli_module="gridcredit.services.auctioneer.cli",
    web_pages=_web_pages,
)
