"""The JARM as the host runs it: what each worker builds (the Price Authority over the shared store,
and the reservation lifecycle when the site names its account), the sweep of expired guaranteed
quotes and the reconciler of reservations (once per host)."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from gridcredit.contract import BuildContext, TaskContext
from gridcredit.errors import GridcreditError, StoreError
from gridcredit.timeunits import now_us

from .delegation import DelegationStore, open_delegations
from . import pricing
from .policy import JarmPolicy
from .store import PriceStore

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = logging.getLogger("gridcredit.services.jarm")
QUOTE_SWEEP_S = 600            # how often expired guaranteed quotes are deleted
BANK_TIMEOUT_S = 10.0          # a Bank call of the lifecycle (the prolog waits for the hold)
SLURM_TIMEOUT_S = 30.0         # sacct, scontrol
DELEGATION_VALID_FOR_S = 300   # a delegated proxy closer to its end than this is not used for a hold


@dataclass(frozen=True, slots=True)
class Jarm:
    """What one worker holds for the JARM: its prices in the store, its policy and its site's settings
    (``runtime_of(ctx).jarm`` in the SOAP operations)."""

    prices: PriceStore
    policy: JarmPolicy
    site: str
    quote_guarantee_s_max: int
    quotes_per_requester_max: int
    # users' delegated proxies (delegation.py): ``delegations.credential_for(dn, valid_for_s=…)`` signs as them
    delegations: DelegationStore
    lifecycle: "Lifecycle | None" = None      # None: the site makes no reservations (no site_account)
    send_usage_records: Callable[[], object] | None = None   # the spool of usage records → the LUTS
    occupancy: Callable[[str], object] | None = None      # a partition's occupancy (on the Slurm controller)
    spooled: Callable[[], int] | None = None       # usage records waiting in the spool for the LUTS


def build(context: BuildContext) -> Jarm:
    settings = context.config.jarm
    prices = PriceStore(context.store)
    controllers = set(settings.controllers)
    delegations = open_delegations(context.config, context.store, files=context.files)
    lifecycle = send = spooled = None
    if settings.site_account and context.files is not None:
        lifecycle, host_dn, send, spooled = _build_lifecycle(context, prices, delegations)
        controllers.add(host_dn)
    return Jarm(prices, JarmPolicy(price_admins=frozenset(settings.price_admins), controllers=frozenset(controllers)),
                site=settings.site, quote_guarantee_s_max=settings.quote_guarantee_s_max,
                quotes_per_requester_max=settings.quotes_per_requester_max,
                delegations=delegations, lifecycle=lifecycle, send_usage_records=send,
                occupancy=None if lifecycle is None else lifecycle.occupancy, spooled=spooled)


def _service_url(explicit: str, config) -> str:
    return explicit or f"https://localhost:{config.server.port}"


def _build_lifecycle(context: BuildContext, prices: PriceStore, delegations: DelegationStore
                     ) -> tuple["Lifecycle", str, Callable[[], object], Callable[[], int]]:
    from gridcredit.security.credentials import load_credential

    from ..bank.client import BankClient
    from .identities import GridMap, resolver
    from .lifecycle import Banker, Lifecycle, Settings
    from .reservation_store import ReservationStore
    from .slurm.queue import running_runs

    config, files, settings = context.config, context.files, context.config.jarm
    credential = load_credential(cert_path=str(files.host_cert), key_path=str(files.host_key))
    bank = BankClient(_service_url(settings.bank_url, config), credential=credential, trust_dir=files.trust_dir,
                      timeout_s=BANK_TIMEOUT_S, retries=1)
    # a user's delegated proxy, valid long enough for the hold's request: the Bank sees the user
    delegated = lambda dn: delegations.credential_for(dn, valid_for_s=DELEGATION_VALID_FOR_S)  # noqa: E731
    banker = Banker(site=bank, delegated=delegated, site_dn=credential.identity_dn)
    account_map = dict(entry.split("=", 1) for entry in settings.account_map)
    lifecycle_settings = Settings(site=settings.site, payee=settings.site_account, hold_grace_s=settings.hold_grace_s,
                                  bank_unreachable=settings.bank_unreachable,
                                  unfunded_cap_credits=settings.unfunded_cap_credits,
                                  extend_margin_s=settings.extend_margin_s, account_map=account_map)
    scontrol = _slurm_command(settings.slurm_bin_dir, "scontrol")
    report = _reporter(config, files.host_cert, prices)
    lifecycle = Lifecycle(ReservationStore(context.store), prices, banker, lifecycle_settings,
                          user_dn=resolver(GridMap(settings.grid_mapfile), delegated),
                          read_usage=_usage_reader(settings), report=report,
                          running=lambda keys: running_runs(keys, scontrol=scontrol), clock=now_us,
                          occupancy=occupancy_reader(settings).occupancy)
    from ..luts.client import LutsClient
    luts = LutsClient(_service_url(settings.luts_url, config), credential=credential, trust_dir=files.trust_dir,
                      timeout_s=BANK_TIMEOUT_S, retries=1)
    spool_directory = Path(report.spool.directory)

    def send_usage_records():
        if not any(spool_directory.glob("*.xml")):
            return None                 # nothing spooled: no call, no log line
        return report.spool.send(luts)
    return lifecycle, credential.identity_dn, send_usage_records, lambda: report.spool.usage()[0]


def _usage_reader(settings):
    """``JobKey → Usage | NEVER_STARTED | None`` from slurmdbd (None: not recorded yet, the run not over, or
    sacct failing now: the reconciler asks again at its next pass)."""
    from .lifecycle import NEVER_STARTED
    from .slurm.accounting import JobNotAccounted, SlurmError, read_run_usage

    sacct = _slurm_command(settings.slurm_bin_dir, "sacct")

    def read(key):
        try:
            run = read_run_usage(key.job_id, array_task=key.array_task, restarts=key.restarts, sacct=sacct,
                                 timeout_s=SLURM_TIMEOUT_S)
        except JobNotAccounted:
            return None
        except SlurmError as error:      # sacct failed or printed what is refused: said, and tried again later
            log.warning("jarm: the usage of job %s (run %d) not read: %s: %s", key.job, key.restarts,
                        type(error).__name__, error)
            return None
        # never given nodes, or given them but requeued before its script ran (a failing PrologSlurmctld: the
        # run is REQUEUED with no step): nothing ran, nothing is charged
        if not run.started or (run.steps == 0 and run.state == "REQUEUED"):
            return NEVER_STARTED
        return run.usage()
    return read


def _machine_name(host_cert) -> str:
    """The MachineName of the JARM's usage records: the host certificate's first DNS name (the LUTS lets a
    host publish the records of the machine its certificate names), else this host's name."""
    import socket

    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(open(host_cert, "rb").read())
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    return dns[0] if dns else socket.getfqdn()


