"""realtime on the real broker and the real Mosquitto: values, limits, alerts, restarts.

Each test gets its own topic prefix and its own MQTT topic root
(``<prefix>jwst``), so tests never see each other's retained state; the
retained topics a test leaves are cleared at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from consumers.framework.runner import run_services
from consumers.realtime.decom import FINE_PER_S
from consumers.realtime.publisher import broker_address
from core.settings import Settings
from streams.decoder import PacketIndex
from streams.dictionary import load_dictionary
from streams.kafka import make_consumer
from streams.simulator.emit import time_code
from streams.simulator.options import FaultSpec, SimOptions
from streams.simulator.run import realtime_truth, simulate
from tests.integration.helpers import cli, ingest, read_all

pytestmark = pytest.mark.integration

D = load_dictionary()
#: a slow simulated downlink: a few MB of contact then span tens of seconds of real-time engineering
RATE = 100_000.0


def rt_settings(settings: Settings, **kw: Any) -> Settings:
    return settings.replace(realtime_topic_root=f"{settings.topic_prefix}jwst",
                            realtime_heartbeat_seconds=0.5, run_idle_seconds=1.5, **kw)


def sim(tmp: Path, *, seed: int, contact: str, exposures: int = 12, faults: str = "",
        rate: float = RATE) -> tuple[Path, dict[str, Any], SimOptions]:
    options = SimOptions(seed=seed, exposures=exposures, contact=contact, rate_bytes_per_s=rate,
                         faults=FaultSpec.parse(faults) if faults else FaultSpec())
    path = tmp / f"{contact}.bin"
    result = simulate(options, path)
    return path, result.truth, options


class MqttTap:
    """Every message under a topic root, with the wall time it arrived (a background subscriber)."""

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        self.settings = settings
        self.url = url or settings.mqtt.url
        self.root = settings.realtime.topic_root
        self.messages: list[tuple[str, dict[str, Any], bool, float]] = []
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> "MqttTap":
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task

    async def _run(self) -> None:
        host, port, transport = broker_address(self.url)
        while True:
            try:
                async with aiomqtt.Client(host, port, transport=transport) as client:  # type: ignore[arg-type]
                    await client.subscribe(f"{self.root}/#", qos=1)
                    self._ready.set()
                    async for m in client.messages:
                        if not m.payload:
                            continue
                        self.messages.append((str(m.topic), json.loads(m.payload), bool(m.retain),
                                              time.time()))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)  # a private broker being restarted by the test

    def eng(self, live_only: bool = True) -> list[tuple[str, dict[str, Any]]]:
        return [(t, p) for t, p, r, _ in self.messages
                if "/eng/" in t and not (live_only and r)]

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [p for t, p, _, _ in self.messages
                if t.startswith(f"{self.root}/alerts/") and (kind is None or t.endswith("/" + kind))]

    async def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for MQTT messages")
            await asyncio.sleep(0.1)


async def retained(settings: Settings, url: str | None = None) -> dict[str, dict[str, Any]]:
    """The retained messages under the test's root now (a fresh subscriber)."""
    from consumers.realtime.publisher import read_retained

    s = settings if url is None else settings.replace(mqtt_url=url)
    raw = await read_retained(s, [f"{settings.realtime.topic_root}/#"], timeout=10.0)
    return {t: json.loads(v) for t, v in raw.items()}


async def clear_retained(settings: Settings, url: str | None = None) -> None:
    host, port, transport = broker_address(url or settings.mqtt.url)
    topics = await retained(settings, url)
    with contextlib.suppress(aiomqtt.MqttError):
        async with aiomqtt.Client(host, port, transport=transport) as client:  # type: ignore[arg-type]
            for topic in topics:
                await client.publish(topic, b"", qos=1, retain=True)


def truth_by_packet(options: SimOptions) -> dict[int, dict[int, int]]:
    """APID -> packet time (2^-16 s) -> row of that sample in the regenerated truth."""
    out: dict[int, dict[int, int]] = {}
    for t in realtime_truth(options):
        coarse, fine = time_code(t.times)
        ticks = (coarse.astype(np.int64) << 16) | fine.astype(np.int64)
        out[t.apid] = {int(k): i for i, k in enumerate(ticks.tolist())}
    return out


async def _run_until_idle(settings: Settings, names: list[str]) -> None:
    assert await run_services(settings, names, until_idle=True) == 0


