"""The store interface shared by both backends: documents, pages, transactions, limits.

Documents live in *collections* under a *doc_id*; each write bumps the document's ``version``
(versions continue after a delete: a deleted document leaves a tombstone that keeps its version).
``Document.xml`` is the document as stored: UTF-8, no XML declaration, re-serialized by lxml on
the way in, so both backends hand back the same bytes for the same document.

Attribute indexes. ``open_store(..., indexes=[AttributeIndex("ur_", ("user", "vo"))])`` declares
that in every collection whose name starts with ``ur_`` the listed unqualified attributes of the
documents' ROOT element are indexed. ``query``/``count`` take ``where={"user": "u1", "vo":
("a", "b")}``: a document matches when, for every item, its root element has that unqualified
attribute with exactly that string value (a tuple: any of them) — and the XPath, if one is given,
is true of it. ``where`` is applied before the XPath and the XPath only narrows it: whatever the
XPath is, no document outside what ``where`` selected is returned or counted (callers scope what a
user may see with ``where``). When every ``where`` name is indexed for the collection the lookup
uses the index and no ``scan_limit`` applies to it (an XPath then examines only the documents the
index found, at most ``scan_limit`` of them); otherwise the collection is scanned, bounded by
``scan_limit`` like an unindexed XPath. Declarations are remembered by the store: a process that
opens it without ``indexes`` still maintains and uses the ones declared before (a declaration
for a prefix replaces the remembered one; changing one rebuilds that index at the next writable
open). ``store_text=False`` says the collections' documents are large and written once: the BaseX
backend then keeps no copy of their XML in each process's memory (see ``_basex``).

``open_store(..., read_only=True)`` opens without creating, repairing, rebuilding, applying or
writing anything (``transact`` raises ``StoreError``): for offline audits while a live server may
be running.
"""
from __future__ import annotations

import abc
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from lxml import etree

from gridcredit.errors import ConflictError, QueryError, StoreError

T = TypeVar("T")

COLLECTION_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DOC_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")  # XPath variable names and namespace prefixes
ATTRIBUTE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")   # indexed / where attribute names
PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")                 # AttributeIndex.collection_prefix
# characters XML 1.0 allows (an attribute value holding anything else cannot exist)
_XML_CHARS = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")



