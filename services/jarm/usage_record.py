"""The OGF Usage Record 2.0 (GFD.204) of one charged Slurm run, for the LUTS: what sacct measured and
what the JARM charged for it.

    document = usage_record(job, site="SITE", machine="ce.example.org", reservation_id=key.reservation_id,
                            charge=charged, basis=reservation.basis, cost=cost, user_dn=dn)
    Spool(spool_dir).add(document)           # the LUTS's durable outbox sends it (services/luts/spool.py)

The record, in the UR 2.0 namespace as the LUTS reads it (services/luts/records.py) — with what each
element holds and how the LUTS's view (``NormalizedRecord``) reads it back:

=====================================  ====================================  =========================
element                                from                                  the LUTS's view
=====================================  ====================================  =========================
RecordIdentity/@recordId               ``jarm:<site>:<reservation id>``      record_id
RecordIdentity/@createTime             when the document was made            create_time
JobIdentity/LocalJobId                 ``1234`` or ``1234_7`` (sacct JobID)  local_job_id
UserIdentity/GlobalUserName            the user's DN, when known             user_dn
UserIdentity/LocalUserId               sacct User                            local_user
UserIdentity/Group                     the VO, when given                    vo
Charge @unit=credits @formula          the credits charged; the price        charge, charge_micro,
                                       table's site, version, multiplier     charge_unit
Status, ExitStatus                     sacct State, ExitCode (below)         status, exit_code
WallDuration                           ElapsedRaw                            wall_us
CpuDuration @usageType=all             TotalCPU of the steps                 cpu_us
Memory @type=Physical @metric=max      MaxRSS of the steps, bytes (``B``)    memory_bytes
NodeCount, Processors                  AllocTRES node, cpu                   nodes, processors
StartTime, EndTime                     Start, End (absent when not set)      start_time, end_time
MachineName                            the JARM's machine (the publisher's)  machine
Queue                                  Partition                             queue
ProjectName                            the Bank account charged (else the    project
                                       Slurm account)
Site                                   the site                              site
jarm:Run (extension)                   cluster, job, array task, restarts, Slurm account, QOS, state,
                                       exit code and signal, submit time, time limit, node list, the
                                       allocation (cpu, mem MB, gpus, nodes, billing) — all of JobUsage
jarm:Pricing (extension)               the reservation id, the price table (site, version), the load
                                       multiplier, and with ``cost`` its exact amount and one line per
                                       metric (quantity, price, numerator)
=====================================  ====================================  =========================

Status: COMPLETED → completed; FAILED, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL → failed; CANCELLED,
TIMEOUT, DEADLINE, PREEMPTED, REVOKED and the REQUEUE states (the run was ended for another) →
aborted. ExitStatus is the exit code of a run that ended by itself; a run killed by a signal has none
(its signal is in jarm:Run).

**A re-sent record is a duplicate.** The LUTS keys a record by its machine and record id and tells
"the same record" by its content without ``createTime``; the record id holds the reservation id (one
per run: cluster, job, array task, restart count), and everything else is made from the run's final
accounting and its charge in a fixed order: so the same run's record made again (after a crash, a
retry) is answered ``duplicate``, never stored twice; a different record under the same id (another
charge) is refused by the LUTS, not stored beside it.
"""
from __future__ import annotations

import re

from lxml import etree

from gridcredit.errors import DomainError
from gridcredit.text import hidden_character
from gridcredit.timeunits import datetime_from_us, now_us

from ..luts.durations import format_datetime, format_duration
from ..luts.records import NS_UR2
from .slurm.accounting import JobUsage
from .types import INVALID_USAGE, Cost, PricingBasis

NS_JARM_UR = "urn:gridcredit:jarm:ur:1"
CHARGE_UNIT = "credits"
CHARGE_CREDITS_MAX = 10**15                 # the Bank's largest amount
_U = f"{{{NS_UR2}}}"
_J = f"{{{NS_JARM_UR}}}"
_NSMAP = {"urf": NS_UR2, "jarm": NS_JARM_UR}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_RESERVATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_TEXT_MAX = 1024

STATUS = {"COMPLETED": "completed",
          "FAILED": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed", "BOOT_FAIL": "failed",
          "CANCELLED": "aborted", "TIMEOUT": "aborted", "DEADLINE": "aborted", "PREEMPTED": "aborted",
          "REVOKED": "aborted", "REQUEUED": "aborted", "REQUEUE_HOLD": "aborted", "REQUEUE_FED": "aborted"}


def record_id(site: str, reservation_id: str) -> str:
    """The record id of a reservation's usage record: one per run, the same each time it is made."""
    return f"jarm:{site}:{reservation_id}"


def _refuse(message: str) -> DomainError:
    return DomainError(f"the usage record cannot be made: {message}", INVALID_USAGE)


