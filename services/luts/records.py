"""Usage records as they arrive from grid middleware: split, read leniently, normalize.

This is the pure record layer of the LUTS (no store, no SOAP). Three steps:

``split_records(data)``
    Parses a posted document once (through ``parse_untrusted``) and returns one
    :class:`RecordSource` per record. Accepted documents: a single record (``JobUsageRecord`` or
    ``UsageRecord``) or a ``UsageRecords`` container, in any of the namespaces of ``FORMATS``:
    OGF UR 1.0, OGF UR 2.0, OSG/Gratia's ``ur-wg`` and EMI Compute Accounting Records.

``normalize(element)``
    Reads one record element into a :class:`NormalizedRecord` (the view a store indexes).

``parse_batch(data)``
    Both, record by record: a :class:`BatchResult` with, for each record, either its view or an
    error naming the record (by id when it could be read, else by its number in the batch).

What "the original bytes, exactly" means (``RecordSource.data``)
    * A document whose root is a record: ``data`` is the whole document as received, byte for byte
      (XML declaration, comments, encoding and all).
    * A record inside a container, in a UTF-8 (or ASCII) document: ``data`` is the byte range of
      the record element in the received document, from the ``<`` of its start tag to the ``>``
      of its end tag, unchanged, except that the namespace declarations in scope on the container
      (declared on the container itself) and not re-declared on the record's start tag are added
      to that start tag, just before its closing ``>`` (or ``/>``), as `` xmlns:p="uri"``, in
      prefix order, the default namespace first. This makes the fragment a well-formed document
      that means exactly what the record meant in the batch (prefixes used inside text or
      attribute values, such as ``xsi:type``, keep working because every in-scope declaration is
      carried, used or not). Nothing else changes: whitespace, attribute order and quoting, empty
      element forms, character references and line ends inside the record are as received.
    * A container in another encoding (UTF-16, ISO-8859-1, …): the record's characters are as
      received, with the declarations added the same way, but encoded in UTF-8 (a fragment has no
      XML declaration to name another encoding). ``RecordSource.transcoded`` says so.
    * Inherited ``xml:lang``/``xml:space``/``xml:base`` of the container are not carried.
    * A record in a UTF-8 container right after a ``<?gridcredit-original prolog="B64"
      epilog="B64"?>`` processing instruction (what our client's batching writes for a record that
      was a whole file: ``original_note``): ``data`` is the prolog, the record's bytes as received
      and the epilog — the file as its reporter wrote it (XML declaration, byte-order mark,
      comments and whitespace around the root), and ``whole_document`` is true. The note is
      checked: its prolog may hold only a byte-order mark, a UTF-8 (or ASCII) XML declaration,
      comments, processing instructions and whitespace, its epilog only the last three, and the
      record must need no declaration from the container; otherwise the record is refused, naming
      the note.

The view of a split record is read from the element lxml parsed out of the posted document
(parsing every fragment again would halve the ingest rate); the tests check that each fragment,
parsed alone, gives the same canonical XML and the same view.

Limits (:class:`BatchLimits`): bytes of the document, records in a batch, bytes of one record
(refused per record, the rest of the batch is read), nesting depth and element counts.

The normalized view (:class:`NormalizedRecord`) — units
    * times: aware UTC ``datetime`` (a value without a time zone is taken as UTC, with a warning);
    * durations: integer **microseconds** (``*_us``);
    * memory: integer **bytes** (K, M, G… are powers of 1,024, as batch systems report them;
      a lower-case ``b`` unit counts bits);
    * charge: the decimal as written (``charge``, plain notation, exponent expanded) and integer
      **millionths** of the charge unit (``charge_micro``), rounded half to even with a warning
      when the record has more than six decimals;
    * ``warnings``: one sentence per lenient reading (what was found, what was done).

One normalization (the view, and through it the LUTS's scope attributes and summary keys)
    The LUTS indexes, scopes and summarizes the view's values, never the record's text again, so
    one rule holds everywhere:

    * ``user_dn``: the user's DN in grid one-line form (``/O=Grid/CN=Alice``); a DN written in
      RFC 2253 order (``CN=Alice,O=Grid``) is reversed into it (``canonical_dn``). The first DN
      the record gives counts: ``GlobalUserName`` (opensslCompat/X509DN first), Gratia ``DN`` and
      ``GlobalUsername``, ``ds:KeyInfo``.
    * ``global_user``: a global user name that is not a DN (Gratia ``GlobalUsername`` such as
      ``ainsworth@fnal.gov``, a ``GlobalUserName`` ``alice``) is kept here, never dropped. The
      LUTS's ``user`` is ``user_dn``, else ``global_user``.
    * ``vo``: lower-case (VO names are DNS-like: ``ATLAS`` is ``atlas``). From SGAS ``vo:Name``,
      UR 2.0/CAR ``Group``, Gratia ``ReportableVOName`` or ``VOName`` (when not an FQAN), else the
      first FQAN's VO, with a warning.
    * FQANs (``vo_fqans``, SGAS ``vo:Group``/``vo:Role``, ``GroupAttribute``, Gratia ``VOName``
      written as ``/vo/…``): ``/vo[/group…][/Role=r][/Capability=c]``, the VO component
      lower-case, the rest as written. A cut-off FQAN — ``Role`` or ``Capability`` without a value
      (``/atlas/Role``) — keeps what comes before the cut (``/atlas``), with a warning; it never
      becomes a group.
    * ``vo_group`` (a path ``/vo/group…``) and ``vo_role`` (the role's name: ``Role=pilot`` is
      ``pilot``; ``NULL``: none): as given, else from the primary (first) FQAN — so a Gratia
      ``VOName`` that is an FQAN fills both.
    * ``machine``: a host name, lower-case; a trailing dot and a ``:port`` are not part of it.
    * Site, queue, project and the other names are kept as written.

Reading rules (lenient but never guessing)
    * Elements are looked up by namespace: the record's own namespace, plus the known extension
      namespaces (SGAS ``vo:``, ``sgas:``, DEISA, XML-DSig ``KeyInfo``). Unknown extensions stay in
      the original and are ignored in the view.
    * Attributes (``recordId``, ``usageType``, ``storageUnit``…) are read qualified by the record's
      namespace, else unqualified, else qualified by another known usage-record namespace.
    * Empty or whitespace-only values count as absent (GFD.98 §2.3.4).
    * A value present but unreadable (a bad duration, date-time, number) makes the record
      unreadable: a per-record error names the element and the value. Exceptions, each with a
      warning: memory with an unknown or missing unit is left out of the view (it is not summed);
      a status outside the vocabulary becomes ``unknown``.
    * A single-valued element given more than once: the first is used, with a warning.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation, ROUND_HALF_EVEN
from lxml import etree

from gridcredit.errors import DomainError, SecurityError, invariant
from gridcredit.security.xmlparse import ParseLimits, parse_untrusted

from .durations import (DurationError, datetime_from_us, datetime_to_us, format_datetime,
                        parse_datetime, parse_duration)

# -- namespaces and formats ---------------------------------------------------------------------

NS_UR1 = "http://schema.ogf.org/urf/2003/09/urf"
NS_UR2 = "http://schema.ogf.org/urf/2013/04/urf"
NS_GRATIA = "http://www.gridforum.org/2003/ur-wg"
NS_CAR = "http://eu-emi.eu/namespaces/2012/11/computerecord"
NS_SGAS_VO = "http://www.sgas.se/namespaces/2009/05/ur/vo"
NS_SGAS = "http://www.sgas.se/namespaces/2009/07/ur"
NS_DEISA = "http://rmis.deisa.org/acct"
NS_DSIG = "http://www.w3.org/2000/09/xmldsig#"
NS_VIEW = "urn:gridcredit:luts:1"

FORMATS = {NS_UR1: "ur1", NS_UR2: "ur2", NS_GRATIA: "gratia", NS_CAR: "car"}
RECORD_NAMES = ("JobUsageRecord", "UsageRecord")
CONTAINER_NAMES = ("UsageRecords",)

STATUSES = ("completed", "failed", "aborted", "held", "queued", "started", "suspended", "unknown")
_STATUS_SYNONYMS = {
    "completed": "completed", "complete": "completed", "success": "completed", "succeeded": "completed",
    "successful": "completed", "finished": "completed", "done": "completed", "ok": "completed",
    "failed": "failed", "failure": "failed", "error": "failed",
    "aborted": "aborted", "killed": "aborted", "cancelled": "aborted", "canceled": "aborted",
    "held": "held", "hold": "held",
    "queued": "queued", "pending": "queued", "waiting": "queued",
    "started": "started", "running": "started",
    "suspended": "suspended",
}

# Memory units: bytes per unit, as a fraction (numerator, denominator) to count bits exactly.
_KIB = 1024
_MEMORY_UNITS: dict[str, tuple[int, int]] = {"b": (1, 8), "B": (1, 1)}
for _power, _letter in enumerate("KMGTPE", start=1):
    for _spelling in (f"{_letter}B", f"{_letter}iB", _letter):
        _MEMORY_UNITS[_spelling] = (_KIB**_power, 1)
    _MEMORY_UNITS[f"{_letter}b"] = (_KIB**_power, 8)
_MEMORY_UNITS["kB"] = _MEMORY_UNITS["k"] = (_KIB, 1)

RECORD_ID_CHARS_MAX = 1024
VALUE_CHARS_MAX = 4096
COUNT_MAX = 10**9                       # processors, nodes
CHARGE_DIGITS_MAX = 30
CHARGE_SCALE = 10**6                    # charge_micro = charge × 10**6


class RecordError(DomainError):
    """A usage record (or a posted document) that cannot be read; the message says which and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="InvalidUsageRecord")


