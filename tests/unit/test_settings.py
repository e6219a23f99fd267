"""Settings: defaults, DOWNLINK_* environment, overrides, validation and safe dumps."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings


def test_defaults_match_design() -> None:
    s = Settings.from_env(env={})
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.state_dir == Path(".downlink")
    assert s.topic("tlm.sci") == "tlm.sci"
    assert s.group("demux") == "downlink.demux"
    assert s.topics_file.name == "topics.yaml" and s.topics_file.is_file()


def test_environment_is_coerced_and_overrides_win() -> None:
    env = {
        "DOWNLINK_KAFKA_BOOTSTRAP": "kafka:9094",
        "DOWNLINK_STACK_KAFKA_PORT": "19092",
        "DOWNLINK_STATE_DIR": "/tmp/st",
        "DOWNLINK_L0_QUIET_SECONDS": "1.5",
        "DOWNLINK_TOPIC_PREFIX": "env.",
    }
    s = Settings.from_env(env=env, topic_prefix="cli.", data_dir=None)
    assert s.kafka.bootstrap == "kafka:9094"
    assert s.stack.kafka_port == 19092
    assert s.state_dir == Path("/tmp/st")
    assert s.l0.quiet_seconds == 1.5
    assert s.topic_prefix == "cli."  # flags beat the environment; None means "not given"
    assert s.data_dir == Path("data")
    assert s.topic("l0.ready") == "cli.l0.ready"
    assert s.group("l0") == "cli.downlink.l0"


def test_bad_values_are_config_errors_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="DOWNLINK_STACK_KAFKA_PORT='x' is not a valid int"):
        Settings.from_env(env={"DOWNLINK_STACK_KAFKA_PORT": "x"})
    with pytest.raises(ConfigError, match="unknown setting 'kafka_prot'"):
        Settings.from_env(env={}, kafka_prot=1)
    with pytest.raises(ConfigError, match="DOWNLINK_INGEST_CHUNK_BYTES"):
        Settings.from_env(env={"DOWNLINK_INGEST_CHUNK_BYTES": str(64 << 20)})
    with pytest.raises(ConfigError, match="DOWNLINK_LOG_FORMAT"):
        Settings.from_env(env={"DOWNLINK_LOG_FORMAT": "xml"})


def test_frozen_replace_and_dump_hides_credentials() -> None:
    s = Settings.from_env(env={"DOWNLINK_MQTT_URL": "mqtt://user:secret@broker:1883"})
    with pytest.raises(AttributeError):
        s.stack.kafka_port = 1  # type: ignore[misc]
    assert s.replace(stack_kafka_port=1).stack.kafka_port == 1 and s.stack.kafka_port == 9092
    dumped = s.dump()
    assert "secret" not in dumped["mqtt_url"] and dumped["mqtt_url"].endswith("broker:1883")


def test_test_fixture_isolates_topics_and_dirs(settings: Settings) -> None:
    assert settings.topic_prefix.startswith("t") and settings.topic_prefix.endswith(".")
    assert settings.topic("tlm.sci") != "tlm.sci"
    assert settings.data_dir.is_dir() and settings.state_dir.is_dir()
