"""What one server worker holds for the services: configuration, the store, the Bank, the LUTS.

Built after the worker process starts (an SQLite connection or a BaseX session must not cross a
fork), handed to every operation through the WSGI environment, closed when the worker stops.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .config import Config
from .errors import StoreError
from .services.bank.bank import Bank, LedgerKey, policy_from_config
from .services.luts.luts import INDEXES as LUTS_INDEXES, Caller, Luts, LutsPolicy
from .services.luts.sgas import register_usage_records
from .xmlstore import XmlStore, open_store

log = logging.getLogger("gridcredit.runtime")


def ledger_key_path(config: Config):
    return config.state_path / "bank" / "ledger-signing-key.pem"


@dataclass
class Runtime:
    config: Config
    store: XmlStore
    bank: Bank
    luts: Luts
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start_background_work(self) -> None:
        """The expiry sweep (holds, pending mints): every worker runs one; the ledger ends each once anyway."""
        thread = threading.Thread(target=self._sweep_forever, name="hold-expiry", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sweep_forever(self) -> None:
        """Every ``bank.expiry_sweep_s``; it reads the store's own record (``scan_local``), so only
        writes held back stop it (BaseX far behind): said in one line when that begins, one when
        the sweep has ended something again — not every round (a round with nothing due says
        nothing about the store)."""
        interval_s = max(1, self.config.bank.expiry_sweep_s)
        failing = False
        while not self._stop.wait(interval_s):
            ended = 0
            try:
                while (count := self.bank.expire_due()) > 0 and not self._stop.is_set():
                    ended += count
            except StoreError as error:  # writes held back (BaseX behind), the store busy: expected
                if not failing:
                    log.warning("the expiry sweep cannot write to the store (%s); retrying every %d s", error,
                                interval_s)
                failing = True
                continue
            except Exception:  # noqa: BLE001 — a failed sweep is retried at the next interval
                log.exception("the expiry sweep failed; retrying in %d s", interval_s)
                failing = True
                continue
            if failing and ended:
                log.warning("the expiry sweep works again (%d ended)", ended)
                failing = False

    def start_forwarding(self, files) -> None:
        """With ``luts.forward_to``: forward stored usage records upstream, one forwarder per host (forward.py)."""
        from .services.luts.forward import start_forwarder

        thread = start_forwarder(self.config, self.luts, files, self._stop)
        if thread is not None:
            self._threads.append(thread)

    def registrations(self) -> dict:
        """Plain HTTPS POST routes (TLS client certificate authentication) the host serves beside SOAP."""
        from .host import Registration

        def sgas(data: bytes, principal):
            caller = None if principal is None else Caller.of(principal)
            return register_usage_records(self.luts, data, caller)

        return {self.config.luts.sgas_path.rstrip("/") + "/ur":
                Registration(sgas, self.config.luts.sgas_request_bytes_max, "luts.sgas_request_bytes_max")}

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()


def luts_held_dir(config: Config):
    """Where the LUTS keeps held documents too large for a store document (services/luts/held.py)."""
    return config.state_path / "luts" / "held"


def open_service_store(config: Config, *, read_only: bool = False) -> XmlStore:
    """The one store every service shares, with the indexes the services declare."""
    return open_store(config.store, config.state_path, indexes=LUTS_INDEXES, read_only=read_only)


def build_runtime(config: Config) -> Runtime:
    store = open_service_store(config)
    bank = Bank(store, LedgerKey.load_or_create(ledger_key_path(config)), policy=policy_from_config(config.bank))
    luts = Luts(store, LutsPolicy.from_config(config.luts), forwarding=bool(config.luts.forward_to),
                held_dir=luts_held_dir(config))
    return Runtime(config=config, store=store, bank=bank, luts=luts)
