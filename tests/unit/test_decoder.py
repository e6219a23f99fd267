"""StreamDecoder properties: split invariance, resynchronisation, carry, restart (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from core.errors import CodecError
from streams.decoder import (
    REASON_BAD_VERSION,
    REASON_DETECTOR_MISMATCH,
    REASON_GARBAGE,
    REASON_IMPOSSIBLE_LENGTH,
    REASON_INPUT_GAP,
    REASON_TRUNCATED,
    REASON_TRUNCATED_EOS,
    REASON_UNKNOWN_APID,
    LOOKAHEAD,
    DecodedChunk,
    PacketIndex,
    Skipped,
    StreamDecoder,
    decode_all,
    header_defects,
    merge_skipped,
)
from streams.packets import (
    DETECTORS,
    MAX_PACKET_LEN,
    ExposureEnd,
    ExposureStart,
    ExposureTag,
    encode_eng,
    encode_exposure_end,
    encode_exposure_start,
    encode_packet,
    encode_science_data,
)

#: a small engineering dictionary: APID -> total packet length
ENG = {0x101: 30, 0x102: 64, 0x1F0: 20, 0x1A5: 14}
START = ExposureStart(1, 4, 1, 0, 1, 1, 64, 64, 16, 10_737, "RAPID", "NRC_IMAGE", "M 31")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- stream building -----------------------------------------------------------------------------

@st.composite
def packet_lists(draw: st.DrawFn, max_packets: int = 25) -> list[bytes]:
    """Valid packets of every kind; pixel values are random (header look-alikes included)."""
    n = draw(st.integers(1, max_packets))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from(("eng", "eng", "start", "data", "data", "data", "end")))
        source = int(rng.integers(0, 2))
        coarse, fine = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**16))
        seq = int(rng.integers(0, 2**14))
        if kind == "eng":
            apid = draw(st.sampled_from(sorted(ENG)))
            params = rng.integers(0, 256, ENG[apid] - 14, dtype=np.uint8).tobytes()
            out.append(encode_eng(apid, seq, source, coarse, fine, params))
            continue
        tag = ExposureTag(int(rng.integers(0, 100000)), 1, 1, 1, 1, 1, int(rng.integers(0, 9999)),
                          draw(st.sampled_from(sorted(DETECTORS))))
        if kind == "start":
            out.append(encode_exposure_start(tag, seq, source, coarse, fine, START))
        elif kind == "end":
            out.append(encode_exposure_end(tag, seq, source, coarse, fine, ExposureEnd(i)))
        else:
            npix = draw(st.sampled_from((1, 2, 7, 50, 333, 4000)))
            pixels = rng.integers(0, 65536, npix, dtype=np.uint16)
            out.append(encode_science_data(tag, seq, source, coarse, fine, 1, 1, i * 4000, pixels))
    return out


@dataclass
class Damaged:
    """A corrupted stream and where each untouched packet now starts."""

    data: bytes
    intact: list[tuple[int, int]]  # (new offset, length) of packets whose bytes are untouched


@st.composite
def damaged_streams(draw: st.DrawFn) -> Damaged:
    """Packets, then bit flips, inserted garbage, deletions, overwritten headers, cut tail."""
    packets = draw(packet_lists())
    stream = np.frombuffer(b"".join(packets), dtype=np.uint8).copy()
    origin = np.arange(len(stream))  # original index of each byte, -1 = damaged/inserted
    starts = np.cumsum([0] + [len(p) for p in packets])[:-1]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for op in draw(st.lists(st.sampled_from(("flip", "insert", "delete", "header", "garbage_hdr")),
                            min_size=1, max_size=6)):
        n = len(stream)
        if n == 0:
            break
        if op == "flip":
            q = int(rng.integers(0, n))
            stream[q] ^= np.uint8(1 << int(rng.integers(0, 8)))
            origin[q] = -1
        elif op == "insert":
            q = int(rng.integers(0, n + 1))
            k = int(rng.integers(1, 300))
            stream = np.insert(stream, q, rng.integers(0, 256, k, dtype=np.uint8))
            origin = np.insert(origin, q, np.full(k, -1))
        elif op == "delete":
            q = int(rng.integers(0, n))
            k = int(rng.integers(1, 200))
            stream = np.delete(stream, slice(q, q + k))
            origin = np.delete(origin, slice(q, q + k))
        elif op == "header":
            i = int(rng.integers(0, len(packets)))
            where = np.flatnonzero(origin == starts[i])
            if where.size:
                q = int(where[0])
                k = int(rng.integers(1, 15))
                stream[q:q + k] = rng.integers(0, 256, len(stream[q:q + k]), dtype=np.uint8)
                origin[q:q + k] = -1
        else:  # a header-looking fake claiming a long length, inserted before real packets
            fake = np.frombuffer(encode_eng(0x101, 1, 0, 0, 0, b"\0" * 16), np.uint8).copy()
            fake[4:6] = np.frombuffer(int(rng.integers(100, 8000)).to_bytes(2, "big"), np.uint8)
            q = int(starts[int(rng.integers(0, len(packets)))])
            where = np.flatnonzero(origin == q)
            q = int(where[0]) if where.size else 0
            piece = fake[: int(rng.integers(14, len(fake) + 1))]
            stream = np.insert(stream, q, piece)
            origin = np.insert(origin, q, np.full(len(piece), -1))
    if draw(st.booleans()) and len(stream) > 1:
        cut = int(rng.integers(1, len(stream)))
        stream, origin = stream[:cut], origin[:cut]
    intact = []
    for s, p in zip(starts.tolist(), packets):
        where = np.flatnonzero(origin == s)
        if where.size:
            q = int(where[0])
            if np.array_equal(origin[q:q + len(p)], np.arange(s, s + len(p))):
                intact.append((q, len(p)))
    return Damaged(stream.tobytes(), intact)


def _cuts(draw: st.DrawFn, n: int) -> list[int]:
    points = draw(st.lists(st.integers(0, n), max_size=12))
    return sorted(set(points))


def feed_split(data: bytes, cuts: list[int], eng: dict[int, int] | None = ENG,
               ) -> tuple[list[DecodedChunk], StreamDecoder]:
    dec = StreamDecoder(eng)
    outs = []
    bounds = [0, *cuts, len(data)]
    for a, b in zip(bounds, bounds[1:]):
        outs.append(dec.feed(data[a:b]))
    outs.append(dec.flush())
    return outs, dec


def collect(outs: list[DecodedChunk]) -> tuple[PacketIndex, list[Skipped]]:
    packets = PacketIndex.concat([o.packets for o in outs])
    skipped = [s for o in outs for s in o.skipped]
    return packets, skipped


def without_offset(p: PacketIndex) -> dict[str, list[int]]:
    """Every column but ``offset`` (which is relative to each chunk's data)."""
    return {name: getattr(p, name).tolist() for name in PacketIndex.COLUMNS if name != "offset"}


def check_accounting(data: bytes, outs: list[DecodedChunk]) -> None:
    """Every byte is in exactly one packet or skipped range, and packets are their bytes."""
    spans = []
    for o in outs:
        for i in range(len(o.packets)):
            so, ln = int(o.packets.stream_offset[i]), int(o.packets.length[i])
            assert o.packet(i) == data[so:so + ln]
            assert so - o.stream_offset == int(o.packets.offset[i])
            spans.append((so, ln))
        for s in o.skipped:
            assert s.data == data[s.stream_offset:s.end] and s.data
            spans.append((s.stream_offset, len(s.data)))
    for a, b in zip(outs, outs[1:]):
        assert a.stream_offset + a.consumed == b.stream_offset, "results must tile the stream"
    spans.sort()
    pos = 0
    for so, ln in spans:
        assert so == pos, f"bytes {pos}..{so} unaccounted (or overlap)"
        pos += ln
    assert pos == len(data)


# --- properties ----------------------------------------------------------------------------------

@FAST
@given(data=st.data(), packets=packet_lists())
def test_any_split_gives_the_same_packets(data: st.DataObject, packets: list[bytes]) -> None:
    stream = b"".join(packets)
    whole = decode_all(stream, ENG)
    assert whole.skipped == []
    assert len(whole.packets) == len(packets)
    assert [whole.packet(i) for i in range(len(packets))] == packets
    outs, dec = feed_split(stream, _cuts(data.draw, len(stream)))
    got, skipped = collect(outs)
    assert skipped == []
    assert without_offset(got) == without_offset(whole.packets)
    assert dec.carry == b"" and dec.next_offset == len(stream)
    check_accounting(stream, outs)


@FAST
@given(data=st.data(), damaged=damaged_streams(), eng=st.sampled_from((ENG, None)))
def test_any_split_of_a_damaged_stream_gives_the_same_result(data: st.DataObject,
                                                             damaged: Damaged,
                                                             eng: dict | None) -> None:
    whole = decode_all(damaged.data, eng)
    outs, _ = feed_split(damaged.data, _cuts(data.draw, len(damaged.data)), eng)
    got, skipped = collect(outs)
    assert without_offset(got) == without_offset(whole.packets)
    assert merge_skipped(skipped) == merge_skipped(whole.skipped)
    check_accounting(damaged.data, outs)
    check_accounting(damaged.data, [whole])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged=damaged_streams())
