"""Where a contact stands in ``downlink.raw``: its partition and the resume point of a new run
(see :mod:`consumers.ingest.publish` for the protocol)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from core.errors import IngestError
from core.settings import Settings
from streams.kafka import topic_partitions

log = logging.getLogger(__name__)


#: logical name of the raw topic (topics.yaml)
RAW_TOPIC = "downlink.raw"
#: first backward-scan window (messages); doubles up to SCAN_WINDOW_MAX
SCAN_WINDOW_MIN = 8
SCAN_WINDOW_MAX = 256
#: a scan fetch that makes no progress for this long means the broker is unwell
SCAN_STALL_SECONDS = 30.0
#: how long a just-created topic may take to show in the broker's metadata
TOPIC_APPEAR_SECONDS = 2.0


@dataclass(frozen=True)
class ResumePoint:
    """What of a contact ``downlink.raw`` already holds (the latest message of that contact)."""

    #: next byte offset of the contact stream to publish
    offset: int = 0
    #: next chunk sequence number
    chunk_seq: int = 0
    #: the end-of-contact marker is already published
    complete: bool = False
    #: the last published chunk (to check the source holds the same bytes there)
    last_offset: int = 0
    last_value: bytes = b""


# --------------------------------------------------------------------------- Kafka helpers


def partition_for(contact: str, partitions: set[int] | list[int]) -> int:
    """The partition aiokafka's default partitioner (Java-compatible murmur2) gives the contact key."""
    ordered = sorted(partitions)
    return ordered[(murmur2(contact.encode()) & 0x7FFFFFFF) % len(ordered)]


async def raw_partition(settings: Settings, contact: str) -> TopicPartition:
    """The raw topic's partition that holds ``contact`` (a just-created topic may take a moment)."""
    topic = settings.topic(RAW_TOPIC)
    partitions = await topic_partitions(settings, topic, wait=TOPIC_APPEAR_SECONDS)
    return TopicPartition(topic, partition_for(contact, partitions))


def _header(headers: tuple | list | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


async def find_resume_point(
    consumer: AIOKafkaConsumer, tp: TopicPartition, contact: str, lookback_hours: float = 0.0
) -> ResumePoint:
    """Latest message of ``contact`` in ``tp``, scanning backwards from the end in growing windows.

    Costs one read of the messages after the contact's last one (usually just
    the tail), or, for a contact never seen before, of the whole retained
    partition (~450 MB/s on the local stack) — unless ``lookback_hours`` > 0
    limits the scan to messages that recent: faster to start, but a run of the
    contact older than that is not seen and would be published again.
    """
    consumer.assign([tp])
    begin = (await consumer.beginning_offsets([tp]))[tp]
    hi = (await consumer.end_offsets([tp]))[tp]
    if lookback_hours > 0:
        since_ms = int((time.time() - lookback_hours * 3600) * 1000)
        found_at = (await consumer.offsets_for_times({tp: since_ms}))[tp]
        begin = max(begin, found_at.offset if found_at is not None else hi)
    scan_from, scan_started = hi, time.monotonic()
    wanted = contact.encode()
    window = SCAN_WINDOW_MIN
    while hi > begin:
        lo = max(begin, hi - window)
        consumer.seek(tp, lo)
        found = None
        position = lo
        stalled_since = time.monotonic()
        while position < hi:
            batches = await consumer.getmany(tp, timeout_ms=1000, max_records=window)
            for record in batches.get(tp, ()):
                if record.offset >= hi:
                    break
                if _header(record.headers, "contact") == wanted:
                    found = record
            new_position = await consumer.position(tp)
            if new_position > position:
                position, stalled_since = new_position, time.monotonic()
            elif time.monotonic() - stalled_since > SCAN_STALL_SECONDS:
                raise IngestError(
                    f"reading {tp.topic}[{tp.partition}] stalled at offset {position} "
                    f"(end {hi}) while looking for contact {contact!r}; check the broker log"
                )
        if found is not None:
            _log_scan(tp, contact, lo, scan_from, scan_started)
            return _resume_from(found, contact)
        hi = lo
        window = min(window * 2, SCAN_WINDOW_MAX)
    _log_scan(tp, contact, begin, scan_from, scan_started)
    return ResumePoint()


def _log_scan(tp: TopicPartition, contact: str, lo: int, hi: int, started: float) -> None:
    log.info(
        "looked for earlier runs of the contact in offsets %d..%d in %.2f s", lo, hi, time.monotonic() - started,
        extra={"contact": contact, "topic": tp.topic, "partition": tp.partition},
    )


def _resume_from(record, contact: str) -> ResumePoint:
    try:
        seq = int(_header(record.headers, "chunk_seq") or b"")
        offset = int(_header(record.headers, "offset") or b"")
    except ValueError:
        raise IngestError(
            f"message {record.offset} of contact {contact!r} lacks valid chunk_seq/offset headers; "
            "this partition was not written by downlink ingest"
        ) from None
    if _header(record.headers, "eoc") == b"1":
        return ResumePoint(offset=offset, chunk_seq=seq, complete=True, last_offset=offset)
    value = record.value or b""
    return ResumePoint(
        offset=offset + len(value), chunk_seq=seq + 1, last_offset=offset, last_value=value
    )
