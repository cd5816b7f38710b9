"""The ``[bank]`` section of the configuration file (``GRIDCREDIT_BANK_*`` in the environment)."""
from __future__ import annotations

from dataclasses import dataclass

from gridcredit.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BankConfig:
    admins: tuple[str, ...] = ()        # DNs of bank administrators, grid one-line form
    auditors: tuple[str, ...] = ()      # DNs that may run the online audit besides administrators
    services: tuple[str, ...] = ()      # service identities (JARM, auctioneer hosts): act only on holds they made
    approval_above: int = 0             # mints above this need a second administrator (0: never)
    mint_approval_days: int = 7         # a mint awaiting approval expires this many days after its request (1-366)
    hold_days_max: int = 31             # the longest a hold may run
    expiry_sweep_s: int = 5             # how often expired holds are returned

    def check(self) -> None:
        """Values out of range refuse the configuration when it is read, not when a worker starts."""
        from .bank import policy_from_config   # the ledger's limits are checked where they are used

        policy_from_config(self)
        if self.expiry_sweep_s < 1:
            raise ConfigError(f"bank.expiry_sweep_s must be at least 1 (seconds), not {self.expiry_sweep_s}")
