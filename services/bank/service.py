"""The SOAP face of the Bank: thin operations over ``bank.Bank`` (see SPEC §2).

Each operation resolves its caller once (``policy.principal_for``: the verified chain's principal
with what the ``[bank]`` configuration says of it), decodes its arguments into a ledger request or
a query, runs it as that caller and maps the result. It decides nothing itself: who may do what is
``policy.py``'s — asked here first only by the operations that name no resource (the audit, the
pending mints, the money supply, WhoAmI), by the core and the Bank's queries for the others.
Response types are generated from the ledger's own dataclasses so the WSDL
says exactly what the ledger stores (money as xs:long, times as microseconds since the epoch).
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from lxml import etree
from spyne import Array, Boolean, ComplexModel, DateTime, Long, Unicode
from spyne.protocol.soap import Soap11
from spyne.protocol.xml import SubXmlBase

from gridcredit.errors import DomainError, StoreError, invariant
from gridcredit.security.wssec import SOAP11_NS
from gridcredit.soapfault import fault_for
from gridcredit.timeunits import datetime_to_us, now_us
from gridcredit.wiretypes import complex_model, wire_values

from . import ledger, policy, types
from .ledger import AccountStatus, Role
from .policy import Principal
from ..common import GridcreditService, operation, principal_of, runtime_of, whoami_operation

log = logging.getLogger("gridcredit.bank")

NAMESPACE = "urn:gridcredit:bank:1"
SERVICE_NAME = "Bank"

Required = {"min_occurs": 1, "nillable": False}


class HolderInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("dn", Unicode(**Required)), ("role", Unicode(**Required))]


TransactionInfo = complex_model(ledger.Transaction, "TransactionInfo", NAMESPACE)
HoldInfo = complex_model(ledger.Hold, "HoldInfo", NAMESPACE)
PendingMintInfo = complex_model(ledger.PendingMint, "PendingMintInfo", NAMESPACE)


class Receipt(ComplexModel):
    """The answer to every mutating operation: the ledger transaction it made (or, on a retry, made before)."""

    __namespace__ = NAMESPACE
    _type_info = [("transaction", TransactionInfo.customize(**Required)), ("replayed", Boolean(**Required))]


class BalanceInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("account_id", Unicode(**Required)), ("total", Long(**Required)), ("held", Long(**Required)),
                  ("available", Long(**Required)), ("credit_limit", Long(**Required))]


class GrantInfo(ComplexModel):
    """A service grant on an account: its caps (absent: none) and what it held in the current period."""

    __namespace__ = NAMESPACE
    _type_info = [("service_dn", Unicode(**Required)), ("hold_max", Long(min_occurs=0)),
                  ("period_max", Long(min_occurs=0)), ("period_us", Long(min_occurs=0)),
                  ("held_in_period", Long(**Required)), ("granted_at_us", Long(**Required))]


class AccountInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("account_id", Unicode(**Required)), ("project", Unicode(**Required)), ("status", Unicode(**Required)),
                  ("balance", Long(**Required)), ("held", Long(**Required)), ("available", Long(**Required)),
                  ("credit_limit", Long(**Required)), ("spending_limit", Long(min_occurs=0)),
                  ("spending_period_us", Long(min_occurs=0)), ("spent_in_period", Long(**Required)),
                  ("created_at_us", Long(**Required)), ("holders", Array(HolderInfo)), ("grants", Array(GrantInfo))]


class HoldPage(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("holds", Array(HoldInfo)), ("next_offset", Long(min_occurs=0))]


class PendingMintPage(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("pending_mints", Array(PendingMintInfo)), ("next_offset", Long(min_occurs=0))]


class TransactionPage(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("transactions", Array(TransactionInfo)), ("next_offset", Long(min_occurs=0))]


class StatementInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("account_id", Unicode(**Required)), ("from_us", Long(**Required)), ("to_us", Long(**Required)),
                  ("opening_balance", Long(**Required)), ("closing_balance", Long(**Required)),
                  ("transactions", Array(TransactionInfo)), ("truncated", Boolean(**Required))]


class MoneySupplyInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("issued", Long(**Required)), ("retired", Long(**Required)), ("outstanding", Long(**Required))]


class AuditFindingInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("kind", Unicode(**Required)), ("seq", Long(min_occurs=0)), ("message", Unicode(**Required))]


class AuditInfo(ComplexModel):
    __namespace__ = NAMESPACE
    _type_info = [("clean", Boolean(**Required)), ("transaction_count", Long(**Required)),
                  ("head_seq", Long(**Required)), ("head_hash", Unicode(**Required)),
                  ("issued", Long(**Required)), ("retired", Long(**Required)),
                  ("signatures_checked", Long(**Required)), ("findings", Array(AuditFindingInfo)),
                  ("findings_omitted", Long(**Required))]


BATCH_OPERATION_NAMES = tuple(kind.__name__ for kind in ledger.BATCH_OPERATIONS)
# The fields each operation of a batch item takes (request_id and operation aside), as the single operation's:
# (required, optional).
BATCH_ITEM_FIELDS = {
    "ChargeHold": (("hold_id", "payee_account_id", "amount"), ()),
    "SettleHold": (("hold_id", "payee_account_id", "amount"), ()),
    "ReleaseHold": (("hold_id",), ()),
    "Transfer": (("from_account_id", "to_account_id", "amount"), ()),
    "ExtendHold": (("hold_id",), ("expires", "amount", "payee_account_id")),
}
_BATCH_ITEM_MEMBERS = ("hold_id", "payee_account_id", "from_account_id", "to_account_id", "amount", "expires")


class BatchItem(ComplexModel):
    """One operation of an ApplyBatch: ``operation`` names it, ``request_id`` is its own, and it takes the
    fields its single operation takes (the others absent):
    ChargeHold and SettleHold: hold_id, payee_account_id, amount;
    ReleaseHold: hold_id;
    Transfer: from_account_id, to_account_id, amount;
    ExtendHold: hold_id and at least one of expires, amount (the new total), payee_account_id."""

    __namespace__ = NAMESPACE
    _type_info = [("operation", Unicode(values=BATCH_OPERATION_NAMES, **Required)),
                  ("request_id", Unicode(**Required)),
                  ("hold_id", Unicode(min_occurs=0)), ("payee_account_id", Unicode(min_occurs=0)),
                  ("from_account_id", Unicode(min_occurs=0)), ("to_account_id", Unicode(min_occurs=0)),
                  ("amount", Long(min_occurs=0)), ("expires", DateTime(min_occurs=0))]


# What became of one item: the WSDL's type made from the one dataclass the service answers with and the client
# reads back (types.BatchItemResult says what each member holds).
BatchItemResult = complex_model(types.BatchItemResult, "BatchItemResult", NAMESPACE)
_RESULT_MEMBERS = tuple((name, f"{{{NAMESPACE}}}{name}") for name in BatchItemResult._type_info)
_RESULT_TAG = f"{{{NAMESPACE}}}BatchItemResult"


def _write_results(holder: etree._Element, answers) -> None:
    """The BatchItemResult elements of ``answers`` (types.BatchItemResult) under ``holder``, as spyne writes
    them — one element per member that is not None, in the type's order, booleans as ``true``/``false`` —
    without spyne: its serializer looks every member of every result up in its type tables (~0.25 ms per
    result on this machine: a 1,000-item answer took longer than applying the items). tests/test_bank_batch.py
    holds the two to the same bytes."""
    item_tag, members, sub_element = _RESULT_TAG, _RESULT_MEMBERS, etree.SubElement
    for answer in answers:
        item = sub_element(holder, item_tag)
        for member, tag in members:
            value = getattr(answer, member)
            if value is None:
                continue
            sub_element(item, tag).text = ("true" if value else "false") if value is True or value is False \
                else str(value)


class _ResultsWriter(SubXmlBase):
    """BatchResult's ``results`` written by ``_write_results`` (when spyne answers an ApplyBatch)."""

    def subserialize(self, ctx, cls, inst, parent, ns=None, name=None, **_):
        _write_results(etree.SubElement(parent, f"{{{ns}}}{name}"), inst)


