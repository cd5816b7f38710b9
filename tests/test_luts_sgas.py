"""POST /sgas/ur as real sites send it (issue 11.1-11.3, 11.7): large batches, bodies over the
limit, unreadable posts of several MB, records refused inside an accepted post, UTF-16 — over
HTTPS to a real host with the site's host certificate, on both stores."""
from __future__ import annotations

import http.client
import ssl

import pytest
import requests

from gridcredit.security.credentials import load_credential
from gridcredit.services.luts.client import LutsClient

from bank_fixtures import BankUsers, bank_host
from sgas_posts import arc_post, arc_record, big_batch

SITE_HOST = "ce1.example.org"
SGAS_LIMIT = 16_000_000           # luts.sgas_request_bytes_max of this host (SOAP keeps 10 MB)


@pytest.fixture(scope="module")
def people(pki, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sgas-people")
    cert, key = pki.ca.issue_host(SITE_HOST, directory / "site", key=pki.keys.fresh())
    return {"admin": pki.user("LUTS Admin"), "site_files": (cert, key), "site": load_credential(cert, key)}


@pytest.fixture(params=["embedded", "basex"], scope="module")
def host(request, pki, people, tmp_path_factory):
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    env = {"GRIDCREDIT_LUTS_ADMINS": people["admin"].dn, "GRIDCREDIT_LUTS_SGAS_REQUEST_BYTES_MAX": str(SGAS_LIMIT)}
    with bank_host(tmp_path_factory.mktemp(f"sgas-{request.param}"), request.param, users, pki,
                   extra_env=env) as running:
        yield running


def admin(host, people) -> LutsClient:
    return LutsClient(host.url, credential=people["admin"].credential, trust_dir=host.pki.trust_dir, timeout_s=120)


def post(host, data: bytes, cert=None, content_type: str = "application/xml; charset=UTF-8"):
    return requests.post(f"{host.url}/sgas/ur", data=data, cert=cert, verify=str(host.pki.trust_dir),
                         headers={"Content-type": content_type}, timeout=300)


def post_as_arc(host, data: bytes, cert) -> tuple[int, bytes]:
    """What ARC's publisher does (http.client, AP:435-465): send the whole body, then read the answer."""
    context = ssl.create_default_context(cafile=None, capath=str(host.pki.trust_dir))
    context.load_cert_chain(*map(str, cert))
    connection = http.client.HTTPSConnection("127.0.0.1", host.port, context=context, timeout=300)
    try:
        connection.request("POST", "/sgas/ur", data, {"Accept-Encoding": "identity",
                                                      "Content-type": "application/xml; charset=UTF-8"})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_sgas_a_batch_larger_than_the_soap_limit_is_stored(host, people):
    """50 records of ~250 KB (many file transfers): 12.5 MB, over server.request_bytes_max (10 MB)."""
    batch = big_batch(f"big{host.backend}", SITE_HOST)
    assert 12_000_000 < len(batch) < SGAS_LIMIT
    status, body = post_as_arc(host, batch, people["site_files"])
    assert status == 200 and body.startswith(b"stored 50, already stored 0, not stored 0"), body[:500]
    stored = list(admin(host, people).query_all(f"starts-with(@rid, 'ur-{SITE_HOST}-big{host.backend}')", page_size=10))
    assert len(stored) == 50 and all(len(r.original) > 240_000 for r in stored)


def test_sgas_a_post_over_its_limit_gets_an_answer_the_reporter_reads(host, people):
    """Refused, and the reporter (which sends everything before it reads) reads why — not a TLS EOF."""
    batch = big_batch(f"over{host.backend}", SITE_HOST, records=70)
    assert len(batch) > SGAS_LIMIT
    status, body = post_as_arc(host, batch, people["site_files"])
    assert status == 413 and b"luts.sgas_request_bytes_max" in body, body
    assert admin(host, people).query(f"contains(@rid, 'over{host.backend}')").records == ()
    # no certificate: its body is read and thrown away, the 403 is read too
    answer = post(host, big_batch(f"anon{host.backend}", SITE_HOST, records=20))
    assert answer.status_code == 403 and "host certificate" in answer.text


def test_sgas_an_unreadable_post_of_several_megabytes_is_kept_and_answered_200(host, people):
    records = [arc_record(f"junk{host.backend}{n}", SITE_HOST, transfers=700) for n in range(25)]
    records[7] = arc_record(f"junk{host.backend}7", SITE_HOST, transfers=700, job_name="a & b")
    posted = arc_post(records).encode()
    assert len(posted) > 5_000_000
    status, body = post_as_arc(host, posted, people["site_files"])
    assert status == 200 and b"kept as sgas_quarantine/" in body, body[:500]
    held_id = body.split(b"sgas_quarantine/")[1].split()[0].decode()
    [kept] = (host.state_dir / "luts" / "held" / "sgas_quarantine").glob(f"{held_id}-*.xml")
    assert kept.read_bytes() == posted                         # byte for byte, outside the store's documents


def test_sgas_records_refused_inside_an_accepted_post_are_kept(host, people):
    tag = f"mixed{host.backend}"
    records = [arc_record(f"{tag}-good", SITE_HOST), arc_record(f"{tag}-dot", SITE_HOST + "."),
               arc_record(f"{tag}-port", SITE_HOST + ":2811"), arc_record(f"{tag}-elsewhere", "ce7.other.org"),
               arc_record(f"{tag}-duration", SITE_HOST, wall="one hour"),
               arc_record(f"{tag}-noid", SITE_HOST, record_id=None),
               arc_record(f"{tag}-foreign", SITE_HOST, namespace="urn:example:other"),
               arc_record(f"{tag}-oversize", SITE_HOST, transfers=4000)]
    status, body = post_as_arc(host, arc_post(records).encode(), people["site_files"])
    text = body.decode()
    assert status == 200 and text.startswith("stored 3, already stored 0, not stored 5 of 8"), text
    assert text.count("(kept as sgas_refused/") == 5, text
    stored = list(admin(host, people).query_all(f"contains(@rid, '{tag}')"))
    assert {r.usage.machine for r in stored} == {SITE_HOST} and len(stored) == 3
    assert len(list((host.state_dir / "luts" / "held" / "sgas_refused").glob("*.xml"))) == 1   # the oversize one


@pytest.mark.parametrize("form", ["utf-16 with a BOM", "utf-16le declared, no BOM", "utf-8 with a BOM"])
def test_sgas_a_post_in_the_encoding_it_declares_is_read_so(host, people, form):
    dn = "/DC=org/DC=example/CN=Łukasz Żółć"                         # not ISO-8859-1: ARC cannot send it
    tag = f"enc{host.backend}{form.split()[0].replace('-', '')}{'bom' if 'BOM' in form and 'no' not in form else 'x'}"
    record = arc_record(tag, SITE_HOST, user=dn)
    if form == "utf-16 with a BOM":
        data = arc_post([record], encoding="UTF-16").encode("utf-16")
    elif form == "utf-16le declared, no BOM":
        data = arc_post([record], encoding="UTF-16LE").encode("utf-16-le")
    else:
        data = b"\xef\xbb\xbf" + arc_post([record]).encode("utf-8")
    answer = post(host, data, people["site_files"], content_type="application/xml")
    assert answer.status_code == 200 and answer.text.startswith("stored 1,"), answer.text
    [stored] = list(admin(host, people).query_all(f"@rid = 'ur-{SITE_HOST}-{tag}'"))
    assert stored.usage.user_dn == dn


def test_sgas_arcs_latin1_body_is_still_read_as_latin1(host, people):
    """The case the ISO-8859-1 fallback was made for (docs/arc-sgas.md, Surprise 1) is unchanged."""
    tag = f"latin{host.backend}"
    data = arc_post([arc_record(tag, SITE_HOST, user="/DC=org/DC=example/CN=Jürgen Müller")]).encode("latin-1")
    answer = post(host, data, people["site_files"])
    assert answer.status_code == 200 and answer.text.startswith("stored 1,"), answer.text
    [stored] = list(admin(host, people).query_all(f"@rid = 'ur-{SITE_HOST}-{tag}'"))
    assert stored.usage.user_dn == "/DC=org/DC=example/CN=Jürgen Müller"


# -- ARC's own publisher (Debian nordugrid-arc-arex, jura-ng): every record ends up stored or held -----


def _held_now(host) -> list:
    """What the host holds for its operator, read from its state with the host stopped (then restarted)."""
    from gridcredit.server.registry import load_config
    from gridcredit.server.registry import open_service_store
    from gridcredit.services.luts.runtime import luts_held_dir
    from gridcredit.services.luts import held
    from gridcredit.services.luts.luts import Luts, LutsPolicy

    host.stop()
    try:
        config = load_config(env=host.environment())
        store = open_service_store(config)
        try:
            luts = Luts(store, LutsPolicy.from_config(config.luts), held_dir=luts_held_dir(config))
            return [(h, held.show(luts, h.kind, h.held_id)[1]) for h in held.list_held(luts, ("sgas", "record"))]
        finally:
            store.close()
    finally:
        host.start()


def test_arcs_own_publisher_delivers_a_large_batch_and_every_record_is_stored_or_held(host, people, pki,
                                                                                        tmp_path_factory):
    from datetime import datetime, timedelta, timezone

    from arc_sgas import DEFAULT_SUBMIT_HOST, ArcJob, ArcTransfer, publish_with_arc
    cert, key = pki.ca.issue_host(DEFAULT_SUBMIT_HOST, tmp_path_factory.mktemp("arc-ce"), key=pki.keys.fresh())
    user = "/DC=org/DC=example/O=gridcredit-test/CN=Arc User"
    end = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    tag = f"arcbig{host.backend}"

    def job(name: str, n: int, **options) -> ArcJob:
        return ArcJob(job_id=f"{tag}{name}{n:03d}", user_dn=user, end_time=end + timedelta(seconds=n),
                      fqans=("/atlas",), **options)

    # one batch of 50 records of ~250 KB each (900 file transfers): 12.5 MB, over the SOAP limit
    transfers = tuple(ArcTransfer(f"gsiftp://se.example.org:2811/atlas/data/{tag}/file-{n:06d}.root",
                                  1_000_000 + n, end - timedelta(hours=1), end - timedelta(minutes=59))
                      for n in range(900))
    large = [job("l", n, transfers=transfers) for n in range(50)]
    result = publish_with_arc(large, f"{host.url}/sgas", cert, key, host.pki.trust_dir, timeout_s=600)
    assert result.ok and result.http_statuses == [200], result.errors() or result.log_text[-3000:]

    # a batch with records the LUTS refuses (another machine) or reads after normalizing (a trailing dot)
    mixed = [job("m", n) for n in range(3)] + [
        job("m", 3, endpoint_url="https://ce7.other.org:443/arex"),
        job("m", 4, endpoint_url=f"https://{DEFAULT_SUBMIT_HOST}.:443/arex")]
    result = publish_with_arc(mixed, f"{host.url}/sgas", cert, key, host.pki.trust_dir, timeout_s=120)
    assert result.ok and result.http_statuses == [200], result.errors() or result.log_text[-3000:]

    # a batch ARC cannot write as XML (an unescaped '&' in a job name): kept whole
    broken = [job("u", n) for n in range(2)] + [job("u", 2, extra=(("jobname", "a & b"),))]
    result = publish_with_arc(broken, f"{host.url}/sgas", cert, key, host.pki.trust_dir, timeout_s=120)
    assert result.ok and result.http_statuses == [200], result.errors() or result.log_text[-3000:]

    stored = {r.record_id for r in admin(host, people).query_all(f"contains(@rid, '{tag}')", page_size=10)}
    kept = _held_now(host)
    quarantined = [content for h, content in kept if h.kind == "sgas" and tag.encode() in content]
    refused = [h.record_id for h, content in kept if h.kind == "record" and tag.encode() in content]
    assert len(quarantined) == 1 and refused == [mixed[3].record_id()]
    in_quarantine = {j.record_id() for j in broken if j.record_id().encode() in quarantined[0]}
    every = {j.record_id() for j in large + mixed + broken}
    assert stored | set(refused) | in_quarantine == every and len(stored) == 50 + 4


# -- a bound on large bodies read at once (each takes ~9 times its size in memory while read) ---------


def test_large_registration_bodies_beyond_the_bound_wait_then_get_a_503_they_read(pki, tmp_path, monkeypatch):
    """The host's own HTTPS server and registration path in this process, with a registration that
    holds the first large bodies until told: a third large one waits LARGE_BODY_WAIT_S, is read to
    its end and answered 503 (the reporter keeps it); a small one is not held up."""
    import threading

    from gridcredit.server import host as host_module
    from gridcredit.config import Config, ServerConfig
    from gridcredit.https_server import HttpsServer
    from gridcredit.security.wssec import MemoryReplayCache, Signer, Verifier
    from security_fixtures import free_port

    monkeypatch.setattr(host_module, "LARGE_BODIES_AT_ONCE", 2)
    monkeypatch.setattr(host_module, "LARGE_BODY_WAIT_S", 1.0)
    entered, release = threading.Semaphore(0), threading.Event()

    def handler(data: bytes, principal):
        if data.startswith(b"hold"):
            entered.release()
            release.wait(30)
        return host_module._PlainAnswer("200 OK", f"got {len(data)}\n")

    app = host_module.SignedSoapHost(
        signer=Signer(pki.host_credential()), verifier=Verifier(trust=pki.trust_store(), replay_cache=MemoryReplayCache()),
        request_bytes_max=1_000, services=(), trust=pki.trust_store(),
        registrations={"/sgas/ur": host_module.Registration(handler, 100_000, "luts.sgas_request_bytes_max")})
    files = host_module.HostFiles(pki.host_cert, pki.host_key, pki.trust_dir)
    port = free_port()
    server = HttpsServer(("127.0.0.1", port), app, context=host_module.tls_context(Config(server=ServerConfig()), files),
                         cert_file=str(pki.host_cert), key_file=str(pki.host_key), handshake_timeout_s=10,
                         listen_backlog=64, connections_per_address_max=64, numthreads=8, timeout=10)
    server.prepare()
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    cert = pki.ca.issue_host(SITE_HOST, tmp_path / "site", key=pki.keys.fresh())

    def post_at(data: bytes) -> requests.Response:
        return requests.post(f"https://localhost:{port}/sgas/ur", data=data, cert=tuple(map(str, cert)),
                             verify=str(pki.trust_dir), timeout=60)
    try:
        held_answers: list = []
        holders = [threading.Thread(target=lambda: held_answers.append(post_at(b"hold" + b"x" * 5_000)))
                   for _ in range(2)]
        for holder in holders:
            holder.start()
        assert entered.acquire(timeout=30) and entered.acquire(timeout=30)      # two large bodies being handled
        assert post_at(b"small").text == "got 5\n"                               # a small one goes through
        third = post_at(b"x" * 50_000)
        assert third.status_code == 503 and "send this one again later" in third.text
        release.set()
        for holder in holders:
            holder.join(30)
        assert [answer.text for answer in held_answers] == ["got 5004\n"] * 2
        assert post_at(b"x" * 50_000).text == "got 50000\n"                      # the bound is free again
        refused = post_at(b"x" * 150_000)                                        # over the route's own limit
        assert refused.status_code == 413 and "luts.sgas_request_bytes_max" in refused.text
        chunked = post_at(iter([b"x" * 50_000] * 3))                             # the same, chunked
        assert chunked.status_code == 413 and "luts.sgas_request_bytes_max" in chunked.text
        assert post_at(iter([b"x" * 40_000] * 2)).text == "got 80000\n"
    finally:
        release.set()
        server.stop()
