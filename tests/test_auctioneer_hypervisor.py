"""The Auctioneer's hypervisor layer without a libvirtd: the guest images, templates, the domain XML, argument
checks, and the timeout/error paths against fake libvirt daemons (a Unix socket that never answers, one that
hangs up, none at all). The real libvirtd + QEMU tests are in test_auctioneer_hypervisor_qemu.py."""
from __future__ import annotations

import re
import socket
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from gridcredit.cli_support import error_text

libvirt = pytest.importorskip("libvirt", reason="libvirt-python (pip install -e .[test], needs libvirt-dev)")

from gridcredit.services.auctioneer import guest  # noqa: E402
from gridcredit.services.auctioneer.hypervisor import (  # noqa: E402
    DEFAULT_TEMPLATES, MAX_STUCK_CALLS, Hypervisor, HypervisorTimeout, HypervisorUnavailable, InvalidVmRequest,
    METADATA_NS, Template, parse_cpuset, xen_cap_percent, xen_weight)


# ---- guests ----

def _listing(kind: str) -> dict[int, str]:
    """The offsets and hex bytes of guest.py's assembly listing for ``kind`` (common part + its own)."""
    text = guest.__doc__
    common = text[text.index("Common start"):text.index("spin (from")]
    own = text[text.index(f"{kind} (from"):]
    end = own.find("\n\n", own.index("::") + 3)
    own = own if end < 0 else own[:end]
    listing = {}
    for line in (common + own).splitlines():
        match = re.match(r"\s{4}([0-9a-f]{2}) ((?:(?:[0-9a-f]{2}|\.\.) )+)", line + " ")
        if match:
            listing[int(match.group(1), 16)] = match.group(2).strip()
    return listing


@pytest.mark.parametrize("kind", guest.GUESTS)
def test_boot_sector_is_one_sector_with_the_signature_and_matches_its_listing(kind):
    sector = guest.boot_sector(kind)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    banner = guest.BANNERS[kind]
    start = sector.index(banner)
    assert int.from_bytes(sector[0x28:0x2A], "little") == 0x7C00 + start     # mov si, banner
    listing = _listing(kind)
    assert len(listing) > 20
    for offset, hex_bytes in listing.items():
        for index, byte in enumerate(hex_bytes.split()):
            if byte != "..":
                assert sector[offset + index] == int(byte, 16), (kind, hex(offset), hex_bytes)


def test_the_spin_guest_polls_com1_and_echoes_and_the_idle_guest_halts():
    spin, idle = guest.boot_sector("spin"), guest.boot_sector("idle")
    assert bytes.fromhex("ba fd 03 ec a8 01") in spin         # mov dx, 0x3fd; in al, dx; test al, 1 (data ready)
    assert bytes.fromhex("ba f8 03 ec e8") in spin            # mov dx, 0x3f8; in al, dx; call putc (echo)
    assert bytes.fromhex("fb f4 eb fd") in idle               # sti; hlt; jmp hlt
    assert bytes.fromhex("f4") not in spin[:0x5B]


def test_write_floppy_makes_a_1440k_image_owner_only(tmp_path):
    path = guest.write_floppy(tmp_path / "disk.img", "spin")
    assert path.stat().st_size == 1_474_560 and (path.stat().st_mode & 0o777) == 0o600
    assert path.read_bytes()[:512] == guest.boot_sector("spin")
    with pytest.raises(guest.UnknownGuest, match="^'windows' is not a built-in guest"):
        guest.boot_sector("windows")


# ---- templates, names, arguments ----

def test_templates_are_checked():
    assert DEFAULT_TEMPLATES["idle"].image == "idle"
    assert Template.from_mapping("small", {"vcpus": "2", "memory_mib": 64, "image": "spin"}) == \
        Template("small", vcpus=2, memory_mib=64, image="spin")
    for settings, message in (({"vcpus": 0}, "vcpus 0"), ({"memory_mib": 8}, "memory_mib 8"),
                              ({"image": "disk.img"}, "neither a built-in guest"), ({"boot": "net"}, "boot 'net'"),
                              ({"vcpus": "two"}, "not an integer"), ({"nic": "yes"}, "unknown settings nic")):
        with pytest.raises(InvalidVmRequest, match=message):
            Template.from_mapping("bad", settings)


