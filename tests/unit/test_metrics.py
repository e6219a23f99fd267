"""Metric definitions: names with units, bounded labels; the runner's sampler (lag, records in, disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from core.settings import Settings
from monitoring import metrics
from monitoring.sampler import Sampler, existing_parent

#: the only label names a downlink metric may carry (each has a small, known value set)
BOUNDED_LABELS = {"service", "apid", "source", "topic", "partition", "priority", "reason", "status",
                  "level", "kind", "step", "type"}
#: a gauge's or histogram's name ends with its unit
UNITS = ("_seconds", "_bytes", "_messages", "_ratio", "_exposures", "_connected", "_up")


def families():
    return [f for f in REGISTRY.collect() if f.name.startswith("downlink_")]


def definitions():
    return [m for m in vars(metrics).values() if hasattr(m, "_labelnames") and hasattr(m, "_name")]


def test_every_metric_has_a_downlink_name_with_its_unit_and_help():
    assert len(families()) >= 30
    for m in definitions():
        kind = m._type
        assert m._name.startswith("downlink_"), m._name
        assert m._documentation and len(m._documentation) > 15, m._name
        if kind in ("gauge", "histogram"):
            assert m._name.endswith(UNITS), f"{m._name}: name a gauge/histogram by its unit"
        if kind == "counter":
            assert not m._name.endswith("_total"), m._name  # the client appends _total itself


def test_labels_are_bounded_kinds_never_ids():
    for m in definitions():
        assert set(m._labelnames) <= BOUNDED_LABELS, f"{m._name}: labels {m._labelnames}"


def test_names_announced_to_other_services_exist():
    for name in ("L1B_WRITTEN", "CAL_STEP_SECONDS", "L0_TO_L2B_SECONDS", "TOO_LATENCY_SECONDS",
                 "L2B_WITHIN_5_DAYS", "MQTT_CONNECTED", "RT_PACKET_TO_MQTT_SECONDS", "RT_LAST_PACKET_AGE",
                 "DEADLETTER_RECORDS", "DATA_DISK_FREE_BYTES", "PARTITION_LAG", "RECORDS_IN",
                 "OLDEST_OPEN_EXPOSURE_AGE", "CAL_PRODUCTS_WRITTEN"):
        assert getattr(metrics, name)._name.startswith("downlink_")


def test_metrics_operators_rely_on_are_documented():
    """Every metric an alert or a dashboard panel uses is explained in docs/operations.md."""
    from tests.unit.promql_names import dashboard_exprs, metric_names, rule_exprs

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    used = {n for e in [*rule_exprs().values(), *dashboard_exprs().values()] for n in metric_names(e)}
    bases = {n.removesuffix(s) for n in used for s in ("_bucket", "_count", "_sum", "_total", "")
             if n.endswith(s) and n.startswith("downlink_")}
    for m in definitions():
        if m._name in bases:
            assert m._name in doc, f"{m._name} is used by a rule or panel but missing from docs/operations.md"


class FakeConsumer:
    """Positions and last stable offsets as aiokafka's consumer reports them (unit test double)."""

    def __init__(self) -> None:
        self.pos: dict[TopicPartition, int] = {}
        self.lso: dict[TopicPartition, int | None] = {}
        self.commits: dict[TopicPartition, int | None] = {}
        self.start: dict[TopicPartition, int] = {}

    async def committed(self, tp):
        return self.commits.get(tp)

    async def beginning_offsets(self, tps):
        return {tp: self.start.get(tp, 0) for tp in tps}

    async def position(self, tp):
        if tp not in self.pos:
            raise RuntimeError("no position")
        return self.pos[tp]

    def last_stable_offset(self, tp):
        return self.lso.get(tp)

    def highwater(self, tp):
        return self.lso.get(tp)


class FakeService:
    def __init__(self, name, consumer, assigned):
        self.name, self.consumer, self.assigned = name, consumer, set(assigned)


def value(metric, *labels):
    return metric.labels(*labels)._value.get()


def test_sampler_exports_lag_per_partition_and_counts_records_once(tmp_path):
    settings = Settings().replace(topic_prefix="t9.", data_dir=tmp_path / "not" / "yet")
    a, b = TopicPartition("t9.tlm.sci", 0), TopicPartition("t9.tlm.sci", 1)
    c = FakeConsumer()
    svc = FakeService("svc_sampler", c, {a, b})
    c.pos.update({a: 10, b: 0})
    c.lso.update({a: 25, b: 4})
    c.commits[a] = 7  # partition 0 resumed from a commit at 7; partition 1 never committed (log start 0)
    s = Sampler(settings, [svc])
    asyncio.run(s.sample())
    assert value(metrics.PARTITION_LAG, "svc_sampler", "tlm.sci", "0") == 15
    assert value(metrics.PARTITION_LAG, "svc_sampler", "tlm.sci", "1") == 4
    assert value(metrics.CONSUMER_LAG, "svc_sampler", "tlm.sci") == 19
    # consumed before the first sample: counted from where the group had committed
    assert value(metrics.RECORDS_IN, "svc_sampler", "tlm.sci") == 3
    c.pos.update({a: 20, b: 4})
    asyncio.run(s.sample())
    assert value(metrics.RECORDS_IN, "svc_sampler", "tlm.sci") == 17
    c.pos[a] = 12  # an aborted batch rewound; the redo must not count twice
    asyncio.run(s.sample())
    c.pos[a] = 22
    asyncio.run(s.sample())
    assert value(metrics.RECORDS_IN, "svc_sampler", "tlm.sci") == 19
    # partition 1 moves to another instance: its series is retracted, not left stale
    svc.assigned = {a}
    asyncio.run(s.sample())
    exported = {tuple(smp.labels.values()) for f in REGISTRY.collect() if f.name == "downlink_partition_lag_messages"
                for smp in f.samples if smp.labels["service"] == "svc_sampler"}
    assert exported == {("svc_sampler", "tlm.sci", "0")}
    assert metrics.DATA_DISK_SIZE_BYTES._value.get() > 0
    assert 0 < metrics.DATA_DISK_FREE_BYTES._value.get() <= metrics.DATA_DISK_SIZE_BYTES._value.get()


def test_sampler_skips_services_without_a_consumer_and_unknown_positions(tmp_path):
    c = FakeConsumer()
    tp = TopicPartition("tlm.sci", 3)
    c.lso[tp] = 5  # assigned but no position yet
    s = Sampler(Settings().replace(data_dir=tmp_path), [FakeService("svc_idle", None, ()),
                                                         FakeService("svc_new", c, {tp})])
    asyncio.run(s.sample())
    names = {smp.labels.get("service") for f in REGISTRY.collect() if f.name == "downlink_partition_lag_messages"
             for smp in f.samples}
    assert not {"svc_idle", "svc_new"} & names


def test_existing_parent(tmp_path):
    assert existing_parent(tmp_path / "a" / "b") == tmp_path.absolute()
    assert existing_parent(tmp_path) == tmp_path.absolute()


@pytest.mark.parametrize("seconds", [0, -1])
def test_sample_period_must_be_positive(seconds):
    from core.errors import ConfigError

    with pytest.raises(ConfigError):
        Settings.from_env({"DOWNLINK_METRICS_SAMPLE_SECONDS": str(seconds)})
