"""Transient faults on real components: the broker stopped mid-contact, the data disk full.

In both, ``downlink run --until-idle`` must stay up, log and export what
happened (``downlink_retries_total``), retry with backoff, commit nothing it
did not write, resume by itself once the fault is gone, and end with every
output equal to the truth, each exposure announced once, every L0 file of the
same version as its manifest and no temp file left.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.faults.conftest import free_ports
from tests.faults.helpers import (
    check_l0_outputs,
    check_l0_pairs,
    check_no_temp_files,
    scrape,
    spawn_with,
    wait_for_log,
)
from tests.integration.helpers import cli, fast, ingest, read_all, simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_SECONDS = 20.0


async def _wait_exit(proc, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"`downlink run --until-idle` did not finish within {timeout}s")
    return proc.returncode


async def test_broker_stopped_mid_contact_and_restarted(private_kafka, tmp_path: Path):
    settings = fast(private_kafka.settings)
    truth = simulate(settings, tmp_path, seed=41, contact="BROKER1", size="30MB", max_subarray=1024)
    (port,) = free_ports(1)
    log = tmp_path / "run.log"
    proc = spawn_with(settings, "run", "--only", "demux,l0", log=log, env={"DOWNLINK_METRICS_PORT": str(port)})
    feeder = spawn_with(settings, "ingest", str(tmp_path / "BROKER1.bin"), "--contact", "BROKER1",
                        "--rate", "8Mbps", log=tmp_path / "ingest.log")  # ~30 s of contact
    expected = {e["exposure_id"] for e in truth["exposures"]}
    try:
        await wait_for_log([log], "L0 written", timeout=120)
        assert feeder.poll() is None, "the contact was over before the outage: nothing would be tested"
        await private_kafka.stop()  # mid-contact: chunks still arriving, batches being committed
        stopped = time.monotonic()
        retries_seen: dict[str, float] = {}
        while time.monotonic() - stopped < OUTAGE_SECONDS:
            await asyncio.sleep(1.0)
            assert proc.poll() is None, f"the run ended while the broker was away:\n{log.read_text()[-3000:]}"
            retries_seen.update(scrape(port, "downlink_retries_total"))
        await private_kafka.start()
        # the ground station side: an ingest cut off by the outage is simply run again (it resumes)
        if await _wait_exit(feeder, 180) != 0:
            cli(settings, "ingest", str(tmp_path / "BROKER1.bin"), "--contact", "BROKER1")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            retries_seen.update(scrape(port, "downlink_retries_total"))
            assert proc.poll() is None, f"the run ended after the outage:\n{log.read_text()[-3000:]}"
            announced = {m["exposure_id"] for _, m in await read_all(settings, "l0.ready")}
            if announced >= expected:
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 60) == 0, log.read_text()[-3000:]
    finally:
        for p in (proc, feeder):
            if p.poll() is None:
                p.kill()
                p.wait()
    text = log.read_text()
    assert "retrying" in text, "the outage was not logged"
    assert sum(retries_seen.values()) >= 1, f"no retry exported on /metrics: {retries_seen}"
    await check_l0_outputs(settings, truth)


async def test_disk_full_pauses_then_finishes_when_space_returns(settings, topics, small_fs, tmp_path: Path):
    settings = fast(settings).replace(data_dir=small_fs.path)
    truth = simulate(settings, tmp_path, seed=51, contact="FULL1", exposures=70)
    l0_total = sum(e["l0_bytes"] for e in truth["exposures"])
    assert l0_total > 1.5 * small_fs.free_bytes(), "the contact must not fit the small file system"
    ingest(settings, tmp_path / "FULL1.bin", "FULL1")
    (port,) = free_ports(1)
    log = tmp_path / "run.log"
    proc = spawn_with(settings, "run", "--only", "demux,l0", "--until-idle", log=log, env={"DOWNLINK_METRICS_PORT": str(port)})
    try:
        await wait_for_log([log], "No space left on device", timeout=120)
        # while full: the run stays up and keeps pausing/retrying; what it leaves on disk is always
        # whole (a temp file or a mismatched pair may exist only for an instant, never persist)
        clean_samples, disk_full_retries = 0, 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (clean_samples < 3 or disk_full_retries < 2):
            await asyncio.sleep(1.0)
            assert proc.poll() is None, f"the run ended on a full disk:\n{log.read_text()[-3000:]}"
            try:
                check_no_temp_files(small_fs.path)
                check_l0_pairs(small_fs.path)
                clean_samples += 1
            except (AssertionError, FileNotFoundError):
                pass
            disk_full_retries = sum(v for k, v in scrape(port, "downlink_retries_total").items()
                                    if 'reason="disk_full"' in k)
        assert clean_samples >= 3, "temp files or mismatched L0/manifest pairs persist on the full disk"
        assert disk_full_retries >= 2, "the full disk was not retried with backoff (or not exported)"
        small_fs.grow(64)
        assert await _wait_exit(proc, 240) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    await check_l0_outputs(settings, truth)
