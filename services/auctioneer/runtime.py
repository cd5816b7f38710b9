"""The Auctioneer as the host runs it: what each worker builds, and the allocation loop (once per host).

The market's rules are market.py's (the pure core); the SOAP operations (service.py) apply a bid's
events — placed, changed, cancelled — to the market in the store at once (one transaction each), and
the loop makes the rest happen:

* **at every interval boundary** (intervals aligned to the epoch, ``interval_s`` long): if the last
  closed interval's batch has no recorded answer (a crash, the Bank down), it is sent again — the same
  items, the same request ids, so the Bank answers the outcomes it recorded; then each interval that
  ended is closed (``market.close_interval``: every bid's charge, the bids that cannot go on), its
  batch stored with the market BEFORE it is sent, sent as ONE signed Bank ``ApplyBatch``
  (ChargeHold; SettleHold for a bid that ends), and the answers recorded (``batch_applied``: a
  refused charge ends its bid); settled bids are forgotten by the market (their final state kept in
  their own document); a price sample is kept and the directory told (``directory_url``);
* **whenever the market changed** (it looks every ``POLL_S``: a PlaceBid's VM is started within that):
  enforcement — the VMs of ended bids removed, every running VM's share applied as a cap (capped mode)
  or a weight (work-conserving), then a VM made from its template for each live bid that has none
  (capped from its first instruction; all at once, each in a thread of its own, the pass not waiting
  for them), and what is enforced written into the bid (``enforced``). After a restart the VMs are found again
  by their name prefix (``list_vms``): an orphan is removed, a missing one made again. A hypervisor
  error is logged, said in the bid's ``enforced`` and tried again at the next pass — a bid pays while
  it is live, so what is not enforced is never silent.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from gridcredit.contract import BuildContext, TaskContext
from gridcredit.errors import ConfigError, DomainError, GridcreditError, StoreError
from gridcredit.timeunits import now_us

from . import console
from . import market as core
from .config import AuctioneerConfig
from .policy import AuctioneerPolicy
from .store import INTERVALS, IntervalRecord, Item, MarketStore, interval_from_xml, interval_id, interval_xml

if TYPE_CHECKING:
    from ..bank.client import BankClient

log = logging.getLogger("gridcredit.services.auctioneer")
BANK_TIMEOUT_S = 10.0
BANK_RETRY_S = 1                        # an unanswered batch is sent again this soon (not at the next boundary)
US_PER_S = 1_000_000
POLL_S = 0.1                            # how often the loop looks whether the market changed (a new bid's VM)
HYPERVISOR_TIMEOUT_S = 10.0
DIRECTORY_TTL_INTERVALS = 6             # a registration outlives this many heartbeats (one per interval)
DIRECTORY_TTL_S_MIN = 30
DIRECTORY_TTL_S_MAX = 3_600                # the directory's default ttl_s_max: a longer TTL would be refused


# -- what a worker builds --------------------------------------------------------------------------


def market_config(settings: AuctioneerConfig) -> core.MarketConfig:
    return core.MarketConfig(settings.host_id or "none", settings.capacity_cpus, settings.reserve_ucps,
                             settings.interval_s * US_PER_S)


@dataclass(frozen=True, slots=True)
class Auctioneer:
    """What one worker holds for the Auctioneer (``runtime_of(ctx).auctioneer`` in the SOAP operations)."""

    settings: AuctioneerConfig
    market: MarketStore
    policy: AuctioneerPolicy
    dn: str                                   # this auctioneer's identity: the holds' collector ("" unknown)
    bank: "BankClient | None"                 # signing as the host (None: a runtime without the host's files)
    console_dir: Path
    vm_dir: Path
    templates: Mapping[str, object]           # name → hypervisor.Template (loaded when first needed)
    credential: object = None
    trust_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def mode(self) -> core.Mode:
        return core.Mode.PAY_FOR_USE if self.settings.pay_for_use else core.Mode.CAPPED


def service_url(explicit: str, config) -> str:
    return explicit or f"https://localhost:{config.server.port}"


def build(context: BuildContext) -> Auctioneer:
    config, settings = context.config, context.config.auctioneer
    dn, bank, credential, trust_dir = "", None, None, None
    overseers = set(settings.owners)
    if context.files is not None:
        from gridcredit.security.credentials import load_credential

        from ..bank.client import BankClient

        credential = load_credential(cert_path=str(context.files.host_cert), key_path=str(context.files.host_key))
        dn = credential.identity_dn
        trust_dir = context.files.trust_dir
        overseers.add(dn)
        bank = BankClient(service_url(settings.bank_url, config), credential=credential,
                          trust_dir=context.files.trust_dir, timeout_s=BANK_TIMEOUT_S, retries=1)
    state = config.state_path / "auctioneer"
    console_dir = Path(settings.console_dir) if settings.console_dir else state / "consoles"
    vm_dir = Path(settings.vm_dir) if settings.vm_dir else state / "vms"
    return Auctioneer(settings, MarketStore(context.store, market_config(settings)),
                      AuctioneerPolicy(frozenset(overseers)), dn, bank, console_dir, vm_dir,
                      TemplateBook(settings.template_files()), credential, trust_dir)


class TemplateBook(Mapping):
    """The site's templates, name → ``hypervisor.Template``: ``name=spin`` / ``name=idle`` (the built-in
    test guests) or ``name=/etc/…/template.toml`` (keys vcpus, memory_mib, image, boot; read when first
    used). ``in`` needs no file: a bid naming a configured template is accepted, its VM made later."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        self._entries = dict(entries)
        self._loaded: dict[str, object] = {}

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str):
        if name not in self._loaded:
            from . import hypervisor

            source = self._entries[name]
            if not source.startswith("/"):
                self._loaded[name] = replace(hypervisor.DEFAULT_TEMPLATES[source], name=name)
            else:
                try:
                    settings = tomllib.loads(Path(source).read_text(encoding="utf-8"))
                except (OSError, tomllib.TOMLDecodeError) as error:
                    raise ConfigError(f"auctioneer template {name}: cannot read {source}: {error}") from None
                self._loaded[name] = hypervisor.Template.from_mapping(name, settings)
        return self._loaded[name]


