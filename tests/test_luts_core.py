"""The LUTS core (services/luts/luts.py) on both stores: publish, idempotency, scoping, summaries."""
from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from pathlib import Path

import pytest

from gridcredit.errors import DomainError, QueryError
from gridcredit.services.luts import records as ur
from gridcredit.services.luts.luts import Caller, Luts, LutsPolicy, canonical_dn, job_key

from luts_fixtures import USERS, Job, make_batch, make_record, open_luts_store, random_jobs
from store_fixtures import basex_server  # noqa: F401

SAMPLES = Path(__file__).parent / "data" / "ur-samples"   # other projects' usage records: see its SOURCES.md
ADMIN = "/O=Grid/CN=LUTS Admin"
SITE_ADMIN = "/O=Grid/CN=Site Admin"
MANAGER = "/O=Grid/CN=Atlas Manager"
HOST = "/O=Grid/CN=host/ce1.example.org"
HOST_CALLER = Caller(HOST, host_names=("ce1.example.org",))    # what a host certificate of ce1 proves
HOST2 = "/O=Grid/CN=host/ce2.example.org"
HOST2_CALLER = Caller(HOST2, host_names=("ce2.example.org",))
CE1_ADMIN = "/O=Grid/CN=Ce1 Site Admin"                 # a site administrator of ce1 only
ANY_PUBLISHER = "/O=Grid/CN=Any Publisher"
POLICY = LutsPolicy(admins=frozenset({ADMIN}), vo_managers={MANAGER: frozenset({"atlas"})},
                    site_publishers={SITE_ADMIN: frozenset({"ce1.example.org", "ce2.example.org"}),
                                     CE1_ADMIN: frozenset({"ce1.example.org"}),
                                     ANY_PUBLISHER: frozenset({"*"})})


@pytest.fixture(params=["embedded", "basex"])
def luts(request, tmp_path):
    server = request.getfixturevalue("basex_server") if request.param == "basex" else None
    store = open_luts_store(request.param, tmp_path / "s", server)
    yield Luts(store, POLICY)
    store.close()


def stored_all(luts: Luts) -> list:
    found, cursor = [], None
    while True:
        page = luts.query(Caller(ADMIN), cursor=cursor, limit=1000)
        found.extend(page.records)
        if page.cursor is None:
            return found
        cursor = page.cursor


# -- helpers -----------------------------------------------------------------------------------------


def test_dn_forms():
    assert canonical_dn("CN=Alice,O=Grid") == "/O=Grid/CN=Alice"
    assert canonical_dn("CN=Smith\\, John, O=Grid") == "/O=Grid/CN=Smith, John"
    assert canonical_dn("/O=Grid/CN=Alice") == "/O=Grid/CN=Alice"
    assert canonical_dn("alice") == "alice"


def test_a_host_is_what_its_certificate_was_issued_for_never_a_dns_text(luts):
    """Issue 10.6: the machines a host publishes for are its certificate's host names (Caller.host_names)."""
    job = Job("r-host", USERS[0], "atlas", "ce1.example.org", "short", None, 100, 50, "1")
    for dn in ("/O=Grid/CN=ce1.example.org", HOST):                    # a user certificate with a host-like CN
        with pytest.raises(DomainError) as error:
            luts.publish(make_record(job), Caller(dn))
        assert error.value.code == "NotAuthorized"
        assert luts.query(Caller(dn), limit=1).scope == "own"                   # and it sees no site's records
    renamed = Caller("/O=Grid/CN=gateway.example.org", host_names=("CE1.example.org",))   # CN ≠ SAN: the SAN counts
    assert luts.publish(make_record(job), renamed).results[0].status == "stored"
    elsewhere = dataclasses.replace(job, record_id="r-host-2", machine="gateway.example.org")
    assert luts.publish(make_record(elsewhere), renamed).results[0].status == "refused"
    assert POLICY.publish_machines(renamed) == {"ce1.example.org"}
    assert dataclasses.replace(POLICY, host_publishers=False).publish_machines(renamed) is None


# -- publish -----------------------------------------------------------------------------------------


def test_every_sample_ingests_and_keeps_its_original_bytes(luts):
    for path in sorted(SAMPLES.glob("*.xml")):
        if path.name.endswith(".xsd") or "urf.xsd" in path.name:
            continue
        data = path.read_bytes()
        report = luts.publish(data, Caller(ANY_PUBLISHER))
        assert report.ok and report.count("stored") == len(ur.split_records(data)), (path.name, report)
        for source, result in zip(ur.split_records(data), report.results):
            stored = luts.record(Caller(ADMIN), result.record_id)
            assert stored.original == source.data
            assert stored.usage == ur.read_source(source)
            assert stored.publisher == ANY_PUBLISHER
    again = luts.publish((SAMPLES / "sgas-luts3-CUR-usagerecords-set.xml").read_bytes(), Caller(ANY_PUBLISHER))
    assert [r.status for r in again.results] == ["duplicate", "duplicate"]


