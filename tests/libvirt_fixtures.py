"""The real libvirtd + QEMU of scripts/libvirt.sh, for the Auctioneer's enforcement tests (imported explicitly).

    from libvirt_fixtures import libvirt_host, vm_factory, measure_window   # noqa: F401 (fixtures)

    def test_something(vm_factory):
        hypervisor, name = vm_factory.hypervisor, vm_factory.name("a")
        vm_factory.create(name, "spin", quota_us=25_000)      # removed at the test's end

``libvirt_host`` (session, root only: skipped otherwise on a developer's machine, failed under CI by
``skip_unless_ci``) finds the libvirtd scripts/libvirt.sh started (scripts/test.sh starts it before pytest),
or starts it with the script. ``vm_factory`` gives a Hypervisor whose state dir is a fresh folder under
/var/lib (QEMU, running as libvirt-qemu, must reach the disk images: pytest's tmp_path is under a root-only
folder), VM names with a prefix of this process, and removes every VM of that prefix and the folder after.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from security_fixtures import skip_unless_ci

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "libvirt.sh"
STATE_ROOT = Path("/var/lib/gridcredit-test-vms")
_STARTUP_TIMEOUT_S = 900     # a first start installs the Debian packages


def _answers() -> str | None:
    """None when qemu:///system answers, else what is wrong."""
    from gridcredit.services.auctioneer.hypervisor import Hypervisor, HypervisorError
    try:
        hypervisor = Hypervisor(call_timeout_s=30)
        try:
            hypervisor.list_vms()
        finally:
            hypervisor.close()
    except HypervisorError as error:
        return str(error)
    return None


@pytest.fixture(scope="session")
def libvirt_host() -> str:
    """The URI of a running libvirtd with the QEMU driver."""
    if os.geteuid() != 0:
        skip_unless_ci("the libvirt tests run as root: they start QEMU guests through qemu:///system and may "
                       "start libvirtd (scripts/libvirt.sh)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        skip_unless_ci("libvirt-python is not installed (pip install -e .[test], after scripts/libvirt.sh "
                       "installed libvirt-dev)")
    if _answers() is None:
        return "qemu:///system"
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=_STARTUP_TIMEOUT_S)
    if started.returncode != 0:
        pytest.fail(f"LibvirtNotStarted: scripts/libvirt.sh start exited {started.returncode}:\n"
                    f"{started.stdout[-2000:]}{started.stderr[-2000:]}")
    problem = _answers()
    if problem:
        pytest.fail(f"LibvirtNotReady: scripts/libvirt.sh start succeeded but {problem}")
    return "qemu:///system"


def sold_cpuset() -> str:
    """The one host CPU the tests sell: the last one (on a 2-CPU machine, CPU 1)."""
    return str((os.cpu_count() or 1) - 1)


@dataclass
class VmFactory:
    hypervisor: object
    state_dir: Path
    prefix: str
    cpuset: str
    created: list[str] = field(default_factory=list)

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def create(self, name: str, image: str = "spin", **options):
        from gridcredit.services.auctioneer.hypervisor import DEFAULT_TEMPLATES
        self.created.append(name)
        return self.hypervisor.create_vm(name, DEFAULT_TEMPLATES[image], cpuset=self.cpuset, **options)

    def remove_all(self) -> None:
        for name in self.hypervisor.list_vms(self.prefix):
            self.hypervisor.remove_vm(name)


@pytest.fixture
def vm_factory(libvirt_host) -> Iterator[VmFactory]:
    from gridcredit.services.auctioneer.hypervisor import Hypervisor
    STATE_ROOT.mkdir(mode=0o711, exist_ok=True)
    STATE_ROOT.chmod(0o711)
    state_dir = Path(tempfile.mkdtemp(prefix="vms-", dir=STATE_ROOT))
    state_dir.chmod(0o711)
    hypervisor = Hypervisor(libvirt_host, call_timeout_s=30, state_dir=state_dir)
    factory = VmFactory(hypervisor, state_dir, prefix=f"gctest-{os.getpid()}-{state_dir.name[4:]}-",
                        cpuset=sold_cpuset())
    try:
        yield factory
    finally:
        try:
            factory.remove_all()
        finally:
            hypervisor.close()
            shutil.rmtree(state_dir, ignore_errors=True)


def others_running(hypervisor, prefix: str) -> list[str]:
    """VMs on the host that are not this test's (other engineers' tests share libvirtd and the sold CPU)."""
    return [name for name in hypervisor.list_vms() if not name.startswith(prefix)]


def wait_for_quiet(hypervisor, prefix: str, wait_s: float = 60.0) -> list[str]:
    """Wait (at most ``wait_s``) until no other VM runs: they compete for the sold CPU. Returns those still
    running (never any under CI, where the tests run one at a time)."""
    deadline = time.monotonic() + wait_s
    while (others := others_running(hypervisor, prefix)) and time.monotonic() < deadline:
        time.sleep(1)
    return others


@dataclass(frozen=True)
class Window:
    fractions: dict[str, float]     # each VM's CPU time / the window
    cpu_busy: float | None          # the sold CPU's non-idle time / the window (/proc/stat), if one CPU is sold
    cpu_idle: float | None          # its idle (and iowait) time / the window

    @property
    def host_take(self) -> float:
        """What of the sold CPU went to anything but these VMs (host processes, interrupts, other VMs)."""
        return max(0.0, (self.cpu_busy or 0.0) - sum(self.fractions.values()))


def _cpu_ticks(cpu: str) -> tuple[int, int] | None:
    """(busy, idle) ticks of one CPU from /proc/stat, or None when ``cpu`` is not one CPU."""
    if not cpu.isdigit():
        return None
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            values = [int(value) for value in fields[1:9]]    # user nice system idle iowait irq softirq steal
            idle = values[3] + values[4]
            return sum(values) - idle, idle
    return None


def measure_window(hypervisor, names: list[str], window_s: float, cpu: str | None = None) -> Window:
    """The VMs' CPU fractions over ``window_s`` seconds, and how busy the sold CPU ``cpu`` was meanwhile (the one
    window loop of the QEMU tests and of bench/auctioneer_caps.py)."""
    cpu = sold_cpuset() if cpu is None else cpu
    ticks_before = _cpu_ticks(cpu)
    before = {name: hypervisor.cpu_time_us(name) for name in names}
    started = time.monotonic()
    time.sleep(window_s)
    after = {name: hypervisor.cpu_time_us(name) for name in names}
    ticks_after = _cpu_ticks(cpu)
    elapsed_s = time.monotonic() - started
    fractions = {name: (after[name] - before[name]) / 1e6 / elapsed_s for name in names}
    if ticks_before is None or ticks_after is None:
        return Window(fractions, None, None)
    hertz = os.sysconf("SC_CLK_TCK")
    busy, idle = (ticks_after[index] - ticks_before[index] for index in (0, 1))
    return Window(fractions, busy / hertz / elapsed_s, idle / hertz / elapsed_s)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
