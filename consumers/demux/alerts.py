"""Coalesced operator alerts: a burst of anomalies becomes a bounded number of ``ops.alerts`` messages.

Events are grouped per (contact, APID, source, type). The first event of a
group after a quiet period goes out at the next :meth:`AlertCoalescer.flush`
(the end of the raw chunk being decoded: an isolated gap is reported at
once); later events of the same group are held until ``window`` seconds
after the group's last message, and a flush with ``force`` (the end of every
batch, and the end of a contact) sends whatever is held. So a group yields at
most two messages per window and batch, whatever the burst, and nothing is
held past the batch that saw it (a crash cannot lose a held alert: the batch
is redone from the last commit).

One message lists its events as ``ranges``: [first sequence count, count]
pairs for sequence anomalies, [stream offset, bytes] pairs for skipped or
rejected bytes; contiguous ranges are joined; beyond ``max_ranges`` the rest
are only counted (``detail["ranges_dropped"]``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from streams.messages import OpsAlert
from streams.packets import SEQ_MODULO

#: types whose ranges are sequence counts (modulo 16384); the others are stream offsets
SEQUENCE_TYPES = frozenset({"gap", "duplicate", "out_of_order", "seq_outlier"})


@dataclass
class _Group:
    severity: str
    ranges: list[list[int]] = field(default_factory=list)
    count: int = 0
    events: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    dropped: int = 0
    exposure_id: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)


Key = tuple[str, int | None, int | None, str]


class AlertCoalescer:
    """Collects anomaly events and emits :class:`~streams.messages.OpsAlert` messages, coalesced."""

    def __init__(self, window: float, max_ranges: int = 256,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.window = window
        self.max_ranges = max_ranges
        self.clock, self.wall = clock, wall
        self._held: dict[Key, _Group] = {}
        self._last_sent: dict[Key, float] = {}

    def add(self, contact: str, type_: str, severity: str, first: int, count: int, *,
            apid: int | None = None, source: int | None = None, stream_offset: int | None = None,
            exposure_id: str | None = None, reason: str | None = None) -> None:
        key = (contact, apid, source, type_)
        g = self._held.get(key)
        if g is None:
            g = self._held[key] = _Group(severity)
        g.events += 1
        g.count += count
        if severity == "warning":
            g.severity = "warning"
        if stream_offset is not None:
            g.first_offset = stream_offset if g.first_offset is None else g.first_offset
            g.last_offset = stream_offset
        if exposure_id is not None and g.exposure_id is None:
            g.exposure_id = exposure_id
        if reason is not None:
            g.reasons[reason] = g.reasons.get(reason, 0) + 1
        modulo = SEQ_MODULO if type_ in SEQUENCE_TYPES else None
        if g.ranges:
            last = g.ranges[-1]
            end = last[0] + last[1]
            if (end % modulo if modulo else end) == first:
                last[1] += count
                return
        if len(g.ranges) < self.max_ranges:
            g.ranges.append([first, count])
        else:
            g.dropped += 1

    def flush(self, force: bool = False, contact: str | None = None) -> list[OpsAlert]:
        """Messages due now (every held one with ``force``; only ``contact``'s when given)."""
        now = self.clock()
        out: list[OpsAlert] = []
        for key in list(self._held):
            if contact is not None and key[0] != contact:
                continue
            last = self._last_sent.get(key)
            if not force and last is not None and now - last < self.window:
                continue
            out.append(self._message(key, self._held.pop(key)))
            self._last_sent[key] = now
        if len(self._last_sent) > 4096:  # forget quiet groups (bounded memory)
            self._last_sent = {k: t for k, t in self._last_sent.items() if now - t < self.window}
        return out

    def reset(self) -> None:
        """Drop everything held (the batch that produced it will be redone)."""
        self._held.clear()

    @property
    def held(self) -> int:
        return len(self._held)

    def _message(self, key: Key, g: _Group) -> OpsAlert:
        contact, apid, source, type_ = key
        detail: dict = {"events": g.events}
        if g.dropped:
            detail["ranges_dropped"] = g.dropped
        if g.last_offset is not None:
            detail["last_stream_offset"] = g.last_offset
        if g.reasons:
            detail["reasons"] = dict(g.reasons)
        sequence = type_ in SEQUENCE_TYPES
        return OpsAlert(contact=contact, type=type_, severity=g.severity, time=self.wall(),
                        apid=apid, source=source,
                        first_seq=g.ranges[0][0] if sequence and g.ranges else None,
                        count=g.count, stream_offset=g.first_offset, ranges=g.ranges,
                        exposure_id=g.exposure_id,
                        reason=next(iter(g.reasons)) if len(g.reasons) == 1 else None,
                        detail=detail)