class BatchResult(ComplexModel):
    """ApplyBatch's answer: one result per item, in order, and how many were applied now, answered from
    before (a retry) and refused."""

    __namespace__ = NAMESPACE
    _type_info = [("results", Array(BatchItemResult).customize(prot=_ResultsWriter())), ("applied", Long(**Required)),
                  ("replayed", Long(**Required)), ("refused", Long(**Required))]


# -- mapping ---------------------------------------------------------------------------------------


def _info(model: type[ComplexModel], state) -> ComplexModel:
    return model(**wire_values(state))


def _receipt(outcome: ledger.Outcome) -> Receipt:
    return Receipt(transaction=_info(TransactionInfo, outcome.transaction), replayed=outcome.replayed)


def _account_info(account: ledger.Account) -> AccountInfo:
    now = now_us()
    return AccountInfo(account_id=account.account_id, project=account.project, status=account.status.value,
                       balance=account.balance, held=account.held, available=account.available,
                       credit_limit=account.credit_limit, spending_limit=account.spending_limit,
                       spending_period_us=account.spending_period_us, spent_in_period=account.spent_in_period,
                       created_at_us=account.created_at_us,
                       holders=[HolderInfo(dn=h.dn, role=h.role.value) for h in account.holders],
                       grants=[GrantInfo(service_dn=g.service_dn, hold_max=g.hold_max, period_max=g.period_max,
                                         period_us=g.period_us, held_in_period=g.held_at(now),
                                         granted_at_us=g.granted_at_us) for g in account.grants])


