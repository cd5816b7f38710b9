"""The web view's HTML/SVG helpers and query parsing (gridcredit/web.py, server/web.py), without a browser:
escaping by construction, charts with one bar per value, bounded and checked query parameters.
(The pages themselves, in a real browser: tests/test_web_browser.py.)"""
from __future__ import annotations

import pytest
from lxml import etree

from gridcredit.errors import GridcreditError
from store_fixtures import basex_server, store_spec  # noqa: F401 — fixtures
from gridcredit.web import CHART_BARS_MAX, Markup, WebError, bar_chart, esc, join, tag, url
from server.web import PARAMS_MAX, QUERY_BYTES_MAX, _params


def test_text_and_attributes_are_escaped_and_markup_is_not_escaped_twice():
    made = tag("p", "<script>alert(1)</script>", tag("b", "x & y"), title='" onclick="evil()')
    assert made == ('<p title="&quot; onclick=&quot;evil()">&lt;script&gt;alert(1)&lt;/script&gt;'
                    '<b>x &amp; y</b></p>')
    assert esc(Markup("<i>ok</i>")) == "<i>ok</i>" and join("<", None, False, ["&"]) == "&lt;&amp;"
    assert tag("input", name="n", value="'v'", disabled=True, hidden=None) == '<input name="n" value="&#x27;v&#x27;" disabled>'
    assert url("/web/bank/account", id="a b&c", filter="", none=None) == "/web/bank/account?id=a+b%26c"


def test_a_bar_chart_draws_one_bar_per_value_scaled_to_the_largest():
    svg = etree.fromstring(str(bar_chart("Jobs <by> month", [("2026-01", 4), ("2026-02", 2), ("x<y", -3)])).encode())
    bars = svg.findall(".//{http://www.w3.org/2000/svg}rect")
    assert [(bar.get("data-label"), bar.get("data-value")) for bar in bars] == [("2026-01", "4"), ("2026-02", "2"),
                                                                               ("x<y", "-3")]
    heights = [int(bar.get("height")) for bar in bars]
    assert heights[0] == 2 * heights[1] and heights[2] == 0
    assert svg.find(".//{http://www.w3.org/2000/svg}svg").get("aria-label") == "Jobs <by> month"
    many = etree.fromstring(str(bar_chart("many", [(str(n), n) for n in range(CHART_BARS_MAX + 5)])).encode())
    assert len(many.findall(".//{http://www.w3.org/2000/svg}rect")) == CHART_BARS_MAX
    assert "5 earlier left out" in "".join(many.itertext())
    assert "no data yet" in bar_chart("empty", [])


def test_query_parameters_are_bounded_single_and_visible():
    assert _params("id=a%20b&filter=t%3Akind%3D%27x%27") == {"id": "a b", "filter": "t:kind='x'"}
    for query, words in (("id=a&id=b", "given twice"), ("id=a%E2%80%AEb", "U+202E"),
                         ("x=" + "a" * 2_001, "longer than"), ("id=%ff", "cannot be read"),
                         ("&".join(f"p{n}=1" for n in range(PARAMS_MAX + 1)), "cannot be read"),
                         ("x=" + "a" * QUERY_BYTES_MAX, "at most")):
        with pytest.raises(WebError) as refused:
            _params(query)
        assert words in str(refused.value) and refused.value.status.split()[0] in ("400", "414")
    assert issubclass(WebError, GridcreditError)


def test_the_public_page_reads_the_mints_and_retirements_at_most_every_refresh(tmp_path, monkeypatch):
    """Anyone may load the transparency page: what it costs (a query over every transaction) is done
    once per SUPPLY_REFRESH_S, not per view."""
    from gridcredit.config import StoreConfig
    from gridcredit.services.bank import ledger, web as bank_web
    from gridcredit.services.bank.bank import Bank, LedgerKey
    from gridcredit.xmlstore import open_store

    store = open_store(StoreConfig(backend="embedded"), tmp_path / "state", indexes=())
    try:
        admin = ledger.Principal("/CN=Admin", is_administrator=True)
        bank = Bank(store, LedgerKey.load_or_create(tmp_path / "key.pem"))
        bank.execute(ledger.CreateAccount("c1", "a1", "p", "/CN=Owner"), admin)
        bank.execute(ledger.Mint("m1", "a1", 50), admin)
        reads = []
        real = bank_web._supply_changes
        monkeypatch.setattr(bank_web, "_supply_changes", lambda b: reads.append(1) or real(b))
        changes = bank_web.SupplyChanges(bank)
        first = changes.current()
        bank.execute(ledger.Retire("r1", "a1", 20), admin)
        assert changes.current() is first and len(reads) == 1 and [t.amount for t in first[0]] == [50]
        monkeypatch.setattr(bank_web, "SUPPLY_REFRESH_S", 0.0)
        again = changes.current()
        assert len(reads) == 2 and [(t.kind.value, t.amount) for t in again[0]] == [("mint", 50), ("retire", 20)]
    finally:
        store.close()