# -- the pieces the loop uses, each reached in one place ------------------------------------------


class Enforcer(Protocol):
    """What the loop asks of the hypervisor (hypervisor.py's ``Hypervisor``: ``enforcer_for`` below).
    Every method raises ``GridcreditError`` when the hypervisor fails (its error, ``TypeName: message``, as
    the message); the loop tries again at its next pass."""

    def names(self) -> list[str]: ...
    def create(self, name: str, template: str, *, quota_us: int | None, period_us: int, weight: int) -> None: ...
    def remove(self, name: str) -> None: ...
    def cap(self, name: str, quota_us: int, period_us: int) -> None: ...
    def weight(self, name: str, weight: int) -> None: ...
    def cpu_time_us(self, name: str) -> int: ...
    def open_console(self, name: str) -> console.Console: ...


def enforcer_for(part: Auctioneer) -> Enforcer:
    """The host's libvirt (hyper's ``services/auctioneer/hypervisor.py``) as the loop uses it; the
    connection is made at the first call (a libvirt that is missing or down fails each call with an
    ``GridcreditError``: the market goes on, the bids say what is not enforced)."""
    settings = part.settings
    prefix = vm_prefix(settings)
    opened: list = []

    def hypervisor():
        from . import hypervisor as module

        if not opened:
            opened.append(module.Hypervisor(settings.libvirt_uri, call_timeout_s=HYPERVISOR_TIMEOUT_S,
                                            state_dir=part.vm_dir))
        return opened[0]

    def guarded(call):
        def run(*args, **options):
            from . import hypervisor as module
            try:
                return call(*args, **options)
            except module.HypervisorError as error:
                raise GridcreditError(str(error)) from None
        return run

    class _Libvirt:
        names = staticmethod(guarded(lambda: hypervisor().list_vms(prefix)))
        create = staticmethod(guarded(lambda name, template, *, quota_us, period_us, weight: hypervisor().create_vm(
            name, part.templates[template], cpuset=settings.cpuset or "0", quota_us=quota_us, period_us=period_us,
            weight=weight)))
        remove = staticmethod(guarded(lambda name: hypervisor().remove_vm(name)))
        cap = staticmethod(guarded(lambda name, quota_us, period_us: hypervisor().set_cap(name, quota_us, period_us)))
        weight = staticmethod(guarded(lambda name, weight: hypervisor().set_weight(name, weight)))
        cpu_time_us = staticmethod(guarded(lambda name: hypervisor().cpu_time_us(name)))
        open_console = staticmethod(guarded(lambda name: hypervisor().open_console(name)))
    return _Libvirt()