def _check_text(value: object, what: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or not value or len(value) > _TEXT_MAX or hidden_character(value) or \
            (pattern is not None and not pattern.fullmatch(value)):
        raise _refuse(f"{what} {value!r} is not a usable value")
    return value


def _moment(us: int) -> str:
    return format_datetime(datetime_from_us(us))


def _add(parent: etree._Element, tag: str, text: str | int | None = None, **attributes: str | int) -> etree._Element:
    element = etree.SubElement(parent, tag, {name: str(value) for name, value in attributes.items()})
    if text is not None:
        element.text = str(text)
    return element


def usage_record(job: JobUsage, *, site: str, machine: str, reservation_id: str, charge: int, basis: PricingBasis,
                 cost: Cost | None = None, user_dn: str | None = None, vo: str | None = None,
                 bank_account: str | None = None, create_time_us: int | None = None) -> bytes:
    """The UR 2.0 document (UTF-8 bytes) of run ``job`` charged ``charge`` credits by ``basis`` (its
    site's price table version and load multiplier; ``cost``: its exact breakdown, optional).

    ``machine`` is the MachineName the LUTS files it under (a host name the publisher may publish
    for: the JARM host's); ``user_dn`` the user's grid identity when the JARM knows it; ``bank_account``
    the Bank account charged (ProjectName; else the Slurm account). Refused (DomainError
    InvalidUsage) when a value is unusable."""
    if not isinstance(job, JobUsage):
        raise _refuse(f"it is made of a JobUsage, not {type(job).__name__}")
    _check_text(site, "the site", _NAME)
    _check_text(machine, "the machine name", _HOST)
    _check_text(reservation_id, "the reservation id", _RESERVATION_ID)
    if type(charge) is not int or not 0 <= charge <= CHARGE_CREDITS_MAX:  # noqa: E721
        raise _refuse(f"the charge is a whole number of credits 0..{CHARGE_CREDITS_MAX:,}, not {charge!r}")
    if not isinstance(basis, PricingBasis):
        raise _refuse(f"the pricing basis is a PricingBasis, not {basis!r}")
    if basis.site != site:
        raise _refuse(f"the charge was priced by site {basis.site}'s prices, not by site {site}'s")
    if cost is not None and not isinstance(cost, Cost):
        raise _refuse(f"the cost is a Cost, not {cost!r}")
    for value, what in ((user_dn, "the user's DN"), (vo, "the VO"), (bank_account, "the Bank account")):
        if value is not None:
            _check_text(value, what)
    if job.state not in STATUS:
        raise _refuse(f"job {job.job} is {job.state}: only an ended run has a usage record")

    root = etree.Element(_U + "UsageRecord", nsmap=_NSMAP)
    created_us = now_us() if create_time_us is None else create_time_us
    _add(root, _U + "RecordIdentity", **{_U + "recordId": record_id(site, reservation_id),
                                          _U + "createTime": _moment(created_us)})
    identity = _add(root, _U + "JobIdentity")
    _add(identity, _U + "LocalJobId", job.job)
    user = _add(root, _U + "UserIdentity")
    if user_dn is not None:
        _add(user, _U + "GlobalUserName", user_dn, **{_U + "type": "opensslCompat"})
    _add(user, _U + "LocalUserId", job.user)
    if vo is not None:
        _add(user, _U + "Group", vo)
    formula = f"JARM price table of {basis.site}, version {basis.version}"
    if (basis.multiplier.numerator, basis.multiplier.denominator) != (1, 1):
        formula += f", load multiplier {basis.multiplier.numerator}/{basis.multiplier.denominator}"
    _add(root, _U + "Charge", charge, **{_U + "unit": CHARGE_UNIT, _U + "formula": formula})
    _add(root, _U + "Status", STATUS[job.state])
    if job.exit_signal == 0:
        _add(root, _U + "ExitStatus", job.exit_code)
    _add(root, _U + "WallDuration", format_duration(job.elapsed_s * 1_000_000))
    _add(root, _U + "CpuDuration", format_duration(job.total_cpu_ms * 1000), **{_U + "usageType": "all"})
    _add(root, _U + "Memory", job.max_rss_bytes, **{_U + "type": "Physical", _U + "metric": "max",
                                                    _U + "storageUnit": "B"})
    _add(root, _U + "NodeCount", job.nodes)
    _add(root, _U + "Processors", job.cores)
    if job.start_us:
        _add(root, _U + "StartTime", _moment(job.start_us))
    if job.end_us:
        _add(root, _U + "EndTime", _moment(job.end_us))
    _add(root, _U + "MachineName", machine)
    _add(root, _U + "Queue", job.partition)
    _add(root, _U + "ProjectName", bank_account if bank_account is not None else job.account)
    _add(root, _U + "Site", site)

    run = _add(root, _J + "Run", cluster=job.cluster, job=job.job, jobIdRaw=job.job_id_raw, restarts=job.restarts,
               account=job.account, qos=job.qos, state=job.state, exitCode=job.exit_code, signal=job.exit_signal)
    if job.array_task is not None:
        run.set("arrayTask", str(job.array_task))
    if job.cancelled_by_uid is not None:
        run.set("cancelledByUid", str(job.cancelled_by_uid))
    if job.submit_us:
        run.set("submitTime", _moment(job.submit_us))
    if job.time_limit_s is not None:
        run.set("timeLimitSeconds", str(job.time_limit_s))
    if job.node_list:
        run.set("nodeList", job.node_list)
    _add(run, _J + "Allocated", cpu=job.cores, memoryMB=job.memory_mb, gpus=job.gpus, nodes=job.nodes,
         billing=job.billing)
    _add(run, _J + "Measured", elapsedSeconds=job.elapsed_s, totalCpuMilliseconds=job.total_cpu_ms,
         maxRssBytes=job.max_rss_bytes, steps=job.steps)
    pricing = _add(root, _J + "Pricing", reservationId=reservation_id, site=basis.site, version=basis.version,
                   partition=basis.partition, qos=basis.qos, multiplierNumerator=basis.multiplier.numerator,
                   multiplierDenominator=basis.multiplier.denominator, chargedCredits=charge)
    if cost is not None:
        cost_element = _add(pricing, _J + "Cost", credits=cost.credits, numerator=cost.numerator,
                            denominator=cost.denominator)
        for line in cost.lines:
            _add(cost_element, _J + "Line", metric=line.metric.value, quantity=line.quantity,
                 priceMicro=line.price_micro, numerator=line.numerator)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8") + b"\n"


__all__ = ["CHARGE_UNIT", "NS_JARM_UR", "STATUS", "record_id", "usage_record"]
