"""Forwarding from a site LUTS to a higher-level LUTS (services/luts/forward.py).

In process: two LUTS cores on embedded stores, the upstream reached through an adapter with the
client's publish() (so outages and refusals can be staged exactly). Over the wire: two real hosts,
the site forwarding to the top with its host certificate; the top stopped and restarted.
"""
from __future__ import annotations

import dataclasses

import threading
import time

import pytest

from gridcredit.config import StoreConfig
from gridcredit.errors import GridcreditError, RemoteFault
from gridcredit.services.luts.forward import REJECTED, Forwarder, run_forwarder
from gridcredit.singleton import SingletonLock
from gridcredit.services.luts.luts import INDEXES, Caller, Luts, LutsPolicy
from gridcredit.xmlstore import open_store

from luts_fixtures import Job, make_batch, make_record, open_luts_store, random_jobs
from store_fixtures import basex_server  # noqa: F401

SITE_PUBLISHER = "/O=Grid/CN=Site Publisher"
SITE_HOST = "/O=Grid/CN=host/luts.site.example.org"
TOP_ADMIN = "/O=Grid/CN=Top Admin"


class Upstream:
    """The upstream LUTS as the forwarder's client sees it: publish() as the site host."""

    def __init__(self, luts: Luts) -> None:
        self.luts = luts
        self.down = False
        self.calls = 0

    def publish(self, document: bytes, *, replace: bool = False):
        self.calls += 1
        if self.down:
            raise GridcreditError("cannot reach https://top.example.org/luts: connection refused")
        return self.luts.publish(document, Caller(SITE_HOST), replace=replace)


def all_records(luts: Luts) -> dict:
    found, cursor = {}, None
    while True:
        page = luts.query(Caller(TOP_ADMIN), cursor=cursor, limit=1000)
        found.update((record.record_id, record) for record in page.records)
        if page.cursor is None:
            return found
        cursor = page.cursor


@pytest.fixture(params=["embedded", "basex"])
def pair(request, tmp_path):
    server = request.getfixturevalue("basex_server") if request.param == "basex" else None
    site_store = open_luts_store(request.param, tmp_path / "site", server)
    top_store = open_luts_store(request.param, tmp_path / "top", server)
    site = Luts(site_store, LutsPolicy(site_publishers={SITE_PUBLISHER: frozenset({"*"})}), forwarding=True)
    top = Luts(top_store, LutsPolicy(admins=frozenset({TOP_ADMIN}),
                                     site_publishers={SITE_HOST: frozenset({"ce1.example.org", "ce2.example.org"})}))
    upstream = Upstream(top)
    yield site, top, upstream
    site_store.close()
    top_store.close()


def test_records_arrive_upstream_once_with_their_original_bytes(pair):
    site, top, upstream = pair
    jobs = random_jobs(520, seed=21, machines=["ce1.example.org", "ce2.example.org"])
    batch = make_batch(jobs[:500])
    assert site.publish(batch, Caller(SITE_PUBLISHER)).ok
    for job in jobs[500:]:
        assert site.publish(make_record(job), Caller(SITE_PUBLISHER)).ok
    forwarder = Forwarder(site, lambda: upstream, batch_records=200)
    assert forwarder.queued() == 520
    report = forwarder.forward()
    assert report.stopped is None and report.entries_done == 520 and report.records_stored == 520
    assert forwarder.queued() == 0 and upstream.calls == 3
    stored = all_records(top)
    assert set(stored) == {job.record_id for job in jobs}
    for job in jobs[::37]:
        here = site.record(Caller(SITE_PUBLISHER), job.record_id)
        there = stored[job.record_id]
        assert there.original == here.original          # byte for byte, a whole document too (issue 11.7)
        assert there.usage == here.usage and there.publisher == SITE_HOST
    assert forwarder.forward().entries_done == 0            # nothing queued: nothing sent
    assert upstream.calls == 3


def test_an_upstream_outage_keeps_the_queue_and_a_later_round_sends_it(pair):
    site, top, upstream = pair
    jobs = random_jobs(300, seed=22, machines=["ce1.example.org"])
    site.publish(make_batch(jobs), Caller(SITE_PUBLISHER))
    forwarder = Forwarder(site, lambda: upstream, batch_records=100)
    calls = {"n": 0}
    real_publish = Upstream.publish

    def flaky(self, document, *, replace=False):               # the upstream dies after the first batch
        calls["n"] += 1
        if calls["n"] >= 2:
            raise GridcreditError("cannot reach the upstream: connection reset")
        return real_publish(self, document, replace=replace)

    upstream.publish = flaky.__get__(upstream)
    report = forwarder.forward()
    assert report.stopped and "connection reset" in report.stopped
    assert report.entries_done == 100 and forwarder.queued() == 200
    upstream.publish = real_publish.__get__(upstream)
    report = forwarder.forward()
    assert report.stopped is None and report.records_stored == 200 and forwarder.queued() == 0
    assert len(all_records(top)) == 300


