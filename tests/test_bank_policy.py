"""Every operation of the Bank's WSDL reaches a decision of the Bank's one policy point (issue 12.2).

``services/bank/policy.py`` has a rule for every operation and counts each decision it makes
(its ``BOOK``, gridcredit/policy.py). Through
the real host in this process (WS-Security verification, the spyne service, the runtime on the
embedded store), each operation of ``wsdl/bank.wsdl`` is called with arguments that name existing
accounts, holds and pending mints (so existence is not what refuses it):

* by a caller the policy refuses — a stranger; for every operation that changes the ledger also a
  limited proxy of the account's owner — and the answer is the fault ``Client.NotAuthorized`` while
  the policy's count of refusals of exactly that operation grows by one;
* the operations every authenticated caller may call (``MoneySupply``, ``WhoAmI``) are answered, and
  the policy's count of allowed decisions of that operation grows by one.

And nothing else in the Bank makes that refusal: ``NotAuthorized`` is written in no other module.
"""
from __future__ import annotations

import io
import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from gridcredit.config import Config, SecurityConfig
from gridcredit.server.host import HostFiles, build_host
from gridcredit.services.bank import policy
from gridcredit.services.bank.config import BankConfig

from security_fixtures import signed_request

BANK_NS = "urn:gridcredit:bank:1"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
REPOSITORY = Path(__file__).resolve().parent.parent
OPEN_TO_EVERYONE = {"MoneySupply", "WhoAmI"}
_ids = itertools.count(1)


def wsdl_operations() -> list[str]:
    document = etree.parse(str(REPOSITORY / "wsdl" / "bank.wsdl"))
    return document.xpath("/w:definitions/w:portType/w:operation/@name", namespaces={"w": WSDL_NS})


def _when(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


class InProcessBank:
    """The host's WSGI application in this process; each call signed by a credential."""

    def __init__(self, app) -> None:
        self.app = app

    def call(self, credential, operation: str, **fields) -> etree._Element:
        payload = etree.Element(f"{{{BANK_NS}}}{operation}", nsmap={"b": BANK_NS})
        for name, value in fields.items():
            if isinstance(value, list):          # ApplyBatch's items: a BatchItem each
                holder = etree.SubElement(payload, f"{{{BANK_NS}}}{name}")
                for item in value:
                    element = etree.SubElement(holder, f"{{{BANK_NS}}}BatchItem")
                    for item_name, item_value in item.items():
                        etree.SubElement(element, f"{{{BANK_NS}}}{item_name}").text = str(item_value)
                continue
            etree.SubElement(payload, f"{{{BANK_NS}}}{name}").text = str(value)
        data = signed_request(credential, payload=payload)
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/bank", "QUERY_STRING": "", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "8443", "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(data),
                   "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "text/xml; charset=utf-8",
                   "SERVER_PROTOCOL": "HTTP/1.1"}
        return etree.fromstring(b"".join(self.app(environ, lambda status, headers, exc_info=None: None)))


def _text(answer: etree._Element, name: str) -> str | None:
    found = answer.xpath("//*[local-name() = $name]", name=name)
    return found[0].text if found else None


def _ok(answer: etree._Element) -> etree._Element:
    assert _text(answer, "faultcode") is None, (_text(answer, "faultcode"), _text(answer, "faultstring"))
    return answer


