"""The real-time tap: a live feed's real-time engineering published the moment its bytes arrive.

A ground station's front end separates the real-time stream from the
recorder dump before anything is archived; operators must not wait for the
bytes to be framed into a 1 MiB raw chunk (~0.3 s at 28 Mbit/s), nor for
demux, which shares its fetches and its CPU with every contact's backlog.
So ingest, on a live feed (a paced file, the TCP listener), decodes the
bytes as they are received with the same vectorized decoder and validity
rules as demux, and publishes every valid real-time engineering packet
(source 0) to ``tlm.eng.realtime`` at once, ``raw_ts`` = its reception time.

Each raw chunk then declares what the tap covered: headers ``rt_from`` (where
this ingest run began decoding) and ``rt_through`` (the decoder's decided
point). Every valid real-time packet lying wholly in ``[rt_from,
rt_through)`` was published, and acknowledged, before the chunk was sent;
demux publishes only the real-time packets outside that range (a packet cut
by an ingest restart, an unpaced dump that has no tap). The stream decoder
gives the same packets for any split of the stream, so the two agree.
Delivery is at least once (a crash between a tap send and the chunk
repeats it on the resume); the realtime service de-duplicates.

**Gap alerts at reception.** The tap also counts every decoded packet's
sequence with demux's accounting rule (:mod:`consumers.demux.accounting`,
same settings) and sends each *gap* to ``ops.alerts`` at once, coalesced
like demux's (``detail.origin = "ingest"``). Demux's accounting stays the
record of the contact and sends its own gap alerts later; the realtime
service gives an MQTT alert the identity of what it reports (contact, APID,
source, first count, count), so the operator hears of a gap once, from
whichever came first. The tap's counts start where the ingest run starts: a
gap across an ingest restart is only demux's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import numpy as np
from aiokafka import AIOKafkaProducer

from consumers.demux.accounting import ContactAccount, Rules
from consumers.demux.alerts import AlertCoalescer
from core.settings import Settings
from monitoring.metrics import BYTES_OUT, MESSAGES_OUT
from streams.batching import ENVELOPE_MARGIN, eng_batches
from streams.decoder import DecodedChunk, StreamDecoder
from streams.dictionary import load_dictionary
from streams.packets import Kind, Source
from streams.validation import Limits, validate

log = logging.getLogger(__name__)

TOPIC = "tlm.eng.realtime"
ALERTS = "ops.alerts"


class RealtimeTap:
    """Decodes one live contact stream from ``start`` on and publishes its real-time engineering."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer, contact: str, start: int,
                 eng_lengths: dict[int, int] | None = None) -> None:
        lengths = eng_lengths if eng_lengths is not None else \
            load_dictionary(settings.dictionary_file).packet_lengths()
        self.producer = producer
        self.contact = contact
        self.start = start
        self.decoder = StreamDecoder(lengths, stream_offset=start)
        self.limits = Limits.from_settings(settings, lengths)
        self.budget = settings.kafka.max_message_bytes - ENVELOPE_MARGIN
        self._sent: list[asyncio.Future] = []
        self.account = ContactAccount(contact, rules=Rules.from_settings(settings)) \
            if settings.ingest.tap_gap_alerts else None
        d = settings.demux
        self.alerts = AlertCoalescer(d.alert_window_seconds, d.alert_max_ranges)
        self.settings = settings

    async def feed(self, data: bytes) -> None:
        """Bytes just received (in stream order)."""
        await self._publish(self.decoder.feed(data))

    async def finish(self) -> None:
        """End of the stream: what the decoder still held, and the accounting's held decisions
        (their alerts leave with :meth:`headers`)."""
        await self._publish(self.decoder.flush())
        if self.account is not None:
            self._gaps(self.account.finish())

    @property
    def through(self) -> int:
        """Stream offset up to which every packet is decided (and, if real-time, sent)."""
        return self.decoder.next_offset - len(self.decoder.carry)

    async def headers(self) -> list[tuple[str, bytes]]:
        """The coverage headers of the raw chunk about to be sent, once every tap send is acknowledged."""
        await self._send_alerts(force=True)
        if self._sent:
            sent, self._sent = self._sent, []
            await asyncio.gather(*sent)
        return [("rt_from", str(self.start).encode()), ("rt_through", str(self.through).encode())]

    def _gaps(self, events) -> None:
        for ev in events:
            if ev.type == "gap":
                self.alerts.add(self.contact, "gap", "warning", ev.first_seq, ev.count, apid=ev.apid,
                                source=ev.source, stream_offset=ev.stream_offset)

    async def _send_alerts(self, force: bool) -> None:
        for alert in self.alerts.flush(force=force):
            alert = dataclasses.replace(alert, detail={**alert.detail, "origin": "ingest"})
            await self._send(ALERTS, alert.encode(), self.contact.encode())

    async def _send(self, topic: str, payload: bytes, key: bytes) -> None:
        """Sent now; acknowledged before the next raw chunk (:meth:`headers`)."""
        self._sent.append(await self.producer.send(self.settings.topic(topic), payload, key=key))
        MESSAGES_OUT.labels("ingest", topic).inc()
        BYTES_OUT.labels("ingest", topic).inc(len(payload))

    async def _publish(self, decoded: DecodedChunk) -> None:
        pk = decoded.packets
        if len(pk) == 0:
            return
        if self.account is not None:
            self._gaps(self.account.update(pk.apid, pk.source, pk.seq, pk.stream_offset))
            await self._send_alerts(force=False)
        live = (pk.kind == Kind.ENG) & (pk.source == Source.REALTIME)
        if not live.any():
            return
        sel = np.flatnonzero(live & (validate(decoded, self.limits) == 0))
        now_ms = int(time.time() * 1000)
        for batch in eng_batches(decoded, sel, contact=self.contact, source=int(Source.REALTIME),
                                 raw_ts=now_ms, budget=self.budget):
            await self._send(TOPIC, batch.encode(), str(batch.apid).encode())
