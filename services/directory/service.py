"""The SOAP face of the directory: thin operations over its store (store.py), decided by policy.py.

    Register      an auctioneer's heartbeat: its host id, URL, capacity, the Σ of its live bids' rates, the
                  hour's average price, live bids, interval, how long to list it (ttl_s), and its reserve
                  price (optional, default 0)
    ListHosts     every host registered and not expired, by host id
    GetHostInfo   one host (``UnknownHost`` when not registered, or expired)
    RemoveHost    an administrator removes a host and frees its id

Rates and prices are decimal credits per second on the wire (``xs:decimal``, at most 6 decimals: one
micro-credit per second), integer µcr/s in the store (types.py); times integer µs since the epoch (``*_us``).
A refused Register changes nothing.
"""
from __future__ import annotations

from spyne import Array, Boolean, ComplexModel, Decimal, Long, Unicode

from gridcredit.errors import DomainError
from gridcredit.timeunits import now_us

from . import policy
from .types import INVALID_ARGUMENT, HostEntry, Registration, check_host_id, rate_from_decimal, rate_to_decimal
from ..common import GridcreditService, operation, principal_of, runtime_of, whoami_operation

NAMESPACE = "urn:gridcredit:directory:1"
SERVICE_NAME = "Directory"

Required = {"min_occurs": 1, "nillable": False}


class HostInfo(ComplexModel):
    """A host as listed: its auctioneer's last registration (rates and prices in credits per second;
    ``price`` = Σ rates / capacity per CPU, rounded down to a micro-credit) and the directory's own
    fields: who owns the id, when it was first registered, last renewed, and until when it is listed."""
    __namespace__ = NAMESPACE
    _type_info = [("host_id", Unicode(**Required)), ("auctioneer_url", Unicode(**Required)),
                  ("capacity_cpus", Long(**Required)), ("total_rate", Decimal(**Required)),
                  ("price", Decimal(**Required)), ("hour_average_price", Decimal(**Required)),
                  ("live_bids", Long(**Required)), ("interval_s", Long(**Required)), ("ttl_s", Long(**Required)),
                  ("registrant_dn", Unicode(**Required)), ("registered_us", Long(**Required)),
                  ("updated_us", Long(**Required)), ("expires_us", Long(**Required)),
                  ("reserve_price", Decimal(**Required))]


def host_info(entry: HostEntry) -> HostInfo:
    return HostInfo(host_id=entry.host_id, auctioneer_url=entry.auctioneer_url, capacity_cpus=entry.capacity_cpus,
                    total_rate=rate_to_decimal(entry.total_rate_ucps), price=rate_to_decimal(entry.price_ucps),
                    hour_average_price=rate_to_decimal(entry.hour_average_price_ucps), live_bids=entry.live_bids,
                    interval_s=entry.interval_s, ttl_s=entry.ttl_s, registrant_dn=entry.registrant_dn,
                    registered_us=entry.registered_us, updated_us=entry.updated_us, expires_us=entry.expires_us,
                    reserve_price=rate_to_decimal(entry.reserve_price_ucps))


def _present(value, name: str):
    if value is None:
        raise DomainError(f"{name} is missing", INVALID_ARGUMENT)
    return value


class DirectoryService(GridcreditService):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("directory", authorize=lambda ctx: policy.authorize_anyone("WhoAmI"))

    @operation(Unicode(**Required), Unicode(**Required), Long(**Required), Decimal(**Required), Decimal(**Required),
               Long(**Required), Long(**Required), Long(**Required), Decimal(min_occurs=0), _returns=HostInfo,
               _operation_name="Register")
    def register(ctx, host_id, auctioneer_url, capacity_cpus, total_rate, hour_average_price, live_bids, interval_s,
                 ttl_s, reserve_price):
        directory = runtime_of(ctx).directory
        principal = principal_of(ctx)
        registration = Registration(
            host_id=_present(host_id, "host_id"), auctioneer_url=_present(auctioneer_url, "auctioneer_url"),
            capacity_cpus=_present(capacity_cpus, "capacity_cpus"),
            total_rate_ucps=rate_from_decimal(_present(total_rate, "total_rate"), "the total rate"),
            hour_average_price_ucps=rate_from_decimal(_present(hour_average_price, "hour_average_price"),
                                                      "the hour's average price"),
            live_bids=_present(live_bids, "live_bids"), interval_s=_present(interval_s, "interval_s"),
            ttl_s=_present(ttl_s, "ttl_s"),
            reserve_price_ucps=0 if reserve_price is None else rate_from_decimal(reserve_price, "the reserve price"))
        registration.check(ttl_s_max=directory.ttl_s_max)
        # who may register this URL at all, before the store is read (a new id reads every id: a caller who may
        # not must not cost that)
        policy.authorize_registrant(directory.policy, principal, auctioneer_url=registration.auctioneer_url)

        def authorize(owner_dn):
            policy.authorize_register(directory.policy, principal, host_id=registration.host_id,
                                      auctioneer_url=registration.auctioneer_url, owner_dn=owner_dn)

        entry = directory.hosts.register(registration, registrant_dn=principal.dn, clock=now_us, authorize=authorize)
        return host_info(entry)

    @operation(_returns=Array(HostInfo), _operation_name="ListHosts")
    def list_hosts(ctx):
        policy.authorize_anyone("ListHosts")
        return [host_info(entry) for entry in runtime_of(ctx).directory.hosts.listed(now_us=now_us())]

    @operation(Unicode(**Required), _returns=HostInfo, _operation_name="GetHostInfo")
    def get_host_info(ctx, host_id):
        policy.authorize_anyone("GetHostInfo")
        check_host_id(host_id)
        return host_info(runtime_of(ctx).directory.hosts.entry(host_id, now_us=now_us()))

    @operation(Unicode(**Required), _returns=Boolean(**Required), _operation_name="RemoveHost")
    def remove_host(ctx, host_id):
        directory = runtime_of(ctx).directory
        policy.authorize_remove(directory.policy, principal_of(ctx))
        check_host_id(host_id)
        return directory.hosts.remove(host_id)


SERVICES = [DirectoryService]
