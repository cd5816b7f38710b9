"""Documents the LUTS holds for its operator: list, show, retry, drop (core and CLI, both stores)."""
from __future__ import annotations

import json

import pytest

from gridcredit.errors import DomainError
from gridcredit.services.luts import held
from gridcredit.services.luts.forward import Forwarder
from gridcredit.services.luts.luts import Caller, Luts, LutsPolicy
from gridcredit.services.luts.sgas import QUARANTINE, register_usage_records

from luts_fixtures import make_batch, open_luts_store, random_jobs
from store_fixtures import basex_server  # noqa: F401

HOST = "/O=Grid/CN=host/ce1.example.org"
HOST_CALLER = Caller(HOST, host_names=("ce1.example.org",))    # what a host certificate of ce1 proves
SITE_PUBLISHER = "/O=Grid/CN=Site Publisher"
SITE_HOST = "/O=Grid/CN=host/luts.site.example.org"
ADMIN = "/O=Grid/CN=LUTS Admin"


@pytest.fixture(params=["embedded", "basex"])
def backend(request, tmp_path):
    server = request.getfixturevalue("basex_server") if request.param == "basex" else None
    opened = []

    def open_luts(name: str, policy: LutsPolicy, **options) -> Luts:
        store = open_luts_store(request.param, tmp_path / name, server)
        opened.append(store)
        return Luts(store, policy, **options)
    yield open_luts
    for store in opened:
        store.close()


def _unreadable_post(jobs) -> bytes:
    # ARC 6.17 writes a job name with an unescaped '&': the whole document cannot be read
    return make_batch(jobs).replace(b"</ur:JobUsageRecord>", b"<ur:JobName>a & b</ur:JobName></ur:JobUsageRecord>", 1)


def test_an_unreadable_sgas_post_is_listed_shown_retried_corrected_and_leaves(backend):
    luts = backend("luts", LutsPolicy(admins=frozenset({ADMIN})))
    jobs = random_jobs(4, seed=71, machines=["ce1.example.org"])
    posted = _unreadable_post(jobs)
    assert register_usage_records(luts, posted, HOST_CALLER).status == "200 OK"
    [one] = held.list_held(luts)
    assert one.kind == "sgas" and one.publisher == HOST and one.size_bytes == len(posted)
    assert "not well-formed" in one.reasons[0] or "read" in one.reasons[0]
    assert held.show(luts, "sgas", one.held_id) == (one, posted)                # byte for byte

    with pytest.raises(DomainError, match="still not stored"):
        held.retry_sgas(luts, one.held_id)                                       # still unreadable: kept
    assert [h.held_id for h in held.list_held(luts)] == [one.held_id]

    report = held.retry_sgas(luts, one.held_id, posted.replace(b"a & b", b"a &amp; b"))
    assert [r.status for r in report.results] == ["stored"] * 4
    assert held.list_held(luts) == [] and luts.store.get(QUARANTINE, one.held_id) is None
    assert {r.record_id for r in luts.query(Caller(ADMIN), limit=10).records} == {j.record_id for j in jobs}


def test_a_retry_publishes_with_the_original_publishers_rights_only(backend):
    luts = backend("luts", LutsPolicy(admins=frozenset({ADMIN})))
    elsewhere = random_jobs(2, seed=72, machines=["ce7.other.org"])              # not the posting host's machine
    register_usage_records(luts, _unreadable_post(elsewhere), HOST_CALLER)
    [one] = held.list_held(luts, ("sgas",))
    _, posted = held.show(luts, "sgas", one.held_id)
    report = held.retry_sgas(luts, one.held_id, posted.replace(b"a & b", b"a and b"))
    assert [r.status for r in report.results] == ["refused", "refused"] and not report.ok
    assert luts.query(Caller(ADMIN), limit=10).records == ()
    assert held.list_held(luts) == []           # it was read: each record has its answer, nothing is held