def test_whole_files_batched_by_the_client_keep_their_original_bytes(luts):
    """Issue 11.7: files the client batches (spool.packing) are kept byte for byte — declaration,
    byte-order mark, comments and whitespace around the record — and the same record as alone."""
    from gridcredit.services.luts.spool import container, packing

    def root(job: Job) -> bytes:
        return make_record(job).split(b"\n", 1)[1].rstrip(b"\n")
    jobs = [Job(f"r-orig-{n}", USERS[1], "atlas", "ce1.example.org", None, None, 10 + n, 5, None) for n in range(4)]
    files = [b'<?xml version="1.0" encoding="UTF-8"?>\n' + root(jobs[0]) + b"\n",
             b"\xef\xbb\xbf<?xml version='1.0'?>\r\n<!-- by a test -->\r\n<?pi x?>\n   " + root(jobs[1]) + b"\r\n\r\n",
             b"\n\n\t" + root(jobs[2]) + b"\n<!-- after -->\n \t",
             root(jobs[3])]
    packed = [packing(ur.split_records(data)[0]) for data in files]
    assert len({key for _, key in packed}) == 1
    report = luts.publish(container(packed[0][1], [data for data, _ in packed]), HOST_CALLER)
    assert [r.status for r in report.results] == ["stored"] * 4
    for job, data in zip(jobs, files):
        assert luts.record(Caller(ADMIN), job.record_id).original == data, job.record_id
    again = [luts.publish(data, HOST_CALLER).results[0].status for data in files]
    assert again == ["duplicate"] * 4


def test_markup_characters_and_non_ascii_survive_storing_exactly(luts):
    tricky = 'Ünïcode & <markup> "quoted" ]]> tab\there'
    job = Job("r-&<>\"'", f"/O=Grid/CN={tricky}", "atlas", "ce1.example.org", tricky, None, 10, 5, "1")
    data = make_batch([job]).replace(b"<ur:Queue>", b"<ur:Queue>cr&#13;lf\r\n")
    report = luts.publish(data, Caller(ANY_PUBLISHER))
    assert [r.status for r in report.results] == ["stored"]
    [source] = ur.split_records(data)
    stored = luts.record(Caller(ADMIN), job.record_id)
    assert stored.original == source.data and stored.usage == ur.read_source(source)
    assert stored.usage.queue.startswith("cr\rlf\n") and tricky in stored.usage.queue
    page = luts.query(Caller(ADMIN), "@user = $u and urf:JobUsageRecord/urf:Queue = $q",
                      {"u": canonical_dn(job.user), "q": stored.usage.queue})
    assert [r.record_id for r in page.records] == [job.record_id]


def test_jobs_with_ids_longer_than_an_index_holds_are_found(luts):
    long_global = "gsiftp://ce1.example.org/jobs/" + "g" * 3000
    long_local = "é" * 600                                    # 1,200 bytes
    job = Job("r-long", USERS[0], "atlas", "ce1.example.org", "short", None, 10, 5, "1",
              local_job_id=long_local, global_job_id=long_global)
    other = Job("r-short", USERS[0], "atlas", "ce1.example.org", "short", None, 10, 5, "1",
                global_job_id=job_key(long_global))           # its id is the long one's index key
    assert [r.status for r in luts.publish(make_batch([job, other]), HOST_CALLER).results] == ["stored"] * 2
    for job_id, found in ((long_global, "r-long"), (long_local, "r-long"), (job_key(long_global), "r-short")):
        assert [r.record_id for r in luts.job(Caller(ADMIN), job_id)] == [found]