def test_a_crash_before_the_queue_is_cleared_sends_duplicates_only(pair):
    site, top, upstream = pair
    jobs = random_jobs(50, seed=23, machines=["ce2.example.org"])
    site.publish(make_batch(jobs), Caller(SITE_PUBLISHER))
    forwarder = Forwarder(site, lambda: upstream)
    original = forwarder._settle

    def crash(tx, batch):
        raise KeyboardInterrupt("the worker died after the upstream acknowledged")

    forwarder._settle = crash
    with pytest.raises(KeyboardInterrupt):
        forwarder.forward()
    assert forwarder.queued() == 50 and len(all_records(top)) == 50
    forwarder._settle = original
    report = forwarder.forward()
    assert report.records_duplicate == 50 and report.records_stored == 0 and forwarder.queued() == 0


def test_records_the_upstream_refuses_are_set_aside_with_the_reason(pair):
    site, top, upstream = pair
    mine = random_jobs(5, seed=24, machines=["ce1.example.org"])
    others = random_jobs(3, seed=25, machines=["ce9.elsewhere.org"])    # the top does not take these from us
    site.publish(make_batch(mine + others), Caller(SITE_PUBLISHER))
    forwarder = Forwarder(site, lambda: upstream)
    report = forwarder.forward()
    assert report.records_stored == 5 and report.records_rejected == 3 and forwarder.queued() == 0
    rejected = site.store.scan(REJECTED)
    assert len(rejected) == 3 and all(b"ce9.elsewhere.org" in document.xml for document in rejected)
    assert forwarder.forward().entries_done == 0 and upstream.calls == 1       # not sent again


def test_a_replaced_record_replaces_its_old_version_upstream(pair):
    site, top, upstream = pair
    old = Job("rep-1", "/O=Grid/CN=Ann", "atlas", "ce1.example.org", None, None, 100, 10, None)
    new = dataclasses.replace(old, wall_s=999)
    site.publish(make_record(old), Caller(SITE_PUBLISHER))
    forwarder = Forwarder(site, lambda: upstream)
    assert forwarder.forward().records_stored == 1
    assert site.publish(make_record(new), Caller(SITE_PUBLISHER), replace=True).results[0].status == "replaced"
    # the old version queued again and the new one after it: both go, in order
    site.publish(make_record(new), Caller(SITE_PUBLISHER))
    report = forwarder.forward()
    assert report.stopped is None and report.records_rejected == 0 and forwarder.queued() == 0
    assert all_records(top)["rep-1"].usage.wall_us == 999_000_000
    assert top.summary(Caller(TOP_ADMIN), ["user"]).rows[0].wall_us == 999_000_000


def test_a_refused_publisher_stops_and_keeps_everything(pair):
    site, top, upstream = pair
    site.publish(make_batch(random_jobs(4, seed=26, machines=["ce1.example.org"])), Caller(SITE_PUBLISHER))

    class Refusing:
        def publish(self, document, *, replace=False):
            raise RemoteFault("soap:Client", "you may not publish usage records here", "NotAuthorized")

    report = Forwarder(site, Refusing).forward()
    assert "NotAuthorized" in report.stopped and Forwarder(site, Refusing).queued() == 4


def test_an_unreachable_upstream_client_is_made_again_next_round(pair):
    site, top, upstream = pair
    site.publish(make_record(random_jobs(1, seed=27, machines=["ce1.example.org"])[0]), Caller(SITE_PUBLISHER))
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise GridcreditError("cannot reach https://top.example.org/luts?wsdl")
        return upstream

    forwarder = Forwarder(site, factory)
    assert "cannot reach" in forwarder.forward().stopped
    assert forwarder.forward().records_stored == 1 and len(attempts) == 2


