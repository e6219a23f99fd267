"""Publish a contact's raw downlink stream to ``downlink.raw``, resumably.

A contact's stream (a file, or one TCP connection of a ground-station feed)
is cut into chunks of ``settings.chunk_bytes`` and published to
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
(a few seconds per GB); ``settings.ingest_lookback_hours`` bounds it to recent
messages, at the price of not recognising runs older than that.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from downlink import units
from downlink.errors import ConfigError, IngestError, KafkaUnavailable
from downlink.settings import Settings
from monitoring.metrics import BYTES_OUT, MESSAGES_OUT
from streams.kafka import make_admin, make_consumer, make_producer

log = logging.getLogger(__name__)

#: logical name of the raw topic (topics.yaml)
RAW_TOPIC = "downlink.raw"
#: acknowledged-send window: chunks in flight at most (bounded by bytes below too)
MAX_IN_FLIGHT_CHUNKS = 64
#: bytes in flight at most (memory bound of one ingest)
MAX_IN_FLIGHT_BYTES = 64 << 20
#: first backward-scan window (messages); doubles up to SCAN_WINDOW_MAX
SCAN_WINDOW_MIN = 8
SCAN_WINDOW_MAX = 256
#: a scan fetch that makes no progress for this long means the broker is unwell
SCAN_STALL_SECONDS = 30.0
#: how long a just-created topic may take to show in the broker's metadata
TOPIC_APPEAR_SECONDS = 2.0

#: progress callback: (bytes of the contact stream published and acknowledged, total or None)
Progress = Callable[[int, "int | None"], None]


def _no_progress(done: int, total: int | None) -> None:
    """Default progress callback: ingest runs silently."""


# --------------------------------------------------------------------------- units

def parse_rate(text: str) -> float:
    """A link rate such as ``28Mbps`` or ``3.5MB/s`` in bytes per second (:mod:`downlink.units`)."""
    try:
        return units.parse_rate(text)
    except ValueError as exc:
        raise ConfigError(f"{exc}; write e.g. 28Mbps, 3.5MB/s or 500kbit/s") from None


def parse_size(text: str) -> int:
    """A byte count such as ``1048576``, ``1MiB`` or ``256kB`` (:mod:`downlink.units`)."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"{exc}; write e.g. 1048576, 1MiB or 256kB") from None


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- sources


class ByteSource(Protocol):
    """A contact stream read front to back (a file or a TCP connection)."""

    #: total length if known in advance (files), else None
    size: int | None

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""

    async def skip_to(self, offset: int) -> int:
        """Advance to ``offset`` (>= current position) without returning the bytes; the position reached."""


class FileSource:
    """A raw stream file, read in large blocks in a worker thread so the event loop stays free."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self.size: int | None = None

    async def open(self) -> None:
        self._file = await asyncio.to_thread(open, self.path, "rb")
        self.size = (await asyncio.to_thread(self.path.stat)).st_size

    async def close(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def read(self, n: int) -> bytes:
        assert self._file is not None, "FileSource.open() first"
        return await asyncio.to_thread(self._file.read, n)

    async def skip_to(self, offset: int) -> int:
        assert self._file is not None, "FileSource.open() first"
        return await asyncio.to_thread(self._file.seek, offset)


class StreamSource:
    """One TCP connection of a ground-station feed; skipping reads and discards (a feed cannot seek)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._position = 0
        self.size: int | None = None

    async def read(self, n: int) -> bytes:
        try:
            data = await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            data = exc.partial
        self._position += len(data)
        return data

    async def skip_to(self, offset: int) -> int:
        while self._position < offset:
            block = await self.read(min(offset - self._position, 1 << 20))
            if not block:
                break
        return self._position


# --------------------------------------------------------------------------- Kafka helpers


def partition_for(contact: str, partitions: set[int] | list[int]) -> int:
    """The partition aiokafka's default partitioner (Java-compatible murmur2) gives the contact key."""
    ordered = sorted(partitions)
    return ordered[(murmur2(contact.encode()) & 0x7FFFFFFF) % len(ordered)]