def vm_prefix(settings: AuctioneerConfig) -> str:
    return f"{settings.vm_prefix}{settings.host_id}-"


def vm_name(settings: AuctioneerConfig, bid_id: str) -> str:
    return vm_prefix(settings) + bid_id


class Banker(Protocol):
    """What the loop asks of the Bank: one signed ApplyBatch of an interval's charges (``bank_of``);
    each item's outcome by request id: None (applied) or the Bank's refusal code. Raises
    GridcreditError when there is no answer (the batch is then sent again, unchanged)."""

    def apply(self, charges: tuple[core.Charge, ...], *, batch_id: str, payee: str) -> dict[str, str | None]: ...


def bank_of(client: "BankClient") -> Banker:
    """The Bank's ApplyBatch (``BankClient.apply_batch``, helper batch's) for the loop's charges."""

    from ..bank.ledger import BATCH_ITEMS_MAX

    class _Bank:
        def apply(self, charges, *, batch_id: str, payee: str) -> dict[str, str | None]:
            # one ApplyBatch — or, beyond the Bank's BATCH_ITEMS_MAX items (1,500), one per that many
            outcomes = {}
            for first in range(0, len(charges), BATCH_ITEMS_MAX):
                answer = client.apply_batch([charge.bank_request(payee)
                                             for charge in charges[first:first + BATCH_ITEMS_MAX]])
                outcomes.update({result.request_id: None if result.applied else (result.code or "Refused")
                                 for result in answer.results})
            missing = [charge.request_id for charge in charges if charge.request_id not in outcomes]
            if missing:
                raise GridcreditError(f"the Bank's answer to batch {batch_id} lacks {len(missing)} of its "
                                      f"{len(charges)} items (first {missing[0]})")
            return outcomes
    return _Bank()


def closing_id(host_id: str, interval: int) -> str:
    """The batch's own request id (its items carry theirs)."""
    return f"auction:{host_id}:{interval}"


# -- the loop ------------------------------------------------------------------------------------


@dataclass
class Pass:
    """What one pass of the loop did (for the log and the tests)."""
    closed: list[int] = dataclasses.field(default_factory=list)
    resent: int = 0
    items: int = 0
    refused: int = 0
    created: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    live: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


