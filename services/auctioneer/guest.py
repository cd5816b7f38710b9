"""Test guests for the Auctioneer's enforcement: one-sector boot images, made here as bytes (no binary files).

A guest is a 512-byte boot sector (BIOS loads it at 0000:7C00 and jumps to it) put at the start of a 1.44 MB
floppy image. Both guests first set COM1 (I/O port 0x3F8) to 115200 8N1 with its FIFOs on and print a banner
line ("gridcredit spin guest ready" / "gridcredit idle guest ready"), then:

- ``spin``  busy-polls COM1 and echoes every byte it receives: it uses a whole CPU until capped (the CPU
  share measured by libvirt is its cap), *and* answers on its console (the owner can reach it).
- ``idle``  halts (``sti; hlt`` in a loop; the BIOS timer wakes it 18.2 times a second): it uses almost no
  CPU, for the work-conserving test (its share goes to the busy guests).

The code was assembled with GNU as (``as --32``, ``.code16``; ``objcopy -O binary``) from the listings
below, and checked with ``objdump -D -b binary -mi8086``. ``boot_sector(kind)`` rebuilds the sector:
the code bytes, the banner (whose address the code loads into SI: checked), zeros, then 55 AA.

Common start (both guests, offsets 0x00-0x33)::

    00 fa            cli
    01 31 c0         xor  ax, ax
    03 8e d8         mov  ds, ax
    05 8e d0         mov  ss, ax
    07 bc 00 7c      mov  sp, 0x7c00
    0a fc            cld
    0b ba fb 03      mov  dx, 0x3fb          ; LCR: DLAB on
    0e b0 80         mov  al, 0x80
    10 ee            out  dx, al
    11 ba f8 03      mov  dx, 0x3f8          ; divisor 1 = 115200 baud
    14 b0 01         mov  al, 1
    16 ee            out  dx, al
    17 42            inc  dx                 ; 0x3f9: divisor high byte 0
    18 30 c0         xor  al, al
    1a ee            out  dx, al
    1b ba fb 03      mov  dx, 0x3fb          ; LCR: 8N1, DLAB off
    1e b0 03         mov  al, 3
    20 ee            out  dx, al
    21 ba fa 03      mov  dx, 0x3fa          ; FCR: FIFOs on and cleared
    24 b0 07         mov  al, 7
    26 ee            out  dx, al
    27 be .. 7c      mov  si, banner         ; 0x7c5b (spin), 0x7c49 (idle)
    2a ac      next: lodsb
    2b 84 c0         test al, al
    2d 74 05         jz   main               ; 0x34
    2f e8 .. ..      call putc
    32 eb f6         jmp  next

spin (from 0x34)::

    34 b9 00 04 main: mov cx, 0x400          ; spin 1,024 times between two looks at the line
    37 e2 fe   delay: loop delay
    39 ba fd 03      mov  dx, 0x3fd          ; LSR
    3c ec            in   al, dx
    3d a8 01         test al, 1              ; a byte received?
    3f 74 f3         jz   main
    41 ba f8 03      mov  dx, 0x3f8          ; RBR
    44 ec            in   al, dx
    45 e8 02 00      call putc               ; echo it
    48 eb ea         jmp  main
    4a 88 c4   putc: mov  ah, al
    4c ba fd 03      mov  dx, 0x3fd
    4f ec      wait: in   al, dx
    50 a8 20         test al, 0x20           ; transmitter empty?
    52 74 fb         jz   wait
    54 ba f8 03      mov  dx, 0x3f8
    57 88 e0         mov  al, ah
    59 ee            out  dx, al
    5a c3            ret
    5b       banner: db "gridcredit spin guest ready", 13, 10, 0

idle (from 0x34)::

    34 fb      main: sti
    35 f4      halt: hlt
    36 eb fd         jmp  halt
    38 ...     putc: (as spin's, 0x38-0x48)
    49       banner: db "gridcredit idle guest ready", 13, 10, 0
"""
from __future__ import annotations

import os
from pathlib import Path

from gridcredit.errors import GridcreditError

SECTOR_BYTES = 512
FLOPPY_BYTES = 1_474_560          # a 1.44 MB floppy (80 × 2 × 18 × 512): QEMU's floppy controller sizes its
                                  # geometry from the image's size
LOAD_ADDRESS = 0x7C00

_COMMON = bytes.fromhex(
    "fa 31 c0 8e d8 8e d0 bc 00 7c fc ba fb 03 b0 80 ee ba f8 03 b0 01 ee 42 30 c0 ee"
    " ba fb 03 b0 03 ee ba fa 03 b0 07 ee")
_CODE = {
    "spin": _COMMON + bytes.fromhex(
        "be 5b 7c ac 84 c0 74 05 e8 18 00 eb f6"
        " b9 00 04 e2 fe ba fd 03 ec a8 01 74 f3 ba f8 03 ec e8 02 00 eb ea"
        " 88 c4 ba fd 03 ec a8 20 74 fb ba f8 03 88 e0 ee c3"),
    "idle": _COMMON + bytes.fromhex(
        "be 49 7c ac 84 c0 74 05 e8 06 00 eb f6"
        " fb f4 eb fd"
        " 88 c4 ba fd 03 ec a8 20 74 fb ba f8 03 88 e0 ee c3"),
}
BANNERS = {kind: f"gridcredit {kind} guest ready\r\n".encode("ascii") for kind in _CODE}
GUESTS = tuple(sorted(_CODE))     # the built-in guest names a Template's image may give


class UnknownGuest(GridcreditError):
    """A built-in guest name that is not one of GUESTS."""

    def __init__(self, kind: str):
        super().__init__(f"{kind!r} is not a built-in guest (known: {', '.join(GUESTS)})")
        self.kind = kind


def boot_sector(kind: str) -> bytes:
    """The 512-byte boot sector of the built-in guest ``kind`` ("spin" or "idle")."""
    try:
        code = _CODE[kind]
    except KeyError:
        raise UnknownGuest(kind) from None
    banner_address = int.from_bytes(code[0x28:0x2A], "little")   # the immediate of `mov si, banner`
    if code[0x27] != 0xBE or banner_address != LOAD_ADDRESS + len(code):
        raise AssertionError(f"invariant: {kind}'s banner is not where its code loads it from")
    body = code + BANNERS[kind] + b"\0"
    if len(body) > SECTOR_BYTES - 2:
        raise AssertionError(f"invariant: {kind}'s code and banner exceed one sector")
    return body.ljust(SECTOR_BYTES - 2, b"\0") + b"\x55\xaa"


def write_floppy(path: str | os.PathLike, kind: str, *, mode: int = 0o600) -> Path:
    """Write a 1.44 MB floppy image booting guest ``kind`` to ``path`` (created with ``mode``; sparse after
    the first sector). Returns the path."""
    path = Path(path)
    sector = boot_sector(kind)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(descriptor, sector)
        os.ftruncate(descriptor, FLOPPY_BYTES)
    finally:
        os.close(descriptor)
    return path