@pytest.fixture(scope="module")
def bank(pki, tmp_path_factory):
    """A host in this process: an administrator, an auditor, accounts A (the owner's, with money) and B,
    an active hold on A and a mint waiting for a second administrator."""
    root = tmp_path_factory.mktemp("bank-policy")
    admin, auditor, owner = pki.user("Bank Admin"), pki.user("Bank Auditor"), pki.user("Olivia Owner")
    config = Config(state_dir=str(root / "state"),
                    security=SecurityConfig(host_cert=str(pki.host_cert), host_key=str(pki.host_key),
                                            cert_dir=str(pki.trust_dir)))
    config = config.with_section("bank", BankConfig(admins=(admin.dn,), auditors=(auditor.dn,), approval_above=1000))
    app = build_host(config, HostFiles(Path(pki.host_cert), Path(pki.host_key), Path(pki.trust_dir)))
    host = InProcessBank(app)
    for account_id in ("acct-a", "acct-b"):
        _ok(host.call(admin.credential, "CreateAccount", request_id=f"setup-{account_id}", account_id=account_id,
                      project="p", owner_dn=owner.dn))
    _ok(host.call(admin.credential, "Mint", request_id="setup-mint", account_id="acct-a", amount=500))
    hold = _ok(host.call(owner.credential, "CreateHold", request_id="setup-hold", account_id="acct-a", amount=10,
                         expires=_when(3600)))
    pending = _ok(host.call(admin.credential, "Mint", request_id="setup-pending", account_id="acct-a", amount=5000))
    host.hold_id, host.pending_mint_id = _text(hold, "hold_id"), _text(pending, "pending_mint_id")
    host.owner_dn = owner.dn
    assert host.hold_id and host.pending_mint_id
    try:
        yield host
    finally:
        app.close()


def arguments(bank: InProcessBank, operation: str) -> dict:
    """Arguments that name what exists, in the WSDL's order, so that only the policy can refuse."""
    request_id = f"policy-{next(_ids)}"
    return {
        "CreateAccount": dict(request_id=request_id, account_id=f"new-{request_id}", project="p", owner_dn=bank.owner_dn),
        "SetHolder": dict(request_id=request_id, account_id="acct-a", holder_dn="/CN=Someone New", role="member"),
        "RemoveHolder": dict(request_id=request_id, account_id="acct-a", holder_dn=bank.owner_dn),
        "SetStatus": dict(request_id=request_id, account_id="acct-a", status="frozen"),
        "SetCreditLimit": dict(request_id=request_id, account_id="acct-a", credit_limit=5),
        "SetSpendingLimit": dict(request_id=request_id, account_id="acct-a", spending_limit=5, spending_period_s=60),
        "GrantService": dict(request_id=request_id, account_id="acct-a", service_dn="/CN=host/jarm.example.org",
                             hold_max=100),
        "RevokeService": dict(request_id=request_id, account_id="acct-a", service_dn="/CN=host/jarm.example.org"),
        "Mint": dict(request_id=request_id, account_id="acct-a", amount=5),
        "ApproveMint": dict(request_id=request_id, pending_mint_id=bank.pending_mint_id),
        "CancelMint": dict(request_id=request_id, pending_mint_id=bank.pending_mint_id),
        "ListPendingMints": {},
        "Retire": dict(request_id=request_id, account_id="acct-a", amount=1),
        "Transfer": dict(request_id=request_id, from_account_id="acct-a", to_account_id="acct-b", amount=1),
        "CreateHold": dict(request_id=request_id, account_id="acct-a", amount=1, expires=_when(600)),
        "ExtendHold": dict(request_id=request_id, hold_id=bank.hold_id, amount=20),
        "ChargeHold": dict(request_id=request_id, hold_id=bank.hold_id, payee_account_id="acct-b", amount=1),
        "SettleHold": dict(request_id=request_id, hold_id=bank.hold_id, payee_account_id="acct-b", amount=1),
        "ReleaseHold": dict(request_id=request_id, hold_id=bank.hold_id),
        "ApplyBatch": dict(items=[dict(operation="ChargeHold", request_id=request_id, hold_id=bank.hold_id,
                                       payee_account_id="acct-b", amount=1)]),
        "GetBalance": dict(account_id="acct-a"),
        "GetAccount": dict(account_id="acct-a"),
        "GetHold": dict(hold_id=bank.hold_id),
        "ListHolds": dict(account_id="acct-a"),
        "History": dict(account_id="acct-a"),
        "Statement": dict(account_id="acct-a", period_start=_when(-3600), period_end=_when(3600)),
        "MoneySupply": {},
        "Audit": {},
        "WhoAmI": {},
    }[operation]


