"""The service framework against the real broker: schema refusal, sink commits, dead letters,
input priorities, a server's graceful stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import ClassVar

import pytest

from consumers.demux.service import Demux
from consumers.framework.server import ServerService
from consumers.framework.service import Input, Output, Record
from consumers.framework.sink import SinkService
from core.errors import ConfigError, SchemaMismatch
from streams import envelope
from streams.messages import CalDone, DeadLetter, L0Ready
from tests.integration.helpers import read_all

pytestmark = pytest.mark.integration


def _ready(n: int) -> L0Ready:
    return L0Ready(exposure_id=f"jw01234001001_01101_{n:05d}_nrca1", version=1, complete=True,
                   sha256="0" * 64, packets=1, bytes=1, path="p", manifest="m", program=1234, detector=1)


def _done(n: int) -> CalDone:
    return CalDone(exposure_id=f"jw01234001001_01101_{n:05d}_nrca1", products=[], context="c",
                   cal_version="v")


class Collector(SinkService):
    """A sink whose effect is a dict keyed by record identity (idempotent by construction)."""

    name = "collector"
    inputs: ClassVar = (Input("l0.ready", (L0Ready,), priority=1), Input("cal.done", (CalDone,), priority=0))
    outputs: ClassVar = {"tlm.deadletter": (DeadLetter,)}
    max_records = 4

    def __init__(self, settings, **kw) -> None:
        super().__init__(settings, **kw)
        self.effect: dict[tuple[str, int, int], str] = {}
        self.order: list[str] = []
        self.effect_seconds = 0.0

    async def handle(self, records: list[Record]) -> list[Output]:
        for rec in records:
            self.effect[(rec.topic, rec.tp.partition, rec.offset)] = rec.value.exposure_id
            self.order.append(rec.topic)
        await asyncio.sleep(self.effect_seconds)  # an effect that takes time: the backlog persists
        return []


async def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_service_refuses_topics_of_another_schema(settings, topics, tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    bad.write_text(Path(settings.topics_file).read_text().replace(
        "schema: tlm.sci.run, tlm.sci.eoc", "schema: l0.ready"))
    demux = Demux(settings.replace(topics_file=bad))
    with pytest.raises(SchemaMismatch) as err:
        await demux.start()
    text = str(err.value)
    assert "'tlm.sci'" in text and "'l0.ready'" in text and "tlm.sci.eoc, tlm.sci.run" in text
    assert demux.lifecycle == "failed" and demux.producer is None and demux.consumer is None


async def test_service_refuses_missing_topics(settings, stack) -> None:
    demux = Demux(settings)  # no topics created under this test's prefix
    with pytest.raises(ConfigError, match="does not exist.*downlink topics create"):
        await demux.start()
    assert demux.producer is None and demux.consumer is None


async def test_sink_commits_after_effect_and_dead_letters_bad_records(settings, topics, producer_factory) -> None:
    producer = await producer_factory()
    for n in range(6):
        await producer.send_and_wait(topics["l0.ready"], _ready(n).encode(), key=b"k", partition=0)
    bad = [envelope.encode("l0.ready", {"exposure_id": 5}), b"\xc1 not msgpack", None]
    for value in bad:
        await producer.send_and_wait(topics["l0.ready"], value, key=b"bad", partition=0)
    await producer.send_and_wait(topics["l0.ready"], _ready(99).encode(), key=b"k", partition=0)

    async with Collector(settings) as sink:
        task = asyncio.create_task(sink.run())
        await _wait(lambda: len(sink.effect) == 7)
        await _wait(lambda: sink.consumer is not None and sink.consumer.assignment() and True)
        await asyncio.sleep(1.0)
        committed = {tp.partition: await sink.consumer.committed(tp) for tp in sink.assigned
                     if tp.topic == topics["l0.ready"]}
        await sink.request_stop()
        await asyncio.wait_for(task, 10)
    assert committed[0] == 10, "offsets must advance past good and bad records once the effect is done"
    letters = [m for _, m in await read_all(settings, "tlm.deadletter")]
    assert sorted(m["offset"] for m in letters) == [6, 7, 8]
    assert {m["source_topic"] for m in letters} == {"l0.ready"} and all(m["reason"] for m in letters)
    assert sorted(sink.effect.values())[-1].endswith("_00099_nrca1")


async def test_urgent_input_is_served_before_a_backlog(settings, topics, producer_factory) -> None:
    producer = await producer_factory()
    for n in range(200):
        await producer.send(topics["l0.ready"], _ready(n).encode(), key=b"k", partition=0)
    await producer.flush()
    async with Collector(settings) as sink:
        sink.effect_seconds = 0.02
        task = asyncio.create_task(sink.run())
        await _wait(lambda: len(sink.order) >= 8)  # the backlog is being worked on
        for n in range(40):
            await producer.send(topics["cal.done"], _done(n).encode(), key=b"k", partition=0)
        await producer.flush()
        await _wait(lambda: sink.order.count("cal.done") == 40)
        await _wait(lambda: len(sink.order) == 240)
        await sink.request_stop()
        await asyncio.wait_for(task, 10)
    first_urgent = sink.order.index("cal.done")
    last_urgent = len(sink.order) - 1 - sink.order[::-1].index("cal.done")
    between = sink.order[first_urgent:last_urgent + 1]
    # once the urgent input has work, the backlog waits (at most one batch in flight is mixed in),
    # and the urgent records are done while most of the backlog is still waiting
    assert between.count("l0.ready") <= Collector.max_records, between
    assert sink.order[last_urgent + 1:].count("l0.ready") >= 100


class Hello(ServerService):
    name = "hello"

    def app(self):
        async def asgi(scope, receive, send):
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            await asyncio.sleep(0.5)  # a request in flight when the stop comes
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"hello"})
        return asgi


async def test_server_finishes_requests_in_flight_on_stop(settings) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Hello(settings, port=port)
    await server.start()
    task = asyncio.create_task(server.run())
    await _wait(lambda: server.started, 10)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    await server.request_stop()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await asyncio.wait_for(task, 15)
    await server.stop()
    assert response.startswith(b"HTTP/1.1 200") and b"\r\nhello\r\n" in response


class Flaky(Collector):
    """Fails its effect once, retriably, half-way through: nothing may be lost or committed early."""

    name = "flaky"
    inputs: ClassVar = (Input("l0.ready", (L0Ready,)),)

    def __init__(self, settings, **kw) -> None:
        super().__init__(settings, **kw)
        self.failed = False

    async def handle(self, records: list[Record]) -> list[Output]:
        if not self.failed and any(r.offset >= 5 for r in records):
            self.failed = True
            from core.errors import KafkaUnavailable
            raise KafkaUnavailable("the external system went away")
        return await super().handle(records)


async def test_sink_redoes_a_failed_effect_from_the_last_commit(settings, topics, producer_factory) -> None:
    producer = await producer_factory()
    for n in range(12):
        await producer.send(topics["l0.ready"], _ready(n).encode(), key=b"k", partition=0)
    await producer.flush()
    async with Flaky(settings.replace(kafka_retry_backoff_seconds=0.1)) as sink:
        task = asyncio.create_task(sink.run())
        await _wait(lambda: len(sink.effect) == 12)
        await sink.request_stop()
        await asyncio.wait_for(task, 10)
    assert sink.failed
    assert sorted(sink.effect) == [("l0.ready", 0, n) for n in range(12)]
