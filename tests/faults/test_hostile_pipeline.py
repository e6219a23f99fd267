"""Bad data through the whole raw -> L0 path on the real broker: nothing stops, nothing wrong is written.

* A contact with hostile packets of every class (``--faults hostile=P``:
  valid headers, bad fields) -> ``downlink run --until-idle`` exits 0; the
  valid exposures are byte-exact; no exposure is complete with bytes other
  than the transmitted ones; every rejected packet is in ``tlm.deadletter``
  with a reason; a conflict leaves its exposure incomplete; ``ops.alerts``
  stays bounded by the number of faults, not of packets.
* Bad records produced straight onto ``tlm.sci`` (wrong envelope version,
  missing fields, tombstones, garbage, another schema) and raw records
  without an ``offset`` header or with non-UTF-8 headers onto
  ``downlink.raw`` are dead-lettered with their source topic, partition and
  offset, and the services go on to process the contact behind them.
* SIGKILL of demux and l0 at random points of a hostile contact: dead
  letters and announcements still exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from consumers.framework.runner import run_services
from products.l0 import exposure_of_manifest, iter_manifests
from streams import envelope
from streams.kafka import make_producer
from tests.faults.helpers import check_l0_outputs, manifest_of
from tests.integration.helpers import cli, fast, ingest, read_all, simulate, spawn

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTILE = "hostile=0.003,drop=0.002,dup=0.002"


def _hostile(truth: dict) -> list[dict]:
    return [f for f in truth["faults"] if f["type"] == "hostile"]


def _conflicted(truth: dict) -> set[str]:
    return {f["exposure_id"] for f in _hostile(truth) if f["expected"] == "conflict"}


async def _check_hostile_outcomes(settings, truth: dict, contact: str) -> None:
    conflicted = _conflicted(truth)
    await check_l0_outputs(settings, truth, skip=conflicted)
    by_id = {e["exposure_id"]: e for e in truth["exposures"]}
    # no exposure complete with other bytes: a complete manifest is a truth exposure with its sha256
    for path in iter_manifests(settings.data_dir):
        m = json.loads(path.read_text())
        exposure_id = exposure_of_manifest(path)
        if m["complete"]:
            assert exposure_id in by_id, f"{exposure_id} (not transmitted as such) is marked complete"
            assert exposure_id not in conflicted, f"{exposure_id} has a conflict but is marked complete"
            assert m["sha256"] == by_id[exposure_id]["l0_sha256"], f"{exposure_id} complete with other bytes"
    for exposure_id in conflicted:
        m = manifest_of(settings, exposure_id)
        assert m is not None and not m["complete"], f"conflicted {exposure_id} must be flagged, not complete"
    # every rejected hostile packet is dead-lettered (its bytes, its offset, a reason)
    letters = [m for _, m in await read_all(settings, "tlm.deadletter")]
    mine = [d for d in letters if d.get("contact") == contact and d.get("stream_offset") is not None]
    for f in _hostile(truth):
        if f["expected"] != "deadletter":
            continue
        hits = [d for d in mine if d["stream_offset"] <= f["stream_offset"]
                < d["stream_offset"] + max(1, d.get("length") or len(d["data"]))]
        assert hits, f"hostile {f['class']} at {f['stream_offset']} not in tlm.deadletter"
        assert all(d["reason"] for d in hits)
    spots = Counter((d["stream_offset"], d["reason"]) for d in mine)
    assert max(spots.values(), default=1) == 1, "a rejected item was dead-lettered twice"
    # alerts: coalesced, bounded by the faults (not the packets); a conflict is alerted
    alerts = [m for _, m in await read_all(settings, "ops.alerts")]
    n_faults = len(truth["faults"])
    assert len(alerts) <= 4 * n_faults + 20, f"{len(alerts)} alerts for {n_faults} faults"
    for exposure_id in conflicted:
        assert any("conflict" in a["type"] and a.get("exposure_id") == exposure_id for a in alerts), \
            f"no conflict alert for {exposure_id}"
    # an isolated sequence outlier opens no phantom gap
    report = json.loads(cli(settings, "report", contact, "--json").stdout)
    got = {f"{s['apid']}/{s['source']}": s for s in report["streams"].values()}
    for key, want in truth["accounting"][contact].items():
        assert got[key]["gaps"] == want["gaps"], f"{key}: gaps {got[key]['gaps']} != truth {want['gaps']}"


async def test_hostile_packets_of_every_class_in_a_contact(settings, topics, tmp_path: Path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=61, contact="HOST1", exposures=24, faults=HOSTILE)
    assert {f["class"] for f in _hostile(truth)} >= {"tag_program", "zero_subarray", "huge_geometry",
                                                    "pixel_offset", "integration_range", "conflict",
                                                    "seq_outlier", "pixel_count"}
    ingest(settings, tmp_path / "HOST1.bin", "HOST1")
    result = cli(settings, "run", "--only", "demux,l0", "--until-idle", check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    await _check_hostile_outcomes(settings, truth, "HOST1")


async def _produce(settings, topic: str, records: list[dict]) -> list[tuple[int, int]]:
    producer = make_producer(settings)
    await producer.start()
    try:
        where = []
        for r in records:
            meta = await producer.send_and_wait(settings.topic(topic), r.get("value"), key=r.get("key"),
                                                headers=r.get("headers"))
            where.append((meta.partition, meta.offset))
        return where
    finally:
        await producer.stop()


def _bad_sci() -> list[dict]:
    run = {"contact": "X", "exposure_id": "jw01234001001_01101_00001_nrca1", "packets": b"", "index": b""}
    return [
        {"key": b"bad-version", "value": msgpack.packb({"v": 99, "schema": "tlm.sci.run", **run})},
        {"key": b"missing-fields", "value": envelope.encode("tlm.sci.run", {"contact": "X"})},
        {"key": b"tombstone", "value": None},
        {"key": b"garbage", "value": b"\xc1\xff not msgpack at all"},
        {"key": b"not-a-map", "value": msgpack.packb([1, 2, 3])},
        {"key": b"other-schema", "value": envelope.encode("ops.alert", {"contact": "X", "type": "gap",
                                                                          "severity": "info", "time": 0.0})},
        {"key": b"wrong-types", "value": envelope.encode("tlm.sci.run", {**run, "packets": 42})},
    ]


def _bad_raw() -> list[dict]:
    return [
        {"key": b"BADRAW1", "value": b"\x08\x01" * 64, "headers": [("contact", b"BADRAW1")]},  # no offset
        {"key": b"BADRAW2", "value": b"\x08\x01" * 64,
         "headers": [("contact", b"\xff\xfe"), ("offset", b"0")]},  # non-UTF-8 header
        {"key": b"BADRAW3", "value": b"\x08\x01" * 64,
         "headers": [("contact", b"BADRAW3"), ("offset", b"not-a-number")]},
        {"key": b"BADRAW4", "value": None, "headers": [("contact", b"BADRAW4"), ("offset", b"0")]},
    ]


async def test_bad_records_on_input_topics_are_dead_lettered_and_the_services_go_on(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=62, contact="ENV1", exposures=8)
    sci = await _produce(settings, "tlm.sci", _bad_sci())
    raw = await _produce(settings, "downlink.raw", _bad_raw())
    ingest(settings, tmp_path / "ENV1.bin", "ENV1")  # behind the bad records in their partitions
    result = cli(settings, "run", "--only", "demux,l0", "--until-idle", check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    letters = [m for _, m in await read_all(settings, "tlm.deadletter")]
    for topic, where in (("tlm.sci", sci), ("downlink.raw", raw)):
        for partition, offset in where:
            hits = [d for d in letters if d.get("source_topic") == topic and d.get("partition") == partition
                    and d.get("offset") == offset]
            assert len(hits) == 1, f"{topic}[{partition}]@{offset}: {len(hits)} dead letters"
            assert hits[0]["reason"]
    await check_l0_outputs(settings, truth)


async def test_sigkill_at_random_points_of_a_hostile_contact(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=63, contact="HKILL1", size="20MB", faults=HOSTILE,
                     max_subarray=512)
    rng = random.Random(6363)
    logs = tmp_path / "logs"
    logs.mkdir()
    feeder = spawn(settings, "ingest", str(tmp_path / "HKILL1.bin"), "--contact", "HKILL1",
                   "--rate", "32Mbps", log=logs / "ingest.log")
    procs = {name: spawn(settings, "consumer", name, "--instance", "kill", log=logs / f"{name}.log")
             for name in ("demux", "l0")}
    kills = 0
    try:
        deadline = time.monotonic() + 60
        while (feeder.poll() is None or kills < 4) and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.8, 2.0))
            name = rng.choice(sorted(procs))
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait(timeout=10)
            kills += 1
            procs[name] = spawn(settings, "consumer", name, "--instance", "kill", log=logs / f"{name}.log")
        assert feeder.wait(timeout=120) == 0
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    assert kills >= 4
    # finish what is left in one process (same transactional ids); bounded, never a hang
    assert await asyncio.wait_for(run_services(settings, ["demux", "l0"], until_idle=True,
                                               instance="kill"), 240) == 0
    await _check_hostile_outcomes(settings, truth, "HKILL1")
