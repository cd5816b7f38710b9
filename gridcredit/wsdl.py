"""What our WSDLs say beyond spyne's output, so that stubs from stock SOAP stacks work as generated.

spyne writes a correct document/literal SOAP 1.1 WSDL, but:
- it declares every namespace it knows, the WSDL SOAP 1.2 binding's among them although only a
  SOAP 1.1 binding exists, and gSOAP's ``wsdl2h`` then makes stubs that send SOAP 1.2: only the
  namespaces the document uses are declared (some only inside attribute values: ``type="tns:…"``);
- it writes the service schema (which imports the common one) before the common schema, and
  ``wsimport`` then cannot resolve the imported types: a schema comes after those it imports;
- it says nothing about security: a WS-SecurityPolicy 1.2 policy attached to the binding says
  what every request and answer carries (``security_policy``), so that toolkits that read policy
  (Metro, CXF, gSOAP's ``wsdl2h`` notes) configure signing themselves.
"""
from __future__ import annotations

from lxml import etree

from .security.wssec import WSU_NS

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSP_NS = "http://www.w3.org/ns/ws-policy"                                  # WS-Policy 1.5
SP_NS = "http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702"         # WS-SecurityPolicy 1.2

# Attributes of WSDL 1.1 and XML Schema whose values are QNames (or lists of them): the prefixes
# in them must stay declared although no element or attribute name uses them.
QNAME_ATTRIBUTES = frozenset({"type", "element", "message", "binding", "base", "ref", "itemType", "memberTypes",
                              "substitutionGroup", "refer"})

ENDPOINT_POLICY_ID = "GridcreditSignedEndpoint"
MESSAGE_POLICY_ID = "GridcreditSignedMessage"


def _sp(name: str) -> str:
    return f"{{{SP_NS}}}{name}"


def _wsp(name: str) -> str:
    return f"{{{WSP_NS}}}{name}"


def _nested(parent: etree._Element, name: str) -> etree._Element:
    """``<sp:name><wsp:Policy/></sp:name>`` under ``parent``; returns the inner wsp:Policy."""
    return etree.SubElement(etree.SubElement(parent, _sp(name)), _wsp("Policy"))


def _x509_token(parent: etree._Element, name: str, include: str) -> None:
    token = etree.SubElement(_nested(parent, name), _sp("X509Token"))
    token.set(_sp("IncludeToken"), f"{SP_NS}/IncludeToken/{include}")
    etree.SubElement(etree.SubElement(token, _wsp("Policy")), _sp("WssX509V3Token10"))


def security_policy() -> list[etree._Element]:
    """The two policies every binding refers to.

    Endpoint (on the binding): an asymmetric binding — the caller signs with its X.509
    certificate, sent in the message as a BinarySecurityToken (a proxy's chain as a PKIPath,
    which the X.509 token profile also allows), the host answers signed with its own, likewise
    included —; a signed Timestamp; RSA-SHA256 over exclusive C14N with SHA-256 digests (the
    Basic256Sha256 suite; its encryption algorithms are unused: nothing is encrypted); any
    header layout; answers confirm the request's signature (WS-Security 1.1).
    Message (on each operation's input and output): the Body is signed.
    """
    endpoint = etree.Element(_wsp("Policy"))
    endpoint.set(f"{{{WSU_NS}}}Id", ENDPOINT_POLICY_ID)
    alternative = etree.SubElement(etree.SubElement(endpoint, _wsp("ExactlyOne")), _wsp("All"))
    binding = _nested(alternative, "AsymmetricBinding")
    _x509_token(binding, "InitiatorToken", "AlwaysToRecipient")
    _x509_token(binding, "RecipientToken", "AlwaysToInitiator")
    etree.SubElement(_nested(binding, "AlgorithmSuite"), _sp("Basic256Sha256"))
    etree.SubElement(_nested(binding, "Layout"), _sp("Lax"))
    etree.SubElement(binding, _sp("IncludeTimestamp"))
    etree.SubElement(binding, _sp("OnlySignEntireHeadersAndBody"))
    wss11 = _nested(alternative, "Wss11")
    etree.SubElement(wss11, _sp("RequireSignatureConfirmation"))

    message = etree.Element(_wsp("Policy"))
    message.set(f"{{{WSU_NS}}}Id", MESSAGE_POLICY_ID)
    alternative = etree.SubElement(etree.SubElement(message, _wsp("ExactlyOne")), _wsp("All"))
    etree.SubElement(etree.SubElement(alternative, _sp("SignedParts")), _sp("Body"))
    return [endpoint, message]


def _reference(policy_id: str) -> etree._Element:
    return etree.Element(_wsp("PolicyReference"), URI=f"#{policy_id}")


def _ordered_schemas(types: etree._Element) -> None:
    """Inside wsdl:types, each xs:schema after the schemas it imports (spyne's own order otherwise)."""
    schemas = [child for child in types if child.tag == f"{{{XSD_NS}}}schema"]
    by_namespace = {schema.get("targetNamespace"): schema for schema in schemas}
    ordered: list[etree._Element] = []

    def place(schema: etree._Element, seen: frozenset) -> None:
        if schema in ordered or schema in seen:
            return
        for imported in schema.iterfind(f"{{{XSD_NS}}}import"):
            dependency = by_namespace.get(imported.get("namespace"))
            if dependency is not None:
                place(dependency, seen | {schema})
        ordered.append(schema)

    for schema in schemas:
        place(schema, frozenset())
    for schema in ordered:
        types.append(schema)  # moves it to the end, in dependency order


def _qname_prefixes(root: etree._Element) -> set[str]:
    prefixes = set()
    for element in root.iter(tag=etree.Element):
        for name, value in element.attrib.items():
            if etree.QName(name).localname in QNAME_ATTRIBUTES and not name.startswith("{"):
                prefixes.update(token.partition(":")[0] for token in value.split() if ":" in token)
    return prefixes


def finish(root: etree._Element) -> etree._Element:
    """spyne's WSDL ``root`` as we serve it (see the module's docstring); returns the new root."""
    for types in root.iterfind(f"{{{WSDL_NS}}}types"):
        _ordered_schemas(types)
    nsmap = {**root.nsmap, "wsp": WSP_NS, "sp": SP_NS, "wsu": WSU_NS}
    finished = etree.Element(root.tag, attrib=dict(root.attrib), nsmap=nsmap)
    finished.text = root.text
    policies = security_policy()
    documentation = root.find(f"{{{WSDL_NS}}}documentation")
    if documentation is not None:
        finished.append(documentation)
    finished.extend(policies)
    finished.extend(list(root))
    for binding in finished.iterfind(f"{{{WSDL_NS}}}binding"):
        binding.insert(0, _reference(ENDPOINT_POLICY_ID))
        for operation in binding.iterfind(f"{{{WSDL_NS}}}operation"):
            for message in (*operation.iterfind(f"{{{WSDL_NS}}}input"), *operation.iterfind(f"{{{WSDL_NS}}}output")):
                message.insert(0, _reference(MESSAGE_POLICY_ID))
    etree.cleanup_namespaces(finished, keep_ns_prefixes=sorted(_qname_prefixes(finished)))
    return finished
