"""The ``[auctioneer]`` section of the configuration file (``GRIDCREDIT_AUCTIONEER_*`` in the environment).

An auctioneer sells one host's CPUs: ``host_id`` names it (empty: this host sells nothing and its
market operations answer ``AuctioneerDisabled``), ``capacity_cpus`` CPUs of the host — the cpuset
``cpuset`` every bidder's VM is pinned to — are shared among the live bids in proportion to their
rates, paid to the host owner's Bank account ``owner_account``. ``templates`` are the site's VM
templates, ``name=file`` (a bid names one). Rates are integer micro-credits per second (``*_ucps``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gridcredit.errors import ConfigError

MODES = ("capped", "work-conserving")
INTERVAL_S_MIN = 1
INTERVAL_S_MAX = 3_600
CAPACITY_CPUS_MAX = 1_024
RATE_UCPS_MAX = 10**15                 # market.py's RATE_MAX_UCPS
BUILT_IN_GUESTS = ("spin", "idle")      # guest.py's test guests
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")          # accounts, template names
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,39}")         # market.py's (it goes into Bank request ids)
_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


@dataclass(frozen=True, slots=True)
class AuctioneerConfig:
    host_id: str = ""                   # this host's name in the market (empty: it sells nothing)
    capacity_cpus: int = 1              # the CPUs sold (the cpuset's size, or fewer)
    cpuset: str = ""                    # the host CPUs the VMs run on, e.g. "1" or "2-3" (empty: any)
    owner_account: str = ""             # the Bank account the charges go to
    owners: tuple[str, ...] = ()        # DNs that see every bid of this host (besides the host itself)
    reserve_ucps: int = 0               # the reserve price: a bid below it gets no share (µcr/s)
    interval_s: int = 10                # the allocation interval (1-3600 s)
    mode: str = "capped"                # capped | work-conserving
    pay_for_use: bool = False           # Tycoon's pay-for-use: pay for the share actually used
    bank_url: str = ""                  # empty: https://localhost:<server.port>
    directory_url: str = ""             # the market directory to register with (empty: none)
    public_url: str = ""                # this host's URL in the directory (empty: https://localhost:<server.port>)
    # the VM templates bids may name: name=spin | name=idle (the built-in test guests) or
    # name=/absolute/template.toml (vcpus, memory_mib, image: a raw disk image, boot: fd | hd)
    templates: tuple[str, ...] = ()
    libvirt_uri: str = "qemu:///system"
    vm_dir: str = ""                    # the VMs' disks (empty: <state_dir>/auctioneer/vms;
                                        # it and its parents must be o+x: QEMU runs as libvirt-qemu)
    console_dir: str = ""               # the consoles' relayed output (empty: <state_dir>/auctioneer/consoles)
    vm_prefix: str = "gcm-"             # VM names: <vm_prefix><host_id>-<bid id>

    def check(self) -> None:
        if self.host_id and not _HOST_ID.fullmatch(self.host_id):
            raise ConfigError(f"auctioneer.host_id must be a name of 1-40 characters of A-Z a-z 0-9 . - "
                              f"(starting with a letter or digit), not {self.host_id!r}")
        if not 1 <= self.capacity_cpus <= CAPACITY_CPUS_MAX:
            raise ConfigError(f"auctioneer.capacity_cpus must be 1-{CAPACITY_CPUS_MAX}, not {self.capacity_cpus}")
        if self.cpuset and not _CPUSET.fullmatch(self.cpuset):
            raise ConfigError(f"auctioneer.cpuset must be a list of CPUs and ranges like 1 or 2-3,5, not "
                              f"{self.cpuset!r}")
        if self.owner_account and not _NAME.fullmatch(self.owner_account):
            raise ConfigError(f"auctioneer.owner_account must be a Bank account id, not {self.owner_account!r}")
        if self.host_id and not self.owner_account:
            raise ConfigError("auctioneer.owner_account must name the Bank account the charges go to when "
                              "auctioneer.host_id is set")
        if not 0 <= self.reserve_ucps <= RATE_UCPS_MAX:
            raise ConfigError(f"auctioneer.reserve_ucps must be 0-{RATE_UCPS_MAX} (micro-credits per second), not "
                              f"{self.reserve_ucps}")
        if not INTERVAL_S_MIN <= self.interval_s <= INTERVAL_S_MAX:
            raise ConfigError(f"auctioneer.interval_s must be {INTERVAL_S_MIN}-{INTERVAL_S_MAX} (seconds), not "
                              f"{self.interval_s}")
        if self.mode not in MODES:
            raise ConfigError(f"auctioneer.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", self.vm_prefix or "-"):
            raise ConfigError(f"auctioneer.vm_prefix must be 1-16 characters of a-z 0-9 - starting with a letter, "
                              f"not {self.vm_prefix!r}")
        self.template_files()

    def template_files(self) -> dict[str, str]:
        """The templates, name → ``spin``, ``idle`` or an absolute file (``ConfigError`` for a malformed entry)."""
        found: dict[str, str] = {}
        for entry in self.templates:
            name, equals, source = entry.partition("=")
            name, source = name.strip(), source.strip()
            if not equals or not _NAME.fullmatch(name) or not (source.startswith("/") or source in BUILT_IN_GUESTS):
                raise ConfigError(f"auctioneer.templates entries are name=spin, name=idle or name=/absolute/file.toml, "
                                  f"not {entry!r}")
            if name in found:
                raise ConfigError(f"auctioneer.templates names {name!r} twice")
            found[name] = source
        return found

    @property
    def enabled(self) -> bool:
        return bool(self.host_id)
