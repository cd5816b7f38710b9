"""``gridcredit bank …`` and the Bank client library against a real host over HTTPS.

Every command once through ``gridcredit.server.cli.main`` with ``--json`` parsed and checked; retries
that lose a reply after the bank applied the request (a dropped connection, a timeout behind a
lossy proxy) answer the original under the same request id and the ledger holds one
transaction; refusals exit 1 with the fault text and are not retried; the offline audit is
clean, then names the transaction edited behind the bank's back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from lxml import etree

from gridcredit.server.cli import main
from gridcredit.services.bank.config import BankConfig
from gridcredit.errors import GridcreditError
from gridcredit.server.host import HostFiles, prepare_state, run_worker
from gridcredit.services.bank import documents, ledger
from gridcredit.services.bank.bank import TRANSACTIONS
from gridcredit.services.bank.client import (BankClient, InvalidRequest, OutcomeUnknown, Transaction, expiry,
                                             new_request_id)
from gridcredit.timeunits import datetime_from_us, datetime_to_us
from gridcredit.xmlstore import open_store

from cli_runner import Cli
from lossy_proxy import lossy_proxy
from security_fixtures import free_port, host_config, wait_for_tls

APPROVAL_ABOVE = 1_000_000


# ------------------------------------------------------------------------------------ fixtures

@dataclasses.dataclass
class Host:
    url: str
    config: object
    process: multiprocessing.Process


@contextlib.contextmanager
def bank_host(state_dir: Path, pki, *, admins: tuple[str, ...]):
    """One server worker in a child process, with ``admins`` as bank administrators."""
    port = free_port()
    config = host_config(state_dir, port, host_cert=pki.host_cert, host_key=pki.host_key, trust_dir=pki.trust_dir)
    config = config.with_section("bank", BankConfig(admins=admins, approval_above=APPROVAL_ABOVE, expiry_sweep_s=1))
    prepare_state(config)
    files = HostFiles(Path(pki.host_cert), Path(pki.host_key), Path(pki.trust_dir))
    process = multiprocessing.get_context("fork").Process(target=run_worker, args=(config, files), daemon=True)
    process.start()
    try:
        wait_for_tls(port, process=process)
        yield Host(f"https://localhost:{port}", config, process)
    finally:
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)


@dataclasses.dataclass(frozen=True)
class Users:
    admin: object
    admin2: object
    alice: object     # owner of vo
    bob: object
    site: object      # owner of the payee account


@pytest.fixture(scope="module")
def users(pki) -> Users:
    return Users(pki.user("Bank Admin"), pki.user("Bank Admin Two"), pki.user("Alice"), pki.user("Bob"),
                 pki.user("Site Owner"))


@pytest.fixture(scope="module")
def host(pki, users, tmp_path_factory):
    admins = (users.admin.credential.identity_dn, users.admin2.credential.identity_dn)
    with bank_host(tmp_path_factory.mktemp("bank-host"), pki, admins=admins) as running:
        yield running


@pytest.fixture(scope="module")
def accounts(host, pki, users):
    """Two accounts with money, made through the library (the CLI test makes its own)."""
    admin = BankClient(host.url, credential=users.admin.credential, trust_dir=pki.trust_dir)
    admin.create_account("lib-vo", project="lib", owner_dn=users.alice.credential.identity_dn)
    admin.create_account("lib-site", project="lib", owner_dn=users.site.credential.identity_dn)
    admin.mint("lib-vo", 100_000)
    return "lib-vo", "lib-site"


@pytest.fixture
def cli(capsys, pki, host):
    return Cli("bank", capsys, pki, host.url)


def client(host, pki, user, **options) -> BankClient:
    return BankClient(host.url, credential=user.credential, trust_dir=pki.trust_dir, **options)


def transactions_with_request_id(bank: BankClient, account_id: str, request_id: str) -> list[Transaction]:
    return list(bank.history(account_id, xpath_filter=f"t:requestId = '{request_id}'").transactions)


# --------------------------------------------------------------------------- every command once

@pytest.mark.slow
def test_every_command_through_the_cli(cli, users, host, pki):
    admin, admin2, alice, bob, site = users.admin, users.admin2, users.alice, users.bob, users.site
    alice_dn, bob_dn, site_dn = (u.credential.identity_dn for u in (alice, bob, site))

    me = cli.ok(alice, "whoami")
    assert me["dn"] == alice_dn and me["service"] == "bank" and me["proxy"] is False

    receipt = cli.ok(admin, "create-account", "vo", "--project", "atlas", "--owner", alice_dn, "--credit-limit", "0")
    assert receipt["replayed"] is False
    t = receipt["transaction"]
    assert (t["kind"], t["account_id"], t["project"], t["holder_dn"], t["role"]) == \
           ("create-account", "vo", "atlas", alice_dn, "owner")
    assert t["principal_dn"] == admin.credential.identity_dn and t["request_id"].startswith("gc-")
    cli.ok(admin, "create-account", "site", "--project", "site", "--owner", site_dn)
    cli.ok(admin, "create-account", "spare", "--project", "atlas", "--owner", alice_dn)

    t = cli.ok(alice, "add-holder", "vo", bob_dn, "--role", "member")["transaction"]
    assert (t["kind"], t["holder_dn"], t["role"]) == ("set-holder", bob_dn, "member")
    t = cli.ok(alice, "set-holder", "vo", bob_dn, "--role", "viewer")["transaction"]
    assert t["role"] == "viewer"
    t = cli.ok(alice, "remove-holder", "vo", bob_dn)["transaction"]
    assert (t["kind"], t["holder_dn"]) == ("remove-holder", bob_dn)

    # money supply: a mint, a mint above the threshold approved by a second administrator, a retire
    t = cli.ok(admin, "mint", "vo", "1,000,000", "--request-id", "cli-mint-1")["transaction"]
    assert (t["kind"], t["account_id"], t["amount"], t["request_id"]) == ("mint", "vo", 1_000_000, "cli-mint-1")
    replay = cli.ok(admin, "mint", "vo", "1000000", "--request-id", "cli-mint-1")
    assert replay["replayed"] is True and replay["transaction"]["seq"] == t["seq"]
    pending = cli.ok(admin, "mint", "vo", "2_000_000")["transaction"]
    assert pending["kind"] == "mint-request" and pending["pending_mint_id"]
    t = cli.ok(admin2, "approve-mint", pending["pending_mint_id"])["transaction"]
    assert (t["kind"], t["amount"], t["approver_dn"]) == ("mint", 2_000_000, admin2.credential.identity_dn)
    withdrawn = cli.ok(admin, "mint", "vo", "3,000,000")["transaction"]["pending_mint_id"]
    waiting = cli.ok(admin2, "pending-mints")
    assert [(p["pending_mint_id"], p["state"], p["amount"]) for p in waiting["pending_mints"]] == [
        (withdrawn, "pending", 3_000_000)] and waiting["next_offset"] is None
    t = cli.ok(admin, "cancel-mint", withdrawn)["transaction"]
    assert (t["kind"], t["pending_mint_id"], t["principal_dn"]) == ("mint-cancel", withdrawn,
                                                                    admin.credential.identity_dn)
    assert cli.ok(admin, "pending-mints")["pending_mints"] == []
    ended = cli.ok(admin, "pending-mints", "--ended")["pending_mints"]
    assert sorted((p["pending_mint_id"], p["state"], p["ended_by_dn"]) for p in ended) == sorted([
        (pending["pending_mint_id"], "approved", admin2.credential.identity_dn),
        (withdrawn, "cancelled", admin.credential.identity_dn)])
    text = cli.ok(admin, "pending-mints", "--ended", as_json=False)
    assert f"{withdrawn}" in text and "cancelled by" in text and "3,000,000" in text
    t = cli.ok(admin, "retire", "vo", "1000")["transaction"]
    assert (t["kind"], t["amount"]) == ("retire", 1000)
    supply = cli.ok(alice, "money-supply")
    assert supply == {"issued": 3_000_000, "retired": 1000, "outstanding": 2_999_000}

    # limits
    t = cli.ok(admin, "set-credit-limit", "vo", "500")["transaction"]
    assert (t["kind"], t["credit_limit"]) == ("set-credit-limit", 500)
    t = cli.ok(alice, "set-spending-limit", "vo", "100000", "--per", "day")["transaction"]
    assert (t["spending_limit"], t["spending_period_us"]) == (100_000, 86_400_000_000)
    t = cli.ok(alice, "set-spending-limit", "vo", "--remove")["transaction"]
    assert t["kind"] == "set-spending-limit" and t["spending_limit"] is None

    # moving money: a transfer, then a hold extended, charged in part, released
    t = cli.ok(alice, "transfer", "vo", "site", "2500")["transaction"]
    assert (t["kind"], t["account_id"], t["counterparty_account_id"], t["amount"]) == ("transfer", "vo", "site", 2500)
    before = datetime.now(timezone.utc)
    t = cli.ok(alice, "hold", "vo", "--amount", "5000", "--expires-in", "2h", "--reference", "job 4711")["transaction"]
    hold_id = t["hold_id"]
    assert (t["kind"], t["amount"], t["reference"], t["hold_state"]) == ("hold", 5000, "job 4711", "active")
    expires = datetime_from_us(t["expires_at_us"])
    assert timedelta(hours=2) <= expires - before <= timedelta(hours=2, seconds=30)
    later = (datetime.now(timezone.utc) + timedelta(hours=3)).replace(microsecond=0)
    t = cli.ok(alice, "extend-hold", hold_id, "--amount", "6000", "--expires", later.isoformat())["transaction"]
    assert (t["kind"], t["hold_amount"], t["expires_at_us"]) == ("extend", 6000, datetime_to_us(later))
    t = cli.ok(alice, "charge", hold_id, "--payee", "site", "--amount", "1200")["transaction"]
    assert (t["kind"], t["amount"], t["counterparty_account_id"]) == ("charge", 1200, "site")
    shown = cli.ok(alice, "show-hold", hold_id)
    assert (shown["charged"], shown["amount"], shown["state"]) == (1200, 6000, "active")
    active = cli.ok(alice, "holds", "vo")
    assert [h["hold_id"] for h in active["holds"]] == [hold_id] and active["next_offset"] is None
    t = cli.ok(alice, "release", hold_id)["transaction"]
    assert (t["kind"], t["amount"], t["hold_state"]) == ("release", 4800, "released")
    assert cli.ok(alice, "holds", "vo")["holds"] == []
    ended = cli.ok(alice, "holds", "vo", "--ended")["holds"]
    assert [(h["hold_id"], h["state"]) for h in ended] == [(hold_id, "released")]

    # queries
    expected_balance = 1_000_000 + 2_000_000 - 1000 - 2500 - 1200
    balance = cli.ok(alice, "balance", "vo")
    assert balance == {"account_id": "vo", "total": expected_balance, "held": 0,
                       "available": expected_balance + 500, "credit_limit": 500}  # available counts the credit limit
    account = cli.ok(alice, "account", "vo")
    assert (account["status"], account["balance"], account["project"]) == ("open", expected_balance, "atlas")
    assert account["holders"] == [{"dn": alice_dn, "role": "owner"}]
    charges = cli.ok(alice, "history", "vo", "--filter", "t:kind='charge' and t:amount > 1000")
    assert [(t["kind"], t["amount"]) for t in charges["transactions"]] == [("charge", 1200)]
    first = cli.ok(alice, "history", "vo", "--limit", "2")
    assert [t["kind"] for t in first["transactions"]] == ["create-account", "set-holder"] and first["next_offset"] == 2
    rest = cli.ok(alice, "history", "vo", "--offset", "2", "--limit", "500")
    assert rest["next_offset"] is None and rest["transactions"][-1]["kind"] == "release"
    period_start = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    period_end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    statement = cli.ok(alice, "statement", "vo", "--from", period_start, "--to", period_end)
    assert statement["opening_balance"] == 0 and statement["closing_balance"] == expected_balance
    assert len(statement["transactions"]) == 2 + len(rest["transactions"]) and statement["truncated"] is False

    # status: freeze (owner), unfreeze (administrators), close an empty account, set-status
    assert cli.ok(alice, "freeze", "vo")["transaction"]["status"] == "frozen"
    assert cli.ok(alice, "balance", "vo")["total"] == expected_balance
    assert cli.ok(admin, "unfreeze", "vo")["transaction"]["status"] == "open"
    assert cli.ok(admin, "set-status", "spare", "frozen")["transaction"]["status"] == "frozen"
    assert cli.ok(alice, "close", "spare")["transaction"]["status"] == "closed"
    assert cli.ok(alice, "account", "spare")["status"] == "closed"

    report = cli.ok(admin, "audit")
    assert report["clean"] is True and report["findings"] == []
    assert report["issued"] == 3_000_000 and report["retired"] == 1000 and report["transaction_count"] >= 20


def test_readable_text_has_separators_and_iso_times(cli, users, accounts):
    vo, _ = accounts
    text = cli.ok(users.alice, "balance", vo, as_json=False)
    assert "balance 100,000" in text and "available 100,000" in text
    text = cli.ok(users.alice, "hold", vo, "--amount", "12345", "--expires-in", "1h", as_json=False)
    assert "12,345" in text and "request id gc-" in text
    assert text.split(" until ")[1][:20].endswith("Z")  # 2025-01-31T12:00:00Z
    history = cli.ok(users.alice, "history", vo, as_json=False)
    assert "mint" in history and "100,000" in history
    assert "clean" in cli.ok(users.admin, "audit", as_json=False)


def test_settle_through_the_cli(cli, users, accounts):
    """``gridcredit bank settle``: the final charge and the rest released in one transaction, said in words;
    settling more than is left exits 1 naming the excess."""
    vo, site = accounts
    hold_id = cli.ok(users.alice, "hold", vo, "--amount", "3000", "--expires-in", "1h")["transaction"]["hold_id"]
    code, _, err = cli(users.alice, "settle", hold_id, "--payee", site, "--amount", "3001")
    assert code == 1 and "[ExceedsHold]" in err and "(over by 1)" in err
    text = cli.ok(users.alice, "settle", hold_id, "--payee", site, "--amount", "1,250", as_json=False)
    assert f"hold {hold_id} settled: 1,250 charged from {vo} to {site}, 1,750 back to {vo}" in text
    shown = cli.ok(users.alice, "show-hold", hold_id)
    assert (shown["state"], shown["charged"]) == ("settled", 1250)
    history = cli.ok(users.alice, "history", vo, "--filter", f"t:holdId = '{hold_id}'")
    assert [(t["kind"], t["amount"], t["released_amount"]) for t in history["transactions"]] == [
        ("hold", 3000, None), ("settle", 1250, 1750)]


def test_service_grants_through_the_cli(cli, users, accounts):
    """``grant-service``, ``create-hold --on-behalf-of``, ``account`` listing the grant, the history saying
    who held for whom, ``revoke-service``; an administrator may not grant."""
    vo, _ = accounts
    alice_dn, bob_dn = users.alice.credential.identity_dn, users.bob.credential.identity_dn
    t = cli.ok(users.alice, "grant-service", vo, bob_dn, "--hold-max", "5,000", "--period-max", "20000",
               "--period", "30d")["transaction"]
    assert (t["kind"], t["service_dn"], t["grant_hold_max"], t["grant_period_max"], t["grant_period_us"]) == (
        "grant-service", bob_dn, 5000, 20_000, 30 * 86_400 * 10**6)
    shown = cli.ok(users.alice, "account", vo, as_json=False)
    assert f"service {bob_dn} may hold for its holders (at most 5,000 per hold, 20,000 per 2,592,000 s" in shown
    t = cli.ok(users.bob, "create-hold", vo, "--amount", "100", "--expires-in", "1h", "--on-behalf-of",
               alice_dn)["transaction"]
    assert (t["kind"], t["principal_dn"], t["on_behalf_of_dn"]) == ("hold", bob_dn, alice_dn)
    history = cli.ok(users.alice, "history", vo, "--filter", f"t:holdId = '{t['hold_id']}'", as_json=False)
    assert f"— by {bob_dn} for {alice_dn}" in history
    code, _, err = cli(users.bob, "hold", vo, "--amount", "5001", "--expires-in", "1h", "--on-behalf-of", alice_dn)
    assert code == 1 and "[GrantLimitExceeded]" in err and "(over by 1)" in err
    code, _, err = cli(users.admin, "grant-service", vo, users.admin.credential.identity_dn)
    assert code == 1 and "[NotAuthorized]" in err and "only its owners may" in err
    cli.ok(users.alice, "revoke-service", vo, bob_dn)
    code, _, err = cli(users.bob, "hold", vo, "--amount", "1", "--expires-in", "1h", "--on-behalf-of", alice_dn)
    assert code == 1 and "[NotAuthorized]" in err and "holds no grant" in err
    cli.ok(users.bob, "release", t["hold_id"])                  # its hold stays its to end


# ------------------------------------------------------------------------------------ refusals

def test_refusals_exit_1_with_the_fault_text(cli, users, accounts):
    vo, site = accounts
    code, out, err = cli(users.alice, "transfer", vo, site, "10,000,000")
    assert code == 1 and out == ""
    assert err.startswith("RemoteFault: ") and "[InsufficientFunds]" in err and "short by" in err
    code, _, err = cli(users.alice, "mint", vo, "5")
    assert code == 1 and err.startswith("RemoteFault: ") and "[NotAuthorized]" in err
    code, _, err = cli(users.alice, "audit")
    assert code == 1 and "[NotAuthorized]" in err
    code, _, err = cli(users.alice, "charge", "hold-999999", "--payee", site, "--amount", "5")
    assert code == 1 and "[UnknownHold]" in err
    code, _, err = cli(users.admin, "mint", vo, "-5")
    assert code == 1 and "[InvalidAmount]" in err
    code, _, err = cli(users.alice, "history", vo, "--filter", "1]|//x[1")
    assert code == 1 and err.startswith("RemoteFault: ") and "InvalidQuery" in err


@pytest.mark.parametrize("argv", [["mint", "vo", "abc"], ["hold", "vo", "--amount", "5"],
                                  ["hold", "vo", "--amount", "5", "--expires-in", "soon"],
                                  ["mint", "vo", "5", "--request-id", "bad id"], ["set-spending-limit", "vo", "5"],
                                  ["balance", "vo", "--timeout", "0"], ["balance", "vo", "--retries", "99"],
                                  ["nonsense"]])
def test_usage_errors_exit_2(cli, users, argv):
    with pytest.raises(SystemExit) as exited:
        cli(users.alice, *argv)
    assert exited.value.code == 2


def test_unreachable_host_is_an_error_not_a_traceback(cli, users):
    code, _, err = cli(users.alice, "balance", "vo", "--retries", "1", url=f"https://localhost:{free_port()}")
    assert code == 1 and err.startswith("GridcreditError: cannot reach") and "Traceback" not in err


# ------------------------------------------------------------------------------- retry safety

def test_a_reply_lost_after_the_bank_applied_the_request_is_retried_under_the_same_id(host, pki, users, accounts,
                                                                                     monkeypatch):
    vo, _ = accounts
    admin = client(host, pki, users.admin, backoff_s=0.01)
    admin.whoami()  # the WSDL is loaded; from here on only the Mint call goes through the wrapper
    before = admin.get_balance(vo).total
    request_id = new_request_id()
    original_send = requests.adapters.HTTPAdapter.send
    posts = []

    def send_then_drop_the_first_reply(adapter, request, **options):
        response = original_send(adapter, request, **options)
        if request.method == "POST" and b"Mint" in request.body:
            posts.append(request.body)
            if len(posts) == 1:  # the bank applied it; its reply is lost on the way back
                raise requests.ConnectionError("connection reset by peer (the test dropped the reply)")
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send_then_drop_the_first_reply)
    receipt = admin.mint(vo, 777, request_id=request_id)
    monkeypatch.undo()

    assert len(posts) == 2 and request_id.encode() in posts[0] and request_id.encode() in posts[1]
    assert receipt.replayed is True and receipt.transaction.request_id == request_id
    assert admin.get_balance(vo).total == before + 777
    assert [t.seq for t in transactions_with_request_id(admin, vo, request_id)] == [receipt.transaction.seq]
    assert admin.audit().clean


def test_every_attempt_sends_the_same_expiry(host, pki, users, accounts, monkeypatch):
    vo, _ = accounts
    alice = client(host, pki, users.alice, backoff_s=0.3)
    alice.whoami()
    original_send = requests.adapters.HTTPAdapter.send
    bodies = []

    def drop_first(adapter, request, **options):
        response = original_send(adapter, request, **options)
        if request.method == "POST" and b"CreateHold" in request.body:
            bodies.append(etree.fromstring(request.body))
            if len(bodies) == 1:
                raise requests.ReadTimeout("read timed out (the test dropped the reply)")
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", drop_first)
    receipt = alice.create_hold(vo, amount=10, expires=600)  # seconds from now, made absolute once
    monkeypatch.undo()
    expires = [body.findtext(".//{urn:gridcredit:bank:1}expires") for body in bodies]
    assert len(expires) == 2 and expires[0] == expires[1]
    assert receipt.replayed is True


@pytest.fixture
def proxy(host, pki):
    with lossy_proxy(host.url, pki, stall_s=1.5) as lossy:
        yield lossy


def test_the_cli_retries_through_a_lossy_proxy_and_applies_once(cli, proxy, host, pki, users, accounts):
    vo, site = accounts
    proxy.plan = {"Transfer": ["stall"], "ChargeHold": ["bad-gateway"]}
    receipt = cli.ok(users.alice, "transfer", vo, site, "321", "--timeout", "0.7", url=proxy.url)
    assert receipt["replayed"] is True  # the first attempt was applied; its reply never came
    # The client reads the checked-in WSDL: it fetches none from the host (issue 12.4).
    assert proxy.forwarded.count("wsdl") == 0 and proxy.forwarded.count("Transfer") == 2
    request_id = receipt["transaction"]["request_id"]
    alice = client(host, pki, users.alice)
    assert [t.seq for t in transactions_with_request_id(alice, vo, request_id)] == [receipt["transaction"]["seq"]]

    hold = cli.ok(users.alice, "hold", vo, "--amount", "50", "--expires-in", "1h", url=proxy.url)["transaction"]
    charge = cli.ok(users.alice, "charge", hold["hold_id"], "--payee", site, "--amount", "20", url=proxy.url)
    assert charge["replayed"] is True and proxy.forwarded.count("ChargeHold") == 2
    assert alice.get_hold(hold["hold_id"]).charged == 20
    assert client(host, pki, users.admin).audit().clean


def test_refusals_are_answers_and_not_retried(cli, proxy, users, accounts):
    vo, site = accounts
    code, _, err = cli(users.alice, "transfer", vo, site, "999,999,999", url=proxy.url)
    assert code == 1 and "[InsufficientFunds]" in err
    assert proxy.forwarded.count("Transfer") == 1


def test_no_answer_at_all_names_the_request_id_to_repeat(cli, proxy, host, pki, users, accounts):
    vo, _ = accounts
    proxy.plan = {"Mint": ["bad-gateway", "bad-gateway"]}
    admin = BankClient(proxy.url, credential=users.admin.credential, trust_dir=pki.trust_dir, retries=1, backoff_s=0.01)
    with pytest.raises(OutcomeUnknown) as unknown:
        admin.mint(vo, 55)
    request_id = unknown.value.request_id
    assert request_id in str(unknown.value) and "may or may not" in str(unknown.value)
    # It was applied (twice sent, once applied); repeating it under its id says so.
    receipt = cli.ok(users.admin, "mint", vo, "55", "--request-id", request_id)
    assert receipt["replayed"] is True
    assert len(transactions_with_request_id(client(host, pki, users.admin), vo, request_id)) == 1


def test_a_host_that_is_not_there_is_not_an_unknown_outcome(pki, users):
    bank = BankClient(f"https://localhost:{free_port()}", credential=users.admin.credential, trust_dir=pki.trust_dir,
                      retries=2, backoff_s=0.01)
    with pytest.raises(GridcreditError) as failed:
        bank.mint("vo", 5)  # no connection was ever made, so the request was never sent
    assert not isinstance(failed.value, OutcomeUnknown) and "cannot reach" in str(failed.value)


def test_the_client_refuses_bad_requests_before_sending(pki, users):
    bank = BankClient("https://localhost:1", credential=users.admin.credential, trust_dir=pki.trust_dir)
    with pytest.raises(InvalidRequest):
        bank.mint("vo", 5, request_id="not a valid id")
    with pytest.raises(InvalidRequest):
        bank.mint("vo", 5.0)
    with pytest.raises(InvalidRequest):
        bank.create_hold("vo", amount=5, expires=datetime(2030, 1, 1))  # naive
    assert expiry(timedelta(hours=1), now=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc)) == \
        datetime(2030, 1, 1, 1, tzinfo=timezone.utc)


def test_the_client_result_types_follow_the_ledger():
    from gridcredit.services.bank import client as bank_client

    assert [f.name for f in dataclasses.fields(bank_client.Transaction)] == \
           [f.name for f in dataclasses.fields(ledger.Transaction)]
    assert [f.name for f in dataclasses.fields(bank_client.Hold)] == [f.name for f in dataclasses.fields(ledger.Hold)]
    assert [f.name for f in dataclasses.fields(bank_client.PendingMint)] == \
           [f.name for f in dataclasses.fields(ledger.PendingMint)]
    assert ledger.REQUEST_ID_PATTERN.fullmatch(new_request_id())


# ------------------------------------------------------------------------------ offline audit

def test_offline_audit_is_clean_then_names_the_edited_transaction(pki, users, tmp_path, capsys, monkeypatch):
    for name in [n for n in os.environ if n.startswith("GRIDCREDIT_")]:
        monkeypatch.delenv(name)
    state = tmp_path / "state"
    admins = (users.admin.credential.identity_dn,)
    with bank_host(state, pki, admins=admins) as running:
        admin = BankClient(running.url, credential=users.admin.credential, trust_dir=pki.trust_dir)
        admin.create_account("audited", project="p", owner_dn=users.alice.credential.identity_dn)
        minted = admin.mint("audited", 1000).transaction
        admin.retire("audited", 10)
        config = running.config
    config_file = tmp_path / "gridcredit.toml"
    config_file.write_text(f'state_dir = "{state}"\n')

    def offline(*extra):
        capsys.readouterr()
        code = main(["--config", str(config_file), "bank", "audit", "--offline", *extra])
        return code, capsys.readouterr()

    code, (out, err) = offline("--json")
    report = json.loads(out)
    assert code == 0 and report["clean"] is True and report["transaction_count"] == 3 and err == ""

    store = open_store(config.store, config.state_path)
    try:
        def edit(tx):
            doc_id = documents.transaction_document_id(minted.seq)
            stored = documents.transaction_from_xml(tx.get(TRANSACTIONS, doc_id).xml)
            tx.put(TRANSACTIONS, doc_id, documents.to_xml(dataclasses.replace(stored, amount=1_000_000)))
        store.transact(edit)
    finally:
        store.close()

    code, (out, _) = offline("--json")
    report = json.loads(out)
    assert code == 1 and report["clean"] is False
    assert minted.seq in {f["seq"] for f in report["findings"] if f["kind"] == "edited"}
    code, (out, _) = offline("--every-signature")
    assert code == 1 and "NOT clean" in out and f"#{minted.seq}" in out and "edited" in out


def test_offline_audit_without_a_ledger_key_says_so(tmp_path, capsys, monkeypatch):
    for name in [n for n in os.environ if n.startswith("GRIDCREDIT_")]:
        monkeypatch.delenv(name)
    config_file = tmp_path / "gridcredit.toml"
    config_file.write_text(f'state_dir = "{tmp_path / "empty"}"\n')
    assert main(["--config", str(config_file), "bank", "audit", "--offline"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("GridcreditError: cannot read the ledger key") and "--public-key" in err
