"""The host's metrics in the Prometheus text format (``GET /metrics``), with ``prometheus_client``.

A host runs several forked workers: each counts what it serves into its own memory-mapped files
under ``<state>/metrics`` (the library's multiprocess mode), and the worker that answers a scrape
adds them all up — so a scrape sees the whole host whichever worker answers it. A worker run on
its own (tests, ``run_worker``) counts in memory.

Counters and histograms are made on first use (``counter``/``histogram``), never at import: the
multiprocess mode must be chosen before the first one exists. What is read at scrape time (a
store's backlog, an outbox's depth) comes from each service's ``ServiceContract.gauges``.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"   # the library's own name for it
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latency buckets (seconds): a signed request takes milliseconds; a slow store, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_lock = threading.Lock()
_made: dict[str, object] = {}
_registry = None            # in-memory mode: where the metrics register


def use_directory(directory: Path) -> None:
    """Count into ``directory`` from now on, in this process and the workers it forks: emptied
    first (a host's counters start at zero when it starts, as Prometheus expects of a restart)."""
    from prometheus_client import values

    global _registry
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[DIRECTORY_VARIABLE] = str(directory)
    values.ValueClass = values.MultiProcessValue()
    with _lock:
        # metrics made before (in memory, e.g. by a host run in this process) are not counted from now on:
        # new ones replace them, registered nowhere — a scrape reads the directory
        _made.clear()
        _registry = None


def worker_ended(pid: int) -> None:
    """A worker died: its counts stay (they happened); only its live gauges would go."""
    directory = os.environ.get(DIRECTORY_VARIABLE)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)


def _in_memory_registry():
    global _registry
    if _registry is None:
        from prometheus_client import CollectorRegistry

        _registry = CollectorRegistry(auto_describe=True)
    return _registry


def _metric(kind: str, name: str, documentation: str, labelnames: Sequence[str], **options):
    with _lock:
        made = _made.get(name)
        if made is None:
            import prometheus_client

            counted_in_files = bool(os.environ.get(DIRECTORY_VARIABLE))
            made = getattr(prometheus_client, kind)(name, documentation, tuple(labelnames),
                                                    registry=None if counted_in_files else _in_memory_registry(),
                                                    **options)
            _made[name] = made
        return made


def counter(name: str, documentation: str, labelnames: Sequence[str] = ()):
    """The process's counter ``name`` (made on first use; later calls return the same one)."""
    return _metric("Counter", name, documentation, labelnames)


def histogram(name: str, documentation: str, labelnames: Sequence[str] = (),
              buckets: Sequence[float] = LATENCY_BUCKETS):
    return _metric("Histogram", name, documentation, labelnames, buckets=tuple(buckets))


@dataclass(frozen=True, slots=True)
class Gauge:
    """A value read when scraped (``ServiceContract.gauges`` returns these)."""

    name: str
    documentation: str
    value: int | float
    labels: tuple[tuple[str, str], ...] = ()


def store_gauges(backlog) -> list[Gauge]:
    """What a scrape says of the store (``XmlStore.backlog()``, as the answering worker knows it)."""
    return [Gauge("gridcredit_store_backlog_transactions", "Committed transactions not yet in the query "
                  "database (BaseX), as the answering worker knows them", backlog.transactions),
            Gauge("gridcredit_store_backlog_bytes", "XML of those transactions, in bytes", backlog.xml_bytes),
            Gauge("gridcredit_store_lag_seconds", "How long the oldest of those transactions has waited for the "
                  "query database (BaseX), to about a second; 0 when none waits", round(backlog.lag_s, 3)),
            Gauge("gridcredit_store_waiting_for_server", "1 while the query database (BaseX) is unreachable "
                  "or not verified: reads are answered from the journal", int(backlog.waiting_for_server))]


def exposition(gauges: Iterable[Gauge] = ()) -> bytes:
    """Every counter and histogram of the host (all workers), then ``gauges``, in the text format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    directory = os.environ.get(DIRECTORY_VARIABLE)
    registry = CollectorRegistry(auto_describe=False)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Delegate(_in_memory_registry()))
    families: dict[str, GaugeMetricFamily] = {}
    for gauge in gauges:
        family = families.get(gauge.name)
        if family is None:
            family = families[gauge.name] = GaugeMetricFamily(gauge.name, gauge.documentation,
                                                              labels=[key for key, _ in gauge.labels])
        family.add_metric([value for _, value in gauge.labels], gauge.value)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Delegate:
    def __init__(self, registry) -> None:
        self._registry = registry

    def collect(self):
        return self._registry.collect()


class _Fixed:
    def __init__(self, families: list) -> None:
        self._families = families

    def collect(self):
        return iter(self._families)


@dataclass(frozen=True, slots=True)
class Access:
    """Who may scrape: a client address in one of ``networks``, or a TLS client certificate whose
    verified DN is one of ``dns``."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    dns: frozenset[str]

    @classmethod
    def of(cls, addresses: Sequence[str], dns: Sequence[str]) -> "Access":
        """``addresses``: IP addresses or networks (``10.0.0.0/8``); a bad one is a configuration error."""
        from gridcredit.errors import ConfigError

        networks = []
        for text in addresses:
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"metrics_addresses: {text!r} is not an IP address or network "
                                  f"(e.g. 127.0.0.1 or 10.0.0.0/8)") from None
        return cls(tuple(networks), frozenset(dns))

    def allows(self, address: str, dn: Callable[[], str | None]) -> bool:
        """``dn()`` is asked only when the address is not enough (it validates a certificate)."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            ip = None
        if ip is not None:
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if any(ip in network for network in self.networks):
                return True
        if not self.dns:
            return False
        return dn() in self.dns
