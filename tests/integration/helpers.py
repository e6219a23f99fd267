"""Shared steps of the pipeline integration tests (real broker, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


from core.settings import Settings
from streams.kafka import read_to_end
from core.errors import EnvelopeError
from streams import envelope


def fast(settings: Settings) -> Settings:
    """Settings for tests: partial L0 written 0.5 s after end of contact, idle after 1 s."""
    return settings.replace(l0_eoc_margin_seconds=0.5, run_idle_seconds=1.0)


def env_for(settings: Settings) -> dict[str, str]:
    """Environment that makes a `downlink` subprocess use these settings."""
    env = dict(os.environ)
    env.update({
        "DOWNLINK_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "DOWNLINK_TOPIC_PREFIX": settings.topic_prefix,
        "DOWNLINK_DATA_DIR": str(settings.data_dir),
        "DOWNLINK_STATE_DIR": str(settings.state_dir),
        "DOWNLINK_L0_EOC_MARGIN_SECONDS": str(settings.l0.eoc_margin_seconds),
        "DOWNLINK_RUN_IDLE_SECONDS": str(settings.run.idle_seconds),
    })
    return env


def cli(settings: Settings, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "downlink", *args], env=env_for(settings),
                          check=check, capture_output=True, text=True, **kw)


def spawn(settings: Settings, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "downlink", *args], env=env_for(settings),
                                stdout=fh, stderr=subprocess.STDOUT)


def simulate(settings: Settings, tmp: Path, *, seed: int, contact: str, exposures: int = 20,
             faults: str | None = None, next_contact: str | None = None,
             size: str | None = None, max_subarray: int = 256) -> dict[str, Any]:
    """Simulate a contact (``exposures`` small ones, or ``size`` bytes) and return its truth."""
    amount = ["--size", size] if size else ["--exposures", str(exposures)]
    args = ["simulate", "--seed", str(seed), *amount, "--contact", contact,
            "--max-subarray", str(max_subarray),
            "--out", str(tmp / f"{contact}.bin"), "--truth", str(tmp / f"{contact}.truth.json")]
    if faults:
        args += ["--faults", faults]
    if next_contact:
        args += ["--next-out", str(tmp / f"{next_contact}.bin"), "--next-contact", next_contact]
    cli(settings, *args)
    return json.loads((tmp / f"{contact}.truth.json").read_text())


def ingest(settings: Settings, path: Path, contact: str) -> None:
    cli(settings, "ingest", str(path), "--contact", contact)


async def read_all(settings: Settings, topic: str) -> list[tuple[bytes | None, Any]]:
    """Every committed message of a topic as (key, decoded envelope or raw value)."""
    out: list[tuple[bytes | None, Any]] = []
    async for rec in read_to_end(settings, topic):
        try:
            out.append((rec.key, envelope.decode(rec.value)))
        except EnvelopeError:
            out.append((rec.key, rec.value))
    return out
