"""The web view (issue 15, points 4-5) in a real browser: Debian's headless chromium loads each page of
a running host (``gridcredit serve``, two workers) with a test user's client certificate from its
NSS database, and the DOM it built is checked — the expected figures, charts with the right number
of bars, nothing of another user's; a browser without a certificate sees only the public page.
Headers (Content-Security-Policy, no state change on anything but GET) are checked with requests.
"""
from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import html as lxml_html

from bank_fixtures import bank_host, bank_users, utc_in
from browser import Browser, available
from luts_fixtures import Job, make_batch
from conftest import make_test_pki
from security_fixtures import https_session, post_soap, signed_request, skip_unless_ci

from gridcredit.services.luts.client import LutsClient

pytestmark = pytest.mark.slow       # a host per module and a chromium process per page


@pytest.fixture(autouse=True)
def _browser_installed():
    skip_unless_ci(available())         # scripts/browser.sh installs it; CI must not skip

OLIVIA_ACCOUNT, OSCAR_ACCOUNT = "web-olivia", "web-oscar"
# Olivia's jobs: months 2026-01..03, VOs atlas and cms, sites north and south; Oscar's one job: VO alice
OLIVIA_JOBS = [("2026-01-10", "atlas", "north", 7200), ("2026-01-20", "cms", "south", 3600),
               ("2026-02-05", "atlas", "north", 10800), ("2026-03-15", "atlas", "south", 3600)]


