"""The layout's import rules (docs/architecture.md) and lazy heavy dependencies."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("core", "streams", "products", "consumers", "monitoring", "downlink", "benchmarks")


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level project packages each module of ``package`` imports (any depth, lazy ones included)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names & set(PROJECT)
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("core", set(PROJECT) - {"core"}),
    ("streams", {"downlink", "consumers"}),
    ("products", {"downlink", "consumers"}),
    ("monitoring", {"downlink"}),
    ("consumers", {"downlink"}),
    ("benchmarks", {"downlink"}),
])
def test_import_rules(package: str, forbidden: set[str]) -> None:
    offenders = {mod: sorted(names & forbidden) for mod, names in _imports(package).items()
                 if names & forbidden}
    assert not offenders, f"{package} must not import {sorted(forbidden)}: {offenders}"


def test_the_rule_checker_sees_imports(tmp_path: Path) -> None:
    """The checker itself works: a module importing downlink is reported."""
    names = _imports("downlink")
    assert any("core" in n for n in names.values())


HEAVY = ("astropy", "sqlalchemy", "fastapi", "stcal", "stdatamodels", "uvicorn", "matplotlib")


def test_demux_service_loads_no_heavy_dependency() -> None:
    """What `downlink consumer demux` imports before it starts: the CLI, the registry, the service."""
    code = (
        "import sys, json\n"
        "import downlink.cli.main\n"
        "from consumers.framework import registry\n"
        "registry.load('demux'); registry.load('l0')\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
