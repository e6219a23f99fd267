"""Metric names used by PromQL expressions (alert rules, dashboards), and the names our code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
#: series Prometheus makes itself (not exported by downlink)
PROMETHEUS_SERIES = {"up"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
             "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels and keywords removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                      # strings
    s = re.sub(r"\{[^}]*\}", "", s)                                     # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)                                    # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted((MONITORING / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                out[f"{path.name}: {panel['title']} [{t['refId']}]"] = t["expr"]
    return out


def exported_names() -> set[str]:
    """Every series name the registry can export once every metric definition is imported."""
    from prometheus_client import REGISTRY

    import monitoring.metrics  # noqa: F401  (the one place metrics are defined)
    import monitoring.sampler  # noqa: F401

    names: set[str] = set()
    for family in REGISTRY.collect():
        n = family.name
        if family.type == "counter":
            names |= {f"{n}_total", f"{n}_created"}
        elif family.type == "histogram":
            names |= {f"{n}_bucket", f"{n}_count", f"{n}_sum", f"{n}_created"}
        elif family.type == "summary":
            names |= {n, f"{n}_count", f"{n}_sum", f"{n}_created"}
        else:
            names.add(n)
    return names


def used_names() -> set[str]:
    """Every metric name a rule or a dashboard panel reads."""
    return {n for e in [*rule_exprs().values(), *dashboard_exprs().values()] for n in metric_names(e)}


def used_gauges() -> set[str]:
    """Gauges of monitoring/metrics.py that a rule or a dashboard reads: each must have a sample after
    a real run (tests/integration/test_prometheus_live.py), or the rule or panel watches nothing."""
    from prometheus_client import REGISTRY

    import monitoring.metrics  # noqa: F401

    gauges = {f.name for f in REGISTRY.collect() if f.type == "gauge" and f.name.startswith("downlink_")}
    return gauges & used_names()