# -- limits ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchLimits:
    document_bytes_max: int = 64 * 1_048_576    # a whole posted document (larger: refused whole)
    records_max: int = 10_000                   # records in one document (more: refused whole)
    record_bytes_max: int = 1_048_576           # one record (larger: that record refused)
    depth_max: int = 64                         # element nesting, document and record
    document_elements_max: int = 4_000_000
    record_elements_max: int = 100_000

    def document_parse_limits(self) -> ParseLimits:
        return ParseLimits(bytes_max=self.document_bytes_max, depth_max=self.depth_max,
                           elements_max=self.document_elements_max)

    def record_parse_limits(self) -> ParseLimits:
        return ParseLimits(bytes_max=self.record_bytes_max, depth_max=self.depth_max,
                           elements_max=self.record_elements_max)


DEFAULT_LIMITS = BatchLimits()


# -- splitting ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordSource:
    index: int                   # 0-based position among the document's records
    data: bytes                  # the record as received (see the module docstring)
    tag: str                     # Clark name of the element, e.g. "{http://…/urf}JobUsageRecord"
    record_id: str | None        # RecordIdentity/@recordId when readable, to name the record in errors
    whole_document: bool         # data is the whole posted document
    transcoded: bool = False     # data was re-encoded to UTF-8 (container in another encoding)
    problem: str | None = None   # why the record cannot be taken although it parsed (read_source says so)
    # The element as parsed from the posted document, when split from one (saves parsing ``data``
    # again; ``data`` parses to an element with the same canonical form, which the tests check).
    element: etree._Element | None = field(default=None, compare=False, repr=False)

    def name(self) -> str:
        """How errors name this record: by id when known, else by its number (from 1)."""
        if self.record_id:
            return f"record {self.record_id!r} (number {self.index + 1} in the document)"
        return f"record number {self.index + 1} in the document (no readable record id)"


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _namespace(tag: object) -> str | None:
    return etree.QName(tag).namespace if isinstance(tag, str) else None


def _is_record_tag(tag: str) -> bool:
    return _namespace(tag) in FORMATS and _local(tag) in RECORD_NAMES


def _describe_tag(tag: str) -> str:
    namespace = _namespace(tag)
    return f"{_local(tag)} in namespace {namespace!r}" if namespace else f"{_local(tag)} in no namespace"


def _record_id_hint(element: etree._Element) -> str | None:
    """The record id of an element that looks like a record, without judging the rest of it."""
    for child in element:
        if _local(child.tag) == "RecordIdentity":
            for name, value in child.attrib.items():
                if _local(name) == "recordId" and value.strip():
                    return value.strip()[:RECORD_ID_CHARS_MAX]
    return None


