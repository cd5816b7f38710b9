"""GET /metrics (issue 15, point 6): a real two-worker host is scraped with prometheus_client's own
parser before and after known traffic; the counters moved by exactly that traffic, whichever worker
served each request or the scrape. Only configured addresses or certificate DNs may scrape."""
from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from bank_fixtures import bank_host, bank_users
from store_fixtures import private_basex  # noqa: F401 — fixture
from security_fixtures import https_session, parse, signed_request

from gridcredit.errors import RemoteFault


def scrape(host, session=None, **options) -> dict[tuple, float]:
    """Every sample of the host's /metrics: (name, sorted labels) → value."""
    answer = (session or https_session(host.pki.trust_dir)).get(f"{host.url}/metrics", timeout=30, **options)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def moved(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def tampered_whoami(credential) -> bytes:
    """A signed request whose body changed after signing: WS-Security refuses it (wsse:FailedCheck)."""
    return signed_request(credential).replace(b"WhoAmI", b"WhoAmi", 2)


def test_the_counters_move_by_exactly_the_traffic_sent(tmp_path, pki):
    users = bank_users(pki)
    with bank_host(tmp_path, "embedded", users, pki) as host:
        before = scrape(host)
        for _ in range(3):   # a client each: new connections, so both workers serve some
            client = host.client(users.admin)
            client.whoami()
            client.close()
        session = https_session(pki.trust_dir)
        codes = []
        for _ in range(2):
            answer = session.post(f"{host.url}/bank", data=tampered_whoami(users.admin.credential),
                                  headers={"Content-Type": "text/xml; charset=utf-8"}, timeout=30)
            assert answer.status_code == 500
            codes.append(parse(answer.content).findtext(".//faultcode"))
        assert len(set(codes)) == 1 and codes[0].startswith("wsse:"), codes
        client = host.client(users.admin)
        try:
            client.call("GetBalance", account_id="no-such-account")
            raise AssertionError("an unknown account was answered")
        except RemoteFault:
            pass
        finally:
            client.close()
        after = scrape(host)
        deadline = time.monotonic() + 15      # the sweep runs every second: wait for one if none ran yet
        while moved(before, after, "gridcredit_expiry_sweeps_total", service="bank") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
            after = scrape(host)

    assert moved(before, after, "gridcredit_requests_total", service="bank", operation="WhoAmI", outcome="ok") == 3
    assert moved(before, after, "gridcredit_request_seconds_count", service="bank", operation="WhoAmI") == 3
    assert moved(before, after, "gridcredit_requests_total", service="bank", operation="-", outcome="security") == 2
    assert moved(before, after, "gridcredit_security_refusals_total", code=codes[0]) == 2
    assert moved(before, after, "gridcredit_requests_total", service="bank", operation="GetBalance", outcome="fault") == 1
    # nothing else was counted as a request
    total = sum(value for (name, _), value in after.items() if name == "gridcredit_requests_total")
    assert total - sum(value for (name, _), value in before.items() if name == "gridcredit_requests_total") == 6
    assert after[("gridcredit_store_backlog_transactions", ())] == 0     # the embedded store has none
    assert moved(before, after, "gridcredit_expiry_sweeps_total", service="bank") >= 1   # sweep_s=1


def test_only_configured_addresses_and_dns_may_scrape(tmp_path, pki):
    users = bank_users(pki)
    watcher, stranger = pki.user("Metrics Watcher"), pki.user("Metrics Stranger")
    settings = {"GRIDCREDIT_SERVER_METRICS_ADDRESSES": "192.0.2.0/24", "GRIDCREDIT_SERVER_METRICS_DNS": watcher.dn}
    with bank_host(tmp_path, "embedded", users, pki, extra_env=settings) as host:
        session = https_session(pki.trust_dir)
        nobody = session.get(f"{host.url}/metrics", timeout=30)
        assert nobody.status_code == 403 and "server.metrics_addresses" in nobody.text
        assert session.get(f"{host.url}/metrics", cert=(str(stranger.cert_path), str(stranger.key_path)),
                           timeout=30).status_code == 403
        assert "gridcredit_store_backlog_bytes" in {
            name for name, _ in scrape(host, cert=(str(watcher.cert_path), str(watcher.key_path)))}
        assert session.post(f"{host.url}/metrics", data=b"x", timeout=30).status_code == 405


def _count_in_memory_then_in_files(directory: str) -> None:
    """A forked child: what `serve` does after a host ran in the same process (tests, `run_worker`)."""
    import os
    from pathlib import Path

    from gridcredit import metrics

    code = 1
    try:
        metrics.counter("gridcredit_test_total", "a counter", ("k",)).labels("a").inc()   # in memory
        metrics.use_directory(Path(directory))
        metrics.counter("gridcredit_test_total", "a counter", ("k",)).labels("a").inc(2)  # in the files
        samples = {(s.name, tuple(s.labels.items())): s.value
                   for family in text_string_to_metric_families(metrics.exposition().decode()) for s in family.samples}
        code = 0 if samples.get(("gridcredit_test_total", (("k", "a"),))) == 2 else 3
    finally:
        os._exit(code)


def test_counting_in_files_after_counting_in_memory_in_the_same_process(tmp_path):
    """`serve` forked from a process that had counted in memory (its registry already named the metrics)
    answered every request 500: making the file-backed counter registered the same name twice."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=_count_in_memory_then_in_files,
                                                        args=(str(tmp_path / "metrics"),))
    child.start()
    child.join(60)
    assert child.exitcode == 0


def test_the_store_lag_in_seconds_is_how_long_the_oldest_waiting_commit_has_waited(private_basex, tmp_path):
    """BaseX stands still (SIGSTOP) for 2 s after a commit: the scrape's gridcredit_store_lag_seconds
    says about 2 (not only the backlog's count), and 0 once BaseX has applied it."""
    import os
    import signal

    from gridcredit import metrics
    from gridcredit.xmlstore._basex import BaseXStore

    def scraped(store) -> dict[str, float]:
        text = metrics.exposition(metrics.store_gauges(store.backlog())).decode()
        return {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name.startswith("gridcredit_store_")}

    store = BaseXStore(tmp_path / "journal", port=private_basex.port, db_prefix="lag_", timeout_s=10)
    try:
        store.put("acc", "first", b"<d/>")
        assert store.wait_verified(30)
        deadline = time.monotonic() + 30
        while store.backlog().transactions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scraped(store)["gridcredit_store_lag_seconds"] == 0
        os.kill(private_basex.process.pid, signal.SIGSTOP)
        try:
            store.put("acc", "waiting", b"<d/>")
            time.sleep(1.2)
            store.put("acc", "later", b"<d/>")        # a newer commit does not make the oldest younger
            time.sleep(1.0)
            behind = scraped(store)
        finally:
            os.kill(private_basex.process.pid, signal.SIGCONT)
        assert behind["gridcredit_store_backlog_transactions"] == 2
        assert 2.0 <= behind["gridcredit_store_lag_seconds"] <= 3.5, behind
        deadline = time.monotonic() + 30
        while store.backlog().transactions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scraped(store)["gridcredit_store_lag_seconds"] == 0
    finally:
        store.close()