@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Every bound the store enforces, with defaults; pass one to a backend to change them."""
    document_bytes_max: int = 4_000_000
    transaction_writes_max: int = 10_000       # documents written by one transaction
    transaction_bytes_max: int = 200_000_000
    query_limit_max: int = 1_000               # documents returned by one query page
    query_time_s_max: float = 60.0             # the largest time_limit_s a query may ask (held during evaluation)
    scan_limit_default: int = 100_000          # documents an unindexed query may examine
    variables_max: int = 64
    xpath_chars_max: int = 10_000
    xpath_nodes_max: int = 1_000              # parts (steps, operators, calls, values) of one XPath
    xpath_predicate_depth_max: int = 4         # predicates nested in one another
    xpath_sandboxes: int = 4                   # embedded store: XPath evaluation processes per process
    xpath_sandbox_bytes_max: int = 3 << 30     # embedded store: address space of one such process
    retries_default: int = 5
    pool_size: int = 16                        # BaseX sessions per store (one per thread in use)
    xml_depth_max: int = 256
    where_names_max: int = 16                  # attributes one ``where`` may name
    where_values_max: int = 1_000              # values one ``where`` item may list
    where_value_bytes_max: int = 1_000         # UTF-8 bytes of one ``where`` value (= BaseX's index MAXLEN)
    indexes_max: int = 64                      # declared AttributeIndex entries
    indexed_attributes_max: int = 32           # attributes of one AttributeIndex


@dataclass(frozen=True, slots=True)
class AttributeIndex:
    """Index the unqualified ``attributes`` of the root element of every document in every
    collection whose name starts with ``collection_prefix``. ``store_text=False``: documents there
    are large and written once — the BaseX backend keeps only their versions in memory and reads
    their XML back from BaseX (or the journal), and its databases for them have no text index."""
    collection_prefix: str
    attributes: tuple[str, ...]
    store_text: bool = True


DEFAULT_LIMITS = StoreLimits()


@dataclass(frozen=True, slots=True)
class Document:
    collection: str
    doc_id: str
    xml: bytes
    version: int


@dataclass(frozen=True, slots=True)
class QueryPage:
    documents: list[Document]
    next_offset: int | None      # None: no more matches


def check_collection(collection: str) -> str:
    if not isinstance(collection, str) or not COLLECTION_PATTERN.match(collection):
        raise StoreError(f"invalid collection name {collection!r} (want [a-z][a-z0-9_]{{0,62}})")
    return collection


def check_doc_id(doc_id: str) -> str:
    if not isinstance(doc_id, str) or not DOC_ID_PATTERN.match(doc_id):
        raise StoreError(f"invalid document id {doc_id!r} (want [A-Za-z0-9][A-Za-z0-9._:@+=-]{{0,199}})")
    return doc_id


# libxml2 refuses nesting deeper than this unless XML_PARSE_HUGE is set (our parser never sets it).
LIBXML2_DEPTH_MAX = 256
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          huge_tree=False, remove_blank_text=False, remove_comments=False)


def parse_untrusted(xml: bytes, limits: StoreLimits = DEFAULT_LIMITS) -> etree._Element:
    """The one parse of document bytes: no DTD, no entities, no network, no huge trees."""
    if not isinstance(xml, (bytes, bytearray)):
        raise StoreError("document xml must be bytes")
    if len(xml) > limits.document_bytes_max:
        raise StoreError(f"document of {len(xml)} bytes exceeds {limits.document_bytes_max}")
    try:
        root = etree.fromstring(bytes(xml), parser=_PARSER)
    except etree.XMLSyntaxError as error:
        if "depth" in str(error).lower():
            raise StoreError(f"document deeper than {min(limits.xml_depth_max, LIBXML2_DEPTH_MAX)} levels") from None
        raise StoreError(f"document is not well-formed XML: {error}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise StoreError("documents with a DOCTYPE are refused")
    if limits.xml_depth_max < LIBXML2_DEPTH_MAX:  # deeper ones libxml2 has refused already
        depth, stack = 0, [(root, 1)]
        while stack:
            node, level = stack.pop()
            depth = max(depth, level)
            if depth > limits.xml_depth_max:
                raise StoreError(f"document deeper than {limits.xml_depth_max} levels")
            stack.extend((child, level + 1) for child in node)
    return root


def normalize(xml: bytes, limits: StoreLimits = DEFAULT_LIMITS) -> bytes:
    """Validate and re-serialize: UTF-8, no declaration, no prolog comments or PIs."""
    return normalize_with_attributes(xml, limits)[0]


def normalize_with_attributes(xml: bytes, limits: StoreLimits = DEFAULT_LIMITS) -> tuple[bytes, dict[str, str]]:
    """``normalize``, and the root element's unqualified attributes (for attribute indexes)."""
    root = parse_untrusted(xml, limits)
    data = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    if len(data) > limits.document_bytes_max:
        raise StoreError(f"document of {len(data)} bytes exceeds {limits.document_bytes_max}")
    return data, root_attributes(root)


class NormalXml(bytes):
    """Document bytes that their writer, our own code writing typed values, vouches are already what
    ``normalize`` gives — well-formed, UTF-8, no declaration, no DOCTYPE — and whose root element has no
    attributes. ``put`` keeps them as they are instead of parsing and writing them again: the Bank
    writes four documents per ledger operation (~20 µs each to normalize). Never for received input:
    only a writer whose output is tested against ``normalize`` (services/bank/documents.py) makes them."""

    __slots__ = ()


def normalized_for_put(xml: bytes, limits: StoreLimits) -> tuple[bytes, dict[str, str]]:
    """What a ``put`` stores of ``xml`` and the root's attributes: ``normalize_with_attributes``, or
    NormalXml as it is (within the size limit)."""
    if type(xml) is NormalXml:
        if len(xml) > limits.document_bytes_max:
            raise StoreError(f"document of {len(xml)} bytes exceeds {limits.document_bytes_max}")
        return bytes(xml), {}
    return normalize_with_attributes(xml, limits)


