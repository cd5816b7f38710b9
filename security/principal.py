"""Who calls: the one principal type, from the verified chain to every service's policy.

The host's WS-Security stage validates the caller's certificate chain (``chain.TrustStore``) and
gets a :class:`Principal` holding what the chain proves: the end-entity DN, the certificate that
signed, proxy or limited proxy, the earliest expiry, the hosts a host certificate names. A
service resolves it once per request into the same type with what the service's configuration
says of that DN — administrator, auditor, service identity (e.g. the Bank's
``policy.principal_for``) — and its policy decides every operation from that one value. The
flags are the resolving service's: a principal resolved by one service is not handed to another.

Made directly (tests, a service's own background work such as the Bank's expiry sweep), it
has a DN and flags and no chain: ``signer_dn`` empty, ``not_after`` None.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request.

    ``dn``: grid one-line DN of the end-entity certificate (the caller's identity, the same for
    the user's certificate and all their proxies). ``signer_dn``: the DN of the leaf actually
    presented (a proxy's DN for proxies). ``not_after``: the earliest expiry on the path (UTC).
    ``chain_fingerprint``: SHA-256 hex over the DER digests of the presented chain.
    ``ca_dn``: the CA that issued the end-entity certificate. ``host_names``: the hosts the
    presented certificate was issued for — its dNSName subjectAltNames (lower case, wildcards left
    out) when it is an end-entity certificate whose extendedKeyUsage, if it has one, allows
    serverAuth or clientAuth; empty for users and for every proxy. A host identity is only this,
    never the text of a DN.

    ``is_administrator``, ``is_auditor``, ``is_service``: what the resolving service's
    configuration says of ``dn`` (all False as the chain proves it: nobody is anything by
    their certificate alone).
    """

    dn: str
    signer_dn: str = ""
    is_proxy: bool = False
    limited: bool = False
    not_after: dt.datetime | None = None
    chain_fingerprint: str = ""
    ca_dn: str = ""
    host_names: tuple[str, ...] = ()
    is_administrator: bool = False
    is_auditor: bool = False
    is_service: bool = False