def test_same_record_is_a_no_op_different_record_is_refused_replace_needs_a_site_admin(luts):
    job = Job("r-1", USERS[0], "atlas", "ce1.example.org", "short", None, 100, 50, "1.5")
    assert luts.publish(make_record(job), HOST_CALLER).results[0].status == "stored"
    # the same record inside a batch (other whitespace and namespace declarations around it) is the same
    assert luts.publish(make_batch([job]), HOST_CALLER).results[0].status == "duplicate"
    changed = Job("r-1", USERS[0], "atlas", "ce1.example.org", "short", None, 999, 50, "1.5")
    refused = luts.publish(make_record(changed), HOST_CALLER).results[0]
    assert refused.status == "refused" and "different record" in refused.message
    with pytest.raises(DomainError) as error:
        luts.publish(make_record(changed), HOST_CALLER, replace=True)
    assert error.value.code == "NotAuthorized"
    assert luts.summary(Caller(ADMIN), ["user"]).rows[0].wall_us == 100_000_000
    assert luts.publish(make_record(changed), Caller(SITE_ADMIN), replace=True).results[0].status == "replaced"
    assert luts.record(Caller(ADMIN), "r-1").usage.wall_us == 999_000_000
    rows = luts.summary(Caller(ADMIN), ["user"]).rows
    assert len(rows) == 1 and rows[0].jobs == 1 and rows[0].wall_us == 999_000_000
    assert len(stored_all(luts)) == 1


def test_a_site_administrator_cannot_replace_another_machines_record(luts):
    theirs = Job("r-x", USERS[0], "atlas", "ce2.example.org", "short", None, 100, 50, "1", local_job_id="7")
    assert luts.publish(make_record(theirs), HOST2_CALLER).results[0].status == "stored"
    original = luts.record(Caller(ADMIN), "r-x").original
    # naming ce2 in the record: not a machine the ce1 administrator may publish for
    forged = dataclasses.replace(theirs, wall_s=1)
    refused = luts.publish(make_record(forged), Caller(CE1_ADMIN), replace=True).results[0]
    assert refused.status == "refused" and "ce1.example.org only" in refused.message
    # naming ce1: that is ce1's record r-x, a record of its own beside ce2's (once replaced ce2's)
    moved = dataclasses.replace(theirs, machine="ce1.example.org", wall_s=1)
    assert luts.publish(make_record(moved), Caller(CE1_ADMIN), replace=True).results[0].status == "stored"
    kept = luts.record(Caller(ADMIN), "r-x", machine="ce2.example.org")
    assert kept.original == original and kept.usage.wall_us == 100_000_000 and kept.publisher == HOST2
    assert luts.record(HOST2_CALLER, "r-x").original == original       # the one ce2 sees is its own
    assert sorted(r.usage.machine for r in luts.job(Caller(ADMIN), "7")) == ["ce1.example.org", "ce2.example.org"]
    by = ["machine"]
    assert {row.key["machine"]: (row.jobs, row.wall_us) for row in luts.summary(Caller(ADMIN), by).rows} == {
        "ce1.example.org": (1, 1_000_000), "ce2.example.org": (1, 100_000_000)}


def test_a_record_id_used_by_one_machine_does_not_block_another(luts):
    first = Job("r-same", USERS[0], "atlas", "ce1.example.org", "short", None, 100, 50, "1",
                local_job_id="42", global_job_id="gsiftp://ce1.example.org/jobs/42")
    second = Job("r-same", USERS[1], "cms", "ce2.example.org", "long", None, 300, 70, "2",
                 local_job_id="42", global_job_id="gsiftp://ce2.example.org/jobs/42")
    assert luts.publish(make_record(first), HOST_CALLER).results[0].status == "stored"
    assert luts.publish(make_record(second), HOST2_CALLER).results[0].status == "stored"
    # each is a duplicate of itself only, for its own publisher and for others allowed for its machine
    assert luts.publish(make_batch([second]), HOST2_CALLER).results[0].status == "duplicate"
    assert luts.publish(make_batch([first]), Caller(SITE_ADMIN)).results[0].status == "duplicate"
    assert [r.status for r in luts.publish(make_batch([first, second]), Caller(ADMIN)).results] == ["duplicate"] * 2
    changed = dataclasses.replace(second, wall_s=301)
    assert luts.publish(make_record(changed), HOST2_CALLER).results[0].status == "refused"
    found = luts.job(Caller(ADMIN), "42")
    assert sorted((r.record_id, r.usage.machine, r.publisher) for r in found) == [
        ("r-same", "ce1.example.org", HOST), ("r-same", "ce2.example.org", HOST2)]
    assert [r.usage.machine for r in luts.job(HOST2_CALLER, "42")] == ["ce2.example.org"]
    assert [r.usage.machine for r in luts.job(Caller(ADMIN), second.global_job_id)] == ["ce2.example.org"]
    with pytest.raises(DomainError) as error:
        luts.record(Caller(ADMIN), "r-same")                 # two machines: which one?
    assert error.value.code == "AmbiguousRecord" and "ce2.example.org" in str(error.value)
    assert luts.record(Caller(ADMIN), "r-same", machine="CE2.example.org").usage.wall_us == 300_000_000
    assert luts.record(HOST_CALLER, "r-same").usage.machine == "ce1.example.org"   # the one it may see
    with pytest.raises(DomainError) as error:
        luts.record(HOST_CALLER, "r-same", machine="ce2.example.org")
    assert error.value.code == "UnknownRecord"
    assert len(stored_all(luts)) == 2


