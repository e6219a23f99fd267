"""Real-time latency: a real-time packet received by the ground system -> its MQTT message.

What is timed, per real-time engineering packet of the probe contact: from
the packet's ``raw_ts`` — its reception by ingest's real-time tap (a live
feed: the probe is paced at the downlink rate), or for a packet demux
publishes the Kafka timestamp of its raw chunk — to the moment a subscriber
in this process receives the first MQTT message of that packet (the realtime
service copies ``raw_ts`` into every payload). Same machine, same clock. The
reception comes before the packet's 1 MiB raw chunk is even complete, so
this is stricter than timing from the chunk's production.

Two phases, each with a fresh probe contact simulated at the Ka-band rate and
ingested paced at that rate (28 Mbit/s):

1. alone: demux and realtime (separate processes) only carry the probe;
2. under load: a bulk contact is ingested unpaced at the same time and demux
   and l0 process it at full speed (same demux process, as in operations).

It also reports the share up to Kafka (``raw_ts`` -> its ``tlm.eng.realtime``
record appended by the broker, the topic switched to LogAppendTime for the
run: the tap's send, or demux's decoding), realtime's share (that append ->
the packet's MQTT message) and the raw partition of each contact. Processes
run as in operations: l0 and the unpaced dump at ``run.bulk_nice``.

The probes drop a few packets (``PROBE_FAULTS``): each gap alert is timed
from the raw chunk that revealed it (the packet after the missing ones)
reaching Kafka to its ``jwst/alerts/gap`` message (goal: within 1 s).

Keys: ``p50_ms``, ``p95_ms``, ``p99_ms`` (alone), ``p99_ms_under_load`` and
``p50_ms_under_load`` (goal p99 under load < 100 ms), ``gap_alert_p99_ms``
and ``gap_alert_p99_ms_under_load``. The topics and MQTT
topics of the run are removed afterwards; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from benchmarks.common import machine
from consumers.ingest.resume import partition_for
from consumers.realtime.publisher import broker_address
from core.settings import Settings
from streams.simulator.options import FaultSpec, SimOptions
from streams.simulator.run import simulate
from streams.topics import create_topics, delete_topics, load_topics

KA_RATE = 3.5e6  # bytes/s = 28 Mbit/s
#: faults of the probe contacts: a few dropped packets, so that gap alerts can be timed too
PROBE_FAULTS = "drop=0.003"


def _env(settings: Settings, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DOWNLINK_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
                "DOWNLINK_TOPIC_PREFIX": settings.topic_prefix,
                "DOWNLINK_MQTT_URL": settings.mqtt.url,
                "DOWNLINK_REALTIME_TOPIC_ROOT": settings.realtime.topic_root,
                "DOWNLINK_DATA_DIR": str(state / "data"), "DOWNLINK_STATE_DIR": str(state / "state")})
    return env


def _spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "downlink", *args], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


class Probe:
    """Receives MQTT engineering messages; first arrival per (contact, APID, packet time)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.first: dict[tuple[str, int, float], tuple[float, float]] = {}
        #: (contact, stream offset of the packet that revealed the gap) -> first arrival
        self.gaps: dict[tuple[str, int], float] = {}
        self.ready = asyncio.Event()

    async def run(self) -> None:
        host, port, transport = broker_address(self.settings.mqtt.url)
        async with aiomqtt.Client(host, port, transport=transport) as client:  # type: ignore[arg-type]
            await client.subscribe(f"{self.settings.realtime.topic_root}/eng/#", qos=0)
            await client.subscribe(f"{self.settings.realtime.topic_root}/alerts/gap", qos=1)
            self.ready.set()
            async for m in client.messages:
                now = time.time()
                if m.retain or not m.payload:
                    continue
                p = json.loads(m.payload)
                if str(m.topic).endswith("/alerts/gap"):
                    if p.get("stream_offset") is not None:
                        self.gaps.setdefault((p.get("contact"), int(p["stream_offset"])), now)
                    continue
                key = (p.get("contact"), p["apid"], p["tai"])
                if key not in self.first and p.get("raw_ts"):
                    self.first[key] = (now, float(p["raw_ts"]))

    async def settle(self, contact: str, expected: int, timeout: float = 180.0) -> None:
        """Wait until every real-time packet of ``contact`` arrived (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for c, _, _ in self.first if c == contact) >= expected:
                return
            await asyncio.sleep(0.2)

    def latencies_ms(self, contact: str) -> np.ndarray:
        return np.array([(t - raw) * 1000.0 for (c, _, _), (t, raw) in self.first.items() if c == contact])


def _realtime_packets(path: Path) -> int:
    """Real-time engineering packets in a contact file (what the probe must receive)."""
    from streams.decoder import decode_all
    from streams.dictionary import load_dictionary

    pk = decode_all(path.read_bytes(), load_dictionary().packet_lengths()).packets
    return int(((pk.kind == 1) & (pk.source == 0)).sum())


async def _log_append_time(settings: Settings, topic: str) -> None:
    """Let the broker stamp ``topic``'s records when it appends them (demux's share includes its send)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.kafka import make_admin

    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic(topic),
                                                  {"message.timestamp.type": "LogAppendTime"})])
    finally:
        await admin.close()


