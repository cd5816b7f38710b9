"""The Bank's ApplyBatch (issue 14.2): many ledger operations from one signed request, applied in order in one
store transaction, each item with its own request id and its own result.

Through the real host in this process (WS-Security, the spyne service, the Bank on the embedded store):
results per item, mixed applied and refused, each item seeing the ones before it, retries answered from the
request records, whole batches refused (empty, too large, a request id twice, a malformed item, a limited
proxy) with nothing changed, every attack refused item by item by the policy as the single operation would
be. On the Bank alone: the audit replays batches (their unsigned transactions covered by the last one's
signature, and a missing or forged cover found), and a store transaction that fails mid-batch leaves none of it.
The real server on both stores (client, concurrency, kill -9): tests/test_bank_batch_host.py.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gridcredit.config import Config, SecurityConfig
from gridcredit.errors import DomainError, StoreError
from gridcredit.security.principal import Principal
from gridcredit.server.host import HostFiles, build_host
from gridcredit.services.bank import documents, ledger, ledger_chain
from gridcredit.services.bank.bank import TRANSACTIONS, Bank, LedgerKey, audit_store
from gridcredit.services.bank.config import BankConfig
from gridcredit.timeunits import now_us
from gridcredit.xmlstore import open_store
from gridcredit.config import StoreConfig

from bank_fixtures import assert_vouched_bytes_are_normal
from security_fixtures import signed_request

BANK_NS = "urn:gridcredit:bank:1"
_ids = itertools.count(1)


def _when(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def _text(answer: etree._Element, name: str) -> str | None:
    found = answer.xpath("//*[local-name() = $name]", name=name)
    return found[0].text if found else None


class InProcessBank:
    """The host's WSGI application in this process; each call signed by a credential."""

    def __init__(self, app) -> None:
        self.app = app

    def post(self, credential, payload: etree._Element) -> etree._Element:
        data = signed_request(credential, payload=payload)
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/bank", "QUERY_STRING": "", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "8443", "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(data),
                   "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "text/xml; charset=utf-8",
                   "SERVER_PROTOCOL": "HTTP/1.1"}
        return etree.fromstring(b"".join(self.app(environ, lambda status, headers, exc_info=None: None)))

    def call(self, credential, operation: str, **fields) -> etree._Element:
        payload = etree.Element(f"{{{BANK_NS}}}{operation}", nsmap={"b": BANK_NS})
        for name, value in fields.items():
            etree.SubElement(payload, f"{{{BANK_NS}}}{name}").text = str(value)
        return self.post(credential, payload)

    def ok(self, credential, operation: str, **fields) -> etree._Element:
        answer = self.call(credential, operation, **fields)
        assert _text(answer, "faultcode") is None, (_text(answer, "faultcode"), _text(answer, "faultstring"))
        return answer

    def batch(self, credential, items: list[dict]) -> etree._Element:
        payload = etree.Element(f"{{{BANK_NS}}}ApplyBatch", nsmap={"b": BANK_NS})
        holder = etree.SubElement(payload, f"{{{BANK_NS}}}items")
        for item in items:
            element = etree.SubElement(holder, f"{{{BANK_NS}}}BatchItem")
            for name in ("operation", "request_id", "hold_id", "payee_account_id", "from_account_id", "to_account_id",
                         "amount", "expires"):
                if name in item:
                    etree.SubElement(element, f"{{{BANK_NS}}}{name}").text = str(item[name])
        return self.post(credential, payload)

    def balance(self, credential, account_id: str) -> tuple[int, int]:
        answer = self.ok(credential, "GetBalance", account_id=account_id)
        return int(_text(answer, "total")), int(_text(answer, "held"))


def results_of(answer: etree._Element) -> list[dict]:
    assert _text(answer, "faultcode") is None, (_text(answer, "faultcode"), _text(answer, "faultstring"))
    names = ("request_id", "applied", "replayed", "seq", "kind", "at_us", "hold_id", "hold_state", "amount",
             "released_amount", "hash", "signature", "fault_code", "fault_message")
    return [{**dict.fromkeys(names), **{etree.QName(child).localname: child.text for child in result}}
            for result in answer.iter(f"{{{BANK_NS}}}BatchItemResult")]


def counts_of(answer: etree._Element) -> tuple[int, int, int]:
    result = answer.find(f".//{{{BANK_NS}}}ApplyBatchResult")
    return tuple(int(result.findtext(f"{{{BANK_NS}}}{name}")) for name in ("applied", "replayed", "refused"))


