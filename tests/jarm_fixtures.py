"""JARM against the real Slurm: the site's host (Bank, LUTS, JARM), its users and accounts, gridcredit
installed for SlurmUser and the PrologSlurmctld/EpilogSlurmctld hooks (import explicitly):

    from jarm_fixtures import *   # noqa: F401,F403 (fixtures: site_install, people, host, hooks, jobs)

``host`` is a running ``gridcredit serve`` (embedded store) with the [jarm] settings of a site whose cluster is
scripts/slurm.sh's ("gridcredit"): reservations on, the site's account "site", a grid-mapfile mapping gcuser1 to
Alice and gcuser2 to Bob, the reconciler every second; accounts proj1 (Alice's, 1,000 credits; Alice delegated
a proxy to the JARM) and proj2 (Bob's, 1,000 credits; Bob granted the site's JARM identity holds), price table
1 (one credit per core-minute and one per job). ``hooks`` installs the JARM's PrologSlurmctld and
EpilogSlurmctld for the module (run as user slurm with gridcredit from scripts/jarm-slurm.sh install) and puts
the defaults back after."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from gridcredit.errors import RemoteFault
from gridcredit.security.credentials import load_credential
from gridcredit.services.bank.client import BankClient
from gridcredit.services.jarm.client import JarmClient
from gridcredit.services.jarm.pricing import round_half_up
from gridcredit.services.jarm.types import Metric, Rate
from gridcredit.services.jarm.usage_record import record_id

from bank_fixtures import BankUsers, bank_host
from slurm_fixtures import slurm_cluster, slurm_dir, slurm_workdir  # noqa: F401 (fixtures)

__all__ = ["CLUSTER", "CREDIT", "FUNDS", "PRICES", "controller", "controller_files", "expected_cost", "hooks", "host",
           "jarm_settings", "jobs", "open_accounts", "people", "prepare_jarm", "settled_reservations", "site_install",
           "site_users", "slurm_cluster", "slurm_workdir", "start_requeued_now", "stored_usage_records",
           "wait_for_state"]

REPO = Path(__file__).resolve().parent.parent
CREDIT = 1_000_000
CLUSTER = "gridcredit"                      # scripts/slurm.sh's ClusterName: the JARM's site
# 60 credits per core-hour (one per core-minute) and one per job: a run of e seconds on c cores costs
# e·c/60 + 1 credits, rounded half up once
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
FUNDS = 1000
SETTLED_WITHIN_S = 180


def expected_cost(elapsed_s: int, cores: int) -> int:
    exact = Fraction(elapsed_s * cores, 60) + 1
    return round_half_up(exact.numerator, exact.denominator)


@pytest.fixture(scope="module")
def site_install(slurm_cluster):
    """gridcredit for SlurmUser, installed as a site would (scripts/jarm-slurm.sh install)."""
    prefix = slurm_dir() / "gridcredit"
    result = subprocess.run([str(REPO / "scripts" / "jarm-slurm.sh"), "install", "--prefix", str(prefix)],
                            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        pytest.fail(f"JarmNotInstalled: scripts/jarm-slurm.sh install exited {result.returncode}: "
                    f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
    return prefix


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Lifecycle Bank Admin"), "alice": pki.user("Alice Lifecycle"),
            "bob": pki.user("Bob Lifecycle"), "prices": pki.user("Lifecycle Price Admin"),
            "auditor": pki.user("Lifecycle Auditor")}


def site_users(pki, people) -> BankUsers:
    """The Bank's administrators and auditor of a JARM site's host (``people``: the ``people`` fixture's keys)."""
    nobody = pki.user("Lifecycle Nobody")
    return BankUsers(people["admin"], pki.user("Lifecycle Bank Admin Two"), people["auditor"], (), (), (), (), nobody,
                     nobody)


def jarm_settings(root: Path, people, cluster, **extra: str) -> dict[str, str]:
    """The environment of a JARM host for ``cluster`` (its [jarm] settings; ``extra``: more of them): a
    grid-mapfile in ``root`` mapping gcuser1 to Alice and gcuser2 to Bob, the site's account "site", the
    reconciler every second, ``people["prices"]`` its price administrator, ``people["admin"]`` the LUTS's."""
    gridmap = root / "grid-mapfile"
    gridmap.write_text(f'"{people["alice"].dn}" gcuser1\n"{people["bob"].dn}" gcuser2\n')
    return {"GRIDCREDIT_JARM_SITE": CLUSTER, "GRIDCREDIT_JARM_PRICE_ADMINS": people["prices"].dn,
            "GRIDCREDIT_JARM_SITE_ACCOUNT": "site", "GRIDCREDIT_JARM_GRID_MAPFILE": str(gridmap),
            "GRIDCREDIT_JARM_RECONCILE_INTERVAL_S": "1", "GRIDCREDIT_JARM_EXTEND_MARGIN_S": "60",
            "GRIDCREDIT_JARM_HOLD_GRACE_S": "120", "GRIDCREDIT_LUTS_ADMINS": people["admin"].dn,
            "SLURM_CONF": str(cluster.conf), **extra}


def open_accounts(bank_url: str, pki, people, *, project: str, funds: int = FUNDS) -> None:
    """At the Bank: proj1 (Alice's), proj2 (Bob's) with ``funds`` credits each, and the site's account (the
    admin's); Bob grants the site's JARM identity holds on proj2 for its users (Alice delegates instead)."""
    bank = BankClient(bank_url, credential=people["admin"].credential, trust_dir=pki.trust_dir, timeout_s=60)
    site_dn = load_credential(pki.host_cert, pki.host_key).dn        # the JARM's own identity
    for account, owner in (("proj1", people["alice"]), ("proj2", people["bob"]), ("site", people["admin"])):
        bank.create_account(account, project=project, owner_dn=owner.dn)
        if account != "site":
            bank.mint(account, funds)
    BankClient(bank_url, credential=people["bob"].credential, trust_dir=pki.trust_dir).grant_service(
        "proj2", site_dn, hold_max=500, period_max=5_000, period_s=86_400)


def prepare_jarm(jarm_url: str, pki, people) -> None:
    """At the JARM: Alice delegates a proxy (a day); price table 1 for partitions batch and short."""
    JarmClient(jarm_url, credential=people["alice"].credential, trust_dir=pki.trust_dir).delegate(lifetime_s=86_400)
    JarmClient(jarm_url, credential=people["prices"].credential, trust_dir=pki.trust_dir).set_price_table(
        [Rate("batch", "normal", PRICES), Rate("short", "normal", PRICES)], version=1)


@pytest.fixture(scope="module")
def host(pki, people, slurm_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("jarm-lifecycle")
    with bank_host(root, "embedded", site_users(pki, people), pki,
                   extra_env=jarm_settings(root, people, slurm_cluster)) as running:
        open_accounts(running.url, pki, people, project="lifecycle")
        prepare_jarm(running.url, pki, people)
        yield running


def controller_files(files: Path, pki, *, prefix: Path, jarm_url: str) -> Path:
    """What the controller's hooks read, in ``files`` (made anew, user slurm's): the trust directory, the
    controller's credential (here the host's: a controller the JARM always accepts), a gridcredit.toml, and
    the PrologSlurmctld/EpilogSlurmctld scripts ``scripts/jarm-slurm.sh hooks`` writes (gridcredit installed
    at ``prefix``, the JARM at ``jarm_url``); the folder of the scripts (jarm-prolog, jarm-epilog)."""
    slurm = pwd.getpwnam("slurm")
    shutil.rmtree(files, ignore_errors=True)
    (files / "certificates").mkdir(parents=True)
    for source in Path(pki.trust_dir).iterdir():
        shutil.copy(source, files / "certificates" / source.name)
    shutil.copy(pki.host_cert, files / "hostcert.pem")
    shutil.copy(pki.host_key, files / "hostkey.pem")
    (files / "gridcredit.toml").write_text(f'[jarm]\nsite = "{CLUSTER}"\n')
    for path in [files, *files.rglob("*")]:
        os.chown(path, slurm.pw_uid, slurm.pw_gid)
    (files / "hostkey.pem").chmod(0o600)
    result = subprocess.run([str(REPO / "scripts" / "jarm-slurm.sh"), "hooks", "--prefix", str(prefix),
                             "--config", str(files / "gridcredit.toml"), "--url", jarm_url,
                             "--cert", str(files / "hostcert.pem"), "--key", str(files / "hostkey.pem"),
                             "--trust", str(files / "certificates"), "--out", str(files / "hooks")],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"JarmHooksNotWritten: scripts/jarm-slurm.sh hooks exited {result.returncode}: "
                           f"{result.stderr[-1500:]}")
    return files / "hooks"


@pytest.fixture(scope="module")
def hooks(slurm_cluster, site_install, host, pki):
    """PrologSlurmctld and EpilogSlurmctld running `gridcredit jarm prolog|epilog` as user slurm, with the
    controller's credential (here the host's: a controller the JARM always accepts)."""
    scripts = controller_files(slurm_dir() / "jarm-controller", pki, prefix=site_install, jarm_url=host.url)
    with slurm_cluster.prolog((scripts / "jarm-prolog").read_text()), \
            slurm_cluster.epilog((scripts / "jarm-epilog").read_text()):
        yield


@pytest.fixture
def jobs(slurm_cluster):
    submitted: list[int] = []
    yield submitted
    if submitted:
        slurm_cluster.run(["scancel", *map(str, submitted)], check=False)


REQUEUE_DELAY_S = 120          # Slurm 22.05 keeps a requeued job pending this long (Reason=BeginTime)
REQUEUE_SETTLE_S = 5           # … and a run launched within the requeue's second fails ("Job credential revoked")


def start_requeued_now(cluster, name: str) -> bool:
    """Let a requeued job (``name``: a job or array task id) start again now rather than after Slurm's 120 s
    (nothing the tests prove depends on that delay: the JARM sees the next run only through its prolog,
    under its restart count; the wait was a third of their time) — once REQUEUE_SETTLE_S have passed since
    the requeue (read from its EligibleTime); whether it did."""
    eligible = cluster.show_job(name).get("EligibleTime", "")
    try:
        requeued_at = datetime.fromisoformat(eligible) - timedelta(seconds=REQUEUE_DELAY_S)
    except ValueError:
        return False
    if datetime.now() < requeued_at + timedelta(seconds=REQUEUE_SETTLE_S):
        return False
    cluster.run(["scontrol", "update", f"JobId={name}", "StartTime=now"], check=False)
    return True


def controller(host, pki) -> JarmClient:
    return JarmClient(host.url, credential=load_credential(pki.host_cert, pki.host_key), trust_dir=pki.trust_dir)


def wait_for_state(cluster, job_id: int, states: set[str], timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = cluster.show_job(job_id).get("JobState", "")
        if state in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not {states} within {timeout_s} s: {cluster.show_job(job_id)}")


def settled_reservations(jarm: JarmClient, job_ids, expected: int, timeout_s: float = SETTLED_WITHIN_S):
    """The reservations of ``job_ids`` once ``expected`` of them exist and every one is charged."""
    deadline = time.monotonic() + timeout_s
    wanted = set(job_ids)
    found = []
    while time.monotonic() < deadline:
        found = [view for view in jarm.reservations() if view.key.job_id in wanted]
        if len(found) >= expected and all(view.state == "charged" and not view.pending for view in found):
            return found
        time.sleep(1)
    raise AssertionError(f"not every reservation charged within {timeout_s} s: "
                         + "; ".join(f"{v.reservation_id} {v.state} pending={v.pending} {v.message}" for v in found))


def stored_usage_records(luts, reservation_ids, *, timeout_s: float = 90) -> dict:
    """The LUTS's usage record of each reservation (record id from the site and the reservation id), once
    every one is stored (the JARM's reconciler sends them): {reservation id: the stored record}."""
    deadline = time.monotonic() + timeout_s
    stored: dict = {}
    while True:
        missing = []
        for reservation_id in reservation_ids:
            if reservation_id in stored:
                continue
            try:
                stored[reservation_id] = luts.record(record_id(CLUSTER, reservation_id), machine="localhost")
            except RemoteFault as fault:         # UnknownRecord: not sent yet
                missing.append((reservation_id, str(fault)[:120]))
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"usage records not in the LUTS within {timeout_s} s: {missing}"
    return stored
