"""The LUTS over the XML store: publish usage records, query them by XPath, summarize them.

Layout in the store (every name below is a collection; ``<h>`` is the hex SHA-256 of a key):

``ur_<YYYYMM>``  one document per record, partitioned by the month the record counts in
    (``records.record_month``: end, else start, else creation time; a record with no time at
    all counts in the month it was received). Document id ``<h>`` of the record's identity
    (``record_key``: its machine and its record id, see below). The root
    ``n:Stored`` carries the indexed attributes every scoped query filters on (``user``, ``vo``,
    ``site``, ``machine``, ``queue``, ``job``, ``ljob``, ``publisher``) plus ``rid`` (the record
    id), ``month``, ``end`` (µs) and ``digest``; its children are the normalized view
    (``n:Usage``), the original record exactly as received (``n:Original``: UTF-8 text, or
    base64 when the posted bytes are not UTF-8) and a parsed copy of the record, so XPath can
    address both the view and the record as its reporter wrote it.
``urid_<YYYY>``  record identity → month, digest, machine, and the record id and its global and
    local job ids (indexed attributes ``rid``/``job``/``ljob``, each as ``job_key`` writes it: a
    lookup by record id alone or by job id is one indexed query per year), partitioned by the
    year the record was first stored; ``luts_meta/years`` lists the years used, so finding a
    record by its identity reads one small document per year.
``luts_meta``  ``years`` and ``months``: the partitions in use, so a query does not have to list the
    store's collections.
``urs_<YYYYMM>``  the summaries, kept incrementally: one document per (user, VO, site, machine,
    queue) per month with job count, wall and CPU µs, and per charge unit (``Charge/@unit`` as
    written; charges without a unit apart) the jobs that gave a charge in it and their charge
    (millionths): charges in different units are never added. A summary for a period reads
    these, never the records.

Every partition is bounded by time (a month or a year), so no database grows without bound.

Publishing a batch reads and prepares every record (view, digest, documents) before any store
transaction, so the transactions — which hold the store's writer lock — only look up ids and write.
It runs in store transactions of ``PUBLISH_CHUNK`` records: each chunk is atomic
(records, id and job entries and summaries together), so a crash leaves whole chunks; a retry of
the batch stores the rest and answers ``duplicate`` for the records already there.

A record's identity is its machine and its record id: ``MachineName`` as the view has it,
lower-cased (no machine: the empty name), and ``RecordIdentity/@recordId``. Record ids are chosen
by each site's reporter, so two machines may well use one; the same id under two machines is two
records, and a publisher can only ever reach — store, collide with, replace — the identities of
the machines it may publish for (``LutsPolicy.publish_machines``). So no publisher can take
another site's record id first, and a replace (site administrators and LUTS administrators)
replaces only a record of a machine the replacer may publish for: the stored record's machine is
the new one's (the machine is part of the identity; an invariant checks it on what is stored), and
the new one's is checked against the replacer's machines before anything is looked up.

"The same record" means the same usage (``_usage_digest``): the same exclusive canonical XML of
the record element (the namespaces it uses, not every one declared around it) once its publication
metadata is set aside — ``RecordIdentity/@createTime`` and ``RecordIdentity/ds:KeyInfo``, comments,
processing instructions and the whitespace between elements. A reporter re-sending a record
(ARC writes a new ``createTime`` each time), inside another batch, with other whitespace and
namespace declarations around it, is a duplicate, and the first one received stays stored; a
record with any changed value (an element, an attribute, an extension, text inside a value) under
a used identity is refused unless the publisher may replace it and asks to.

The indexed attributes (``user``, ``vo``, ``machine``…) and the summaries' keys are the view's
values, normalized once by ``records.normalize`` (its docstring: DNs in grid form, a user name that
is not a DN as ``user``, VO and machine names lower-case, FQANs read one way), so the view, the
scopes and the summaries agree: one VO or machine is one summary row however a reporter cased it.

Who may publish and who sees what (``Scope``) is decided in policy.py, the LUTS's one policy point;
a scope becomes the store's indexed ``where`` filter, and the caller's XPath is only a further
condition on each record of that set, so no expression can widen it.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from lxml import etree

from gridcredit.errors import DomainError, QueryError, SecurityError, StoreError, invariant
from gridcredit import timeunits
from gridcredit.xmlstore import AttributeIndex, XmlStore

from . import records as ur
from .policy import Caller, LutsPolicy, Scope, authorize_publish, choose_scope, scopes_of
from .durations import datetime_from_us, datetime_to_us

NS = ur.NS_VIEW
N = f"{{{NS}}}"
PUBLISH_CHUNK = 500                 # records per store transaction
QUERY_LIMIT_MAX = 1000
JOB_RECORDS_MAX = 1000
JOB_KEY_BYTES_MAX = 1000            # the longest value a store's where (BaseX's index MAXLEN) takes
SUMMARY_DIMENSIONS = ("user", "vo", "site", "machine", "queue", "month")
INDEXED = ("user", "vo", "site", "machine", "queue", "job", "ljob", "publisher")
INDEXES = (AttributeIndex("ur_", INDEXED, store_text=False),
           AttributeIndex("urid_", ("job", "ljob", "rid")),
           AttributeIndex("urs_", ("user", "vo", "site", "machine", "queue")))

# Prefixes a caller's XPath may use without declaring them.
QUERY_NAMESPACES = {"n": NS, "urf": ur.NS_UR1, "ur": ur.NS_UR2, "gratia": ur.NS_GRATIA, "car": ur.NS_CAR,
                    "vo": ur.NS_SGAS_VO, "sgas": ur.NS_SGAS}

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def key_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def machine_of(usage: ur.NormalizedRecord) -> str:
    """The record's machine as the LUTS keys, scopes and summarizes it: the view's (a lower-case host
    name, ``records.normalize``; lowered here too for views made elsewhere), "" when none is given."""
    return usage.machine.lower() if usage.machine else ""


def user_of(usage: ur.NormalizedRecord) -> str | None:
    """The record's user as scopes and summaries have it: the view's DN (grid form), else its global
    user name that is not a DN (never equal to a certificate's DN, so no one's own scope takes it)."""
    return usage.user_dn or usage.global_user


def record_key(machine: str, record_id: str) -> str:
    """The document id of a record's identity (machine as ``machine_of`` gives it, record id)."""
    return key_hash(f"{machine}\0{record_id}")      # NUL: in neither an XML name nor an XML value