def check_indexes(indexes: Iterable[AttributeIndex], limits: StoreLimits = DEFAULT_LIMITS
                  ) -> dict[str, AttributeIndex]:
    """Validate declarations; returns them by prefix (attributes sorted, duplicates removed)."""
    if isinstance(indexes, AttributeIndex):
        raise StoreError("indexes must be a sequence of AttributeIndex, not one")
    checked: dict[str, AttributeIndex] = {}
    for index in indexes:
        if not isinstance(index, AttributeIndex):
            raise StoreError(f"indexes must hold AttributeIndex objects, not {type(index).__name__}")
        prefix = index.collection_prefix
        if not isinstance(prefix, str) or not PREFIX_PATTERN.match(prefix):
            raise StoreError(f"invalid index collection_prefix {prefix!r} (want [a-z][a-z0-9_]{{0,62}})")
        if isinstance(index.attributes, str) or not index.attributes:
            raise StoreError(f"index {prefix!r}: attributes must be a non-empty tuple of names")
        if len(index.attributes) > limits.indexed_attributes_max:
            raise StoreError(f"index {prefix!r}: more than {limits.indexed_attributes_max} attributes")
        for name in index.attributes:
            if not isinstance(name, str) or not ATTRIBUTE_PATTERN.match(name):
                raise StoreError(f"index {prefix!r}: invalid attribute name {name!r}")
        if not isinstance(index.store_text, bool):
            raise StoreError(f"index {prefix!r}: store_text must be a bool")
        if prefix in checked:
            raise StoreError(f"index {prefix!r} declared twice")
        checked[prefix] = AttributeIndex(prefix, tuple(sorted(set(index.attributes))), index.store_text)
    if len(checked) > limits.indexes_max:
        raise StoreError(f"more than {limits.indexes_max} attribute indexes")
    return checked


@dataclass(frozen=True, slots=True)
class Backlog:
    """Commits acknowledged but not yet in the query database (BaseX), as this process knows them."""
    transactions: int = 0
    xml_bytes: int = 0
    waiting_for_server: bool = False    # the query database is unreachable or not verified yet
    lag_s: float = 0.0                  # how long the oldest of them has waited (to about a second; 0: none wait)


@dataclass(frozen=True, slots=True)
class Coverage:
    """What the declared indexes say about one collection."""
    attributes: frozenset[str]     # indexed root attributes (empty: not indexed)
    store_text: bool               # False when any covering declaration says so


NOT_COVERED = Coverage(frozenset(), True)


def coverage(indexes: Mapping[str, AttributeIndex], collection: str) -> Coverage:
    """Every declaration whose prefix starts the collection's name covers it (attributes unite)."""
    covering = [index for prefix, index in indexes.items() if collection.startswith(prefix)]
    if not covering:
        return NOT_COVERED
    return Coverage(frozenset(name for index in covering for name in index.attributes),
                    all(index.store_text for index in covering))


def check_where(where: Mapping[str, object], limits: StoreLimits) -> dict[str, tuple[str, ...]]:
    """Validate a ``where``; returns name -> sorted distinct values (an empty tuple matches nothing)."""
    if not isinstance(where, Mapping):
        raise QueryError("where must be a mapping of attribute name to value(s)")
    if len(where) > limits.where_names_max:
        raise QueryError(f"where names more than {limits.where_names_max} attributes")
    checked: dict[str, tuple[str, ...]] = {}
    for name, value in where.items():
        if not isinstance(name, str) or not ATTRIBUTE_PATTERN.match(name):
            raise QueryError(f"invalid where attribute name {name!r}")
        values = (value,) if isinstance(value, str) else value
        if not isinstance(values, (tuple, list, set, frozenset)):
            raise QueryError(f"where[{name!r}] must be a str or a tuple of str, not {type(value).__name__}")
        if len(values) > limits.where_values_max:
            raise QueryError(f"where[{name!r}] lists more than {limits.where_values_max} values")
        for item in values:
            if not isinstance(item, str):
                raise QueryError(f"where[{name!r}] values must be str, not {type(item).__name__}")
            if len(item.encode("utf-8", "surrogatepass")) > limits.where_value_bytes_max:
                raise QueryError(f"where[{name!r}] value longer than {limits.where_value_bytes_max} bytes")
            if not _XML_CHARS.match(item):
                raise QueryError(f"where[{name!r}] value holds a character XML does not allow")
        checked[name] = tuple(sorted(set(values)))
    return checked


def root_attributes(root: etree._Element) -> dict[str, str]:
    """The unqualified attributes of a root element (what ``where`` compares)."""
    return {name: value for name, value in root.attrib.items() if not name.startswith("{")}


def where_matches(attributes: Mapping[str, str], where: Mapping[str, tuple[str, ...]]) -> bool:
    return all(attributes.get(name) in values for name, values in where.items())


