"""One policy point per service (issue 12.2): every operation of every registered service's WSDL has
a rule in that service's ``policy.py``, and a call of it through the real host reaches a decision
there. The Bank's operations are walked to a refusal each in tests/test_bank_policy.py; here the
LUTS's, JARM's and the Auctioneer's, and the rule tables of all four."""
from __future__ import annotations

import base64
import importlib
import io
from pathlib import Path

import pytest
from lxml import etree

from gridcredit.config import Config, SecurityConfig
from gridcredit.server import registry
from gridcredit.server.host import HostFiles, build_host

from security_fixtures import signed_request

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
REPOSITORY = Path(__file__).resolve().parent.parent
SAMPLE = REPOSITORY / "tests" / "data" / "ur-samples" / "sgas-luts3-UR1-minimal.xml"


def wsdl_operations(service: str) -> set[str]:
    document = etree.parse(str(REPOSITORY / "wsdl" / f"{service}.wsdl"))
    return set(document.xpath("/w:definitions/w:portType/w:operation/@name", namespaces={"w": WSDL_NS}))


def policy_of(service: str):
    """(rules, decisions) of ``services/<service>/policy.py``."""
    module = importlib.import_module(f"gridcredit.services.{service}.policy")
    book = getattr(module, "BOOK", None)
    return (book.rules, book.decisions) if book is not None else (module.RULES, module.decisions)


@pytest.mark.parametrize("service", registry.names())
def test_every_operation_of_the_wsdl_has_a_rule_in_the_services_policy(service):
    rules, _ = policy_of(service)
    assert {name for name, rule in rules.items() if rule.soap} == wsdl_operations(service)


class InProcessHost:
    def __init__(self, app) -> None:
        self.app = app

    def call(self, credential, service: str, namespace: str, operation: str, fields: dict) -> etree._Element:
        payload = etree.Element(f"{{{namespace}}}{operation}", nsmap={"s": namespace})
        def fill(parent, fields: dict) -> None:
            for name, value in fields.items():
                child = etree.SubElement(parent, f"{{{namespace}}}{name}")
                if isinstance(value, list):
                    for item in value:
                        etree.SubElement(child, f"{{{namespace}}}string").text = item
                elif isinstance(value, dict):       # a complex type's elements, in order
                    fill(child, value)
                else:
                    child.text = str(value)
        fill(payload, fields)
        data = signed_request(credential, payload=payload)
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": f"/{service}", "QUERY_STRING": "", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "8443", "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(data),
                   "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "text/xml; charset=utf-8",
                   "SERVER_PROTOCOL": "HTTP/1.1"}
        return etree.fromstring(b"".join(self.app(environ, lambda status, headers, exc_info=None: None)))


