"""The Bank's states and transactions as XML documents in namespace ``urn:gridcredit:bank:1``.

One document per state, one element per field (camelCase of the Python name, units kept:
``expires_at_us`` → ``expiresAtUs``), fields that are ``None`` left out, enums by their value,
integers in decimal. An account's holders are ``<holders><holder role="owner">DN</holder>…``, its
service grants (left out when it has none, as in documents written before grants existed)
``<grants><grant holdMax="…" periodMax="…" periodUs="…" periodIndex="…" heldInPeriod="…"
grantedAtUs="…">DN</grant>…`` (an attribute that is None left out).
A transaction therefore reads naturally in XPath, for example with ``t`` bound to the namespace::

    /t:Transaction[t:kind='charge' and t:amount > 100 and t:accountId='vo-atlas']

Decoding is strict (unknown or repeated elements, bad integers or enum values are refused with
``StoreError``): the store is trusted, but a hand-edited document must not decode silently.

Two readers, one answer. The XML parser (:func:`from_element`) is the reference. A document in
exactly the form the store keeps it — lxml's serialization of one element per field: the root
with the bank's namespace declared, ``<name>text</name>`` or ``<name/>`` and nothing between them,
printable ASCII text without references — is read by a scanner over its text instead
(:func:`flat_fields`, several times faster; audits read millions). The scanner accepts only
documents the parser reads to the same state and hands anything else to the parser, which
decodes it or refuses it; the tests hold the two to that.
The XML is not the hash input; the hash covers :func:`ledger_chain.canonical_bytes` of the decoded
transaction, so re-serializing (whitespace, prefixes) never breaks the chain.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import operator
import re
import threading
import types
import typing
from typing import Iterable, Iterator

from lxml import etree

from gridcredit.errors import StoreError
from gridcredit.xmlstore import NormalXml

from .types import (Account, Holder, Hold, LedgerHead, MoneySupply, PendingMint, RequestRecord, Role, ServiceGrant,
                    Transaction)

NAMESPACE = "urn:gridcredit:bank:1"
NAMESPACES = {"t": NAMESPACE}
DOCUMENT_BYTES_MAX = 1_000_000
_INTEGER = re.compile(r"-?[0-9]{1,20}")

DOCUMENT_TYPES: tuple[type, ...] = (Account, Hold, PendingMint, MoneySupply, LedgerHead, RequestRecord,
                                    Transaction)
_TYPE_BY_ROOT = {cls.__name__: cls for cls in DOCUMENT_TYPES}


def _qualified(local_name: str) -> str:
    return f"{{{NAMESPACE}}}{local_name}"


def element_name(field_name: str) -> str:
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, str, type, bool], ...]:
    """(field name, element name, value type, optional) for each field of a document type. A list with a
    default (an account's grants) is optional: absent when empty."""
    hints = typing.get_type_hints(cls)
    rows = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        optional = False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            members = [member for member in typing.get_args(hint) if member is not type(None)]
            optional = len(members) < len(typing.get_args(hint))
            hint = members[0]
        elif typing.get_origin(hint) is tuple and field.default is not dataclasses.MISSING:
            optional = True
        rows.append((field.name, element_name(field.name), hint, optional))
    return tuple(rows)


# A grant's fields other than its DN (the element's text), as attributes.
_GRANT_ATTRIBUTES = tuple((field.name, element_name(field.name)) for field in dataclasses.fields(ServiceGrant)
                          if field.name != "service_dn")


def _text(value: object) -> str:
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def to_element(state: object) -> etree._Element:
    cls = type(state)
    root = etree.Element(_qualified(cls.__name__), nsmap={None: NAMESPACE})
    for field_name, name, value_type, _optional in _schema(cls):
        value = getattr(state, field_name)
        if value is None:
            continue
        if field_name == "holders":
            holders = etree.SubElement(root, _qualified(name))
            for holder in value:
                child = etree.SubElement(holders, _qualified("holder"), role=holder.role.value)
                child.text = holder.dn
            continue
        if field_name == "grants":
            if value:
                grants = etree.SubElement(root, _qualified(name))
                for grant in value:
                    child = etree.SubElement(grants, _qualified("grant"),
                                             {attribute: str(getattr(grant, grant_field))
                                              for grant_field, attribute in _GRANT_ATTRIBUTES
                                              if getattr(grant, grant_field) is not None})
                    child.text = grant.service_dn
            continue
        etree.SubElement(root, _qualified(name)).text = _text(value)
    return root


def to_xml(state: object) -> bytes:
    """Serialize an Account, Hold, PendingMint, MoneySupply, LedgerHead, RequestRecord or Transaction."""
    text = _account_xml(state) if type(state) is Account else _flat_xml(state)
    if text is not None:      # already the store's form: kept as it is (no root attributes)
        return NormalXml(text.encode("ascii"))
    return etree.tostring(to_element(state), encoding="UTF-8", xml_declaration=False)


_ACCOUNT_START, _ACCOUNT_END = f'<Account xmlns="{NAMESPACE}">', "</Account>"


def _account_xml(account: Account) -> str | None:
    """What lxml writes for :func:`to_element` of an account whose texts (DNs, ids) are plain and not empty,
    written directly (lxml took ~40 µs an account: a batch charging 1,000 bidders writes 1,000) — the store's
    form too; None for any other (lxml writes those; an empty text: lxml writes <x></x>, the store keeps <x/>)."""
    texts = []
    parts = [_ACCOUNT_START]
    for field_name, name, _type, _optional in _schema(Account):
        value = getattr(account, field_name)
        if value is None:
            continue
        if field_name == "holders":
            if not value:
                parts.append(f"<{name}/>")
                continue
            parts.append(f"<{name}>")
            for holder in value:
                texts.append(holder.dn)
                parts.append(f'<holder role="{holder.role.value}">{holder.dn}</holder>')
            parts.append(f"</{name}>")
        elif field_name == "grants":
            if not value:
                continue
            parts.append(f"<{name}>")
            for grant in value:
                texts.append(grant.service_dn)
                attributes = "".join(f' {attribute}="{getattr(grant, grant_field)}"'
                                     for grant_field, attribute in _GRANT_ATTRIBUTES
                                     if getattr(grant, grant_field) is not None)
                parts.append(f"<grant{attributes}>{grant.service_dn}</grant>")
            parts.append(f"</{name}>")
        else:
            text = value.value if isinstance(value, enum.Enum) else value if type(value) is str else str(value)
            texts.append(text)
            parts.append(f"<{name}>{text}</{name}>")
    if "" in texts or not _PLAIN_TEXT.fullmatch("".join(texts)):
        return None
    parts.append(_ACCOUNT_END)
    return "".join(parts)


_PLAIN_TEXT = re.compile(r"[\x20-\x25\x27-\x3b\x3d\x3f-\x7e]*")   # printable ASCII but & < >


@functools.cache
def _flat_writing_table(cls: type):
    """(root start tag, root end tag, getter of the field values, element names) of a flat type."""
    table = _flat_table(cls)
    if table is None:
        return None
    schema = _schema(cls)
    return (table[0], table[1], operator.attrgetter(*(field_name for field_name, *_ in schema)),
            tuple((f"<{name}>", f"</{name}>", isinstance(value_type, type) and issubclass(value_type, enum.Enum),
                   f"<{name}/>") for _field, name, value_type, _optional in schema))


def _flat_xml(state: object) -> str | None:
    """The store's form (``normalize``) of what lxml writes for :func:`to_element` of a flat state whose texts
    are plain (printable ASCII, no markup characters), written directly — lxml's form but an empty text
    written ``<x/>`` (lxml writes ``<x></x>``, the store keeps ``<x/>``: a batch's unsigned transactions have
    an empty signature) —; None for any other state (lxml writes those)."""
    table = _flat_writing_table(type(state))
    if table is None:
        return None
    start, end, values_of, elements = table
    texts = []
    parts = [start]
    for (opening, closing, is_enum, empty), value in zip(elements, values_of(state)):
        if value is None:
            continue
        if value == "":
            parts.append(empty)
            continue
        if is_enum:
            value = value.value
        elif type(value) is not str:
            value = str(value)
        texts.append(value)
        parts += (opening, value, closing)
    if not _PLAIN_TEXT.fullmatch("".join(texts)):     # one check of every text (a character class: the same)
        return None
    parts.append(end)
    return "".join(parts)


def _integer_decoder(text: str, where: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise StoreError(f"{where}: not an integer: {text!r}")
    return int(text)


def _string_decoder(text: str, where: str) -> str:
    return text


def _enum_decoder(enum_type: type[enum.Enum]):
    members = {member.value: member for member in enum_type}

    def decode(text: str, where: str) -> enum.Enum:
        member = members.get(text)
        if member is None:
            raise StoreError(f"{where}: {text!r} is not one of {', '.join(members)}")
        return member
    return decode


def _decoder(value_type: type):
    if value_type is int:
        return _integer_decoder
    if value_type is str:
        return _string_decoder
    if isinstance(value_type, type) and issubclass(value_type, enum.Enum):
        return _enum_decoder(value_type)
    if typing.get_origin(value_type) is tuple:
        return None                        # holders: decoded by hand
    raise TypeError(f"no decoder for {value_type!r}")


@functools.cache
def _decoding_table(cls: type) -> tuple[dict, tuple[tuple[int, str], ...], tuple]:
    """(tag → (field index, decoder, where), required (field index, element name) pairs, the value of each
    field whose element is absent: None, or the default of a list)."""
    schema = _schema(cls)
    table = {_qualified(name): (index, _decoder(value_type), f"{cls.__name__}/{name}")
             for index, (_field_name, name, value_type, _optional) in enumerate(schema)}
    required = tuple((index, name) for index, (_field, name, _type, optional) in enumerate(schema) if not optional)
    absent = tuple(field.default if typing.get_origin(row[2]) is tuple and field.default is not dataclasses.MISSING
                   else None for field, row in zip(dataclasses.fields(cls), schema))
    return table, required, absent


_UNSET = object()   # a field whose element has not been read (decoders never answer None)


_ROLE_DECODER = _enum_decoder(Role)
_HOLDER_TAG = _qualified("holder")
_GRANT_TAG = _qualified("grant")


def _holder(element: etree._Element, where: str) -> Holder:
    if element.tag != _HOLDER_TAG:
        raise StoreError(f"{where}: unknown element {element.tag}")
    return Holder(element.text or "", _ROLE_DECODER(element.get("role", ""), where))


def _grant(element: etree._Element, where: str) -> ServiceGrant:
    if element.tag != _GRANT_TAG:
        raise StoreError(f"{where}: unknown element {element.tag}")
    known = {attribute for _field, attribute in _GRANT_ATTRIBUTES}
    if not set(element.attrib) <= known:
        raise StoreError(f"{where}: unknown grant attributes {sorted(set(element.attrib) - known)}")
    values = {grant_field: _integer_decoder(element.get(attribute), where) if attribute in element.attrib else None
              for grant_field, attribute in _GRANT_ATTRIBUTES}
    for required in ("period_index", "held_in_period", "granted_at_us"):
        if values[required] is None:
            raise StoreError(f"{where}: a grant needs {element_name(required)}")
    return ServiceGrant(service_dn=element.text or "", **values)


_NESTED_READERS = {"holders": _holder, "grants": _grant}
_NAMESPACE_PREFIX = "{" + NAMESPACE + "}"


def from_element(root: etree._Element, expected: type | None = None) -> object:
    tag = root.tag
    if not isinstance(tag, str) or not tag.startswith(_NAMESPACE_PREFIX):
        raise StoreError(f"not a bank document: root element {tag!r}")
    local_name = tag[len(_NAMESPACE_PREFIX):]
    cls = _TYPE_BY_ROOT.get(local_name)
    if cls is None or (expected is not None and cls is not expected):
        raise StoreError(f"expected a {expected.__name__ if expected else 'bank'} document, found {local_name}")
    table, required, absent = _decoding_table(cls)
    values = [_UNSET] * len(absent)     # in field order
    for child in root:
        known = table.get(child.tag)
        if known is None:
            if not isinstance(child.tag, str):
                continue                  # comments and processing instructions carry nothing
            raise StoreError(f"{local_name}: unknown element {child.tag}")
        index, decode, where = known
        if values[index] is not _UNSET:
            raise StoreError(f"{where} appears twice")
        if decode is None:
            read = _NESTED_READERS[_schema(cls)[index][0]]
            values[index] = tuple(read(item, where) for item in child if isinstance(item.tag, str))
        else:
            values[index] = decode(child.text or "", where)
    for index, name in required:
        if values[index] is _UNSET:
            raise StoreError(f"{local_name}: required element {name} is missing")
    return cls(*[default if value is _UNSET else value for value, default in zip(values, absent)])


_local = threading.local()


def _parser() -> etree.XMLParser:
    """One parser per thread (lxml parsers are not thread-safe; making one per call is slow)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = _new_parser()
    return parser


def _new_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_blank_text=True, collect_ids=False)


def parse(data: bytes) -> etree._Element:
    if len(data) > DOCUMENT_BYTES_MAX:
        raise StoreError(f"a bank document is {len(data)} bytes; at most {DOCUMENT_BYTES_MAX}")
    try:
        return etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as error:
        raise StoreError(f"a bank document is not well-formed XML: {error}") from None


def from_xml(data: bytes, expected: type | None = None) -> object:
    if expected is not None:
        values = flat_fields(data, expected)
        if values is not None:
            return expected(*values)
    return from_element(parse(data), expected)


# The scanner's grammar (see the module docstring). Anything outside it goes to the parser.
_FLAT_BYTES = bytes(byte for byte in range(0x20, 0x7F) if byte != ord("&")) + b"\t\n"
_FLAT_FIELD = re.compile(r"<([A-Za-z]+)>([^<&]*)</\1>|<([A-Za-z]+)/>")


@functools.cache
def _flat_table(cls: type) -> tuple[str, str, dict[str, tuple[int, object]], tuple[int, ...], int] | None:
    """(root start tag, root end tag, local name → (field index, int | str | {value: member}),
    indexes of required fields, field count); None for a type with nested elements (Account)."""
    fields = {}
    for index, (_field_name, name, value_type, _optional) in enumerate(_schema(cls)):
        if value_type is int or value_type is str:
            fields[name] = (index, value_type)
        elif isinstance(value_type, type) and issubclass(value_type, enum.Enum):
            fields[name] = (index, {member.value: member for member in value_type})
        else:
            return None
    required = tuple(index for index, (_field, _name, _type, optional) in enumerate(_schema(cls)) if not optional)
    return f'<{cls.__name__} xmlns="{NAMESPACE}">', f"</{cls.__name__}>", fields, required, len(fields)


def flat_fields(data: bytes, cls: type) -> list | None:
    """The field values (in field order, None where absent) of a ``cls`` document in the store's own
    form, read without a parser; None when the document is not in that form (then only the parser
    may say what it holds, or that it is not a valid document)."""
    table = _flat_table(cls)
    if table is None or len(data) > DOCUMENT_BYTES_MAX or data.translate(None, _FLAT_BYTES) or b"]]>" in data:
        return None
    start, end, fields, required, count = table
    text = data.decode("ascii")
    if not (text.startswith(start) and text.endswith(end)):
        return None
    values = [None] * count
    consumed = len(start) + len(end)
    for name, value, empty_name in _FLAT_FIELD.findall(text, len(start), len(text) - len(end)):
        if empty_name:
            name = empty_name
            consumed += len(name) + 3
        else:
            consumed += 2 * len(name) + len(value) + 5
        known = fields.get(name)
        if known is None or values[known[0]] is not None:
            return None
        index, kind = known
        if kind is int:
            if not _INTEGER.fullmatch(value):
                return None
            values[index] = int(value)
        elif kind is str:
            values[index] = value
        else:
            member = kind.get(value)
            if member is None:
                return None
            values[index] = member
    if consumed != len(text):
        return None
    for index in required:
        if values[index] is None:
            return None
    return values


def account_from_xml(data: bytes) -> Account:
    return from_xml(data, Account)


def hold_from_xml(data: bytes) -> Hold:
    return from_xml(data, Hold)


def pending_mint_from_xml(data: bytes) -> PendingMint:
    return from_xml(data, PendingMint)


def money_supply_from_xml(data: bytes) -> MoneySupply:
    return from_xml(data, MoneySupply)


def ledger_head_from_xml(data: bytes) -> LedgerHead:
    return from_xml(data, LedgerHead)


def request_record_from_xml(data: bytes) -> RequestRecord:
    return from_xml(data, RequestRecord)


def transaction_from_xml(data: bytes) -> Transaction:
    return from_xml(data, Transaction)


def transactions_from_xml(documents: Iterable[bytes]) -> Iterator[Transaction]:
    """Decode a stream of transaction documents lazily (for :func:`audit.audit`)."""
    for data in documents:
        yield transaction_from_xml(data)


# Document ids in the store: one collection per type; ids that sort in ledger order.
COLLECTIONS = {Account: "accounts", Hold: "holds", PendingMint: "pending_mints", MoneySupply: "bank",
               LedgerHead: "bank", RequestRecord: "requests", Transaction: "transactions"}
MONEY_SUPPLY_ID = "money-supply"
LEDGER_HEAD_ID = "ledger-head"


def transaction_document_id(seq: int) -> str:
    """Zero-padded so that lexical order is ledger order."""
    return f"{seq:020d}"


_NUMBERED_ID = re.compile(r"^([a-z]+)-([1-9][0-9]{0,19})$")


def numbered_document_id(object_id: str) -> str:
    """The document id of a hold (``hold-<seq>``) or pending mint (``mint-<seq>``): the number
    zero-padded, so that listings come in the order they were made (hold-9 before hold-12).
    Any other id is its own document id (it names nothing the bank made: a lookup finds nothing)."""
    match = _NUMBERED_ID.match(object_id)
    return f"{match.group(1)}-{int(match.group(2)):020d}" if match else object_id
