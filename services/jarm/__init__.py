"""JARM, the Job Account Reservation Manager: joins a batch system (Slurm) to the Bank.

``SERVICE`` is what the host, the runtime and the command line take from this folder. Today JARM is
its Price Authority (versioned price tables set by price administrators, and quotes, guaranteed
ones kept for a later reservation) and the reservation lifecycle of each job run (reservations.py,
lifecycle.py): the hold before it runs, the charge after, the usage record to the LUTS.
"""
from gridcredit.contract import BackgroundTask, ServiceContract

from . import runtime as _runtime
from .config import JarmConfig
from .delegation import sweep_delegations_forever


def _indexes():
    from .reservation_store import INDEXES as RESERVATION_INDEXES
    from .delegation import INDEXES as DELEGATION_INDEXES
    from .store import INDEXES

    return INDEXES + RESERVATION_INDEXES + DELEGATION_INDEXES


def _web_pages(part, config):
    from .web import web_pages

    return web_pages(part, config)


SERVICE = ServiceContract(
    name="jarm",
    summary="reserves credits for batch jobs and charges them when the jobs end",
    soap_module="gridcredit.services.jarm.service",
    config_section=JarmConfig,
    # price table versions (written once), each site's latest version, guaranteed quotes (store.py);
    # one reservation per run of a job and each account's runs admitted unfunded (reservation_store.py);
    # users' delegated proxies and pending delegation requests (delegation.py)
    collections=("jarm_prices", "jarm_price_sites", "jarm_quotes", "jarm_reservations", "jarm_unfunded",
                 "jarm_delegations", "jarm_delegation_requests"),
    indexes=_indexes,
    build=_runtime.build,
    gauges=_runtime.gauges,
    # Every worker sweeps: a quote deleted twice is deleted once.
    background_tasks=(BackgroundTask("jarm-quote-expiry", _runtime.sweep_quotes_forever, once_per_host=False),
                      BackgroundTask("jarm-delegation-expiry", sweep_delegations_forever, once_per_host=True),
                      BackgroundTask("jarm-reconciler", _runtime.reconcile_forever, once_per_host=True,
                                     enabled=lambda config: bool(config.jarm.site_account))),
    cli_module="gridcredit.services.jarm.cli",
    web_pages=_web_pages,
)
