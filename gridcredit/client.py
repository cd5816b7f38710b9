"""The client library: signed SOAP calls to a gridcredit host, with zeep and our WS-Security.

zeep's own WS-Security verifier is unsafe (PITFALLS): our ``Signer``/``Verifier`` plug in
through zeep's wsse interface (``apply``/``verify``). Every response must be signed by a host
our trust directory accepts and must confirm the signature of the request it answers.

:class:`ServiceClient` is the base of every typed client (``BankClient``, ``LutsClient``):

* **The WSDL is the checked-in file** ``wsdl/<service>.wsdl``, parsed once per process and shared
  by every client of that service, whatever credential it signs as (``service_description``);
  nothing is fetched from the server, so a client is made without a round trip.
* **It signs as one credential**; ``as_credential(other)`` is the same client signing as
  ``other``, sharing the parsed WSDL and the response verifier (its trust store and replay cache).
* **One retry rule** (``invoke``). An attempt that ends without any answer from the service (the
  connection failed or was reset, the reply timed out or was cut short, a gateway answered 5xx
  without SOAP, or the service's own ``StoreUnavailable`` "not applied, retry later") is sent
  again, identical, at most ``retries`` more times with exponential backoff — *if* repeating it
  is safe, as the call declares (:class:`Effect`): a query (``NONE``), or a change the service
  applies once per key (``ONCE_PER_KEY``: a client request id, the LUTS's record ids). A change
  without a key (``UNKEYED``) is sent again only while no attempt can have reached the service
  (the connection was never made). Refusals (:class:`RemoteFault`) and replies that fail
  verification (:class:`SecurityError`) are answers: never retried. When a change may have
  reached the service and no attempt was answered, :class:`OutcomeUnknown` says so (with the
  request id to repeat it under, when there is one); otherwise the last error is raised
  ("cannot reach …").
* **A host our trust directory does not accept is an answer**, not an outage: its TLS certificate
  failing verification (an unknown CA, a name that is not the URL's) is raised at once as
  :class:`~gridcredit.errors.CertificateError` naming the trust directory and how to choose
  another (``--trust``, ``X509_CERT_DIR``), never retried.

Exceptions raised here (all :class:`GridcreditError`)::

    GridcreditError                 "cannot reach …" after the last attempt
    ├── RemoteFault                 the service refused (``.code``: InsufficientFunds, NotAuthorized, …)
    ├── SecurityError               the answer failed verification (not retried)
    │   └── CertificateError        the host's TLS certificate is not trusted (not retried)
    └── ClientError
        ├── InvalidRequest          refused here, before sending (a bad argument, a naive datetime…)
        └── OutcomeUnknown          no answer to a change that may have arrived; ``.request_id``
"""
from __future__ import annotations

import copy
import enum
import importlib.util
import ipaddress
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
import zeep
import zeep.exceptions
import zeep.wsdl
from cryptography import x509
from lxml import etree

from .errors import CertificateError, GridcreditError, RemoteFault, SecurityError
from .security.pki import proxy_info
from .security.wssec import SOAP11_NS, WSSE_NS, MemoryReplayCache, Signer, Verifier, VerifyPolicy

log = logging.getLogger("gridcredit.client")


def _wsdl_dir() -> Path:
    """The checked-in WSDLs (``gridcredit wsdl --out wsdl``): the repository's wsdl/, installed as the
    data package ``gridcredit.wsdl_documents`` (setup.py), so an installed client needs no checkout."""
    spec = importlib.util.find_spec("gridcredit.wsdl_documents")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "wsdl"


WSDL_DIR = _wsdl_dir()
TIMEOUT_S_DEFAULT = 30.0
RETRIES_DEFAULT = 3
RETRIES_MAX = 10
BACKOFF_S_DEFAULT = 0.25
BACKOFF_S_MAX = 5.0
RETRYABLE_HTTP_STATUSES = frozenset({502, 503, 504})
ZEEP_SETTINGS = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True,
                              xml_huge_tree=False)


