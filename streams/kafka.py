"""Kafka client factories: the only place that decides how producers and consumers are built.

Every part of downlink builds its clients here so that delivery guarantees
(idempotence, ``acks=all``, manual commits, ``read_committed``) and message
size limits stay consistent with the broker the stack launcher configures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.codec import has_lz4
from aiokafka.structs import ConsumerRecord

from core.errors import ConfigError, EnvelopeError, KafkaUnavailable
from core.settings import Settings
from streams import envelope

log = logging.getLogger(__name__)

#: bytes a record batch adds around one message (batch header, record header, key, headers)
MESSAGE_OVERHEAD = 64 << 10
#: how much larger than ``max_message_bytes`` the broker and topics accept (lz4 can grow
#: incompressible data slightly; headers and keys add a little)
BROKER_HEADROOM = 1 << 20


def kafka_log_file(settings: Settings) -> str:
    """Where the local stack writes the broker log (named in error messages)."""
    return str(settings.state_dir.resolve() / "logs" / "kafka.log")


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """Build (not start) an idempotent producer tuned for batched throughput.

    With ``transactional_id`` the producer is transactional (aiokafka then forces
    idempotence itself); the id is prefixed with ``settings.topic_prefix`` so tests
    running in parallel never fence each other.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": settings.compression_type(),
        "linger_ms": 20,
        "max_batch_size": 4 << 20,  # several 1 MiB chunks per request: +30% produce MB/s measured
        # a message whose value is max_message_bytes must still fit with its batch overhead
        "max_request_size": settings.kafka.max_message_bytes + MESSAGE_OVERHEAD,
        "request_timeout_ms": settings.kafka.producer_request_timeout_ms,
    }
    if transactional_id is not None:
        options["transactional_id"] = f"{settings.topic_prefix}{transactional_id}"
    options.update(overrides)
    if options.get("compression_type") in ("lz4", "zstd", "snappy") and not has_lz4():
        raise ConfigError(
            f"{options['compression_type']} compression for Kafka needs the cramjam package: run `make setup` "
            "(pyproject must declare aiokafka[lz4]) or `pip install cramjam`"
        )
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """Build (not start) a consumer with manual commits and ``read_committed`` isolation.

    ``topics`` are physical names (``settings.topic(name)``); ``group`` is a full
    group id (``settings.group(consumer)``) or None for an unmanaged reader.
    Fetch sizes allow one message of ``max_message_bytes`` per partition.
    """
    partition_fetch = settings.kafka.max_message_bytes + BROKER_HEADROOM
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": partition_fetch,
        "fetch_max_bytes": max(52_428_800, 2 * partition_fetch),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def unavailable(settings: Settings, exc: BaseException) -> KafkaUnavailable:
    """The one "cannot reach Kafka" error, telling the operator what to do."""
    return KafkaUnavailable(
        f"cannot reach Kafka at {settings.kafka.bootstrap} ({exc}); "
        "start the local stack with `downlink stack up` or set DOWNLINK_KAFKA_BOOTSTRAP"
    )


async def start_client(settings: Settings, client: Any) -> None:
    """Start a producer, consumer or admin client; a broker that cannot be reached is KafkaUnavailable."""
    from aiokafka.errors import KafkaError

    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        raise unavailable(settings, exc) from exc


