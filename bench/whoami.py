"""Signed WhoAmI round trips over HTTPS, beside the crypto-bound ceiling and the unsigned rate.

    python bench/whoami.py [--seconds 10] [--clients 8] [--workers 2] [--write]

Everything runs on this machine: a ``gridcredit`` host with ``--workers`` processes, and a load
generator of ``--clients`` threads spread over two processes, each signing its requests and
verifying the host's signed answers like the real client does. In the same run it measures:
  * the crypto-bound ceiling: sign request + verify request + sign response + verify response,
    timed in a loop in one process (the work one round trip cannot avoid);
  * the unsigned round-trip rate: the same host and spyne services without WS-Security;
  * p50/p99 latency at half the measured signed throughput;
  * the verifier's cost per message with 1 KB, 100 KB and 1 MB bodies.
Ratios are printed against the ceiling measured in the same run (these machines are noisy).
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import requests
from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_dir, write_section  # noqa: E402

from gridcredit.server.registry import load_config
from gridcredit.server.host import HostFiles, build_host, serve
from gridcredit.server.host_cli import development_pki
from gridcredit.security.chain import TrustStore
from gridcredit.security.credentials import load_credential
from gridcredit.security.pki import CertificateAuthority
from gridcredit.security.wssec import SOAP11_NS, MemoryReplayCache, Signer, Verifier
from gridcredit.services.common import PRINCIPAL_ENVIRON_KEY, RUNTIME_ENVIRON_KEY

REQUEST = (f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body>'
           '<b:WhoAmI xmlns:b="urn:gridcredit:bank:1"/></soap:Body></soap:Envelope>').encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _UnsignedHost:
    """The same spyne services behind the same server, with no WS-Security (the baseline): the
    environ carries what the signed host's _call_service puts there (principal and runtime)."""

    def __init__(self, config, files):
        from gridcredit.security.chain import Principal
        self._host = build_host(config, files)
        self._endpoints = self._host._endpoints
        self._runtime = self._host._runtime
        cert = load_credential(cert_path=str(files.host_cert), key_path=str(files.host_key)).cert
        self._principal = TrustStore.from_directory(files.trust_dir).validate([cert])
        assert isinstance(self._principal, Principal)

    def __call__(self, environ, start_response):
        environ[PRINCIPAL_ENVIRON_KEY] = self._principal
        environ[RUNTIME_ENVIRON_KEY] = self._runtime
        return self._endpoints[environ["PATH_INFO"].strip("/")].wsgi(environ, start_response)


def build_unsigned(config, files):
    return _UnsignedHost(config, files)


def start_server(config, files, unsigned: bool) -> multiprocessing.Process:
    process = multiprocessing.Process(target=serve, args=(config, files), kwargs={"build": build_unsigned if unsigned else None}, daemon=False)
    process.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", config.server.port), timeout=1):
                time.sleep(0.5)
                return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


class Caller:
    def __init__(self, url, credential, trust_dir, signed: bool):
        self.url = url
        self.signed = signed
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(trust_dir)
        self.signer = Signer(credential)
        self.verifier = Verifier(trust=TrustStore.from_directory(trust_dir), replay_cache=MemoryReplayCache())

    def call(self) -> None:
        self.call_envelope(etree.fromstring(REQUEST))

    def call_envelope(self, envelope: etree._Element) -> etree._Element:
        """POST ``envelope`` (signed first when ``signed``); return the verified answer's Body."""
        if self.signed:
            self.signer.sign(envelope)
        body = etree.tostring(envelope)
        reply = self.session.post(self.url, data=body, headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}, timeout=30)
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:300]}")
        if self.signed:
            sent = envelope.findtext(".//{http://www.w3.org/2000/09/xmldsig#}SignatureValue")
            return self.verifier.verify(reply.content, expected_confirmation=sent).body
        return etree.fromstring(reply.content).find(f"{{{SOAP11_NS}}}Body")


def _client_process(url, cert, key, trust_dir, signed, threads, seconds, rate_per_thread, queue):
    credential = load_credential(cert_path=cert, key_path=key)
    results = []
    lock = threading.Lock()

    def run():
        caller = Caller(url, credential, trust_dir, signed)
        caller.call()  # warm the connection
        latencies = []
        end = time.perf_counter() + seconds
        next_send = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if rate_per_thread:
                if now < next_send:
                    time.sleep(next_send - now)
                next_send += 1.0 / rate_per_thread
            started = time.perf_counter()
            caller.call()
            latencies.append(time.perf_counter() - started)
        with lock:
            results.extend(latencies)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put(results)


def run_load(client_process, arguments: tuple, clients: int, seconds: float, rate=None, wait_s: float = 120) -> list[float]:
    """Spread ``clients`` threads over two processes, each running
    ``client_process(*arguments, threads, seconds, rate_per_thread, queue)``; return the sorted latencies.
    ``rate``: total requests per second to pace at (None: as fast as they go)."""
    processes_count = 2
    threads = max(1, clients // processes_count)
    rate_per_thread = rate / (threads * processes_count) if rate else None
    queue = multiprocessing.Queue()
    processes = [multiprocessing.Process(target=client_process, args=(*arguments, threads, seconds, rate_per_thread, queue))
                 for _ in range(processes_count)]
    for process in processes:
        process.start()
    latencies = []
    for _ in processes:
        latencies.extend(queue.get(timeout=seconds + wait_s))
    for process in processes:
        process.join()
    return sorted(latencies)


def load(url, cert, key, trust_dir, signed, clients, seconds, rate=None):
    latencies = run_load(_client_process, (url, cert, key, str(trust_dir), signed), clients, seconds, rate)
    return {"rate": len(latencies) / seconds, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)], "count": len(latencies)}


