"""One configuration file (TOML) with environment overrides.

The file is found at ``--config``, else ``$GRIDCREDIT_CONFIG``, else ``./gridcredit.toml``,
else ``~/.config/gridcredit/gridcredit.toml``; a missing file means defaults. Any setting can be
overridden by ``GRIDCREDIT_<SECTION>_<KEY>`` (for example ``GRIDCREDIT_SERVER_PORT=9443``,
``GRIDCREDIT_STORE_BACKEND=basex``). Lists in the environment are comma-separated.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

ENV_PREFIX = "GRIDCREDIT_"


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "gridcredit"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 2                    # processes accepting on one shared listening socket
    threads: int = 16                   # request threads per worker
    client_cert: str = "optional"       # TLS client certificate: none | optional | required
    request_bytes_max: int = 10_000_000
    request_timeout_s: int = 30
    handshake_timeout_s: int = 10       # a TLS handshake not done by then is dropped (handshakes never block accepting)
    listen_backlog: int = 1024          # connections the kernel queues for accepting (capped by net.core.somaxconn)
    # Open connections (handshaking, idle or busy) one client address may hold at one worker
    # process; more are closed at once. IPv6 clients count per /64 network.
    connections_per_address_max: int = 64


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    host_cert: str = ""                 # empty: a development CA and host certificate are made on first run
    host_key: str = ""
    cert_dir: str = ""                  # trust directory (CA certificates and CRLs), like /etc/grid-security/certificates
    timestamp_ttl_s: int = 300
    clock_skew_s: int = 60
    require_crl: bool = True            # refuse certificates of a CA whose CRL is missing from cert_dir
    allow_sha1: bool = False            # legacy interop only: accept SHA-1 digests and RSA-SHA1 signatures
    allow_weak_keys: bool = False       # legacy peers only: accept RSA < 2048 bits, EC curves < P-256 and DSA in chains
    xml_depth_max: int = 256
    replay_cache: str = ""              # empty: <state_dir>/replay.sqlite


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = "embedded"           # embedded | basex
    path: str = ""                      # embedded store file / BaseX journal folder; empty: under state_dir
    basex_host: str = "127.0.0.1"
    basex_port: int = 1984
    basex_user: str = "admin"
    basex_password: str = "admin"
    timeout_s: int = 30
    # Committed XML (journal) waiting for BaseX before writes are held back (refused: retry later);
    # a bank transaction weighs ~8 KB here (several requests group-committed): measure your own rate
    basex_backlog_bytes_max: int = 32_000_000


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: the host's own sections, and one section per service
    (``sections``: name → the frozen dataclass its ``ServiceContract.config_section`` declares),
    read as attributes: ``config.bank.admins``."""
    state_dir: str = ""
    log_level: str = "INFO"
    server: ServerConfig = field(default_factory=ServerConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sections: Mapping[str, Any] = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: a service's section.
        sections = object.__getattribute__(self, "sections")
        if name in sections:
            return sections[name]
        raise AttributeError(f"the configuration has no [{name}] section (services declare theirs: "
                             f"gridcredit.server.registry builds a Config with all of them)")

    def with_section(self, name: str, section: Any) -> "Config":
        """This configuration with the service section ``name`` replaced."""
        return dataclasses.replace(self, sections={**self.sections, name: section})

    def with_sections(self, section_types: Mapping[str, type]) -> "Config":
        """This configuration with a default section for each service that has none yet."""
        missing = {name: kind() for name, kind in section_types.items() if name not in self.sections}
        return self if not missing else dataclasses.replace(self, sections={**self.sections, **missing})


def find_config_file(explicit: str | None = None, env: dict[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    candidates = [explicit, env.get(ENV_PREFIX + "CONFIG"), "gridcredit.toml",
                  str(Path.home() / ".config" / "gridcredit" / "gridcredit.toml")]
    for index, candidate in enumerate(candidates):
        if not candidate:
            continue
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
        if index < 2:  # a file named explicitly must exist
            raise ConfigError(f"configuration file {path} does not exist")
    return None


def _convert(value: str, kind: typing.Any, name: str) -> typing.Any:
    try:
        if kind is bool:
            lowered = value.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(value)
            return lowered in {"1", "true", "yes", "on"}
        if kind is int:
            return int(value)
        if typing.get_origin(kind) is tuple:
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if typing.get_origin(kind) is dict:  # DNs hold commas and '=': a table comes as JSON
            return _mapping(json.loads(value), name)
        return value
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def _mapping(value: typing.Any, name: str) -> dict[str, tuple[str, ...]]:
    """A table of name → list of strings (the only mapping our settings use)."""
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and isinstance(items, list) and all(isinstance(item, str) for item in items)
            for key, items in value.items()):
        raise ConfigError(f"{name} must be a table of name = [\"text\", …]")
    return {key: tuple(items) for key, items in value.items()}


def _build(cls: type, table: dict, env: dict[str, str], prefix: str, where: str,
           skip: frozenset[str] = frozenset()) -> typing.Any:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    unknown = set(table) - {f.name for f in fields}
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))} in {where}")
    values = {}
    for f in fields:
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            sub = table.get(f.name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"[{f.name}] in {where} must be a table")
            values[f.name] = _build(kind, sub, env, prefix + f.name.upper() + "_", f"[{f.name}] of {where}")
            continue
        env_name = prefix + f.name.upper()
        if env_name in env:
            values[f.name] = _convert(env[env_name], kind, env_name)
        elif f.name in table:
            value = table[f.name]
            if typing.get_origin(kind) is dict:
                value = _mapping(value, f"{f.name} in {where}")
            elif typing.get_origin(kind) is tuple:
                if not isinstance(value, list):
                    raise ConfigError(f"{f.name} in {where} must be a list")
                value = tuple(value)
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{f.name} in {where} must be a {kind.__name__}, not {value!r}")
            values[f.name] = value
    return cls(**values)


