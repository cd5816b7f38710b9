"""The LUTS: OGF usage records, published by sites and read by users, VO managers and the Bank.

``SERVICE`` is what the host, the runtime and the command line take from this folder.
"""
from gridcredit.contract import BackgroundTask, ServiceContract

from . import runtime as _runtime
from .config import LutsConfig


def _indexes():
    from .luts import INDEXES

    return INDEXES


def _web_pages(part, config):
    from .web import web_pages

    return web_pages(part, config)


SERVICE = ServiceContract(
    name="luts",
    summary="usage records (OGF UR) published by sites, read by users and VO managers",
    soap_module="gridcredit.services.luts.service",
    config_section=LutsConfig,
    # records by month, identities by year, summaries; the forwarding queue; held documents
    collections=("ur_", "urid_", "urs_", "urfwd", "urfwd_rejected", "luts_meta", "sgas_quarantine", "sgas_refused"),
    indexes=_indexes,
    build=_runtime.build,
    routes=_runtime.routes,
    # One forwarder per host: two would send the same queue twice.
    background_tasks=(BackgroundTask("luts-forwarder", _runtime.forward_forever, once_per_host=True,
                                     enabled=_runtime.forwarding_enabled),),
    cli_module="gridcredit.services.luts.cli",
    web_pages=_web_pages,
    gauges=_runtime.gauges,
)
