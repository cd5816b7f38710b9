"""The Bank as the host runs it: its key, what each worker builds, and the expiry sweep."""
from __future__ import annotations

import logging
from pathlib import Path

from gridcredit import metrics
from gridcredit.contract import BuildContext, TaskContext
from gridcredit.errors import StoreError

log = logging.getLogger("gridcredit.services.bank")


def ledger_key_path(config) -> Path:
    return config.state_path / "bank" / "ledger-signing-key.pem"


def prepare(config) -> None:
    """Once per host before the workers start: the ledger's signing key exists (workers must not race to make it)."""
    from .bank import LedgerKey

    LedgerKey.load_or_create(ledger_key_path(config))


def build(context: BuildContext):
    from .bank import Bank, LedgerKey, policy_from_config

    from . import holders

    bank = Bank(context.store, LedgerKey.load_or_create(ledger_key_path(context.config)),
                policy=policy_from_config(context.config.bank))
    try:     # once per store: the holder index of accounts written before it existed
        holders.build(context.store)
    except StoreError as error:      # the index only narrows a web page's search: the Bank serves without it
        log.warning("the holder index could not be built (%s): the web view's \"your accounts\" reads every "
                    "account until it is", error)
    return bank


def sweep_expired_forever(context: TaskContext) -> None:
    """Every ``bank.expiry_sweep_s``, end the holds and pending mints that are due. It reads the
    store's own record (``scan_local``), so only writes held back stop it (BaseX far behind): said
    in one line when that begins, one when the sweep has ended something again — not every round
    (a round with nothing due says nothing about the store)."""
    bank, stop = context.part, context.stop
    interval_s = max(1, context.config.bank.expiry_sweep_s)
    failing = False
    sweeps = metrics.counter("gridcredit_expiry_sweeps_total", "Expiry sweeps run, by service", ("service",))
    expired = metrics.counter("gridcredit_expired_total", "Holds and pending mints the expiry sweep ended, by service",
                              ("service",))
    while not stop.wait(interval_s):
        ended = 0
        sweeps.labels("bank").inc()
        try:
            while (count := bank.expire_due()) > 0 and not stop.is_set():
                ended += count
                expired.labels("bank").inc(count)
        except StoreError as error:  # writes held back (BaseX behind), the store busy: expected
            if not failing:
                log.warning("the expiry sweep cannot write to the store (%s); retrying every %d s", error, interval_s)
            failing = True
            continue
        except Exception:  # noqa: BLE001 — a failed sweep is retried at the next interval
            log.exception("the expiry sweep failed; retrying in %d s", interval_s)
            failing = True
            continue
        if failing and ended:
            log.warning("the expiry sweep works again (%d ended)", ended)
            failing = False
