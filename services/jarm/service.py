"""The SOAP face of the Jarm service: thin operations over its core (see SPEC)."""
from __future__ import annotations

from spyne import ServiceBase

from . import policy
from ..common import whoami_operation

NAMESPACE = "urn:gridcredit:jarm:1"
SERVICE_NAME = "Jarm"


class JarmService(ServiceBase):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("jarm", authorize=lambda ctx: policy.authorize_anyone("WhoAmI"))


SERVICES = [JarmService]