@pytest.fixture(scope="module")
def host(pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("policy-points")
    config = Config(state_dir=str(root / "state"),
                    security=SecurityConfig(host_cert=str(pki.host_cert), host_key=str(pki.host_key),
                                            cert_dir=str(pki.trust_dir)))
    app = build_host(config, HostFiles(Path(pki.host_cert), Path(pki.host_key), Path(pki.trust_dir)))
    try:
        yield InProcessHost(app)
    finally:
        app.close()


def faultcode(answer: etree._Element) -> str | None:
    found = answer.xpath("//*[local-name() = 'faultcode']")
    return found[0].text if found else None


# (service, operation, arguments, the fault a stranger gets or None): every operation of the LUTS,
# JARM and the Auctioneer, called by a user the configuration says nothing about.
STRANGER_CALLS = [
    ("luts", "Publish", {"document": base64.b64encode(SAMPLE.read_bytes()).decode()}, "Client.NotAuthorized"),
    ("luts", "Query", {"scope": "all"}, "Client.NotAuthorized"),
    ("luts", "Query", {}, None),                                  # their own records: none
    ("luts", "Summary", {"by": ["user"], "scope": "vo"}, "Client.NotAuthorized"),
    ("luts", "Summary", {"by": ["user"]}, None),
    ("luts", "JobUsage", {"job_id": "job-1"}, None),
    ("luts", "GetRecord", {"record_id": "record-1"}, "Client.UnknownRecord"),   # none they may see
    ("luts", "WhoAmI", {}, None),
    ("jarm", "WhoAmI", {}, None),
    ("jarm", "SetPriceTable", {"table": ""}, "Client.NotAuthorized"),
    ("jarm", "GetPriceTable", {}, "Client.NoPriceTable"),         # none set on this host
    ("jarm", "Quote", {"partition": "batch", "qos": "normal", "cores": 1, "time_limit_s": 60}, "Client.NoPriceTable"),
    ("jarm", "RequestDelegation", {"lifetime_s": 3_600}, None),
    ("jarm", "CompleteDelegation", {"delegation_id": "d-" + "0" * 32, "chain_pem": "none"},
     "Client.UnknownDelegation"),                                  # none pending under that id
    ("jarm", "GetDelegation", {}, None),
    ("jarm", "DestroyDelegation", {}, None),
    ("jarm", "Reserve", {"key": {"cluster": "c1", "job_id": 1, "restarts": 0}, "user": "gcuser1", "account": "proj1",
                         "request": {"partition": "batch", "qos": "normal", "cores": 1, "time_limit_s": 60,
                                     "memory_mb": 0, "gpus": 0, "nodes": 1}}, "Client.NotAuthorized"),
    ("jarm", "Extend", {"key": {"cluster": "c1", "job_id": 1, "restarts": 0}}, "Client.NotAuthorized"),
    ("jarm", "Complete", {"key": {"cluster": "c1", "job_id": 1, "restarts": 0}}, "Client.NotAuthorized"),
    ("jarm", "Cancel", {"key": {"cluster": "c1", "job_id": 1, "restarts": 0}}, "Client.NotAuthorized"),
    ("jarm", "Reconcile", {}, "Client.NotAuthorized"),
    ("jarm", "GetReservation", {"reservation_id": "r-c1-1-0"}, "Client.NotAuthorized"),   # not theirs
    ("jarm", "ListReservations", {}, "Client.ReservationsDisabled"),   # their own: this host reserves nothing
    ("auctioneer", "WhoAmI", {}, None),
    ("auctioneer", "GetHost", {}, None),                          # this host sells nothing: it says so
    ("auctioneer", "PlaceBid", {"hold_id": "h-1", "rate": "1", "max_duration_s": 60, "template": "small"},
     "Client.AuctioneerDisabled"),
    ("auctioneer", "ChangeBid", {"bid_id": "b-" + "0" * 24, "rate": "1"}, "Client.NotAuthorized"),   # not theirs
    ("auctioneer", "CancelBid", {"bid_id": "b-" + "0" * 24}, "Client.NotAuthorized"),
    ("auctioneer", "GetBid", {"bid_id": "b-" + "0" * 24}, "Client.NotAuthorized"),
    ("auctioneer", "ListBids", {}, None),                         # their own: none
    ("auctioneer", "ListBids", {"everyone": "true"}, "Client.NotAuthorized"),
    ("auctioneer", "ConsoleWrite", {"bid_id": "b-" + "0" * 24, "data": "aGk="}, "Client.NotAuthorized"),
    ("auctioneer", "ConsoleRead", {"bid_id": "b-" + "0" * 24}, "Client.NotAuthorized"),
    ("directory", "WhoAmI", {}, None),
    ("directory", "ListHosts", {}, None),
    ("directory", "GetHostInfo", {"host_id": "host-a"}, "Client.UnknownHost"),
    ("directory", "Register", {"host_id": "host-a", "auctioneer_url": "https://auction-a.example.org",
                               "capacity_cpus": 1, "total_rate": "1.5", "hour_average_price": "1", "live_bids": 1,
                               "interval_s": 10, "ttl_s": 60}, "Client.NotAuthorized"),   # a user, not that host
    ("directory", "RemoveHost", {"host_id": "host-a"}, "Client.NotAuthorized"),
]
# faults of a call the policy allowed that then found nothing
FOUND_NOTHING = {"Client.UnknownRecord", "Client.NoPriceTable", "Client.UnknownDelegation",
                 "Client.ReservationsDisabled", "Client.AuctioneerDisabled", "Client.UnknownHost"}


@pytest.mark.parametrize("service, operation, fields, fault", STRANGER_CALLS,
                         ids=[f"{call[0]}-{call[1]}-{index}" for index, call in enumerate(STRANGER_CALLS)])
def test_each_operation_reaches_its_services_policy(host, pki, service, operation, fields, fault):
    rules, decisions = policy_of(service)
    before = decisions()
    soap = importlib.import_module(registry.service(service).soap_module)
    answer = host.call(pki.user("Policy Stranger").credential, service, soap.NAMESPACE, operation, fields)
    assert (faultcode(answer) or "").split(":")[-1] == (fault or ""), etree.tostring(answer)[:600]
    after = decisions()
    allowed = fault is None or fault in FOUND_NOTHING
    assert after.get((operation, allowed), 0) == before.get((operation, allowed), 0) + 1
    assert all(count == before.get(key, 0) for key, count in after.items() if key != (operation, allowed))


def test_the_walk_covers_every_operation_outside_the_bank():
    walked = {(service, operation) for service, operation, _, _ in STRANGER_CALLS}
    expected = {(service, operation) for service in registry.names() if service != "bank"
                for operation in wsdl_operations(service)}
    assert walked == expected
