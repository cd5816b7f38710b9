"""``gridcredit serve``, ``gridcredit whoami`` and ``gridcredit wsdl``.

``serve`` says first which configuration file it read (or that there is none) and where its state
is, then — before it claims to serve — whether it can listen on its port: a port in use or not
allowed is a :class:`ServeError` (exit 1), an out-of-range ``--port`` a usage error (exit 2).
"""
from __future__ import annotations

import argparse
import errno
import logging
import socket
from pathlib import Path

from gridcredit.cli_support import add_client_arguments, number_in
from gridcredit.config import PORT_MAX, WORKERS_MAX, Config
from gridcredit.errors import ConfigError, GridcreditError

from . import registry

DEVELOPMENT_CA_DN = "/DC=org/DC=gridcredit/O=Development/CN=gridcredit development CA"
# What the development CA issues for `gridcredit pki user --cn NAME`: its own name with CN=NAME.
DEVELOPMENT_USER_DN = DEVELOPMENT_CA_DN.rsplit("/CN=", 1)[0] + "/CN={name}"


class ServeError(GridcreditError):
    """``gridcredit serve`` cannot start (its port is taken or not allowed)."""


def development_pki(state_dir: Path, hostname: str = "localhost") -> tuple[Path, Path, Path, list[str]]:
    """A development CA, its trust directory and a host certificate under ``state_dir/pki``.

    Made on first run when no host certificate is configured; returns (host cert, host key,
    trust dir, lines telling the user what exists and how to get a user credential).
    """
    from gridcredit.security.pki import CertificateAuthority

    pki_dir = state_dir / "pki"
    ca_dir, trust_dir, host_dir = pki_dir / "ca", pki_dir / "certificates", pki_dir / "host"
    made = []
    if (ca_dir / CertificateAuthority.CERT_FILE).exists():
        ca = CertificateAuthority.load(ca_dir)
    else:
        ca = CertificateAuthority.create(ca_dir, DEVELOPMENT_CA_DN)
        made.append(f"created a development CA in {ca_dir}")
    ca.export_trust(trust_dir)
    host_cert, host_key = host_dir / "hostcert.pem", host_dir / "hostkey.pem"
    if not host_cert.exists():
        host_cert, host_key = ca.issue_host(hostname, host_dir)
        made.append(f"issued a host certificate for {hostname} in {host_dir}")
    lines = made + [
        f"development CA {DEVELOPMENT_CA_DN} in {ca_dir}; it issues users "
        f"{DEVELOPMENT_USER_DN.format(name='<name>')}",
        f"trust directory (CA certificate and CRL): {trust_dir} — the client commands of this configuration "
        f"use it; elsewhere: export X509_CERT_DIR={trust_dir}",
        "make a user certificate and a proxy with:",
        f"  gridcredit pki user --ca {ca_dir} --cn 'Your Name' --out ~/.globus",
        "  gridcredit pki proxy --hours 12",
    ]
    return host_cert, host_key, trust_dir, lines


def host_files(config: Config, announce=print):
    from gridcredit.contract import HostFiles
    from gridcredit.security.credentials import trust_directory

    security = config.security
    if security.host_cert:
        if not security.host_key:
            raise ConfigError("security.host_cert is set but security.host_key is not")
        trust = trust_directory(security.cert_dir or None)
        return HostFiles(Path(security.host_cert), Path(security.host_key), trust)
    host_cert, host_key, trust_dir, lines = development_pki(config.state_path)
    if security.cert_dir:
        trust_dir = Path(security.cert_dir)
    for line in lines:
        announce(line)
    return HostFiles(host_cert, host_key, trust_dir)


