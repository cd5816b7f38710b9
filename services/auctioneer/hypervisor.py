"""The Auctioneer's enforcement: bidders' VMs on a real libvirt host, their CPU shares as caps or weights.

One ``Hypervisor`` holds one libvirt connection (``qemu:///system`` by default). **Every libvirt call has a
deadline**: it runs in a worker thread that the caller waits for at most ``call_timeout_s``; a call that
does not answer in time raises ``HypervisorTimeout`` (the connection is then dropped and opened again by
the next call; the stuck thread is abandoned, at most ``MAX_STUCK_CALLS`` of them). libvirt's keepalive
(``setKeepAlive``, driven by the default event loop in a daemon thread) makes libvirt itself fail calls on
a connection whose daemon stopped answering. A connection that dropped is opened again by the next call.
Errors are never retried here: the caller (the allocation loop) retries at its next pass, and reads back
what is enforced (``scheduler``) so that what is paid and what is enforced never drift silently.

Exceptions (shown as ``TypeName: message (hint)``; drawn in gridcredit/errors.py's tree)::

    HypervisorError                 any libvirt failure (its libvirt error code in .code)
     ├── HypervisorTimeout          a call did not answer within call_timeout_s
     ├── HypervisorUnavailable      no connection (libvirtd down, refused, dropped)
     ├── NoSuchVm                   no VM of that name
     └── InvalidVmRequest           a bad name, template or parameter (nothing was called)

The VMs (``create_vm``): **transient** libvirt domains (``createXML``: nothing is defined on disk, so a
destroyed VM leaves no configuration behind) built from a ``Template``, with

- their vCPUs *and* QEMU's emulator threads pinned to the host's sold CPUs (``<vcpu cpuset=…>``,
  ``<emulatorpin>``), so bidders compete only among themselves — except **while the VM starts**: its emulator
  threads then run on the host's unsold CPUs and are pinned to the sold ones once it is up (``pinEmulator``,
  before ``create_vm`` returns; the vCPU runs pinned and capped from its first instruction either way). A
  start is QEMU's and libvirtd's work, not the guest's: libvirt 9.0 asks QEMU ~400 QMP questions about its
  CPU model (``qom-get`` per feature: ~0.35 s of QEMU's CPU per start here), which on the sold CPU came out
  of the paying guests (a guest sold the whole CPU got ~half of it while three VMs started) and queued
  behind them (three starts beside one spinning guest: 1.9-2.5 s; on the unsold CPU 1.3-1.4 s at load ~9);
- their share from the start (``<cputune>`` period/quota or shares), so a new VM never runs uncapped;
- the serial port on a pseudo-terminal of QEMU's (no TCP port), reached through libvirt's console stream
  (``open_console``: ``virDomainOpenConsole``) — by whoever may manage the VM through libvirt: no socket file
  in our folders, and no need to run as root or as QEMU's user to reach it,
- **no network interface at all** (libvirt starts QEMU with ``-nodefaults``: no NIC, so no route to other
  VMs or from outside), no graphics (no VNC/SPICE port), no USB, no balloon;
- their disk: a copy of the template's image (or a built-in guest written by ``guest.write_floppy``) in
  ``<state_dir>/<name>/``, removed with the VM (``remove_vm``), as is QEMU's log of the VM when local.

``list_vms(prefix)`` lists the running domains whose names start with ``prefix`` (a restarted auctioneer
finds its VMs; the names are the caller's, e.g. ``auction-<host>-<bid>``); ``remove_leftovers(prefix)`` removes
what is left of those that stopped running without ``remove_vm`` (a guest that powered off or crashed).

Capped mode (``set_cap``): QEMU/KVM's ``vcpu_period``/``vcpu_quota`` (µs of CPU per period for each vCPU
thread; libvirt takes 1000 ≤ period ≤ 1,000,000 and 1000 ≤ quota, quotas below 1000 µs are raised to 1000 and
logged). Xen's credit scheduler takes ``cap`` in percent of one physical CPU, 0 meaning *no cap*: the same
cap is ``max(1, ceil(100 × quota / period))`` (``xen_cap_percent``; not tested here: no Xen host).
Work-conserving mode (``set_weight``): QEMU's ``cpu_shares`` (cgroup v1: 2-262,144, default 1024);
Xen's ``weight`` is 1-65,535 (default 256), relative like cpu_shares (``xen_weight``; untested).
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import stat
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from gridcredit.errors import GridcreditError

from . import guest

log = logging.getLogger("gridcredit.auctioneer.hypervisor")

DEFAULT_URI = "qemu:///system"
DEFAULT_CALL_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 5           # libvirt keepalive: a probe every 5 s, the connection dead after 3 missed
KEEPALIVE_COUNT = 3
MAX_STUCK_CALLS = 8                # abandoned worker threads (calls that never answered) before refusing more
PERIOD_US_MIN, PERIOD_US_MAX = 1_000, 1_000_000
QUOTA_US_MIN = 1_000
QUOTA_US_MAX = 17_592_186_044_415  # libvirt's upper bound for vcpu_quota
SHARES_MIN, SHARES_MAX = 2, 262_144
XEN_WEIGHT_MIN, XEN_WEIGHT_MAX = 1, 65_535
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
METADATA_NS = "urn:gridcredit:auctioneer:vm:1"
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")   # where a local qemu:///system keeps a VM's QEMU log


class HypervisorError(GridcreditError):
    """A libvirt call failed. ``code`` is libvirt's error code when libvirt gave one; the message ends with
    a hint in parentheses. Shown as ``TypeName: message (hint)`` (``cli_support.error_text``)."""

    def __init__(self, message: str, *, hint: str = "", code: int | None = None):
        super().__init__(f"{message} ({hint})" if hint else message)
        self.message = message
        self.hint = hint
        self.code = code


class HypervisorTimeout(HypervisorError):
    """A libvirt call did not answer within the call timeout."""


class HypervisorUnavailable(HypervisorError):
    """No connection to libvirtd (not running, refused, or the connection dropped)."""


class NoSuchVm(HypervisorError):
    """No VM of that name on the host."""


class InvalidVmRequest(HypervisorError):
    """A bad VM name, template or parameter: refused before anything was called."""


@dataclass(frozen=True, slots=True)
class Template:
    """A site-configured VM template. ``image`` is a built-in guest (``guest.GUESTS``: "spin", "idle")
    or the absolute path of a raw disk image, which each VM gets a copy of. ``boot`` is "fd" (the image
    is a floppy) or "hd" (a virtio-less IDE disk)."""
    name: str
    vcpus: int = 1
    memory_mib: int = 32
    image: str = "spin"
    boot: str = "fd"

    def __post_init__(self):
        if not (1 <= self.vcpus <= 64):
            raise InvalidVmRequest(f"template {self.name!r}: vcpus {self.vcpus} is not in 1-64")
        if not (16 <= self.memory_mib <= 65_536):
            raise InvalidVmRequest(f"template {self.name!r}: memory_mib {self.memory_mib} is not in 16-65536")
        if self.boot not in ("fd", "hd"):
            raise InvalidVmRequest(f"template {self.name!r}: boot {self.boot!r} is not 'fd' or 'hd'")
        if self.image not in guest.GUESTS and not os.path.isabs(self.image):
            raise InvalidVmRequest(f"template {self.name!r}: image {self.image!r} is neither a built-in guest "
                                   f"({', '.join(guest.GUESTS)}) nor an absolute path")

    @classmethod
    def from_mapping(cls, name: str, settings: dict) -> "Template":
        """A template from configuration (keys vcpus, memory_mib, image, boot; others refused)."""
        unknown = set(settings) - {"vcpus", "memory_mib", "image", "boot"}
        if unknown:
            raise InvalidVmRequest(f"template {name!r}: unknown settings {', '.join(sorted(unknown))}",
                                   hint="known: vcpus, memory_mib, image, boot")
        values = dict(settings)
        for key in ("vcpus", "memory_mib"):
            if key in values:
                try:
                    values[key] = int(values[key])
                except (TypeError, ValueError):
                    raise InvalidVmRequest(f"template {name!r}: {key} {values[key]!r} is not an integer") from None
        return cls(name=name, **values)


DEFAULT_TEMPLATES = {
    "spin": Template("spin", image="spin"),    # uses a whole CPU until capped; echoes its console
    "idle": Template("idle", image="idle"),    # halts
}


@dataclass(frozen=True, slots=True)
class VmHandle:
    name: str
    uuid: str
    directory: Path


@dataclass(frozen=True, slots=True)
class Scheduler:
    """What libvirt enforces on a VM now (read back after setting)."""
    period_us: int
    quota_us: int | None       # None: no cap
    shares: int


def xen_cap_percent(quota_us: int, period_us: int) -> int:
    """Xen credit scheduler's ``cap`` for a QEMU quota/period: percent of one physical CPU, rounded up
    (never 0, which means *uncapped* to Xen). Untested here (no Xen host)."""
    return max(1, math.ceil(100 * quota_us / period_us))


def xen_weight(shares: int) -> int:
    """Xen's ``weight`` (1-65535, relative like cpu_shares) for a cpu_shares value. Untested here."""
    return min(XEN_WEIGHT_MAX, max(XEN_WEIGHT_MIN, shares))