def _enum(enum_type: type[enum.Enum], value: str | None, what: str):
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise DomainError(f"{what} must be one of {choices}, not {value!r}", "InvalidArgument") from None


def _microseconds(moment: datetime | None, what: str) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # xs:dateTime without a zone: read as UTC, as the ledger's clock is
        moment = moment.replace(tzinfo=timezone.utc)
    return datetime_to_us(moment)


def _batch_request(number: int, item) -> ledger.Request:
    """The ledger request of one BatchItem; a field its operation does not take, or a missing one it needs,
    refuses the whole batch (the single operation's schema would refuse such a request)."""
    operation = item.operation
    if operation not in BATCH_ITEM_FIELDS:
        raise DomainError(f"item {number}: a batch carries {', '.join(BATCH_OPERATION_NAMES)}, not {operation!r}",
                          "InvalidArgument")
    required, optional = BATCH_ITEM_FIELDS[operation]
    taken = required + optional
    extra = [name for name in _BATCH_ITEM_MEMBERS if name not in taken and getattr(item, name) is not None]
    missing = [name for name in required if getattr(item, name) is None]
    if extra or missing:
        said = "; ".join(part for part in (missing and f"it lacks {', '.join(missing)}",
                                           extra and f"{', '.join(extra)} belong to other operations") if part)
        raise DomainError(f"item {number} ({operation} {item.request_id}): {said}; a {operation} item takes "
                          f"{', '.join(taken)}", "InvalidArgument")
    if operation == "ChargeHold":
        return ledger.ChargeHold(item.request_id, item.hold_id, item.payee_account_id, item.amount)
    if operation == "SettleHold":
        return ledger.SettleHold(item.request_id, item.hold_id, item.payee_account_id, item.amount)
    if operation == "ReleaseHold":
        return ledger.ReleaseHold(item.request_id, item.hold_id)
    if operation == "Transfer":
        return ledger.Transfer(item.request_id, item.from_account_id, item.to_account_id, item.amount)
    return ledger.ExtendHold(item.request_id, item.hold_id, _microseconds(item.expires, "expires"), item.amount,
                             item.payee_account_id)


def _batch_item_result(result) -> types.BatchItemResult:
    if result.error is not None:
        spec = fault_for(result.error)
        if spec.log_level >= logging.ERROR:          # the store failed reading what the item names
            log.error("store failure in ApplyBatch item %s: %s", result.request.request_id, result.error)
        return types.BatchItemResult(request_id=result.request.request_id, applied=False, fault_code=spec.code,
                                     fault_message=spec.message)
    transaction = result.outcome.transaction
    return types.BatchItemResult(request_id=transaction.request_id, applied=True, replayed=result.outcome.replayed,
                                 seq=transaction.seq, kind=transaction.kind.value, at_us=transaction.at_us,
                                 hold_id=transaction.hold_id,
                                 hold_state=None if transaction.hold_state is None else transaction.hold_state.value,
                                 amount=transaction.amount, released_amount=transaction.released_amount,
                                 hash=transaction.hash, signature=transaction.signature or None)


