"""The one parser for untrusted XML: no DTD, no entities, no network, bounded size and depth.

Everything that arrives from outside (SOAP requests, responses, usage records) goes through
``parse_untrusted``; a refusal is a ``SecurityError`` whose message says what was wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from ..errors import SecurityError

# libxml2 refuses nesting deeper than 256 unless XML_PARSE_HUGE is set; our limit is lower or equal.
LIBXML2_DEPTH_MAX = 256
# Without XML_PARSE_HUGE (never set here) libxml2 reads no text node or attribute value longer than
# this (XML_MAX_TEXT_LENGTH) and no name longer than 50,000 bytes (XML_MAX_NAME_LENGTH).
LIBXML2_VALUE_BYTES_MAX = 10_000_000
LIBXML2_NAME_BYTES_MAX = 50_000


@dataclass(frozen=True, slots=True)
class ParseLimits:
    bytes_max: int = 10_000_000
    depth_max: int = LIBXML2_DEPTH_MAX
    elements_max: int = 1_000_000


DEFAULT_LIMITS = ParseLimits()

_PARSER_OPTIONS = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_blank_text=False,
    collect_ids=False,
)


def _parser() -> etree.XMLParser:
    # A parser object is not thread-safe; a fresh one is cheap.
    return etree.XMLParser(**_PARSER_OPTIONS)


def _refuse_doctype(data: bytes) -> None:
    """DTDs have no place in SOAP (SOAP 1.1 §3, WS-I BP R1008): refuse them before parsing."""
    head = data[:4]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head in (b"<\x00?\x00", b"\x00<\x00?"):
        text = data.decode("utf-16", errors="replace")
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise SecurityError("the XML document declares a DTD or entities; they are not accepted")
        return
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise SecurityError("the XML document declares a DTD or entities; they are not accepted")


def parse_untrusted(data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> etree._ElementTree:
    """Parse bytes from outside; raise ``SecurityError`` on anything unsafe or malformed."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("parse_untrusted takes bytes")
    if len(data) > limits.bytes_max:
        raise SecurityError(f"the message is {len(data):,} bytes; at most {limits.bytes_max:,} are accepted")
    if not data.strip():
        raise SecurityError("the message is empty")
    _refuse_doctype(bytes(data))
    try:
        root = etree.fromstring(bytes(data), _parser())
    except etree.XMLSyntaxError as error:
        reason = str(error)
        if "depth" in reason.lower():
            raise SecurityError(f"the XML is nested deeper than {limits.depth_max} levels") from None
        if "XML_PARSE_HUGE" in reason or "huge" in reason.lower():     # libxml2's hint names an option we never set
            raise SecurityError(f"the XML holds a value too large to read: a text or attribute value is longer "
                                f"than {LIBXML2_VALUE_BYTES_MAX:,} bytes, or a name longer than "
                                f"{LIBXML2_NAME_BYTES_MAX:,}") from None
        raise SecurityError(f"the message is not well-formed XML: {reason}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise SecurityError("the XML document declares a DTD or entities; they are not accepted")
    _check_shape(root, limits)
    return tree


def _check_shape(root: etree._Element, limits: ParseLimits) -> None:
    elements = 0
    for node in root.iter():
        elements += 1
        if node.tag is etree.Entity:
            raise SecurityError("the XML uses entity references; they are not accepted")
    if elements > limits.elements_max:
        raise SecurityError(f"the XML has more than {limits.elements_max:,} elements")
    if limits.depth_max < LIBXML2_DEPTH_MAX:  # deeper ones libxml2 has refused while parsing
        depth = 0
        for event, _ in etree.iterwalk(root, events=("start", "end")):
            depth += 1 if event == "start" else -1
            if depth > limits.depth_max:
                raise SecurityError(f"the XML is nested deeper than {limits.depth_max} levels")