async def _fast_lane_ms(settings: Settings, probe: Probe) -> dict[str, dict[str, dict[str, float | int]]]:
    """Per probe contact, per packet: raw chunk produced -> its ``tlm.eng.realtime`` record appended
    by the broker (demux's share, its producer included) and that append -> the packet's first
    MQTT message at the subscriber (realtime's share: fetch, decommutation, limits, MQTT)."""
    from streams.decoder import PacketIndex
    from streams.kafka import read_to_end
    from streams.messages import EngBatch

    demux: dict[str, list[float]] = {"RTA": [], "RTB": []}
    realtime: dict[str, list[float]] = {"RTA": [], "RTB": []}
    async for rec in read_to_end(settings, "tlm.eng.realtime"):
        b = EngBatch.decode(rec.value)
        if b.contact not in demux or not b.raw_ts:
            continue
        demux[b.contact].append(rec.timestamp - b.raw_ts)
        index = PacketIndex.from_bytes(b.index)
        ticks = (index.coarse.astype(np.int64) << 16) | index.fine.astype(np.int64)
        for tai in (ticks / 65536.0).tolist():
            got = probe.first.get((b.contact, b.apid, tai))
            if got is not None:
                realtime[b.contact].append(got[0] * 1000.0 - rec.timestamp)
    return {c: {"demux": _stats(np.array(demux[c])), "realtime": _stats(np.array(realtime[c]))}
            for c in demux}


async def _gap_alert_ms(settings: Settings, probe: Probe) -> dict[str, dict[str, float | int]]:
    """Per probe contact: the raw chunk that revealed a gap (the packet after the missing ones)
    reaching Kafka -> its MQTT gap alert at the subscriber."""
    from streams.kafka import read_to_end

    chunks: dict[str, list[tuple[int, int, float]]] = {"RTA": [], "RTB": []}
    async for rec in read_to_end(settings, "downlink.raw"):
        h = {k: v.decode() for k, v in rec.headers or ()}
        if h.get("contact") in chunks and rec.value:
            chunks[h["contact"]].append((int(h["offset"]), len(rec.value), rec.timestamp / 1000))
    out = {}
    for contact, spans in chunks.items():
        ms = []
        for (c, offset), arrived in probe.gaps.items():
            if c != contact:
                continue
            for start, length, ts in spans:
                if start <= offset < start + length:
                    ms.append((arrived - ts) * 1000.0)
        out[contact] = _stats(np.array(ms))
    return out


def _stats(ms: np.ndarray) -> dict[str, float | int]:
    if ms.size == 0:
        return {"n": 0}
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


async def _ingest(env: dict[str, str], log: Path, path: Path, contact: str, rate: str | None) -> int:
    args = ["ingest", str(path), "--contact", contact] + (["--rate", rate] if rate else [])
    proc = _spawn(env, log, *args)
    while proc.poll() is None:
        await asyncio.sleep(0.2)
    return proc.returncode


