"""The Prometheus config and alert rules, checked by the real promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
PROMTOOL = shutil.which("promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    if PROMTOOL is None:
        pytest.fail("promtool missing: run `make setup` (Debian package prometheus)")
    return PROMTOOL


def test_config_is_valid(promtool):
    out = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=MONITORING,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_as_specified(promtool):
    out = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_use_only_defined_metrics():
    from prometheus_client.metrics import MetricWrapperBase

    from monitoring import metrics

    defined = {m.describe()[0].name for m in vars(metrics).values()
               if isinstance(m, MetricWrapperBase)}
    text = (MONITORING / "alerts.yml").read_text()
    for name in ("downlink_packets_missing", "downlink_deadletter_bytes", "downlink_consumer_up",
                 "downlink_l0_written"):
        assert name in text and name in defined