canonical_dn = ur.canonical_dn      # the one DN form (grid one-line), as the view has it


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordResult:
    index: int                  # 0-based position in the posted document
    record_id: str | None
    status: str                 # stored | duplicate | replaced | refused | invalid
    message: str = ""


@dataclass(frozen=True, slots=True)
class PublishReport:
    results: tuple[RecordResult, ...]
    # The records not stored (refused or invalid), as received, by their index: for a caller that
    # keeps them for the LUTS operator (the SGAS registration, held.py); a SOAP caller gets each
    # record's result and keeps its own copy.
    not_stored: Mapping[int, ur.RecordSource] = field(default_factory=dict, compare=False, repr=False)

    def count(self, status: str) -> int:
        return sum(1 for result in self.results if result.status == status)

    @property
    def ok(self) -> bool:
        return all(result.status in ("stored", "duplicate", "replaced") for result in self.results)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record_id: str
    month: str                  # YYYY-MM
    publisher: str
    received_us: int
    usage: ur.NormalizedRecord
    original: bytes             # exactly as received

    @property
    def original_text(self) -> str | None:
        try:
            return self.original.decode("utf-8")
        except UnicodeDecodeError:
            return None


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: tuple[StoredRecord, ...]
    cursor: str | None          # pass back to read the next page; None: no more
    scope: str


@dataclass(frozen=True, slots=True)
class ChargeTotal:
    """The charge of the jobs that gave one in ``unit`` (None: a charge without a unit)."""
    unit: str | None
    jobs: int
    charge_micro: int


@dataclass(frozen=True, slots=True)
class SummaryRow:
    key: Mapping[str, str]      # the --by dimensions and their values ("" when the records had none)
    jobs: int
    wall_us: int
    cpu_us: int
    charges: tuple[ChargeTotal, ...] = ()   # one per unit (units in order, no unit last); never added up


@dataclass(frozen=True, slots=True)
class Summary:
    rows: tuple[SummaryRow, ...]
    by: tuple[str, ...]
    from_month: str | None
    to_month: str | None
    scope: str


# -- months ---------------------------------------------------------------------------------------


def check_month(text: str | None, what: str) -> str | None:
    if text is None or text == "":
        return None
    if not isinstance(text, str) or not _MONTH.match(text):
        raise DomainError(f"{what} must be a month written YYYY-MM, not {text!r}", "InvalidArgument")
    return text


def month_key(month: str) -> str:          # "2026-11" → "202611"
    return month.replace("-", "")


def month_of_key(key: str) -> str:
    return f"{key[:4]}-{key[4:]}"


def _months_in(months: Iterable[str], from_month: str | None, to_month: str | None) -> list[str]:
    low = month_key(from_month) if from_month else "000000"
    high = month_key(to_month) if to_month else "999999"
    return [key for key in sorted(months) if low <= key <= high]


