"""MqttPublisher's bounded holding while the broker is away (no broker involved)."""

from __future__ import annotations

import json

from consumers.realtime.publisher import MqttPublisher, StateEntry, broker_address
from core.settings import Settings


def publisher(**kw) -> MqttPublisher:
    return MqttPublisher(Settings().replace(**kw), "test", clock=lambda: 1000.0)


def test_latest_value_only_and_superseded_counted():
    p = publisher()
    for i in range(100):
        p.set_state("jwst/eng/power/A", {"value": i})
        p.set_state("jwst/eng/power/B", {"value": -i})
    assert len(p.current) == 2 and len(p.dirty) == 2
    assert p.current["jwst/eng/power/A"].payload == {"value": 99}
    assert p.superseded == 2 * 99


def test_alert_queue_is_bounded_and_drops_oldest():
    p = publisher(realtime_alert_queue=3)
    for i in range(5):
        p.alert("jwst/alerts/gap", {"id": i})
    assert [a[1]["id"] for a in p.alerts] == [2, 3, 4] and p.dropped_alerts == 2


def test_old_values_are_never_rendered_as_current():
    p = publisher(realtime_max_age_seconds=30.0)
    fresh = json.loads(p.render(StateEntry({"value": 1, "stale": False}, received_at=980.0), 1000.0))
    old = json.loads(p.render(StateEntry({"value": 1, "stale": False}, received_at=960.0), 1000.0))
    status = json.loads(p.render(StateEntry({"online": True}, received_at=None), 1000.0))
    assert fresh["stale"] is False and old["stale"] is True and "stale" not in status


def test_broker_address():
    assert broker_address("mqtt://h:1884") == ("h", 1884, "tcp")
    assert broker_address("ws://127.0.0.1:9001") == ("127.0.0.1", 9001, "websockets")


def test_every_sample_queued_while_connected_collapses_to_latest_when_the_broker_goes():
    p = publisher()
    p.connected = True
    for i in range(5):
        p.set_state("jwst/eng/power/A", {"value": i})
    assert [e.payload["value"] for _, e in p.queue] == [0, 1, 2, 3, 4] and p.superseded == 0
    p._mark_down()
    assert not p.queue and list(p.dirty) == ["jwst/eng/power/A"] and p.superseded == 4
    assert p.current["jwst/eng/power/A"].payload == {"value": 4}