def make_admin(settings: Settings, **overrides: Any) -> AIOKafkaAdminClient:
    """Build (not start) an admin client for topic management and health checks."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka.bootstrap, "request_timeout_ms": 10_000}
    options.update(overrides)
    return AIOKafkaAdminClient(**options)


async def probe_kafka(settings: Settings, request_timeout_ms: int = 3_000) -> str | None:
    """One readiness probe: metadata and an admin request; returns None if healthy, else why not."""
    first = settings.kafka.bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    try:
        # a bare TCP check first: aiokafka logs an ERROR for every refused connection
        _, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), 2.0)
        writer.close()
        await writer.wait_closed()
    except (OSError, ValueError, asyncio.TimeoutError) as exc:
        return f"no listener at {first} ({type(exc).__name__})"
    admin = make_admin(settings, request_timeout_ms=request_timeout_ms)
    try:
        await asyncio.wait_for(admin.start(), request_timeout_ms / 1000 + 1)
        cluster = await asyncio.wait_for(admin.describe_cluster(), request_timeout_ms / 1000 + 1)
        if not cluster.get("brokers"):
            return "no broker registered in cluster metadata yet"
        if cluster.get("controller_id", -1) < 0:
            return "no active controller yet"
        await asyncio.wait_for(admin.list_topics(), request_timeout_ms / 1000 + 1)
        return None
    except Exception as exc:  # any failure means "not ready yet"; the reason is reported
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        await admin.close()


async def wait_for_kafka(settings: Settings, timeout: float) -> None:
    """Return once Kafka answers metadata and admin requests, else raise KafkaUnavailable."""
    deadline = time.monotonic() + timeout
    reason = "not tried"
    while True:
        reason = await probe_kafka(settings) or ""
        if not reason:
            return
        if time.monotonic() >= deadline:
            raise KafkaUnavailable(
                f"Kafka at {settings.kafka.bootstrap} not ready after {timeout:.0f}s ({reason}); "
                f"start it with `downlink stack up` or read {kafka_log_file(settings)}"
            )
        await asyncio.sleep(0.25)


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Last stable offset of every partition of a physical topic (read_committed view).

    Open transactions are excluded, so a reader caught up to these offsets has
    seen every committed message.
    """
    partitions = await topic_partitions(settings, topic, wait=0.0)
    consumer = make_consumer(settings, group=None)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()


async def read_to_end(settings: Settings, topic: str,
                      partitions: set[int] | None = None) -> AsyncIterator[ConsumerRecord]:
    """Every committed record of a logical topic (or of some of its partitions), from the
    beginning to its current end."""
    wanted = partitions
    consumer = make_consumer(settings, group=None)
    await start_client(settings, consumer)
    try:
        physical = settings.topic(topic)
        tps = [TopicPartition(physical, p) for p in await topic_partitions(settings, physical)
               if wanted is None or p in wanted]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                for rec in recs:
                    yield rec
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def read_table(settings: Settings, topic: str, cls: Any = None,
                     partitions: set[int] | None = None) -> dict[str, Any]:
    """Latest value per key of a compacted state topic (read to its end).

    With ``cls`` (a :class:`streams.messages.Message` class) values are typed
    messages, else envelope dicts. A tombstone deletes its key; a value that
    cannot be decoded is skipped with a warning (it cannot be state).
    """
    table: dict[str, Any] = {}
    async for rec in read_to_end(settings, topic, partitions=partitions):
        if rec.key is None:
            continue
        key = rec.key.decode("utf-8", "replace")
        if rec.value is None:
            table.pop(key, None)
            continue
        try:
            table[key] = cls.decode(rec.value) if cls is not None else envelope.decode(rec.value)
        except EnvelopeError as exc:
            log.warning("undecodable state record skipped", extra={
                "topic": topic, "partition": rec.partition, "offset": rec.offset, "error": str(exc)})
    return table


async def topic_partitions(settings: Settings, topic: str, wait: float = 10.0) -> list[int]:
    """Partitions of a physical topic (admin metadata), waiting briefly for a just-created one.

    ``AIOKafkaConsumer.partitions_for_topic`` only knows subscribed topics, so
    unmanaged readers ask the admin API instead.
    """
    deadline = time.monotonic() + wait
    admin = make_admin(settings)
    await start_client(settings, admin)
    try:
        while True:
            described = await admin.describe_topics([topic])
            info = described[0] if described else {}
            if info.get("error_code") == 0 and info.get("partitions"):
                return sorted(p["partition"] for p in info["partitions"])
            if time.monotonic() >= deadline:
                raise ConfigError(f"topic {topic!r} does not exist on {settings.kafka.bootstrap}; "
                                  "run `downlink topics create`")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
