"""Stubs that stock SOAP stacks generate from our served WSDLs work as generated (issue 11.9, 11.10).

- The WSDLs declare only the namespaces they use (no WSDL SOAP 1.2 binding namespace: gSOAP's
  ``wsdl2h`` then made SOAP 1.2 stubs), define each schema before a schema that imports it
  (``wsimport`` warned that it could not resolve ``Identity``), name response wrappers after the
  operations (``GetBalanceResponse``, not ``get_balanceResponse``) and attach a WS-SecurityPolicy
  1.2 policy to each binding.
- gSOAP (Debian ``gsoap``, ``libgsoap-dev``): ``wsdl2h`` + ``soapcpp2`` make a C client from each
  served WSDL; ``tests/interop/gsoap/client.c`` signs with gSOAP's WS-Security plugin (RSA-SHA256,
  exc-c14n, signed Timestamp and Body, BinarySecurityToken), calls WhoAmI (and bank operations)
  on a real host and verifies our signed answers — results and faults — with the plugin.
- JAX-WS (Debian ``jaxws``): ``wsimport`` runs on each served WSDL without a warning, and a client
  with no WS-Security handling (``tests/interop/jaxws/FaultProbe.java``) reads our refusal's
  ``wsse:`` code, not a MustUnderstand fault of its own.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from lxml import etree

from gridcredit.server import registry
from gridcredit.security.wssec import WSSE_NS

from security_fixtures import app_in_thread, host_process, https_session

SERVICES = registry.names()
WSDL_DIR = Path(__file__).resolve().parents[1] / "wsdl"
INTEROP = Path(__file__).resolve().parent / "interop"
NS = {"wsdl": "http://schemas.xmlsoap.org/wsdl/", "soap": "http://schemas.xmlsoap.org/wsdl/soap/",
      "xs": "http://www.w3.org/2001/XMLSchema", "wsp": "http://www.w3.org/ns/ws-policy",
      "sp": "http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702",
      "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"}
WSDL_SOAP12_NS = "http://schemas.xmlsoap.org/wsdl/soap12/"
GSOAP_SHARE = Path("/usr/share/gsoap")
TOOL_TIMEOUT_S = 300
builds_stubs = pytest.mark.slow  # the stubs of four services, built with a stock tool: tens of seconds each


def checked_in(service: str) -> etree._Element:
    return etree.fromstring((WSDL_DIR / f"{service}.wsdl").read_bytes())


def resolve(root: etree._Element, element: etree._Element, qname: str) -> tuple[str, str]:
    prefix, _, local = qname.rpartition(":")
    return element.nsmap[prefix or None], local


# ----------------------------------------------------------------------------- the documents

@pytest.mark.parametrize("service", SERVICES)
def test_wsdl_declares_only_the_namespaces_it_uses(service):
    data = (WSDL_DIR / f"{service}.wsdl").read_bytes()
    assert WSDL_SOAP12_NS.encode() not in data, "a SOAP 1.2 binding namespace makes wsdl2h write SOAP 1.2 stubs"
    root = etree.fromstring(data)
    used = set()
    for element in root.iter(etree.Element):
        used.add(etree.QName(element).namespace)
        used.update(etree.QName(name).namespace for name in element.attrib)
        for name in ("type", "element", "message", "binding", "base", "ref"):
            if ":" in element.get(name, ""):
                used.add(resolve(root, element, element.get(name))[0])
    declared = set()
    for element in root.iter(etree.Element):
        parent = element.getparent()
        inherited = parent.nsmap if parent is not None else {}
        declared.update(uri for prefix, uri in element.nsmap.items() if inherited.get(prefix) != uri)
    assert declared - used == set()


@pytest.mark.parametrize("service", SERVICES)
def test_each_schema_comes_after_the_schemas_it_imports(service):
    schemas = checked_in(service).findall("wsdl:types/xs:schema", NS)
    defined: set[str] = set()
    for schema in schemas:
        for imported in schema.iterfind("xs:import", NS):
            assert imported.get("namespace") in defined, \
                f"{schema.get('targetNamespace')} imports {imported.get('namespace')} before it is defined"
        defined.add(schema.get("targetNamespace"))


@pytest.mark.parametrize("service", SERVICES)
def test_messages_are_named_after_the_operations(service):
    root = checked_in(service)
    operations = root.findall("wsdl:portType/wsdl:operation", NS)
    assert operations
    for operation in operations:
        name = operation.get("name")
        output = operation.find("wsdl:output", NS)
        message = root.find(f"wsdl:message[@name='{resolve(root, output, output.get('message'))[1]}']", NS)
        element = resolve(root, message[0], message.find("wsdl:part", NS).get("element"))[1]
        assert element == f"{name}Response"
        wrapper = root.find(f"wsdl:types/xs:schema/xs:complexType[@name='{element}']", NS)
        assert [child.get("name") for child in wrapper.iterfind("xs:sequence/xs:element", NS)] in ([], [f"{name}Result"])


def referenced_policy(root: etree._Element, holder: etree._Element) -> etree._Element:
    reference = holder.find("wsp:PolicyReference", NS)
    assert reference is not None, f"{holder.tag} {holder.get('name')} has no wsp:PolicyReference"
    policy_id = reference.get("URI").removeprefix("#")
    policy = root.find(f"wsp:Policy[@wsu:Id='{policy_id}']", NS)
    assert policy is not None, f"no wsp:Policy with wsu:Id {policy_id}"
    return policy


@pytest.mark.parametrize("service", SERVICES)
def test_each_binding_says_that_messages_are_signed(service):
    root = checked_in(service)
    for binding in root.findall("wsdl:binding", NS):
        policy = referenced_policy(root, binding)
        asymmetric = policy.find("wsp:ExactlyOne/wsp:All/sp:AsymmetricBinding/wsp:Policy", NS)
        assert asymmetric is not None
        for side in ("InitiatorToken", "RecipientToken"):
            assert asymmetric.find(f"sp:{side}/wsp:Policy/sp:X509Token/wsp:Policy/sp:WssX509V3Token10", NS) is not None
        assert asymmetric.find("sp:AlgorithmSuite/wsp:Policy/sp:Basic256Sha256", NS) is not None
        assert asymmetric.find("sp:IncludeTimestamp", NS) is not None
        assert asymmetric.find("sp:Layout/wsp:Policy/*", NS) is not None
        for operation in binding.iterfind("wsdl:operation", NS):
            for message in (operation.find("wsdl:input", NS), operation.find("wsdl:output", NS)):
                signed = referenced_policy(root, message)
                assert signed.find("wsp:ExactlyOne/wsp:All/sp:SignedParts/sp:Body", NS) is not None


# ------------------------------------------------------------------------- a real host, served WSDLs

@pytest.fixture(scope="module")
def host(pki, tmp_path_factory):
    state = tmp_path_factory.mktemp("stubs-host")
    with host_process(state, host_cert=pki.host_cert, host_key=pki.host_key, trust_dir=pki.trust_dir) as running:
        yield running


@pytest.fixture(scope="module")
def served_wsdls(host, pki, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("served-wsdl")
    session = https_session(pki.trust_dir)
    paths = {}
    for service in SERVICES:
        response = session.get(f"{host.url}/{service}?wsdl", timeout=30)
        assert response.status_code == 200
        paths[service] = folder / f"{service}.wsdl"
        paths[service].write_bytes(response.content)
    return paths


@pytest.fixture(scope="module")
def ca_file(pki) -> Path:
    """The test CA's certificate (PEM), as the trust directory holds it."""
    anchors = sorted(path for path in pki.trust_dir.iterdir() if re.fullmatch(r"[0-9a-f]{8}\.\d+", path.name))
    assert len(anchors) == 1, anchors
    return anchors[0]


