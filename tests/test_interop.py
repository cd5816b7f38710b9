"""Interoperability: our signed requests and responses (RSA and EC) verify with Debian's
``xmlsec1`` and with python-xmlsec (two verifiers that share no code with ours), and messages
signed by other stacks (.NET WCF, Apache WSS4J; tests/data/vectors) verify with ours."""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from gridcredit.config import Config, SecurityConfig
from gridcredit.errors import SecurityError
from gridcredit.server.host import HostFiles, build_host
from gridcredit.security import pki as pki_module
from gridcredit.security.chain import TrustStore
from gridcredit.security.credentials import load_credential
from gridcredit.security.wssec import (SOAP12_NS, WSSE11_NS, WSU_NS, Verifier, VerifyPolicy, parse_xsd_datetime)

from security_fixtures import find, parse, refusal, signature_value, signed_request

VECTORS = Path(__file__).parent / "data" / "vectors"     # other projects' signed messages: see its SOURCES.md
XMLSEC1 = shutil.which("xmlsec1") or "/usr/bin/xmlsec1"


def test_xmlsec1_is_installed():
    assert Path(XMLSEC1).exists(), "install Debian's xmlsec1 (the CI script does)"


# ---------------------------------------------------------------------------- our messages

@pytest.fixture(scope="module", params=["rsa", "ec"])
def parties(request, pki, tmp_path_factory):
    """(user credential, user cert path, host app, host cert path) with keys of one type."""
    root = tmp_path_factory.mktemp(f"interop-{request.param}")
    if request.param == "rsa":
        user = pki.user("Alice")
        user_cert, credential = user.cert_path, user.credential
        host_cert, host_key = pki.host_cert, pki.host_key
    else:
        user_cert, user_key = pki.ca.issue_user("Erin Interop EC", root / "user", key=pki_module.generate_key("ec"))
        credential = load_credential(user_cert, user_key)
        host_cert, host_key = pki.ca.issue_host("localhost", root / "host", key=pki_module.generate_key("ec"))
    config = Config(state_dir=str(root / "state"),
                    security=SecurityConfig(host_cert=str(host_cert), host_key=str(host_key), cert_dir=str(pki.trust_dir)))
    app = build_host(config, HostFiles(Path(host_cert), Path(host_key), pki.trust_dir))
    return credential, Path(user_cert), app, Path(host_cert)


def call_in_process(app, data: bytes) -> tuple[str, bytes]:
    """One POST to /bank through the host's WSGI application (no network)."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/bank", "QUERY_STRING": "", "SERVER_NAME": "localhost",
               "SERVER_PORT": "8443", "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(data),
               "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "text/xml; charset=utf-8", "SERVER_PROTOCOL": "HTTP/1.1"}
    seen = {}
    chunks = app(environ, lambda status, headers, exc_info=None: seen.setdefault("status", status))
    return seen["status"], b"".join(chunks)


@pytest.fixture(scope="module")
def messages(parties, pki):
    """{"request": bytes, "response": bytes} signed by our code (the response by the host)."""
    credential, _, app, _ = parties
    request = signed_request(credential)
    status, response = call_in_process(app, request)
    assert status.startswith("200"), response[:500]
    Verifier(trust=pki.trust_store()).verify(response, expected_confirmation=signature_value(request))
    return {"request": request, "response": response}


def tamper(data: bytes) -> bytes:
    envelope = parse(data)
    body = find(envelope, "soap:Body")
    etree.SubElement(body[0], "{urn:attacker}extra").text = "more"
    return etree.tostring(envelope)


def xmlsec1_verify(tmp_path: Path, data: bytes, cert: Path, *, more_id_nodes: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Debian's xmlsec1 (plain XMLDSig, no WS-Security rules); ``more_id_nodes``: other elements whose
    ``Id`` attribute a reference may name (``[namespace:]name``)."""
    message = tmp_path / "msg.xml"
    message.write_bytes(data)
    command = [XMLSEC1, "--verify", "--id-attr:Id", "Body", "--id-attr:Id", "Timestamp",
               "--id-attr:Id", "SignatureConfirmation"]
    for node in more_id_nodes:
        command += ["--id-attr:Id", node]
    command += ["--pubkey-cert-pem", str(cert), str(message)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("kind", ["request", "response"])
def test_xmlsec1_verifies_our_messages(parties, messages, tmp_path, kind):
    _, user_cert, _, host_cert = parties
    cert = user_cert if kind == "request" else host_cert
    data = messages[kind]
    result = xmlsec1_verify(tmp_path, data, cert)
    assert result.returncode == 0 and "OK" in result.stderr, result.stderr
    tampered = xmlsec1_verify(tmp_path, tamper(data), cert)
    assert tampered.returncode != 0 and "FAIL" in tampered.stderr, tampered.stderr
    # The key matters too: the other party's certificate does not verify it.
    other = host_cert if kind == "request" else user_cert
    assert xmlsec1_verify(tmp_path, data, other).returncode != 0


def python_xmlsec_verify(data: bytes, cert_pem: bytes) -> None:
    """python-xmlsec, with only the transforms WS-Security needs and every wsu:Id registered."""
    root = etree.fromstring(data)
    context = xmlsec.SignatureContext()
    for node in root.iter():
        if isinstance(node.tag, str) and node.get(f"{{{WSU_NS}}}Id") is not None:
            context.register_id(node, "Id", WSU_NS)
    context.key = xmlsec.Key.from_memory(cert_pem, xmlsec.constants.KeyDataFormatCertPem)
    for transform in (xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformSha256,
                      xmlsec.constants.TransformRsaSha256, xmlsec.constants.TransformEcdsaSha256):
        context.enable_signature_transform(transform)
    context.enable_reference_transform(xmlsec.constants.TransformExclC14N)
    context.enable_reference_transform(xmlsec.constants.TransformSha256)
    context.verify(xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature))


