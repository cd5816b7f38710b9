"""The LUTS over signed SOAP and the SGAS registration, against a real host on both stores."""
from __future__ import annotations

import json

import pytest
import requests

from gridcredit.errors import RemoteFault
from gridcredit.security.credentials import load_credential
from gridcredit.services.luts import records as ur
from gridcredit.services.luts.client import LutsClient

from bank_fixtures import BankUsers, bank_host
from luts_fixtures import Job, make_batch, make_record, random_jobs

SITE_HOST = "ce1.example.org"


@pytest.fixture(scope="module")
def people(pki, tmp_path_factory):
    directory = tmp_path_factory.mktemp("luts-people")
    cert, key = pki.ca.issue_host(SITE_HOST, directory / "site", key=pki.keys.fresh())
    other_cert, other_key = pki.ca.issue_host("ce9.elsewhere.org", directory / "other", key=pki.keys.fresh())
    return {
        "admin": pki.user("LUTS Admin"), "manager": pki.user("Atlas Manager"),
        "alice": pki.user("Alice Analyst"), "bob": pki.user("Bob Builder"),
        "site": load_credential(cert, key), "site_files": (cert, key),
        "other_files": (other_cert, other_key), "site_admin": pki.user("Site Admin"),
    }


def luts_env(people) -> dict[str, str]:
    return {
        "GRIDCREDIT_LUTS_ADMINS": people["admin"].dn,
        "GRIDCREDIT_LUTS_VO_MANAGERS": json.dumps({"atlas": [people["manager"].dn]}),
        "GRIDCREDIT_LUTS_SITE_PUBLISHERS": json.dumps({people["site_admin"].dn: [SITE_HOST, "ce2.example.org"]}),
    }


@pytest.fixture(params=["embedded", "basex"], scope="module")
def host(request, pki, people, tmp_path_factory):
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    with bank_host(tmp_path_factory.mktemp(f"luts-{request.param}"), request.param, users, pki,
                   extra_env=luts_env(people)) as running:
        yield running


def client(host, who) -> LutsClient:
    return LutsClient(host.url, credential=getattr(who, "credential", who), trust_dir=host.pki.trust_dir,
                      timeout_s=60)


def test_publish_query_job_and_summary_over_soap(host, people):
    alice, bob = people["alice"].dn, people["bob"].dn
    jobs = random_jobs(60, seed=3, prefix=f"svc-{host.backend}", users=[alice, bob], machines=[SITE_HOST])
    site = client(host, people["site"])
    report = site.publish(make_batch(jobs))
    assert [r.status for r in report.results] == ["stored"] * 60
    assert [r.status for r in site.publish(make_batch(jobs[:5])).results] == ["duplicate"] * 5

    mine = client(host, people["alice"]).query(limit=1000)
    assert mine.scope == "own"
    assert {r.record_id for r in mine.records} == {j.record_id for j in jobs if j.user == alice}
    assert all(r.original.startswith(b"<ur:JobUsageRecord") for r in mine.records)

    admin = client(host, people["admin"])
    long_ones = list(admin.query_all("n:Usage/n:wall_us > $w", {"w": 50_000_000_000}, page_size=7))
    assert {r.record_id for r in long_ones} == {j.record_id for j in jobs if (j.wall_s or 0) > 50_000}

    job = next(j for j in jobs if j.user == bob)
    assert [r.record_id for r in client(host, people["bob"]).job(job.global_job_id)] == [job.record_id]
    assert client(host, people["alice"]).job(job.global_job_id) == ()
    with pytest.raises(RemoteFault) as fault:
        client(host, people["alice"]).record(job.record_id)
    assert fault.value.code == "UnknownRecord"

    summary = admin.summary(["user"])
    by_user = {row.key["user"]: row for row in summary.rows}
    assert by_user[alice].jobs == sum(1 for j in jobs if j.user == alice)
    assert by_user[alice].wall_us == sum((j.wall_s or 0) * 1_000_000 for j in jobs if j.user == alice)
    own = client(host, people["bob"]).summary(["month"])
    assert sum(row.jobs for row in own.rows) == sum(1 for j in jobs if j.user == bob)