def check_query_args(xpath: str | None, variables: Mapping[str, str | int], namespaces: Mapping[str, str],
                     offset: int, limit: int, time_limit_s: float, limits: StoreLimits) -> None:
    if xpath is not None and (not isinstance(xpath, str) or not xpath.strip()):
        raise QueryError("XPath expression must be a non-empty string")
    if xpath is not None and len(xpath) > limits.xpath_chars_max:
        raise QueryError(f"XPath expression longer than {limits.xpath_chars_max} characters")
    if len(variables) > limits.variables_max:
        raise QueryError(f"more than {limits.variables_max} variables")
    for name, value in variables.items():
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise QueryError(f"invalid variable name {name!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise QueryError(f"variable ${name} must be a str or int, not {type(value).__name__}")
    for prefix, uri in namespaces.items():
        if not isinstance(prefix, str) or not NAME_PATTERN.match(prefix) or "." in prefix:
            raise QueryError(f"invalid namespace prefix {prefix!r}")
        if not isinstance(uri, str) or not uri or any(c in uri for c in "\"'&<>{}") or len(uri) > 1000:
            raise QueryError(f"invalid namespace URI {uri!r}")
    if not isinstance(offset, int) or offset < 0:
        raise QueryError("offset must be a non-negative integer")
    if not isinstance(limit, int) or not 1 <= limit <= limits.query_limit_max:
        raise QueryError(f"limit must be between 1 and {limits.query_limit_max}")
    if not 0 < time_limit_s <= limits.query_time_s_max:
        raise QueryError(f"time_limit_s must be in (0, {limits.query_time_s_max}]")


class Transaction(abc.ABC):
    """What ``fn`` sees inside ``XmlStore.transact``: reads see the transaction's own writes.

    ``query``/``count`` inside a transaction are NOT offered: read documents by id, or query
    before the transaction and re-check by id inside it.
    """

    @abc.abstractmethod
    def get(self, collection: str, doc_id: str) -> Document | None: ...

    @abc.abstractmethod
    def put(self, collection: str, doc_id: str, xml: bytes) -> int:
        """Stage a write; returns the version the document will have."""

    @abc.abstractmethod
    def delete(self, collection: str, doc_id: str) -> bool:
        """Stage a delete; returns whether the document existed."""

    def prefetch(self, collection: str, doc_ids: Iterable[str]) -> None:
        """Read these documents now, at once: a later ``get`` of one of them answers without asking the
        database again (the embedded store reads them in one statement instead of one each; the BaseX
        backend reads from memory and needs no warning). Ids that are not valid document ids are skipped."""

    def exists(self, collection: str, doc_id: str) -> bool:
        return self.get(collection, doc_id) is not None


class XmlStore(abc.ABC):
    """Safe to share between threads; several processes may open the same store at once."""

    limits: StoreLimits
    read_only: bool = False

    @abc.abstractmethod
    def get(self, collection: str, doc_id: str) -> Document | None: ...

    @abc.abstractmethod
    def transact(self, fn: Callable[[Transaction], T], *, retries: int | None = None) -> T:
        """Run ``fn(tx)`` as one serializable, atomic transaction, fsynced before returning.

        ``fn`` may be run again after a ``ConflictError`` (raised by the store or by ``fn``): it
        must have no effects outside ``tx``. Any other exception aborts with nothing written.
        """

    def put(self, collection: str, doc_id: str, xml: bytes) -> int:
        return self.transact(lambda tx: tx.put(collection, doc_id, xml))

    def delete(self, collection: str, doc_id: str) -> bool:
        return self.transact(lambda tx: tx.delete(collection, doc_id))

    @abc.abstractmethod
    def query(self, collection: str, xpath: str | None, variables: Mapping[str, str | int] = {}, *,
              where: Mapping[str, str | tuple[str, ...]] = {}, namespaces: Mapping[str, str] = {},
              offset: int = 0, limit: int = 100, time_limit_s: float = 5.0,
              scan_limit: int | None = None) -> QueryPage:
        """Documents of ``collection`` (ordered by doc_id) that match ``where`` and for which the
        XPath's boolean value is true (``xpath=None``: no further condition).

        The XPath may come from an untrusted caller: it must be XPath 1.0 with the core functions
        only (``_xpath.check_xpath``: no extension function reaches lxml or BaseX), and the query
        is stopped at ``time_limit_s`` while it is being evaluated (``QueryError``), not only
        between documents (BaseX: rounded up to whole seconds; embedded: + 0.5 s to kill its
        sandbox process)."""

    def check_query(self, xpath: str | None, variables: Mapping[str, str | int] = {}, *,
                    namespaces: Mapping[str, str] = {}) -> None:
        """``QueryError`` if ``query`` would refuse this expression: for a caller whose query touches no
        collection (no documents yet), so that a bad expression is refused whether or not there is data."""
        from ._xpath import check_xpath, compile_xpath     # _xpath imports this module
        check_query_args(xpath, variables, namespaces, 0, 1, self.limits.query_time_s_max, self.limits)
        if xpath is not None:
            compile_xpath(check_xpath(xpath, namespaces, variables, self.limits), namespaces)

    @abc.abstractmethod
    def count(self, collection: str, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
              where: Mapping[str, str | tuple[str, ...]] = {}, namespaces: Mapping[str, str] = {},
              time_limit_s: float = 5.0, scan_limit: int | None = None) -> int: ...

    @property
    @abc.abstractmethod
    def indexes(self) -> tuple[AttributeIndex, ...]:
        """The attribute indexes this store maintains (declared by any opener), by prefix."""

    @abc.abstractmethod
    def collections(self) -> list[str]: ...

    @abc.abstractmethod
    def ids(self, collection: str, offset: int = 0, limit: int = 1000) -> list[str]: ...

    def scan(self, collection: str, *, after_id: str | None = None, limit: int = 1000) -> list[Document]:
        """The next ``limit`` documents of ``collection`` in doc_id order after ``after_id``: reading
        a whole collection page by page (audits, rebuilds) without a query per document."""
        check_collection(collection)
        if not 1 <= limit <= self.limits.query_limit_max:
            raise QueryError(f"limit must be 1..{self.limits.query_limit_max}")
        documents: list[Document] = []
        offset = 0
        while len(documents) < limit:  # generic version: page through the ids
            ids = self.ids(collection, offset, 1000)
            offset += len(ids)
            for doc_id in ids:
                if after_id is not None and doc_id <= after_id:
                    continue
                document = self.get(collection, doc_id)
                if document is not None:
                    documents.append(document)
                    if len(documents) >= limit:
                        break
            if len(ids) < 1000:
                break
        return documents

    @abc.abstractmethod
    def scan_local(self, collection: str, *, after_id: str | None = None, limit: int = 1000) -> list[Document]:
        """``scan``, read from the committed record this process holds itself — the embedded
        store's file, the BaseX backend's mirror of its journal — never from a query server: it
        works, and answers at once, while BaseX is down, stopped or catching up. Every transaction
        acknowledged before the call is seen (by any process). On BaseX each call walks the
        collection's ids in memory (the mirror keeps no order): for small collections that must be
        read on time whatever BaseX does (the bank's active holds for its expiry sweep), not a
        million usage records (``scan`` there)."""

    def wait_verified(self, timeout_s: float | None = None, *, at_once: bool = False) -> bool:
        """Wait until the store's query database is verified against its record after open (the
        BaseX backend verifies in the background: queries wait for it meanwhile); False if not
        within ``timeout_s`` (None: no limit) or the query database does not answer. ``at_once``:
        verify here, quicker, with commits waiting meanwhile (a process that serves nothing yet).
        A store with nothing to verify after open answers True at once."""
        return True

    def backlog(self) -> Backlog:
        """What waits to reach the query database (metrics): nothing for a store that has none."""
        return Backlog()

    @abc.abstractmethod
    def close(self) -> None: ...

    def hand_over(self) -> Callable[[], None]:
        """Close, leaving to the processes this one forks next what lets their open of the same store
        skip work this one did (BaseX: the mirror of every document, read from the journal once for
        all of serve's workers). Returns the function that drops it in this process. Default: close."""
        self.close()
        return lambda: None

    def __enter__(self) -> "XmlStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_with_retries(attempt: Callable[[], T], retries: int) -> T:
    """Call ``attempt`` until it does not raise ConflictError, at most ``retries + 1`` times."""
    for number in range(retries + 1):
        try:
            return attempt()
        except ConflictError:
            if number == retries:
                raise
            time.sleep(random.uniform(0, 0.005 * (2 ** number)))
    raise AssertionError("unreachable")


__all__ = ["AttributeIndex", "Document", "QueryPage", "StoreLimits", "DEFAULT_LIMITS", "Transaction", "XmlStore",
           "check_collection", "check_doc_id", "normalize", "normalize_with_attributes", "NormalXml",
           "normalized_for_put", "parse_untrusted", "check_query_args",
           "check_indexes", "check_where", "coverage", "Coverage", "root_attributes", "where_matches",
           "run_with_retries"]