def _headers(contact: str, seq: int, offset: int) -> list[tuple[str, bytes]]:
    return [("contact", contact.encode()), ("chunk_seq", str(seq).encode()), ("offset", str(offset).encode())]


def _unavailable(settings: Settings, exc: BaseException) -> KafkaUnavailable:
    return KafkaUnavailable(
        f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); "
        "start the local stack with `downlink stack up` or set DOWNLINK_KAFKA_BOOTSTRAP"
    )


async def _start(settings: Settings, client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    try:
        await client.start()
    except KafkaError as exc:
        await client.stop()
        raise _unavailable(settings, exc) from exc


async def raw_partition(settings: Settings, contact: str) -> TopicPartition:
    """The raw topic's partition that holds ``contact``; ConfigError if the topic is missing.

    Asks the broker directly (admin metadata): a consumer only knows the
    partitions of topics it has subscribed to. A topic created a moment ago may
    take a few hundred milliseconds to appear in the broker's metadata, hence
    the short retry before declaring it missing.
    """
    topic = settings.topic(RAW_TOPIC)
    admin = make_admin(settings)
    try:
        try:
            await admin.start()
        except KafkaError as exc:
            raise _unavailable(settings, exc) from exc
        deadline = time.monotonic() + TOPIC_APPEAR_SECONDS
        while True:
            [described] = await admin.describe_topics([topic])
            partitions = [p["partition"] for p in described["partitions"]]
            if described["error_code"] == 0 and partitions:
                return TopicPartition(topic, partition_for(contact, partitions))
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"topic {topic!r} does not exist on {settings.kafka_bootstrap}; "
                    "run `downlink topics create`"
                )
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


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


