"""``gridcredit pki …``: a test CA, host and user certificates, proxies, revocation, trust export,
inspection and verification. For demos and tests; production sites use their IGTF CA."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography import x509

from gridcredit.errors import CertificateError, CredentialError

from . import pki
from .chain import TrustStore
from .credentials import load_credential, read_chain_file, trust_directory

DEFAULT_CA_DN = "/DC=org/DC=example/O=gridcredit/CN=gridcredit Test CA"


def _print(args: argparse.Namespace, value: dict, text: str) -> None:
    from gridcredit.cli_support import print_result
    print_result(args, value, text)


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_key_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-type", choices=("rsa", "ec"), default="rsa",
                        help="key algorithm: rsa (2048 bits, default) or ec (P-256)")


def register(subparsers: argparse._SubParsersAction) -> None:
    pki_parser = subparsers.add_parser(
        "pki", help="test CA, certificates and RFC 3820 proxies",
        description="Make a test CA, host and user certificates and RFC 3820 proxies; revoke; export a "
                    "trust directory; show and verify certificates. For demos and tests.")
    commands = pki_parser.add_subparsers(dest="pki_command", metavar="PKI_COMMAND")
    commands.required = True

    parser = commands.add_parser("ca", help="create a test CA in a directory",
                                 description="Create a self-signed test CA (certificate, key 0600, serial, "
                                             "index, CRL) in DIR.")
    parser.add_argument("--dir", required=True, type=Path, help="CA directory to create")
    parser.add_argument("--dn", default=DEFAULT_CA_DN, help=f"CA subject, grid form (default {DEFAULT_CA_DN!r})")
    parser.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    _add_key_type(parser)
    _add_json(parser)
    parser.set_defaults(handler=_ca)

    parser = commands.add_parser("host", help="issue a host certificate",
                                 description="Issue hostcert.pem/hostkey.pem for HOSTNAME (SAN dNSName; "
                                             "127.0.0.1 and ::1 for localhost; serverAuth and clientAuth).")
    parser.add_argument("--ca", required=True, type=Path, help="CA directory")
    parser.add_argument("--hostname", required=True, help="fully qualified host name, or localhost")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    _add_key_type(parser)
    _add_json(parser)
    parser.set_defaults(handler=_host)

    parser = commands.add_parser("user", help="issue a user certificate",
                                 description="Issue usercert.pem/userkey.pem (key 0600). --cn NAME puts the "
                                             "name under the CA's DN prefix; --dn gives the full subject.")
    parser.add_argument("--ca", required=True, type=Path, help="CA directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--dn", help="full subject, e.g. /DC=org/DC=example/O=Grid/CN=Alice")
    who.add_argument("--cn", help="common name under the CA's DN prefix, e.g. Alice")
    parser.add_argument("--out", required=True, type=Path, help="output directory (e.g. ~/.globus)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    _add_key_type(parser)
    _add_json(parser)
    parser.set_defaults(handler=_user)

    parser = commands.add_parser(
        "proxy", help="make an RFC 3820 proxy",
        description="Make an RFC 3820 proxy, like grid-proxy-init -rfc. The certificate and key default to "
                    "$X509_USER_CERT/$X509_USER_KEY, else ~/.globus/usercert.pem and userkey.pem; the output "
                    "to $X509_USER_PROXY, else /tmp/x509up_u<uid>.")
    parser.add_argument("--cert", type=Path, help="certificate file (default: grid conventions)")
    parser.add_argument("--key", type=Path, help="key file (default: grid conventions)")
    from gridcredit.cli_support import number_in

    parser.add_argument("--hours", type=number_in(0, pki.PROXY_HOURS_MAX, kind=float, unit="hours", low_excluded=True),
                        default=12, help=f"lifetime in hours, more than 0 up to {pki.PROXY_HOURS_MAX:,} (default 12; "
                                         "capped at the certificate's expiry)")
    parser.add_argument("--limited", action="store_true", help="make a limited proxy")
    parser.add_argument("--path-length", type=int, help="how many proxies may be made from this one")
    parser.add_argument("--passphrase-file", type=Path, help="file holding the key's passphrase")
    parser.add_argument("--out", type=Path, help="proxy file to write (mode 0600)")
    _add_key_type(parser)
    _add_json(parser)
    parser.set_defaults(handler=_proxy)

    parser = commands.add_parser("revoke", help="revoke a certificate and rewrite the CRL",
                                 description="Revoke a certificate the CA issued and regenerate its CRL "
                                             "(re-run `pki trust` to publish it).")
    parser.add_argument("--ca", required=True, type=Path, help="CA directory")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", type=int, help="serial number (decimal)")
    which.add_argument("--cert", type=Path, help="certificate file")
    _add_json(parser)
    parser.set_defaults(handler=_revoke)

    parser = commands.add_parser("trust", help="export the CA into a trust directory",
                                 description="Write <hash>.0, <hash>.r0 and <hash>.signing_policy into a "
                                             "trust directory (the /etc/grid-security/certificates layout).")
    parser.add_argument("--ca", required=True, type=Path, help="CA directory")
    parser.add_argument("--dir", required=True, type=Path, help="trust directory")
    _add_json(parser)
    parser.set_defaults(handler=_trust)

    parser = commands.add_parser("show", help="show a certificate or proxy file",
                                 description="Show subject, issuer, validity and proxy type of every "
                                             "certificate in FILE.")
    parser.add_argument("file", type=Path, help="PEM file (certificate, proxy file or bundle)")
    _add_json(parser)
    parser.set_defaults(handler=_show)

    parser = commands.add_parser("verify", help="validate a certificate or proxy chain",
                                 description="Validate the chain in FILE against a trust directory; exit 1 "
                                             "with the reason when it is refused.")
    parser.add_argument("file", type=Path, help="PEM file: certificate or proxy file (leaf first)")
    parser.add_argument("--trust", type=Path, help="trust directory (default $X509_CERT_DIR, else "
                                                   "/etc/grid-security/certificates)")
    _add_json(parser)
    parser.set_defaults(handler=_verify)


def _ca(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.create(args.dir, args.dn, days=args.days, key_type=args.key_type)
    value = {"dn": ca.dn, "hash": ca.hash, "directory": str(args.dir),
             "certificate": str(args.dir / ca.CERT_FILE), "key": str(args.dir / ca.KEY_FILE)}
    _print(args, value, f"CA {ca.dn} created in {args.dir}\n"
                        f"  certificate {value['certificate']}, key {value['key']} (0600), CRL {args.dir / ca.CRL_FILE}\n"
                        f"  next: gridcredit pki trust --ca {args.dir} --dir TRUSTDIR")
    return 0


def _issued(args: argparse.Namespace, kind: str, cert_path: Path, key_path: Path) -> int:
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    value = {"dn": pki.grid_dn(certificate.subject), "serial": certificate.serial_number,
             "certificate": str(cert_path), "key": str(key_path),
             "not_after": certificate.not_valid_after_utc.isoformat()}
    _print(args, value, f"{kind} certificate {value['dn']} (serial {value['serial']}) written:\n"
                        f"  {cert_path}\n  {key_path} (0600)\n  valid until {value['not_after']}")
    return 0


def _host(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.load(args.ca)
    cert_path, key_path = ca.issue_host(args.hostname, args.out, days=args.days, key_type=args.key_type)
    return _issued(args, "host", cert_path, key_path)


def _user(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.load(args.ca)
    cert_path, key_path = ca.issue_user(args.dn or args.cn, args.out, days=args.days, key_type=args.key_type)
    return _issued(args, "user", cert_path, key_path)


def _proxy(args: argparse.Namespace) -> int:
    passphrase = args.passphrase_file.read_text().rstrip("\n") if args.passphrase_file else None
    if args.key and not args.cert:
        raise CredentialError("--key needs --cert")
    if args.cert:
        credential = load_credential(args.cert, args.key or args.cert, passphrase=passphrase)
    else:
        # Like grid-proxy-init: the user's certificate, never an existing proxy.
        cert = os.environ.get("X509_USER_CERT") or str(Path.home() / ".globus" / "usercert.pem")
        key = os.environ.get("X509_USER_KEY") or str(Path.home() / ".globus" / "userkey.pem")
        credential = load_credential(cert, key, passphrase=passphrase)
    proxy, proxy_key = pki.make_proxy(credential.cert, credential.key, credential.chain, hours=args.hours,
                                      limited=args.limited, key_type=args.key_type, path_length=args.path_length)
    out = args.out or (Path(os.environ["X509_USER_PROXY"]) if os.environ.get("X509_USER_PROXY")
                       else pki.default_proxy_path())
    pki.write_proxy_file(out, proxy, proxy_key, credential.certificates)
    info = pki.proxy_info(proxy)
    value = {"file": str(out), "identity": credential.identity_dn, "subject": pki.grid_dn(proxy.subject),
             "type": info.kind if info else "none", "not_after": proxy.not_valid_after_utc.isoformat()}
    _print(args, value, f"Your identity: {value['identity']}\n"
                        f"{value['type']} proxy written to {out} (0600), valid until {value['not_after']}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.load(args.ca)
    target = args.serial if args.serial is not None else read_chain_file(args.cert)[0]
    serial = target if isinstance(target, int) else target.serial_number
    crl = ca.revoke(target)
    value = {"serial": serial, "crl": str(args.ca / ca.CRL_FILE), "revoked_count": len(crl)}
    _print(args, value, f"serial {serial} revoked; CRL {value['crl']} rewritten ({len(crl)} revoked)\n"
                        f"  publish it: gridcredit pki trust --ca {args.ca} --dir TRUSTDIR")
    return 0


def _trust(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.load(args.ca)
    paths = ca.export_trust(args.dir)
    value = {name: str(path) for name, path in paths.items()} | {"ca": ca.dn, "hash": ca.hash}
    _print(args, value, f"CA {ca.dn} exported to {args.dir}:\n" + "\n".join(f"  {p}" for p in paths.values())
           + f"\n  use it: export X509_CERT_DIR={args.dir}")
    return 0


def _describe(certificate: x509.Certificate) -> dict:
    info = pki.proxy_info(certificate)
    legacy = pki.legacy_proxy_kind(certificate) if info is None else None
    if info is not None:
        kind = ("GT3 draft " if info.draft else "RFC 3820 ") + info.kind + " proxy"
    elif legacy:
        kind = legacy + " proxy"
    elif pki.is_ca_certificate(certificate):
        kind = "CA"
    else:
        kind = "end entity"
    return {"subject": pki.grid_dn(certificate.subject), "issuer": pki.grid_dn(certificate.issuer),
            "serial": certificate.serial_number, "not_before": certificate.not_valid_before_utc.isoformat(),
            "not_after": certificate.not_valid_after_utc.isoformat(), "type": kind,
            "path_length": info.path_length if info else None, "hash": pki.subject_hash(certificate)}


def _show(args: argparse.Namespace) -> int:
    described = [_describe(c) for c in read_chain_file(args.file)]
    lines = []
    for index, item in enumerate(described):
        lines.append(f"[{index}] {item['type']}\n  subject: {item['subject']}\n  issuer:  {item['issuer']}\n"
                     f"  serial:  {item['serial']}\n  valid:   {item['not_before']} .. {item['not_after']}")
    _print(args, {"file": str(args.file), "certificates": described}, "\n".join(lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    chain = read_chain_file(args.file)
    store = TrustStore.from_directory(trust_directory(args.trust))
    try:
        principal = store.validate(chain)
    except CertificateError as error:
        if getattr(args, "json", False):
            _print(args, {"file": str(args.file), "valid": False, "reason": str(error)}, "")
            return 1
        raise
    value = {"file": str(args.file), "valid": True, "identity": principal.dn, "signer": principal.signer_dn,
             "proxy": principal.is_proxy, "limited": principal.limited, "ca": principal.ca_dn,
             "not_after": principal.not_after.isoformat(), "hosts": list(principal.host_names)}
    kind = ("limited proxy" if principal.limited else "proxy") if principal.is_proxy else "certificate"
    hosts = f", issued for host {', '.join(principal.host_names)}" if principal.host_names else ""
    _print(args, value, f"OK: {kind} of {principal.dn}{hosts}, valid until {value['not_after']}")
    return 0
