"""What every consumer service shares: lifecycle, the transactional commit, state tables.

A service consumes one or more topics in a consumer group and, per fetched batch,
runs one Kafka transaction (STYLE.md, commit order):

1. make every file effect durable (temp file, fsync, atomic rename) — done by
   the service's ``process`` before it returns its outputs;
2. produce the output messages and the service's state-table records;
3. add the consumed offsets to the transaction (``send_offsets_to_transaction``);
4. commit the transaction.

Readers use ``read_committed``, so a crash anywhere before step 4 leaves no
visible output and the batch is processed again; a crash after it has nothing
left to redo. The transactional id is stable per (service, instance), so a
restarted instance fences its dead predecessor at once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass


from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from core.errors import DownlinkError
from core.settings import Settings
from monitoring import metrics
from streams.kafka import make_consumer, make_producer

log = logging.getLogger(__name__)


@dataclass
class Output:
    """One message to produce in the batch's transaction."""

    topic: str  # logical name
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: "Service") -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # wait for the batch in flight: its transaction holds these partitions' offsets
        async with self.service._batch_lock:
            await self.service.drain()
            await self.service.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.service._batch_lock:
            try:
                await self.service.on_assigned(set(assigned))
            except Exception as exc:
                # aiokafka only logs listener errors; processing without our state would be wrong
                self.service._fatal = exc
                raise


class Service(abc.ABC):
    """Base of the consumer services (demux, l0, ...)."""

    name: str = "service"
    inputs: tuple[str, ...] = ()
    #: batch limits for getmany
    max_records: int = 64
    fetch_timeout_ms: int = 200
    #: bytes fetched per partition and request (None: one largest message, the factory default)
    partition_fetch_bytes: int | None = None

    def __init__(self, settings: Settings, *, instance: str | None = None) -> None:
        self.settings = settings
        self.instance = instance or settings.instance
        self.consumer: AIOKafkaConsumer | None = None
        self.producer = None
        self._batch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._pending: asyncio.Task | None = None
        #: file writes of the current batch; its transaction waits for them (``defer_durable``)
        self._durable: list[asyncio.Future] = []
        self.assigned: set[TopicPartition] = set()
        self.last_activity = time.monotonic()

    # lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self.producer = make_producer(
            self.settings, transactional_id=f"downlink.{self.name}.{self.instance}",
            transaction_timeout_ms=30_000,
            compression_type=self.settings.compression_type(bulk=True))
        await self.producer.start()
        fetch = ({"max_partition_fetch_bytes": self.partition_fetch_bytes,
                  "fetch_max_bytes": 2 * self.partition_fetch_bytes}
                 if self.partition_fetch_bytes else {})
        # static membership: a restarted instance (same --instance) takes its partitions back
        # at once instead of waiting for its dead predecessor's session to expire
        self.consumer = make_consumer(self.settings, group=self.settings.group(self.name),
                                      group_instance_id=f"{self.settings.group(self.name)}.{self.instance}",
                                      max_poll_interval_ms=600_000, session_timeout_ms=15_000,
                                      heartbeat_interval_ms=2_000, **fetch)
        await self.consumer.start()
        self.consumer.subscribe([self.settings.topic(t) for t in self.inputs],
                                listener=_Rebalance(self))
        metrics.CONSUMER_UP.labels(self.name).set(1)
        log.info("service started", extra={"service": self.name, "instance": self.instance})

    async def stop(self) -> None:
        self._stopping.set()
        metrics.CONSUMER_UP.labels(self.name).set(0)
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        await self.close()

    async def __aenter__(self) -> "Service":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Fetch, process and commit batches until stopped.

        The transaction of batch N commits while batch N+1 is fetched and
        processed (CPU in a worker thread), so produce latency and decoding
        overlap; transactions themselves stay strictly in order.
        """
        assert self.consumer is not None
        try:
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=self.fetch_timeout_ms,
                                                    max_records=self.max_records)
                async with self._batch_lock:
                    if self._fatal is not None:
                        raise DownlinkError(
                            f"{self.name}: partition assignment failed: {self._fatal!r}; "
                            "the service stops rather than run without its state") from self._fatal
                    records = [(tp, recs) for tp, recs in batch.items()
                               if recs and tp in self.assigned]
                    outputs = await self.process(records) if records else []
                    outputs += await self.tick()
                    await self.drain()
                    if records or outputs:
                        self.last_activity = time.monotonic()
                        offsets = self.commit_offsets(
                            {tp: recs[-1].offset + 1 for tp, recs in records})
                        durable, self._durable = self._durable, []
                        self._pending = asyncio.create_task(
                            self._commit(outputs, offsets, durable))
        finally:
            # a graceful stop lets the transaction in flight finish (a kill aborts it)
            if self._pending is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(self._pending)

    def defer_durable(self, work: asyncio.Future) -> None:
        """Let the batch's transaction wait for ``work`` (a file write) instead of the batch loop."""
        self._durable.append(work)

    async def drain(self) -> None:
        """Wait for the transaction in flight (re-raising its failure)."""
        if self._pending is not None:
            task, self._pending = self._pending, None
            await task

    async def _commit(self, outputs: list[Output], offsets: dict[TopicPartition, int],
                      durable: list[asyncio.Future] | None = None) -> None:
        if durable:
            await asyncio.gather(*durable)  # step 1: file effects durable before anything is announced
        assert self.producer is not None
        async with self.producer.transaction():
            futures = []
            for out in outputs:
                topic = self.settings.topic(out.topic)
                futures.append(await self.producer.send(
                    topic, out.value, key=out.key, partition=out.partition, headers=out.headers))
                metrics.MESSAGES_OUT.labels(self.name, out.topic).inc()
                metrics.BYTES_OUT.labels(self.name, out.topic).inc(len(out.value))
            if futures:
                await asyncio.gather(*futures)
            if offsets:
                await self.producer.send_offsets_to_transaction(
                    offsets, self.settings.group(self.name))
        metrics.TRANSACTIONS.labels(self.name).inc()

    # hooks ----------------------------------------------------------------
    @abc.abstractmethod
    async def process(self, records: list[tuple[TopicPartition, list[ConsumerRecord]]]) -> list[Output]:
        """Handle a batch; make file effects durable; return what to produce."""

    async def tick(self) -> list[Output]:
        """Time-driven work (e.g. quiet-time flushes); runs after every fetch."""
        return []

    def commit_offsets(self, consumed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Offsets to commit for a batch (services that keep replayable state pin them)."""
        return consumed

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned |= assigned

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= revoked

    async def close(self) -> None:
        """Release resources (files, pools)."""

    # idleness (downlink run --until-idle) -----------------------------------
    def has_pending_work(self) -> bool:
        return False

    async def caught_up(self) -> bool:
        """True when every assigned partition is consumed up to its last stable offset."""
        if self.consumer is None or not self.assigned:
            return False
        if self._pending is not None and not self._pending.done():
            return False
        assigned = sorted(self.assigned)
        ends = await self.consumer.end_offsets(assigned)
        for tp in assigned:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True
