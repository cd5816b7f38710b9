"""The Bank's ApplyBatch (issue 14): ledger operations per second in signed batches over HTTPS, against the same
operations sent one per request, in the same run.

    python bench/bank_batch.py [--items 1000] [--batches 20] [--seconds 10] [--clients 8] [--workers 2]
                               [--stores embedded,basex] [--profile] [--write]

A gridcredit host (``--workers`` processes, P-256 host key, user keys RSA-2048) serves the Bank; ``--items``
holds on one account name an auctioneer as their only collector and a site as payee (the Auctioneer's
bids). Measured:

* **batch**: one client sends ``--batches`` ApplyBatch requests of ``--items`` ChargeHold items (1 credit
  from every hold each), one after another, each signed, its answer verified (signature and confirmation)
  and every item checked applied: ledger operations/s = items / the batch's round trip (p50 and the best),
  and with two clients at once, each charging its own holds on other bidders' accounts (two auctioneers' hosts:
  a hold names one collector) — throughput;
* **baseline**: the same ChargeHold items one per signed request, ``--clients`` threads in two processes for
  ``--seconds``: operations/s;
* the ratio of the two, and the audit after (clean).

``--profile``: instead, the host's WSGI application in this process: the serving thread's CPU time per stage
of a batch (WS-Security verification, ApplyBatch read and answered without spyne — the items read, the Bank:
the ledger core, the documents handed to the store, SQLite's write —, the response's signature), then one
batch profiled (cProfile).
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bank import BANK_NS, bank_envelope, bank_host, bench_pki  # noqa: E402
from common import scratch_dir, write_section  # noqa: E402
from whoami import Caller, run_load  # noqa: E402

from lxml import etree

from gridcredit.client import ServiceClient
from gridcredit.security.credentials import load_credential
from gridcredit.security.wssec import SOAP11_NS
from gridcredit.server.host import HostFiles, build_host

HOLD_AMOUNT = 10**9
TIMED_BATCHES = 10                  # --profile: batches timed by stage before the profiled one
PEOPLE = ("Bench Admin", "Bench Owner", "Bench Auctioneer")


def batch_envelope(hold_ids: list[str], prefix: str) -> etree._Element:
    """An ApplyBatch of one ChargeHold of 1 credit per hold, to the site."""
    items = "".join(f"<b:BatchItem><b:operation>ChargeHold</b:operation><b:request_id>{prefix}-{index}</b:request_id>"
                    f"<b:hold_id>{hold_id}</b:hold_id><b:payee_account_id>site-bench</b:payee_account_id>"
                    f"<b:amount>1</b:amount></b:BatchItem>" for index, hold_id in enumerate(hold_ids))
    return etree.fromstring(f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Body><b:ApplyBatch xmlns:b="{BANK_NS}"><b:items>'
                            f'{items}</b:items></b:ApplyBatch></s:Body></s:Envelope>'.encode())


def check_applied(body: etree._Element, count: int) -> None:
    result = body.find(f".//{{{BANK_NS}}}ApplyBatchResult")
    applied = int(result.findtext(f"{{{BANK_NS}}}applied"))
    if applied != count:
        codes = [code.text for code in body.iter(f"{{{BANK_NS}}}fault_code")][:5]
        raise SystemExit(f"a batch applied {applied} of {count} items ({codes})")


def make_accounts(url, admin, owner_dn: str, trust_dir, count: int, threads: int = 4) -> None:
    """The bidders' accounts bidder-0 … (one owner), each funded for its holds."""
    def work(first: int) -> None:
        caller = Caller(f"{url}/bank", admin, trust_dir, signed=True)
        for index in range(first, count, threads):
            caller.call_envelope(bank_envelope("CreateAccount", request_id=f"a-{index}", account_id=f"bidder-{index}",
                                                 project="bench", owner_dn=owner_dn))
            caller.call_envelope(bank_envelope("Mint", request_id=f"m-{index}", account_id=f"bidder-{index}",
                                                 amount=10**13))

    pool = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def make_holds(url, credential, trust_dir, count: int, collector_dn: str, accounts: int, threads: int = 4, *,
               first_account: int = 0) -> list[str]:
    """``count`` holds spread over the ``accounts`` bidders' accounts from bidder-<first_account> on."""
    expires = (datetime.now(timezone.utc) + timedelta(hours=6)).isoformat()
    holds: list[str] = []
    lock = threading.Lock()

    def work(first: int) -> None:
        caller = Caller(f"{url}/bank", credential, trust_dir, signed=True)
        for index in range(first, count, threads):
            body = caller.call_envelope(bank_envelope(
                "CreateHold", request_id=f"h-{uuid.uuid4().hex}",
                account_id=f"bidder-{first_account + index % accounts}",
                amount=HOLD_AMOUNT, expires=expires, collector_dn=collector_dn, payee_account_id="site-bench"))
            with lock:
                holds.append(body.findtext(f".//{{{BANK_NS}}}hold_id"))

    pool = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if len(holds) != count or None in holds:
        raise SystemExit(f"made {len(holds)} holds of {count}")
    return sorted(holds)


