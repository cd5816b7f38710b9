"""Signed hold-then-charge pairs per second over HTTPS, on the embedded store and on BaseX.

    python bench/bank.py [--seconds 10] [--clients 8] [--workers 2] [--stores embedded,basex]
                         [--host-key ec|rsa] [--write]

A gridcredit host with ``--workers`` processes serves the Bank on the chosen store; ``--clients``
threads in two processes each loop: CreateHold (2 credits) then ChargeHold (2 credits to a
site), every request signed and every answer verified (and its signature confirmation checked). Reported per store: pairs/s and
operations/s at full load, p50/p99 latency of one operation at half that load, and the ratio to
the crypto-bound ceiling of the foundation (sign + verify of a round trip), measured in the same run.

The host signs every answer with its key: ``--host-key ec`` (default) gives it a P-256 host
certificate, as ``gridcredit pki host --key-type ec`` does in a deployment; ``rsa`` the 2048-bit
one of the development PKI. Users keep RSA-2048 keys. The ceiling is measured with the same keys.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_dir, write_section  # noqa: E402
from whoami import Caller, crypto_ceiling, free_port, run_load, start_server  # noqa: E402

from lxml import etree

from gridcredit.security.wssec import SOAP11_NS

from gridcredit.client import ServiceClient
from gridcredit.server.registry import load_config
from gridcredit.server.host import HostFiles, prepare_state
from gridcredit.server.host_cli import development_pki
from gridcredit.security.credentials import load_credential
from gridcredit.security.pki import CertificateAuthority
from gridcredit.xmlstore.basex_server import BaseXServer


BANK_NS = "urn:gridcredit:bank:1"


def bank_envelope(operation: str, **fields) -> etree._Element:
    """An unsigned SOAP envelope of one Bank operation with these fields (texts as they are)."""
    body = "".join(f"<b:{name}>{value}</b:{name}>" for name, value in fields.items())
    return etree.fromstring(f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Body><b:{operation} xmlns:b="{BANK_NS}">'
                            f'{body}</b:{operation}></s:Body></s:Envelope>'.encode())


def bench_pki(root: Path, people: tuple[str, ...], host_key: str = "ec"):
    """The development PKI under ``root``: the host's files (a P-256 host key with ``host_key="ec"``, else
    the development PKI's RSA-2048 one) and, for each of ``people``, (cert path, key path, credential)."""
    host_cert, host_key_path, trust_dir, _ = development_pki(root)
    ca = CertificateAuthority.load(root / "pki" / "ca")
    if host_key == "ec":
        host_cert, host_key_path = ca.issue_host("localhost", root / "host-ec", key_type="ec")
    users = {}
    for name in people:
        cert, key = ca.issue_user(name, root / name.replace(" ", "-"))
        users[name] = (str(cert), str(key), load_credential(cert_path=str(cert), key_path=str(key)))
    return HostFiles(host_cert, host_key_path, trust_dir), users


@contextlib.contextmanager
def bank_host(root: Path, store: str, files: HostFiles, admin_dn: str, *, workers: int, threads: int):
    """A gridcredit host serving the Bank on ``store`` (embedded, or a BaseX server of its own) with
    ``admin_dn`` its administrator, in ``workers`` processes: its https URL, until the block ends."""
    basex = None
    env = {"GRIDCREDIT_STATE_DIR": str(root / f"state-{store}"), "GRIDCREDIT_STORE_BACKEND": store,
           "GRIDCREDIT_BANK_ADMINS": admin_dn}
    if store == "basex":
        basex = BaseXServer(root / "basex", port=free_port()).start()
        env["GRIDCREDIT_STORE_BASEX_PORT"] = str(basex.port)
    try:
        base = load_config(env=env)
        config = replace(base, server=replace(base.server, port=free_port(), workers=workers, threads=threads))
        prepare_state(config)
        server = start_server(config, files, unsigned=False)
        try:
            yield f"https://localhost:{config.server.port}"
        finally:
            server.terminate()
            server.join(20)
    finally:
        if basex is not None:
            basex.stop()


class RawBankCaller:
    """A lean load generator: signed envelopes posted with requests, answers verified with our
    Verifier (what the real client does, without zeep's object mapping, so that the two cores
    go to the server under test rather than to the load generator)."""

    def __init__(self, url, credential, trust_dir):
        self.caller = Caller(f"{url}/bank", credential, trust_dir, signed=True)

    def call(self, operation: str, **fields) -> etree._Element:
        return self.caller.call_envelope(bank_envelope(operation, **fields))


