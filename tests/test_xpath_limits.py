"""Untrusted XPath through a real host, and BaseX sessions of the store's user (issue 10.4, 10.10).

A user's XPath reaches the store through the LUTS's Query: an EXSLT regular expression with
catastrophic backtracking froze every thread of a worker (Python's re holds the GIL), and a
nested count ran far past the time limit. Here both are sent over signed SOAP to a host with ONE
worker while a signed WhoAmI and a records query are asked of that same worker: they must answer
within ~1 s, and the
attack must be refused (the regex) or stopped at the LUTS's 10 s limit (the nested count).
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pytest

from gridcredit.errors import QueryError, RemoteFault
from gridcredit.security.credentials import load_credential
from gridcredit.services.luts.client import LutsClient
from gridcredit.xmlstore._basex import BaseXStore
from gridcredit.xmlstore._basex_wire import ServerError, Session

from bank_fixtures import BankUsers, bank_host
from luts_fixtures import Job, make_batch
from store_fixtures import basex_server  # noqa: F401  (fixture)

SITE_HOST = "ce1.example.org"
LUTS_TIME_LIMIT_S = 10          # the LUTS's per-query limit (Luts.query's time_limit_s)
EXSLT_RE = "http://exslt.org/regular-expressions"


@pytest.fixture(params=["embedded", "basex"], scope="module")
def one_worker_host(request, pki, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"xpath-{request.param}")
    cert, key = pki.ca.issue_host(SITE_HOST, directory / "site", key=pki.keys.fresh())
    alice = pki.user("Alice Xpath")
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    env = {"GRIDCREDIT_SERVER_WORKERS": "1", "GRIDCREDIT_LUTS_ADMINS": pki.user("LUTS Admin").dn}
    with bank_host(directory, request.param, users, pki, extra_env=env) as host:
        site = LutsClient(host.url, credential=load_credential(cert, key), trust_dir=pki.trust_dir, timeout_s=60)
        jobs = [Job(record_id=f"xp-{request.param}-{n}", user=alice.dn, vo="atlas", machine=SITE_HOST, queue="q" + "a" * 30,
                    end=datetime(2026, 9, 10 + n, tzinfo=timezone.utc), wall_s=3600, cpu_s=1800, charge="1.5",
                    local_job_id=str(n)) for n in range(3)]
        assert [r.status for r in site.publish(make_batch(jobs)).results] == ["stored"] * 3
        yield host, alice


def _luts(host, who, timeout_s: float = 60) -> LutsClient:
    return LutsClient(host.url, credential=who.credential, trust_dir=host.pki.trust_dir, timeout_s=timeout_s)


def _attack_while_whoami(host, alice, xpath: str, namespaces: dict) -> tuple[str, float, float]:
    """Send the attack; meanwhile ask the same (only) worker again and again for WhoAmI and for
    alice's records of the month (a store query without XPath). Returns (outcome of the attack,
    its seconds, the slowest of the other answers in seconds)."""
    outcome: dict = {}

    def attack():
        started = time.monotonic()
        try:
            _luts(host, alice).query(xpath, namespaces=namespaces, from_month="2026-09", to_month="2026-09")
            outcome["result"] = "answered"
        except RemoteFault as fault:
            outcome["result"] = f"fault {fault.code}: {fault.text}"
        except Exception as error:      # noqa: BLE001 — a client timeout is an outcome here
            outcome["result"] = f"{type(error).__name__}: {error}"
        outcome["seconds"] = time.monotonic() - started

    whoami = host.client(alice, timeout_s=30)
    whoami.call("WhoAmI")                                    # connected and warm before the clock starts
    records = _luts(host, alice, timeout_s=30)
    assert len(records.query(from_month="2026-09", to_month="2026-09").records) == 3
    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    time.sleep(0.5)
    slowest, deadline = 0.0, time.monotonic() + LUTS_TIME_LIMIT_S + 20
    while thread.is_alive() and time.monotonic() < deadline:
        started = time.monotonic()
        whoami.call("WhoAmI")
        slowest = max(slowest, time.monotonic() - started)
        started = time.monotonic()
        assert len(records.query(from_month="2026-09", to_month="2026-09").records) == 3
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.2)
    thread.join(5)
    assert not thread.is_alive(), "the attack was neither refused nor stopped"
    return outcome["result"], outcome["seconds"], slowest


def test_regex_attack_over_soap_is_refused_and_the_worker_answers(one_worker_host):
    host, alice = one_worker_host
    xpath = "re:test(concat(@queue, '!'), '^(a+)+$') or re:test(concat('aaaaaaaaaaaaaaaaaaaaaaaaaaa', '!'), '^(a+)+$')"
    result, seconds, slowest = _attack_while_whoami(host, alice, xpath, {"re": EXSLT_RE})
    assert "only XPath 1.0's core functions" in result, result
    assert seconds < 2.0, (result, seconds)
    assert slowest < 1.0, f"an answer took {slowest:.1f} s while the regex attack ran"


def test_nested_count_over_soap_is_stopped_at_the_limit_and_the_worker_answers(one_worker_host):
    host, alice = one_worker_host
    # ~N^5 node visits for a record of N nodes (hours: N ~ 100), yet 4 nested predicates: statically
    # allowed; the paths depend on the context node, so BaseX cannot compute them once
    others = "(following::node() | preceding::node())"
    xpath = f"count(//node()[count({others}[count({others}[count({others}[count({others}) = 3]) = 2]) = 1]) = 7])"
    result, seconds, slowest = _attack_while_whoami(host, alice, xpath, {})
    assert "time limit" in result, result
    assert seconds < LUTS_TIME_LIMIT_S + 3, (result, seconds)
    assert slowest < 1.0, f"an answer took {slowest:.1f} s while the nested count ran"
    # the worker still answers queries with an XPath afterwards
    assert len(_luts(host, alice).query("n:Usage/n:wall_us > $w", {"w": 1}, from_month="2026-09",
                                        to_month="2026-09").records) == 3


def test_other_basex_sessions_of_the_same_user_read_while_xpath_queries_run(basex_server, tmp_path):
    """xquery:eval's 'permission' option switched the permission of the store's BaseX USER for the
    length of each XPath query: another program logged in as that user read "No read permission"
    (~4 % of its reads). The store no longer gives the option."""
    store = BaseXStore(tmp_path / "journal", port=basex_server.port, db_prefix="perm_", timeout_s=30)
    try:
        store.transact(lambda tx: [tx.put("people", f"p{n}", f"<p n='{n}'><name>n{n}</name></p>".encode())
                                   for n in range(20)])
        store.put("other", "o1", b"<o>hello</o>")
        assert store.count("people", "@n >= 0") == 20                 # applied: the databases exist
        errors: list[str] = []
        reads = [0]
        stop = threading.Event()

        def read_in_a_loop():
            session = Session("127.0.0.1", basex_server.port, "admin", "admin", timeout_s=30)
            try:
                while not stop.is_set():
                    try:
                        assert session.query("string(db:open('perm_other'))") == "hello"
                        reads[0] += 1
                    except ServerError as error:
                        errors.append(str(error)[:120])
            finally:
                session.close()

        reader = threading.Thread(target=read_in_a_loop)
        reader.start()
        try:
            for n in range(150):
                assert store.count("people", "@n >= $n", {"n": n % 20}) == 20 - n % 20
        finally:
            stop.set()
            reader.join(30)
        assert reads[0] > 50, reads
        assert errors == [], f"{len(errors)} of {reads[0] + len(errors)} reads failed: {errors[:2]}"
    finally:
        store.close()


def test_basex_store_query_refuses_xquery_before_basex_sees_it(basex_server, tmp_path):
    """What reaches xquery:eval is the checked XPath 1.0 rewritten by the store, never the caller's
    text: an XQuery that would read the journal's neighbour files is refused, not evaluated."""
    store = BaseXStore(tmp_path / "journal", port=basex_server.port, db_prefix="refuse_", timeout_s=30)
    try:
        store.put("people", "p1", b"<p n='1'/>")
        for xpath in ["file:read-text('/etc/passwd')", "xquery:eval(\"file:list('/')\")",
                      "true())] , db:list(), $_docs[(true()", "proc:system('id')"]:
            with pytest.raises(QueryError, match="XPath"):
                store.query("people", xpath, namespaces={"file": "http://expath.org/ns/file",
                                                         "xquery": "http://basex.org/modules/xquery",
                                                         "proc": "http://basex.org/modules/proc"})
        plan = store.query_plan("people", "@n = 1")
        assert "permission" not in plan
    finally:
        store.close()


