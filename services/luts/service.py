"""The SOAP face of the LUTS: thin operations over ``luts.Luts`` (see SPEC §3).

Usage-record documents travel as ``xs:base64Binary`` so the LUTS receives them byte for byte
(the original of each record is kept exactly as received). Times are integer microseconds since
the epoch (``*_us``), durations integer microseconds, charges integer millionths (``charge_micro``)
beside the decimal as written; summaries give the charge per unit (``charges``), never a sum across units.
"""
from __future__ import annotations

from spyne import Array, Boolean, ByteArray, ComplexModel, Integer, Long, Unicode

from gridcredit.errors import DomainError
from gridcredit.wiretypes import complex_model, wire_values

from . import policy, records as ur
from .luts import Caller, RecordPage, StoredRecord
from ..common import GridcreditService, operation, principal_of, runtime_of, whoami_operation

NAMESPACE = "urn:gridcredit:luts:1"
SERVICE_NAME = "Luts"

Required = {"min_occurs": 1, "nillable": False}
VARIABLES_MAX = 64


UsageView = complex_model(ur.NormalizedRecord, "UsageView", NAMESPACE)   # times as <name>_us


class UsageRecordInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("record_id", Unicode(**Required)), ("month", Unicode(**Required)),
                  ("publisher", Unicode(**Required)), ("received_us", Long(**Required)),
                  ("usage", UsageView.customize(**Required)), ("original", ByteArray(**Required))]


class RecordPageInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("records", Array(UsageRecordInfo)), ("cursor", Unicode(min_occurs=0)),
                  ("scope", Unicode(**Required))]


class RecordResultInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("index", Long(**Required)), ("record_id", Unicode(min_occurs=0)),
                  ("status", Unicode(**Required)), ("message", Unicode(min_occurs=0))]


class PublishResultInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("stored", Long(**Required)), ("duplicate", Long(**Required)), ("replaced", Long(**Required)),
                  ("refused", Long(**Required)), ("invalid", Long(**Required)),
                  ("results", Array(RecordResultInfo))]


class Variable(ComplexModel):
    """A bound XPath variable: ``$name`` in the expression; integers are compared as numbers."""
    __namespace__ = NAMESPACE
    _type_info = [("name", Unicode(**Required)), ("value", Unicode(**Required)),
                  ("integer", Boolean(min_occurs=0))]


class NamespaceBinding(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("prefix", Unicode(**Required)), ("uri", Unicode(**Required))]


class ChargeTotalInfo(ComplexModel):
    """The charge in one unit (no ``unit``: charges given without one) and the jobs that gave it."""
    __namespace__ = NAMESPACE
    _type_info = [("unit", Unicode(min_occurs=0)), ("jobs", Long(**Required)), ("charge_micro", Long(**Required))]


class SummaryRowInfo(ComplexModel):
    """One group: jobs, wall and CPU µs, and the charge per unit (never added across units)."""
    __namespace__ = NAMESPACE
    _type_info = [("user", Unicode(min_occurs=0)), ("vo", Unicode(min_occurs=0)), ("site", Unicode(min_occurs=0)),
                  ("machine", Unicode(min_occurs=0)), ("queue", Unicode(min_occurs=0)),
                  ("month", Unicode(min_occurs=0)), ("jobs", Long(**Required)), ("wall_us", Long(**Required)),
                  ("cpu_us", Long(**Required)), ("charges", Array(ChargeTotalInfo))]


class SummaryInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("by", Array(Unicode)), ("from_month", Unicode(min_occurs=0)), ("to_month", Unicode(min_occurs=0)),
                  ("scope", Unicode(**Required)), ("rows", Array(SummaryRowInfo))]


# -- mapping ---------------------------------------------------------------------------------------


def _record_info(record: StoredRecord) -> UsageRecordInfo:
    return UsageRecordInfo(record_id=record.record_id, month=record.month, publisher=record.publisher,
                           received_us=record.received_us, usage=UsageView(**wire_values(record.usage)),
                           original=[record.original])


