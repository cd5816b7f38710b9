"""The LUTS as the host runs it: what each worker builds, the SGAS route, and forwarding upstream."""
from __future__ import annotations

from pathlib import Path

from gridcredit.contract import BuildContext, Registration, TaskContext


def luts_held_dir(config) -> Path:
    """Where the LUTS keeps held documents too large for a store document (held.py)."""
    return config.state_path / "luts" / "held"


def build(context: BuildContext):
    from .luts import Luts, LutsPolicy

    settings = context.config.luts
    return Luts(context.store, LutsPolicy.from_config(settings), forwarding=bool(settings.forward_to),
                held_dir=luts_held_dir(context.config))


def routes(luts, config) -> dict[str, Registration]:
    """SGAS's registration (``POST <luts.sgas_path>/ur``) for reporters that do not speak SOAP (ARC)."""
    from .sgas import register_usage_records

    def sgas(data: bytes, principal):
        return register_usage_records(luts, data, principal)     # None: no verified client certificate

    return {config.luts.sgas_path.rstrip("/") + "/ur":
            Registration(sgas, config.luts.sgas_request_bytes_max, "luts.sgas_request_bytes_max")}


def forwarding_enabled(config) -> bool:
    return bool(config.luts.forward_to)


def forward_forever(context: TaskContext) -> None:
    """Send the queue of stored records to ``luts.forward_to``, signed as this host (forward.py)."""
    from .forward import Forwarder, run_forwarder, upstream_client_factory

    settings = context.config.luts
    forwarder = Forwarder(context.part, upstream_client_factory(context.config, context.files),
                          batch_records=settings.forward_batch_records)
    run_forwarder(forwarder, interval_s=max(1, settings.forward_interval_s), stop=context.stop)


def gauges(luts, config) -> list:
    """/metrics: the forwarding queue (records accepted here, not yet accepted upstream)."""
    from gridcredit.metrics import Gauge

    from .forward import REJECTED

    if not forwarding_enabled(config):
        return []
    return [Gauge("gridcredit_luts_forward_queue", "Usage records waiting to be forwarded upstream",
                  luts.store.count(luts.FORWARD_QUEUE)),
            Gauge("gridcredit_luts_forward_rejected", "Usage records the upstream LUTS refused (kept aside)",
                  luts.store.count(REJECTED))]