def run_batches(url, credential, trust_dir, hold_ids, batches: int, tag: str,
                phases: dict | None = None) -> list[float]:
    """Round-trip seconds of each batch, one after another (envelopes made before the clock starts): signing
    it, posting it and reading the answer, verifying the answer; ``phases`` collects the three apart."""
    caller = Caller(f"{url}/bank", credential, trust_dir, signed=True)
    envelopes = [batch_envelope(hold_ids, f"{tag}-{index}-{uuid.uuid4().hex[:8]}") for index in range(batches)]
    times = []
    for envelope in envelopes:
        started = time.perf_counter()
        caller.signer.sign(envelope)
        data = etree.tostring(envelope)
        signed = time.perf_counter()
        reply = caller.session.post(caller.url, data=data, timeout=120,
                                    headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
        answered = time.perf_counter()
        if reply.status_code != 200:
            raise SystemExit(f"HTTP {reply.status_code}: {reply.text[:300]}")
        sent = envelope.findtext(".//{http://www.w3.org/2000/09/xmldsig#}SignatureValue")
        body = caller.verifier.verify(reply.content, expected_confirmation=sent).body
        finished = time.perf_counter()
        times.append(finished - started)
        if phases is not None:
            for name, seconds in (("sign", signed - started), ("server", answered - signed),
                                  ("verify", finished - answered)):
                phases.setdefault(name, []).append(seconds)
        check_applied(body, len(hold_ids))
    return times


def _single_process(url, cert, key, trust_dir, hold_ids, threads, seconds, rate_per_thread, queue):
    credential = load_credential(cert_path=cert, key_path=key)
    results = []
    lock = threading.Lock()

    def run(offset: int) -> None:
        caller = Caller(f"{url}/bank", credential, Path(trust_dir), signed=True)
        latencies = []
        end = time.perf_counter() + seconds
        index = offset
        while time.perf_counter() < end:
            started = time.perf_counter()
            body = caller.call_envelope(bank_envelope(
                "ChargeHold", request_id=f"s-{uuid.uuid4().hex}", hold_id=hold_ids[index % len(hold_ids)],
                payee_account_id="site-bench", amount=1))
            latencies.append(time.perf_counter() - started)
            if body.find(f".//{{{BANK_NS}}}ChargeHoldResult") is None:
                raise SystemExit("a single ChargeHold was not applied")
            index += 7
        with lock:
            results.extend(latencies)

    pool = [threading.Thread(target=run, args=(index * 131,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put(results)


class _StageClock:
    """The serving thread's CPU time (time.thread_time: what other load on the machine does not inflate as
    much as wall time) spent in each stage of a request, while entered."""

    def __init__(self) -> None:
        from gridcredit.security import wssec
        from gridcredit.server import host
        from gridcredit.services.bank import bank, ledger, service
        from gridcredit.xmlstore import _embedded
        from spyne.protocol.soap import soap11
        self._stages = [(host.SignedSoapHost, "__call__", "host (all)"), (wssec.Verifier, "verify", "WS-Security verify"),
                        (host.SignedSoapHost, "_call_direct", "ApplyBatch without spyne (all)"),
                        (service, "_wire_items", "items read"), (bank.Bank, "execute_batch", "Bank (all)"),
                        (ledger, "execute", "ledger core"), (bank._StoreView, "flush", "documents to the store"),
                        (_embedded._EmbeddedTransaction, "write", "SQLite write"),
                        (service, "_write_results", "results written"),
                        (soap11.Soap11, "deserialize", "spyne parse"), (soap11.Soap11, "serialize", "spyne answer"),
                        (host.SignedSoapHost, "_reply", "answer signed")]
        self.spent: dict[str, float] = {label: 0.0 for _owner, _name, label in self._stages}
        self.spent["garbage collection (in the stages above)"] = 0.0
        self._originals: list = []
        self._collecting_since = 0.0

    def _collection(self, phase: str, _info) -> None:
        if phase == "start":
            self._collecting_since = time.thread_time()
        else:
            self.spent["garbage collection (in the stages above)"] += time.thread_time() - self._collecting_since

    def __enter__(self):
        gc.callbacks.append(self._collection)
        for owner, name, label in self._stages:
            original = getattr(owner, name)
            self._originals.append((owner, name, original))

            def timed(*arguments, _original=original, _label=label, **options):
                started = time.thread_time()
                try:
                    return _original(*arguments, **options)
                finally:
                    self.spent[_label] += time.thread_time() - started
            setattr(owner, name, timed)
        return self

    def __exit__(self, *_) -> None:
        gc.callbacks.remove(self._collection)
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()

    def report(self, batches: int) -> str:
        return ", ".join(f"{label} {seconds / batches * 1000:.0f} ms" for label, seconds in self.spent.items())


def profile(args, root: Path) -> int:
    """One batch through the host's WSGI application in this process, profiled."""
    from gridcredit.config import Config, SecurityConfig
    from gridcredit.security.wssec import Signer
    from gridcredit.services.bank.config import BankConfig

    files, users = bench_pki(root, PEOPLE)
    people = {name: credential for name, (_cert, _key, credential) in users.items()}
    config = Config(state_dir=str(root / "state"), security=SecurityConfig(host_cert=str(files.host_cert),
                                                                           host_key=str(files.host_key),
                                                                           cert_dir=str(files.trust_dir)))
    config = config.with_section("bank", BankConfig(admins=(people["Bench Admin"].identity_dn,)))
    app = build_host(config, HostFiles(Path(files.host_cert), Path(files.host_key), Path(files.trust_dir)))

    def call(credential, envelope: etree._Element) -> etree._Element:
        data = etree.tostring(Signer(credential).sign(envelope))
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/bank", "QUERY_STRING": "", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "8443", "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(data),
                   "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "text/xml; charset=utf-8",
                   "SERVER_PROTOCOL": "HTTP/1.1"}
        answer = etree.fromstring(b"".join(app(environ, lambda status, headers, exc_info=None: None)))
        fault = answer.findtext(".//faultstring")
        if fault:
            raise SystemExit(fault)
        return answer

    admin, owner = people["Bench Admin"], people["Bench Owner"]
    call(admin, bank_envelope("CreateAccount", request_id="a2", account_id="site-bench", project="p",
                                owner_dn=admin.identity_dn))
    for index in range(args.accounts):
        call(admin, bank_envelope("CreateAccount", request_id=f"a-{index}", account_id=f"bidder-{index}",
                                    project="p", owner_dn=owner.identity_dn))
        call(admin, bank_envelope("Mint", request_id=f"m-{index}", account_id=f"bidder-{index}", amount=10**13))
    expires = (datetime.now(timezone.utc) + timedelta(hours=6)).isoformat()
    holds = []
    for index in range(args.items):
        answer = call(owner, bank_envelope("CreateHold", request_id=f"h{index}", account_id=f"bidder-{index % args.accounts}",
                                             amount=HOLD_AMOUNT, expires=expires,
                                             collector_dn=people["Bench Auctioneer"].identity_dn,
                                             payee_account_id="site-bench"))
        holds.append(answer.findtext(f".//{{{BANK_NS}}}hold_id"))
    auctioneer = people["Bench Auctioneer"]
    for warm in range(2):
        check_applied(call(auctioneer, batch_envelope(holds, f"warm{warm}")), len(holds))
    gc.freeze()    # as a server worker does once it is built (server/host.py run_worker)
    plain = []
    stages = _StageClock()
    for index in range(TIMED_BATCHES):
        envelope = batch_envelope(holds, f"timed{index}")
        started = time.perf_counter()
        with stages:
            answer = call(auctioneer, envelope)
        plain.append(time.perf_counter() - started)
        check_applied(answer, len(holds))
    print(f"one batch of {len(holds)} ChargeHold items on {args.accounts} accounts in this process (signing the "
          f"request included), without the profiler: best {min(plain) * 1000:.1f} ms, median "
          f"{statistics.median(plain) * 1000:.1f} ms (load {os.getloadavg()[0]:.1f})")
    print(f"CPU time of the serving thread per batch (mean of {TIMED_BATCHES}), by stage: "
          + stages.report(TIMED_BATCHES))
    envelope = batch_envelope(holds, "profiled")
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    answer = call(auctioneer, envelope)
    profiler.disable()
    elapsed = time.perf_counter() - started
    check_applied(answer, len(holds))
    print(f"one batch of {len(holds)} ChargeHold items in this process (signing the request included): "
          f"{elapsed * 1000:.1f} ms under the profiler")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats(os.environ.get("BATCH_SORT", "cumulative")).print_stats(45)
    print(stream.getvalue())
    app.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000, help="ChargeHold items per batch (default 1000)")
    parser.add_argument("--accounts", type=int, default=1000,
                        help="bidders' accounts the holds are spread over (default 1000: one per hold)")
    parser.add_argument("--batches", type=int, default=20, help="batches each batch run sends (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the one-per-request run (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="client threads of the one-per-request run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stores", default="embedded")
    parser.add_argument("--profile", action="store_true", help="profile one batch in this process instead")
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()
    root = scratch_dir("gridcredit-bench-batch-")
    if args.profile:
        return profile(args, root)

    files, users = bench_pki(root, PEOPLE)
    trust_dir = files.trust_dir
    lines = [f"Machine: {os.cpu_count()} cores; host: {args.workers} worker processes, host key P-256 (ECDSA), user "
             f"keys RSA-2048. Batch: {args.batches} ApplyBatch requests of {args.items} ChargeHold items (1 credit from "
             f"each of {args.items} holds on {args.accounts} bidders' accounts, whose collector is the caller), one "
             f"client, one after another, each signed and its signed answer verified; then two such clients at once, "
             f"each charging its own {args.items} holds on {args.accounts} other bidders' accounts (two auctioneers' "
             f"hosts). Baseline: the same ChargeHold "
             f"items one per signed request, {args.clients} client threads in 2 processes for {args.seconds:.0f} s. "
             f"Client and server share the machine's cores.",
             "", "| store | batch p50 / best (ms) | ops/s in batches, 1 client (p50 / best) | ops/s in batches, "
                 "2 clients (each its own holds) | ops/s one per request | ratio (1 client p50 / baseline) | target | load average "
                 "before / after (1 min) |",
             "|---|---|---|---|---|---|---|---|"]
    parts: list[str] = []
    for store in args.stores.split(","):
        with bank_host(root, store, files, users["Bench Admin"][2].identity_dn, workers=args.workers,
                       threads=max(8, args.clients)) as url:
            admin = ServiceClient(url, "bank", credential=users["Bench Admin"][2], trust_dir=trust_dir)
            admin.call("CreateAccount", request_id="setup-2", account_id="site-bench", project="site",
                       owner_dn=users["Bench Admin"][2].identity_dn)
            print(f"[{store}] making 2 × {args.accounts} bidders' accounts and 2 × {args.items} holds …", flush=True)
            make_accounts(url, users["Bench Admin"][2], users["Bench Owner"][2].identity_dn, trust_dir,
                          2 * args.accounts)
            holds, other_holds = (make_holds(url, users["Bench Owner"][2], trust_dir, args.items,
                                             users["Bench Auctioneer"][2].identity_dn, args.accounts,
                                             first_account=first) for first in (0, args.accounts))
            auctioneer = users["Bench Auctioneer"]
            load_before = os.getloadavg()[0]
            print(f"[{store}] warm-up batches …", flush=True)
            run_batches(url, auctioneer[2], trust_dir, holds, 3, "warm")
            print(f"[{store}] {args.batches} batches, one client …", flush=True)
            phases: dict = {}
            times = run_batches(url, auctioneer[2], trust_dir, holds, args.batches, "one", phases)
            print(f"[{store}] one client, p50 of each part of a batch's round trip: "
                  + ", ".join(f"{name} {statistics.median(values) * 1000:.1f} ms" for name, values in phases.items()))
            print(f"[{store}] {args.batches} batches each from two clients at once, each on its own bidders' "
                  f"holds …", flush=True)
            both: list[list[float]] = [[], []]
            started = time.perf_counter()
            pool = [threading.Thread(target=lambda slot=slot, own=own: both[slot].extend(
                run_batches(url, auctioneer[2], trust_dir, own, args.batches, f"two{slot}")))
                for slot, own in enumerate((holds, other_holds))]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            two_clients = 2 * args.batches * args.items / (time.perf_counter() - started)
            print(f"[{store}] baseline: one per request, {args.clients} clients, {args.seconds:.0f} s …", flush=True)
            latencies = run_load(_single_process, (url, auctioneer[0], auctioneer[1], str(trust_dir), holds),
                                 args.clients, args.seconds, wait_s=300)
            single_ops = len(latencies) / args.seconds
            load_after = os.getloadavg()[0]
            audit = admin.call("Audit")
            if not audit.clean:
                raise SystemExit(f"[{store}] the audit after the load is not clean")
        p50, best = statistics.median(times), min(times)
        parts.append(f"{store}: " + ", ".join(f"{name} {statistics.median(values) * 1000:.0f}"
                                              for name, values in phases.items()))
        lines.append(f"| {store} | {p50 * 1000:.1f} / {best * 1000:.1f} | {args.items / p50:,.0f} / "
                     f"{args.items / best:,.0f} | {two_clients:,.0f} | {single_ops:,.0f} | "
                     f"{args.items / p50 / single_ops:.1f} × | ≥ 20,000 ops/s (a 1,000-item batch ≤ 50 ms) | "
                     f"{load_before:.1f} / {load_after:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "Where a batch's round trip goes (one client, p50 in ms: the client signing the request, posting it "
                  "until the whole answer is read — the server's work —, the client verifying the answer): "
              + "; ".join(parts) + ".", "", "Audit after each store's runs: clean."]
    print("\n".join(lines))
    if args.write:
        command = "python bench/bank_batch.py" + (f" --stores {args.stores}" if args.stores != "embedded" else "")
        write_section("Issue 14: the Bank's ApplyBatch", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
