"""``gridcredit market …`` (services/auctioneer/cli.py) against a running host with its Bank: host, bid (the hold made
first: collector the auctioneer's DN, payee the owner's account), status, change (raising the hold first), connect
--send/--read, cancel; --json everywhere; refusals as ``TypeName: message`` and exit 1, usage errors exit 2."""
from __future__ import annotations

import pytest

from gridcredit.server.cli import main
from gridcredit.services.bank.client import BankClient

from bank_fixtures import BankUsers, bank_host
from cli_runner import Cli
from test_auctioneer_service import OWNER_ACCOUNT, auctioneer_env, host_dn, open_accounts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def people(pki):
    return {"admin": pki.user("Market Cli Admin"), "owner": pki.user("Market Cli Owner"),
            "alice": pki.user("Market Cli Alice"), "bob": pki.user("Market Cli Bob"),
            "stranger": pki.user("Market Cli Stranger")}


@pytest.fixture(scope="module")
def host(pki, people, tmp_path_factory):
    users = BankUsers(people["admin"], pki.user("Market Cli Admin Two"), pki.user("Market Cli Auditor"), (), (), (),
                      (), pki.user("Market Cli Service"), people["stranger"])
    with bank_host(tmp_path_factory.mktemp("auctioneer-cli"), "embedded", users, pki,
                   extra_env=auctioneer_env(people)) as running:
        open_accounts(running, people)
        yield running


@pytest.fixture
def cli(capsys, pki, host):
    return Cli("market", capsys, pki, host.url)


def test_host_bid_status_change_connect_cancel(cli, host, people):
    shown = cli.ok(people["stranger"], "host")
    assert shown["enabled"] and shown["auctioneer_dn"] == host_dn(host) and shown["owner_account"] == OWNER_ACCOUNT
    text = cli.ok(people["stranger"], "host", as_json=False)
    assert "host-a" in text and "templates: quiet, small" in text

    bid = cli.ok(people["alice"], "bid", "alice-acct", "--rate", "0.5", "--max-duration", "2m", "--template", "small")
    assert bid["state"] == "live" and bid["rate_ucps"] == 500_000 and bid["max_duration_s"] == 120
    hold = BankClient(host.url, credential=people["alice"].credential, trust_dir=host.pki.trust_dir).get_hold(
        bid["hold_id"])
    # the rate over the maximum duration and one interval: 0.5 × 121 = 60.5 → 61 credits, collected by the auctioneer
    assert (hold.collector_dn, hold.payee_account_id, hold.amount) == (host_dn(host), OWNER_ACCOUNT, 61)

    listed = cli.ok(people["alice"], "status")
    assert [item["bid_id"] for item in listed] == [bid["bid_id"]]
    assert cli.ok(people["alice"], "status", bid["bid_id"])["hold_id"] == bid["hold_id"]
    assert cli.ok(people["bob"], "status") == []
    assert bid["bid_id"] in {item["bid_id"] for item in cli.ok(people["owner"], "status", "--all")}

    changed = cli.ok(people["alice"], "change", bid["bid_id"], "1.5", "--raise-hold", "400")
    assert changed["rate_ucps"] == 1_500_000 and changed["state"] == "live"
    assert BankClient(host.url, credential=people["alice"].credential, trust_dir=host.pki.trust_dir).get_hold(
        bid["hold_id"]).amount == 400

    sent = cli.ok(people["alice"], "connect", bid["bid_id"], "--send", "hello", "--read", "--wait", "0")
    assert sent == {"sent": "hello", "output": ""}        # no VM here (test:///default): nothing echoes
    code, _, err = cli(people["bob"], "connect", bid["bid_id"], "--read")
    assert code == 1 and err.startswith("RemoteFault: ") and "not yours" in err and "[NotAuthorized]" in err

    ended = cli.ok(people["alice"], "cancel", bid["bid_id"])
    assert ended["state"] == "ended" and ended["end_reason"] == "cancelled"
    text = cli.ok(people["alice"], "status", bid["bid_id"], as_json=False)
    assert "ended (cancelled" in text and bid["bid_id"] in text


def test_a_budget_bid_and_refusals(cli, host, people):
    bid = cli.ok(people["bob"], "bid", "bob-acct", "--budget", "100", "--duration", "1h", "--template", "quiet")
    assert bid["rate_ucps"] == 27_777 and bid["max_duration_s"] == 3_600
    code, _, err = cli(people["bob"], "bid", "bob-acct", "--rate", "1", "--max-duration", "60s", "--template", "huge")
    assert code == 1 and err.startswith("RemoteFault: there is no template 'huge'") and "UnknownTemplate" in err
    code, _, err = cli(people["bob"], "bid", "--hold", bid["hold_id"], "--budget", "100", "--duration", "1h",
                       "--template", "quiet")
    assert code == 0                                        # the same bid again
    code, _, err = cli(people["alice"], "bid", "--hold", bid["hold_id"], "--rate", "1", "--max-duration", "60s",
                       "--template", "quiet")
    assert code == 1 and "[NotAuthorized]" in err
    cli.ok(people["bob"], "cancel", bid["bid_id"])


@pytest.mark.parametrize("argv, words", [
    (["bid", "alice-acct", "--rate", "0", "--max-duration", "60s", "--template", "small"], "positive"),
    (["bid", "alice-acct", "--rate", "-1", "--max-duration", "60s", "--template", "small"], "--rate"),
    (["bid", "alice-acct", "--rate", "0.0000001", "--max-duration", "60s", "--template", "small"], "6 fractional"),
    (["bid", "alice-acct", "--rate", "1", "--template", "small"], "--max-duration"),
    (["bid", "--rate", "1", "--max-duration", "60s", "--template", "small"], "ACCOUNT"),
    (["bid", "alice-acct", "--budget", "10", "--template", "small"], "--duration"),
])
def test_usage_errors_exit_2(cli, people, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        cli(people["alice"], *argv)
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_every_market_command_has_help(capsys):
    for command in ("bid", "change", "cancel", "status", "connect", "host", "hosts", "best-response"):
        with pytest.raises(SystemExit) as exit_:
            main(["market", command, "--help"])
        assert exit_.value.code == 0
        assert "--json" in capsys.readouterr().out, command


def test_connect_without_options_relays_stdin_until_ctrl_bracket(cli, host, people):
    """The interactive console (here stdin a pipe, not a terminal): what is typed goes to the VM's console
    input until Ctrl-] — on this host without VMs it waits in the relay's input file."""
    import subprocess
    import sys

    bid = cli.ok(people["alice"], "bid", "alice-acct", "--rate", "0.5", "--max-duration", "2m", "--template", "small")
    alice = people["alice"]
    result = subprocess.run([sys.executable, "-m", "gridcredit.server.cli", "market", "connect", bid["bid_id"],
                             "--url", host.url, "--cert", str(alice.cert_path), "--key", str(alice.key_path),
                             "--trust", str(host.pki.trust_dir)], input=b"typed line\n\x1dnot sent",
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pending = host.state_dir / "auctioneer" / "consoles" / f"{bid['bid_id']}.in"
    assert pending.read_bytes() == b"typed line\n"
    cli.ok(people["alice"], "cancel", bid["bid_id"])