def test_corruption_never_loses_an_intact_packet(damaged: Damaged) -> None:
    """With the dictionary's lengths (as demux decodes), every untouched packet is found.

    Without them any engineering length is plausible, so a header-like pattern
    inside a packet that is followed by damage can, very rarely (~1e-8 per
    byte), tie with it; that mode is checked for accounting only.
    """
    out = decode_all(damaged.data, ENG)
    found = set(zip(out.packets.stream_offset.tolist(), out.packets.length.tolist()))
    for offset, length in damaged.intact:
        assert (offset, length) in found, f"intact packet at {offset} ({length} B) lost"
    check_accounting(damaged.data, [out])
    loose = decode_all(damaged.data, None)
    check_accounting(damaged.data, [loose])
    assert len(loose.packets) >= len(damaged.intact) - 1


@FAST
@given(data=st.data(), junk=st.binary(min_size=0, max_size=3000))
def test_random_bytes_never_crash(data: st.DataObject, junk: bytes) -> None:
    outs, dec = feed_split(junk, _cuts(data.draw, len(junk)), data.draw(st.sampled_from((ENG, None))))
    check_accounting(junk, outs)
    assert dec.carry == b""


@FAST
@given(data=st.data(), packets=packet_lists(max_packets=8))
def test_flush_reports_the_truncated_tail(data: st.DataObject, packets: list[bytes]) -> None:
    keep = data.draw(st.integers(1, len(packets[-1]) - 1))
    stream = b"".join(packets)[: sum(map(len, packets)) - len(packets[-1]) + keep]
    outs, _ = feed_split(stream, _cuts(data.draw, len(stream)))
    got, skipped = collect(outs)
    assert len(got) == len(packets) - 1
    tail = merge_skipped(skipped)
    assert len(tail) == 1
    assert tail[0].reason == REASON_TRUNCATED_EOS
    assert tail[0].data == packets[-1][:keep]
    assert outs[-1].skipped and outs[-1].skipped[-1].reason == REASON_TRUNCATED_EOS


