"""Group commit of the transactional kind, without a broker.

While a transaction is in flight the batch loop keeps processing; the batches
processed meanwhile commit together in the next transaction, in order, with
the offsets of the last one. A failed commit commits nothing after it, and
the file writes of discarded batches are awaited. The queue is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.framework import fencing
from consumers.framework.service import Input, Output, Record
from consumers.framework.transactional import TransactionalService

TOPIC = "in"


class GatedProducer:
    """A transactional producer whose commits wait for a gate; records every transaction."""

    def __init__(self) -> None:
        self.transactions: list[dict] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False
        self.begun = 0

    @contextlib.asynccontextmanager
    async def transaction(self):
        txn: dict = {"sent": [], "offsets": None}
        self.begun += 1
        yield
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker went away during the commit")
        self.transactions.append(txn | {"sent": list(self._sent), "offsets": self._offsets})
        self._sent, self._offsets = [], None

    _sent: list = []
    _offsets = None

    async def send(self, topic, value, key=None, partition=None, headers=None):
        self._sent = [*self._sent, value]
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def send_offsets_to_transaction(self, offsets, group):
        self._offsets = {tp.partition: o for tp, o in offsets.items()}


class Echo(TransactionalService):
    name = "echo"
    inputs = (Input(TOPIC),)
    outputs = {"out": ()}

    async def process(self, records: list[Record]) -> list[Output]:
        return [Output("out", r.value) for r in records]


class Harness:
    def __init__(self, settings, service: type[TransactionalService] = Echo) -> None:
        self.svc = service(settings)
        self.producer = GatedProducer()
        self.svc.producer = self.producer
        self.tp = TopicPartition(settings.topic(TOPIC), 0)
        self.svc.assigned = {self.tp}
        self.offset = 0
        self.fetches: list = []

        async def fetch():
            if not self.fetches:
                await asyncio.sleep(0.01)  # a real fetch waits for records
                return []
            return self.fetches.pop(0)
        self.svc.fetch = fetch

    def batch(self, *values: bytes) -> None:
        recs = []
        for v in values:
            recs.append(ConsumerRecord(self.tp.topic, 0, self.offset, 0, 0, None, v, None, 1, len(v), []))
            self.offset += 1
        self.fetches.append([(self.tp, recs)])

    async def step(self) -> bool:
        return await self.svc._one_batch()

    async def three_batches_behind_a_slow_commit(self) -> None:
        """Batch a's commit waits; b and c are processed meanwhile; then everything commits."""
        self.producer.gate.clear()
        self.batch(b"a")
        await self.step()
        await _until(lambda: self.producer.begun == 1)
        for v in (b"b", b"c"):
            self.batch(v)
            await self.step()
        self.producer.gate.set()
        await self.svc.drain()


@pytest.fixture
def h(settings) -> Harness:
    return Harness(settings)


