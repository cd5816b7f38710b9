"""The SOAP face of the JARM: thin operations over the Price Authority (pricing.py, store.py).

Each operation: the policy decides (``policy.py``) → its arguments are decoded into the core's
types (each valid by construction, ``types.py``) → the core prices (``pricing.py``) → the store
keeps or finds (``store.py``, one transaction) → the answer is encoded. Prices are integer
micro-credits per price unit (``price_micro``), times integer µs since the epoch (``*_us``), a
cost whole credits (``credits``) with its exact amount ``exact_numerator / exact_denominator``
(``xs:integer``: the exact denominators exceed ``xs:long``) and one line per metric.

    SetPriceTable   the next version of the site's prices (price administrators)
    GetPriceTable   the version in force now, or at ``at_us``, or version ``version``
    Quote           the cost of a request by the version in force now; with ``guarantee_s`` a
                    guaranteed quote kept under ``quote_id`` until ``valid_until_us``
    RequestDelegation, CompleteDelegation, GetDelegation, DestroyDelegation
                    the caller's own proxy delegated to the JARM, GSI-style (delegation.py): the
                    JARM makes the key pair, the caller signs a proxy for its public key
    Reserve         a job about to run (the PrologSlurmctld): priced, then held at the Bank —
                    ``admitted`` false says why the job must not run (``message``, for its user)
    Extend          the job runs on, or its time limit was raised: its hold is extended
    Complete        the job's run ended (the EpilogSlurmctld): its usage is read, priced and charged
    Cancel          the job will not run: what is held is released
    GetReservation, ListReservations   a reservation, a user's reservations
    Reconcile       one pass of the reconciler now (it runs every reconcile_interval_s anyway)

The partition's occupancy for load-priced rates is the site's to measure, never the caller's to
state (a caller naming a low load would lock in the least multiplier): a Quote takes none; the JARM
on the Slurm controller (reservations on) reads it from ``sinfo``, and a JARM that cannot refuses a
load-priced rate with ``OccupancyRequired``.
"""
from __future__ import annotations

from spyne import Array, Boolean, ComplexModel, Integer, Long, Unicode

from gridcredit.errors import DomainError, GridcreditError
from gridcredit.timeunits import now_us
from gridcredit.wiretypes import complex_model, wire_values

from . import policy, pricing
from .delegation import Delegation, PendingDelegation
from .lifecycle import SlurmJob
from .reservations import JobKey, Reservation, State
from .reservation_store import PAGE_MAX
from .store import PriceChange, StoredTable
from .types import (INVALID_PRICE_TABLE, INVALID_QUOTE, RATES_MAX, JobRequest, check_quote_id, LoadPricing, MemoryBasis, Metric, Quote,
                    Rate)
from ..common import GridcreditService, operation, principal_of, runtime_of, whoami_operation

NAMESPACE = "urn:gridcredit:jarm:1"
SERVICE_NAME = "Jarm"

Required = {"min_occurs": 1, "nillable": False}
Optional = {"min_occurs": 0}


class PriceInfo(ComplexModel):
    """The price of one metric: micro-credits per its price unit (core-hour, CPU-hour, GB-hour, GPU-hour, job)."""
    __namespace__ = NAMESPACE
    _type_info = [("metric", Unicode(**Required)), ("price_micro", Long(**Required))]


LoadPricingInfo = complex_model(LoadPricing, "LoadPricingInfo", NAMESPACE)


class RateInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("partition", Unicode(**Required)), ("qos", Unicode(**Required)), ("prices", Array(PriceInfo)),
                  ("load", LoadPricingInfo.customize(**Optional))]


class PriceTableInfo(ComplexModel):
    """A version of a site's prices. In SetPriceTable ``site`` defaults to the JARM's, ``version`` to
    the next, ``effective_us`` to now and ``memory_basis`` to ``allocated``; ``set_by``/``set_us``
    are the service's (in answers)."""
    __namespace__ = NAMESPACE
    _type_info = [("site", Unicode(**Optional)), ("version", Long(**Optional)), ("effective_us", Long(**Optional)),
                  ("memory_basis", Unicode(**Optional)), ("rates", Array(RateInfo)),
                  ("set_by", Unicode(**Optional)), ("set_us", Long(**Optional))]


class PriceTableReceipt(ComplexModel):
    """The version stored; ``replayed``: it was stored before, by this same change (a retry)."""
    __namespace__ = NAMESPACE
    _type_info = [("table", PriceTableInfo.customize(**Required)), ("replayed", Boolean(**Required))]


class JobRequestInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("partition", Unicode(**Required)), ("qos", Unicode(**Required)), ("cores", Long(**Required)),
                  ("time_limit_s", Long(**Required)), ("memory_mb", Long(**Required)), ("gpus", Long(**Required)),
                  ("nodes", Long(**Required))]


class CostLineInfo(ComplexModel):
    """One metric: ``quantity`` in its base unit, its price, and its exact amount
    ``numerator / exact_denominator`` credits (never rounded)."""
    __namespace__ = NAMESPACE
    _type_info = [("metric", Unicode(**Required)), ("quantity", Long(**Required)), ("price_micro", Long(**Required)),
                  ("numerator", Integer(**Required))]


class QuoteInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("quote_id", Unicode(**Optional)), ("site", Unicode(**Required)), ("version", Long(**Required)),
                  ("partition", Unicode(**Required)), ("qos", Unicode(**Required)),
                  ("multiplier_numerator", Long(**Required)), ("multiplier_denominator", Long(**Required)),
                  ("request", JobRequestInfo.customize(**Required)), ("credits", Long(**Required)),
                  ("exact_numerator", Integer(**Required)), ("exact_denominator", Integer(**Required)),
                  ("lines", Array(CostLineInfo)), ("issued_us", Long(**Required)),
                  ("valid_until_us", Long(**Optional)), ("replayed", Boolean(**Required))]


class JobKeyInfo(ComplexModel):
    """One run of a job: ``array_task`` absent for a plain job, ``restarts`` Slurm's restart count."""
    __namespace__ = NAMESPACE
    _type_info = [("cluster", Unicode(**Required)), ("job_id", Long(**Required)), ("array_task", Long(**Optional)),
                  ("restarts", Long(**Required))]


class ReservationInfo(ComplexModel):
    """A reservation; ``admitted``: the job may run on it (held, or unfunded by the site's policy);
    ``message``: why not, for the job's user. Credits are whole; ``uncharged`` what the hold could not
    cover."""
    __namespace__ = NAMESPACE
    _type_info = [("reservation_id", Unicode(**Required)), ("key", JobKeyInfo.customize(**Required)),
                  ("user", Unicode(**Required)), ("user_dn", Unicode(**Required)), ("account", Unicode(**Required)),
                  ("payee", Unicode(**Required)), ("state", Unicode(**Required)), ("pending", Unicode(**Optional)),
                  ("admitted", Boolean(**Required)), ("message", Unicode(**Optional)),
                  ("authority", Unicode(**Optional)), ("version", Long(**Required)), ("estimate", Long(**Required)),
                  ("hold_id", Unicode(**Optional)), ("hold_amount", Long(**Required)),
                  ("hold_expires_us", Long(**Optional)), ("cost", Long(**Required)), ("charged", Long(**Required)),
                  ("uncharged", Long(**Required)), ("created_us", Long(**Required)), ("updated_us", Long(**Required)),
                  ("unfunded_us", Long(**Optional))]


# A pending delegation (RequestDelegation): sign an RFC 3820 proxy of your credential for the public key of
# ``csr_pem`` (PKCS#10) and send the chain with CompleteDelegation before ``expires_us``.
DelegationRequestInfo = complex_model(PendingDelegation, "DelegationRequestInfo", NAMESPACE)
# A delegation the JARM holds for its caller (never its key): ``dn`` the identity, ``proxy_dn`` the proxy's
# own DN, its validity (``not_after_us``: the earliest expiry on its chain), when it was stored.
DelegationInfo = complex_model(Delegation, "DelegationInfo", NAMESPACE)

class ReconcileReport(ComplexModel):
    """One pass of the reconciler: runs found ended, pending steps tried (and still left), holds extended."""
    __namespace__ = NAMESPACE
    _type_info = [("ended", Long(**Required)), ("steps", Long(**Required)), ("left", Long(**Required)),
                  ("extended", Long(**Required))]


# -- decoding -------------------------------------------------------------------------------------


def _enum(kind, text, what: str):
    try:
        return kind(text)
    except ValueError:
        raise DomainError(f"{what} {text!r} is not one of {', '.join(member.value for member in kind)}",
                          INVALID_PRICE_TABLE) from None