def split_records(data: bytes, limits: BatchLimits = DEFAULT_LIMITS) -> list[RecordSource]:
    """One :class:`RecordSource` per record (or per unexpected element) of a posted document.

    Raises ``SecurityError`` for a document that is unsafe or not well-formed, and
    :class:`RecordError` for one that is not a usage-record document or has too many records.
    Children of a container that are not records still get a source: ``parse_batch`` turns them
    into per-record errors.
    """
    tree = parse_untrusted(bytes(data), limits.document_parse_limits())
    root = tree.getroot()
    if _is_record_tag(root.tag):
        return [RecordSource(index=0, data=bytes(data), tag=root.tag, record_id=_record_id_hint(root),
                             whole_document=True, element=root)]
    if not (_namespace(root.tag) in FORMATS and _local(root.tag) in CONTAINER_NAMES):
        known = ", ".join(FORMATS)
        raise RecordError(
            f"the document's root element is {_describe_tag(root.tag)}; expected a usage record "
            f"({' or '.join(RECORD_NAMES)}) or a {CONTAINER_NAMES[0]} container in one of the namespaces {known}")
    children = [child for child in root if isinstance(child.tag, str)]
    if len(children) > limits.records_max:
        raise RecordError(f"the document has {len(children):,} records; at most {limits.records_max:,} are accepted")
    text, transcoded = _document_text(bytes(data), tree.docinfo.encoding)
    spans = _child_element_spans(text)
    invariant(len(spans) == len(children), "the byte scanner and the parser agree on the container's children")
    sources = []
    for index, (child, (start, start_tag_end, end)) in enumerate(zip(children, spans)):
        fragment = _fragment(text, start, start_tag_end, end, root.nsmap, transcoded)
        note = child.getprevious()
        if note is not None and note.tag is etree.PI and note.target == ORIGINAL_NOTE:
            whole, problem = _noted_original(note.text or "", text[start:end], fragment, transcoded)
            sources.append(RecordSource(
                index=index, data=whole if whole is not None else fragment, tag=child.tag,
                record_id=_record_id_hint(child), whole_document=whole is not None, transcoded=transcoded,
                problem=problem, element=child))
            continue
        sources.append(RecordSource(
            index=index, data=fragment,
            tag=child.tag, record_id=_record_id_hint(child), whole_document=False, transcoded=transcoded,
            element=child))
    return sources


# -- a whole file inside a batch: the bytes around its root ------------------------------------------

