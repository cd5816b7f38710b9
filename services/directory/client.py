"""The typed directory client: its SOAP operations as methods, rates and prices as integer µcr/s.

    directory = DirectoryClient("https://directory.example.org:8443", credential=load_credential(),
                                trust_dir=trust_directory())
    directory.register("host-a", auctioneer_url="https://host-a.example.org:8443", capacity_cpus=2,
                       total_rate_ucps=7_000_000, hour_average_price_ucps=1_200_000, live_bids=3,
                       interval_s=10, ttl_s=60)             # the auctioneer's heartbeat (signed as its host)
    for host in directory.hosts():                          # HostEntry: every registration not expired
        host.host_id, host.capacity_cpus, host.price_ucps, host.hour_average_price_ucps
    directory.host("host-a")                                # one (RemoteFault UnknownHost when none)
    directory.remove("host-a")                              # administrators

Retries follow the one rule of :class:`gridcredit.client.ServiceClient`. Reading changes nothing; a
Register sets the host's state to what it carries, so sending it again is harmless (``ONCE_PER_KEY``:
the host id is its key), and so is a RemoveHost (a host removed twice is removed once).
The wire's decimals are converted here (types.py): Python code sees integers only.
"""
from __future__ import annotations

from gridcredit.client import Effect, InvalidRequest, OutcomeUnknown, ServiceClient
from gridcredit.errors import DomainError
from gridcredit.wiretypes import array_items

from .types import HostEntry, Registration, rate_from_decimal, rate_to_decimal


def _entry(info) -> HostEntry:
    return HostEntry(host_id=info.host_id, auctioneer_url=info.auctioneer_url, capacity_cpus=info.capacity_cpus,
                     total_rate_ucps=rate_from_decimal(info.total_rate), price_ucps=rate_from_decimal(info.price),
                     hour_average_price_ucps=rate_from_decimal(info.hour_average_price), live_bids=info.live_bids,
                     interval_s=info.interval_s, ttl_s=info.ttl_s, registrant_dn=info.registrant_dn,
                     registered_us=info.registered_us, updated_us=info.updated_us, expires_us=info.expires_us,
                     reserve_price_ucps=rate_from_decimal(info.reserve_price))


class DirectoryClient(ServiceClient):
    """The directory's SOAP operations as typed methods (see the module docstring for retries)."""

    SERVICE = "directory"

    def register(self, host_id: str, *, auctioneer_url: str, capacity_cpus: int, total_rate_ucps: int,
                 hour_average_price_ucps: int, live_bids: int, interval_s: int, ttl_s: int,
                 reserve_price_ucps: int = 0) -> HostEntry:
        """Register (or renew) ``host_id``: listed for ``ttl_s`` from now with these figures. Signed as the
        auctioneer's host (a host certificate naming the URL's host); only the identity that registered the
        id first may register it again."""
        registration = Registration(host_id, auctioneer_url, capacity_cpus, total_rate_ucps, hour_average_price_ucps,
                                    live_bids, interval_s, ttl_s, reserve_price_ucps)
        try:
            registration.check()
        except DomainError as error:
            raise InvalidRequest(str(error)) from None
        answer = self.invoke("Register", {
            "host_id": host_id, "auctioneer_url": auctioneer_url, "capacity_cpus": capacity_cpus,
            "total_rate": rate_to_decimal(total_rate_ucps), "hour_average_price": rate_to_decimal(hour_average_price_ucps),
            "live_bids": live_bids, "interval_s": interval_s, "ttl_s": ttl_s,
            "reserve_price": rate_to_decimal(reserve_price_ucps)},
            effect=Effect.ONCE_PER_KEY)
        return _entry(answer)

    def hosts(self) -> list[HostEntry]:
        """Every host registered and not expired, by host id."""
        return [_entry(info) for info in array_items(self.invoke("ListHosts"), "HostInfo")]

    def host(self, host_id: str) -> HostEntry:
        return _entry(self.invoke("GetHostInfo", {"host_id": host_id}))

    def remove(self, host_id: str) -> bool:
        """Remove the host and free its id (the directory's administrators); whether it was there."""
        return bool(self.invoke("RemoveHost", {"host_id": host_id}, effect=Effect.ONCE_PER_KEY))


__all__ = ["DirectoryClient", "HostEntry", "OutcomeUnknown"]
