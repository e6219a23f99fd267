"""``downlink status`` against a real broker after a real run: services, lag, alerts, accounting."""

from __future__ import annotations

import re

import pytest

from consumers.framework.runner import run_services
from tests.integration.helpers import cli, fast, ingest, simulate

pytestmark = pytest.mark.integration


async def _records_after_commit(settings, service: str) -> int:
    """Committed records between a group's committed offsets and the end, counted by reading them."""
    from streams.kafka import make_admin, make_consumer, start_client

    admin = make_admin(settings)
    consumer = make_consumer(settings, group=None)
    await start_client(settings, admin)
    await start_client(settings, consumer)
    try:
        committed = {tp: m.offset for tp, m in (await admin.list_consumer_group_offsets(settings.group(service))).items()}
        consumer.assign(list(committed))
        for tp, offset in committed.items():
            consumer.seek(tp, offset)
        count = 0
        while True:
            got = await consumer.getmany(timeout_ms=1500)
            if not any(got.values()):
                return count
            count += sum(len(r) for r in got.values())
    finally:
        await consumer.stop()
        await admin.close()


def _row(out: str, service: str) -> list[str]:
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] == service:
            return cells
    raise AssertionError(f"no row for {service} in:\n{out}")


async def test_status_shows_services_lag_alerts_and_the_contact(settings, topics, tmp_path):
    settings = fast(settings)
    simulate(settings, tmp_path, seed=9, contact="STAT1", exposures=6, faults="drop=0.01")
    ingest(settings, tmp_path / "STAT1.bin", "STAT1")
    assert await run_services(settings, ["demux", "l0"], until_idle=True) == 0

    out = cli(settings, "status").stdout
    demux, l0 = _row(out, "demux"), _row(out, "l0")
    # columns: service, up, partitions, lag, records/s
    assert int(demux[2]) >= 1 and demux[3] == "0", demux
    # l0 reads a transactional topic: its lag is the records really left after its commits,
    # never the commit markers (8 partitions would otherwise show as 8 behind)
    assert int(l0[2]) == 8 and int(l0[3]) == await _records_after_commit(settings, "l0"), l0
    assert "last ops.alerts" in out and "STAT1" in out
    contact = re.search(r"contact STAT1: ([\d,]+) bytes, ([\d,]+) packets, ([\d,]+) missing", out.replace("\n", " "))
    assert contact and int(contact.group(3).replace(",", "")) > 0, out
    assert "ended" in out

    # a second contact not yet processed: demux is behind by its chunks
    simulate(settings, tmp_path, seed=10, contact="STAT2", exposures=3)
    ingest(settings, tmp_path / "STAT2.bin", "STAT2")
    demux = _row(cli(settings, "status").stdout, "demux")
    assert int(demux[3].replace(",", "")) > 0, demux
