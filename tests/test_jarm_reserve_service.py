"""JARM's reservation operations over signed SOAP (services/jarm/service.py): who may report jobs and see
reservations, and bad input — absurd job sizes, an unknown partition, an unknown user, a bad job key —
each a clear fault with nothing reserved or held."""
from __future__ import annotations

import itertools

import pytest

from gridcredit.errors import RemoteFault
from gridcredit.security.credentials import load_credential
from gridcredit.services.bank.client import BankClient
from gridcredit.services.jarm.client import JarmClient
from gridcredit.services.jarm.reservations import JobKey
from gridcredit.services.jarm.types import JobRequest, Metric, Rate

from bank_fixtures import BankUsers, bank_host
from test_metrics import scrape

pytestmark = pytest.mark.slow

CREDIT = 1_000_000
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
JOB_IDS = itertools.count(500)
GOOD = JobRequest("batch", "normal", cores=1, time_limit_s=60, memory_mb=0, gpus=0, nodes=1)


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Reserve Admin"), "alice": pki.user("Reserve Alice"), "bob": pki.user("Reserve Bob")}


@pytest.fixture(scope="module")
def host(pki, people, tmp_path_factory):
    root = tmp_path_factory.mktemp("jarm-reserve")
    gridmap = root / "grid-mapfile"
    gridmap.write_text(f'# the site\'s users\n"{people["alice"].dn}" gcuser1\n"{people["bob"].dn}" gcuser2\n')
    users = BankUsers(people["admin"], pki.user("Reserve Admin Two"), pki.user("Reserve Auditor"), (), (), (), (),
                      pki.user("Reserve Nobody"), pki.user("Reserve Nobody"))
    env = {"GRIDCREDIT_JARM_SITE": "c1", "GRIDCREDIT_JARM_PRICE_ADMINS": people["admin"].dn,
           "GRIDCREDIT_JARM_SITE_ACCOUNT": "site", "GRIDCREDIT_JARM_GRID_MAPFILE": str(gridmap),
           # no Slurm for this host's JARM (no scontrol, no sacct there): the test cluster's (found through
           # /etc/slurm/slurm.conf, linked by scripts/slurm.sh) would say these made-up runs ended, and the
           # reconciler release them while a test looks at them
           "GRIDCREDIT_JARM_SLURM_BIN_DIR": str(root / "no-slurm")}
    with bank_host(root, "embedded", users, pki, extra_env=env) as running:
        bank = BankClient(running.url, credential=people["admin"].credential, trust_dir=pki.trust_dir)
        site_dn = load_credential(pki.host_cert, pki.host_key).dn
        bank.create_account("site", project="reserve", owner_dn=people["admin"].dn)
        bank.create_account("proj1", project="reserve", owner_dn=people["alice"].dn)
        bank.mint("proj1", 100)
        BankClient(running.url, credential=people["alice"].credential, trust_dir=pki.trust_dir).grant_service(
            "proj1", site_dn)
        JarmClient(running.url, credential=people["admin"].credential, trust_dir=pki.trust_dir).set_price_table(
            [Rate("batch", "normal", PRICES)], version=1)
        yield running


def jarm(host, who) -> JarmClient:
    return JarmClient(host.url, credential=getattr(who, "credential", who), trust_dir=host.pki.trust_dir)


def controller(host) -> JarmClient:
    return jarm(host, load_credential(host.pki.host_cert, host.pki.host_key))


def refused(call) -> RemoteFault:
    with pytest.raises(RemoteFault) as fault:
        call()
    return fault.value


def held(host, people) -> int:
    return BankClient(host.url, credential=people["admin"].credential, trust_dir=host.pki.trust_dir
                      ).get_balance("proj1").held


@pytest.mark.parametrize("request_fields, code, words", [
    ({"cores": 2**21}, "InvalidJobRequest", "cores"),
    ({"nodes": 2, "cores": 1}, "InvalidJobRequest", "nodes"),
    ({"time_limit_s": 0}, "InvalidJobRequest", "time limit"),
    ({"memory_mb": -1}, "InvalidJobRequest", "memory"),
    ({"partition": "nosuch"}, "UnknownPartition", "nosuch"),
    ({"partition": "bad name!"}, "InvalidJobRequest", "partition"),
])
def test_a_bad_job_is_refused_clearly_and_nothing_is_reserved(host, people, request_fields, code, words):
    before = held(host, people)
    fields = {"partition": "batch", "qos": "normal", "cores": 1, "time_limit_s": 60, "memory_mb": 0, "gpus": 0,
              "nodes": 1, **request_fields}
    key = JobKey("c1", next(JOB_IDS))
    fault = refused(lambda: controller(host).invoke("Reserve", {
        "key": {"cluster": key.cluster, "job_id": key.job_id, "array_task": None, "restarts": 0},
        "user": "gcuser1", "account": "proj1", "request": fields}))
    assert fault.code == code and words in fault.text, fault
    assert refused(lambda: controller(host).reservation(key.reservation_id)).code == "UnknownReservation"
    assert held(host, people) == before


