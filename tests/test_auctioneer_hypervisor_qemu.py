"""The Auctioneer's enforcement on a REAL libvirtd + QEMU (TCG) (issue 14, point 3 and 4).

Guests are the one-sector boot images of services/auctioneer/guest.py: "spin" uses a whole CPU until capped
and echoes its console; "idle" halts. Every VM is pinned to the one sold CPU (the last CPU of the machine),
so they compete only among themselves; scripts/libvirt.sh gives the VMs' cgroup priority there over the
host's own processes (other tests), so absolute fractions hold on a busy machine too. Each assertion
message carries the load average.
"""
from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from gridcredit.cli_support import error_text

from libvirt_fixtures import (Window, libvirt_host, load_average, measure_window, others_running,  # noqa: F401
                              vm_factory, wait_for_quiet)

from gridcredit.services.auctioneer.hypervisor import (
    DEFAULT_TEMPLATES, Hypervisor, HypervisorTimeout, HypervisorUnavailable, InvalidVmRequest, NoSuchVm, Scheduler,
    console_exchange)

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

PERIOD_US = 100_000
WINDOW_S = 10.0            # the measuring window
TOLERANCE = 0.02           # 2 points of one CPU
BOOT_S = 2.0               # SeaBIOS and the boot sector, before measuring


def _window(factory, names: dict) -> tuple[Window, str]:
    """One WINDOW_S window: the VMs' CPU fractions and how busy the sold CPU was, with a text of them, the
    load and any other VMs that ran meanwhile (another engineer's test on the same libvirtd)."""
    for _attempt in range(3):        # a window another test's VMs ran in is measured again (never under CI)
        others = wait_for_quiet(factory.hypervisor, factory.prefix)
        window = measure_window(factory.hypervisor, list(names.values()), WINDOW_S, factory.cpuset)
        others = sorted(set(others) | set(others_running(factory.hypervisor, factory.prefix)))
        if not others:
            break
    text = ", ".join(f"{label} {window.fractions[name]:.4f}" for label, name in names.items())
    text += (f"; sum {sum(window.fractions.values()):.4f}; CPU {factory.cpuset} busy {window.cpu_busy:.4f}, idle "
             f"{window.cpu_idle:.4f}, to others {window.host_take:.4f} (load {load_average()}")
    return window, text + (f"; other VMs running: {', '.join(others)})" if others else ")")


HOST_TAKE_MAX = 0.10       # more of the sold CPU taken by the host than this: too busy to tell absolute shares


def _assert_shares(window: Window, expected: dict, text: str, *, unsold: float = 0.0) -> None:
    """Each VM's fraction of the sold CPU within 2 points of what it was sold, relative to the others' (its part
    of their sum) AND absolute. The shares add up to the whole CPU and the guests always want more, so the CPU
    is never idle; what it gave to anything else (host processes — CFS leaves n runnable ones about
    1024·n/(262144 + 1024·n) of it against the VMs' cgroup: ~2-8 % at load 10-15 on 2 CPUs, ~0 when nothing else
    runs —, interrupts, ``unsold`` guests) is measured (/proc/stat busy − the VMs' CPU time) and comes out of the
    share that could still use it: the absolute check allows that much on top of the 2 points. A cap too low leaves
    the CPU idle, caps not applied break the ratio: both fail."""
    fractions = {name: window.fractions[name] for name in expected}
    total = sum(fractions.values())
    assert window.cpu_idle is not None and window.cpu_idle <= 0.02, f"the sold CPU was idle: {text}"
    assert window.host_take <= HOST_TAKE_MAX, f"the host took too much of the sold CPU to tell: {text}"
    allowance = window.host_take + unsold
    for name, share in expected.items():
        assert abs(fractions[name] / total - share / sum(expected.values())) <= TOLERANCE, f"relative: {text}"
        assert abs(fractions[name] - share) <= TOLERANCE + allowance, f"absolute: {text}"