def charge(hold_id: str, amount: int, payee: str = "site", request_id: str | None = None) -> dict:
    return {"operation": "ChargeHold", "request_id": request_id or f"c-{next(_ids)}", "hold_id": hold_id,
            "payee_account_id": payee, "amount": amount}


@pytest.fixture(scope="module")
def people(pki):
    return dataclasses.make_dataclass("People", ["admin", "auditor", "owner", "member", "auctioneer", "site_owner",
                                                 "stranger"])(
        pki.user("Bank Admin"), pki.user("Bank Auditor"), pki.user("Olivia Owner"), pki.user("Member 0"),
        pki.user("Auctioneer Host"), pki.user("Site Owner"), pki.user("Sam Stranger"))


@pytest.fixture(scope="module")
def bank(pki, people, tmp_path_factory):
    """A host in this process: account vo-a (the owner's and a member's, 1,000,000 credits), the site's
    account (where every auction charge goes) and another site's."""
    root = tmp_path_factory.mktemp("bank-batch")
    config = Config(state_dir=str(root / "state"),
                    security=SecurityConfig(host_cert=str(pki.host_cert), host_key=str(pki.host_key),
                                            cert_dir=str(pki.trust_dir)))
    config = config.with_section("bank", BankConfig(admins=(people.admin.dn,), auditors=(people.auditor.dn,)))
    app = build_host(config, HostFiles(Path(pki.host_cert), Path(pki.host_key), Path(pki.trust_dir)))
    host = InProcessBank(app)
    admin = people.admin.credential
    for account_id, owner in (("vo-a", people.owner), ("site", people.site_owner), ("other-site", people.stranger)):
        host.ok(admin, "CreateAccount", request_id=f"setup-{account_id}", account_id=account_id, project="p",
                owner_dn=owner.dn)
    host.ok(people.owner.credential, "SetHolder", request_id="setup-member", account_id="vo-a",
            holder_dn=people.member.dn, role="member")
    host.ok(admin, "Mint", request_id="setup-mint", account_id="vo-a", amount=1_000_000)
    try:
        yield host
    finally:
        app.close()


def bid_hold(bank: InProcessBank, people, amount: int) -> str:
    """A hold on vo-a whose only collector is the auctioneer, paid to the site (a bid's funding)."""
    answer = bank.ok(people.owner.credential, "CreateHold", request_id=f"hold-{next(_ids)}", account_id="vo-a",
                     amount=amount, expires=_when(3600), collector_dn=people.auctioneer.dn, payee_account_id="site")
    return _text(answer, "hold_id")


def head_seq(bank: InProcessBank, people) -> int:
    return int(_text(bank.ok(people.auditor.credential, "Audit"), "head_seq"))


def audit_clean(bank: InProcessBank, people) -> None:
    answer = bank.ok(people.auditor.credential, "Audit")
    assert _text(answer, "clean") == "true", [finding.text for finding in answer.iter(f"{{{BANK_NS}}}message")]


def test_each_item_has_its_result_in_order_each_seeing_the_ones_before(bank, people):
    first, second, third = bid_hold(bank, people, 10), bid_hold(bank, people, 10), bid_hold(bank, people, 10)
    site_before, _ = bank.balance(people.site_owner.credential, "site")
    vo_before = bank.balance(people.owner.credential, "vo-a")
    answer = bank.batch(people.auctioneer.credential, [
        charge(first, 6), charge(first, 5),            # the second exceeds what the first left
        charge(first, 4),                              # exactly the rest: the hold is charged out
        charge(second, 3),
        {"operation": "SettleHold", "request_id": f"s-{next(_ids)}", "hold_id": second, "payee_account_id": "site",
         "amount": 2},
        {"operation": "ReleaseHold", "request_id": f"r-{next(_ids)}", "hold_id": third},
        charge(third, 1),                              # released by the item before
    ])
    results = results_of(answer)
    assert [(r["applied"], r["fault_code"]) for r in results] == [
        ("true", None), ("false", "Client.ExceedsHold"), ("true", None), ("true", None), ("true", None),
        ("true", None), ("false", "Client.HoldEnded")]
    assert "10" in results[1]["fault_message"] or "4 credits left" in results[1]["fault_message"]
    assert [r["kind"] for r in results if r["applied"] == "true"] == ["charge", "charge", "charge", "settle", "release"]
    assert results[2]["hold_state"] == "charged-out" and results[4]["released_amount"] == "5"
    seqs = [int(r["seq"]) for r in results if r["applied"] == "true"]
    assert seqs == list(range(seqs[0], seqs[0] + 5))         # one run of the chain, in the items' order
    # only the last transaction the batch made is signed; its signature covers the others (the chain)
    assert [r["signature"] is not None for r in results if r["applied"] == "true"] == [False] * 4 + [True]
    assert counts_of(answer) == (5, 0, 2)
    assert bank.balance(people.site_owner.credential, "site")[0] == site_before + 6 + 4 + 3 + 2
    total, held = bank.balance(people.owner.credential, "vo-a")
    assert (total, held) == (vo_before[0] - 15, vo_before[1] - 30)
    audit_clean(bank, people)


