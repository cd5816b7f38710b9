"""A job's reservation, from the hold before it runs to its charge after: the pure core. No I/O.

Every job the JARM sees has one reservation per run, keyed by what Slurm says of it: the cluster,
the job id, the array task (none for a plain job) and the restart count (a requeued job runs again
under the same id: each run is reserved and charged once). The key names the reservation
(``r-<cluster>-<job>[.<task>]-<restart>``, ``_`` of a cluster name written ``@``: neither the store's
document ids nor the Bank's request ids take ``_``) and every Bank request made for it
(``jarm:<reservation>:hold`` …), so a step retried after a crash, a timeout or a restart is the same
request to the Bank, which answers a repeated request id with its first outcome: nothing is held
or charged twice.

States and the work each leaves for the Bank (``pending``)::

    reserving ──hold made──▶ held ──job ended──▶ completing ──settled──▶ charged
        │  └─bank refused─▶ refused                 ▲
        │  └─bank down, admitted (policy)─▶ unfunded ┘ (a hold, then the settlement, once it answers)
        └──cancelled before it ran──▶ cancelling ──released──▶ released

    state       pending    the Bank work left
    reserving   hold       CreateHold (the estimate, until the time limit + grace)
    held        —          (ExtendHold when the job runs on or its time limit grows)
                usage      the run ended: its usage to read from Slurm's accounting and price
    unfunded    —          none until the job ends (admitted within the account's unfunded cap)
                usage      as for held
    completing  settle     SettleHold: the cost by the reservation's price version, the rest released
                hold       (unfunded: first a hold of the cost, then the settlement)
    cancelling  release    ReleaseHold (or nothing: no hold was made)
    charged     report     the usage record to the LUTS spool (then nothing)

The cost of a run is priced when it ends (``pricing.charge``, the basis kept at reservation); what
the hold cannot cover (a job that used more than it held and could not be extended) is charged up to
the hold and the rest kept as ``uncharged`` for ``gridcredit jarm unfunded``.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass

from gridcredit.errors import DomainError

from .types import JobRequest, PricingBasis, Usage

INVALID_JOB = "InvalidJob"
RESERVATION_STATE = "ReservationState"

_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")     # (Slurm's ClusterName: letters, digits, _ . -)
_LOCAL_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
JOB_ID_MAX = 2**32 - 1          # Slurm's job ids are 32-bit
RESTARTS_MAX = 1_000_000
CREDITS_MAX = 10**15            # the Bank's largest amount


class State(enum.Enum):
    RESERVING = "reserving"
    HELD = "held"
    UNFUNDED = "unfunded"
    REFUSED = "refused"
    COMPLETING = "completing"
    CHARGED = "charged"
    CANCELLING = "cancelling"
    RELEASED = "released"


class Work(enum.Enum):
    """What is left to do for a reservation (``NONE``: nothing until Slurm says more)."""
    NONE = ""
    USAGE = "usage"          # the run ended: read what it used (sacct) and price it
    HOLD = "hold"
    SETTLE = "settle"
    RELEASE = "release"
    REPORT = "report"


class Authority(enum.Enum):
    """With whose authority the hold is made: the user's delegated proxy, or the site's identity
    under the account's grant on the user's behalf."""
    DELEGATED = "delegated"
    GRANTED = "granted"


ENDED_STATES = frozenset({State.REFUSED, State.CHARGED, State.RELEASED})


def _check_whole(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:  # noqa: E721 — bool is refused
        raise DomainError(f"{what} must be a whole number {low}..{high:,}, not {value!r}", INVALID_JOB)
    return value


@dataclass(frozen=True, slots=True, order=True)
class JobKey:
    """One run of one Slurm job: ``array_task`` None for a plain job, ``restarts`` Slurm's restart
    count (0 for the first run, +1 for each requeue)."""

    cluster: str
    job_id: int
    array_task: int | None = None
    restarts: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.cluster, str) or not _CLUSTER.fullmatch(self.cluster):
            raise DomainError(f"a cluster name is 1-64 characters of A-Z a-z 0-9 _ . -, not {self.cluster!r}",
                              INVALID_JOB)
        _check_whole(self.job_id, "a job id", 1, JOB_ID_MAX)
        if self.array_task is not None:
            _check_whole(self.array_task, "an array task id", 0, JOB_ID_MAX)
        _check_whole(self.restarts, "a restart count", 0, RESTARTS_MAX)

    @property
    def job(self) -> str:
        """Slurm's way to name it: ``1234`` or ``1234_7``."""
        return f"{self.job_id}" if self.array_task is None else f"{self.job_id}_{self.array_task}"

    @property
    def reservation_id(self) -> str:
        """One per run; read from the right (restarts, then the job and task: digits) it is unambiguous."""
        task = "" if self.array_task is None else f".{self.array_task}"
        return f"r-{self.cluster.replace('_', '@')}-{self.job_id}{task}-{self.restarts}"


