"""``downlink run`` picks its services from the registry (no service list kept elsewhere)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from consumers.framework import registry
from downlink.cli.main import app


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    async def fake_run_services(settings, names, **kw):
        calls.append(list(names))
        return 0

    import consumers.framework.runner as runner

    monkeypatch.setattr(runner, "run_services", fake_run_services)
    return calls


def test_run_without_only_starts_every_default_service(started: list[list[str]]):
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 0, result.output
    assert started == [registry.names(default_only=True)]
    assert {"demux", "l0", "l1b", "calibrate", "archive", "realtime"} <= set(started[0])
    assert "api" not in started[0] and "dashboard" not in started[0]


def test_run_only_starts_exactly_those(started: list[list[str]]):
    result = CliRunner().invoke(app, ["run", "--only", "demux, l0"])
    assert result.exit_code == 0, result.output
    assert started == [["demux", "l0"]]


def test_demux_is_bulk_work_only_while_the_tap_carries_live_feeds():
    assert registry.is_bulk(["demux"], tapped=True)
    assert not registry.is_bulk(["demux"], tapped=False)
    assert not registry.is_bulk(["demux", "realtime"], tapped=True)  # realtime keeps the CPU
    assert registry.is_bulk(["l0", "l1b"], tapped=False)
    assert not registry.is_bulk([], tapped=True)


@pytest.mark.parametrize("tap, lowered", [("true", True), ("false", False)])
def test_a_demux_process_lowers_its_priority_with_the_tap_on(tap: str, lowered: bool):
    """The real thing, in a child process: `consumer demux` starts at run.bulk_nice only when tapped."""
    import os
    import subprocess
    import sys

    code = ("import os; from core.settings import Settings; from downlink.cli.run import _background_if_bulk; "
            "_background_if_bulk(Settings.from_env(), ['demux']); print(os.getpriority(os.PRIO_PROCESS, 0))")
    env = {**os.environ, "DOWNLINK_INGEST_REALTIME_TAP": tap, "DOWNLINK_RUN_BULK_NICE": "10"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    assert int(out.stdout.split()[-1]) == (max(parent, 10) if lowered else parent)
