"""The layers of docs/architecture.md, checked from the source: the base (gridcredit/, security/,
xmlstore/) imports no service and nothing of the server side; a service imports nothing of the
server side (the server takes services from its registry, never the other way round)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {        # folder → package prefixes its modules may not import
    "gridcredit": ("gridcredit.services", "gridcredit.server"),
    "security": ("gridcredit.services", "gridcredit.server"),
    "xmlstore": ("gridcredit.services", "gridcredit.server"),
    "services": ("gridcredit.server",),
}
PACKAGE_OF_FOLDER = {"gridcredit": "gridcredit", "security": "gridcredit.security", "xmlstore": "gridcredit.xmlstore",
                     "services": "gridcredit.services", "server": "gridcredit.server"}


def imported_names(path: Path, folder: str) -> set[str]:
    """Every module ``path`` imports (relative imports resolved), at the top or inside functions."""
    relative = path.relative_to(ROOT / folder).with_suffix("")
    package_parts = PACKAGE_OF_FOLDER[folder].split(".") + list(relative.parts[:-1])   # the module's package
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[:len(package_parts) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_no_layer_imports_one_above_it(folder):
    forbidden = LAYERS[folder]
    breaches = sorted(f"{path.relative_to(ROOT)} imports {name}"
                      for path in (ROOT / folder).rglob("*.py")
                      for name in imported_names(path, folder)
                      if name.startswith(forbidden))
    assert breaches == []


def test_the_import_reader_resolves_relative_imports():
    names = imported_names(ROOT / "services" / "bank" / "__init__.py", "services")
    assert {"gridcredit.contract", "gridcredit.services.bank.config.BankConfig"} <= names
    names = imported_names(ROOT / "server" / "host.py", "server")
    assert "gridcredit.server.registry" in names or "gridcredit.server" in names
