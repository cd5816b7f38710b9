"""The signed service host: one HTTPS server for /bank, /luts, /jarm and /auctioneer.

One request path, in this order:
    transport (method, path, size limit)  →  WS-Security verification of the raw bytes
    →  the service operation (spyne sees only a fresh envelope holding the verified Body,
       and the verified principal in its environment)  →  the response signed on the way out.
Every failure leaves as a signed SOAP fault, never an HTML page or a stack trace.
"""
from __future__ import annotations

import gc
import importlib
import io
import ipaddress
import logging
import os
import re
import select
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from lxml import etree
import spyne.const
from spyne import Application
from spyne.interface.wsdl import Wsdl11
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from gridcredit import metrics
from gridcredit.config import Config
from gridcredit.contract import HostFiles, Registration
from gridcredit.errors import ProtocolError, SecurityError
from gridcredit.https_server import HttpsServer, accept_untrusted_client_certificates, effective_backlog, peer_text
from gridcredit.security.wssec import SOAP11_NS, WSSE_NS, Signer, VerifiedMessage, Verifier, VerifyPolicy
from gridcredit.security.xmlparse import ParseLimits
from gridcredit.services.common import PRINCIPAL_ENVIRON_KEY, RUNTIME_ENVIRON_KEY
from gridcredit.soapfault import SERVER_FAILED, fault_envelope, fault_envelope_for, fault_for
from gridcredit.wsdl import finish as finish_wsdl

from . import registry
from .runtime import build_runtime, prepare_services
from .web import WebView

log = logging.getLogger("gridcredit.host")

# A worker told to stop (SIGTERM/SIGINT) is gone within this many seconds: cheroot's stop() waits
# for each request thread and, once its own timeout is spent, joins a busy one without a bound.
WORKER_STOP_GRACE_S = 15.0
# spyne logs every client fault with a stack trace; our one line per request says what happened.
logging.getLogger("spyne.application.client").setLevel(logging.CRITICAL)
# spyne runs a full gc.collect() after a request at most once a second: 15-50 ms during which
# every thread of the worker stands still (it was most of the bank's p99). Python's own
# generational collector still runs; run_worker freezes the objects built at start-up so that its
# full collections stay short.
spyne.const.MIN_GC_INTERVAL = float("inf")

XSD_NS = "http://www.w3.org/2001/XMLSchema"
SOAP_OVER_HTTP = "http://schemas.xmlsoap.org/soap/http"
WSDL_PLACEHOLDER_ADDRESS = "https://localhost:8443"
_SOAP_CONTENT_TYPE = "text/xml; charset=utf-8"
READ_CHUNK_BYTES = 1_048_576            # a request body is read in pieces of this size
# A registration body over its limit is read to its end and thrown away before the refusal goes
# out — a reporter like ARC's sends its whole body before it reads any answer, and would see only
# a broken connection — as long as it is at most this large and comes within this time; a larger
# or slower one gets the refusal and the connection closed at once.
REFUSED_BODY_READ_BYTES_MAX = 256 * 1_048_576
REFUSED_BODY_READ_S_MAX = 60.0
# Registration bodies larger than server.request_bytes_max (or chunked) handled at once by one
# worker process: reading a batch takes ~9 times its size in memory (measured: 63 MB → +541 MB).
# Another waits up to LARGE_BODY_WAIT_S, then is read, thrown away and answered 503 (send again later).
LARGE_BODIES_AT_ONCE = 2
LARGE_BODY_WAIT_S = 60.0


def build_application(name: str) -> Application:
    module = importlib.import_module(registry.service(name).soap_module)
    application = Application(module.SERVICES, tns=module.NAMESPACE, name=module.SERVICE_NAME,
                              in_protocol=Soap11(validator="lxml"), out_protocol=Soap11())
    application.transport = SOAP_OVER_HTTP  # spyne sets this only when a spyne server wraps the app
    return application


def wsdl_document(name: str, base_address: str = WSDL_PLACEHOLDER_ADDRESS, application: Application | None = None) -> bytes:
    """The WSDL of service ``name`` with its soap:address at ``base_address``/``name``."""
    document = Wsdl11((application or build_application(name)).interface)
    document.build_interface_document(f"{base_address.rstrip('/')}/{name}")
    root = etree.fromstring(document.get_interface_document())
    # spyne emits some schema members in hash order (it varies with PYTHONHASHSEED): sort them so
    # the document is the same on every run. Order inside an xs:schema carries no meaning.
    for schema in root.iter(f"{{{XSD_NS}}}schema"):
        imports = [child for child in schema if child.tag == f"{{{XSD_NS}}}import"]
        members = sorted((child for child in schema if child.tag != f"{{{XSD_NS}}}import"),
                         key=lambda child: (str(child.tag), child.get("name") or ""))
        schema[:] = imports + members
    root = finish_wsdl(root)
    # Pretty-printed so the checked-in copies under wsdl/ read well and diff cleanly.
    return etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8")