def _apply_batch(principal, runtime, read_items: Callable[[], Iterable]) -> dict:
    """ApplyBatch for the verified ``principal``, its items read by ``read_items()`` (spyne's BatchItems, or
    ``_WireItem``s): BatchResult's members."""
    caller = policy.principal_for(principal, runtime.config.bank)
    policy.require_full_credential(caller, "ApplyBatch")     # before its items are even read, as for any change
    requests = [_batch_request(number, item) for number, item in enumerate(read_items(), 1)]
    answers = [_batch_item_result(result) for result in runtime.bank.execute_batch(requests, caller)]
    refused = sum(1 for answer in answers if not answer.applied)
    replayed = sum(1 for answer in answers if answer.replayed)
    return {"results": answers, "applied": len(answers) - refused - replayed, "replayed": replayed,
            "refused": refused}


# ApplyBatch read from the verified Body with lxml (the host's ``direct_operations``): a batch of 1,000 items
# took spyne ~60 ms to read (its object mapping, item by item) and ~20 ms to answer — more than the Bank's
# SQLite. The same schema check first (the host's), the same decoding, the same answer and faults, byte for
# byte (tests/test_bank_batch.py sends the same requests both ways).

_ITEMS_TAG = f"{{{NAMESPACE}}}items"
_FIELD_OF_TAG = {f"{{{NAMESPACE}}}{name}": name for name in BatchItem._type_info}
_EXPIRES_TYPE = BatchItem._type_info["expires"]
_SPYNE_READER = Soap11()                 # DateTime's text as spyne reads it (the schema has checked its form)


class _WireItem:
    """One BatchItem element's members, as spyne would have read them (absent: None)."""

    __slots__ = tuple(BatchItem._type_info)

    def __init__(self, element: etree._Element) -> None:
        for name in self.__slots__:
            setattr(self, name, None)
        for child in element:
            name = _FIELD_OF_TAG[child.tag]
            text = child.text or ""
            if name == "amount":
                value = int(text)
            elif name == "expires":
                value = _SPYNE_READER.from_unicode(_EXPIRES_TYPE, text)
            else:
                value = text
            setattr(self, name, value)


def _wire_items(request: etree._Element) -> list[_WireItem]:
    holder = request[0]
    invariant(holder.tag == _ITEMS_TAG, "a schema-valid ApplyBatch holds its items")
    return [_WireItem(element) for element in holder]


def apply_batch_direct(request: etree._Element, principal, runtime) -> tuple[str, etree._Element]:
    """ApplyBatch from its schema-checked request element: (HTTP status, the envelope spyne would answer)."""
    try:
        result = _apply_batch(principal, runtime, lambda: _wire_items(request))
    except (DomainError, StoreError) as error:    # as GridcreditService.call_wrapper answers them
        spec = fault_for(error)
        if spec.log_level >= logging.ERROR:
            log.error("store failure in ApplyBatch: %s", error)
        else:
            log.debug("ApplyBatch not applied: %s", error)
        envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap11env": SOAP11_NS})
        fault = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body"), f"{{{SOAP11_NS}}}Fault")
        etree.SubElement(fault, "faultcode").text = f"soap11env:{spec.code}"
        etree.SubElement(fault, "faultstring").text = spec.message
        etree.SubElement(fault, "faultactor")
        return "500 Internal Server Error", envelope
    envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap11env": SOAP11_NS, "tns": NAMESPACE})
    response = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body"), f"{{{NAMESPACE}}}ApplyBatchResponse")
    answer = etree.SubElement(response, f"{{{NAMESPACE}}}ApplyBatchResult")
    _write_results(etree.SubElement(answer, f"{{{NAMESPACE}}}results"), result["results"])
    for name in ("applied", "replayed", "refused"):
        etree.SubElement(answer, f"{{{NAMESPACE}}}{name}").text = str(result[name])
    return "200 OK", envelope


