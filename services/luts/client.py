"""The typed LUTS client: one method per SOAP operation, results as the core's own dataclasses.

    luts = LutsClient("https://luts.example.org:8443", credential=load_credential(), trust_dir=trust_directory())
    report = luts.publish(Path("batch.xml").read_bytes())      # PublishReport: one RecordResult per record
    page = luts.query("n:Usage/n:wall_us > $w", {"w": 3_600_000_000}, from_month="2026-11", to_month="2026-11")
    rows = luts.summary(["vo", "month"], from_month="2026-01", to_month="2026-12").rows

Retries follow the one rule of :class:`gridcredit.client.ServiceClient`. Publishing is applied
once per record (its machine and record id: the same record again answers ``duplicate``) and
queries change nothing, so when an attempt ends without an answer (connection failed or was reset,
the reply timed out, a gateway answered 502/503/504) the client sends the same request again, at
most ``retries`` more times with exponential backoff; a publish that may have arrived and was never
answered ends in :class:`OutcomeUnknown` (publishing it again is safe). Refusals
(:class:`RemoteFault`) and security failures are answers, never retried. The WSDL is the
checked-in ``wsdl/luts.wsdl``: nothing is fetched before the first call.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

from gridcredit.client import Effect, OutcomeUnknown, ServiceClient
from gridcredit.wiretypes import array_items, from_wire

from . import records as ur
from .luts import ChargeTotal, PublishReport, RecordPage, RecordResult, StoredRecord, Summary, SummaryRow


def _record(info) -> StoredRecord:
    return StoredRecord(record_id=info.record_id, month=info.month, publisher=info.publisher,
                        received_us=info.received_us, usage=from_wire(ur.NormalizedRecord, info.usage),
                        original=bytes(info.original))


class LutsClient(ServiceClient):
    """The LUTS's SOAP operations as typed methods (see the module docstring for retries)."""

    SERVICE = "luts"
    TIMEOUT_S_DEFAULT = 300.0

    def _call(self, operation: str, **arguments):
        return self.invoke(operation, arguments)

    def publish(self, document: bytes, *, replace: bool = False) -> PublishReport:
        answer = self.invoke("Publish", {"document": document, "replace": replace or None}, effect=Effect.ONCE_PER_KEY)
        return PublishReport(tuple(RecordResult(index=r.index, record_id=r.record_id, status=r.status,
                                                message=r.message or "")
                                   for r in array_items(answer.results, "RecordResultInfo")))

    def query(self, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
              namespaces: Mapping[str, str] = {}, scope: str | None = None, from_month: str | None = None,
              to_month: str | None = None, cursor: str | None = None, limit: int = 100) -> RecordPage:
        bound = [{"name": name, "value": str(value), "integer": isinstance(value, int) or None}
                 for name, value in variables.items()]
        answer = self._call("Query", xpath=xpath, variables={"Variable": bound} if bound else None,
                            namespaces={"NamespaceBinding": [{"prefix": p, "uri": u} for p, u in namespaces.items()]}
                            if namespaces else None,
                            scope=scope, from_month=from_month, to_month=to_month, cursor=cursor, limit=limit)
        return RecordPage(tuple(_record(info) for info in array_items(answer.records, "UsageRecordInfo")),
                          answer.cursor, answer.scope)

    def query_all(self, xpath: str | None = None, variables: Mapping[str, str | int] = {}, *,
                  page_size: int = 500, records_max: int = 1_000_000, **options) -> Iterator[StoredRecord]:
        """Every match, page by page (at most ``records_max``)."""
        cursor, count = None, 0
        while True:
            page = self.query(xpath, variables, cursor=cursor, limit=page_size, **options)
            for record in page.records:
                if count >= records_max:
                    return
                count += 1
                yield record
            if page.cursor is None:
                return
            cursor = page.cursor

    def job(self, job_id: str) -> tuple[StoredRecord, ...]:
        """Every record of the job (global or local id) you may see: one per machine and record id."""
        answer = self._call("JobUsage", job_id=job_id)
        return tuple(_record(info) for info in array_items(answer, "UsageRecordInfo"))

    def record(self, record_id: str, machine: str | None = None) -> StoredRecord:
        """The record ``record_id`` of ``machine``; without it, the one under that id you may see
        (``RemoteFault`` ``AmbiguousRecord`` when you may see several: name the machine)."""
        return _record(self._call("GetRecord", record_id=record_id, machine=machine))

    def summary(self, by: Sequence[str], *, from_month: str | None = None, to_month: str | None = None,
                scope: str | None = None) -> Summary:
        answer = self._call("Summary", by={"string": list(by)} if by else None, from_month=from_month,
                            to_month=to_month, scope=scope)
        names = tuple(array_items(answer.by, "string"))
        rows = tuple(SummaryRow(key={name: getattr(row, name) or "" for name in names}, jobs=row.jobs,
                                wall_us=row.wall_us, cpu_us=row.cpu_us,
                                charges=tuple(ChargeTotal(unit=charge.unit, jobs=charge.jobs,
                                                          charge_micro=charge.charge_micro)
                                              for charge in array_items(row.charges, "ChargeTotalInfo")))
                     for row in array_items(answer.rows, "SummaryRowInfo"))
        return Summary(rows=rows, by=names, from_month=answer.from_month, to_month=answer.to_month,
                       scope=answer.scope)


__all__ = ["LutsClient", "OutcomeUnknown"]
