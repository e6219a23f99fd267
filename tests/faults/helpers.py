"""Shared steps of the fault suite: waiting on process logs, checking outputs against the truth."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from core.settings import Settings
from products.l0 import iter_manifests, l0_paths
from products.verify import verify
from tests.integration.helpers import read_all


async def wait_for_log(paths: list[Path], text: str, count: int = 1, timeout: float = 60.0) -> None:
    """Wait until ``text`` appears in ``count`` of the log files (processes report progress there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sum(p.exists() and text in p.read_text(errors="replace") for p in paths)
        if found >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} not seen in {count} of {[p.name for p in paths]} within {timeout}s")


def check_no_temp_files(data_dir: Path) -> None:
    left = [str(p) for p in Path(data_dir).rglob("*.tmp")]
    assert left == [], f"temp files left behind: {left[:5]}"


def check_l0_pairs(data_dir: Path) -> None:
    """Every L0 file and its manifest are of one version (the manifest's sha256 is the file's)."""
    from products.l0 import sha256_file

    for manifest_path in iter_manifests(data_dir):
        manifest = json.loads(manifest_path.read_text())
        data_path = manifest_path.with_name(manifest_path.name.replace("_l0.json", "_l0.dat"))
        assert data_path.exists(), f"{manifest_path} has no data file"
        assert sha256_file(data_path) == manifest["sha256"], \
            f"{data_path} and its manifest are of different versions"


async def check_l0_outputs(settings: Settings, truth: dict[str, Any], *,
                           skip: set[str] = frozenset()) -> Counter:
    """L0 == truth (except exposures in ``skip``), each (exposure, version) announced once.

    Returns the announcements counter.
    """
    result = verify(truth, settings.data_dir)
    bad = [r.__dict__ for r in result.mismatches if r.exposure_id not in skip]
    assert not bad, bad
    ready = Counter((m["exposure_id"], m["version"]) for _, m in await read_all(settings, "l0.ready"))
    assert set(ready.values()) <= {1}, f"announced twice: {[k for k, n in ready.items() if n > 1][:5]}"
    for e in truth["exposures"]:
        if e["exposure_id"] not in skip and e["complete"]:
            assert (e["exposure_id"], 1) in ready, f"{e['exposure_id']} never announced"
    check_l0_pairs(settings.data_dir)
    check_no_temp_files(settings.data_dir)
    return ready


def manifest_of(settings: Settings, exposure_id: str) -> dict[str, Any] | None:
    _, path = l0_paths(settings.data_dir, exposure_id)
    return json.loads(path.read_text()) if path.exists() else None