def parse_cpuset(cpuset: str) -> tuple[int, ...]:
    """The CPUs of a libvirt cpuset ("1", "0-3", "1,3"); refuses anything else."""
    cpus: set[int] = set()
    if not isinstance(cpuset, str) or not re.fullmatch(r"\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*", cpuset):
        raise InvalidVmRequest(f"cpuset {cpuset!r} is not a list of CPUs", hint='e.g. "1", "2-3" or "1,3"')
    for part in cpuset.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise InvalidVmRequest(f"cpuset {cpuset!r}: range {part} is backwards")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


# ---- libvirt's default event loop (drives keepalive), once per process ----

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _libvirt():
    try:
        import libvirt
    except ImportError:
        raise HypervisorUnavailable("the libvirt Python binding is not installed",
                                    hint="pip install libvirt-python (needs Debian's libvirt-dev; "
                                         "scripts/libvirt.sh installs it)") from None
    return libvirt


def _ensure_event_loop(libvirt) -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr by default; ours are raised as HypervisorError instead.
        libvirt.registerErrorHandler(lambda _context, _error: None, None)

        def run():
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception as error:   # never let the loop die: keepalive depends on it
                    log.warning("libvirt event loop: %s", error)
                    time.sleep(1)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class Hypervisor:
    """One libvirt connection; every call bounded by ``call_timeout_s``. Thread-safe."""

    def __init__(self, uri: str = DEFAULT_URI, *, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 state_dir: str | os.PathLike = "/var/lib/gridcredit/auctioneer/vms",
                 keep_qemu_logs: bool = False):
        if not (0 < call_timeout_s <= 600):
            raise InvalidVmRequest(f"call_timeout_s {call_timeout_s} is not in (0, 600]")
        self.uri = uri
        self.call_timeout_s = call_timeout_s
        self.state_dir = Path(state_dir)
        self.keep_qemu_logs = keep_qemu_logs
        self._libvirt = _libvirt()
        self._lock = threading.Lock()
        self._connecting = threading.Lock()      # one connection made at a time: the others wait and share it
        self._connection = None
        self._online_cpus: tuple[int, ...] | None = None   # the host's online CPUs (libvirt's getCPUMap), cached
        self._stuck = 0                   # worker threads still waiting on a call that timed out

    # ---- the connection and the bounded call ----

    def _bounded(self, what: str, function, *args):
        """Run ``function(*args)`` in a worker thread; wait at most call_timeout_s."""
        with self._lock:
            if self._stuck >= MAX_STUCK_CALLS:
                raise HypervisorUnavailable(
                    f"{self._stuck} libvirt calls to {self.uri} never answered; refusing more",
                    hint="libvirtd is hung: restart it (scripts/libvirt.sh stop; scripts/libvirt.sh start)")
        outcome: dict = {}

        def work():
            try:
                outcome["value"] = function(*args)
            except BaseException as error:   # handed to the caller's thread
                outcome["error"] = error
            finally:
                with self._lock:
                    outcome["done"] = True
                    if outcome.get("abandoned"):
                        self._stuck -= 1

        worker = threading.Thread(target=work, name=f"libvirt-call {what}", daemon=True)
        worker.start()
        worker.join(self.call_timeout_s)
        with self._lock:
            timed_out = not outcome.get("done")
            if timed_out:
                outcome["abandoned"] = True
                self._stuck += 1
        if timed_out:
            self._drop_connection()
            raise HypervisorTimeout(f"{what} did not answer within {self.call_timeout_s:g} s on {self.uri}",
                                    hint="libvirtd busy or hung; the call is retried at the next pass")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _connect(self):
        with self._connecting:
            return self._connected()

    def _connected(self):
        with self._lock:
            connection = self._connection
        if connection is not None:
            try:
                if connection.isAlive():          # local: no round trip
                    return connection
            except self._libvirt.libvirtError:
                pass
            self._drop_connection()
        _ensure_event_loop(self._libvirt)

        def open_connection():
            opened = self._libvirt.open(self.uri)
            try:
                opened.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
            except self._libvirt.libvirtError:
                pass    # local drivers (test:///) have no keepalive
            return opened

        try:
            connection = self._bounded(f"open {self.uri}", open_connection)
        except self._libvirt.libvirtError as error:
            raise HypervisorUnavailable(f"cannot connect to {self.uri}: {error.get_error_message()}",
                                        hint="is libvirtd running? (scripts/libvirt.sh status)",
                                        code=error.get_error_code()) from None
        with self._lock:
            self._connection = connection
        log.info("hypervisor: connected to %s", self.uri)
        return connection

    def _drop_connection(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            self._online_cpus = None
        if connection is not None:
            # close() may block on a hung daemon: never in the caller's thread.
            threading.Thread(target=self._close_quietly, args=(connection,), daemon=True).start()

    def _close_quietly(self, connection) -> None:
        try:
            connection.close()
        except Exception:
            pass

    def _call(self, what: str, function, *, vm: str | None = None):
        """``function(connection)`` with a deadline, libvirt's errors mapped to HypervisorError."""
        libvirt = self._libvirt
        connection = self._connect()
        try:
            return self._bounded(what, function, connection)
        except libvirt.libvirtError as error:
            code = error.get_error_code()
            message = error.get_error_message() or str(error)
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                raise NoSuchVm(f"{what}: no VM {vm!r} on {self.uri}", code=code,
                               hint="it was removed, or never created (list_vms shows the VMs)") from None
            alive = False
            try:
                alive = bool(connection.isAlive())
            except libvirt.libvirtError:
                pass
            if not alive or error.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE) \
                    or code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC):
                self._drop_connection()
                raise HypervisorUnavailable(f"{what}: the connection to {self.uri} failed: {message}", code=code,
                                            hint="reconnecting at the next call; is libvirtd running?") from None
            raise HypervisorError(f"{what}: {message}", code=code,
                                  hint="libvirt refused; see libvirtd's log (/var/log/libvirt/libvirtd.log)") from None

    def close(self) -> None:
        self._drop_connection()

    # ---- VMs ----

    def _check_name(self, name: str) -> str:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidVmRequest(f"VM name {name!r} is not 1-64 of A-Z a-z 0-9 _ . - (starting with a letter "
                                   "or digit)")
        return name

    def vm_directory(self, name: str) -> Path:
        return self.state_dir / self._check_name(name)

    def open_console(self, name: str) -> "ConsoleStream":
        """The VM's serial console as a non-blocking libvirt stream (taken over from any earlier holder, e.g.
        the relay of an auctioneer that was restarted)."""
        self._check_name(name)
        libvirt = self._libvirt

        def open_stream(connection):
            stream = connection.newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                connection.lookupByName(name).openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            except BaseException:
                _abort_quietly(libvirt, stream)
                raise
            return stream
        return ConsoleStream(name, self._call(f"open the console of VM {name}", open_stream, vm=name), libvirt)

    def _prepare_state_dir(self) -> None:
        """The state dir must exist and be traversable by the user QEMU runs as (libvirt-qemu), who opens
        the disk image in it; its VM folders are 0711 (no listing)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        for folder in [self.state_dir, *self.state_dir.parents]:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                raise InvalidVmRequest(
                    f"state dir {self.state_dir}: {folder} is not traversable by others (mode {mode & 0o7777:o})",
                    hint="QEMU runs as libvirt-qemu and must reach the VM's disk: use a folder whose parents "
                         "are all o+x (e.g. under /var/lib)")

    def _domain_xml(self, name: str, template: Template, cpuset: str, image: Path, quota_us: int | None,
                    period_us: int, shares: int, start_cpuset: str | None = None) -> str:
        """The domain XML; ``start_cpuset``: where the emulator threads start (default ``cpuset``)."""
        E = ElementTree.Element
        sub = ElementTree.SubElement
        domain = E("domain", type="qemu")              # TCG: runs with or without /dev/kvm
        sub(domain, "name").text = name
        metadata = sub(domain, "metadata")
        ElementTree.register_namespace("gcvm", METADATA_NS)
        sub(metadata, f"{{{METADATA_NS}}}vm", template=template.name, directory=str(image.parent))
        sub(domain, "memory", unit="MiB").text = str(template.memory_mib)
        sub(domain, "vcpu", placement="static", cpuset=cpuset).text = str(template.vcpus)
        tune = sub(domain, "cputune")
        sub(tune, "shares").text = str(shares)
        sub(tune, "period").text = str(period_us)
        if quota_us is not None:
            sub(tune, "quota").text = str(quota_us)
        sub(tune, "emulatorpin", cpuset=start_cpuset or cpuset)    # while starting; the sold CPUs once it is up
        os_ = sub(domain, "os")
        sub(os_, "type", arch="x86_64", machine="pc").text = "hvm"
        sub(os_, "boot", dev=template.boot)
        sub(domain, "clock", offset="utc")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            sub(domain, event).text = "destroy"
        devices = sub(domain, "devices")
        disk = sub(devices, "disk", type="file", device="floppy" if template.boot == "fd" else "disk")
        sub(disk, "driver", name="qemu", type="raw")
        sub(disk, "source", file=str(image))
        floppy = template.boot == "fd"
        sub(disk, "target", dev="fda" if floppy else "hda", bus="fdc" if floppy else "ide")
        serial = sub(devices, "serial", type="pty")        # reached through libvirt only (open_console)
        sub(serial, "target", port="0")
        sub(devices, "controller", type="usb", model="none")
        sub(devices, "memballoon", model="none")
        # No <interface>, <graphics>, <channel> or <input>: QEMU gets no NIC and opens no port.
        return ElementTree.tostring(domain, encoding="unicode")

    def create_vm(self, name: str, template: Template, *, cpuset: str, quota_us: int | None = None,
                  period_us: int = 100_000, weight: int = 1024) -> VmHandle:
        """Start a transient VM ``name`` from ``template``, pinned to ``cpuset`` (the sold CPUs), capped
        from its first instruction when ``quota_us`` is given (else uncapped, weight ``weight``); its emulator
        threads start on the unsold CPUs and are pinned to ``cpuset`` before this returns (module docstring).
        Idempotent for a retry: a running VM of that name made from the same template is returned as it is, its
        emulator pinned to ``cpuset`` (InvalidVmRequest if from another template)."""
        self._check_name(name)
        cpus = parse_cpuset(cpuset)
        if quota_us is not None:
            quota_us, period_us = self._cap_values(name, quota_us, period_us)
        shares = self._shares(weight)
        existing = self._existing(name)
        if existing is not None:
            if existing != template.name:
                raise InvalidVmRequest(f"a VM {name!r} runs already, from template {existing!r}, not "
                                       f"{template.name!r}", hint="remove it first, or choose another name")
            handle = self._handle(name)
            self._pin_emulator(name, cpus)              # a start that failed or outlived its call was not pinned
            return handle
        self._prepare_state_dir()
        directory = self.vm_directory(name)
        shutil.rmtree(directory, ignore_errors=True)    # left over from a VM that died without remove_vm
        directory.mkdir(mode=0o711)
        os.chmod(directory, 0o711)                      # mkdir's mode is masked by the umask
        try:
            if template.image in guest.GUESTS:
                image = guest.write_floppy(directory / "disk.img", template.image)
            else:
                image = directory / "disk.img"
                shutil.copyfile(template.image, image)
                os.chmod(image, 0o600)
            start_cpus = self._start_cpus(cpus)
            xml = self._domain_xml(name, template, ",".join(map(str, cpus)), image, quota_us, period_us, shares,
                                   ",".join(map(str, start_cpus)))
            domain = self._call(f"create VM {name}", lambda connection: connection.createXML(xml, 0), vm=name)
            if start_cpus != cpus:
                self._pin_emulator(name, cpus)
        except HypervisorTimeout:
            # libvirtd may still start the VM: keep its disk. A retry finds it running (and
            # answers it), or finds no VM and starts afresh; remove_leftovers removes the folder otherwise.
            raise
        except BaseException:
            if not self._runs(name):
                shutil.rmtree(directory, ignore_errors=True)
            raise
        uuid = domain.UUIDString()
        log.info("hypervisor: created VM %s (%s) from template %s on CPUs %s, %s", name, uuid, template.name,
                 cpuset, f"cap {quota_us}/{period_us} us" if quota_us is not None else f"weight {shares}")
        return VmHandle(name=name, uuid=uuid, directory=directory)

    def _start_cpus(self, sold: tuple[int, ...]) -> tuple[int, ...]:
        """The CPUs a VM's emulator threads start on: the host's online CPUs that are not sold (``sold`` when
        every CPU is). Read from libvirt once per connection (the host's, which may be remote)."""
        with self._lock:
            online = self._online_cpus
        if online is None:
            _count, cpumap, _online = self._call("read the host's CPUs", lambda connection: connection.getCPUMap(0))
            online = tuple(cpu for cpu, up in enumerate(cpumap) if up)
            with self._lock:
                self._online_cpus = online
        unsold = tuple(cpu for cpu in online if cpu not in sold)
        return unsold or sold

    def _pin_emulator(self, name: str, cpus: tuple[int, ...]) -> None:
        """Pin the running VM's emulator threads to ``cpus`` (the sold CPUs)."""
        cpumap = tuple(cpu in cpus for cpu in range(max(cpus) + 1))
        flags = self._libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._call(f"pin the emulator of VM {name} to CPUs {','.join(map(str, cpus))}",
                   lambda connection: connection.lookupByName(name).pinEmulator(cpumap, flags), vm=name)

    def _runs(self, name: str) -> bool:
        """Whether a VM ``name`` runs; when that cannot be told, True (then nothing of it is deleted)."""
        try:
            return name in self.list_vms(name)
        except HypervisorError:
            return True

    def _existing(self, name: str) -> str | None:
        """The template name of a running VM ``name`` (None when there is none)."""
        try:
            xml = self._call(f"look up VM {name}", lambda connection: connection.lookupByName(name).XMLDesc(0),
                             vm=name)
        except NoSuchVm:
            return None
        element = ElementTree.fromstring(xml).find(f"metadata/{{{METADATA_NS}}}vm")
        if element is None:
            raise InvalidVmRequest(f"a VM {name!r} runs already and is not one of the auctioneer's",
                                   hint="choose another name prefix")
        return element.get("template")

    def _handle(self, name: str) -> VmHandle:
        uuid = self._call(f"look up VM {name}", lambda connection: connection.lookupByName(name).UUIDString(), vm=name)
        return VmHandle(name=name, uuid=uuid, directory=self.vm_directory(name))

    def remove_vm(self, name: str) -> bool:
        """Stop the VM and remove everything of it (its folder: its disk copy; its QEMU log
        when local, unless keep_qemu_logs). Idempotent: True if a VM was running."""
        self._check_name(name)
        libvirt = self._libvirt

        def destroy(connection):
            try:
                domain = connection.lookupByName(name)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            persistent = domain.isPersistent()   # ours are transient; a destroyed transient domain is gone
            try:
                domain.destroy()
            except libvirt.libvirtError as error:   # it ended meanwhile
                if error.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    raise
            if persistent:                          # leave nothing defined either
                domain.undefine()
            return True

        existed = self._call(f"remove VM {name}", destroy, vm=name)
        shutil.rmtree(self.vm_directory(name), ignore_errors=True)
        self._remove_qemu_log(name)
        log.info("hypervisor: removed VM %s%s", name, "" if existed else " (it was not running)")
        return existed

    def remove_leftovers(self, prefix: str = "") -> list[str]:
        """Remove the folders (disk copy) and QEMU logs of VMs whose names start with
        ``prefix`` that no longer run (a guest that powered off or crashed, a VM destroyed behind our back, an
        auctioneer killed between creating a folder and starting its VM). Returns their names, sorted."""
        running = set(self.list_vms(prefix))
        if not self.state_dir.is_dir():
            return []
        gone = sorted(folder.name for folder in self.state_dir.iterdir()
                      if folder.is_dir() and folder.name.startswith(prefix) and NAME_PATTERN.fullmatch(folder.name)
                      and folder.name not in running)
        for name in gone:
            shutil.rmtree(self.state_dir / name, ignore_errors=True)
            self._remove_qemu_log(name)
            log.info("hypervisor: removed what was left of VM %s (not running)", name)
        return gone

    def _remove_qemu_log(self, name: str) -> None:
        if not self.keep_qemu_logs and self.uri == DEFAULT_URI:
            for leftover in QEMU_LOG_DIR.glob(f"{name}.log*"):
                leftover.unlink(missing_ok=True)

    def list_vms(self, prefix: str = "") -> list[str]:
        """The running VMs whose names start with ``prefix``, sorted."""
        names = self._call("list VMs", lambda connection: [domain.name() for domain in connection.listAllDomains(
            self._libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)])
        return sorted(name for name in names if name.startswith(prefix))

    # ---- shares ----

    def _cap_values(self, name: str, quota_us: int, period_us: int) -> tuple[int, int]:
        if not isinstance(period_us, int) or not (PERIOD_US_MIN <= period_us <= PERIOD_US_MAX):
            raise InvalidVmRequest(f"period {period_us!r} us is not in {PERIOD_US_MIN}-{PERIOD_US_MAX}")
        if not isinstance(quota_us, int) or not (0 < quota_us <= QUOTA_US_MAX):
            raise InvalidVmRequest(f"quota {quota_us!r} us is not a positive integer",
                                   hint="set_cap(name, None, period) lifts the cap")
        if quota_us < QUOTA_US_MIN:
            log.info("hypervisor: VM %s quota %d us raised to libvirt's minimum %d us", name, quota_us, QUOTA_US_MIN)
            quota_us = QUOTA_US_MIN
        return quota_us, period_us

    def _shares(self, weight: int) -> int:
        if not isinstance(weight, int) or not (SHARES_MIN <= weight <= SHARES_MAX):
            raise InvalidVmRequest(f"weight {weight!r} is not in {SHARES_MIN}-{SHARES_MAX} (cpu_shares)")
        return weight

    def _set_scheduler(self, name: str, parameters: dict) -> None:
        flags = self._libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._call(f"set {', '.join(f'{k}={v}' for k, v in parameters.items())} on VM {name}",
                   lambda connection: connection.lookupByName(name).setSchedulerParametersFlags(parameters, flags),
                   vm=name)

    def set_cap(self, name: str, quota_us: int | None, period_us: int = 100_000) -> tuple[int | None, int]:
        """Capped mode: each vCPU of ``name`` gets at most ``quota_us`` of CPU per ``period_us`` (None: no
        cap). Returns the (quota_us, period_us) applied (a quota below 1000 µs is raised to 1000)."""
        self._check_name(name)
        if quota_us is None:
            if not (PERIOD_US_MIN <= period_us <= PERIOD_US_MAX):
                raise InvalidVmRequest(f"period {period_us!r} us is not in {PERIOD_US_MIN}-{PERIOD_US_MAX}")
            self._set_scheduler(name, {"vcpu_period": period_us, "vcpu_quota": -1})
        else:
            quota_us, period_us = self._cap_values(name, quota_us, period_us)
            self._set_scheduler(name, {"vcpu_period": period_us, "vcpu_quota": quota_us})
        log.info("hypervisor: VM %s cap %s", name, f"{quota_us}/{period_us} us" if quota_us is not None else "none")
        return quota_us, period_us

    def set_weight(self, name: str, weight: int) -> int:
        """Work-conserving mode: ``name``'s cpu_shares (relative to the other VMs on the sold CPUs)."""
        self._check_name(name)
        shares = self._shares(weight)
        self._set_scheduler(name, {"cpu_shares": shares})
        log.info("hypervisor: VM %s weight %d", name, shares)
        return shares

    def scheduler(self, name: str) -> Scheduler:
        """What libvirt enforces on ``name`` now."""
        self._check_name(name)
        parameters = self._call(f"read the scheduler of VM {name}",
                                lambda connection: connection.lookupByName(name).schedulerParametersFlags(
                                    self._libvirt.VIR_DOMAIN_AFFECT_LIVE), vm=name)
        quota = int(parameters["vcpu_quota"])
        return Scheduler(period_us=int(parameters["vcpu_period"]),
                         quota_us=None if quota <= 0 or quota >= QUOTA_US_MAX else quota,
                         shares=int(parameters["cpu_shares"]))

    def cpu_time_us(self, name: str) -> int:
        """The CPU time the VM used since it started (all its QEMU threads: libvirt's cpuacct), in µs."""
        self._check_name(name)
        stats = self._call(f"read the CPU time of VM {name}",
                           lambda connection: connection.lookupByName(name).getCPUStats(True, 0), vm=name)
        return int(stats[0]["cpu_time"]) // 1000

    def qemu_pid(self, name: str) -> int | None:
        """The pid of the VM's QEMU process (local qemu:///system only), else None."""
        self._check_name(name)
        try:
            return int(Path(f"/var/run/libvirt/qemu/{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None


class ConsoleStream:
    """A VM's serial console through libvirt, non-blocking: ``read`` answers what came (None: nothing now),
    ``write`` sends all of its bytes within a deadline. One holder at a time (libvirt gives the console to the
    last opener)."""

    def __init__(self, name: str, stream, libvirt) -> None:
        self.name = name
        self._stream = stream
        self._libvirt = libvirt

    def read(self, size: int = 65536) -> bytes | None:
        """What the VM wrote since (None: nothing now); raises HypervisorError once the console is closed."""
        try:
            data = self._stream.recv(size)
        except self._libvirt.libvirtError as error:
            raise self._failed(error) from None
        if data == -2:
            return None
        if not data:
            raise HypervisorError(f"the console of VM {self.name} closed", hint="the VM stopped or was removed")
        return data

    def write(self, data: bytes, *, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        view = memoryview(data)
        while view:
            try:
                sent = self._stream.send(bytes(view[:65536]))
            except self._libvirt.libvirtError as error:
                raise self._failed(error) from None
            if sent == -2:                              # full for now
                if time.monotonic() > deadline:
                    raise HypervisorTimeout(f"the console of VM {self.name} took no input for {timeout_s:g} s")
                time.sleep(0.01)
                continue
            view = view[sent:]

    def close(self) -> None:
        _abort_quietly(self._libvirt, self._stream)

    def _failed(self, error) -> HypervisorError:
        return HypervisorError(f"the console of VM {self.name} failed: {error.get_error_message()}",
                               code=error.get_error_code())


def _abort_quietly(libvirt, stream) -> None:
    try:
        stream.abort()
    except libvirt.libvirtError:
        pass            # already closed: the VM stopped, or the connection went


def console_exchange(console: ConsoleStream, data: bytes, *, until: bytes, timeout_s: float = 10.0,
                     resend_every_s: float | None = None) -> bytes:
    """Send ``data`` to an open console and read until ``until`` was received (or raise HypervisorTimeout);
    returns what was read. With ``resend_every_s``, ``data`` is sent again at that pace until the answer
    comes: a guest that is still booting loses what it is sent (the spin guest resets its UART at boot), and
    what it printed before anyone connected is gone too. For tests and diagnostics; the service's console
    relay is console.py's."""
    deadline = time.monotonic() + timeout_s
    received = b""
    console.write(data)
    sent_at = time.monotonic()
    while until not in received:
        now = time.monotonic()
        if now >= deadline:
            raise HypervisorTimeout(f"the console of VM {console.name} did not answer {until!r} within "
                                    f"{timeout_s:g} s", hint=f"received: {received[-200:]!r}")
        if resend_every_s is not None and now - sent_at >= resend_every_s:
            console.write(data)
            sent_at = now
        chunk = console.read()
        if chunk is None:
            time.sleep(0.01)
            continue
        received += chunk
    return received
