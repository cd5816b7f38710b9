"""A bidder's VM console over the signed service: the relay (once per host) and the files it shares
with every worker.

Each VM's serial port is a pseudo-terminal of QEMU's, reached through libvirt's console stream
(hypervisor.py ``open_console``: nothing on the network, no socket file, no need to run as root).
libvirt gives a console to one holder at a time, so one relay — a thread of the worker that runs the
allocation loop — holds the console of every live bid's VM and shares it with the workers through
files in ``console_dir`` (mode 0700):

    <bid>.out    what the VM wrote, as received; offsets count from the VM's first byte. Kept to
                 OUTPUT_BYTES_MAX: beyond it the older half is dropped and ``<bid>.base`` says
                 the offset the file now starts at
    <bid>.in     what the bid's owner sent (ConsoleWrite appends it, under ``<bid>.lock``); the
                 relay takes the file whole (renamed under the same lock) and writes it to the VM

A worker answering ConsoleRead reads ``<bid>.out`` from an offset (waiting up to ``wait_ms`` for
more); ConsoleWrite appends to ``<bid>.in``. Who may is the policy's (the bid's owner only).
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from gridcredit.errors import DomainError, GridcreditError

log = logging.getLogger("gridcredit.services.auctioneer.console")
OUTPUT_BYTES_MAX = 1 << 20            # kept of a VM's output
WRITE_BYTES_MAX = 64 * 1024           # one ConsoleWrite
READ_BYTES_MAX = 256 * 1024           # one ConsoleRead
PENDING_INPUT_BYTES_MAX = 1 << 20     # input not yet taken by the relay
WAIT_MS_MAX = 5_000
POLL_S = 0.05
CONSOLE_UNAVAILABLE = "ConsoleUnavailable"


@dataclass(frozen=True, slots=True)
class ConsoleOutput:
    data: bytes
    offset: int                        # where ``data`` starts: later than asked when older output was dropped,
                                       # earlier when asked beyond the end (the end: what the VM writes next)
    next_offset: int                   # ask from here next time


class ConsoleFiles:
    """The files of the consoles in ``directory`` (what workers use)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, bid_id: str, suffix: str) -> Path:
        return self.directory / f"{bid_id}.{suffix}"

    def base(self, bid_id: str) -> int:
        try:
            return int(self._path(bid_id, "base").read_text() or 0)
        except (OSError, ValueError):
            return 0

    def read(self, bid_id: str, offset: int, *, wait_ms: int = 0) -> ConsoleOutput:
        deadline = time.monotonic() + min(max(wait_ms, 0), WAIT_MS_MAX) / 1000
        while True:
            base = self.base(bid_id)
            try:
                with open(self._path(bid_id, "out"), "rb") as file:
                    end = base + os.fstat(file.fileno()).st_size
                    start = min(max(offset, base), end)       # beyond the end: from the end (what comes next)
                    file.seek(start - base)
                    data = file.read(READ_BYTES_MAX)
            except FileNotFoundError:
                start, data = min(max(offset, base), base), b""
            if data or time.monotonic() >= deadline:
                return ConsoleOutput(data, start, start + len(data))
            time.sleep(POLL_S)

    def write(self, bid_id: str, data: bytes) -> int:
        if len(data) > WRITE_BYTES_MAX:
            raise DomainError(f"a console write carries at most {WRITE_BYTES_MAX:,} bytes, not {len(data):,}",
                              "InvalidArgument")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._path(bid_id, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self._path(bid_id, "in")
            pending = path.stat().st_size if path.exists() else 0
            if pending + len(data) > PENDING_INPUT_BYTES_MAX:
                raise DomainError(f"the VM has not taken the {pending:,} bytes sent before (is it reading its "
                                  f"console?): send again later", CONSOLE_UNAVAILABLE)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        return len(data)

    def take_input(self, bid_id: str) -> bytes:
        """The input sent so far, taken (the relay's side)."""
        path = self._path(bid_id, "in")
        if not path.exists():
            return b""
        with open(self._path(bid_id, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = path.read_bytes()
                path.unlink()
            except FileNotFoundError:
                return b""
        return data

    def append_output(self, bid_id: str, data: bytes) -> None:
        path = self._path(bid_id, "out")
        with open(path, "ab") as file:
            file.write(data)
        size = path.stat().st_size
        if size > OUTPUT_BYTES_MAX:           # keep the newer half
            keep = path.read_bytes()[-(OUTPUT_BYTES_MAX // 2):]
            base = self.base(bid_id) + size - len(keep)
            temporary = self._path(bid_id, "out.tmp")
            temporary.write_bytes(keep)
            self._path(bid_id, "base").write_text(str(base))
            os.replace(temporary, path)

    def forget(self, bid_id: str) -> None:
        for suffix in ("in", "lock"):
            try:
                self._path(bid_id, suffix).unlink()
            except FileNotFoundError:
                pass


class ConsoleRelay:
    """Holds the console connection of each followed VM (``follow({bid: vm})``, from the loop) and
    moves bytes between it and the files, every POLL_S, in a thread of its own."""

    def __init__(self, directory: Path, open_console: Callable[[str], "Console"]) -> None:
        self.files = ConsoleFiles(directory)
        self.files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.open_console = open_console
        self._followed: dict[str, str] = {}
        self._consoles: dict[str, Console] = {}
        self._lock = threading.Lock()

    def follow(self, vms: dict[str, str]) -> None:
        with self._lock:
            self._followed = dict(vms)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(stop,), name="auctioneer-console-relay", daemon=True)
        thread.start()
        return thread

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            try:
                self.step()
            except Exception:  # noqa: BLE001 — the relay must go on for the other VMs; a bug is logged
                log.exception("console relay step failed")

    def step(self) -> None:
        with self._lock:
            followed = dict(self._followed)
        for bid_id in list(self._consoles):
            if bid_id not in followed:
                self._close(bid_id)
                self.files.forget(bid_id)
        for bid_id, vm in followed.items():
            console = self._consoles.get(bid_id)
            if console is None:
                console = self._open(bid_id, vm)
                if console is None:
                    continue
            try:
                while (data := console.read()) is not None:
                    self.files.append_output(bid_id, data)
                pending = self.files.take_input(bid_id)
                if pending:
                    console.write(pending)
            except GridcreditError as error:     # closed (the VM stopped) or failed: opened again at the next step
                log.info("console of %s closed: %s", vm, error)
                self._close(bid_id)

    def _open(self, bid_id: str, vm: str) -> Console | None:
        try:
            console = self.open_console(vm)
        except GridcreditError as error:       # not there yet, or libvirt down: tried again at the next step
            log.debug("console of %s not reached: %s", vm, error)
            return None
        self._consoles[bid_id] = console
        return console

    def _close(self, bid_id: str) -> None:
        console = self._consoles.pop(bid_id, None)
        if console is not None:
            console.close()


class Console(Protocol):
    """A VM's console as the relay uses it (hypervisor.py's ``ConsoleStream``)."""

    def read(self) -> bytes | None: ...           # what came (None: nothing now); GridcreditError once closed
    def write(self, data: bytes) -> None: ...     # all of it, or GridcreditError
    def close(self) -> None: ...