def _bank_store(spec: dict, tmp_path, limits):
    """A store of ``spec``'s backend (store_fixtures) with the Bank's indexes and ``limits``."""
    from gridcredit.config import StoreConfig
    from gridcredit.services.bank import holders
    from gridcredit.xmlstore import open_store

    if spec["backend"] == "embedded":
        return open_store(StoreConfig(backend="embedded"), tmp_path / "state", indexes=(holders.INDEX,), limits=limits)
    from gridcredit.xmlstore._basex import BaseXStore

    return BaseXStore(tmp_path / "journal", port=spec["port"], db_prefix=spec["prefix"], timeout_s=10,
                      indexes=(holders.INDEX,), limits=limits)


def test_your_accounts_are_read_from_the_holder_index_not_by_examining_every_account(store_spec, tmp_path):
    """With the store allowed to examine 5 accounts per query, 8 accounts of others do not keep a holder
    from seeing their own (the old page's XPath over every account refused: beyond the scan limit); the
    index follows create account, set holder and remove holder, and a store from before it is indexed once."""
    from gridcredit.config import Config
    from gridcredit.server import registry
    from gridcredit.services.bank import holders, ledger, web as bank_web
    from gridcredit.services.bank.bank import Bank, LedgerKey
    from gridcredit.services.bank.types import Role
    from gridcredit.web import WebRequest
    from gridcredit.xmlstore._api import StoreLimits
    from lxml import html as lxml_html

    store = _bank_store(store_spec, tmp_path, StoreLimits(scan_limit_default=5))
    try:
        admin, olivia = ledger.Principal("/CN=Admin", is_administrator=True), "/O=Grid/CN=Olivia"
        other = ledger.Principal("/O=Grid/CN=Other")
        bank = Bank(store, LedgerKey.load_or_create(tmp_path / "key.pem"))
        assert holders.build(store) == 0                      # a new store: marked built at once
        for number in range(8):
            bank.execute(ledger.CreateAccount(f"c{number}", f"other-{number:02d}", "p", other.dn), admin)
        bank.execute(ledger.CreateAccount("c-a", "olivia-a", "p", olivia), admin)
        bank.execute(ledger.CreateAccount("c-b", "shared-b", "p", other.dn), admin)
        bank.execute(ledger.SetHolder("h-b", "shared-b", olivia, Role.MEMBER), other)
        bank.execute(ledger.SetHolder("h-c", "other-03", olivia, Role.VIEWER), other)
        bank.execute(ledger.RemoveHolder("r-c", "other-03", olivia), other)
        config = registry.complete(Config())

        def shown(dn: str) -> list[list[str]]:
            request = WebRequest(path="/web/bank/accounts", params={}, principal=ledger.Principal(dn), part=bank,
                                 config=config)
            document = lxml_html.fromstring(str(bank_web._accounts_page(request)))
            return [[" ".join(cell.text_content().split()) for cell in row.xpath("./td")[:3]]
                    for row in document.xpath("//table[contains(@class,'accounts')]/tbody/tr")]

        assert shown(olivia) == [["olivia-a", "p", "owner"], ["shared-b", "p", "member"]]
        assert len(shown(other.dn)) == 9 and shown("/O=Grid/CN=Nobody") == []
        # a store written before the index: nothing in it, no marker — indexed once
        store.transact(lambda tx: [tx.delete(holders.HOLDERS, doc_id) for doc_id in store.ids(holders.HOLDERS)])
        assert holders.accounts_of(store, olivia, limit=10) is None
        assert holders.build(store) == 10 and holders.build(store) == 0
        assert holders.accounts_of(store, olivia, limit=10) == (["olivia-a", "shared-b"], False)
        assert holders.accounts_of(store, other.dn, limit=5)[1] is True
    finally:
        store.close()


