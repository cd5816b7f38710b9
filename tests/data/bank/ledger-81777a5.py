"""Write a ledger made by the Bank as it was before SettleHold and service grants (commit 81777a5),
as the store's documents, for tests/test_bank_ledger.py: old ledgers must still load and audit clean.

Run with that commit's code first on sys.path (not the editable install):
    git archive 81777a5 gridcredit security xmlstore services server | tar -x -C old
    (lay old/* out as the gridcredit package, as setup.py's package_dir does), then
    OLD_GRIDCREDIT=old-laid-out python tests/data/bank/ledger-81777a5.py tests/data/bank/ledger-81777a5.json
"""
import hashlib
import hmac
import json
import os
import sys

sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__]
sys.path.insert(0, os.environ["OLD_GRIDCREDIT"])   # the old tree laid out as the gridcredit package

from gridcredit.services.bank import documents, ledger  # noqa: E402
from gridcredit.services.bank.ledger import *  # noqa: E402,F403

KEY = b"old-ledger-key"
S = 1_000_000
NOW = 1_700_000_000 * S


def sign(message):
    return hmac.new(KEY, message, hashlib.sha256).digest()


bank = MemoryLedger(sign=sign, policy=BankPolicy(mint_approval_threshold=10_000, hold_duration_max_us=3600 * S))
admin, admin2 = Principal("/CN=Admin", is_administrator=True), Principal("/CN=Admin Two", is_administrator=True)
owner, member, collector = Principal("/CN=Owner"), Principal("/CN=Member"), Principal("/CN=Collector")
n = iter(range(1000))


def run(request, who, at=NOW):
    return bank.run(request, principal=who, now_us=at).transaction


run(CreateAccount(f"r{next(n)}", "vo-a", "a", owner.dn, 50), admin)
run(CreateAccount(f"r{next(n)}", "site-b", "b", "/CN=Site"), admin)
run(SetHolder(f"r{next(n)}", "vo-a", member.dn, Role.MEMBER), owner)
run(Mint(f"r{next(n)}", "vo-a", 1000), admin)
pending = run(Mint(f"r{next(n)}", "vo-a", 20_000), admin).pending_mint_id
run(ApproveMint(f"r{next(n)}", pending), admin2)
run(SetSpendingLimit(f"r{next(n)}", "vo-a", 5000, 3600 * S), owner)
run(Transfer(f"r{next(n)}", "vo-a", "site-b", 7), member)
charged = run(CreateHold(f"r{next(n)}", "vo-a", 100, NOW + 60 * S, "job 1"), member).hold_id
run(ExtendHold(f"r{next(n)}", charged, NOW + 120 * S, 150), member)
run(ChargeHold(f"r{next(n)}", charged, "site-b", 40), member)
run(ChargeHold(f"r{next(n)}", charged, "site-b", 110), member)
released = run(CreateHold(f"r{next(n)}", "vo-a", 80, NOW + 60 * S, "", collector.dn, "site-b"), member).hold_id
run(ChargeHold(f"r{next(n)}", released, "site-b", 30), collector)
run(ReleaseHold(f"r{next(n)}", released), collector)
expired = run(CreateHold(f"r{next(n)}", "vo-a", 20, NOW + 10 * S), member).hold_id
run(ExpireHold(f"expire-{expired}", expired), Principal("gridcredit bank expiry sweeper", is_service=True), NOW + 10 * S)
run(CreateHold(f"r{next(n)}", "vo-a", 33, NOW + 600 * S, "still active"), owner)
run(Retire(f"r{next(n)}", "site-b", 5), admin)
assert bank.audit(lambda m, s: hmac.compare_digest(sign(m), s), signature_check_interval=1).clean

text = lambda state: documents.to_xml(state).decode("utf-8")
json.dump({"key": KEY.decode(), "made_by": "81777a5",
           "transactions": [text(t) for t in bank.transactions],
           "accounts": [text(a) for a in bank.accounts.values()],
           "holds": [text(h) for h in bank.holds.values()],
           "pending_mints": [text(p) for p in bank.pending_mints.values()],
           "money_supply": text(bank.supply), "ledger_head": text(bank.ledger_head)},
          open(sys.argv[1], "w"), indent=1)