class ClientError(GridcreditError):
    """Base of the errors a client raises itself."""


class InvalidRequest(ClientError):
    """A request refused before anything was sent."""


class OutcomeUnknown(ClientError):
    """No answer to a change that may have reached the service: it may or may not have applied it.

    With a ``request_id``, repeating the same operation under it is safe: the service answers
    with the original result if it applied it, and applies it now if it did not.
    """

    def __init__(self, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a service thinks the caller is (every service's ``WhoAmI``)."""

    dn: str                         # the end-entity DN in grid form
    signer_dn: str                  # the certificate that signed (a proxy's DN through a proxy)
    proxy: bool
    limited: bool
    credential_expires: datetime    # aware, UTC
    service: str
    server_time: datetime           # aware, UTC


class Effect(enum.Enum):
    """What a call does to the service, which decides whether an unanswered attempt is repeated."""

    NONE = "changes nothing"                       # a query: repeated
    ONCE_PER_KEY = "applied once per key"          # a request id or the records' own ids: repeated
    UNKEYED = "applied each time it arrives"       # repeated only if no attempt can have arrived


class WsseClientPlugin:
    """zeep's wsse interface: sign what leaves, verify what arrives (before zeep reads it)."""

    def __init__(self, signer: Signer, verifier: Verifier, *, host_name: str | None = None) -> None:
        self._signer = signer
        self._verifier = verifier
        self._host_name = host_name  # when set, responses must be signed by that host's certificate
        self._sent = threading.local()

    def apply(self, envelope, headers):
        self._signer.sign(envelope)
        value = envelope.findtext(".//{http://www.w3.org/2000/09/xmldsig#}SignatureValue")
        self._sent.signature_value = value
        return envelope, headers

    def verify(self, envelope):
        raw = etree.tostring(envelope)
        body = envelope.find(f"{{{SOAP11_NS}}}Body")
        fault = body.find(f"{{{SOAP11_NS}}}Fault") if body is not None else None
        expected = getattr(self._sent, "signature_value", None)
        if fault is not None and _is_security_fault(fault):
            # The host refused our request's security, so it verified no signature it could confirm;
            # such a fault must still be signed by the host, and it carries nothing to act upon.
            expected = None
        verified = self._verifier.verify(raw, expected_confirmation=expected)
        if self._host_name is not None and not signed_by_host(verified.signer, self._host_name):
            # Any certificate our CAs trust (a user's, a proxy) would otherwise pass as the host.
            raise SecurityError(f"the response is not signed by the host {self._host_name}", "FailedAuthentication")
        return envelope


def _is_security_fault(fault) -> bool:
    code = (fault.findtext("faultcode") or "").strip()
    prefix, _, _ = code.rpartition(":")
    return bool(prefix) and fault.nsmap.get(prefix) == WSSE_NS


def signed_by_host(certificate: x509.Certificate, host_name: str) -> bool:
    """Whether ``certificate`` is a host certificate naming ``host_name`` in its subjectAltName (DNS
    or IP, as TLS checks it; a CN is not enough, since a user's CN could read like a host name)."""
    if proxy_info(certificate) is not None:
        return False
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if x509.ExtendedKeyUsageOID.SERVER_AUTH not in usages:
            return False
    except x509.ExtensionNotFound:
        pass
    wanted = host_name.strip("[]").lower()
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if any(name.lower() == wanted for name in names.get_values_for_type(x509.DNSName)):
        return True
    try:
        address = ipaddress.ip_address(wanted)
    except ValueError:
        return False
    return address in names.get_values_for_type(x509.IPAddress)


def response_verifier(trust_dir: Path) -> Verifier:
    from .security.chain import TrustStore

    return Verifier(trust=TrustStore.from_directory(trust_dir), policy=VerifyPolicy(), replay_cache=MemoryReplayCache())


# ---------------------------------------------------------------------------------------------
# The checked-in WSDL, parsed once per process


def load_wsdl(path: Path) -> zeep.wsdl.Document:
    """Parse the WSDL file ``path`` (with our hardened settings; nothing is fetched)."""
    try:
        return zeep.wsdl.Document(str(path), zeep.Transport(), settings=ZEEP_SETTINGS)
    except FileNotFoundError:
        raise GridcreditError(f"the WSDL {path} is missing: gridcredit's clients read the WSDLs it ships "
                              "(wsdl/ of the source tree, the package gridcredit.wsdl_documents when installed); "
                              "reinstall gridcredit") from None
    except (etree.XMLSyntaxError, zeep.exceptions.Error) as error:
        raise GridcreditError(f"cannot read the WSDL {path}: {error}") from None


_descriptions: dict[Path, zeep.wsdl.Document] = {}
_descriptions_lock = threading.Lock()


def service_description(service: str, *, wsdl_dir: Path = WSDL_DIR) -> zeep.wsdl.Document:
    """The parsed ``wsdl/<service>.wsdl``, loaded on first use and shared by every client after."""
    path = Path(wsdl_dir) / f"{service}.wsdl"
    with _descriptions_lock:
        document = _descriptions.get(path)
        if document is None:
            document = _descriptions[path] = load_wsdl(path)
        return document


def forget_service_descriptions() -> None:
    """Parse the WSDLs again on next use (tests; a process that rewrote wsdl/)."""
    with _descriptions_lock:
        _descriptions.clear()


# ---------------------------------------------------------------------------------------------
# What counts as "no answer"


def _causes(error: BaseException):
    """``error`` and what it wraps: requests and urllib3 keep the cause in ``args[0]`` and ``reason``."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen or not isinstance(current, BaseException):
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args[:1]]


def tls_refusal(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The host's certificate failing our verification (unknown CA, wrong name, expired), if that is
    what ``error`` is: an answer from the host, not an outage."""
    return next((cause for cause in _causes(error) if isinstance(cause, ssl.SSLCertVerificationError)), None)


def no_answer(error: BaseException) -> bool:
    """Whether an attempt ended without any answer from the service (its outcome is unknown)."""
    if tls_refusal(error) is not None:
        return False  # the host answered with a certificate we do not trust: the same each time
    if isinstance(error, RemoteFault):
        # The service's own "not applied, retry later" (its store failed) is safe to repeat; every
        # other fault is a refusal, final.
        return error.code == "StoreUnavailable"
    if isinstance(error, SecurityError):
        return False  # a reply that failed verification
    if isinstance(error, requests.HTTPError):
        response = error.response
        return response is None or response.status_code >= 500
    if isinstance(error, requests.RequestException):  # refused, reset, timed out, TLS broken off
        return True
    if isinstance(error, zeep.exceptions.TransportError):
        # A reply that is not SOAP (our services answer everything in SOAP): an empty body, a gateway's page.
        return error.status_code in RETRYABLE_HTTP_STATUSES or error.status_code >= 500 or not error.content
    if isinstance(error, etree.XMLSyntaxError):  # a reply cut short
        return True
    return False


def never_arrived(error: BaseException) -> bool:
    """Whether the attempt certainly never reached the service: no connection was made (refused,
    unknown host, connect timeout). Anything later — a reset, a read timeout, a 502 — may have
    followed a request the service received and applied."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    if isinstance(error, requests.ConnectionError) and error.args:
        reason = error.args[0]
        reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
        return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
    return False


def _utc(moment: datetime) -> datetime:
    """An xs:dateTime as zeep reads it, as an aware UTC datetime (one without a zone is UTC)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no attempt was made"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# The base client


class ServiceClient:
    """One service of one host, signing as one credential, e.g.
    ``ServiceClient("https://localhost:8443", "bank", credential=…, trust_dir=…).call("WhoAmI")``.

    ``call`` makes one attempt; ``invoke`` applies the retry rule (the module docstring).
    Subclasses name their ``SERVICE`` and pass no ``service``.
    """

    SERVICE: str | None = None
    TIMEOUT_S_DEFAULT = TIMEOUT_S_DEFAULT

    def __init__(self, base_url: str, service: str | None = None, *, credential, trust_dir: Path | str,
                 timeout_s: float | None = None, retries: int = RETRIES_DEFAULT,
                 backoff_s: float = BACKOFF_S_DEFAULT, sleep: Callable[[float], None] = time.sleep,
                 wsdl_dir: Path = WSDL_DIR, trust_hint: str | None = None) -> None:
        service = service or self.SERVICE
        if not service:
            raise InvalidRequest("name the service (bank, luts, …)")
        timeout_s = self.TIMEOUT_S_DEFAULT if timeout_s is None else timeout_s
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= RETRIES_MAX:
            raise InvalidRequest(f"retries must be 0 to {RETRIES_MAX}, not {retries!r}")
        if not timeout_s > 0:
            raise InvalidRequest(f"timeout_s must be positive, not {timeout_s}")
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/{service}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.trust_dir = Path(trust_dir)
        self.trust_hint = trust_hint        # where trust_dir came from (--trust, X509_CERT_DIR, …), for messages
        self._sleep = sleep
        self._description = service_description(service, wsdl_dir=wsdl_dir)
        self._verifier = response_verifier(self.trust_dir)
        self._bind(credential)

    def _bind(self, credential) -> None:
        """Sign as ``credential``: a zeep client of the shared parsed WSDL, a session of its own."""
        session = requests.Session()
        session.verify = str(self.trust_dir)
        # Otherwise REQUESTS_CA_BUNDLE and friends silently replace our grid trust directory.
        session.trust_env = False
        transport = zeep.Transport(session=session, timeout=self.timeout_s, operation_timeout=self.timeout_s)
        self.credential = credential
        self._plugin = WsseClientPlugin(Signer(credential), self._verifier, host_name=urlsplit(self.url).hostname)
        self._zeep = zeep.Client(self._description, transport=transport, wsse=self._plugin, settings=ZEEP_SETTINGS)
        service = next(iter(self._description.services.values()))
        port = next(iter(service.ports.values()))
        self._proxy = self._zeep.create_service(port.binding.name, self.url)

    def as_credential(self, credential):
        """This client (same host, settings and parsed WSDL) signing as ``credential``."""
        other = copy.copy(self)
        other._bind(credential)
        return other

    def close(self) -> None:
        """Close this client's connections (its session's pool); a later call opens a new one."""
        self._zeep.transport.session.close()

    # -- one attempt -------------------------------------------------------------------------------
    def _attempt(self, operation: str, arguments: dict):
        """Send once; a SOAP fault becomes :class:`RemoteFault`, every other error is left as raised."""
        try:
            return getattr(self._proxy, operation)(**arguments)
        except zeep.exceptions.Fault as fault:
            code = None
            if fault.detail is not None:
                code = fault.detail.findtext("{urn:gridcredit:fault:1}code")
            raise RemoteFault(fault.code or "Server", fault.message or "", code) from None

    def call(self, operation: str, **arguments):
        """One attempt, no retry: the answer, or the error as a :class:`GridcreditError`."""
        try:
            return self._attempt(operation, arguments)
        except Exception as error:  # noqa: BLE001 — sorted into our errors; the rest propagates
            if isinstance(error, requests.RequestException) and tls_refusal(error) is None:
                raise GridcreditError(f"cannot reach {self.url}: {error}") from None
            raise self._answered(error, operation) from None

    def _host_not_trusted(self, refusal: ssl.SSLCertVerificationError) -> CertificateError:
        reason = refusal.verify_message or str(refusal)
        where = f" (from {self.trust_hint})" if self.trust_hint else ""
        return CertificateError(
            f"the host {self.base_url} presented a TLS certificate the trust directory {self.trust_dir}{where} does "
            f"not accept: {reason}; give the directory of the CA that issued the host's certificate with --trust DIR "
            "or X509_CERT_DIR=DIR (for a `gridcredit serve` with its development CA: <state_dir>/pki/certificates, "
            "as serve prints it), and a URL naming the host as its certificate does")

    def _answered(self, error: Exception, operation: str) -> Exception:
        """An error that is an answer (or a refusal here), as the GridcreditError the caller should see."""
        if isinstance(error, GridcreditError):
            return error
        refusal = tls_refusal(error)
        if refusal is not None:
            return self._host_not_trusted(refusal)
        if isinstance(error, zeep.exceptions.ValidationError):
            return InvalidRequest(f"{operation}: {error}")
        if isinstance(error, zeep.exceptions.TransportError):
            return GridcreditError(f"{self.url} answered {operation} with HTTP {error.status_code} and no SOAP message")
        if isinstance(error, zeep.exceptions.Error):
            return GridcreditError(f"{operation}: the reply from {self.url} cannot be read: {error}")
        return error

    def whoami(self) -> Identity:
        """A signed WhoAmI (a query): who this service thinks the caller is."""
        identity = self.invoke("WhoAmI")      # the common Identity type: xs:dateTime, not *_us
        return Identity(dn=identity.dn, signer_dn=identity.signer_dn, proxy=identity.proxy, limited=identity.limited,
                        credential_expires=_utc(identity.credential_expires), service=identity.service,
                        server_time=_utc(identity.server_time))

    # -- the retry rule ----------------------------------------------------------------------------
    def _backoff_s(self, attempt: int) -> float:
        return min(self.backoff_s * (2 ** attempt), BACKOFF_S_MAX) * random.uniform(0.5, 1.0)

    def invoke(self, operation: str, arguments: dict | None = None, *, effect: Effect = Effect.NONE,
               request_id: str | None = None):
        """Call ``operation`` until it answers, re-sending the identical ``arguments`` while that is
        safe for its ``effect`` (``request_id``: the key an ``ONCE_PER_KEY`` change carries)."""
        arguments = arguments or {}
        attempts = self.retries + 1
        may_have_arrived = False
        last: BaseException | None = None
        for attempt in range(attempts):
            if attempt:
                self._sleep(self._backoff_s(attempt - 1))
            try:
                answer = self._attempt(operation, arguments)
            except Exception as error:  # noqa: BLE001 — sorted by no_answer; the rest propagates
                if not no_answer(error):
                    raise self._answered(error, operation) from None
                last = error
                may_have_arrived = may_have_arrived or not never_arrived(error)
                # (no answer at all is raised, with the attempts and the last error: the caller says it once)
                log.debug("%s%s: no answer (attempt %d of %d): %s", operation,
                          f" {request_id}" if request_id else "", attempt + 1, attempts, _describe(error))
                if effect is Effect.UNKEYED and may_have_arrived:
                    break
                continue
            if last is not None:
                log.info("%s%s: answered at attempt %d of %d (before: %s)", operation,
                         f" {request_id}" if request_id else "", attempt + 1, attempts, _describe(last))
            return answer
        reason = _describe(last)
        if effect is not Effect.NONE and may_have_arrived:
            tried = f"after {attempt + 1} attempt(s) ({reason})"
            if request_id is not None:
                raise OutcomeUnknown(
                    f"{operation} request {request_id} got no answer from {self.url} {tried}; the {self.service} "
                    f"may or may not have applied it: repeat it with request id {request_id} to find out (it will "
                    "not be applied twice)", request_id)
            if effect is Effect.ONCE_PER_KEY:
                raise OutcomeUnknown(f"{operation} got no answer from {self.url} {tried}; the {self.service} may or "
                                     "may not have applied it: sending it again is safe (it is applied once)", None)
            raise OutcomeUnknown(f"{operation} got no answer from {self.url} {tried}; the {self.service} may or may "
                                 "not have applied it, and sending it again could apply it twice", None)
        if isinstance(last, GridcreditError):
            raise last
        hint = ""
        if any(isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause)
               for cause in _causes(last)) if last is not None else False:
            hint = f"; nothing listens at {self.base_url}: is `gridcredit serve` running, on that port?"
        raise GridcreditError(f"cannot reach {self.url} after {attempt + 1} attempt(s): {reason}{hint}")