# -- documents ------------------------------------------------------------------------------------


_RECORD_IDENTITIES = tuple(f"{{{namespace}}}RecordIdentity" for namespace in ur.FORMATS)
_KEY_INFO = f"{{{ur.NS_DSIG}}}KeyInfo"


def _usage_digest(element: etree._Element) -> str:
    """The digest two records are equal by: the record's exclusive canonical XML (the namespaces it
    uses, not every one declared around it) without its publication metadata — ``RecordIdentity``'s
    ``createTime`` attribute and ``ds:KeyInfo`` child (when and by whom the record was written, not
    what was used), comments and processing instructions, and the whitespace between elements (not
    inside a value). Everything else, extensions included, is compared."""
    record = copy.deepcopy(element)
    record.tail = None
    etree.strip_elements(record, etree.Comment, etree.ProcessingInstruction, with_tail=False)
    for identity in record.iterchildren(*_RECORD_IDENTITIES):
        for name in [name for name in identity.attrib if name == "createTime" or name.endswith("}createTime")]:
            del identity.attrib[name]
        for key_info in identity.findall(_KEY_INFO):
            identity.remove(key_info)     # its tail is formatting, stripped below
    for node in record.iter(etree.Element):
        if len(node):
            if node.text is not None and not node.text.strip():
                node.text = None
            for child in node:
                if child.tail is not None and not child.tail.strip():
                    child.tail = None
    return hashlib.sha256(etree.tostring(record, method="c14n", exclusive=True, with_comments=False)).hexdigest()


def _attributes(usage: ur.NormalizedRecord) -> dict[str, str]:
    # the view's values, normalized once by records.normalize (see its docstring): scope attributes,
    # summary keys and the view agree
    values = {"user": user_of(usage), "vo": usage.vo, "site": usage.site,
              "machine": machine_of(usage), "queue": usage.queue,
              "job": usage.global_job_id, "ljob": usage.local_job_id}
    return {name: value for name, value in values.items() if value}


def _attributes_text(attributes: Mapping[str, str]) -> str:
    """`` name="value"`` for each attribute, escaped as lxml writes them."""
    return "".join(f' {name}="{ur.escape_attribute(value)}"' for name, value in attributes.items())


# characters XML 1.0 cannot carry (an original holding one is kept as base64)
_NOT_XML_CHARACTER = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _record_document(source: ur.RecordSource, usage: ur.NormalizedRecord, month: str, digest: str,
                     publisher: str, received_us: int) -> bytes:
    """``n:Stored`` (indexed attributes) holding the view, the original bytes as text, and the record
    itself for XPath — written as text: ingest makes one per record, and the store parses it anyway."""
    attributes = _attributes(usage)
    attributes.update(publisher=publisher, rid=usage.record_id, month=month, received=str(received_us))
    if usage.end_time is not None:
        attributes["end"] = str(datetime_to_us(usage.end_time))
    attributes["digest"] = digest
    try:
        original, encoding = source.data.decode("utf-8"), "utf-8"
        if _NOT_XML_CHARACTER.search(original):
            raise ValueError("a character XML cannot hold")
        original = ur.escape_text(original)
    except (UnicodeDecodeError, ValueError):
        original, encoding = base64.b64encode(source.data).decode("ascii"), "base64"
    # a record split from a container is a standalone element (in-scope namespaces declared, UTF-8);
    # a whole document may carry a declaration and prolog: its root element alone
    record = source.data if not source.whole_document else etree.tostring(source.element, encoding="utf-8")
    return b"".join((f'<n:Stored xmlns:n="{NS}"{_attributes_text(attributes)}>'.encode("utf-8"), ur.to_bytes(usage),
                     f'<n:Original encoding="{encoding}">{original}</n:Original>'.encode("utf-8"),
                     record, b"</n:Stored>"))


def _stored_record(xml: bytes) -> StoredRecord:
    return _stored_record_of(_stored_root(xml))


def _stored_root(xml: bytes) -> etree._Element:
    return etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True))


def _stored_record_of(root: etree._Element) -> StoredRecord:
    usage = ur.from_element(root.find(N + "Usage"))
    original = root.find(N + "Original")
    text = original.text or ""
    data = base64.b64decode(text) if original.get("encoding") == "base64" else text.encode("utf-8")
    return StoredRecord(record_id=root.get("rid"), month=month_of_key(root.get("month")),
                        publisher=root.get("publisher"), received_us=int(root.get("received")),
                        usage=usage, original=data)


