"""What every service shares: the caller's identity as the host verified it, and ``WhoAmI``.

A spyne method reads the verified principal with ``principal_of(ctx)``; the service host put it
into the WSGI environment after WS-Security verification, so no service parses headers itself.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone

from spyne import Boolean, ComplexModel, DateTime, Fault, ServiceBase, Unicode, rpc

from gridcredit.errors import DomainError, StoreError
from gridcredit.soapfault import fault_for

log = logging.getLogger("gridcredit.services")


class _OwnFaults(logging.Filter):
    """spyne logs every Server fault with a stack trace (logger ``spyne.application``, ERROR); the
    faults our services raise were logged already in at most one line (``GridcreditService``), so
    spyne's record of them is dropped — a failure of our code (not a Fault) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record.msg, "gridcredit_logged", False)


logging.getLogger("spyne.application").addFilter(_OwnFaults())

COMMON_NS = "urn:gridcredit:common:1"
PRINCIPAL_ENVIRON_KEY = "gridcredit.principal"


class Identity(ComplexModel):
    """Who the service believes the caller is."""

    __namespace__ = COMMON_NS
    _type_info = [
        ("dn", Unicode(min_occurs=1, nillable=False)),          # end-entity subject: the identity
        ("signer_dn", Unicode(min_occurs=1, nillable=False)),   # the certificate that signed (a proxy's own DN)
        ("proxy", Boolean(min_occurs=1, nillable=False)),
        ("limited", Boolean(min_occurs=1, nillable=False)),
        ("credential_expires", DateTime(min_occurs=1, nillable=False)),
        ("service", Unicode(min_occurs=1, nillable=False)),
        ("server_time", DateTime(min_occurs=1, nillable=False)),
    ]


def principal_of(ctx):
    """The verified caller of the current request (``security.principal.Principal``, as its
    certificate chain proves it; a service's policy adds what its configuration says of it)."""
    principal = ctx.transport.req_env.get(PRINCIPAL_ENVIRON_KEY)
    if principal is None:  # only the host's verification stage sets it; reaching here without it is a bug
        raise RuntimeError("request reached a service without a verified principal")
    return principal


def operation(*params, _operation_name: str, **options):
    """spyne's ``@rpc`` for the SOAP operation ``_operation_name``, whatever the Python method is
    called: its request wrapper is ``<name>``, its response wrapper ``<name>Response`` and the
    result inside it ``<name>Result`` (spyne names the last two after the method, e.g.
    ``get_balanceResponse``, and stub generators name classes and methods after them)."""
    return rpc(*params, _operation_name=_operation_name, _out_message_name=f"{_operation_name}Response",
               _out_variable_name=f"{_operation_name}Result", **options)


def whoami_operation(service_name: str, authorize: Callable[[object], None] | None = None):
    """The ``WhoAmI`` operation, the same on every service; ``authorize(ctx)``, if given, is the
    service's policy deciding it (it refuses nobody the host let through, but every operation of a
    service with a policy module reaches it)."""

    @operation(_returns=Identity, _body_style="wrapped", _operation_name="WhoAmI")
    def whoami(ctx):
        if authorize is not None:
            authorize(ctx)
        principal = principal_of(ctx)
        return Identity(dn=principal.dn, signer_dn=principal.signer_dn, proxy=principal.is_proxy,
                        limited=principal.limited, credential_expires=principal.not_after,
                        service=service_name, server_time=datetime.now(timezone.utc))

    return whoami


# ---------------------------------------------------------------------------------------------
# What every operation shares: the runtime of this worker, and the one table that turns refusals
# into SOAP faults. (Who may call what is each service's ``policy.py``.)

RUNTIME_ENVIRON_KEY = "gridcredit.runtime"


def runtime_of(ctx):
    """This worker's ``gridcredit.runtime.Runtime`` (configuration, store, bank…)."""
    return ctx.transport.req_env[RUNTIME_ENVIRON_KEY]


class GridcreditService(ServiceBase):
    """Base of our spyne services: refusals become client faults with their reason code."""

    @classmethod
    def call_wrapper(cls, ctx, args=None):
        try:
            return super().call_wrapper(ctx, args)
        except (DomainError, StoreError) as error:   # refusals, and the store failing: the one table (soapfault.py)
            spec = fault_for(error)
            if spec.log_level >= logging.ERROR:     # the store failed: the details stay in the log
                log.error("store failure in %s: %s", ctx.method_name, error)
            else:                                   # a refusal, or the store saying when to retry
                log.debug("%s not applied: %s", ctx.method_name, error)
            fault = Fault(faultcode=spec.code, faultstring=spec.message)
        fault.gridcredit_logged = True       # (see _OwnFaults)
        # Raised outside the handlers, so the fault chains no exception: a chained one keeps the
        # failed operation's frames alive (spyne's context holds the fault in a cycle), and with
        # them an open embedded-store cursor whose stale snapshot makes every later write of this
        # thread fail with "database is locked".
        raise fault