def rid(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _job(number: int, user: str, day: str, vo: str, site: str, wall_s: int) -> Job:
    return Job(record_id=f"web-{number}", user=user, vo=vo, machine=f"ce.{site}.example.org", queue="long",
               end=datetime.fromisoformat(day).replace(hour=12, tzinfo=timezone.utc), wall_s=wall_s,
               cpu_s=wall_s // 2, charge="5", site=site, local_job_id=str(number))


@pytest.fixture(scope="module")
def world(tmp_path_factory, pki):
    users = bank_users(pki)
    env = {"GRIDCREDIT_LUTS_ADMINS": users.admin.dn}
    with bank_host(tmp_path_factory.mktemp("web"), "embedded", users, pki, extra_env=env) as host:
        admin, olivia = host.client(users.admin), host.client(users.owners[0])
        oscar = users.owners[1]
        admin.call("CreateAccount", request_id=rid(), account_id=OLIVIA_ACCOUNT, project="atlas",
                   owner_dn=users.owners[0].dn)
        admin.call("CreateAccount", request_id=rid(), account_id=OSCAR_ACCOUNT, project="alice", owner_dn=oscar.dn)
        admin.call("Mint", request_id=rid(), account_id=OLIVIA_ACCOUNT, amount=1_000)
        admin.call("Mint", request_id=rid(), account_id=OSCAR_ACCOUNT, amount=777)
        admin.call("Retire", request_id=rid(), account_id=OSCAR_ACCOUNT, amount=77)
        olivia.call("CreateHold", request_id=rid(), account_id=OLIVIA_ACCOUNT, amount=120, expires=utc_in(3600),
                    reference="web-hold-ref", collector_dn=None, payee_account_id=None)
        olivia.call("Transfer", request_id=rid(), from_account_id=OLIVIA_ACCOUNT, to_account_id=OSCAR_ACCOUNT,
                    amount=30)
        luts = LutsClient(host.url, credential=users.admin.credential, trust_dir=pki.trust_dir)
        jobs = [_job(n, users.owners[0].dn, *spec) for n, spec in enumerate(OLIVIA_JOBS)]
        jobs.append(_job(99, oscar.dn, "2026-04-01", "alice", "east", 99_000))
        report = luts.publish(make_batch(jobs))
        assert report.ok, report
        for client in (admin, olivia, luts):
            client.close()
        yield host, users, pki


def browser_for(world, tmp_path, user) -> Browser:
    host, users, pki = world
    return Browser(tmp_path / "browser", pki.ca.directory / "ca.pem", user)


def page(browser: Browser, url: str):
    return lxml_html.fromstring(browser.dom(url))


def text_of(document) -> str:
    return " ".join(document.text_content().split())


def cells(row) -> list[str]:
    return [" ".join(cell.text_content().split()) for cell in row.xpath("./td")]


def definitions(document, section_id: str) -> dict[str, str]:
    """The dt → dd pairs of the section ``section_id``."""
    found = document.xpath("//section[@id=$id]//dl", id=section_id)[0]
    return {" ".join(dt.text_content().split()): " ".join(dd.text_content().split())
            for dt, dd in zip(found.xpath("./dt"), found.xpath("./dd"))}


def chart_bars(document, title: str) -> list[tuple[str, str]]:
    """(label, value) of each bar of the chart whose accessible name is ``title``."""
    charts = document.xpath("//svg[@aria-label=$title]", title=title)
    assert len(charts) == 1, f"no chart {title!r}: {[c.get('aria-label') for c in document.xpath('//svg')]}"
    return [(bar.get("data-label"), bar.get("data-value")) for bar in charts[0].xpath(".//rect[@class='bar']")]


def test_a_user_sees_their_accounts_and_no_one_elses(world, tmp_path):
    host, users, _ = world
    olivia = browser_for(world, tmp_path, users.owners[0])
    document = page(olivia, f"{host.url}/web/bank/accounts")
    text = text_of(document)
    assert users.owners[0].dn in text                      # who the host took the browser for
    rows = document.xpath("//table[contains(@class,'accounts')]/tbody/tr")
    assert [cells(row) for row in rows] == [[OLIVIA_ACCOUNT, "atlas", "owner", "open", "970", "120", "850"]]
    assert OSCAR_ACCOUNT not in " ".join(row.text_content() for row in rows)
    assert chart_bars(document, "Available credits by account") == [(OLIVIA_ACCOUNT, "850")]

    account = page(olivia, f"{host.url}/web/bank/account?id={OLIVIA_ACCOUNT}")
    figures = definitions(account, "balance")
    assert (figures["balance"], figures["held"], figures["available"]) == ("970", "120", "850")
    holds = account.xpath("//table[contains(@class,'holds')]/tbody/tr")
    assert [cells(row)[1:6] for row in holds] == [["active", "120", "0", cells(holds[0])[4], "web-hold-ref"]]
    # the History filter is the Bank's own: only the transfer matches
    filtered = page(olivia, f"{host.url}/web/bank/account?id={OLIVIA_ACCOUNT}&filter=t:kind%3D%27transfer%27")
    kinds = [row.xpath("./td[3]")[0].text_content() for row in
             filtered.xpath("//table[contains(@class,'history')]/tbody/tr")]
    assert kinds == ["transfer"]
    # another's account: the Bank's policy refuses, the page says so
    refused = text_of(page(olivia, f"{host.url}/web/bank/account?id={OSCAR_ACCOUNT}"))
    assert "NotAuthorized" in refused and "777" not in refused
    # an administrator may view any account (the Bank's rule), found by its id with the GET form
    admin = Browser(tmp_path / "admin", world[2].ca.directory / "ca.pem", users.admin)
    assert [row.xpath("./td[1]")[0].text_content() for row in page(admin, f"{host.url}/web/bank/accounts").xpath(
        "//table[contains(@class,'accounts')]/tbody/tr")] == []            # they hold none
    theirs = page(admin, f"{host.url}/web/bank/account?id={OSCAR_ACCOUNT}")
    assert definitions(theirs, "balance")["balance"] == "730"            # 777 − 77 + 30
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    statement = page(olivia, f"{host.url}/web/bank/statement?id={OLIVIA_ACCOUNT}&month={month}")
    figures = definitions(statement, "statement")
    assert (figures["opening balance"], figures["closing balance"], figures["transactions"]) == ("0", "970", "4")  # created, minted, hold, transfer


def test_usage_charts_by_month_vo_and_site_show_only_the_users_records(world, tmp_path):
    host, users, _ = world
    olivia = browser_for(world, tmp_path, users.owners[0])
    document = page(olivia, f"{host.url}/web/luts/usage")
    assert chart_bars(document, "Jobs by month") == [("2026-01", "2"), ("2026-02", "1"), ("2026-03", "1")]
    assert chart_bars(document, "Wall-clock hours by month") == [("2026-01", "3"), ("2026-02", "3"),
                                                                 ("2026-03", "1")]
    assert [cells(row) for row in document.xpath("//table[contains(@class,'usage-by-month')]/tbody/tr")] == [
        ["2026-01", "2", "3.0", "1.5", "10 (no unit)"], ["2026-02", "1", "3.0", "1.5", "5 (no unit)"],
        ["2026-03", "1", "1.0", "0.5", "5 (no unit)"]]
    assert chart_bars(document, "Jobs by VO") == [("atlas", "3"), ("cms", "1")]
    assert chart_bars(document, "Jobs by site") == [("north", "2"), ("south", "2")]
    text = text_of(document)
    assert "alice" not in text and "east" not in text and "2026-04" not in text     # Oscar's job
    # the scope that is not hers is refused by the LUTS's policy
    assert "NotAuthorized" in text_of(page(olivia, f"{host.url}/web/luts/usage?scope=all"))
    # an administrator of the LUTS sees both users' jobs
    admin = Browser(tmp_path / "admin-browser", world[2].ca.directory / "ca.pem", users.admin)
    assert ("2026-04", "1") in chart_bars(page(admin, f"{host.url}/web/luts/usage"), "Jobs by month")


def test_without_a_certificate_only_the_public_page(world, tmp_path):
    host, users, pki = world
    # a host that sells no CPU and makes no reservations shows no market or reservations page
    signed_in = https_session(pki.trust_dir).get(f"{host.url}/web/", timeout=30, cert=(
        str(users.owners[0].cert_path), str(users.owners[0].key_path)))
    assert "/web/auctioneer/market" not in signed_in.text and "/web/jarm/reservations" not in signed_in.text
    assert "/web/directory/hosts" in signed_in.text and "/web/luts/usage" in signed_in.text
    anonymous = browser_for(world, tmp_path, None)
    index = page(anonymous, f"{host.url}/web/")
    assert [a.get("href") for a in index.xpath("//main//ul/li/a")] == ["/web/bank/transparency"]
    assert "How to present your certificate" in text_of(index)
    for private in ("bank/accounts", f"bank/account?id={OLIVIA_ACCOUNT}", "luts/usage"):
        text = text_of(page(anonymous, f"{host.url}/web/{private}"))
        assert "A certificate is needed" in text and "pkcs12" in text, private
        assert "970" not in text and OLIVIA_ACCOUNT not in text
    deadline = time.monotonic() + 60
    while True:        # the first view starts the audit; it is shown once done
        public = page(anonymous, f"{host.url}/web/bank/transparency")
        text = text_of(public)
        if "The last audit finished" in text or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert definitions(public, "supply") == {"issued": "1,777", "retired": "77", "outstanding": "1,700"}
    assert ": clean." in text
    rows = public.xpath("//table[contains(@class,'supply-changes')]/tbody/tr")
    assert [row.xpath("./td[3]")[0].text_content() + " " + row.xpath("./td[4]")[0].text_content() for row in rows] == [
        "retirement 77", "issue 777", "issue 1,000"]
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    assert chart_bars(public, "Credits outstanding at the end of each month") == [(month, "1700")]
    assert "gridcredit bank audit --offline" in text and "BEGIN PUBLIC KEY" in text
    shots = Path(os.environ.get("GRIDCREDIT_SCREENSHOT_DIR") or tmp_path)
    shot = anonymous.screenshot(f"{host.url}/web/bank/transparency", shots / "web-transparency.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_certificate_from_an_untrusted_ca_sees_the_public_pages_told_why(world, tmp_path, key_pool):
    """Such a browser got a TLS handshake error before; the SOAP operations and /sgas/ur answer its
    connections as they answer one without a certificate (WS-Security, and the trust directory, decide)."""
    host, users, pki = world
    other = make_test_pki(tmp_path / "other-pki", key_pool, dn="/DC=org/DC=example/O=elsewhere/CN=Another CA")
    ursula = other.user("Ursula Elsewhere")
    note = "Your certificate is not from a CA this host trusts"
    browser = Browser(tmp_path / "browser", pki.ca.directory / "ca.pem", ursula)
    index = page(browser, f"{host.url}/web/")
    assert note in text_of(index) and ursula.dn in text_of(index)
    assert [a.get("href") for a in index.xpath("//main//ul/li/a")] == ["/web/bank/transparency"]
    assert index.xpath("//p[@id='untrusted']")
    public = page(browser, f"{host.url}/web/bank/transparency")
    assert definitions(public, "supply")["issued"] == "1,777" and note in text_of(public)
    private = text_of(page(browser, f"{host.url}/web/bank/accounts"))
    assert "A certificate is needed" in private and note in private and OLIVIA_ACCOUNT not in private
    # a plain TLS client presenting it
    session = https_session(pki.trust_dir)
    session.cert = (str(ursula.cert_path), str(ursula.key_path))
    refused = session.get(f"{host.url}/web/bank/accounts", timeout=30)
    assert refused.status_code == 403 and "unable to get local issuer certificate" in refused.text
    assert session.get(f"{host.url}/web/bank/transparency", timeout=30).status_code == 200
    answered = post_soap(session, f"{host.url}/bank", signed_request(users.owners[0].credential))
    assert answered.status_code == 200 and users.owners[0].dn in answered.text
    theirs = post_soap(session, f"{host.url}/bank", signed_request(ursula.credential))
    assert theirs.status_code == 500 and "wsse:" in theirs.text and ursula.dn not in answered.text
    anonymous = https_session(pki.trust_dir).post(f"{host.url}/sgas/ur", data=b"<x/>", timeout=30)
    assert session.post(f"{host.url}/sgas/ur", data=b"<x/>", timeout=30).status_code == anonymous.status_code >= 400


def test_screenshot_of_a_users_pages(world, tmp_path):
    host, users, _ = world
    olivia = browser_for(world, tmp_path, users.owners[0])
    shots = Path(os.environ.get("GRIDCREDIT_SCREENSHOT_DIR") or tmp_path)
    for name, path in (("web-usage.png", "/web/luts/usage"), ("web-account.png", f"/web/bank/account?id={OLIVIA_ACCOUNT}")):
        shot = olivia.screenshot(f"{host.url}{path}", shots / name)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_headers_methods_and_escaping(world, tmp_path):
    host, users, pki = world
    session = https_session(pki.trust_dir)
    olivia = (str(users.owners[0].cert_path), str(users.owners[0].key_path))
    answer = session.get(f"{host.url}/web/bank/accounts", cert=olivia, timeout=30)
    assert answer.status_code == 200
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script" not in policy and "unsafe" not in policy
    assert answer.headers["Cache-Control"] == "no-store" and answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in answer.text and " style=" not in answer.text
    assert session.get(f"{host.url}/web/style.css", timeout=30).headers["Content-Type"].startswith("text/css")
    # nothing but reading
    for method in ("POST", "PUT", "DELETE"):
        refused = session.request(method, f"{host.url}/web/bank/accounts", cert=olivia, data=b"x", timeout=30)
        assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
    # what a person types comes back as text, never as markup
    probe = "<b onmouseover=alert(1)>x</b>"
    shown = session.get(f"{host.url}/web/bank/account", cert=olivia, timeout=30,
                        params={"id": OLIVIA_ACCOUNT, "filter": f"t:reference = '{probe}'"})
    assert shown.status_code == 200
    assert probe not in shown.text and "&lt;b onmouseover=alert(1)&gt;x&lt;/b&gt;" in shown.text
    bad_filter = session.get(f"{host.url}/web/bank/account", cert=olivia, timeout=30,
                             params={"id": OLIVIA_ACCOUNT, "filter": probe})
    assert bad_filter.status_code == 400 and "QueryError" in bad_filter.text and probe not in bad_filter.text
    unknown = session.get(f"{host.url}/web/nothing-here", timeout=30)
    assert unknown.status_code == 404 and "text/html" in unknown.headers["Content-Type"]
    hidden = session.get(f"{host.url}/web/bank/account", params={"id": "web\u202eolivia"}, cert=olivia, timeout=30)
    assert hidden.status_code == 400 and "U+202E" in hidden.text
    # counted in /metrics by page and status (the host's own loopback may scrape)
    from prometheus_client.parser import text_string_to_metric_families

    scraped = session.get(f"{host.url}/metrics", timeout=30)
    counted = {(sample.labels["page"], sample.labels["status"]): sample.value
               for family in text_string_to_metric_families(scraped.text) for sample in family.samples
               if sample.name == "gridcredit_web_pages_total"}
    assert counted[("/web/bank/accounts", "405")] == 3 and counted[("-", "404")] >= 1
    assert counted[("/web/bank/account", "400")] >= 2


# -- the market: the Auctioneer and the directory in one host ----------------------------------------

MARKET_HOST, MARKET_OWNER_ACCOUNT, CREDIT_UCPS = "web-host", "web-market-owner", 1_000_000


@pytest.fixture(scope="module")
def market(tmp_path_factory, pki):
    """A host selling one CPU (libvirt's test driver: no VM is made, the market and its money run) that
    registers itself in the directory it serves; Alice bids 2 cr/s, Bob 1 cr/s."""
    from gridcredit.security.credentials import load_credential
    from gridcredit.services.auctioneer.client import AuctioneerClient
    from gridcredit.services.bank.client import BankClient

    from bank_fixtures import BankHost, BankUsers
    from security_fixtures import free_port

    people = {name: pki.user(f"Web {name.title()}") for name in ("admin", "owner", "alice", "bob")}
    users = BankUsers(people["admin"], pki.user("Web Admin Two"), pki.user("Web Auditor"), (), (), (), (),
                      pki.user("Web Service"), pki.user("Web Stranger"))
    port = free_port()
    env = {"GRIDCREDIT_AUCTIONEER_HOST_ID": MARKET_HOST, "GRIDCREDIT_AUCTIONEER_CAPACITY_CPUS": "1",
           "GRIDCREDIT_AUCTIONEER_OWNER_ACCOUNT": MARKET_OWNER_ACCOUNT,
           "GRIDCREDIT_AUCTIONEER_OWNERS": people["owner"].dn, "GRIDCREDIT_AUCTIONEER_INTERVAL_S": "1",
           "GRIDCREDIT_AUCTIONEER_TEMPLATES": "small=spin", "GRIDCREDIT_AUCTIONEER_LIBVIRT_URI": "test:///default",
           "GRIDCREDIT_AUCTIONEER_DIRECTORY_URL": f"https://localhost:{port}"}
    host = BankHost(tmp_path_factory.mktemp("web-market") / "state", "embedded", users, pki, port=port, extra_env=env)
    host.start()
    try:
        admin = BankClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
        admin.create_account(MARKET_OWNER_ACCOUNT, project="market", owner_dn=people["owner"].dn)
        auctioneer_dn = load_credential(pki.host_cert, pki.host_key).identity_dn
        bids = {}
        for name, rate in (("alice", 2), ("bob", 1)):
            admin.create_account(f"web-{name}-market", project="market", owner_dn=people[name].dn)
            admin.mint(f"web-{name}-market", 100_000)
            bank = BankClient(host.url, credential=people[name].credential, trust_dir=pki.trust_dir)
            hold_id = bank.create_hold(f"web-{name}-market", amount=50_000, expires=timedelta(hours=1),
                                       collector_dn=auctioneer_dn,
                                       payee_account_id=MARKET_OWNER_ACCOUNT).transaction.hold_id
            bids[name] = AuctioneerClient(host.url, credential=people[name].credential, trust_dir=pki.trust_dir) \
                .place_bid(hold_id, template="small", rate_ucps=rate * CREDIT_UCPS, max_duration_s=3_000).bid_id
        yield host, people, bids
    finally:
        host.stop()


def wait_for_page(browser: Browser, address: str, ready, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        document = page(browser, address)
        if ready(document) or time.monotonic() > deadline:
            return document
        time.sleep(1)


def test_the_market_shows_prices_and_only_the_users_own_bids(market, tmp_path, pki):
    host, people, bids = market
    alice = Browser(tmp_path / "alice", pki.ca.directory / "ca.pem", people["alice"])

    def both_priced(document) -> bool:
        bars = document.xpath("//svg[@aria-label='Price of a CPU at each interval (µcr/s)']//rect[@class='bar']")
        return bool(bars) and bars[-1].get("data-value") == str(3 * CREDIT_UCPS)

    document = wait_for_page(alice, f"{host.url}/web/auctioneer/market", both_priced)
    assert both_priced(document), text_of(document)
    rows = document.xpath("//table[contains(@class,'bids')]/tbody/tr")
    assert [cells(row)[:4] for row in rows] == [[bids["alice"], "live", "2.000000", "66.66 %"]]
    assert bids["bob"] not in text_of(document)
    assert chart_bars(document, "Your live bids' shares of the host (%)") == [(bids["alice"], "66")]
    assert definitions(document, "host")["price now (cr/s per CPU)"] == "3.000000"

    def listed(document) -> bool:
        return bool(document.xpath("//table[contains(@class,'hosts')]/tbody/tr"))

    hosts = wait_for_page(alice, f"{host.url}/web/directory/hosts", listed)
    assert [cells(row)[:3] for row in hosts.xpath("//table[contains(@class,'hosts')]/tbody/tr")] == [
        [MARKET_HOST, "1", "3.000000"]]
    assert chart_bars(hosts, "Price now by host (µcr/s per CPU)") == [(MARKET_HOST, str(3 * CREDIT_UCPS))]
    # Bob sees his bid, not Alice's
    bob = Browser(tmp_path / "bob", pki.ca.directory / "ca.pem", people["bob"])
    theirs = page(bob, f"{host.url}/web/auctioneer/market")
    assert [cells(row)[0] for row in theirs.xpath("//table[contains(@class,'bids')]/tbody/tr")] == [bids["bob"]]
    # this host's JARM makes no reservations (no site account): no such page, and none in the navigation
    assert "No such page" in text_of(page(alice, f"{host.url}/web/jarm/reservations"))
    assert "/web/jarm/reservations" not in [a.get("href") for a in document.xpath("//nav//a")]
    shots = Path(os.environ.get("GRIDCREDIT_SCREENSHOT_DIR") or tmp_path)
    shot = alice.screenshot(f"{host.url}/web/auctioneer/market", shots / "web-market.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- JARM reservations ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jarm_site(tmp_path_factory, pki):
    """A site whose JARM reserves for Alice (two jobs, one released) and Bob (one job), as its controller
    (the host's certificate) reports them."""
    from gridcredit.security.credentials import load_credential
    from gridcredit.services.bank.client import BankClient
    from gridcredit.services.jarm.client import JarmClient
    from gridcredit.services.jarm.reservations import JobKey
    from gridcredit.services.jarm.types import JobRequest, Metric, Rate

    from bank_fixtures import BankUsers

    people = {name: pki.user(f"Web Jarm {name.title()}") for name in ("admin", "alice", "bob")}
    root = tmp_path_factory.mktemp("web-jarm")
    gridmap = root / "grid-mapfile"
    gridmap.write_text(f'"{people["alice"].dn}" gcuser1\n"{people["bob"].dn}" gcuser2\n')
    users = BankUsers(people["admin"], pki.user("Web Jarm Admin Two"), pki.user("Web Jarm Auditor"), (), (), (), (),
                      pki.user("Web Jarm Nobody"), pki.user("Web Jarm Nobody"))
    env = {"GRIDCREDIT_JARM_SITE": "c1", "GRIDCREDIT_JARM_PRICE_ADMINS": people["admin"].dn,
           "GRIDCREDIT_JARM_SITE_ACCOUNT": "web-site", "GRIDCREDIT_JARM_GRID_MAPFILE": str(gridmap)}
    with bank_host(root, "embedded", users, pki, extra_env=env) as host:
        bank = BankClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
        site_dn = load_credential(pki.host_cert, pki.host_key).dn
        bank.create_account("web-site", project="jarm", owner_dn=people["admin"].dn)
        for name in ("alice", "bob"):
            bank.create_account(f"web-{name}-jobs", project="jarm", owner_dn=people[name].dn)
            bank.mint(f"web-{name}-jobs", 100)
            BankClient(host.url, credential=people[name].credential, trust_dir=pki.trust_dir).grant_service(
                f"web-{name}-jobs", site_dn)
        prices = {Metric.CORE_WALL: 60 * CREDIT_UCPS, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0,
                  Metric.JOB: CREDIT_UCPS}
        JarmClient(host.url, credential=people["admin"].credential, trust_dir=pki.trust_dir).set_price_table(
            [Rate("batch", "normal", prices)], version=1)
        controller = JarmClient(host.url, credential=load_credential(pki.host_cert, pki.host_key), trust_dir=pki.trust_dir)
        job = JobRequest("batch", "normal", cores=1, time_limit_s=60, memory_mb=0, gpus=0, nodes=1)
        controller.reserve(JobKey("c1", 801), user="gcuser1", account="web-alice-jobs", request=job)
        controller.reserve(JobKey("c1", 802), user="gcuser1", account="web-alice-jobs", request=job)
        controller.cancel(JobKey("c1", 802))
        controller.reserve(JobKey("c1", 803), user="gcuser2", account="web-bob-jobs", request=job)
        yield host, people


def test_job_reservations_are_the_users_own(jarm_site, tmp_path, pki):
    host, people = jarm_site
    alice = Browser(tmp_path / "alice", pki.ca.directory / "ca.pem", people["alice"])
    document = page(alice, f"{host.url}/web/jarm/reservations")
    rows = [cells(row) for row in document.xpath("//table[contains(@class,'reservations')]/tbody/tr")]
    assert sorted((row[0], row[2], row[3]) for row in rows) == [("c1:801", "web-alice-jobs", "2"),
                                                                ("c1:802", "web-alice-jobs", "2")]
    # the states are what ListReservations answers her (the reconciler finds no such Slurm job and may release
    # job 801 at any moment: read after the page, it can only have moved on from what the page said)
    from gridcredit.services.jarm.client import JarmClient

    answered = {view.key.job_id: view.state for view in
                JarmClient(host.url, credential=people["alice"].credential, trust_dir=pki.trust_dir).reservations()}
    shown = {int(row[0].split(":")[1]): row[1] for row in rows}
    assert shown[802] == answered[802] == "released"
    assert shown[801] in ("held", answered[801])
    assert "c1:803" not in text_of(document) and "web-bob-jobs" not in text_of(document)
    bob = Browser(tmp_path / "bob", pki.ca.directory / "ca.pem", people["bob"])
    assert [cells(row)[0] for row in page(bob, f"{host.url}/web/jarm/reservations").xpath(
        "//table[contains(@class,'reservations')]/tbody/tr")] == ["c1:803"]
