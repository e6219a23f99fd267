"""The archive sink on real Kafka and a real database: ingest, replay, bad records, a database outage.

- Every announced product and engineering sample lands once; a record whose
  file does not match goes to the dead-letter topic with the reason.
- Replaying l0.ready, cal.done and tlm.eng.recorded from the beginning (a new
  consumer group) changes no row, on SQLite and PostgreSQL.
- PostgreSQL stopped (immediate shutdown, like a crash) and restarted in the
  middle of an ingest: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from consumers.archive import db
from consumers.archive.models import EngSample, Product
from consumers.archive.service import ArchiveSink
from downlink.stack.postgres import PostgresServer
from streams.dictionary import load_dictionary
from streams.messages import CalDone, DeadLetter
from tests.integration.archive_support import (OTHER, archive_settings, cal_done,  # noqa: F401
                                               catalogue_settings, eng_batch, l0_ready, snapshot)
from tests.integration.helpers import read_all

pytestmark = pytest.mark.integration


class ReplaySink(ArchiveSink):
    """The same sink in a new consumer group: it reads every topic from the beginning."""

    name = "archive-replay"


async def drain(service: ArchiveSink, idle: float = 1.5, timeout: float = 90.0) -> None:
    """Run a service until it has consumed everything (stable for ``idle`` s), then stop it."""
    await service.start()
    task = asyncio.create_task(service.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    since = None
    try:
        while loop.time() < deadline:
            await asyncio.sleep(0.25)
            if task.done():
                task.result()
            if await service.caught_up():
                since = since or loop.time()
                if loop.time() - since >= idle:
                    return
            else:
                since = None
        raise AssertionError("the archive sink did not catch up in time")
    finally:
        await service.request_stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await service.stop()


async def send(producer, settings, topic: str, messages) -> None:
    for m in messages:
        key = getattr(m, "exposure_id", None) or str(getattr(m, "apid", "")).encode()
        await producer.send_and_wait(settings.topic(topic), m if isinstance(m, bytes) else m.encode(),
                                     key=key.encode() if isinstance(key, str) else key)


def counts(settings) -> tuple[int, int, dict[str, int]]:
    engine = db.sync_engine(settings)
    try:
        with Session(engine) as s:
            products = s.execute(select(func.count()).select_from(Product)).scalar_one()
            samples = s.execute(select(func.count()).select_from(EngSample)).scalar_one()
            per_name = dict(s.execute(select(Product.name, func.count()).group_by(Product.name)).all())
    finally:
        engine.dispose()
    return products, samples, per_name


async def test_ingest_replay_changes_no_row(archive_settings, topics, producer_factory):
    s = archive_settings
    data = Path(s.data_dir)
    dictionary = load_dictionary(s.dictionary_file)
    good_cal = cal_done(data)
    bad = cal_done(data, OTHER)
    wrong_sha = CalDone(**{**bad.__dict__, "products": [{**bad.products[0], "sha256": "0" * 64}]})
    producer = await producer_factory()
    await send(producer, s, "l0.ready", [l0_ready(data), l0_ready(data, OTHER)])
    await send(producer, s, "cal.done", [good_cal, wrong_sha, b"\x00not an envelope"])
    await send(producer, s, "tlm.eng.recorded", [eng_batch(dictionary, 0x101, n=40),
                                                 eng_batch(dictionary, 0x102, n=40)])
    await drain(ArchiveSink(s))
    before = snapshot(s)
    products, samples, per_name = counts(s)
    # two L0 files, uncal + rate + cal of one exposure; the bad CalDone adds nothing
    assert products == 5 and set(per_name.values()) == {1}
    n_params = len(dictionary.by_apid()[0x101]) + len(dictionary.by_apid()[0x102])
    assert samples == 40 * n_params
    letters = [DeadLetter.from_body({k: v for k, v in body.items() if k not in ("schema", "v")})
               for _, body in await read_all(s, "tlm.deadletter") if isinstance(body, dict)]
    reasons = sorted(letter.reason.split(":")[0] for letter in letters)
    assert reasons == ["EnvelopeError", "ValidationError"], reasons
    assert all(letter.source_topic == "cal.done" for letter in letters)

    await drain(ReplaySink(s))
    assert snapshot(s) == before


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test only (it is stopped and restarted on purpose)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = Path(tempfile.mkdtemp(prefix="downlink-pg-outage-"))
    state.chmod(0o755)
    yield state, port
    shutil.rmtree(state, ignore_errors=True)


async def test_postgres_restart_during_ingest_loses_and_duplicates_nothing(settings, topics, producer_factory,
                                                                          own_postgres):
    state, port = own_postgres
    server = PostgresServer(settings.replace(state_dir=state, stack_postgres_port=port))
    await server.start()
    try:
        s = catalogue_settings(settings.replace(kafka_retry_backoff_seconds=0.2,
                                                kafka_retry_backoff_max_seconds=1.0),
                               "postgres", server.url())
        data = Path(s.data_dir)
        dictionary = load_dictionary(s.dictionary_file)
        producer = await producer_factory()
        first = [eng_batch(dictionary, 0x101, n=20, t0=2_100_000_000 + 100 * i, seq0=20 * i) for i in range(5)]
        await send(producer, s, "tlm.eng.recorded", first)
        await send(producer, s, "l0.ready", [l0_ready(data)])
        sink = ArchiveSink(s)
        await sink.start()
        task = asyncio.create_task(sink.run())
        try:
            for _ in range(200):
                if counts(s)[1] > 0:
                    break
                await asyncio.sleep(0.1)
            await server.stop("immediate")  # like a crash: no checkpoint, WAL recovery at start
            later = [eng_batch(dictionary, 0x101, n=20, t0=2_100_000_000 + 100 * i, seq0=20 * i)
                     for i in range(5, 10)]
            await send(producer, s, "tlm.eng.recorded", later)
            await send(producer, s, "cal.done", [cal_done(data)])
            await asyncio.sleep(3.0)  # the sink fails, backs off and retries meanwhile
            assert not task.done()
            await server.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            n_params = len(dictionary.by_apid()[0x101])
            while loop.time() < deadline:
                products, samples, per_name = counts(s)
                if samples == 10 * 20 * n_params and products == 4:
                    break
                await asyncio.sleep(0.25)
            assert samples == 10 * 20 * n_params
            assert products == 4 and set(per_name.values()) == {1}
            assert not task.done()
        finally:
            await sink.request_stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sink.stop()
    finally:
        await server.stop()


async def test_bad_engineering_batches_are_rejected_alone(archive_settings):
    """An unknown APID or a broken index rejects that batch only; the good one is stored."""
    import datetime as dt

    from consumers.archive.catalogue import Catalogue
    from streams.messages import EngBatch

    s = archive_settings
    catalogue = Catalogue(s, load_dictionary(s.dictionary_file))
    good = eng_batch(catalogue.dictionary, 0x101, n=10)
    unknown = EngBatch(**{**good.__dict__, "apid": 0x1FE})
    broken = EngBatch(**{**good.__dict__, "index": b"garbage"})
    engine = db.async_engine(s)
    try:
        async with db.sessionmaker(engine)() as session:
            result = await catalogue.apply(session, [(m, dt.datetime(2026, 6, 1)) for m in (unknown, good, broken)])
    finally:
        await engine.dispose()
    assert sorted(r.index for r in result.rejected) == [0, 2]
    assert "0x1fe" in result.rejected[0].reason and "PacketIndex" in result.rejected[1].reason
    assert counts(s)[1] == 10 * len(catalogue.dictionary.by_apid()[0x101])
