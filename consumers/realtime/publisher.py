"""The MQTT side of realtime: current state (retained, latest only) and alerts (QoS 1), via aiomqtt.

aiomqtt is pinned at 2.5.1 (pyproject): v2 has no in-context reconnect and a
``Client`` that failed once cannot be re-entered (empicano/aiomqtt #269,
#334), so :meth:`MqttPublisher.run` builds a fresh client for every attempt
and reconnects with exponential backoff and jitter.

What it holds, all bounded:

* ``current``: the latest payload per state topic (one per parameter, plus
  status topics): the *current state*. It is republished whole after every
  (re)connection, so a broker restarted without persistence gets it back.
* ``queue``: while connected, every sample handed over, in order (operators
  and plots get every value), bounded by ``realtime.publish_queue``.
* ``dirty``: state topics changed but not yet published while the broker is
  away (or the queue is full): there only the latest value per parameter is
  kept, and a value replaced before it went out is *superseded* (counted in
  ``downlink_realtime_superseded_total``).
* ``alerts``: a queue of QoS 1 events (oldest dropped beyond
  ``realtime.alert_queue``, counted); an alert leaves the queue only once the
  broker acknowledged it (at-least-once).

A state older than ``realtime.max_age_seconds`` (measured from when its raw
chunk reached Kafka) is never published as current: it goes out with
``stale: true``. The service's Kafka loop never waits for the broker: it
hands values over and goes on consuming and committing (:meth:`flush` waits
only while connected).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import aiomqtt

from core.settings import Settings
from monitoring import metrics

log = logging.getLogger(__name__)

#: state messages written per barrier (see ``_publish_states``)
CHUNK = 500


@dataclass
class StateEntry:
    """A retained state payload and when its data reached Kafka (wall time, s)."""

    payload: dict[str, Any]
    received_at: float | None = None  # None: never ages (status topics)


def broker_address(url: str) -> tuple[str, int, str]:
    """(host, port, transport) from ``mqtt://host:1883`` or ``ws://host:9001``."""
    parts = urlsplit(url)
    transport = "websockets" if parts.scheme in ("ws", "wss") else "tcp"
    return parts.hostname or "127.0.0.1", parts.port or (9001 if transport == "websockets" else 1883), transport