def test_an_administrator_replaces_any_machines_record(luts):
    job = Job("r-adm", USERS[0], "atlas", "ce2.example.org", "short", None, 100, 50, "1")
    assert luts.publish(make_record(job), HOST2_CALLER).results[0].status == "stored"
    changed = dataclasses.replace(job, wall_s=5)
    assert luts.publish(make_record(changed), Caller(ADMIN), replace=True).results[0].status == "replaced"
    stored = luts.record(Caller(ADMIN), "r-adm")
    assert stored.usage.wall_us == 5_000_000 and stored.publisher == ADMIN
    rows = luts.summary(Caller(ADMIN), ["machine"]).rows
    assert [(row.key["machine"], row.jobs, row.wall_us) for row in rows] == [("ce2.example.org", 1, 5_000_000)]


def test_a_record_sent_again_with_new_publication_metadata_is_the_same_record(luts):
    """Issue 11.4: ARC re-sends a record with only RecordIdentity/@createTime changed. Equality is on the
    usage: createTime, a ds:KeyInfo in RecordIdentity, comments and the whitespace between elements
    are not compared; any usage value is."""
    job = Job("r-again", USERS[0], "atlas", "ce1.example.org", "short", None, 100, 50, "1.5", local_job_id="9")
    first = make_batch([job])
    assert luts.publish(first, HOST_CALLER).results[0].status == "stored"
    later = first.replace(b'ur:createTime="2026-01-01T00:00:00Z"', b'ur:createTime="2026-03-04T05:06:07Z"')
    assert later != first
    again = luts.publish(later, HOST_CALLER).results[0]
    assert (again.status, again.message) == ("duplicate", "already stored (the same record)")
    signed = later.replace(b'ur:createTime="2026-03-04T05:06:07Z"/>', (
        b'ur:createTime="2026-03-04T05:06:08Z"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#">'
        b'<ds:KeyName>ce1</ds:KeyName></ds:KeyInfo></ur:RecordIdentity>'))
    reformatted = make_record(job).replace(b"<ur:Status>", b"\n    <!-- sent again -->\n    <ur:Status>")
    for document in (signed, reformatted):
        assert luts.publish(document, HOST_CALLER).results[0].status == "duplicate"
    for changed in (dataclasses.replace(job, wall_s=101), dataclasses.replace(job, queue="long"),
                    dataclasses.replace(job, local_job_id="10")):
        refused = luts.publish(make_batch([changed]), HOST_CALLER).results[0]
        assert refused.status == "refused" and "different record" in refused.message
    queue_spaced = first.replace(b"<ur:Queue>short</ur:Queue>", b"<ur:Queue> short</ur:Queue>")
    assert luts.publish(queue_spaced, HOST_CALLER).results[0].status == "refused"   # inside a value: compared
    stored = luts.record(Caller(ADMIN), "r-again")
    assert stored.original == ur.split_records(first)[0].data                        # the first one is kept
    assert [row.jobs for row in luts.summary(Caller(ADMIN), ["user"]).rows] == [1]


def test_two_records_with_one_id_in_one_batch(luts):
    a = Job("dup", USERS[0], None, "ce1.example.org", None, None, 1, 1, None)
    b = Job("dup", USERS[0], None, "ce1.example.org", None, None, 2, 1, None)
    statuses = [r.status for r in luts.publish(make_batch([a, a, b]), HOST_CALLER).results]
    assert statuses == ["stored", "duplicate", "refused"]


def test_broken_records_get_their_own_errors_and_the_rest_is_stored(luts):
    good = [Job(f"ok-{n}", USERS[1], "cms", "ce1.example.org", None, None, 10, 5, None) for n in range(3)]
    body = make_batch(good).decode()
    broken = [
        '<ur:JobUsageRecord><ur:WallDuration>PT1S</ur:WallDuration></ur:JobUsageRecord>',                  # no id
        '<ur:JobUsageRecord><ur:RecordIdentity ur:recordId="bad-dur"/><ur:WallDuration>PT1X</ur:WallDuration></ur:JobUsageRecord>',
        '<JobUsageRecord xmlns="urn:not-a-usage-record"><RecordIdentity recordId="wrong-ns"/></JobUsageRecord>',
        '<ur:JobUsageRecord><ur:RecordIdentity ur:recordId="huge"/>'                                        # 10 MB
        + ''.join(f'<ur:Host>{"x" * 10_000}</ur:Host>' for _ in range(1_050)) + '</ur:JobUsageRecord>',
    ]
    document = body.replace("</ur:UsageRecords>", "\n".join(broken) + "\n</ur:UsageRecords>").encode()
    report = luts.publish(document, HOST_CALLER)
    statuses = [r.status for r in report.results]
    assert statuses == ["stored"] * 3 + ["invalid"] * 4
    messages = [r.message for r in report.results[3:]]
    assert "record id" in messages[0].lower() or "recordid" in messages[0].lower()
    assert "bad-dur" in messages[1] and "PT1X" in messages[1]
    assert "wrong-ns" in messages[2] and "not a usage-record namespace" in messages[2]
    assert "huge" in messages[3] and "bytes" in messages[3]
    assert len(stored_all(luts)) == 3


