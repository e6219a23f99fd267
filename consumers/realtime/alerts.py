"""Operator alerts for MQTT: ``ops.alerts`` events and limit transitions as JSON, with identities.

A gap event may describe several missing ranges (demux coalesces bursts into
``ranges`` = [[first_seq, count], ...]); operators get one MQTT alert per
range. Every alert has a deterministic ``id`` built from what it reports
(never from a Kafka offset or a wall time), so an event delivered twice -
a demux that re-sent after a crash, a realtime restarted before its commit -
is recognised by :class:`AlertLedger` and published once.
"""

from __future__ import annotations

import collections
from typing import Any

from streams.messages import OpsAlert

#: ops.alerts type -> MQTT kind (jwst/alerts/<kind>); other types keep their own name
KINDS = {"gap": "gap", "raw_gap": "raw_gap", "duplicate": "duplicate", "out_of_order": "out_of_order",
         "resync": "resync", "contact_end": "contact"}


def kind_of(alert_type: str) -> str:
    return KINDS.get(alert_type, "".join(c if c.isalnum() or c == "_" else "_" for c in alert_type) or "other")


def from_ops_alert(alert: OpsAlert) -> list[tuple[str, dict[str, Any]]]:
    """(kind, payload) per MQTT alert for one ops.alerts event (one per gap range)."""
    kind = kind_of(alert.type)
    base: dict[str, Any] = {"kind": kind, "type": alert.type, "severity": alert.severity,
                            "time": alert.time, "contact": alert.contact}
    for name in ("apid", "source", "exposure_id", "stream_offset", "reason"):
        value = getattr(alert, name)
        if value is not None:
            base[name] = value
    if alert.detail:
        base["detail"] = alert.detail
    if alert.type == "gap":
        ranges = [tuple(int(x) for x in r) for r in alert.ranges
                  if isinstance(r, (list, tuple)) and len(r) == 2]
        if not ranges and alert.first_seq is not None:
            ranges = [(int(alert.first_seq), int(alert.count))]
        out = []
        for first, count in ranges:
            payload = {**base, "first_seq": first, "count": count, "ranges": [[first, count]]}
            payload["id"] = f"gap:{alert.contact}:{alert.apid}:{alert.source}:{first}:{count}"
            out.append((kind, payload))
        return out
    payload = {**base, "count": alert.count}
    if alert.first_seq is not None:
        payload["first_seq"] = alert.first_seq
    if alert.ranges:
        payload["ranges"] = [list(r) for r in alert.ranges]
    ident = ":".join(str(x) for x in (alert.type, alert.contact, alert.apid, alert.source,
                                      alert.first_seq, alert.count, alert.stream_offset,
                                      alert.exposure_id))
    payload["id"] = ident
    return [(kind, payload)]


class AlertLedger:
    """The ids of the last ``size`` alerts published (bounded; persisted as a retained topic)."""

    def __init__(self, size: int = 2048, ids: list[str] | None = None) -> None:
        self.size = size
        self._order: collections.deque[str] = collections.deque()
        self._set: set[str] = set()
        for i in ids or ():
            self.add(i)

    def add(self, ident: str) -> bool:
        """Remember ``ident``; False if it was already there (a repeat)."""
        if ident in self._set:
            return False
        self._order.append(ident)
        self._set.add(ident)
        while len(self._order) > self.size:
            self._set.discard(self._order.popleft())
        return True

    def __contains__(self, ident: str) -> bool:
        return ident in self._set

    def ids(self) -> list[str]:
        return list(self._order)