CROSS_DOCUMENTS = [
    b'<p age="31" n="3"><name>ann</name><c>oslo</c><v>1.5</v><v>2</v></p>',
    b'<p age="old"><name>bob</name><name>bo</name><c>rome</c><v>x</v></p>',
    b'<p age="27" n="-1"><name>cid</name><c/><v>1e3</v><?pi x?><!-- c --></p>',
    b'<p age=" 45 " n="0"><name>dag dag</name><c>oslo</c><v>-0</v><q><r>7</r><r>8</r></q></p>',
    b'<p xmlns:g="urn:g" g:age="5"><name>  eve  </name><g:c>lima</g:c></p>',
]
CROSS_EXPRESSIONS = [
    "@age > 30", "@age = 45", "@age != 31", "@age < 'x'", "number(@age) = number(@age)", "@n >= 0", "@n = true()",
    "@n = false()", "v > 1", "v = 2", "v = '2'", "v != 'x'", "sum(v) > 0", "sum(v) = sum(v)", "count(v) = 2",
    "name = 'bo'", "string(name) = 'bob'", "contains(name, 'o')", "starts-with(normalize-space(name), 'eve')",
    "string-length(name) = 3", "substring(name, 2, 1) = 'n'", "substring(name, 1.5, 2.6) = 'nn'",
    "translate(name, 'abc', 'ABC') = 'Ann'", "substring-before(name, ' ') = 'dag'", "substring-after(c, 'os') = 'lo'",
    "concat(name, '-', c) = 'ann-oslo'", "round(v) = 2", "floor(v) = 1", "ceiling(-0.5) = 0", "1 div 0 > 0",
    "-1 div 0 < 0", "0 div 0 != 0 div 0", "5 mod 3 = 2", "-5 mod 3 = -2", "q/r[2] = 8", "q/r[last()] = 8",
    "count(q/r[position() > 1]) = 1", "count(//node()) > 6", "count(//text()) > 3", "count(processing-instruction()) = 1",
    "count(comment()) = 1", "local-name(*) = 'name'", "name(*[2]) = 'c'", "namespace-uri(*[2]) = 'urn:g'",
    "g:c = 'lima'", "@g:age * 2 = 10", "boolean(c)", "not(c/text())", "c = ''", "count(*[self::name or self::c]) = 3",
    "(name | c)[1] = 'ann'", "count(name | c | name) = 2", "count(ancestor-or-self::*) = 1",
    "count(descendant::*[not(*)]) > 3", "count(*/following-sibling::*) > 2", "count(v/preceding::*) > 1",
    "q/r[1]/following-sibling::r = 8", "q/r[2]/preceding-sibling::r[1] = 7", "count(q/r/ancestor::*[1]) = 1",
    "number('12') = 12", "string(1 div 4) = '0.25'", "string(true()) = 'true'", "-(@n) = 1", "@n + 1 = 4",
    "v[. > 1] = 2", "lang('en')", "true() and (false() or @n)", "/p/name = 'ann'", "/p[name = 'cid']",
]