def _reporter(config, host_cert, prices: PriceStore):
    """The step after the charge: the run's OGF usage record (UR 2.0, with its charge) into the spool
    the reconciler sends to the LUTS (services/luts/spool.py: durable once added)."""
    from ..luts.spool import Spool
    from .slurm.accounting import read_run_usage
    from .usage_record import usage_record

    settings = config.jarm
    spool = Spool(settings.ur_spool or config.state_path / "jarm-ur-spool")
    sacct = _slurm_command(settings.slurm_bin_dir, "sacct")
    machine = _machine_name(host_cert)

    def report(reservation) -> None:
        key = reservation.key
        job = read_run_usage(key.job_id, array_task=key.array_task, restarts=key.restarts, sacct=sacct,
                             timeout_s=SLURM_TIMEOUT_S)
        table = prices.table(reservation.basis.site, reservation.basis.version).table
        cost = pricing.charge(table, job.usage(), reservation.basis)        # the exact breakdown in the record
        spool.add(usage_record(job, site=settings.site, machine=machine, reservation_id=reservation.reservation_id,
                               cost=cost,
                               charge=reservation.charged, basis=reservation.basis, user_dn=reservation.user_dn,
                               bank_account=reservation.account))
    report.spool = spool
    return report


def occupancy_reader(settings):
    """Partitions' occupancy from Slurm (sinfo, read at most every 10 s) for load-priced rates."""
    from .slurm.accounting import OccupancyReader

    return OccupancyReader(sinfo=_slurm_command(settings.slurm_bin_dir, "sinfo"), timeout_s=SLURM_TIMEOUT_S / 6)


def _slurm_command(bin_dir: str, name: str) -> str:
    return os.path.join(bin_dir, name) if bin_dir else (shutil.which(name) or name)


def gauges(jarm: Jarm, config) -> list:
    """/metrics (a site that makes reservations): the job runs with a step left — at the Bank (a hold, a
    settlement, a release, waiting while it does not answer), reading their usage, or their usage record —
    and the usage records waiting in the spool for the LUTS."""
    from gridcredit.metrics import Gauge

    if jarm.lifecycle is None:
        return []
    return [Gauge("gridcredit_jarm_pending_work", "Job runs with a step left to do (Bank, usage, usage record)",
                  jarm.lifecycle.reservations.count_pending()),
            Gauge("gridcredit_jarm_usage_records_spooled", "Usage records waiting in the spool for the LUTS",
                  jarm.spooled())]


def reconcile_forever(context: TaskContext) -> None:
    """Every ``reconcile_interval_s``: the reservations' pending Bank work, the runs Slurm no longer
    has, the holds of running jobs near their expiry (lifecycle.reconcile_once). One worker per host."""
    lifecycle, stop = context.part.lifecycle, context.stop
    if lifecycle is None:
        return              # (a runtime without the host's files makes no reservations)
    interval_s = context.config.jarm.reconcile_interval_s
    while not stop.wait(interval_s):
        try:
            done = lifecycle.reconcile_once()
        except (StoreError, GridcreditError) as error:
            log.warning("jarm reconciler: %s: %s; again in %d s", type(error).__name__, error, interval_s)
            continue
        if done["ended"] or done["extended"] or done["steps"] > done["left"]:   # (runs waiting for the Bank:
            # reconcile_once said so, in one line)
            log.info("jarm reconciler: %d run(s) ended, %d step(s) tried (%d left pending), %d hold(s) extended",
                     done["ended"], done["steps"], done["left"], done["extended"])
        try:
            sent = context.part.send_usage_records()
        except GridcreditError as error:
            log.warning("jarm reconciler: usage records not sent to the LUTS: %s: %s", type(error).__name__, error)
            continue
        if sent is not None and (sent.records_acknowledged or not sent.ok):
            log.info("jarm reconciler: %d usage record(s) stored by the LUTS%s", sent.records_acknowledged,
                     "" if sent.ok else f"; stopped: {sent.stopped}")


def sweep_quotes_forever(context: TaskContext) -> None:
    """Every ``QUOTE_SWEEP_S``, delete the guaranteed quotes that expired before the previous hour
    (store.py); a store that cannot be written now is tried again at the next round."""
    prices, stop = context.part.prices, context.stop
    while not stop.wait(QUOTE_SWEEP_S):
        try:
            deleted = prices.sweep_expired_quotes(now_us=now_us())
        except StoreError as error:   # the store busy or behind: expected, and the next round does it
            log.warning("the sweep of expired quotes cannot use the store (%s); retrying in %d s", error, QUOTE_SWEEP_S)
            continue
        if deleted:
            log.info("deleted %d expired guaranteed quotes", deleted)
