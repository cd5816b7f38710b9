"""node-soap (npm ``soap``, tests/interop/node) against a real host: a stock client generated from
each served WSDL signs with ``WSSecurityCert``'s defaults and calls every service the host
serves (the registry's: WhoAmI on each, the Bank's operations too).

node-soap signs each reference with the transforms [enveloped-signature, exc-c14n] (WS-I BSP
R5423/R5412 allow it); the host must accept that and answer. node-soap never checks a response
signature itself: the script checks each answer with xml-crypto (keyed by the host certificate,
with the SignatureConfirmation), and this test verifies the raw responses node received once more
with our own verifier and with Debian's xmlsec1.

``scripts/test.sh`` installs the node modules (``npm ci``); under CI a missing ``node`` or module
fails the test instead of skipping it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gridcredit.security.wssec import DS_NS, EXC_C14N, SHA256, Verifier
from gridcredit.server import registry

from bank_fixtures import bank_host, bank_users, utc_in
from security_fixtures import find, parse, signature_value, skip_unless_ci
from test_interop import xmlsec1_verify

NODE_PROJECT = Path(__file__).resolve().parent / "interop" / "node"
SCRIPT = NODE_PROJECT / "call_services.js"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ACCOUNT = "node-soap"
HOLD_AMOUNT = 125
NODE_RUN_S = 180
SERVICES = registry.names()          # every served WSDL, new services included


def node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (scripts/test.sh installs Debian's nodejs and npm when it is missing)"
    if not (NODE_PROJECT / "node_modules" / "soap" / "package.json").is_file():
        return f"the node modules are not installed: npm ci --prefix {NODE_PROJECT} (scripts/test.sh runs it)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_node():
    skip_unless_ci(node_missing())


@pytest.fixture(scope="module")
def run(pki, tmp_path_factory):
    """A real host (``gridcredit serve``), an account where a node-soap user is a member, and the
    node script's output: one record per call."""
    root = tmp_path_factory.mktemp("node-soap")
    users = bank_users(pki)
    member = pki.user("Nora Node")
    ca_pem = root / "ca.pem"
    ca_pem.write_bytes(pki.ca.certificate.public_bytes(serialization.Encoding.PEM))
    with bank_host(root, "embedded", users, pki) as host:
        admin, owner = host.client(users.admin), host.client(users.owners[0])
        admin.call("CreateAccount", request_id="node-a1", account_id=ACCOUNT, project="atlas", owner_dn=users.owners[0].dn)
        owner.call("SetHolder", request_id="node-a2", account_id=ACCOUNT, holder_dn=member.dn, role="member")
        admin.call("Mint", request_id="node-a3", account_id=ACCOUNT, amount=10_000)
        expires = utc_in(3600).strftime("%Y-%m-%dT%H:%M:%SZ")
        config = {
            "base_url": f"https://127.0.0.1:{host.port}",
            "user_cert": str(member.cert_path), "user_key": str(member.key_path), "host_cert": str(pki.host_cert),
            "services": [
                {"name": "bank", "calls": [
                    ["WhoAmI", {}],
                    ["GetBalance", {"account_id": ACCOUNT}],
                    ["CreateHold", {"request_id": "node-hold-1", "account_id": ACCOUNT, "amount": HOLD_AMOUNT,
                                    "expires": expires, "reference": "node-soap"}],
                    ["GetBalance", {"account_id": ACCOUNT}]]},
            ] + [{"name": service, "calls": [["WhoAmI", {}]]} for service in SERVICES if service != "bank"],
        }
        (root / "config.json").write_text(json.dumps(config))
        environment = {key: value for key, value in os.environ.items() if not key.startswith(("NODE_", "HTTPS_", "https_"))}
        environment["NODE_EXTRA_CA_CERTS"] = str(ca_pem)
        completed = subprocess.run(["node", str(SCRIPT), str(root / "config.json")], capture_output=True, text=True,
                                   timeout=NODE_RUN_S, env=environment, stdin=subprocess.DEVNULL)
        assert completed.returncode == 0, f"{completed.stderr}\n--- host log ---\n{host.log_text()[-4000:]}"
        records = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
        hold_ids = [value for record in records if record["operation"] == "CreateHold"
                    for value in _values(record["result"], "hold_id")]
        hold = admin.call("GetHold", hold_id=hold_ids[0]) if hold_ids else None
        yield {"records": records, "member": member, "hold": hold}


