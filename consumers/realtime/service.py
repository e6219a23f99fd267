"""realtime: ``tlm.eng.realtime`` + ``ops.alerts`` (+ ``demux.state``) -> MQTT for operators.

A :class:`~consumers.framework.sink.SinkService`: each batch is decommutated
(:mod:`.decom`), de-duplicated and limit-checked (:mod:`.board`), and handed to
the :class:`~.publisher.MqttPublisher`; the offsets are committed after it.

Topics (``<root>`` = ``realtime.topic_root``, ``jwst`` by default):

* ``<root>/eng/<subsystem>/<parameter>``: retained, QoS 0, the current value;
* ``<root>/alerts/<kind>``: QoS 1, limit transitions and ``ops.alerts`` events;
* ``<root>/status/realtime``: retained heartbeat (lag, last-packet age per APID);
  the broker's Will sets it to ``online: false`` if this process dies;
* ``<root>/status/contact``: retained packet-accounting summary of the current contact;
* ``<root>/status/realtime/alerts``: retained ids of the recent alerts (restart dedupe).

Commit rule: while the broker is connected, a batch's messages are written
before its offsets are committed (at-least-once; repeats are recognised by
packet identity and alert id). While the broker is away the service keeps
consuming and committing and keeps only the latest value per parameter: the
retained state is a *last value*, not a log (history is the archive's).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from consumers.framework.service import Input, Output, Record
from consumers.framework.sink import SinkService
from consumers.realtime.alerts import AlertLedger, from_ops_alert
from consumers.realtime.board import Board
from consumers.realtime.contact import contact_summary
from consumers.realtime.decom import decommutate
from consumers.realtime.publisher import MqttPublisher, StateEntry, read_retained
from core.errors import CodecError
from monitoring import metrics
from streams.dictionary import load_dictionary
from streams.messages import DeadLetter, DemuxState, EngBatch, OpsAlert

log = logging.getLogger(__name__)

#: how long a batch waits for the broker to take its messages before the commit (connected only)
FLUSH_TIMEOUT_S = 5.0


class Realtime(SinkService):
    name = "realtime"
    inputs = (Input("tlm.eng.realtime", (EngBatch,), priority=0),
              Input("ops.alerts", (OpsAlert,), priority=0),
              # same priority on purpose: demux.state is small, and pausing partitions on every
              # snapshot would stall the fetcher (measured: +0.4 s on real-time values)
              Input("demux.state", (DemuxState,), priority=0))
    outputs = {"tlm.deadletter": (DeadLetter,)}
    max_records = 512
    fetch_timeout_ms = 100

    def __init__(self, settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.rt = settings.realtime
        self.root = self.rt.topic_root
        self.dictionary = load_dictionary(settings.dictionary_file)
        self.board = Board(self.dictionary, self.rt, self.root)
        self.ledger = AlertLedger()
        self.status_topic = f"{self.root}/status/realtime"
        self.ledger_topic = f"{self.root}/status/realtime/alerts"
        self.contact_topic = f"{self.root}/status/contact"
        self.publisher = MqttPublisher(
            settings, f"{settings.topic_prefix}downlink-realtime-{self.instance}",
            will_topic=self.status_topic, will_payload={"online": False, "reason": "connection lost"})
        self.publisher.on_published = self._published
        self._pub_task: asyncio.Task | None = None
        self._last_beat = 0.0
        self._last_status: dict[str, Any] = {}
        self._started = time.time()
        self.batches = 0

    # sink hooks -------------------------------------------------------------------------------
    async def open_sink(self) -> None:
        retained = await read_retained(settings=self.settings, patterns=[
            f"{self.root}/eng/#", self.ledger_topic])
        for topic, payload, received in self.board.seed(retained, time.monotonic()):
            self.publisher.current[topic] = StateEntry(payload, received)
        if self.ledger_topic in retained:
            try:
                ids = json.loads(retained[self.ledger_topic]).get("ids", [])
            except (ValueError, AttributeError):
                ids = []
            for ident in ids if isinstance(ids, list) else ():
                self.ledger.add(str(ident))
        log.info("realtime state seeded from the broker",
                 extra={"parameters": len(self.board.current), "alert_ids": len(self.ledger.ids())})
        self._pub_task = self.spawn(self.publisher.run(self._stopping), "mqtt")

    async def request_stop(self) -> None:
        """Say goodbye on the status topic (the Will covers only abnormal ends), then stop."""
        if self._pub_task is not None and not self._pub_task.done() and not self._stopping.is_set():
            self.publisher.set_state(self.status_topic, {**self._last_status, **self._status_base(),
                                                         "online": False, "reason": "stopped"})
        await super().request_stop()

    async def stop(self) -> None:
        """Let the publisher drain what it holds (bounded, while connected) before stopping."""
        if self._pub_task is not None and not self._pub_task.done():
            self._stopping.set()
            await asyncio.wait({self._pub_task}, timeout=3.0)
        await super().stop()

    async def handle(self, records: list[Record]) -> list[Output]:
        out: list[Output] = []
        now = time.monotonic()
        alerted = False
        for rec in records:
            value = rec.value
            if isinstance(value, EngBatch):
                try:
                    samples = decommutate(self.dictionary, value)
                except CodecError as exc:
                    out.append(self.dead_letter_for(rec.topic, rec.tp, rec, f"CodecError: {exc}",
                                                    apid=value.apid, contact=value.contact))
                    continue
                update = self.board.ingest(samples, now, time.time())
                for topic, payload, received in update.states:
                    self.publisher.set_state(topic, payload, received)
                for kind, payload in update.alerts:
                    alerted |= self._alert(kind, payload)
                await asyncio.sleep(0)  # the publisher sends this packet's values before the next is read
            elif isinstance(value, OpsAlert):
                for kind, payload in from_ops_alert(value):
                    alerted |= self._alert(kind, payload)
            elif isinstance(value, DemuxState):
                summary = contact_summary(value.contact, value.account, time.time())
                self.publisher.set_state(self.contact_topic, summary)
        if alerted:
            self.publisher.set_state(self.ledger_topic, {"ids": self.ledger.ids()})
        self.batches += 1
        await self.publisher.flush(FLUSH_TIMEOUT_S)
        return out

    async def tick(self) -> list[Output]:
        now = time.monotonic()
        for topic, payload, received in self.board.stale_check(now):
            self.publisher.set_state(topic, payload, received)
        if now - self._last_beat >= self.rt.heartbeat_seconds and not self._stopping.is_set():
            self._last_beat = now
            self._last_status = await self._status()
            self.publisher.set_state(self.status_topic, self._last_status)
        return []

    # helpers ----------------------------------------------------------------------------------
    def _alert(self, kind: str, payload: dict[str, Any]) -> bool:
        if not self.ledger.add(payload["id"]):
            log.info("alert already published, skipped", extra={"id": payload["id"]})
            return False
        self.publisher.alert(f"{self.root}/alerts/{kind}", payload)
        return True

    def _published(self, topic: str, entry: StateEntry) -> None:
        if entry.received_at and "/eng/" in topic:
            metrics.REALTIME_LATENCY.observe(max(0.0, time.time() - entry.received_at))

    def _status_base(self) -> dict[str, Any]:
        return {"service": self.name, "instance": self.instance, "time": time.time(),
                "started": self._started}

    async def _status(self) -> dict[str, Any]:
        lag: dict[str, int] = {}
        if self.consumer is not None:
            for tp in sorted(self.assigned):
                high = self.consumer.highwater(tp)
                if high is None:
                    continue
                behind = max(0, high - await self.consumer.position(tp))
                topic = tp.topic[len(self.settings.topic_prefix):]
                lag[topic] = lag.get(topic, 0) + behind
        for topic, n in lag.items():
            metrics.CONSUMER_LAG.labels(self.name, topic).set(n)
        ages = self.board.stale.ages(time.monotonic())
        for apid, age in ages.items():  # RealtimeTelemetryStale reads it
            metrics.RT_LAST_PACKET_AGE.labels(str(apid)).set(age)
        p = self.publisher
        return {**self._status_base(), "online": True, "lag": lag, "lag_total": sum(lag.values()),
                "last_packet_age_s": {f"0x{a:03x}": round(t, 3) for a, t in ages.items()},
                "stale_apids": [f"0x{a:03x}" for a in sorted(self.board.stale.stale)],
                "batches": self.batches, "connections": p.connections,
                "superseded": p.superseded, "alerts_dropped": p.dropped_alerts,
                "pending": p.pending}