def job_key(job_id: str) -> str:
    """A job id (or a record id) as the id map indexes it: itself, or — longer than a store index
    holds (1,000 bytes) — ``sha256:`` and its hash. ``job`` and ``record`` check the records they
    find against the id itself."""
    if len(job_id.encode("utf-8")) <= JOB_KEY_BYTES_MAX:
        return job_id
    return "sha256:" + hashlib.sha256(job_id.encode("utf-8")).hexdigest()


def _element_text(name: str, attributes: Mapping[str, str]) -> bytes:
    """``<n:name …/>`` with these attributes, written as text (ingest makes several per record)."""
    return f'<n:{name} xmlns:n="{NS}"{_attributes_text(attributes)}/>'.encode("utf-8")


def _id_entry(usage: ur.NormalizedRecord, month: str, digest: str) -> bytes:
    """The id map's entry: where the record is, its digest and machine, and its record and job ids
    (indexed: lookups by record id alone and by job id)."""
    attributes = {"month": month, "digest": digest, "machine": machine_of(usage), "rid": job_key(usage.record_id)}
    if usage.global_job_id:
        attributes["job"] = job_key(usage.global_job_id)
    if usage.local_job_id:
        attributes["ljob"] = job_key(usage.local_job_id)
    return _element_text("Id", attributes)


def forward_entry(month: str, record_hash: str, *, replace: bool = False) -> bytes:
    """A forward queue entry (``Luts.FORWARD_QUEUE``): which record to send upstream, and whether
    it replaces upstream's copy."""
    entry = etree.Element(N + "Forward", nsmap={"n": NS}, month=month, id=record_hash)
    if replace:
        entry.set("replace", "true")
    return etree.tostring(entry)


@dataclass(frozen=True, slots=True)
class _Prepared:
    index: int
    usage: ur.NormalizedRecord
    record_hash: str
    digest: str
    month: str                  # YYYYMM
    document: bytes
    id_entry: bytes


@dataclass
class _Counters:
    jobs: int = 0
    wall_us: int = 0
    cpu_us: int = 0
    # charge unit (None: no unit) → [jobs with a charge in it, charge in millionths]; never added across units
    charges: dict[str | None, list[int]] = field(default_factory=dict)

    def add(self, usage: ur.NormalizedRecord, sign: int) -> None:
        self.jobs += sign
        self.wall_us += sign * (usage.wall_us or 0)
        self.cpu_us += sign * (usage.cpu_us or 0)
        if usage.charge_micro is not None:
            self._add_charge(usage.charge_unit, sign, sign * usage.charge_micro)

    def add_stored(self, element: etree._Element) -> None:
        """Add a stored summary's totals (``<n:Summary>``) straight in: read per document, so no
        intermediate counters are built."""
        get = element.get
        self.jobs += int(get("jobs"))
        self.wall_us += int(get("wall_us"))
        self.cpu_us += int(get("cpu_us"))
        for charge in element.iterchildren(_CHARGE_TAG):
            self._add_charge(charge.get("unit"), int(charge.get("jobs")), int(charge.get("charge_micro")))

    def merge(self, other: "_Counters") -> None:
        for name in _COUNTER_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for unit, (jobs, micro) in other.charges.items():
            self._add_charge(unit, jobs, micro)

    def _add_charge(self, unit: str | None, jobs: int, micro: int) -> None:
        total = self.charges.setdefault(unit, [0, 0])
        total[0] += jobs
        total[1] += micro
        if total == [0, 0]:             # a delta may be [0, x] (a replace within one unit); a total never
            del self.charges[unit]

    def check(self) -> None:
        """What a stored summary's totals always are (a delta may be anything)."""
        invariant(self.jobs >= 0, "a summary never counts fewer than zero jobs")
        invariant(all(jobs > 0 for jobs, _ in self.charges.values()),
                  "a summary's charge in a unit is of at least one job (none: no charge in it)")
        invariant(sum(jobs for jobs, _ in self.charges.values()) <= self.jobs,
                  "a job gives a charge in one unit at most")

    def charge_totals(self) -> tuple[ChargeTotal, ...]:
        """One per unit: units in order, charges without a unit last."""
        return tuple(ChargeTotal(unit, jobs, micro) for unit, (jobs, micro)
                     in sorted(self.charges.items(), key=lambda item: (item[0] is None, item[0] or "")))


_SUMMARY_KEY = ("user", "vo", "site", "machine", "queue")
_CHARGE_TAG = N + "Charge"
_COUNTER_NAMES = ("jobs", "wall_us", "cpu_us")


def _summary_key(usage: ur.NormalizedRecord) -> tuple[str, ...]:
    attributes = _attributes(usage)
    return tuple(attributes.get(name, "") for name in _SUMMARY_KEY)


