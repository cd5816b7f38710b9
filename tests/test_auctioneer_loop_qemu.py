"""The Auctioneer end to end on real QEMU guests (libvirtd of scripts/libvirt.sh): a host serving the Bank and the
Auctioneer, bidders placing bids over signed SOAP on holds of theirs, the allocation loop (once per host) making
each bid's VM from the "spin" template (a boot sector that uses a whole CPU until capped and echoes its console)
and capping it; libvirt's CPU time measures what each got.

- three bids at 1:2:5 on a host sold as one CPU: over a 10 s window their fractions are within 2 points of
  1/8, 2/8, 5/8; the 5's hold runs out, its bid ends, its VM goes and the others rise to 1/3, 2/3;
- the host owner's account gains exactly what the bidders' holds lose; the audit is clean;
- the bidder reaches their VM's console through ConsoleWrite/ConsoleRead; another bidder and a stranger cannot;
- kill -9 of the whole host mid-interval, then a restart: the VMs are found again by their prefix (an orphan of
  the prefix removed, a missing one made again), every interval is charged once (one Bank transaction per
  request id, each bid's charge floor(rate × live time) including the time the host was down).

Each fraction is printed with the load average (the 2 CPUs are shared).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from gridcredit.errors import RemoteFault
from gridcredit.services.auctioneer.client import AuctioneerClient
from gridcredit.services.bank.client import BankClient

from bank_fixtures import BankUsers, bank_host
from libvirt_fixtures import STATE_ROOT, libvirt_host, load_average, sold_cpuset  # noqa: F401 (fixtures)
from test_auctioneer_service import CREDIT, OWNER_ACCOUNT, auctioneer_env, bank, hold, open_accounts, wait_for

pytestmark = [pytest.mark.slow]

WINDOW_S = 10.0
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Qemu Market Admin"), "owner": pki.user("Qemu Market Owner"),
            "alice": pki.user("Qemu Alice"), "bob": pki.user("Qemu Bob"), "carol": pki.user("Qemu Carol"),
            "stranger": pki.user("Qemu Stranger")}


@pytest.fixture(scope="module")
def vm_dir(libvirt_host):
    STATE_ROOT.mkdir(mode=0o711, exist_ok=True)
    STATE_ROOT.chmod(0o711)
    folder = Path(tempfile.mkdtemp(prefix="market-", dir=STATE_ROOT))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def prefix():
    PREFIX_OF_THIS_MODULE[:] = [f"ms{os.getpid() % 100_000}-"]
    return PREFIX_OF_THIS_MODULE[0]


@pytest.fixture(scope="module")
def hypervisor(libvirt_host, vm_dir, prefix):
    from gridcredit.services.auctioneer.hypervisor import Hypervisor

    connection = Hypervisor(libvirt_host, call_timeout_s=30, state_dir=vm_dir)
    yield connection
    for name in connection.list_vms(prefix):
        connection.remove_vm(name)
    connection.close()


@contextlib.contextmanager
def market_host(pki, people, root: Path, vm_dir: Path, prefix: str, libvirt_host: str, host_id: str,
                **settings: str) -> Iterator:
    """A host serving the Bank and the Auctioneer ``host_id`` on real QEMU guests (``settings``: more
    GRIDCREDIT_AUCTIONEER_* values, by their lower-case suffix), the bidders' accounts open and funded."""
    users = BankUsers(people["admin"], pki.user("Qemu Market Admin Two"), pki.user("Qemu Market Auditor"), (), (),
                      (), (), pki.user("Qemu Market Service"), people["stranger"])
    env = auctioneer_env(people, extra={"GRIDCREDIT_AUCTIONEER_LIBVIRT_URI": libvirt_host,
                                        "GRIDCREDIT_AUCTIONEER_VM_DIR": str(vm_dir),
                                        "GRIDCREDIT_AUCTIONEER_VM_PREFIX": prefix,
                                        "GRIDCREDIT_AUCTIONEER_CPUSET": sold_cpuset(),
                                        "GRIDCREDIT_AUCTIONEER_HOST_ID": host_id,
                                        **{f"GRIDCREDIT_AUCTIONEER_{key.upper()}": value
                                           for key, value in settings.items()}})
    with bank_host(root, "embedded", users, pki, extra_env=env) as running:
        open_accounts(running, people)
        admin = BankClient(running.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
        admin.create_account("carol-acct", project="market", owner_dn=people["carol"].dn)
        admin.mint("carol-acct", 10_000)
        yield running


@pytest.fixture(scope="module")
def host(pki, people, tmp_path_factory, vm_dir, prefix, hypervisor, libvirt_host):
    with market_host(pki, people, tmp_path_factory.mktemp("auctioneer-qemu"), vm_dir, prefix, libvirt_host,
                     "host-q") as running:
        yield running


def client(host, who) -> AuctioneerClient:
    return AuctioneerClient(host.url, credential=who.credential, trust_dir=host.pki.trust_dir)


HOST_TAKE_MAX = 0.10       # more of the sold CPU taken by anything else than this: too busy to tell (as hyper's tests)


def measured_within(hypervisor, names: dict, targets: dict, what: str, *, windows: int = 3) -> dict:
    """Fractions of the sold CPU over WINDOW_S windows, checked as tests/test_auctioneer_hypervisor_qemu.py checks
    them: each guest's part of the guests' sum within 2 points of its share of ``targets`` (relative), and its
    fraction within 2 points of its target plus what the sold CPU gave to anything else meanwhile (/proc/stat busy
    − the guests: other processes of this 2-core machine, another test's VMs), the CPU never idle. A window that
    fails (or in which other VMs ran) is measured again, at most ``windows`` times; each is printed with the load."""
    from libvirt_fixtures import measure_window, others_running

    labels = {name: who for who, name in names.items()}
    for attempt in range(windows):
        others = others_running(hypervisor, PREFIX_OF_THIS_MODULE[0])    # (not waited for: holds run out)
        window = measure_window(hypervisor, list(names.values()), WINDOW_S)
        fractions = {labels[name]: value for name, value in window.fractions.items()}
        total = sum(fractions[who] for who in targets)
        print(f"{what} (window {attempt + 1}): {text(fractions)}; sold CPU busy {window.cpu_busy or 0:.3f}, idle "
              f"{window.cpu_idle or 0:.3f}, to others {window.host_take:.3f}" + (f"; other VMs {others}" if others else ""))
        ok = (window.cpu_idle is not None and window.cpu_idle <= 0.02 and window.host_take <= HOST_TAKE_MAX
              and all(abs(fractions[who] / total - share / sum(targets.values())) <= TOLERANCE
                      and abs(fractions[who] - share) <= TOLERANCE + window.host_take
                      for who, share in targets.items()))
        if ok:
            return fractions
    raise AssertionError(f"{what}: not within {TOLERANCE} of {targets} (relative, and absolute with what others "
                         f"took) in {windows} windows: {text(fractions)}, to others {window.host_take:.3f}")


PREFIX_OF_THIS_MODULE: list[str] = []


def text(fractions: dict) -> str:
    return ", ".join(f"{label} {value:.4f}" for label, value in fractions.items()) + f" (load {load_average()})"


def balances(host, people) -> dict:
    return {who: bank(host, people[who]).get_balance(account).total
            for who, account in (("owner", OWNER_ACCOUNT), ("alice", "alice-acct"), ("bob", "bob-acct"),
                                 ("carol", "carol-acct"))}


def capped(hypervisor, bids) -> bool:
    """Every bid's VM runs with the cap of its share, and the bid says so."""
    if not all("capped at" in bid.enforced for bid in bids):
        return False
    try:
        return all(hypervisor.scheduler(bid.vm_name).quota_us == 100_000 * bid.share_ppm // 1_000_000 or
                   abs(hypervisor.scheduler(bid.vm_name).quota_us - 100_000 * bid.share_ppm // 1_000_000) <= 1
                   for bid in bids)
    except Exception:      # noqa: BLE001 — not made yet
        return False


def test_shares_1_2_5_then_a_hold_runs_out_money_and_consoles(host, people, hypervisor, prefix):
    before = balances(host, people)
    rates = {"alice": 1, "bob": 2, "carol": 5}
    amounts = {"alice": 600, "bob": 600, "carol": 160}     # carol's runs out after ~32 s: after a second window if need be
    bids = {}
    placed = time.monotonic()
    for who, rate in rates.items():
        hold_id = hold(host, people[who], f"{who}-acct", amount=amounts[who])
        bids[who] = client(host, people[who]).place_bid(hold_id, template="small", rate_ucps=rate * CREDIT,
                                                        max_duration_s=600)
    views = wait_for(lambda: (lambda found: found if capped(hypervisor, found) else None)(
        [client(host, people[who]).bid(bids[who].bid_id) for who in rates]), timeout_s=60)
    print(f"3 bids placed -> their VMs made and capped: {time.monotonic() - placed:.2f} s (load {load_average()})")
    assert [view.share_ppm for view in views] == [125_000, 250_000, 625_000]
    assert all("capped at" in view.enforced for view in views), [view.enforced for view in views]
    names = {who: view.vm_name for who, view in zip(rates, views)}
    time.sleep(1.5)                      # the guests booted and spin
    measured_within(hypervisor, names, {who: rate / 8 for who, rate in rates.items()}, "1:2:5 on one CPU")

    # a rate change reaches the guest's cap at once
    started = time.monotonic()
    bob_changed = client(host, people["bob"]).change_bid(bids["bob"].bid_id, rate_ucps=3 * CREDIT)
    assert bob_changed.share_ppm in (333_333, 750_000)          # 3 of 1 + 3 + 5 (or of 1 + 3: carol ended)
    wait_for(lambda: abs(hypervisor.scheduler(names["bob"]).quota_us - bob_changed.share_ppm // 10) <= 1,
             timeout_s=10, step_s=0.05)
    print(f"a rate change -> its cap applied: {time.monotonic() - started:.2f} s (load {load_average()})")
    client(host, people["bob"]).change_bid(bids["bob"].bid_id, rate_ucps=2 * CREDIT)

    # the bidder reaches their VM's console; another bidder and a stranger do not
    alice = client(host, people["alice"])
    offset = alice.console_read(bids["alice"].bid_id, offset=2**62).next_offset     # the guest booted long ago
    alice.console_write(bids["alice"].bid_id, b"hello-vm")
    echoed = wait_for(lambda: (lambda out: out if b"hello-vm" in out else b"")(
        alice.console_read(bids["alice"].bid_id, offset=offset, wait_ms=1000).data), timeout_s=20)
    assert b"hello-vm" in echoed
    for who in ("bob", "stranger"):
        for call in (lambda: client(host, people[who]).console_read(bids["alice"].bid_id),
                     lambda: client(host, people[who]).console_write(bids["alice"].bid_id, b"intruder")):
            with pytest.raises(RemoteFault) as fault:
                call()
            assert fault.value.code == "NotAuthorized"

    # carol's hold runs out: her bid ends, her VM goes, the others rise to 1/3 and 2/3
    carol = client(host, people["carol"])
    ended = wait_for(lambda: (lambda view: view if not view.live else None)(carol.bid(bids["carol"].bid_id)),
                     timeout_s=60)
    assert ended.end_reason == "hold-exhausted"
    wait_for(lambda: names["carol"] not in hypervisor.list_vms(), timeout_s=30)
    views = wait_for(lambda: (lambda found: found if capped(hypervisor, found) and found[0].share_ppm == 333_333
                              else None)([client(host, people[who]).bid(bids[who].bid_id) for who in ("alice", "bob")]),
                     timeout_s=30)
    time.sleep(0.5)
    rest = {who: names[who] for who in ("alice", "bob")}
    measured_within(hypervisor, rest, {"alice": 1 / 3, "bob": 2 / 3}, "1:2 after the 5's hold ran out")

    # money: what the holds lost, the owner gained; the audit is clean
    for who in ("alice", "bob"):
        client(host, people[who]).cancel_bid(bids[who].bid_id)
    wait_for(lambda: all(bank(host, people[who]).get_hold(bids[who].hold_id).state in ("settled", "charged-out")
                         for who in rates), timeout_s=30)
    finals = [client(host, people[who]).bid(bids[who].bid_id) for who in rates]     # read after the settlement
    after = balances(host, people)
    losses = {who: before[who] - after[who] for who in rates}
    assert losses == {who: view.charged for who, view in zip(rates, finals)}
    assert after["owner"] - before["owner"] == sum(losses.values())
    assert losses["carol"] <= amounts["carol"]
    wait_for(lambda: not hypervisor.list_vms(prefix), timeout_s=30)
    report = BankClient(host.url, credential=host.users.auditor.credential, trust_dir=host.pki.trust_dir).audit()
    assert report.clean, report.findings


def history(client: BankClient, account: str) -> list:
    found, offset = [], 0
    while offset is not None:
        page = client.history(account, offset=offset, limit=500)
        found.extend(page.transactions)
        offset = page.next_offset
    return found


def test_kill_9_mid_interval_then_restart_charges_each_interval_once(host, people, hypervisor, prefix):
    alice, bob = client(host, people["alice"]), client(host, people["bob"])
    before = balances(host, people)
    first = alice.place_bid(hold(host, people["alice"], "alice-acct", amount=500), template="small",
                            rate_ucps=3 * CREDIT, max_duration_s=600)
    second = bob.place_bid(hold(host, people["bob"], "bob-acct", amount=500), template="small",
                           rate_ucps=1 * CREDIT, max_duration_s=600)
    wait_for(lambda: capped(hypervisor, [alice.bid(first.bid_id), bob.bid(second.bid_id)]), timeout_s=60)
    time.sleep(2.5 - (time.time() % 1) + 0.4)          # in the middle of an interval
    host.kill9()
    # while it is down: bob's VM disappears, and a VM of the prefix that no bid owns appears
    from gridcredit.services.auctioneer.hypervisor import DEFAULT_TEMPLATES

    hypervisor.remove_vm(second.vm_name)
    orphan = f"{prefix}host-q-b-orphan"
    hypervisor.create_vm(orphan, DEFAULT_TEMPLATES["idle"], cpuset=sold_cpuset(), quota_us=1_000)
    time.sleep(2.0)
    host.start()
    wait_for(lambda: orphan not in hypervisor.list_vms(prefix) and second.vm_name in hypervisor.list_vms(prefix),
             timeout_s=60)
    wait_for(lambda: capped(hypervisor, [alice.bid(first.bid_id), bob.bid(second.bid_id)]), timeout_s=30)
    time.sleep(2.0)
    alice.cancel_bid(first.bid_id)
    bob.cancel_bid(second.bid_id)
    wait_for(lambda: all(bank(host, people[who]).get_hold(view.hold_id).state == "settled"
                         for who, view in (("alice", first), ("bob", second))), timeout_s=30)
    finals = [alice.bid(first.bid_id), bob.bid(second.bid_id)]      # read after the settlement
    after = balances(host, people)
    for who, view, rate in (("alice", finals[0], 3), ("bob", finals[1], 1)):
        live_us = view.ended_us - view.started_us
        assert view.charged == rate * CREDIT * live_us // 10**12, (who, view)
        assert before[who] - after[who] == view.charged, who
    assert after["owner"] - before["owner"] == finals[0].charged + finals[1].charged
    # one Bank transaction per (bid, interval) request id: nothing charged twice across the crash
    for who, view in (("alice", finals[0]), ("bob", finals[1])):
        charges = [t for t in history(bank(host, people[who]), f"{who}-acct")
                   if t.hold_id == view.hold_id and t.kind in ("charge", "settle")]
        ids = [t.request_id for t in charges]
        assert len(ids) == len(set(ids)) and all(i.startswith(f"auction:host-q:{view.bid_id}:") for i in ids), ids
        assert sum(t.amount for t in charges) == view.charged, who
    report = BankClient(host.url, credential=host.users.auditor.credential, trust_dir=host.pki.trust_dir).audit()
    assert report.clean, report.findings


@pytest.fixture(scope="module")
def conserving_host(pki, people, tmp_path_factory, vm_dir, prefix, hypervisor, libvirt_host):
    with market_host(pki, people, tmp_path_factory.mktemp("auctioneer-qemu-wc"), vm_dir, prefix, libvirt_host,
                     "host-w", mode="work-conserving") as running:
        yield running


def test_work_conserving_an_idle_bidders_cpu_goes_to_the_busy_ones(conserving_host, people, hypervisor, prefix):
    host = conserving_host
    wanted = {"alice": (1, "small"), "bob": (3, "small"), "carol": (4, "quiet")}     # carol's guest halts
    bids = {who: client(host, people[who]).place_bid(hold(host, people[who], f"{who}-acct", amount=300),
                                                     template=template, rate_ucps=rate * CREDIT, max_duration_s=600)
            for who, (rate, template) in wanted.items()}
    views = wait_for(lambda: (lambda found: found if all(
        view.vm_name in hypervisor.list_vms(prefix) and "weight" in view.enforced for view in found) else None)(
        [client(host, people[who]).bid(bids[who].bid_id) for who in wanted]), timeout_s=60)
    shares = {who: hypervisor.scheduler(view.vm_name).shares for who, view in zip(wanted, views)}
    assert shares == {"alice": 262_144 // 8, "bob": 262_144 * 3 // 8, "carol": 262_144 // 2}
    time.sleep(1.5)
    # the idle guest's weight (half) goes to the busy ones: 1:3 of the whole CPU, less what others took of it
    fractions = measured_within(hypervisor, {who: view.vm_name for who, view in zip(wanted, views)},
                                {"alice": 0.25, "bob": 0.75}, "work-conserving 1:3 busy + 4 idle")
    assert fractions["carol"] < 0.03, text(fractions)
    for who in wanted:
        client(host, people[who]).cancel_bid(bids[who].bid_id)
    wait_for(lambda: not hypervisor.list_vms(prefix + "host-w-"), timeout_s=30)