SOAP11_NEXT_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"
# Header blocks this host processes. WS-Addressing is not among them: a request that says its
# wsa: headers must be understood gets the MustUnderstand fault rather than being half-served.
UNDERSTOOD_HEADERS = frozenset({f"{{{WSSE_NS}}}Security"})


def check_processing_rules(verified: VerifiedMessage) -> None:
    """SOAP 1.1's rules for a verified request, before anything runs: every header block aimed at
    us (no actor, or actor "next") that must be understood is one we process (else the
    MustUnderstand fault), and the Body holds exactly one operation element and nothing else."""
    header = verified.envelope.find(f"{{{SOAP11_NS}}}Header")
    for block in header if header is not None else ():
        if not isinstance(block.tag, str) or block.tag in UNDERSTOOD_HEADERS:
            continue
        if block.get(f"{{{SOAP11_NS}}}actor") not in (None, SOAP11_NEXT_ACTOR):
            continue  # for another node on the path
        value = block.get(f"{{{SOAP11_NS}}}mustUnderstand")
        if value is None or value.strip() in ("0", "false"):
            continue
        if value.strip() not in ("1", "true"):
            raise ProtocolError(f"the header {block.tag} has mustUnderstand={value!r}; it must be 1, 0, true or false")
        raise ProtocolError(f"this service does not process the header {block.tag}, which the request says must "
                            "be understood; send it without mustUnderstand=\"1\", or leave it out", code="MustUnderstand")
    body = verified.body
    operations = [child for child in body if isinstance(child.tag, str)]
    if len(operations) != 1:
        raise ProtocolError(f"the SOAP Body must hold exactly one operation element; it holds {len(operations)}")
    if (body.text or "").strip() or (operations[0].tail or "").strip():
        raise ProtocolError("the SOAP Body holds text beside its operation element; send the operation element alone")


class _ClientStopped(Exception):
    """The client stopped sending its request (timed out mid-body, or closed the connection): an
    expected state, logged in the request's one line; ``status`` and ``answer`` go back to it."""

    def __init__(self, message: str, status: str, answer: str) -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer


def _peer(environ) -> str:
    return peer_text(environ.get("REMOTE_ADDR") or "?", environ.get("REMOTE_PORT") or "?")


@dataclass(frozen=True)
class _PlainAnswer:
    status: str
    body: str
    content_type: str = "text/plain; charset=utf-8"


class _BodyTooLarge(Exception):
    """A body over its limit: ``read_to_end`` says whether all of it was read (and thrown away)."""

    def __init__(self, message: str, read_to_end: bool) -> None:
        super().__init__(message)
        self.read_to_end = read_to_end


@dataclass
class _Endpoint:
    name: str
    application: Application
    wsgi: WsgiApplication
    operations: frozenset[str]          # its operations' element names (what /metrics may name)
    wsdl_template: bytes | None = None  # built once; its soap:address base is _WSDL_TEMPLATE_ADDRESS
    direct: Mapping[str, Callable] = field(default_factory=dict)   # see SignedSoapHost._call_direct


def _operations_of(application: Application) -> frozenset[str]:
    return frozenset(etree.QName(key).localname for key in application.interface.service_method_map)


def _direct_operations_of(application: Application) -> dict[str, Callable]:
    """What the application's service classes name in ``direct_operations`` (see SignedSoapHost._call_direct)."""
    found: dict[str, Callable] = {}
    for service in application.services:
        found.update(getattr(service, "direct_operations", None) or {})
    return found


# A request element with any of these goes through spyne, whose reading of them is its own
_NOT_PLAIN = etree.XPath("boolean(descendant-or-self::*/@* | .//comment() | .//processing-instruction())")


# One request's outcome as /metrics counts it (the log line says more)
OUTCOME_OK, OUTCOME_FAULT, OUTCOME_SECURITY, OUTCOME_ERROR, OUTCOME_STOPPED = "ok", "fault", "security", "error", "stopped"


def _requests_counter():
    return metrics.counter("gridcredit_requests_total", "Requests answered, by service, operation and outcome "
                           "(ok, fault: refused by the service, security: refused by WS-Security or TLS, "
                           "error: the service failed, stopped: the client stopped sending)",
                           ("service", "operation", "outcome"))


