"""Delivery guarantees of streams/kafka.py against the real broker (no mocks).

Covers what every consumer relies on: idempotent producer, manual commits,
resuming from the committed offset after a restart, transactions that commit
consumed offsets atomically with their output, and aborted output staying
invisible to read_committed readers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from core.settings import Settings
from streams import envelope
from streams.kafka import end_offsets, make_consumer, make_producer

pytestmark = pytest.mark.integration

#: a safety bound so a broken broker fails the test instead of hanging it (not a timing assertion)
DRAIN_LIMIT_S = 60.0


async def drain(consumer: AIOKafkaConsumer, count: int) -> list[Any]:
    """Read exactly ``count`` messages (fails if they do not arrive within DRAIN_LIMIT_S)."""
    out: list[Any] = []
    async with asyncio.timeout(DRAIN_LIMIT_S):
        while len(out) < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=count - len(out))
            for records in batches.values():
                out.extend(records)
    return out


async def assert_nothing_more(consumer: AIOKafkaConsumer) -> None:
    """No further message is readable (after a few empty polls)."""
    for _ in range(3):
        batches = await consumer.getmany(timeout_ms=300)
        assert not any(batches.values()), f"unexpected extra messages: {batches}"


async def test_idempotent_producer_and_group_round_trip(
    settings: Settings, topic_factory: Callable[..., Awaitable[str]],
    producer_factory: Callable[..., Awaitable[AIOKafkaProducer]],
    consumer_factory: Callable[..., Awaitable[AIOKafkaConsumer]],
) -> None:
    topic = await topic_factory("roundtrip", partitions=3)
    producer = await producer_factory()
    sent = {}
    for i in range(300):
        key = f"apid-{i % 7}".encode()
        value = envelope.encode("test.item", {"i": i, "payload": bytes([i % 256]) * 100})
        sent[i] = key
        await producer.send(topic, value, key=key)
    await producer.flush()

    consumer = await consumer_factory(topic, group="roundtrip")
    records = await drain(consumer, 300)
    await consumer.commit()
    received = {envelope.decode(r.value, expect="test.item")["i"]: r for r in records}
    assert sorted(received) == list(range(300))
    assert all(received[i].key == sent[i] for i in range(300))
    # per key (hence per partition) order is the send order
    by_key: dict[bytes, list[int]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(envelope.decode(r.value)["i"])
    assert all(seq == sorted(seq) for seq in by_key.values())
    committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    assert committed == await end_offsets(settings, topic)
    await assert_nothing_more(consumer)


async def test_restarted_consumer_resumes_from_committed_offset(
    settings: Settings, topic_factory: Callable[..., Awaitable[str]],
    producer_factory: Callable[..., Awaitable[AIOKafkaProducer]],
) -> None:
    topic = await topic_factory("resume", partitions=1)
    producer = await producer_factory()
    for i in range(20):
        await producer.send(topic, str(i).encode(), key=b"k")
    await producer.flush()
    tp = TopicPartition(topic, 0)

    first = make_consumer(settings, topic, group=settings.group("resume"))
    await first.start()
    try:
        records = await drain(first, 20)
        # processed only the first 8 durably: commit the offset of the next one to read
        await first.commit({tp: OffsetAndMetadata(records[7].offset + 1, "")})
    finally:
        await first.stop()

    second = make_consumer(settings, topic, group=settings.group("resume"))
    await second.start()
    try:
        records = await drain(second, 12)
        assert [r.value for r in records] == [str(i).encode() for i in range(8, 20)]
        await second.commit()
        await assert_nothing_more(second)
    finally:
        await second.stop()

    third = make_consumer(settings, topic, group=settings.group("resume"))
    await third.start()
    try:
        await producer.send_and_wait(topic, b"20", key=b"k")
        assert [r.value for r in await drain(third, 1)] == [b"20"]
    finally:
        await third.stop()


async def test_transaction_commits_offsets_with_output_and_hides_aborts(
    settings: Settings, topic_factory: Callable[..., Awaitable[str]],
    producer_factory: Callable[..., Awaitable[AIOKafkaProducer]],
    consumer_factory: Callable[..., Awaitable[AIOKafkaConsumer]],
) -> None:
    source = await topic_factory("tx.in", partitions=2)
    sink = await topic_factory("tx.out", partitions=2)
    plain = await producer_factory()
    for i in range(10):
        await plain.send(source, str(i).encode(), key=str(i % 2).encode())
    await plain.flush()

    group = settings.group("tx")
    worker = make_producer(settings, transactional_id="tx-worker")
    await worker.start()
    reader = await consumer_factory(source, group="tx")
    try:
        inputs = await drain(reader, 10)
        # transaction 1: transform and commit the consumed offsets atomically
        async with worker.transaction():
            for r in inputs:
                await worker.send(sink, b"ok-" + r.value, key=r.key)
            offsets = {}
            for r in inputs:
                tp = TopicPartition(r.topic, r.partition)
                offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
            await worker.send_offsets_to_transaction(offsets, group)
        # transaction 2: aborted output and offsets must leave no trace for committed readers
        await worker.begin_transaction()
        for i in range(5):
            await worker.send(sink, f"aborted-{i}".encode(), key=b"0")
        await worker.send_offsets_to_transaction({TopicPartition(source, 0): 0}, group)
        await worker.abort_transaction()
    finally:
        await worker.stop()

    committed_reader = await consumer_factory(sink, group=None)  # read_committed by default
    values = sorted(r.value for r in await drain(committed_reader, 10))
    assert values == sorted(b"ok-" + str(i).encode() for i in range(10))
    await assert_nothing_more(committed_reader)

    # the aborted records are in the log: read_uncommitted sees them, which proves the test bites
    dirty_reader = await consumer_factory(sink, group=None, isolation_level="read_uncommitted")
    dirty = [r.value for r in await drain(dirty_reader, 15)]
    assert sum(v.startswith(b"aborted-") for v in dirty) == 5

    # the committed transaction moved the group's offsets; the aborted one did not
    for p in range(2):
        tp = TopicPartition(source, p)
        assert await reader.committed(tp) == (await end_offsets(settings, source))[p]


async def test_message_of_max_size_round_trips(
    settings: Settings, topic_factory: Callable[..., Awaitable[str]],
    producer_factory: Callable[..., Awaitable[AIOKafkaProducer]],
    consumer_factory: Callable[..., Awaitable[AIOKafkaConsumer]],
) -> None:
    """A value of settings.kafka.max_message_bytes (incompressible) fits producer, topic and consumer limits."""
    topic = await topic_factory("big", partitions=1, config={"max.message.bytes": str(settings.kafka.max_message_bytes + (1 << 20))})
    payload = os.urandom(settings.kafka.max_message_bytes)
    producer = await producer_factory()
    await producer.send_and_wait(topic, payload, key=b"big", headers=[("contact", b"c1")])
    consumer = await consumer_factory(topic, group="big")
    (record,) = await drain(consumer, 1)
    assert record.value == payload
    assert record.headers == (("contact", b"c1"),)