def test_a_retried_batch_answers_what_its_items_made(bank, people):
    hold = bid_hold(bank, people, 100)
    items = [charge(hold, 30), charge(hold, 80), charge(hold, 20)]       # the second is refused: 70 left
    first = results_of(bank.batch(people.auctioneer.credential, items))
    assert [r["applied"] for r in first] == ["true", "false", "true"]
    head = head_seq(bank, people)
    again = bank.batch(people.auctioneer.credential, items)
    retried = results_of(again)
    assert counts_of(again) == (0, 2, 1)
    for before, after in zip(first, retried):
        if before["applied"] == "true":
            assert after["replayed"] == "true" and (after["seq"], after["hash"]) == (before["seq"], before["hash"])
        else:               # refusals are not recorded: evaluated afresh (still too much: 50 left)
            assert after["applied"] == "false" and after["fault_code"] == "Client.ExceedsHold"
    assert head_seq(bank, people) == head
    # a used request id with another content is refused for that item; the others apply
    changed = results_of(bank.batch(people.auctioneer.credential, [
        {**items[0], "amount": 31}, charge(hold, 10)]))
    assert [(r["applied"], r["fault_code"]) for r in changed] == [("false", "Client.RequestIdReused"), ("true", None)]
    # the same request id answers the same whether asked singly or in a batch (one record per caller and id)
    single = bank.ok(people.auctioneer.credential, "ChargeHold", request_id=items[0]["request_id"], hold_id=hold,
                     payee_account_id="site", amount=30)
    assert (_text(single, "seq"), _text(single, "replayed")) == (first[0]["seq"], "true")
    audit_clean(bank, people)


@pytest.mark.parametrize("case", ["empty", "too large", "a request id twice", "a field missing",
                                  "another operation's field", "an unknown operation"])
def test_a_malformed_batch_is_refused_whole_and_changes_nothing(bank, people, case):
    hold = bid_hold(bank, people, 50)
    items = {
        "empty": [],
        "too large": [charge(hold, 1) for _ in range(ledger.BATCH_ITEMS_MAX + 1)],
        "a request id twice": [charge(hold, 1, request_id="twice"), charge(hold, 2), charge(hold, 1, request_id="twice")],
        "a field missing": [charge(hold, 1), {"operation": "ChargeHold", "request_id": "no-payee", "hold_id": hold,
                                              "amount": 1}],
        "another operation's field": [{**charge(hold, 1), "from_account_id": "vo-a"}],
        "an unknown operation": [charge(hold, 1), {"operation": "Mint", "request_id": "m", "hold_id": hold}],
    }[case]
    head = head_seq(bank, people)
    answer = bank.batch(people.auctioneer.credential, items)
    code, text = _text(answer, "faultcode"), _text(answer, "faultstring")
    expected = {"empty": ("Client.InvalidArgument", "at least one item"),
                "too large": ("Client.BatchTooLarge", f"at most {ledger.BATCH_ITEMS_MAX} items"),
                "a request id twice": ("Client.InvalidArgument", "'twice' is used by items 1 and 3"),
                "a field missing": ("Client.InvalidArgument", "item 2 (ChargeHold no-payee): it lacks payee_account_id"),
                "another operation's field": ("Client.InvalidArgument", "from_account_id belong to other operations"),
                "an unknown operation": ("Client.SchemaValidationError", "")}[case]
    assert code is not None and code.endswith(expected[0]), (code, text)
    assert expected[1] in text, text
    assert head_seq(bank, people) == head


def test_a_limited_proxy_may_send_no_batch(bank, people, pki):
    hold = bid_hold(bank, people, 50)
    head = head_seq(bank, people)
    answer = bank.batch(pki.proxy("Auctioneer Host", limited=True), [charge(hold, 1)])
    assert _text(answer, "faultcode").endswith("Client.NotAuthorized"), _text(answer, "faultstring")
    assert "limited proxy" in _text(answer, "faultstring")
    assert head_seq(bank, people) == head