class AllocationLoop:
    """The allocation loop of one host (see the module docstring). ``boundary()`` closes what ended and
    enforces; ``enforce()`` applies the market as it is; ``run(stop)`` does both on time until ``stop``.
    ``clock`` µs; ``relay``: the console relay (console.py), told which VMs are live."""

    def __init__(self, part: Auctioneer, bank: Banker | None, enforcer: Enforcer, *,
                 clock: Callable[[], int] = now_us, relay=None, directory=None) -> None:
        self.part = part
        self.settings = part.settings
        self.store = part.market
        self.bank = bank
        self.enforcer = enforcer
        self.clock = clock
        self.relay = relay
        self.directory = directory
        self.interval_us = self.settings.interval_s * US_PER_S
        self.host = self.settings.host_id
        self._applied: dict[str, tuple] = {}          # VM → what was last applied to it (this process)
        self._cpu_marks: dict[str, int] = {}          # VM → its CPU µs at the last close (pay-for-use)
        self._problems: set[str] = set()              # said in the log already (each once, until it clears)
        self._bank_trouble = ""                       # the Bank's last failure, said in the log once
        self._known: set[str] | None = None           # the VMs running, as last listed and since made/removed
        self._busy_lock = threading.Lock()
        self._busy: dict[str, threading.Thread] = {}  # VM → the thread making or removing it
        self._outcomes: dict[str, tuple] = {}         # VM → (create|remove, wanted, error or None, CPU µs), unseen
        self.woken = threading.Event()                # set when a VM was made or removed: the enforcement thread looks

    # -- closing intervals and the Bank

    def boundary(self) -> Pass:
        """Send an unanswered batch again, close every interval that ended, record the answers."""
        done = Pass()
        now = self.clock()
        market = self.store.market(now_us=now)
        if market.pending_interval is not None:
            done.resent += 1
            market = self._send(market, done)
            if market is None:
                return done
        while market.interval < now // self.interval_us:
            market = self._close(market, done)
            if market is None:
                return done
        return done

    def _used_cpu_us(self, market: core.Market) -> dict[str, int] | None:
        """Pay-for-use: the CPU µs each bid's VM used since the last close (0 without a VM)."""
        if not self.settings.pay_for_use:
            return None
        used = {}
        for bid in market.bids.values():
            name = vm_name(self.settings, bid.bid_id)
            try:
                cpu = self.enforcer.cpu_time_us(name)
            except GridcreditError:
                used[bid.bid_id] = 0
                continue
            used[bid.bid_id] = max(0, cpu - self._cpu_marks.get(name, cpu))
            self._cpu_marks[name] = cpu
        return used

    def _close(self, market: core.Market, done: Pass) -> core.Market | None:
        k = market.interval
        used = self._used_cpu_us(market)

        def step(tx, current: core.Market):
            if current.interval != k or current.pending_interval is not None:
                return current, None          # another pass did it meanwhile
            closing = core.close_interval(current, interval=k, used_cpu_us=used)
            closed = closing.market
            price = int(core.price(current.allocation))
            record = IntervalRecord(self.host, k, "journaled" if closing.charges else "answered",
                                    tuple(Item(c.bid_id, c.hold_id, "settle" if c.ends_bid else "charge", c.amount,
                                               c.request_id) for c in closing.charges), price)
            tx.put(INTERVALS, record.doc_id, interval_xml(record))
            return closed, closing
        closing = self.store.change(step, now_us=self.clock())
        if closing is None:
            return self.store.market(now_us=self.clock())
        done.closed.append(k)
        done.items += len(closing.charges)
        price = int(core.price(closing.market.allocation))
        self.store.add_sample(k=k + 1, at_us=(k + 1) * self.interval_us, price_ucps=price,
                              live=len(closing.market.allocation.shares))
        market = closing.market
        if closing.charges:
            market = self._send(market, done)
        return market

    def _send(self, market: core.Market, done: Pass) -> core.Market | None:
        """The kept batch of ``market.pending_interval``, sent (again); its answers recorded."""
        k, charges = market.pending_interval, market.pending_charges
        if self.bank is None:
            done.problems.append("no Bank client: the charges wait")
            return None
        try:
            outcomes = self.bank.apply(charges, batch_id=closing_id(self.host, k), payee=self.settings.owner_account)
        except GridcreditError as error:
            said = f"{type(error).__name__}: {error}"
            log.log(logging.DEBUG if said == self._bank_trouble else logging.WARNING,
                    "auctioneer %s: interval %d's %d charge(s) not applied by the Bank (%s); sent again with the "
                    "same request ids (every %d s, said once until it changes)", self.host, k, len(charges), said,
                    BANK_RETRY_S)
            self._bank_trouble = said
            done.problems.append(f"bank: {error}")
            return None
        if self._bank_trouble:
            log.info("auctioneer %s: the Bank answered interval %d's batch", self.host, k)
            self._bank_trouble = ""

        def step(tx, current: core.Market):
            if current.pending_interval != k:
                return current, current
            at = min(self.clock(), current.interval_end_us - 1)
            applied = core.batch_applied(current, interval=k, outcomes=outcomes, now_us=at)
            settled = [bid for bid in applied.bids.values() if bid.settled_interval is not None
                       and bid.settled_interval != applied.pending_interval]
            forgotten = core.forget_settled(applied)
            for bid in settled:                               # their final state, in their own documents
                found = self.store.record_in(tx, bid.bid_id)
                if found is not None:
                    self.store.put_record(tx, replace(found[0], state="ended", updated_us=at), bid)
            document = tx.get(INTERVALS, interval_id(self.host, k))
            if document is not None:
                record = interval_from_xml(document.xml)
                tx.put(INTERVALS, record.doc_id, interval_xml(replace(record, state="answered", items=tuple(
                    replace(item, outcome="ok" if outcomes.get(item.request_id) is None
                            else outcomes[item.request_id]) for item in record.items))))
            return forgotten, forgotten
        refused = [request for request, code in outcomes.items() if code is not None]
        done.refused += len(refused)
        if refused:
            log.info("auctioneer %s: the Bank refused %d of interval %d's %d item(s): %s", self.host, len(refused), k,
                     len(charges), ", ".join(f"{request} {outcomes[request]}" for request in refused[:10]))
        return self.store.change(step, now_us=self.clock())

    # -- enforcement

    def enforce(self, market: core.Market | None = None, *, wait: bool = True, listing: bool = True) -> Pass:
        """Make the hypervisor do what the market says now (see the module docstring): the running VMs
        re-capped (or re-weighted) first, then the missing VMs made and the VMs of ended bids removed — all
        at once, each in a thread of its own (a VM starts or stops in one to two seconds; each libvirt call
        has its deadline), the new VMs capped from their first instruction. Re-capping first keeps the caps
        within the sold CPUs while the new VMs start. ``wait``: wait for the VMs being made or removed (else
        a later pass records them: the loop's enforcement thread does not wait, so that a bid placed
        meanwhile is not held back by them). ``listing``: ask the hypervisor which VMs run (else the VMs
        this loop made and did not remove are taken as running: libvirt lists its VMs only once those being
        started are up, which held a new bid's pass back by a second; the loop lists once an interval)."""
        done = Pass()
        now = self.clock()
        if market is None:
            market = self._advanced(now)
        settings = self.settings
        in_force, allocation = core.in_force(market)      # (a cancel kept while the Bank is awaited: VM removed)
        capped = settings.mode == "capped"
        live = {vm_name(settings, bid.bid_id): bid for bid in in_force}
        if listing or self._known is None:
            try:
                self._known = set(self.enforcer.names())
            except GridcreditError as error:
                done.problems.append(f"hypervisor: {error}")
                log.debug("auctioneer %s: the hypervisor does not list its VMs (%s)", self.host, error)
                return done
        present = self._known
        busy = self._busy_now()
        failed = self._finished(done, present, busy)
        quotas, weights, wanted = {}, {}, {}
        for name, bid in live.items():
            share = allocation.shares.get(bid.bid_id)
            quotas[name] = share.quota_us if share is not None else core.QUOTA_MIN_US
            weights[name] = share.weight if share is not None else core.CPU_SHARES_MIN
            wanted[name] = (quotas[name], allocation.period_us) if capped else (weights[name],)
        errors: dict[str, Exception] = {name: error for name, error in failed.items() if name in live}
        for name in sorted(live):                           # the running VMs first
            if name not in present or name in busy or self._applied.get(name) == wanted[name]:
                continue
            try:
                if capped:
                    self.enforcer.cap(name, quotas[name], allocation.period_us)
                else:
                    self.enforcer.weight(name, weights[name])
                self._applied[name] = wanted[name]
            except GridcreditError as error:
                errors[name] = error
        started = []
        for name in sorted(set(live) - present - busy - set(failed)):      # then the new ones
            record = self.store.record(live[name].bid_id)
            template = record[0].template if record is not None else ""
            self._start(name, "create", wanted[name], lambda name=name, template=template: self.enforcer.create(
                name, template, quota_us=quotas[name] if capped else None, period_us=allocation.period_us,
                weight=weights[name]))
            started.append(name)
        for name in sorted(present - set(live) - busy - set(failed)):      # ended bids' VMs, orphans after a crash
            self._start(name, "remove", None, lambda name=name: self.enforcer.remove(name))
            started.append(name)
        if wait and started:
            self._wait(started)
            errors.update((name, error) for name, error in self._finished(done, present, set()).items()
                          if name in live)
        busy = self._busy_now()
        texts: dict[str, str] = {}
        for name, bid in sorted(live.items()):
            share = allocation.shares.get(bid.bid_id)
            quota, weight = quotas[name], weights[name]
            if name in errors:
                error = errors[name]
                what = "VM not made" if name not in present else "share NOT enforced"
                texts[bid.bid_id] = (f"{what}: {type(error).__name__}: {error}; the bid is live and pays: tried again "
                                     f"at the next pass")
                done.problems.append(f"{name}: {error}")
                log.debug("auctioneer %s: bid %s: %s", self.host, bid.bid_id, texts[bid.bid_id])
                continue
            if name in busy:
                texts[bid.bid_id] = f"VM {name} being made (capped from its first instruction)"
            elif share is None:
                texts[bid.bid_id] = (f"below the reserve price: no share; VM {name} held at the least "
                                     f"({'cap ' + str(quota) + ' µs per ' + str(allocation.period_us) if capped else 'weight ' + str(weight)})")
            elif capped:
                texts[bid.bid_id] = (f"VM {name} capped at {quota} µs of CPU per {allocation.period_us} µs "
                                     f"({share.ppm / 10_000:.2f} % of {settings.capacity_cpus} CPU(s)"
                                     f"{'; raised to libvirt least' if share.quota_clamped else ''})")
            else:
                texts[bid.bid_id] = (f"VM {name} weight {weight} (cpu_shares; {share.ppm / 10_000:.2f} % of "
                                     f"{settings.capacity_cpus} CPU(s) when all are busy, work-conserving)")
        self._record(texts, {name: bid for name, bid in live.items()}, market, now)
        done.live = len(live)
        if self.relay is not None:
            self.relay.follow({bid.bid_id: name for name, bid in live.items() if name not in busy})
        return done

    # -- VMs being made or removed, each in a thread of its own

    def _start(self, name: str, kind: str, wanted: tuple | None, call: Callable[[], object]) -> None:
        """``call()`` (``kind`` create or remove of VM ``name``) in a thread; its outcome is kept for the next
        pass (``_finished``), which the thread wakes (``woken``)."""
        pay_for_use = self.part.mode is core.Mode.PAY_FOR_USE

        def work() -> None:
            error = None
            try:
                call()
            except (GridcreditError, KeyError) as failure:
                error = failure
            except Exception as failure:  # noqa: BLE001 — a bug: said in the bid, never a lost thread
                log.exception("auctioneer %s: %s of VM %s failed", self.host, kind, name)
                error = GridcreditError(f"{type(failure).__name__}: {failure}")
            # pay-for-use: the CPU time it starts with (what the guest uses is counted from there)
            mark = self._cpu(name) if kind == "create" and error is None and pay_for_use else 0
            with self._busy_lock:
                self._busy.pop(name, None)
                self._outcomes[name] = (kind, wanted, error, mark)
            self.woken.set()

        thread = threading.Thread(target=work, name=f"auctioneer-{kind} {name}", daemon=True)
        with self._busy_lock:
            self._busy[name] = thread
        thread.start()

    def _busy_now(self) -> set[str]:
        with self._busy_lock:
            return set(self._busy)

    def _wait(self, names: list[str]) -> None:
        with self._busy_lock:
            threads = [self._busy[name] for name in names if name in self._busy]
        for thread in threads:
            thread.join()

    def _finished(self, done: Pass, present: set[str], busy: set[str]) -> dict[str, Exception]:
        """The VMs made or removed since the last pass: in ``done.created``/``removed``, in or out of
        ``present``, out of ``busy``, a made VM's cap remembered as applied; returns those that failed,
        name → error (not tried again in this pass: at the next one)."""
        with self._busy_lock:
            outcomes, self._outcomes = self._outcomes, {}
        failed = {}
        for name, (kind, wanted, error, mark) in sorted(outcomes.items()):
            busy.discard(name)
            if error is not None:
                failed[name] = error
                if kind == "remove":
                    done.problems.append(f"remove {name}: {error}")
                    log.debug("auctioneer %s: VM %s not removed (%s)", self.host, name, error)
            elif kind == "create":
                done.created.append(name)
                self._applied[name] = wanted
                self._cpu_marks[name] = mark
                present.add(name)
            else:
                done.removed.append(name)
                self._applied.pop(name, None)
                self._cpu_marks.pop(name, None)
                present.discard(name)
        return failed

    def _advanced(self, now: int) -> core.Market:
        """The market advanced to now (bids past their maximum duration ended) — stored when that changed
        anything, unless the open interval ended (the next boundary does it)."""
        market = self.store.market(now_us=now)
        if now >= market.interval_end_us or not any(bid.max_end_us <= now for bid in market.live_bids()):
            return market
        try:
            return self.store.change(lambda tx, current: (lambda moved: (moved, moved))(
                core.advance(current, now_us=now)), now_us=now)
        except DomainError:
            return self.store.market(now_us=now)

    def _cpu(self, name: str) -> int:
        try:
            return self.enforcer.cpu_time_us(name)
        except GridcreditError:
            return 0

    def _record(self, texts: dict[str, str], live: dict, market: core.Market, now: int) -> None:
        """Each bid's ``enforced`` text and VM; records of bids the market ended say so."""
        changes = {}
        for name, bid in live.items():
            text = texts.get(bid.bid_id, "")
            changes[bid.bid_id] = (lambda record, text=text, name=name: record if (
                record.enforced == text and record.vm_name == name) else replace(
                record, enforced=text, vm_name=name, updated_us=now))
        for bid_id, at_us in market.cancels_due:
            changes[bid_id] = (lambda record, at_us=at_us: replace(
                record, enforced=f"cancelled at {at_us} µs: VM removed; it pays until then, settled once the Bank "
                                 f"answers interval {market.pending_interval}'s batch", updated_us=now)
                if record.state != "ended" and not record.enforced.startswith("cancelled at") else record)
        for bid in market.bids.values():
            if not bid.live:
                changes[bid.bid_id] = (lambda record, bid=bid: record if record.state == "ended" else replace(
                    record, state="ended", enforced=f"VM removed: the bid ended ({bid.end_reason.value if bid.end_reason else 'ended'})",
                    updated_us=now))
        self.store.update_records(changes)

    # -- the task

    def heartbeat(self) -> None:
        """Tell the directory (``directory_url``) this host's market, once per interval."""
        if self.directory is None:
            return
        now = self.clock()
        market = self.store.market(now_us=now)
        prices = self.store.prices(now_us=now)
        try:
            self.directory(total_rate_ucps=market.allocation.total_ucps, hour_average_price_ucps=prices.hour_average_ucps,
                           live_bids=len(market.live_bids()))
        except GridcreditError as error:
            log.warning("auctioneer %s: the directory was not told (%s: %s)", self.host, type(error).__name__, error)

    def run(self, stop) -> None:
        """Boundaries on time (this thread) and enforcement whenever the market changed (a thread of its own:
        making VMs takes seconds, and must not hold back the next interval's close), until ``stop``. A batch
        the Bank did not answer is sent again every BANK_RETRY_S until it is (the market cannot close the
        next interval before: PlaceBid and ChangeBid wait for it, MarketBusy after their 10 s)."""
        enforcing = threading.Thread(target=self._enforce_forever, args=(stop,), name="auctioneer-enforcement",
                                     daemon=True)
        enforcing.start()
        next_boundary = 0
        while not stop.is_set():
            now = self.clock()
            if now >= next_boundary:
                next_boundary = (now // self.interval_us + 1) * self.interval_us
                try:
                    done = self.boundary()
                    self._log(done, "interval")
                    if not done.problems:
                        self.heartbeat()
                    elif any(problem.startswith("bank") for problem in done.problems):
                        # the next interval cannot be closed before the answer: new rates wait meanwhile
                        next_boundary = min(next_boundary, now + BANK_RETRY_S * US_PER_S)
                except (StoreError, GridcreditError) as error:
                    log.warning("auctioneer %s: the interval not closed (%s: %s); tried again at the next boundary",
                                self.host, type(error).__name__, error)
            stop.wait(max(0.01, (next_boundary - self.clock()) / US_PER_S))
        enforcing.join(HYPERVISOR_TIMEOUT_S + 5)

    def _enforce_forever(self, stop) -> None:
        """Enforce whenever the market's document changed (every transition and every close changes it: a
        PlaceBid in any worker is seen within POLL_S) or a VM was made or removed; after a problem, again at
        the next interval at the latest. A pass does not wait for the VMs it starts or removes
        (``enforce(wait=False)``); the hypervisor's VMs are listed at the first pass, then at most once an
        interval (the boundary's pass, as a rule) and after a problem — never while a VM of ours is being made
        or removed (the first pass after)."""
        seen, retry_at, list_at = -1, 0.0, 0.0
        while not stop.is_set():
            try:
                version = self.store.version()
                moment = time.monotonic()
                if version != seen or self.woken.is_set() or moment >= retry_at:
                    seen = version
                    self.woken.clear()
                    # not while VMs are being made or removed: libvirt answers a listing only once they are
                    # (a removal here held one 2 s, and a bid placed meanwhile waited for it); the next pass lists
                    listing = moment >= list_at and not self._busy_now()
                    done = self.enforce(wait=False, listing=listing)
                    self._log(done, "enforcement")
                    moment = time.monotonic()
                    if done.problems:
                        retry_at, list_at = moment + self.settings.interval_s, moment
                    else:
                        retry_at = moment + 86_400
                        list_at = moment + self.settings.interval_s if listing else list_at
            except (StoreError, GridcreditError) as error:
                log.warning("auctioneer %s: enforcement not done (%s: %s); tried again", self.host,
                            type(error).__name__, error)
                retry_at, list_at = time.monotonic() + self.settings.interval_s, 0.0
                self.woken.clear()                  # (what was made is recorded by the next pass)
            self.woken.wait(POLL_S)

    def _count(self, done: Pass, what: str) -> None:
        """The host's counters (/metrics): intervals closed, Bank items sent and refused, batches sent again,
        VMs made and removed, hypervisor and Bank problems."""
        from gridcredit import metrics

        counts = metrics.counter("gridcredit_auctioneer_events_total", "The allocation loop's work, by event",
                                 ("event",))
        for event, number in (("interval_closed", len(done.closed)), ("bank_item", done.items),
                              ("bank_item_refused", done.refused), ("batch_sent_again", done.resent),
                              ("vm_made", len(done.created)), ("vm_removed", len(done.removed))):
            if number:
                counts.labels(event).inc(number)
        for problem in done.problems:
            counts.labels("bank_problem" if problem.startswith("bank") else "hypervisor_problem").inc()

    def _log(self, done: Pass, what: str) -> None:
        """One line for a pass that did something or met a new problem (a problem is said once, until it
        clears: the bids' ``enforced`` say it meanwhile)."""
        self._count(done, what)
        new = [problem for problem in done.problems if problem not in self._problems]
        if what == "enforcement":
            cleared = self._problems - set(done.problems)
            if cleared and not done.problems:
                log.info("auctioneer %s: the hypervisor's problems cleared (%d)", self.host, len(cleared))
            self._problems = set(done.problems)
        if done.closed or done.created or done.removed or done.resent or new:
            log.log(logging.WARNING if new else logging.INFO,
                    "auctioneer %s: %s: interval(s) closed %s, %d Bank item(s) (%d refused, %d batch sent again), "
                    "VMs made %s, removed %s, %d live%s", self.host, what, done.closed or "none", done.items,
                    done.refused, done.resent, done.created or "none", done.removed or "none", done.live,
                    f"; problems: {'; '.join(new)}" if new else "")


def gauges(part: Auctioneer, config) -> list:
    """/metrics: the host's live bids, the Σ of their rates, the current and the hour's average price (µcr/s),
    and whether a batch awaits the Bank's answer."""
    from gridcredit.metrics import Gauge

    if not part.enabled:
        return []
    moment = now_us()
    market = part.market.market(now_us=moment)
    prices = part.market.prices(now_us=moment)
    total = market.allocation.total_ucps
    return [Gauge("gridcredit_auctioneer_live_bids", "Live bids on this host", len(market.live_bids())),
            Gauge("gridcredit_auctioneer_total_rate_ucps", "Sum of the live bids' rates at or above the reserve "
                  "(micro-credits per second)", total),
            Gauge("gridcredit_auctioneer_price_ucps", "The current price: sum of rates / capacity (µcr/s per CPU)",
                  total // part.settings.capacity_cpus),
            Gauge("gridcredit_auctioneer_hour_average_price_ucps", "The price's average over the last hour",
                  prices.hour_average_ucps),
            Gauge("gridcredit_auctioneer_batch_unanswered", "1 while an interval's batch awaits the Bank's answer",
                  int(market.pending_interval is not None))]


def directory_heartbeat(part: Auctioneer, config) -> Callable[..., None] | None:
    """The directory's Register for this host (``directory_url``), or None."""
    settings = part.settings
    if not settings.directory_url or part.credential is None:
        return None
    from ..directory.client import DirectoryClient

    client = DirectoryClient(settings.directory_url, credential=part.credential, trust_dir=part.trust_dir,
                             timeout_s=10, retries=1)
    url = settings.public_url or f"https://localhost:{config.server.port}"
    ttl_s = min(DIRECTORY_TTL_S_MAX, max(DIRECTORY_TTL_S_MIN, DIRECTORY_TTL_INTERVALS * settings.interval_s))

    def register(*, total_rate_ucps: int, hour_average_price_ucps: int, live_bids: int) -> None:
        client.register(settings.host_id, auctioneer_url=url, capacity_cpus=settings.capacity_cpus,
                        total_rate_ucps=total_rate_ucps, hour_average_price_ucps=hour_average_price_ucps,
                        live_bids=live_bids, interval_s=settings.interval_s, ttl_s=ttl_s,
                        reserve_price_ucps=settings.reserve_ucps)
    return register


def allocate_forever(context: TaskContext) -> None:
    """The BackgroundTask: this host's allocation loop (one worker holds it), with the console relay."""
    part: Auctioneer = context.part
    if not part.enabled:
        return
    from .console import ConsoleRelay

    enforcer = enforcer_for(part)
    relay = ConsoleRelay(part.console_dir, enforcer.open_console)
    relay.start(context.stop)
    bank = None if part.bank is None else bank_of(part.bank)
    AllocationLoop(part, bank, enforcer, relay=relay, directory=directory_heartbeat(part, context.config)
                   ).run(context.stop)