# -- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("feed", ["dump", "live"])
async def test_every_parameter_matches_the_simulator_truth(settings, topics, tmp_path, feed):
    """``dump``: an unpaced file, demux publishes the real-time packets; ``live``: a paced feed,
    ingest's real-time tap publishes them at reception and demux only what it did not cover."""
    settings = rt_settings(settings)
    path, truth, options = sim(tmp_path, seed=21, contact="RT1")
    series = {t.apid: t for t in realtime_truth(options)}
    rows = truth_by_packet(options)
    if feed == "live":
        cli(settings, "ingest", str(path), "--contact", "RT1", "--rate", "400Mbps")
        batches = [m for _, m in await read_all(settings, "tlm.eng.realtime")]
        assert batches and all(b["source"] == 0 for b in batches)  # the tap's, before demux ran
    else:
        ingest(settings, path, "RT1")
    try:
        async with MqttTap(settings) as tap:
            await _run_until_idle(settings, ["demux", "realtime"])
            await asyncio.sleep(0.5)
        if feed == "live":  # tap and demux together: every real-time packet once on the topic
            on_topic = Counter(off for _, b in await read_all(settings, "tlm.eng.realtime")
                               for off in PacketIndex.from_bytes(b["index"]).stream_offset.tolist())
            assert set(on_topic.values()) == {1}
            assert len(on_topic) == sum(len(ser.times) for ser in series.values())
        eng = tap.eng()
        seen_params = set()
        for topic, payload in eng:
            name = topic.rsplit("/", 1)[1]
            p = D.parameter(name)
            assert topic == f"{settings.realtime.topic_root}/eng/{p.subsystem}/{p.name}"
            assert set(payload) >= {"time", "raw", "value", "unit", "limit", "stale"}
            row = rows[p.apid][int(round(payload["tai"] * FINE_PER_S))]
            t = series[p.apid]
            assert payload["raw"] == t.raw[p.name][row].item(), (name, payload)
            assert payload["value"] == pytest.approx(float(p.calibrate(t.raw[p.name][row])), rel=1e-12, abs=1e-12)
            if p.model == "analog":  # the simulator's value before quantization, within one raw step
                step = abs(p.calibration[1]) if len(p.calibration) == 2 else 1e-3 * abs(t.values[name][row])
                assert abs(payload["value"] - t.values[name][row]) <= step, (name, payload)
            assert payload["unit"] == p.unit
            seen_params.add(name)
        assert seen_params == {p.name for p in D.parameters}
        # every real-time sample sent is published once per parameter, none twice (a sample may
        # go out again only flagged stale, once its APID has been silent for a few periods)
        fresh = [(t, p) for t, p in eng if not p["stale"]]
        assert {(t, p["tai"]) for t, p in eng if p["stale"]} <= {(t, p["tai"]) for t, p in fresh}
        published = Counter((t, p["tai"]) for t, p in fresh)
        assert set(published.values()) == {1}
        for apid, ser in series.items():
            n_params = len(D.by_apid()[apid])
            got = sum(1 for (t, _), _ in published.items() if D.parameter(t.rsplit("/", 1)[1]).apid == apid)
            assert got == len(ser.times) * n_params, f"APID 0x{apid:03x}"
        # the retained state is each parameter's last sample
        state = await retained(settings)
        for p in D.parameters:
            last = series[p.apid].raw[p.name][-1].item()
            assert state[f"{settings.realtime.topic_root}/eng/{p.subsystem}/{p.name}"]["raw"] == last
        # limit excursions of the real-time stream were announced
        limit_alerts = tap.alerts("limit")
        for ex in truth["eng_excursions"]:
            if ex["source"] == 0:
                assert any(a["parameter"] == ex["parameter"] and a["to"] == ex["level"]
                           for a in limit_alerts), ex
        status = state[f"{settings.realtime.topic_root}/status/realtime"]
        assert "lag" in status and "last_packet_age_s" in status
        assert status["online"] is False and status["reason"] == "stopped"  # said goodbye
        contact = state[f"{settings.realtime.topic_root}/status/contact"]
        assert contact["contact"] == "RT1" and contact["packets"] == truth["contacts"][0]["packets"]
    finally:
        await clear_retained(settings)


def _expected_gaps(truth: dict[str, Any], contact: str) -> Counter:
    gaps: Counter = Counter()
    for key, acct in truth["accounting"][contact].items():
        apid, source = (int(x) for x in key.split("/"))
        for first, count in acct["gaps"]:
            gaps[(apid, source, first, count)] += 1
    return gaps


def _published_gaps(tap: MqttTap) -> Counter:
    return Counter((a["apid"], a["source"], a["first_seq"], a["count"]) for a in tap.alerts("gap"))