def test_one_record_id_on_two_machines_over_soap(host, people):
    """Record identity is (machine, record id): ce1's host cannot block ce2's record, JobUsage answers
    both, GetRecord needs the machine when the caller sees both."""
    rid = f"svc-both-{host.backend}"
    ce1 = Job(rid, people["bob"].dn, None, SITE_HOST, None, None, 10, 5, None, local_job_id="77")
    ce2 = Job(rid, people["bob"].dn, None, "ce2.example.org", None, None, 20, 5, None, local_job_id="77")
    assert [r.status for r in client(host, people["site"]).publish(make_record(ce1)).results] == ["stored"]
    site_admin = client(host, people["site_admin"])
    assert [r.status for r in site_admin.publish(make_record(ce2)).results] == ["stored"]
    assert [r.status for r in site_admin.publish(make_record(ce2), replace=True).results] == ["duplicate"]
    found = client(host, people["bob"]).job("77")
    assert sorted((r.record_id, r.usage.machine) for r in found if r.record_id == rid) == [
        (rid, SITE_HOST), (rid, "ce2.example.org")]
    with pytest.raises(RemoteFault) as fault:
        client(host, people["bob"]).record(rid)
    assert fault.value.code == "AmbiguousRecord" and "ce2.example.org" in str(fault.value)
    assert client(host, people["bob"]).record(rid, machine="ce2.example.org").usage.wall_us == 20_000_000
    assert client(host, people["site"]).record(rid).usage.machine == SITE_HOST     # the one ce1 may see


def test_refusals_are_faults_with_reason_codes(host, people, pki):
    record = make_record(Job(f"ref-{host.backend}", people["alice"].dn, None, SITE_HOST, None, None, 1, 1, None))
    with pytest.raises(RemoteFault) as fault:
        client(host, people["alice"]).publish(record)
    assert fault.value.code == "NotAuthorized"
    limited = pki.proxy("Site Admin", limited=True)
    with pytest.raises(RemoteFault) as fault:
        client(host, limited).publish(record)
    assert fault.value.code == "NotAuthorized"
    with pytest.raises(RemoteFault) as fault:
        client(host, people["admin"]).query("n:Usage[")
    assert fault.value.code == "InvalidQuery"
    with pytest.raises(RemoteFault) as fault:
        client(host, people["admin"]).publish(b"<not-a-record/>")
    assert fault.value.code == "InvalidUsageRecord"
    with pytest.raises(RemoteFault) as fault:
        client(host, people["alice"]).summary(["user"], scope="all")
    assert fault.value.code == "NotAuthorized"


# -- SGAS registration: HTTPS POST of UsageRecords, the publisher known by its TLS client certificate --


def sgas_post(host, data: bytes, cert=None):
    return requests.post(f"{host.url}/sgas/ur", data=data, cert=cert, verify=str(host.pki.trust_dir),
                         headers={"Content-Type": "application/xml; charset=UTF-8"}, timeout=60)


def test_sgas_registration_with_a_host_certificate(host, people):
    jobs = random_jobs(12, seed=5, prefix=f"sgas-{host.backend}", users=[people["alice"].dn], machines=[SITE_HOST])
    answer = sgas_post(host, make_batch(jobs), cert=people["site_files"])
    assert answer.status_code == 200, answer.text
    assert answer.text.startswith("stored 12,")
    again = sgas_post(host, make_batch(jobs), cert=people["site_files"])
    assert again.status_code == 200 and "already stored 12" in again.text
    mine = next(job for job in jobs if job.user)
    found = client(host, people["alice"]).query(f"@rid = '{mine.record_id}'")
    assert [r.record_id for r in found.records] == [mine.record_id]
    assert found.records[0].publisher.endswith(f"CN={SITE_HOST}")


def test_sgas_a_batch_sent_again_with_new_create_times_is_already_stored(host, people):
    """Issue 11.4: ARC re-sends records with only RecordIdentity/@createTime changed."""
    jobs = random_jobs(5, seed=12, prefix=f"sgas-again-{host.backend}", users=[people["alice"].dn],
                       machines=[SITE_HOST])
    batch = make_batch(jobs)
    assert sgas_post(host, batch, cert=people["site_files"]).text.startswith("stored 5,")
    again = batch.replace(b'ur:createTime="2026-01-01T00:00:00Z"', b'ur:createTime="2026-12-01T20:00:00Z"')
    assert again.count(b"2026-12-01T20:00:00Z") == 5
    answer = sgas_post(host, again, cert=people["site_files"])
    assert answer.status_code == 200 and answer.text.startswith("stored 0, already stored 5, not stored 0"), \
        answer.text


