"""A live feed's chunks leave at once; an unpaced dump lets requests fill (no broker needed)."""

from __future__ import annotations

import pytest

import importlib

publish = importlib.import_module("consumers.ingest.publish")


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    async def start(settings, client):
        return None
    monkeypatch.setattr(publish, "start_client", start)


@pytest.mark.parametrize("live,linger_s", [(True, 0.0), (False, 0.02)])
async def test_live_feeds_do_not_linger(settings, live: bool, linger_s: float):
    producer = await publish.started_producer(settings, live=live)
    try:
        assert producer._message_accumulator._linger_time == pytest.approx(linger_s)
    finally:
        await producer.stop()