def _page_info(page: RecordPage) -> RecordPageInfo:
    return RecordPageInfo(records=[_record_info(record) for record in page.records], cursor=page.cursor,
                          scope=page.scope)


def caller_of(ctx) -> Caller:
    return principal_of(ctx)


def _variables(variables) -> dict[str, str | int]:
    bound: dict[str, str | int] = {}
    for variable in variables or ():
        if len(bound) >= VARIABLES_MAX:
            raise DomainError(f"at most {VARIABLES_MAX} variables", "InvalidArgument")
        if variable.integer:
            try:
                bound[variable.name] = int(variable.value)
            except ValueError:
                raise DomainError(f"variable ${variable.name} is marked integer but is {variable.value!r}",
                                  "InvalidArgument") from None
        else:
            bound[variable.name] = variable.value
    return bound


def _document(document) -> bytes:
    if document is None:
        raise DomainError("no usage-record document was sent", "InvalidArgument")
    return b"".join(document)


class LutsService(GridcreditService):
    __service_name__ = SERVICE_NAME
    WhoAmI = whoami_operation("luts", authorize=lambda ctx: policy.authorize_anyone("WhoAmI"))

    @operation(ByteArray(**Required), Boolean(min_occurs=0), _returns=PublishResultInfo, _operation_name="Publish")
    def publish(ctx, document, replace):
        report = runtime_of(ctx).luts.publish(_document(document), caller_of(ctx), replace=bool(replace))
        return PublishResultInfo(
            stored=report.count("stored"), duplicate=report.count("duplicate"), replaced=report.count("replaced"),
            refused=report.count("refused"), invalid=report.count("invalid"),
            results=[RecordResultInfo(index=r.index, record_id=r.record_id, status=r.status, message=r.message or None)
                     for r in report.results])

    @operation(Unicode(min_occurs=0), Array(Variable), Array(NamespaceBinding), Unicode(min_occurs=0),
               Unicode(min_occurs=0), Unicode(min_occurs=0), Unicode(min_occurs=0), Integer(min_occurs=0),
               _returns=RecordPageInfo, _operation_name="Query")
    def query(ctx, xpath, variables, namespaces, scope, from_month, to_month, cursor, limit):
        page = runtime_of(ctx).luts.query(
            caller_of(ctx), xpath or None, _variables(variables),
            namespaces={binding.prefix: binding.uri for binding in namespaces or ()}, scope=scope,
            from_month=from_month, to_month=to_month, cursor=cursor, limit=100 if limit is None else int(limit))
        return _page_info(page)

    @operation(Unicode(**Required), _returns=Array(UsageRecordInfo), _operation_name="JobUsage")
    def job_usage(ctx, job_id):
        # every record that names the job id (global or local) and the caller may see, of any machine
        return [_record_info(record) for record in runtime_of(ctx).luts.job(caller_of(ctx), job_id)]

    @operation(Unicode(**Required), Unicode(min_occurs=0), _returns=UsageRecordInfo, _operation_name="GetRecord")
    def get_record(ctx, record_id, machine):
        # a record is its record id and its machine; without the machine, the one the caller may see
        # under that id (fault AmbiguousRecord when there are several)
        return _record_info(runtime_of(ctx).luts.record(caller_of(ctx), record_id, machine))

    @operation(Array(Unicode), Unicode(min_occurs=0), Unicode(min_occurs=0), Unicode(min_occurs=0),
               _returns=SummaryInfo, _operation_name="Summary")
    def summary(ctx, by, from_month, to_month, scope):
        result = runtime_of(ctx).luts.summary(caller_of(ctx), list(by or ()), from_month=from_month,
                                              to_month=to_month, scope=scope)
        return SummaryInfo(by=list(result.by), from_month=result.from_month, to_month=result.to_month,
                           scope=result.scope,
                           rows=[SummaryRowInfo(**row.key, jobs=row.jobs, wall_us=row.wall_us, cpu_us=row.cpu_us,
                                                charges=[ChargeTotalInfo(unit=charge.unit, jobs=charge.jobs,
                                                                         charge_micro=charge.charge_micro)
                                                         for charge in row.charges])
                                 for row in result.rows])


SERVICES = [LutsService]
