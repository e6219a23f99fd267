"""Demux routing without servers (consumers/demux/routing.py): what each raw record produces.

Records are fed to the pure Router as the service would after decoding them
from ``downlink.raw``; outputs are checked against the simulator's truth.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from aiokafka import TopicPartition

from consumers.demux.accounting import Rules
from consumers.demux.routing import Emitted, Router
from consumers.framework.service import Output, Record
from streams.decoder import PacketIndex, decode_all
from streams.dictionary import load_dictionary
from streams.messages import DeadLetter, DemuxState, EngBatch, OpsAlert, SciEoc, SciRun
from streams.packets import Kind, encode_eng
from streams.simulator import FaultSpec, SimOptions, simulate
from streams.validation import Limits

ENG = load_dictionary().packet_lengths()
MiB = 1 << 20
TP = TopicPartition("t.downlink.raw", 0)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def router(clock: Clock | None = None, **kw) -> Router:
    args = dict(sci_partitions=3, max_message_bytes=16 * MiB, limits=Limits(eng_lengths=ENG),
                alert_window=1.0, clock=clock or Clock(), wall=lambda: 1e9)
    args.update(kw)
    return Router(ENG, **args)


def raw_records(contact: str, data: bytes, chunk: int, *, eoc: bool = True, first: int = 0,
                key: bytes | None = None) -> list[Record]:
    recs = []
    for n, a in enumerate(range(0, len(data), chunk)):
        recs.append(Record("downlink.raw", TP, first + n, key or contact.encode(), data[a:a + chunk],
                           {"contact": contact, "chunk_seq": str(n), "offset": str(a)}, 0))
    if eoc:
        recs.append(Record("downlink.raw", TP, first + len(recs), key or contact.encode(), b"",
                           {"contact": contact, "offset": str(len(data)), "eoc": "1"}, 0))
    return recs


def feed(r: Router, records: list[Record], batch: int = 8) -> tuple[list[Emitted], Emitted]:
    """Per-record results and everything, with end_batch every ``batch`` records."""
    per, total = [], Emitted()
    for k, rec in enumerate(records):
        e = r.record(rec)
        per.append(e)
        total.extend(e)
        if (k + 1) % batch == 0 or k == len(records) - 1:
            total.extend(r.end_batch())
    return per, total


def of(outs: list[Output], topic: str) -> list:
    return [o.value for o in outs if o.topic == topic]


def all_outs(e: Emitted) -> list[Output]:
    return e.fast + e.bulk


def routed_packets(outs: list[Output]) -> list[tuple[int, bytes]]:
    """(stream offset, packet bytes) of every packet in eng/sci outputs."""
    got = []
    for o in outs:
        if isinstance(o.value, (EngBatch, SciRun)):
            idx = PacketIndex.from_bytes(o.value.index)
            for off, ln, so in zip(idx.offset.tolist(), idx.length.tolist(), idx.stream_offset.tolist()):
                got.append((so, o.value.packets[off:off + ln]))
    return sorted(got)


@pytest.fixture(scope="module")
def contact(tmp_path_factory) -> tuple[dict, bytes]:
    tmp = tmp_path_factory.mktemp("route")
    simulate(SimOptions(seed=21, exposures=6, contact="RC", max_subarray=128,
                        faults=FaultSpec.parse("drop=0.01,dup=0.005,garbage=0.003")),
             tmp / "RC.bin", tmp / "RC.json")
    return json.loads((tmp / "RC.json").read_text()), (tmp / "RC.bin").read_bytes()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[dict, bytes]:
    tmp = tmp_path_factory.mktemp("hostile")
    simulate(SimOptions(seed=22, exposures=8, contact="HC", max_subarray=128,
                        faults=FaultSpec.parse("hostile=0.01")), tmp / "HC.bin", tmp / "HC.json")
    return json.loads((tmp / "HC.json").read_text()), (tmp / "HC.bin").read_bytes()


def test_every_decoded_packet_is_routed_once_to_its_topic(contact):
    truth, data = contact
    _, out = feed(router(), raw_records("RC", data, 50_000))
    decoded = decode_all(data, ENG)
    want = sorted((int(so), decoded.packet(i)) for i, so in enumerate(decoded.packets.stream_offset.tolist()))
    outs = all_outs(out)
    assert routed_packets(outs) == want
    for o in outs:
        if isinstance(o.value, EngBatch):
            idx = PacketIndex.from_bytes(o.value.index)
            assert set(idx.source.tolist()) == {o.value.source}
            assert (o.topic == "tlm.eng.realtime") == (o.value.source == 0)
            assert set(idx.apid.tolist()) == {o.value.apid} and o.key == str(o.value.apid).encode()
        if isinstance(o.value, SciRun):
            idx = PacketIndex.from_bytes(o.value.index)
            assert o.key == o.value.exposure_id.encode() and set(idx.kind.tolist()) <= {2, 3, 4}
    # accounting in the snapshot equals the truth
    snap = of(outs, "demux.state")[-1]
    got = {k: {f: s[f] for f in ("packets", "duplicates", "out_of_order")}
           for k, s in Router.report_of(snap)["streams"].items()}
    assert got == {k: {f: v[f] for f in ("packets", "duplicates", "out_of_order")}
                   for k, v in truth["accounting"]["RC"].items()}


def test_real_time_engineering_goes_out_with_its_chunk_and_recorded_never_does(contact):
    _, data = contact
    per, out = feed(router(), raw_records("RC", data, 50_000), batch=1000)
    fast = [o for e in per for o in e.fast]
    assert {o.topic for o in fast} <= {"tlm.eng.realtime", "ops.alerts"}
    assert all(isinstance(o.value, EngBatch) and o.value.source == 0
               for o in fast if o.topic == "tlm.eng.realtime")
    assert not any(o.topic == "tlm.eng.realtime" for o in out.bulk)
    # real-time packets leave with the record that carried their last byte (or the next one,
    # when the decoder needed the following header to decide), never at the end of the batch
    chunk = 2000
    per, _ = feed(router(), raw_records("RC", data, chunk), batch=10_000)
    when = {so: k for k, e in enumerate(per) for so, _ in routed_packets(
        [o for o in e.fast if o.topic == "tlm.eng.realtime"])}
    decoded = decode_all(data, ENG)
    p = decoded.packets
    rt = np.flatnonzero((p.kind == Kind.ENG) & (p.source == 0))
    assert len(rt) >= 5 and set(when) == set(p.stream_offset[rt].tolist())
    for i in rt.tolist():
        last = (int(p.stream_offset[i]) + int(p.length[i]) - 1) // chunk
        assert when[int(p.stream_offset[i])] in (last, last + 1)
    # gap alerts too (a sequence gap shows in the record where it is seen)
    assert any(o.topic == "ops.alerts" and o.value.type == "gap" for e in per[:-1] for o in e.fast)


def test_end_of_contact_marks_every_sci_partition_once(contact):
    _, data = contact
    r = router()
    _, out = feed(r, raw_records("RC", data, 50_000, eoc=False))
    assert of(all_outs(out), "tlm.sci") and not any(isinstance(v, SciEoc) for v in of(all_outs(out), "tlm.sci"))
    eoc = Record("downlink.raw", TP, 500, b"RC", b"", {"contact": "RC", "offset": str(len(data)), "eoc": "1"}, 0)
    e = r.record(eoc)
    e.extend(r.end_batch())
    marks = [o for o in e.bulk if isinstance(o.value, SciEoc)]
    assert sorted(o.partition for o in marks) == [0, 1, 2]
    assert all(o.value.contact == "RC" and o.value.bytes == len(data) for o in marks)
    assert [a.type for a in of(e.bulk, "ops.alerts")][-1] == "contact_end"
    assert of(e.bulk, "demux.state")[0].account["ended"]
    # the same marker again closes nothing twice
    again = r.record(eoc)
    assert again.fast == again.bulk == []


def test_a_new_stream_under_an_ended_contact_is_a_new_pass(contact):
    _, data = contact
    r = router()
    _, first = feed(r, raw_records("RC", data, 50_000))
    _, second = feed(r, raw_records("RC", data, 50_000, first=1000))
    outs = all_outs(second)
    reopened = [a for a in of(outs, "ops.alerts") if a.type == "contact_reopened"]
    assert [(a.contact, a.severity) for a in reopened] == [("RC#2", "warning")]
    runs = [v for v in of(outs, "tlm.sci") if isinstance(v, SciRun)]
    assert runs and {v.contact for v in runs} == {"RC#2"}
    assert routed_packets(outs) == routed_packets(all_outs(first))
    assert {v.contact for v in of(outs, "tlm.sci") if isinstance(v, SciEoc)} == {"RC#2"}
    # after a restart (snapshots reloaded) the next stream is pass 3
    table = {s.contact: s for s in of(all_outs(first) + outs, "demux.state")}
    assert set(table) == {"RC", "RC#2"}
    r2 = router()
    r2.load(table)
    e = r2.record(raw_records("RC", data[:5000], 5000, eoc=False)[0])
    assert {a.contact for a in of(e.bulk, "ops.alerts") if a.type == "contact_reopened"} == {"RC#3"}


def test_poison_records_are_dead_lettered_with_their_source_and_demux_goes_on(contact):
    _, data = contact
    r = router()
    bad = [
        Record("downlink.raw", TP, 7, b"P1", b"abc", {"contact": "P1"}, 0),  # no offset
        Record("downlink.raw", TP, 8, b"P1", b"abc", {"contact": "P1", "offset": "x"}, 0),
        Record("downlink.raw", TP, 9, b"P#1", b"abc", {"contact": "P#1", "offset": "0"}, 0),
        Record("downlink.raw", TP, 10, None, b"abc", {"offset": "0"}, 0),
        Record("downlink.raw", TP, 11, b"P1", b"abc", {"contact": "P1", "offset": "0", "eoc": "1"}, 0),
        Record("downlink.raw", TP, 12, b"P1", b"abc", {"contact": "P1", "offset": "-5"}, 0),
    ]
    for rec in bad:
        e = r.record(rec)
        assert e.fast == [] and len(e.bulk) == 1
        letter = e.bulk[0].value
        assert isinstance(letter, DeadLetter) and e.bulk[0].topic == "tlm.deadletter"
        assert (letter.source_topic, letter.partition, letter.offset) == ("downlink.raw", 0, rec.offset)
        assert letter.reason.startswith("unusable raw record") and letter.data == b"abc"
    assert r.end_batch().bulk == []  # no contact state was created by poison
    _, out = feed(r, raw_records("RC", data, 100_000))
    assert routed_packets(all_outs(out))


def test_no_output_exceeds_the_message_limit_for_8_mib_of_small_packets():
    apid = min(ENG, key=ENG.get)
    n = (8 * MiB) // ENG[apid]
    template = np.frombuffer(encode_eng(apid, 0, 1, 100, 0, bytes(ENG[apid] - 14)), dtype=np.uint8)
    arr = np.tile(template, n).reshape(n, -1).copy()
    word1 = (3 << 14) | (np.arange(n) % 16384)
    arr[:, 2], arr[:, 3] = word1 >> 8, word1 & 0xFF
    data = arr.tobytes()
    assert len(data) <= 8 * MiB
    limit = 16 * MiB
    r = router(max_message_bytes=limit)
    rec = raw_records("BIG", data, len(data))
    _, out = feed(r, rec)
    outs = all_outs(out)
    sizes = [len(o.payload()) for o in outs]
    assert max(sizes) <= limit
    assert sum(len(PacketIndex.from_bytes(o.value.index)) for o in outs if isinstance(o.value, EngBatch)) == n
    assert len([o for o in outs if isinstance(o.value, EngBatch)]) >= 2


def test_rejected_packets_are_dead_lettered_with_a_reason_and_never_routed(hostile):
    truth, data = hostile
    _, out = feed(router(), raw_records("HC", data, 40_000))
    outs = all_outs(out)
    letters = {d.stream_offset: d for d in of(outs, "tlm.deadletter")}
    routed = {so for so, _ in routed_packets(outs)}
    demux_classes = {"tag_program", "tag_field", "exposure_zero", "zero_subarray", "huge_geometry",
                     "subarray_outside", "pixel_offset"}
    seen = Counter()
    for f in truth["faults"]:
        if f["type"] != "hostile":
            continue
        cls, so = f["class"], f["stream_offset"]
        if cls in demux_classes or (cls in ("integration_range", "group_range")
                                    and (f["integration"] == 0 or f["group"] == 0)):
            d = letters[so]
            assert d.reason.startswith("invalid packet: ") and d.contact == "HC"
            assert d.apid == f["apid"] and d.length == f["length"] and len(d.data) == f["length"]
            assert d.data == data[so:so + f["length"]]
            if cls.startswith("tag") or cls == "exposure_zero":
                assert d.exposure_id is None
            assert so not in routed
            seen[cls] += 1
    assert set(seen) == demux_classes
    alerts = [a for a in of(outs, "ops.alerts") if a.type == "invalid_packet"]
    assert sum(a.detail["events"] for a in alerts) == sum(1 for d in letters.values()
                                                          if d.reason.startswith("invalid packet"))
    # the isolated outlier is one anomaly, no gap
    outliers = [a for a in of(outs, "ops.alerts") if a.type == "seq_outlier"]
    assert sum(a.count for a in outliers) == sum(1 for f in truth["faults"] if f.get("class") == "seq_outlier")
    assert not [a for a in of(outs, "ops.alerts") if a.type == "gap"]
    snap = of(outs, "demux.state")[-1]
    got = {k: {f: s[f] for f in ("packets", "gaps", "duplicates", "out_of_order")}
           for k, s in Router.report_of(snap)["streams"].items()}
    assert got == truth["accounting"]["HC"]


def test_a_burst_of_anomalies_is_a_bounded_number_of_alerts_with_ranges():
    apid = 0x101
    seqs = [k for k in range(6000) if k % 4 != 3]  # 1499 gaps of one packet (5999 is not a gap)
    data = b"".join(encode_eng(apid, s % 16384, 0, 100, 0, bytes(ENG[apid] - 14)) for s in seqs)
    clock = Clock()
    r = router(clock, alert_max_ranges=2000)
    per = []
    for rec in raw_records("B1", data, 4200, eoc=False):
        per.append(r.record(rec))
        clock.t += 0.1  # ten chunks a second
    per.append(r.end_batch())
    alerts = [o.value for e in per for o in e.fast + e.bulk if o.topic == "ops.alerts"]
    gaps = [a for a in alerts if a.type == "gap"]
    assert len(gaps) <= 2 + int(clock.t / 1.0) + 1
    assert sum(a.count for a in gaps) == 1499 == sum(c for a in gaps for _, c in a.ranges)
    assert sorted(f for a in gaps for f, _ in a.ranges) == [k for k in range(3, 5996, 4)]
    assert all(a.apid == apid and a.source == 0 and a.first_seq == a.ranges[0][0] for a in gaps)
    # the first gap goes out with the chunk that shows it
    first = next(k for k, e in enumerate(per) if any(o.topic == "ops.alerts" for o in e.fast))
    assert first == 0
    # one message never lists more than alert_max_ranges ranges; the rest are counted
    _, out = feed(router(alert_max_ranges=100), raw_records("B2", data, len(data), eoc=False))
    [big] = [a for a in of(all_outs(out), "ops.alerts") if a.type == "gap"]
    assert len(big.ranges) == 100 and big.detail["ranges_dropped"] == 1399 and big.count == 1499


def test_state_is_written_only_for_touched_contacts(contact):
    _, data = contact
    r = router()
    a = raw_records("A1", data[:100_000], 50_000, eoc=False)
    b = raw_records("B1", data[:100_000], 50_000, eoc=False)
    r.record(a[0])
    r.record(b[0])
    states = [o.value for o in r.end_batch().bulk if o.topic == "demux.state"]
    assert sorted(s.contact for s in states) == ["A1", "B1"]
    r.record(a[1])
    states = [o.value for o in r.end_batch().bulk if o.topic == "demux.state"]
    assert [s.contact for s in states] == ["A1"] and isinstance(states[0], DemuxState)
    assert states[0].next_offset - len(states[0].carry) <= 100_000


def test_bytes_arriving_again_are_dead_lettered_not_dropped(contact):
    _, data = contact
    r = router()
    recs = raw_records("OV", data[:150_000], 50_000, eoc=False)
    feed(r, recs)
    again = r.record(recs[1])
    letters = [o.value for o in again.bulk if o.topic == "tlm.deadletter"]
    assert len(letters) == 1 and letters[0].stream_offset == 50_000 and letters[0].length == 50_000
    assert letters[0].reason.startswith("raw bytes overlap")
    assert not [o for o in again.fast + again.bulk if isinstance(o.value, (EngBatch, SciRun))]


def test_outlier_alert_rule_is_the_settings_rule():
    r = router(rules=Rules(jump=16, confirm=1))
    apid = 0x101
    seqs = list(range(100)) + [9000] + list(range(100, 200))
    data = b"".join(encode_eng(apid, s, 0, 100, 0, bytes(ENG[apid] - 14)) for s in seqs)
    _, out = feed(r, raw_records("OUT", data, 3000))
    types = [a.type for a in of(all_outs(out), "ops.alerts")]
    assert types.count("seq_outlier") == 1 and "gap" not in types and "out_of_order" not in types
    assert Kind.ENG == 1


def test_partitions_are_decoded_round_robin():
    from consumers.demux.service import round_robin

    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    recs = [Record("downlink.raw", tp, k, None, b"", {}, 0) for tp, k in
            [(a, 0), (a, 1), (a, 2), (b, 0), (a, 3), (b, 1)]]
    assert [(r.tp.partition, r.offset) for r in round_robin(recs)] == \
        [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (0, 3)]


def test_a_snapshot_does_not_change_when_later_chunks_are_routed(contact):
    """The batch's demux.state is committed after the next batch is already being routed
    (group commit): if its ranges were views of the live accounting, a crash would restore
    an older position with newer gaps, and the redo would record those gaps twice."""
    truth, data = contact
    recs = raw_records("SN", data, 4_000)
    live = router()
    snaps = []
    for k, rec in enumerate(recs):
        live.record(rec)
        if k % 2 == 1:
            snaps += [(k, o.value, o.value.encode()) for o in live.end_batch().bulk
                      if o.topic == "demux.state"]
    assert len(snaps) > 5
    assert any(s.account["streams"][key]["missing"] for _, s, _ in snaps for key in s.account["streams"])
    for _, snap, frozen in snaps:
        assert snap.encode() == frozen, "a committed snapshot changed after it was taken"
    # a restart from any snapshot ends with the accounting of one clean pass
    want = live.report_of(live.contacts["SN"].snapshot())
    for k, snap, _ in snaps[::3]:
        again = router()
        again.load({"SN": DemuxState.decode(snap.encode())})
        for rec in recs[k + 1:]:
            again.record(rec)
        assert again.report_of(again.contacts["SN"].snapshot())["streams"] == want["streams"]
