"""Kafka in -> an external effect (MQTT, a database), offsets committed after the effect.

Like a Kafka Connect sink's ``put`` + ``preCommit``: ``handle`` makes the
batch's effect durable and idempotent (retained last-value topics, upserts
keyed by message identity) and returns outputs (dead letters, events) that
are produced and acknowledged before the offsets are committed. Delivery is
at-least-once; a crash between effect and commit replays the batch, which the
idempotent effect absorbs.

A retriable failure (database or MQTT broker away, ``retriable`` errors)
rewinds the partitions to their committed offsets and retries after a
growing pause, with partitions paused (the group keeps the member). The
offsets are committed through the group consumer, so a member that lost its
partitions cannot commit (the broker checks the generation).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka.errors import CommitFailedError

from consumers.framework.service import ConsumingService, Output, Record
from consumers.framework.transactional import is_retriable
from monitoring import metrics
from streams.kafka import make_producer, start_client

log = logging.getLogger(__name__)


class SinkService(ConsumingService):
    """Base of archive and realtime: ``handle`` a batch with an idempotent effect."""

    def __init__(self, settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self._failures = 0
        #: the offset commit in flight: the next batch is fetched and handled meanwhile (a commit
        #: is a broker round trip, 5-45 ms on a loaded machine, that real-time values would wait)
        self._commit: asyncio.Future | None = None

    async def on_start(self) -> None:
        self.producer = make_producer(self.settings)
        await start_client(self.settings, self.producer)
        await self.open_sink()
        await self.open_consumer()

    async def close(self) -> None:
        await self._committed(quiet=True)  # a clean stop commits the last batch handled
        await super().close()
        await self.close_sink()

    async def _committed(self, *, quiet: bool = False) -> None:
        """Wait for the commit in flight, re-raising its failure (CommitFailedError -> redo)
        unless ``quiet``: a rewind, a revoke or a stop follows, which redoes what it lost."""
        commit, self._commit = self._commit, None
        if commit is None:
            return
        with contextlib.suppress(Exception) if quiet else contextlib.nullcontext():
            await commit

    async def on_revoked(self, revoked) -> None:
        await self._committed(quiet=True)  # while the partitions are still ours
        await super().on_revoked(revoked)

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._one_batch()
                self._failures = 0
            except asyncio.CancelledError:
                raise
            except CommitFailedError as exc:
                log.warning("offset commit refused (partitions moved); redoing from the last commit",
                            extra={"service": self.name, "error": repr(exc)})
                await self.rewind()
            except BaseException as exc:
                if not is_retriable(exc):
                    raise
                self._recovering = True  # --until-idle must not see the backoff as idle
                try:
                    await self._recover(exc)
                finally:
                    self._recovering = False

    async def _one_batch(self) -> None:
        got = await self.fetch()
        async with self._batch_lock:
            if self._assign_error is not None:
                raise self._assign_error
            got = [(tp, recs) for tp, recs in got if tp in self.assigned]
            records, outputs = self.decode_batch(got)
            if records:
                outputs += await self.handle(records)
            outputs += await self.tick()
            if outputs:
                await self.produce(outputs)
            if self._stale:
                self._stale = False
                await self._committed(quiet=True)
                await self.rewind()
                return
            if got:
                self.last_activity = time.monotonic()
                assert self.consumer is not None
                await self._committed()  # commits stay in order, one in flight
                self._commit = asyncio.ensure_future(
                    self.consumer.commit({tp: recs[-1].offset + 1 for tp, recs in got}))

    async def produce(self, outputs: list[Output]) -> None:
        """Produce and await acknowledgement (before offsets are committed)."""
        assert self.producer is not None
        futures = []
        for out in outputs:
            payload = out.payload()
            futures.append(await self.producer.send(self.settings.topic(out.topic), payload,
                                                    key=out.key, partition=out.partition,
                                                    headers=out.headers))
            metrics.MESSAGES_OUT.labels(self.name, out.topic).inc()
            metrics.BYTES_OUT.labels(self.name, out.topic).inc(len(payload))
        await asyncio.gather(*futures)

    async def _recover(self, exc: BaseException) -> None:
        self._failures += 1
        k = self.settings.kafka
        delay = min(k.retry_backoff_max_seconds, k.retry_backoff_seconds * 2 ** (self._failures - 1))
        metrics.RETRIES.labels(self.name, type(exc).__name__[:40]).inc()
        log.warning("sink batch failed; retrying from the last commit", extra={
            "service": self.name, "error": repr(exc), "attempt": self._failures, "backoff_s": delay})
        await self._committed(quiet=True)
        await self.backoff_pause(delay)
        async with self._batch_lock:
            await self.rewind()

    async def caught_up(self) -> bool:
        if self._batch_lock.locked():
            return False  # a fetched batch is being handled: positions are at the end, the effect is not
        if self._commit is not None and not self._commit.done():
            return False  # its offsets are not committed yet
        return await super().caught_up()

    # hooks -----------------------------------------------------------------------------------
    async def open_sink(self) -> None:
        """Connect to the external system (database, MQTT broker)."""

    async def close_sink(self) -> None:
        """Disconnect from the external system."""

    @abc.abstractmethod
    async def handle(self, records: list[Record]) -> list[Output]:
        """Make the batch's effect (idempotently); return outputs to produce before the commit."""

    async def tick(self) -> list[Output]:
        return []

