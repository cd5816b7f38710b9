"""The ``[luts]`` section of the configuration file (``GRIDCREDIT_LUTS_*`` in the environment)."""
from __future__ import annotations

from dataclasses import dataclass, field

from gridcredit.errors import ConfigError

SGAS_REQUEST_BYTES_MAX = 67_108_864     # records.py BatchLimits.document_bytes_max


@dataclass(frozen=True, slots=True)
class LutsConfig:
    admins: tuple[str, ...] = ()        # DNs that see every usage record and may replace records
    # VO name → DNs of its managers, who see the VO's records:  [luts.vo_managers] atlas = ["/O=Grid/CN=Ann"]
    vo_managers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Site administrators: DN → machine names they publish for ("*": any), and see; they may replace records
    site_publishers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    host_publishers: bool = True        # a host certificate (dNSName subjectAltName NAME) may publish records of machine NAME
    sgas_path: str = "/sgas"            # SGAS-compatible registration for existing reporters: POST <sgas_path>/ur
    # The largest body <sgas_path>/ur takes (bytes): ARC sends batches of 50 records (urbatchsize),
    # up to ~250 KB each with many file transfers (32 MiB: 2.5 times that); at most 64 MiB, the LUTS's document limit
    sgas_request_bytes_max: int = 33_554_432
    # Forwarding every stored record to a higher-level LUTS, signed with this host's certificate
    # (its DN must be allowed to publish there): the upstream's base URL, e.g. https://luts.example.org:8443
    forward_to: str = ""                # empty: no forwarding
    forward_interval_s: int = 30        # how often the queue of records to forward is sent (1-86400)
    forward_batch_records: int = 1000   # records per request to the upstream LUTS (1-10000)

    def check(self) -> None:
        if self.forward_to and not self.forward_to.startswith("https://"):
            raise ConfigError(f"luts.forward_to must be the https:// base URL of the upstream LUTS, not {self.forward_to!r}")
        if not 1_000_000 <= self.sgas_request_bytes_max <= SGAS_REQUEST_BYTES_MAX:
            raise ConfigError(f"luts.sgas_request_bytes_max must be 1000000-{SGAS_REQUEST_BYTES_MAX} (bytes; the most "
                              f"a usage-record document the LUTS reads may have)")
        if not 1 <= self.forward_interval_s <= 86_400:
            raise ConfigError("luts.forward_interval_s must be 1-86400")
        if not 1 <= self.forward_batch_records <= 10_000:
            raise ConfigError("luts.forward_batch_records must be 1-10000")
