"""Raw contact -> demux -> L0 on the real broker, checked against simulator truth."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from consumers.framework.runner import run_services
from products.verify import verify
from monitoring import metrics
from tests.integration.helpers import cli, fast, ingest, read_all, simulate

pytestmark = pytest.mark.integration



async def _process(settings) -> None:
    assert await run_services(settings, ["demux", "l0"], until_idle=True) == 0


def _assert_verified(truth, data_dir: Path) -> None:
    result = verify(truth, data_dir)
    assert result.ok, [r.__dict__ for r in result.mismatches]


async def _announcements(settings) -> Counter:
    ready = await read_all(settings, "l0.ready")
    return Counter((m["exposure_id"], m["version"]) for _, m in ready)


async def test_clean_contact_l0_equals_truth(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=11, contact="CLEAN1", exposures=20)
    assert len(truth["exposures"]) >= 15
    assert len({e["tag"]["detector"] for e in truth["exposures"]}) >= 3
    ingest(settings, tmp_path / "CLEAN1.bin", "CLEAN1")
    await _process(settings)
    _assert_verified(truth, settings.data_dir)
    assert all(e["complete"] for e in truth["exposures"])
    announced = await _announcements(settings)
    assert set(announced) == {(e["exposure_id"], 1) for e in truth["exposures"]}
    assert set(announced.values()) == {1}, "each exposure announced exactly once"
    dead = await read_all(settings, "tlm.deadletter")
    assert dead == []
    report = json.loads(cli(settings, "report", "CLEAN1", "--json").stdout)
    assert report["missing"] == 0 and report["duplicates"] == 0 and report["ended"]
    assert report["bytes"] == truth["contacts"][0]["bytes"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_faulted_contact(settings, topics, tmp_path):
    settings = fast(settings).replace(metrics_port=_free_port())
    faults = "drop=0.004,dup=0.004,reorder=5,reorder_p=0.01,corrupt=0.002,garbage=0.003,wrap"
    truth = simulate(settings, tmp_path, seed=12, contact="FAULT1", exposures=20, faults=faults)
    kinds = Counter(f["type"] for f in truth["faults"])
    for kind in ("drop", "dup", "reorder", "corrupt", "garbage", "wrap"):
        assert kinds[kind] > 0, f"simulator injected no {kind}"
    gaps_metric_before = _metric_total(metrics.SEQ_MISSING)
    ingest(settings, tmp_path / "FAULT1.bin", "FAULT1")
    await _process(settings)
    # L0: duplicates and reorders leave L0 identical; drops listed exactly
    _assert_verified(truth, settings.data_dir)
    # accounting report = truth accounting
    report = json.loads(cli(settings, "report", "FAULT1", "--json").stdout)
    expected = truth["accounting"]["FAULT1"]
    got = {f"{s['apid']}/{s['source']}": s for s in report["streams"].values()}
    assert set(got) == set(expected)
    for key, want in expected.items():
        assert got[key]["packets"] == want["packets"], key
        assert got[key]["gaps"] == want["gaps"], key
        assert got[key]["duplicates"] == want["duplicates"], key
        assert got[key]["out_of_order"] == want["out_of_order"], key
    total_missing = sum(n for s in expected.values() for _, n in s["gaps"])
    assert total_missing > 0
    # metrics: missing packets counted (process-global registry: compare the increase)
    assert _metric_total(metrics.SEQ_MISSING) - gaps_metric_before >= total_missing
    # the process serves them on /metrics, labelled by APID and source (never an exposure id)
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics.port}/metrics").read().decode()
    assert "downlink_packets_missing_total{apid=" in scraped
    assert "downlink_l0_written_total" in scraped and "jw0" not in scraped
    # ops.alerts: gaps coalesced per (contact, APID, source), each gap a [first missing, count] range
    alerts = [m for _, m in await read_all(settings, "ops.alerts")]
    gap_alerts = {(a["apid"], a["source"], f, c) for a in alerts if a["type"] == "gap" for f, c in a["ranges"]}
    for key, want in expected.items():
        apid, source = map(int, key.split("/"))
        for first, count in want["gaps"]:
            covered = sum(c for (a, s, f, c) in gap_alerts if a == apid and s == source
                          and (f - first) % 16384 < count)
            assert covered >= count, (key, first, count)
    # garbage and corrupt headers land in the dead-letter topic at the declared offsets
    dead = [m for _, m in await read_all(settings, "tlm.deadletter")]
    spans = [(d["stream_offset"], d["stream_offset"] + d["length"]) for d in dead]
    for fault in truth["faults"]:
        if fault["type"] in ("garbage", "corrupt"):
            a = fault["stream_offset"]
            assert any(lo <= a < hi for lo, hi in spans), fault
    for d in dead:
        assert d["reason"] and d["contact"] == "FAULT1" and len(d["data"]) == d["length"]


def _metric_total(counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


async def test_split_exposure_gives_partial_then_complete(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=13, contact="SPLITA", exposures=6, faults="split",
                     next_contact="SPLITB")
    split = [f for f in truth["faults"] if f["type"] == "split"]
    assert split
    exposure_id = split[0]["exposure_id"]
    ingest(settings, tmp_path / "SPLITA.bin", "SPLITA")
    await _process(settings)
    manifest = json.loads((settings.data_dir / exposure_id[:7] / f"{exposure_id}_l0.json").read_text())
    assert manifest["version"] == 1 and not manifest["complete"] and manifest["missing_packets"]
    ingest(settings, tmp_path / "SPLITB.bin", "SPLITB")
    await _process(settings)
    _assert_verified(truth, settings.data_dir)
    manifest = json.loads((settings.data_dir / exposure_id[:7] / f"{exposure_id}_l0.json").read_text())
    assert manifest["version"] == 2 and manifest["complete"]
    assert manifest["contacts"] == ["SPLITA", "SPLITB"]
    assert (settings.data_dir / exposure_id[:7] / f"{exposure_id}_l0.v1.dat").exists()
    announced = await _announcements(settings)
    assert announced[(exposure_id, 1)] == 1 and announced[(exposure_id, 2)] == 1


async def test_redump_fills_dropped_packets_in_a_new_version(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=14, contact="DUMPA", exposures=8,
                     faults="drop=0.01,redump", next_contact="DUMPB")
    redumped = {f["exposure_id"] for f in truth["faults"] if f["type"] == "redump" and f.get("exposure_id")}
    assert redumped, "the simulator re-dumped no science packet"
    ingest(settings, tmp_path / "DUMPA.bin", "DUMPA")
    await _process(settings)
    for exposure_id in redumped:
        m = json.loads((settings.data_dir / exposure_id[:7] / f"{exposure_id}_l0.json").read_text())
        assert m["version"] == 1 and not m["complete"]
    ingest(settings, tmp_path / "DUMPB.bin", "DUMPB")
    await _process(settings)
    _assert_verified(truth, settings.data_dir)
    for exposure_id in redumped:
        m = json.loads((settings.data_dir / exposure_id[:7] / f"{exposure_id}_l0.json").read_text())
        assert m["version"] == 2 and m["complete"] and m["contacts"] == ["DUMPA", "DUMPB"]