def test_one_forwarder_per_host(pair, tmp_path):
    site, top, upstream = pair
    site.publish(make_batch(random_jobs(20, seed=28, machines=["ce1.example.org"])), Caller(SITE_PUBLISHER))
    lock_file = tmp_path / "forwarder.lock"
    holder = SingletonLock(lock_file)
    assert holder.try_acquire()
    stop = threading.Event()
    thread = threading.Thread(target=run_forwarder, kwargs=dict(
        forwarder=Forwarder(site, lambda: upstream), interval_s=0.1, stop=stop, lock=SingletonLock(lock_file)))
    thread.start()
    time.sleep(0.5)
    assert upstream.calls == 0                      # another holds the lock: this one waits
    holder.release()
    deadline = time.monotonic() + 10
    while Forwarder(site, lambda: upstream).queued() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and len(all_records(top)) == 20


# -- two real hosts: a site LUTS forwarding to a top LUTS ------------------------------------------------


def test_config_of_forwarding_is_checked():
    from gridcredit.server.registry import load_config
    from gridcredit.errors import ConfigError

    config = load_config(env={"GRIDCREDIT_LUTS_FORWARD_TO": "https://top.example.org:8443"})
    assert config.luts.forward_to == "https://top.example.org:8443" and config.luts.forward_interval_s == 30
    for name, value in (("FORWARD_TO", "http://top.example.org"), ("FORWARD_INTERVAL_S", "0"),
                        ("FORWARD_BATCH_RECORDS", "20000")):
        with pytest.raises(ConfigError):
            load_config(env={f"GRIDCREDIT_LUTS_{name}": value})


def wait_for(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_a_site_host_forwards_to_a_top_host_and_catches_up_after_an_outage(pki, tmp_path):
    import json
    from collections import Counter

    from gridcredit.services.luts.client import LutsClient

    from bank_fixtures import BankUsers, bank_host

    publisher, admin = pki.user("Forward Site Publisher"), pki.user("Forward Top Admin")
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    machine = "fwd.site.example.org"
    top_env = {"GRIDCREDIT_LUTS_ADMINS": admin.dn,          # the site host's certificate may publish here
               "GRIDCREDIT_LUTS_SITE_PUBLISHERS": json.dumps({pki.host_credential().dn: ["*"]})}
    with bank_host(tmp_path / "top", "embedded", users, pki, extra_env=top_env) as top:
        site_env = {"GRIDCREDIT_LUTS_ADMINS": admin.dn,
                    "GRIDCREDIT_LUTS_SITE_PUBLISHERS": json.dumps({publisher.dn: ["*"]}),
                    "GRIDCREDIT_LUTS_FORWARD_TO": top.url, "GRIDCREDIT_LUTS_FORWARD_INTERVAL_S": "1",
                    "GRIDCREDIT_LUTS_FORWARD_BATCH_RECORDS": "100"}
        with bank_host(tmp_path / "site", "embedded", users, pki, extra_env=site_env) as site:
            to_site = LutsClient(site.url, credential=publisher.credential, trust_dir=pki.trust_dir, timeout_s=60)
            at_top = LutsClient(top.url, credential=admin.credential, trust_dir=pki.trust_dir, timeout_s=60)

            def upstream() -> Counter:
                return Counter(r.record_id for r in at_top.query_all("@machine = $m", {"m": machine}, page_size=1000))

            first = random_jobs(260, seed=41, prefix="fwd", machines=[machine])
            assert to_site.publish(make_batch(first[:250])).ok
            for job in first[250:]:
                assert to_site.publish(make_record(job)).ok
            wait_for(lambda: len(upstream()) == 260, "the first records at the top")

            top.stop()                                         # the top goes away; the site keeps taking records
            second = random_jobs(140, seed=42, prefix="fwd-later", machines=[machine])
            assert to_site.publish(make_batch(second)).ok
            wait_for(lambda: "forwarding to the upstream LUTS stopped" in site.log_text(), "a failed round")
            top.start()
            wait_for(lambda: len(upstream()) == 400, "the records published during the outage", timeout_s=90)

            assert upstream() == Counter(job.record_id for job in first + second)       # each once
            (row,) = [row for row in at_top.summary(["machine"]).rows if row.key["machine"] == machine]
            assert row.jobs == 400
            at_site = LutsClient(site.url, credential=admin.credential, trust_dir=pki.trust_dir, timeout_s=60)
            for job in (first[0], first[255]):                 # from a batch, and a whole document
                here, there = at_site.record(job.record_id), at_top.record(job.record_id)
                assert there.original == here.original and there.usage == here.usage     # byte for byte (11.7)
                assert there.publisher == pki.host_credential().dn
        with open_store(StoreConfig(backend="embedded"), site.state_dir, indexes=INDEXES, read_only=True) as store:
            assert store.scan(Luts.FORWARD_QUEUE) == [] and store.scan(REJECTED) == []
