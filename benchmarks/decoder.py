"""Decoder throughput: ours vs spacepackets vs ccsdspy on the same bytes, same run.

The stream is built with the ICD encoders of :mod:`streams.packets`: exposures
of 4000-pixel science-data packets (plausible ramps: bias, signal, noise) with
exposure start/end, interleaved with real-time and recorded engineering
packets of a few fixed lengths, as a contact delivers them.

- ours: :class:`streams.decoder.StreamDecoder` fed 1 MiB chunks, then flushed
  (packets, every header and tag field as columns). Best of ``repeats``.
- spacepackets: ``parse_space_packets`` (packet split by known packet ids) then
  ``SpacePacketHeader.unpack`` of each packet. Pure Python per packet, so it is
  timed on a prefix of the stream and scaled (``spacepackets_packets_timed``).
- ccsdspy: ``ccsdspy.utils.read_primary_headers`` (primary-header fields as
  arrays; its variable-length reader walks packets in Python, so it is timed on
  a prefix and scaled, ``ccsdspy_packets_timed``), and, for reference,
  ``ccsdspy.utils.split_packet_bytes`` (packet split only) on the same prefix.

A second, engineering-only stream (34..512-byte packets, ``small_*`` keys)
shows the small-packet case, where per-packet Python costs the most.

Every decoder must find the same number of packets on the bytes it was given,
else the run fails. The last line printed by ``main`` is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import machine
from streams.decoder import StreamDecoder, decode_all
from streams.packets import (
    ExposureEnd,
    ExposureStart,
    ExposureTag,
    Source,
    encode_eng,
    encode_exposure_end,
    encode_exposure_start,
    encode_science_data_batch,
)

CHUNK = 1 << 20
PIXELS = 4000
#: engineering APID -> total packet length (a few fixed lengths, like a dictionary's)
ENG_LENGTHS = {0x101: 64, 0x102: 120, 0x110: 256, 0x120: 34, 0x1A0: 512}
#: science packets between two engineering bursts
SCI_RUN = 48
#: timing prefix for the pure-Python libraries (ccsdspy's header reader is slow)
REFERENCE_BYTES = 64 << 20
#: size of the engineering-only (small packet) stream
SMALL_BYTES = 8 << 20


def build_stream(size_bytes: int, seed: int = 0) -> tuple[bytes, int]:
    """About ``size_bytes`` of contact stream and its packet count (vectorized)."""
    rng = np.random.default_rng(seed)
    # a pool of plausible pixel rows (bias + ramp + read noise), reused with a per-packet shift
    pool_rows = 256
    base = rng.normal(1500.0, 40.0, size=(pool_rows, PIXELS)) + np.linspace(0, 900, PIXELS)
    pool = np.clip(base, 0, 65535).astype(np.uint16)
    eng_apids = list(ENG_LENGTHS)
    blocks: list[bytes] = []
    total = 0
    packets = 0
    eng_seq = dict.fromkeys(eng_apids, 0)
    coarse = 2_000_000_000
    exposure = 0
    while total < size_bytes:
        exposure += 1
        detector = 1 + exposure % 18
        tag = ExposureTag(1234, 1 + exposure // 100, 1, 1, 1, 1, exposure % 100000, detector)
        n_data = int(rng.integers(200, 600))
        start = ExposureStart(nints=1, ngroups=10, nframes=1, groupgap=0, substrt1=1,
                              substrt2=1, subsize1=2048, subsize2=2048,
                              expected_packets=n_data, tframe_us=10_737_000,
                              readpatt="MEDIUM8", exp_type="NRC_IMAGE", target="NGC 1234")
        seq = 0
        blocks.append(encode_exposure_start(tag, seq, Source.RECORDED, coarse, 0, start))
        packets += 1
        for first in range(0, n_data, SCI_RUN):
            k = min(SCI_RUN, n_data - first)
            idx = np.arange(first, first + k)
            rows = pool[(idx + exposure) % pool_rows] + np.uint16(exposure % 7)
            sci = encode_science_data_batch(
                tag, seq=idx + 1, source=Source.RECORDED, coarse=np.full(k, coarse),
                fine=idx % 65536, integration=np.ones(k, np.int64),
                group=1 + idx // 1049, pixel_offset=(idx % 1049) * PIXELS, pixels=rows)
            blocks.append(sci.tobytes())
            packets += k
            for apid in eng_apids[: int(rng.integers(1, len(eng_apids) + 1))]:
                params = rng.integers(0, 256, ENG_LENGTHS[apid] - 14, dtype=np.uint8).tobytes()
                blocks.append(encode_eng(apid, eng_seq[apid], int(rng.integers(0, 2)), coarse,
                                         0, params))
                eng_seq[apid] += 1
                packets += 1
            coarse += 1
        blocks.append(encode_exposure_end(tag, n_data + 1, Source.RECORDED, coarse, 0,
                                          ExposureEnd(n_data)))
        packets += 1
        total = sum(map(len, blocks))
    return b"".join(blocks), packets


def build_eng_stream(size_bytes: int, seed: int = 0) -> tuple[bytes, int]:
    """Engineering packets only (34..512 bytes): the small-packet case, where a
    per-packet Python loop costs the most."""
    rng = np.random.default_rng(seed)
    apids = np.array(list(ENG_LENGTHS))
    lengths = np.array([ENG_LENGTHS[a] for a in apids])
    count = int(size_bytes // lengths.mean()) + 1
    pick = rng.integers(0, len(apids), count)
    payload = rng.integers(0, 256, int(lengths.max()), dtype=np.uint8).tobytes()
    packets = [encode_eng(int(apids[k]), i % 16384, i & 1, 2_000_000_000 + i // 100, 0,
                          payload[: int(lengths[k]) - 14]) for i, k in enumerate(pick.tolist())]
    return b"".join(packets), len(packets)


def _timed(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - t0)
    return best, count


def _ours(stream: bytes) -> int:
    dec = StreamDecoder(ENG_LENGTHS)
    mv = memoryview(stream)
    n = 0
    for pos in range(0, len(stream), CHUNK):
        n += len(dec.feed(mv[pos:pos + CHUNK]).packets)
    return n + len(dec.flush().packets)


def _spacepackets(buf: bytes) -> int:
    from spacepackets.ccsds.spacepacket import (
        PacketId,
        PacketType,
        SpacePacketHeader,
        parse_space_packets,
    )

    ids = [PacketId(PacketType.TM, True, apid)
           for apid in list(ENG_LENGTHS) + [0x400 + d for d in range(1, 19)]]
    result = parse_space_packets(buf, ids)
    headers = [SpacePacketHeader.unpack(p) for p in result.tm_list]
    return len(headers)


def _ccsdspy_headers(buf: bytes) -> int:
    from ccsdspy.utils import read_primary_headers

    return len(read_primary_headers(io.BytesIO(buf))["CCSDS_APID"])


def _ccsdspy_split(buf: bytes) -> int:
    from ccsdspy.utils import split_packet_bytes

    return len(split_packet_bytes(io.BytesIO(buf)))


def _prefix(stream: bytes, size: int) -> bytes:
    """Whole packets only, so every library sees a clean stream."""
    cut = decode_all(stream[:size])
    end = int(cut.packets.offset[-1] + cut.packets.length[-1])
    return stream[:end]


def run(size_mb: int = 256, seed: int = 0, repeats: int = 3) -> dict[str, Any]:
    """Build ``size_mb`` MB of stream and time all three decoders on it."""
    logging.getLogger("ccsdspy").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    stream, packets = build_stream(size_mb * 10**6, seed)
    build_s = time.perf_counter() - t0
    nbytes = len(stream)

    ours_s, ours_n = _timed(lambda: _ours(stream), repeats)
    if ours_n != packets:
        raise RuntimeError(f"our decoder found {ours_n} packets, the stream has {packets}")

    ref = _prefix(stream, min(REFERENCE_BYTES, nbytes))
    ref_packets = len(decode_all(ref).packets)
    sp_s, sp_n = _timed(lambda: _spacepackets(ref), 1)
    cc_s, cc_n = _timed(lambda: _ccsdspy_headers(ref), 1)
    cs_s, cs_n = _timed(lambda: _ccsdspy_split(ref), 1)
    for name, n in (("spacepackets", sp_n), ("ccsdspy", cc_n), ("ccsdspy split", cs_n)):
        if n != ref_packets:
            raise RuntimeError(f"{name} found {n} packets in the prefix, ours {ref_packets}")

    # small packets: engineering only, whole stream for every decoder
    small, small_packets = build_eng_stream(min(SMALL_BYTES, nbytes), seed)
    sm_ours_s, n1 = _timed(lambda: _ours(small), repeats)
    sm_sp_s, n2 = _timed(lambda: _spacepackets(small), 1)
    sm_cc_s, n3 = _timed(lambda: _ccsdspy_headers(small), 1)
    if not n1 == n2 == n3 == small_packets:
        raise RuntimeError(f"small-packet counts differ: ours {n1}, spacepackets {n2}, "
                           f"ccsdspy {n3}, stream {small_packets}")

    mb = 1e6
    out: dict[str, Any] = {
        "benchmark": "decoder",
        "ours_mpkt_per_s": round(packets / ours_s / 1e6, 4),
        "ours_mb_per_s": round(nbytes / ours_s / mb, 1),
        "spacepackets_mpkt_per_s": round(sp_n / sp_s / 1e6, 4),
        "spacepackets_mb_per_s": round(len(ref) / sp_s / mb, 2),
        "ccsdspy_mpkt_per_s": round(cc_n / cc_s / 1e6, 4),
        "ccsdspy_mb_per_s": round(len(ref) / cc_s / mb, 2),
        "ccsdspy_split_mpkt_per_s": round(cs_n / cs_s / 1e6, 4),
        "ccsdspy_split_mb_per_s": round(len(ref) / cs_s / mb, 2),
        "ratio_to_spacepackets": round(sp_s / len(ref) * nbytes / ours_s, 1),
        "ratio_to_ccsdspy": round(cc_s / len(ref) * nbytes / ours_s, 1),
        "small_packets": small_packets,
        "small_bytes": len(small),
        "small_ours_mpkt_per_s": round(small_packets / sm_ours_s / 1e6, 4),
        "small_ours_mb_per_s": round(len(small) / sm_ours_s / mb, 1),
        "small_spacepackets_mpkt_per_s": round(small_packets / sm_sp_s / 1e6, 4),
        "small_ccsdspy_mpkt_per_s": round(small_packets / sm_cc_s / 1e6, 4),
        "packets": packets,
        "bytes": nbytes,
        "chunk_bytes": CHUNK,
        "ours_repeats": repeats,
        "spacepackets_packets_timed": sp_n,
        "spacepackets_bytes_timed": len(ref),
        "ccsdspy_packets_timed": cc_n,
        "ccsdspy_bytes_timed": len(ref),
        "ccsdspy_api": "ccsdspy.utils.read_primary_headers (split: split_packet_bytes)",
        "spacepackets_api": "parse_space_packets + SpacePacketHeader.unpack",
        "ours_api": "StreamDecoder.feed (1 MiB chunks) + flush",
        "build_s": round(build_s, 2),
        "size_mb": size_mb,
        "seed": seed,
    }
    out.update(machine("spacepackets", "ccsdspy"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="downlink bench decoder", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256, help="stream size in MB (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best kept)")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    result = run(args.size_mb, args.seed, args.repeats)
    if not args.json:
        print(f"ours          {result['ours_mb_per_s']:>10.1f} MB/s "
              f"{result['ours_mpkt_per_s']:>8.4f} Mpkt/s  ({result['packets']} packets)")
        print(f"spacepackets  {result['spacepackets_mb_per_s']:>10.2f} MB/s "
              f"{result['spacepackets_mpkt_per_s']:>8.4f} Mpkt/s  "
              f"(timed on {result['spacepackets_packets_timed']} packets)")
        print(f"ccsdspy       {result['ccsdspy_mb_per_s']:>10.2f} MB/s "
              f"{result['ccsdspy_mpkt_per_s']:>8.4f} Mpkt/s  "
              f"(split only: {result['ccsdspy_split_mb_per_s']:.2f} MB/s)")
        print(f"small packets ({result['small_packets']}): ours "
              f"{result['small_ours_mpkt_per_s']:.3f}, spacepackets "
              f"{result['small_spacepackets_mpkt_per_s']:.3f}, ccsdspy "
              f"{result['small_ccsdspy_mpkt_per_s']:.3f} Mpkt/s")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