async def _until(cond, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def test_batches_processed_during_a_commit_ride_the_next_transaction(h: Harness):
    h.producer.gate.clear()  # the first commit is slow
    h.batch(b"a")
    await h.step()
    await _until(lambda: h.producer.begun == 1)
    for v in (b"b", b"c", b"d"):
        h.batch(v)
        await h.step()  # processing goes on while the first transaction waits
    assert h.producer.transactions == [] and h.producer.begun == 1
    h.producer.gate.set()
    await h.svc.drain()
    assert h.producer.transactions == [{"sent": [b"a"], "offsets": {0: 1}},
                                       {"sent": [b"b", b"c", b"d"], "offsets": {0: 4}}]


async def test_a_failed_commit_commits_nothing_after_it_and_awaits_discarded_writes(h: Harness):
    h.producer.gate.clear()
    h.producer.fail_next = True
    h.batch(b"a")
    await h.step()
    await _until(lambda: h.producer.begun == 1)
    written = asyncio.Event()

    async def slow_write():
        await asyncio.sleep(0.05)
        written.set()
        raise OSError("disk full")  # read by the discard, never "exception was never retrieved"
    h.svc.defer_durable(asyncio.ensure_future(slow_write()))
    h.batch(b"b")
    await h.step()
    h.producer.gate.set()
    with pytest.raises(ConnectionError):
        await h.svc.drain()
    assert h.producer.transactions == []  # neither batch committed
    assert len(h.svc._queue) == 2
    await h.svc._discard_queue()
    assert written.is_set() and h.svc._queue == [] and h.svc._queued_bytes == 0


async def test_the_queue_is_bounded_by_commit_queue_bytes(settings):
    h = Harness(settings.replace(kafka_commit_queue_bytes=10))
    h.producer.gate.clear()
    h.batch(b"x" * 6)
    await h.step()
    await _until(lambda: h.producer.begun == 1)
    h.batch(b"y" * 6)  # 6 + 6 > 10: this batch must wait for the transaction in flight
    step = asyncio.ensure_future(h.step())
    await asyncio.sleep(0.05)
    assert not step.done()
    h.producer.gate.set()
    await step
    await h.svc.drain()
    assert [t["sent"] for t in h.producer.transactions] == [[b"x" * 6], [b"y" * 6]]


async def test_batches_of_different_generations_never_share_a_transaction(h: Harness, monkeypatch):
    seen: list[int | None] = []
    generations = iter([1, 1, 2])

    async def check_gen(service, where="commit"):
        if where == "process":
            fencing.bind_generation(next(generations))
        elif where == "commit":
            seen.append(fencing.bound_generation())
    monkeypatch.setattr(fencing, "check", check_gen)
    await h.three_batches_behind_a_slow_commit()
    assert [t["sent"] for t in h.producer.transactions] == [[b"a"], [b"b"], [b"c"]]
    assert seen == [1, 1, 2]


class FakeConsumer:
    """Positions always at the end (everything fetched), as after a batch that failed."""

    def __init__(self) -> None:
        self.paused: set = set()

    async def end_offsets(self, tps):
        return {tp: 10 for tp in tps}

    async def position(self, tp):
        return 10

    def pause(self, *tps):
        self.paused |= set(tps)

    def resume(self, *tps):
        self.paused -= set(tps)

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def committed(self, tp):
        return 0

    def seek(self, tp, offset):
        pass

    async def seek_to_beginning(self, tp):
        pass


async def test_a_service_waiting_to_redo_a_failed_batch_is_not_caught_up(settings):
    h = Harness(settings.replace(kafka_retry_backoff_seconds=1.0, kafka_retry_backoff_max_seconds=1.0))
    h.svc.consumer = FakeConsumer()

    class Restartable(GatedProducer):
        async def start(self):
            pass

        async def stop(self):
            pass
    h.svc.make_transactional_producer = lambda: Restartable()
    h.producer.fail_next = True
    h.batch(b"a")
    seen: list[bool] = []
    run = asyncio.create_task(h.svc.run())
    try:
        async with asyncio.timeout(10):
            while not h.svc._recovering:  # the commit failed: the backoff has begun
                await asyncio.sleep(0.005)
            seen.append(await h.svc.caught_up())  # positions are at the end, the batch is not done
            while h.svc._recovering:
                await asyncio.sleep(0.005)
    finally:
        h.svc._stopping.set()
        await asyncio.wait({run}, timeout=5)
        run.cancel()
    assert seen == [False]


async def test_a_queued_batch_commits_its_messages_as_they_were_when_processed(settings):
    """A message that shares a list with live state (a state snapshot) is serialised when its
    batch is queued: later batches change the state, not what the waiting batch commits."""
    from streams.messages import OpsAlert

    shared: dict = {"ranges": []}

    class Stateful(Echo):
        async def process(self, records: list[Record]) -> list[Output]:
            shared["ranges"].append(len(shared["ranges"]))
            return [Output("out", OpsAlert(contact="C", type="gap", severity="info", time=0.0,
                                           detail=shared))]
    h = Harness(settings, Stateful)
    await h.three_batches_behind_a_slow_commit()
    sent = [OpsAlert.decode(v).detail["ranges"] for t in h.producer.transactions for v in t["sent"]]
    assert sent == [[0], [0, 1], [0, 1, 2]]