def test_a_document_with_an_entity_is_refused_whole_and_changes_nothing(luts):
    xxe = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<ur:JobUsageRecord xmlns:ur="http://schema.ogf.org/urf/2003/09/urf">'
           b'<ur:RecordIdentity ur:recordId="xxe"/><ur:JobName>&x;</ur:JobName></ur:JobUsageRecord>')
    with pytest.raises(DomainError) as error:
        luts.publish(xxe, HOST_CALLER)
    assert error.value.code == "InvalidUsageRecord"
    assert stored_all(luts) == []


def test_who_may_publish(luts):
    job = Job("m-1", USERS[0], None, "ce2.example.org", None, None, 1, 1, None)
    with pytest.raises(DomainError) as error:
        luts.publish(make_record(job), Caller(USERS[0]))
    assert error.value.code == "NotAuthorized"
    with pytest.raises(DomainError):
        luts.publish(make_record(job), Caller(SITE_ADMIN, limited=True))
    refused = luts.publish(make_record(job), HOST_CALLER).results[0]       # the host is ce1, not ce2
    assert refused.status == "refused" and "ce1.example.org" in refused.message
    assert luts.publish(make_record(job), Caller(SITE_ADMIN)).results[0].status == "stored"
    other = Job("m-2", USERS[0], None, "ce3.other.org", None, None, 1, 1, None)
    assert luts.publish(make_record(other), Caller(SITE_ADMIN)).results[0].status == "refused"
    assert luts.publish(make_record(other), Caller(ADMIN)).results[0].status == "stored"


# -- queries and scopes --------------------------------------------------------------------------------


@pytest.fixture
def filled(luts):
    units = random.Random(70)                       # several charge units, and charges without one
    jobs = [dataclasses.replace(job, charge_unit=units.choice(["EUR", "SEK", "kSEK", None]))
            for job in random_jobs(240, seed=7)]
    for start in range(0, len(jobs), 80):
        assert luts.publish(make_batch(jobs[start:start + 80]), Caller(ANY_PUBLISHER)).ok
    return luts, jobs


def _ids(records) -> set[str]:
    return {record.record_id for record in records}


ESCAPES = ["true()", "//*", "/..", "..", "ancestor-or-self::node()", "//n:Stored | /", "count(//*) > 0",
           "collection()", "doc('x')", "not(@user = 'nobody')", "(/)[1]", "following::*", "preceding::*",
           "*/ancestor::*"]


def test_a_user_sees_only_their_own_records_whatever_the_xpath(filled):
    luts, jobs = filled
    user = USERS[2]
    own = {job.record_id for job in jobs if job.user == user}
    assert own
    assert _ids(luts.query(Caller(user), limit=1000).records) == own
    for xpath in ESCAPES:
        try:
            page = luts.query(Caller(user), xpath, limit=1000)
        except (DomainError, QueryError):
            continue  # refused outright is fine too
        assert _ids(page.records) <= own, xpath
    with pytest.raises(DomainError):
        luts.query(Caller(user), scope="all")


def test_vo_manager_site_and_admin_scopes(filled):
    luts, jobs = filled
    assert luts.query(Caller(MANAGER), limit=1000).scope == "vo"
    assert _ids(luts.query(Caller(MANAGER), limit=1000).records) == {j.record_id for j in jobs if j.vo == "atlas"}
    site = luts.query(Caller(SITE_ADMIN), limit=1000)
    assert site.scope == "site"
    assert _ids(site.records) == {j.record_id for j in jobs if j.machine in ("ce1.example.org", "ce2.example.org")}
    host = luts.query(HOST_CALLER, limit=1000)
    assert _ids(host.records) == {j.record_id for j in jobs if j.machine == "ce1.example.org"}
    assert _ids(stored_all(luts)) == {j.record_id for j in jobs}
    own = luts.query(Caller(MANAGER), scope="own", limit=1000)
    assert own.records == ()
    with pytest.raises(DomainError):
        luts.query(Caller(MANAGER), scope="vo:cms")