# --------------------------------------------------------------------------- publishing


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
    progress: Progress = _no_progress,
    max_chunks: int | None = None,
) -> IngestResult:
    """Publish ``source`` from ``resume`` on; the producer is started and stays open.

    ``rate_bps`` paces publication: a chunk is sent once the downlink would
    have delivered its last byte, as a real contact does. ``max_chunks`` stops
    after that many chunks without the end-of-contact marker (a partial run,
    continued by the next ingest of the contact).
    """
    chunk = settings.chunk_bytes
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
    next_read = asyncio.ensure_future(source.read(chunk))
    try:
        while max_chunks is None or result.published_chunks < max_chunks:
            data = await next_read
            if not data:
                break
            next_read = asyncio.ensure_future(source.read(chunk))
            if rate_bps:
                due = started + (offset + len(data) - resume.offset) / rate_bps
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            future = await producer.send(
                tp.topic, data, key=key, partition=tp.partition, headers=_headers(contact, seq, offset)
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
        if not next_read.done():
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
    """The contact's partition and what of it is already published (a short-lived reader)."""
    tp = await raw_partition(settings, contact)
    # headers are all the scan needs; the broker checked each batch's CRC when it was written
    consumer = make_consumer(settings, group=None, check_crcs=False)
    await _start(settings, consumer)
    try:
        return tp, await find_resume_point(consumer, tp, contact, settings.ingest_lookback_hours)
    finally:
        await consumer.stop()


async def _started_producer(settings: Settings) -> AIOKafkaProducer:
    """The shared producer, bulk-path compression (none by default): raw telemetry
    compresses ~1.1:1 (JWST.md), so lz4/zstd would only burn event-loop CPU on every chunk."""
    producer = make_producer(settings, compression_type=settings.compression_type(bulk=True))
    await _start(settings, producer)
    return producer


async def ingest_file(
    settings: Settings,
    path: Path | str,
    contact: str | None = None,
    *,
    rate_bps: float | None = None,
    progress: Progress = _no_progress,
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
        producer = await _started_producer(settings)
        try:
            return await publish(
                settings, producer, tp, contact, source, resume,
                rate_bps=rate_bps, progress=progress, max_chunks=max_chunks,
            )
        finally:
            await producer.stop()
    finally:
        await source.close()


# --------------------------------------------------------------------------- TCP feed

#: progress factory for socket ingest: called with the contact id, returns that contact's callback
ProgressFactory = Callable[[str], Progress]


class IngestServer:
    """TCP server for ground-station feeds: one connection = one contact, end of connection = end of contact.

    Contact ids: with ``once`` and a ``contact``, that id; otherwise
    ``<base>-<n>`` for the n-th connection (n = 001, 002, ...), base = ``contact``
    or ``tcp-<server start, UTC>``. A restarted server with the same ``contact``
    therefore names connections as before, so a feed that replays its contacts
    from their first byte resumes instead of duplicating. A connection reset
    (not a clean close) leaves the contact without end-of-contact marker.
    """

    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        contact: str | None = None,
        *,
        once: bool = False,
        progress_factory: ProgressFactory | None = None,
        on_result: Callable[[IngestResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_result = on_result
        self.host, self.port = host, port
        self.once = once
        self.contact = contact
        self.base = contact or "tcp-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.progress_factory = progress_factory
        self.results: list[IngestResult] = []
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._connections = 0
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def contact_id(self, n: int) -> str:
        """Id of the n-th connection (1-based)."""
        if self.once and self.contact:
            return self.contact
        return f"{self.base}-{n:03d}"

    async def start(self) -> None:
        """Connect the producer, check the topic exists, then listen."""
        self._producer = await _started_producer(self.settings)
        try:
            await raw_partition(self.settings, "")  # fails early on a missing topic
            self._server = await asyncio.start_server(self._on_connection, self.host, self.port)
        except BaseException:
            await self._producer.stop()
            raise
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("listening for ground-station feeds on %s:%d", *self.address)

    async def stop(self) -> None:
        """Stop listening, cancel and await open connections, then close the producer."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()
        if not self._done.done():
            self._done.cancel()

    async def __aenter__(self) -> "IngestServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait(self) -> list[IngestResult]:
        """Until the first connection ends (``once``) or forever; re-raises a ``once`` connection's error."""
        await self._done
        return self.results

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.once and self._connections:
            writer.close()  # a --once server takes a single feed
            return
        self._connections += 1
        contact = self.contact_id(self._connections)
        task = asyncio.create_task(self._serve(contact, reader, writer), name=f"ingest:{contact}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, contact: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        extra = {"contact": contact, "peer": str(peer)}
        log.info("feed connected", extra=extra)
        try:
            assert self._producer is not None
            tp, resume = await locate(self.settings, contact)
            progress = self.progress_factory(contact) if self.progress_factory else _no_progress
            result = await publish(
                self.settings, self._producer, tp, contact, StreamSource(reader), resume, progress=progress
            )
            self.results.append(result)
            log.info("%s", result.summary(), extra=extra)
            if self.on_result is not None:
                self.on_result(result)
            if self.once and not self._done.done():
                self._done.set_result(None)
        except ConnectionError as exc:
            log.warning("feed connection lost (%s); contact left open for a resume", exc, extra=extra)
            if self.once and not self._done.done():
                self._done.set_exception(IngestError(f"feed of contact {contact!r} lost: {exc}"))
        except Exception as exc:
            log.error("ingest of feed failed: %s", exc, extra=extra)
            if self.once and not self._done.done():
                self._done.set_exception(exc)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass


async def ingest_socket(
    settings: Settings,
    host: str,
    port: int,
    contact: str | None = None,
    *,
    once: bool = False,
    progress_factory: ProgressFactory | None = None,
    on_listening: Callable[[tuple[str, int]], None] | None = None,
    on_result: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Serve ground-station feeds on ``host:port`` (see :class:`IngestServer`).

    Returns the results after the first connection with ``once``; otherwise
    serves until cancelled.
    """
    async with IngestServer(
        settings, host, port, contact, once=once, progress_factory=progress_factory, on_result=on_result
    ) as server:
        assert server.address is not None
        if on_listening is not None:
            on_listening(server.address)
        return await server.wait()
