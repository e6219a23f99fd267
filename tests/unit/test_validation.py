"""Field validation of decoded packets (streams/validation.py): valid packets pass, each
single-field corruption is rejected with its own reason. No servers."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings as hsettings, strategies as st

from streams.decoder import DecodedChunk, StreamDecoder, decode_all
from streams.dictionary import load_dictionary
from streams.packets import (
    DETECTORS,
    SCI_APID_BASE,
    SCIENCE_TAG_END,
    ExposureEnd,
    ExposureStart,
    ExposureTag,
    encode_eng,
    encode_exposure_end,
    encode_exposure_start,
    encode_science_data,
)
from streams.validation import CODE, FRAME, REASONS, Limits, exposure_id_of, tag_valid, validate

ENG = load_dictionary().packet_lengths()
LIMITS = Limits(eng_lengths=ENG, max_nints=20, max_ngroups=30, max_exposure_bytes=64 << 20)


@st.composite
def tags(draw) -> ExposureTag:
    return ExposureTag(draw(st.integers(0, 99999)), draw(st.integers(0, 999)), draw(st.integers(0, 999)),
                       draw(st.integers(0, 99)), draw(st.integers(0, 9)), draw(st.integers(0, 99)),
                       draw(st.integers(1, 65535)), draw(st.sampled_from(sorted(DETECTORS))))


@st.composite
def exposures(draw) -> tuple[ExposureTag, ExposureStart, list[bytes]]:
    """A valid start, a few data packets and an end, within LIMITS."""
    tag = draw(tags())
    fx, fy = FRAME[tag.detector]
    nx, ny = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    x0, y0 = draw(st.integers(1, fx - nx + 1)), draw(st.integers(1, fy - ny + 1))
    nints, ngroups = draw(st.integers(1, LIMITS.max_nints)), draw(st.integers(1, LIMITS.max_ngroups))
    start = ExposureStart(nints, ngroups, draw(st.integers(1, 255)), 0, x0, y0, nx, ny, 1, 10000,
                          "RAPID", "NRC_IMAGE", "TARGET")
    pkts = [encode_exposure_start(tag, 0, 1, 100, 0, start)]
    for k in range(draw(st.integers(1, 4))):
        npix = draw(st.integers(1, min(nx * ny, 32)))
        offset = draw(st.integers(0, nx * ny - npix))
        pix = np.frombuffer(draw(st.binary(min_size=2 * npix, max_size=2 * npix)), dtype=">u2")
        pkts.append(encode_science_data(tag, k + 1, 1, 100, 0, draw(st.integers(1, nints)),
                                        draw(st.integers(1, ngroups)), offset, pix))
    pkts.append(encode_exposure_end(tag, 9, 1, 100, 0, ExposureEnd(len(pkts) - 1)))
    return tag, start, pkts


def eng_packet(apid: int, seq: int = 0, source: int = 0) -> bytes:
    return encode_eng(apid, seq, source, 100, 0, bytes(ENG[apid] - 14))


def trusting(packets: list[bytes]) -> DecodedChunk:
    """Index packets at their known boundaries, without the decoder's header filter."""
    data = b"".join(packets)
    lengths = np.array([len(p) for p in packets], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    arr = np.zeros(len(data) + 64, dtype=np.uint8)
    arr[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return DecodedChunk(data, StreamDecoder._index(arr, starts, starts + lengths, 0))


@given(st.lists(exposures(), min_size=1, max_size=3), st.lists(st.sampled_from(sorted(ENG)), max_size=5))
@hsettings(max_examples=60, deadline=None)
def test_valid_packets_always_pass(exps, eng_apids):
    packets = [p for _, _, pk in exps for p in pk] + [eng_packet(a) for a in eng_apids]
    decoded = decode_all(b"".join(packets), ENG)
    assert len(decoded.packets) == len(packets) and not decoded.skipped
    reasons = validate(decoded, LIMITS)
    assert reasons.tolist() == [0] * len(packets)
    assert tag_valid(decoded.packets).sum() == sum(len(pk) for _, _, pk in exps)


def _set(pkt: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(pkt)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


# (packet kind it applies to, byte offset, struct format, bad value draw, expected reason)
TAG = 14
CORRUPTIONS = {
    "program": ("any", TAG, ">I", st.integers(100000, 2**32 - 1), "tag: program above 99999"),
    "observation": ("any", TAG + 4, ">H", st.integers(1000, 65535), "tag: observation above 999"),
    "visit": ("any", TAG + 6, ">H", st.integers(1000, 65535), "tag: visit above 999"),
    "visit_group": ("any", TAG + 8, ">B", st.integers(100, 255), "tag: visit group above 99"),
    "parallel_seq": ("any", TAG + 9, ">B", st.integers(10, 255), "tag: parallel sequence above 9"),
    "activity": ("any", TAG + 10, ">B", st.integers(100, 255), "tag: activity above 99"),
    "exposure": ("any", TAG + 11, ">H", st.just(0), "tag: exposure number 0"),
    "source": ("any", 12, ">B", st.integers(2, 255), "bad header: source not 0 or 1"),
    "version": ("any", 0, ">B", st.integers(1, 7).map(lambda v: (v << 5) | 0x0C), "bad header: version, type or secondary header flag"),
    "seq_flags": ("any", 2, ">B", st.integers(0, 2).map(lambda v: v << 6), "bad header: sequence flags not unsegmented"),
    "nints": ("start", 28, ">H", st.just(0), "exposure start: NINTS, NGROUPS or NFRAMES is 0"),
    "ngroups": ("start", 30, ">H", st.just(0), "exposure start: NINTS, NGROUPS or NFRAMES is 0"),
    "nframes": ("start", 32, ">B", st.just(0), "exposure start: NINTS, NGROUPS or NFRAMES is 0"),
    "substrt1": ("start", 34, ">H", st.just(0), "exposure start: SUBSTRT 0 (1-based)"),
    "substrt2_outside": ("start", 36, ">H", st.integers(2049, 65535), "exposure start: subarray outside the detector"),
    "subsize1": ("start", 38, ">H", st.just(0), "exposure start: empty subarray (SUBSIZE 0)"),
    "subsize2_outside": ("start", 40, ">H", st.integers(2049, 65535), "exposure start: subarray outside the detector"),
    "nints_limit": ("start", 28, ">H", st.integers(21, 65535), "exposure start: NINTS above the limit"),
    "ngroups_limit": ("start", 30, ">H", st.integers(31, 65535), "exposure start: NGROUPS above the limit"),
    "integration_zero": ("data", 28, ">H", st.just(0), "science data: integration or group 0 (1-based)"),
    "group_zero": ("data", 30, ">H", st.just(0), "science data: integration or group 0 (1-based)"),
    "integration_limit": ("data", 28, ">H", st.integers(21, 65535), "science data: integration above the limit"),
    "group_limit": ("data", 30, ">H", st.integers(31, 65535), "science data: group above the limit"),
    "pixel_offset": ("data", 32, ">I", st.integers(2048 * 2048, 2**32 - 1), "science data: pixels outside the detector"),
    "pixel_count_over": ("data", 36, ">H", st.integers(4001, 65535), "science data: pixel count outside 1-4000"),
    "pixel_count_zero": ("data", 36, ">H", st.just(0), "science data: pixel count outside 1-4000"),
}


@given(exposures(), st.sampled_from(sorted(CORRUPTIONS)), st.data())
@hsettings(max_examples=250, deadline=None)
def test_each_single_field_corruption_is_rejected_with_its_reason(exp, name, data):
    _, _, pkts = exp
    where, offset, fmt, bad, reason = CORRUPTIONS[name]
    kinds = {"any": range(len(pkts)), "start": [0], "data": range(1, len(pkts) - 1)}[where]
    i = data.draw(st.sampled_from(list(kinds)))
    corrupted = list(pkts)
    corrupted[i] = _set(pkts[i], offset, fmt, data.draw(bad))
    got = validate(trusting(corrupted), LIMITS)
    want = [0] * len(pkts)
    want[i] = CODE[reason]
    assert [REASONS[c] for c in got] == [REASONS[c] for c in want]


@given(exposures(), st.data())
@hsettings(max_examples=40, deadline=None)
def test_pixel_count_not_matching_the_bytes_present_is_rejected(exp, data):
    _, _, pkts = exp
    i = data.draw(st.integers(1, len(pkts) - 2))
    count = struct.unpack_from(">H", pkts[i], 36)[0]
    other = data.draw(st.integers(1, 4000).filter(lambda c: c != count))
    corrupted = list(pkts)
    corrupted[i] = _set(pkts[i], 36, ">H", other)
    got = validate(trusting(corrupted), LIMITS)
    assert REASONS[got[i]] == "science data: pixel count does not match the bytes present"
    assert got.sum() == got[i]


def test_detector_kind_apid_and_length_defects():
    tag = ExposureTag(1234, 1, 1, 1, 1, 1, 1, 1)
    start = ExposureStart(1, 1, 1, 0, 1, 1, 8, 8, 1, 1000, "R", "E", "T")
    good = encode_exposure_start(tag, 0, 1, 1, 0, start)
    wrong_detector = _set(good, SCIENCE_TAG_END - 1, ">B", 2)
    eng_kind_on_science = _set(good, 13, ">B", 1)
    unknown = encode_eng(0x1FE, 0, 0, 1, 0, bytes(10)) if 0x1FE not in ENG else None
    apid = min(ENG)
    short_eng = encode_eng(apid, 0, 0, 1, 0, bytes(ENG[apid] - 15))
    got = validate(trusting([good, wrong_detector, eng_kind_on_science, short_eng]), LIMITS)
    assert [REASONS[c] for c in got] == ["", "detector code does not match APID",
                                         "kind does not match the APID range",
                                         "length does not match the packet kind"]
    assert unknown is not None
    assert REASONS[validate(trusting([unknown]), LIMITS)[0]] == "unknown APID"


def test_exposure_size_limit_and_miri_frame():
    tag = ExposureTag(1234, 1, 1, 1, 1, 1, 1, 11)  # MIRIMAGE: 1032 x 1024
    fits = ExposureStart(1, 1, 1, 0, 1, 1, 1032, 1024, 1, 1000, "R", "E", "T")
    too_wide = ExposureStart(1, 1, 1, 0, 2, 1, 1032, 1024, 1, 1000, "R", "E", "T")
    big = ExposureStart(20, 30, 1, 0, 1, 1, 1032, 1024, 1, 1000, "R", "E", "T")  # 1.2 GiB > 64 MiB
    got = validate(trusting([encode_exposure_start(tag, k, 1, 1, 0, s) for k, s in
                             enumerate((fits, too_wide, big))]), LIMITS)
    assert [REASONS[c] for c in got] == ["", "exposure start: subarray outside the detector",
                                         "exposure start: exposure size above the limit"]


def test_exposure_id_only_for_a_valid_tag():
    good = ExposureTag(1234, 1, 2, 3, 4, 5, 6, 7)
    start = ExposureStart(1, 1, 1, 0, 1, 1, 8, 8, 1, 1000, "R", "E", "T")
    pkts = [encode_exposure_start(good, 0, 1, 1, 0, start)]
    pkts.append(_set(pkts[0], TAG, ">I", 123456))
    decoded = trusting(pkts)
    assert exposure_id_of(decoded.packets, 0) == good.exposure_id
    assert exposure_id_of(decoded.packets, 1) is None
    assert SCI_APID_BASE + 7 == int(decoded.packets.apid[0])


def test_reasons_are_a_small_fixed_label_set():
    assert len(REASONS) == len(set(REASONS)) < 64
    assert all(len(r) <= 80 and not any(ch.isdigit() for ch in r.split(":")[0]) for r in REASONS)
