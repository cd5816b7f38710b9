"""``gridcredit jarm prices|set-prices|quote`` against a real host (issue 13.1): the README's price
table file stored and read back, quotes with --json and as text, refusals as ``TypeName: message``."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from gridcredit.server.cli import main

from bank_fixtures import BankUsers, bank_host
from cli_runner import Cli

README = Path(__file__).resolve().parent.parent / "README.md"
SITE = "cluster1"


def readme_price_table() -> str:
    """The TOML price table the README's "JARM: prices and quotes" shows (so the README's example works)."""
    section = README.read_text(encoding="utf-8").split("## JARM: prices and quotes", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("CLI Price Admin"), "alice": pki.user("CLI Alice"), "stranger": pki.user("CLI Stranger")}


@pytest.fixture(scope="module")
def host(pki, people, tmp_path_factory):
    users = BankUsers(*([pki.user("Nobody")] * 8), stranger=pki.user("Nobody"))
    env = {"GRIDCREDIT_JARM_SITE": SITE, "GRIDCREDIT_JARM_PRICE_ADMINS": people["admin"].dn}
    with bank_host(tmp_path_factory.mktemp("jarm-cli"), "embedded", users, pki, extra_env=env) as running:
        yield running


@pytest.fixture
def cli(capsys, pki, host):
    return Cli("jarm", capsys, pki, host.url)


def test_set_prices_from_the_readme_then_prices_and_quote_with_json(cli, people, tmp_path):
    toml_file = tmp_path / "prices.toml"
    toml_file.write_text(readme_price_table(), encoding="utf-8")
    stored = cli.ok(people["admin"], "set-prices", str(toml_file), "--version", "1")
    assert stored["replayed"] is False
    table = stored["table"]
    assert (table["site"], table["version"], table["memory_basis"], table["set_by"]) == \
        (SITE, 1, "allocated", people["admin"].dn)
    assert table["rates"][0] == {"partition": "batch", "qos": "normal", "prices": {
        "core-wall": 1_500_000, "cpu": 0, "memory": 100_000, "gpu": 0, "job": 250_000}}
    assert table["rates"][1]["load"] == {"low_permille": 500, "high_permille": 900, "min_permille": 1000,
                                         "max_permille": 1500}
    assert table["effective"].endswith("Z")
    # the same change again (a retry): the stored version, replayed
    assert cli.ok(people["admin"], "set-prices", str(toml_file), "--version", "1")["replayed"] is True
    assert cli.ok(people["alice"], "prices") == table

    # version 2 from a JSON file: the printed table of version 1 is a file's shape (its extra keys dropped)
    second = copy.deepcopy({key: value for key, value in table.items() if key in ("memory_basis", "rates")})
    second["rates"][0]["prices"]["job"] = 500_000
    json_file = tmp_path / "prices.json"
    json_file.write_text(json.dumps(second), encoding="utf-8")
    assert cli.ok(people["admin"], "set-prices", str(json_file))["table"]["version"] == 2
    assert cli.ok(people["alice"], "prices", "--version", "1") == table

    quoted = cli.ok(people["alice"], "quote", "--partition", "batch", "--qos", "normal", "--cores", "16",
                    "--time-limit", "2:00:00", "--memory-mb", "32768")
    quote = quoted["quote"]
    # 48 + 6.4 + 0.5 = 54.9 → 55, by version 2
    assert (quote["cost"]["credits"], quote["basis"]["version"], quote["request"]["time_limit_s"]) == (55, 2, 7_200)
    lines = {line["metric"]: line["numerator"] for line in quote["cost"]["lines"]}
    denominator = quote["cost"]["denominator"]
    assert (lines["core-wall"], lines["memory"], lines["job"]) == (48 * denominator, 64 * denominator // 10,
                                                                   denominator // 2)
    assert sum(lines.values()) == quote["cost"]["numerator"]
    assert quote["valid_until_us"] is None and quoted["replayed"] is False

    held = cli.ok(people["alice"], "quote", "--partition", "batch", "--cores", "1", "--time-limit", "60",
                  "--guarantee", "600", "--quote-id", "cli-quote-1")["quote"]
    assert held["quote_id"] == "cli-quote-1" and held["valid_until_us"] == held["issued_us"] + 600_000_000

    code, text, err = cli(people["alice"], "quote", "--partition", "batch", "--cores", "16", "--time-limit", "120",
                          "--memory-mb", "32768", as_json=False)
    assert code == 0 and err == ""
    assert text.startswith("55 credits for 16 cores × 7,200 s in batch/normal (site cluster1, prices version 2)")
    assert "exact total 54.900000, rounded once half up to 55" in text


def test_refusals_print_type_name_and_message(cli, people, tmp_path):
    toml_file = tmp_path / "prices.toml"
    toml_file.write_text(readme_price_table(), encoding="utf-8")
    code, _, err = cli(people["stranger"], "set-prices", str(toml_file))
    assert code == 1 and err.startswith("RemoteFault: ") and "[NotAuthorized]" in err
    assert "is not a price administrator" in err

    bad = tmp_path / "bad.toml"
    bad.write_text('[[rates]]\npartition = "batch"\nqos = "normal"\n'
                   'prices = { core-wall = -1, cpu = 0, memory = 0, gpu = 0, job = 0 }\n', encoding="utf-8")
    code, _, err = cli(people["admin"], "set-prices", str(bad))
    assert code == 1 and err.startswith(f"InvalidRequest: {bad}: ") and "core-wall price" in err
    bad.write_text('colour = "red"\n' + readme_price_table(), encoding="utf-8")
    code, _, err = cli(people["admin"], "set-prices", str(bad))
    assert code == 1 and "unknown key(s) colour" in err
    code, _, err = cli(people["admin"], "set-prices", str(tmp_path / "prices.yaml"))
    assert code == 1 and err.startswith("InvalidRequest: cannot read the price table")

    cli.ok(people["admin"], "set-prices", str(toml_file))     # a table in force, whatever ran before this test
    code, _, err = cli(people["alice"], "quote", "--partition", "nowhere", "--cores", "1", "--time-limit", "60")
    assert code == 1 and "[UnknownPartition]" in err and "it prices 'batch', 'gpu'" in err
    code, _, err = cli(people["alice"], "quote", "--partition", "batch", "--cores", "2", "--nodes", "3",
                       "--time-limit", "60")
    assert code == 1 and err.startswith("InvalidRequest: the job asks for 3 nodes")


@pytest.mark.parametrize("argv", [
    ["quote", "--partition", "batch", "--cores", "1", "--time-limit", "2h"],
    ["quote", "--partition", "batch", "--cores", "0", "--time-limit", "60"],
    ["prices", "--version", "1", "--at", "2027-01-01T00:00:00Z"],
    ["prices", "--at", "2027-01-01T00:00:00"],                 # no zone
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["jarm", *argv])
    assert exit_.value.code == 2


def test_slurm_time_limits():
    from gridcredit.services.jarm.cli import time_limit_type

    assert [time_limit_type(text) for text in ("90", "5:30", "2:00:00", "1-0", "1-2:30", "1-02:30:15")] == \
        [5_400, 330, 7_200, 86_400, 95_400, 95_415]
