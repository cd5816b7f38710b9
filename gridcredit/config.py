"""One configuration file (TOML) with environment overrides.

The file is found at ``--config``, else ``$GRIDCREDIT_CONFIG``, else ``./gridcredit.toml``,
else ``~/.config/gridcredit/gridcredit.toml``; a missing file means defaults. Any setting can be
overridden by ``GRIDCREDIT_<SECTION>_<KEY>`` (for example ``GRIDCREDIT_SERVER_PORT=9443``,
``GRIDCREDIT_STORE_BACKEND=basex``). A list in the environment is comma-separated
(``GRIDCREDIT_BANK_ADMINS="/DC=org/CN=A,/DC=org/CN=B"``) or, when an item holds a comma, a JSON
array (``'["/O=Example, Inc./CN=A"]'``); a table is a JSON object. A ``GRIDCREDIT_*`` variable that
names no setting is an error, as a misspelled key in the file is: the settings are the host's
sections here and the sections the services declare (``ServiceContract.config_section``), so the
names come from those dataclasses (``known_environment_names``); ``NOT_SETTINGS`` lists the few
variables of our tools that are not settings.

``[client]`` is what the ``gridcredit`` client commands use when their ``--url``, ``--cert``,
``--key``, ``--proxy`` and ``--trust`` are not given (``client_settings``).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .errors import ConfigError

ENV_PREFIX = "GRIDCREDIT_"
# GRIDCREDIT_* variables that are not settings, read by our tools themselves.
NOT_SETTINGS = {
    "GRIDCREDIT_CONFIG": "the configuration file",
    "GRIDCREDIT_SLURM_DIR": "scripts/slurm.sh's cluster",
    "GRIDCREDIT_BENCH_KEEP": "bench/: keep the benchmark's state",
    "GRIDCREDIT_MACHINE_CPU_SHARES": "scripts/libvirt.sh: the VMs' cgroup priority",
    "GRIDCREDIT_HYPERVISOR_CPU_SHARES": "scripts/libvirt.sh: libvirtd's and virtlogd's cgroup priority",
    "GRIDCREDIT_TEST_WORKERS": "scripts/test.sh: pytest-xdist workers of the parallel phase (1: one plain pytest)",
    "GRIDCREDIT_SCREENSHOT_DIR": "tests/test_web_browser.py (scripts/web-screenshots.sh): where page screenshots go",
}
PORT_MAX = 65_535
WORKERS_MAX = 256


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
    # Who may read GET /metrics (Prometheus): client addresses or networks, and TLS client certificate DNs
    metrics_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    metrics_dns: tuple[str, ...] = ()


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
class ClientConfig:
    """What the client commands use when an option is not given (``client_settings``)."""
    url: str = ""                       # empty: https://localhost:<server.port>
    cert: str = ""                      # empty: grid conventions (X509_USER_PROXY, /tmp/x509up_u<uid>, X509_USER_CERT, ~/.globus)
    key: str = ""
    proxy: str = ""
    trust_dir: str = ""                 # empty: X509_CERT_DIR, else this host's (security.cert_dir, or the development
                                        # trust directory `serve` made under state_dir), else /etc/grid-security/certificates


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
    client: ClientConfig = field(default_factory=ClientConfig)
    sections: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""                    # the file it was read from ("": none, defaults and the environment)

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
            if value.lstrip().startswith("["):   # a JSON array: items may hold commas
                items = json.loads(value)
                if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                    raise ConfigError(f"{name} must be a JSON array of strings, e.g. '[\"/DC=org/CN=A\", \"/DC=org/CN=B\"]'")
                return tuple(items)
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


def _environment_names(cls: type, prefix: str, skip: frozenset[str] = frozenset()) -> set[str]:
    """The ``GRIDCREDIT_*`` names of the settings of dataclass ``cls`` (nested sections included)."""
    hints = typing.get_type_hints(cls)
    names = set()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            names |= _environment_names(hints[f.name], prefix + f.name.upper() + "_")
        else:
            names.add(prefix + f.name.upper())
    return names


HOST_SKIP = frozenset({"sections", "source"})


def known_environment_names(sections: Mapping[str, type]) -> set[str]:
    """Every ``GRIDCREDIT_*`` variable that names a setting: the host's and those of ``sections``
    (the services' ``config_section`` dataclasses), and the few of ``NOT_SETTINGS``."""
    names = _environment_names(Config, ENV_PREFIX, HOST_SKIP) | set(NOT_SETTINGS)
    for name, kind in sections.items():
        names |= _environment_names(kind, f"{ENV_PREFIX}{name.upper()}_")
    return names


def check_environment(env: Mapping[str, str], sections: Mapping[str, type]) -> None:
    """A ``GRIDCREDIT_*`` variable that names no setting is refused, as an unknown key in the file is.

    Without ``sections`` (a caller that does not know the services) only the variables under the
    host's own sections (``GRIDCREDIT_SERVER_…``, ``_SECURITY_``, ``_STORE_``, ``_CLIENT_``) are judged."""
    known = known_environment_names(sections)
    host_sections = [ENV_PREFIX + f.name.upper() + "_" for f in dataclasses.fields(Config)
                     if dataclasses.is_dataclass(typing.get_type_hints(Config)[f.name])]
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known
                     and (sections or any(name.startswith(prefix) for prefix in host_sections)))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(f"unknown environment variable(s) {', '.join(hints)}: a GRIDCREDIT_* variable overrides "
                          "the setting GRIDCREDIT_<SECTION>_<KEY> (top-level keys: GRIDCREDIT_<KEY>); unset it or "
                          "correct its name (README, Configuration)")


