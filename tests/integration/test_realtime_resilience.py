"""realtime under faults: the MQTT broker away mid-contact, demux SIGKILLed mid-contact.

The broker outage uses a private Mosquitto started by the test on free ports
(never the shared stack's); demux runs as a real process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from consumers.framework.runner import run_services
from core.settings import Settings
from downlink.stack.mosquitto import MOSQUITTO, probe_mqtt
from monitoring import metrics
from streams.kafka import make_admin
from streams.simulator.run import realtime_truth
from tests.integration.helpers import env_for, spawn
from tests.integration.test_realtime import (D, MqttTap, clear_retained, retained, rt_settings, sim)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: contact time per real second when ingest paces the file at the simulated rate
RATE = 100_000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMosquitto:
    """A Mosquitto of this test only (same settings as the stack's, on a free port)."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, _free_port()
        self.proc: subprocess.Popen | None = None
        home.mkdir(parents=True, exist_ok=True)
        (home / "mosquitto.conf").write_text(
            f"user {getpass.getuser()}\nallow_anonymous true\npersistence false\n"
            f"log_dest file {home / 'mosquitto.log'}\nmax_queued_messages 10000\n"
            f"listener {self.port} 127.0.0.1\nprotocol mqtt\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.home / "mosquitto.conf")])
        deadline = time.monotonic() + 10
        while await probe_mqtt("127.0.0.1", self.port, timeout=1.0):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"private mosquitto did not start: {self.home / 'mosquitto.log'}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def _ingest_paced(settings: Settings, path: Path, contact: str, log: Path) -> subprocess.Popen:
    env = env_for(settings)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "downlink", "ingest", str(path), "--contact", contact,
                                 "--rate", f"{RATE * 8 / 1000:g}kbps", "--chunk-bytes", "32kB"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT)


async def _committed(settings: Settings, topic: str) -> int:
    admin = make_admin(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.group("realtime"))
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == settings.topic(topic) and meta.offset > 0)


async def _wait_process(proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("process did not finish in time")
        await asyncio.sleep(0.2)
    return proc.returncode


def _final_state_matches(state: dict, settings: Settings, series: dict) -> list[str]:
    wrong = []
    for p in D.parameters:
        got = state.get(f"{settings.realtime.topic_root}/eng/{p.subsystem}/{p.name}")
        if got is None or got["raw"] != series[p.apid].raw[p.name][-1].item():
            wrong.append(p.name)
    return wrong


async def test_broker_away_for_10s_consumer_goes_on_and_final_state_is_right(settings, topics, tmp_path):
    broker = PrivateMosquitto(tmp_path / "mosquitto")
    await broker.start()
    settings = rt_settings(settings, mqtt_url=broker.url, realtime_reconnect_max_seconds=1.0)
    path, _, options = sim(tmp_path, seed=31, contact="OUT1", exposures=10, rate=RATE)
    series = {t.apid: t for t in realtime_truth(options)}
    superseded0 = metrics.REALTIME_SUPERSEDED._value.get()
    services = asyncio.create_task(run_services(settings, ["demux", "realtime"]))
    feeder = None
    try:
        async with MqttTap(settings) as tap:
            feeder = _ingest_paced(settings, path, "OUT1", tmp_path / "ingest.log")
            await tap.wait_for(lambda: len(tap.eng()) > 20, timeout=60)
            broker.stop()
            t_down = time.monotonic()
            await asyncio.sleep(1.0)
            before = await _committed(settings, "tlm.eng.realtime")
            await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - t_down)))
            after = await _committed(settings, "tlm.eng.realtime")
            assert not services.done(), "the service must survive the broker outage"
            assert after > before, "offsets keep advancing while the broker is away"
            await broker.start()
            assert await _wait_process(feeder, 120) == 0
            deadline = time.monotonic() + 60
            while True:
                wrong = _final_state_matches(await retained(settings, broker.url), settings, series)
                if not wrong:
                    break
                assert time.monotonic() < deadline, f"retained state wrong for {wrong}"
                await asyncio.sleep(0.5)
        assert not services.done()
        assert metrics.REALTIME_SUPERSEDED._value.get() > superseded0, "values superseded while away"
        status = (await retained(settings, broker.url))[f"{settings.realtime.topic_root}/status/realtime"]
        assert status["online"] is True and status["connections"] >= 2
    finally:
        if feeder is not None and feeder.poll() is None:
            feeder.kill()
        services.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await services
        with contextlib.suppress(Exception):
            await clear_retained(settings, broker.url)
        broker.stop()


async def test_demux_sigkill_mid_contact_publishes_nothing_twice_and_loses_nothing(settings, topics, tmp_path):
    settings = rt_settings(settings)
    path, _, options = sim(tmp_path, seed=32, contact="KILL1", exposures=10, rate=RATE)
    series = {t.apid: t for t in realtime_truth(options)}
    demux = spawn(settings, "consumer", "demux", log=tmp_path / "demux1.log")
    services = asyncio.create_task(run_services(settings, ["realtime"]))
    feeder = None
    try:
        async with MqttTap(settings) as tap:
            feeder = _ingest_paced(settings, path, "KILL1", tmp_path / "ingest.log")
            await tap.wait_for(lambda: len(tap.eng()) > 50, timeout=90)
            os.kill(demux.pid, signal.SIGKILL)
            demux.wait(10)
            await asyncio.sleep(1.0)
            demux = spawn(settings, "consumer", "demux", log=tmp_path / "demux2.log")
            assert await _wait_process(feeder, 120) == 0
            total = sum(len(s.times) * len(D.by_apid()[a]) for a, s in series.items())
            await tap.wait_for(lambda: len({(t, p["tai"]) for t, p in tap.eng()}) >= total, timeout=60)
            await asyncio.sleep(2.0)  # anything late would be a repeat
        # a sample may go out again only flagged stale (its APID fell silent while demux was down)
        eng = Counter((t, p["tai"]) for t, p in tap.eng() if not p["stale"])
        repeats = {k: n for k, n in eng.items() if n > 1}
        assert not repeats, f"{len(repeats)} values published twice, e.g. {next(iter(repeats))}"
        assert len(eng) == total, "every real-time sample is published"
        ids = Counter(a["id"] for a in tap.alerts("limit"))
        assert all(n == 1 for n in ids.values())
        assert not services.done()
    finally:
        if feeder is not None and feeder.poll() is None:
            feeder.kill()
        if demux.poll() is None:
            demux.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                demux.wait(15)
            if demux.poll() is None:
                demux.kill()
        services.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await services
        await clear_retained(settings)
