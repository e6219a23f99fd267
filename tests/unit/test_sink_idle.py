"""A sink is not "caught up" while it handles a batch: ``--until-idle`` must wait for the effect."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.framework.service import Input, Output, Record
from consumers.framework.sink import SinkService


class EndConsumer:
    """Positions at the end as soon as a batch is fetched; records commits."""

    def __init__(self) -> None:
        self.commits: list = []

    async def end_offsets(self, tps):
        return {tp: 1 for tp in tps}

    async def position(self, tp):
        return 1

    async def commit(self, offsets):
        self.commits.append(offsets)


class SlowSink(SinkService):
    name = "slowsink"
    inputs = (Input("in"),)

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def handle(self, records: list[Record]) -> list[Output]:
        self.entered.set()
        await self.release.wait()  # the effect (a database write) takes a while
        return []


async def test_a_sink_handling_a_batch_is_not_caught_up(settings):
    svc = SlowSink(settings)
    svc.consumer = EndConsumer()
    tp = TopicPartition(settings.topic("in"), 0)
    svc.assigned = {tp}
    rec = ConsumerRecord(tp.topic, 0, 0, 0, 0, None, b"x", None, 1, 1, [])

    async def fetch():
        return [(tp, [rec])]
    svc.fetch = fetch
    step = asyncio.create_task(svc._one_batch())
    async with asyncio.timeout(10):
        await svc.entered.wait()
    assert not await svc.caught_up()
    svc.release.set()
    await step
    assert await svc.caught_up() and svc.consumer.commits == [{tp: 1}]
