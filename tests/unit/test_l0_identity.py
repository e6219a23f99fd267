"""Packet identity is collision-free and sorts in canonical order; geometry gives the expected set."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from consumers.l0.identity import (END_KEY, R_GRID, R_NUMBERING, START_KEY, Geometry, Limits, check_packets,
                                   identity, split_identity)
from streams.decoder import decode_all
from streams.packets import ExposureStart, Kind
from tests.unit.l0_fixtures import TAG, data_packet, exposure

_u16 = st.integers(1, 0xFFFF)
# every value but the one whose key is the reserved exposure-end key: (65535, 65535, 2**32-1)
# is off the 4000-pixel grid, so validation rejects it before it gets an identity
_u32 = st.integers(0, 0xFFFF_FFFE)


def _index(fields):
    raw = b"".join(data_packet(i, g, o, 1) for i, g, o in fields)
    return decode_all(raw).packets


@given(st.lists(st.tuples(_u16, _u16, _u32), min_size=2, max_size=40, unique=True))
@settings(max_examples=200, deadline=None)
def test_distinct_fields_give_distinct_identities(fields):
    keys = identity(_index(fields))
    assert len(set(keys.tolist())) == len(fields)
    kind, i, g, o = split_identity(keys)
    assert list(zip(i.tolist(), g.tolist(), o.tolist())) == fields
    assert set(kind.tolist()) == {int(Kind.SCIENCE_DATA)}


def test_the_only_data_fields_with_a_reserved_key_are_rejected_by_validation():
    """(0, 0, 0) has the start key and (65535, 65535, 2**32-1) the end key; neither gets that far."""
    index = _index([(0, 0, 0), (65535, 65535, 0xFFFF_FFFF)])
    assert identity(index).tolist() == [int(START_KEY), int(END_KEY)]
    assert check_packets(index, TAG).tolist() == [R_NUMBERING, R_GRID]


def test_offset_2_28_is_not_the_next_group():
    """The old identity ORed the offset into the group bits: (g=1, o=2**28) was (g=2, o=0)."""
    keys = identity(_index([(1, 1, 1 << 28), (1, 2, 0), (1, 1, 1 << 31), (2, 1, 0)]))
    assert len(set(keys.tolist())) == 4


def test_identity_sorts_in_canonical_order():
    packets = exposure(100, 90, 3, nints=2)
    d = decode_all(b"".join(reversed(packets)))
    order = np.argsort(identity(d.packets), kind="stable")
    assert d.packets_bytes(order) == b"".join(packets)


def test_expected_keys_match_a_full_exposure():
    packets = exposure(100, 90, 3, nints=2)
    d = decode_all(b"".join(packets))
    start = ExposureStart(2, 3, 1, 0, 1, 1, 100, 90, 18, 1, "R", "E", "T")
    geo = Geometry.check(start, 3, Limits())
    assert isinstance(geo, Geometry) and geo.expected == 18
    data = identity(d.packets)[d.packets.kind == Kind.SCIENCE_DATA]
    assert np.array_equal(np.sort(data), geo.expected_keys())


def test_limits_bound_the_geometry():
    start = ExposureStart(10, 10, 1, 0, 1, 1, 2048, 2048, 10 * 10 * 1049, 1, "R", "E", "T")
    assert isinstance(Geometry.check(start, 3, Limits()), Geometry)
    assert isinstance(Geometry.check(start, 3, Limits(max_exposure_bytes=1 << 20)), str)
    assert isinstance(Geometry.check(start, 3, Limits(max_nints=5)), str)
    miri = ExposureStart(1, 1, 1, 0, 1, 1, 2048, 1024, 525, 1, "R", "E", "T")
    assert isinstance(Geometry.check(miri, 11, Limits()), str)  # MIRI is 1032 columns wide


def test_an_index_that_disagrees_with_its_bytes_is_refused():
    from consumers.l0.identity import index_mismatch
    d = decode_all(b"".join(exposure(100, 90, 2)))
    assert index_mismatch(d.packets, d.data) is None
    for column, row, delta in (("pixel_offset", 2, 4000), ("group", 1, 1), ("kind", 0, 1),
                               ("exposure", 3, 1), ("offset", 1, 2)):
        idx = d.packets.take(np.arange(len(d.packets)))
        values = getattr(idx, column).copy()
        values[row] += delta
        setattr(idx, column, values)
        assert index_mismatch(idx, d.data), column
    assert "outside" in index_mismatch(d.packets, d.data[:500])