async def arun(settings: Settings, probe_mb: int = 60, bulk_mb: int = 400) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    settings = settings.replace(topic_prefix=f"{settings.topic_prefix}bench-rt-{run_id}.",
                                realtime_topic_root=f"bench-rt-{run_id}/jwst")
    specs = load_topics(settings.topics_file)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="downlink-bench-rt-") as tmp_:
        tmp = Path(tmp_)
        files = {}
        # one observatory: packet times only move forward, so the bulk contact (its own real-time
        # packets included) is the oldest and each probe newer than everything before it
        for name, seed, mb in (("BULK", 900, bulk_mb), ("RTA", 901, probe_mb), ("RTB", 902, probe_mb)):
            files[name] = tmp / f"{name}.bin"
            # the probes drop packets: each gap is an operator alert, timed like the values
            faults = FaultSpec.parse(PROBE_FAULTS if name != "BULK" else "")
            await asyncio.to_thread(simulate, SimOptions(seed=seed, size_bytes=mb * 1_000_000, contact=name,
                                                         rate_bytes_per_s=KA_RATE, faults=faults), files[name])
        expected = {name: _realtime_packets(files[name]) for name in ("RTA", "RTB")}
        env = _env(settings, tmp)
        await create_topics(settings, specs)
        await _log_append_time(settings, "tlm.eng.realtime")
        probe = Probe(settings)
        probe_task = asyncio.create_task(probe.run())
        try:
            await asyncio.wait_for(probe.ready.wait(), 10)
            procs.append(_spawn(env, tmp / "realtime.log", "consumer", "realtime"))
            procs.append(_spawn(env, tmp / "demux.log", "consumer", "demux"))
            procs.append(_spawn(env, tmp / "l0.log", "consumer", "l0"))
            await asyncio.sleep(3.0)  # groups join
            # 1. alone, paced at the downlink rate
            assert await _ingest(env, tmp / "ingest-a.log", files["RTA"], "RTA", "28Mbps") == 0
            await probe.settle("RTA", expected["RTA"])
            alone = _stats(probe.latencies_ms("RTA"))
            # 2. the same while a bulk dump is ingested unpaced and processed at full speed
            bulk = asyncio.create_task(_ingest(env, tmp / "ingest-bulk.log", files["BULK"], "BULK", None))
            await asyncio.sleep(1.0)
            assert await _ingest(env, tmp / "ingest-b.log", files["RTB"], "RTB", "28Mbps") == 0
            bulk_done_during_probe = bulk.done()
            assert await bulk == 0
            await probe.settle("RTB", expected["RTB"])
            loaded = _stats(probe.latencies_ms("RTB"))
            lane = await _fast_lane_ms(settings, probe)
            await asyncio.sleep(1.0)  # the last alerts
            gaps = await _gap_alert_ms(settings, probe)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            probe_task.cancel()
            await asyncio.gather(probe_task, return_exceptions=True)
            await delete_topics(settings, [settings.topic(t) for t in specs])
    return {
        "p50_ms": alone.get("p50_ms"), "p95_ms": alone.get("p95_ms"), "p99_ms": alone.get("p99_ms"),
        "p99_ms_under_load": loaded.get("p99_ms"), "p50_ms_under_load": loaded.get("p50_ms"),
        "p95_ms_under_load": loaded.get("p95_ms"),
        "alone": alone, "under_load": loaded, "goal_p99_ms_under_load": 100,
        "raw_to_tlm_eng_realtime": {"alone": lane["RTA"]["demux"], "under_load": lane["RTB"]["demux"]},
        "tlm_eng_realtime_to_mqtt": {"alone": lane["RTA"]["realtime"], "under_load": lane["RTB"]["realtime"]},
        "gap_alert_p99_ms": gaps["RTA"].get("p99_ms"), "gap_alert_p99_ms_under_load": gaps["RTB"].get("p99_ms"),
        "gap_alerts": {"alone": gaps["RTA"], "under_load": gaps["RTB"], "goal_ms": 1000,
                       "what": "raw chunk that revealed the gap reaching Kafka -> MQTT jwst/alerts/gap"},
        "raw_partitions": {c: partition_for(c, range(specs["downlink.raw"].partitions))
                           for c in ("RTA", "RTB", "BULK")},
        "realtime_packets": expected,
        "probe_mb": probe_mb, "bulk_mb": bulk_mb, "downlink_rate_mbit_s": 28,
        "bulk_still_running_when_probe_ended": not bulk_done_during_probe,
        "kafka_bootstrap": settings.kafka.bootstrap, **machine("aiomqtt"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="downlink bench realtime", description=__doc__.splitlines()[0])
    ap.add_argument("--probe-mb", type=int, default=60, help="size of each paced probe contact (MB)")
    ap.add_argument("--bulk-mb", type=int, default=400, help="size of the unpaced bulk contact (MB)")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    result = asyncio.run(arun(Settings.from_env(), args.probe_mb, args.bulk_mb))
    if not args.json:
        print(f"real-time latency alone: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
              f"under load: p99 {result['p99_ms_under_load']} ms (goal < 100 ms); gap alerts p99 "
              f"{result['gap_alert_p99_ms']} / {result['gap_alert_p99_ms_under_load']} ms under load "
              "(goal < 1000 ms)", file=sys.stderr)
    print(json.dumps(result))
    return 0