def test_an_unknown_user_or_key_is_refused(host, people):
    before = held(host, people)
    fault = refused(lambda: controller(host).reserve(JobKey("c1", 600), user="mallory", account="proj1",
                                                     request=GOOD))
    assert fault.code == "UnknownUser" and "grid-mapfile" in fault.text
    for key in ({"cluster": "c1", "job_id": 0, "restarts": 0}, {"cluster": "c/1", "job_id": 5, "restarts": 0},
                {"cluster": "c1", "job_id": 5, "restarts": -1}):
        fault = refused(lambda: controller(host).invoke("Reserve", {
            "key": key, "user": "gcuser1", "account": "proj1",
            "request": {"partition": "batch", "qos": "normal", "cores": 1, "time_limit_s": 60, "memory_mb": 0,
                        "gpus": 0, "nodes": 1}}))
        assert fault.code == "InvalidJob", fault
    assert held(host, people) == before


def test_only_controllers_report_jobs_and_users_see_only_their_own(host, people):
    for who in (people["alice"], people["bob"], host.pki.proxy("Reserve Admin", limited=True)):
        for call in (lambda client: client.reserve(JobKey("c1", 700), user="gcuser1", account="proj1", request=GOOD),
                     lambda client: client.complete(JobKey("c1", 700)),
                     lambda client: client.cancel(JobKey("c1", 700)),
                     lambda client: client.reconcile()):
            assert refused(lambda: call(jarm(host, who))).code == "NotAuthorized"
    made = controller(host).reserve(JobKey("c1", 701), user="gcuser1", account="proj1", request=GOOD)
    assert (made.admitted, made.state, made.authority, made.estimate) == (True, "held", "granted", 2)
    assert jarm(host, people["alice"]).reservation(made.reservation_id).hold_id == made.hold_id   # her own
    assert refused(lambda: jarm(host, people["bob"]).reservation(made.reservation_id)).code == "NotAuthorized"
    assert [view.reservation_id for view in jarm(host, people["alice"]).reservations()] == [made.reservation_id]
    assert jarm(host, people["bob"]).reservations() == []
    assert refused(lambda: jarm(host, people["bob"]).reservations(user_dn=people["alice"].dn)).code == "NotAuthorized"
    again = controller(host).reserve(JobKey("c1", 701), user="gcuser1", account="proj1", request=GOOD)
    assert again.hold_id == made.hold_id                     # the prolog run again: the same reservation and hold
    released = controller(host).cancel(JobKey("c1", 701))
    assert (released.state, released.admitted) == ("released", False)


def test_the_reservation_commands(host, people, pki, capsys):
    from cli_runner import Cli

    class HostFiles:                               # the controller signs with the host's certificate
        cert_path, key_path = host.pki.host_cert, host.pki.host_key

    cli = Cli("jarm", capsys, pki, host.url)
    made = controller(host).reserve(JobKey("c1", 800), user="gcuser1", account="proj1", request=GOOD)
    shown = cli.ok(people["alice"], "status", made.reservation_id)
    assert (shown["reservation_id"], shown["state"], shown["hold_id"], shown["estimate"]) == (
        made.reservation_id, "held", made.hold_id, 2)
    assert made.reservation_id in [view["reservation_id"] for view in cli.ok(people["alice"], "list")]
    assert cli.ok(people["bob"], "list") == []
    everyone = cli.ok(HostFiles, "list")
    assert made.reservation_id in [view["reservation_id"] for view in everyone]
    assert set(cli.ok(HostFiles, "reconcile")) == {"ended", "steps", "left", "extended"}
    assert cli.ok(HostFiles, "unfunded") == []              # every run here was held at the Bank
    text = cli(people["alice"], "status", made.reservation_id, as_json=False)
    assert f"hold {made.hold_id}: 2 credits" in text[1] and "(granted)" in text[1], text
    controller(host).cancel(JobKey("c1", 800))


def test_metrics_count_the_runs_with_work_left_and_the_records_spooled(host):
    """/metrics: gridcredit_jarm_pending_work is the number of runs with a step left — here runs that ended
    and whose usage Slurm's accounting (none on this host) cannot give yet; nothing is in the spool."""
    jarm = controller(host)
    for number in (900, 901):
        jarm.reserve(JobKey("c1", number), user="gcuser1", account="proj1", request=GOOD)
        assert jarm.complete(JobKey("c1", number)).pending == "usage"
    waiting = [view for view in jarm.reservations(limit=1000) if view.pending]
    samples = scrape(host)
    assert samples[("gridcredit_jarm_pending_work", ())] == len(waiting) >= 2
    assert samples[("gridcredit_jarm_usage_records_spooled", ())] == 0
