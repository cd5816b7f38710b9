"""The client-side spool (services/luts/spool.py): durable adds, batching, settling, rejections, outages.

These run against ``FakeLuts``, an in-process stand-in with the LUTS's publish contract (one result
per record, idempotent on the record id by the canonical XML of the record, whole-document
refusals); the crash test against a real host (kill -9 of the sender) is in test_luts_cli.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from gridcredit.errors import GridcreditError, RemoteFault
from gridcredit.outbox import ALONE
from gridcredit.services.luts import records as ur
from gridcredit.services.luts.spool import (BatchSender, Outgoing, Spool, SpoolBusy, SpoolFull, container, packing,
                                            send_documents)

from luts_fixtures import UR1, VO_NS, Job, make_batch, make_record, random_jobs

SAMPLES = Path(__file__).parent / "data" / "ur-samples"   # other projects' usage records: see its SOURCES.md


@dataclass(frozen=True)
class Result:
    index: int
    record_id: str | None
    status: str
    message: str = ""


@dataclass(frozen=True)
class Report:
    results: tuple


def digest(element) -> str:
    """How the LUTS tells "the same record": exclusive C14N of the record element."""
    return hashlib.sha256(etree.tostring(element, method="c14n", exclusive=True)).hexdigest()


class FakeLuts:
    """The publish contract of the LUTS, in memory."""

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}
        self.originals: dict[str, bytes] = {}
        self.stored_count: dict[str, int] = {}
        self.documents: list[bytes] = []
        self.fail_from: int | None = None      # calls from this number (1-based) fail: LUTS unreachable
        self.refuse_ids: set[str] = set()      # refused per record
        self.poison_ids: set[str] = set()      # a document holding one is refused whole

    def publish(self, document: bytes, *, replace: bool = False) -> Report:
        self.documents.append(document)
        if self.fail_from is not None and len(self.documents) >= self.fail_from:
            raise GridcreditError("cannot reach https://luts.example.org/luts: connection refused")
        batch = ur.parse_batch(document)
        if any(outcome.source.record_id in self.poison_ids for outcome in batch.outcomes):
            raise RemoteFault("soap:Client", "the document was refused: poisoned", "InvalidUsageRecord")
        results = []
        for outcome in batch.outcomes:
            source = outcome.source
            if not outcome.ok:
                results.append(Result(source.index, source.record_id, "invalid", outcome.error))
                continue
            record_id = outcome.record.record_id
            found = digest(source.element)
            if record_id in self.refuse_ids:
                results.append(Result(source.index, record_id, "refused", "not your machine"))
            elif record_id in self.digests:
                same = self.digests[record_id] == found
                results.append(Result(source.index, record_id, "duplicate" if same else "refused",
                                      "" if same else "a different record is stored under this id"))
            else:
                self.digests[record_id] = found
                self.originals[record_id] = source.data
                self.stored_count[record_id] = self.stored_count.get(record_id, 0) + 1
                results.append(Result(source.index, record_id, "stored"))
        return Report(tuple(results))


def ids_of(jobs) -> set[str]:
    return {job.record_id for job in jobs}


@pytest.fixture
def luts() -> FakeLuts:
    return FakeLuts()


# -- adding ------------------------------------------------------------------------------------------


def test_add_is_durable_and_ordered(tmp_path):
    spool = Spool(tmp_path / "spool")
    jobs = random_jobs(3, seed=2)
    paths = [spool.add(make_record(job)) for job in jobs]
    assert spool.pending() == paths                      # arrival order
    assert [path.read_bytes() for path in paths] == [make_record(job) for job in jobs]
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    assert spool.usage() == (3, sum(len(make_record(job)) for job in jobs))


def test_add_refuses_what_is_not_a_usage_record_document(tmp_path):
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ur.RecordError, match="root element"):
        spool.add(b"<html/>")
    with pytest.raises(GridcreditError):
        spool.add(b"<ur:JobUsageRecord xmlns:ur='" + UR1.encode() + b"'>")
    assert spool.pending() == []


def test_a_full_spool_refuses_with_a_clear_error(tmp_path):
    record = make_record(random_jobs(1)[0])
    spool = Spool(tmp_path / "spool", bytes_max=len(record) * 2 + 10)
    spool.add(record)
    spool.add(record)
    with pytest.raises(SpoolFull, match=r"is full \(2 documents.*gridcredit luts send --spool"):
        spool.add(record)
    spool = Spool(tmp_path / "spool", files_max=2)
    with pytest.raises(SpoolFull):
        spool.add(record)


def test_the_spool_is_counted_again_when_its_count_is_old(tmp_path, monkeypatch):
    record = make_record(random_jobs(1)[0])
    mine, other = Spool(tmp_path / "spool", files_max=3), Spool(tmp_path / "spool", files_max=3)
    mine.add(record)
    other.add(record)
    other.add(record)
    mine.add(record)            # its count is recent: the other adder's files are not seen yet
    monkeypatch.setattr(Spool, "USAGE_RECOUNT_S", 0.0)
    with pytest.raises(SpoolFull, match=r"is full \(4 documents"):
        mine.add(record)
    for path in mine.pending()[:2]:  # sent meanwhile
        path.unlink()
    mine.add(record)
    assert len(mine.pending()) == 3


# -- packing -----------------------------------------------------------------------------------------


def test_packing_keeps_each_records_bytes_and_canonical_form():
    """What the LUTS stores from a batch is the record as spooled, byte for byte (a fragment as it is;
    a whole document with its declaration and the bytes around its root: issue 11.7, before which a
    whole document lost them) and its canonical XML is the same as when it is published alone."""
    documents = [make_record(job) for job in random_jobs(3, seed=5)] + [make_batch(random_jobs(4, seed=6))]
    documents += [path.read_bytes() for path in sorted(SAMPLES.glob("*.xml")) if not path.name.endswith(".xsd")
                  and "xsd" not in path.name]
    alone = {}
    for document in documents:
        for source in ur.split_records(document):
            alone[source.record_id] = (digest(source.element), source)
    groups: dict[tuple, list] = {}
    for document in documents:
        for source in ur.split_records(document):
            data, key = packing(source)
            groups.setdefault(key, []).append((source, data))
    assert len(groups) >= 2       # the samples use more than one prefix / namespace
    for key, members in groups.items():
        if key == ALONE:
            continue
        batch = ur.split_records(container(key, [data for _, data in members]))
        assert len(batch) == len(members)
        for (source, _), sent in zip(members, batch):
            assert digest(sent.element) == alone[source.record_id][0], source.record_id
            assert sent.data == source.data and sent.whole_document == source.whole_document   # byte for byte


def test_a_file_whose_original_note_does_not_fit_is_answered_invalid_not_sent(luts):
    """A batch file holding a <?gridcredit-original?> note that does not fit (issue 11.7): that record
    is not stored as something else, the LUTS's reason is reported; the others are sent."""
    jobs = random_jobs(3, seed=12)
    bad = make_batch(jobs).replace(b"  <ur:JobUsageRecord>", b'  <?gridcredit-original prolog="PHgvPg==" epilog=""?>'
                                                            b"<ur:JobUsageRecord>", 1)
    report = send_documents(luts, [Outgoing("bad.xml", bad)])
    assert report.records_stored == 2 and report.records_rejected == 1
    [rejection] = report.rejections
    assert rejection.status == "invalid" and "gridcredit-original" in rejection.message
    assert set(luts.digests) == {job.record_id for job in jobs[1:]}


