"""Fault injection on real processes: SIGKILL during a contact, and a consumer-group rebalance.

The contact is ingested at a paced rate while `downlink consumer` processes run,
so kills land in the middle of the work. Afterwards the outputs must equal the
truth byte for byte, with every exposure announced once and every packet on
``tlm.sci`` exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from consumers.framework.runner import run_services
from products.verify import verify
from streams.decoder import PacketIndex
from tests.integration.helpers import cli, fast, read_all, simulate, spawn

pytestmark = [pytest.mark.integration, pytest.mark.slow]



async def _wait_for_log(paths, text: str, count: int = 1, timeout: float = 60.0) -> None:
    """Wait until ``text`` appears in ``count`` of the log files (processes report progress there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sum(p.exists() and text in p.read_text() for p in paths)
        if found >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} not seen in {count} of {[p.name for p in paths]} within {timeout}s")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


async def _check_outputs(settings, truth, contact: str) -> None:
    """Every output equals what one clean pass over the contact gives: nothing lost, nothing twice."""
    result = verify(truth, settings.data_dir)
    assert result.ok, [r.__dict__ for r in result.mismatches]
    ready = Counter((m["exposure_id"], m["version"]) for _, m in await read_all(settings, "l0.ready"))
    assert set(ready) == {(e["exposure_id"], 1) for e in truth["exposures"]}
    assert set(ready.values()) == {1}, f"duplicate announcements: {ready.most_common(3)}"
    # tlm.sci: every decodable science packet of the stream (duplicates in the stream
    # included: l0 drops those) exactly once, identified by its position in the stream
    seen: Counter = Counter()
    for _, msg in await read_all(settings, "tlm.sci"):
        if msg["schema"] == "tlm.sci.run":
            seen.update(PacketIndex.from_bytes(msg["index"]).stream_offset.tolist())
    accounting = truth["accounting"][contact]
    science = sum(s["packets"] for key, s in accounting.items() if int(key.split("/")[0]) >= 0x400)
    assert len(seen) == science, "a science packet is missing on tlm.sci"
    assert max(seen.values()) == 1, "a science packet appears twice on tlm.sci"
    # accounting, alerts and dead letters: as the truth says, each event once
    report = json.loads(cli(settings, "report", contact, "--json").stdout)
    got = {f"{s['apid']}/{s['source']}": s for s in report["streams"].values()}
    for key, want in accounting.items():
        assert (got[key]["packets"], got[key]["gaps"], got[key]["duplicates"]) == \
            (want["packets"], want["gaps"], want["duplicates"]), key
    alerts = [m for _, m in await read_all(settings, "ops.alerts")]
    # sequence alerts leave on demux's fast lane, at-least-once (a batch redone after a kill sends
    # them again; consumers de-duplicate by range): every gap of the truth is reported, as its own
    # range, and nothing else is
    ranges: dict[str, set[tuple[int, int]]] = {}
    for a in alerts:
        if a["type"] == "gap":
            ranges.setdefault(f"{a['apid']}/{a['source']}", set()).update(map(tuple, a["ranges"]))
    for key, want in accounting.items():
        assert ranges.get(key, set()) == {tuple(g) for g in want["gaps"]}, key
    # everything else commits with the batch: exactly once
    once = [(a["type"], a.get("apid"), a.get("stream_offset"), a.get("count")) for a in alerts
            if a["type"] not in ("gap", "duplicate", "out_of_order", "seq_outlier")]
    assert len(once) == len(set(once)), "a bulk alert was emitted twice"
    assert sum(a["type"] == "contact_end" for a in alerts) == 1
    dead = [m["stream_offset"] for _, m in await read_all(settings, "tlm.deadletter")]
    assert len(dead) == len(set(dead)), "dead-lettered bytes were emitted twice"
    garbage = [f for f in truth["faults"] if f["type"] in ("garbage", "corrupt")]
    assert len(dead) >= 1 if garbage else dead == []


async def test_sigkill_demux_and_l0_at_random_points(settings, topics, tmp_path):
    settings = fast(settings)
    # ~40 MB paced at 6 MB/s: the contact flows for several seconds while processes are killed
    truth = simulate(settings, tmp_path, seed=21, contact="CRASH1", size="40MB",
                     faults="drop=0.003,dup=0.003,garbage=0.002", max_subarray=1024)
    rng = random.Random(2126)
    logs = tmp_path / "logs"
    logs.mkdir()
    ingest = spawn(settings, "ingest", str(tmp_path / "CRASH1.bin"), "--contact", "CRASH1",
                   "--rate", "48Mbps", log=logs / "ingest.log")
    procs = {name: spawn(settings, "consumer", name, "--instance", "crash", log=logs / f"{name}.log")
             for name in ("demux", "l0")}
    kills = 0
    try:
        deadline = time.monotonic() + 60
        while (ingest.poll() is None or kills < 6) and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.8, 2.5))
            name = rng.choice(sorted(procs))
            _kill(procs[name])
            kills += 1
            procs[name] = spawn(settings, "consumer", name, "--instance", "crash",
                                log=logs / f"{name}.log")
        assert ingest.wait(timeout=120) == 0
    finally:
        for proc in procs.values():
            _kill(proc)
    assert kills >= 6
    # finish whatever is left in one process, same transactional ids
    assert await run_services(settings, ["demux", "l0"], until_idle=True, instance="crash") == 0
    await _check_outputs(settings, truth, "CRASH1")


async def test_rebalance_when_an_l0_instance_dies(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=22, contact="REBAL1", exposures=24)
    logs = tmp_path / "logs"
    logs.mkdir()
    demux = spawn(settings, "consumer", "demux", log=logs / "demux.log")
    l0a = spawn(settings, "consumer", "l0", "--instance", "a", log=logs / "l0a.log")
    l0b = spawn(settings, "consumer", "l0", "--instance", "b", log=logs / "l0b.log")
    ingest = None
    try:
        # both instances hold partitions before the contact starts flowing
        await _wait_for_log([logs / "l0a.log", logs / "l0b.log"], "l0 state loaded", count=2)
        ingest = spawn(settings, "ingest", str(tmp_path / "REBAL1.bin"), "--contact", "REBAL1",
                       "--rate", "6Mbps", log=logs / "ingest.log")
        await _wait_for_log([logs / "l0b.log"], "L0 written")
        _kill(l0b)  # mid-contact: its open exposures must be taken over by instance a
        assert ingest.wait(timeout=120) == 0
        # the group notices (session timeout), instance a replays b's partitions from their
        # pinned offsets; b's open transaction is aborted by the broker (transaction timeout)
        deadline = time.monotonic() + 120
        expected = {e["exposure_id"] for e in truth["exposures"]}
        while time.monotonic() < deadline:
            announced = {m["exposure_id"] for _, m in await read_all(settings, "l0.ready")}
            if announced >= expected:
                break
            await asyncio.sleep(1.0)
    finally:
        for proc in (demux, l0a):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        if ingest is not None and ingest.poll() is None:
            _kill(ingest)
    log_a = (logs / "l0a.log").read_text()
    assert log_a.count("l0 state loaded") >= 2, "instance a was never reassigned b's partitions"
    assert "L0 written" in log_a, "instance a wrote nothing"
    await _check_outputs(settings, truth, "REBAL1")