def bank_request_id(reservation_id: str, step: str) -> str:
    """The Bank request id of one step of a reservation (``hold``, ``settle``, ``release``,
    ``extend-<n>``): the same on every retry."""
    return f"jarm:{reservation_id}:{step}"


def check_local_user(user: object) -> str:
    if not isinstance(user, str) or not _LOCAL_USER.fullmatch(user):
        raise DomainError(f"a local user name is 1-32 characters of a-z 0-9 _ . - (as useradd allows), not {user!r}",
                          INVALID_JOB)
    return user


@dataclass(frozen=True, slots=True)
class Reservation:
    key: JobKey
    user: str                       # the job's local user
    user_dn: str                    # the grid identity the account is charged for
    account: str                    # the Bank account that pays
    payee: str                      # the site's account the charges go to
    request: JobRequest
    basis: PricingBasis             # the price version and multiplier in force at reservation
    estimate: int                   # credits held: the estimate of the request
    authority: Authority | None     # None: no hold was asked for (unfunded)
    state: State
    pending: Work
    created_us: int
    updated_us: int
    hold_id: str = ""
    hold_amount: int = 0
    hold_expires_us: int = 0
    extensions: int = 0             # ExtendHold requests made (each its own request id)
    usage: Usage | None = None      # what sacct measured, at the end
    cost: int = 0                   # credits the run cost (pricing.charge)
    charged: int = 0                # credits the Bank charged (≤ cost: the rest is uncharged)
    note: str = ""                  # the last refusal or error, for people
    unfunded_us: int = 0            # when it was admitted without the Bank's hold (0: never): kept for good

    @property
    def reservation_id(self) -> str:
        return self.key.reservation_id

    @property
    def uncharged(self) -> int:
        return self.cost - self.charged if self.state is State.CHARGED else 0

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


def _refuse_state(reservation: Reservation, action: str) -> DomainError:
    return DomainError(f"reservation {reservation.reservation_id} is {reservation.state.value}: it cannot be "
                       f"{action}", RESERVATION_STATE)


def reserve(key: JobKey, *, user: str, user_dn: str, account: str, payee: str, request: JobRequest,
            basis: PricingBasis, estimate: int, authority: Authority | None, now_us: int,
            hold_expires_us: int = 0) -> Reservation:
    """A new reservation: a hold of ``estimate`` until ``hold_expires_us`` to make (``authority`` None:
    admitted unfunded). The hold's amount and expiry are fixed here, once: a hold request repeated after
    a crash must be the same request."""
    check_local_user(user)
    _check_whole(estimate, "an estimate (credits)", 0, CREDITS_MAX)
    if authority is None:
        return Reservation(key, user, user_dn, account, payee, request, basis, estimate, None, State.UNFUNDED,
                           Work.NONE, now_us, now_us)
    return Reservation(key, user, user_dn, account, payee, request, basis, estimate, authority, State.RESERVING,
                       Work.HOLD, now_us, now_us, hold_expires_us=hold_expires_us)


