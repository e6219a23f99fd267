"""Shared steps of the fault suite: waiting on process logs, checking outputs against the truth."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from core.settings import Settings
from products.l0 import iter_manifests, l0_paths
from products.verify import verify
from tests.integration.helpers import env_for, read_all


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


def spawn_with(settings: Settings, *args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``downlink ARGS`` in the background with these settings (plus ``env``), output to ``log``."""
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "downlink", *args], env={**env_for(settings), **(env or {})},
                                stdout=fh, stderr=subprocess.STDOUT)


def scrape(port: int, name: str) -> dict[str, float]:
    """Samples of one metric from a running process's /metrics: labels text -> value ({} if down)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out


def stop_all(procs: dict[str, subprocess.Popen | None], grace: float = 30.0) -> list[str]:
    """SIGCONT + SIGTERM every process still running, SIGKILL after ``grace``; names of those that hung."""
    import signal

    alive = {n: p for n, p in procs.items() if p is not None and p.poll() is None}
    for p in alive.values():
        p.send_signal(signal.SIGCONT)
        p.send_signal(signal.SIGTERM)
    hung = []
    deadline = time.monotonic() + grace
    for name, p in alive.items():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung.append(name)
            p.kill()
            p.wait()
    return hung
