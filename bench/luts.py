"""LUTS: signed batch ingest rate, then query times at a large number of stored records.

    python bench/luts.py [--stores embedded,basex] [--records 1000000] [--batches 20] [--write]

For each store a gridcredit host (2 worker processes) serves the LUTS.

1. Ingest: ``--batches`` signed Publish requests of 1,000 OGF UR 1.0 records each (a ``UsageRecords``
   document as ARC's publisher writes them, ~1 KB a record, made before the clock starts), sent by
   two client processes at once;
   records/s = records acknowledged / wall time. Every answer is verified like the real client does.
   Also: records / time until a signed query sees them all (on BaseX the store acknowledges a write
   once it is in its journal, and queries wait until BaseX has applied it).
2. Fill: the store is then filled to ``--records`` through the LUTS core in this process (the
   same publish path without HTTP and WS-Security, so a million records take minutes, not an hour).
3. Queries, signed over HTTPS, each repeated and reported as median / 95th percentile:
   one user's records for one month, asked by that user (a page of up to 1,000; also with an XPath,
   ``n:Usage/n:wall_us > 60000000``, which the embedded store evaluates in a sandbox process), one job by its
   global id, the monthly summary by VO (both asked by an administrator). Baseline in the same run: a signed WhoAmI round trip.
"""
from __future__ import annotations

import argparse
import base64
import copy
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import scratch_dir, write_section  # noqa: E402
from luts_fixtures import Job, make_batch  # noqa: E402
from whoami import Caller, free_port, start_server  # noqa: E402

from lxml import etree

from gridcredit.server.registry import load_config
from gridcredit.server.host import HostFiles, prepare_state
from gridcredit.server.host_cli import development_pki
from gridcredit.server.registry import open_service_store
from gridcredit.security.credentials import load_credential
from gridcredit.security.pki import CertificateAuthority
from gridcredit.security.wssec import SOAP11_NS
from gridcredit.services.luts.luts import Caller as LutsCaller, Luts, LutsPolicy
from gridcredit.xmlstore.basex_server import BaseXServer

LUTS_NS = "urn:gridcredit:luts:1"
BATCH = 1000
USERS = 1000
VOS = [f"vo{n:02d}" for n in range(20)]
MACHINES = [f"ce{n}.example.org" for n in range(10)]
MONTHS = 12
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


USER_DN_BASE = "/O=Grid/O=Bench"     # main() sets it to the bench CA's, so user 7 can ask with a certificate


def user_dn(number: int) -> str:
    return f"{USER_DN_BASE}/CN=Bench User {number}"