@FAST
@given(data=st.data(), damaged=damaged_streams())
def test_restart_from_snapshot_continues_identically(data: st.DataObject, damaged: Damaged) -> None:
    stream = damaged.data
    cuts = _cuts(data.draw, len(stream))
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    stop = data.draw(st.integers(0, len(pieces)))

    ref = StreamDecoder(ENG)
    ref_outs = [ref.feed(p) for p in pieces] + [ref.flush()]

    first = StreamDecoder(ENG)
    outs = [first.feed(p) for p in pieces[:stop]]
    snap = (first.carry, first.next_offset, first.open_skip)
    second = StreamDecoder(ENG, stream_offset=snap[1] - len(snap[0]), carry=snap[0],
                           open_skip=snap[2])
    outs += [second.feed(p) for p in pieces[stop:]] + [second.flush()]

    a, sa = collect(ref_outs)
    b, sb = collect(outs)
    assert without_offset(a) == without_offset(b)
    assert sa == sb
    check_accounting(stream, outs)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), packets=packet_lists(max_packets=3), eng=st.sampled_from((ENG, None)))
def test_header_judgement_matches_the_vectorized_scan(data: st.DataObject, packets: list[bytes],
                                                      eng: dict | None) -> None:
    """The scalar judge used for skip reasons agrees with the vectorized candidate test."""
    raw = bytearray(b"".join(packets)[:LOOKAHEAD].ljust(LOOKAHEAD, b"\0"))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, LOOKAHEAD - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    dec = StreamDecoder(eng)
    arr = np.frombuffer(bytes(raw), np.uint8)
    starts, _ = dec._candidates(arr, 1)
    assert (len(starts) == 1) == (not header_defects(bytes(raw), eng))


