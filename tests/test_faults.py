"""The one table from errors to SOAP faults, and the one exception tree (gridcredit/errors.py)."""
from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil

import pytest

from gridcredit import errors
from gridcredit.errors import (CertificateError, ConflictError, DomainError, GridcreditError, ProtocolError, QueryError,
                               SecurityError, StoreError, StoreUnavailable)
from gridcredit.security.wssec import SOAP11_NS, WSSE_NS
from gridcredit.soapfault import SERVER_FAILED, STORE_FAILED, fault_for


@pytest.mark.parametrize("error, namespace, code, message", [
    (SecurityError("the signature does not verify", "FailedCheck"), WSSE_NS, "FailedCheck",
     "the signature does not verify"),
    (CertificateError("the chain ends at an unknown CA"), WSSE_NS, "InvalidSecurityToken",
     "the chain ends at an unknown CA"),
    (ProtocolError("the Body holds two operations"), SOAP11_NS, "Client", "the Body holds two operations"),
    (ProtocolError("header not understood", code="MustUnderstand"), SOAP11_NS, "MustUnderstand",
     "header not understood"),
    (DomainError("the account has too little", "InsufficientFunds"), SOAP11_NS, "Client.InsufficientFunds",
     "the account has too little"),
    (QueryError("the expression nests too deep"), SOAP11_NS, "Client.InvalidQuery", "the expression nests too deep"),
    (StoreUnavailable("BaseX is down; retry in a minute"), SOAP11_NS, "Server.StoreUnavailable",
     "BaseX is down; retry in a minute"),
    (ConflictError("lost a race on /bank/accounts/a"), SOAP11_NS, "Server.StoreUnavailable", STORE_FAILED),
    (StoreError("disk I/O error at /var/lib/gridcredit"), SOAP11_NS, "Server.StoreUnavailable", STORE_FAILED),
    (KeyError("a bug"), SOAP11_NS, "Server", SERVER_FAILED),
])
def test_the_table_maps_each_error_to_its_fault(error, namespace, code, message):
    spec = fault_for(error)
    assert (spec.namespace, spec.code, spec.message) == (namespace, code, message)


def test_our_failures_say_nothing_of_their_details_and_are_logged_loudly():
    for error in (StoreError("/var/lib/gridcredit/store.sqlite: disk I/O error"), RuntimeError("secret path")):
        spec = fault_for(error)
        assert str(error) not in spec.message and spec.log_level == logging.ERROR
    assert fault_for(RuntimeError("x")).traceback and not fault_for(StoreError("x")).traceback
    assert fault_for(DomainError("no", "Refused")).log_level == logging.DEBUG   # a refusal is no failure of ours


PACKAGES = ("gridcredit", "gridcredit.security", "gridcredit.xmlstore", "gridcredit.services", "gridcredit.server")


def our_modules():
    """Every module of the package (its folders are mapped one by one: setup.py's package_dir)."""
    seen = set()
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            if info.name not in seen:
                seen.add(info.name)
                yield importlib.import_module(info.name)


def test_every_public_exception_class_is_in_the_drawn_tree():
    """A new error class joins the tree (and its docstring's drawing) — or stays private to one module."""
    drawing = errors.__doc__
    outside = []
    for module in our_modules():
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, BaseException):
                continue
            private = name.startswith("_") or any(part.startswith("_") for part in module.__name__.split("."))
            if private:
                continue
            if not issubclass(cls, GridcreditError) or f" {name} " not in drawing:
                outside.append(f"{module.__name__}.{name}")
    assert outside == []