def test_every_attack_in_a_batch_is_refused_as_its_single_operation_would_be(bank, people):
    """Nobody moves money the rules do not give them, whatever else is in the batch: each refused item
    changes nothing, the others apply."""
    hold = bid_hold(bank, people, 40)
    own = bank.ok(people.member.credential, "CreateHold", request_id=f"own-{next(_ids)}", account_id="vo-a",
                  amount=40, expires=_when(3600))
    own_hold = _text(own, "hold_id")
    balances = {account: bank.balance(people.admin.credential, account) for account in ("vo-a", "site", "other-site")}
    attacks = {
        # a stranger charging a hold it neither made nor collects
        people.stranger: [charge(hold, 5, payee="other-site"), charge(own_hold, 5, payee="other-site")],
        # the collector charging to another payee than the hold's; raising it; charging a hold it does not collect
        people.auctioneer: [charge(hold, 5, payee="other-site"),
                            {"operation": "ExtendHold", "request_id": f"x-{next(_ids)}", "hold_id": hold, "amount": 80},
                            {"operation": "SettleHold", "request_id": f"s-{next(_ids)}", "hold_id": hold,
                             "payee_account_id": "other-site", "amount": 1},
                            charge(own_hold, 5, payee="site"),
                            {"operation": "Transfer", "request_id": f"t-{next(_ids)}", "from_account_id": "vo-a",
                             "to_account_id": "site", "amount": 5}],
        # an administrator has no spending power: no transfer, no charge
        people.admin: [{"operation": "Transfer", "request_id": f"t-{next(_ids)}", "from_account_id": "vo-a",
                        "to_account_id": "other-site", "amount": 5}, charge(own_hold, 5, payee="other-site")],
        # a member may not spend from another account, nor charge a hold the owner made for a collector elsewhere
        people.member: [{"operation": "Transfer", "request_id": f"t-{next(_ids)}", "from_account_id": "other-site",
                         "to_account_id": "vo-a", "amount": 5}, charge(hold, 5, payee="other-site")],
    }
    for who, items in attacks.items():
        results = results_of(bank.batch(who.credential, items))
        assert [r["fault_code"] for r in results] == ["Client.NotAuthorized"] * len(items), (who.dn, results)
    assert {account: bank.balance(people.admin.credential, account) for account in balances} == balances
    # the same batch with lawful items beside the attacks: only the lawful ones apply
    results = results_of(bank.batch(people.auctioneer.credential, [
        charge(hold, 5, payee="other-site"), charge(hold, 5), charge(own_hold, 5), charge(hold, 7)]))
    assert [(r["applied"], r["fault_code"]) for r in results] == [
        ("false", "Client.NotAuthorized"), ("true", None), ("false", "Client.NotAuthorized"), ("true", None)]
    assert bank.balance(people.admin.credential, "site")[0] == balances["site"][0] + 12
    assert bank.balance(people.admin.credential, "other-site") == balances["other-site"]
    audit_clean(bank, people)


def test_transfers_and_extensions_in_a_batch(bank, people):
    """The owner's own batch: transfers (each checked against what the ones before left available) and
    extensions, with the ordinary rules."""
    hold = bid_hold(bank, people, 20)
    total, held = bank.balance(people.owner.credential, "vo-a")
    available = total - held
    results = results_of(bank.batch(people.owner.credential, [
        {"operation": "ExtendHold", "request_id": f"x-{next(_ids)}", "hold_id": hold, "amount": 30,
         "expires": _when(7200)},
        {"operation": "Transfer", "request_id": f"t-{next(_ids)}", "from_account_id": "vo-a", "to_account_id": "site",
         "amount": available - 10 - 5},                    # all but 5 of what the raise (10) left
        {"operation": "Transfer", "request_id": f"t-{next(_ids)}", "from_account_id": "vo-a", "to_account_id": "site",
         "amount": 6},                                     # 1 more than is left
        {"operation": "Transfer", "request_id": f"t-{next(_ids)}", "from_account_id": "vo-a", "to_account_id": "site",
         "amount": 5},
    ]))
    assert [(r["applied"], r["fault_code"]) for r in results] == [
        ("true", None), ("true", None), ("false", "Client.InsufficientFunds"), ("true", None)]
    assert results[0]["kind"] == "extend" and results[0]["amount"] == "10"
    total_after, held_after = bank.balance(people.owner.credential, "vo-a")
    assert total_after - held_after == 0 and held_after == held + 10
    bank.ok(people.admin.credential, "Mint", request_id=f"refill-{next(_ids)}", account_id="vo-a", amount=1_000_000)
    audit_clean(bank, people)


