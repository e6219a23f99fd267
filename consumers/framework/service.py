"""What every service shares: one lifecycle, typed records, dead-lettering, priorities.

A service declares its ``inputs`` (topic, accepted message classes, priority)
and ``outputs`` (topic -> message classes). At start it checks that those
topics exist and that topics.yaml's ``schema:`` names the classes it expects
(a mismatch refuses to start, naming the topic and both schemas). Records are
decoded here into typed messages (:mod:`streams.messages`); a record that
cannot be decoded becomes a :class:`~streams.messages.DeadLetter` with its
source topic, partition, offset and reason, and is committed past: one bad
record never stops a service.

Lifecycle (aiokafka's rule): ``start()`` once; ``stop()`` cancels and awaits
every task the service owns (``spawn``) and closes its clients; a start that
fails half-way releases what it had opened. ``healthy`` turns false when an
owned task dies, so the runner stops the process (no zombie).

The kinds built on this base: :class:`~consumers.framework.transactional.
TransactionalService` (Kafka in -> Kafka out, exactly once),
:class:`~consumers.framework.sink.SinkService` (Kafka in -> an idempotent
external effect) and :class:`~consumers.framework.server.ServerService` (an
HTTP app).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Coroutine

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from core.errors import ConfigError, DownlinkError, EnvelopeError, SchemaMismatch
from core.settings import Settings
from monitoring import metrics
from streams import messages
from streams.kafka import make_consumer, start_client, topic_partitions
from streams.messages import DeadLetter, Message

log = logging.getLogger(__name__)

RAW_BYTES = "raw-bytes"


@dataclass(frozen=True)
class Input:
    """An input topic: the message classes accepted there (``()`` = raw bytes) and its priority.

    Lower ``priority`` is more urgent: while a more urgent input has records
    waiting, the partitions of less urgent ones are paused.
    """

    topic: str
    messages: tuple[type[Message], ...] = ()
    priority: int = 0

    @property
    def schemas(self) -> frozenset[str]:
        return frozenset(m.SCHEMA for m in self.messages) if self.messages else frozenset({RAW_BYTES})


@dataclass(frozen=True)
class Record:
    """One consumed record, decoded."""

    topic: str  # logical name
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: Any  # a Message, or bytes for a raw input
    headers: dict[str, str]
    timestamp: int


@dataclass
class Output:
    """One message to produce (a typed message or raw bytes)."""

    topic: str  # logical name
    value: Message | bytes
    key: bytes | None = None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None

    def payload(self) -> bytes:
        return self.value.encode() if isinstance(self.value, Message) else self.value

    def encoded(self) -> "Output":
        """This output with its message serialised now.

        A message may share lists or dicts with the service's live state (a
        snapshot of accounting that the next batch goes on updating); a
        batch that waits for its commit must carry the bytes of the moment
        it was processed, not a view that changes under it.
        """
        if not isinstance(self.value, Message):
            return self
        return dataclasses.replace(self, value=self.value.encode())


def check_schemas(service: str, wanted: dict[str, frozenset[str]], specs: dict[str, Any],
                  where: str) -> None:
    """Refuse a topic that is undeclared, or declared with schemas other than the ones wanted."""
    for topic, schemas in sorted(wanted.items()):
        spec = specs.get(topic)
        if spec is None:
            raise ConfigError(f"{service}: topic {topic!r} is not declared in {where}")
        if not schemas <= spec.schemas:
            raise SchemaMismatch(
                f"{service}: topic {topic!r} carries schema {spec.schema!r} in {where}, but this "
                f"service expects {', '.join(sorted(schemas))!r}; fix topics.yaml or upgrade the service")


class Service(abc.ABC):
    """Base of every service kind."""

    name: ClassVar[str] = "service"
    inputs: ClassVar[tuple[Input, ...]] = ()
    #: topic -> message classes this service writes (checked against topics.yaml at start)
    outputs: ClassVar[dict[str, tuple[type[Message], ...]]] = {}

    def __init__(self, settings: Settings, *, instance: str | None = None) -> None:
        self.settings = settings
        self.instance = instance or settings.instance
        self.lifecycle = "new"  # new | starting | running | stopping | stopped | failed
        self._tasks: set[asyncio.Task] = set()
        self._fatal: BaseException | None = None
        self._stopping = asyncio.Event()

    # lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.lifecycle != "new":
            raise DownlinkError(f"{self.name}: start() called twice")
        self.lifecycle = "starting"
        try:
            await self.check_topics()
            await self.on_start()
        except BaseException:
            self.lifecycle = "failed"
            await self._release()
            raise
        self.lifecycle = "running"
        metrics.CONSUMER_UP.labels(self.name).set(1)
        log.info("service started", extra={"service": self.name, "instance": self.instance})

    async def request_stop(self) -> None:
        """Ask the main loop to finish its current unit of work and return (graceful stop)."""
        self._stopping.set()

    async def stop(self) -> None:
        if self.lifecycle in ("stopping", "stopped"):
            return
        self.lifecycle = "stopping"
        self._stopping.set()
        metrics.CONSUMER_UP.labels(self.name).set(0)
        await self._release()
        self.lifecycle = "stopped"

    async def _release(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.close()

    async def __aenter__(self) -> "Service":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def healthy(self) -> bool:
        """False once an owned task died or the service failed."""
        return self._fatal is None and self.lifecycle in ("starting", "running")

    @property
    def ready(self) -> bool:
        return self.lifecycle == "running" and self._fatal is None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run ``coro`` as a task owned by this service: cancelled at stop, fatal if it dies."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None and not self._stopping.is_set():
                self._fatal = t.exception()
                log.error("owned task died", extra={"service": self.name, "task": t.get_name(),
                                                    "error": repr(t.exception())})
        task.add_done_callback(done)
        return task

    # hooks -----------------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Open clients and load state (called by ``start``)."""

    async def close(self) -> None:
        """Release clients, files and pools (called by ``stop`` and by a failed ``start``)."""

    @abc.abstractmethod
    async def run(self) -> None:
        """The service's main loop; returns when stopped."""

    def has_pending_work(self) -> bool:
        """Work held outside Kafka that ``--until-idle`` must wait for."""
        return False

    async def caught_up(self) -> bool:
        return True

    # topics ----------------------------------------------------------------------------------
    def wanted_schemas(self) -> dict[str, frozenset[str]]:
        """Logical topic -> schemas this service reads or writes there."""
        wanted: dict[str, frozenset[str]] = {i.topic: i.schemas for i in self.inputs}
        for topic, classes in self.outputs.items():
            wanted[topic] = wanted.get(topic, frozenset()) | frozenset(c.SCHEMA for c in classes)
        return wanted

    async def check_topics(self) -> None:
        """Every topic used exists in topics.yaml with the schema this service expects, and on the broker."""
        from streams.topics import load_topics

        check_schemas(self.name, self.wanted_schemas(), load_topics(self.settings.topics_file),
                      str(self.settings.topics_file))
        for topic in sorted(self.wanted_schemas()):
            await topic_partitions(self.settings, self.settings.topic(topic), wait=5.0)

    # records ---------------------------------------------------------------------------------
    def _input_of(self, physical_topic: str) -> Input:
        return self._inputs_by_physical[physical_topic]

    @property
    def _inputs_by_physical(self) -> dict[str, Input]:
        return {self.settings.topic(i.topic): i for i in self.inputs}

    def decode(self, tp: TopicPartition, rec: ConsumerRecord) -> Record | Output:
        """A typed record, or the dead letter that replaces a record that cannot be used."""
        inp = self._input_of(tp.topic)
        try:
            headers = {k: v.decode("utf-8") for k, v in (rec.headers or ())}
            if inp.messages:
                value: Any = messages.decode(rec.value, *inp.messages)
            elif rec.value is None:
                raise EnvelopeError("empty record (a tombstone) on a raw topic")
            else:
                value = rec.value
        except (EnvelopeError, UnicodeDecodeError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            return self.dead_letter_for(inp.topic, tp, rec, reason)
        return Record(inp.topic, tp, rec.offset, rec.key, value, headers, rec.timestamp)

    def dead_letter_for(self, topic: str, tp: TopicPartition, rec: ConsumerRecord | Record,
                        reason: str, **fields: Any) -> Output:
        """A DeadLetter for one record of an input topic (keeps its bytes intact)."""
        raw = rec.value if isinstance(rec.value, (bytes, bytearray)) else b""
        if isinstance(rec, Record) and isinstance(rec.value, Message):
            raw = rec.value.encode()
        metrics.DEADLETTER_RECORDS.labels(self.name, reason.split(":")[0][:40]).inc()
        log.warning("record dead-lettered", extra={"service": self.name, "topic": topic,
                                                   "partition": tp.partition, "offset": rec.offset,
                                                   "reason": reason})
        letter = DeadLetter(reason=reason, data=bytes(raw), service=self.name, source_topic=topic,
                            partition=tp.partition, offset=rec.offset, length=len(raw),
                            time=time.time(), **fields)
        return Output("tlm.deadletter", letter, key=rec.key)


class Rebalance(ConsumerRebalanceListener):
    """Partition hand-over, bounded: a revoke waits for the batch in flight at most
    ``kafka.revoke_timeout_seconds``; past that the batch is marked stale and redone, not
    committed (quix-streams #1131: an unbounded revoke stalls the whole group)."""

    def __init__(self, service: "ConsumingService") -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        s = self.service
        try:
            await asyncio.wait_for(s._batch_lock.acquire(), s.settings.kafka.revoke_timeout_seconds)
        except asyncio.TimeoutError:
            s._stale = True
            log.warning("revoke did not wait for the batch in flight; it will be redone",
                        extra={"service": s.name})
            await s.on_revoked(set(revoked))
            return
        try:
            await s.before_revoke()
            await s.on_revoked(set(revoked))
        finally:
            s._batch_lock.release()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        s = self.service
        async with s._batch_lock:
            try:
                await s.on_assigned(set(assigned))
            except Exception as exc:
                # aiokafka only logs listener errors; processing without our state would be wrong
                s._assign_error = exc
                raise


class ConsumingService(Service):
    """A service that reads input topics in a consumer group (transactional and sink kinds)."""

    max_records: ClassVar[int] = 64
    fetch_timeout_ms: ClassVar[int] = 200
    #: bytes fetched per partition and request (None: one largest message, the factory default)
    partition_fetch_bytes: ClassVar[int | None] = None

    def __init__(self, settings: Settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.consumer: AIOKafkaConsumer | None = None
        #: the kind's producer (transactional, or idempotent for sinks); closed with the consumer
        self.producer: Any = None
        self.assigned: set[TopicPartition] = set()
        self.last_activity = time.monotonic()
        self._paused: set[TopicPartition] = set()
        self._batch_lock = asyncio.Lock()
        #: a revoke gave up waiting for the batch in flight: redo it instead of committing it
        self._stale = False
        self._assign_error: BaseException | None = None
        #: a failed batch waits for its redo (backoff, rewind): positions say "caught up", work is not done
        self._recovering = False

    async def before_revoke(self) -> None:
        """Finish what the revoked partitions' offsets depend on (the kinds override it)."""

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned |= assigned

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= revoked

    def make_group_consumer(self) -> AIOKafkaConsumer:
        k = self.settings.kafka
        fetch = ({"max_partition_fetch_bytes": self.partition_fetch_bytes,
                  "fetch_max_bytes": 2 * self.partition_fetch_bytes}
                 if self.partition_fetch_bytes else {})
        group = self.settings.group(self.name)
        # static membership: a restarted instance (same --instance) takes its partitions back
        # at once instead of waiting for its dead predecessor's session to expire
        return make_consumer(self.settings, group=group, group_instance_id=f"{group}.{self.instance}",
                             max_poll_interval_ms=k.max_poll_interval_ms,
                             session_timeout_ms=k.session_timeout_ms,
                             heartbeat_interval_ms=k.heartbeat_interval_ms,
                             request_timeout_ms=k.request_timeout_ms, **fetch)

    async def open_consumer(self, listener: ConsumerRebalanceListener | None = None) -> None:
        self.consumer = self.make_group_consumer()
        await start_client(self.settings, self.consumer)
        self.consumer.subscribe([self.settings.topic(i.topic) for i in self.inputs],
                                listener=listener or Rebalance(self))

    async def close(self) -> None:
        for attr in ("consumer", "producer"):
            client = getattr(self, attr)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
                setattr(self, attr, None)

    async def fetch(self) -> list[tuple[TopicPartition, list[ConsumerRecord]]]:
        """One fetch, most urgent inputs first; pauses less urgent partitions while urgent ones have work."""
        assert self.consumer is not None
        batch = await self.consumer.getmany(timeout_ms=self.fetch_timeout_ms,
                                            max_records=self.max_records)
        got = [(tp, recs) for tp, recs in batch.items() if recs and tp in self.assigned]
        if len({i.priority for i in self.inputs}) > 1:
            got.sort(key=lambda item: self._input_of(item[0].topic).priority)
            await self._prioritize(got)
        return got

    async def _prioritize(self, got: list[tuple[TopicPartition, list[ConsumerRecord]]]) -> None:
        """Pause inputs less urgent than the most urgent one that has records waiting."""
        assert self.consumer is not None
        busy = {self._input_of(tp.topic).priority for tp, _ in got}
        for tp in self.assigned - self._paused:
            high = self.consumer.highwater(tp)
            if high is not None and await self.consumer.position(tp) < high:
                busy.add(self._input_of(tp.topic).priority)
        urgent = min(busy) if busy else None
        pause = {tp for tp in self.assigned
                 if urgent is not None and self._input_of(tp.topic).priority > urgent}
        if pause - self._paused:
            self.consumer.pause(*(pause - self._paused))
        if self._paused - pause:
            self.consumer.resume(*(self._paused - pause))
        self._paused = pause

    def decode_batch(self, got: list[tuple[TopicPartition, list[ConsumerRecord]]]
                     ) -> tuple[list[Record], list[Output]]:
        records: list[Record] = []
        letters: list[Output] = []
        for tp, recs in got:
            for rec in recs:
                item = self.decode(tp, rec)
                (records if isinstance(item, Record) else letters).append(item)
        return records, letters

    async def rewind(self, partitions: set[TopicPartition] | None = None) -> None:
        """Seek partitions back to their committed offsets (after an aborted or failed batch)."""
        assert self.consumer is not None
        for tp in sorted(partitions if partitions is not None else self.assigned):
            committed = await self.consumer.committed(tp)
            if committed is None or committed < 0:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    async def caught_up(self) -> bool:
        """True when every assigned partition is consumed up to its last stable offset."""
        if self.consumer is None or not self.assigned or self._recovering:
            return False
        assigned = sorted(self.assigned)
        ends = await self.consumer.end_offsets(assigned)
        for tp in assigned:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    async def backoff_pause(self, seconds: float) -> None:
        """Wait ``seconds`` with every partition paused, still polling (the group keeps us)."""
        assert self.consumer is not None
        parts = set(self.assigned)
        if parts:
            self.consumer.pause(*parts)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not self._stopping.is_set():
                await self.consumer.getmany(timeout_ms=int(min(200, max(1, (deadline - time.monotonic()) * 1000))))
        finally:
            resume = (parts & self.assigned) - self._paused
            if resume:
                self.consumer.resume(*resume)