def _client_process(url, cert, key, trust_dir, threads, seconds, rate_per_thread, queue):
    credential = load_credential(cert_path=cert, key_path=key)
    results = []
    lock = threading.Lock()

    def run():
        client = RawBankCaller(url, credential, Path(trust_dir))
        latencies = []
        end = time.perf_counter() + seconds
        next_send = time.perf_counter()
        while time.perf_counter() < end:
            if rate_per_thread:
                now = time.perf_counter()
                if now < next_send:
                    time.sleep(next_send - now)
                next_send += 2.0 / rate_per_thread   # two operations per pair
            expires = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()
            started = time.perf_counter()
            answer = client.call("CreateHold", request_id=f"h-{uuid.uuid4().hex}", account_id="vo-bench", amount=2,
                                 expires=expires, reference="bench")
            hold_id = answer.findtext(f".//{{{BANK_NS}}}hold_id")
            middle = time.perf_counter()
            client.call("ChargeHold", request_id=f"c-{uuid.uuid4().hex}", hold_id=hold_id,
                        payee_account_id="site-bench", amount=2)
            finished = time.perf_counter()
            latencies += [middle - started, finished - middle]
        with lock:
            results.extend(latencies)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put(results)


def load(url, cert, key, trust_dir, clients, seconds, rate=None):
    latencies = run_load(_client_process, (url, cert, key, str(trust_dir)), clients, seconds, rate, wait_s=300)
    operations = len(latencies)
    return {"ops": operations / seconds, "pairs": operations / 2 / seconds,
            "p50_ms": 1000 * latencies[operations // 2], "p99_ms": 1000 * latencies[int(operations * 0.99)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=10.0, metavar="S",
                        help="seconds of unmeasured load first, so the server (and BaseX's JIT) is warm (default 10)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stores", default="embedded,basex")
    parser.add_argument("--host-key", choices=("ec", "rsa"), default="ec",
                        help="the host certificate's key: P-256 (default) or RSA-2048")
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()

    root = scratch_dir("gridcredit-bench-bank-")
    files, users = bench_pki(root, ("Bench Admin", "Bench User"), args.host_key)
    trust_dir = files.trust_dir
    ceiling = crypto_ceiling(users["Bench User"][2], load_credential(cert_path=str(files.host_cert),
                                                                     key_path=str(files.host_key)),
                             trust_dir, min(args.seconds, 5))
    print(f"crypto-bound ceiling: {ceiling:,.0f} round trips/s", flush=True)

    key_text = "P-256 (ECDSA)" if args.host_key == "ec" else "RSA-2048"
    lines = [f"Machine: {os.cpu_count()} cores; host: {args.workers} worker processes, host key {key_text}, user keys "
             f"RSA-2048; load: {args.clients} client threads in 2 processes; {args.seconds:.0f} s per run after {args.warmup:.0f} s of unmeasured warm-up load. One pair = "
             f"CreateHold + ChargeHold = 2 signed operations.",
             "", "| store | pairs/s | signed operations/s | ops / crypto ceiling | p50 / p99 at half load (ms) | target "
                 "| load average before / after (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for store in args.stores.split(","):
        with bank_host(root, store, files, users["Bench Admin"][2].identity_dn, workers=args.workers,
                       threads=max(8, args.clients)) as url:
            admin = ServiceClient(url, "bank", credential=users["Bench Admin"][2], trust_dir=trust_dir)
            admin.call("CreateAccount", request_id="setup-1", account_id="vo-bench", project="bench", owner_dn=users["Bench User"][2].identity_dn)
            admin.call("CreateAccount", request_id="setup-2", account_id="site-bench", project="site", owner_dn=users["Bench Admin"][2].identity_dn)
            admin.call("Mint", request_id="setup-3", account_id="vo-bench", amount=10**12)
            if args.warmup > 0:
                print(f"[{store}] warm-up ({args.warmup:.0f} s, not measured) …", flush=True)
                load(url, users["Bench User"][0], users["Bench User"][1], trust_dir, args.clients, args.warmup)
            print(f"[{store}] full load …", flush=True)
            load_before = os.getloadavg()[0]
            full = load(url, users["Bench User"][0], users["Bench User"][1], trust_dir, args.clients, args.seconds)
            print(f"[{store}] half load ({full['ops'] / 2:,.0f} ops/s) …", flush=True)
            half = load(url, users["Bench User"][0], users["Bench User"][1], trust_dir, args.clients, args.seconds, rate=full["ops"] / 2)
            load_after = os.getloadavg()[0]
            audit = admin.call("Audit")
            if not audit.clean:
                raise SystemExit(f"[{store}] the audit after the load is not clean")
        lines.append(f"| {store} | {full['pairs']:,.0f} | {full['ops']:,.0f} | {full['ops'] / ceiling:.2f} | "
                     f"{half['p50_ms']:.1f} / {half['p99_ms']:.1f} | ≥ 300 ops/s, p99 < 50 ms | "
                     f"{load_before:.1f} / {load_after:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Crypto-bound ceiling in this run: {ceiling:,.0f} round trips/s (one process). Audit after each load: "
                  f"clean. The load average includes this benchmark's own 4 busy processes (2 workers, 2 clients)."]
    print("\n".join(lines))
    if args.write:
        command = "python bench/bank.py" + (f" --seconds {args.seconds:g}" if args.seconds != 10 else "")
        command += f" --host-key {args.host_key}" if args.host_key != "ec" else ""
        write_section("Bank: signed hold-then-charge", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