def _caller(ctx) -> Principal:
    """The caller of this request as the Bank's policy sees it (resolved once per request)."""
    return policy.principal_for(principal_of(ctx), runtime_of(ctx).config.bank)


def _execute(ctx, request) -> Receipt:
    return _receipt(runtime_of(ctx).bank.execute(request, _caller(ctx)))


class BankService(GridcreditService):
    __service_name__ = SERVICE_NAME
    # Anyone authenticated, whatever the configuration says of them: decided on the verified chain's
    # principal, so WhoAmI answers even from a host whose services hold no state (a bare host).
    WhoAmI = whoami_operation("bank", authorize=lambda ctx: policy.authorize_anyone(principal_of(ctx), "WhoAmI"))

    # -- accounts ----------------------------------------------------------------------------------
    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), Unicode(**Required), Long(min_occurs=0),
               _returns=Receipt, _operation_name="CreateAccount")
    def create_account(ctx, request_id, account_id, project, owner_dn, credit_limit):
        return _execute(ctx, ledger.CreateAccount(request_id, account_id, project, owner_dn,
                                                  0 if credit_limit is None else credit_limit))

    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), Unicode(**Required),
               _returns=Receipt, _operation_name="SetHolder")
    def set_holder(ctx, request_id, account_id, holder_dn, role):
        return _execute(ctx, ledger.SetHolder(request_id, account_id, holder_dn, _enum(Role, role, "role")))

    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), _returns=Receipt, _operation_name="RemoveHolder")
    def remove_holder(ctx, request_id, account_id, holder_dn):
        return _execute(ctx, ledger.RemoveHolder(request_id, account_id, holder_dn))

    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), _returns=Receipt, _operation_name="SetStatus")
    def set_status(ctx, request_id, account_id, status):
        return _execute(ctx, ledger.SetStatus(request_id, account_id, _enum(AccountStatus, status, "status")))

    @operation(Unicode(**Required), Unicode(**Required), Long(**Required), _returns=Receipt, _operation_name="SetCreditLimit")
    def set_credit_limit(ctx, request_id, account_id, credit_limit):
        return _execute(ctx, ledger.SetCreditLimit(request_id, account_id, credit_limit))

    @operation(Unicode(**Required), Unicode(**Required), Long(min_occurs=0), Long(min_occurs=0),
               _returns=Receipt, _operation_name="SetSpendingLimit")
    def set_spending_limit(ctx, request_id, account_id, spending_limit, spending_period_s):
        period_us = None if spending_period_s is None else spending_period_s * 1_000_000
        return _execute(ctx, ledger.SetSpendingLimit(request_id, account_id, spending_limit, period_us))

    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), Long(min_occurs=0), Long(min_occurs=0),
               Long(min_occurs=0), _returns=Receipt, _operation_name="GrantService")
    def grant_service(ctx, request_id, account_id, service_dn, hold_max, period_max, period_s):
        period_us = None if period_s is None else period_s * 1_000_000
        return _execute(ctx, ledger.GrantService(request_id, account_id, service_dn, hold_max, period_max, period_us))

    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), _returns=Receipt,
               _operation_name="RevokeService")
    def revoke_service(ctx, request_id, account_id, service_dn):
        return _execute(ctx, ledger.RevokeService(request_id, account_id, service_dn))

    # -- money supply ------------------------------------------------------------------------------
    @operation(Unicode(**Required), Unicode(**Required), Long(**Required), _returns=Receipt, _operation_name="Mint")
    def mint(ctx, request_id, account_id, amount):
        return _execute(ctx, ledger.Mint(request_id, account_id, amount))

    @operation(Unicode(**Required), Unicode(**Required), _returns=Receipt, _operation_name="ApproveMint")
    def approve_mint(ctx, request_id, pending_mint_id):
        return _execute(ctx, ledger.ApproveMint(request_id, pending_mint_id))

    @operation(Unicode(**Required), Unicode(**Required), _returns=Receipt, _operation_name="CancelMint")
    def cancel_mint(ctx, request_id, pending_mint_id):
        return _execute(ctx, ledger.CancelMint(request_id, pending_mint_id))

    @operation(Boolean(min_occurs=0), Long(min_occurs=0), Long(min_occurs=0), _returns=PendingMintPage,
               _operation_name="ListPendingMints")
    def list_pending_mints(ctx, ended, offset, limit):
        policy.authorize_oversight(_caller(ctx), "ListPendingMints")
        page = runtime_of(ctx).bank.pending_mints(ended=bool(ended), offset=0 if offset is None else offset,
                                                  limit=100 if limit is None else limit)
        return PendingMintPage(pending_mints=[_info(PendingMintInfo, pending) for pending in page.items],
                               next_offset=page.next_offset)

    @operation(Unicode(**Required), Unicode(**Required), Long(**Required), _returns=Receipt, _operation_name="Retire")
    def retire(ctx, request_id, account_id, amount):
        return _execute(ctx, ledger.Retire(request_id, account_id, amount))

    # -- moving money ------------------------------------------------------------------------------
    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), Long(**Required),
               _returns=Receipt, _operation_name="Transfer")
    def transfer(ctx, request_id, from_account_id, to_account_id, amount):
        return _execute(ctx, ledger.Transfer(request_id, from_account_id, to_account_id, amount))

    @operation(Unicode(**Required), Unicode(**Required), Long(**Required), DateTime(**Required), Unicode(min_occurs=0),
               Unicode(min_occurs=0), Unicode(min_occurs=0), Unicode(min_occurs=0), _returns=Receipt,
               _operation_name="CreateHold")
    def create_hold(ctx, request_id, account_id, amount, expires, reference, collector_dn, payee_account_id,
                    on_behalf_of_dn):
        return _execute(ctx, ledger.CreateHold(request_id, account_id, amount, _microseconds(expires, "expires"),
                                               reference or "", collector_dn, payee_account_id, on_behalf_of_dn))

    @operation(Unicode(**Required), Unicode(**Required), DateTime(min_occurs=0), Long(min_occurs=0), Unicode(min_occurs=0),
               _returns=Receipt, _operation_name="ExtendHold")
    def extend_hold(ctx, request_id, hold_id, expires, amount, payee_account_id):
        return _execute(ctx, ledger.ExtendHold(request_id, hold_id, _microseconds(expires, "expires"), amount,
                                               payee_account_id))

    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), Long(**Required),
               _returns=Receipt, _operation_name="ChargeHold")
    def charge_hold(ctx, request_id, hold_id, payee_account_id, amount):
        return _execute(ctx, ledger.ChargeHold(request_id, hold_id, payee_account_id, amount))

    @operation(Unicode(**Required), Unicode(**Required), Unicode(**Required), Long(**Required),
               _returns=Receipt, _operation_name="SettleHold")
    def settle_hold(ctx, request_id, hold_id, payee_account_id, amount):
        return _execute(ctx, ledger.SettleHold(request_id, hold_id, payee_account_id, amount))

    @operation(Unicode(**Required), Unicode(**Required), _returns=Receipt, _operation_name="ReleaseHold")
    def release_hold(ctx, request_id, hold_id):
        return _execute(ctx, ledger.ReleaseHold(request_id, hold_id))

    @operation(Array(BatchItem, **Required), _returns=BatchResult, _operation_name="ApplyBatch")
    def apply_batch(ctx, items):
        """Many ChargeHold, SettleHold, ReleaseHold, Transfer and ExtendHold operations of one caller
        applied in order in one ledger transaction, each seeing the ones before it, each decided and
        checked as its single operation, each with its own request id (a retry answers what was applied).
        A BatchItem names its operation and takes that operation's fields: ChargeHold and SettleHold
        hold_id, payee_account_id, amount; ReleaseHold hold_id; Transfer from_account_id, to_account_id,
        amount; ExtendHold hold_id and at least one of expires, amount (the new total), payee_account_id.
        Each BatchItemResult says applied (replayed: before) with its transaction's seq, kind, amount,
        hold_state, released_amount and hash (the signature on the last one, covering the others through
        the ledger's chain), or refused with fault_code (Client.ExceedsHold, ...) and fault_message: a
        refused item changes nothing. Refused whole: no items, more than 1,500 (Client.BatchTooLarge), a
        request id twice, an item lacking a field its operation needs or carrying one it does not take."""
        return BatchResult(**_apply_batch(principal_of(ctx), runtime_of(ctx), lambda: items or ()))

    # -- queries -----------------------------------------------------------------------------------
    @operation(Unicode(**Required), _returns=BalanceInfo, _operation_name="GetBalance")
    def get_balance(ctx, account_id):
        balance = runtime_of(ctx).bank.balance(account_id, _caller(ctx))
        return BalanceInfo(account_id=balance.account_id, total=balance.total, held=balance.held,
                           available=balance.available, credit_limit=balance.credit_limit)

    @operation(Unicode(**Required), _returns=AccountInfo, _operation_name="GetAccount")
    def get_account(ctx, account_id):
        return _account_info(runtime_of(ctx).bank.account(account_id, _caller(ctx)))

    @operation(Unicode(**Required), _returns=HoldInfo, _operation_name="GetHold")
    def get_hold(ctx, hold_id):
        return _info(HoldInfo, runtime_of(ctx).bank.hold(hold_id, _caller(ctx)))

    @operation(Unicode(**Required), Boolean(min_occurs=0), Long(min_occurs=0), Long(min_occurs=0),
               _returns=HoldPage, _operation_name="ListHolds")
    def list_holds(ctx, account_id, ended, offset, limit):
        page = runtime_of(ctx).bank.holds(account_id, _caller(ctx), ended=bool(ended),
                                          offset=0 if offset is None else offset, limit=100 if limit is None else limit)
        return HoldPage(holds=[_info(HoldInfo, hold) for hold in page.items], next_offset=page.next_offset)

    @operation(Unicode(**Required), Unicode(min_occurs=0), Long(min_occurs=0), Long(min_occurs=0),
               _returns=TransactionPage, _operation_name="History")
    def history(ctx, account_id, xpath_filter, offset, limit):
        page = runtime_of(ctx).bank.history(account_id, _caller(ctx), xpath_filter=xpath_filter or "",
                                            offset=0 if offset is None else offset, limit=100 if limit is None else limit)
        return TransactionPage(transactions=[_info(TransactionInfo, t) for t in page.items], next_offset=page.next_offset)

    @operation(Unicode(**Required), DateTime(**Required), DateTime(**Required), _returns=StatementInfo, _operation_name="Statement")
    def statement(ctx, account_id, period_start, period_end):
        statement = runtime_of(ctx).bank.statement(account_id, _caller(ctx),
                                                   from_us=_microseconds(period_start, "start"),
                                                   to_us=_microseconds(period_end, "end"))
        return StatementInfo(account_id=statement.account_id, from_us=statement.from_us, to_us=statement.to_us,
                             opening_balance=statement.opening_balance, closing_balance=statement.closing_balance,
                             transactions=[_info(TransactionInfo, t) for t in statement.transactions],
                             truncated=statement.truncated)

    @operation(_returns=MoneySupplyInfo, _operation_name="MoneySupply")
    def money_supply(ctx):
        policy.authorize_anyone(_caller(ctx), "MoneySupply")
        supply = runtime_of(ctx).bank.money_supply()
        return MoneySupplyInfo(issued=supply.issued, retired=supply.retired, outstanding=supply.outstanding)

    @operation(_returns=AuditInfo, _operation_name="Audit")
    def audit(ctx):
        policy.authorize_oversight(_caller(ctx), "Audit")
        report = runtime_of(ctx).bank.audit()
        return AuditInfo(clean=report.clean, transaction_count=report.transaction_count, head_seq=report.head.seq,
                         head_hash=report.head.hash, issued=report.issued, retired=report.retired,
                         signatures_checked=report.signatures_checked,
                         findings=[AuditFindingInfo(kind=f.kind, seq=f.seq, message=f.message) for f in report.findings],
                         findings_omitted=report.findings_omitted)


# Operations the host hands the verified request element to instead of spyne (see server/host.py)
BankService.direct_operations = {"ApplyBatch": apply_batch_direct}

SERVICES = [BankService]