def run(command: list[str], cwd: Path, **options) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, **options)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed ({result.returncode}):\n" \
                                   f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def key_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# ------------------------------------------------------------------------------------------ gSOAP

def test_gsoap_is_installed():
    assert shutil.which("wsdl2h") and shutil.which("soapcpp2"), "install Debian's gsoap (scripts/test.sh does)"
    for plugin in ("wsseapi.c", "smdevp.c", "mecevp.c", "threads.c"):
        assert (GSOAP_SHARE / "plugin" / plugin).exists(), "install Debian's libgsoap-dev (scripts/test.sh does)"


@pytest.fixture(scope="module")
def gsoap_clients(served_wsdls, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """service → (the compiled client, wsdl2h's header)."""
    built = {}
    for service, wsdl in served_wsdls.items():
        folder = tmp_path_factory.mktemp(f"gsoap-{service}")
        run(["wsdl2h", "-c", "-o", f"{service}.h", str(wsdl)], folder)
        run(["soapcpp2", "-c", "-C", "-L", "-x", f"-I{GSOAP_SHARE / 'import'}:{GSOAP_SHARE}", f"{service}.h"], folder)
        nsmap, = folder.glob("*.nsmap")
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "gsoapssl"], capture_output=True, text=True,
                               check=True).stdout.split()
        sources = [INTEROP / "gsoap" / "client.c", folder / "soapC.c", folder / "soapClient.c",
                   *(GSOAP_SHARE / "plugin" / name for name in ("wsseapi.c", "smdevp.c", "mecevp.c", "threads.c")),
                   GSOAP_SHARE / "custom" / "struct_timeval.c"]  # xsd:dateTime of the WS-Security headers
        run(["cc", "-O0", "-w", f'-DNSMAP_FILE="{nsmap.name}"', *(["-DBANK_OPERATIONS"] if service == "bank" else []),
             f"-I{folder}", f"-I{GSOAP_SHARE}", f"-I{GSOAP_SHARE / 'plugin'}", "-o", "client", *map(str, sources),
             *flags, "-lssl", "-lcrypto", "-lz", "-lpthread"], folder)
        built[service] = (folder / "client", (folder / f"{service}.h").read_text())
    return built


