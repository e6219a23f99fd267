"""The live engineering board: decommutated samples in -> current state and limit transitions out.

Pure (no I/O): the service feeds it :class:`~consumers.realtime.decom.Samples`
and publishes what it returns. Per APID it drops repeats
(:class:`~consumers.realtime.dedupe.Deduper`) and samples not newer than the
newest one already taken (a late, reordered packet never overwrites the
current state); per parameter it runs a
:class:`~consumers.realtime.limits.LimitTracker` over every new sample in time
order and reports every new sample (the last one is the current state).

The state can be seeded from the retained MQTT state of a previous run
(:meth:`Board.seed`): limit states and the newest packet time per APID, so a
restarted service neither re-announces a transition nor republishes an older
value as a new one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consumers.realtime.decom import FINE_PER_S, Samples
from consumers.realtime.dedupe import Deduper
from consumers.realtime.limits import LimitTracker
from consumers.realtime.stale import StaleTracker
from core.settings import RealtimeSettings
from core.timecodes import tai_to_iso
from monitoring import metrics
from streams.dictionary import LIMIT_NAMES, EngDictionary, Parameter


@dataclass
class Update:
    """What one batch changed: state topics to (re)publish and alerts to send."""

    states: list[tuple[str, dict[str, Any], float | None]] = field(default_factory=list)
    alerts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0


def _json_number(x: Any) -> Any:
    x = x.item() if hasattr(x, "item") else x
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class Board:
    def __init__(self, dictionary: EngDictionary, rt: RealtimeSettings, root: str | None = None) -> None:
        self.dictionary = dictionary
        self.root = root if root is not None else rt.topic_root
        self.max_age = rt.max_age_seconds
        self.params: dict[int, list[Parameter]] = dictionary.by_apid()
        self.limits: dict[str, LimitTracker] = {
            p.name: LimitTracker.for_parameter(p, persistence=rt.limit_persistence,
                                               deadband=rt.limit_deadband)
            for p in dictionary.parameters}
        self.dedupe = Deduper(rt.dedupe_window)
        self.stale = StaleTracker({pk.apid: pk.period_s for pk in dictionary.packets}, rt.stale_periods)
        #: newest packet time taken per APID (2^-16 s)
        self.newest: dict[int, int] = {}
        #: current payload per state topic (what a stale check republishes)
        self.current: dict[str, tuple[dict[str, Any], float | None]] = {}

    def topic(self, p: Parameter) -> str:
        return f"{self.root}/eng/{p.subsystem}/{p.name}"

    # -- samples ----------------------------------------------------------------------------
    def ingest(self, samples: Samples, now: float, wall: float | None = None) -> Update:
        """Take one APID batch; ``now`` is the caller's monotonic clock (staleness), ``wall``
        the time of day (None: every sample is fresh).

        ``states`` lists every new sample per parameter in time order while the batch is
        fresh, only the newest when its raw chunk is older than ``max_age_seconds``."""
        up = Update()
        apid = samples.apid
        if len(samples) == 0:
            return up
        fresh = self.dedupe.fresh(apid, samples.seq, samples.ticks)
        up.duplicates = int((~fresh).sum())
        if up.duplicates:
            metrics.REALTIME_DUPLICATES.labels(str(apid)).inc(up.duplicates)
        s = samples.take(np.flatnonzero(fresh))
        if len(s) > 1 and np.any(np.diff(s.ticks) < 0):
            s = s.take(np.argsort(s.ticks, kind="stable"))
        newest = self.newest.get(apid)
        if newest is not None:
            newer = s.ticks > newest
            up.late = int((~newer).sum())
            s = s.take(np.flatnonzero(newer))
        if len(s) == 0:
            return up
        self.newest[apid] = int(s.ticks[-1])
        self.stale.seen(apid, now)
        tai = s.tai
        # every sample while fresh; a batch older than max_age only updates the current value
        if wall is not None and wall - s.raw_ts > self.max_age:
            rows = np.array([len(s) - 1])
        else:
            rows = np.arange(len(s))
        times = [tai_to_iso(t) for t in tai[rows].tolist()]
        seqs = s.seq[rows].tolist()
        for p in self.params[apid]:
            values = s.values[p.name]
            states, transitions = self.limits[p.name].update(values)
            for t in transitions:
                metrics.REALTIME_LIMIT_TRANSITIONS.labels(t.new_name).inc()
                up.alerts.append(("limit", {
                    "id": f"limit:{p.name}:{int(s.ticks[t.index])}:{t.new_name}",
                    "kind": "limit", "severity": "warning" if t.new else "info",
                    "parameter": p.name, "subsystem": p.subsystem, "apid": apid,
                    "contact": s.contact, "from": t.old_name, "to": t.new_name,
                    "value": _json_number(values[t.index]), "unit": p.unit,
                    "time": tai_to_iso(float(tai[t.index])), "tai": float(tai[t.index]),
                    "seq": int(s.seq[t.index]),
                    "yellow": list(p.yellow) if p.yellow else None,
                    "red": list(p.red) if p.red else None}))
            topic = self.topic(p)
            raws, vals = s.raw[p.name][rows].tolist(), values[rows].tolist()
            for k, i in enumerate(rows.tolist()):
                payload = {"time": times[k], "tai": float(tai[i]), "raw": _json_number(raws[k]),
                           "value": _json_number(vals[k]), "unit": p.unit,
                           "limit": LIMIT_NAMES[int(states[i])], "stale": False,
                           "apid": apid, "seq": seqs[k], "contact": s.contact, "raw_ts": s.raw_ts}
                up.states.append((topic, payload, s.raw_ts))
            self.current[topic] = (up.states[-1][1], s.raw_ts)
        return up

    # -- staleness ----------------------------------------------------------------------------
    def stale_check(self, now: float) -> list[tuple[str, dict[str, Any], float | None]]:
        """State topics to republish with ``stale: true`` (APIDs silent too long)."""
        out = []
        for apid in self.stale.check(now):
            for p in self.params.get(apid, ()):
                topic = self.topic(p)
                if topic in self.current:
                    payload, received = self.current[topic]
                    payload = {**payload, "stale": True}
                    self.current[topic] = (payload, received)
                    out.append((topic, payload, received))
        return out

    # -- restart --------------------------------------------------------------------------------
    def seed(self, retained: dict[str, bytes], now: float) -> list[tuple[str, dict[str, Any], float | None]]:
        """Adopt the retained state of a previous run; returns the entries adopted."""
        by_topic = {self.topic(p): p for p in self.dictionary.parameters}
        adopted = []
        for topic, raw in retained.items():
            p = by_topic.get(topic)
            if p is None:
                continue
            try:
                payload = json.loads(raw)
                limit = LIMIT_NAMES.index(payload["limit"])
                ticks = int(round(float(payload["tai"]) * FINE_PER_S))
            except (ValueError, KeyError, TypeError):
                continue
            self.limits[p.name].state = limit
            self.newest[p.apid] = max(self.newest.get(p.apid, ticks), ticks)
            self.stale.seen(p.apid, now)
            received = payload.get("raw_ts")
            received = float(received) if isinstance(received, (int, float)) else None
            self.current[topic] = (payload, received)
            adopted.append((topic, payload, received))
        return adopted
