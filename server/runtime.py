"""What one server worker holds for the services: the configuration, the store, and what each
registered service built over it (``runtime.bank``, ``runtime.luts``), plus their background tasks.

Built after the worker process starts (an SQLite connection or a BaseX session must not cross a
fork), handed to every operation through the WSGI environment, closed when the worker stops.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from gridcredit.config import Config
from gridcredit import metrics
from gridcredit.metrics import Gauge
from gridcredit.contract import BackgroundTask, BuildContext, HostFiles, Registration, TaskContext
from gridcredit.singleton import SingletonLock, run_holding
from gridcredit.xmlstore import XmlStore

from . import registry

log = logging.getLogger("gridcredit.runtime")
ONCE_PER_HOST_POLL_S = 5.0   # how often a worker waiting for a once-per-host task tries its lock


@dataclass
class Runtime:
    config: Config
    store: XmlStore
    parts: dict[str, Any]               # service name → what its contract built
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        parts = self.__dict__.get("parts", {})
        if name in parts:
            return parts[name]
        raise AttributeError(f"no service {name!r} runs in this worker")

    def start_background_work(self, files: HostFiles | None = None) -> None:
        """Each service's background tasks that the configuration enables: a once-per-host task
        runs in the one worker that holds its lock (another takes over when that worker dies)."""
        for contract in registry.services():
            for task in contract.background_tasks:
                if contract.name in self.parts and task.enabled(self.config):
                    context = TaskContext(self.parts[contract.name], self.config, files, self._stop)
                    self._start(task, context)

    def _start(self, task: BackgroundTask, context: TaskContext) -> None:
        target = self._run_once_per_host if task.once_per_host else self._run
        thread = threading.Thread(target=target, args=(task, context), name=task.name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run(self, task: BackgroundTask, context: TaskContext) -> None:
        try:
            task.run(context)
        except Exception:  # noqa: BLE001 — a task's own loop retries; reaching here is a bug to see
            log.exception("background task %s stopped", task.name)

    def _run_once_per_host(self, task: BackgroundTask, context: TaskContext) -> None:
        lock = SingletonLock(once_per_host_lock_path(self.config, task.name))

        def run() -> None:
            log.info("%s runs in this worker (pid %d, lock %s)", task.name, os.getpid(), lock.path)
            self._run(task, context)

        run_holding(lock, context.stop, retry_s=ONCE_PER_HOST_POLL_S, run=run)

    def registrations(self) -> dict[str, Registration]:
        """Plain HTTPS POST routes (TLS client certificate authentication) the services serve beside SOAP."""
        routes: dict[str, Registration] = {}
        for contract in registry.services():
            if contract.routes is not None and contract.name in self.parts:
                routes.update(contract.routes(self.parts[contract.name], self.config))
        return routes

    def web_pages(self) -> dict[str, list]:
        """Each running service's pages of the web view (``gridcredit.web.WebPage``), by service name."""
        return {contract.name: list(contract.web_pages(self.parts[contract.name], self.config))
                for contract in registry.services()
                if contract.web_pages is not None and contract.name in self.parts}

    def gauges(self) -> list[Gauge]:
        """What /metrics reads when scraped: the store's backlog, then each service's own gauges."""
        values = metrics.store_gauges(self.store.backlog())
        for contract in registry.services():
            if contract.gauges is not None and contract.name in self.parts:
                try:
                    values.extend(contract.gauges(self.parts[contract.name], self.config))
                except Exception as error:  # noqa: BLE001 — a scrape shows what it can; the log says what failed
                    log.warning("metrics: the %s service's gauges failed: %s", contract.name, error)
        return values

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()


def once_per_host_lock_path(config: Config, task_name: str):
    return config.state_path / "locks" / f"{task_name}.lock"


def prepare_services(config: Config) -> None:
    """Once per host, before the workers start: what each service needs made once (keys…)."""
    for contract in registry.services():
        if contract.prepare is not None:
            contract.prepare(config)


def build_runtime(config: Config, files: HostFiles | None = None) -> Runtime:
    config = registry.complete(config)
    store = registry.open_service_store(config)
    context = BuildContext(config, store, files)
    parts = {contract.name: contract.build(context) for contract in registry.services() if contract.build}
    return Runtime(config=config, store=store, parts=parts)
