"""L0 assembly (pure): any arrival order, chunking and duplication gives the canonical bytes."""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import given, settings, strategies as st

from consumers.l0.assembly import Assembly
from streams.decoder import decode_all
from streams.packets import (ExposureEnd, ExposureStart, ExposureTag, Kind, encode_exposure_end,
                             encode_exposure_start, encode_science_data)

TAG = ExposureTag(1234, 1, 1, 1, 1, 1, 1, 3)


def _exposure(nx: int, ny: int, ngroups: int, nints: int = 1, per_packet: int = 4000):
    offsets = list(range(0, nx * ny, per_packet))
    n_data = nints * ngroups * len(offsets)
    packets = [encode_exposure_start(TAG, 100, 1, 5000, 0, ExposureStart(
        nints, ngroups, 1, 0, 1, 1, nx, ny, n_data, 10_000, "RAPID", "NRC_IMAGE", "NGC 1234"))]
    seq = 101
    rng = np.random.default_rng(0)
    for i in range(1, nints + 1):
        for g in range(1, ngroups + 1):
            for o in offsets:
                n = min(per_packet, nx * ny - o)
                pixels = rng.integers(0, 65535, n, dtype=np.uint16)
                packets.append(encode_science_data(TAG, seq, 1, 5000 + seq, 0, i, g, o, pixels))
                seq += 1
    packets.append(encode_exposure_end(TAG, seq, 1, 9000, 0, ExposureEnd(n_data)))
    return packets


PACKETS = _exposure(100, 90, 3, nints=2)
IDEAL = b"".join(PACKETS)
DECODED = decode_all(IDEAL)


@st.composite
def arrivals(draw):
    n = len(PACKETS)
    order = draw(st.permutations(range(n)))
    dups = draw(st.lists(st.integers(0, n - 1), max_size=5))
    order = list(order) + dups
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=6)))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)]) if order[a:b]]


@given(arrivals())
@settings(max_examples=150, deadline=None)
def test_any_order_and_duplicates_give_canonical_bytes(runs):
    a = Assembly.for_exposure(TAG.exposure_id)
    for run in runs:
        a.add(DECODED.packets.take(np.array(run)), DECODED.data, "C1")
    assert a.complete
    content = a.build(1)
    assert content.data == IDEAL
    assert content.sha256 == hashlib.sha256(IDEAL).hexdigest()
    assert content.manifest["missing_packets"] == [] and content.manifest["missing_seq"] == []
    assert a.duplicates == sum(len(r) for r in runs) - len(PACKETS)


@given(st.sets(st.integers(0, len(PACKETS) - 1), min_size=1, max_size=6))
@settings(max_examples=100, deadline=None)
def test_missing_packets_are_listed_exactly(dropped):
    keep = np.array([i for i in range(len(PACKETS)) if i not in dropped])
    a = Assembly.for_exposure(TAG.exposure_id)
    a.add(DECODED.packets.take(keep), DECODED.data, "C1")
    assert not a.complete
    m = a.build(1).manifest
    pk = DECODED.packets
    want = set()
    for i in dropped:
        kind = int(pk.kind[i])
        want.add((kind, int(pk.integration[i]), int(pk.group[i]), int(pk.pixel_offset[i]))
                 if kind == Kind.SCIENCE_DATA else (kind, 0, 0, 0))
    got = {(p["kind"], p.get("integration", 0), p.get("group", 0), p.get("pixel_offset", 0))
           for p in m["missing_packets"]}
    if 0 in dropped:  # without the start packet the geometry is unknown: only "start missing"
        assert (int(Kind.EXPOSURE_START), 0, 0, 0) in got
    else:
        assert got == want
        assert sum(n for _, n in m["missing_seq"]) == len(dropped)