def test_sgas_registration_reads_arcs_latin1_body(host, people):
    job = Job(f"sgas-latin1-{host.backend}", "/O=Grid/CN=Jürgen Müller", None, SITE_HOST, None, None, 5, 5, None)
    body = make_batch([job]).decode().encode("latin-1")    # what ARC's http.client sends for a str body
    answer = sgas_post(host, body, cert=people["site_files"])
    assert answer.status_code == 200 and answer.text.startswith("stored 1,"), answer.text
    stored = client(host, people["admin"]).record(job.record_id)
    assert stored.usage.user_dn == "/O=Grid/CN=Jürgen Müller"
    assert "Jürgen Müller".encode("utf-8") in stored.original


def test_sgas_registration_refuses_other_publishers(host, people):
    batch = make_batch(random_jobs(2, seed=6, prefix=f"sgas-no-{host.backend}", machines=[SITE_HOST]))
    assert sgas_post(host, batch).status_code == 403                                   # no certificate
    user = people["alice"]
    assert sgas_post(host, batch, cert=(str(user.cert_path), str(user.key_path))).status_code == 403
    other = sgas_post(host, batch, cert=people["other_files"])                         # a host, not of ce1
    assert other.status_code == 200 and "not stored 2" in other.text
    junk = sgas_post(host, b"<junk & more", cert=people["site_files"])        # kept for the operator, not refused:
    assert junk.status_code == 200 and "sgas_quarantine/" in junk.text           # a refusal would block ARC for good
    assert requests.get(f"{host.url}/sgas/ur", verify=str(host.pki.trust_dir), timeout=30).status_code == 405
    assert client(host, people["admin"]).query(f"starts-with(@rid, 'sgas-no-')").records == ()


# -- who is a host: the names its certificate was issued for, never a DN's text (issue 10.6) -----------


