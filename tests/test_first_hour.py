"""Issue 15, "the first hour": what a new user meets following the README — configured once
(``[client]``), every mistake a ``TypeName: message`` with a hint and a documented exit code
(usage 2, others 1), never a traceback or a silent no-op."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gridcredit.cli_support import EXIT_FAILED, EXIT_USAGE, duration_type
from gridcredit.config import ClientConfig, Config, ServerConfig, client_settings, known_environment_names
from gridcredit.errors import ConfigError
from gridcredit.server import registry
from gridcredit.server.cli import main

from security_fixtures import free_port, host_process

GRIDCREDIT = [sys.executable, "-m", "gridcredit.server.cli"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``gridcredit ARGV`` in-process: (exit code, stdout, stderr); a usage error's SystemExit is its code."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, err: str, *words: str) -> None:
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err and "\nUsageError: " in "\n" + err, err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    """No GRIDCREDIT_*/X509_* variables of the caller's, no configuration file around, HOME in tmp."""
    for name in list(os.environ):
        if name.startswith(("GRIDCREDIT_", "X509_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------- the environment


def test_a_list_in_the_environment_may_be_a_json_array_when_its_items_hold_commas(clean_environment):
    config = registry.load_config(env={"GRIDCREDIT_BANK_ADMINS": '["/O=Example, Inc./CN=Ann", "/DC=org/CN=Bob"]'})
    assert config.bank.admins == ("/O=Example, Inc./CN=Ann", "/DC=org/CN=Bob")
    assert registry.load_config(env={"GRIDCREDIT_BANK_ADMINS": "/DC=org/CN=A, /DC=org/CN=B"}).bank.admins == (
        "/DC=org/CN=A", "/DC=org/CN=B")
    with pytest.raises(ConfigError, match="GRIDCREDIT_BANK_ADMINS"):
        registry.load_config(env={"GRIDCREDIT_BANK_ADMINS": '["/DC=org/CN=A", 3]'})


@pytest.mark.parametrize("name, suggestion", [
    ("GRIDCREDIT_BANK_ADMIN", "GRIDCREDIT_BANK_ADMINS"),
    ("GRIDCREDIT_SERVER_PROT", "GRIDCREDIT_SERVER_PORT"),
    ("GRIDCREDIT_STATEDIR", "GRIDCREDIT_STATE_DIR"),
    ("GRIDCREDIT_LUTS_VO_MANAGER", "GRIDCREDIT_LUTS_VO_MANAGERS"),
    ("GRIDCREDIT_NOTHING_LIKE_IT", None),
])
def test_a_misspelled_variable_is_an_error_like_a_misspelled_key(clean_environment, name, suggestion):
    with pytest.raises(ConfigError, match=name) as refused:
        registry.load_config(env={name: "x"})
    if suggestion:
        assert f"did you mean {suggestion}?" in str(refused.value)


def test_the_known_variables_come_from_the_sections_the_services_declare(clean_environment):
    """Not a list of names: every field of every ServiceContract's config_section, and of a new one."""
    known = known_environment_names(registry.config_sections())
    for contract in registry.services():
        if contract.config_section is None:
            continue
        for field in dataclasses.fields(contract.config_section):
            assert f"GRIDCREDIT_{contract.name.upper()}_{field.name.upper()}" in known

    @dataclasses.dataclass(frozen=True)
    class GadgetConfig:
        colour: str = "red"

    config = registry.load_host_config(env={"GRIDCREDIT_GADGET_COLOUR": "blue"},
                                       sections={**registry.config_sections(), "gadget": GadgetConfig})
    assert config.gadget.colour == "blue"
    with pytest.raises(ConfigError, match="GRIDCREDIT_GADGET_COLOR"):
        registry.load_host_config(env={"GRIDCREDIT_GADGET_COLOR": "blue"},
                                  sections={**registry.config_sections(), "gadget": GadgetConfig})
    # Variables of our tools that are not settings are not refused.
    registry.load_config(env={"GRIDCREDIT_CONFIG": "", "GRIDCREDIT_SLURM_DIR": "/var/lib/gridcredit-slurm"})


def test_every_command_refuses_a_misspelled_variable(clean_environment, monkeypatch, capsys):
    monkeypatch.setenv("GRIDCREDIT_CLIENT_ULR", "https://localhost:9443")
    code, _, err = run(capsys, "whoami")
    assert code == EXIT_FAILED and err.startswith("ConfigError: unknown environment variable(s) GRIDCREDIT_CLIENT_ULR "
                                                  "(did you mean GRIDCREDIT_CLIENT_URL?)"), err


@pytest.mark.parametrize("text, message", [
    ("[server]\nport = 0\n", "server.port must be 1-65535"),
    ("[server]\nport = 70000\n", "server.port must be 1-65535"),
    ("[server]\nworkers = 0\n", "server.workers must be 1-256"),
    ("[client]\nurl = 'localhost:9443'\n", "needs https://"),
    ("[client]\nurl = 'http://localhost:9443'\n", "speak only HTTPS"),
    ("[client]\ncert = 'usercert.pem'\n", "client.cert and client.key go together"),
])
def test_wrong_server_and_client_settings_are_named(clean_environment, text, message):
    path = clean_environment / "gridcredit.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        registry.load_config(str(path), env={})


# ------------------------------------------------------------------------ [client]


def test_client_settings_from_the_file_the_environment_and_the_host_s_own_port(clean_environment):
    path = clean_environment / "gridcredit.toml"
    path.write_text("[server]\nport = 9443\n")
    settings = client_settings(registry.load_config(str(path), env={}), env={})
    assert settings.url == "https://localhost:9443" and settings.trust_dir is None
    path.write_text("[client]\nurl = 'https://bank.example.org:8443'\ncert = 'c.pem'\nkey = 'k.pem'\ntrust_dir = '/t'\n")
    settings = client_settings(registry.load_config(str(path), env={}), env={})
    assert (settings.url, settings.cert, settings.key, settings.trust_dir) == (
        "https://bank.example.org:8443", "c.pem", "k.pem", "/t")
    env = {"GRIDCREDIT_CLIENT_URL": "https://other.example.org:9443"}
    assert client_settings(registry.load_config(str(path), env=env), env=env).url == "https://other.example.org:9443"


def test_the_development_trust_directory_is_the_clients_default_on_the_serving_machine(clean_environment):
    state = clean_environment / "state"
    config = Config(state_dir=str(state))
    assert client_settings(config, env={}).trust_dir is None          # nothing made yet: grid conventions
    (state / "pki" / "certificates").mkdir(parents=True)
    assert client_settings(config, env={}).trust_dir == str(state / "pki" / "certificates")
    assert client_settings(config, env={"X509_CERT_DIR": "/x"}).trust_dir is None    # X509_CERT_DIR decides
    configured = dataclasses.replace(config, client=ClientConfig(trust_dir="/mine"))
    assert client_settings(configured, env={"X509_CERT_DIR": "/x"}).trust_dir == "/mine"


@pytest.fixture
def host(pki, tmp_path):
    with host_process(tmp_path / "state", host_cert=pki.host_cert, host_key=pki.host_key,
                      trust_dir=pki.trust_dir) as running:
        yield running


def test_after_serve_on_another_port_commands_need_no_url(clean_environment, monkeypatch, capsys, pki, host):
    alice = pki.user("Alice")
    path = clean_environment / "gridcredit.toml"
    path.write_text(f"[client]\nurl = 'https://localhost:{host.port}'\ncert = '{alice.cert_path}'\n"
                    f"key = '{alice.key_path}'\ntrust_dir = '{pki.trust_dir}'\n")
    code, out, err = run(capsys, "whoami", "--service", "luts")
    assert code == 0 and f"the luts at https://localhost:{host.port} knows you as {alice.credential.dn}" in out, err
    path.unlink()
    monkeypatch.setenv("GRIDCREDIT_SERVER_PORT", str(host.port))        # the host's own port: its clients' URL
    monkeypatch.setenv("X509_CERT_DIR", str(pki.trust_dir))
    code, out, err = run(capsys, "bank", "whoami", "--cert", str(alice.cert_path), "--key", str(alice.key_path))
    assert code == 0 and f"https://localhost:{host.port}" in out, err


# ------------------------------------------------------------------ errors and exit codes


@pytest.mark.parametrize("url, words", [
    ("localhost:8443", ("'localhost:8443' is not a URL such as https://localhost:8443",)),
    ("http://localhost:8443", ("is http://", "write https://localhost:8443")),
    ("https://localhost:99999", ("the port must be 1-65535",)),
])
def test_a_url_without_https_is_a_usage_error(clean_environment, capsys, url, words):
    for argv in (["whoami", "--url", url], ["bank", "balance", "vo", "--url", url], ["luts", "whoami", "--url", url]):
        assert_usage_error(*run(capsys, *argv)[::2], "--url", *words)


def test_cert_without_key_is_a_usage_error(clean_environment, capsys, pki):
    alice = pki.user("Alice")
    assert_usage_error(*run(capsys, "whoami", "--cert", str(alice.cert_path))[::2], "--cert needs --key")
    assert_usage_error(*run(capsys, "bank", "balance", "vo", "--key", str(alice.key_path))[::2], "--key needs --cert")


def test_a_host_the_trust_directory_does_not_accept_is_named_at_once(clean_environment, capsys, pki, host,
                                                                      fresh_pki):
    alice = pki.user("Alice")
    code, out, err = run(capsys, "whoami", "--url", host.url, "--cert", str(alice.cert_path), "--key",
                         str(alice.key_path), "--trust", str(fresh_pki.trust_dir))
    assert code == EXIT_FAILED and out == ""
    assert err.startswith(f"CertificateError: the host {host.url} presented a TLS certificate the trust directory "
                          f"{fresh_pki.trust_dir} (from --trust) does not accept"), err
    assert "X509_CERT_DIR" in err and "--trust" in err
    assert "attempt" not in err            # an answer, not an outage: never retried


def test_an_operation_for_administrators_says_who_they_are_and_how_one_becomes_one(clean_environment, capsys, pki,
                                                                                    host):
    """The Bank's policy point says it (the fault's text), so every client shows it, not only this CLI."""
    alice = pki.user("Alice")
    me = ("--url", host.url, "--cert", str(alice.cert_path), "--key", str(alice.key_path), "--trust", str(pki.trust_dir))
    code, out, err = run(capsys, "bank", "create-account", "vo-first", "--project", "p", "--owner", alice.dn, *me)
    assert code == EXIT_FAILED and out == "" and "Traceback" not in err, err
    assert "NotAuthorized" in err and f"{alice.dn} may not create account vo-first" in err, err
    assert "bank.admins" in err and "GRIDCREDIT_BANK_ADMINS" in err and "README: The first hour" in err, err


def test_nothing_listening_says_so(clean_environment, capsys, pki):
    alice = pki.user("Alice")
    port = free_port()
    code, _, err = run(capsys, "whoami", "--url", f"https://localhost:{port}", "--retries", "0", "--cert",
                       str(alice.cert_path), "--key", str(alice.key_path), "--trust", str(pki.trust_dir))
    assert code == EXIT_FAILED and "is `gridcredit serve` running, on that port?" in err, err


@pytest.mark.parametrize("argv, words", [
    (["serve", "--port", "70000"], ("--port", "give 1 to 65,535")),
    (["serve", "--port", "0"], ("--port", "give 1 to 65,535")),
    (["serve", "--workers", "0"], ("--workers",)),
    (["pki", "proxy", "--hours", "0"], ("--hours", "more than 0")),
    (["pki", "proxy", "--hours", "-3"], ("--hours",)),
])
def test_out_of_range_numbers_are_usage_errors(clean_environment, capsys, argv, words):
    assert_usage_error(*run(capsys, *argv)[::2], *words)


def test_serve_refuses_a_port_in_use_before_claiming_to_serve(clean_environment, monkeypatch, capsys):
    state = clean_environment / "state"
    monkeypatch.setenv("GRIDCREDIT_STATE_DIR", str(state))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run(capsys, "serve", "--port", str(port))
    assert code == EXIT_FAILED, (out, err)
    assert err.startswith(f"ServeError: port {port} of 127.0.0.1 is in use"), err
    assert "Traceback" not in err and "serving on" not in out
    # It said which configuration it read and where its state is — and made nothing there yet.
    assert "configuration: no file" in out and f"state directory: {state}" in out
    assert not (state / "pki").exists()


def test_serve_names_its_configuration_file(clean_environment, capsys):
    path = clean_environment / "gridcredit.toml"
    path.write_text(f"state_dir = '{clean_environment / 'state'}'\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, out, err = run(capsys, "serve", "--port", str(taken.getsockname()[1]))
    assert code == EXIT_FAILED and f"configuration: {path}" in out and "ServeError" in err


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86_400), ("1h30m", 5400)])
def test_durations_carry_their_unit(text, seconds):
    assert duration_type(text) == seconds