def test_the_policy_has_a_rule_for_every_operation_of_the_wsdl():
    operations = wsdl_operations()
    assert len(operations) == len(set(operations)) >= 25
    assert {name for name, rule in policy.BOOK.rules.items() if rule.soap} == set(operations)
    # not SOAP operations: the expiry sweep's, and the web view's public transparency page (services/bank/web.py)
    assert {name for name, rule in policy.BOOK.rules.items() if not rule.soap} == {"ExpireHold", "ExpireMint",
                                                                                   "Transparency"}
    assert {name for name, rule in policy.BOOK.rules.items() if rule.who == "anyone authenticated"} == OPEN_TO_EVERYONE


def _refused_by_the_policy(bank: InProcessBank, credential, operation: str) -> str | None:
    """None when the policy refused ``operation`` with its fault; else what happened instead."""
    before = policy.BOOK.decisions()
    answer = bank.call(credential, operation, **arguments(bank, operation))
    after = policy.BOOK.decisions()
    code, text = _text(answer, "faultcode"), _text(answer, "faultstring")
    if code is None or not code.endswith("Client.NotAuthorized"):
        return f"{operation}: answered {code} {text!r}, not Client.NotAuthorized"
    grown = {key: after.get(key, 0) - before.get(key, 0) for key in after if after.get(key, 0) != before.get(key, 0)}
    if grown.get((operation, False)) != 1:
        return f"{operation}: refused, but not by one decision of the policy (decisions made: {grown})"
    return None


def _batch_item_refused_by_the_policy(bank: InProcessBank, credential) -> str | None:
    """None when ApplyBatch was allowed by the policy and its ChargeHold item refused by ChargeHold's rule."""
    before = policy.BOOK.decisions()
    answer = bank.call(credential, "ApplyBatch", **arguments(bank, "ApplyBatch"))
    after = policy.BOOK.decisions()
    grown = {key: after.get(key, 0) - before.get(key, 0) for key in after if after.get(key, 0) != before.get(key, 0)}
    if _text(answer, "faultcode") is not None or _text(answer, "fault_code") != "Client.NotAuthorized":
        return f"ApplyBatch: answered {_text(answer, 'faultcode')} / item {_text(answer, 'fault_code')}"
    if grown != {("ApplyBatch", True): 1, ("ChargeHold", False): 1}:
        return f"ApplyBatch: its item refused, but not by one decision of each rule (decisions made: {grown})"
    return None


def test_every_operation_of_the_wsdl_reaches_a_policy_decision(bank, pki):
    stranger = pki.user("Sam Stranger").credential
    limited = pki.proxy("Olivia Owner", limited=True)
    failures = []
    for operation in wsdl_operations():
        if operation in OPEN_TO_EVERYONE:
            before = policy.BOOK.decisions().get((operation, True), 0)
            answer = bank.call(stranger, operation, **arguments(bank, operation))
            if _text(answer, "faultcode") is not None:
                failures.append(f"{operation}: refused: {_text(answer, 'faultstring')}")
            elif policy.BOOK.decisions().get((operation, True), 0) != before + 1:
                failures.append(f"{operation}: answered without a decision of the policy")
            continue
        if operation == "ApplyBatch":       # the batch is answered; its item refused by its own operation's rule
            failures.append(_batch_item_refused_by_the_policy(bank, stranger))
        else:
            failures.append(_refused_by_the_policy(bank, stranger, operation))
        if policy.BOOK.rules[operation].changes_state:
            failures.append(_refused_by_the_policy(bank, limited, operation))
    failures = [failure for failure in failures if failure is not None]
    assert not failures, "\n".join(failures)


def test_only_the_policy_refuses_as_not_authorized():
    """The refusal codes of authorization are written in the policy module alone (or made by its BOOK)."""
    bank_folder = REPOSITORY / "services" / "bank"
    writers = sorted(path.name for path in bank_folder.glob("*.py")
                     if path.name != "policy.py" and any(code in path.read_text(encoding="utf-8")
                                                         for code in ('"NotAuthorized"', '"SecondAdministratorRequired"')))
    assert writers == []
    common = (REPOSITORY / "services" / "common.py").read_text(encoding="utf-8")
    assert '"NotAuthorized"' not in common
