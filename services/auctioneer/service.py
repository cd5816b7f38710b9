"""The SOAP face of the Auctioneer service: thin operations over its core (see SPEC)."""
from __future__ import annotations

from spyne import ServiceBase

from . import policy
from ..common import whoami_operation

NAMESPACE = "urn:gridcredit:auctioneer:1"
SERVICE_NAME = "Auctioneer"


class AuctioneerService(ServiceBase):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("auctioneer", authorize=lambda ctx: policy.authorize_anyone("WhoAmI"))


SERVICES = [AuctioneerService]