def test_xpath_with_variables_paging_and_months(filled):
    luts, jobs = filled
    long_jobs = {j.record_id for j in jobs if j.wall_s is not None and j.wall_s > 100_000}
    found, cursor, pages = [], None, 0
    while True:
        page = luts.query(Caller(ADMIN), "n:Usage/n:wall_us > $w", {"w": 100_000_000_000}, cursor=cursor, limit=7)
        assert len(page.records) <= 7
        found.extend(page.records)
        pages += 1
        if page.cursor is None:
            break
        cursor = page.cursor
    assert [r.record_id for r in found].count(found[0].record_id) == 1
    assert _ids(found) == long_jobs and pages > 2
    # XPath over the record as the reporter wrote it
    ce3 = luts.query(Caller(ADMIN), "urf:JobUsageRecord/urf:MachineName = 'ce3.other.org'", limit=1000)
    assert _ids(ce3.records) == {j.record_id for j in jobs if j.machine == "ce3.other.org"}
    august = luts.query(Caller(ADMIN), from_month="2026-08", to_month="2026-08", limit=1000)
    assert _ids(august.records) == {j.record_id for j in jobs if j.end and j.end.strftime("%Y-%m") == "2026-08"}
    with pytest.raises(QueryError):
        luts.query(Caller(ADMIN), "n:Usage[", limit=10)
    with pytest.raises(DomainError):
        luts.query(Caller(ADMIN), from_month="2026-13")


def test_a_bad_expression_is_refused_before_any_record_is_stored(luts):
    # a query over no month read no collection, so its expression was never checked (found under
    # pytest-xdist: the service test that relied on records stored by the module's earlier tests)
    with pytest.raises(QueryError, match="XPath syntax error"):
        luts.query(Caller(ADMIN), "n:Usage[", limit=10)
    with pytest.raises(QueryError, match="is not allowed"):
        luts.query(Caller(ADMIN), "exslt:test('a', 'b')", namespaces={"exslt": "http://exslt.org/regular-expressions"})
    assert not luts.query(Caller(ADMIN), "n:Usage", limit=10).records


def test_job_usage_by_global_and_local_id(filled):
    luts, jobs = filled
    job = next(j for j in jobs if j.user)
    assert [r.record_id for r in luts.job(Caller(ADMIN), job.global_job_id)] == [job.record_id]
    same_local = {j.record_id for j in jobs if j.local_job_id == job.local_job_id}
    assert _ids(luts.job(Caller(ADMIN), job.local_job_id)) == same_local
    assert _ids(luts.job(Caller(job.user), job.local_job_id)) == {
        j.record_id for j in jobs if j.local_job_id == job.local_job_id and j.user == job.user}
    stranger = "/O=Grid/CN=Nobody"
    assert luts.job(Caller(stranger), job.global_job_id) == ()
    with pytest.raises(DomainError):
        luts.record(Caller(stranger), job.record_id)


def brute_force(records, by, keep=lambda record: True):
    """Summary rows recomputed from the records: jobs, wall, CPU, and per charge unit (None: a charge
    without a unit) its jobs and charge — never added across units."""
    totals = defaultdict(lambda: [0, 0, 0, defaultdict(lambda: [0, 0])])
    for record in records:
        usage = record.usage
        if not keep(record):
            continue
        values = {"user": canonical_dn(usage.user_dn) or "", "vo": usage.vo or "", "site": usage.site or "",
                  "machine": (usage.machine or "").lower(), "queue": usage.queue or "", "month": record.month}
        row = totals[tuple(values[name] for name in by)]
        row[0] += 1
        row[1] += usage.wall_us or 0
        row[2] += usage.cpu_us or 0
        if usage.charge_micro is not None:
            row[3][usage.charge_unit][0] += 1
            row[3][usage.charge_unit][1] += usage.charge_micro
    return {key: (jobs, wall, cpu, {unit: tuple(charge) for unit, charge in charges.items()})
            for key, (jobs, wall, cpu, charges) in totals.items()}


def summary_rows(summary, by):
    """A summary's rows in brute_force's shape."""
    rows = {}
    for row in summary.rows:
        units = [charge.unit for charge in row.charges]
        assert len(set(units)) == len(units), "one total per unit"
        rows[tuple(row.key[name] for name in by)] = (
            row.jobs, row.wall_us, row.cpu_us, {c.unit: (c.jobs, c.charge_micro) for c in row.charges})
    return rows