def crypto_ceiling(user, host, trust_dir, seconds: float) -> float:
    """Round trips per second when only the WS-Security work runs, in one process."""
    trust = TrustStore.from_directory(trust_dir)
    client_signer, host_signer = Signer(user), Signer(host)
    server_verifier = Verifier(trust=trust, replay_cache=MemoryReplayCache(1_000_000))
    client_verifier = Verifier(trust=trust, replay_cache=MemoryReplayCache(1_000_000))
    count = 0
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        request = client_signer.sign(etree.fromstring(REQUEST))
        verified = server_verifier.verify(etree.tostring(request))
        response = etree.fromstring(REQUEST.replace(b"WhoAmI", b"WhoAmIResponse"))
        host_signer.sign(response, confirm_signature_value=verified.signature_value)
        client_verifier.verify(etree.tostring(response), expected_confirmation=verified.signature_value)
        count += 1
    return count / (time.perf_counter() - started)


def verifier_costs(user, trust_dir) -> dict[str, float]:
    trust = TrustStore.from_directory(trust_dir)
    signer = Signer(user)
    verifier = Verifier(trust=trust)
    costs = {}
    for label, size in (("1 KB", 1_000), ("100 KB", 100_000), ("1 MB", 1_000_000)):
        items = "".join(f"<b:item>{'x' * 90}</b:item>" for _ in range(size // 100))
        envelope = etree.fromstring(f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body><b:Data xmlns:b="urn:bench">{items}</b:Data></soap:Body></soap:Envelope>'.encode())
        raw = etree.tostring(signer.sign(envelope))
        rounds = max(5, int(2_000_000 / max(size, 1000)))
        started = time.perf_counter()
        for _ in range(rounds):
            verifier.verify(raw)
        costs[label] = 1000 * (time.perf_counter() - started) / rounds
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()

    state = scratch_dir("gridcredit-bench-")
    host_cert, host_key, trust_dir, _ = development_pki(state)
    ca = CertificateAuthority.load(state / "pki" / "ca")
    user_cert, user_key = ca.issue_user("Bench User", state / "user")
    user = load_credential(cert_path=str(user_cert), key_path=str(user_key))
    host = load_credential(cert_path=str(host_cert), key_path=str(host_key))
    files = HostFiles(host_cert, host_key, trust_dir)
    base = load_config(env={"GRIDCREDIT_STATE_DIR": str(state)})

    print("measuring the crypto-bound ceiling …", flush=True)
    ceiling = crypto_ceiling(user, host, trust_dir, min(args.seconds, 5))
    print("measuring the verifier per message size …", flush=True)
    costs = verifier_costs(user, trust_dir)

    results = {}
    for label, unsigned in (("unsigned", True), ("signed", False)):
        port = free_port()
        config = replace(base, server=replace(base.server, port=port, workers=args.workers, threads=max(8, args.clients)))
        server = start_server(config, files, unsigned)
        try:
            url = f"https://localhost:{port}/bank"
            print(f"loading the {label} host with {args.clients} clients for {args.seconds:.0f} s …", flush=True)
            results[label] = load(url, str(user_cert), str(user_key), trust_dir, not unsigned, args.clients, args.seconds)
            if label == "signed":
                half = results[label]["rate"] / 2
                print(f"latency at half load ({half:.0f}/s) …", flush=True)
                results["half"] = load(url, str(user_cert), str(user_key), trust_dir, True, args.clients, args.seconds, rate=half)
        finally:
            server.terminate()
            server.join(10)

    signed, unsigned, half = results["signed"], results["unsigned"], results["half"]
    lines = [
        f"Machine: {os.cpu_count()} cores; host: {args.workers} worker processes; load: {args.clients} client threads in 2 processes; {args.seconds:.0f} s per run.",
        "",
        "| measure | value | ratio / target |",
        "|---|---|---|",
        f"| crypto-bound ceiling (sign+verify request and response, one process) | {ceiling:,.0f} round trips/s | 1.00 |",
        f"| signed WhoAmI over HTTPS | {signed['rate']:,.0f} round trips/s | {signed['rate'] / ceiling:.2f} × ceiling (target ≥ 0.5) |",
        f"| unsigned WhoAmI over HTTPS (same host, no WS-Security) | {unsigned['rate']:,.0f} round trips/s | {unsigned['rate'] / ceiling:.2f} × ceiling |",
        f"| signed, full load: p50 / p99 latency | {signed['p50_ms']:.1f} / {signed['p99_ms']:.1f} ms | |",
        f"| signed at half load ({half['rate']:,.0f}/s): p50 / p99 latency | {half['p50_ms']:.1f} / {half['p99_ms']:.1f} ms | target p99 < 50 ms |",
        f"| verifier, 1 KB body | {costs['1 KB']:.2f} ms/message | |",
        f"| verifier, 100 KB body | {costs['100 KB']:.2f} ms/message | |",
        f"| verifier, 1 MB body | {costs['1 MB']:.2f} ms/message | |",
    ]
    print("\n".join(lines))
    if args.write:
        write_section("Signed WhoAmI (foundation)", "python bench/whoami.py" + (f" --seconds {args.seconds:g}" if args.seconds != 10 else ""), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
