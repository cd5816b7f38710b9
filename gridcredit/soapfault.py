"""SOAP 1.1 faults: the only shape in which the host reports a failure.

Security refusals carry a ``wsse:`` fault code (WS-Security 1.1 §12); refused operations a
``soap:Client`` code with a sub-code in the detail; our own failures ``soap:Server`` with a
generic message (the details go to the server log).
"""
from __future__ import annotations

from lxml import etree

from .security.wssec import SOAP11_NS, WSSE_NS

GRIDCREDIT_FAULT_NS = "urn:gridcredit:fault:1"


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
