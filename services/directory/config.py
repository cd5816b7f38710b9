"""The ``[directory]`` section of the configuration file (``GRIDCREDIT_DIRECTORY_*`` in the environment)."""
from __future__ import annotations

from dataclasses import dataclass

from gridcredit.errors import ConfigError

from .types import TTL_S_MAX, TTL_S_MIN

HOSTS_MAX = 100_000                     # the store's scan limit: counting host ids examines them


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    admins: tuple[str, ...] = ()        # DNs that may remove a host's registration (and free its id)
    # Register must be signed by a host certificate naming the auctioneer URL's host (its dNSName):
    # the auctioneer itself. false: any full credential may register a URL (a site without host certificates)
    require_host_certificate: bool = True
    registrars: tuple[str, ...] = ()    # when not empty, only these DNs may register hosts at all
    ttl_s_max: int = 3_600              # the longest a registration is listed without a heartbeat (10-86400 s)
    hosts_max: int = 10_000             # host ids the directory keeps (1-100000)
    hosts_per_registrant_max: int = 100  # host ids one identity may own (1-100000)
    sweep_interval_s: int = 30          # how often expired registrations are deleted (1-3600 s)

    def check(self) -> None:
        if not TTL_S_MIN <= self.ttl_s_max <= TTL_S_MAX:
            raise ConfigError(f"directory.ttl_s_max must be {TTL_S_MIN}-{TTL_S_MAX} (seconds), not {self.ttl_s_max}")
        if not 1 <= self.hosts_max <= HOSTS_MAX or not 1 <= self.hosts_per_registrant_max <= HOSTS_MAX:
            raise ConfigError(f"directory.hosts_max and directory.hosts_per_registrant_max must be 1-{HOSTS_MAX}, "
                              f"not {self.hosts_max} and {self.hosts_per_registrant_max}")
        if not 1 <= self.sweep_interval_s <= 3_600:
            raise ConfigError(f"directory.sweep_interval_s must be 1-3600 (seconds), not {self.sweep_interval_s}")
