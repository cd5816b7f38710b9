"""The one exception tree of gridcredit.

    GridcreditError                 base of every expected operating error
    ├── ConfigError                 the configuration file or an override is wrong
    ├── ServeError                  gridcredit serve cannot listen: its port in use or not allowed (server/host_cli.py)
    ├── UsageError                  options a command cannot take together (gridcredit/cli_support.py; exit 2)
    ├── SecurityError               a message, certificate or credential is refused
    │   ├── CredentialError         our own credential is missing or unreadable
    │   └── CertificateError        a peer's certificate chain is refused (path validation)
    ├── ProtocolError               a verified request breaks SOAP's processing rules (host)
    ├── StoreError                  the XML store failed or refused an operation
    │   ├── ConflictError           a transaction lost a race; retrying is safe
    │   ├── QueryError              an XPath expression is invalid or exceeded its limits
    │   └── StoreUnavailable        the store's database (BaseX) is down or behind: retry later
    ├── DomainError                 a service operation is refused (unknown account, short funds…)
    │   ├── RecordError             a usage record is refused (services/luts/records.py)
    │   └── DurationError           a duration cannot be read (services/luts/durations.py)
    ├── RemoteFault                 a service answered a call with a SOAP fault (client side)
    ├── ClientError                 a call could not be made or its outcome is unknown (gridcredit/client.py)
    │   ├── InvalidRequest          the client refused to send a request (bad arguments)
    │   └── OutcomeUnknown          the request may or may not have been applied: retry with the same id
    ├── OutboxError                 an outbox cannot take or send an item (gridcredit/outbox.py)
    │   ├── OutboxFull              it holds as much as it may: send before adding more
    │   ├── OutboxBusy              another process is sending it
    │   ├── Unreadable              an item cannot be read at all (settled with the reason)
    │   └── SpoolError              the LUTS spool's own (services/luts/spool.py): SpoolFull, SpoolBusy
    │       ├── SpoolFull           (also an OutboxFull)
    │       └── SpoolBusy           (also an OutboxBusy)
    ├── SlurmError                  a Slurm command failed or timed out (services/jarm/slurm/accounting.py)
    │   ├── JobNotAccounted         slurmdbd has no final record of a job's run yet: ask again later
    │   └── SlurmOutputInvalid      a Slurm command printed what is refused (never guessed at)
    ├── JobUnreadable               scontrol cannot say what a job is (services/jarm/slurm/hooks.py)
    ├── HypervisorError             a libvirt call failed (services/auctioneer/hypervisor.py; .code libvirt's)
    │   ├── HypervisorTimeout       a libvirt call did not answer within its timeout
    │   ├── HypervisorUnavailable   no connection to libvirtd (down, refused, dropped): retried next pass
    │   ├── NoSuchVm                no VM of that name on the host
    │   └── InvalidVmRequest        a bad VM name, template or parameter: nothing was called
    ├── UnknownGuest                not a built-in test guest (services/auctioneer/guest.py)
    ├── WebError                    a web view page cannot be shown as asked (gridcredit/web.py; .status)
    └── DeliveryStopped             an outbox's receiver cannot take a batch now (sending ends, nothing lost)

Security refusals carry a ``wsse:`` fault code (``code``) and a message a person understands.
Every error becomes a SOAP fault in one table: ``gridcredit.soapfault.fault_for``.
Exceptions outside this tree are private to one module (a leading underscore) and never leave it.
"""
from __future__ import annotations


class GridcreditError(Exception):
    """Base of every expected error; the CLI prints ``TypeName: message`` and exits non-zero."""


class ConfigError(GridcreditError):
    pass


class SecurityError(GridcreditError):
    """A refusal on security grounds.

    ``code`` is the WS-Security 1.1 fault code (local name in the wsse namespace):
    InvalidSecurity, InvalidSecurityToken, FailedAuthentication, FailedCheck,
    SecurityTokenUnavailable, MessageExpired, UnsupportedAlgorithm.
    """

    def __init__(self, message: str, code: str = "InvalidSecurity") -> None:
        super().__init__(message)
        self.code = code


class CredentialError(SecurityError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="SecurityTokenUnavailable")


class CertificateError(SecurityError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="InvalidSecurityToken")


class StoreError(GridcreditError):
    pass


class ConflictError(StoreError):
    pass


class QueryError(StoreError):
    pass


class StoreUnavailable(StoreError):
    """An expected state, not a failure: the store's database (BaseX) is down or behind the journal,
    so writes are held back until it catches up, or a query cannot be answered now. Nothing was
    applied; the message says why and when to retry, in words meant for the person who sent the
    request (a service answers Server.StoreUnavailable, and logs no traceback)."""


class ProtocolError(GridcreditError):
    """A verified request that breaks SOAP's processing rules: ``code`` is a SOAP 1.1 fault code
    (``Client``, ``MustUnderstand``); nothing of the request has run."""

    def __init__(self, message: str, code: str = "Client") -> None:
        super().__init__(message)
        self.code = code


class DomainError(GridcreditError):
    """A refused service operation; ``code`` names the reason for clients (e.g. ``InsufficientFunds``)."""

    def __init__(self, message: str, code: str = "Refused") -> None:
        super().__init__(message)
        self.code = code


class RemoteFault(GridcreditError):
    """A SOAP fault received by a client: ``faultcode`` as sent (e.g. ``wsse:FailedCheck``), ``code`` the reason."""

    def __init__(self, faultcode: str, message: str, code: str | None = None) -> None:
        # faultcode "prefix:Client.InsufficientFunds" → code "InsufficientFunds"; "wsse:FailedCheck" → "FailedCheck"
        self.code = code or faultcode.split(":")[-1].split(".")[-1]
        super().__init__(f"{message} [{self.code}]")
        self.faultcode = faultcode
        self.text = message


def invariant(condition: bool, message: str) -> None:
    """Fail loudly when something that must always hold does not (unlike ``assert``, kept under -O)."""
    if not condition:
        raise AssertionError(f"invariant violated: {message}")
