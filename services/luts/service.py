"""The SOAP face of the Luts service: thin operations over its core (see SPEC)."""
from __future__ import annotations

from spyne import ServiceBase

from ..common import whoami_operation

NAMESPACE = "urn:gridcredit:luts:1"
SERVICE_NAME = "Luts"


class LutsService(ServiceBase):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("luts")


SERVICES = [LutsService]
