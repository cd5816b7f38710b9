"""gridcredit.cli_support: one way to write --json in every command group (datetimes RFC 3339
UTC with a Z), one set of client options, usage errors exit 2, expected errors `TypeName: message`."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from gridcredit.server.cli import main
from gridcredit.cli_support import (EXIT_USAGE, UsageError, add_client_arguments, checked, error_text, jsonable,
                                    print_result, resolve_client_options)
from gridcredit.client import OutcomeUnknown

from security_fixtures import free_port, host_process

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass(frozen=True)
class Sample:
    at: datetime
    tags: tuple[str, ...]
    raw: bytes
    colour: Colour
    nested: dict


def test_jsonable_writes_datetimes_as_rfc3339_utc_with_a_z():
    two_hours_east = timezone(timedelta(hours=2))
    sample = Sample(at=datetime(2026, 11, 1, 2, 0, 0, 250, tzinfo=two_hours_east), tags=("a", "b"), raw=b"<x/>",
                    colour=Colour.RED, nested={1: datetime(2026, 11, 1, tzinfo=timezone.utc)})
    assert jsonable(sample) == {"at": "2026-11-01T00:00:00.000250Z", "tags": ["a", "b"], "raw": "<x/>",
                                "colour": "red", "nested": {"1": "2026-11-01T00:00:00Z"}}


def test_print_result_applies_jsonable_under_json_and_prints_the_text_otherwise(capsys):
    value = {"when": datetime(2026, 11, 1, tzinfo=timezone.utc)}
    print_result(argparse.Namespace(json=True), value, "readable")
    assert json.loads(capsys.readouterr().out) == {"when": "2026-11-01T00:00:00Z"}
    print_result(argparse.Namespace(json=False), value, "readable")
    assert capsys.readouterr().out == "readable\n"


def test_a_usage_error_from_a_handler_exits_2_with_the_commands_parser(capsys):
    parser = argparse.ArgumentParser(prog="gridcredit demo")

    def handler(args):
        raise UsageError(parser, "give an amount and --per (or --remove)")

    with pytest.raises(SystemExit) as exited:
        checked(handler)(argparse.Namespace())
    assert exited.value.code == EXIT_USAGE
    assert "gridcredit demo: error: give an amount and --per (or --remove)" in capsys.readouterr().err


def test_client_options_are_checked_by_argparse():
    parser = argparse.ArgumentParser()
    add_client_arguments(parser, timeout_s=60.0)
    args = parser.parse_args([])
    # --url is worked out from the configuration (its [client] url, else this host's port) once parsed
    assert (args.timeout, args.retries, args.json, args.url) == (60.0, 3, False, None)
    resolve_client_options(args)
    assert args.url == "https://localhost:8443"
    for bad in (["--timeout", "0"], ["--retries", "11"], ["--timeout", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_error_text_is_type_name_and_message():
    assert error_text(OutcomeUnknown("Mint request gc-1 got no answer; repeat it with request id gc-1", "gc-1")) == \
        "OutcomeUnknown: Mint request gc-1 got no answer; repeat it with request id gc-1"


# ------------------------------------------------------------- every group writes times one way

@pytest.fixture(scope="module")
def host(pki, tmp_path_factory):
    with host_process(tmp_path_factory.mktemp("host"), host_cert=pki.host_cert, host_key=pki.host_key,
                      trust_dir=pki.trust_dir) as running:
        yield running


@pytest.mark.parametrize("argv", [["bank", "whoami"], ["luts", "whoami"], ["whoami", "--service", "luts"]])
def test_whoami_json_writes_datetimes_the_same_way_in_every_group(host, pki, capsys, argv):
    alice = pki.user("Alice")
    capsys.readouterr()
    code = main([*argv, "--url", host.url, "--cert", str(alice.cert_path), "--key", str(alice.key_path),
                 "--trust", str(pki.trust_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    identity = json.loads(out)
    assert identity["dn"] == alice.dn
    for name in ("server_time", "credential_expires"):
        assert RFC3339_UTC.match(identity[name]), (argv, name, identity[name])
    server_time = datetime.fromisoformat(identity["server_time"].replace("Z", "+00:00"))
    assert abs(server_time - datetime.now(timezone.utc)) < timedelta(minutes=5)


@pytest.mark.parametrize("group", ["bank", "luts"])
def test_an_unreachable_host_is_type_name_and_message_and_exit_1(pki, capsys, group):
    alice = pki.user("Alice")
    capsys.readouterr()
    code = main([group, "whoami", "--url", f"https://localhost:{free_port()}", "--cert", str(alice.cert_path),
                 "--key", str(alice.key_path), "--trust", str(pki.trust_dir), "--retries", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("GridcreditError: cannot reach https://localhost:") and "Traceback" not in err
