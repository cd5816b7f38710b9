"""The ``[jarm]`` section of the configuration file (``GRIDCREDIT_JARM_*`` in the environment)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from gridcredit.errors import ConfigError

QUOTE_GUARANTEE_S_MAX = 7 * 86_400      # pricing.QUOTE_GUARANTEE_S_MAX (a test checks they are equal)
QUOTES_PER_REQUESTER_MAX = 100_000     # the store's scan limit: the count of one caller's quotes examines them
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")   # types.py's names


@dataclass(frozen=True, slots=True)
class JarmConfig:
    # The site whose prices this JARM keeps and quotes (its Slurm ClusterName is a good choice)
    site: str = "local"
    price_admins: tuple[str, ...] = ()  # DNs that may set the site's price tables (never with a limited proxy)
    # The longest a guaranteed quote of this site holds (seconds, 0: no guaranteed quotes; at most 7 days)
    quote_guarantee_s_max: int = 86_400
    # Unexpired guaranteed quotes one caller may hold (each is a document in the store; 1-100000)
    quotes_per_requester_max: int = 1_000

    def check(self) -> None:
        if not isinstance(self.site, str) or not _SITE.fullmatch(self.site):
            raise ConfigError(f"jarm.site must be a name of 1-64 characters of A-Z a-z 0-9 _ . + - (starting with a "
                              f"letter or digit), not {self.site!r}")
        if not 0 <= self.quote_guarantee_s_max <= QUOTE_GUARANTEE_S_MAX:
            raise ConfigError(f"jarm.quote_guarantee_s_max must be 0-{QUOTE_GUARANTEE_S_MAX} (seconds), not "
                              f"{self.quote_guarantee_s_max}")
        if not 1 <= self.quotes_per_requester_max <= QUOTES_PER_REQUESTER_MAX:
            raise ConfigError(f"jarm.quotes_per_requester_max must be 1-{QUOTES_PER_REQUESTER_MAX}, not "
                              f"{self.quotes_per_requester_max}")