def load_config(path: str | None = None, env: dict[str, str] | None = None, *,
                sections: Mapping[str, type] = {}) -> Config:
    """Read the configuration file (if any) and apply ``GRIDCREDIT_*`` environment overrides.

    ``sections``: the services' sections (name → dataclass), as ``gridcredit.server.registry``
    passes them; a table in the file that is neither the host's nor a service's is an error.
    """
    env = dict(os.environ if env is None else env)
    config_file = find_config_file(path, env)
    table: dict = {}
    where = "defaults"
    if config_file is not None:
        where = str(config_file)
        try:
            table = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read {config_file}: {error}") from None
    host_table = {key: value for key, value in table.items() if key not in sections}
    service_sections = {}
    for name, kind in sections.items():
        sub = table.get(name, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"[{name}] in {where} must be a table")
        service_sections[name] = _build(kind, sub, env, f"{ENV_PREFIX}{name.upper()}_", f"[{name}] of {where}")
    config = _build(Config, host_table, env, ENV_PREFIX, where, skip=frozenset({"sections"}))
    config = dataclasses.replace(config, sections=service_sections)
    if config.store.backend not in {"embedded", "basex"}:
        raise ConfigError(f"store.backend must be 'embedded' or 'basex', not {config.store.backend!r}")
    if config.server.client_cert not in {"none", "optional", "required"}:
        raise ConfigError("server.client_cert must be none, optional or required")
    if not 100_000 <= config.store.basex_backlog_bytes_max <= 10_000_000_000:
        raise ConfigError("store.basex_backlog_bytes_max must be 100000-10000000000 (bytes)")
    if not 1 <= config.server.handshake_timeout_s <= 300:
        raise ConfigError("server.handshake_timeout_s must be 1-300")
    if not 1 <= config.server.listen_backlog <= 65_535:
        raise ConfigError("server.listen_backlog must be 1-65535")
    if not 1 <= config.server.connections_per_address_max <= 100_000:
        raise ConfigError("server.connections_per_address_max must be 1-100000")
    for section in service_sections.values():
        if hasattr(section, "check"):
            section.check()
    return config
