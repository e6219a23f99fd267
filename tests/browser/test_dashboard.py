"""The dashboard in a real headless Chromium while a contact is replayed (real Kafka, real Mosquitto).

Chromium is Debian's (``/usr/bin/chromium``) driven by Playwright for Python
through ``executable_path`` (Playwright's own browser download is not
reachable). The page connects to the stack's Mosquitto WebSocket listener.
The screenshot is kept in the test's tmp dir (the artifact); with
``DOWNLINK_UPDATE_SCREENSHOTS=1`` it also replaces ``docs/images/dashboard.png``,
the picture in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from consumers.framework.runner import run_services
from consumers.realtime.decom import encode_batch
from streams.simulator.emit import time_code
from streams.simulator.run import realtime_truth
from tests.integration.helpers import env_for
from tests.integration.test_realtime import D, MqttTap, clear_retained, rt_settings, sim

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
RED = "rgb(255, 40, 40)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_dashboard_shows_live_values_and_turns_red(settings, topics, tmp_path, producer_factory):
    playwright = pytest.importorskip("playwright.async_api", reason="Playwright comes with `make setup` (dev extra)")
    assert shutil.which(CHROMIUM), "Debian chromium is installed by `make setup`"
    port = _free_port()
    settings = rt_settings(settings, realtime_dashboard_port=port,
                           realtime_ws_url=f"ws://127.0.0.1:{settings.stack.mqtt_ws_port}")
    path, _, options = sim(tmp_path, seed=41, contact="WEB1", exposures=5, rate=100_000.0)
    last_tick = max(int((np.int64(c) << 16) | np.int64(f))
                    for t in realtime_truth(options) for c, f in zip(*time_code(t.times)))
    services = asyncio.create_task(run_services(settings, ["dashboard", "realtime", "demux"]))
    feeder = None
    red: asyncio.Task | None = None
    try:
        async with MqttTap(settings) as tap, playwright.async_playwright() as pw:
            ctx = await pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=ARGS, viewport={"width": 1600, "height": 1250})
            try:
                page = ctx.pages[0] if ctx.pages else await ctx.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                deadline = time.monotonic() + 60
                while True:  # the server starts with the other services
                    try:
                        await page.goto(f"http://127.0.0.1:{port}/")
                        break
                    except playwright.Error:
                        assert time.monotonic() < deadline, "dashboard did not start"
                        await asyncio.sleep(0.5)
                await page.wait_for_selector(".dl-row[data-parameter='EPS_BUS_VOLTAGE']", timeout=30_000)
                await page.wait_for_selector("#dl-conn.dl-ok", timeout=30_000)
                # replay the contact paced, while the page is open: values appear
                feeder = subprocess.Popen(
                    [sys.executable, "-m", "downlink", "ingest", str(path), "--contact", "WEB1",
                     "--rate", "1600kbps", "--chunk-bytes", "32kB"], env=env_for(settings),
                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                cell = page.locator(".dl-value[data-parameter='EPS_BUS_VOLTAGE']")
                await page.wait_for_function(
                    "() => [...document.querySelectorAll('.dl-value')].filter(e => e.textContent !== '—').length > 30",
                    timeout=60_000)
                first = await cell.text_content()
                assert first and first != "—"
                assert await cell.evaluate("e => getComputedStyle(e).color") != RED
                while feeder.poll() is None:
                    await asyncio.sleep(0.2)
                assert feeder.returncode == 0
                # drive the bus voltage past its red high limit and keep it there, one packet every
                # 0.5 s as the spacecraft would (newer than anything in the contact)
                p = D.parameter("EPS_BUS_VOLTAGE")
                producer = await producer_factory()

                async def red_stream() -> None:
                    for k in range(1, 400):
                        raw = {q.name: np.full(1, ((q.nominal or 0.0) - q.calibration[0]) / q.calibration[1])
                               for q in D.by_apid()[p.apid]}
                        raw[p.name] = np.full(1, (p.red[1] + 1.0 - p.calibration[0]) / p.calibration[1])
                        batch = encode_batch(D, "WEB1", p.apid, np.array([(16000 + k) % 16384]),
                                             np.array([last_tick + k * (1 << 16)], dtype=np.int64), raw,
                                             raw_ts_ms=int(time.time() * 1000))
                        await producer.send_and_wait(settings.topic("tlm.eng.realtime"), batch.encode(),
                                                     key=str(p.apid).encode())
                        await asyncio.sleep(0.5)

                red = asyncio.create_task(red_stream())
                await page.wait_for_selector(
                    ".dl-value.dl-limit-red:not(.dl-stale)[data-parameter='EPS_BUS_VOLTAGE']", timeout=30_000)
                assert await cell.evaluate("e => getComputedStyle(e).color") == RED
                await page.wait_for_function(
                    "() => [...document.querySelectorAll('.dl-kind-limit')].some(e => e.textContent.includes('EPS_BUS_VOLTAGE'))",
                    timeout=30_000)
                await page.wait_for_function(
                    "() => document.querySelector('#dl-accounting tr[data-field=contact] td')?.textContent === 'WEB1'",
                    timeout=30_000)
                await cell.scroll_into_view_if_needed()
                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot))
                if os.environ.get("DOWNLINK_UPDATE_SCREENSHOTS") == "1":  # refresh the README's picture
                    shutil.copyfile(shot, SCREENSHOT)
                assert not errors, errors
            finally:
                await ctx.close()
        assert any(a["parameter"] == "EPS_BUS_VOLTAGE" and a["to"] == "red" for a in tap.alerts("limit"))
    finally:
        if red is not None:
            red.cancel()
        if feeder is not None and feeder.poll() is None:
            feeder.kill()
        services.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await services
        await clear_retained(settings)