def _latency_histogram():
    return metrics.histogram("gridcredit_request_seconds", "Time from a request's arrival to its answer, by "
                             "service and operation", ("service", "operation"))


def _count_request(service: str, operation: str, outcome: str, elapsed_s: float) -> None:
    """Count an answered request: a metrics failure is logged, never turned into the request's failure."""
    try:
        _requests_counter().labels(service, operation, outcome).inc()
        _latency_histogram().labels(service, operation).observe(elapsed_s)
    except Exception:  # noqa: BLE001 — the answer is already made; the log says why it went uncounted
        log.exception("metrics: %s %s not counted", service, operation)


def _security_refusals_counter():
    return metrics.counter("gridcredit_security_refusals_total", "Requests refused by WS-Security, by fault code",
                           ("code",))


class SignedSoapHost:
    """The WSGI application. ``signer`` signs responses; ``verifier`` checks requests."""

    def __init__(self, *, signer: Signer, verifier: Verifier, request_bytes_max: int, runtime=None,
                 services: tuple[str, ...] | None = None, trust=None,
                 registrations: "Mapping[str, Registration | Callable]" = {},
                 metrics_access: metrics.Access | None = None, web=None) -> None:
        self._runtime = runtime
        self._web = web                         # server.web.WebView: GET /web/… for browsers (None: 404)
        self._metrics_access = metrics_access   # None: GET /metrics answers 404
        self._trust = trust
        # Plain HTTPS POST routes for reporters that do not speak SOAP (SGAS): authenticated by the
        # TLS client certificate instead of WS-Security; path → Registration (a bare handler takes
        # bodies up to request_bytes_max).
        self._registrations = {path: r if isinstance(r, Registration) else Registration(r, request_bytes_max)
                               for path, r in registrations.items()}
        self._large_bodies = threading.BoundedSemaphore(LARGE_BODIES_AT_ONCE)
        self._signer = signer
        self._verifier = verifier
        self._request_bytes_max = request_bytes_max
        self._endpoints: dict[str, _Endpoint] = {}
        for name in services if services is not None else registry.names():
            application = build_application(name)
            self._endpoints[name] = _Endpoint(name, application, WsgiApplication(application, max_content_length=request_bytes_max),
                                              _operations_of(application), direct=_direct_operations_of(application))
        self._wsdl_lock = threading.Lock()

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()

    # -- WSGI entry point ------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "") or "/"
        name = path.strip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.rstrip("/") in self._registrations:
            return self._registration(path.rstrip("/"), method, environ, start_response, started)
        if path == "/metrics" and self._metrics_access is not None:
            return self._metrics(method, environ, start_response)
        if self._web is not None and self._web.serves(path):
            return self._web(environ, start_response, lambda: self._tls_identity(environ))
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            known = ", ".join(f"/{n}" for n in self._endpoints)
            return self._reply(start_response, "404 Not Found",
                               fault_envelope("Client", f"there is no service at {path}; the services are {known}"))
        if method == "GET" and environ.get("QUERY_STRING", "").lower() in ("wsdl", "wsdl="):
            return self._wsdl(endpoint, environ, start_response)
        if method != "POST":
            return self._reply(start_response, "405 Method Not Allowed",
                               fault_envelope("Client", f"{method} is not a SOAP request: POST a SOAP 1.1 envelope, or GET {path}?wsdl"),
                               extra_headers=[("Allow", "GET, POST")])
        outcome = "fault"
        counted = OUTCOME_FAULT
        principal_dn = "-"
        operation = "-"
        try:
            raw = self._read_body(environ)
            verified = self._verifier.verify(raw)
            principal_dn = getattr(verified.principal, "dn", "-")
            operation = etree.QName(verified.body[0]).localname if len(verified.body) else "-"
            check_processing_rules(verified)
            answered = self._call_direct(endpoint, operation, verified) if operation in endpoint.direct else None
            status, envelope = answered or self._call_service(endpoint, environ, verified)
            outcome = "ok" if status.startswith("200") else "fault"
            counted = OUTCOME_OK if status.startswith("200") else OUTCOME_FAULT
            return self._reply(start_response, status, envelope, confirm=verified.signature_value)
        except _ClientStopped as stopped:
            outcome, counted = str(stopped), OUTCOME_STOPPED
            return self._reply(start_response, stopped.status, fault_envelope("Client", stopped.answer),
                               extra_headers=[("Connection", "close")])
        except Exception as error:  # noqa: BLE001 — refusals and our own failures become faults by one table
            spec = fault_for(error)
            if spec.traceback:
                log.exception("internal error serving %s", path)
                outcome, counted = "internal error", OUTCOME_ERROR
            else:
                outcome = f"refused {spec.faultcode} ({error})"
                if spec.faultcode.startswith("wsse:"):
                    counted = OUTCOME_SECURITY
                    _security_refusals_counter().labels(spec.faultcode).inc()
            # A refusal of a verified request confirms its signature; a security refusal has none to confirm.
            confirm = verified.signature_value if isinstance(error, ProtocolError) else None
            return self._reply(start_response, "500 Internal Server Error", fault_envelope_for(spec), confirm=confirm)
        finally:
            elapsed = time.perf_counter() - started
            log.info("%s %s principal=%r outcome=%s %.1fms", name, operation, principal_dn, outcome, elapsed * 1000)
            # only the service's own operation names: a signed body may hold any element name
            known = operation if operation in endpoint.operations else "-"
            _count_request(name, known, counted, elapsed)

    # -- plain HTTPS registrations (TLS client certificate instead of WS-Security) ----------------
    def _registration(self, path: str, method: str, environ, start_response, started: float):
        """Every answer goes out after the whole body was read (a reporter that sends all before it
        reads sees the answer, not a broken connection), except for a client that stopped sending
        or a body beyond what is read to be refused (REFUSED_BODY_READ_*): answer, then close."""
        registration = self._registrations[path]
        principal, outcome, close = None, "-", False
        try:
            if method != "POST":
                answer = _PlainAnswer("405 Method Not Allowed", f"POST a document to {path}\n")
            else:
                principal = self._tls_principal(environ)
                try:
                    length = self._content_length(environ)
                    large = length is None or length > self._request_bytes_max
                    if principal is None:   # nothing of an unauthenticated body is kept
                        close = not self._discard_body(environ)
                        answer = registration.handler(b"", None)
                    elif large and not self._large_bodies.acquire(timeout=LARGE_BODY_WAIT_S):
                        close = not self._discard_body(environ)
                        answer = _PlainAnswer("503 Service Unavailable", "this server is reading other large "
                                                                         "batches; send this one again later\n")
                        outcome = f"503 Service Unavailable (more than {LARGE_BODIES_AT_ONCE} large bodies at once)"
                    else:
                        try:
                            data = self._read_body(environ, registration.bytes_max)
                            answer = registration.handler(data, principal)
                            del data
                        finally:
                            if large:
                                self._large_bodies.release()
                except _BodyTooLarge as too_large:
                    close = not too_large.read_to_end
                    answer = _PlainAnswer("413 Content Too Large", f"{too_large} ({registration.bytes_max_setting} "
                                                                   f"of this LUTS); send smaller batches\n")
                    outcome = f"413 Content Too Large ({too_large}{'' if close else '; read and thrown away'})"
                except SecurityError as error:      # a Content-Length that is not a number
                    answer, close = _PlainAnswer("400 Bad Request", f"{error}\n"), True
        except _ClientStopped as stopped:
            answer = _PlainAnswer(stopped.status, f"{stopped.answer}\n")
            outcome, close = str(stopped), True
        except Exception:  # noqa: BLE001 — one place turns our own failures into a 500
            log.exception("internal error serving %s", path)
            answer = _PlainAnswer("500 Internal Server Error", "the service failed; the server log has the details\n")
        if outcome == "-":
            outcome = answer.status
        elapsed = time.perf_counter() - started
        log.info("%s POST principal=%r outcome=%s %.1fms", path, getattr(principal, "dn", "-"), outcome, elapsed * 1000)
        _count_request(path, "POST", OUTCOME_OK if answer.status.startswith("2") else OUTCOME_FAULT, elapsed)
        body = answer.body.encode("utf-8")
        headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(body)))]
        if close:  # do not wait for the rest of its body
            headers.append(("Connection", "close"))
        start_response(answer.status, headers)
        return [body]

    # -- GET /metrics (Prometheus) -------------------------------------------------------------------
    def _metrics(self, method: str, environ, start_response):
        address = environ.get("REMOTE_ADDR", "")
        if method != "GET":
            answer = _PlainAnswer("405 Method Not Allowed", "GET /metrics\n")
        elif not self._metrics_access.allows(address, lambda: getattr(self._tls_principal(environ), "dn", None)):
            answer = _PlainAnswer("403 Forbidden", "metrics are for the addresses and certificate DNs in "
                                                   "server.metrics_addresses and server.metrics_dns\n")
        else:
            body = metrics.exposition(self._runtime.gauges() if self._runtime is not None else ())
            start_response("200 OK", [("Content-Type", metrics.CONTENT_TYPE), ("Content-Length", str(len(body)))])
            return [body]
        log.info("/metrics %s from %s outcome=%s", method, address, answer.status)
        body = answer.body.encode("utf-8")
        start_response(answer.status, [("Content-Type", answer.content_type), ("Content-Length", str(len(body)))])
        return [body]

    def _tls_principal(self, environ):
        """The verified holder of the TLS client certificate, or None (no certificate, or not trusted)."""
        return self._tls_identity(environ)[0]

    def _tls_identity(self, environ):
        """(principal, refusal): the verified holder of the TLS client certificate, or None and why its
        certificate was refused (None: no certificate presented). The certificate is validated here
        whatever TLS said: an untrusted one completes the handshake (tls_context), and a resumed TLS
        session carries no verdict."""
        pem = environ.get("SSL_CLIENT_CERT")
        if not pem or self._trust is None:
            return None, None
        from cryptography import x509

        from gridcredit.security.pki import grid_dn

        tls_verdict = environ.get("SSL_CLIENT_VERIFY", "")
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode("ascii") if isinstance(pem, str) else pem)
            if tls_verdict.startswith("FAILED:"):
                raise SecurityError(f"{grid_dn(certificate.subject)}: {tls_verdict[len('FAILED:'):]}")
            return self._trust.validate([certificate]), None  # our own checks too: CRLs, key usage, validity
        except (SecurityError, ValueError) as error:
            log.warning("TLS client certificate refused: %s", error)
            return None, str(error)

    # -- stages ------------------------------------------------------------------------------------
    def _read_body(self, environ, bytes_max: int | None = None) -> bytes:
        """The request body (at most ``bytes_max``, default ``request_bytes_max``), read in pieces of
        ``READ_CHUNK_BYTES`` into one buffer; ``_ClientStopped`` when the client stops sending it (a
        timeout, or it went away). Over the limit: SecurityError for a SOAP request (nothing read;
        the server reads the rest before answering), and for a registration (``bytes_max`` given)
        ``_BodyTooLarge`` once the body was read to its end and thrown away (``_discard_body``)."""
        registration = bytes_max is not None
        bytes_max = self._request_bytes_max if bytes_max is None else bytes_max
        kept = io.BytesIO()
        length = self._content_length(environ)
        if length is not None and length > bytes_max:
            message = f"the message is {length:,} bytes; at most {bytes_max:,} are accepted"
            if not registration:
                raise SecurityError(message, "InvalidSecurity")
            raise _BodyTooLarge(message, read_to_end=self._discard_body(environ))
        got = self._pump(environ, length, bytes_max + 1, kept.write)   # chunked: one byte past the limit
        if got > bytes_max:
            message = f"the message is larger than {bytes_max:,} bytes"
            if not registration:
                raise SecurityError(message, "InvalidSecurity")
            raise _BodyTooLarge(message, read_to_end=self._discard_body(environ))
        return kept.getvalue()          # the buffer itself, not a copy

    def _discard_body(self, environ) -> bool:
        """Read the rest of the body and throw it away, so that a client that sends its whole body
        before it reads sees our answer; False when it is larger than REFUSED_BODY_READ_BYTES_MAX
        or takes longer than REFUSED_BODY_READ_S_MAX (the answer then closes the connection)."""
        length = self._content_length(environ)
        if length is not None and length > REFUSED_BODY_READ_BYTES_MAX:
            return False
        deadline = time.monotonic() + REFUSED_BODY_READ_S_MAX

        def throw_away(chunk: bytes) -> None:
            if time.monotonic() > deadline:
                raise _BodyTooLarge("too slow", read_to_end=False)
        try:
            got = self._pump(environ, length, REFUSED_BODY_READ_BYTES_MAX + 1, throw_away)
        except _BodyTooLarge:
            return False
        return got <= REFUSED_BODY_READ_BYTES_MAX

    @staticmethod
    def _content_length(environ) -> int | None:
        length_text = environ.get("CONTENT_LENGTH") or ""
        if not length_text:
            return None
        try:
            return int(length_text)
        except ValueError:
            raise SecurityError("the Content-Length header is not a number", "InvalidSecurity") from None

    def _pump(self, environ, length: int | None, chunked_max: int, sink: Callable[[bytes], None]) -> int:
        """Read the body (``length`` bytes, or — chunked — up to ``chunked_max``) into ``sink``, in
        pieces of READ_CHUNK_BYTES; the bytes read. ``_ClientStopped`` when the client stops sending."""
        stream = environ["wsgi.input"]
        started = time.monotonic()
        wanted = length if length is not None else chunked_max
        got = 0
        try:
            while got < wanted:
                chunk = stream.read(min(READ_CHUNK_BYTES, wanted - got))
                if not chunk:
                    break
                got += len(chunk)
                sink(chunk)
        except TimeoutError:
            announced = f"{length:,} bytes announced" if length is not None else "chunked"
            raise _ClientStopped(f"client {_peer(environ)} timed out sending the request body ({announced}; "
                                 f"nothing more came for {time.monotonic() - started:.0f} s)", "408 Request Timeout",
                                 "the request body did not arrive in time; send it without pausing") from None
        except (ConnectionError, ssl.SSLError) as error:
            raise _ClientStopped(f"client {_peer(environ)} closed the connection while sending the request body "
                                 f"({error.strerror or error})", "400 Bad Request", "the connection broke") from None
        if length is not None and got < length:
            raise _ClientStopped(f"client {_peer(environ)} closed the connection after {got:,} of "
                                 f"{length:,} bytes of the request body", "400 Bad Request",
                                 "the request body ended before its Content-Length")
        return got

    def _call_direct(self, endpoint: _Endpoint, operation: str, verified: VerifiedMessage
                     ) -> tuple[str, etree._Element] | None:
        """An operation its service reads from the verified Body itself (a spyne service class's
        ``direct_operations``: element name -> handler(request element, principal, runtime) -> (status,
        envelope as spyne would answer)) — for a large request, spyne's reading and answering cost more than
        the work. The element is checked against the service's schema first, as spyne checks every request;
        one the schema refuses, or one with attributes, comments or processing instructions, is left to spyne
        (None): the same answer as for any operation."""
        body = verified.body
        schema = endpoint.application.in_protocol.validation_schema
        if len(body) != 1 or schema is None:
            return None
        request = body[0]
        if request.tag != f"{{{endpoint.application.tns}}}{operation}" or _NOT_PLAIN(request) \
                or not schema.validate(request):
            return None
        return endpoint.direct[operation](request, verified.principal, self._runtime)

    def _call_service(self, endpoint: _Endpoint, environ, verified: VerifiedMessage) -> tuple[str, etree._Element]:
        # spyne reads the first Header/Body it finds and follows href/id: hand it only the verified Body.
        clean = (f'<soap:Envelope xmlns:soap="{SOAP11_NS}">'.encode() + etree.tostring(verified.body) + b"</soap:Envelope>")
        inner = dict(environ)
        inner["wsgi.input"] = io.BytesIO(clean)
        inner["CONTENT_LENGTH"] = str(len(clean))
        inner["CONTENT_TYPE"] = _SOAP_CONTENT_TYPE
        inner["QUERY_STRING"] = ""
        inner[PRINCIPAL_ENVIRON_KEY] = verified.principal
        inner[RUNTIME_ENVIRON_KEY] = self._runtime
        captured: dict = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            return lambda chunk: None

        chunks = endpoint.wsgi(inner, capture)
        try:
            payload = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        status = captured.get("status", "500 Internal Server Error")
        try:
            envelope = etree.fromstring(payload)  # our own framework's output: trusted
        except etree.XMLSyntaxError:
            log.error("service %s answered with something that is not XML (%s)", endpoint.name, status)
            return "500 Internal Server Error", fault_envelope("Server", SERVER_FAILED)
        return status, envelope

    def _reply(self, start_response, status: str, envelope: etree._Element, *, confirm: str | None = None,
               extra_headers: list[tuple[str, str]] = ()):
        self._signer.sign(envelope, confirm_signature_value=confirm)
        payload = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        start_response(status, [("Content-Type", _SOAP_CONTENT_TYPE), ("Content-Length", str(len(payload))), *extra_headers])
        return [payload]

    def _wsdl(self, endpoint: _Endpoint, environ, start_response):
        # Built once per service (unauthenticated work must not grow with Host headers); each
        # answer only writes this request's address into the one soap:address.
        with self._wsdl_lock:
            if endpoint.wsdl_template is None:
                template = wsdl_document(endpoint.name, _WSDL_TEMPLATE_ADDRESS, build_application(endpoint.name))
                if template.count(_WSDL_TEMPLATE_ADDRESS.encode()) != 1:
                    raise RuntimeError(f"the {endpoint.name} WSDL does not hold its address exactly once")
                endpoint.wsdl_template = template
        document = endpoint.wsdl_template.replace(_WSDL_TEMPLATE_ADDRESS.encode(), wsdl_base_address(environ).encode(), 1)
        start_response("200 OK", [("Content-Type", _SOAP_CONTENT_TYPE), ("Content-Length", str(len(document)))])
        return [document]


