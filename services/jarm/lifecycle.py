"""The reservation lifecycle at work: the Bank calls, Slurm's word and the store, around the core.

``Lifecycle`` does each step of reservations.py and keeps its outcome in the store before the next:

* ``reserve(job)`` (the PrologSlurmctld, through the SOAP operation Reserve): price the job by the
  version in force, keep the reservation, then make the hold at once — with the user's delegated
  proxy when the JARM holds one, else as the site on the user's behalf (the account's grant). The
  Bank's refusal refuses the job (the message says the cost, the funds and the shortfall); the Bank
  not answering follows the site's policy: refuse, or admit within the account's unfunded cap.
* ``ended(key)`` (the EpilogSlurmctld: Complete): the run ended; its usage is read and priced, the
  hold settled and the usage record spooled by ``work`` (at once, and by the reconciler after).
* ``cancel(key)``: release whatever is held.
* ``work(reservation)``: one pending step (reservations.Work). Each Bank request has the request id
  of its step (``bank_request_id``): a step repeated after a crash or a lost answer is answered by
  the Bank with its first outcome.
* ``reconcile_once()``: every reservation with work left gets its step; runs Slurm no longer has
  are marked ended (an epilog that never reached the JARM loses nothing); holds about to expire
  under a running job are extended.

The Bank's answers are classified once (``_bank_call``): a refusal (a SOAP fault of the client
kind: no funds, no right) is definite; anything else (no answer, a server fault) leaves the step
pending, with why, for the next try.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from cryptography.hazmat.primitives import hashes
from gridcredit.errors import DomainError, GridcreditError, RemoteFault

from . import pricing, reservations as rsv
from .reservation_store import ReservationStore
from .reservations import Authority, JobKey, Reservation, State, Work
from .store import PriceStore
from .types import JobRequest, Occupancy, Usage

log = logging.getLogger("gridcredit.services.jarm.lifecycle")

JOB_REFUSED = "JobRefused"
UNKNOWN_USER = "UnknownUser"
BANK_UNREACHABLE = "BankUnreachable"
US = 1_000_000
NEVER_STARTED = "never started"  # what read_usage answers for a run Slurm ended before it started
FULL = Occupancy(1, 1)          # a partition taken as full: a load-priced rate at its greatest multiplier


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """A run as the prolog reports it: its key, its local user, its Slurm account and what it asked for."""

    key: JobKey
    user: str
    account: str
    request: JobRequest
    quote_id: str = ""              # a guaranteed quote the job presents (sbatch --comment=jarm-quote=<id>)


class _Refused(GridcreditError):
    """The Bank refused a step (``code``: its reason, e.g. InsufficientFunds, NotAuthorized)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Unreachable(GridcreditError):
    """The Bank gave no answer (``answered`` False) or a server fault: the step stays pending."""

    def __init__(self, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


BANK_WORK = frozenset({Work.HOLD, Work.SETTLE, Work.RELEASE})


@dataclass
class _Pass:
    """What one reconciler pass learned of the Bank: once it gave no answer (``silent``: its error), the
    pass asks it nothing more — the other runs' Bank steps wait for the next pass (``waiting``)."""

    silent: str = ""
    waiting: int = 0


def _moment(at_us: int) -> datetime:
    return datetime.fromtimestamp(at_us // US, tz=timezone.utc).replace(microsecond=at_us % US)


def _bank_call(what: str, call: Callable[[], object]):
    try:
        return call()
    except RemoteFault as fault:
        if fault.faultcode.split(":")[-1].startswith("Client"):      # the Bank's decision, not its trouble
            raise _Refused(fault.text, fault.code) from None
        raise _Unreachable(f"{what}: the Bank answered {fault.faultcode}: {fault.text}", answered=True) from None
    except GridcreditError as error:
        raise _Unreachable(f"{what}: {type(error).__name__}: {error}") from None
    except OSError as error:
        raise _Unreachable(f"{what}: {type(error).__name__}: {error}") from None


DELEGATED_CLIENTS_MAX = 64     # Bank clients kept for users' proxies (each keeps its TLS connection)


@dataclass
class Banker:
    """The Bank as the JARM calls it: as the site (``site``, a BankClient signing with the JARM's own
    credential) or as a user through the proxy they delegated (``delegated(dn)``: a Credential or None).

    A client signing with a user's proxy is kept (with its session, so its TLS connection) for the next
    call with the same proxy: at most ``clients_max``, the least recently used dropped first; one is
    dropped as soon as its user's delegation changes (another proxy), is gone or expires (``delegated``
    answers None), or the site's client is replaced."""

    site: object
    delegated: Callable[[str], object | None] = lambda dn: None
    site_dn: str = ""
    clients_max: int = DELEGATED_CLIENTS_MAX
    _clients: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def client(self, authority: Authority, user_dn: str):
        if authority is Authority.DELEGATED:
            credential = self.delegated(user_dn)
            if credential is None:
                self._drop(user_dn)
                raise _Refused(f"the proxy {user_dn} delegated to this JARM has expired or was destroyed: delegate "
                              f"again (gridcredit jarm delegate)", "DelegationExpired")
            return self._client_for(user_dn, credential)
        return self.site

    def delegated_clients(self) -> int:
        """How many clients of users' proxies are kept."""
        with self._lock:
            return len(self._clients)

    def _client_for(self, user_dn: str, credential):
        proxy = credential.cert.fingerprint(hashes.SHA256())
        with self._lock:
            kept = self._clients.get(user_dn)
            if kept is not None and kept[0] == proxy and kept[1] is self.site:
                self._clients.move_to_end(user_dn)
                return kept[2]
        client = self.site.as_credential(credential)
        dropped = []
        with self._lock:
            if user_dn in self._clients:
                dropped.append(self._clients.pop(user_dn)[2])
            self._clients[user_dn] = (proxy, self.site, client)
            while len(self._clients) > self.clients_max:
                dropped.append(self._clients.popitem(last=False)[1][2])
        for old in dropped:
            old.close()
        return client

    def _drop(self, user_dn: str) -> None:
        with self._lock:
            kept = self._clients.pop(user_dn, None)
        if kept is not None:
            kept[2].close()


@dataclass
class Settings:
    site: str
    payee: str                              # the site's account charges go to
    hold_grace_s: int = 3600                # a hold lasts the time limit and this much more
    bank_unreachable: str = "refuse"        # or admit_capped
    unfunded_cap_credits: int = 0
    extend_margin_s: int = 600              # extend a running job's hold this long before it expires
    account_map: dict[str, str] = field(default_factory=dict)   # Slurm account → Bank account


class Lifecycle:
    def __init__(self, reservations: ReservationStore, prices: PriceStore, banker: Banker, settings: Settings, *,
                 user_dn: Callable[[str], str | None], read_usage: Callable[[JobKey], Usage | str | None],
                 report: Callable[[Reservation], None],
                 running: Callable[[list[JobKey]], dict[JobKey, int | None] | None],
                 clock: Callable[[], int], occupancy: Callable[[str], Occupancy] | None = None) -> None:
        self.reservations, self.prices, self.banker, self.settings = reservations, prices, banker, settings
        self.user_dn, self.read_usage, self.report, self.running, self.clock = (user_dn, read_usage, report,
                                                                               running, clock)
        self.occupancy = occupancy
        self._silent_since_us: int | None = None     # the first reconciler pass the Bank did not answer

    # -- the steps Slurm reports ----------------------------------------------------------------

    def reserve(self, job: SlurmJob) -> Reservation:
        existing = self.reservations.get(job.key.reservation_id)
        if existing is not None:
            return self._work_now(existing)       # the prolog again: the same reservation, its step again
        dn = self.user_dn(job.user)
        if dn is None:
            raise DomainError(f"local user {job.user} has no grid identity here: add them to the grid-mapfile, or "
                              f"let them delegate a proxy (gridcredit jarm delegate)", UNKNOWN_USER)
        now_us = self.clock()
        if job.quote_id:
            basis = self._honoured(job, dn, now_us)
            table = self.prices.table(basis.site, basis.version).table
        else:
            table = self.prices.in_force(self.settings.site, now_us).table
            basis = pricing.basis_for(table, job.request, now_us=now_us,
                                      occupancy=self._occupancy(table, job.request))
        estimate = pricing.estimate(table, job.request, basis).credits
        authority = Authority.DELEGATED if self.banker.delegated(dn) is not None else Authority.GRANTED
        account = self.settings.account_map.get(job.account, job.account)
        reservation = rsv.reserve(job.key, user=job.user, user_dn=dn, account=account, payee=self.settings.payee,
                                  request=job.request, basis=basis, estimate=estimate, authority=authority,
                                  now_us=now_us, hold_expires_us=now_us + self._hold_life_us(job.request))
        reservation, _created = self.reservations.create(reservation)
        return self._work_now(reservation)

    def _honoured(self, job: SlurmJob, dn: str, now_us: int):
        """The basis (price version, load multiplier) of the guaranteed quote the job presents: its own
        user's, unexpired, for this site, covering the job (pricing.honour)."""
        stored = self.prices.quote(job.quote_id)
        if stored.requester != dn:
            raise DomainError(f"quote {job.quote_id} was given to another user; a job may present only its own "
                              f"user's guaranteed quote", pricing.QUOTE_MISMATCH)
        return pricing.honour(stored.quote, job.request, site=self.settings.site, now_us=now_us)

    def _occupancy(self, table, request: JobRequest) -> Occupancy | None:
        """The partition's occupancy when its rate is load-priced (the multiplier is fixed now); when Slurm
        cannot say, the rate's greatest multiplier (as the admission agent estimates), with a warning."""
        if pricing.rate_for(table, request.partition, request.qos).load is None:
            return None
        if self.occupancy is not None:
            try:
                return self.occupancy(request.partition)
            except GridcreditError as error:
                log.warning("jarm: the occupancy of partition %s is unknown (%s: %s); priced at its greatest "
                            "load multiplier", request.partition, type(error).__name__, error)
        return FULL

    def ended(self, key: JobKey) -> Reservation:
        reservation = self.reservations.change(key.reservation_id,
                                               lambda found: rsv.run_ended(found, now_us=self.clock()))
        return self._work_now(reservation)

    def extend_job(self, key: JobKey, time_limit_s: int | None) -> Reservation:
        """The job runs on (None) or its time limit was raised to ``time_limit_s``: extend its hold."""
        reservation = self.reservations.require(key.reservation_id)
        if reservation.state is not State.HELD or not reservation.hold_id:
            raise DomainError(f"reservation {reservation.reservation_id} is {reservation.state.value}"
                              f"{'' if reservation.hold_id else ' without a hold'}: only a held run's hold is extended",
                              rsv.RESERVATION_STATE)
        try:
            return self.extend(reservation, time_limit_s)
        except _Refused as refusal:
            raise DomainError(f"the Bank refused to extend hold {reservation.hold_id}: {refusal}", refusal.code) from None
        except _Unreachable as error:
            raise DomainError(f"the Bank does not answer: {error}; the reconciler tries again", BANK_UNREACHABLE) from None

    def cancel(self, key: JobKey) -> Reservation:
        reservation = self.reservations.change(key.reservation_id, lambda found: rsv.cancel(found, now_us=self.clock()))
        return self._work_now(reservation)

    # -- pending work ---------------------------------------------------------------------------

    def _work_now(self, reservation: Reservation, bank_pass: _Pass | None = None) -> Reservation:
        """Do the pending steps one after the other until none is left or one cannot be done now (in a
        reconciler pass, ``bank_pass``: a Bank step once the Bank gave no answer in this pass)."""
        while reservation.pending is not Work.NONE:
            if bank_pass is not None and bank_pass.silent and reservation.pending in BANK_WORK:
                bank_pass.waiting += 1
                break
            reservation, progressed = self._step(reservation, bank_pass)
            if not progressed:
                break               # the Bank unreachable, or the usage not in slurmdbd yet
        return reservation

    def work(self, reservation: Reservation) -> Reservation:
        """Do the pending step of ``reservation``; the reservation as stored after it."""
        return self._step(reservation)[0]

    def _step(self, reservation: Reservation, bank_pass: _Pass | None = None) -> tuple[Reservation, bool]:
        step = {Work.HOLD: self._hold, Work.USAGE: self._usage, Work.SETTLE: self._settle,
                Work.RELEASE: self._release, Work.REPORT: self._report}.get(reservation.pending)
        if step is None:
            return reservation, False
        rid = reservation.reservation_id
        try:
            after = step(reservation)
            return after, (after.pending, after.state) != (reservation.pending, reservation.state)
        except _Unreachable as error:
            if bank_pass is not None and not error.answered:
                bank_pass.silent, bank_pass.waiting = str(error), bank_pass.waiting + 1   # said once, by the pass
            else:
                log.warning("jarm %s: %s not done now: %s", rid, reservation.pending.value, error)
            if reservation.state is State.RESERVING:
                if self.settings.bank_unreachable == "admit_capped":
                    return self._admit_unfunded(reservation, str(error)), False
                # refused: the job does not run on it, and a hold the request may have made is released
                # by the reconciler (asked again under its request id, then released)
                why = f"the Bank does not answer: {error}"
                return self._advance(reservation, lambda found: rsv.cancel(
                    rsv.failed_attempt(found, error=why, now_us=self.clock()), now_us=self.clock())), False
            why = str(error)
            return self._advance(reservation, lambda found: rsv.failed_attempt(found, error=why,
                                                                                  now_us=self.clock())), False

    def _advance(self, before: Reservation, step: Callable[[Reservation], Reservation]) -> Reservation:
        """Keep the outcome of a step done for ``before``. The reconciler and a SOAP operation (or two
        workers) may do the same step at once — the Bank answers both alike, the request ids being the
        same —, so when the stored reservation has moved on meanwhile, what it holds stands."""
        progress = (before.state, before.pending, before.hold_id, before.extensions)

        def apply(found: Reservation) -> Reservation:
            if (found.state, found.pending, found.hold_id, found.extensions) != progress:
                return found
            return step(found)
        return self.reservations.change(before.reservation_id, apply)

    def _hold_life_us(self, request: JobRequest) -> int:
        return (request.time_limit_s + self.settings.hold_grace_s) * US

    def _hold(self, reservation: Reservation) -> Reservation:
        rid = reservation.reservation_id
        completing = reservation.state is State.COMPLETING     # an unfunded run: hold its cost, then settle
        amount = reservation.cost if completing else reservation.estimate
        now_us = self.clock()
        expires_us = reservation.hold_expires_us       # fixed with the reservation: the same request each time
        if amount == 0:            # nothing to hold (a free rate): the run goes on without a hold
            return self._advance(reservation, lambda found: rsv.hold_made(
                found, hold_id="", amount=0, expires_us=expires_us, now_us=now_us))
        try:
            receipt = self._create_hold(reservation, amount, expires_us, "hold")
        except _Refused as refusal:
            message = self._refusal(reservation, amount, refusal)
            log.info("jarm %s: hold of %d credits on %s refused: %s", rid, amount, reservation.account, message)
            if completing:
                return self._advance(reservation, lambda found: rsv.unfunded_hold_refused(
                    found, reason=message, now_us=self.clock()))
            return self._advance(reservation, lambda found: rsv.hold_refused(found, reason=message,
                                                                                now_us=self.clock()))
        hold_id = receipt.transaction.hold_id
        # (an unfunded run's hold of its cost is said by its settlement's line, which follows)
        log.log(logging.DEBUG if completing else logging.INFO, "jarm %s: held %d credits of %s as %s (%s)", rid,
                amount, reservation.account, hold_id, reservation.authority.value if reservation.authority else "-")
        return self._advance(reservation, lambda found: rsv.hold_made(
            found, hold_id=hold_id, amount=amount, expires_us=expires_us, now_us=self.clock()))

    def _create_hold(self, reservation: Reservation, amount: int, expires_us: int, step: str):
        authority = reservation.authority or Authority.GRANTED
        bank = self.banker.client(authority, reservation.user_dn)
        arguments = dict(amount=amount, expires=_moment(expires_us), reference=reservation.reservation_id,
                         payee_account_id=reservation.payee,
                         request_id=rsv.bank_request_id(reservation.reservation_id, step))
        if authority is Authority.DELEGATED:
            arguments["collector_dn"] = self.banker.site_dn      # the JARM settles what the user held
        else:
            arguments["on_behalf_of_dn"] = reservation.user_dn
        return _bank_call(f"the hold of {reservation.reservation_id}",
                          lambda: bank.create_hold(reservation.account, **arguments))

    @staticmethod
    def _refusal(reservation: Reservation, amount: int, refusal: _Refused) -> str:
        """What the job's user reads (the Bank's own words say the funds and the shortfall)."""
        return f"JARM: job {reservation.key.job} refused: it may cost {amount:,} credits; the Bank refused the hold " \
               f"on account {reservation.account}: {refusal} [{refusal.code}]"

    def _admit_unfunded(self, reservation: Reservation, why: str) -> Reservation:
        # what the account owes for work done unfunded (runs still running, and runs ended and not charged
        # yet) plus this run's estimate, within the cap: checked and kept in one transaction of the store
        cap = self.settings.unfunded_cap_credits

        def refused(found: Reservation, owed: int) -> Reservation:
            message = (f"JARM: job {found.key.job} refused: the Bank does not answer ({why}) and account "
                       f"{found.account} has {owed:,} credits of unfunded work already (the cap is {cap:,})")
            return rsv.hold_refused(found, reason=message, now_us=self.clock())

        after = self.reservations.admit_unfunded(
            reservation.reservation_id, cap_credits=cap, refused=refused,
            admitted=lambda found: rsv.admitted_unfunded(found, reason=why, now_us=self.clock()))
        if after.state is State.UNFUNDED:
            log.warning("jarm %s: the Bank does not answer; admitted unfunded (%d credits, account %s)",
                        after.reservation_id, after.estimate, after.account)
        return after

    def _usage(self, reservation: Reservation) -> Reservation:
        usage = self.read_usage(reservation.key)
        if usage is None:
            return reservation          # not in Slurm's accounting yet: the reconciler comes back
        if usage is NEVER_STARTED or (usage.cores == 0 and usage.elapsed_s == 0):
            # the run never started (cancelled while it was being configured): nothing is charged
            log.info("jarm %s: the run never started; releasing its hold", reservation.reservation_id)
            return self._advance(reservation, lambda found: rsv.cancel(found, now_us=self.clock()))
        table = self.prices.table(reservation.basis.site, reservation.basis.version).table
        cost = pricing.charge(table, usage, reservation.basis).credits
        now_us = self.clock()
        return self._advance(reservation, lambda found: rsv.job_ended(
            found, usage=usage, cost=cost, now_us=now_us, hold_expires_us=now_us + self.settings.hold_grace_s * US
            + self.settings.extend_margin_s * US))

    def _settle(self, reservation: Reservation) -> Reservation:
        rid = reservation.reservation_id
        amount = rsv.settlement(reservation)
        if not reservation.hold_id:
            return self._advance(reservation, lambda found: rsv.settled(found, charged=0, now_us=self.clock()))
        bank = self.banker.site        # the hold's collector (delegated) or its creating service (granted)
        try:
            _bank_call(f"the settlement of {rid}", lambda: bank.settle_hold(
                reservation.hold_id, payee_account_id=reservation.payee, amount=amount,
                request_id=rsv.bank_request_id(rid, "settle")))
        except _Refused as refusal:
            why = f"the Bank refused the settlement: {refusal} [{refusal.code}]"
            return self._advance(reservation, lambda found: rsv.failed_attempt(found, error=why, now_us=self.clock()))
        log.info("jarm %s: charged %d of %d credits held (cost %d) to %s", rid, amount, reservation.hold_amount,
                 reservation.cost, reservation.payee)
        return self._advance(reservation, lambda found: rsv.settled(found, charged=amount, now_us=self.clock()))

    def _release(self, reservation: Reservation) -> Reservation:
        rid = reservation.reservation_id
        hold_id = reservation.hold_id
        if not hold_id and reservation.authority is not None:
            # the hold's request may have reached the Bank without its answer reaching us: asked again
            # under its request id, the Bank answers with the hold it made (or makes it now)
            try:
                receipt = self._create_hold(reservation, reservation.estimate, reservation.hold_expires_us, "hold")
                hold_id = receipt.transaction.hold_id
            except _Refused:
                hold_id = ""
        if hold_id:
            bank = self.banker.site
            try:
                _bank_call(f"the release of {rid}", lambda: bank.release_hold(
                    hold_id, request_id=rsv.bank_request_id(rid, "release")))
            except _Refused as refusal:
                if refusal.code not in ("HoldEnded", "HoldExpired"):
                    why = f"the Bank refused the release: {refusal} [{refusal.code}]"
                    return self._advance(reservation, lambda found: rsv.failed_attempt(found, error=why,
                                                                                      now_us=self.clock()))
        log.info("jarm %s: released (hold %s)", rid, hold_id or "none")
        return self._advance(reservation, lambda found: rsv.released(
            dataclasses.replace(found, hold_id=found.hold_id or hold_id), now_us=self.clock()))

    def _report(self, reservation: Reservation) -> Reservation:
        self.report(reservation)
        return self._advance(reservation,
                                        lambda found: rsv.reported(found, now_us=self.clock()))

    # -- the reconciler -------------------------------------------------------------------------

    def reconcile_once(self) -> dict[str, int]:
        """One pass: runs Slurm no longer has are marked ended; every pending step is tried; holds of
        running jobs are extended when their time limit was raised or they near their expiry. Counts
        of what was done, by kind (``waiting``: runs whose Bank step waits for a Bank that gave no
        answer in this pass — asked once, said in one line per pass)."""
        done = {"ended": 0, "steps": 0, "extended": 0, "left": 0, "waiting": 0}
        bank_pass = _Pass()
        active = self.reservations.in_states((State.HELD, State.UNFUNDED))
        running = self.running([r.key for r in active]) if active else {}
        if running is not None:
            for reservation in active:
                if reservation.pending is Work.NONE and reservation.key not in running:
                    self.reservations.change(reservation.reservation_id,
                                             lambda found: rsv.run_ended(found, now_us=self.clock()))
                    done["ended"] += 1
        for reservation in self.reservations.with_pending_work():
            done["steps"] += 1
            try:
                after = self._work_now(reservation, bank_pass)
            except GridcreditError as error:     # one run's trouble must not stop the others' steps
                log.warning("jarm %s: %s not done: %s: %s", reservation.reservation_id, reservation.pending.value,
                            type(error).__name__, error)
                done["left"] += 1
                continue
            if after.pending is not Work.NONE:
                done["left"] += 1
        horizon_us = self.clock() + self.settings.extend_margin_s * US
        for reservation in self.reservations.in_states((State.HELD,)) if running else ():
            if reservation.key not in running or not reservation.hold_id or reservation.pending is not Work.NONE:
                continue
            limit_s = running[reservation.key]
            raised = limit_s is not None and limit_s > reservation.request.time_limit_s
            if raised or reservation.hold_expires_us <= horizon_us:
                if bank_pass.silent:
                    bank_pass.waiting += 1
                    continue
                try:
                    self.extend(reservation, limit_s if raised else None)
                    done["extended"] += 1
                except _Unreachable as error:
                    if error.answered:
                        log.warning("jarm %s: hold %s not extended: %s", reservation.reservation_id,
                                    reservation.hold_id, error)
                    else:
                        bank_pass.silent, bank_pass.waiting = str(error), bank_pass.waiting + 1
                except (_Refused, DomainError) as error:
                    log.warning("jarm %s: hold %s not extended: %s", reservation.reservation_id, reservation.hold_id,
                                error)
        done["waiting"] = bank_pass.waiting
        if bank_pass.silent:
            if self._silent_since_us is None:
                self._silent_since_us = self.clock()
            log.warning("jarm reconciler: the Bank does not answer since %s: %d run(s) wait for it; %s",
                        _moment(self._silent_since_us).strftime("%Y-%m-%d %H:%M:%S UTC"), bank_pass.waiting,
                        bank_pass.silent)
        else:
            self._silent_since_us = None
        return done

    def extend(self, reservation: Reservation, time_limit_s: int | None) -> Reservation:
        """Extend the hold of a running job: to its raised ``time_limit_s`` (the estimate of the larger
        request by the reservation's price version: a larger amount and a later expiry), or (None) only
        later, because the job runs on toward the hold's expiry."""
        rid = reservation.reservation_id
        now_us = self.clock()
        request, estimate, amount = reservation.request, reservation.estimate, None
        if time_limit_s is not None:
            request = JobRequest(request.partition, request.qos, request.cores, time_limit_s, request.memory_mb,
                                 request.gpus, request.nodes)
            table = self.prices.table(reservation.basis.site, reservation.basis.version).table
            estimate = pricing.estimate(table, request, reservation.basis).credits
            amount = estimate if estimate > reservation.hold_amount else None
            expires_us = max(reservation.hold_expires_us,
                             reservation.created_us + (time_limit_s + self.settings.hold_grace_s) * US)
        else:
            expires_us = max(reservation.hold_expires_us,
                             now_us + (2 * self.settings.extend_margin_s + self.settings.hold_grace_s) * US)
        # raising the amount needs the right to spend: the user's own proxy, or the site's grant
        authority = reservation.authority if amount is not None else Authority.GRANTED
        bank = self.banker.client(authority or Authority.GRANTED, reservation.user_dn)
        # the request id names the extension's content: a retry of it is the same request, another is new
        fingerprint = hashlib.sha256(f"{expires_us}:{amount}".encode()).hexdigest()[:16]
        if expires_us > reservation.hold_expires_us or amount is not None:
            _bank_call(f"the extension of {rid}", lambda: bank.extend_hold(
                reservation.hold_id, expires=_moment(expires_us) if expires_us > reservation.hold_expires_us else None,
                amount=amount, request_id=rsv.bank_request_id(rid, f"extend-{fingerprint}")))
        log.info("jarm %s: hold %s extended to %s credits until %d µs%s", rid, reservation.hold_id,
                 amount or reservation.hold_amount, expires_us,
                 f" (time limit raised to {time_limit_s} s)" if time_limit_s is not None else " (the job runs on)")
        return self._advance(reservation, lambda found: rsv.extended(
            found, amount=amount or found.hold_amount, expires_us=expires_us, now_us=self.clock(), request=request,
            estimate=estimate))
