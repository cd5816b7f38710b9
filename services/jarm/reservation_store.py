"""Reservations in the shared XML store: one document per run of a job, the JARM's durable record.

Collection ``jarm_reservations`` (declared in ``SERVICE.collections``), document id the reservation
id (``r-<cluster>-<job>[.<task>]-<restart>``). The store's journal makes each change durable when it
returns (it survives a kill -9 of the JARM), so the record of what is still to do at the Bank
(``pending``, indexed) is the JARM's journal of pending work: the reconciler reads it again after any
crash and does each step with the request id it had before (reservations.py). ``user_key`` (a hash
of the user's DN, indexed) lists a user's reservations; ``state`` (indexed) the runs that are held;
``account`` (indexed) an account's unfunded runs.

Collection ``jarm_unfunded``: one document per account (id ``u-<hash of the account>``) naming its runs
admitted unfunded that still owe (``rsv.unfunded_credits``). A run is admitted unfunded only by
``admit_unfunded``, which reads that list, each run on it and the new one, checks the cap and writes the
outcome in ONE transaction: runs reserved at once (workers, threads) cannot pass the cap together.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterator

from lxml import etree

from gridcredit.errors import ConflictError, DomainError
from gridcredit.xmlstore import AttributeIndex, Transaction, XmlStore

from .reservations import Authority, JobKey, Reservation, State, Work, unfunded_credits
from .types import JobRequest, Multiplier, PricingBasis, Usage

RESERVATIONS = "jarm_reservations"
UNFUNDED = "jarm_unfunded"
NAMESPACE = "urn:gridcredit:jarm:reservations:1"
INDEXES = (AttributeIndex(RESERVATIONS, ("pending", "state", "user_key", "account")),)
UNKNOWN_RESERVATION = "UnknownReservation"
PAGE_MAX = 1000

_REQUEST = ("cores", "time_limit_s", "memory_mb", "gpus", "nodes")
_USAGE = ("elapsed_s", "total_cpu_ms", "cores", "memory_mb", "gpus", "nodes", "max_rss_mb")
_NUMBERS = ("created_us", "updated_us", "estimate", "hold_amount", "hold_expires_us", "extensions", "cost", "charged",
            "unfunded_us")


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def user_key(dn: str) -> str:
    return hashlib.sha256(dn.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def unfunded_id(account: str) -> str:
    return "u-" + hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _unfunded_xml(account: str, reservation_ids: list[str]) -> bytes:
    root = etree.Element(_q("Unfunded"), nsmap={None: NAMESPACE}, account=account)
    for reservation_id in reservation_ids:
        etree.SubElement(root, _q("Run"), id=reservation_id)
    return etree.tostring(root, encoding="UTF-8")


def reservation_xml(reservation: Reservation) -> bytes:
    key, basis = reservation.key, reservation.basis
    attributes = {
        "id": key.reservation_id, "cluster": key.cluster, "job_id": str(key.job_id),
        "restarts": str(key.restarts), "user": reservation.user, "user_dn": reservation.user_dn,
        "user_key": user_key(reservation.user_dn), "account": reservation.account, "payee": reservation.payee,
        "state": reservation.state.value, "pending": reservation.pending.value,
        "authority": "" if reservation.authority is None else reservation.authority.value,
        "hold_id": reservation.hold_id, "note": reservation.note,
        "site": basis.site, "version": str(basis.version), "partition": basis.partition, "qos": basis.qos,
        "multiplier_numerator": str(basis.multiplier.numerator),
        "multiplier_denominator": str(basis.multiplier.denominator),
        **{name: str(getattr(reservation, name)) for name in _NUMBERS}}
    if key.array_task is not None:
        attributes["array_task"] = str(key.array_task)
    root = etree.Element(_q("Reservation"), nsmap={None: NAMESPACE}, **attributes)
    request = reservation.request
    etree.SubElement(root, _q("Request"), partition=request.partition, qos=request.qos,
                     **{name: str(getattr(request, name)) for name in _REQUEST})
    if reservation.usage is not None:
        usage = reservation.usage
        etree.SubElement(root, _q("Usage"), partition=usage.partition, qos=usage.qos,
                         **{name: str(getattr(usage, name)) for name in _USAGE})
    return etree.tostring(root, encoding="UTF-8")


def reservation_from_xml(xml: bytes) -> Reservation:
    root = etree.fromstring(xml)
    get = root.get
    array_task = get("array_task")
    key = JobKey(get("cluster"), int(get("job_id")), None if array_task is None else int(array_task),
                 int(get("restarts")))
    asked = root.find(_q("Request"))
    request = JobRequest(asked.get("partition"), asked.get("qos"), **{name: int(asked.get(name)) for name in _REQUEST})
    used = root.find(_q("Usage"))
    usage = None if used is None else Usage(used.get("partition"), used.get("qos"),
                                            **{name: int(used.get(name)) for name in _USAGE})
    basis = PricingBasis(get("site"), int(get("version")), get("partition"), get("qos"),
                         Multiplier(int(get("multiplier_numerator")), int(get("multiplier_denominator"))))
    numbers = {name: int(get(name, "0")) for name in _NUMBERS}
    return Reservation(key=key, user=get("user"), user_dn=get("user_dn"), account=get("account"), payee=get("payee"),
                       request=request, basis=basis, authority=Authority(get("authority")) if get("authority") else None,
                       state=State(get("state")), pending=Work(get("pending")), hold_id=get("hold_id"),
                       usage=usage, note=get("note"), **numbers)


class ReservationStore:
    """The reservations over the shared store; one transaction per change."""

    def __init__(self, store: XmlStore) -> None:
        self.store = store

    def get(self, reservation_id: str) -> Reservation | None:
        document = self.store.get(RESERVATIONS, reservation_id)
        return None if document is None else reservation_from_xml(document.xml)

    def require(self, reservation_id: str) -> Reservation:
        found = self.get(reservation_id)
        if found is None:
            raise DomainError(f"there is no reservation {reservation_id}", UNKNOWN_RESERVATION)
        return found

    def create(self, reservation: Reservation) -> tuple[Reservation, bool]:
        """Keep a new reservation; (the one kept, created). A run reserved before (the prolog run
        again) keeps its first reservation."""
        def apply(tx: Transaction) -> tuple[Reservation, bool]:
            found = tx.get(RESERVATIONS, reservation.reservation_id)
            if found is not None:
                return reservation_from_xml(found.xml), False
            tx.put(RESERVATIONS, reservation.reservation_id, reservation_xml(reservation))
            return reservation, True

        return self.store.transact(apply)

    def change(self, reservation_id: str, step: Callable[[Reservation], Reservation]) -> Reservation:
        """Apply ``step`` (a transition of reservations.py) to the stored reservation in one
        transaction; the changed reservation."""
        def apply(tx: Transaction) -> Reservation:
            found = tx.get(RESERVATIONS, reservation_id)
            if found is None:
                raise DomainError(f"there is no reservation {reservation_id}", UNKNOWN_RESERVATION)
            changed = step(reservation_from_xml(found.xml))
            tx.put(RESERVATIONS, reservation_id, reservation_xml(changed))
            return changed

        return self.store.transact(apply)

    def admit_unfunded(self, reservation_id: str, *, cap_credits: int,
                       admitted: Callable[[Reservation], Reservation],
                       refused: Callable[[Reservation, int], Reservation]) -> Reservation:
        """Admit a run unfunded if its account's unfunded work plus its estimate stays within
        ``cap_credits`` (``admitted(run)``), else refuse it (``refused(run, owed_credits)``): the check and
        the outcome in one transaction. A run no longer waiting for its hold is left as it is."""
        first = self.require(reservation_id)
        list_id = unfunded_id(first.account)
        known: list[str] | None = None
        if self.store.get(UNFUNDED, list_id) is None:
            # no list yet (the account's first unfunded run, or runs admitted before the list existed):
            # start from what the store holds; any run admitted since writes the list, seen below
            known = [r.reservation_id for r in self.in_states((State.UNFUNDED, State.COMPLETING),
                                                              account=first.account)]

        def apply(tx: Transaction) -> Reservation:
            found = tx.get(RESERVATIONS, reservation_id)
            run = reservation_from_xml(found.xml)
            if run.state is not State.RESERVING or run.pending is not Work.HOLD:
                return run
            listed = tx.get(UNFUNDED, list_id)
            if listed is not None:
                runs = [element.get("id") for element in etree.fromstring(listed.xml)]
            elif known is not None:
                runs = known
            else:
                raise ConflictError(f"the unfunded list of {first.account} went away")    # (it is never deleted)
            owing, owed = [], 0
            for other_id in runs:
                other = tx.get(RESERVATIONS, other_id) if other_id != reservation_id else None
                credits = 0 if other is None else unfunded_credits(reservation_from_xml(other.xml))
                if credits:
                    owing.append(other_id)
                    owed += credits
            if owed + run.estimate > cap_credits:
                changed = refused(run, owed)
            else:
                changed = admitted(run)
                owing.append(reservation_id)
            tx.put(RESERVATIONS, reservation_id, reservation_xml(changed))
            tx.put(UNFUNDED, list_id, _unfunded_xml(run.account, owing))
            return changed

        return self.store.transact(apply)

    def _every(self, where: dict) -> list[Reservation]:
        """Every reservation matching ``where`` (page after page: a site may run many more jobs than a
        page holds), read before any is changed (a change may move one out of the set)."""
        found: list[Reservation] = []
        offset: int | None = 0
        while offset is not None:
            page = self.store.query(RESERVATIONS, None, where=where, offset=offset, limit=PAGE_MAX)
            found.extend(reservation_from_xml(document.xml) for document in page.documents)
            offset = page.next_offset
        return found

    def count_pending(self) -> int:
        """How many reservations have Bank or LUTS work left."""
        return self.store.count(RESERVATIONS, None, where={"pending": tuple(w.value for w in Work if w.value)})

    def with_pending_work(self) -> list[Reservation]:
        """Every reservation with Bank or LUTS work left (by id)."""
        return self._every({"pending": tuple(w.value for w in Work if w.value)})

    def in_states(self, states: tuple[State, ...], *, account: str | None = None) -> list[Reservation]:
        """Every reservation in ``states`` (of ``account`` only, when given)."""
        where: dict = {"state": tuple(s.value for s in states)}
        if account is not None:
            where["account"] = account
        return self._every(where)

    def of_user(self, dn: str, *, offset: int = 0, limit: int = 100) -> list[Reservation]:
        page = self.store.query(RESERVATIONS, None, where={"user_key": user_key(dn)}, offset=offset, limit=limit)
        return [reservation_from_xml(document.xml) for document in page.documents]

    def page(self, *, offset: int = 0, limit: int = 100) -> list[Reservation]:
        """Every reservation, by id."""
        found = (self.get(reservation_id) for reservation_id in self.store.ids(RESERVATIONS, offset, limit))
        return [reservation for reservation in found if reservation is not None]

    def all(self, *, after_id: str | None = None, limit: int = PAGE_MAX) -> Iterator[Reservation]:
        while True:
            documents = self.store.scan(RESERVATIONS, after_id=after_id, limit=limit)
            for document in documents:
                yield reservation_from_xml(document.xml)
            if len(documents) < limit:
                return
            after_id = documents[-1].doc_id
