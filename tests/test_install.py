"""An installed gridcredit (not the editable checkout) has all it needs: the clients load the
checked-in WSDLs, which setup.py ships as the data package gridcredit.wsdl_documents."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent

CHECK = """
import sys
# Only the installed copy: drop the editable checkout's import hook.
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
sys.path.insert(0, sys.argv[1])
import gridcredit.client as client
assert client.__file__.startswith(sys.argv[1]), client.__file__
names = sorted(path.name for path in client.WSDL_DIR.glob("*.wsdl"))
assert names == ["auctioneer.wsdl", "bank.wsdl", "directory.wsdl", "jarm.wsdl", "luts.wsdl"], (client.WSDL_DIR, names)
client.service_description("bank")
from gridcredit.server import registry
assert registry.names() == ("bank", "luts", "jarm", "auctioneer", "directory")
print("ok", client.WSDL_DIR)
"""


@pytest.mark.slow
def test_an_installed_copy_finds_its_wsdls_and_services(tmp_path):
    target = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                            str(REPOSITORY)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    checked = subprocess.run([sys.executable, "-c", CHECK, str(target)], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("ok"), checked.stdout + checked.stderr