def test_the_results_writer_writes_what_spyne_would():
    """ApplyBatch's results are written by the service's own writer (spyne's took longer than the ledger):
    the same bytes as spyne's serializer of the WSDL's BatchItemResult, every member present and absent.
    The service answers with types.BatchItemResult, the one type the WSDL's is made from and the client
    reads back."""
    from spyne import Array, ComplexModel, Long
    from spyne.util.xml import get_object_as_xml
    from gridcredit.services.bank import client, service, types

    class PlainBatchResult(ComplexModel):         # the WSDL's type, serialized by spyne alone
        __namespace__ = service.NAMESPACE
        _type_info = [("results", Array(service.BatchItemResult)), ("applied", Long(min_occurs=1)),
                      ("replayed", Long(min_occurs=1)), ("refused", Long(min_occurs=1))]

    PlainBatchResult.resolve_namespace(PlainBatchResult, service.NAMESPACE)   # as the Application does
    answers = [types.BatchItemResult(request_id="a-1", applied=True, replayed=False, seq=12, kind="charge", at_us=5,
                                     hold_id="hold-3", hold_state="active", amount=7, hash="ab" * 32),
               types.BatchItemResult(request_id="a-2", applied=True, replayed=True, seq=13, kind="settle", at_us=6,
                                     hold_id="hold-4", hold_state="settled", amount=0, released_amount=9,
                                     hash="cd" * 32, signature="c2lnbmF0dXJl"),
               types.BatchItemResult(request_id="a-3", applied=False, fault_code="Client.ExceedsHold",
                                     fault_message="hold hold-3 has 1 credits left; <not> & \"quoted\" ü")]
    ours = get_object_as_xml(service.BatchResult(results=answers, applied=1, replayed=1, refused=1),
                             service.BatchResult, "BatchResult")
    spynes = get_object_as_xml(PlainBatchResult(results=[service.BatchItemResult(**{
        name: getattr(answer, name) for name in service.BatchItemResult._type_info}) for answer in answers],
        applied=1, replayed=1, refused=1), PlainBatchResult, "BatchResult")
    assert etree.tostring(ours) == etree.tostring(spynes)
    assert len(ours.find(f"{{{BANK_NS}}}results")) == 3
    assert client.BatchItemResult is types.BatchItemResult
    assert list(service.BatchItemResult._type_info) == [field.name for field in dataclasses.fields(types.BatchItemResult)]


def _body_bytes(answer: etree._Element) -> bytes:
    """The answer's Body without the Id its signature gave it."""
    body = answer.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    for name in list(body.attrib):
        del body.attrib[name]
    return etree.tostring(body)


def test_apply_batch_is_read_from_the_verified_body_and_answered_as_spyne_would(bank, people, monkeypatch):
    """The host hands ApplyBatch's verified request element to the service (no spyne: ~80 ms of a 1,000-item
    batch): every answer — results applied, replayed and refused, each whole-batch refusal, an ExtendHold's
    time, a limited proxy — byte for byte what the same request answers through spyne; a request the schema
    refuses, or one carrying a comment, goes to spyne."""
    endpoint = bank.app._endpoints["bank"]
    direct = endpoint.direct["ApplyBatch"]
    taken = []
    monkeypatch.setitem(endpoint.direct, "ApplyBatch", lambda *arguments: taken.append(1) or direct(*arguments))
    hold, other = bid_hold(bank, people, 100), bid_hold(bank, people, 100)
    lawful = [charge(hold, 30), charge(hold, 80), charge(other, 20),
              {"operation": "ExtendHold", "request_id": f"x-{next(_ids)}", "hold_id": other, "amount": 120,
               "expires": "2031-01-02T03:04:05.123456+01:00"},
              {"operation": "SettleHold", "request_id": f"s-{next(_ids)}", "hold_id": other, "payee_account_id": "site",
               "amount": 1}]
    cases = [(people.owner.credential, lawful),                    # replayed and refused items
             (people.auctioneer.credential, lawful + [charge(hold, 1)]),
             (people.auctioneer.credential, []),
             (people.auctioneer.credential, [charge(hold, 1, request_id="twice")] * 2),
             (people.auctioneer.credential, [{"operation": "ChargeHold", "request_id": "no-payee", "hold_id": hold,
                                              "amount": 1}]),
             (people.auctioneer.credential, [{**charge(hold, 1), "from_account_id": "vo-a"}]),
             (people.auctioneer.credential, [charge(hold, 1) for _ in range(ledger.BATCH_ITEMS_MAX + 1)]),
             (people.auctioneer.credential, [{"operation": "Mint", "request_id": "m", "hold_id": hold}]),
             (people.stranger.credential, [charge(hold, 1)])]
    for credential, items in cases:
        bank.batch(credential, items)             # applied once: the two answers below answer its retry
        taken.clear()
        ours = _body_bytes(bank.batch(credential, items))
        with monkeypatch.context() as spyne_only:
            spyne_only.setattr(endpoint, "direct", {})
            spynes = _body_bytes(bank.batch(credential, items))
        assert ours == spynes, (ours, spynes)
        assert taken == ([] if items and items[0]["operation"] == "Mint" else [1])     # the schema's refusal: spyne
    # an attribute (here an xsi:type the schema accepts): spyne reads it, not the direct path
    payload = etree.fromstring(f'<b:ApplyBatch xmlns:b="{BANK_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                               f'<b:items><b:BatchItem xsi:type="b:BatchItem"><b:operation>ChargeHold</b:operation>'
                               f'<b:request_id>typed-1</b:request_id><b:hold_id>{hold}</b:hold_id>'
                               f'<b:payee_account_id>site</b:payee_account_id><b:amount>1</b:amount></b:BatchItem>'
                               f'</b:items></b:ApplyBatch>')
    taken.clear()
    results = results_of(bank.post(people.auctioneer.credential, payload))
    assert taken == [] and [(r["request_id"], r["applied"]) for r in results] == [("typed-1", "true")]
    audit_clean(bank, people)


