"""Zombie fencing (consumers/framework/fencing.py) on a real broker and real processes.

* The membership check itself: passes for a current member (one round trip,
  then a lease), fails once the broker gave the member's place to another.
* Two ``downlink consumer l0`` replicas on a paced contact; one is stopped
  with SIGSTOP past the session timeout (the other takes its partitions),
  then resumed with SIGCONT. Afterwards: L0 == truth, every (exposure,
  version) announced once on ``l0.ready``, ``l0.state`` agrees with the files.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumers.framework.fencing import Fence
from core.errors import FencedError
from core.settings import Settings
from products.l0 import l0_paths
from products.verify import verify
from streams.kafka import make_consumer, read_table, start_client
from tests.faults.helpers import check_no_temp_files, stop_all, wait_for_log
from tests.integration.helpers import fast, read_all, simulate, spawn

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class _Member:
    """What a Fence reads from its service: the consumer, the assignment, settings and names."""

    settings: Settings
    consumer: Any
    name: str = "fence-test"
    instance: str = "a"
    assigned: set = field(default_factory=set)


async def _joined(settings: Settings, topic: str, instance: str):
    group = settings.group("fence")
    consumer = make_consumer(settings, topic, group=group, group_instance_id=f"{group}.{instance}",
                             session_timeout_ms=settings.kafka.session_timeout_ms,
                             heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms)
    await start_client(settings, consumer)
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        await consumer.getmany(timeout_ms=200)
    assert consumer.assignment(), "the consumer never got partitions"
    return consumer


async def test_membership_check_passes_for_the_owner_and_fails_after_a_takeover(settings, topic_factory):
    topic = await topic_factory("fence.in", partitions=2)
    first = await _joined(settings, topic, "a")
    second = None
    try:
        member = _Member(settings, first, assigned=set(first.assignment()))
        fence = Fence(member)
        t0 = time.perf_counter()
        await fence.check("commit")
        round_trip = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(1000):
            await fence.check("commit")
        leased = (time.perf_counter() - t0) / 1000
        assert fence.round_trips == 1, "a valid lease must not cost a round trip"
        print(f"fence check: round trip {round_trip * 1e3:.2f} ms, leased {leased * 1e6:.1f} us")
        # another member takes the place (same static id: the broker drops the old member at once)
        second = await _joined(settings, topic, "a")
        fence.lease_until = 0.0  # as after a pause longer than the lease
        with pytest.raises(FencedError, match="cannot prove it still owns"):
            await fence.check("commit")
        assert fence.round_trips == 2
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_sigstop_zombie_l0_replica_changes_no_output(settings, topics, tmp_path):
    settings = fast(settings)
    truth = simulate(settings, tmp_path, seed=31, contact="ZOMBIE1", exposures=30)
    logs = tmp_path / "logs"
    logs.mkdir()
    demux = spawn(settings, "consumer", "demux", log=logs / "demux.log")
    l0a = spawn(settings, "consumer", "l0", "--instance", "a", log=logs / "l0a.log")
    l0b = spawn(settings, "consumer", "l0", "--instance", "b", log=logs / "l0b.log")
    ingest = None
    pause = settings.kafka.session_timeout_ms / 1000 + 6
    try:
        await wait_for_log([logs / "l0a.log", logs / "l0b.log"], "l0 state loaded", count=2)
        ingest = spawn(settings, "ingest", str(tmp_path / "ZOMBIE1.bin"), "--contact", "ZOMBIE1",
                       "--rate", "4Mbps", log=logs / "ingest.log")
        await wait_for_log([logs / "l0a.log"], "L0 written")
        l0a.send_signal(signal.SIGSTOP)  # frozen with open exposures and, likely, a batch in hand
        await asyncio.sleep(pause)  # past the session timeout: b takes a's partitions
        l0a.send_signal(signal.SIGCONT)
        assert ingest.wait(timeout=180) == 0
        expected = {e["exposure_id"] for e in truth["exposures"]}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            announced = {m["exposure_id"] for _, m in await read_all(settings, "l0.ready")}
            if announced >= expected:
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(3.0)  # let the resumed replica do whatever it would still do
    finally:
        hung = stop_all({"demux": demux, "l0a": l0a, "l0b": l0b, "ingest": ingest})
    log_b = (logs / "l0b.log").read_text()
    assert log_b.count("l0 state loaded") >= 2, "b was never given a's partitions"
    result = verify(truth, settings.data_dir)
    assert result.ok, [r.__dict__ for r in result.mismatches]
    ready = Counter((m["exposure_id"], m["version"]) for _, m in await read_all(settings, "l0.ready"))
    assert set(ready) == {(e["exposure_id"], 1) for e in truth["exposures"]}
    assert set(ready.values()) == {1}, f"announced twice: {[k for k, n in ready.items() if n > 1][:5]}"
    state = await read_table(settings, "l0.state")
    for e in truth["exposures"]:
        s = state[e["exposure_id"]]
        _, manifest_path = l0_paths(settings.data_dir, e["exposure_id"])
        manifest = json.loads(manifest_path.read_text())
        assert (s["version"], s["sha256"], s["complete"]) == \
            (manifest["version"], manifest["sha256"], manifest["complete"]), e["exposure_id"]
    check_no_temp_files(settings.data_dir)
    assert not hung, f"did not stop within 30 s of SIGTERM: {hung} (read {logs})"
