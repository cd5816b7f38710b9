"""A TLS proxy in front of a real host that loses what it is told to: the client retry tests'
network (tests/test_service_client.py for the rule, tests/test_bank_cli.py for the Bank and its CLI)."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from lxml import etree

from security_fixtures import app_in_thread, https_session

SOAP_BODY = "{http://schemas.xmlsoap.org/soap/envelope/}Body"


class LossyProxy:
    """A WSGI proxy to ``upstream``. ``plan``: operation name (the Body's first element, or ``wsdl``
    for a request without a body) → actions taken once each, in order: ``unavailable`` (503, not
    forwarded), ``stall`` (forwarded, then the reply is held ``stall_s`` and a 504 sent instead),
    ``bad-gateway`` (forwarded, then 502 without the reply). ``seen``: every request's operation;
    ``forwarded``: those that reached the host."""

    def __init__(self, upstream: str, trust_dir: Path, *, stall_s: float = 1.5) -> None:
        self.upstream = upstream
        self.session = https_session(trust_dir)
        self.stall_s = stall_s
        self.plan: dict[str, list[str]] = {}
        self.seen: list[str] = []
        self.forwarded: list[str] = []
        self.url = ""
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        operation = etree.QName(etree.fromstring(body).find(SOAP_BODY)[0]).localname if body else "wsdl"
        with self._lock:
            self.seen.append(operation)
            actions = self.plan.get(operation) or []
            action = actions.pop(0) if actions else "forward"
        if action == "unavailable":
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        query = environ.get("QUERY_STRING")
        url = f"{self.upstream}{environ['PATH_INFO']}" + (f"?{query}" if query else "")
        headers = {"Host": environ["HTTP_HOST"]}  # so a served WSDL would name the proxy as the address
        for name in ("CONTENT_TYPE", "HTTP_SOAPACTION"):
            if name in environ:
                headers["Content-Type" if name == "CONTENT_TYPE" else "SOAPAction"] = environ[name]
        reply = self.session.request(environ["REQUEST_METHOD"], url, data=body, headers=headers, timeout=30)
        with self._lock:
            self.forwarded.append(operation)
        if action == "stall":
            time.sleep(self.stall_s)
            start_response("504 Gateway Timeout", [("Content-Length", "0")])
            return [b""]
        if action == "bad-gateway":
            start_response("502 Bad Gateway", [("Content-Length", "0")])
            return [b""]
        start_response(f"{reply.status_code} {reply.reason}", [("Content-Type", reply.headers["Content-Type"]),
                                                               ("Content-Length", str(len(reply.content)))])
        return [reply.content]


@contextlib.contextmanager
def lossy_proxy(host_url: str, pki, *, stall_s: float = 1.5):
    """A LossyProxy in front of ``host_url``, served over TLS with the host's certificate."""
    lossy = LossyProxy(host_url, pki.trust_dir, stall_s=stall_s)
    with app_in_thread(lossy, host_cert=pki.host_cert, host_key=pki.host_key) as url:
        lossy.url = url
        yield lossy