@pytest.mark.parametrize("feed", ["dump", "live"])
async def test_gap_alerts_once_per_range_and_never_twice_after_a_restart(settings, topics, tmp_path,
                                                                        producer_factory, feed):
    """``live``: ingest's tap sends each gap at reception and demux sends it again later; the
    operator still gets one alert per range."""
    settings = rt_settings(settings)
    path, truth, _ = sim(tmp_path, seed=22, contact="GAP1", faults="drop=0.01")
    expected = _expected_gaps(truth, "GAP1")
    assert sum(expected.values()) >= 5
    if feed == "live":
        cli(settings, "ingest", str(path), "--contact", "GAP1", "--rate", "400Mbps")
        early = [m for _, m in await read_all(settings, "ops.alerts")]  # before demux ran
        assert early and all(a["detail"].get("origin") == "ingest" for a in early)
    else:
        ingest(settings, path, "GAP1")
    try:
        async with MqttTap(settings) as tap:
            await _run_until_idle(settings, ["demux", "realtime"])
            await tap.wait_for(lambda: sum(_published_gaps(tap).values()) >= sum(expected.values()))
            await asyncio.sleep(0.5)
            assert _published_gaps(tap) == expected
            for a in tap.alerts("gap"):
                assert a["contact"] == "GAP1" and a["ranges"] == [[a["first_seq"], a["count"]]]
            assert tap.alerts("contact"), "the end of contact is announced"
            # a demux that crashed re-sends its alerts: copy every ops.alerts record once more
            producer = await producer_factory()
            reader = make_consumer(settings, settings.topic("ops.alerts"), group=None,
                                   auto_offset_reset="earliest")
            await reader.start()
            try:
                batch = await reader.getmany(timeout_ms=3000)
                records = [r for recs in batch.values() for r in recs]
            finally:
                await reader.stop()
            assert records
            for r in records:
                await producer.send_and_wait(settings.topic("ops.alerts"), r.value, key=r.key)
            before = len(tap.alerts())
            # a new realtime process (fresh memory) reads the replayed alerts
            await _run_until_idle(settings, ["realtime"])
            await asyncio.sleep(1.0)
            assert len(tap.alerts()) == before, tap.alerts()[before:]
            assert _published_gaps(tap) == expected
    finally:
        await clear_retained(settings)


async def test_oscillation_is_one_transition_and_persistence_delays_by_n(settings, topics,
                                                                        producer_factory):
    from consumers.realtime.decom import encode_batch

    n = 3
    settings = rt_settings(settings, realtime_limit_persistence=n, realtime_limit_deadband=0.05)
    p = D.parameter("EPS_BUS_VOLTAGE")
    others = [q for q in D.by_apid()[p.apid] if q.name != p.name]
    ylo, yhi = p.yellow
    width = yhi - ylo
    # nominal for 10 samples, then noise of +-1% of the band around the yellow high limit
    rng = np.random.default_rng(5)
    eng = np.concatenate([np.full(10, (ylo + yhi) / 2), yhi + 0.01 * width * rng.uniform(-1, 1, 200)])
    eng[10:10 + n] = yhi + 0.005 * width  # the first n samples beyond: the transition is at the n-th
    seq = np.arange(len(eng))
    ticks = (np.int64(2_100_000_000) << 16) + seq * (1 << 16)
    raw = {q.name: np.full(len(eng), ((q.nominal or 0) - q.calibration[0]) / q.calibration[1])
           for q in others}
    raw[p.name] = (eng - p.calibration[0]) / p.calibration[1]
    producer = await producer_factory()
    try:
        async with MqttTap(settings) as tap:
            runner = asyncio.create_task(run_services(settings, ["realtime"]))
            for lo in range(0, len(eng), 7):  # small batches, as the fast lane sends them
                sl = slice(lo, lo + 7)
                b = encode_batch(D, "OSC1", p.apid, seq[sl], ticks[sl],
                                 {k: v[sl] for k, v in raw.items()}, raw_ts_ms=int(time.time() * 1000))
                await producer.send_and_wait(settings.topic("tlm.eng.realtime"), b.encode(),
                                             key=str(p.apid).encode())
            await tap.wait_for(lambda: any(pl["seq"] == len(eng) - 1 for t, pl in tap.eng()
                                           if t.endswith(p.name)))
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        limit = [a for a in tap.alerts("limit") if a["parameter"] == p.name]
        assert [(a["from"], a["to"], a["seq"]) for a in limit] == [("nominal", "yellow", 10 + n - 1)]
        # the publisher keeps only the latest value per parameter when MQTT lags (a loaded machine
        # supersedes some samples), so judge every sample that was published, whichever they are
        states = {pl["seq"]: pl["limit"] for t, pl in tap.eng() if t.endswith(p.name)}
        assert states[len(eng) - 1] == "yellow"
        assert {states[s] for s in states if s < 10 + n - 1} <= {"nominal"}
        assert {states[s] for s in states if s >= 10 + n - 1} == {"yellow"}
    finally:
        await clear_retained(settings)


async def test_the_publisher_sends_each_value_at_once(settings):
    """paho leaves Nagle on: a value written right after another would wait ~40 ms for an ACK.
    The publisher's socket to the real Mosquitto has TCP_NODELAY (measured: bursts of 8 packets,
    p95 75 -> 35 ms)."""
    import socket

    from consumers.realtime.publisher import MqttPublisher, no_nagle

    async with MqttPublisher(settings, f"{settings.topic_prefix}nagle").client() as client:
        sock = client._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # paho's default
        no_nagle(client)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
