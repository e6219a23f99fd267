"""The service framework's pure parts: typed decoding, dead letters, schema checks, registry."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.framework import registry
from consumers.framework.service import Input, Output, Record, Service, check_schemas
from consumers.framework.transactional import is_retriable
from core.settings import Settings
from core.errors import ConfigError, KafkaUnavailable, SchemaMismatch, StorageError, ValidationError
from streams import envelope
from streams.messages import DeadLetter, SciEoc, SciRun
from streams.topics import load_topics


class _Probe(Service):
    name = "probe"
    inputs = (Input("tlm.sci", (SciRun, SciEoc)), Input("downlink.raw"))

    async def run(self) -> None:  # pragma: no cover - never started here
        raise AssertionError


def _rec(topic: str, value: bytes | None, headers=(), offset: int = 7) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 1, len(value or b""), list(headers))


@pytest.fixture
def probe(settings) -> _Probe:
    return _Probe(settings)


def test_good_records_decode_to_typed_messages(probe, settings) -> None:
    run = SciRun(contact="C", exposure_id="jw01234001001_01101_00001_nrca1", packets=b"p", index=b"i")
    tp = TopicPartition(settings.topic("tlm.sci"), 0)
    rec = probe.decode(tp, _rec(tp.topic, run.encode()))
    assert isinstance(rec, Record) and rec.value == run and rec.topic == "tlm.sci"
    raw_tp = TopicPartition(settings.topic("downlink.raw"), 0)
    raw = probe.decode(raw_tp, _rec(raw_tp.topic, b"\x01\x02", [("offset", b"0")]))
    assert isinstance(raw, Record) and raw.value == b"\x01\x02" and raw.headers == {"offset": "0"}


@pytest.mark.parametrize("value, why", [
    (None, "tombstone"),
    (b"\xc1garbage", "malformed"),
    (envelope.encode("tlm.sci.run", {"contact": "C"}), "required field"),
    (envelope.encode("l0.ready", {"exposure_id": "x"}), "expected tlm.sci.run or tlm.sci.eoc"),
    (b"\x82\xa1v\x63\xa6schema\xabtlm.sci.run", "version"),
])
def test_undecodable_records_become_dead_letters(probe, settings, value, why) -> None:
    tp = TopicPartition(settings.topic("tlm.sci"), 3)
    out = probe.decode(tp, _rec(tp.topic, value, offset=42))
    assert isinstance(out, Output) and out.topic == "tlm.deadletter"
    letter = DeadLetter.decode(out.payload())
    assert (letter.source_topic, letter.partition, letter.offset, letter.service) == ("tlm.sci", 3, 42, "probe")
    assert why in letter.reason
    assert letter.data == (value or b"")


def test_non_utf8_headers_are_dead_lettered(probe, settings) -> None:
    tp = TopicPartition(settings.topic("downlink.raw"), 0)
    out = probe.decode(tp, _rec(tp.topic, b"x", [("offset", b"\xff\xfe")]))
    assert isinstance(out, Output) and "UnicodeDecodeError" in DeadLetter.decode(out.payload()).reason


def test_schema_check_names_topic_and_both_schemas() -> None:
    specs = load_topics()
    check_schemas("probe", {"tlm.sci": frozenset({"tlm.sci.run", "tlm.sci.eoc"})}, specs, "topics.yaml")
    with pytest.raises(SchemaMismatch, match=r"'l0.ready' carries schema 'l0.ready'.*expects 'tlm.sci.run'"):
        check_schemas("probe", {"l0.ready": frozenset({"tlm.sci.run"})}, specs, "topics.yaml")
    with pytest.raises(ConfigError, match="not declared"):
        check_schemas("probe", {"no.such": frozenset({"x"})}, specs, "topics.yaml")


def test_every_registered_service_matches_topics_yaml() -> None:
    specs = load_topics()
    for name in registry.SERVICES:
        cls = registry.load(name)
        check_schemas(name, cls(Settings()).wanted_schemas(), specs, "topics.yaml")


def test_registry_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown service 'nope'"):
        registry.load("nope")


def test_errors_carry_their_retry_policy() -> None:
    assert is_retriable(KafkaUnavailable("x")) and is_retriable(StorageError("full", disk_full=True))
    assert not is_retriable(ValidationError("bad")) and not is_retriable(ValueError("bug"))


def test_topics_yaml_schemas_are_message_classes_and_documented() -> None:
    from pathlib import Path

    from streams import messages

    doc = (Path(__file__).resolve().parents[2] / "docs" / "messages.md").read_text()
    for name, spec in load_topics().items():
        for schema in spec.schemas - {"raw-bytes"}:
            assert schema in messages.REGISTRY, f"{name}: schema {schema!r} has no message class"
    for schema in messages.REGISTRY:
        assert f"`{schema}`" in doc, f"docs/messages.md does not describe {schema!r}"