def test_records_the_upstream_rejected_are_queued_again_or_dropped(backend):
    site = backend("site", LutsPolicy(site_publishers={SITE_PUBLISHER: frozenset({"*"})}), forwarding=True)
    top_policy = LutsPolicy(admins=frozenset({ADMIN}), site_publishers={SITE_HOST: frozenset({"ce1.example.org"})})
    top = backend("top", top_policy)

    class Upstream:
        def publish(self, document: bytes, *, replace: bool = False):
            return top.publish(document, Caller(SITE_HOST), replace=replace)

    others = random_jobs(3, seed=73, machines=["ce9.elsewhere.org"])
    site.publish(make_batch(others), Caller(SITE_PUBLISHER))
    forwarder = Forwarder(site, Upstream)
    assert forwarder.forward().records_rejected == 3
    listed = held.list_held(site, ("forward",))
    assert len(listed) == 3 and all("ce9.elsewhere.org" in h.reasons[0] for h in listed)

    top.policy = LutsPolicy(admins=frozenset({ADMIN}),          # the upstream operator allows ce9 now
                            site_publishers={SITE_HOST: frozenset({"ce1.example.org", "ce9.elsewhere.org"})})
    held.retry_forward(site, listed[0].held_id)
    held.retry_forward(site, listed[1].held_id)
    held.drop(site, "forward", listed[2].held_id)
    assert held.list_held(site) == [] and forwarder.queued() == 2
    report = forwarder.forward()
    assert report.records_stored == 2 and report.records_rejected == 0 and forwarder.queued() == 0
    assert len(top.query(Caller(ADMIN), limit=10).records) == 2

    with pytest.raises(DomainError, match="no held document"):
        held.drop(site, "forward", listed[2].held_id)
    with pytest.raises(DomainError, match="no held document"):
        held.retry_forward(site, "nothing-here")
    with pytest.raises(DomainError, match="not a kind"):
        held.list_held(site, ("spool",))


def test_the_operator_cli_on_the_local_store(tmp_path, monkeypatch, capsys):
    from gridcredit.cli import main
    from gridcredit.config import load_config
    from gridcredit.runtime import open_service_store

    state = tmp_path / "state"
    monkeypatch.setenv("GRIDCREDIT_STATE_DIR", str(state))
    monkeypatch.setenv("GRIDCREDIT_STORE_BACKEND", "embedded")
    config_file = tmp_path / "gridcredit.toml"
    config_file.write_text("")
    store = open_service_store(load_config(str(config_file)))
    jobs = random_jobs(2, seed=74, machines=["ce1.example.org"])
    posted = _unreadable_post(jobs)
    register_usage_records(Luts(store, LutsPolicy()), posted, HOST_CALLER)
    store.close()

    assert main(["--config", str(config_file), "luts", "held", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "sgas" and listed["publisher"] == HOST
    held_id = listed["held_id"]
    out = tmp_path / "posted.xml"
    assert main(["--config", str(config_file), "luts", "held", "show", "sgas", held_id, "--output", str(out)]) == 0
    assert out.read_bytes() == posted
    capsys.readouterr()
    assert main(["--config", str(config_file), "luts", "held", "retry", "sgas", held_id]) == 1   # still unreadable
    assert "still not stored" in capsys.readouterr().err
    fixed = tmp_path / "fixed.xml"
    fixed.write_bytes(posted.replace(b"a & b", b"a &amp; b"))
    assert main(["--config", str(config_file), "luts", "held", "retry", "sgas", held_id, "--corrected", str(fixed)]) == 0
    assert "stored 2" in capsys.readouterr().out
    assert main(["--config", str(config_file), "luts", "held", "list"]) == 0
    assert capsys.readouterr().out.strip() == "nothing is held"
    assert main(["--config", str(config_file), "luts", "held", "drop", "sgas", held_id]) == 1
    with pytest.raises(SystemExit) as usage:
        main(["--config", str(config_file), "luts", "held", "retry", "forward", held_id, "--corrected", str(fixed)])
    assert usage.value.code == 2
