"""Demultiplexer: raw contact chunks -> engineering, science, dead-letter and alert topics.

Consumes ``downlink.raw`` (ordered per contact), decodes across chunk
boundaries with the vectorized decoder and routes, per chunk:

* real-time engineering -> ``tlm.eng.realtime`` (first in the batch, small messages),
* recorded engineering  -> ``tlm.eng.recorded`` (one message per APID run),
* science               -> ``tlm.sci`` keyed by exposure id (one message per exposure run),
* undecodable bytes     -> ``tlm.deadletter`` with contact, offset and reason,
* accounting anomalies  -> ``ops.alerts`` the moment they are seen.

Per-contact state (decoder carry, next expected byte, accounting) is written to
the compacted ``demux.state`` topic in the same transaction as the outputs and
the consumed offsets, so a crash, restart or rebalance resumes exactly where the
last committed batch ended: no packet is lost or emitted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import TopicPartition

from consumers.demux.accounting import AccountingEvent, ContactAccount
from consumers.framework.service import Input, Output, Record
from consumers.framework.transactional import TransactionalService
from streams.kafka import read_table, topic_partitions
from monitoring import metrics
from streams.messages import DeadLetter, DemuxState, EngBatch, OpsAlert, SciEoc, SciRun
from streams.decoder import DecodedChunk, StreamDecoder
from streams.dictionary import load_dictionary
from streams.packets import ExposureTag, Kind, Source

log = logging.getLogger(__name__)

TAG_FIELDS = ("program", "observation", "visit", "visit_group", "parallel_seq", "activity",
              "exposure", "detector")


@dataclass
class ContactState:
    """Everything demux knows about one contact between two chunks."""

    contact: str
    decoder: StreamDecoder
    account: ContactAccount

    @property
    def next_offset(self) -> int:
        return self.decoder.next_offset

    def snapshot(self) -> DemuxState:
        return DemuxState(contact=self.contact, next_offset=self.decoder.next_offset,
                          carry=self.decoder.carry, open_skip=self.decoder.open_skip,
                          account=self.account.to_dict())

    @classmethod
    def restore(cls, snap: DemuxState, eng_lengths: dict[int, int]) -> "ContactState":
        carry = bytes(snap.carry)
        decoder = StreamDecoder(eng_lengths, stream_offset=snap.next_offset - len(carry),
                                carry=carry, open_skip=snap.open_skip)
        return cls(snap.contact, decoder, ContactAccount.from_dict(snap.account))


def _extract(decoded: DecodedChunk, idx: np.ndarray) -> tuple[bytes, bytes]:
    """Selected packets as one byte string, with their index rebased onto it."""
    index = decoded.packets.take(idx)
    index.offset = np.concatenate(([0], np.cumsum(index.length[:-1], dtype=np.int64)))
    return decoded.packets_bytes(idx), index.to_bytes()


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    """Indices grouped by key (rows of a 2-D array or values of a 1-D one), arrival order kept."""
    if len(keys) == 0:
        return []
    if keys.ndim == 1:
        _, inverse = np.unique(keys, return_inverse=True)
    else:
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


class Demux(TransactionalService):
    name = "demux"
    inputs = (Input("downlink.raw"),)
    outputs = {"tlm.eng.realtime": (EngBatch,), "tlm.eng.recorded": (EngBatch,),
               "tlm.sci": (SciRun, SciEoc), "tlm.deadletter": (DeadLetter,),
               "ops.alerts": (OpsAlert,), "demux.state": (DemuxState,)}
    max_records = 64
    partition_fetch_bytes = 64 << 20  # a contact lives in one partition: fetch deep into it

    def __init__(self, settings, **kw) -> None:
        super().__init__(settings, **kw)
        self.eng_lengths = load_dictionary(settings.dictionary_file).packet_lengths()
        self.contacts: dict[str, ContactState] = {}
        self.sci_partitions = 1

    async def on_start(self) -> None:
        self.sci_partitions = len(await topic_partitions(self.settings, self.settings.topic("tlm.sci")))
        await super().on_start()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        await super().on_assigned(assigned)
        table = await read_table(self.settings, "demux.state", DemuxState)
        self.contacts = {c: ContactState.restore(s, self.eng_lengths) for c, s in table.items()}
        log.info("demux state loaded", extra={"contacts": len(self.contacts)})

    async def process(self, records: list[Record]) -> list[Output]:
        outputs, touched = await asyncio.to_thread(self._process_records, records)
        outputs += [Output("demux.state", self.contacts[c].snapshot(), key=c.encode())
                    for c in sorted(touched)]
        return outputs

    # the rest runs in a worker thread: pure CPU, no awaits ------------------
    def _process_records(self, records: list[Record]) -> tuple[list[Output], set[str]]:
        realtime: list[Output] = []
        bulk: list[Output] = []
        touched: set[str] = set()
        for rec in records:
            h = rec.headers
            contact = h.get("contact") or (rec.key or b"unknown").decode()
            state = self.contacts.get(contact)
            if state is None:
                state = self.contacts[contact] = ContactState(
                    contact, StreamDecoder(self.eng_lengths), ContactAccount(contact))
            touched.add(contact)
            if h.get("eoc") == "1":
                self._end_contact(state, int(h.get("offset", state.next_offset)), bulk)
                continue
            self._chunk(state, int(h["offset"]), rec.value, rec.timestamp, realtime, bulk)
        return realtime + bulk, touched

    def _chunk(self, state: ContactState, offset: int, value: bytes, raw_ts: int,
               realtime: list[Output], bulk: list[Output]) -> None:
        contact = state.contact
        end = offset + len(value)
        if end <= state.next_offset:
            log.info("raw chunk already processed, skipped",
                     extra={"contact": contact, "offset": offset})
            return
        if state.account.ended:
            log.warning("raw chunk after end of contact ignored",
                        extra={"contact": contact, "offset": offset})
            return
        if offset < state.next_offset:
            value = value[state.next_offset - offset:]
            offset = state.next_offset
        elif offset > state.next_offset:
            self._discontinuity(state, offset, bulk)
        metrics.BYTES_IN.inc(len(value))
        state.account.bytes += len(value)
        decoded = state.decoder.feed(value, offset)
        self._route(state, decoded, raw_ts, realtime, bulk)

    def _discontinuity(self, state: ContactState, offset: int, bulk: list[Output]) -> None:
        """Raw bytes never reached Kafka: report, drop the partial packet, restart there."""
        lost = offset - state.next_offset
        self._route(state, state.decoder.flush(), 0, bulk, bulk)
        state.decoder = StreamDecoder(self.eng_lengths, stream_offset=offset)
        bulk.append(self._alert(state.contact, "raw_gap", "warning", stream_offset=offset - lost,
                                count=lost))
        log.warning("raw stream discontinuity", extra={"contact": state.contact, "lost_bytes": lost})

    def _end_contact(self, state: ContactState, total: int, bulk: list[Output]) -> None:
        if state.account.ended:
            return
        if total > state.next_offset:
            self._discontinuity(state, total, bulk)
        self._route(state, state.decoder.flush(), 0, bulk, bulk)
        state.account.ended = True
        body = SciEoc(contact=state.contact, bytes=state.next_offset)
        for p in range(self.sci_partitions):
            bulk.append(Output("tlm.sci", body, key=state.contact.encode(), partition=p))
        report = state.account.report()
        bulk.append(self._alert(state.contact, "contact_end", "info", packets=report["packets"],
                                missing=report["missing"], duplicates=report["duplicates"],
                                out_of_order=report["out_of_order"],
                                skipped_bytes=report["skipped_bytes"]))
        log.info("contact ended", extra={"contact": state.contact, "packets": report["packets"],
                                         "missing": report["missing"]})

    def _route(self, state: ContactState, decoded: DecodedChunk, raw_ts: int,
               realtime: list[Output], bulk: list[Output]) -> None:
        contact = state.contact
        key = contact.encode()
        for skip in decoded.skipped:
            state.account.skipped_bytes += len(skip.data)
            state.account.resyncs += 1
            metrics.DEADLETTER_BYTES.labels(skip.reason.split(":")[0][:40]).inc(len(skip.data))
            metrics.RESYNCS.labels(skip.reason.split(":")[0][:40]).inc()
            bulk.append(Output("tlm.deadletter", DeadLetter(
                reason=skip.reason, data=skip.data, contact=contact, stream_offset=skip.stream_offset,
                length=len(skip.data), time=time.time()), key=key))
            bulk.append(self._alert(contact, "resync", "warning", stream_offset=skip.stream_offset,
                                    count=len(skip.data), reason=skip.reason))
        pk = decoded.packets
        if len(pk) == 0:
            return
        for event in state.account.update(pk.apid, pk.source, pk.seq, pk.stream_offset):
            self._count(event)
            if event.type == "gap":
                log.warning("sequence gap", extra={"contact": contact, "apid": event.apid,
                                                   "first_seq": event.first_seq, "count": event.count})
            bulk.append(self._alert(contact, event.type,
                                    "warning" if event.type == "gap" else "info", **event.to_dict()))
        apids, counts = np.unique(pk.apid.astype(np.int64) * 2 + pk.source, return_counts=True)
        for a, n in zip(apids.tolist(), counts.tolist()):
            metrics.PACKETS_IN.labels(str(a // 2), str(a % 2)).inc(n)
        eng = pk.kind == Kind.ENG
        for source, out in ((Source.REALTIME, realtime), (Source.RECORDED, bulk)):
            sel = np.flatnonzero(eng & (pk.source == source))
            topic = "tlm.eng.realtime" if source == Source.REALTIME else "tlm.eng.recorded"
            for group in _groups(pk.apid[sel]):
                idx = sel[group]
                apid = int(pk.apid[idx[0]])
                packets, index = _extract(decoded, idx)
                out.append(Output(topic, EngBatch(
                    contact=contact, apid=apid, source=int(source), raw_ts=raw_ts,
                    packets=packets, index=index), key=str(apid).encode()))
        sel = np.flatnonzero(~eng)
        if len(sel):
            tags = np.stack([getattr(pk, f)[sel].astype(np.int64) for f in TAG_FIELDS], axis=1)
            for group in _groups(tags):
                idx = sel[group]
                exposure_id = ExposureTag(*tags[group[0]].tolist()).exposure_id
                packets, index = _extract(decoded, idx)
                bulk.append(Output("tlm.sci", SciRun(
                    contact=contact, exposure_id=exposure_id, raw_ts=raw_ts,
                    packets=packets, index=index), key=exposure_id.encode()))

    @staticmethod
    def _count(event: AccountingEvent) -> None:
        labels = (str(event.apid), str(event.source))
        if event.type == "gap":
            metrics.SEQ_GAPS.labels(*labels).inc()
            metrics.SEQ_MISSING.labels(*labels).inc(event.count)
        elif event.type == "duplicate":
            metrics.SEQ_DUPLICATES.labels(*labels).inc()
        else:
            metrics.SEQ_OUT_OF_ORDER.labels(*labels).inc()

    @staticmethod
    def _alert(contact: str, type_: str, severity: str, **fields: Any) -> Output:
        known = set(OpsAlert.__dataclass_fields__) - {"contact", "type", "severity", "time", "detail"}
        detail = {k: v for k, v in fields.items() if k not in known}
        body = {k: v for k, v in fields.items() if k in known}
        alert = OpsAlert(contact=contact, type=type_, severity=severity, time=time.time(),
                         detail=detail, **body)
        return Output("ops.alerts", alert, key=contact.encode())