@builds_stubs
@pytest.mark.parametrize("service", SERVICES)
def test_wsdl2h_makes_soap11_stubs_that_import_ws_security(gsoap_clients, service):
    _, header = gsoap_clients[service]
    assert '#import "soap12.h"' not in header
    # wsdl2h read the policy: it imports WS-Security into the stubs by itself.
    assert re.search(r'^#import "wsse\.h"', header, re.MULTILINE)
    assert "WS-Security Asymmetric Binding" in header and "Basic256Sha256" in header


def gsoap_call(gsoap_clients, host, pki, ca_file, service: str, operation: str) -> dict[str, str]:
    client, _ = gsoap_clients[service]
    alice = pki.user("Alice")
    result = subprocess.run([str(client), f"{host.url}/{service}", str(ca_file), str(alice.cert_path),
                             str(alice.key_path), operation], capture_output=True, text=True, timeout=60)
    seen = key_values(result.stdout)
    assert result.returncode == 0 and seen.get("verified") == "1", \
        f"gSOAP client ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return seen


@builds_stubs
@pytest.mark.parametrize("service", SERVICES)
def test_a_gsoap_client_signs_calls_whoami_and_verifies_the_answer(gsoap_clients, host, pki, ca_file, service):
    seen = gsoap_call(gsoap_clients, host, pki, ca_file, service, "whoami")
    assert seen["dn"] == pki.user("Alice").dn and seen["service"] == service
    assert "fault" not in seen and seen["body_signed"] == "1" and seen["timestamp_signed"] == "1"


@builds_stubs
def test_a_gsoap_client_calls_a_bank_operation(gsoap_clients, host, pki, ca_file):
    seen = gsoap_call(gsoap_clients, host, pki, ca_file, "bank", "moneysupply")
    assert "fault" not in seen and int(seen["issued"]) >= 0 and int(seen["outstanding"]) >= 0


@builds_stubs
def test_a_gsoap_client_verifies_our_signed_fault(gsoap_clients, host, pki, ca_file):
    seen = gsoap_call(gsoap_clients, host, pki, ca_file, "bank", "getbalance:no-such-account")
    assert seen["fault"].endswith("Client.UnknownAccount"), seen
    assert seen["body_signed"] == "1"


def tampering_proxy(target_url: str, session, original: bytes, replacement: bytes):
    """A WSGI app that forwards each POST to ``target_url`` and changes ``original`` in the answer."""

    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            answer = session.post(f"{target_url}{environ['PATH_INFO']}", data=body, timeout=60,
                                  headers={"Content-Type": environ.get("CONTENT_TYPE", "text/xml"),
                                           "SOAPAction": environ.get("HTTP_SOAPACTION", '""')})
        except requests.RequestException as error:   # the host did not answer: say so, do not tamper
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [f"the proxy got no answer from the host: {error!r}".encode()]
        if original not in answer.content:           # nothing to change: pass it on, the test names it
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            body_at = max(answer.content.find(b"Body"), 0)      # the Body says why; the signature header does not
            return [b"the host's answer does not hold the text to change: " + answer.content[body_at:][:2000]]
        changed = answer.content.replace(original, replacement)
        start_response(f"{answer.status_code} Forwarded", [("Content-Type", answer.headers["Content-Type"]),
                                                           ("Content-Length", str(len(changed)))])
        return [changed]

    return app


