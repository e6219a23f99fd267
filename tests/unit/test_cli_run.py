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
