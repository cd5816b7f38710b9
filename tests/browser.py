"""A real headless browser for the web view's tests: Debian's chromium (scripts/browser.sh installs it).

``Browser(root, ca_pem, user)`` makes a browser profile of its own under ``root``: an NSS database
(``$HOME/.pki/nssdb``, where Chromium on Linux keeps certificates) that trusts the test CA and holds
``user``'s certificate and key (none: a browser without a certificate), and the content setting
that makes Chromium present a client certificate without asking (the AutoSelectCertificateForUrls
policy's setting, written into the profile's Preferences: no system-wide policy file). Each call
runs one ``chromium --headless`` process: ``dom(url)`` is the page's DOM after loading,
``screenshot(url, path)`` a PNG of it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

BROWSER_TIMEOUT_S = 90


def available() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    missing = [name for name in ("chromium", "certutil", "pk12util", "openssl") if shutil.which(name) is None]
    return f"{', '.join(missing)} missing: run scripts/browser.sh install" if missing else None


class Browser:
    def __init__(self, root: Path, ca_pem: Path, user=None) -> None:
        self.root = Path(root)
        self.home = self.root / "home"
        self.profile = self.root / "profile"
        nssdb = self.home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True, exist_ok=True)
        database = f"sql:{nssdb}"
        self._run(["certutil", "-N", "-d", database, "--empty-password"])
        self._run(["certutil", "-A", "-d", database, "-n", "gridcredit test CA", "-t", "C,,", "-i", str(ca_pem)])
        if user is not None:
            bundle = self.root / "user.p12"
            self._run(["openssl", "pkcs12", "-export", "-in", str(user.cert_path), "-inkey", str(user.key_path),
                       "-out", str(bundle), "-passout", "pass:", "-name", "test user"])
            self._run(["pk12util", "-i", str(bundle), "-d", database, "-W", ""])
        default = self.profile / "Default"
        default.mkdir(parents=True, exist_ok=True)
        # AutoSelectCertificateForUrls as a content setting of the profile: any https://localhost port
        preferences = {"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {
            "https://localhost:*,*": {"setting": {"filters": [{}]}}}}}}}
        (default / "Preferences").write_text(json.dumps(preferences))

    def _run(self, command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=self._env(),
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("GRIDCREDIT_", "SSL_", "X509_"))}
        env["HOME"] = str(self.home)
        return env

    def _chromium(self, *arguments: str) -> str:
        command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-extensions", "--disable-background-networking", "--disable-sync",
                   "--disable-component-update", "--disable-default-apps", "--password-store=basic",
                   f"--user-data-dir={self.profile}", "--virtual-time-budget=5000", *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, env=self._env(),
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout

    def dom(self, url: str) -> str:
        return self._chromium("--dump-dom", url)

    def screenshot(self, url: str, path: Path, *, width: int = 1200, height: int = 1500) -> Path:
        self._chromium(f"--screenshot={path}", f"--window-size={width},{height}", "--hide-scrollbars", url)
        return path