_WSDL_TEMPLATE_ADDRESS = "https://wsdl-address.gridcredit.invalid"
_HOST_AND_PORT = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
                            r"|\[(?P<ipv6>[0-9A-Fa-f:.]{2,45})\])(?::(?P<port>[0-9]{1,5}))?", re.ASCII)


def _is_host_and_port(text: str) -> bool:
    match = _HOST_AND_PORT.fullmatch(text) if len(text) <= 255 else None
    if match is None or (match["port"] is not None and not 0 < int(match["port"]) < 65536):
        return False
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return False
    return True


def wsdl_base_address(environ) -> str:
    """The https:// address a WSDL answer names: the request's Host header when it is a host name
    or address (with an optional port), else the server's own name and port. Always https: the
    host speaks nothing else, even when TLS ends in front of it."""
    for candidate in (environ.get("HTTP_HOST") or "", f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"):
        if _is_host_and_port(candidate):
            return f"https://{candidate}"
    return WSDL_PLACEHOLDER_ADDRESS


# ---------------------------------------------------------------------------------------------
# Building a host from the configuration, and running it


def replay_cache_path(config: Config) -> Path:
    return Path(config.security.replay_cache) if config.security.replay_cache else config.state_path / "replay.sqlite"


def build_host(config: Config, files: HostFiles) -> SignedSoapHost:
    from gridcredit.security.chain import TrustStore
    from gridcredit.security.credentials import load_credential
    from gridcredit.security.replay import SqliteReplayCache

    credential = load_credential(cert_path=str(files.host_cert), key_path=str(files.host_key))
    security = config.security
    replay_path = replay_cache_path(config)
    policy = VerifyPolicy(ttl_s=security.timestamp_ttl_s, clock_skew_s=security.clock_skew_s, allow_sha1=security.allow_sha1,
                          limits=ParseLimits(bytes_max=config.server.request_bytes_max, depth_max=min(security.xml_depth_max, 256)))
    trust = TrustStore.from_directory(files.trust_dir, require_crl=security.require_crl,
                                      allow_weak_keys=security.allow_weak_keys)
    verifier = Verifier(trust=trust, policy=policy,
                        replay_cache=SqliteReplayCache(replay_path))
    runtime = build_runtime(config, files)
    runtime.start_background_work(files)
    return SignedSoapHost(signer=Signer(credential, ttl_s=security.timestamp_ttl_s), verifier=verifier,
                          request_bytes_max=config.server.request_bytes_max, runtime=runtime, trust=trust,
                          registrations=runtime.registrations(),
                          metrics_access=metrics.Access.of(config.server.metrics_addresses, config.server.metrics_dns),
                          web=WebView(runtime.web_pages(), runtime.parts, runtime.config))


def tls_context(config: Config, files: HostFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.host_cert), str(files.host_key))
    mode = config.server.client_cert
    if mode != "none":
        context.load_verify_locations(capath=str(files.trust_dir))
        context.verify_mode = ssl.CERT_REQUIRED if mode == "required" else ssl.CERT_OPTIONAL
        # Grid users present RFC 3820 proxies; Python's ssl refuses them unless told otherwise.
        context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    if mode == "optional":
        # A browser with a certificate from another CA sees the public web pages (told why it is anonymous)
        # instead of a TLS error. Nothing trusts TLS for it: the SOAP operations are authenticated by
        # WS-Security, and every use of the client certificate validates it again (_tls_principal).
        why_not = accept_untrusted_client_certificates(context)
        if why_not is not None:
            log.warning("client certificates from CAs not in %s will end the TLS handshake: %s",
                        files.trust_dir, why_not)
    return context