# ---------------------------------------------------------------------------------------------
# The Bank alone: the audit replays batches; a failed store transaction leaves none of a batch


ADMIN, OWNER, COLLECTOR = "/CN=admin", "/CN=owner", "/CN=collector"


@pytest.fixture
def plain_bank(tmp_path):
    store = open_store(StoreConfig(backend="embedded"), tmp_path)
    key = LedgerKey.load_or_create(tmp_path / "ledger-key.pem")
    bank = Bank(store, key)
    admin, owner = Principal(dn=ADMIN, is_administrator=True), Principal(dn=OWNER)
    bank.execute(ledger.CreateAccount("a1", "vo", "p", OWNER), admin)
    bank.execute(ledger.CreateAccount("a2", "site", "p", ADMIN), admin)
    bank.execute(ledger.Mint("m1", "vo", 10_000), admin)
    holds = []
    for index in range(20):
        outcome = bank.execute(ledger.CreateHold(f"h{index}", "vo", 100, now_us() + 3600 * 10**6, collector_dn=COLLECTOR,
                                                 payee_account_id="site"), owner)
        holds.append(outcome.transaction.hold_id)
    try:
        yield bank, holds, key
    finally:
        store.close()


def _charges(holds, prefix: str, amount: int = 7) -> list:
    return [ledger.ChargeHold(f"{prefix}-{index}", hold, "site", amount) for index, hold in enumerate(holds)]


def _stored(bank: Bank, seq: int) -> ledger.Transaction:
    return documents.transaction_from_xml(bank.store.get(TRANSACTIONS, documents.transaction_document_id(seq)).xml)


def _restore(bank: Bank, transaction: ledger.Transaction) -> None:
    bank.store.transact(lambda tx: tx.put(TRANSACTIONS, documents.transaction_document_id(transaction.seq),
                                          documents.to_xml(transaction)))


def test_the_audit_replays_batches_and_finds_a_missing_or_forged_cover(plain_bank):
    bank, holds, key = plain_bank
    results = bank.execute_batch(_charges(holds, "b1") + _charges(holds[:3], "b2"), Principal(dn=COLLECTOR))
    assert all(result.error is None for result in results)
    seqs = [result.outcome.transaction.seq for result in results]
    assert [bool(_stored(bank, seq).signature) for seq in seqs] == [False] * (len(seqs) - 1) + [True]
    report = audit_store(bank.store, key.public, signature_check_interval=1)
    assert report.clean, report.findings       # the old audit called every unsigned transaction a bad signature
    # an unsigned transaction edited, its hash and every hash after it recomputed up to the signed one
    originals = {seq: _stored(bank, seq) for seq in seqs[5:]}
    previous_hash = originals[seqs[5]].prev_hash
    for seq in seqs[5:]:
        transaction = originals[seq]
        if seq == seqs[5]:
            transaction = dataclasses.replace(transaction, amount=1)
        transaction = dataclasses.replace(transaction, prev_hash=previous_hash, hash="")
        transaction = dataclasses.replace(transaction, hash=ledger_chain.transaction_hash(transaction))
        previous_hash = transaction.hash
        _restore(bank, transaction)
    report = audit_store(bank.store, key.public)
    assert report.seqs("bad-signature") == {seqs[-1]}, report.findings
    for original in originals.values():
        _restore(bank, original)
    assert audit_store(bank.store, key.public).clean
    # the last one's signature removed: nothing covers the batch any more
    _restore(bank, dataclasses.replace(originals[seqs[-1]], signature=""))
    report = audit_store(bank.store, key.public)
    assert report.seqs("bad-signature") == {seqs[-1]}, report.findings
    assert "carries no signature" in report.findings[0].message


