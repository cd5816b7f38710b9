"""The SOAP face of the Bank service: thin operations over its core (see SPEC)."""
from __future__ import annotations

from spyne import ServiceBase

from ..common import whoami_operation

NAMESPACE = "urn:gridcredit:bank:1"
SERVICE_NAME = "Bank"


class BankService(ServiceBase):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("bank")


SERVICES = [BankService]