# --- resynchronisation reasons -------------------------------------------------------------------

TAG = ExposureTag(1234, 1, 1, 1, 1, 1, 1, 3)


def _good() -> list[bytes]:
    return [encode_eng(0x101, 1, 0, 5, 6, b"\x11" * 16),
            encode_exposure_start(TAG, 1, 1, 5, 6, START),
            encode_science_data(TAG, 2, 1, 5, 6, 1, 1, 0, np.arange(10, dtype=np.uint16)),
            encode_exposure_end(TAG, 3, 1, 5, 6, ExposureEnd(1))]


def _one_skip(bad: bytes, eng: dict | None = ENG) -> Skipped:
    good = _good()
    stream = good[0] + bad + b"".join(good[1:])
    out = decode_all(stream, eng)
    assert [out.packet(i) for i in range(len(out.packets))] == good
    assert len(out.skipped) == 1
    assert out.skipped[0].stream_offset == len(good[0]) and out.skipped[0].data == bad
    return out.skipped[0]


def test_reason_unknown_apid() -> None:
    assert _one_skip(encode_packet(0x2AB, 1, 1, 0, 0, 0, b"\0" * 16)).reason == REASON_UNKNOWN_APID
    # an engineering APID missing from the dictionary
    assert _one_skip(encode_eng(0x150, 1, 0, 0, 0, b"\0" * 16)).reason == REASON_UNKNOWN_APID
    # without a dictionary any engineering APID is valid
    out = decode_all(_good()[0] + encode_eng(0x150, 1, 0, 0, 0, b"\0" * 16), None)
    assert len(out.packets) == 2 and out.skipped == []


def test_reason_bad_version() -> None:
    bad = bytearray(encode_eng(0x102, 1, 0, 0, 0, b"\0" * 50))
    bad[0] |= 0x20
    assert _one_skip(bytes(bad)).reason == REASON_BAD_VERSION


def test_reason_impossible_length() -> None:
    # dictionary says 30 bytes for 0x101
    assert _one_skip(encode_eng(0x101, 1, 0, 0, 0, b"\0" * 17)).reason == REASON_IMPOSSIBLE_LENGTH
    end = encode_exposure_end(TAG, 3, 1, 5, 6, ExposureEnd(1))
    # an exposure end one byte too long
    bad = encode_packet(TAG.apid, 3, 4, 1, 5, 6, end[14:] + b"\0")
    assert _one_skip(bad).reason == REASON_IMPOSSIBLE_LENGTH