@builds_stubs
def test_the_gsoap_client_refuses_an_answer_changed_on_the_way(gsoap_clients, host, pki, ca_file):
    """The plugin really verifies: one letter of the signed Body changed, and the call fails."""
    client, _ = gsoap_clients["jarm"]
    # A user of its own: gSOAP's Timestamp counts whole seconds and it signs no nonce, so Alice's WhoAmI on
    # /jarm from the test above, sent again within the same second, is byte for byte a replay (and refused).
    tampered = pki.user("Tammy")
    proxy = tampering_proxy(host.url, https_session(pki.trust_dir), b"CN=Tammy<", b"CN=Tammz<")
    with app_in_thread(proxy, host_cert=pki.host_cert, host_key=pki.host_key) as url:
        for attempt in range(3):   # a 502: the proxy got no usable answer on a loaded machine; ask again
            time.sleep(1.1 * attempt)   # in a later second: the host may have seen the first one
            result = subprocess.run([str(client), f"{url}/jarm", str(ca_file), str(tampered.cert_path),
                                     str(tampered.key_path), "whoami"], capture_output=True, text=True, timeout=90)
            seen = key_values(result.stdout)
            if seen.get("error") != "502":
                break
    assert result.returncode == 1 and "verified" not in seen and "dn" not in seen, result.stdout
    assert seen.get("fault") == "wsse:FailedCheck", result.stdout  # the plugin's own refusal


# ----------------------------------------------------------------------------------------- JAX-WS

def test_wsimport_is_installed():
    assert shutil.which("wsimport") and shutil.which("javac"), \
        "install Debian's jaxws and a JDK (scripts/test.sh does)"


@pytest.fixture(scope="module")
def jaxws_stubs(served_wsdls, tmp_path_factory) -> dict[str, tuple[Path, str, str]]:
    """service → (folder of compiled stubs, the generated Service class, wsimport's output)."""
    stubs = {}
    for service, wsdl in served_wsdls.items():
        folder = tmp_path_factory.mktemp(f"jaxws-{service}")
        result = run(["wsimport", "-keep", "-d", str(folder), str(wsdl)], folder)
        service_class = next(path for path in folder.rglob("*.java") if "@WebServiceClient" in path.read_text())
        name = ".".join(service_class.relative_to(folder).with_suffix("").parts)
        stubs[service] = (folder, name, result.stdout + result.stderr)
    return stubs


@builds_stubs
@pytest.mark.parametrize("service", SERVICES)
def test_wsimport_generates_stubs_without_a_warning(jaxws_stubs, service):
    _, _, output = jaxws_stubs[service]
    assert not re.search(r"\[(WARNING|ERROR)\]", output), output


@pytest.fixture(scope="module")
def fault_probe(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jaxws-probe")
    run(["javac", "-cp", "/usr/share/java/jaxws-rt.jar", "-d", str(folder), str(INTEROP / "jaxws" / "FaultProbe.java")],
        folder)
    return folder


@builds_stubs
@pytest.mark.parametrize("service", SERVICES)
def test_a_jaxws_client_without_ws_security_reads_our_refusal(jaxws_stubs, fault_probe, host, ca_file, service):
    folder, service_class, _ = jaxws_stubs[service]
    classpath = os.pathsep.join([str(fault_probe), str(folder), "/usr/share/java/jaxws-rt.jar"])
    result = subprocess.run(["java", "-cp", classpath, "FaultProbe", f"{host.url}/{service}?wsdl", str(ca_file),
                             service_class], capture_output=True, text=True, timeout=120)
    seen = key_values(result.stdout)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    # Our refusal of an unsigned request, as sent: a wsse: code and words, not "MustUnderstand".
    assert (seen.get("fault_namespace"), seen.get("fault_code")) == (WSSE_NS, "InvalidSecurity"), result.stdout
    assert "MustUnderstand" not in result.stdout and seen["fault_string"]
