"""The one configuration file and its environment overrides."""
import pytest

from gridcredit.server.registry import load_config
from gridcredit.errors import ConfigError


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(env={})
    assert config.server.port == 8443 and config.store.backend == "embedded"
    assert config.security.require_crl is True and config.security.allow_sha1 is False


def test_file_then_environment_overrides(tmp_path):
    path = tmp_path / "gridcredit.toml"
    path.write_text('state_dir = "/srv/gc"\n[server]\nport = 9000\nworkers = 3\n[bank]\nadmins = ["/CN=a"]\n')
    config = load_config(str(path), env={"GRIDCREDIT_SERVER_PORT": "9443", "GRIDCREDIT_BANK_ADMINS": "/CN=x, /CN=y",
                                         "GRIDCREDIT_SECURITY_ALLOW_SHA1": "yes"})
    assert config.state_dir == "/srv/gc"
    assert config.server.port == 9443 and config.server.workers == 3
    assert config.bank.admins == ("/CN=x", "/CN=y")
    assert config.security.allow_sha1 is True


def test_config_file_named_by_environment(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text("[store]\nbackend = 'basex'\n")
    assert load_config(env={"GRIDCREDIT_CONFIG": str(path)}).store.backend == "basex"


@pytest.mark.parametrize("text, env, message", [
    ("[server]\nport = 'x'\n", {}, "port"),
    ("[server]\nprot = 1\n", {}, "prot"),
    ("[store]\nbackend = 'mysql'\n", {}, "backend"),
    ("[server\n", {}, "cannot read"),
    ("", {"GRIDCREDIT_SERVER_PORT": "eighty"}, "GRIDCREDIT_SERVER_PORT"),
    ("", {"GRIDCREDIT_SECURITY_ALLOW_SHA1": "maybe"}, "GRIDCREDIT_SECURITY_ALLOW_SHA1"),
])
def test_mistakes_are_named(tmp_path, text, env, message):
    path = tmp_path / "gridcredit.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path), env=env)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"), env={})


def test_tables_of_names_to_dns_from_the_file_and_as_json_in_the_environment(tmp_path):
    path = tmp_path / "gridcredit.toml"
    path.write_text('[luts]\nadmins = ["/O=Grid/CN=Root"]\n[luts.vo_managers]\natlas = ["/O=Grid/CN=Ann, Jr"]\n'
                    '[luts.site_publishers]\n"/O=Grid/CN=Site Admin" = ["ce1.example.org", "ce2.example.org"]\n')
    config = load_config(str(path), env={})
    assert config.luts.vo_managers == {"atlas": ("/O=Grid/CN=Ann, Jr",)}
    assert config.luts.site_publishers == {"/O=Grid/CN=Site Admin": ("ce1.example.org", "ce2.example.org")}
    config = load_config(str(path), env={"GRIDCREDIT_LUTS_VO_MANAGERS": '{"cms": ["/O=Grid/CN=Bo=b"]}'})
    assert config.luts.vo_managers == {"cms": ("/O=Grid/CN=Bo=b",)}
    with pytest.raises(ConfigError, match="GRIDCREDIT_LUTS_VO_MANAGERS"):
        load_config(str(path), env={"GRIDCREDIT_LUTS_VO_MANAGERS": "atlas=/O=Grid/CN=Ann"})
    path.write_text('[luts.vo_managers]\natlas = "/O=Grid/CN=Ann"\n')
    with pytest.raises(ConfigError, match="vo_managers"):
        load_config(str(path), env={})


def test_the_basex_backlog_limit_is_a_setting(tmp_path):
    path = tmp_path / "gridcredit.toml"
    path.write_text('[store]\nbackend = "basex"\nbasex_backlog_bytes_max = 64000000\n')
    assert load_config(str(path), env={}).store.basex_backlog_bytes_max == 64_000_000
    assert load_config(env={"GRIDCREDIT_STORE_BASEX_BACKLOG_BYTES_MAX": "1000000"}).store.basex_backlog_bytes_max == 1_000_000
    with pytest.raises(ConfigError, match="basex_backlog_bytes_max"):
        load_config(env={"GRIDCREDIT_STORE_BASEX_BACKLOG_BYTES_MAX": "1000"})


def test_the_sgas_registration_has_its_own_size_limit(tmp_path):
    """Issue 11.1: /sgas/ur takes ARC's batches (12 MB and more) while SOAP keeps its 10 MB."""
    defaults = load_config(env={})
    assert defaults.luts.sgas_request_bytes_max == 33_554_432 and defaults.server.request_bytes_max == 10_000_000
    path = tmp_path / "gridcredit.toml"
    path.write_text("[luts]\nsgas_request_bytes_max = 50000000\n")
    assert load_config(str(path), env={}).luts.sgas_request_bytes_max == 50_000_000
    for wrong in ("1000", "67108865"):      # at most what the LUTS reads as one document (64 MiB)
        with pytest.raises(ConfigError, match="luts.sgas_request_bytes_max"):
            load_config(env={"GRIDCREDIT_LUTS_SGAS_REQUEST_BYTES_MAX": wrong})