ORIGINAL_NOTE = "gridcredit-original"
_NOTE = re.compile(r'prolog="([A-Za-z0-9+/]*={0,2})" epilog="([A-Za-z0-9+/]*={0,2})"')
# one whitespace character per repetition (not [ \t\r\n]+: a run of them would backtrack exponentially)
_MISC = rb"(?:[ \t\r\n]|<!--(?:(?!--).)*-->|<\?(?![Xx][Mm][Ll][ \t\r\n?])[^ \t\r\n?>]+(?:[ \t\r\n](?:(?!\?>).)*)?\?>)*"
_PROLOG = re.compile(rb"(?:\xef\xbb\xbf)?(?:<\?xml[ \t\r\n](?:(?!\?>).)*\?>)?" + _MISC + rb"\Z", re.DOTALL)
_EPILOG = re.compile(_MISC + rb"\Z", re.DOTALL)
_DECLARED_ENCODING = re.compile(rb"""^(?:\xef\xbb\xbf)?<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def whole_document_parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(prolog, root element, epilog) of a well-formed UTF-8 document that has no DTD, by bytes:
    what comes before the root's start tag, the root element, what follows its end tag."""
    text = data.decode("latin-1")               # one character per byte: offsets are byte offsets
    depth = 0
    start = None
    for match in _MARKUP.finditer(text):
        start_tag = match.group("start")
        if start_tag is not None:
            if depth == 0:
                start = match.start()
            if start_tag.endswith("/"):
                if depth == 0:
                    return data[:start], data[start:match.end()], data[match.end():]
            else:
                depth += 1
        elif match.group("end") is not None:
            depth -= 1
            if depth == 0:
                return data[:start], data[start:match.end()], data[match.end():]
    raise RecordError("the document has no root element")


def original_note(prolog: bytes, epilog: bytes) -> bytes:
    """The processing instruction that carries a whole file's prolog and epilog into a batch, just
    before its root element (``split_records`` puts the file back together: the module docstring)."""
    return (f'<?{ORIGINAL_NOTE} prolog="{base64.b64encode(prolog).decode("ascii")}" '
            f'epilog="{base64.b64encode(epilog).decode("ascii")}"?>').encode("ascii")


def _noted_original(note: str, raw: str, fragment: bytes, transcoded: bool) -> tuple[bytes | None, str | None]:
    """(the whole file a note and a record's bytes make, None) or (None, why the note cannot be used)."""
    what = f"its <?{ORIGINAL_NOTE}?> note"
    match = _NOTE.fullmatch(note.strip())
    if match is None:
        return None, f"{what} is not prolog=\"BASE64\" epilog=\"BASE64\""
    try:
        prolog, epilog = base64.b64decode(match.group(1)), base64.b64decode(match.group(2))
    except ValueError:                          # binascii.Error: wrong padding
        return None, f"{what} does not hold base64"
    if transcoded:
        return None, f"{what} is in a container that is not UTF-8"
    if fragment != raw.encode("latin-1"):
        return None, f"{what} is for a whole file, but the record needs namespace declarations of the container"
    if not _PROLOG.match(prolog):
        return None, (f"{what}: the prolog may hold only a byte-order mark, an XML declaration, comments, "
                      "processing instructions and whitespace")
    encoding = _DECLARED_ENCODING.match(prolog)
    if encoding is not None and encoding.group(1).lower() not in (b"utf-8", b"utf8", b"us-ascii", b"ascii"):
        return None, f"{what}: the prolog declares {encoding.group(1).decode()!r}; the record is UTF-8"
    if not _EPILOG.match(epilog):
        return None, f"{what}: the epilog may hold only comments, processing instructions and whitespace"
    return prolog + fragment + epilog, None


_ASCII_COMPATIBLE_UTF8 = {"utf-8", "utf8", "us-ascii", "ascii"}


def _document_text(data: bytes, encoding: str | None) -> tuple[str, bool]:
    """The document as a str whose indices are byte offsets (UTF-8), or its decoded text.

    A UTF-8 document is decoded as ISO-8859-1, which maps each byte to one character: every
    markup character is ASCII and never part of a multi-byte UTF-8 sequence, so scanning the str
    finds the same boundaries as scanning the bytes, and slices encode back to the exact bytes.
    """
    name = (encoding or "utf-8").lower()
    if name in _ASCII_COMPATIBLE_UTF8 and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("latin-1"), False
    try:
        text = data.decode(name)
    except (LookupError, UnicodeDecodeError) as error:
        raise RecordError(f"the document's encoding {encoding!r} cannot be read: {error}") from None
    return text.lstrip("\ufeff"), True


_MARKUP = re.compile(
    r"""<(?:(?P<comment>!--.*?--)|(?P<cdata>!\[CDATA\[.*?\]\])|(?P<pi>\?.*?\?)|(?P<end>/[^>]*)"""
    r"""|(?P<start>[^"'>]*(?:(?:"[^"]*"|'[^']*')[^"'>]*)*))>""",
    re.DOTALL)
_NS_DECLARATION = re.compile(r"""\sxmlns(?::([^\s=]+))?\s*=""")
_QUOTED = re.compile(r""""[^"]*"|'[^']*'""")


def _child_element_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, end of start tag, end) of each child element of the root of a well-formed text.

    Only called on text lxml has already parsed as well-formed and free of a DTD, so markup is
    comments, CDATA sections, processing instructions, end tags and start tags (whose attribute
    values may hold ``>``), and ``<`` appears nowhere else.
    """
    spans: list[tuple[int, int, int]] = []
    depth = 0
    child_start = child_tag_end = 0
    for match in _MARKUP.finditer(text):
        start_tag = match.group("start")
        if start_tag is not None:
            if start_tag.endswith("/"):
                if depth == 0:
                    return spans                   # an empty root has no children
                if depth == 1:
                    spans.append((match.start(), match.end(), match.end()))
            else:
                if depth == 1:
                    child_start, child_tag_end = match.start(), match.end()
                depth += 1
        elif match.group("end") is not None:
            depth -= 1
            if depth == 1:
                spans.append((child_start, child_tag_end, match.end()))
            elif depth == 0:
                return spans
    return spans


def escape_attribute(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;"))


def _fragment(text: str, start: int, start_tag_end: int, end: int, inherited: dict, transcoded: bool) -> bytes:
    start_tag = text[start:start_tag_end]
    unquoted = _QUOTED.sub('""', start_tag)             # " xmlns:a=" inside a value declares nothing
    declared = {prefix or None for prefix in _NS_DECLARATION.findall(unquoted)}
    additions = "".join(
        (f' xmlns:{prefix}="{escape_attribute(uri)}"' if prefix else f' xmlns="{escape_attribute(uri)}"')
        for prefix, uri in sorted(inherited.items(), key=lambda item: item[0] or "")
        if prefix not in declared)
    close = len(start_tag) - (2 if start_tag.endswith("/>") else 1)
    encoding = "utf-8" if transcoded else "latin-1"
    return ((text[start:start + close]).encode(encoding) + additions.encode("utf-8")
            + text[start + close:end].encode(encoding))


# -- the normalized view --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NormalizedRecord:
    """What a store indexes and queries; the original record is kept beside it, unchanged."""

    format: str                                  # "ur1", "ur2", "gratia" or "car"
    record_id: str                               # RecordIdentity/@recordId
    create_time: datetime | None = None          # RecordIdentity/@createTime
    global_job_id: str | None = None
    local_job_id: str | None = None
    job_name: str | None = None
    user_dn: str | None = None                   # grid identity (GlobalUserName / DN / KeyInfo), grid form
    global_user: str | None = None               # a global user name that is not a DN (kept, never dropped)
    local_user: str | None = None                # LocalUserId
    local_group: str | None = None               # LocalGroup (UR 2.0, CAR)
    vo: str | None = None                        # VO name, lower-case (SGAS vo:Name, Group, ReportableVOName)
    vo_group: str | None = None                  # primary VO group, "/vo/sub" (else from the primary FQAN)
    vo_role: str | None = None                   # primary VO role (NULL: none; else from the primary FQAN)
    vo_fqans: tuple[str, ...] = ()               # VOMS FQANs, primary first ("/vo" lower-case)
    project: str | None = None                   # ProjectName
    site: str | None = None                      # Site (UR 2.0, CAR) / SiteName (Gratia)
    machine: str | None = None                   # MachineName, a host name: lower-case
    host: str | None = None                      # Host (the primary one, else the first)
    submit_host: str | None = None
    queue: str | None = None
    status: str | None = None                    # one of STATUSES, or None when absent
    status_original: str | None = None           # Status as written
    exit_code: int | None = None                 # ExitStatus / sgas:ExitCode / a numeric Status
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    wall_us: int | None = None                   # WallDuration
    cpu_us: int | None = None                    # total CPU: usageType all/none, else user + system
    cpu_user_us: int | None = None
    cpu_system_us: int | None = None
    processors: int | None = None
    nodes: int | None = None                     # NodeCount
    memory_bytes: int | None = None              # the chosen Memory reading (see _choose_memory)
    memory_type: str | None = None               # its type attribute as written (Physical, virtual…)
    memory_metric: str | None = None             # its metric attribute as written (max, average…)
    charge: str | None = None                    # the decimal as written, in plain notation
    charge_micro: int | None = None              # charge × 10**6, an integer
    charge_unit: str | None = None               # Charge/@unit as written
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        invariant(self.format in FORMATS.values(), f"format {self.format!r} is known")
        invariant(bool(self.record_id), "a normalized record has a record id")
        invariant(self.status is None or self.status in STATUSES, f"status {self.status!r} is in the vocabulary")


class _Reader:
    """Reads one record element; collects warnings; raises RecordError with the element named."""

    def __init__(self, element: etree._Element) -> None:
        self.element = element
        self.ns = _namespace(element.tag) or ""
        self.warnings: list[str] = []
        self.index: dict[str, list[etree._Element]] = {}      # the record's children by Clark name
        for child in element:
            if isinstance(child.tag, str):
                self.index.setdefault(child.tag, []).append(child)

    # elements and attributes

    def children(self, parent: etree._Element | None, name: str, ns: str | None = None) -> list[etree._Element]:
        if parent is None:
            return []
        tag = f"{{{ns or self.ns}}}{name}"
        if parent is self.element:
            return self.index.get(tag, [])
        return parent.findall(tag)

    def child(self, parent: etree._Element | None, name: str, ns: str | None = None) -> etree._Element | None:
        found = self.children(parent, name, ns)
        if len(found) > 1:
            self.warnings.append(f"{name} is given {len(found)} times; the first is used")
        return found[0] if found else None

    def attribute(self, element: etree._Element | None, name: str) -> str | None:
        if element is None:
            return None
        for key in (f"{{{self.ns}}}{name}", name):
            value = element.get(key)
            if value is not None:
                return value.strip() or None
        for other in FORMATS:
            value = element.get(f"{{{other}}}{name}")
            if value is not None:
                self.warnings.append(f"attribute {name} of {_local(element.tag)} is in namespace {other!r}; it was read")
                return value.strip() or None
        return None

    def text(self, element: etree._Element | None, what: str | None = None) -> str | None:
        if element is None:
            return None
        if len(element):
            value = "".join(element.itertext()).strip()       # text of descendants, no comments
        else:
            value = (element.text or "").strip()
        if len(value) > VALUE_CHARS_MAX:
            raise RecordError(f"{what or _local(element.tag)} is longer than {VALUE_CHARS_MAX:,} characters")
        return value or None

    def value(self, parent: etree._Element | None, name: str, ns: str | None = None) -> str | None:
        return self.text(self.child(parent, name, ns), name)

    # typed values

    def duration_us(self, element: etree._Element | None, what: str) -> int | None:
        text = self.text(element, what)
        if text is None:
            return None
        try:
            duration = parse_duration(text)
        except DurationError as error:
            raise RecordError(f"{what}: {error}") from None
        if duration.us < 0:
            raise RecordError(f"{what}: the duration {text!r} is negative")
        if duration.form == "seconds":
            self.warnings.append(f"{what} {text!r} is a number of seconds, not an xsd:duration; it was read as seconds")
        if duration.rounded:
            self.warnings.append(f"{what} {text!r} has digits below a microsecond; it was rounded half to even")
        return duration.us

    def instant(self, text: str | None, what: str) -> datetime | None:
        if text is None:
            return None
        try:
            instant = parse_datetime(text)
        except DurationError as error:
            raise RecordError(f"{what}: {error}") from None
        self.warnings.extend(f"{what}: {note}" for note in instant.notes)
        return instant.value

    def count(self, element: etree._Element | None, what: str) -> int | None:
        text = self.text(element, what)
        if text is None:
            return None
        match = re.fullmatch(r"\+?(\d{1,12})(\.0*)?", text)
        if match is None:
            raise RecordError(f"{what} {text!r} is not a whole number")
        if match.group(2):
            self.warnings.append(f"{what} {text!r} has a decimal point; it was read as {int(match.group(1))}")
        number = int(match.group(1))
        if number > COUNT_MAX:
            raise RecordError(f"{what} {text!r} is larger than {COUNT_MAX:,}")
        return number


def normalize(element: etree._Element) -> NormalizedRecord:
    """The normalized view of one record element; :class:`RecordError` when it cannot be read."""
    if not isinstance(element.tag, str):
        raise RecordError("a usage record must be an element")
    namespace = _namespace(element.tag)
    if namespace not in FORMATS:
        raise RecordError(
            f"the element is {_describe_tag(element.tag)}, which is not a usage-record namespace "
            f"(known: {', '.join(FORMATS)})")
    if _local(element.tag) not in RECORD_NAMES:
        raise RecordError(f"the element is {_describe_tag(element.tag)}; a record is a {' or '.join(RECORD_NAMES)}")
    read = _Reader(element)
    values: dict[str, object] = {"format": FORMATS[namespace]}

    identity = read.child(element, "RecordIdentity")
    if identity is None:
        raise RecordError("the record has no RecordIdentity (its record id is required)")
    record_id = read.attribute(identity, "recordId")
    if not record_id:
        raise RecordError("the record's RecordIdentity has no recordId (it is required)")
    if len(record_id) > RECORD_ID_CHARS_MAX:
        raise RecordError(f"the record id is longer than {RECORD_ID_CHARS_MAX:,} characters")
    values["record_id"] = record_id
    values["create_time"] = read.instant(read.attribute(identity, "createTime"), "RecordIdentity/@createTime")

    job = read.child(element, "JobIdentity")
    values["global_job_id"] = read.value(job, "GlobalJobId")
    values["local_job_id"] = read.value(job, "LocalJobId")
    values["job_name"] = read.value(element, "JobName")

    _read_user(read, element, values)

    values["project"] = read.value(element, "ProjectName")
    values["site"] = read.value(element, "Site") or read.value(element, "SiteName")
    values["machine"] = _machine_name(read, read.value(element, "MachineName"))
    if values["machine"] is not None:
        values["machine"] = values["machine"].lower()                # a host name: case does not count
    values["host"] = _read_host(read, element)
    values["submit_host"] = read.value(element, "SubmitHost")
    values["queue"] = read.value(element, "Queue")

    _read_status(read, element, values)

    submit = read.child(element, "SubmitTime")
    if submit is None:
        submit = read.child(element, "SubmitTime", NS_DEISA)
    values["submit_time"] = read.instant(read.text(submit, "SubmitTime"), "SubmitTime")
    values["start_time"] = read.instant(read.value(element, "StartTime"), "StartTime")
    values["end_time"] = read.instant(read.value(element, "EndTime"), "EndTime")
    values["wall_us"] = read.duration_us(read.child(element, "WallDuration"), "WallDuration")
    _read_cpu(read, element, values)

    values["processors"] = read.count(_choose_by_metric(read, read.children(element, "Processors")), "Processors")
    values["nodes"] = read.count(read.child(element, "NodeCount"), "NodeCount")
    _read_memory(read, element, values)
    _read_charge(read, element, values)

    _check_order(read, values)
    return NormalizedRecord(**values, warnings=tuple(read.warnings))


def canonical_dn(text: str | None) -> str | None:
    """A DN in grid one-line form: ``/O=Grid/CN=Alice`` stays; RFC 2253 ``CN=Alice,O=Grid`` is reversed.

    Reporters write both forms; certificates give us the one-line form. Escaped commas in RFC 2253
    values are kept. Text that is not a DN is returned as it is (see ``is_dn``).
    """
    if text is None:
        return None
    text = text.strip()
    if not text or text.startswith("/") or "=" not in text:
        return text or None
    parts = [part.strip() for part in re.split(r"(?<!\\)[,;]", text) if part.strip()]
    if not all("=" in part for part in parts):
        return text
    return "".join("/" + part.replace("\\,", ",") for part in reversed(parts))


def is_dn(text: str) -> bool:
    """Whether ``canonical_dn`` made ``text`` a DN (``/A=b/…``), not a plain user name."""
    return text.startswith("/") and "=" in text


def _read_user(read: _Reader, element: etree._Element, values: dict) -> None:
    """The user: the first DN the record gives (GlobalUserName — an opensslCompat/X509DN one first —,
    Gratia DN and GlobalUsername, KeyInfo) in grid form, and the first global user name that is not a
    DN beside it; then the VO (``_read_vo``)."""
    user = read.child(element, "UserIdentity")
    names = read.children(user, "GlobalUserName")
    preferred = [name for name in names
                 if (read.attribute(name, "type") or "opensslCompat").lower() in ("opensslcompat", "x509dn")]
    candidates = [read.text((preferred or names or [None])[0], "GlobalUserName"),
                  read.value(user, "DN"),                                         # Gratia
                  read.value(user, "GlobalUsername")]                             # Gratia: a DN or a name
    if user is not None:
        subject = user.find(f"{{{NS_DSIG}}}KeyInfo/{{{NS_DSIG}}}X509Data/{{{NS_DSIG}}}X509SubjectName")
        candidates.append(read.text(subject, "KeyInfo X509SubjectName"))
    readings = [canonical_dn(text) for text in candidates if text is not None]
    values["user_dn"] = next((text for text in readings if is_dn(text)), None)
    values["global_user"] = next((text for text in readings if not is_dn(text)), None)
    values["local_user"] = read.value(user, "LocalUserId")
    values["local_group"] = read.value(user, "LocalGroup")
    _read_vo(read, element, user, values)


@dataclass(frozen=True, slots=True)
class _Fqan:
    """A VOMS FQAN (or a group written like one) read by ``_fqan``."""
    text: str                   # normalized: "/vo/group…[/Role=r][/Capability=c]", the VO lower-case
    group: str | None           # "/vo/group…"
    role: str | None            # None for Role=NULL or no role


def _fqan(read: _Reader, written: str, what: str) -> _Fqan | None:
    """``/vo[/group…][/Role=r][/Capability=c]`` (the leading slash optional): the VO component
    lower-cased, the rest as written. A cut-off FQAN — ``Role`` or ``Capability`` without ``=value``
    (``/atlas/Role``) — keeps what comes before the cut, with a warning; it is never a group."""
    parts = [part for part in written.strip().split("/") if part]
    groups: list[str] = []
    role = capability = None
    cut = False
    for number, part in enumerate(parts):
        name, equals, value = part.partition("=")
        if name.lower() in ("role", "capability") and number > 0:
            if not equals or not value:
                cut = True
                break
            if name.lower() == "role":
                role = value
            else:
                capability = value
        elif equals or role is not None or capability is not None:
            cut = True                                   # a group after Role=, or an unknown attribute
            break
        else:
            groups.append(part)
    if not groups:
        read.warnings.append(f"{what} {written!r} names no VO; it was left out of the view")
        return None
    groups[0] = groups[0].lower()
    group = "/" + "/".join(groups)
    text = group + (f"/Role={role}" if role is not None else "") + (
        f"/Capability={capability}" if capability is not None else "")
    if cut:
        read.warnings.append(f"{what} {written!r} is cut off or malformed (an FQAN is /vo/group…/Role=r/"
                             f"Capability=c); it was read as {text!r}")
    return _Fqan(text, group, None if role is None or role.upper() == "NULL" else role)


def _read_vo(read: _Reader, element: etree._Element, user: etree._Element | None, values: dict) -> None:
    """The VO (lower-case), the primary group and role, and the FQANs (see the module docstring)."""
    vo = group = role = None
    fqans: list[_Fqan] = []
    sgas_vo = read.child(user, "VO", NS_SGAS_VO)
    if sgas_vo is not None:
        vo = read.value(sgas_vo, "Name", NS_SGAS_VO)
        for attribute in read.children(sgas_vo, "Attribute", NS_SGAS_VO):
            attribute_group = read.value(attribute, "Group", NS_SGAS_VO)
            attribute_role = read.value(attribute, "Role", NS_SGAS_VO)
            if attribute_group is None:
                continue
            if attribute_role and attribute_role.upper() != "NULL":
                attribute_group = f"{attribute_group.rstrip('/')}/Role={attribute_role}"
            fqan = _fqan(read, attribute_group, "vo:Group")
            if fqan is None:
                continue
            if group is None:
                group, role = fqan.group, fqan.role
            fqans.append(fqan)
    for scope in (user, element):                                     # UR 2.0 / CAR, either place
        if vo is None:
            vo = read.value(scope, "Group")
        for attribute in read.children(scope, "GroupAttribute"):
            kind = (read.attribute(attribute, "type") or "").lower()
            text = read.text(attribute, "GroupAttribute")
            if text is None:
                continue
            if kind == "fqan":
                fqan = _fqan(read, text, "the FQAN")
                if fqan is not None:
                    fqans.append(fqan)
            elif kind in ("vo-group", "group", "subgroup") and group is None:
                fqan = _fqan(read, text, "the group")
                if fqan is not None:
                    group, role = fqan.group, role or fqan.role
            elif kind in ("vo-role", "role") and role is None:
                text = re.sub(r"(?i)^role=", "", text)               # APEL writes "Role=production"
                role = None if text.upper() in ("NULL", "") else text
    reportable = read.value(user, "ReportableVOName")                 # Gratia
    gratia_vo = read.value(user, "VOName")                            # Gratia: a VO name or an FQAN
    if gratia_vo and gratia_vo.startswith("/"):
        fqan = _fqan(read, gratia_vo, "VOName")
        if fqan is not None:
            fqans.append(fqan)
    if vo is None:
        vo = reportable or (gratia_vo if gratia_vo and not gratia_vo.startswith("/") else None)
    if vo is None and fqans:
        vo = fqans[0].group.split("/")[1]
        read.warnings.append(f"the VO name is not given; it was taken from the FQAN {fqans[0].text!r}")
    if group is None and fqans:                                       # the primary FQAN's group and role
        group, role = fqans[0].group, role or fqans[0].role
    values.update(vo=vo.lower() if vo else None, vo_group=group, vo_role=role,
                  vo_fqans=tuple(dict.fromkeys(fqan.text for fqan in fqans)))


_HOST_WITH_EXTRAS = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?P<dot>\.)?(?::(?P<port>[0-9]{1,5}))?",
                               re.ASCII)


def _machine_name(read: _Reader, text: str | None) -> str | None:
    """``MachineName`` as a host name: a trailing dot (the DNS root) and a ``:port`` are not part of
    the machine's name (``ce1.example.org.`` and ``ce1.example.org:2811`` are ``ce1.example.org``);
    said in a warning. Anything else is kept as written."""
    match = _HOST_WITH_EXTRAS.fullmatch(text) if text else None
    if match is None or not (match["dot"] or match["port"]):
        return text
    read.warnings.append(f"MachineName {text!r} was read as {match['name']!r} (a trailing dot and a port are not "
                         f"part of a host name)")
    return match["name"]


def _read_host(read: _Reader, element: etree._Element) -> str | None:
    hosts = read.children(element, "Host")
    for host in hosts:
        if (read.attribute(host, "primary") or "").lower() in ("true", "1"):
            return read.text(host, "Host")
    return read.text(hosts[0], "Host") if hosts else None


def _read_status(read: _Reader, element: etree._Element, values: dict) -> None:
    original = read.value(element, "Status")
    exit_code = read.value(element, "ExitStatus") or read.value(element, "ExitCode", NS_SGAS)
    status = None
    if original is not None:
        if re.fullmatch(r"-?\d{1,9}", original):
            code = int(original)
            status = "completed" if code == 0 else "failed"
            read.warnings.append(f"Status {original!r} is a number; it was read as an exit code ({status})")
            if exit_code is None:
                exit_code = original
        else:
            status = _STATUS_SYNONYMS.get(original.lower())
            if status is None:
                status = "unknown"
                read.warnings.append(f"Status {original!r} is not in the vocabulary; it was read as 'unknown'")
    if exit_code is not None and not re.fullmatch(r"-?\d{1,9}", exit_code):
        raise RecordError(f"the exit status {exit_code!r} is not a whole number")
    values.update(status=status, status_original=original,
                  exit_code=int(exit_code) if exit_code is not None else None)


def _read_cpu(read: _Reader, element: etree._Element, values: dict) -> None:
    by_type: dict[str, int] = {}
    for cpu in read.children(element, "CpuDuration"):
        kind = (read.attribute(cpu, "usageType") or "all").lower()
        kind = {"kernel": "system", "total": "all"}.get(kind, kind)
        if kind not in ("user", "system", "all"):
            read.warnings.append(f"CpuDuration with usageType {kind!r} is not understood; it was ignored")
            continue
        us = read.duration_us(cpu, f"CpuDuration ({kind})")
        if us is None:
            continue
        if kind in by_type:
            read.warnings.append(f"CpuDuration ({kind}) is given more than once; the first is used")
            continue
        by_type[kind] = us
    for kind, name in (("user", "UserTime"), ("system", "KernelTime")):   # SGAS extensions
        if kind not in by_type:
            us = read.duration_us(read.child(element, name, NS_SGAS), f"sgas:{name}")
            if us is not None:
                by_type[kind] = us
    user, system, total = by_type.get("user"), by_type.get("system"), by_type.get("all")
    if total is None and user is not None and system is not None:
        total = user + system
    elif total is None and (user is not None or system is not None):
        total = user if user is not None else system
        given = "user" if user is not None else "system"
        read.warnings.append(f"only the {given} CPU time is given; the total CPU time was taken as that")
    elif total is not None and user is not None and system is not None and user + system != total:
        read.warnings.append(f"the total CPU time ({total} µs) differs from user + system ({user + system} µs); the total is used")
    values.update(cpu_us=total, cpu_user_us=user, cpu_system_us=system)


_METRIC_RANK = {"total": 0, "": 0, "max": 1, "average": 2, "avg": 2, "min": 3}


def _choose_by_metric(read: _Reader, elements: list[etree._Element]) -> etree._Element | None:
    """Of several readings (Processors), the total (or unqualified), else max, average, min."""
    if not elements:
        return None
    ranked = sorted(elements, key=lambda e: _METRIC_RANK.get((read.attribute(e, "metric") or "").lower(), 4))
    return ranked[0]


_MEMORY_TYPE_RANK = {"physical": 0, "real": 0, "rss": 0, "": 1}
_MEMORY_METRIC_RANK = {"max": 0, "": 1, "total": 1, "average": 2, "avg": 2, "min": 3}


def _read_memory(read: _Reader, element: etree._Element, values: dict) -> None:
    """The physical (else unqualified, else other) memory, its max (else total, average, min)."""
    readings = []
    for memory in read.children(element, "Memory"):
        text = read.text(memory, "Memory")
        if text is None:
            continue
        unit = read.attribute(memory, "storageUnit")
        if unit is None:
            read.warnings.append(f"Memory {text!r} has no storageUnit; it was left out of the view")
            continue
        if unit not in _MEMORY_UNITS:
            read.warnings.append(f"Memory {text!r} has the unknown storageUnit {unit!r}; it was left out of the view")
            continue
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise RecordError(f"Memory {text!r} is not a number") from None
        if not amount.is_finite() or amount < 0 or amount.adjusted() > 30:
            raise RecordError(f"Memory {text!r} is not a usable amount")
        numerator, denominator = _MEMORY_UNITS[unit]
        exact = amount * numerator / denominator
        memory_bytes = int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))
        if memory_bytes != exact:
            read.warnings.append(f"Memory {text} {unit} is not a whole number of bytes; it was rounded to {memory_bytes}")
        kind = read.attribute(memory, "type")
        metric = read.attribute(memory, "metric")
        rank = (_MEMORY_TYPE_RANK.get((kind or "").lower(), 2), _MEMORY_METRIC_RANK.get((metric or "").lower(), 4))
        readings.append((rank, memory_bytes, kind, metric))
    if readings:
        _, memory_bytes, kind, metric = min(readings, key=lambda reading: reading[0])
        values.update(memory_bytes=memory_bytes, memory_type=kind, memory_metric=metric)


_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")


def _read_charge(read: _Reader, element: etree._Element, values: dict) -> None:
    charge = read.child(element, "Charge")
    text = read.text(charge, "Charge")
    if text is None:
        return
    if not _DECIMAL.fullmatch(text):
        raise RecordError(f"Charge {text!r} is not a decimal number")
    amount = Decimal(text)
    if amount.adjusted() >= CHARGE_DIGITS_MAX:
        raise RecordError(f"Charge {text!r} is too large")
    plain = format(amount, "f")
    scaled = amount * CHARGE_SCALE
    micro = int(scaled.to_integral_value(rounding=ROUND_HALF_EVEN))
    if micro != scaled:
        read.warnings.append(f"Charge {text!r} has more than 6 decimals; charge_micro was rounded half to even")
    if amount < 0:
        read.warnings.append(f"Charge {text!r} is negative")
    values.update(charge=plain, charge_micro=micro, charge_unit=read.attribute(charge, "unit"))


def _check_order(read: _Reader, values: dict) -> None:
    start, end = values.get("start_time"), values.get("end_time")
    if start is not None and end is not None and end < start:
        read.warnings.append("EndTime is before StartTime")


# -- batches --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    source: RecordSource
    record: NormalizedRecord | None = None
    error: str | None = None          # "record 'x' (number 3 in the document): <reason>"

    def __post_init__(self) -> None:
        invariant((self.record is None) != (self.error is None), "an outcome is a record or an error")

    @property
    def ok(self) -> bool:
        return self.record is not None


@dataclass(frozen=True, slots=True)
class BatchResult:
    outcomes: tuple[RecordOutcome, ...]

    @property
    def records(self) -> tuple[NormalizedRecord, ...]:
        return tuple(outcome.record for outcome in self.outcomes if outcome.record is not None)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(outcome.error for outcome in self.outcomes if outcome.error is not None)


def read_source(source: RecordSource, limits: BatchLimits = DEFAULT_LIMITS) -> NormalizedRecord:
    """Parse and normalize one split record; RecordError/SecurityError say why it cannot be read."""
    if source.problem is not None:
        raise RecordError(source.problem)
    if len(source.data) > limits.record_bytes_max:
        raise RecordError(f"the record is {len(source.data):,} bytes; at most {limits.record_bytes_max:,} are accepted")
    if not _is_record_tag(source.tag):
        if _local(source.tag) in RECORD_NAMES:
            raise RecordError(
                f"the element is {_describe_tag(source.tag)}, which is not a usage-record namespace "
                f"(known: {', '.join(FORMATS)})")
        raise RecordError(f"the element {_describe_tag(source.tag)} is not a usage record")
    element = source.element
    if element is None:
        element = parse_untrusted(source.data, limits.record_parse_limits()).getroot()
        if element.tag != source.tag:
            raise RecordError(f"the record's bytes hold {_describe_tag(element.tag)}, not {_describe_tag(source.tag)}")
    return normalize(element)


def parse_batch(data: bytes, limits: BatchLimits = DEFAULT_LIMITS) -> BatchResult:
    """Every record of a posted document: its view, or an error naming it and saying why.

    A document that cannot be read at all (unsafe, not well-formed, not usage records, too many
    records) raises ``SecurityError`` or :class:`RecordError`: there are no records to name.
    """
    outcomes = []
    for source in split_records(data, limits):
        try:
            outcomes.append(RecordOutcome(source=source, record=read_source(source, limits)))
        except (RecordError, SecurityError) as error:
            outcomes.append(RecordOutcome(source=source, error=f"{source.name()}: {error}"))
    return BatchResult(outcomes=tuple(outcomes))


# -- the view as XML ------------------------------------------------------------------------------

_DATETIME_FIELDS = {"create_time", "submit_time", "start_time", "end_time"}
_INT_FIELDS = {"exit_code", "wall_us", "cpu_us", "cpu_user_us", "cpu_system_us", "processors", "nodes",
               "memory_bytes", "charge_micro"}
_TUPLE_FIELDS = {"vo_fqans": "vo_fqan", "warnings": "warning"}
VIEW_ELEMENT = f"{{{NS_VIEW}}}Usage"


def to_element(record: NormalizedRecord) -> etree._Element:
    """``<n:Usage xmlns:n="urn:gridcredit:luts:1">`` with one child per present field.

    Children are named after the fields (``n:record_id``, ``n:wall_us``…), in field order; absent
    fields have no element; tuples repeat a singular element (``n:vo_fqan``, ``n:warning``).
    Integers are decimal text; date-times are ``YYYY-MM-DDThh:mm:ss[.ffffff]Z`` with an ``us``
    attribute holding µs since the Unix epoch, for numeric range comparisons in XPath.
    """
    usage = etree.Element(VIEW_ELEMENT, nsmap={"n": NS_VIEW})
    for spec in fields(record):
        value = getattr(record, spec.name)
        if spec.name in _TUPLE_FIELDS:
            for item in value:
                etree.SubElement(usage, f"{{{NS_VIEW}}}{_TUPLE_FIELDS[spec.name]}").text = item
            continue
        if value is None:
            continue
        child = etree.SubElement(usage, f"{{{NS_VIEW}}}{spec.name}")
        if spec.name in _DATETIME_FIELDS:
            child.text = format_datetime(value)
            child.set("us", str(datetime_to_us(value)))
        elif spec.name in _INT_FIELDS:
            child.text = str(value)
        else:
            child.text = value
    return usage


def to_bytes(record: NormalizedRecord) -> bytes:
    """What lxml writes for ``to_element(record)``, written directly (ingest writes one per record)."""
    return view_text(record).encode("utf-8")


_VIEW_PREFIXED = {name: f"n:{name}" for name in (*(spec.name for spec in fields(NormalizedRecord)),
                                                 *_TUPLE_FIELDS.values())}


def escape_text(text: str) -> str:
    """Character data as lxml writes it: ``&``, ``<``, ``>`` escaped, and CR as a reference."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def view_text(record: NormalizedRecord) -> str:
    """``to_bytes`` as text: the view element with its namespace declared (no XML declaration)."""
    parts = [f'<n:Usage xmlns:n="{NS_VIEW}">']
    for spec in fields(record):
        name = spec.name
        value = getattr(record, name)
        if name in _TUPLE_FIELDS:
            tag = _VIEW_PREFIXED[_TUPLE_FIELDS[name]]
            parts.extend(f"<{tag}>{escape_text(item)}</{tag}>" for item in value)
            continue
        if value is None:
            continue
        tag = _VIEW_PREFIXED[name]
        if name in _DATETIME_FIELDS:
            parts.append(f'<{tag} us="{datetime_to_us(value)}">{format_datetime(value)}</{tag}>')
            continue
        text = str(value) if name in _INT_FIELDS else escape_text(value)
        parts.append(f"<{tag}>{text}</{tag}>")
    parts.append("</n:Usage>")
    return "".join(parts)