class MqttPublisher:
    """Keeps the current state and the alert queue, and a connection to publish them."""

    def __init__(self, settings: Settings, identifier: str, *,
                 will_topic: str | None = None, will_payload: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.identifier = identifier
        self.rt = settings.realtime
        self.will_topic, self.will_payload = will_topic, will_payload
        self.clock = clock
        self.current: dict[str, StateEntry] = {}
        self.queue: collections.deque[tuple[str, StateEntry]] = collections.deque()
        self.dirty: dict[str, None] = {}  # insertion-ordered set
        self.alerts: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self.connected = False
        self.connections = 0
        self.superseded = 0
        self.dropped_alerts = 0
        self.published = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: called with (topic, entry) after each state publish (latency metric)
        self.on_published: Callable[[str, StateEntry], None] | None = None

    # what the service hands over (never blocks) -------------------------------------------
    def set_state(self, topic: str, payload: dict[str, Any], received_at: float | None = None) -> None:
        entry = self.current[topic] = StateEntry(payload, received_at)
        if self.connected and len(self.queue) < self.rt.publish_queue:
            self.queue.append((topic, entry))
        else:
            self._latest_only(topic)
        self._kick()

    def _latest_only(self, topic: str) -> None:
        if topic in self.dirty:
            self.superseded += 1
            metrics.REALTIME_SUPERSEDED.inc()
        self.dirty[topic] = None

    def _collapse(self) -> None:
        """The broker went away: what was queued is kept as latest values only."""
        while self.queue:
            topic, entry = self.queue.popleft()
            if self.current.get(topic) is not entry:
                self.superseded += 1
                metrics.REALTIME_SUPERSEDED.inc()
            else:
                self._latest_only(topic)

    def mark_dirty(self, topic: str) -> None:
        if topic in self.current:
            self.dirty[topic] = None
            self._kick()

    def alert(self, topic: str, payload: dict[str, Any]) -> None:
        if len(self.alerts) >= self.rt.alert_queue:
            self.alerts.popleft()
            self.dropped_alerts += 1
            metrics.REALTIME_ALERTS_DROPPED.inc()
        self.alerts.append((topic, payload))
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.dirty) + len(self.alerts)

    async def flush(self, timeout: float) -> bool:
        """Wait (while connected, at most ``timeout`` s) until everything handed over went out."""
        if not self.connected or not self.pending:
            return not self.pending
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # payloads -------------------------------------------------------------------------------
    def render(self, entry: StateEntry, now: float) -> bytes:
        payload = entry.payload
        if (entry.received_at is not None and not payload.get("stale")
                and now - entry.received_at > self.rt.max_age_seconds):
            payload = {**payload, "stale": True}
        return json.dumps(payload, separators=(",", ":")).encode()

    # the connection -------------------------------------------------------------------------
    def client(self) -> aiomqtt.Client:
        """A fresh client (aiomqtt 2 clients are not reentrant after a failure)."""
        host, port, transport = broker_address(self.settings.mqtt.url)
        m = self.settings.mqtt
        will = None
        if self.will_topic:
            will = aiomqtt.Will(self.will_topic, json.dumps(self.will_payload or {}), qos=1, retain=True)
        return aiomqtt.Client(host, port, transport=transport,  # type: ignore[arg-type]
                              identifier=self.identifier, clean_session=True,
                              username=m.username or None,
                              password=m.password.reveal() or None,
                              will=will, timeout=5.0, keepalive=10,
                              max_queued_outgoing_messages=10_000)

    async def run(self, stopping: asyncio.Event) -> None:
        """Connect, publish, reconnect with backoff until ``stopping`` is set."""
        failures = 0
        while not stopping.is_set():
            try:
                async with self.client() as client:
                    no_nagle(client)
                    self.connected = True
                    self.connections += 1
                    metrics.REALTIME_CONNECTED.set(1)
                    failures = 0
                    log.info("connected to MQTT broker", extra={"url": self.settings.mqtt.url,
                                                                 "republish": len(self.current)})
                    for topic in self.current:  # the broker may have lost the retained state
                        self.dirty[topic] = None
                    await self._drain_forever(client, stopping)
            except aiomqtt.MqttError as exc:
                failures += 1
                delay = min(self.rt.reconnect_max_seconds,
                            self.rt.reconnect_min_seconds * 2 ** min(failures - 1, 16))
                delay *= 0.5 + random.random() / 2
                log.warning("MQTT broker unreachable; keeping the latest values and retrying",
                            extra={"error": str(exc), "attempt": failures,
                                   "backoff_s": round(delay, 2), "pending": self.pending})
                self._mark_down()
                try:
                    await asyncio.wait_for(stopping.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            finally:
                self._mark_down()

    def _mark_down(self) -> None:
        if self.connected:
            self.connected = False
            metrics.REALTIME_CONNECTED.set(0)
        self._collapse()
        self._idle.set()  # nobody waits on a broker that is away

    async def _drain_forever(self, client: aiomqtt.Client, stopping: asyncio.Event) -> None:
        while True:
            while self.alerts:
                topic, payload = self.alerts[0]
                await client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1,
                                     timeout=5.0)
                self.alerts.popleft()
                self.published += 1
                metrics.REALTIME_PUBLISHED.labels("alert").inc()
            while self.queue and not self.alerts:
                chunk = [self.queue[i] for i in range(min(CHUNK, len(self.queue)))]
                await self._publish_states(client, chunk)
                for _ in chunk:
                    self.queue.popleft()
            while self.dirty and not self.alerts and not self.queue:
                topics = [t for _, t in zip(range(CHUNK), self.dirty)]
                chunk = [(t, self.current[t]) for t in topics]
                await self._publish_states(client, chunk)
                for topic, entry in chunk:
                    if self.dirty.get(topic, 0) is None and self.current.get(topic) is entry:
                        del self.dirty[topic]
            if not self.pending:
                self._idle.set()
                if stopping.is_set():
                    return
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stopping.wait())
                try:
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()


    async def _publish_states(self, client: aiomqtt.Client, chunk: list[tuple[str, StateEntry]]) -> None:
        """Publish retained QoS 0 states in order; returns once all are written to the socket.

        Awaiting aiomqtt's ``publish`` per message costs ~1.5 ms each (a future and a
        timeout per call): a raw chunk's ~100 parameter values would wait ~150 ms. So all
        but the last go straight to the paho client underneath (queued in order on the
        same socket) and the last one, awaited through aiomqtt, is the barrier: when it
        is written, every earlier one is.
        """
        now = self.clock()
        paho = client._client  # aiomqtt 2.5.1's paho-mqtt client (pinned)
        for topic, entry in chunk[:-1]:
            info = paho.publish(topic, self.render(entry, now), qos=0, retain=True)
            if info.rc != 0:
                raise aiomqtt.MqttError(f"publish to {topic} failed (paho rc {info.rc})")
        topic, entry = chunk[-1]
        await client.publish(topic, self.render(entry, now), qos=0, retain=True, timeout=5.0)
        self.published += len(chunk)
        for topic, entry in chunk:
            metrics.REALTIME_PUBLISHED.labels("eng" if "/eng/" in topic else "status").inc()
            if self.on_published is not None:
                self.on_published(topic, entry)


def no_nagle(client: aiomqtt.Client) -> None:
    """Send each small MQTT message at once: paho leaves Nagle's algorithm on, so a value
    written right after another waits for its acknowledgement (~40 ms delayed ACK on Linux)."""
    sock = client._client.socket()  # aiomqtt 2.5.1's paho client (pinned)
    raw = getattr(sock, "_sock", sock) if sock is not None else None  # a websocket wraps it
    if isinstance(raw, socket.socket) and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def read_retained(settings: Settings, patterns: list[str], timeout: float = 3.0) -> dict[str, bytes]:
    """Retained messages under ``patterns`` now on the broker (topic -> payload); {} if unreachable.

    A marker published after subscribing arrives after every retained message
    (one ordered session), so the read ends as soon as the broker has sent them.
    """
    import uuid

    host, port, transport = broker_address(settings.mqtt.url)
    marker = f"{settings.realtime.topic_root}/status/realtime/marker/{uuid.uuid4().hex}"
    out: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(timeout):
            async with aiomqtt.Client(host, port, transport=transport,  # type: ignore[arg-type]
                                      username=settings.mqtt.username or None,
                                      password=settings.mqtt.password.reveal() or None,
                                      timeout=timeout) as client:
                for pattern in patterns:
                    await client.subscribe(pattern, qos=0)
                await client.subscribe(marker, qos=0)
                await client.publish(marker, b"1", qos=0)
                async for message in client.messages:
                    topic = str(message.topic)
                    if topic == marker:
                        break
                    if message.retain and message.payload:
                        out[topic] = bytes(message.payload)  # type: ignore[arg-type]
    except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
        log.warning("could not read the retained state; starting without it",
                    extra={"error": repr(exc), "url": settings.mqtt.url})
        return {}
    return out