def test_a_document_in_another_encoding_is_sent_alone_unchanged(tmp_path, luts):
    job = Job("latin-1", "/O=Grid/CN=Jos\u00e9", "atlas", "ce1.example.org", None, None, 60, 30, None)
    document = make_record(job).decode().replace('encoding="UTF-8"', 'encoding="ISO-8859-1"').encode("iso-8859-1")
    source = ur.split_records(document)[0]
    assert packing(source) == (document, ALONE)      # published in a batch of its own
    spool = Spool(tmp_path / "spool")
    spool.add(make_record(random_jobs(1, seed=9)[0]))
    spool.add(document)
    spool.add(make_record(random_jobs(1, seed=10)[0]))
    report = spool.send(luts)
    assert report.ok and report.records_stored == 3
    assert luts.documents[1] == document and luts.originals["latin-1"] == document
    assert len(luts.documents) == 3


# -- sending -----------------------------------------------------------------------------------------


def test_send_batches_across_documents_and_empties_the_spool(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    jobs = random_jobs(2500, seed=3)
    spool.add(make_batch(jobs[:1200]))
    for job in jobs[1200:1210]:
        spool.add(make_record(job))
    spool.add(make_batch(jobs[1210:]))
    seen = []
    report = spool.send(luts, batch_records=1000, progress=seen.append)
    assert report.ok, report
    assert report.records_stored == 2500 and report.documents_done == 12 and report.documents_left == 0
    assert len(luts.documents) == 3                       # 1000 + 1000 + 500 records
    assert set(luts.digests) == ids_of(jobs) and set(luts.stored_count.values()) == {1}
    assert spool.pending() == [] and spool.rejected() == []
    assert seen[-1].documents_done == 12 and seen[-1].bytes_done == seen[-1].bytes_total
    assert seen[-1].records_acknowledged == 2500


def test_records_with_other_prefixes_go_into_their_own_batches(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    jobs = random_jobs(6, seed=4)
    default_ns = make_record(jobs[1]).replace(b"ur:", b"").replace(b'xmlns:ur="', b'xmlns="')
    for document in (make_record(jobs[0]), default_ns, make_record(jobs[2]), make_batch(jobs[3:])):
        spool.add(document)
    report = spool.send(luts)
    assert report.ok and report.records_stored == 6
    assert [len(ur.split_records(document)) for document in luts.documents] == [1, 1, 4]
    assert luts.documents[1].startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<UsageRecords xmlns="')


def test_an_outage_stops_sending_and_keeps_what_was_not_acknowledged(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    jobs = random_jobs(50, seed=7)
    for start in range(0, 50, 10):
        spool.add(make_batch(jobs[start:start + 10]))
    luts.fail_from = 3                                  # the LUTS goes away after two batches of 12
    report = spool.send(luts, batch_records=12)
    assert report.stopped and "cannot reach" in report.stopped and not report.ok
    assert report.records_stored == 24 and report.documents_done == 2      # files 1-2 wholly, 4 of file 3
    assert report.documents_left == 3 and len(spool.pending()) == 3
    luts.fail_from = None                               # back: file 3 is sent again, 4 records duplicate
    report = spool.send(luts, batch_records=12)
    assert report.ok, report
    assert report.records_stored == 26 and report.records_duplicate == 4
    assert set(luts.digests) == ids_of(jobs) and set(luts.stored_count.values()) == {1}
    assert spool.pending() == []


def test_refused_and_invalid_records_are_kept_with_the_reason_and_not_sent_again(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    jobs = random_jobs(5, seed=8)
    luts.refuse_ids = {jobs[1].record_id}
    batch = make_batch(jobs).replace(b"</ur:UsageRecords>", b"<ur:Note>hi</ur:Note>\n</ur:UsageRecords>")
    bad_duration = make_record(jobs[0]).replace(b"<ur:RecordIdentity ur:recordId=\"" + jobs[0].record_id.encode(),
                                                b"<ur:RecordIdentity ur:recordId=\"bad-one").replace(b"PT", b"XT", 1)
    first = spool.add(batch)
    second = spool.add(bad_duration)
    report = spool.send(luts)
    assert report.stopped is None and report.documents_left == 0 and not report.ok
    assert report.records_stored == 4 and report.records_rejected == 3
    rejected = {(r["document"], r["index"]): r for r in spool.rejected()}
    assert rejected[(first.name, 1)]["status"] == "refused" and "not your machine" in rejected[(first.name, 1)]["message"]
    assert rejected[(first.name, 5)]["status"] == "invalid" and "not a usage record" in rejected[(first.name, 5)]["message"]
    assert rejected[(second.name, 0)]["status"] == "invalid" and "bad-one" in rejected[(second.name, 0)]["message"]
    kept = spool.rejected_dir / rejected[(first.name, 1)]["file"]
    assert kept.read_bytes() == ur.split_records(batch)[1].data     # the record, as spooled
    assert spool.pending() == []
    calls = len(luts.documents)
    assert spool.send(luts).documents_done == 0 and len(luts.documents) == calls   # nothing sent again


def test_a_batch_refused_whole_is_halved_down_to_the_record(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    jobs = random_jobs(20, seed=11)
    luts.poison_ids = {jobs[13].record_id}
    spool.add(make_batch(jobs))
    report = spool.send(luts)
    assert report.records_stored == 19 and report.records_rejected == 1 and spool.pending() == []
    (rejection,) = spool.rejected()
    assert rejection["record_id"] == jobs[13].record_id and "poisoned" in rejection["message"]
    assert len(luts.documents) <= 1 + 2 * 5               # log2(20) halvings at most


def test_a_refusal_of_the_publisher_stops_and_keeps_everything(tmp_path):
    class Refusing:
        def publish(self, document, *, replace=False):
            raise RemoteFault("soap:Client", "you may not publish usage records here", "NotAuthorized")

    spool = Spool(tmp_path / "spool")
    spool.add(make_record(random_jobs(1)[0]))
    report = spool.send(Refusing())
    assert "NotAuthorized" in report.stopped and report.documents_left == 1 and spool.rejected() == []


def test_an_unreadable_spooled_file_is_moved_to_rejected(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    good = spool.add(make_record(random_jobs(1, seed=12)[0]))
    broken = spool.directory / ("0" * 20 + "-1-000000.xml")       # put there behind the spool's back
    broken.write_bytes(b"<not xml")
    report = spool.send(luts)
    assert report.records_stored == 1 and report.records_rejected == 1 and spool.pending() == []
    (rejection,) = spool.rejected()
    assert rejection["status"] == "unreadable" and rejection["document"] == broken.name
    assert (spool.rejected_dir / rejection["file"]).read_bytes() == b"<not xml"
    assert not good.exists()


def test_one_sender_at_a_time(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    spool.add(make_record(random_jobs(1)[0]))
    with spool.locked():
        with pytest.raises(SpoolBusy, match=f"pid {os.getpid()}"):
            Spool(tmp_path / "spool").send(luts)
    assert Spool(tmp_path / "spool").send(luts).ok


def test_stale_temporary_files_are_removed(tmp_path, luts):
    spool = Spool(tmp_path / "spool")
    stale, fresh = spool.tmp_dir / "a.tmp", spool.tmp_dir / "b.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    spool.send(luts)
    assert not stale.exists() and fresh.exists()


def test_send_documents_without_a_spool_counts_every_answer(luts):
    jobs = random_jobs(30, seed=13)
    luts.refuse_ids = {jobs[0].record_id}
    documents = [Outgoing(f"f{index}", make_record(job)) for index, job in enumerate(jobs)]
    documents.append(Outgoing("broken", b"<nope"))
    report = send_documents(luts, documents, batch_records=8, documents_total=len(documents))
    assert report.records_stored == 29 and report.records_rejected == 2 and report.documents_done == 31
    assert {(r.document, r.status) for r in report.rejections} == {("f0", "refused"), ("broken", "unreadable")}
    assert len(luts.documents) == 4


def test_batch_sender_settles_documents_in_order(luts):
    settled = []
    sender = BatchSender(luts, on_settled=lambda batch: settled.append([s.document.name for s in batch]),
                         batch_records=3)
    jobs = random_jobs(7, seed=14)
    sender.add(Outgoing("a", make_batch(jobs[:2])))
    sender.add(Outgoing("b", make_batch(jobs[2:5])))      # a + first of b: batch 1
    sender.add(Outgoing("c", make_batch(jobs[5:])))
    sender.finish()
    assert settled == [["a"], ["b"], ["c"]]
    assert sender.requests == 3


def test_the_spool_against_the_luts_core(tmp_path):
    """The real core on the embedded store: every sample and generated record is stored once, its
    original kept; publishing a file alone first and then through the spool answers duplicate."""
    from gridcredit.config import StoreConfig
    from gridcredit.services.luts.luts import INDEXES, Caller, Luts, LutsPolicy
    from gridcredit.xmlstore import open_store

    publisher = "/O=Grid/CN=Any Publisher"
    store = open_store(StoreConfig(backend="embedded"), tmp_path / "store", indexes=INDEXES)
    try:
        core = Luts(store, LutsPolicy(site_publishers={publisher: frozenset({"*"})}))

        class Client:
            def publish(self, document, *, replace=False):
                return core.publish(document, Caller(publisher), replace=replace)

        samples = [path.read_bytes() for path in sorted(SAMPLES.glob("*.xml"))]
        jobs = random_jobs(40, seed=15)
        documents = samples + [make_batch(jobs[:30])] + [make_record(job) for job in jobs[30:]]
        for document in samples:                         # some published alone first
            assert core.publish(document, Caller(publisher)).ok
        spool = Spool(tmp_path / "spool")
        for document in documents:
            spool.add(document)
        report = spool.send(Client(), batch_records=7)
        expected = sum(len(ur.split_records(document)) for document in documents)
        sample_records = sum(len(ur.split_records(document)) for document in samples)
        assert report.ok, report
        assert report.records_duplicate == sample_records and report.records_stored == expected - sample_records
        for job in jobs[30:]:
            kept = core.record(Caller(publisher), job.record_id).original
            assert kept == make_record(job)          # the file, byte for byte (was: minus its declaration; 11.7)
        for source in ur.split_records(documents[len(samples)]):
            assert core.record(Caller(publisher), source.record_id).original == source.data
    finally:
        store.close()


def test_a_settled_document_carries_the_luts_own_record_results(luts):
    """One type for a record's answer: the spool settles with the core's RecordResult (it had a
    RecordAnswer of its own with the same fields, which never compared equal to it)."""
    from gridcredit.services.luts.luts import RecordResult

    settled = []
    sender = BatchSender(luts, on_settled=settled.extend, batch_records=10)
    job = random_jobs(1, seed=15)[0]
    sender.add(Outgoing("one", make_batch([job])))
    sender.finish()
    [document] = settled
    assert document.results == (RecordResult(0, job.record_id, "stored", ""),)
