"""Publish a contact's raw downlink stream to ``downlink.raw``, resumably.

A contact's stream (a file, or one TCP connection of a ground-station feed)
is cut into chunks of ``settings.ingest.chunk_bytes`` and published to
``settings.topic("downlink.raw")``:

- key: the contact id (UTF-8), so a contact lives on one partition, in order;
- value: the raw bytes, exactly as received (the last chunk may be shorter);
- headers: ``contact`` (id), ``chunk_seq`` (0, 1, 2, ...), ``offset`` (byte
  offset of the chunk's first byte in the contact stream).

After the last chunk an end-of-contact marker follows: empty value, same key,
headers ``contact``, ``chunk_seq`` (number of chunks), ``offset`` (= total
bytes), ``eoc`` = ``1`` and ``bytes`` (total). Demux closes the contact on it.

Resumption. Chunk boundaries are deterministic: chunk ``n`` starts at byte
``n * chunk_bytes`` of the contact stream. Before publishing, ingest reads the
contact's partition (the producer's murmur2 key partitioner, computed here and
passed explicitly so both always agree) backwards from its end until it finds
the latest message of this contact:

- none: publish from byte 0;
- an end-of-contact marker: the contact is complete, publish nothing;
- chunk ``n`` at ``offset`` with ``L`` bytes: check that the source holds the
  same ``L`` bytes at ``offset`` (a different stream under the same contact id
  is refused), then continue at ``offset + L`` with chunk ``n + 1``.

The idempotent producer writes a partition in order with no gaps, so what a
crashed run left behind is always a prefix of the contact; re-ingesting a
contact therefore never duplicates a chunk. One ingest per contact at a time:
two concurrent runs of the same contact would interleave.

The scan for a contact never seen before reads the whole retained partition
(a few seconds per GB); ``settings.ingest.lookback_hours`` bounds it to recent
messages, at the price of not recognising runs older than that.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from core import units
from core.errors import ConfigError, IngestError
from core.settings import Settings
from monitoring.metrics import BYTES_OUT, MESSAGES_OUT
from streams.kafka import make_consumer, make_producer, start_client
from streams.validation import check_contact_id


from consumers.ingest.resume import RAW_TOPIC, ResumePoint, find_resume_point, raw_partition
from consumers.ingest.sources import ByteSource, FileSource
from consumers.ingest.tap import RealtimeTap

log = logging.getLogger(__name__)

#: acknowledged-send window: chunks in flight at most (bounded by bytes below too)
MAX_IN_FLIGHT_CHUNKS = 64
#: bytes in flight at most (memory bound of one ingest)
MAX_IN_FLIGHT_BYTES = 64 << 20

#: progress callback: (bytes of the contact stream published and acknowledged, total or None)
Progress = Callable[[int, "int | None"], None]


def no_progress(done: int, total: int | None) -> None:
    """Default progress callback: ingest runs silently."""


# --------------------------------------------------------------------------- units

def parse_rate(text: str) -> float:
    """A link rate such as ``28Mbps`` or ``3.5MB/s`` in bytes per second (:mod:`core.units`)."""
    try:
        return units.parse_rate(text)
    except ValueError as exc:
        raise ConfigError(f"{exc}; write e.g. 28Mbps, 3.5MB/s or 500kbit/s") from None


def parse_size(text: str) -> int:
    """A byte count such as ``1048576``, ``1MiB`` or ``256kB`` (:mod:`core.units`)."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"{exc}; write e.g. 1048576, 1MiB or 256kB") from None


# --------------------------------------------------------------------------- results


