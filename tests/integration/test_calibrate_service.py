"""The calibrate service on the real broker: lanes, ordering, commits, dead letters, L3."""

from __future__ import annotations

import shutil
import time

import pytest
from aiokafka import TopicPartition

from consumers.framework.runner import run_services
from products.refs.store import RefStore
from streams.kafka import make_consumer, make_producer, start_client
from streams.messages import CalDone, CalRequest
from tests.integration.helpers import fast, read_all
from tests.unit.calibrate_fixtures import make_meta, render, write_exposure

pytestmark = pytest.mark.integration


async def _send(settings, requests: list[CalRequest]) -> None:
    producer = make_producer(settings)
    await start_client(settings, producer)
    try:
        for r in requests:   # one partition: Kafka's order is the submission order
            await producer.send_and_wait(settings.topic("cal.requests"), r.encode(),
                                         key=r.exposure_id.encode(), partition=0)
    finally:
        await producer.stop()


async def _committed(settings) -> int | None:
    consumer = make_consumer(settings, group=settings.group("calibrate"))
    await start_client(settings, consumer)
    try:
        return await consumer.committed(TopicPartition(settings.topic("cal.requests"), 0))
    finally:
        await consumer.stop()


async def test_too_behind_a_bulk_backlog_finishes_first(settings, topics, tmp_path):
    settings = fast(settings).replace(calibrate_workers=1, calibrate_block_rows=8)
    RefStore(settings.data_dir / "refs").make(["NRCA1"])
    bulk_meta = make_meta(size=(160, 128), ngroups=10, program=1111)
    sci, _ = render(bulk_meta, seed=1)
    (tmp_path / "src").mkdir()
    bulk_file = write_exposure(tmp_path / "src", bulk_meta, sci)
    too_meta = make_meta(size=(64, 48), ngroups=5, program=2222, exposure=7)
    sci, _ = render(too_meta, seed=2)
    too_file = write_exposure(tmp_path, too_meta, sci)
    now = time.time()
    bulk = []
    for k in range(1, 9):      # eight exposures of one visit, all behind in the same partition
        eid = f"jw01111001001_03101_{k:05d}_nrca1"
        path = tmp_path / f"{eid}_uncal.fits"
        shutil.copy(bulk_file, path)
        bulk.append(CalRequest(exposure_id=eid, uncal_path=str(path), priority="normal",
                               program=1111, l0_received_at=now - 60))
    bad = CalRequest(exposure_id="jw01111001001_03101_00099_nrca1", priority="normal", program=1111,
                     uncal_path=str(tmp_path / "gone_uncal.fits"))
    too = CalRequest(exposure_id=too_meta.exposure_id, uncal_path=str(too_file), priority="too",
                     program=2222, l0_received_at=now - 5)
    await _send(settings, bulk[:4] + [bad] + bulk[4:] + [too])

    assert await run_services(settings, ["calibrate"], until_idle=True) == 0

    # cal.done is keyed by exposure (several partitions): order by when the work finished
    done = sorted((m for _, m in await read_all(settings, "cal.done")), key=lambda d: d["finished_at"])
    exposures = [d["exposure_id"] for d in done if d.get("kind", "exposure") == "exposure"]
    # the ToO was submitted last, behind eight bulk exposures, and finished first or second
    # (at most the bulk exposure already running when it arrived is ahead of it)
    assert exposures.index(too.exposure_id) <= 1, exposures
    assert [e for e in exposures if e != too.exposure_id] == [r.exposure_id for r in bulk], exposures
    by_id = {d["exposure_id"]: d for d in done if d.get("kind", "exposure") == "exposure"}
    for d in by_id.values():
        assert {p["suffix"] for p in d["products"]} == {"rate", "rateints", "cal"}
        assert d["context"] == "downlink_0001"
    assert by_id[too.exposure_id]["priority"] == "too"
    # one L3 per visit and detector, once the visit's exposures were all done
    visits = [CalDone.from_body({k: v for k, v in d.items() if k not in ("schema", "v")})
              for d in done if d.get("kind") == "visit"]
    assert {len(v.members) for v in visits} == {8, 1}
    bulk_l3 = next(v for v in visits if len(v.members) == 8)
    assert done.index(next(d for d in done if d.get("members") == bulk_l3.members)) > \
        max(done.index(by_id[r.exposure_id]) for r in bulk)
    # the missing file became a dead letter with its reason, and was committed past
    letters = [m for _, m in await read_all(settings, "tlm.deadletter")]
    assert any("gone_uncal.fits" in letter["reason"] and letter["service"] == "calibrate"
               for letter in letters)
    assert await _committed(settings) == 10
    # a replay finds the products on disk and reuses them (no second computation)
    await _send(settings, [bulk[0]])
    assert await run_services(settings, ["calibrate"], until_idle=True) == 0
    again = sorted((m for _, m in await read_all(settings, "cal.done")), key=lambda d: d["finished_at"])
    assert len(again) == len(done) + 2          # the exposure, and its visit's L3 again
    replay = next(d for d in again[len(done):] if d.get("kind") == "exposure")
    assert replay["exposure_id"] == bulk[0].exposure_id
    assert replay["products"] == by_id[bulk[0].exposure_id]["products"]
    assert await _committed(settings) == 11