def test_a_failed_store_transaction_leaves_none_of_the_batch(plain_bank, monkeypatch):
    """All or nothing at the store: the store fails while the batch's documents are written."""
    bank, holds, key = plain_bank
    before = bank.store.get("bank", documents.LEDGER_HEAD_ID).xml
    puts = {"count": 0}
    from gridcredit.services.bank import bank as bank_module

    real_flush = bank_module._StoreView.flush

    def failing_flush(view):
        real_put = view._tx.put

        def put(collection, doc_id, xml):
            puts["count"] += 1
            if puts["count"] == 25:
                raise StoreError("the disk failed")
            return real_put(collection, doc_id, xml)
        view._tx.put = put
        real_flush(view)

    monkeypatch.setattr(bank_module._StoreView, "flush", failing_flush)
    with pytest.raises(StoreError, match="the disk failed"):
        bank.execute_batch(_charges(holds, "fail"), Principal(dn=COLLECTOR))
    monkeypatch.undo()
    assert bank.store.get("bank", documents.LEDGER_HEAD_ID).xml == before
    assert puts["count"] == 25
    report = audit_store(bank.store, key.public)
    assert report.clean and report.transaction_count == 23, report.findings
    results = bank.execute_batch(_charges(holds, "fail"), Principal(dn=COLLECTOR))    # the same batch, later: applied
    assert [result.outcome.replayed for result in results] == [False] * len(holds)


def test_a_batch_asks_the_store_for_no_version_of_a_document_it_read(plain_bank):
    """The embedded store's transaction keeps the version of every document it read (under its write lock it
    cannot change): a put of a hold, an account, the head or a request record read before asks SQLite
    nothing more. The batch reads what its items read — and the versions of the transaction documents they
    write — at once (prefetch): a few statements whatever the number of items, none per item."""
    bank, holds, key = plain_bank
    statements = []
    connection = bank.store._connection()             # this thread's: the batch runs in it (it leads the commit)
    connection.set_trace_callback(statements.append)
    try:
        results = bank.execute_batch(_charges(holds, "versions"), Principal(dn=COLLECTOR))
    finally:
        connection.set_trace_callback(None)
    assert all(result.error is None for result in results)
    reads = [statement for statement in statements if statement.startswith("SELECT") and "FROM documents" in statement]
    one_at_a_time = [statement for statement in reads if "doc_id IN" not in statement]
    assert all("collection='bank'" in statement for statement in one_at_a_time), one_at_a_time   # the head, once
    assert len(reads) <= 8, reads      # was 4 per item (hold, account, record, transaction), then 1 (transaction)
    assert audit_store(bank.store, key.public).clean


def test_a_batch_is_refused_whole_by_the_bank_before_anything_runs(plain_bank):
    bank, holds, _key = plain_bank
    collector = Principal(dn=COLLECTOR)
    for requests, code in (([], "InvalidArgument"),
                           (_charges(holds, "x") * 76, "BatchTooLarge"),
                           ([*_charges(holds[:2], "d"), _charges(holds[:1], "d")[0]], "InvalidArgument"),
                           ([ledger.Mint("m", "vo", 1)], "InvalidArgument")):
        with pytest.raises(DomainError) as refused:
            bank.execute_batch(requests, collector)
        assert refused.value.code == code
    limited = Principal(dn=COLLECTOR, limited=True)
    with pytest.raises(DomainError) as refused:
        bank.execute_batch(_charges(holds, "l"), limited)
    assert refused.value.code == "NotAuthorized"
    assert bank.store.get("bank", documents.LEDGER_HEAD_ID).xml.count(b"<seq>23</seq>") == 1


def test_a_state_decoded_once_is_read_again_when_another_bank_changed_it(plain_bank):
    """The bank keeps the states it decoded, by document version: a change by another worker (another Bank
    on the same store) is seen at once."""
    bank, holds, key = plain_bank
    other = Bank(bank.store, key)
    collector, owner = Principal(dn=COLLECTOR), Principal(dn=OWNER)
    bank.execute_batch(_charges(holds[:2], "first", amount=10), collector)           # decodes vo, site, the holds
    other.execute(ledger.ChargeHold("other-1", holds[0], "site", 50), owner)      # the owner, in another worker
    other.execute(ledger.Transfer("other-2", "vo", "site", 100), owner)
    results = bank.execute_batch([ledger.ChargeHold("second-0", holds[0], "site", 41),    # 40 left: refused
                                  ledger.ChargeHold("second-1", holds[0], "site", 40)], collector)
    assert [result.error.code if result.error else None for result in results] == ["ExceedsHold", None]
    balance = bank.balance("site", Principal(dn=ADMIN, is_administrator=True))
    assert balance.total == 10 + 10 + 50 + 100 + 40
    assert audit_store(bank.store, key.public, signature_check_interval=1).clean


