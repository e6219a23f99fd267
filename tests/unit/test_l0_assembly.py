"""L0 assembly (pure, spooled): any arrival order, chunking and duplication gives the canonical
bytes; completeness is the exact expected set; conflicts and invalid packets are kept aside."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consumers.l0.assembly import Assembly
from consumers.l0.identity import R_COUNT, R_GRID, R_GROUP, R_INTEGRATION, R_PIXELS, R_BAD_START
from streams.decoder import decode_all
from streams.packets import Kind
from tests.unit.l0_fixtures import EXPOSURE_ID, data_packet, exposure, start_packet

PACKETS = exposure(100, 90, 3, nints=2)
IDEAL = b"".join(PACKETS)
DECODED = decode_all(IDEAL)


def _new(tmp_path, name: str = "") -> Assembly:
    return Assembly.for_exposure(EXPOSURE_ID, tmp_path, token=name)


def _add(a: Assembly, raw: list[bytes], contact: str = "C1"):
    d = decode_all(b"".join(raw))
    assert len(d.packets) == len(raw)
    return a.add(d.packets, d.data, contact)


def _build(a: Assembly, tmp_path, version: int = 1):
    dest = tmp_path / f"out{version}.dat"
    sha, n = a.write(dest)
    data = dest.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha and len(data) == n
    return data, a.manifest(version, sha, n)


@st.composite
def arrivals(draw):
    n = len(PACKETS)
    order = draw(st.permutations(range(n)))
    dups = draw(st.lists(st.integers(0, n - 1), max_size=5))
    order = list(order) + dups
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=6)))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)]) if order[a:b]]


@given(arrivals())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_order_and_duplicates_give_canonical_bytes(tmp_path, runs):
    a = Assembly.for_exposure(EXPOSURE_ID, tmp_path, token=str(id(runs)))
    for run in runs:
        a.add(DECODED.packets.take(np.array(run)), DECODED.data, "C1")
    assert a.complete
    data, m = _build(a, tmp_path)
    assert data == IDEAL
    assert m["sha256"] == hashlib.sha256(IDEAL).hexdigest() and m["complete"]
    assert m["missing_packets"] == [] and m["missing_seq"] == [] and m["conflicts"] == []
    assert a.duplicates == sum(len(r) for r in runs) - len(PACKETS)
    a.close()


@given(st.sets(st.integers(0, len(PACKETS) - 1), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_missing_packets_are_listed_exactly(tmp_path, dropped):
    keep = np.array([i for i in range(len(PACKETS)) if i not in dropped])
    a = Assembly.for_exposure(EXPOSURE_ID, tmp_path, token=str(hash(tuple(dropped))))
    a.add(DECODED.packets.take(keep), DECODED.data, "C1")
    assert not a.complete
    _, m = _build(a, tmp_path)
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
        assert got == want and m["missing_count"] == len(dropped)
        assert sum(n for _, n in m["missing_seq"]) == len(dropped)
    a.close()


def test_offset_2_28_does_not_replace_a_real_packet(tmp_path):
    """The old identity ORed the offset into the group bits: (g=1, o=2**28) == (g=2, o=0)."""
    good = exposure(2000, 2, 2)  # one packet per group
    a = _new(tmp_path)
    hostile = data_packet(1, 1, 1 << 28, 4000)  # offset on the grid? 2**28 % 4000 != 0 anyway
    hostile_grid = data_packet(1, 1, 4000 * (1 << 16), 4000)  # on the grid, far outside
    _add(a, good[:2] + [hostile, hostile_grid] + good[2:])
    assert a.complete
    data, m = _build(a, tmp_path)
    assert data == b"".join(good)
    assert a.rejected_count == 2 and m["rejected_count"] == 2
    assert {r["reason"] for r in m["rejected"]} == {R_GRID, R_PIXELS}


@pytest.mark.parametrize("field,bad,reason", [
    ("integration", (2, 1, 0), R_INTEGRATION),
    ("group", (1, 4, 0), R_GROUP),
    ("offset", (1, 1, 8000), R_PIXELS),
])
def test_data_outside_the_geometry_is_rejected_never_complete_with_wrong_bytes(
        tmp_path, field, bad, reason):
    good = exposure(100, 90, 3)  # 9000 px: offsets 0, 4000, 8000 (1000 px)
    i, g, o = bad
    n = 1000 if o == 8000 else 4000
    if field == "offset":
        hostile = data_packet(i, g, 8000, 4000)  # 8000 + 4000 > 9000
    else:
        hostile = data_packet(i, g, o, n)
    a = _new(tmp_path)
    res = _add(a, good[:-1] + [hostile] + good[-1:])
    assert [r.reason for r in res.rejected] == [reason]
    assert res.rejected[0].data == hostile
    assert a.complete
    data, _ = _build(a, tmp_path)
    assert data == b"".join(good)


def test_count_off_the_grid_is_rejected(tmp_path):
    good = exposure(100, 90, 1)
    a = _new(tmp_path)
    res = _add(a, good[:1] + [data_packet(1, 1, 8000, 500)] + good[1:])
    assert [r.reason for r in res.rejected] == [R_COUNT]


def test_data_before_start_is_held_then_validated(tmp_path):
    good = exposure(100, 90, 2)
    hostile = data_packet(1, 9, 0, 4000)  # group 9 > NGROUPS 2: only the start can tell
    a = _new(tmp_path)
    r1 = _add(a, [hostile] + good[1:])  # everything but the start
    assert r1.rejected == [] and not a.complete
    r2 = _add(a, good[:1])
    assert [r.reason for r in r2.rejected] == [R_GROUP] and r2.rejected[0].data == hostile
    assert a.complete
    data, m = _build(a, tmp_path)
    assert data == b"".join(good) and m["rejected_count"] == 1


def test_conflict_keeps_both_copies_aside_and_is_never_complete(tmp_path):
    good = exposure(100, 90, 2)
    other = bytearray(good[3])
    other[-1] ^= 0xFF  # same identity, different pixels
    a = _new(tmp_path)
    _add(a, good)
    assert a.complete
    res = _add(a, [bytes(other)], "C2")
    assert len(res.conflicts) == 1 and not a.complete
    data, m = _build(a, tmp_path)
    assert good[3] not in data and bytes(other) not in data
    assert m["conflict_count"] == 1 and not m["complete"]
    c = m["conflicts"][0]
    assert c["sha256"] == [hashlib.sha256(good[3]).hexdigest(), hashlib.sha256(bytes(other)).hexdigest()]
    side = tmp_path / "side.dat"
    assert a.write_conflicts(side)
    blob = side.read_bytes()
    (o1, n1), (o2, n2) = c["side_file_ranges"]
    assert blob[o1:o1 + n1] == good[3] and blob[o2:o2 + n2] == bytes(other)
    # a third copy equal to the first is still no reason to pick it
    _add(a, [good[3]], "C3")
    assert not a.complete


def test_conflict_inside_one_run(tmp_path):
    good = exposure(100, 90, 1)
    other = bytearray(good[2])
    other[-2] ^= 1
    a = _new(tmp_path)
    res = _add(a, good[:3] + [bytes(other)] + good[3:])
    assert len(res.conflicts) == 1 and not a.complete


def test_two_different_starts_conflict(tmp_path):
    good = exposure(100, 90, 1)
    a = _new(tmp_path)
    _add(a, good)
    res = _add(a, [start_packet(100, 90, 1, seq=5)])
    assert len(res.conflicts) == 1 and res.conflicts[0].kind == Kind.EXPOSURE_START
    assert not a.complete


@pytest.mark.parametrize("nx,ny,ngroups,nints", [(0, 0, 1, 1), (100, 0, 1, 1), (2048, 2048, 4000, 4000),
                                                 (3000, 10, 1, 1)])
def test_poison_start_is_rejected_without_crash(tmp_path, nx, ny, ngroups, nints):
    expected = 1 if nx * ny == 0 else (nx * ny // 4000 * ngroups * nints) % (1 << 32)
    start = start_packet(nx, ny, ngroups, nints, expected=expected)
    a = _new(tmp_path)
    res = _add(a, [start, data_packet(1, 1, 0, 4000)])
    assert res.rejected and res.rejected[0].reason.startswith(R_BAD_START)
    assert a.geometry is None and not a.complete
    _, m = _build(a, tmp_path)  # a partial version can still be written, without a crash
    assert m["start_rejection"] and not m["validated"]


def test_wrong_expected_count_is_a_bad_start(tmp_path):
    a = _new(tmp_path)
    res = _add(a, [start_packet(100, 90, 2, expected=7)])
    assert res.rejected[0].reason.startswith(R_BAD_START)


def test_in_order_fast_path_renames_the_spool(tmp_path):
    a = _new(tmp_path)
    for p in PACKETS:  # one packet per run, canonical order
        _add(a, [p])
    spool = a.spool_path
    assert spool.exists()
    data, m = _build(a, tmp_path)
    assert data == IDEAL and not spool.exists()  # renamed, not copied


def test_seed_from_written_version_then_fill(tmp_path):
    keep = [p for i, p in enumerate(PACKETS) if i != 4]
    a = _new(tmp_path, "a")
    _add(a, keep)
    data, m = _build(a, tmp_path, 1)
    assert not m["complete"]
    b = _new(tmp_path, "b")
    b.seed(tmp_path / "out1.dat", m)
    assert b.duplicates == 0 and b.contacts == {"C1"}
    _add(b, PACKETS, "C2")  # a re-dump: everything again, the missing packet included
    assert b.complete and b.duplicates == len(PACKETS) - 1
    data, _ = _build(b, tmp_path, 2)
    assert data == IDEAL


def test_tag_mismatch_rejected(tmp_path):
    from streams.packets import ExposureTag
    other = ExposureTag(1234, 1, 1, 1, 1, 1, 2, 3)
    a = _new(tmp_path)
    res = _add(a, PACKETS[:2] + [data_packet(1, 1, 0, 4000, tag=other)])
    assert len(res.rejected) == 1 and "tag" in res.rejected[0].reason


def test_a_conflict_carries_over_to_the_next_version(tmp_path):
    """Version 2 is seeded from version 1: the conflict (and its evidence) stays, never complete."""
    from consumers.l0.writer import publish
    good = exposure(100, 90, 2)
    other = bytearray(good[3])
    other[-1] ^= 0xFF
    a = _new(tmp_path, "a")
    _add(a, good[:3] + [bytes(other)] + good[3:-2])  # the first copy, then the real one
    _add(a, [good[3], bytes(other)], "C1")  # copies of known variants: duplicates
    assert len(a.conflicts) == 1 and a.duplicates == 2
    sha, n = a.content_sha256()
    w1 = publish(tmp_path / "data", a, 1, sha, n, supersedes=None)
    a.close()
    b = _new(tmp_path, "b")
    b.seed(w1.data_path, w1.manifest)
    third = bytearray(good[3])
    third[-3] ^= 0x0F
    _add(b, good + [bytes(third)], "C2")  # a full re-dump and a third variant
    assert not b.complete and len(b.conflicts) == 2
    sha, n = b.content_sha256()
    w2 = publish(tmp_path / "data", b, 2, sha, n, supersedes=1)
    m = w2.manifest
    assert m["conflict_count"] == 2 and not m["complete"]
    blob = (tmp_path / "data" / EXPOSURE_ID[:7] / m["conflicts_file"]).read_bytes()
    (o1, n1), (o2, n2) = m["conflicts"][0]["side_file_ranges"]
    assert blob[o1:o1 + n1] == bytes(other) and blob[o2:o2 + n2] == good[3]
    b.close()