def _summary_document(key: tuple[str, ...], month: str, counters: _Counters) -> bytes:
    """``<n:Summary month user… jobs wall_us cpu_us>`` with one ``<n:Charge [unit] jobs charge_micro/>``
    per charge unit (no ``unit``: charges without one), written as text as lxml would."""
    attributes = {"month": month, **{name: value for name, value in zip(_SUMMARY_KEY, key) if value}}
    attributes.update((name, str(getattr(counters, name))) for name in _COUNTER_NAMES)
    charges = counters.charge_totals()
    if not charges:
        return _element_text("Summary", attributes)
    parts = [f'<n:Summary xmlns:n="{NS}"{_attributes_text(attributes)}>']
    for charge in charges:
        values = {"unit": charge.unit} if charge.unit is not None else {}
        values.update(jobs=str(charge.jobs), charge_micro=str(charge.charge_micro))
        parts.append(f"<n:Charge{_attributes_text(values)}/>")
    parts.append("</n:Summary>")
    return "".join(parts).encode("utf-8")


def _counters_of(element: etree._Element) -> _Counters:
    counters = _Counters()
    counters.add_stored(element)
    return counters


def _read_counters(xml: bytes) -> _Counters:
    return _counters_of(etree.fromstring(xml))


# -- the service core -----------------------------------------------------------------------------


def _publishes_for(machines: frozenset[str], machine: str) -> bool:
    """Whether ``machines`` — what ``LutsPolicy.publish_machines`` gave for the caller — holds ``machine``."""
    return "*" in machines or machine in machines


