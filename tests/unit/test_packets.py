"""Encode -> decode round trips for every packet kind (docs/icd.md)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core.errors import CodecError
from streams.decoder import PacketIndex, decode_all
from streams.packets import (
    DETECTORS,
    ENG_APID_MAX,
    ENG_APID_MIN,
    EXPOSURE_END_LEN,
    EXPOSURE_START_LEN,
    HEADER_LEN,
    MAX_PIXELS_PER_PACKET,
    SEQ_MODULO,
    ExposureEnd,
    ExposureStart,
    ExposureTag,
    Kind,
    Source,
    encode_eng,
    encode_exposure_end,
    encode_exposure_start,
    encode_science_data,
    encode_science_data_batch,
    science_data_length,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
seqs = st.integers(0, 3 * SEQ_MODULO)  # beyond 16383: the encoder wraps
sources = st.sampled_from(list(Source))

tags = st.builds(
    ExposureTag,
    program=st.integers(0, 99999), observation=st.integers(0, 999), visit=st.integers(0, 999),
    visit_group=st.integers(0, 99), parallel_seq=st.integers(0, 9), activity=st.integers(0, 99),
    exposure=st.integers(0, 0xFFFF), detector=st.sampled_from(sorted(DETECTORS)),
)
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=16)
starts = st.builds(
    ExposureStart, nints=u16, ngroups=u16, nframes=u8, groupgap=u8, substrt1=u16, substrt2=u16,
    subsize1=u16, subsize2=u16, expected_packets=u32, tframe_us=u32, readpatt=ascii_text,
    exp_type=ascii_text, target=st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                        max_size=32),
)


def _one(raw: bytes) -> PacketIndex:
    out = decode_all(raw)
    assert out.skipped == []
    assert len(out.packets) == 1
    assert out.packet(0) == raw
    assert out.packets_bytes() == raw
    return out.packets


def _check_common(p: PacketIndex, apid: int, seq: int, kind: int, source: int, coarse: int,
                  fine: int, length: int) -> None:
    assert p.apid[0] == apid
    assert p.seq[0] == seq % SEQ_MODULO
    assert p.seq_flags[0] == 3
    assert p.kind[0] == kind
    assert p.source[0] == source
    assert p.coarse[0] == coarse
    assert p.fine[0] == fine
    assert p.length[0] == length
    assert p.offset[0] == 0 and p.stream_offset[0] == 0


def _check_tag(p: PacketIndex, tag: ExposureTag) -> None:
    got = ExposureTag(int(p.program[0]), int(p.observation[0]), int(p.visit[0]),
                      int(p.visit_group[0]), int(p.parallel_seq[0]), int(p.activity[0]),
                      int(p.exposure[0]), int(p.detector[0]))
    assert got == tag


@settings(max_examples=60, deadline=None)
@given(apid=st.integers(ENG_APID_MIN, ENG_APID_MAX), seq=seqs, source=sources, coarse=u32,
       fine=u16, params=st.binary(min_size=0, max_size=300))
def test_eng_round_trip(apid: int, seq: int, source: int, coarse: int, fine: int,
                        params: bytes) -> None:
    raw = encode_eng(apid, seq, source, coarse, fine, params)
    p = _one(raw)
    _check_common(p, apid, seq, Kind.ENG, source, coarse, fine, HEADER_LEN + len(params))
    for name in ("program", "observation", "visit", "detector", "integration", "pixel_count"):
        assert getattr(p, name)[0] == 0
    # with the dictionary's length the packet decodes too; a different length does not
    assert len(decode_all(raw, {apid: len(raw)}).packets) == 1
    assert len(decode_all(raw, {apid: len(raw) + 2}).packets) == 0


@settings(max_examples=40, deadline=None)
@given(tag=tags, seq=seqs, source=sources, coarse=u32, fine=u16, start=starts)
def test_exposure_start_round_trip(tag: ExposureTag, seq: int, source: int, coarse: int,
                                   fine: int, start: ExposureStart) -> None:
    raw = encode_exposure_start(tag, seq, source, coarse, fine, start)
    p = _one(raw)
    _check_common(p, tag.apid, seq, Kind.EXPOSURE_START, source, coarse, fine,
                  EXPOSURE_START_LEN)
    _check_tag(p, tag)
    assert p.pixel_count[0] == 0 and p.integration[0] == 0


@settings(max_examples=40, deadline=None)
@given(tag=tags, seq=seqs, source=sources, coarse=u32, fine=u16, integration=u16, group=u16,
       pixel_offset=u32, npix=st.integers(1, MAX_PIXELS_PER_PACKET), data=st.data())
def test_science_data_round_trip(tag: ExposureTag, seq: int, source: int, coarse: int,
                                 fine: int, integration: int, group: int, pixel_offset: int,
                                 npix: int, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 65536, npix, dtype=np.uint16)
    raw = encode_science_data(tag, seq, source, coarse, fine, integration, group, pixel_offset,
                              pixels)
    p = _one(raw)
    _check_common(p, tag.apid, seq, Kind.SCIENCE_DATA, source, coarse, fine,
                  science_data_length(npix))
    _check_tag(p, tag)
    assert (p.integration[0], p.group[0]) == (integration, group)
    assert (p.pixel_offset[0], p.pixel_count[0]) == (pixel_offset, npix)
    assert np.array_equal(np.frombuffer(raw[38:], ">u2"), pixels)


@settings(max_examples=40, deadline=None)
@given(tag=tags, seq=seqs, source=sources, coarse=u32, fine=u16, sent=u32, code=u16)
def test_exposure_end_round_trip(tag: ExposureTag, seq: int, source: int, coarse: int,
                                 fine: int, sent: int, code: int) -> None:
    raw = encode_exposure_end(tag, seq, source, coarse, fine, ExposureEnd(sent, code))
    p = _one(raw)
    _check_common(p, tag.apid, seq, Kind.EXPOSURE_END, source, coarse, fine, EXPOSURE_END_LEN)
    _check_tag(p, tag)
    assert struct.unpack(">IH", raw[28:34]) == (sent, code)
    assert p.pixel_count[0] == 0 and p.pixel_offset[0] == 0


@settings(max_examples=100, deadline=None)
@given(tag=tags)
def test_exposure_id_round_trip(tag: ExposureTag) -> None:
    eid = tag.exposure_id
    assert ExposureTag.from_exposure_id(eid) == tag
    assert eid.startswith("jw") and eid.endswith("_" + DETECTORS[tag.detector].lower())


def test_exposure_id_example_and_errors() -> None:
    tag = ExposureTag(1234, 1, 1, 1, 1, 1, 1, 1)
    assert tag.exposure_id == "jw01234001001_01101_00001_nrca1"
    for bad in ("jw01234001001_01101_00001_nrcz9", "jw1234_01101_00001_nrca1", ""):
        with pytest.raises(CodecError):
            ExposureTag.from_exposure_id(bad)
    # the id has 5 exposure digits but the tag field is uint16 (docs/icd.md)
    big = ExposureTag.from_exposure_id("jw01234001001_01101_70000_nrca1")
    with pytest.raises(CodecError):
        big.pack()


@settings(max_examples=30, deadline=None)
@given(tag=tags, n=st.integers(1, 20), npix=st.integers(1, 300), seq0=seqs, source=sources,
       seed=st.integers(0, 2**32 - 1))
def test_batch_encoder_equals_single(tag: ExposureTag, n: int, npix: int, seq0: int,
                                     source: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    seq = seq0 + np.arange(n)  # crosses the 14-bit wrap for some draws
    coarse = rng.integers(0, 2**32, n, dtype=np.uint64)
    fine = rng.integers(0, 2**16, n)
    integration = rng.integers(1, 2**16, n)
    group = rng.integers(1, 2**16, n)
    offset = rng.integers(0, 2**32, n, dtype=np.uint64)
    pixels = rng.integers(0, 2**16, (n, npix), dtype=np.uint16)
    batch = encode_science_data_batch(tag, seq, source, coarse, fine, integration, group, offset,
                                      pixels)
    singles = [encode_science_data(tag, int(seq[i]), source, int(coarse[i]), int(fine[i]),
                                   int(integration[i]), int(group[i]), int(offset[i]), pixels[i])
               for i in range(n)]
    assert [row.tobytes() for row in batch] == singles
    out = decode_all(batch.tobytes())
    assert len(out.packets) == n and out.skipped == []
    assert np.array_equal(out.packets.seq, seq % SEQ_MODULO)


def test_mixed_stream_decodes_in_order() -> None:
    tag = ExposureTag(42, 2, 3, 4, 5, 6, 7, 14)
    start = ExposureStart(2, 5, 1, 0, 1, 1, 64, 64, 3, 1000, "NIS", "NIS_IMAGE", "HD 1")
    parts = [
        encode_eng(0x101, 16383, Source.REALTIME, 10, 0, b"\x01" * 20),
        encode_exposure_start(tag, 0, Source.RECORDED, 11, 1, start),
        encode_science_data(tag, 1, Source.RECORDED, 12, 2, 1, 1, 0, np.arange(7)),
        encode_eng(0x101, 16384, Source.REALTIME, 13, 0, b"\x02" * 20),  # wraps to 0
        encode_exposure_end(tag, 2, Source.RECORDED, 14, 3, ExposureEnd(1)),
    ]
    out = decode_all(b"".join(parts))
    assert out.skipped == []
    assert out.packets.kind.tolist() == [1, 2, 3, 1, 4]
    assert out.packets.seq.tolist() == [16383, 0, 1, 0, 2]
    assert out.packets.apid.tolist() == [0x101, tag.apid, tag.apid, 0x101, tag.apid]
    assert [out.packet(i) for i in range(5)] == parts
    assert out.packets_bytes([0, 3]) == parts[0] + parts[3]
    assert out.packets_bytes(out.packets.kind != 1) == parts[1] + parts[2] + parts[4]


def test_packet_index_serialisation() -> None:
    tag = ExposureTag(42, 2, 3, 4, 5, 6, 7, 14)
    raw = b"".join(encode_science_data(tag, i, 1, i, i, 1, 1, i * 5, np.arange(5))
                   for i in range(10)) + encode_eng(0x1FF, 9, 0, 1, 2, b"x")
    idx = decode_all(raw).packets
    blob = idx.to_bytes()
    assert blob == idx.to_bytes()  # deterministic
    back = PacketIndex.from_bytes(blob)
    assert back == idx
    for name, dtype in PacketIndex.COLUMNS.items():
        assert getattr(back, name).dtype == dtype
    assert PacketIndex.from_bytes(PacketIndex.empty().to_bytes()) == PacketIndex.empty()
    assert PacketIndex.concat([idx.take(slice(0, 4)), idx.take(slice(4, None))]) == idx
    with pytest.raises(CodecError):
        PacketIndex.from_bytes(blob[:-1])
    with pytest.raises(CodecError):
        PacketIndex.from_bytes(b"nope" + blob[4:])
