"""Documents the LUTS holds for its operator: list, show, retry, drop (core and CLI, both stores)."""
from __future__ import annotations

import json

import pytest

from gridcredit.errors import DomainError
from gridcredit.services.luts import held
from gridcredit.services.luts.forward import Forwarder
from gridcredit.services.luts.luts import Caller, Luts, LutsPolicy
from gridcredit.services.luts.sgas import QUARANTINE, REFUSED, register_usage_records

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
    assert held.list_held(luts, ("sgas",)) == []        # it was read: each record has its answer, and the
    refused = held.list_held(luts, ("record",))         # refused ones are held, each with its reason (issue 11.3)
    assert sorted(h.record_id for h in refused) == sorted(j.record_id for j in elsewhere)
    assert all("ce7.other.org" in h.reasons[0] and h.publisher == HOST for h in refused)


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
    from gridcredit.server.cli import main
    from gridcredit.server.registry import load_config
    from gridcredit.server.registry import open_service_store

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


# -- issue 11.2: an unreadable post of any size up to the request limit is kept --------------------


def _held_luts(backend, tmp_path, name: str = "luts") -> Luts:
    luts = backend(name, LutsPolicy(admins=frozenset({ADMIN})))
    luts.held_dir = tmp_path / f"{name}-held"            # what the runtime sets: <state>/luts/held
    return luts


def _held_files(luts: Luts) -> list:
    return sorted(p.name for p in luts.held_dir.rglob("*.xml")) if luts.held_dir.exists() else []


def test_an_unreadable_post_of_several_megabytes_is_kept_shown_retried_and_dropped(backend, tmp_path):
    from sgas_posts import arc_post, arc_record
    luts = _held_luts(backend, tmp_path)
    records = [arc_record(f"big{n}", "ce1.example.org", transfers=700) for n in range(25)]
    records[3] = arc_record("big3", "ce1.example.org", transfers=700, job_name="a & b")   # ARC escapes nothing
    posted = arc_post(records).encode()
    assert len(posted) > 5_000_000                        # over the store's document limit once base64'd
    answer = register_usage_records(luts, posted, HOST_CALLER)
    assert answer.status == "200 OK" and f"{QUARANTINE}/" in answer.body, answer.body
    [one] = held.list_held(luts)
    assert one.kind == "sgas" and one.size_bytes == len(posted) and "not well-formed" in one.reasons[0]
    assert held.show(luts, "sgas", one.held_id) == (one, posted)               # byte for byte
    assert len(_held_files(luts)) == 1

    with pytest.raises(DomainError, match="still not stored"):
        held.retry_sgas(luts, one.held_id)
    report = held.retry_sgas(luts, one.held_id, posted.replace(b"a & b", b"a &amp; b"))
    assert [r.status for r in report.results] == ["stored"] * 25
    assert held.list_held(luts) == [] and _held_files(luts) == []

    again = posted.replace(b"big", b"bag")                                     # another one, dropped
    register_usage_records(luts, again, HOST_CALLER)
    [other] = held.list_held(luts)
    held.drop(luts, "sgas", other.held_id)
    assert held.list_held(luts) == [] and _held_files(luts) == []


def test_an_unreadable_post_too_large_to_keep_is_answered_so_the_reporter_keeps_it(backend):
    from sgas_posts import arc_post, arc_record
    luts = backend("luts", LutsPolicy(admins=frozenset({ADMIN})))     # no held directory: cannot keep big ones
    posted = arc_post([arc_record("nowhere", "ce1.example.org", transfers=5000, job_name="a & b")]).encode()
    answer = register_usage_records(luts, posted, HOST_CALLER)
    assert answer.status.startswith("503") and "send it again later" in answer.body
    assert held.list_held(luts) == []


# -- issue 11.3: records refused one by one inside an accepted post are kept -------------------------


