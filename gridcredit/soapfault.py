"""SOAP 1.1 faults: the only shape in which the host reports a failure.

``fault_for(error)`` is the one table from errors to faults, used by the host (refusals before
an operation runs) and by the services (refusals of the operation):

    error (gridcredit/errors.py)    fault code                     message
    SecurityError                   wsse:<code>                    the error's (no secrets in it)
    ProtocolError                   soap:Client | MustUnderstand   the error's
    DomainError (RecordError…)      soap:Client.<code>             the error's
    QueryError                      soap:Client.InvalidQuery       the error's
    StoreUnavailable                soap:Server.StoreUnavailable   the error's (when to retry)
    StoreError                      soap:Server.StoreUnavailable   generic; details in the log
    anything else (a bug)           soap:Server                    generic; traceback in the log

Security refusals carry a ``wsse:`` fault code (WS-Security 1.1 §12); refused operations a
``soap:Client`` code (a ``Client.<reason>`` sub-code that programs branch on); our own failures
``soap:Server`` with a generic message (the details go to the server log).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from lxml import etree

from .errors import DomainError, ProtocolError, QueryError, SecurityError, StoreError, StoreUnavailable
from .security.wssec import SOAP11_NS, WSSE_NS

GRIDCREDIT_FAULT_NS = "urn:gridcredit:fault:1"
SERVER_FAILED = "the service failed while handling the request; the server log has the details"
STORE_FAILED = "the service's store failed; the request was not applied, retry later"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What goes back for an error: ``code`` in ``namespace`` (SOAP's or wsse's), ``message``,
    and how loudly the server logs it (``log_level``; ``traceback`` for our own failures)."""
    namespace: str
    code: str
    message: str
    log_level: int = logging.DEBUG
    traceback: bool = False

    @property
    def faultcode(self) -> str:
        return f"{'wsse' if self.namespace == WSSE_NS else 'soap'}:{self.code}"


def fault_for(error: BaseException) -> FaultSpec:
    """The one table from errors to SOAP faults (see the module's docstring); first match wins."""
    if isinstance(error, SecurityError):
        return FaultSpec(WSSE_NS, error.code, str(error))
    if isinstance(error, ProtocolError):
        return FaultSpec(SOAP11_NS, error.code, str(error))
    if isinstance(error, DomainError):
        return FaultSpec(SOAP11_NS, f"Client.{error.code}", str(error))
    if isinstance(error, QueryError):
        return FaultSpec(SOAP11_NS, "Client.InvalidQuery", str(error))
    if isinstance(error, StoreUnavailable):   # expected while BaseX is down: the store said so once
        return FaultSpec(SOAP11_NS, "Server.StoreUnavailable", str(error))
    if isinstance(error, StoreError):
        return FaultSpec(SOAP11_NS, "Server.StoreUnavailable", STORE_FAILED, log_level=logging.ERROR)
    return FaultSpec(SOAP11_NS, "Server", SERVER_FAILED, log_level=logging.ERROR, traceback=True)


def fault_envelope_for(spec: FaultSpec) -> etree._Element:
    return fault_envelope(spec.code, spec.message, code_namespace=spec.namespace)


def fault_envelope(code: str, message: str, *, code_namespace: str = SOAP11_NS, reason_code: str | None = None) -> etree._Element:
    """Build ``<soap:Envelope><soap:Header/><soap:Body><soap:Fault>…``.

    ``code`` is a local name in ``code_namespace`` (``Client``/``Server`` in SOAP's, or a wsse code).
    ``reason_code`` (e.g. ``InsufficientFunds``) goes into the detail for programs to branch on.
    """
    prefix = "wsse" if code_namespace == WSSE_NS else "soap"
    nsmap = {"soap": SOAP11_NS}
    if prefix == "wsse":
        nsmap["wsse"] = WSSE_NS
    envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap=nsmap)
    etree.SubElement(envelope, f"{{{SOAP11_NS}}}Header")
    body = etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP11_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"{prefix}:{code}"
    etree.SubElement(fault, "faultstring").text = message
    if reason_code:
        detail = etree.SubElement(fault, "detail")
        etree.SubElement(detail, f"{{{GRIDCREDIT_FAULT_NS}}}code", nsmap={"gc": GRIDCREDIT_FAULT_NS}).text = reason_code
    return envelope


def security_fault(code: str, message: str) -> etree._Element:
    return fault_envelope(code, message, code_namespace=WSSE_NS)


def read_fault(body: etree._Element) -> tuple[str, str, str | None] | None:
    """(faultcode, faultstring, reason code) of a Body holding a Fault, else None."""
    fault = body.find(f"{{{SOAP11_NS}}}Fault")
    if fault is None:
        return None
    return (fault.findtext("faultcode") or "").strip(), (fault.findtext("faultstring") or "").strip(), \
        fault.findtext(f"detail/{{{GRIDCREDIT_FAULT_NS}}}code")