def check_url(url: str, what: str) -> str:
    """``url`` if it is an https:// URL with a host (``ConfigError`` saying how to write one, else)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() == "http":
        raise ConfigError(f"{what} {url!r} is http://: gridcredit hosts speak only HTTPS, write https://{parts.netloc}{parts.path}")
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not a URL such as https://localhost:8443 (it needs https:// and a host)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= PORT_MAX:
        raise ConfigError(f"{what} {url!r}: the port must be 1-{PORT_MAX}")
    return url.strip()


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a client command uses when an option is not given, each with where it comes from."""
    url: str
    url_from: str
    cert: str | None
    key: str | None
    proxy: str | None
    trust_dir: str | None            # None: the grid conventions decide (X509_CERT_DIR, /etc/grid-security/certificates)
    trust_from: str


def client_settings(config: Config, env: Mapping[str, str] | None = None) -> ClientSettings:
    """The ``[client]`` settings, with their defaults worked out: the URL is this host's own
    (``https://localhost:<server.port>``); the trust directory ``X509_CERT_DIR``, else this host's
    (``security.cert_dir``, else the development one ``serve`` made under the state directory, if it
    exists), else the grid conventions' (None)."""
    env = os.environ if env is None else env
    client = config.client
    where = config.source or "the defaults"
    if client.url:
        url, url_from = client.url, f"[client] url of {where}" if "GRIDCREDIT_CLIENT_URL" not in env else "GRIDCREDIT_CLIENT_URL"
    else:
        url, url_from = f"https://localhost:{config.server.port}", f"server.port of {where}"
    if client.trust_dir:
        trust, trust_from = client.trust_dir, ("GRIDCREDIT_CLIENT_TRUST_DIR" if "GRIDCREDIT_CLIENT_TRUST_DIR" in env
                                               else f"[client] trust_dir of {where}")
    elif env.get("X509_CERT_DIR"):
        trust, trust_from = None, "X509_CERT_DIR"
    elif config.security.cert_dir:
        trust, trust_from = config.security.cert_dir, f"security.cert_dir of {where}"
    elif not config.security.host_cert and (config.state_path / "pki" / "certificates").is_dir():
        trust, trust_from = str(config.state_path / "pki" / "certificates"), "the development CA of `gridcredit serve`"
    else:
        trust, trust_from = None, "/etc/grid-security/certificates"
    return ClientSettings(url=url, url_from=url_from, cert=client.cert or None, key=client.key or None,
                          proxy=client.proxy or None, trust_dir=trust, trust_from=trust_from)


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
    check_environment(env, sections)
    config = _build(Config, host_table, env, ENV_PREFIX, where, skip=HOST_SKIP)
    config = dataclasses.replace(config, sections=service_sections,
                                 source=str(config_file.absolute()) if config_file is not None else "")
    if config.store.backend not in {"embedded", "basex"}:
        raise ConfigError(f"store.backend must be 'embedded' or 'basex', not {config.store.backend!r}")
    if config.server.client_cert not in {"none", "optional", "required"}:
        raise ConfigError("server.client_cert must be none, optional or required")
    if not 100_000 <= config.store.basex_backlog_bytes_max <= 10_000_000_000:
        raise ConfigError("store.basex_backlog_bytes_max must be 100000-10000000000 (bytes)")
    if not 1 <= config.server.port <= PORT_MAX:
        raise ConfigError(f"server.port must be 1-{PORT_MAX}, not {config.server.port}")
    if not 1 <= config.server.workers <= WORKERS_MAX:
        raise ConfigError(f"server.workers must be 1-{WORKERS_MAX}, not {config.server.workers}")
    if config.client.url:
        check_url(config.client.url, "client.url")
    if bool(config.client.cert) != bool(config.client.key):
        raise ConfigError("client.cert and client.key go together: set both (or client.proxy, a file holding both)")
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