@pytest.mark.parametrize("kind", ["request", "response"])
def test_python_xmlsec_verifies_our_messages(parties, messages, kind):
    _, user_cert, _, host_cert = parties
    cert_pem = (user_cert if kind == "request" else host_cert).read_bytes()
    python_xmlsec_verify(messages[kind], cert_pem)
    with pytest.raises(xmlsec.Error):
        python_xmlsec_verify(tamper(messages[kind]), cert_pem)


def test_the_response_signature_covers_the_confirmation(messages):
    envelope = parse(messages["response"])
    confirmation = envelope.find(f".//{{{WSSE11_NS}}}SignatureConfirmation")
    assert confirmation.get("Value") == signature_value(messages["request"])
    uris = {reference.get("URI") for reference in envelope.iterfind(".//{http://www.w3.org/2000/09/xmldsig#}Reference")}
    assert "#" + confirmation.get(f"{{{WSU_NS}}}Id") in uris


# -------------------------------------------------------------------------- other stacks

def _clock_at(data: bytes):
    created = parse(data).find(f".//{{{WSU_NS}}}Created").text
    moment = parse_xsd_datetime(created).timestamp()
    return lambda: moment


@pytest.fixture(scope="module")
def wcf_pinned():
    return x509.load_pem_x509_certificate((VECTORS / "wcf_server_public.pem").read_bytes())


def test_wcf_response_verifies_with_legacy_sha1_and_the_pinned_certificate(wcf_pinned):
    data = (VECTORS / "wcf_valid.xml").read_bytes()
    verified = Verifier(pinned_certificates=[wcf_pinned], policy=VerifyPolicy(allow_sha1=True),
                        clock=_clock_at(data)).verify(data)
    assert verified.signer == wcf_pinned
    assert verified.body.findtext(".//{http://tempuri.org/}GetDataResult") == "You entered: 123"


def test_wcf_tampered_response_is_refused(wcf_pinned):
    data = (VECTORS / "wcf_tampered.xml").read_bytes()
    error = refusal(Verifier(pinned_certificates=[wcf_pinned], policy=VerifyPolicy(allow_sha1=True),
                             clock=_clock_at(data)), data)
    assert error.code == "FailedCheck"


def test_wcf_response_is_refused_under_the_default_policy(wcf_pinned):
    data = (VECTORS / "wcf_valid.xml").read_bytes()
    error = refusal(Verifier(pinned_certificates=[wcf_pinned], clock=_clock_at(data)), data)
    assert error.code == "UnsupportedAlgorithm"


def test_wcf_response_needs_the_pinned_signer(pki):
    """Named by issuer and serial only: a signer we do not know is not usable."""
    data = (VECTORS / "wcf_valid.xml").read_bytes()
    error = refusal(Verifier(pinned_certificates=[pki.ca.certificate], policy=VerifyPolicy(allow_sha1=True),
                             clock=_clock_at(data)), data)
    assert error.code == "SecurityTokenUnavailable"