@pytest.fixture(scope="module")
def lookalikes(pki, tmp_path_factory):
    """A user certificate whose CN is the site's host name, and a host certificate whose CN is another
    name than its subjectAltName (the site's host)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from gridcredit.security import pki as pki_module
    directory = tmp_path_factory.mktemp("luts-lookalikes")
    cert, key = pki.ca.issue(pki_module.parse_grid_dn("/DC=org/DC=example/O=gridcredit-test/CN=gateway.example.org"),
                             key=pki.keys.fresh(), san=[x509.DNSName(SITE_HOST)],
                             usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH))
    cert_path, key_path = directory / "hostcert.pem", directory / "hostkey.pem"
    pki_module.write_pem_certificates(cert_path, [cert])
    pki_module.write_private_key(key_path, key)
    return {"user_named_like_the_host": pki.user(SITE_HOST),
            "renamed_host": load_credential(cert_path, key_path), "renamed_host_files": (cert_path, key_path)}


def test_a_user_certificate_named_like_a_host_cannot_publish_for_it(host, people, lookalikes):
    user = lookalikes["user_named_like_the_host"]
    assert user.dn.endswith(f"/CN={SITE_HOST}")
    batch = make_batch(random_jobs(2, seed=8, prefix=f"cn-{host.backend}", machines=[SITE_HOST]))
    with pytest.raises(RemoteFault) as fault:
        client(host, user).publish(batch)
    assert fault.value.code == "NotAuthorized"
    assert sgas_post(host, batch, cert=(str(user.cert_path), str(user.key_path))).status_code == 403
    assert client(host, people["admin"]).query(f"starts-with(@rid, 'cn-{host.backend}')").records == ()


def test_a_host_certificate_publishes_for_its_subject_alt_name_not_its_cn(host, people, lookalikes):
    renamed = lookalikes["renamed_host"]
    over_soap = random_jobs(2, seed=9, prefix=f"san-soap-{host.backend}", machines=[SITE_HOST])
    assert [r.status for r in client(host, renamed).publish(make_batch(over_soap)).results] == ["stored"] * 2
    over_sgas = random_jobs(2, seed=10, prefix=f"san-sgas-{host.backend}", machines=[SITE_HOST])
    answer = sgas_post(host, make_batch(over_sgas), cert=lookalikes["renamed_host_files"])
    assert answer.status_code == 200 and answer.text.startswith("stored 2,"), answer.text
    for_the_cn = random_jobs(1, seed=11, prefix=f"san-cn-{host.backend}", machines=["gateway.example.org"])
    assert [r.status for r in client(host, renamed).publish(make_batch(for_the_cn)).results] == ["refused"]


# -- ARC's own publisher (Debian nordugrid-arc-arex, jura-ng, SGAS target) against /sgas/ur ------------


@pytest.fixture(scope="module")
def arc_site_files(pki, tmp_path_factory):
    from arc_sgas import DEFAULT_SUBMIT_HOST
    cert, key = pki.ca.issue_host(DEFAULT_SUBMIT_HOST, tmp_path_factory.mktemp("arc-ce"), key=pki.keys.fresh())
    return cert, key


def arc_jobs(tag: str, count: int, user: str):
    from datetime import datetime, timedelta, timezone
    from arc_sgas import ArcJob
    end = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    return [ArcJob(job_id=f"{tag}{n:04d}", user_dn=user, end_time=end + timedelta(seconds=n), walltime_s=600 + n,
                   cpu_user_s=300 + n, cpu_kernel_s=7, local_job_id=str(9000 + n), fqans=("/atlas/Role=NULL",),
                   queue="grid") for n in range(count)]


def test_arcs_own_publisher_stores_records_once(host, people, arc_site_files, tmp_path):
    from arc_sgas import publish_with_arc
    user = people["bob"].dn
    jobs = arc_jobs(f"arc{host.backend}", 120, user)                     # three batches of 50, 50 and 20
    cert, key = arc_site_files
    result = publish_with_arc(jobs, f"{host.url}/sgas", cert, key, host.pki.trust_dir, timeout_s=120)
    assert result.ok and result.http_statuses == [200, 200, 200], result.errors() or result.log_text[-3000:]
    again = publish_with_arc(jobs, f"{host.url}/sgas", cert, key, host.pki.trust_dir, timeout_s=120, mode="republish")
    assert again.ok, again.errors()
    stored = [r for r in client(host, people["bob"]).query_all(f"starts-with(@rid, 'ur-') and contains(@rid, 'arc{host.backend}')")]
    assert sorted(r.record_id for r in stored) == sorted(job.record_id() for job in jobs)
    first = next(r for r in stored if r.record_id == jobs[0].record_id())
    assert first.usage.wall_us == 600_000_000 and first.usage.cpu_us == 307_000_000
    assert first.usage.vo == "atlas" and first.usage.user_dn == user
    assert first.publisher.endswith(f"CN={jobs[0].submit_host()}")


def test_arcs_publisher_with_a_certificate_not_allowed_is_refused(host, people):
    from arc_sgas import publish_with_arc
    user = people["alice"]
    jobs = arc_jobs(f"arcno{host.backend}", 3, user.dn)
    result = publish_with_arc(jobs, f"{host.url}/sgas", user.cert_path, user.key_path, host.pki.trust_dir, timeout_s=60)
    assert not result.ok and result.http_statuses == [403]
    assert client(host, people["admin"]).query(f"contains(@rid, 'arcno{host.backend}')").records == ()


def test_summary_gives_the_charge_per_unit_over_soap(host, people):
    """Issue 11.5: the Summary operation carries one charge per unit (and charges without a unit
    apart), never their sum."""
    user = f"/O=Grid/CN=Unit Payer {host.backend}"
    jobs = [Job(f"svc-unit-{host.backend}-{n}", user, "atlas", SITE_HOST, None, None, 10, 5, charge, charge_unit=unit)
            for n, (charge, unit) in enumerate([("5", "EUR"), ("10", "SEK"), ("0.25", "EUR"), ("7", None),
                                                (None, None)])]
    assert client(host, people["site"]).publish(make_batch(jobs)).ok
    rows = [row for row in client(host, people["admin"]).summary(["user"]).rows if row.key["user"] == user]
    assert [(row.jobs, [(c.unit, c.jobs, c.charge_micro) for c in row.charges]) for row in rows] == [
        (5, [("EUR", 2, 5_250_000), ("SEK", 1, 10_000_000), (None, 1, 7_000_000)])]


def test_the_normalized_view_over_soap(host, people):
    """Issue 11.6: a user name that is not a DN, and the group and role of a Gratia VOName that is an
    FQAN, reach the client; the VO and machine lower-case, a DN in grid form."""
    rid = f"svc-norm-{host.backend}"
    document = (f'<JobUsageRecord xmlns="{ur.NS_GRATIA}"><RecordIdentity recordId="{rid}"/><UserIdentity>'
                "<GlobalUsername>dave@example.org</GlobalUsername><DN>CN=Dave,O=Grid</DN>"
                "<VOName>/CMS/uscms/Role=pilot/Capability=NULL</VOName></UserIdentity>"
                f"<MachineName>{SITE_HOST.upper()}</MachineName></JobUsageRecord>").encode()
    assert client(host, people["site"]).publish(document).ok
    usage = client(host, people["admin"]).record(rid).usage
    assert (usage.user_dn, usage.global_user, usage.vo, usage.vo_group, usage.vo_role, usage.machine) == (
        "/O=Grid/CN=Dave", "dave@example.org", "cms", "/cms/uscms", "pilot", SITE_HOST)
