"""Kafka in -> Kafka out, exactly once: outputs, state records and offsets in one transaction.

Commit order of every batch:

1. make every file effect durable (temp file, fsync, atomic rename) — the
   service's ``process`` does it, or hands the write to ``defer_durable`` and
   the transaction waits for it;
2. produce the output messages (dead letters included) and the service's
   state-table records;
3. add the consumed offsets to the transaction (``send_offsets_to_transaction``);
4. commit the transaction.

Readers use ``read_committed``, so a crash anywhere before step 4 leaves no
visible output and the batch is processed again.

Group commit: while a transaction is in flight the batch loop goes on
fetching and processing; batches processed meanwhile queue up (bounded by
``kafka.commit_queue_bytes`` of consumed bytes) and commit together in the
next transaction, in order, with the offsets of the last of them. So a slow
commit (a loaded broker) never holds back processing — the real-time fast
lane of demux depends on that — and small batches cost no extra
transactions. Batches read under different group generations never share a
transaction. The transactional id is
stable per (service, instance): a restarted instance fences its dead
predecessor at once.

Transient failures (broker unreachable, a transaction timed out or aborted,
the data disk full) never end the process: the open transaction is aborted,
the producer is rebuilt, the partitions are rewound to their committed
offsets and the service's state is reloaded (``on_revoked`` then
``on_assigned``), after a pause that grows from ``kafka.retry_backoff_seconds``
to ``kafka.retry_backoff_max_seconds``. Nothing uncommitted is ever announced,
so the redo changes no output byte. Errors that are not retriable stop the
service (the runner exits non-zero).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from core.errors import DownlinkError, StorageError
from consumers.framework import fencing
from consumers.framework.service import ConsumingService, Output, Record
from monitoring import metrics
from streams.kafka import make_producer, start_client

log = logging.getLogger(__name__)


def is_retriable(exc: BaseException) -> bool:
    """Whether redoing the batch later can succeed (the error carries its policy).

    ``ProducerFenced`` is retriable: the broker bumps a producer's epoch when it aborts a
    transaction that outlived its timeout — what happens to a replica paused past its session
    (zombie fencing, docs/faults.md); a fresh producer rejoins cleanly. Two live processes
    configured with one instance id would fence each other in turn, each retry logged and counted
    in ``downlink_retries_total{reason="ProducerFenced"}``; static membership refuses them too.
    """
    if isinstance(exc, DownlinkError):
        return exc.retriable
    if isinstance(exc, KafkaError):
        return True  # broker-side or network trouble; a redo from committed state is always safe
    return isinstance(exc, (asyncio.TimeoutError, ConnectionError))


@dataclass(frozen=True)
class _Queued:
    """A processed batch waiting for its transaction."""

    outputs: list[Output]
    offsets: dict[TopicPartition, int]
    durable: list[asyncio.Future]
    generation: int | None
    size: int


class TransactionalService(ConsumingService):
    """Base of demux, l0, l1b: ``process`` a batch, return outputs; the base commits them."""

    #: ms a transaction may stay open (settings.kafka.transaction_timeout_ms unless overridden)
    transaction_timeout_ms: ClassVar[int | None] = None

    def __init__(self, settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        #: the commit chain in flight: commits queued batches until the queue is empty
        self._pending: asyncio.Task | None = None
        self._durable: list[asyncio.Future] = []
        self._queue: list[_Queued] = []
        self._queued_bytes = 0
        #: next offset after the last record processed, per partition since the last rewind: every
        #: commit offers them all to ``commit_offsets``, so a pin released by a tick (l0 closing
        #: an exposure on quiet time) advances the offset without waiting for the next record
        self._through: dict[TopicPartition, int] = {}
        self._failures = 0

    # lifecycle -------------------------------------------------------------------------------
    def make_transactional_producer(self) -> AIOKafkaProducer:
        timeout = self.transaction_timeout_ms or self.settings.kafka.transaction_timeout_ms
        return make_producer(self.settings, transactional_id=f"downlink.{self.name}.{self.instance}",
                             transaction_timeout_ms=timeout,
                             compression_type=self.settings.compression_type(bulk=True))

    async def on_start(self) -> None:
        self.producer = self.make_transactional_producer()
        await start_client(self.settings, self.producer)
        await self.open_consumer()


    async def run(self) -> None:
        """Fetch, process and commit batches until stopped.

        The transaction of batch N commits while batch N+1 is fetched and
        processed, so produce latency and decoding overlap; transactions stay
        strictly in order.
        """
        try:
            while not self._stopping.is_set():
                try:
                    if await self._one_batch():
                        self._failures = 0  # the backoff grows until a batch really commits again
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    if not is_retriable(exc):
                        raise
                    self._recovering = True  # --until-idle must not see the backoff as idle
                    while True:  # the recovery meets the same fault (broker still away): retry it too
                        try:
                            await self._recover(exc)
                            self._recovering = False
                            break
                        except asyncio.CancelledError:
                            raise
                        except BaseException as again:
                            if not is_retriable(again):
                                raise
                            exc = again
        finally:
            # a graceful stop lets the transaction in flight finish (a kill aborts it)
            if self._pending is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(self._pending)
            await self._discard_queue()

    async def _one_batch(self) -> bool:
        """One fetch, processed and queued for commit; True once a commit of earlier batches succeeded."""
        committed = self._reap()
        got = await self.fetch()
        async with self._batch_lock:
            if self._assign_error is not None:
                raise DownlinkError(
                    f"{self.name}: partition assignment failed: {self._assign_error!r}; the "
                    "service stops rather than run without its state") from self._assign_error
            got = [(tp, recs) for tp, recs in got if tp in self.assigned]
            await fencing.check(self, "process")  # zombie fencing (fencing.py): no effect unless still owner
            records, outputs = self.decode_batch(got)
            if records:
                outputs += await self.process(records)
            await fencing.check(self, "tick")
            outputs += await self.tick()
            if self._stale:
                self._stale = False
                await self.drain()
                raise StorageError("a rebalance revoked partitions of the batch in flight")
            for tp, recs in got:
                self._through[tp] = recs[-1].offset + 1
            if got or outputs:
                self.last_activity = time.monotonic()
                size = sum(len(r.value or b"") for _, recs in got for r in recs)
                # queued and in-flight batches hold at most commit_queue_bytes (one batch always fits)
                while self._queued_bytes and self._queued_bytes + size > self.settings.kafka.commit_queue_bytes:
                    committed |= self._run_chain()
                    committed |= await self._wait_chain()  # bounded memory: wait for the commit in flight
                durable, self._durable = self._durable, []
                self._queue.append(_Queued(
                    [o.encoded() for o in outputs], self.commit_offsets({tp: o for tp, o in self._through.items()
                                                  if tp in self.assigned}),
                    durable, fencing.bound_generation(), size))
                self._queued_bytes += size
                committed |= self._run_chain()
        return committed

    def _run_chain(self) -> bool:
        """Collect a finished commit chain (re-raising its failure) and start one if batches wait."""
        committed = self._reap()
        if self._pending is None and self._queue:
            self._pending = asyncio.create_task(self._commit_chain())
        return committed

    def _reap(self) -> bool:
        """Collect a finished commit chain (re-raising its failure)."""
        task = self._pending
        if task is None or not task.done():
            return False
        self._pending = None
        task.result()
        return True

    async def _wait_chain(self) -> bool:
        if self._pending is not None:
            await asyncio.wait({self._pending})
        return self._reap()

    async def _commit_chain(self) -> None:
        """Commit queued batches, oldest first, merged while they share a generation."""
        while self._queue:
            head = self._queue[0].generation
            n = next((i for i, q in enumerate(self._queue) if q.generation != head), len(self._queue))
            batch, self._queue = self._queue[:n], self._queue[n:]
            outputs = [o for q in batch for o in q.outputs]
            offsets: dict[TopicPartition, int] = {}
            for q in batch:
                offsets.update(q.offsets)  # the last batch's offsets win, as with commits one by one
            durable = [d for q in batch for d in q.durable]
            fencing.bind_generation(head)
            try:
                await self._commit(outputs, offsets, durable)
            except BaseException:
                self._queue = batch + self._queue  # the recovery discards them, awaiting their writes
                raise
            self._queued_bytes -= sum(q.size for q in batch)

    async def _discard_queue(self) -> None:
        """Drop batches that will not commit; their file writes are awaited (and their errors read)."""
        durable = [d for q in self._queue for d in q.durable] + self._durable
        self._queue, self._queued_bytes, self._durable = [], 0, []
        if durable:
            await asyncio.gather(*durable, return_exceptions=True)

    async def _recover(self, exc: BaseException) -> None:
        """Abort, rebuild the producer, rewind to committed offsets, reload state, after a backoff."""
        self._failures += 1
        k = self.settings.kafka
        delay = min(k.retry_backoff_max_seconds, k.retry_backoff_seconds * 2 ** (self._failures - 1))
        disk_full = isinstance(exc, StorageError) and exc.disk_full
        metrics.RETRIES.labels(self.name, "disk_full" if disk_full else type(exc).__name__[:40]).inc()
        log.warning("batch failed; retrying from the last commit", extra={
            "service": self.name, "error": repr(exc), "attempt": self._failures, "backoff_s": delay})
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(BaseException):
                await pending
        await self._discard_queue()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        self.producer = None
        await self.backoff_pause(delay)
        self.producer = self.make_transactional_producer()
        await start_client(self.settings, self.producer)  # init_transactions aborts what was open
        async with self._batch_lock:
            parts = set(self.assigned)
            await self.on_revoked(parts)  # forgets what was processed after the last commit, too
            await self.rewind(parts)
            await self.on_assigned(parts)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self._through.pop(tp, None)
        await super().on_revoked(revoked)

    def defer_durable(self, work: asyncio.Future) -> None:
        """Let the batch's transaction wait for ``work`` (a file write) instead of the batch loop."""
        self._durable.append(work)

    async def drain(self) -> None:
        """Wait until every queued batch is committed (re-raising a commit's failure)."""
        while self._pending is not None:
            await self._wait_chain()

    async def _commit(self, outputs: list[Output], offsets: dict[TopicPartition, int],
                      durable: list[asyncio.Future] | None = None) -> None:
        if durable:
            await asyncio.gather(*durable)  # step 1: file effects durable before anything is announced
        assert self.producer is not None
        async with self.producer.transaction():
            futures = []
            for out in outputs:
                payload = out.payload()
                futures.append(await self.producer.send(
                    self.settings.topic(out.topic), payload, key=out.key, partition=out.partition,
                    headers=out.headers))
                metrics.MESSAGES_OUT.labels(self.name, out.topic).inc()
                metrics.BYTES_OUT.labels(self.name, out.topic).inc(len(payload))
            if futures:
                await asyncio.gather(*futures)
            if offsets:
                await self.producer.send_offsets_to_transaction(offsets, self.settings.group(self.name))
            await fencing.check(self, "commit")  # a stale owner aborts instead of committing
        metrics.TRANSACTIONS.labels(self.name).inc()

    # hooks -----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def process(self, records: list[Record]) -> list[Output]:
        """Handle a batch of decoded records; make file effects durable; return what to produce."""

    async def tick(self) -> list[Output]:
        """Time-driven work (e.g. quiet-time flushes); runs after every fetch."""
        return []

    def commit_offsets(self, consumed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Offsets to commit for a batch (services that keep replayable state pin them)."""
        return consumed

    async def before_revoke(self) -> None:
        # the transaction in flight holds the revoked partitions' offsets: let it finish
        with contextlib.suppress(Exception):
            await self.drain()

    async def caught_up(self) -> bool:
        if self._batch_lock.locked():
            return False  # a fetched batch is being processed: positions are at the end, outputs not yet
        if self._queue or (self._pending is not None and not self._pending.done()):
            return False
        return await super().caught_up()
