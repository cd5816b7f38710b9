"""``gridcredit luts …`` against a real host over HTTPS, and the spool sender killed mid-send.

Every command once through ``gridcredit.server.cli.main`` with ``--json`` parsed and checked against
the records the test published; usage errors exit 2, refusals and partial publications exit 1.
The crash test (both stores) runs ``gridcredit luts send`` as a process, kills it with SIGKILL
twice while it sends, runs it again, and checks that every record is stored exactly once (the
records by query, the counts by the LUTS's incremental summary) and that the spool is empty.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gridcredit.server.cli import main
from gridcredit.services.luts import cli as luts_cli
from gridcredit.services.luts import records as ur
from gridcredit.services.luts.client import LutsClient
from gridcredit.services.luts.spool import Spool

from bank_fixtures import BankUsers, bank_host
from cli_runner import Cli
from luts_fixtures import Job, make_batch, make_record, random_jobs

MACHINES = ["ce1.example.org", "ce2.example.org"]


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("LUTS CLI Admin"), "publisher": pki.user("LUTS CLI Site Publisher"),
            "ce1": pki.user("LUTS CLI ce1 Publisher"), "alice": pki.user("LUTS CLI Alice"),
            "bob": pki.user("LUTS CLI Bob")}


def luts_env(people) -> dict[str, str]:
    return {"GRIDCREDIT_LUTS_ADMINS": people["admin"].dn,
            "GRIDCREDIT_LUTS_SITE_PUBLISHERS": json.dumps({people["publisher"].dn: ["*"],
                                                           people["ce1"].dn: ["ce1.example.org"]})}


@pytest.fixture(scope="module")
def hosts(pki, people, tmp_path_factory):
    """Hosts by backend, started when a test first asks for one."""
    running: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        def get(backend: str):
            if backend not in running:
                users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
                running[backend] = stack.enter_context(bank_host(tmp_path_factory.mktemp(f"luts-cli-{backend}"),
                                                                 backend, users, pki, extra_env=luts_env(people)))
            return running[backend]
        yield get


@pytest.fixture(scope="module")
def host(hosts):
    return hosts("embedded")


@pytest.fixture
def cli(capsys, pki, host):
    return Cli("luts", capsys, pki, host.url)


def usage_exit(capsys, *argv: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["luts", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def write_files(directory: Path, documents: list[bytes]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, document in enumerate(documents):
        path = directory / f"ur-{number:04d}.xml"
        path.write_bytes(document)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------------------------------ usage


def test_help_everywhere_and_usage_errors_exit_2(capsys):
    for command in ("publish", "send", "query", "job", "record", "summary", "whoami"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["luts", command, "--help"])
        assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out
    assert "YYYY-MM" in usage_exit(capsys, "query", "--from", "2026-13")
    assert "not an integer" in usage_exit(capsys, "query", "--int-var", "w=lots")
    assert "NAME=VALUE" in usage_exit(capsys, "query", "--var", "1x=2")
    assert "give 1 to 1,000 records" in usage_exit(capsys, "query", "--limit", "0")
    assert "summarize by" in usage_exit(capsys, "summary", "--by", "user,colour")
    assert "required" in usage_exit(capsys, "summary")
    assert "required" in usage_exit(capsys, "send")
    assert "no such file" in usage_exit(capsys, "publish", "/nonexistent/ur.xml")
    assert "records per batch" in usage_exit(capsys, "publish", "--batch-records", "20000", __file__)


def test_summary_dimensions_are_the_cores():
    from gridcredit.services.luts.luts import QUERY_LIMIT_MAX, SUMMARY_DIMENSIONS

    assert luts_cli.SUMMARY_BY == SUMMARY_DIMENSIONS and luts_cli.QUERY_LIMIT_MAX == QUERY_LIMIT_MAX


# --------------------------------------------------------------------------------- every command


def test_publish_query_job_record_summary_whoami(cli, people, tmp_path):
    alice, bob = people["alice"].dn, people["bob"].dn
    jobs = random_jobs(90, seed=31, prefix="cli", users=[alice, bob], machines=MACHINES)
    files = write_files(tmp_path / "in", [make_batch(jobs[:40]), make_batch(jobs[40:70])]
                        + [make_record(job) for job in jobs[70:]])
    published = cli.ok(people["publisher"], "publish", *files, "--batch-records", "25")
    assert published["ok"] and published["records_stored"] == 90 and published["documents_done"] == 22
    again = cli.ok(people["publisher"], "publish", *files)
    assert again["records_duplicate"] == 90 and again["records_stored"] == 0

    text = cli.ok(people["publisher"], "publish", files[-1], as_json=False)
    assert "0 records stored, 1 already stored, 0 not stored" in text

    # query: the caller's own records, bound variables, paging, months
    mine = cli.ok(people["alice"], "query", "--limit", "1000")
    assert mine["scope"] == "own" and {r["record_id"] for r in mine["records"]} == \
        {j.record_id for j in jobs if j.user == alice}
    long_ones = cli.ok(people["admin"], "query", "n:Usage/n:wall_us > $w and starts-with(@rid, $p)",
                       "--int-var", "w=50_000_000_000", "--var", "p=cli-", "--all", "--limit", "7")
    assert sorted(r["record_id"] for r in long_ones["records"]) == \
        sorted(j.record_id for j in jobs if (j.wall_s or 0) > 50_000)
    first_page = cli.ok(people["admin"], "query", "starts-with(@rid, 'cli-')", "--limit", "10")
    assert first_page["count"] == 10 and first_page["cursor"]
    second_page = cli.ok(people["admin"], "query", "starts-with(@rid, 'cli-')", "--limit", "10",
                         "--cursor", first_page["cursor"])
    assert not {r["record_id"] for r in first_page["records"]} & {r["record_id"] for r in second_page["records"]}
    august = cli.ok(people["admin"], "query", "starts-with(@rid, $p)", "--var", "p=cli-", "--from", "2026-08",
                    "--to", "2026-08", "--all")
    assert {r["record_id"] for r in august["records"]} == \
        {j.record_id for j in jobs if j.end is not None and j.end.strftime("%Y-%m") == "2026-08"}
    namespaced = cli.ok(people["admin"], "query", "x:JobUsageRecord/x:MachineName = 'ce2.example.org' and "
                        "starts-with(@rid, 'cli-')", "--ns", "x=http://schema.ogf.org/urf/2003/09/urf", "--all")
    assert len(namespaced["records"]) == sum(1 for j in jobs if j.machine == "ce2.example.org")
    lines = cli.ok(people["alice"], "query", as_json=False).splitlines()
    assert len(lines) == sum(1 for j in jobs if j.user == alice) and "wall" in lines[0]

    # job, record
    job = next(j for j in jobs[:40] if j.user == bob)
    found = cli.ok(people["bob"], "job", job.global_job_id)
    assert [r["record_id"] for r in found["records"]] == [job.record_id]
    assert cli.ok(people["alice"], "job", job.global_job_id)["records"] == []
    record = cli.ok(people["bob"], "record", job.record_id, "--original")
    assert record["usage"]["wall_us"] == (job.wall_s * 1_000_000 if job.wall_s is not None else None)
    (source,) = [s for s in ur.split_records(make_batch(jobs[:40])) if s.record_id == job.record_id]
    assert record["original"] == source.data.decode()
    raw = cli.ok(people["bob"], "record", job.record_id, "--original", as_json=False)
    assert raw == source.data.decode()                  # exactly as published: no newline added (issue 11.7)
    assert f"user_dn: {bob}" in cli.ok(people["bob"], "record", job.record_id, as_json=False)
    code, _, err = cli(people["alice"], "record", job.record_id)
    assert code == 1 and "UnknownRecord" in err

    # summary equals a recomputation from the published jobs
    summary = cli.ok(people["admin"], "summary", "--by", "user,month", "--from", "2026-07", "--to", "2026-12")
    expected = Counter()
    for j in jobs:
        if j.end is not None and j.user:
            expected[(j.user, j.end.strftime("%Y-%m"))] += 1
    got = {(row["key"]["user"], row["key"]["month"]): row["jobs"] for row in summary["rows"]
           if row["key"]["user"] in (alice, bob)}
    assert got == dict(expected)
    table = cli.ok(people["alice"], "summary", "--by", "vo", as_json=False)
    assert "jobs" in table and "scope own" in table
    code, _, err = cli(people["alice"], "summary", "--by", "user", "--scope", "all")
    assert code == 1 and "NotAuthorized" in err

    who = cli.ok(people["alice"], "whoami")
    assert who["dn"] == alice and who["service"] == "luts"


def test_one_record_id_on_two_machines_job_and_record(cli, people, tmp_path):
    """A record is (machine, record id): ``luts job`` lists both machines' records, ``luts record``
    asks for --machine when the id is stored for several the caller may see."""
    bob = people["bob"].dn
    ce1 = Job("cli-both", bob, None, "ce1.example.org", None, None, 10, 5, None, local_job_id="cli-both-job")
    ce2 = Job("cli-both", bob, None, "ce2.example.org", None, None, 20, 5, None, local_job_id="cli-both-job")
    files = write_files(tmp_path / "in", [make_record(ce1), make_record(ce2)])
    assert cli.ok(people["publisher"], "publish", *files)["records_stored"] == 2
    found = cli.ok(people["bob"], "job", "cli-both-job")
    assert sorted((r["record_id"], r["usage"]["machine"]) for r in found["records"]) == [
        ("cli-both", "ce1.example.org"), ("cli-both", "ce2.example.org")]
    lines = cli.ok(people["bob"], "job", "cli-both-job", as_json=False).splitlines()
    assert len(lines) == 2 and {line.split("machine ")[1].split()[0] for line in lines} == {
        "ce1.example.org", "ce2.example.org"}
    code, _, err = cli(people["bob"], "record", "cli-both")
    assert code == 1 and err.startswith("RemoteFault: ") and "AmbiguousRecord" in err and "ce2.example.org" in err
    assert cli.ok(people["bob"], "record", "cli-both", "--machine", "ce2.example.org")["usage"]["wall_us"] == 20_000_000
    assert cli.ok(people["ce1"], "record", "cli-both")["usage"]["machine"] == "ce1.example.org"   # the one it sees


def test_publish_reports_records_not_stored_and_exits_1(cli, people, tmp_path):
    ours = random_jobs(4, seed=32, prefix="cli-part", machines=["ce1.example.org"])
    theirs = random_jobs(2, seed=33, prefix="cli-part", machines=["ce9.elsewhere.org"])
    files = write_files(tmp_path / "in", [make_batch(ours + theirs), b"<broken"])
    code, report, err = cli(people["ce1"], "publish", *files)
    assert code == 1 and err == ""
    assert report["records_stored"] == 4 and report["records_rejected"] == 3 and not report["ok"]
    statuses = Counter(r["status"] for r in report["rejections"])
    assert statuses == {"refused": 2, "unreadable": 1}
    code, text, _ = cli(people["ce1"], "publish", *files, as_json=False)
    assert code == 1 and "refused: " in text and "unreadable: " in text and "ce9.elsewhere.org" in text


def test_progress_bar_on_request(cli, people, tmp_path, capsys):
    files = write_files(tmp_path / "in", [make_record(job) for job in random_jobs(30, seed=34, prefix="cli-bar",
                                                                                   machines=MACHINES)])
    code, text, err = cli(people["publisher"], "publish", *files, "--batch-records", "10", "--progress",
                          as_json=False)
    assert code == 0 and "30 records stored" in text
    assert "[" + "#" * luts_cli.ProgressBar.WIDTH + "] 100%  30/30 files" in err and err.endswith("\n")


def test_spool_then_send(cli, people, tmp_path):
    jobs = random_jobs(60, seed=35, prefix="cli-spool", machines=MACHINES)
    files = write_files(tmp_path / "in", [make_batch(jobs[:50])] + [make_record(job) for job in jobs[50:]])
    spool_dir = tmp_path / "spool"
    spooled = cli.ok(people["publisher"], "publish", "--spool", str(spool_dir), *files)
    assert len(spooled["spooled"]) == 11 and spooled["failed"] == []
    assert cli.ok(people["admin"], "query", "starts-with(@rid, 'cli-spool')")["records"] == []   # not sent yet
    sent = cli.ok(people["publisher"], "send", "--spool", str(spool_dir), "--batch-records", "20")
    assert sent["ok"] and sent["records_stored"] == 60 and sent["documents_left"] == 0
    assert Spool(spool_dir).pending() == []
    assert cli.ok(people["publisher"], "send", "--spool", str(spool_dir), as_json=False).startswith(
        f"the spool {spool_dir} is empty")
    stored = cli.ok(people["admin"], "query", "starts-with(@rid, 'cli-spool')", "--all")
    assert sorted(r["record_id"] for r in stored["records"]) == sorted(j.record_id for j in jobs)


def test_send_to_an_unreachable_luts_keeps_the_spool(capsys, pki, people, tmp_path, host):
    spool = Spool(tmp_path / "spool")
    spool.add(make_batch(random_jobs(5, seed=36, prefix="cli-down", machines=MACHINES)))
    nowhere = Cli("luts", capsys, pki, "https://localhost:1")
    code, report, err = nowhere(people["publisher"], "send", "--spool", str(spool.directory), "--retries", "0")
    assert code == 1 and ("cannot reach" in err or "cannot reach" in (report or {}).get("stopped", ""))
    assert len(spool.pending()) == 1
    sent = Cli("luts", capsys, pki, host.url).ok(people["publisher"], "send", "--spool", str(spool.directory))
    assert sent["records_stored"] == 5 and spool.pending() == []


# --------------------------------------------------------------------- the sender killed mid-send


def sender(host, user, spool_dir: Path, log_path: Path) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRIDCREDIT_")}
    command = [sys.executable, "-m", "gridcredit.server.cli", "luts", "send", "--spool", str(spool_dir),
               "--batch-records", "20", "--url", host.url, "--cert", str(user.cert_path), "--key",
               str(user.key_path), "--trust", str(host.pki.trust_dir), "--json", "--wait", "30"]
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded", "basex"])
def test_a_sender_killed_mid_send_resumes_and_stores_each_record_once(hosts, backend, people, tmp_path):
    host = hosts(backend)
    machine = f"crash-{backend}.example.org"      # this test's records only
    files, per_file = 24, 40
    jobs = random_jobs(files * per_file, seed=37, prefix=f"crash-{backend}", machines=[machine])
    spool = Spool(tmp_path / "spool")
    for start in range(0, len(jobs), per_file):
        chunk = jobs[start:start + per_file]
        spool.add(make_batch(chunk))
    log_path = tmp_path / "sender.log"
    kills = 0
    for kill_below in (files * 3 // 4, files // 3):           # two kills: once a quarter, then two thirds are sent
        process = sender(host, people["publisher"], spool.directory, log_path)
        deadline = time.monotonic() + 120
        while len(spool.pending()) > kill_below and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, f"the sender ended before it was killed:\n{log_path.read_text()[-3000:]}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        kills += 1
        assert 0 < len(spool.pending()) <= kill_below
    process = sender(host, people["publisher"], spool.directory, log_path)
    assert process.wait(180) == 0, log_path.read_text()[-3000:]
    assert spool.pending() == [] and spool.rejected() == []
    assert list(spool.tmp_dir.iterdir()) == []
    admin = LutsClient(host.url, credential=people["admin"].credential, trust_dir=host.pki.trust_dir, timeout_s=120)
    stored = Counter(record.record_id for record in admin.query_all("@machine = $m", {"m": machine}, page_size=1000))
    assert stored == Counter(job.record_id for job in jobs)             # each record once
    summary = admin.summary(["machine"])
    (row,) = [row for row in summary.rows if row.key["machine"] == machine]
    assert row.jobs == len(jobs)                                          # counted once in the summaries
    assert row.wall_us == sum((job.wall_s or 0) * 1_000_000 for job in jobs)
    assert kills == 2


def test_summary_shows_and_prints_the_charge_per_unit(cli, people):
    """Issue 11.5: ``luts summary`` (text and --json) never adds charges in different units."""
    user = "/O=Grid/CN=LUTS CLI Unit Payer"
    jobs = [Job(f"cli-unit-{n}", user, "atlas", "ce1.example.org", None, None, 10, 5, charge, charge_unit=unit)
            for n, (charge, unit) in enumerate([("5", "EUR"), ("10", "SEK"), ("1.5", "EUR"), ("7", None)])]
    client = LutsClient(cli.url, credential=people["publisher"].credential, trust_dir=cli.pki.trust_dir, timeout_s=60)
    assert client.publish(make_batch(jobs)).ok
    summary = cli.ok(people["admin"], "summary", "--by", "user")
    [row] = [row for row in summary["rows"] if row["key"]["user"] == user]
    assert row["charges"] == [{"unit": "EUR", "jobs": 2, "charge_micro": 6_500_000},
                              {"unit": "SEK", "jobs": 1, "charge_micro": 10_000_000},
                              {"unit": None, "jobs": 1, "charge_micro": 7_000_000}]
    assert "charge_micro" not in row
    units = {total["unit"] for total in summary["totals"]["charges"]}
    assert {"EUR", "SEK", None} <= units and "charge_micro" not in summary["totals"]
    table = cli.ok(people["admin"], "summary", "--by", "user", as_json=False)
    [line] = [line for line in table.splitlines() if line.startswith(user)]
    assert line.rstrip().endswith("6.5 EUR, 10 SEK, 7 (no unit)"), line


@pytest.mark.slow
def test_a_file_of_more_records_than_one_request_takes_is_published_in_batches(cli, people, tmp_path):
    """Issue 11.7: a file of 10,001 records was refused whole although it is sent in batches of 1,000."""
    jobs = random_jobs(10_001, seed=71, prefix="cli-many", machines=["ce1.example.org"])
    [path] = write_files(tmp_path / "many", [make_batch(jobs)])
    published = cli.ok(people["ce1"], "publish", path)
    assert published["ok"] and published["records_stored"] == 10_001 and published["documents_done"] == 1
    spool = tmp_path / "spool"
    spooled = cli.ok(people["ce1"], "publish", "--spool", str(spool), path)
    assert len(spooled["spooled"]) == 1 and spooled["failed"] == []
    sent = cli.ok(people["ce1"], "send", "--spool", str(spool))
    assert sent["ok"] and sent["records_duplicate"] == 10_001


def test_a_huge_text_node_is_reported_as_too_large(cli, people, tmp_path):
    """Issue 11.7: libxml2's hint ('try XML_PARSE_HUGE') names a parser option, not what is wrong."""
    job = Job("cli-huge", None, None, "ce1.example.org", None, None, 10, 5, None)
    document = make_record(job).replace(b"<ur:Status>", b"<ur:JobName>" + b"x" * 10_000_001 + b"</ur:JobName><ur:Status>")
    [path] = write_files(tmp_path / "huge", [document])
    code, report, err = cli(people["ce1"], "publish", path)
    assert code == 1 and report["records_rejected"] == 1, (report, err)
    [rejection] = report["rejections"]
    assert "too large" in rejection["message"] and "XML_PARSE_HUGE" not in rejection["message"], rejection