def test_the_last_audit_is_stored_so_every_worker_shows_the_same_one(tmp_path, monkeypatch):
    """Two workers' pages (two LastAudit over one store): the audit one started is the one the other shows —
    same time, outcome and count — and the other starts none of its own until AUDIT_REFRESH_S has passed."""
    import time

    from gridcredit.config import StoreConfig
    from gridcredit.services.bank import ledger, web as bank_web
    from gridcredit.services.bank.bank import Bank, LedgerKey
    from gridcredit.config import Config
    from gridcredit.server import registry
    from gridcredit.timeunits import now_us
    from gridcredit.web import WebRequest
    from gridcredit.xmlstore import open_store
    from lxml import html as lxml_html

    store = open_store(StoreConfig(backend="embedded"), tmp_path / "state", indexes=())
    try:
        admin = ledger.Principal("/CN=Admin", is_administrator=True)
        key = LedgerKey.load_or_create(tmp_path / "key.pem")
        bank = Bank(store, key)
        bank.execute(ledger.CreateAccount("c1", "a1", "p", "/CN=Owner"), admin)
        bank.execute(ledger.Mint("m1", "a1", 50), admin)
        audits = []
        real = Bank.audit
        monkeypatch.setattr(Bank, "audit", lambda self, **options: audits.append(1) or real(self, **options))
        first, second = bank_web.LastAudit(bank), bank_web.LastAudit(Bank(store, key))

        def finished(last_audit):
            """The stored state once no audit runs (read without starting one)."""
            deadline = time.monotonic() + 30
            while (state := last_audit.state()).running(now_us()) and time.monotonic() < deadline:
                time.sleep(0.05)
            return state, False

        config, supply_changes = registry.complete(Config()), bank_web.SupplyChanges(bank)

        def shown(last_audit) -> str:                       # the public page, as that worker answers it
            request = WebRequest(path="/web/bank/transparency", params={}, principal=None, part=bank, config=config)
            return " ".join(lxml_html.fromstring(str(bank_web._transparency_page(
                request, last_audit, supply_changes))).xpath("//section[@id='audit']")[0].text_content().split())

        assert "is running now" in shown(first)
        deadline = time.monotonic() + 30
        while "The last audit finished" not in (text := shown(first)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ": clean." in text and "transactions checked2" in text        # <dt>, <dd>
        assert shown(second) == text and len(audits) == 1   # the other worker shows that one, runs none
        state, _ = finished(first)
        other, running = second.current()
        assert not running and other == state and len(audits) == 1
        assert (other.result.clean, other.result.transaction_count) == (True, 2) and other.result.finished_us > 0
        bank.execute(ledger.Mint("m2", "a1", 5), admin)
        assert second.current()[0].result.transaction_count == 2 and len(audits) == 1   # within AUDIT_REFRESH_S
        monkeypatch.setattr(bank_web, "AUDIT_REFRESH_S", 0.0)
        time.sleep(0.01)
        assert second.current()[1] is True                  # due again: the second worker runs this one
        assert finished(second)[0].result.transaction_count == 3 and len(audits) == 2
        assert first.state().result.transaction_count == 3
    finally:
        store.close()


def test_a_holder_index_that_cannot_be_built_leaves_the_bank_serving(tmp_path, caplog):
    """The index only narrows the web page's search: an account document it cannot read (here a foreign one, as
    bench/checkpoint.py's synthetic store holds) is said once, and the worker's Bank is built all the same
    (before, `gridcredit serve` stopped: every worker failed in build)."""
    from gridcredit.config import Config, StoreConfig
    from gridcredit.contract import BuildContext
    from gridcredit.server import registry
    from gridcredit.services.bank import holders, runtime
    from gridcredit.xmlstore import open_store

    config = registry.complete(Config(state_dir=tmp_path / "state"))
    store = open_store(StoreConfig(backend="embedded"), tmp_path / "state", indexes=(holders.INDEX,))
    try:
        store.put(holders.ACCOUNTS, "acct0001", b'<account id="acct0001" balance="1"/>')
        with caplog.at_level("WARNING", logger="gridcredit.services.bank"):
            bank = runtime.build(BuildContext(config, store))
        assert bank is not None and store.get(holders.HOLDERS, holders.BUILT_ID) is None
        assert [r.getMessage() for r in caplog.records if "holder index could not be built" in r.getMessage()]
        assert holders.accounts_of(store, "/CN=Anyone", limit=5) is None     # the page reads the accounts instead
    finally:
        store.close()
