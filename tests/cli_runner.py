"""Run a ``gridcredit`` command group in-process as a user, as the CLI tests do."""
from __future__ import annotations

import json

from gridcredit.server.cli import main


class Cli:
    """``gridcredit <group> …`` as ``user`` against ``url``: (exit code, parsed JSON or text, stderr)."""

    def __init__(self, group: str, capsys, pki, url: str) -> None:
        self.group, self.capsys, self.pki, self.url = group, capsys, pki, url

    def __call__(self, user, *argv: str, as_json: bool = True, url: str | None = None):
        args = [self.group, *argv, "--url", url or self.url, "--cert", str(user.cert_path), "--key",
                str(user.key_path), "--trust", str(self.pki.trust_dir)]
        if as_json:
            args.append("--json")
        self.capsys.readouterr()
        code = main(args)
        out, err = self.capsys.readouterr()
        return code, (json.loads(out) if as_json and out.strip() else out), err

    def ok(self, user, *argv: str, **options):
        code, out, err = self(user, *argv, **options)
        assert code == 0, (argv, code, err, out)
        assert err == "", err
        return out
