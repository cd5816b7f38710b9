"""The registry of services (server/registry.py): each service's names and store collections are
its own, and what the Bank and the LUTS really write lands in collections they declared."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from gridcredit.config import Config
from gridcredit.contract import ServiceContract
from gridcredit.security.principal import Principal
from gridcredit.server import registry
from gridcredit.server.runtime import build_runtime
from gridcredit.services.bank import ledger
from gridcredit.services.luts.config import LutsConfig

SAMPLES = Path(__file__).resolve().parent / "data" / "ur-samples"
ADMIN = Principal("/DC=org/DC=example/CN=Registry Admin")


def test_every_service_is_registered_once_with_collections_of_its_own():
    assert registry.names() == ("bank", "luts", "jarm", "auctioneer", "directory")
    registry.check_contracts(registry.services())
    assert registry.service("bank").owns("holds_ended") and not registry.service("bank").owns("ur_2026_11")
    assert registry.service("luts").owns("ur_2026_11") and registry.service("luts").owns("urid_2026")


def test_two_services_claiming_one_collection_are_refused():
    first = ServiceContract(name="first", soap_module="x", collections=("jobs_",))
    second = ServiceContract(name="second", soap_module="y", collections=("jobs_done",))
    with pytest.raises(RuntimeError, match="both claim the store collection 'jobs_' / 'jobs_done'"):
        registry.check_contracts((first, second))
    with pytest.raises(RuntimeError, match="two services share a name"):
        registry.check_contracts((first, ServiceContract(name="first", soap_module="z")))


def test_what_the_services_write_lands_in_collections_they_declared(tmp_path):
    config = registry.complete(Config(state_dir=str(tmp_path)))
    config = config.with_section("luts", LutsConfig(admins=(ADMIN.dn,)))
    config = config.with_section("bank", type(config.bank)(admins=(ADMIN.dn,)))
    runtime = build_runtime(config)
    try:
        admin = Principal(ADMIN.dn, is_administrator=True)
        bank = runtime.bank
        bank.execute(ledger.CreateAccount("r1", "vo", "vo", ADMIN.dn), admin)
        bank.execute(ledger.CreateAccount("r2", "site", "site", ADMIN.dn), admin)
        bank.execute(ledger.Mint("r3", "vo", 1000), admin)
        hold = bank.execute(ledger.CreateHold("r4", "vo", 100, time.time_ns() // 1000 + 3_600_000_000, "job 1"), admin)
        bank.execute(ledger.ChargeHold("r5", hold.transaction.hold_id, "site", 60), admin)
        for sample in ("sgas-luts3-UR1-minimal.xml", "sgas-luts3-CUR-usagerecords-set.xml"):
            report = runtime.luts.publish((SAMPLES / sample).read_bytes(), ADMIN)
            assert any(result.status == "stored" for result in report.results), report
        written = runtime.store.collections()
        assert any(name.startswith("ur_") for name in written) and "transactions" in written
        owners = {name: [c.name for c in registry.services() if c.owns(name)] for name in written}
        assert {name: found for name, found in owners.items() if len(found) != 1} == {}
    finally:
        runtime.close()