def test_both_stores_answer_every_expression_alike(basex_server, tmp_path):
    """The same checked XPath 1.0 runs on lxml (its canonical text) and on BaseX (the XQuery with
    XPath 1.0's conversions): the documents each finds are the same."""
    from gridcredit.xmlstore._embedded import EmbeddedStore
    embedded = EmbeddedStore(tmp_path / "store.sqlite")
    basex = BaseXStore(tmp_path / "journal", port=basex_server.port, db_prefix="cross_", timeout_s=30)
    try:
        for store in (embedded, basex):
            store.transact(lambda tx, store=store: [tx.put("docs", f"d{n}", xml)
                                                    for n, xml in enumerate(CROSS_DOCUMENTS)])
        differ = {}
        for xpath in CROSS_EXPRESSIONS:
            found = []
            for store in (embedded, basex):
                try:
                    found.append([d.doc_id for d in store.query("docs", xpath, namespaces={"g": "urn:g"}).documents])
                except QueryError as error:
                    found.append(f"QueryError: {error}"[:160])
            if found[0] != found[1]:
                differ[xpath] = found
        assert differ == {}
    finally:
        embedded.close()
        basex.close()


def test_an_xpath_building_huge_strings_is_stopped_by_the_sandbox_memory_bound(tmp_path):
    """Embedded store: concat() of a 3.9 MB document's text 60 times needs ~234 MB; the sandbox
    process may use 200 MB here, so the query fails with QueryError (the worker's memory is
    untouched) and the store answers on."""
    from gridcredit.xmlstore import StoreLimits
    from gridcredit.xmlstore._embedded import EmbeddedStore
    store = EmbeddedStore(tmp_path / "store.sqlite", limits=StoreLimits(xpath_sandbox_bytes_max=200 << 20))
    try:
        store.put("big", "b", ("<t>" + "x" * 3_900_000 + "</t>").encode())
        assert store.count("big", "string-length(concat(., ., .)) = 11700000") == 1
        with pytest.raises(QueryError, match="at most 200 MB"):
            store.count("big", "string-length(concat(" + ", ".join(["."] * 60) + ")) > 0", time_limit_s=20)
        assert store.count("big", "string-length(.) = 3900000") == 1
    finally:
        store.close()
