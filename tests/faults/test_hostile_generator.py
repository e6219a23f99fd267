"""The hostile-packet generator (``--faults hostile=P``), checked with the real decoder; no servers.

Every class is present, each hostile packet sits where the truth says with
the bad field it claims, valid headers throughout, and the valid exposures
are untouched (same L0 sha256 as the same seed without hostile packets).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from streams.decoder import decode_all
from streams.dictionary import load_dictionary
from streams.packets import SCIENCE_TAG_END, Kind
from streams.simulator import FaultSpec, SimOptions, sequence_accounting, simulate
from streams.simulator.hostile import CLASSES, UNDECODABLE


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, faults in (("plain", "drop=0.002,dup=0.002"), ("hostile", "drop=0.002,dup=0.002,hostile=0.002")):
        simulate(SimOptions(seed=11, exposures=10, faults=FaultSpec.parse(faults), contact="H1"),
                 tmp / f"{name}.bin", tmp / f"{name}.json")
        truth = json.loads((tmp / f"{name}.json").read_text())
        data = (tmp / f"{name}.bin").read_bytes()
        out[name] = (truth, data, decode_all(data, load_dictionary().packet_lengths()))
    return out


def _hostile(truth: dict) -> list[dict]:
    return [f for f in truth["faults"] if f["type"] == "hostile"]


def test_every_class_is_injected_with_an_expected_outcome(runs):
    truth, _, _ = runs["hostile"]
    found = _hostile(truth)
    assert {f["class"] for f in found} == set(CLASSES)
    for f in found:
        assert f["expected"] == CLASSES[f["class"]][1] and f["reason"]
        assert f["contact"] == "H1" and f["stream_offset"] > 0 and f["length"] > 0
    assert FaultSpec.parse("hostile=0.01").hostile == 0.01
    assert "hostile=0.01" in str(FaultSpec.parse("hostile=0.01,drop=0.1"))


def test_valid_exposures_and_other_faults_are_untouched(runs):
    plain, hostile = runs["plain"][0], runs["hostile"][0]
    assert [(e["exposure_id"], e["l0_sha256"], e["complete"]) for e in plain["exposures"]] == \
        [(e["exposure_id"], e["l0_sha256"], e["complete"]) for e in hostile["exposures"]]
    other = lambda t: [(f["type"], f["seq"], f["apid"]) for f in t["faults"] if f["type"] != "hostile"]  # noqa: E731
    assert other(plain) == other(hostile)


def test_each_hostile_packet_is_where_and_what_the_truth_says(runs):
    truth, data, decoded = runs["hostile"]
    p = decoded.packets
    at = {int(o): i for i, o in enumerate(p.stream_offset.tolist())}
    skipped = {(s.stream_offset, len(s.data)) for s in decoded.skipped}
    for f in _hostile(truth):
        raw = data[f["stream_offset"]:f["stream_offset"] + f["length"]]
        assert raw[0] >> 5 == 0 and raw[0] & 0x08, "a valid primary header (version 0, sec. header)"
        apid = struct.unpack(">H", raw[:2])[0] & 0x7FF
        assert apid == f["apid"] and (struct.unpack(">H", raw[2:4])[0] & 0x3FFF) == f["seq"]
        if f["class"] in UNDECODABLE:
            assert (f["stream_offset"], f["length"]) in skipped, f
            continue
        i = at[f["stream_offset"]]
        assert int(p.length[i]) == f["length"] and int(p.kind[i]) == f["kind"], f
        cls = f["class"]
        if cls == "tag_program":
            assert p.program[i] > 99999
        elif cls == "tag_field":
            assert (p.observation[i] > 999 or p.visit[i] > 999 or p.visit_group[i] > 99
                    or p.parallel_seq[i] > 9 or p.activity[i] > 99)
        elif cls == "exposure_zero":
            assert p.exposure[i] == 0
        elif cls == "zero_subarray":
            assert struct.unpack_from(">HH", raw, 38) == (0, 0)
        elif cls == "huge_geometry":
            assert struct.unpack_from(">HH", raw, SCIENCE_TAG_END) == (4000, 4000)
        elif cls == "subarray_outside":
            x0, _, nx, _ = struct.unpack_from(">HHHH", raw, 34)
            assert x0 + nx - 1 > 2048
        elif cls == "pixel_offset":
            assert p.pixel_offset[i] == 1 << 28
        elif cls in ("integration_range", "group_range"):
            e = next(e for e in truth["exposures"] if e["exposure_id"] == f["exposure_id"])
            v = int(p.integration[i] if cls == "integration_range" else p.group[i])
            limit = e["meta"]["nints" if cls == "integration_range" else "ngroups"]
            assert v == 0 or v > limit
        elif cls == "conflict":
            # the transmitted packet with the same identity differs in its pixels only
            same = np.flatnonzero((p.apid == p.apid[i]) & (p.kind == Kind.SCIENCE_DATA)
                                  & (p.exposure == p.exposure[i]) & (p.integration == p.integration[i])
                                  & (p.group == p.group[i]) & (p.pixel_offset == p.pixel_offset[i]))
            assert len(same) >= 2
            twins = [decoded.packet(j) for j in same.tolist() if j != i]
            assert all(t[:38] != raw[:38] or t != raw for t in twins)
            assert any(t[4:38] == raw[4:38] and t[38:] != raw[38:] for t in twins)
        elif cls == "seq_outlier":
            assert p.kind[i] == Kind.ENG


def test_accounting_counts_hostile_packets_except_the_outlier(runs):
    truth, _, decoded = runs["hostile"]
    p = decoded.packets
    outliers = {f["stream_offset"] for f in _hostile(truth) if f["class"] == "seq_outlier"}
    keep = ~np.isin(p.stream_offset, list(outliers))
    key = p.apid.astype(np.int64) * 2 + p.source
    want = {f"{k // 2}/{k % 2}": sequence_accounting(p.seq[keep & (key == k)])
            for k in np.unique(key[keep]).tolist()}
    assert truth["accounting"]["H1"] == want
    assert truth["contacts"][0]["packets"] == len(p)
    # a hostile science packet repeats the previous count: no gap opens because of it
    plain = runs["plain"][0]["accounting"]["H1"]
    assert {k: v["gaps"] for k, v in truth["accounting"]["H1"].items()} == \
        {k: v["gaps"] for k, v in plain.items()}


def test_same_seed_same_hostile_bytes(runs, tmp_path: Path):
    truth, data, _ = runs["hostile"]
    simulate(SimOptions(seed=11, exposures=10, faults=FaultSpec.parse("drop=0.002,dup=0.002,hostile=0.002"),
                        contact="H1"), tmp_path / "again.bin", tmp_path / "again.json")
    assert (tmp_path / "again.bin").read_bytes() == data