def listening_socket(config: Config) -> socket.socket:
    """The one listening socket every worker process inherits and accepts on.

    One socket (not SO_REUSEPORT, which gives each worker its own backlog) so that connections
    queued while a worker dies are taken by the others instead of being reset.
    """
    family = socket.AF_INET6 if ":" in config.server.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it Nagle's algorithm and delayed ACKs hold each
    # reply ~40 ms (cheroot sets it on sockets it makes itself; this one is ours).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((config.server.host, config.server.port))
    listener.listen(effective_backlog(config.server.listen_backlog))
    return listener


def run_worker(config: Config, files: HostFiles, ready: "threading.Event | None" = None, *, build=None,
               listener: socket.socket | None = None) -> None:
    """Run one server worker in this process until SIGTERM/SIGINT.

    ``build(config, files)`` makes the WSGI application (default ``build_host``; benchmarks pass
    another). ``listener``: an inherited listening socket (from ``serve``); else the worker binds its own.
    """
    host = (build or build_host)(config, files)
    gc.freeze()  # what start-up built lives as long as the worker: no collection need walk it again
    server = HttpsServer((config.server.host, config.server.port), host, context=tls_context(config, files),
                         cert_file=str(files.host_cert), key_file=str(files.host_key),
                         handshake_timeout_s=config.server.handshake_timeout_s,
                         listen_backlog=config.server.listen_backlog,
                         connections_per_address_max=config.server.connections_per_address_max,
                         listener=listener, numthreads=config.server.threads,
                         timeout=config.server.request_timeout_s, server_name="gridcredit")

    def give_up() -> None:
        log.warning("worker pid %d did not stop within %.0f s of being told to (a request still running); "
                    "ending it", os.getpid(), WORKER_STOP_GRACE_S)
        logging.shutdown()
        os._exit(1)

    def stop(signum, frame):
        watchdog = threading.Timer(WORKER_STOP_GRACE_S, give_up)
        watchdog.daemon = True
        watchdog.start()
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.prepare()
    if ready is not None:
        ready.set()
    try:
        server.serve()
    finally:
        if hasattr(host, "close"):
            host.close()