def test_reason_detector_mismatch_and_garbage() -> None:
    bad = bytearray(encode_exposure_end(TAG, 3, 1, 5, 6, ExposureEnd(1)))
    bad[27] = 4
    assert _one_skip(bytes(bad)).reason == REASON_DETECTOR_MISMATCH
    assert _one_skip(b"\xff" * 40).reason == REASON_GARBAGE


def test_truncated_packet_does_not_swallow_the_next() -> None:
    good = _good()
    cut = good[2][:25]  # a science packet whose end was lost: its header claims 58 bytes
    stream = good[0] + cut + b"".join(good[1:])
    for eng in (ENG, None):
        out = decode_all(stream, eng)
        assert [out.packet(i) for i in range(len(out.packets))] == good
        assert [s.reason for s in out.skipped] == [REASON_TRUNCATED]
        assert out.skipped[0].data == cut


def test_fake_header_in_garbage_does_not_hide_real_packets() -> None:
    good = _good()
    fake = bytearray(encode_eng(0x101, 1, 0, 0, 0, b"\0" * 16))
    fake[4:6] = (2000).to_bytes(2, "big")  # claims 2007 bytes, covering every real packet
    stream = b"\x00\x17" + bytes(fake) + b"".join(good)
    out = decode_all(stream, None)
    assert [out.packet(i) for i in range(len(out.packets))] == good


def test_replayed_and_missing_chunks() -> None:
    stream = b"".join(_good() * 3)
    dec = StreamDecoder(ENG)
    a = dec.feed(stream[:100], 0)
    again = dec.feed(stream[:100], 0)  # redelivered: nothing new
    assert len(again.packets) == 0 and again.skipped == []
    b = dec.feed(stream[50:200], 50)  # overlaps: only bytes 100.. are new
    c = dec.feed(stream[200:], 200)
    d = dec.flush()
    got, skipped = collect([a, again, b, c, d])
    assert skipped == []
    assert without_offset(got) == without_offset(decode_all(stream, ENG).packets)

    dec = StreamDecoder(ENG)
    first = dec.feed(stream[:40])  # the exposure start packet (30..144) is cut
    later = dec.feed(stream[300:], 300)  # bytes 40..300 never arrive
    assert later.skipped[0].reason == REASON_INPUT_GAP
    assert later.skipped[0].stream_offset == 30 and later.skipped[0].data == stream[30:40]
    assert len(first.packets) + len(later.packets) + len(dec.flush().packets) > 0


def test_pathological_overlapping_headers_keep_the_carry_bounded() -> None:
    """Every 16 bytes a valid header claiming 96 bytes: one endless overlap cluster."""
    unit = bytearray(encode_eng(0x101, 1, 0, 0, 0, b"\0" * 2))
    unit[4:6] = (96 - 7).to_bytes(2, "big")
    stream = bytes(unit) * 20_000
    dec = StreamDecoder(None)
    outs = []
    for pos in range(0, len(stream), 1 << 16):
        outs.append(dec.feed(stream[pos:pos + (1 << 16)]))
        assert len(dec.carry) <= dec.max_carry + MAX_PACKET_LEN
    outs.append(dec.flush())
    check_accounting(stream, outs)
    got, _ = collect(outs)
    assert len(got) > 0


def test_eng_lengths_are_validated() -> None:
    with pytest.raises(CodecError):
        StreamDecoder({0x400: 30})
    with pytest.raises(CodecError):
        StreamDecoder({0x101: 5})


def test_packets_bytes_selection() -> None:
    good = _good()
    out = decode_all(b"junk" + b"".join(good) + b"more junk" + good[0], ENG)
    assert out.packets_bytes() == b"".join(good) + good[0]
    assert out.packets_bytes(np.array([0, 4])) == good[0] + good[0]
    assert out.packets_bytes(out.packets.kind == 3) == good[2]
    assert out.packets_bytes(np.array([], dtype=np.int64)) == b""
