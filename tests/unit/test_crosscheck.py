"""Our decoder against two independent CCSDS libraries on the same bytes.

spacepackets (``parse_space_packets`` + ``SpacePacketHeader.unpack``) and
ccsdspy (``utils.split_packet_bytes`` + ``utils.read_primary_headers``) must
agree with :mod:`streams.decoder` on every primary-header field of every
packet: version, type, secondary-header flag, APID, sequence flags, sequence
count and data length (CCSDS 133.0-B-2, 4.1.3).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from ccsdspy.utils import read_primary_headers, split_packet_bytes
from spacepackets.ccsds.spacepacket import (
    PacketId,
    PacketType,
    SpacePacketHeader,
    parse_space_packets,
)

from streams.decoder import DecodedChunk, StreamDecoder, decode_all
from streams.packets import (
    SCIENCE_APIDS,
    SEQ_MODULO,
    ExposureEnd,
    ExposureStart,
    ExposureTag,
    Source,
    encode_eng,
    encode_exposure_end,
    encode_exposure_start,
    encode_science_data,
)

#: engineering APID -> total length: a few fixed lengths, like a dictionary's
ENG = {0x101: 40, 0x10A: 72, 0x150: 128, 0x1C0: 22}
DETECTORS_USED = (1, 6, 11, 15, 17)

logging.getLogger("ccsdspy").setLevel(logging.ERROR)


def realistic_stream(seed: int) -> bytes:
    """Recorded exposures (start, data, end) on several detectors and recorded
    engineering, with real-time engineering interleaved; some counters wrap."""
    rng = np.random.default_rng(seed)
    seq: dict[tuple[int, int], int] = {}

    def next_seq(apid: int, source: int) -> int:
        key = (apid, source)
        seq[key] = seq.get(key, int(rng.integers(SEQ_MODULO - 6, SEQ_MODULO - 1))) + 1
        return seq[key] % SEQ_MODULO

    def eng(source: int, t: int) -> bytes:
        apid = int(rng.choice(list(ENG)))
        params = rng.integers(0, 256, ENG[apid] - 14, dtype=np.uint8).tobytes()
        return encode_eng(apid, next_seq(apid, source), source, t, int(rng.integers(0, 65536)),
                          params)

    recorded: list[bytes] = []
    t = 2_100_000_000
    for n, det in enumerate(DETECTORS_USED):
        tag = ExposureTag(1234, 5, 1, 2, 1, 3, n + 1, det)
        npix, ngroups = 64 * 64, 6
        chunks = [min(4000, npix - o) for o in range(0, npix, 4000)]
        start = ExposureStart(1, ngroups, 1, 0, 1, 1, 64, 64, ngroups * len(chunks), 50_000,
                              "RAPID", "NRC_IMAGE", f"target {n}")
        recorded.append(encode_exposure_start(tag, next_seq(tag.apid, 1), Source.RECORDED, t, 0,
                                              start))
        for g in range(1, ngroups + 1):
            offset = 0
            for k in chunks:
                pixels = (1000 + 30 * g + rng.normal(0, 5, k)).astype(np.uint16)
                recorded.append(encode_science_data(tag, next_seq(tag.apid, 1), Source.RECORDED,
                                                    t, g, 1, g, offset, pixels))
                offset += k
            recorded.append(eng(Source.RECORDED, t))
            t += 1
        recorded.append(encode_exposure_end(tag, next_seq(tag.apid, 1), Source.RECORDED, t, 0,
                                            ExposureEnd(ngroups * len(chunks))))
    out = []
    for i, packet in enumerate(recorded):
        out.append(packet)
        if i % 3 == 0:
            out.append(eng(Source.REALTIME, t + i))
    return b"".join(out)


def _ours_chunked(stream: bytes, eng: dict[int, int] | None, chunk: int) -> DecodedChunk:
    dec = StreamDecoder(eng)
    outs = [dec.feed(stream[p:p + chunk]) for p in range(0, len(stream), chunk)] + [dec.flush()]
    data = b"".join(o.packets_bytes() for o in outs)
    return decode_all(data, eng)  # re-index the concatenated packets in one buffer


def crosscheck(stream: bytes, eng: dict[int, int] | None) -> int:
    """Assert all three decoders agree on every packet; return the packet count."""
    ours = decode_all(stream, eng)
    assert ours.skipped == [], "a fault-free stream decodes without skipped bytes"
    p = ours.packets
    n = len(p)
    assert int(p.length.sum()) == len(stream)
    # split into chunks, ours still finds the same packets
    chunked = _ours_chunked(stream, eng, 7919)
    assert chunked.data == stream and chunked.packets == p

    # spacepackets: split by packet id, then unpack each header
    ids = [PacketId(PacketType.TM, True, apid) for apid in sorted(set(p.apid.tolist()))]
    parsed = parse_space_packets(stream, ids)
    assert parsed.skipped_ranges == []
    assert parsed.scanned_bytes == len(stream)
    assert len(parsed.tm_list) == n
    sp = [SpacePacketHeader.unpack(raw) for raw in parsed.tm_list]
    assert [bytes(raw) for raw in parsed.tm_list] == [ours.packet(i) for i in range(n)]
    assert [h.ccsds_version for h in sp] == [0] * n
    assert [int(h.packet_type) for h in sp] == [0] * n
    assert [h.sec_header_flag for h in sp] == [True] * n
    assert [h.apid for h in sp] == p.apid.tolist()
    assert [int(h.seq_flags) for h in sp] == p.seq_flags.tolist()
    assert [h.seq_count for h in sp] == p.seq.tolist()
    assert [h.data_len for h in sp] == (p.length - 7).tolist()
    assert [h.packet_len for h in sp] == p.length.tolist()

    # ccsdspy: packet split and primary-header arrays
    split = split_packet_bytes(io.BytesIO(stream))
    assert split == [ours.packet(i) for i in range(n)]
    hdr = read_primary_headers(io.BytesIO(stream))
    assert hdr["CCSDS_VERSION_NUMBER"].tolist() == [0] * n
    assert hdr["CCSDS_PACKET_TYPE"].tolist() == [0] * n
    assert hdr["CCSDS_SECONDARY_FLAG"].tolist() == [1] * n
    assert hdr["CCSDS_APID"].tolist() == p.apid.tolist()
    assert hdr["CCSDS_SEQUENCE_FLAG"].tolist() == p.seq_flags.tolist()
    assert hdr["CCSDS_SEQUENCE_COUNT"].tolist() == p.seq.tolist()
    assert hdr["CCSDS_PACKET_LENGTH"].tolist() == (p.length - 7).tolist()
    return n


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_stream_agrees_with_spacepackets_and_ccsdspy(seed: int) -> None:
    stream = realistic_stream(seed)
    n = crosscheck(stream, ENG)
    assert n == crosscheck(stream, None)
    p = decode_all(stream, ENG).packets
    # the stream exercises every kind, both sources, several detectors and the 14-bit wrap
    assert set(p.kind.tolist()) == {1, 2, 3, 4}
    assert set(p.source.tolist()) == {0, 1}
    assert set(p.apid.tolist()) >= {0x400 + d for d in DETECTORS_USED}
    assert 0 in p.seq.tolist() and SEQ_MODULO - 1 in p.seq.tolist()


def test_simulated_contact_agrees_with_spacepackets_and_ccsdspy(tmp_path: Path) -> None:
    from streams.dictionary import load_dictionary
    from streams.simulator import SimOptions, simulate

    out = tmp_path / "contact.bin"
    simulate(SimOptions(seed=11, exposures=3), out, truth=tmp_path / "truth.json")
    stream = out.read_bytes()
    eng = load_dictionary().packet_lengths()
    n = crosscheck(stream, eng)
    p = decode_all(stream, eng).packets
    assert n > 100
    assert set(p.kind.tolist()) == {1, 2, 3, 4}
    assert set(p.apid[p.kind != 1].tolist()) <= SCIENCE_APIDS