def prepare_state(config: Config, *, hand_over: bool = False) -> Callable[[], None]:
    """Once, before the workers start: each service's own preparation (the ledger key) and the store has recovered.

    ``hand_over``: the store is left to the workers forked next (``XmlStore.hand_over``: on BaseX they
    take its mirror instead of each reading the journal again); returns the function that drops it here."""
    from gridcredit.security.replay import SqliteReplayCache

    prepare_services(config)
    # Opening recovers the journal and repairs what the quick checks find. BaseX's full verification
    # (every document read: ~20 s at a million) is not waited for: the workers forked next share it in
    # the background — one verifies, the others adopt its result; queries wait for it meanwhile.
    store = registry.open_service_store(config)
    drop: Callable[[], None] = lambda: None
    if hand_over:
        drop = store.hand_over()
    else:
        store.close()
    # Made once, so workers need not race to set it up — and closed before the workers fork: an open
    # SQLite connection carried across fork() left its descriptors in every worker, and a worker's
    # own files (the BaseX journal) took those numbers ("disk I/O error" from the replay cache).
    SqliteReplayCache(replay_cache_path(config)).close()
    return drop


class _ReadyPipe:
    """A worker's "ready" signal to ``serve``: one byte on a pipe once it accepts (``set()``, the
    interface of the threading.Event ``run_worker`` takes). A worker started after ``serve``
    stopped listening finds the pipe closed: nobody waits for it then."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def set(self) -> None:
        try:
            os.write(self._fd, b"r")
        except OSError:
            pass


def serve(config: Config, files: HostFiles, *, build=None, announce: Callable[[], None] = lambda: None) -> int:
    """Start ``config.server.workers`` worker processes on one listening socket; restart any that
    dies. ``announce()`` runs once every first worker is ready to answer (not before: a store
    still recovering, or a worker failing at start, keeps it waiting). Returns 1 if it stopped
    because workers kept failing, else 0."""
    workers_wanted = max(1, config.server.workers)
    listener = listening_socket(config)
    # the workers forked now take the store's state from this process (BaseX: the mirror of every
    # document, built once here, shared copy-on-write); dropped here once every first worker is ready
    drop_handed_over = prepare_state(config, hand_over=True)
    metrics.use_directory(config.state_path / "metrics")   # every worker counts there; a scrape adds them up
    children: dict[int, int] = {}
    stopping = failed = False
    ready_read, ready_write = os.pipe()
    ready_count = 0

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                if ready_read is not None:
                    os.close(ready_read)
                run_worker(config, files, build=build, listener=listener, ready=_ReadyPipe(ready_write))
            except BaseException:  # noqa: BLE001 — a worker must never return into the parent's code
                log.exception("worker %d failed", slot)
                code = 1
            finally:
                os._exit(code)
        children[pid] = slot

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(workers_wanted):
        spawn(slot)
    restarts: list[float] = []
    while children:
        if ready_read is not None:       # until every first worker is ready: watch the pipe too
            if select.select([ready_read], [], [], 0.2)[0]:
                ready_count += len(os.read(ready_read, 64))
            if ready_count >= workers_wanted or stopping:
                os.close(ready_read)
                ready_read = None
                drop_handed_over()     # (a worker started later opens the store itself)
                if not stopping:
                    announce()
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                continue
        else:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
        slot = children.pop(pid, None)
        metrics.worker_ended(pid)
        if slot is None or stopping:
            continue
        log.warning("worker %d (pid %d) ended with status %d; starting a new one", slot, pid, status)
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > 10:  # bounded: a worker that cannot start should not spin forever
            log.error("workers keep failing; stopping the server")
            failed = True
            stop(signal.SIGTERM, None)
            continue
        spawn(slot)
    return 1 if failed else 0
