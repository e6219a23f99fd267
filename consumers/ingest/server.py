"""TCP listener for ground-station feeds: one connection = one contact.

A listener is a long-lived service, so it serves Prometheus ``/metrics`` like
the consumers do (``settings.metrics.port``, ``DOWNLINK_METRICS_PORT``;
``downlink ingest --listen ... --metrics-port N``): ``downlink_consumer_up
{service="ingest"}`` while it listens, the messages and bytes it produced
(``downlink_messages_out_total`` / ``downlink_bytes_out_total``), and the feeds
it finished by how they ended (``downlink_ingest_feeds_total{status}``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime, timezone
from typing import Callable

from aiokafka import AIOKafkaProducer, TopicPartition

from core.errors import IngestError
from core.settings import Settings
from monitoring import metrics


from consumers.ingest.publish import IngestResult, Progress, no_progress, started_producer, locate, publish
from consumers.ingest.resume import ResumePoint, raw_partition
from streams.validation import check_contact_id
from consumers.ingest.sources import StreamSource

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- TCP feed

#: progress factory for socket ingest: called with the contact id, returns that contact's callback
ProgressFactory = Callable[[str], Progress]


class IngestServer:
    """TCP server for ground-station feeds: one connection = one contact, end of connection = end of contact.

    Contact ids: with ``once`` and a ``contact``, that id (a feed that is cut
    and replays from its first byte to a restarted ``--once`` server resumes
    that contact). Otherwise ``<base>-<run>-<n>`` for the n-th connection
    (n = 001, 002, ...), base = ``contact`` or ``tcp``, and ``run`` unique to
    this server run (start time, UTC, and 4 random hex digits): a restarted
    server never names a new feed like an earlier one. A generated id that
    the topic already holds (checked when the connection starts) is skipped
    for the next one. A connection reset (not a clean close) leaves the
    contact without end-of-contact marker.
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
        if contact:
            check_contact_id(contact)
        self.base = contact or "tcp"
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
        self.progress_factory = progress_factory
        self.results: list[IngestResult] = []
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._metrics_server = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._connections = 0  # ids handed out
        self._accepted = 0  # connections accepted
        self._ids = asyncio.Lock()
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def contact_id(self, n: int) -> str:
        """Id of the n-th connection (1-based)."""
        if self.once and self.contact:
            return self.contact
        return f"{self.base}-{self.run_id}-{n:03d}"

    async def _fresh_id(self) -> tuple[str, TopicPartition, ResumePoint]:
        """The next connection's id, partition and resume point; generated ids never name
        a contact the topic already holds."""
        while True:
            self._connections += 1
            contact = self.contact_id(self._connections)
            tp, resume = await locate(self.settings, contact)
            generated = not (self.once and self.contact)
            if not generated or (resume.offset == 0 and not resume.complete):
                return contact, tp, resume
            log.warning("generated contact id already in the topic; taking the next one",
                        extra={"contact": contact})

    async def start(self) -> None:
        """Connect the producer, check the topic exists, then listen."""
        self._producer = await started_producer(self.settings, live=True)
        try:
            await raw_partition(self.settings, "")  # fails early on a missing topic
            self._server = await asyncio.start_server(self._on_connection, self.host, self.port)
        except BaseException:
            await self._producer.stop()
            raise
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        try:
            self._metrics_server = metrics.serve(self.settings.metrics.port, self.settings.metrics.host)
        except OSError as exc:
            await self.stop()
            raise IngestError(f"cannot serve /metrics on {self.settings.metrics.host}:"
                              f"{self.settings.metrics.port}: {exc}") from exc
        metrics.CONSUMER_UP.labels("ingest").set(1)
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
        if self.address is not None:
            metrics.CONSUMER_UP.labels("ingest").set(0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
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
        if self.once and self._accepted:
            writer.close()  # a --once server takes a single feed
            return
        self._accepted += 1
        task = asyncio.create_task(self._serve(reader, writer), name=f"ingest:{self._accepted}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        contact = "?"
        extra = {"contact": contact, "peer": str(peer)}
        try:
            assert self._producer is not None
            async with self._ids:  # connections take ids in order
                contact, tp, resume = await self._fresh_id()
            extra = {"contact": contact, "peer": str(peer)}
            log.info("feed connected", extra=extra)
            progress = self.progress_factory(contact) if self.progress_factory else no_progress
            result = await publish(
                self.settings, self._producer, tp, contact, StreamSource(reader), resume, progress=progress,
                live=True,
            )
            self.results.append(result)
            metrics.INGEST_FEEDS.labels("ended").inc()
            log.info("%s", result.summary(), extra=extra)
            if self.on_result is not None:
                self.on_result(result)
            if self.once and not self._done.done():
                self._done.set_result(None)
        except ConnectionError as exc:
            metrics.INGEST_FEEDS.labels("lost").inc()
            log.warning("feed connection lost (%s); contact left open for a resume", exc, extra=extra)
            if self.once and not self._done.done():
                self._done.set_exception(IngestError(f"feed of contact {contact!r} lost: {exc}"))
        except Exception as exc:
            metrics.INGEST_FEEDS.labels("failed").inc()
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