_DNS = st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10),
                 st.sampled_from(["/CN=a", "", "a&b", "é", "x<y>", "\"q\"", "a\tb"]))
_INTS = st.one_of(st.none(), st.integers(-10**18, 10**18))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_account_writer_writes_what_lxml_writes(data):
    """Accounts are written directly (a batch charging 1,000 bidders writes 1,000 of them): the same bytes
    as lxml's serialization of the document, whatever the holders, grants and texts."""
    holders = data.draw(st.lists(st.builds(ledger.Holder, _DNS, st.sampled_from(list(ledger.Role))), max_size=3))
    grants = data.draw(st.lists(st.builds(ledger.ServiceGrant, _DNS, _INTS, _INTS, _INTS, st.integers(0, 9),
                                          st.integers(0, 10**6), st.integers(0, 10**18)), max_size=2))
    account = ledger.Account(
        account_id=data.draw(_DNS), project=data.draw(_DNS), holders=tuple(holders),
        status=data.draw(st.sampled_from(list(ledger.AccountStatus))), balance=data.draw(st.integers(-10**18, 10**18)),
        held=data.draw(st.integers(0, 10**18)), credit_limit=data.draw(st.integers(0, 10**15)),
        spending_limit=data.draw(_INTS), spending_period_us=data.draw(_INTS),
        spending_period_index=data.draw(st.integers(0, 10**12)), spent_in_period=data.draw(st.integers(0, 10**15)),
        created_at_us=data.draw(st.integers(0, 2**62)), grants=tuple(grants))
    by_lxml = etree.tostring(documents.to_element(account), encoding="UTF-8", xml_declaration=False)
    assert documents.to_xml(account) == by_lxml
    assert_vouched_bytes_are_normal(documents.to_xml(account))
    assert documents.from_xml(by_lxml, ledger.Account) == account
    plain = all(text and text.isascii() and text.isprintable() and not {"&", "<", ">"} & set(text)
                for text in (account.account_id, account.project, *(h.dn for h in holders),
                             *(g.service_dn for g in grants)))
    assert (documents._account_xml(account) is not None) == plain


def test_the_ledgers_faster_helpers_answer_what_they_replaced():
    """evolve is dataclasses.replace for the ledger's states; a request record's key is the hash of the same
    JSON as before (records stored earlier must still answer their retries)."""
    import hashlib
    import json
    account = ledger.Account("a", "p", (ledger.Holder("/CN=x", ledger.Role.OWNER),), ledger.AccountStatus.OPEN, 5, 1, 0,
                             None, None, 0, 0, 7, ())
    for state, changes in ((account, {"balance": -3, "held": 0}), (account, {"status": ledger.AccountStatus.FROZEN}),
                           (ledger.LedgerHead(seq=4, hash="ab"), {"seq": 5}),
                           (ledger.Hold("hold-1", "a", 9, 2, 3, "ref", "/CN=o", "/CN=c", "site", ledger.HoldState.ACTIVE,
                                        1, 2, None, None), {"state": ledger.HoldState.SETTLED, "charged": 9})):
        assert ledger.evolve(state, **changes) == dataclasses.replace(state, **changes)
    with pytest.raises(TypeError):
        ledger.evolve(account, no_such_field=1)
    for dn, request_id in (("/CN=é", "x"), ('a"b', "c\\d"), ("", "\u2028"), ("/O=Grid/CN=A B", "auction:h:b:7")):
        assert ledger.request_record_key(dn, request_id) == hashlib.sha256(
            json.dumps([dn, request_id], ensure_ascii=False).encode("utf-8")).hexdigest()


def test_the_wsdl_says_what_a_batch_carries():
    wsdl = (Path(__file__).resolve().parent.parent / "wsdl" / "bank.wsdl").read_text(encoding="utf-8")
    documentation = wsdl[wsdl.index('<wsdl:operation name="ApplyBatch"'):]
    documentation = documentation[:documentation.index("</wsdl:documentation>")]
    for operation in ("ChargeHold", "SettleHold", "ReleaseHold", "Transfer", "ExtendHold"):
        assert operation in documentation
    assert f"more than {ledger.BATCH_ITEMS_MAX:,}" in documentation