def test_cpusets():
    assert parse_cpuset("1") == (1,) and parse_cpuset("0-2,5") == (0, 1, 2, 5)
    for bad in ("", "1-", "a", "3-1", "1;2", " 1"):
        with pytest.raises(InvalidVmRequest):
            parse_cpuset(bad)


def test_xen_mappings():
    assert xen_cap_percent(12_500, 100_000) == 13 and xen_cap_percent(1_000, 1_000_000) == 1
    assert xen_cap_percent(62_500, 100_000) == 63 and xen_cap_percent(200_000, 100_000) == 200
    assert xen_weight(1024) == 1024 and xen_weight(262_144) == 65_535 and xen_weight(2) == 2


@pytest.fixture
def offline():
    """A Hypervisor whose daemon does not exist: anything that reached libvirt would fail Unavailable."""
    hypervisor = Hypervisor("qemu+unix:///system?socket=/nonexistent/libvirt-sock", call_timeout_s=5,
                            state_dir="/nonexistent/vms")
    yield hypervisor
    hypervisor.close()


def test_threads_that_find_no_connection_open_one_and_share_it(monkeypatch):
    """After the connection dropped, the loop's threads (VMs made in parallel, the console relay) each need
    one at once: one is opened, the others wait for it."""
    hypervisor = Hypervisor("test:///default", call_timeout_s=10, state_dir="/nonexistent/vms")
    libvirt = hypervisor._libvirt
    opened = []
    real_open = libvirt.open

    def slow_open(uri):
        time.sleep(0.3)                          # a daemon that takes a moment to answer
        opened.append(uri)
        return real_open(uri)
    monkeypatch.setattr(libvirt, "open", slow_open)
    try:
        connections = []
        threads = [threading.Thread(target=lambda: connections.append(hypervisor._connect())) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(opened) == 1 and len({id(connection) for connection in connections}) == 1
    finally:
        hypervisor.close()


def test_bad_names_and_parameters_are_refused_before_any_call(offline):
    for name in ("", "../x", "a/b", ".hidden", "x" * 65, "a b", "é"):
        with pytest.raises(InvalidVmRequest, match="VM name"):
            offline.set_cap(name, 10_000)
    for quota, period in ((0, 100_000), (-5, 100_000), (10_000, 999), (10_000, 1_000_001), (1.5, 100_000)):
        with pytest.raises(InvalidVmRequest):
            offline.set_cap("vm", quota, period)
    for weight in (0, 1, 262_145, "10"):
        with pytest.raises(InvalidVmRequest, match="weight"):
            offline.set_weight("vm", weight)
    with pytest.raises(InvalidVmRequest, match="cpuset"):
        offline.create_vm("vm", DEFAULT_TEMPLATES["spin"], cpuset="all")
    assert offline._cap_values("vm", 500, 100_000) == (1_000, 100_000)    # libvirt's minimum, raised


def test_a_state_dir_qemu_cannot_reach_is_refused(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    hypervisor = Hypervisor("qemu+unix:///system?socket=/nonexistent/sock", state_dir=private / "vms")
    with pytest.raises(InvalidVmRequest, match="not traversable by others"):
        hypervisor._prepare_state_dir()


def test_the_domain_xml_pins_caps_and_has_no_network_nor_port(tmp_path, offline):
    image = tmp_path / "vm" / "disk.img"
    xml = offline._domain_xml("gc-a", DEFAULT_TEMPLATES["spin"], "1", image, 12_500, 100_000, 1024)
    domain = ElementTree.fromstring(xml)
    assert domain.get("type") == "qemu" and domain.findtext("name") == "gc-a"
    assert domain.find("vcpu").get("cpuset") == "1" and domain.findtext("vcpu") == "1"
    assert domain.find("cputune/emulatorpin").get("cpuset") == "1"
    assert (domain.findtext("cputune/period"), domain.findtext("cputune/quota"), domain.findtext("cputune/shares")) \
        == ("100000", "12500", "1024")
    assert domain.find(f"metadata/{{{METADATA_NS}}}vm").get("template") == "spin"
    devices = domain.find("devices")
    assert [child.tag for child in devices] == ["disk", "serial", "controller", "memballoon"]
    assert devices.find("disk").get("device") == "floppy" and devices.find("disk/source").get("file") == str(image)
    serial = devices.find("serial")
    assert serial.get("type") == "pty" and serial.find("source") is None     # reached through libvirt only
    uncapped = ElementTree.fromstring(
        offline._domain_xml("gc-b", DEFAULT_TEMPLATES["idle"], "0-1", image, None, 100_000, 4096))
    assert uncapped.find("cputune/quota") is None and uncapped.findtext("cputune/shares") == "4096"
    starting = ElementTree.fromstring(        # the emulator starts off the sold CPU (pinned to it once up)
        offline._domain_xml("gc-c", DEFAULT_TEMPLATES["spin"], "1", image, 12_500, 100_000, 1024, "0"))
    assert starting.find("vcpu").get("cpuset") == "1" and starting.find("cputune/emulatorpin").get("cpuset") == "0"


# ---- timeouts and dead daemons ----

class FakeDaemon:
    """A Unix socket where a libvirtd should be: ``silent`` accepts and never answers; otherwise it hangs up
    on every connection at once."""

    def __init__(self, path: Path, *, silent: bool):
        self.path, self.silent = path, silent
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            if self.silent:
                self.connections.append(connection)    # read nothing, answer nothing
            else:
                connection.close()

    def close(self):
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def short_dir():
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="gc-hv-", dir="/tmp"))   # Unix socket paths are at most 107 bytes
    yield folder
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def test_a_daemon_that_never_answers_gives_a_timeout_not_a_hang(short_dir):
    daemon = FakeDaemon(short_dir / "sock", silent=True)
    hypervisor = Hypervisor(f"qemu+unix:///system?socket={daemon.path}", call_timeout_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(HypervisorTimeout) as raised:
            hypervisor.list_vms()
        assert time.monotonic() - started < 3
        assert error_text(raised.value).startswith("HypervisorTimeout: open qemu+unix:///system?socket=") \
            and "did not answer within 1 s" in str(raised.value)
        assert hypervisor._stuck == 1
    finally:
        daemon.close()             # the abandoned call now fails and its thread ends
        hypervisor.close()
    deadline = time.monotonic() + 10
    while hypervisor._stuck and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hypervisor._stuck == 0


def test_too_many_stuck_calls_are_refused_at_once(short_dir):
    daemon = FakeDaemon(short_dir / "sock", silent=True)
    hypervisor = Hypervisor(f"qemu+unix:///system?socket={daemon.path}", call_timeout_s=0.2)
    try:
        for _ in range(MAX_STUCK_CALLS):
            with pytest.raises(HypervisorTimeout):
                hypervisor.cpu_time_us("vm")
        started = time.monotonic()
        with pytest.raises(HypervisorUnavailable, match=f"{MAX_STUCK_CALLS} libvirt calls .* never answered"):
            hypervisor.cpu_time_us("vm")
        assert time.monotonic() - started < 0.1
    finally:
        daemon.close()
        hypervisor.close()


def test_a_daemon_that_hangs_up_or_is_not_there_gives_unavailable(short_dir):
    daemon = FakeDaemon(short_dir / "sock", silent=False)
    for uri in (f"qemu+unix:///system?socket={daemon.path}", f"qemu+unix:///system?socket={short_dir}/none"):
        hypervisor = Hypervisor(uri, call_timeout_s=5)
        try:
            with pytest.raises(HypervisorUnavailable) as raised:
                hypervisor.set_weight("vm", 100)
            assert error_text(raised.value).startswith("HypervisorUnavailable: cannot connect to qemu+unix")
            assert "scripts/libvirt.sh status" in str(raised.value)
        finally:
            hypervisor.close()
    daemon.close()