def _rate(info: RateInfo) -> Rate:
    if info is None:
        raise DomainError("a rate is empty: give its partition, QoS and prices", INVALID_PRICE_TABLE)
    prices = [(_enum(Metric, price.metric, "the metric"), price.price_micro) for price in info.prices or ()]
    load = None if info.load is None else LoadPricing(**{name: getattr(info.load, name) for name in (
        "low_permille", "high_permille", "min_permille", "max_permille")})
    return Rate(info.partition, info.qos, tuple(prices), load)


def _change(info: PriceTableInfo, site: str) -> PriceChange:
    if info is None:
        raise DomainError("no price table was sent", INVALID_PRICE_TABLE)
    if info.site not in (None, site):
        raise DomainError(f"this JARM keeps the prices of site {site}, not of {info.site}", INVALID_PRICE_TABLE)
    rates = info.rates or []
    if len(rates) > RATES_MAX:
        raise DomainError(f"a price table has at most {RATES_MAX} rates, not {len(rates)}",
                          INVALID_PRICE_TABLE)
    memory_basis = MemoryBasis.ALLOCATED if info.memory_basis is None else _enum(
        MemoryBasis, info.memory_basis, "the memory basis")
    return PriceChange(site, tuple(_rate(rate) for rate in rates), memory_basis, info.version, info.effective_us)


# -- encoding -------------------------------------------------------------------------------------


def _table_info(stored: StoredTable) -> PriceTableInfo:
    table = stored.table
    return PriceTableInfo(
        site=table.site, version=table.version, effective_us=table.effective_us,
        memory_basis=table.memory_basis.value, set_by=stored.set_by, set_us=stored.set_us,
        rates=[RateInfo(partition=rate.partition, qos=rate.qos,
                        prices=[PriceInfo(metric=metric.value, price_micro=price) for metric, price in rate.prices],
                        load=None if rate.load is None else LoadPricingInfo(**wire_values(rate.load)))
               for rate in table.rates])


def _quote_info(quote: Quote, replayed: bool) -> QuoteInfo:
    basis, cost = quote.basis, quote.cost
    return QuoteInfo(
        quote_id=quote.quote_id or None, site=basis.site, version=basis.version, partition=basis.partition,
        qos=basis.qos, multiplier_numerator=basis.multiplier.numerator,
        multiplier_denominator=basis.multiplier.denominator, request=JobRequestInfo(**wire_values(quote.request)),
        credits=cost.credits, exact_numerator=cost.numerator, exact_denominator=cost.denominator,
        lines=[CostLineInfo(metric=line.metric.value, quantity=line.quantity, price_micro=line.price_micro,
                            numerator=line.numerator) for line in cost.lines],
        issued_us=quote.issued_us, valid_until_us=quote.valid_until_us, replayed=replayed)


def _key(info: JobKeyInfo) -> JobKey:
    if info is None:
        raise DomainError("no job was named: give its cluster, job id and restart count", "InvalidJob")
    return JobKey(info.cluster, info.job_id, info.array_task, info.restarts)


def _reservation_info(reservation: Reservation) -> ReservationInfo:
    key = reservation.key
    admitted = reservation.state in (State.HELD, State.UNFUNDED, State.COMPLETING, State.CHARGED)
    return ReservationInfo(
        reservation_id=reservation.reservation_id,
        key=JobKeyInfo(cluster=key.cluster, job_id=key.job_id, array_task=key.array_task, restarts=key.restarts),
        user=reservation.user, user_dn=reservation.user_dn, account=reservation.account, payee=reservation.payee,
        state=reservation.state.value, pending=reservation.pending.value or None, admitted=admitted,
        message=reservation.note or None,
        authority=None if reservation.authority is None else reservation.authority.value,
        version=reservation.basis.version, estimate=reservation.estimate, hold_id=reservation.hold_id or None,
        hold_amount=reservation.hold_amount, hold_expires_us=reservation.hold_expires_us or None,
        cost=reservation.cost, charged=reservation.charged, uncharged=reservation.uncharged,
        created_us=reservation.created_us, updated_us=reservation.updated_us,
        unfunded_us=reservation.unfunded_us or None)


def _lifecycle(ctx):
    jarm = runtime_of(ctx).jarm
    if jarm.lifecycle is None:
        raise DomainError(f"site {jarm.site} makes no reservations: its [jarm] section names no site_account",
                          "ReservationsDisabled")
    return jarm.lifecycle


# -- operations -----------------------------------------------------------------------------------