def hold_made(reservation: Reservation, *, hold_id: str, amount: int, expires_us: int, now_us: int) -> Reservation:
    """The Bank holds ``amount`` under ``hold_id``: a reserving run is held; a cancelling one keeps
    its release to do; a completing one (unfunded until now) goes on to its settlement."""
    if reservation.pending is not Work.HOLD and reservation.state is not State.CANCELLING:
        raise _refuse_state(reservation, "given a hold")
    if reservation.state is State.RESERVING:
        state, pending = State.HELD, Work.NONE
    elif reservation.state is State.COMPLETING:
        state, pending = State.COMPLETING, Work.SETTLE
    else:
        state, pending = reservation.state, reservation.pending
    return dataclasses.replace(reservation, state=state, pending=pending, hold_id=hold_id, hold_amount=amount,
                               hold_expires_us=expires_us, updated_us=now_us, note="")


def admitted_unfunded(reservation: Reservation, *, reason: str, now_us: int) -> Reservation:
    """The Bank did not answer and the site's policy admits the run unfunded (within the account's
    cap): no hold; the run is charged when it ends and the Bank answers."""
    if reservation.state is not State.RESERVING:
        raise _refuse_state(reservation, "admitted unfunded")
    return dataclasses.replace(reservation, state=State.UNFUNDED, pending=Work.NONE, note=f"unfunded: {reason}"[:500],
                               updated_us=now_us, unfunded_us=now_us)


def hold_refused(reservation: Reservation, *, reason: str, now_us: int) -> Reservation:
    """The Bank refused the hold (no funds, no authority): the job must not run on it."""
    if reservation.state is not State.RESERVING:
        raise _refuse_state(reservation, "refused a hold")
    return dataclasses.replace(reservation, state=State.REFUSED, pending=Work.NONE, note=reason, updated_us=now_us)


def extended(reservation: Reservation, *, amount: int, expires_us: int, now_us: int,
             request: JobRequest | None = None, estimate: int | None = None) -> Reservation:
    """The Bank extended the hold (a later expiry, a larger amount); with ``request`` and ``estimate``
    the job's time limit was raised and the reservation now covers the new one."""
    if reservation.state not in (State.HELD, State.COMPLETING) or not reservation.hold_id:
        raise _refuse_state(reservation, "extended")
    if amount < reservation.hold_amount or expires_us < reservation.hold_expires_us:
        raise DomainError(f"reservation {reservation.reservation_id}: a hold is extended, never shortened "
                          f"({amount} credits until {expires_us} µs)", RESERVATION_STATE)
    return dataclasses.replace(reservation, hold_amount=amount, hold_expires_us=expires_us,
                               extensions=reservation.extensions + 1, updated_us=now_us,
                               request=request or reservation.request,
                               estimate=reservation.estimate if estimate is None else estimate)


def run_ended(reservation: Reservation, *, now_us: int) -> Reservation:
    """Slurm says the run ended (the epilog, or the reconciler not finding it queued): read its usage.
    A reservation whose run ended before is left as it is."""
    if reservation.state in (State.HELD, State.UNFUNDED) and reservation.pending is Work.NONE:
        return dataclasses.replace(reservation, pending=Work.USAGE, updated_us=now_us)
    if reservation.state is State.RESERVING:
        raise _refuse_state(reservation, "completed before its hold is made")
    return reservation