def test_records_not_stored_from_an_accepted_post_are_held_with_their_reason(backend, tmp_path):
    from sgas_posts import URF, arc_post, arc_record
    luts = _held_luts(backend, tmp_path)
    machine = "ce1.example.org"
    records = {
        "good": arc_record("good", machine),
        "dot": arc_record("dot", machine + "."),                              # normalized: stored
        "port": arc_record("port", machine + ":2811"),                         # normalized: stored
        "elsewhere": arc_record("elsewhere", "ce7.other.org"),                 # not the certificate's machine
        "duration": arc_record("duration", machine, wall="PT10X"),             # not a duration
        "no-id": arc_record("no-id", machine, record_id=None),                 # no RecordIdentity
        "foreign": arc_record("foreign", machine, namespace="urn:example:not-usage-records"),
        "oversize": arc_record("oversize", machine, transfers=4000),           # over a record's 1 MiB
    }
    posted = arc_post(list(records.values())).encode()
    answer = register_usage_records(luts, posted, HOST_CALLER)
    assert answer.status == "200 OK" and answer.body.startswith("stored 3, already stored 0, not stored 5 of 8")
    assert answer.body.count(f"kept as {REFUSED}/") == 5, answer.body

    stored = {r.record_id: r for r in luts.query(Caller(ADMIN), limit=20).records}
    assert set(stored) == {f"ur-{machine}-good", f"ur-{machine}.-dot", f"ur-{machine}:2811-port"}
    assert {r.usage.machine for r in stored.values()} == {machine}
    assert any("was read as 'ce1.example.org'" in w for w in stored[f"ur-{machine}:2811-port"].usage.warnings)

    kept = held.list_held(luts, ("record",))
    assert len(kept) == 5 and all(h.publisher == HOST for h in kept)
    reasons = {h.record_id: h.reasons[0] for h in kept}
    assert "ce7.other.org" in reasons["ur-ce7.other.org-elsewhere"] and "refused" in reasons["ur-ce7.other.org-elsewhere"]
    assert "WallDuration" in reasons[f"ur-{machine}-duration"]
    assert "bytes; at most" in reasons[f"ur-{machine}-oversize"]
    assert "no RecordIdentity" in reasons[""]
    assert "not a usage-record namespace" in reasons[f"ur-{machine}-foreign"]
    by_rid = {h.record_id: h for h in kept}
    _, content = held.show(luts, "record", by_rid[f"ur-{machine}-duration"].held_id)
    assert b"PT10X" in content and content.startswith(b"<JobUsageRecord") and f'xmlns="{URF}"'.encode() in content
    assert [p for p in _held_files(luts)] and len(_held_files(luts)) == 1      # the oversize one is a file

    # the reporter sends the batch again (ARC: new createTimes): stored ones are duplicates, nothing held twice
    again = posted.replace(b"2026-11-23T00:29:53Z", b"2026-11-24T10:00:00Z")
    answer = register_usage_records(luts, again, HOST_CALLER)
    assert answer.body.startswith("stored 0, already stored 3, not stored 5 of 8")
    assert sorted(h.held_id for h in held.list_held(luts, ("record",))) == sorted(h.held_id for h in kept)

    # retry: unchanged it is refused again and stays; corrected it is stored as its publisher and leaves
    report = held.retry_record(luts, by_rid["ur-ce7.other.org-elsewhere"].held_id)
    assert [r.status for r in report.results] == ["refused"]
    fixed = content.replace(b"PT10X", b"PT10M")
    report = held.retry_record(luts, by_rid[f"ur-{machine}-duration"].held_id, fixed)
    assert [r.status for r in report.results] == ["stored"]
    assert luts.record(Caller(ADMIN), f"ur-{machine}-duration").publisher == HOST
    _, big = held.show(luts, "record", by_rid[f"ur-{machine}-oversize"].held_id)
    held.drop(luts, "record", by_rid[f"ur-{machine}-oversize"].held_id)
    assert _held_files(luts) == [] and len(big) > 1_048_576
    assert len(held.list_held(luts, ("record",))) == 3


def test_a_held_record_retried_for_a_machine_its_publisher_may_not_publish_for_stays(backend, tmp_path):
    from sgas_posts import arc_post, arc_record
    luts = _held_luts(backend, tmp_path)
    register_usage_records(luts, arc_post([arc_record("x", "ce7.other.org")]).encode(), HOST_CALLER)
    [one] = held.list_held(luts, ("record",))
    _, content = held.show(luts, "record", one.held_id)
    report = held.retry_record(luts, one.held_id, content.replace(b"ce7.other.org</", b"ce9.other.org</"))
    assert [r.status for r in report.results] == ["refused"]              # the original publisher's rights only
    assert [h.held_id for h in held.list_held(luts, ("record",))] == [one.held_id]
    assert luts.query(Caller(ADMIN), limit=10).records == ()


def test_the_operator_cli_lists_shows_retries_and_drops_held_records(tmp_path, monkeypatch, capsys):
    """Issue 11.3 through `gridcredit luts held`: the records of an accepted post that were not stored."""
    from gridcredit.server.cli import main
    from gridcredit.server.registry import load_config
    from gridcredit.server.registry import open_service_store
    from gridcredit.services.luts.runtime import luts_held_dir
    from sgas_posts import arc_post, arc_record

    monkeypatch.setenv("GRIDCREDIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GRIDCREDIT_STORE_BACKEND", "embedded")
    config_file = tmp_path / "gridcredit.toml"
    config_file.write_text("")
    config = load_config(str(config_file))
    store = open_service_store(config)
    posted = arc_post([arc_record("ok", "ce1.example.org"), arc_record("late", "ce1.example.org", wall="ten minutes"),
                       arc_record("huge", "ce1.example.org", transfers=4000)]).encode()
    answer = register_usage_records(Luts(store, LutsPolicy(), held_dir=luts_held_dir(config)), posted, HOST_CALLER)
    store.close()
    assert answer.body.startswith("stored 1, already stored 0, not stored 2 of 3")

    cli = ["--config", str(config_file), "luts", "held"]
    assert main(cli + ["list", "--kind", "record", "--json"]) == 0
    listed = {h["record_id"]: h for h in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"ur-ce1.example.org-late", "ur-ce1.example.org-huge"}
    assert "WallDuration" in listed["ur-ce1.example.org-late"]["reasons"][0]
    late, huge = listed["ur-ce1.example.org-late"]["held_id"], listed["ur-ce1.example.org-huge"]["held_id"]
    out = tmp_path / "late.xml"
    assert main(cli + ["show", "record", late, "--output", str(out)]) == 0
    assert b"ten minutes" in out.read_bytes()
    capsys.readouterr()
    assert main(cli + ["retry", "record", late]) == 1                     # unchanged: still invalid, still held
    assert "is still held" in capsys.readouterr().out
    fixed = tmp_path / "fixed.xml"
    fixed.write_bytes(out.read_bytes().replace(b"ten minutes", b"PT10M"))
    assert main(cli + ["retry", "record", late, "--corrected", str(fixed)]) == 0
    assert "stored 1" in capsys.readouterr().out
    assert main(cli + ["show", "record", huge, "--output", str(tmp_path / "huge.xml")]) == 0
    assert (tmp_path / "huge.xml").stat().st_size > 1_048_576
    assert main(cli + ["drop", "record", huge]) == 0
    capsys.readouterr()
    assert main(cli + ["list"]) == 0 and capsys.readouterr().out.strip() == "nothing is held"
    assert list(luts_held_dir(config).rglob("*.xml")) == []