def from_element(usage: etree._Element) -> NormalizedRecord:
    """The record ``to_element`` wrote; :class:`RecordError` for anything else."""
    if usage.tag != VIEW_ELEMENT:
        raise RecordError(f"the element is {_describe_tag(usage.tag)}, not a {VIEW_ELEMENT}")
    names = {spec.name for spec in fields(NormalizedRecord)}
    singular = {item: name for name, item in _TUPLE_FIELDS.items()}
    values: dict[str, object] = {name: [] for name in _TUPLE_FIELDS}
    for child in usage:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname
        if _namespace(child.tag) != NS_VIEW or (name not in names and name not in singular) or name in _TUPLE_FIELDS:
            raise RecordError(f"unexpected element {_describe_tag(child.tag)} in a usage view")
        text = child.text or ""
        if name in singular:
            values[singular[name]].append(text)
            continue
        if name in values:
            raise RecordError(f"{name} appears twice in a usage view")
        if name in _DATETIME_FIELDS:
            us = child.get("us")
            if us is None or not re.fullmatch(r"-?\d{1,19}", us):
                raise RecordError(f"{name} in a usage view has no readable 'us' attribute")
            moment = datetime_from_us(int(us))
            if format_datetime(moment) != text:
                raise RecordError(f"{name} in a usage view: {text!r} and us={us} disagree")
            values[name] = moment
        elif name in _INT_FIELDS:
            if not re.fullmatch(r"-?\d{1,19}", text):
                raise RecordError(f"{name} in a usage view is not an integer: {text!r}")
            values[name] = int(text)
        else:
            values[name] = text
    for name in _TUPLE_FIELDS:
        values[name] = tuple(values[name])
    if "format" not in values or "record_id" not in values:
        raise RecordError("a usage view needs format and record_id")
    try:
        return NormalizedRecord(**values)
    except AssertionError as error:
        raise RecordError(f"the usage view is not consistent: {error}") from None


def from_bytes(data: bytes) -> NormalizedRecord:
    return from_element(parse_untrusted(data).getroot())


def record_month(record: NormalizedRecord) -> str | None:
    """``YYYY-MM`` (UTC) a record counts in: its end time, else start time, else creation time."""
    moment = record.end_time or record.start_time or record.create_time
    return moment.astimezone(timezone.utc).strftime("%Y-%m") if moment else None


__all__ = [
    "BatchLimits", "BatchResult", "DEFAULT_LIMITS", "FORMATS", "NS_CAR", "NS_GRATIA", "NS_UR1", "NS_UR2",
    "NS_VIEW", "NormalizedRecord", "RecordError", "RecordOutcome", "RecordSource", "STATUSES",
    "ORIGINAL_NOTE", "canonical_dn", "from_bytes", "from_element", "is_dn", "normalize", "parse_batch", "read_source", "record_month",
    "escape_attribute", "escape_text", "original_note", "split_records", "to_bytes", "to_element", "view_text",
    "whole_document_parts",
]
