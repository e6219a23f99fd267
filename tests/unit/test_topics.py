"""topics.yaml validation: the shipped file is valid and every mistake names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings
from streams.topics import TopicSpec, load_topics

CONTRACT_TOPICS = {
    "downlink.raw", "tlm.eng.realtime", "tlm.eng.recorded", "tlm.sci", "tlm.deadletter",
    "ops.alerts", "l0.ready", "cal.requests", "cal.done", "demux.state",
}

GOOD = """\
topics:
  a.topic:
    partitions: 2
    retention_ms: 1000
    cleanup_policy: delete
    key: contact id
    schema: raw-bytes
    config:
      max.message.bytes: 17825792
  b.state:
    partitions: 1
    retention_ms: -1
    cleanup_policy: compact
    key: contact id
    schema: demux.state
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    return path


def test_repository_topics_file_declares_every_contract_topic() -> None:
    specs = load_topics(Settings().topics_file)
    assert CONTRACT_TOPICS <= set(specs)
    assert specs["downlink.raw"].partitions == 4
    assert specs["tlm.sci"].partitions == 8
    # state snapshots are compacted (latest per key); event streams expire
    assert all(s.cleanup_policy == ("compact" if n.endswith(".state") else "delete") for n, s in specs.items())
    # bulk topics accept one message of max_message_bytes
    limit = Settings().kafka.max_message_bytes
    for name in ("downlink.raw", "tlm.sci", "tlm.eng.recorded", "tlm.deadletter", "demux.state"):
        assert int(specs[name].config["max.message.bytes"]) > limit


def test_good_file_loads_into_frozen_specs(tmp_path: Path) -> None:
    specs = load_topics(write(tmp_path, GOOD))
    a = specs["a.topic"]
    assert a == TopicSpec("a.topic", 2, 1000, "delete", "contact id", "raw-bytes", {"max.message.bytes": "17825792"})
    assert a.kafka_configs() == {"retention.ms": "1000", "cleanup.policy": "delete", "max.message.bytes": "17825792"}
    assert specs["b.state"].config == {}
    with pytest.raises(AttributeError):
        a.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("partitions: 2", "partitions: two", 3, "partitions"),
        ("partitions: 2", "partitions: 0", 3, "partitions"),
        ("retention_ms: 1000", "retention_ms: 1.5", 4, "retention_ms"),
        ("retention_ms: 1000", "retention_ms: 0", 4, "retention_ms"),
        ("      max.message.bytes: 17825792", "      retention.ms: 5", 9, "config.retention.ms"),
        ("cleanup_policy: delete", "cleanup_policy: forever", 5, "cleanup_policy"),
        ("    key: contact id\n    schema: raw-bytes", "    schema: raw-bytes", 2, "key"),
        ("schema: raw-bytes", "schema: raw-bytes\n    colour: blue", 8, "colour"),
        ("      max.message.bytes: 17825792", "      max.message.bytes: [1, 2]", 9, "config.max.message.bytes"),
        ("partitions: 1", "partitions: true", 11, "partitions"),
        ("key: contact id\n    schema: demux", "key: ''\n    schema: demux", 14, "key"),
    ],
)
def test_mistakes_name_file_line_and_field(tmp_path: Path, old: str, new: str, line: int, field: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_topics(path)
    message = str(info.value)
    assert f"{path}:{line}:" in message
    assert repr(field) in message or field in message


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    partitions: 1\n", "    partitions: [1\n"))
    with pytest.raises(ConfigError, match=rf"{path}:1[23]: invalid YAML"):
        load_topics(path)


def test_duplicate_topic_and_bad_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "  a.topic:\n    partitions: 1\n")
    with pytest.raises(ConfigError, match=r"topics.yaml:16: topic 'a.topic' declared twice"):
        load_topics(path)
    path = write(tmp_path, "topix:\n  a: 1\n")
    with pytest.raises(ConfigError, match=r"topics.yaml:1: unknown top-level field 'topix'"):
        load_topics(path)
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"topics.yaml:1:"):
        load_topics(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read topics file"):
        load_topics(tmp_path / "nope.yaml")