class Luts:
    """One LUTS over one store; safe to share between threads (the store is)."""

    META = "luts_meta"

    FORWARD_QUEUE = "urfwd"

    def __init__(self, store: XmlStore, policy: LutsPolicy, *, limits: ur.BatchLimits = ur.DEFAULT_LIMITS,
                 forwarding: bool = False, held_dir: Path | None = None) -> None:
        self.store = store
        # Where documents kept for the operator (held.py) that are too large for a store document
        # are written, as files the held entry names; None: only what fits in the store is kept.
        self.held_dir = held_dir
        self.policy = policy
        self.limits = limits
        # With forwarding on, every record stored or replaced is also queued (in the same transaction)
        # in ``urfwd`` for the forwarder (forward.py) to send to the higher-level LUTS; the queue
        # entry's id orders by arrival: ``<received µs, 20 digits>-<record hash>``.
        self.forwarding = forwarding

    # -- publish ----------------------------------------------------------------------------------

    def publish(self, data: bytes, caller: Caller, *, replace: bool = False,
                now_us: int | None = None, operation: str = "Publish") -> PublishReport:
        """Store every readable record of a posted document; one result per record, in order.
        ``operation``: how the caller asked (``Publish``, or SGAS's ``RegisterUsageRecords`` route),
        as the policy (policy.py) decides it.

        The whole request is refused (DomainError) only when the caller may not publish at all or
        the document is unreadable as a whole; anything wrong with one record is that record's result.
        """
        machines = authorize_publish(self.policy, caller, replace=replace, operation=operation)
        received_us = timeunits.now_us() if now_us is None else now_us
        try:
            batch = ur.parse_batch(data, self.limits)
        except SecurityError as error:
            raise DomainError(f"the document was refused: {error}", "InvalidUsageRecord") from None
        results: list[RecordResult | None] = [None] * len(batch.outcomes)
        ready = []
        for outcome in batch.outcomes:
            index = outcome.source.index
            if not outcome.ok:
                results[index] = RecordResult(index, outcome.source.record_id, "invalid", outcome.error)
                continue
            usage = outcome.record
            if not _publishes_for(machines, machine_of(usage)):
                results[index] = RecordResult(
                    index, usage.record_id, "refused",
                    f"{caller.dn} may publish records of {', '.join(sorted(machines))} only; this record's "
                    f"machine is {usage.machine or 'not given'}")
                continue
            ready.append(outcome)
        for start in range(0, len(ready), PUBLISH_CHUNK):
            chunk = [self._prepare(outcome, caller, received_us) for outcome in ready[start:start + PUBLISH_CHUNK]]
            for result in self.store.transact(lambda tx: self._store_chunk(tx, chunk, replace, machines, received_us)):
                results[result.index] = result
        invariant(all(result is not None for result in results), "every record of the batch has a result")
        not_stored = {result.index: batch.outcomes[result.index].source for result in results
                      if result.status in ("refused", "invalid")}
        return PublishReport(tuple(results), not_stored)

    def _years(self, tx_or_store) -> list[str]:
        return self._partitions(tx_or_store, "years")

    def _months(self, tx_or_store) -> list[str]:
        """The months (YYYYMM) that have ``ur_``/``urs_`` partitions: read from one small document, not
        by listing the store's collections (which costs a scan on both backends)."""
        return self._partitions(tx_or_store, "months")

    def _partitions(self, tx_or_store, name: str) -> list[str]:
        document = tx_or_store.get(self.META, name)
        if document is None:
            return []
        return sorted(etree.fromstring(document.xml).get("list", "").split())

    def _add_partitions(self, tx, name: str, known: Sequence[str], used: set[str]) -> None:
        if not used <= set(known):
            tx.put(self.META, name, etree.tostring(
                etree.Element(N + "Partitions", nsmap={"n": NS}, list=" ".join(sorted(set(known) | used)))))

    def _find_id(self, tx_or_store, years: Sequence[str], record_hash: str):
        for year in years:
            document = tx_or_store.get(f"urid_{year}", record_hash)
            if document is not None:
                return year, etree.fromstring(document.xml)
        return None

    def _prepare(self, outcome: ur.RecordOutcome, caller: Caller, received_us: int) -> "_Prepared":
        """Everything about one record that needs no store: done before the transaction, outside its lock."""
        source, usage = outcome.source, outcome.record
        element = source.element if source.element is not None else etree.fromstring(source.data)
        digest = _usage_digest(element)
        month_text = ur.record_month(usage)
        month = month_key(month_text) if month_text else datetime_from_us(received_us).strftime("%Y%m")
        return _Prepared(index=source.index, usage=usage, record_hash=record_key(machine_of(usage), usage.record_id),
                         digest=digest,
                         month=month, document=_record_document(source, usage, month, digest, caller.dn, received_us),
                         id_entry=_id_entry(usage, month, digest))

    def _store_chunk(self, tx, chunk: Sequence["_Prepared"], replace: bool, machines: frozenset[str],
                     received_us: int) -> list[RecordResult]:
        years = self._years(tx)
        year_now = datetime_from_us(received_us).strftime("%Y")
        deltas: dict[tuple[str, tuple[str, ...]], _Counters] = {}
        seen: dict[str, str] = {}         # record key → digest, within this chunk
        results = []
        for record in chunk:
            usage, record_hash = record.usage, record.record_hash
            if record_hash in seen:
                same = seen[record_hash] == record.digest
                results.append(RecordResult(record.index, usage.record_id, "duplicate" if same else "refused",
                                            "" if same else "another record with this id and machine is earlier "
                                                            "in the batch"))
                continue
            found = self._find_id(tx, years, record_hash)
            status = "stored"
            id_year = year_now
            if found is not None:
                id_year, entry = found
                if entry.get("digest") == record.digest:
                    seen[record_hash] = record.digest
                    results.append(RecordResult(record.index, usage.record_id, "duplicate",
                                                "already stored (the same record)"))
                    continue
                if not replace:
                    results.append(RecordResult(
                        record.index, usage.record_id, "refused",
                        f"a different record is already stored under this record id for machine "
                        f"{machine_of(usage) or '(none)'} (a site administrator may replace it with the replace "
                        f"option)"))
                    continue
                # the identity holds the machine: the stored record's is the new one's, which publish()
                # checked against the caller's machines — so a replace never reaches another machine's record
                invariant(entry.get("machine") == machine_of(usage) and _publishes_for(machines, machine_of(usage)),
                          "a replaced record is of the new record's machine, one the caller may publish for")
                old_month = entry.get("month")
                old = tx.get(f"ur_{old_month}", record_hash)
                invariant(old is not None, f"the record the id map names is in ur_{old_month}")
                old_usage = _stored_record(old.xml).usage
                deltas.setdefault((old_month, _summary_key(old_usage)), _Counters()).add(old_usage, -1)
                tx.delete(f"ur_{old_month}", record_hash)
                status = "replaced"
            seen[record_hash] = record.digest
            tx.put(f"ur_{record.month}", record_hash, record.document)
            tx.put(f"urid_{id_year}", record_hash, record.id_entry)
            deltas.setdefault((record.month, _summary_key(usage)), _Counters()).add(usage, +1)
            if self.forwarding:
                # replaced: upstream holds the old version, it must be replaced there too
                tx.put(self.FORWARD_QUEUE, f"{received_us:020d}-{record_hash}",
                       forward_entry(record.month, record_hash, replace=status == "replaced"))
            results.append(RecordResult(record.index, usage.record_id, status))
        self._add_partitions(tx, "years", years, {year_now})
        self._add_partitions(tx, "months", self._months(tx), {month for month, _ in deltas})
        for (month, key), counters in deltas.items():
            doc_id = key_hash("\0".join(key))
            current = tx.get(f"urs_{month}", doc_id)
            total = _read_counters(current.xml) if current is not None else _Counters()
            total.merge(counters)
            total.check()
            if total.jobs == 0:
                if current is not None:
                    tx.delete(f"urs_{month}", doc_id)
            else:
                tx.put(f"urs_{month}", doc_id, _summary_document(key, month, total))
        return results

    # -- queries ----------------------------------------------------------------------------------

    def query(self, caller: Caller, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
              namespaces: Mapping[str, str] = {}, scope: str | None = None, from_month: str | None = None,
              to_month: str | None = None, cursor: str | None = None, limit: int = 100,
              time_limit_s: float = 10.0) -> RecordPage:
        """Records in the caller's scope for which ``xpath`` (context: the ``n:Stored`` root) is true.

        Ordered by month, then by the hash of the record id; ``cursor`` continues a previous page.
        """
        chosen = choose_scope(self.policy, caller, scope, "Query")
        from_month, to_month = check_month(from_month, "from"), check_month(to_month, "to")
        if not 1 <= limit <= QUERY_LIMIT_MAX:
            raise DomainError(f"limit must be between 1 and {QUERY_LIMIT_MAX}", "InvalidArgument")
        if xpath is not None and not xpath.strip():
            xpath = None
        start_month, offset = self._read_cursor(cursor)
        merged = {**QUERY_NAMESPACES, **namespaces}
        months = [m for m in _months_in(self._months(self.store), from_month, to_month)
                  if start_month is None or m >= start_month]
        if not months:      # no store query checks the expression: a bad one is refused all the same
            self.store.check_query(xpath, variables, namespaces=merged)
        found: list[StoredRecord] = []
        for month in months:
            if month != start_month:
                offset = 0
            page = self.store.query(f"ur_{month}", xpath, variables, where=chosen.where, namespaces=merged,
                                    offset=offset, limit=limit - len(found), time_limit_s=time_limit_s)
            found.extend(_stored_record(document.xml) for document in page.documents)
            if page.next_offset is not None:
                return RecordPage(tuple(found), f"{month}.{page.next_offset}", chosen.name)
            if len(found) >= limit:
                later = months[months.index(month) + 1:]
                return RecordPage(tuple(found), f"{later[0]}.0" if later else None, chosen.name)
        return RecordPage(tuple(found), None, chosen.name)

    @staticmethod
    def _read_cursor(cursor: str | None) -> tuple[str | None, int]:
        if not cursor:
            return None, 0
        match = re.fullmatch(r"(\d{6})\.(\d{1,12})", cursor)
        if not match:
            raise DomainError(f"cursor {cursor!r} is not one this service gave out", "InvalidArgument")
        return match.group(1), int(match.group(2))

    def record(self, caller: Caller, record_id: str, machine: str | None = None) -> StoredRecord:
        """One record by its identity (in the caller's widest scope): its record id and ``machine``.

        Without ``machine``: the record under this id the caller may see — refused as
        ``AmbiguousRecord`` (naming the machines) when the caller may see several.
        """
        if not record_id or len(record_id) > ur.VALUE_CHARS_MAX:
            raise DomainError("a record id is a non-empty string", "InvalidArgument")
        scopes = scopes_of(self.policy, caller, "GetRecord")
        years = self._years(self.store)
        if machine is not None:
            record_hash = record_key(machine.strip().lower(), record_id)
            found = self._find_id(self.store, years, record_hash)
            refs = {(found[1].get("month"), record_hash)} if found else set()
        else:
            refs = self._id_refs(years, ("rid",), record_id)
        records = self._visible_records(scopes, refs, lambda usage: usage.record_id == record_id)
        if not records:
            on = f" of machine {machine}" if machine is not None else ""
            raise DomainError(f"no usage record {record_id!r}{on} that you may see", "UnknownRecord")
        if len(records) > 1:
            machines = ", ".join(sorted(machine_of(record.usage) or "(none)" for record in records))
            raise DomainError(f"record id {record_id!r} is stored for several machines ({machines}): name the "
                              f"machine", "AmbiguousRecord")
        return records[0]

    def stored(self, month: str, record_hash: str) -> StoredRecord | None:
        """A record by where it is kept (``month`` YYYYMM, its ``record_key``), for the forwarder; no scope."""
        document = self.store.get(f"ur_{month}", record_hash)
        return None if document is None else _stored_record(document.xml)

    @staticmethod
    def _visible_record(scopes: Mapping[str, Scope], xml: bytes) -> StoredRecord | None:
        """The stored record, if one of the caller's ``scopes`` (``policy.scopes_of``) admits it (one parse for both)."""
        root = _stored_root(xml)
        attributes = dict(root.attrib)
        if any(scope.admits(attributes) for scope in scopes.values()):
            return _stored_record_of(root)
        return None

    def job(self, caller: Caller, job_id: str) -> tuple[StoredRecord, ...]:
        """The records of one job, by global or local job id, that the caller may see — of every machine
        that names it (a local job id is often reused across machines), so possibly several."""
        if not job_id or len(job_id) > ur.VALUE_CHARS_MAX:
            raise DomainError("a job id is a non-empty string", "InvalidArgument")
        scopes = scopes_of(self.policy, caller, "JobUsage")
        refs = self._id_refs(self._years(self.store), ("job", "ljob"), job_id)
        return tuple(self._visible_records(scopes, refs,
                                           lambda usage: job_id in (usage.global_job_id, usage.local_job_id)))

    def _id_refs(self, years: Sequence[str], attributes: Sequence[str], value: str) -> set[tuple[str, str]]:
        """(month, record key) of the id map's entries whose ``attributes`` (one indexed query each per
        year) hold ``value`` as ``job_key`` writes it; at most ``JOB_RECORDS_MAX`` per query."""
        refs: set[tuple[str, str]] = set()
        for year in years:
            for attribute in attributes:
                page = self.store.query(f"urid_{year}", None, where={attribute: job_key(value)},
                                        limit=JOB_RECORDS_MAX)
                refs |= {(etree.fromstring(d.xml).get("month"), d.doc_id) for d in page.documents}
        return refs

    def _visible_records(self, scopes: Mapping[str, Scope], refs: Iterable[tuple[str, str]],
                         matches) -> list[StoredRecord]:
        """The records at ``refs`` that the caller's ``scopes`` admit and whose view ``matches`` (its
        own id, not just the hash of a long one), in month order."""
        records = []
        for month, record_hash in sorted(refs):
            document = self.store.get(f"ur_{month}", record_hash)
            record = self._visible_record(scopes, document.xml) if document is not None else None
            if record is not None and matches(record.usage):
                records.append(record)
        return records

    def summary(self, caller: Caller, by: Sequence[str], *, from_month: str | None = None,
                to_month: str | None = None, scope: str | None = None) -> Summary:
        """Jobs, wall and CPU time and charge per charge unit grouped by ``by``, from the incremental
        summaries."""
        by = tuple(dict.fromkeys(by))
        unknown = [name for name in by if name not in SUMMARY_DIMENSIONS]
        if unknown:
            raise DomainError(f"cannot summarize by {', '.join(unknown)}; choose from {', '.join(SUMMARY_DIMENSIONS)}",
                              "InvalidArgument")
        chosen = choose_scope(self.policy, caller, scope, "Summary")
        if "publisher" in chosen.where:  # summaries are not kept per publisher: narrow by its machines
            raise DomainError("a publisher allowed for any machine has no site summary; ask with scope all or own",
                              "InvalidArgument")
        from_month, to_month = check_month(from_month, "from"), check_month(to_month, "to")
        totals: dict[tuple[str, ...], _Counters] = {}
        for month in _months_in(self._months(self.store), from_month, to_month):
            offset: int | None = 0
            while offset is not None:
                page = self.store.query(f"urs_{month}", None, where=chosen.where, offset=offset,
                                        limit=self.store.limits.query_limit_max, time_limit_s=30.0)
                for document in page.documents:
                    element = etree.fromstring(document.xml)
                    key = tuple(month_of_key(month) if name == "month" else element.get(name, "") for name in by)
                    counters = totals.get(key)
                    if counters is None:
                        counters = totals[key] = _Counters()
                    counters.add_stored(element)
                offset = page.next_offset
        rows = tuple(SummaryRow(key=dict(zip(by, key)), jobs=c.jobs, wall_us=c.wall_us, cpu_us=c.cpu_us,
                                charges=c.charge_totals()) for key, c in sorted(totals.items()))
        return Summary(rows=rows, by=by, from_month=from_month, to_month=to_month, scope=chosen.name)


__all__ = ["Caller", "ChargeTotal", "INDEXES", "Luts", "LutsPolicy", "PublishReport", "QUERY_NAMESPACES", "RecordPage",
           "RecordResult", "Scope", "StoredRecord", "Summary", "SummaryRow", "SUMMARY_DIMENSIONS",
           "canonical_dn", "choose_scope", "machine_of", "record_key", "scopes_of", "user_of"]