def synthetic_jobs(first: int, count: int) -> list[Job]:
    """Deterministic records: record n belongs to user n % USERS, ends in month (n // USERS) % MONTHS."""
    jobs = []
    for n in range(first, first + count):
        month = (n // USERS) % MONTHS
        end = START + timedelta(days=31 * month + (n % 28), seconds=n % 86_400)
        end = end.replace(day=min(end.day, 28))
        jobs.append(Job(record_id=f"bench-{n}", user=user_dn(n % USERS), vo=VOS[n % len(VOS)],
                        machine=MACHINES[n % len(MACHINES)], queue="q" + str(n % 3), end=end, wall_s=60 + n % 7200,
                        cpu_s=30 + n % 3600, charge=f"{n % 1000}.{n % 100:02d}", local_job_id=str(n),
                        global_job_id=f"gsiftp://bench/jobs/{n}"))
    return jobs


def envelope(operation: str, body: str) -> etree._Element:
    return etree.fromstring(f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Body><l:{operation} xmlns:l="{LUTS_NS}">'
                            f'{body}</l:{operation}></s:Body></s:Envelope>'.encode())


def _ingest_process(url, cert, key, trust_dir, first_batch, batches, queue, go):
    caller = Caller(f"{url}/luts", load_credential(cert_path=cert, key_path=key), Path(trust_dir), signed=True)
    # the records are made before the clock starts (a site's reporter has them already)
    documents = [base64.b64encode(make_batch(synthetic_jobs(number * BATCH, BATCH))).decode()
                 for number in range(first_batch, first_batch + batches)]
    queue.put("ready")
    go.wait()
    stored = 0
    for document in documents:
        answer = caller.call_envelope(envelope("Publish", f"<l:document>{document}</l:document>"))
        stored += int(answer.findtext(f".//{{{LUTS_NS}}}stored")) + int(answer.findtext(f".//{{{LUTS_NS}}}duplicate"))
    queue.put(stored)


def ingest(url, cert, key, trust_dir, first: int, batches: int) -> tuple[float, float]:
    """Batches first … first + batches - 1: (records acknowledged per second, when the ingest
    started: perf_counter)."""
    queue, go = multiprocessing.Queue(), multiprocessing.Event()
    half = batches // 2
    processes = [multiprocessing.Process(target=_ingest_process,
                                         args=(url, cert, key, str(trust_dir), start, count, queue, go))
                 for start, count in ((first, half), (first + half, batches - half))]
    for process in processes:
        process.start()
    for _ in processes:
        if queue.get(timeout=600) != "ready":
            raise SystemExit("an ingest client failed to start")
    started = time.perf_counter()
    go.set()
    stored = sum(queue.get(timeout=1800) for _ in processes)
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    if stored != batches * BATCH:
        raise SystemExit(f"only {stored} of {batches * BATCH} records were acknowledged")
    return stored / elapsed, started


def fill(config, admin_dn: str, first: int, total: int) -> float:
    """Publish records first … total - 1 through the LUTS core; records/s until the store holds them all."""
    store = open_service_store(config)
    luts = Luts(store, LutsPolicy(admins=frozenset({admin_dn})))
    started = began = time.perf_counter()
    try:
        for start in range(first, total, BATCH):
            count = min(BATCH, total - start)
            report = luts.publish(make_batch(synthetic_jobs(start, count)), LutsCaller(admin_dn))
            if not report.ok:
                raise SystemExit(f"fill failed at record {start}: {report.results[0]}")
            if (start // BATCH) % 50 == 0:
                done = start + count
                rate = (done - first) / (time.perf_counter() - started)
                print(f"  filled {done:,} records ({rate:,.0f}/s)", flush=True)
        if hasattr(store, "flush"):  # BaseX applies behind the journal: time the queries once it holds everything
            started = time.perf_counter()
            store.flush()
            print(f"  BaseX caught up with the journal in {time.perf_counter() - started:,.0f} s", flush=True)
        return (total - first) / (time.perf_counter() - began)
    finally:
        store.close()


def timed(call, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(1000 * (time.perf_counter() - started))
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="embedded,basex")
    parser.add_argument("--records", type=int, default=1_000_000, help="records stored when the queries are timed")
    parser.add_argument("--batches", type=int, default=20, help="signed batches of 1,000 records in the ingest test")
    parser.add_argument("--warmup", type=int, default=40,
                        help="signed batches sent first, not measured (a fresh BaseX JVM compiles for its first "
                             "~20 s: with 10, BaseX spent ~1.8x the CPU per record); they are records the fill "
                             "stores anyway")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--basex-heap-mb", type=int, default=4096, help="Java heap of the BaseX server (default 4096)")
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()

    root = scratch_dir("gridcredit-bench-luts-")
    host_cert, host_key, trust_dir, _ = development_pki(root)
    ca = CertificateAuthority.load(root / "pki" / "ca")
    cert, key = ca.issue_user("Bench LUTS Admin", root / "admin")
    admin = load_credential(cert_path=str(cert), key_path=str(key))
    user_cert, user_key = ca.issue_user("Bench User 7", root / "user7")
    user7 = load_credential(cert_path=str(user_cert), key_path=str(user_key))
    global USER_DN_BASE
    USER_DN_BASE = user7.identity_dn.rsplit("/CN=", 1)[0]
    files = HostFiles(host_cert, host_key, trust_dir)
    lines = [f"Machine: {os.cpu_count()} cores; host: {args.workers} worker processes. Records: OGF UR 1.0 with SGAS "
             f"VO extension, ~{len(make_batch(synthetic_jobs(0, BATCH))) // BATCH} bytes each, {USERS} users, "
             f"{len(VOS)} VOs, {MONTHS} months. Ingest: {args.batches} signed batches of {BATCH} records from 2 client "
             f"processes, after {args.warmup} unmeasured warm-up batches. Queries: signed, over HTTPS, at "
             f"{max(args.records, (args.batches + args.warmup) * BATCH):,} stored records, median / p95 of {args.repeat}.",
             "", "| store | ingest records/s, acknowledged (target ≥ 5,000 on BaseX) | ingest records/s, until a "
             "query sees them all | one user's month (< 300 ms) | one user's month with an XPath (< 300 ms) | "
             "job by id (< 20 ms) | monthly summary by VO (< 500 ms) | signed WhoAmI (baseline) |",
             "|---|---|---|---|---|---|---|---|"]
    fill_rates: dict[str, float] = {}
    month_records = 0
    for store_name in args.stores.split(","):
        basex = None
        env = {"GRIDCREDIT_STATE_DIR": str(root / f"state-{store_name}"), "GRIDCREDIT_STORE_BACKEND": store_name,
               "GRIDCREDIT_LUTS_ADMINS": admin.identity_dn}
        if store_name == "basex":
            basex = BaseXServer(root / "basex", port=free_port(), heap_mb=args.basex_heap_mb).start()
            env["GRIDCREDIT_STORE_BASEX_PORT"] = str(basex.port)
        base = load_config(env=env)
        config = replace(base, server=replace(base.server, port=free_port(), workers=args.workers, threads=8,
                                              request_bytes_max=50_000_000))
        prepare_state(config)
        server = start_server(config, files, unsigned=False)
        try:
            url = f"https://localhost:{config.server.port}"
            admin_caller = Caller(f"{url}/luts", admin, trust_dir, signed=True)
            if args.warmup:
                print(f"[{store_name}] warm-up: {args.warmup} × {BATCH} records, not measured …", flush=True)
                ingest(url, str(cert), str(key), trust_dir, args.batches, args.warmup)
                admin_caller.call_envelope(envelope("Summary", "<l:by><l:string>vo</l:string></l:by>"))
            print(f"[{store_name}] ingest {args.batches} × {BATCH} records …", flush=True)
            rate, started = ingest(url, str(cert), str(key), trust_dir, 0, args.batches)
            # a query answers only once the store shows every acknowledged write (on BaseX: once the
            # applier has put them all into BaseX), so this is the rate at which records become queryable
            admin_caller.call_envelope(envelope("Summary", "<l:by><l:string>vo</l:string></l:by>"))
            queryable = args.batches * BATCH / (time.perf_counter() - started)
            print(f"[{store_name}] ingest: {rate:,.0f} records/s acknowledged, {queryable:,.0f} records/s until "
                  f"queryable", flush=True)
            if args.records > args.batches * BATCH:
                print(f"[{store_name}] filling to {args.records:,} records …", flush=True)
                fill_rates[store_name] = fill(config, admin.identity_dn, args.batches * BATCH, args.records)
            user_caller = Caller(f"{url}/luts", user7, trust_dir, signed=True)      # the user asks: scope own
            user_month = envelope("Query", "<l:from_month>2025-03</l:from_month><l:to_month>2025-03</l:to_month>"
                                           "<l:limit>1000</l:limit>")
            found = user_caller.call_envelope(copy.deepcopy(user_month)).findall(f".//{{{LUTS_NS}}}UsageRecordInfo")
            print(f"[{store_name}] one user's month: {len(found)} records", flush=True)
            month_records = len(found)
            user_month_xpath = envelope("Query", "<l:xpath>n:Usage/n:wall_us &gt; 60000000</l:xpath>"
                                                 "<l:from_month>2025-03</l:from_month><l:to_month>2025-03</l:to_month>"
                                                 "<l:limit>1000</l:limit>")
            found = user_caller.call_envelope(copy.deepcopy(user_month_xpath)).findall(
                f".//{{{LUTS_NS}}}UsageRecordInfo")
            print(f"[{store_name}] one user's month with an XPath: {len(found)} records", flush=True)
            job_id = f"gsiftp://bench/jobs/{args.records // 2 + 7}"
            job = envelope("JobUsage", f"<l:job_id>{job_id}</l:job_id>")
            if len(admin_caller.call_envelope(copy.deepcopy(job)).findall(f".//{{{LUTS_NS}}}UsageRecordInfo")) != 1:
                raise SystemExit("the job lookup did not find its record")
            summary = envelope("Summary", "<l:by><l:string>vo</l:string><l:string>month</l:string></l:by>"
                                          "<l:from_month>2025-03</l:from_month><l:to_month>2025-03</l:to_month>")
            rows = admin_caller.call_envelope(copy.deepcopy(summary)).findall(f".//{{{LUTS_NS}}}SummaryRowInfo")
            print(f"[{store_name}] summary rows: {len(rows)}", flush=True)
            whoami = envelope("WhoAmI", "")
            # a fresh copy each time: signing adds the Security header to the envelope it is given
            results = [timed(lambda c=c, e=e: c.call_envelope(copy.deepcopy(e)), args.repeat)
                       for c, e in ((user_caller, user_month), (user_caller, user_month_xpath), (admin_caller, job),
                                    (admin_caller, summary), (admin_caller, whoami))]
        finally:
            server.terminate()
            server.join(30)
            if basex is not None:
                basex.stop()
        cells = " | ".join(f"{p50:.1f} / {p95:.1f} ms" for p50, p95 in results)
        lines.append(f"| {store_name} | {rate:,.0f} | {queryable:,.0f} | {cells} |")
        print(lines[-1], flush=True)
    lines += ["", f"One user's month is asked by that user (scope own: {month_records} records); job and summary by an "
              "administrator; each of the three is asked once, untimed, before it is timed."]
    if fill_rates:
        lines.append(f"The fill to {args.records:,} went through the LUTS core in the benchmark's process (no HTTP or "
                     "WS-Security), until the store held every record: "
                     + ", ".join(f"{name} {rate:,.0f} records/s" for name, rate in fill_rates.items())
                     + (" (on BaseX paced by its apply rate: the store holds writers back once 32 MB wait for it)"
                        if "basex" in fill_rates else "") + ".")
    print("\n".join(lines))
    if args.write:
        command = "python bench/luts.py" + (f" --records {args.records}" if args.records != 1_000_000 else "")
        write_section("LUTS: ingest and queries", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
