"""``gridcredit serve``, ``gridcredit whoami`` and ``gridcredit wsdl``."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gridcredit.cli_support import add_client_arguments
from gridcredit.config import Config
from gridcredit.errors import ConfigError

from . import registry

DEVELOPMENT_CA_DN = "/DC=org/DC=gridcredit/O=Development/CN=gridcredit development CA"


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
        f"trust directory (CA certificate and CRL): {trust_dir}",
        "make a user certificate and a proxy with:",
        f"  gridcredit pki user --ca {ca_dir} --cn 'Your Name' --out ~/.globus",
        "  gridcredit pki proxy --hours 12",
        f"  export X509_CERT_DIR={trust_dir}",
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


def _serve(args: argparse.Namespace) -> int:
    from .host import serve

    config = registry.load_config(args.config)
    if args.port is not None or args.workers is not None:
        import dataclasses
        server = dataclasses.replace(config.server,
                                     port=args.port if args.port is not None else config.server.port,
                                     workers=args.workers if args.workers is not None else config.server.workers)
        config = dataclasses.replace(config, server=server)
    logging.getLogger().setLevel(config.log_level.upper())
    files = host_files(config)
    base = f"https://{config.server.host}:{config.server.port}"

    def announce() -> None:      # once every worker accepts: a request sent now is answered
        print(f"gridcredit serving on {base}/bank, /luts, /jarm, /auctioneer (WSDL at ?wsdl) "
              f"with {config.server.workers} workers, store: {config.store.backend}", flush=True)

    return serve(config, files, announce=announce)


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
    serve.add_argument("--port", type=int, help="TCP port (default from the configuration: 8443)")
    serve.add_argument("--workers", type=int, help="worker processes (default from the configuration: 2)")
    serve.set_defaults(handler=_serve)

    whoami = subparsers.add_parser("whoami", help="make a signed call and show who the service thinks you are")
    whoami.add_argument("--service", default="bank", choices=registry.names())
    add_client_arguments(whoami, timeout_s=30.0)
    whoami.set_defaults(handler=_whoami)

    wsdl = subparsers.add_parser("wsdl", help="write the services' WSDL documents")
    wsdl.add_argument("--out", default="wsdl", help="folder (default %(default)s)")
    wsdl.set_defaults(handler=_wsdl)
