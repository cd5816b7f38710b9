"""Audit time for a ledger of 1,000,000 transactions (target: under 60 s).

    python bench/audit.py [--transactions 1000000] [--store embedded] [--write]

Builds a realistic ledger with the Bank's own core (accounts, mints, holds, partial charges,
releases, expiries and transfers, every transaction hash-chained and Ed25519-signed), stores its
documents in the chosen store exactly as the Bank does, then times ``audit_store``: reading every
document back, recomputing every hash, checking signatures at checkpoints and every invariant.
Beside it, in the same run: the time to recompute the hashes alone (the floor of any audit), the
CPU time of this process and of the audit's helper process, and the machine's load average (the
machines are shared: a busy neighbour shows as wall time above the CPU time of the replay).
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_dir, write_section  # noqa: E402

from gridcredit.config import StoreConfig
from gridcredit.services.bank import documents, ledger, ledger_chain
from gridcredit.services.bank.bank import (ACCOUNTS, BANK, HOLDS_ACTIVE, HOLDS_ENDED, TRANSACTIONS,
                                           LedgerKey, audit_store)
from gridcredit.xmlstore import open_store

ACCOUNTS_COUNT = 100
BATCH = 5_000


def build_ledger(transactions: int, key: LedgerKey, seed: int = 7) -> ledger.MemoryLedger:
    rng = random.Random(seed)
    book = ledger.MemoryLedger(sign=key.sign)
    admin = ledger.Principal("/CN=Bench Admin", is_administrator=True)
    owners = [ledger.Principal(f"/CN=Owner {n}") for n in range(ACCOUNTS_COUNT)]
    now = 1_800_000_000_000_000
    counter = 0

    def run(request, principal):
        nonlocal now, counter
        now += 1000
        counter += 1
        return book.run(request, principal=principal, now_us=now)

    for n in range(ACCOUNTS_COUNT):
        run(ledger.CreateAccount(f"a{n}", f"acct-{n}", "bench", owners[n].dn), admin)
        run(ledger.Mint(f"m{n}", f"acct-{n}", 10**12), admin)
    active: list[tuple[str, int, int]] = []   # (hold id, owner index, remaining)
    while len(book.transactions) < transactions:
        choice = rng.random()
        n = rng.randrange(ACCOUNTS_COUNT)
        request_id = f"r{counter}"
        if choice < 0.35 or not active:
            amount = rng.randrange(10, 1000)
            outcome = run(ledger.CreateHold(request_id, f"acct-{n}", amount, now + 3_600_000_000), owners[n])
            active.append((outcome.transaction.hold_id, n, amount))
        elif choice < 0.75:
            index = rng.randrange(len(active))
            hold_id, owner, remaining = active[index]
            charge = rng.randrange(1, remaining + 1)
            payee = (owner + 1 + rng.randrange(ACCOUNTS_COUNT - 1)) % ACCOUNTS_COUNT
            run(ledger.ChargeHold(request_id, hold_id, f"acct-{payee}", charge), owners[owner])
            if charge == remaining:
                active.pop(index)
            else:
                active[index] = (hold_id, owner, remaining - charge)
        elif choice < 0.9:
            hold_id, owner, _ = active.pop(rng.randrange(len(active)))
            run(ledger.ReleaseHold(request_id, hold_id), owners[owner])
        else:
            payee = (n + 1 + rng.randrange(ACCOUNTS_COUNT - 1)) % ACCOUNTS_COUNT
            run(ledger.Transfer(request_id, f"acct-{n}", f"acct-{payee}", rng.randrange(1, 100)), owners[n])
    return book


def store_ledger(store, book: ledger.MemoryLedger) -> None:
    def batches():
        batch = []
        for transaction in book.transactions:
            batch.append((TRANSACTIONS, documents.transaction_document_id(transaction.seq), documents.to_xml(transaction)))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        for account in book.accounts.values():
            batch.append((ACCOUNTS, account.account_id, documents.to_xml(account)))
        for hold in book.holds.values():
            collection = HOLDS_ACTIVE if hold.state is ledger.HoldState.ACTIVE else HOLDS_ENDED
            batch.append((collection, hold.hold_id, documents.to_xml(hold)))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        batch.append((BANK, documents.MONEY_SUPPLY_ID, documents.to_xml(book.supply)))
        batch.append((BANK, documents.LEDGER_HEAD_ID, documents.to_xml(book.ledger_head)))
        yield batch

    for batch in batches():
        def write(tx, batch=batch):
            for collection, doc_id, xml in batch:
                tx.put(collection, doc_id, xml)
        store.transact(write)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = parser.parse_args()

    root = scratch_dir("gridcredit-bench-audit-")
    key = LedgerKey.load_or_create(root / "ledger-key.pem")
    started = time.perf_counter()
    book = build_ledger(args.transactions, key)
    print(f"built {len(book.transactions):,} transactions in {time.perf_counter() - started:.0f} s", flush=True)
    store = open_store(StoreConfig(), root)
    started = time.perf_counter()
    store_ledger(store, book)
    print(f"stored them in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    for transaction in book.transactions:
        ledger_chain.transaction_hash(transaction)
    hashes_s = time.perf_counter() - started
    del book

    load_before = os.getloadavg()[0]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_started = time.process_time()
    started = time.perf_counter()
    report = audit_store(store, key.public)
    audit_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    helper_cpu_s = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    load_after = os.getloadavg()[0]
    if not report.clean:
        raise SystemExit(f"the audit found problems: {report.findings[:5]}")
    lines = ["| measure | value | target |", "|---|---|---|",
             f"| transactions audited (embedded store) | {report.transaction_count:,} | |",
             f"| `audit_store`: read, decode and hash (with a helper process), chain, {report.signatures_checked:,} Ed25519 checkpoints, invariants | {audit_s:.1f} s | < 60 s |",
             f"| hashes alone, from objects in memory (floor) | {hashes_s:.1f} s | |",
             f"| audit / hashes alone | {audit_s / hashes_s:.1f} × | |",
             f"| CPU during the audit: replaying process / helper process | {cpu_s:.1f} s / {helper_cpu_s:.1f} s | |",
             f"| load average (1 min) before / after the audit, on {os.cpu_count()} cores | "
             f"{load_before:.1f} / {load_after:.1f} | |"]
    print("\n".join(lines))
    if args.write:
        write_section("Bank: audit of a large ledger", "python bench/audit.py" + (f" --transactions {args.transactions}" if args.transactions != 1_000_000 else ""), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