WSS4J_TIME = parse_xsd_datetime("2019-06-01T00:00:00Z").timestamp()
WSS4J_POLICY = VerifyPolicy(require_timestamp=False, soap_versions=frozenset({SOAP12_NS}))


@pytest.fixture(scope="module")
def wss4j_trust(tmp_path_factory) -> Path:
    """A trust directory holding only the WSS4J vector's CA as ``<hash>.0`` (no CRL)."""
    directory = tmp_path_factory.mktemp("wss4j-trust")
    pem = (VECTORS / "wss4j_ca.pem").read_bytes()
    (directory / f"{pki_module.subject_hash(x509.load_pem_x509_certificate(pem))}.0").write_bytes(pem)
    return directory


def test_wss4j_request_verifies_with_its_ca(wss4j_trust):
    data = (VECTORS / "wss4j_soap12_request.xml").read_bytes()
    verified = Verifier(trust=TrustStore.from_directory(wss4j_trust), policy=WSS4J_POLICY,
                        clock=lambda: WSS4J_TIME).verify(data)
    assert "VATSK-1234567890" in verified.principal.dn
    assert verified.body[0].tag == "{http://financnasprava.sk/ekasa/schema/v2}RegisterLocationRequest"


def test_wss4j_request_and_crls(wss4j_trust):
    """The default trust store validates a foreign CA's chain without a CRL; one that demands CRLs
    refuses it (the vector comes without one)."""
    data = (VECTORS / "wss4j_soap12_request.xml").read_bytes()
    strict = TrustStore.from_directory(wss4j_trust, require_crl=True)
    error = refusal(Verifier(trust=strict, policy=WSS4J_POLICY, clock=lambda: WSS4J_TIME), data)
    assert error.code == "InvalidSecurityToken" and "CRL" in str(error)


def test_wss4j_request_is_refused_under_the_default_policy(wss4j_trust):
    data = (VECTORS / "wss4j_soap12_request.xml").read_bytes()
    error = refusal(Verifier(trust=TrustStore.from_directory(wss4j_trust), clock=lambda: WSS4J_TIME), data)
    assert error.code == "InvalidSecurity" and "SOAP 1.2" in str(error)
    # SOAP 1.2 allowed but a Timestamp still required (the default): refused too.
    policy = VerifyPolicy(soap_versions=frozenset({SOAP12_NS}))
    error = refusal(Verifier(trust=TrustStore.from_directory(wss4j_trust), policy=policy, clock=lambda: WSS4J_TIME), data)
    assert error.code == "InvalidSecurity" and "Timestamp" in str(error)


def test_wss4j_request_outside_its_certificate_validity_is_refused(wss4j_trust):
    data = (VECTORS / "wss4j_soap12_request.xml").read_bytes()
    late = parse_xsd_datetime("2022-01-01T00:00:00Z").timestamp()
    error = refusal(Verifier(trust=TrustStore.from_directory(wss4j_trust), policy=WSS4J_POLICY, clock=lambda: late), data)
    assert error.code in ("InvalidSecurityToken", "FailedAuthentication")


def test_wss4j_tampered_request_is_refused(wss4j_trust):
    data = (VECTORS / "wss4j_soap12_request.xml").read_bytes().replace(b'SendingCount="2"', b'SendingCount="3"')
    error = refusal(Verifier(trust=TrustStore.from_directory(wss4j_trust), policy=WSS4J_POLICY,
                             clock=lambda: WSS4J_TIME), data)
    assert error.code == "FailedCheck"


def test_wss4j_vector_verifies_with_xmlsec1_too(tmp_path):
    """Cross-check of the vector itself with xmlsec1, keyed by the certificate it embeds."""
    data = (VECTORS / "wss4j_soap12_request.xml").read_bytes()
    embedded = parse(data).findtext(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate")
    cert = x509.load_der_x509_certificate(__import__("base64").b64decode("".join(embedded.split())))
    (tmp_path / "signer.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert xmlsec1_verify(tmp_path, data, tmp_path / "signer.pem").returncode == 0
    tampered = data.replace(b'SendingCount="2"', b'SendingCount="3"')
    assert xmlsec1_verify(tmp_path, tampered, tmp_path / "signer.pem").returncode != 0
