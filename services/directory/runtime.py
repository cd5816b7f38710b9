"""The directory as the host runs it: what each worker builds, and the sweep of expired registrations."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from gridcredit.contract import BuildContext, TaskContext
from gridcredit.errors import StoreError
from gridcredit.timeunits import now_us

from .policy import DirectoryPolicy
from .store import HostDirectory

log = logging.getLogger("gridcredit.services.directory")


@dataclass(frozen=True, slots=True)
class Directory:
    """What one worker holds for the directory (``runtime_of(ctx).directory`` in the SOAP operations)."""
    hosts: HostDirectory
    policy: DirectoryPolicy
    ttl_s_max: int


def build(context: BuildContext) -> Directory:
    settings = context.config.directory
    return Directory(HostDirectory(context.store, hosts_max=settings.hosts_max,
                                   hosts_per_registrant_max=settings.hosts_per_registrant_max),
                     DirectoryPolicy(admins=frozenset(settings.admins), registrars=frozenset(settings.registrars),
                                     require_host_certificate=settings.require_host_certificate),
                     ttl_s_max=settings.ttl_s_max)


def sweep_forever(context: TaskContext) -> None:
    """Every ``sweep_interval_s``, delete the registrations that expired (listing never shows them anyway);
    a store that cannot be written now is tried again at the next round. Every worker sweeps: a
    registration deleted twice is deleted once."""
    hosts, stop = context.part.hosts, context.stop
    interval_s = context.config.directory.sweep_interval_s
    while not stop.wait(interval_s):
        try:
            deleted = hosts.sweep_expired(now_us=now_us())
        except StoreError as error:
            log.warning("directory: the sweep of expired registrations cannot use the store (%s); again in %d s",
                        error, interval_s)
            continue
        if deleted:
            log.info("directory: deleted %d expired host registration(s)", deleted)


def gauges(directory: Directory, config) -> list:
    """/metrics: the hosts listed now and the host ids the directory keeps."""
    from gridcredit.metrics import Gauge

    listed, owned = directory.hosts.counts(now_us=now_us())
    return [Gauge("gridcredit_directory_hosts_listed", "Hosts whose registration has not expired", listed),
            Gauge("gridcredit_directory_host_ids", "Host ids the directory keeps for their owners", owned)]