def job_ended(reservation: Reservation, *, usage: Usage, cost: int, now_us: int,
              hold_expires_us: int = 0) -> Reservation:
    """The run ended and was priced: settle it (an unfunded run first gets a hold of its cost, until
    ``hold_expires_us``: fixed here, as a hold request repeated must be the same)."""
    _check_whole(cost, "a cost (credits)", 0, CREDITS_MAX)
    if reservation.pending is not Work.USAGE:
        raise _refuse_state(reservation, "priced")
    if reservation.state is State.HELD:
        pending = Work.SETTLE
    elif reservation.state is State.UNFUNDED:
        pending = Work.HOLD if cost else Work.REPORT
    else:
        raise _refuse_state(reservation, "completed")
    state = State.CHARGED if pending is Work.REPORT else State.COMPLETING
    expires_us = hold_expires_us if pending is Work.HOLD else reservation.hold_expires_us
    return dataclasses.replace(reservation, state=state, pending=pending, usage=usage, cost=cost, updated_us=now_us,
                               hold_expires_us=expires_us)


def unfunded_credits(reservation: Reservation) -> int:
    """What a run admitted unfunded owes while the Bank has no hold for it (the site's cap bounds their sum
    per account): its estimate while it runs, its cost once it ended and waits for the Bank; 0 for others."""
    if reservation.state is State.UNFUNDED:
        return reservation.estimate
    if reservation.state is State.COMPLETING and reservation.pending is Work.HOLD:
        return reservation.cost
    return 0


def unfunded_hold_refused(reservation: Reservation, *, reason: str, now_us: int) -> Reservation:
    """An unfunded run's hold of its cost was refused (the account cannot pay): it stays uncharged,
    reported by ``gridcredit jarm unfunded``."""
    if reservation.state is not State.COMPLETING or reservation.pending is not Work.HOLD:
        raise _refuse_state(reservation, "left unfunded")
    return dataclasses.replace(reservation, state=State.CHARGED, pending=Work.REPORT, charged=0, note=reason,
                               updated_us=now_us)


def settlement(reservation: Reservation) -> int:
    """What SettleHold charges: the cost, at most what the hold has."""
    return min(reservation.cost, reservation.hold_amount)


def settled(reservation: Reservation, *, charged: int, now_us: int) -> Reservation:
    if reservation.state is not State.COMPLETING or reservation.pending is not Work.SETTLE:
        raise _refuse_state(reservation, "settled")
    return dataclasses.replace(reservation, state=State.CHARGED, pending=Work.REPORT, charged=charged,
                               updated_us=now_us)


def reported(reservation: Reservation, *, now_us: int) -> Reservation:
    if reservation.pending is not Work.REPORT:
        raise _refuse_state(reservation, "reported")
    return dataclasses.replace(reservation, pending=Work.NONE, updated_us=now_us)


def cancel(reservation: Reservation, *, now_us: int) -> Reservation:
    """The job will not run (cancelled before it started): release what is or may be held."""
    if reservation.state in (State.HELD, State.RESERVING) and reservation.pending in (Work.NONE, Work.HOLD,
                                                                                       Work.USAGE):
        # reserving: the hold may have been made by a request that got no answer; releasing asks for it
        # again by its request id first (the Bank answers with the hold it made, or makes none)
        return dataclasses.replace(reservation, state=State.CANCELLING, pending=Work.RELEASE, updated_us=now_us)
    if reservation.state is State.UNFUNDED:
        return dataclasses.replace(reservation, state=State.RELEASED, pending=Work.NONE, updated_us=now_us)
    if reservation.state in (State.CANCELLING, State.RELEASED, State.REFUSED):
        return reservation          # (a repeated cancel)
    raise _refuse_state(reservation, "cancelled")


def released(reservation: Reservation, *, now_us: int) -> Reservation:
    if reservation.state is not State.CANCELLING:
        raise _refuse_state(reservation, "released")
    return dataclasses.replace(reservation, state=State.RELEASED, pending=Work.NONE, updated_us=now_us)


def failed_attempt(reservation: Reservation, *, error: str, now_us: int) -> Reservation:
    """A step that could not be done now (the Bank unreachable): kept pending, with why."""
    return dataclasses.replace(reservation, note=error[:500], updated_us=now_us)
