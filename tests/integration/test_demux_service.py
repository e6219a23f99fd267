"""Demux on the real broker: hostile packets, poison records, 8 MiB chunks, reopened contacts."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from aiokafka import TopicPartition

from consumers.framework.runner import run_services
from consumers.ingest.resume import partition_for
from streams.decoder import PacketIndex, decode_all
from streams.dictionary import load_dictionary
from streams.kafka import make_consumer, start_client, topic_partitions
from streams.packets import encode_eng
from tests.integration.helpers import cli, fast, ingest, read_all, simulate

pytestmark = pytest.mark.integration
MiB = 1 << 20


async def _demux(settings) -> None:
    assert await run_services(settings, ["demux"], until_idle=True) == 0


def _routed(messages) -> Counter:
    """Stream offsets of every packet on the telemetry topics."""
    seen: Counter = Counter()
    for _, m in messages:
        if m["schema"] in ("tlm.sci.run", "tlm.eng.batch"):
            seen.update(PacketIndex.from_bytes(m["index"]).stream_offset.tolist())
    return seen


async def _committed(settings, group: str, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings, group=settings.group(group))
    await start_client(settings, consumer)
    try:
        tps = [TopicPartition(settings.topic(topic), p)
               for p in await topic_partitions(settings, settings.topic(topic))]
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def test_hostile_packets_are_dead_lettered_with_reasons_and_never_routed(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=31, contact="HOST1", exposures=10, faults="hostile=0.01")
    ingest(settings, tmp_path / "HOST1.bin", "HOST1")
    await _demux(settings)
    data = (tmp_path / "HOST1.bin").read_bytes()
    letters = {m["stream_offset"]: m for _, m in await read_all(settings, "tlm.deadletter")}
    routed = _routed(await read_all(settings, "tlm.sci") + await read_all(settings, "tlm.eng.recorded")
                     + await read_all(settings, "tlm.eng.realtime"))
    demux_classes = {"tag_program", "tag_field", "exposure_zero", "zero_subarray", "huge_geometry",
                     "subarray_outside", "pixel_offset"}
    classes = set()
    for f in truth["faults"]:
        if f["type"] == "hostile" and f["class"] in demux_classes:
            so = f["stream_offset"]
            d = letters[so]
            assert d["reason"].startswith("invalid packet: ") and d["contact"] == "HOST1"
            assert d["apid"] == f["apid"] and d["data"] == data[so:so + f["length"]]
            assert so not in routed
            classes.add(f["class"])
        if f["type"] == "hostile" and f["class"] in ("pixel_count", "detector_mismatch"):
            assert any(m["stream_offset"] <= f["stream_offset"] < m["stream_offset"] + m["length"]
                       for m in letters.values()), f  # skipped by the decoder, dead-lettered too
    assert classes == demux_classes
    assert max(routed.values()) == 1
    # accounting as the truth says (the outlier is one anomaly, outside the counts)
    report = json.loads(cli(settings, "report", "HOST1", "--json").stdout)
    got = {f"{s['apid']}/{s['source']}": {k: s[k] for k in ("packets", "gaps", "duplicates", "out_of_order")}
           for s in report["streams"].values()}
    assert got == truth["accounting"]["HOST1"]
    assert report["outliers"] == sum(f.get("class") == "seq_outlier" for f in truth["faults"]) >= 1
    assert report["rejected"] == sum(1 for d in letters.values() if d["reason"].startswith("invalid packet"))
    # alerts bounded and with ranges; no gap alert for a contact without gaps
    alerts = [m for _, m in await read_all(settings, "ops.alerts")]
    assert not [a for a in alerts if a["type"] == "gap"]
    assert len(alerts) < 60 and all(a["ranges"] for a in alerts if a["type"] not in ("contact_end",))
    assert [a["type"] for a in alerts].count("contact_end") == 1


async def test_poison_raw_records_are_dead_lettered_committed_past_and_demux_goes_on(
        settings, topics, tmp_path, producer_factory):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=32, contact="POIS1", exposures=3)
    raw = settings.topic("downlink.raw")
    parts = await topic_partitions(settings, raw)
    p = partition_for("POIS1", parts)
    producer = await producer_factory()
    bad = [
        (b"no offset", [("contact", b"POISX")]),
        (b"latin-1 header", [("contact", "P\xe9".encode("latin-1")), ("offset", b"0")]),
        (b"bad id", [("contact", b"has space"), ("offset", b"0")]),
    ]
    for value, headers in bad:
        await producer.send_and_wait(raw, value, key=b"POISX", partition=p, headers=headers)
    ingest(settings, tmp_path / "POIS1.bin", "POIS1")
    await _demux(settings)
    letters = [m for _, m in await read_all(settings, "tlm.deadletter")]
    assert len(letters) == 3
    assert {(d["source_topic"], d["partition"]) for d in letters} == {("downlink.raw", p)}
    assert sorted(d["offset"] for d in letters) == [0, 1, 2]
    assert all(d["reason"] for d in letters)
    assert {bytes(d["data"]) for d in letters} == {v for v, _ in bad}
    report = json.loads(cli(settings, "report", "POIS1", "--json").stdout)
    assert report["ended"] and report["bytes"] == truth["contacts"][0]["bytes"]
    ends = {tp.partition: off for tp, off in (await _end_offsets(settings, raw)).items()}
    assert (await _committed(settings, "demux", "downlink.raw"))[p] == ends[p]


async def _end_offsets(settings, physical: str):
    consumer = make_consumer(settings, group=None)
    await start_client(settings, consumer)
    try:
        tps = [TopicPartition(physical, q) for q in await topic_partitions(settings, physical)]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def test_an_8_mib_chunk_of_small_packets_stays_under_the_message_limit(settings, topics, tmp_path):
    settings = fast(settings).replace(ingest_chunk_bytes=8 * MiB)
    eng = load_dictionary().packet_lengths()
    apid = min(eng, key=eng.get)
    n = (8 * MiB) // eng[apid]
    template = np.frombuffer(encode_eng(apid, 0, 1, 100, 0, bytes(eng[apid] - 14)), dtype=np.uint8)
    arr = np.tile(template, n).reshape(n, -1).copy()
    word1 = (3 << 14) | (np.arange(n) % 16384)
    arr[:, 2], arr[:, 3] = word1 >> 8, word1 & 0xFF
    (tmp_path / "BIG1.bin").write_bytes(arr.tobytes())
    ingest(settings, tmp_path / "BIG1.bin", "BIG1")
    await _demux(settings)
    batches = await read_all(settings, "tlm.eng.recorded")
    assert sum(len(PacketIndex.from_bytes(m["index"])) for _, m in batches) == n
    consumer = make_consumer(settings, group=None)
    await start_client(settings, consumer)
    try:
        largest = 0
        for topic in ("tlm.eng.recorded", "demux.state", "ops.alerts"):
            physical = settings.topic(topic)
            tps = [TopicPartition(physical, q) for q in await topic_partitions(settings, physical)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for recs in (await consumer.getmany(timeout_ms=1000)).values():
                    largest = max([largest] + [len(r.value or b"") for r in recs])
    finally:
        await consumer.stop()
    assert 0 < largest <= settings.kafka.max_message_bytes
    assert len(batches) >= 2


async def test_a_new_stream_under_an_ended_contact_is_processed_as_a_new_pass(
        settings, topics, tmp_path, producer_factory):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=33, contact="PASS1", exposures=3)
    ingest(settings, tmp_path / "PASS1.bin", "PASS1")
    await _demux(settings)
    # the same id again, from byte 0 (ingest would refuse: publish it as a station would)
    data = (tmp_path / "PASS1.bin").read_bytes()
    raw = settings.topic("downlink.raw")
    p = partition_for("PASS1", await topic_partitions(settings, raw))
    producer = await producer_factory()
    chunk = 1 << 20
    for a in range(0, len(data), chunk):
        await producer.send_and_wait(raw, data[a:a + chunk], key=b"PASS1", partition=p,
                                     headers=[("contact", b"PASS1"), ("offset", str(a).encode())])
    await producer.send_and_wait(raw, b"", key=b"PASS1", partition=p, headers=[
        ("contact", b"PASS1"), ("offset", str(len(data)).encode()), ("eoc", b"1")])
    await _demux(settings)
    alerts = [m for _, m in await read_all(settings, "ops.alerts")]
    assert [(a["contact"], a["severity"]) for a in alerts if a["type"] == "contact_reopened"] == \
        [("PASS1#2", "warning")]
    sci = [m for _, m in await read_all(settings, "tlm.sci")]
    assert {m["contact"] for m in sci if m["schema"] == "tlm.sci.eoc"} == {"PASS1", "PASS1#2"}
    second = json.loads(cli(settings, "report", "PASS1#2", "--json").stdout)
    first = json.loads(cli(settings, "report", "PASS1", "--json").stdout)
    assert second["ended"] and second["packets"] == first["packets"] == truth["contacts"][0]["packets"]
    assert first["passes"] == ["PASS1", "PASS1#2"]
    decoded = decode_all(data, load_dictionary().packet_lengths())
    assert sum(1 for m in sci if m["schema"] == "tlm.sci.run" and m["contact"] == "PASS1#2") > 0
    assert len(decoded.packets) == first["packets"]