@pytest.mark.parametrize("by", [("user",), ("vo", "month"), ("site", "machine", "queue"), ("month",), ()])
def test_summaries_equal_a_brute_force_recomputation(filled, by):
    luts, _ = filled
    records = stored_all(luts)
    assert {r.usage.charge_unit for r in records if r.usage.charge_micro is not None} == {"EUR", "SEK", "kSEK", None}
    assert summary_rows(luts.summary(Caller(ADMIN), list(by)), by) == brute_force(records, by)
    period = luts.summary(Caller(ADMIN), list(by), from_month="2026-08", to_month="2026-09")
    assert summary_rows(period, by) == brute_force(records, by, lambda r: "2026-08" <= r.month <= "2026-09")
    mine = luts.summary(Caller(USERS[3]), list(by))
    assert summary_rows(mine, by) == brute_force(records, by, lambda r: r.usage.user_dn == USERS[3])


def test_a_summary_never_adds_charges_in_different_units(luts):
    """Issue 11.5: 5 EUR + 10 SEK was shown as 15."""
    jobs = [Job(f"r-unit-{n}", USERS[0], "atlas", "ce1.example.org", "short", None, 10, 5, charge, charge_unit=unit)
            for n, (charge, unit) in enumerate([("5", "EUR"), ("10", "SEK"), ("2.5", "EUR"), ("7", None),
                                                (None, None)])]
    assert luts.publish(make_batch(jobs), HOST_CALLER).ok
    [row] = luts.summary(Caller(ADMIN), ["vo"]).rows
    assert row.jobs == 5
    assert [(c.unit, c.jobs, c.charge_micro) for c in row.charges] == [
        ("EUR", 2, 7_500_000), ("SEK", 1, 10_000_000), (None, 1, 7_000_000)]
    # a replace moves a record's charge from one unit to another
    changed = dataclasses.replace(jobs[1], charge="3", charge_unit="EUR")
    assert luts.publish(make_batch([changed]), Caller(ADMIN), replace=True).results[0].status == "replaced"
    [row] = luts.summary(Caller(ADMIN), ["vo"]).rows
    assert [(c.unit, c.jobs, c.charge_micro) for c in row.charges] == [("EUR", 3, 10_500_000), (None, 1, 7_000_000)]


@pytest.fixture
def across_machines(luts):
    """One set of record ids published for ce1 and again for ce2 (other values), then replaced and
    attempted to be replaced across machines."""
    ce1 = random_jobs(90, seed=9, machines=["ce1.example.org"])
    ce2 = [dataclasses.replace(job, machine="ce2.example.org", wall_s=(job.wall_s or 0) + 11, user=USERS[5],
                               queue="long") for job in ce1[:60]]
    assert luts.publish(make_batch(ce1), HOST_CALLER).ok
    assert [r.status for r in luts.publish(make_batch(ce2), HOST2_CALLER).results] == ["stored"] * 60
    # ce1's administrator "replaces" ce2's records under their ids: as ce1's (replacing ce1's), never ce2's
    moved = [dataclasses.replace(job, machine="ce1.example.org", cpu_s=7, vo="alice") for job in ce2[:30]]
    assert [r.status for r in luts.publish(make_batch(moved), Caller(CE1_ADMIN), replace=True).results] \
        == ["replaced"] * 30
    refused = luts.publish(make_batch([dataclasses.replace(job, cpu_s=8) for job in ce2[30:40]]), Caller(CE1_ADMIN),
                           replace=True)
    assert [r.status for r in refused.results] == ["refused"] * 10
    # the administrator replaces some of ce2's, moving their month too
    later = [dataclasses.replace(job, end=None, charge="5", charge_unit=("EUR", "SEK", None)[n % 3])
             for n, job in enumerate(ce2[40:50])]
    assert [r.status for r in luts.publish(make_batch(later), Caller(ADMIN), replace=True).results] \
        == ["replaced"] * 10
    return luts


@pytest.mark.parametrize("by", [("user",), ("vo", "month"), ("site", "machine", "queue"), ("machine", "month"), ()])
def test_summaries_equal_a_brute_force_recomputation_across_machines(across_machines, by):
    luts = across_machines
    records = stored_all(luts)
    assert len(records) == 150
    assert summary_rows(luts.summary(Caller(ADMIN), list(by)), by) == brute_force(records, by)
    mine = summary_rows(luts.summary(HOST2_CALLER, list(by)), by)
    assert mine == brute_force(records, by, lambda r: r.usage.machine == "ce2.example.org")


CAROL = "/O=Grid/CN=Carol Casing"


