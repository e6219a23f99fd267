"""The Prometheus config, alert rules and dashboards, checked by the real promtool and against the code."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.unit.promql_names import (MONITORING, PROMETHEUS_SERIES, dashboard_exprs, exported_names,
                                     metric_names, rule_exprs)

PROMTOOL = shutil.which("promtool")
TESTS = MONITORING / "tests" / "alerts_test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    if PROMTOOL is None:
        pytest.fail("promtool missing: run `make setup` (Debian package prometheus)")
    return PROMTOOL


def test_config_is_valid(promtool):
    out = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=MONITORING,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_pass_their_promtool_tests(promtool):
    out = subprocess.run([promtool, "test", "rules", str(TESTS.relative_to(MONITORING))], cwd=MONITORING,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_is_tested_firing_and_not_firing():
    doc = yaml.safe_load(TESTS.read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    rules = set(rule_exprs())
    assert rules - fires == set(), "rules never tested firing"
    assert rules - quiet == set(), "rules never tested staying quiet"
    assert (fires | quiet) - rules == set(), "tests of rules that do not exist"


def test_every_rule_has_a_summary_and_a_runbook():
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            ann = rule.get("annotations", {})
            assert ann.get("summary") and len(ann.get("runbook", "")) > 40, rule["alert"]
            assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]


def test_promql_name_extraction():
    expr = ('sum by (service, topic) (rate(downlink_a_total{le="600",x=~"a|b"}[5m])) > 1 '
            'and on () up{job="downlink"} - histogram_quantile(0.9, downlink_b_bucket) or vector(0)')
    assert metric_names(expr) == {"downlink_a_total", "up", "downlink_b_bucket"}


@pytest.mark.parametrize("source", ["rules", "dashboards"])
def test_queries_name_only_exported_metrics(source):
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    assert exprs, f"no {source} found"
    exported = exported_names() | PROMETHEUS_SERIES
    unknown = {where: sorted(metric_names(e) - exported) for where, e in exprs.items()
               if metric_names(e) - exported}
    assert unknown == {}, "queries name metrics monitoring/metrics.py does not define"
    assert all(metric_names(e) for e in exprs.values()), "an expression names no metric"


def test_label_less_gauges_appear_only_once_their_owner_sets_them():
    """Every process imports monitoring.metrics: a plain label-less gauge would read 0 in demux as in
    its owner, and `downlink_realtime_mqtt_connected == 0` (MqttDisconnected) or
    `downlink_l2b_within_5_days_ratio < 0.95` (L2bSloAtRisk) would fire from every process. So each is
    an OwnedGauge: no sample until set."""
    from prometheus_client import Gauge

    from monitoring import metrics

    label_less = [m for m in vars(metrics).values() if isinstance(m, Gauge) and not m._labelnames]
    assert label_less, "no label-less gauge found"
    for g in label_less:
        assert isinstance(g, metrics.OwnedGauge), f"{g._name}: make it an OwnedGauge"
    probe = metrics.OwnedGauge("downlink_probe_ratio", "an owned gauge of this test only", registry=None)
    assert [s for f in probe.collect() for s in f.samples] == []
    probe.set(0.5)
    assert [s.value for f in probe.collect() for s in f.samples] == [0.5]