@dataclass
class IngestResult:
    """Outcome of one contact's ingest run (printed by the CLI, returned to tests and benchmarks)."""

    contact: str
    topic: str
    partition: int
    #: length of the contact stream (bytes)
    total_bytes: int = 0
    #: byte offset this run started publishing at (0 = fresh contact)
    resumed_from: int = 0
    #: bytes and chunks published by this run (excluding what an earlier run published)
    published_bytes: int = 0
    published_chunks: int = 0
    #: the end-of-contact marker was published by this run
    eoc_published: bool = False
    #: the contact was already complete in the topic; nothing was published
    already_complete: bool = False
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        """Publishing throughput of this run in MB/s (10^6 bytes per second)."""
        return self.published_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One human line: what was published, how fast, and from where."""
        if self.already_complete:
            return (
                f"contact {self.contact}: already complete in {self.topic} "
                f"(partition {self.partition}, {self.total_bytes} bytes); nothing published"
            )
        eoc = " + end-of-contact marker" if self.eoc_published else " (no end-of-contact marker yet)"
        return (
            f"contact {self.contact}: {self.published_bytes} bytes in {self.published_chunks} chunks{eoc} "
            f"to {self.topic} partition {self.partition}, {self.seconds:.2f} s, {self.mb_per_s:.1f} MB/s, "
            f"resumed from offset {self.resumed_from}, stream {self.total_bytes} bytes"
        )


# --------------------------------------------------------------------------- publishing


def _headers(contact: str, seq: int, offset: int) -> list[tuple[str, bytes]]:
    return [("contact", contact.encode()), ("chunk_seq", str(seq).encode()), ("offset", str(offset).encode())]


@dataclass
class _Window:
    """Sends in flight, acknowledged in order; bounds memory and surfaces failures early."""

    progress: Progress
    total: int | None
    max_chunks: int
    max_bytes: int
    pending: collections.deque = field(default_factory=collections.deque)
    in_flight_bytes: int = 0

    def add(self, future: asyncio.Future, end: int, size: int) -> None:
        self.pending.append((future, end, size))
        self.in_flight_bytes += size

    def _pop(self) -> None:
        future, end, size = self.pending.popleft()
        future.result()  # raises the send's error, if any
        self.in_flight_bytes -= size
        self.progress(end, self.total)

    async def settle(self) -> None:
        """Collect finished sends; wait for the oldest while the window is full."""
        while self.pending and self.pending[0][0].done():
            self._pop()
        while self.pending and (
            len(self.pending) >= self.max_chunks or self.in_flight_bytes >= self.max_bytes
        ):
            await asyncio.wait([self.pending[0][0]])
            self._pop()

    async def drain(self) -> None:
        while self.pending:
            await asyncio.wait([self.pending[0][0]])
            self._pop()


async def _verify_overlap(source: ByteSource, resume: ResumePoint, contact: str) -> None:
    """Refuse to resume a contact from a source that differs from what was published."""
    reached = await source.skip_to(resume.last_offset)
    if reached < resume.last_offset:
        raise IngestError(
            f"contact {contact!r}: the source ends at byte {reached}, before the {resume.last_offset} "
            "bytes already published; a different stream cannot resume this contact — "
            "ingest it under another --contact"
        )
    if resume.complete:
        return
    again = await source.read(len(resume.last_value))
    if again != resume.last_value:
        raise IngestError(
            f"contact {contact!r}: the source differs from the chunk already published at offset "
            f"{resume.last_offset} ({len(resume.last_value)} bytes); a different stream cannot resume "
            "this contact — ingest it under another --contact"
        )


async def publish(
    settings: Settings,
    producer: AIOKafkaProducer,
    tp: TopicPartition,
    contact: str,
    source: ByteSource,
    resume: ResumePoint,
    *,
    rate_bps: float | None = None,
    progress: Progress = no_progress,
    max_chunks: int | None = None,
    live: bool = False,
) -> IngestResult:
    """Publish ``source`` from ``resume`` on; the producer is started and stays open.

    ``rate_bps`` paces publication: the bytes are released as fast as the
    downlink would have delivered them, as a real contact does. ``max_chunks``
    stops after that many chunks without the end-of-contact marker (a partial
    run, continued by the next ingest of the contact). ``live`` (a paced
    file, a TCP feed) reads the stream in ``ingest.tap_read_bytes`` pieces
    and, with ``ingest.realtime_tap``, publishes its real-time engineering
    as each piece arrives (:mod:`consumers.ingest.tap`).
    """
    chunk = settings.ingest.chunk_bytes
    key = contact.encode()
    result = IngestResult(contact=contact, topic=tp.topic, partition=tp.partition, resumed_from=resume.offset)
    started = time.monotonic()
    extra = {"contact": contact, "topic": tp.topic, "partition": tp.partition}
    await _verify_overlap(source, resume, contact)

    if resume.complete:
        result.total_bytes = resume.offset
        result.already_complete = True
        size = source.size if source.size is not None else resume.offset + await _drain(source)
        if size != resume.offset:
            raise IngestError(
                f"contact {contact!r} is already complete in {tp.topic} with {resume.offset} bytes, "
                f"but the source has {size}; ingest the new stream under another --contact"
            )
        log.info("contact already complete; nothing published", extra=extra)
        return result

    window = _Window(
        progress=progress,
        total=source.size,
        max_chunks=MAX_IN_FLIGHT_CHUNKS,
        max_bytes=max(MAX_IN_FLIGHT_BYTES, 2 * chunk),
    )
    progress(resume.offset, source.size)
    offset, seq = resume.offset, resume.chunk_seq
    if resume.offset:
        log.info("resuming contact at offset %d (chunk %d)", offset, seq, extra=extra)
    tap = RealtimeTap(settings, producer, contact, resume.offset) \
        if live and settings.ingest.realtime_tap else None

    async def paced(end: int) -> None:
        if rate_bps:
            delay = started + (end - resume.offset) / rate_bps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def read_live() -> bytes:
        """One chunk assembled from the pieces as they arrive, each tapped at once."""
        parts: list[bytes] = []
        got = 0
        while got < chunk:
            part = await source.read_some(min(settings.ingest.tap_read_bytes, chunk - got))
            if not part:
                break
            got += len(part)
            await paced(offset + got)
            parts.append(part)
            if tap is not None:
                await tap.feed(part)
        return b"".join(parts)

    next_read = None if live else asyncio.ensure_future(source.read(chunk))
    try:
        while max_chunks is None or result.published_chunks < max_chunks:
            if next_read is None:
                data = await read_live()
            else:
                data = await next_read
                if data:
                    next_read = asyncio.ensure_future(source.read(chunk))  # overlaps the send
                    await paced(offset + len(data))
            if not data:
                break
            headers = _headers(contact, seq, offset)
            if tap is not None:
                headers += await tap.headers()
            future = await producer.send(
                tp.topic, data, key=key, partition=tp.partition, headers=headers
            )
            window.add(future, offset + len(data), len(data))
            offset += len(data)
            seq += 1
            result.published_bytes += len(data)
            result.published_chunks += 1
            await window.settle()
            if len(data) < chunk:
                break  # a short chunk is the last one
        else:
            await window.drain()
            result.total_bytes = offset
            result.seconds = time.monotonic() - started
            log.info("stopped after %d chunks as asked (no end-of-contact marker)", max_chunks, extra=extra)
            return _count(result)
        # end of stream: the marker follows the last chunk on the same partition
        headers = _headers(contact, seq, offset) + [("eoc", b"1"), ("bytes", str(offset).encode())]
        if tap is not None:
            await tap.finish()  # the tail the decoder held: covered by the marker's headers
            headers += await tap.headers()
        future = await producer.send(tp.topic, b"", key=key, partition=tp.partition, headers=headers)
        window.add(future, offset, 0)
        await window.drain()
        result.eoc_published = True
        result.total_bytes = offset
        result.seconds = time.monotonic() - started
        log.info(
            "contact published: %d bytes, %d chunks, %.1f MB/s",
            result.published_bytes, result.published_chunks, result.mb_per_s, extra=extra,
        )
        return _count(result)
    except KafkaError as exc:
        raise IngestError(
            f"publishing contact {contact!r} to {tp.topic} failed at offset {offset} "
            f"({type(exc).__name__}: {exc}); run the same ingest again to resume"
        ) from exc
    finally:
        if next_read is not None:
            next_read.cancel()
            await asyncio.gather(next_read, return_exceptions=True)


async def _drain(source: ByteSource) -> int:
    """Read a stream to its end (a feed replaying a finished contact), returning the byte count."""
    count = 0
    while block := await source.read(1 << 20):
        count += len(block)
    return count


def _count(result: IngestResult) -> IngestResult:
    MESSAGES_OUT.labels("ingest", RAW_TOPIC).inc(result.published_chunks + result.eoc_published)
    BYTES_OUT.labels("ingest", RAW_TOPIC).inc(result.published_bytes)
    return result


async def locate(settings: Settings, contact: str) -> tuple[TopicPartition, ResumePoint]:
    """The contact's partition and what of it is already published (a short-lived reader).

    Refuses a contact id demux could not use (:func:`streams.validation.check_contact_id`).
    """
    check_contact_id(contact)
    tp = await raw_partition(settings, contact)
    # headers are all the scan needs; the broker checked each batch's CRC when it was written
    consumer = make_consumer(settings, group=None, check_crcs=False)
    await start_client(settings, consumer)
    try:
        return tp, await find_resume_point(consumer, tp, contact, settings.ingest.lookback_hours)
    finally:
        await consumer.stop()


async def started_producer(settings: Settings, *, live: bool = False) -> AIOKafkaProducer:
    """The shared producer, bulk-path compression (none by default): raw telemetry
    compresses ~1.1:1 (docs/domain.md), so lz4/zstd would only burn event-loop CPU on every chunk.

    ``live`` (a feed arriving at the link rate: paced files, the TCP listener) sends each chunk
    at once: the factory's 20 ms linger, which fills requests on an unpaced dump, would only
    delay every real-time packet by 20 ms."""
    producer = make_producer(settings, compression_type=settings.compression_type(bulk=True),
                             **({"linger_ms": 0} if live else {}))
    await start_client(settings, producer)
    return producer


async def ingest_file(
    settings: Settings,
    path: Path | str,
    contact: str | None = None,
    *,
    rate_bps: float | None = None,
    progress: Progress = no_progress,
    max_chunks: int | None = None,
) -> IngestResult:
    """Publish a raw contact file to ``downlink.raw`` (resuming an earlier run; see module doc).

    ``contact`` defaults to the file stem.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file (give the raw contact stream written by `downlink simulate`)")
    contact = contact or path.stem
    tp, resume = await locate(settings, contact)
    source = FileSource(path)
    await source.open()
    try:
        producer = await started_producer(settings, live=rate_bps is not None)
        try:
            return await publish(
                settings, producer, tp, contact, source, resume,
                rate_bps=rate_bps, progress=progress, max_chunks=max_chunks,
                live=rate_bps is not None,
            )
        finally:
            await producer.stop()
    finally:
        await source.close()
