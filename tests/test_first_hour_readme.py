"""Issue 15.1: the README tells the truth. Its examples marked ``<!-- run by
tests/test_first_hour_readme.py … -->`` are run as written — the credentials' on their own, the
Bank's and the LUTS's after ``scripts/demo.sh`` in the folder it ran in, as the demo's users —
and each must succeed and find what the demo made; the configuration example must load; the demo
must end with status 0 on Ctrl-C with nothing on stderr."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridcredit.server import registry

from security_fixtures import free_port

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARKER = "<!-- run by tests/test_first_hour_readme.py"
BIN = Path(sys.executable).parent


def readme_blocks(marker: str = MARKER, fence: str = "```sh") -> list[str]:
    """The code blocks that follow ``marker`` in the README, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(re.escape(marker) + r"[^\n]*\n" + re.escape(fence) + r"\n(.*?)\n```", text, re.S):
        blocks.append(match.group(1))
    return blocks


def block_with(text: str) -> str:
    found = [block for block in readme_blocks() if text in block]
    assert len(found) == 1, f"one README block marked for this test holds {text!r}"
    return found[0]


def clean_environment(home: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GRIDCREDIT_", "X509_"))}
    env.update(HOME=str(home), PATH=f"{BIN}:{env.get('PATH', '')}")
    env.pop("XDG_DATA_HOME", None)
    return env


class Shell:
    """Runs README lines one by one as a person would paste them: assignments kept for the next
    lines, ``HOLD_ID`` the id the last ``bank hold`` printed; each must exit 0."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.prelude: list[str] = []
        self.hold_id: str | None = None
        self.outputs: dict[str, str] = {}

    def run_block(self, block: str) -> None:
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if not command or command.startswith("#"):
                continue
            if re.match(r"^(export\s+)?[A-Z_][A-Z0-9_]*=", command):
                self.prelude.append(command)
                continue
            if "HOLD_ID" in command:
                assert self.hold_id, f"no hold made before {command!r}"
                command = command.replace("HOLD_ID", self.hold_id)
            done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(self.prelude + [command])],
                                  cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, (line, done.returncode, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr, (line, done.stderr)
            self.outputs[line] = done.stdout
            if command.startswith("gridcredit bank hold "):
                self.hold_id = re.search(r"\bhold (hold-\d+)", done.stdout).group(1)

    def output(self, starting: str) -> str:
        found = [out for line, out in self.outputs.items() if line.startswith(starting)]
        assert len(found) == 1, (starting, list(self.outputs))
        return found[0]


def test_the_credentials_examples_run_as_written(tmp_path):
    env = clean_environment(tmp_path / "home")
    env["X509_USER_PROXY"] = str(tmp_path / "proxy.pem")      # not the machine's /tmp/x509up_u<uid>
    block = block_with("gridcredit pki ca --dir ca").replace("/tmp/x509up_u$(id -u)", "$X509_USER_PROXY")
    shell = Shell(tmp_path, env)
    shell.run_block(block)
    assert "/DC=org/DC=example/CN=Alice" in shell.output("gridcredit pki user")
    assert (tmp_path / "home" / ".globus" / "usercert.pem").exists()


def test_the_configuration_example_loads(tmp_path):
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- read by tests/test_first_hour_readme.py[^\n]*\n```toml\n(.*?)\n```", text, re.S)
    assert match, "the README's configuration example is marked"
    path = tmp_path / "gridcredit.toml"
    path.write_text(match.group(1), encoding="utf-8")
    config = registry.load_config(str(path), env={})
    assert config.client.url == "https://localhost:8443" and config.server.port == 8443


@pytest.mark.slow
def test_the_demo_then_the_bank_and_luts_examples_as_written_then_ctrl_c(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "scripts").symlink_to(REPO / "scripts")
    state = work / "gridcredit-data"
    port = free_port()
    env = clean_environment(tmp_path / "home")
    env.update(GRIDCREDIT_STATE_DIR=str(state), GRIDCREDIT_SERVER_PORT=str(port))
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        demo = subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh")], stdout=out, stderr=err, env=env,
                                start_new_session=True)     # its own process group, as a terminal's job
    try:
        deadline = time.monotonic() + 600
        while "Press Ctrl-C to stop." not in out_path.read_text():
            assert demo.poll() is None, (out_path.read_text(), err_path.read_text())
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(1)
        demo_out = out_path.read_text()
        assert f"state directory: {state}" in demo_out and "it issues users /DC=org/DC=gridcredit/O=Development/CN=<name>" in demo_out
        assert "demo-job-2" in demo_out and "1,250 charged" in demo_out

        shell = Shell(work, {**env, "GRIDCREDIT_SERVER_PORT": str(port)})
        shell.prelude.append(f"export GRIDCREDIT_SERVER_PORT={port}")   # the README's host is the demo's 8443
        shell.run_block(block_with("gridcredit bank create-account vo-atlas"))
        shell.run_block(block_with("gridcredit luts publish scripts/demo-records.xml"))

        # What the examples say they find, they find: in the demo's own data.
        assert "1,250 charged on hold" in shell.output('gridcredit bank history vo-demo')
        balance = json.loads(shell.output("gridcredit bank balance vo-atlas --json"))
        assert balance["total"] == 1_000_000 - 3200 - 1200 and balance["held"] == 5000    # job-42 still held
        assert "already stored" in shell.output("gridcredit luts publish scripts/demo-records.xml $SITE")
        over_an_hour = shell.output("gridcredit luts query 'n:Usage/n:wall_us")
        assert "demo-job-1" in over_an_hour and "demo-job-2" in over_an_hour and "demo-job-3" not in over_an_hour
        assert json.loads(shell.output("gridcredit luts query 'urf:JobUsageRecord/urf:Queue"))["count"] == 2
        assert "demo-job-1" in shell.output("gridcredit luts job ")
        assert "demo  2026-11  3" in re.sub(r" +", "  ", shell.output("gridcredit luts summary"))
        assert b"demo-job-1" in (work / "as-sent.xml").read_bytes()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)       # Ctrl-C: the terminal signals the whole job
        code = demo.wait(60)
    assert code == 0, (code, err_path.read_text())
    stderr = err_path.read_text()
    assert stderr == "", stderr                        # no stray TLS lines, no traceback
    assert "== stopped" in out_path.read_text()


def test_the_readme_names_the_services_serve_runs():
    """"Services described as what they do today": the paths `gridcredit serve` answers are the registry's."""
    text = README.read_text(encoding="utf-8")
    listed = re.search(r"gridcredit serve +# https://127\.0\.0\.1:8443/\{([a-z,]+)\}", text).group(1).split(",")
    assert listed == list(registry.names())
    words = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
    assert f"serves the {words[len(listed)]} services" in text


def test_the_layout_names_every_script():
    row = next(line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `scripts/` |"))
    missing = [path.name for path in sorted((REPO / "scripts").iterdir()) if f"`{path.name}`" not in row]
    assert missing == [], f"README's Layout does not name {missing}"