@pytest.mark.parametrize("text, words", [("2", "has no unit: write 2s, 2m, 2h or 2d"), ("soon", "not a duration"),
                                         ("0h", "must be positive")])
def test_a_duration_without_its_unit_is_refused(text, words):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=words):
        duration_type(text)


def test_output_cut_short_by_the_reader_is_no_traceback(clean_environment, pki):
    """``gridcredit … | head``: the reader leaves; the command ends quietly (no BrokenPipeError)."""
    read_end, write_end = os.pipe()
    os.close(read_end)                     # the reader has gone before anything is written
    try:
        done = subprocess.run([*GRIDCREDIT, "pki", "show", str(pki.host_cert), "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, env={**os.environ, "HOME": str(clean_environment)}, timeout=60)
    finally:
        os.close(write_end)
    assert b"Traceback" not in done.stderr and b"BrokenPipeError" not in done.stderr, done.stderr.decode()
    assert done.returncode == EXIT_FAILED


def test_every_gridcredit_variable_our_tools_read_is_known(clean_environment):
    """A GRIDCREDIT_* variable a script, benchmark or test reads (not a setting) must be in
    config.NOT_SETTINGS, or every command run beside it would refuse it as misspelled."""
    import re

    repo = Path(__file__).resolve().parent.parent
    known = known_environment_names(registry.config_sections())
    read = set()
    for path in [*repo.glob("scripts/*.sh"), *repo.glob("bench/*.py"), *repo.glob("tests/*.py"), *repo.glob(".ci/*")]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".py":
            read |= set(re.findall(r"environ(?:\.get\(|\[)\s*[\"'](GRIDCREDIT_[A-Z0-9_]*[A-Z0-9])[\"']", text))
        else:
            read |= set(re.findall(r"\$\{?(GRIDCREDIT_[A-Z0-9_]*[A-Z0-9])\b", text))
    assert read and read - known == set()