def _values(tree, key: str) -> list:
    """Every value under ``key`` anywhere in node-soap's result object."""
    found = []
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key:
                found.append(value)
            found.extend(_values(value, key))
    elif isinstance(tree, list):
        for item in tree:
            found.extend(_values(item, key))
    return found


def _record(run, service: str, operation: str, index: int = 0) -> dict:
    matches = [r for r in run["records"] if r["service"] == service and r["operation"] == operation]
    return matches[index]


def test_every_call_was_made_and_its_answer_verified_by_node(run):
    assert [(r["service"], r["operation"]) for r in run["records"]] == [
        ("bank", "WhoAmI"), ("bank", "GetBalance"), ("bank", "CreateHold"), ("bank", "GetBalance"),
        *((service, "WhoAmI") for service in SERVICES if service != "bank")]
    assert {"bank", "luts", "jarm", "auctioneer", "directory"} <= set(SERVICES)
    assert all(r["verified"] and r["tamper_refused"] for r in run["records"])


@pytest.mark.parametrize("service", SERVICES)
def test_whoami_names_the_node_soap_signer(run, service):
    assert run["member"].dn in _values(_record(run, service, "WhoAmI")["result"], "dn")


def test_node_soap_signs_with_its_defaults(run):
    """What the host accepted is node-soap's default WSSecurityCert: [enveloped-signature, exc-c14n]
    on the Body and Timestamp references, SHA-256 digests, RSA-SHA256, plain ``Id`` attributes."""
    for record in run["records"]:
        envelope = parse(record["request"].encode())
        references = envelope.findall(f".//{{{DS_NS}}}Reference")
        assert len(references) == 2
        for reference in references:
            transforms = [t.get("Algorithm") for t in reference.iterfind(f"{{{DS_NS}}}Transforms/{{{DS_NS}}}Transform")]
            assert transforms == [ENVELOPED, EXC_C14N]
            assert reference.find(f"{{{DS_NS}}}DigestMethod").get("Algorithm") == SHA256
        assert find(envelope, ".//ds:SignatureMethod").get("Algorithm").endswith("#rsa-sha256")
        body = find(envelope, "soap:Body")
        assert body.get("Id") is not None and "#" + body.get("Id") in {r.get("URI") for r in references}


def test_the_bank_answers_and_changes_state_for_node_soap(run):
    before = int(_values(_record(run, "bank", "GetBalance", 0)["result"], "available")[0])
    after = int(_values(_record(run, "bank", "GetBalance", 1)["result"], "available")[0])
    assert before == 10_000 and after == 10_000 - HOLD_AMOUNT
    hold = run["hold"]          # read back by the administrator through our own client
    assert hold is not None and hold.state == "active"
    assert hold.amount == HOLD_AMOUNT and hold.creator_dn == run["member"].dn and hold.account_id == ACCOUNT


def test_each_response_node_received_verifies_with_our_verifier(run, pki):
    verifier = Verifier(trust=pki.trust_store())
    for record in run["records"]:
        verified = verifier.verify(record["response"].encode(), expected_confirmation=signature_value(record["request"].encode()))
        assert verified.principal.dn.endswith("CN=localhost")


def test_each_response_node_received_verifies_with_xmlsec1(run, pki, tmp_path):
    for record in run["records"]:
        result = xmlsec1_verify(tmp_path, record["response"].encode(), Path(pki.host_cert))
        assert result.returncode == 0 and "OK" in result.stderr, result.stderr


def test_node_soap_requests_verify_with_xmlsec1_and_ours(run, pki, tmp_path):
    """The requests themselves, checked outside the host: xmlsec1 and our verifier agree."""
    for record in run["records"]:
        data = record["request"].encode()
        result = xmlsec1_verify(tmp_path, data, run["member"].cert_path)
        assert result.returncode == 0 and "OK" in result.stderr, result.stderr
        assert Verifier(trust=pki.trust_store(), clock=lambda: _created(data)).verify(data).principal.dn == run["member"].dn


def _created(data: bytes) -> float:
    from gridcredit.security.wssec import WSU_NS, parse_xsd_datetime
    return parse_xsd_datetime(parse(data).find(f".//{{{WSU_NS}}}Created").text).timestamp()