def test_original_is_byte_exact_after_a_batched_publish(cli, people, tmp_path):
    """Issue 11.7: 'luts record --original' gives the file as published, byte for byte — its XML
    declaration, a byte-order mark, comments and whitespace around the record included — although
    the CLI sends files in batches."""
    def record(rid: str) -> bytes:
        job = Job(rid, None, None, "ce1.example.org", None, None, 10, 5, None)
        return make_record(job).split(b"\n", 1)[1].rstrip(b"\n")        # the root element alone
    files = {
        "cli-orig-decl": b'<?xml version="1.0" encoding="UTF-8"?>\n' + record("cli-orig-decl") + b"\n",
        "cli-orig-bom": b"\xef\xbb\xbf<?xml version='1.0' encoding='utf-8' standalone='yes'?>\r\n"
                        b"<!-- written by a test -->\r\n<?arc-logger v=2?>\r\n  " + record("cli-orig-bom") + b"\r\n\r\n",
        "cli-orig-tail": record("cli-orig-tail") + b"\n<!-- after the record -->\n\t \n",
        "cli-orig-bare": record("cli-orig-bare"),
    }
    paths = write_files(tmp_path / "orig", list(files.values()))
    published = cli.ok(people["ce1"], "publish", *paths, "--batch-records", "3")
    assert published["records_stored"] == 4
    for rid, data in files.items():
        raw = cli.ok(people["ce1"], "record", rid, "--original", as_json=False)
        assert raw.encode("utf-8") == data, rid
        assert cli.ok(people["ce1"], "record", rid, "--original")["original"] == data.decode("utf-8"), rid
