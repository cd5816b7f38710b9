"""The ``[jarm]`` section of the configuration file (``GRIDCREDIT_JARM_*`` in the environment)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from gridcredit.errors import ConfigError

QUOTE_GUARANTEE_S_MAX = 7 * 86_400      # pricing.QUOTE_GUARANTEE_S_MAX (a test checks they are equal)
QUOTES_PER_REQUESTER_MAX = 100_000     # the store's scan limit: the count of one caller's quotes examines them
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")   # types.py's names
BANK_UNREACHABLE_POLICIES = ("refuse", "admit_capped")
ADMISSION_TIMEOUT_MS_MAX = 1_000        # job_submit.lua waits under slurmctld's locks: never long


@dataclass(frozen=True, slots=True)
class JarmConfig:
    # The site whose prices this JARM keeps and quotes (its Slurm ClusterName is a good choice)
    site: str = "local"
    price_admins: tuple[str, ...] = ()  # DNs that may set the site's price tables (never with a limited proxy)
    # The longest a guaranteed quote of this site holds (seconds, 0: no guaranteed quotes; at most 7 days)
    quote_guarantee_s_max: int = 86_400
    # Unexpired guaranteed quotes one caller may hold (each is a document in the store; 1-100000)
    quotes_per_requester_max: int = 1_000
    # The admission agent on the Slurm controller (agent.py) and its job_submit.lua:
    agent_socket: str = "/run/gridcredit/jarm-agent.sock"  # the agent's Unix socket
    admission_timeout_ms: int = 100     # job_submit.lua's whole wait for an answer (1-1000); then the policy
    # Without the Bank's word (its balance older than balance_stale_s, or the agent not answering):
    # refuse, or admit_capped: admit up to unfunded_cap_credits per account (the agent's count; when the agent
    # itself does not answer, job_submit.lua admits up to agent_down_jobs_max jobs per account instead)
    bank_unreachable: str = "refuse"
    unfunded_cap_credits: int = 0
    agent_down_jobs_max: int = 0
    bank_url: str = ""                  # the Bank and the JARM the agent reads; empty: https://localhost:<server.port>
    jarm_url: str = ""
    balance_refresh_s: int = 5          # how often the agent reads the accounts' funds and the prices
    balance_stale_s: int = 30           # a balance older than this is not the Bank's word any more
    # Reservations (reservations.py, lifecycle.py): the site's Bank account every job's charge goes to
    # (empty: the JARM makes no reservations), the local users' grid identities, the hold's margin
    site_account: str = ""
    grid_mapfile: str = "/etc/grid-security/grid-mapfile"
    account_map: tuple[str, ...] = ()   # slurm_account=bank_account (else a job's Slurm account is its Bank account)
    controllers: tuple[str, ...] = ()   # DNs that report jobs (Reserve, Complete, Cancel) besides this host's own
    hold_grace_s: int = 3_600           # a hold lasts the job's time limit and this much more
    extend_margin_s: int = 600          # a running job's hold is extended this long before it expires
    reconcile_interval_s: int = 5       # how often pending Bank work is tried and ended runs are found
    slurm_bin_dir: str = ""             # where sacct, squeue, scontrol are (empty: the PATH)
    ur_spool: str = ""                  # usage records for the LUTS (empty: <state_dir>/jarm-ur-spool)
    luts_url: str = ""                  # empty: https://localhost:<server.port>

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
        if self.bank_unreachable not in BANK_UNREACHABLE_POLICIES:
            raise ConfigError(f"jarm.bank_unreachable must be one of {', '.join(BANK_UNREACHABLE_POLICIES)}, not "
                              f"{self.bank_unreachable!r}")
        if not 1 <= self.admission_timeout_ms <= ADMISSION_TIMEOUT_MS_MAX:
            raise ConfigError(f"jarm.admission_timeout_ms must be 1-{ADMISSION_TIMEOUT_MS_MAX}, not "
                              f"{self.admission_timeout_ms}")
        if not self.agent_socket.startswith("/") or len(self.agent_socket.encode()) > 100:
            raise ConfigError(f"jarm.agent_socket must be an absolute path of at most 100 bytes (a Unix socket's "
                              f"limit), not {self.agent_socket!r}")
        if not 0 <= self.unfunded_cap_credits <= 10**15 or not 0 <= self.agent_down_jobs_max <= 1_000_000:
            raise ConfigError(f"jarm.unfunded_cap_credits must be 0-10**15 and jarm.agent_down_jobs_max 0-1000000, "
                              f"not {self.unfunded_cap_credits} and {self.agent_down_jobs_max}")
        if self.site_account and not _SITE.fullmatch(self.site_account):
            raise ConfigError(f"jarm.site_account must be a Bank account id, not {self.site_account!r}")
        for entry in self.account_map:
            slurm, equals, bank = entry.partition("=")
            if not equals or not _SITE.fullmatch(slurm) or not _SITE.fullmatch(bank):
                raise ConfigError(f"jarm.account_map entries are slurm_account=bank_account, not {entry!r}")
        if not 0 <= self.hold_grace_s <= 30 * 86_400 or not 60 <= self.extend_margin_s <= 86_400:
            raise ConfigError(f"jarm.hold_grace_s must be 0-2592000 and jarm.extend_margin_s 60-86400 (seconds), not "
                              f"{self.hold_grace_s} and {self.extend_margin_s}")
        if not 1 <= self.reconcile_interval_s <= 3_600:
            raise ConfigError(f"jarm.reconcile_interval_s must be 1-3600, not {self.reconcile_interval_s}")
        if not 1 <= self.balance_refresh_s < self.balance_stale_s <= 86_400:
            raise ConfigError(f"jarm.balance_refresh_s must be at least 1 and below jarm.balance_stale_s (at most "
                              f"86400), not {self.balance_refresh_s} and {self.balance_stale_s}")
