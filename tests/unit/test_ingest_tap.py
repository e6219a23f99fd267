"""Ingest's real-time tap and demux together publish every real-time packet exactly once.

``publish`` runs against a recording producer (no broker) on a feed that
arrives in irregular pieces; its raw records then go through demux's router.
Every valid real-time engineering packet must be on ``tlm.eng.realtime``
once: from the tap if the chunk that carries it declares it covered, else
from demux — also across an ingest restart in the middle of the contact.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import numpy as np
import pytest
from aiokafka import TopicPartition

from consumers.demux.routing import Router
from consumers.framework.service import Record
from consumers.ingest.publish import publish
from consumers.ingest.resume import ResumePoint
from streams.decoder import PacketIndex, decode_all
from streams.dictionary import load_dictionary
from streams.messages import EngBatch
from streams.simulator import FaultSpec, SimOptions, simulate
from streams.validation import Limits, validate

ENG = load_dictionary().packet_lengths()
RAW = TopicPartition("t.downlink.raw", 0)


class Recorder:
    """A producer that keeps what is sent, in order, with its acknowledgement already done."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list]] = []

    async def send(self, topic, value, key=None, partition=None, headers=None):
        self.sent.append((topic, value, list(headers or [])))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class Pieces:
    """A TCP feed: the stream in irregular pieces, from ``start`` on."""

    def __init__(self, data: bytes, start: int, seed: int) -> None:
        self.data, self.pos, self.rng, self.size = data, start, random.Random(seed), None

    async def read_some(self, n: int) -> bytes:
        k = min(n, self.rng.randint(1, 5000), len(self.data) - self.pos)
        out = self.data[self.pos:self.pos + k]
        self.pos += k
        return out

    async def read(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    async def skip_to(self, offset: int) -> int:
        self.pos = max(self.pos, offset)
        return self.pos


@pytest.fixture(scope="module")
def lossy(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("lossy")
    simulate(SimOptions(seed=32, exposures=6, contact="TP", max_subarray=128,
                        faults=FaultSpec.parse("drop=0.05,dup=0.01,hostile=0.005")), tmp / "TP.bin")
    return (tmp / "TP.bin").read_bytes()


@pytest.fixture(scope="module")
def contact(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("tap")
    simulate(SimOptions(seed=31, exposures=4, contact="TP", max_subarray=128,
                        faults=FaultSpec.parse("drop=0.01,dup=0.005,garbage=0.003,hostile=0.005")),
             tmp / "TP.bin", tmp / "TP.json")
    return (tmp / "TP.bin").read_bytes()


def expected(data: bytes) -> Counter:
    """Stream offsets of every valid real-time engineering packet of the contact."""
    decoded = decode_all(data, ENG)
    pk = decoded.packets
    ok = (validate(decoded, Limits(eng_lengths=ENG)) == 0) & (pk.kind == 1) & (pk.source == 0)
    return Counter(pk.stream_offset[ok].tolist())


def offsets(values: list[bytes]) -> Counter:
    got: Counter = Counter()
    for v in values:
        got.update(PacketIndex.from_bytes(EngBatch.decode(v).index).stream_offset.tolist())
    return got


async def run_ingest(settings, data: bytes, resume: ResumePoint, seed: int,
                     max_chunks: int | None = None) -> Recorder:
    rec = Recorder()
    await publish(settings, rec, RAW, "TP", Pieces(data, resume.offset, seed), resume,
                  live=True, max_chunks=max_chunks)
    return rec


def demux_out(records: list[tuple[str, bytes, list]], topic: str = "tlm.eng.realtime") -> list[bytes]:
    """What demux's router produces on ``topic`` for the raw records (both lanes, batch end too)."""
    router = Router(ENG, sci_partitions=2, max_message_bytes=16 << 20, limits=Limits(eng_lengths=ENG))
    out = []
    for n, (_, value, headers) in enumerate(records):
        h = {k: v.decode() for k, v in headers}
        e = router.record(Record("downlink.raw", RAW, n, b"TP", value, h, 0))
        out += [o.value.encode() for o in e.fast + e.bulk if o.topic == topic]
    end = router.end_batch()
    return out + [o.value.encode() for o in end.fast + end.bulk if o.topic == topic]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_tap_and_demux_publish_each_real_time_packet_once(settings, contact, seed):
    settings = settings.replace(ingest_chunk_bytes=64 << 10, ingest_tap_read_bytes=3000)
    rec = await run_ingest(settings, contact, ResumePoint(), seed)
    tapped = [v for t, v, _ in rec.sent if t.endswith("tlm.eng.realtime")]
    raw = [r for r in rec.sent if r[0] == RAW.topic]
    assert tapped, "the tap published nothing"
    got = offsets(tapped) + offsets(demux_out(raw))
    assert got == expected(contact)
    # nearly everything comes from the tap (demux only covers what the tap could not decide)
    assert sum(offsets(tapped).values()) >= 0.95 * sum(expected(contact).values())


async def test_an_ingest_restart_inside_a_real_time_packet_loses_nothing(settings, contact):
    """The first run stops with a real-time packet cut in two: the second run's tap cannot decode
    it (it starts mid-packet), so demux must publish it; nothing may be lost."""
    pk = decode_all(contact, ENG).packets
    rt = np.flatnonzero((pk.kind == 1) & (pk.source == 0))
    cut_packet = int(rt[len(rt) // 2])
    start, length = int(pk.stream_offset[cut_packet]), int(pk.length[cut_packet])
    chunks = 4
    chunk = -(-(start + 1) // chunks)  # 4 chunks end inside that packet
    assert start < chunks * chunk < start + length
    settings = settings.replace(ingest_chunk_bytes=chunk, ingest_tap_read_bytes=3000)
    first = await run_ingest(settings, contact, ResumePoint(), 7, max_chunks=chunks)
    raw1 = [r for r in first.sent if r[0] == RAW.topic]
    resume = ResumePoint(offset=chunks * chunk, chunk_seq=chunks)
    second = await run_ingest(settings, contact, resume, 8)
    raw = raw1 + [r for r in second.sent if r[0] == RAW.topic]
    tapped = [v for rec in (first, second) for t, v, _ in rec.sent if t.endswith("tlm.eng.realtime")]
    assert start not in offsets(tapped)
    from_demux = offsets(demux_out(raw))
    assert from_demux[start] == 1, "the packet cut by the restart was not published by demux"
    assert offsets(tapped) + from_demux == expected(contact)


async def test_without_the_tap_demux_publishes_everything(settings, contact):
    settings = settings.replace(ingest_chunk_bytes=64 << 10, ingest_realtime_tap=False)
    rec = await run_ingest(settings, contact, ResumePoint(), 4)
    assert not [t for t, _, _ in rec.sent if t.endswith("tlm.eng.realtime")]
    raw = [r for r in rec.sent if r[0] == RAW.topic]
    assert offsets(demux_out(raw)) == expected(contact)


def gap_ranges(values: list[bytes]) -> set[tuple]:
    """(APID, source, first count, count) of every gap range in ops.alerts messages."""
    from streams.messages import OpsAlert

    out = set()
    for v in values:
        a = OpsAlert.decode(v)
        if a.type == "gap":
            out |= {(a.apid, a.source, int(f), int(n)) for f, n in a.ranges}
    return out


def demux_gap_ranges(records: list[tuple[str, bytes, list]]) -> set[tuple]:
    return gap_ranges(demux_out(records, "ops.alerts"))


async def test_the_tap_reports_every_gap_demux_reports_and_no_other(settings, lossy):
    """Same accounting rule, same packets: the operator's gap alerts (identified by what they
    report) are the same whether the tap's or demux's arrive first."""
    settings = settings.replace(ingest_chunk_bytes=64 << 10, ingest_tap_read_bytes=3000)
    rec = await run_ingest(settings, lossy, ResumePoint(), 5)
    tap = gap_ranges([v for t, v, _ in rec.sent if t.endswith("ops.alerts")])
    raw = [r for r in rec.sent if r[0] == RAW.topic]
    demux = demux_gap_ranges(raw)
    assert len(demux) >= 5 and tap == demux


async def test_after_an_ingest_restart_the_tap_invents_no_gap(settings, lossy):
    settings = settings.replace(ingest_chunk_bytes=64 << 10, ingest_tap_read_bytes=3000)
    first = await run_ingest(settings, lossy, ResumePoint(), 7, max_chunks=3)
    raw1 = [r for r in first.sent if r[0] == RAW.topic]
    resume = ResumePoint(offset=sum(len(v) for _, v, _ in raw1), chunk_seq=len(raw1))
    second = await run_ingest(settings, lossy, resume, 8)
    tap = gap_ranges([v for r in (first, second) for t, v, _ in r.sent if t.endswith("ops.alerts")])
    assert tap and tap <= demux_gap_ranges(raw1 + [r for r in second.sent if r[0] == RAW.topic])