def _normalization_records() -> tuple[bytes, list[bytes]]:
    """Our own records with the features of issue 11.6: an RFC 2253 DN, VO and machine names in
    other cases, Gratia VONames that are FQANs (one cut off), a user name that is not a DN."""
    ur1 = ('<ur:JobUsageRecord><ur:RecordIdentity ur:recordId="{rid}"/><ur:UserIdentity>'
           '<ur:GlobalUserName>{user}</ur:GlobalUserName><vo:VO><vo:Name>{vo}</vo:Name></vo:VO></ur:UserIdentity>'
           '<ur:MachineName>{machine}</ur:MachineName><ur:WallDuration>PT10S</ur:WallDuration></ur:JobUsageRecord>')
    records = [ur1.format(rid="r-norm-1", user="CN=Carol Casing,O=Grid", vo="ATLAS", machine="CE1.Example.ORG"),
               ur1.format(rid="r-norm-2", user=CAROL, vo="atlas", machine="ce1.example.org")]
    batch = (f'<ur:UsageRecords xmlns:ur="{ur.NS_UR1}" xmlns:vo="{ur.NS_SGAS_VO}">' + "".join(records)
             + "</ur:UsageRecords>").encode()
    gratia = ('<JobUsageRecord xmlns="{ns}"><RecordIdentity recordId="{rid}"/><UserIdentity>'
              "<GlobalUsername>carol@example.org</GlobalUsername><VOName>{voname}</VOName></UserIdentity>"
              "<MachineName>ce1.example.org</MachineName><WallDuration>PT20S</WallDuration></JobUsageRecord>")
    return batch, [gratia.format(ns=ur.NS_GRATIA, rid="r-norm-3", voname="/Atlas/higgs/Role=pilot").encode(),
                   gratia.format(ns=ur.NS_GRATIA, rid="r-norm-4", voname="/atlas/Role").encode()]


def test_one_normalization_in_the_view_the_scopes_and_the_summaries(luts):
    """Issue 11.6: the view, the scope attributes and the summary keys use one normalization."""
    batch, gratia = _normalization_records()
    for document in (batch, *gratia):
        assert luts.publish(document, HOST_CALLER).ok
    by_id = {record.record_id: record for record in stored_all(luts)}
    views = {rid: by_id[rid].usage for rid in ("r-norm-1", "r-norm-2", "r-norm-3", "r-norm-4")}
    assert {rid: (v.user_dn, v.global_user, v.vo, v.machine) for rid, v in views.items()} == {
        "r-norm-1": (CAROL, None, "atlas", "ce1.example.org"), "r-norm-2": (CAROL, None, "atlas", "ce1.example.org"),
        "r-norm-3": (None, "carol@example.org", "atlas", "ce1.example.org"),
        "r-norm-4": (None, "carol@example.org", "atlas", "ce1.example.org")}
    assert (views["r-norm-3"].vo_group, views["r-norm-3"].vo_role) == ("/atlas/higgs", "pilot")
    assert (views["r-norm-4"].vo_group, views["r-norm-4"].vo_role) == ("/atlas", None)
    assert any("cut off" in warning for warning in views["r-norm-4"].warnings)
    # the indexed attributes are the view's values, for every record stored
    differing = luts.query(Caller(ADMIN), "@vo != n:Usage/n:vo or @machine != n:Usage/n:machine or "
                                          "@user != n:Usage/n:user_dn or (not(n:Usage/n:user_dn) and "
                                          "@user != n:Usage/n:global_user)", limit=1000)
    assert differing.records == ()
    # one VO, one machine, one user per identity in the summaries
    rows = {tuple(row.key.values()): row.jobs for row in luts.summary(Caller(ADMIN), ["user", "vo", "machine"]).rows}
    assert rows == {(CAROL, "atlas", "ce1.example.org"): 2, ("carol@example.org", "atlas", "ce1.example.org"): 2}
    # Carol's own scope has both of her DN's records (the RFC 2253 one too); the VO manager has all four
    assert {r.record_id for r in luts.query(Caller(CAROL), limit=1000).records} == {"r-norm-1", "r-norm-2"}
    assert [(row.key, row.jobs) for row in luts.summary(Caller(CAROL), ["vo"]).rows] == [({"vo": "atlas"}, 2)]
    managed = luts.query(Caller(MANAGER), scope="vo:ATLAS", limit=1000)
    assert {r.record_id for r in managed.records} == set(views)


def test_summary_refuses_unknown_dimensions(luts):
    with pytest.raises(DomainError) as error:
        luts.summary(Caller(ADMIN), ["colour"])
    assert "colour" in str(error.value)