class JarmService(GridcreditService):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("jarm", authorize=lambda ctx: policy.authorize_anyone("WhoAmI"))

    @operation(PriceTableInfo.customize(**Required), _returns=PriceTableReceipt, _operation_name="SetPriceTable")
    def set_price_table(ctx, table):
        jarm = runtime_of(ctx).jarm
        principal = principal_of(ctx)
        policy.authorize_set_price_table(jarm.policy, principal)
        stored, replayed = jarm.prices.set_table(_change(table, jarm.site), set_by=principal.dn, clock=now_us)
        return PriceTableReceipt(table=_table_info(stored), replayed=replayed)

    @operation(Long(**Optional), Long(**Optional), _returns=PriceTableInfo, _operation_name="GetPriceTable")
    def get_price_table(ctx, version, at_us):
        policy.authorize_anyone("GetPriceTable")
        jarm = runtime_of(ctx).jarm
        if version is not None and at_us is not None:
            raise DomainError("ask for a version or for the one in force at a time, not both", INVALID_PRICE_TABLE)
        if version is not None:
            return _table_info(jarm.prices.table(jarm.site, version))
        return _table_info(jarm.prices.in_force(jarm.site, now_us() if at_us is None else at_us))

    @operation(Unicode(**Required), Unicode(**Required), Long(**Required), Long(**Required), Long(**Optional),
               Long(**Optional), Long(**Optional), Long(**Optional), Unicode(**Optional), _returns=QuoteInfo,
               _operation_name="Quote")
    def quote(ctx, partition, qos, cores, time_limit_s, memory_mb, gpus, nodes, guarantee_s, quote_id):
        policy.authorize_anyone("Quote")
        jarm = runtime_of(ctx).jarm
        request = JobRequest(partition, qos, cores, time_limit_s, 0 if memory_mb is None else memory_mb,
                             0 if gpus is None else gpus, 1 if nodes is None else nodes)
        guarantee_s = 0 if guarantee_s is None else guarantee_s
        if guarantee_s > jarm.quote_guarantee_s_max:
            raise DomainError(f"site {jarm.site} guarantees a quote for at most {jarm.quote_guarantee_s_max:,} s, "
                              f"not {guarantee_s:,} s", INVALID_QUOTE)
        moment_us = now_us()
        table = jarm.prices.in_force(jarm.site, moment_us).table
        occupancy = None
        if jarm.occupancy is not None and pricing.rate_for(table, request.partition, request.qos).load is not None:
            try:
                occupancy = jarm.occupancy(request.partition)      # Slurm's word, never the caller's
            except GridcreditError as error:
                raise DomainError(f"the load of partition {request.partition} cannot be read from Slurm now "
                                  f"({error}); its rate is load-priced: ask again later", pricing.OCCUPANCY_REQUIRED
                                  ) from None
        made = pricing.quote(table, request, now_us=moment_us, occupancy=occupancy, quote_id=quote_id or "",
                             guarantee_s=guarantee_s)
        if not made.guaranteed:
            return _quote_info(made, replayed=False)
        stored, replayed = jarm.prices.save_quote(made, requester=principal_of(ctx).dn,
                                                  active_max=jarm.quotes_per_requester_max)
        return _quote_info(stored.quote, replayed)


    @operation(JobKeyInfo.customize(**Required), Unicode(**Required), Unicode(**Required),
               JobRequestInfo.customize(**Required), Unicode(**Optional), _returns=ReservationInfo,
               _operation_name="Reserve")
    def reserve(ctx, key, user, account, request, quote_id):
        jarm = runtime_of(ctx).jarm
        policy.authorize_report_job(jarm.policy, principal_of(ctx), "Reserve")
        if request is None:
            raise DomainError("no job request was sent", "InvalidJob")
        job = SlurmJob(_key(key), user, account, JobRequest(request.partition, request.qos, request.cores,
                                                            request.time_limit_s, request.memory_mb, request.gpus,
                                                            request.nodes), quote_id or "")
        if quote_id:
            check_quote_id(quote_id)
        return _reservation_info(_lifecycle(ctx).reserve(job))

    @operation(JobKeyInfo.customize(**Required), Long(**Optional), _returns=ReservationInfo, _operation_name="Extend")
    def extend(ctx, key, time_limit_s):
        policy.authorize_report_job(runtime_of(ctx).jarm.policy, principal_of(ctx), "Extend")
        return _reservation_info(_lifecycle(ctx).extend_job(_key(key), time_limit_s))

    @operation(_returns=ReconcileReport, _operation_name="Reconcile")
    def reconcile(ctx):
        policy.authorize_reconcile(runtime_of(ctx).jarm.policy, principal_of(ctx))
        return ReconcileReport(**_lifecycle(ctx).reconcile_once())

    @operation(JobKeyInfo.customize(**Required), _returns=ReservationInfo, _operation_name="Complete")
    def complete(ctx, key):
        policy.authorize_report_job(runtime_of(ctx).jarm.policy, principal_of(ctx), "Complete")
        return _reservation_info(_lifecycle(ctx).ended(_key(key)))

    @operation(JobKeyInfo.customize(**Required), _returns=ReservationInfo, _operation_name="Cancel")
    def cancel(ctx, key):
        policy.authorize_report_job(runtime_of(ctx).jarm.policy, principal_of(ctx), "Cancel")
        return _reservation_info(_lifecycle(ctx).cancel(_key(key)))

    @operation(Unicode(**Required), _returns=ReservationInfo, _operation_name="GetReservation")
    def get_reservation(ctx, reservation_id):
        jarm = runtime_of(ctx).jarm
        found = None
        if jarm.lifecycle is not None and isinstance(reservation_id, str):
            found = jarm.lifecycle.reservations.get(reservation_id)
        policy.authorize_view_reservation(jarm.policy, principal_of(ctx), "" if found is None else found.user_dn)
        _lifecycle(ctx)
        if found is None:
            raise DomainError(f"there is no reservation {reservation_id}", "UnknownReservation")
        return _reservation_info(found)

    @operation(Unicode(**Optional), Long(**Optional), Long(**Optional), _returns=Array(ReservationInfo),
               _operation_name="ListReservations")
    def list_reservations(ctx, user_dn, offset, limit):
        jarm = runtime_of(ctx).jarm
        principal = principal_of(ctx)
        overseer = principal.dn in jarm.policy.controllers or principal.dn in jarm.policy.price_admins
        user_dn = user_dn or (None if overseer else principal.dn)
        policy.authorize_list_reservations(jarm.policy, principal, user_dn)
        offset, limit = offset or 0, 100 if limit is None else limit
        if not 0 <= offset <= 10**9 or not 1 <= limit <= PAGE_MAX:
            raise DomainError(f"offset must be 0 or more and limit 1-{PAGE_MAX}, not {offset} and {limit}",
                              "InvalidArgument")
        lifecycle = _lifecycle(ctx)
        if user_dn is None:
            found = list(lifecycle.reservations.page(offset=offset, limit=limit))
        else:
            found = lifecycle.reservations.of_user(user_dn, offset=offset, limit=limit)
        return [_reservation_info(reservation) for reservation in found]


    # -- delegation (delegation.py): the caller's own, keyed by the caller's DN

    @operation(Long(**Required), _returns=DelegationRequestInfo, _operation_name="RequestDelegation")
    def request_delegation(ctx, lifetime_s):
        principal = principal_of(ctx)
        policy.authorize_delegation(principal, "RequestDelegation")
        return DelegationRequestInfo(**wire_values(runtime_of(ctx).jarm.delegations.request(principal.dn, lifetime_s)))

    @operation(Unicode(**Required), Unicode(**Required), _returns=DelegationInfo,
               _operation_name="CompleteDelegation")
    def complete_delegation(ctx, delegation_id, chain_pem):
        principal = principal_of(ctx)
        policy.authorize_delegation(principal, "CompleteDelegation")
        delegation = runtime_of(ctx).jarm.delegations.complete(principal.dn, delegation_id, chain_pem)
        return DelegationInfo(**wire_values(delegation))

    @operation(_returns=DelegationInfo.customize(**Optional), _operation_name="GetDelegation")
    def get_delegation(ctx):
        policy.authorize_anyone("GetDelegation")
        delegation = runtime_of(ctx).jarm.delegations.get(principal_of(ctx).dn)
        return None if delegation is None else DelegationInfo(**wire_values(delegation))

    @operation(_returns=Boolean(**Required), _operation_name="DestroyDelegation")
    def destroy_delegation(ctx):
        principal = principal_of(ctx)
        policy.authorize_delegation(principal, "DestroyDelegation")
        return runtime_of(ctx).jarm.delegations.destroy(principal.dn)

SERVICES = [JarmService]
