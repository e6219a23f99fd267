"""Exposures made with the packet codec, for the l0 unit tests."""

from __future__ import annotations

import numpy as np

from streams.packets import (ExposureEnd, ExposureStart, ExposureTag, encode_exposure_end,
                             encode_exposure_start, encode_science_data)

TAG = ExposureTag(1234, 1, 1, 1, 1, 1, 1, 3)
EXPOSURE_ID = TAG.exposure_id


def start_packet(nx: int, ny: int, ngroups: int, nints: int = 1, *, expected: int | None = None,
                 seq: int = 100, tag: ExposureTag = TAG) -> bytes:
    per = -(-nx * ny // 4000)
    n_data = nints * ngroups * per if expected is None else expected
    return encode_exposure_start(tag, seq, 1, 5000, 0, ExposureStart(
        nints, ngroups, 1, 0, 1, 1, nx, ny, n_data, 10_000, "RAPID", "NRC_IMAGE", "NGC 1234"))


def exposure(nx: int, ny: int, ngroups: int, nints: int = 1, seed: int = 0,
             tag: ExposureTag = TAG) -> list[bytes]:
    """Start, every data packet in canonical order, end."""
    offsets = list(range(0, nx * ny, 4000))
    n_data = nints * ngroups * len(offsets)
    packets = [start_packet(nx, ny, ngroups, nints, tag=tag)]
    seq = 101
    rng = np.random.default_rng(seed)
    for i in range(1, nints + 1):
        for g in range(1, ngroups + 1):
            for o in offsets:
                n = min(4000, nx * ny - o)
                pixels = rng.integers(0, 65535, n, dtype=np.uint16)
                packets.append(encode_science_data(tag, seq, 1, 5000 + seq, 0, i, g, o, pixels))
                seq += 1
    packets.append(encode_exposure_end(tag, seq, 1, 9000, 0, ExposureEnd(n_data)))
    return packets


def data_packet(i: int, g: int, offset: int, n: int, value: int = 7, seq: int = 999,
                tag: ExposureTag = TAG) -> bytes:
    return encode_science_data(tag, seq, 1, 6000, 0, i, g, offset,
                               np.full(n, value, dtype=np.uint16))