def check_port_free(host: str, port: int) -> None:
    """Refuse to start when ``host:port`` cannot be listened on (in use, not allowed), before
    anything claims to serve: bound and closed again with the options the host's listener uses."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as error:
            raise port_error(host, port, error) from None


def port_error(host: str, port: int, error: OSError) -> ServeError:
    if error.errno == errno.EADDRINUSE:
        return ServeError(f"port {port} of {host} is in use (another gridcredit serve, or another program: "
                          f"`ss -ltnp 'sport = :{port}'` shows which); stop it or choose another port "
                          f"(--port, server.port, GRIDCREDIT_SERVER_PORT)")
    if error.errno == errno.EACCES:
        return ServeError(f"not allowed to listen on port {port} of {host} (ports below 1024 need root); "
                          "choose a port from 1024 (--port, server.port)")
    if error.errno == errno.EADDRNOTAVAIL:
        return ServeError(f"{host} is not an address of this machine (server.host); use 127.0.0.1, ::1 or one of its own")
    return ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}")


def _serve(args: argparse.Namespace) -> int:
    from .host import serve

    config = registry.load_config(args.config)
    configured_port = config.server.port
    if args.port is not None or args.workers is not None:
        import dataclasses
        server = dataclasses.replace(config.server,
                                     port=args.port if args.port is not None else config.server.port,
                                     workers=args.workers if args.workers is not None else config.server.workers)
        config = dataclasses.replace(config, server=server)
    logging.getLogger().setLevel(config.log_level.upper())
    if config.source:
        print(f"configuration: {config.source}", flush=True)
    else:
        print("configuration: no file (looked for $GRIDCREDIT_CONFIG, ./gridcredit.toml, "
              "~/.config/gridcredit/gridcredit.toml): the defaults and GRIDCREDIT_* variables", flush=True)
    print(f"state directory: {config.state_path}", flush=True)
    check_port_free(config.server.host, config.server.port)
    files = host_files(config)
    base = f"https://{config.server.host}:{config.server.port}"
    client_url = f"https://localhost:{config.server.port}"

    def announce() -> None:      # once every worker accepts: a request sent now is answered
        print(f"gridcredit serving on {base}/{', /'.join(registry.names())} (WSDL at ?wsdl) "
              f"with {config.server.workers} workers, store: {config.store.backend}", flush=True)
        if config.server.port != configured_port and not config.client.url:
            print(f"clients on this machine: export GRIDCREDIT_CLIENT_URL={client_url} "
                  f"(or [client] url, or server.port = {config.server.port} in the configuration)", flush=True)

    try:
        return serve(config, files, announce=announce)
    except OSError as error:
        if error.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise port_error(config.server.host, config.server.port, error) from None   # taken since the check
        raise


def _whoami(args: argparse.Namespace) -> int:
    from gridcredit.cli_support import client_of, show_identity
    from gridcredit.client import ServiceClient

    return show_identity(args, client_of(args, ServiceClient, service=args.service), args.service)


def _wsdl(args: argparse.Namespace) -> int:
    from .host import wsdl_document

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in registry.names():
        path = out / f"{name}.wsdl"
        path.write_bytes(wsdl_document(name))
        print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="run the services over HTTPS",
                                  description=f"Run {', '.join('/' + name for name in registry.names())} over HTTPS. With no host certificate "
                                              "configured, a development CA and host certificate are made on first run.")
    serve.add_argument("--port", type=number_in(1, PORT_MAX), help="TCP port (default from the configuration: 8443)")
    serve.add_argument("--workers", type=number_in(1, WORKERS_MAX), help="worker processes (default from the configuration: 2)")
    serve.set_defaults(handler=_serve, parser_of_command=serve)

    whoami = subparsers.add_parser("whoami", help="make a signed call and show who the service thinks you are")
    whoami.add_argument("--service", default="bank", choices=registry.names())
    add_client_arguments(whoami, timeout_s=30.0)
    whoami.set_defaults(handler=_whoami, parser_of_command=whoami)

    wsdl = subparsers.add_parser("wsdl", help="write the services' WSDL documents")
    wsdl.add_argument("--out", default="wsdl", help="folder (default %(default)s)")
    wsdl.set_defaults(handler=_wsdl)
