"""What every service shares: the caller's identity as the host verified it, and ``WhoAmI``.

A spyne method reads the verified principal with ``principal_of(ctx)``; the service host put it
into the WSGI environment after WS-Security verification, so no service parses headers itself.
"""
from __future__ import annotations

from datetime import datetime, timezone

from spyne import Boolean, ComplexModel, DateTime, Unicode, rpc

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
    """The verified caller of the current request (``security.chain.Principal``)."""
    principal = ctx.transport.req_env.get(PRINCIPAL_ENVIRON_KEY)
    if principal is None:  # only the host's verification stage sets it; reaching here without it is a bug
        raise RuntimeError("request reached a service without a verified principal")
    return principal


def whoami_operation(service_name: str):
    """The ``WhoAmI`` operation, the same on every service."""

    @rpc(_returns=Identity, _body_style="wrapped", _operation_name="WhoAmI")
    def whoami(ctx):
        principal = principal_of(ctx)
        return Identity(dn=principal.dn, signer_dn=principal.signer_dn, proxy=principal.is_proxy,
                        limited=principal.limited, credential_expires=principal.not_after,
                        service=service_name, server_time=datetime.now(timezone.utc))

    return whoami