def test_caps_1_2_5_of_one_cpu_then_one_bid_ends_and_the_others_rise(vm_factory):
    """Three spinning guests capped at 12.5/25/62.5 ms per 100 ms of the one sold CPU hold 1/8, 2/8, 5/8 of it
    over a 10 s window (within 2 points); the 5/8 one is removed (its bid ended) and the others' caps set to
    1/3 and 2/3: they follow over the next window."""
    hypervisor = vm_factory.hypervisor
    names = {rate: vm_factory.name(f"r{rate}") for rate in (1, 2, 5)}
    for rate, name in names.items():
        vm_factory.create(name, "spin", quota_us=PERIOD_US * rate // 8, period_us=PERIOD_US)
    for rate, name in names.items():
        assert hypervisor.scheduler(name) == Scheduler(PERIOD_US, PERIOD_US * rate // 8, 1024)
    time.sleep(BOOT_S)
    window, text = _window(vm_factory, names)
    print("caps 1:2:5:", text)
    _assert_shares(window, {name: rate / 8 for rate, name in names.items()}, text)

    hypervisor.remove_vm(names.pop(5))
    for rate, name in names.items():
        assert hypervisor.set_cap(name, PERIOD_US * rate // 3, PERIOD_US) == (PERIOD_US * rate // 3, PERIOD_US)
    window, text = _window(vm_factory, names)
    print("caps 1:2 after the 5 ended:", text)
    _assert_shares(window, {name: rate / 3 for rate, name in names.items()}, text)


def _emulator_cpus(hypervisor, name: str) -> set[int]:
    pins = hypervisor._call("read the emulator pinning", lambda connection: connection.lookupByName(
        name).emulatorPinInfo(hypervisor._libvirt.VIR_DOMAIN_AFFECT_LIVE))
    return {cpu for cpu, pinned in enumerate(pins) if pinned}


def test_vms_starting_take_no_cpu_from_the_guests_on_the_sold_cpu_and_run_pinned_to_it_after(vm_factory):
    """A VM's start (QEMU's own work: libvirt asks it ~400 questions about its CPU) runs on the host's unsold
    CPUs, not on the sold one: a guest sold the whole CPU keeps it while three VMs start at once (with their
    emulator on the sold CPU it lost ~half of it: 0.47-0.53 at load 5-7). Once started, a VM's emulator threads
    are pinned to the sold CPU like its vCPU (bidders compete only among themselves)."""
    hypervisor = vm_factory.hypervisor
    sold = {int(vm_factory.cpuset)}
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: nothing unsold to start VMs on")
    paying = vm_factory.name("paying")
    vm_factory.create(paying, "spin", quota_us=PERIOD_US)
    time.sleep(0.5)
    names = [vm_factory.name(f"new{number}") for number in range(3)]
    before, started = hypervisor.cpu_time_us(paying), time.monotonic()
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(3) as pool:           # idle guests: after their start they use (almost) nothing
        list(pool.map(lambda name: vm_factory.create(name, "idle", quota_us=PERIOD_US // 4), names))
    elapsed = time.monotonic() - started
    kept = (hypervisor.cpu_time_us(paying) - before) / 1e6 / elapsed
    assert kept >= 0.75, (f"the paying guest got {kept:.2f} of the sold CPU while 3 VMs started ({elapsed:.2f} s; "
                          f"load {load_average()}; other VMs: {others_running(hypervisor, vm_factory.prefix)})")
    for name in [paying, *names]:
        assert _emulator_cpus(hypervisor, name) == sold, name


def test_work_conserving_weights_give_an_idle_guests_cpu_to_the_busy_ones(vm_factory):
    """No caps, weights 1:3:4 with the weight-4 guest idle: the two busy guests share the whole sold CPU
    between them, 1:3 (their fractions add up to ~1; the idle one uses almost nothing)."""
    hypervisor = vm_factory.hypervisor
    busy_1, busy_3, idle = vm_factory.name("w1"), vm_factory.name("w3"), vm_factory.name("idle")
    vm_factory.create(busy_1, "spin", weight=1024)
    vm_factory.create(busy_3, "spin", weight=3072)
    vm_factory.create(idle, "idle", weight=4096)
    assert hypervisor.scheduler(idle) == Scheduler(PERIOD_US, None, 4096)
    time.sleep(BOOT_S)
    names = {"weight 1": busy_1, "weight 3": busy_3, "idle weight 4": idle}
    window, text = _window(vm_factory, names)
    print("work-conserving 1:3 (+ idle 4):", text)
    assert window.fractions[idle] < 0.03, text
    # the busy two get the whole CPU but what the idle one and the host take, 1:3
    _assert_shares(window, {busy_1: 0.25, busy_3: 0.75}, text, unsold=window.fractions[idle])


def _qemu_threads_cpus(pid: int) -> set[str]:
    return {re.search(r"Cpus_allowed_list:\s*(\S+)", (task / "status").read_text()).group(1)
            for task in Path(f"/proc/{pid}/task").iterdir()}


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":      # LISTEN
                inodes.add(fields[9])
    return inodes


def test_console_echo_through_libvirt_and_no_network_no_port(vm_factory):
    """The owner reaches the guest through libvirt's console stream (its serial port is a pseudo-terminal of
    QEMU's; no socket file in the VM's folder): it echoes. Another local user reaches neither libvirt nor the
    terminal. The VM has no NIC (QEMU started with -nodefaults and no -netdev/-nic), no graphics, opens no TCP
    port, and all its threads are pinned to the sold CPU."""
    hypervisor = vm_factory.hypervisor
    name = vm_factory.name("console")
    vm_factory.create(name, "spin", quota_us=50_000)
    assert sorted(path.name for path in (vm_factory.state_dir / name).iterdir()) == ["disk.img"]
    console = hypervisor.open_console(name)
    try:
        answer = console_exchange(console, b"bid 42 says hello\r\n", until=b"bid 42 says hello\r\n",
                                  timeout_s=30, resend_every_s=1.0)
        assert b"bid 42 says hello\r\n" in answer        # (once or more: it was sent until the guest answered)
        # once it runs, one message gets one echo, at once
        started = time.monotonic()
        assert console_exchange(console, b"0123456789" * 10, until=b"0123456789" * 10) == b"0123456789" * 10
        assert time.monotonic() - started < 2
    finally:
        console.close()
    # another local user (not root, not libvirt-qemu): no libvirt connection, and the terminal is not theirs
    pty = ElementTree.fromstring(hypervisor._call("XML", lambda c: c.lookupByName(name).XMLDesc(0), vm=name)).find(
        "devices/serial/source").get("path")
    assert pty.startswith("/dev/pts/")
    for command in (["virsh", "-c", "qemu:///system", "list"],
                    ["python3", "-c", "import sys; open(sys.argv[1], 'r+b')", pty]):
        stranger = subprocess.run(["runuser", "-u", "nobody", "--", *command], capture_output=True, text=True,
                                  timeout=30)
        assert stranger.returncode != 0, (command, stranger.stdout, stranger.stderr)
    assert "PermissionError" in stranger.stderr, stranger.stderr

    live = ElementTree.fromstring(hypervisor._call("XML", lambda c: c.lookupByName(name).XMLDesc(0), vm=name))
    devices = live.find("devices")
    assert devices.findall("interface") == [] and devices.findall("graphics") == []
    assert [serial.get("type") for serial in devices.findall("serial")] == ["pty"]
    pid = hypervisor.qemu_pid(name)
    command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"-nodefaults" in command_line
    assert not any(re.match(rb"-(netdev|nic|net|vnc|spice)$", argument) for argument in command_line)
    sockets = {re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd)).group(1)
               for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:")}
    assert sockets and not sockets & _listening_tcp_inodes()
    assert _qemu_threads_cpus(pid) == {vm_factory.cpuset}


def test_removal_leaves_nothing_and_a_restarted_auctioneer_finds_its_vms(vm_factory):
    hypervisor = vm_factory.hypervisor
    names = [vm_factory.name("keep"), vm_factory.name("gone")]
    for name in names:
        vm_factory.create(name, "idle")
    again = Hypervisor(hypervisor.uri, call_timeout_s=30, state_dir=vm_factory.state_dir)   # a restarted auctioneer
    try:
        assert again.list_vms(vm_factory.prefix) == sorted(names)
        # a retried create (same template) answers the running VM; another template is refused
        assert again.create_vm(names[0], DEFAULT_TEMPLATES["idle"], cpuset=vm_factory.cpuset).name == names[0]
        with pytest.raises(InvalidVmRequest, match="from template 'idle'"):
            again.create_vm(names[0], DEFAULT_TEMPLATES["spin"], cpuset=vm_factory.cpuset)
    finally:
        again.close()
    gone = names[1]
    pid = hypervisor.qemu_pid(gone)
    assert pid and (vm_factory.state_dir / gone / "disk.img").exists()
    assert hypervisor.remove_vm(gone) is True
    assert hypervisor.list_vms(vm_factory.prefix) == [names[0]]
    assert not (vm_factory.state_dir / gone).exists()
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    leftovers = [path for pattern in (f"/var/run/libvirt/qemu/{gone}.*", f"/var/lib/libvirt/qemu/domain-*-{gone}",
                                      f"/var/log/libvirt/qemu/{gone}.log*", f"/sys/fs/cgroup/*/machine/{gone}.*")
                 for path in Path("/").glob(pattern.lstrip("/"))]
    assert leftovers == []
    assert hypervisor.remove_vm(gone) is False      # idempotent
    with pytest.raises(NoSuchVm):
        hypervisor.set_cap(gone, 10_000)


def test_what_is_left_of_a_vm_that_stopped_by_itself_is_removed(vm_factory):
    """A VM that ended without remove_vm (here destroyed behind the auctioneer's back, as a guest that powers
    off or crashes ends: on_poweroff/on_crash destroy) leaves its folder; remove_leftovers removes it and
    leaves running VMs alone."""
    hypervisor = vm_factory.hypervisor
    running, died = vm_factory.name("alive"), vm_factory.name("died")
    vm_factory.create(running, "idle")
    vm_factory.create(died, "idle")
    hypervisor._call("destroy behind our back", lambda connection: connection.lookupByName(died).destroy(), vm=died)
    assert hypervisor.list_vms(vm_factory.prefix) == [running]
    assert (vm_factory.state_dir / died).is_dir()
    assert hypervisor.remove_leftovers(vm_factory.prefix) == [died]
    assert not (vm_factory.state_dir / died).exists() and (vm_factory.state_dir / running / "disk.img").exists()
    assert list(Path("/var/log/libvirt/qemu").glob(f"{died}.log*")) == []
    assert hypervisor.remove_leftovers(vm_factory.prefix) == []


def test_a_create_that_timed_out_and_came_up_later_is_answered_by_the_retry_with_its_console(vm_factory):
    """createXML outlives the call's deadline (0.3 s; a start takes ~0.5-1 s): HypervisorTimeout, and libvirtd
    starts the VM anyway. Its folder is kept (the old code removed it: the VM ran on with no console socket),
    so the retry answers the running VM and its owner reaches it."""
    hypervisor = vm_factory.hypervisor
    name = vm_factory.name("slow")
    hypervisor.list_vms()                                  # connected with the normal timeout
    hypervisor.call_timeout_s = 0.3
    try:
        for _ in range(5):                                 # under load the lookup before createXML may be the one
            with pytest.raises(HypervisorTimeout) as raised:   # timing out: then try again
                vm_factory.create(name, "spin", quota_us=20_000)
            if str(raised.value).startswith(f"create VM {name}"):
                break
        assert str(raised.value).startswith(f"create VM {name}"), raised.value
    finally:
        hypervisor.call_timeout_s = 30
    deadline = time.monotonic() + 30
    while name not in hypervisor.list_vms(vm_factory.prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hypervisor.list_vms(vm_factory.prefix) == [name]
    vm_factory.create(name, "spin", quota_us=20_000)       # the retry
    console = hypervisor.open_console(name)
    try:
        assert b"late\r\n" in console_exchange(console, b"late\r\n", until=b"late\r\n", timeout_s=30,
                                               resend_every_s=1.0)
    finally:
        console.close()


def test_calls_on_a_vm_that_does_not_exist_raise_no_such_vm(vm_factory):
    hypervisor = vm_factory.hypervisor
    missing = vm_factory.name("never")
    for call in (lambda: hypervisor.set_cap(missing, 25_000), lambda: hypervisor.set_weight(missing, 100),
                 lambda: hypervisor.cpu_time_us(missing), lambda: hypervisor.scheduler(missing)):
        with pytest.raises(NoSuchVm) as raised:
            call()
        assert error_text(raised.value).startswith("NoSuchVm: ") and repr(missing) in str(raised.value)


def _our_libvirtd_clients() -> list[str]:
    """The ids libvirtd gives this process's client connections (virt-admin client-info: unix_process_id)."""
    def virt_admin(*arguments):
        return subprocess.run(["virt-admin", "-c", "libvirtd:///system", *arguments], capture_output=True,
                              text=True, timeout=30, check=True).stdout
    ids = [line.split()[0] for line in virt_admin("srv-clients-list", "libvirtd").splitlines()[2:] if line.strip()]
    return [client for client in ids
            if re.search(rf"unix_process_id\s*:\s*{os.getpid()}\b", virt_admin("client-info", "libvirtd", client))]


def test_a_connection_the_daemon_dropped_is_opened_again(vm_factory):
    """libvirtd closes our client connection (virt-admin client-disconnect; other processes' connections are
    left alone): the next call fails with HypervisorUnavailable or already runs on a new connection, and the
    calls after work."""
    hypervisor = vm_factory.hypervisor
    name = vm_factory.name("reconnect")
    vm_factory.create(name, "idle")
    first = hypervisor._connect()
    ours = _our_libvirtd_clients()
    assert ours, "no libvirtd client connection of this process found"
    for client_id in ours:
        subprocess.run(["virt-admin", "-c", "libvirtd:///system", "client-disconnect", "libvirtd", client_id],
                       capture_output=True, text=True, timeout=30, check=True)
    failures = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            assert hypervisor.list_vms(vm_factory.prefix) == [name]
            break
        except HypervisorUnavailable as error:           # the first call may see the closed connection
            failures.append(str(error))
            time.sleep(0.2)
    assert len(failures) <= 1, failures
    assert hypervisor._connect() is not first
    assert hypervisor.cpu_time_us(name) >= 0


def test_the_libvirt_script_is_idempotent_and_leaves_the_host_as_the_guests_need(libvirt_host):
    """scripts/libvirt.sh start on a running libvirtd only checks (starts nothing); status says both daemons
    run; /dev/kvm is root:kvm 0660 (else libvirtd re-probes QEMU ~26 times per VM start: ~55 s); the VMs'
    cgroup outweighs the host's processes, and so does the daemons' (a VM start is ~400 round trips between
    libvirtd and QEMU: starved by the host's load, three starts took ~2 s)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "libvirt.sh"
    started = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0 and "starting" not in started.stdout, started.stdout + started.stderr
    status = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout
    assert re.search(r"^virtlogd running \(\d+\)$", status.stdout, re.M)
    assert re.search(r"^libvirtd running \(\d+\)$", status.stdout, re.M)
    if Path("/dev/kvm").exists():
        kvm = Path("/dev/kvm").stat()
        assert stat.S_IMODE(kvm.st_mode) == 0o660 and kvm.st_gid == grp.getgrnam("kvm").gr_gid
    shares = Path("/sys/fs/cgroup/cpu/machine/cpu.shares")
    if shares.exists():
        assert int(shares.read_text()) >= 100_000
    for daemon in ("libvirtd", "virtlogd"):     # the hypervisor's daemons outweigh the host's processes too
        pid = Path(f"/var/run/{daemon}.pid").read_text().strip()
        group = next((line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                      if line.split(":")[1].split(",").count("cpu")), None)
        if group is not None:                       # cgroup v1
            assert group == "/hypervisor", (daemon, group)
            assert int(Path(f"/sys/fs/cgroup/cpu{group}/cpu.shares").read_text()) >= 100_000
    assert subprocess.run([str(script), "nonsense"], capture_output=True, timeout=30).returncode == 2
