"""Demux routing, pure: raw records in, the messages to produce out (no Kafka, no clock but one passed in).

:class:`Router` owns every contact's decoder, accounting and alert
coalescer. For each ``downlink.raw`` record (:meth:`Router.record`) it

1. refuses a poison record (no usable ``offset`` header, a bad contact id, an
   end-of-contact marker with bytes) with a dead letter naming the source
   topic, partition and offset: the record is committed past, demux goes on;
2. finds the contact's *pass* (:mod:`consumers.demux.contacts`): bytes under
   an id whose stream already ended start a new pass ``<id>#<n>`` with its
   own decoder and accounting, announced by a ``contact_reopened`` alert;
3. decodes the chunk, accounts every decoded packet's sequence count (all of
   them: sequence counting is about the link, not the content), validates
   every packet's fields (:mod:`streams.validation`), dead-letters the
   rejected ones with their reason, and routes the valid ones: real-time
   engineering -> ``tlm.eng.realtime``, recorded engineering ->
   ``tlm.eng.recorded``, science -> ``tlm.sci`` keyed by exposure id;
4. returns them split into the **fast lane** (real-time engineering and
   sequence-anomaly alerts of this chunk: the service sends them at once,
   at-least-once) and the **bulk** part (everything else: produced in the
   batch's transaction, exactly once). Real-time packets inside the raw
   record's ``rt_from``/``rt_through`` range were already published by
   ingest's real-time tap and are left out (:func:`tapped_range`).

Every message stays under ``kafka.max_message_bytes``: runs of packets are
cut into pieces whose packets plus index fit. :meth:`Router.end_batch` sends
the alerts still held and one ``demux.state`` snapshot per pass touched in
the batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from consumers.demux.accounting import OUTLIER, AccountingEvent, ContactAccount, Rules
from consumers.demux.alerts import SEQUENCE_TYPES, AlertCoalescer
from consumers.demux.contacts import ContactIdError, Passes, check_contact_id
from consumers.framework.service import Output, Record
from monitoring import metrics
from streams.batching import ENVELOPE_MARGIN, eng_batches, extract, groups, pieces
from streams.decoder import DecodedChunk, StreamDecoder
from streams.messages import DeadLetter, DemuxState, OpsAlert, SciEoc, SciRun
from streams.packets import ExposureTag, Kind, Source
from streams.validation import REASONS, Limits, tag_valid, validate

log = logging.getLogger(__name__)

TAG_FIELDS = ("program", "observation", "visit", "visit_group", "parallel_seq", "activity",
              "exposure", "detector")
#: alert types sent on the fast lane (sequence anomalies: operators hear of dropped packets at once)
FAST_ALERTS = SEQUENCE_TYPES
RAW_TOPIC = "downlink.raw"


@dataclass
class ContactState:
    """Everything demux knows about one pass of a contact between two chunks."""

    contact: str  # pass id: the contact id, or <id>#<n> for a later pass
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
    def restore(cls, snap: DemuxState, eng_lengths: dict[int, int], rules: Rules) -> "ContactState":
        carry = bytes(snap.carry)
        decoder = StreamDecoder(eng_lengths, stream_offset=snap.next_offset - len(carry),
                                carry=carry, open_skip=snap.open_skip)
        return cls(snap.contact, decoder, ContactAccount.from_dict(snap.account, rules))


@dataclass
class Emitted:
    """What one record (or the end of a batch) produces."""

    fast: list[Output] = field(default_factory=list)
    bulk: list[Output] = field(default_factory=list)

    def extend(self, other: "Emitted") -> None:
        self.fast += other.fast
        self.bulk += other.bulk


#: ``[rt_from, rt_through)`` of the raw record being routed, or None (:func:`tapped_range`)
Tapped = tuple[int, int] | None


def tapped_range(headers: dict[str, str]) -> Tapped:
    """``[rt_from, rt_through)`` of a raw record: every valid real-time engineering packet lying
    wholly inside it was published by ingest's real-time tap before the record was sent
    (``consumers.ingest.tap``). Absent or unreadable: demux publishes them itself."""
    try:
        lo, hi = int(headers["rt_from"]), int(headers["rt_through"])
    except (KeyError, ValueError):
        return None
    return (lo, hi) if 0 <= lo <= hi else None


class Router:
    """Pure demux logic; see the module docstring."""

    def __init__(self, eng_lengths: dict[int, int], *, sci_partitions: int, max_message_bytes: int,
                 limits: Limits, rules: Rules = Rules(), alert_window: float = 1.0,
                 alert_max_ranges: int = 256, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.eng_lengths = eng_lengths
        self.sci_partitions = sci_partitions
        self.budget = max_message_bytes - ENVELOPE_MARGIN
        self.limits = limits
        self.rules = rules
        self.wall = wall
        self.alerts = AlertCoalescer(alert_window, alert_max_ranges, clock=clock, wall=wall)
        self.passes = Passes()
        self.contacts: dict[str, ContactState] = {}
        self.touched: set[str] = set()

    @classmethod
    def from_settings(cls, settings, eng_lengths: dict[int, int], sci_partitions: int,
                      **kw: Any) -> "Router":
        return cls(eng_lengths, sci_partitions=sci_partitions,
                   max_message_bytes=settings.kafka.max_message_bytes,
                   limits=Limits.from_settings(settings, eng_lengths),
                   rules=Rules.from_settings(settings),
                   alert_window=settings.demux.alert_window_seconds,
                   alert_max_ranges=settings.demux.alert_max_ranges, **kw)

    @staticmethod
    def report_of(snap: DemuxState) -> dict[str, Any]:
        """The accounting report stored in a snapshot."""
        return ContactAccount.from_dict(snap.account).report()

    # state ---------------------------------------------------------------------------------------
    def load(self, table: dict[str, DemuxState]) -> None:
        """Replace every pass by the committed snapshots (assignment, or a redo after a failure)."""
        self.contacts = {c: ContactState.restore(s, self.eng_lengths, self.rules)
                         for c, s in table.items()}
        self.passes = Passes.from_ids(self.contacts)
        self.touched.clear()
        self.alerts.reset()

    # records -------------------------------------------------------------------------------------
    def record(self, rec: Record) -> Emitted:
        """Route one ``downlink.raw`` record."""
        out = Emitted()
        h = rec.headers
        try:
            base = h.get("contact") or (rec.key.decode("utf-8") if rec.key else "")
            check_contact_id(base)
            eoc = h.get("eoc") == "1"
            if "offset" not in h:
                raise ContactIdError("no 'offset' header: not a chunk written by downlink ingest")
            offset = int(h["offset"])
            if offset < 0:
                raise ContactIdError(f"negative 'offset' header {offset}")
            if eoc and rec.value:
                raise ContactIdError("an end-of-contact marker that carries bytes")
        except (ContactIdError, ValueError, UnicodeDecodeError) as exc:
            out.bulk.append(self._poison(rec, f"unusable raw record: {exc}"))
            return out
        state = self._pass_for(base, offset, eoc, rec.value, out)
        if state is None:
            return out
        self.touched.add(state.contact)
        tapped = tapped_range(h)
        if eoc:
            self._end_contact(state, offset, out, tapped)
        else:
            self._chunk(state, offset, rec.value, rec.timestamp, out, tapped)
        return out

    def end_batch(self) -> Emitted:
        """Alerts still held, then one snapshot per touched pass (all bulk: the batch commits them)."""
        out = Emitted()
        self._flush_alerts(out, force=True)
        for c in sorted(self.touched):
            out.bulk.append(Output("demux.state", self.contacts[c].snapshot(), key=c.encode()))
        self.touched.clear()
        return out

    # contacts ------------------------------------------------------------------------------------
    def _pass_for(self, base: str, offset: int, eoc: bool, value: bytes,
                  out: Emitted) -> ContactState | None:
        current = self.passes.current(base)
        state = self.contacts.get(current) if current else None
        if state is not None and state.account.ended:
            if eoc and offset == state.next_offset:
                log.info("end-of-contact marker repeated; the pass is already closed",
                         extra={"contact": state.contact, "offset": offset})
                return None
            new = self.passes.open(base)
            metrics.CONTACT_PASSES.inc()
            log.warning("new stream under a contact id that already ended: processed as a new pass",
                        extra={"contact": base, "pass": new, "offset": offset})
            out.bulk.append(self._alert(new, "contact_reopened", "warning", stream_offset=offset,
                                        detail={"previous_pass": state.contact,
                                                "previous_bytes": state.next_offset}))
            state = None
            current = new
        if state is None:
            current = current or self.passes.open(base)
            state = self.contacts[current] = ContactState(
                current, StreamDecoder(self.eng_lengths), ContactAccount(current, rules=self.rules))
        return state

    def _chunk(self, state: ContactState, offset: int, value: bytes, raw_ts: int,
               out: Emitted, tapped: Tapped) -> None:
        contact = state.contact
        end = offset + len(value)
        if offset < state.next_offset:
            # bytes already processed arriving again (a second ingest of the same contact
            # running concurrently, or a re-publication): never silently dropped
            seen = min(end, state.next_offset) - offset
            out.bulk.append(Output("tlm.deadletter", DeadLetter(
                reason="raw bytes overlap bytes already processed for this contact",
                data=bytes(value[:seen]), contact=contact, stream_offset=offset, length=seen,
                time=self.wall()), key=contact.encode()))
            self.alerts.add(contact, "raw_overlap", "warning", offset, seen, stream_offset=offset)
            if end <= state.next_offset:
                return
            value = value[seen:]
            offset = state.next_offset
        elif offset > state.next_offset:
            self._discontinuity(state, offset, out, tapped)
        metrics.BYTES_IN.inc(len(value))
        state.account.bytes += len(value)
        self._route(state, state.decoder.feed(value, offset), raw_ts, out, tapped)
        self._flush_alerts(out, force=False)

    def _discontinuity(self, state: ContactState, offset: int, out: Emitted, tapped: Tapped) -> None:
        """Raw bytes never reached Kafka: report, drop the partial packet, restart there."""
        lost = offset - state.next_offset
        self._route(state, state.decoder.flush(), 0, out, tapped)
        state.decoder = StreamDecoder(self.eng_lengths, stream_offset=offset)
        out.bulk.append(self._alert(state.contact, "raw_gap", "warning",
                                    stream_offset=offset - lost, count=lost))
        log.warning("raw stream discontinuity", extra={"contact": state.contact, "lost_bytes": lost})

    def _end_contact(self, state: ContactState, total: int, out: Emitted, tapped: Tapped) -> None:
        if total > state.next_offset:
            self._discontinuity(state, total, out, tapped)
        self._route(state, state.decoder.flush(), 0, out, tapped)
        self._account_events(state, state.account.finish())
        state.account.ended = True
        self._flush_alerts(out, force=True, contact=state.contact)
        body = SciEoc(contact=state.contact, bytes=state.next_offset)
        for p in range(self.sci_partitions):
            out.bulk.append(Output("tlm.sci", body, key=state.contact.encode(), partition=p))
        report = state.account.report()
        out.bulk.append(self._alert(state.contact, "contact_end", "info", count=report["packets"],
                                    detail={k: report[k] for k in (
                                        "packets", "missing", "duplicates", "out_of_order",
                                        "outliers", "skipped_bytes", "rejected", "gaps_merged")}))
        log.info("contact ended", extra={"contact": state.contact, "packets": report["packets"],
                                         "missing": report["missing"]})

    # packets -------------------------------------------------------------------------------------
    def _route(self, state: ContactState, decoded: DecodedChunk, raw_ts: int, out: Emitted,
               tapped: Tapped) -> None:
        contact = state.contact
        key = contact.encode()
        for skip in decoded.skipped:
            state.account.skipped_bytes += len(skip.data)
            state.account.resyncs += 1
            label = skip.reason.split(":")[0][:40]
            metrics.DEADLETTER_BYTES.labels(label).inc(len(skip.data))
            metrics.RESYNCS.labels(label).inc()
            for a in range(0, max(len(skip.data), 1), self.budget):
                part = skip.data[a:a + self.budget]
                out.bulk.append(Output("tlm.deadletter", DeadLetter(
                    reason=skip.reason, data=part, contact=contact,
                    stream_offset=skip.stream_offset + a, length=len(part), time=self.wall()),
                    key=key))
            self.alerts.add(contact, "resync", "warning", skip.stream_offset, len(skip.data),
                            stream_offset=skip.stream_offset, reason=label)
        pk = decoded.packets
        if len(pk) == 0:
            return
        self._account_events(state, state.account.update(pk.apid, pk.source, pk.seq,
                                                         pk.stream_offset))
        apids, counts = np.unique(pk.apid.astype(np.int64) * 2 + pk.source, return_counts=True)
        for a, n in zip(apids.tolist(), counts.tolist()):
            metrics.PACKETS_IN.labels(str(a // 2), str(a % 2)).inc(n)
        reasons = validate(decoded, self.limits)
        bad = np.flatnonzero(reasons)
        if bad.size:
            self._reject(state, decoded, bad, reasons, out)
        valid = reasons == 0
        eng = valid & (pk.kind == Kind.ENG)
        for source, topic, lane in ((Source.REALTIME, "tlm.eng.realtime", out.fast),
                                    (Source.RECORDED, "tlm.eng.recorded", out.bulk)):
            sel = eng & (pk.source == source)
            if source == Source.REALTIME and tapped is not None:
                lo, hi = tapped  # ingest's tap published these at reception
                end = pk.stream_offset.astype(np.int64) + pk.length
                sel &= ~((pk.stream_offset >= lo) & (end <= hi))
            sel = np.flatnonzero(sel)
            lane += [Output(topic, b, key=str(b.apid).encode()) for b in eng_batches(
                decoded, sel, contact=contact, source=int(source), raw_ts=raw_ts, budget=self.budget)]
        sel = np.flatnonzero(valid & (pk.kind != Kind.ENG))
        if len(sel):
            tags = np.stack([getattr(pk, f)[sel].astype(np.int64) for f in TAG_FIELDS], axis=1)
            for group in groups(tags):
                idx = sel[group]
                exposure_id = ExposureTag(*tags[group[0]].tolist()).exposure_id
                for part in pieces(pk.length[idx], self.budget):
                    packets, index = extract(decoded, idx[part])
                    out.bulk.append(Output("tlm.sci", SciRun(
                        contact=contact, exposure_id=exposure_id, raw_ts=raw_ts,
                        packets=packets, index=index), key=exposure_id.encode()))

    def _reject(self, state: ContactState, decoded: DecodedChunk, bad: np.ndarray,
                reasons: np.ndarray, out: Emitted) -> None:
        """Dead letters for rejected packets (one per packet: contact, offset, APID, exposure, reason)."""
        pk = decoded.packets
        named = tag_valid(pk.take(bad))
        state.account.rejected += len(bad)
        for k, i in enumerate(bad.tolist()):
            reason = REASONS[int(reasons[i])]
            apid = int(pk.apid[i])
            exposure_id = (ExposureTag(*(int(getattr(pk, f)[i]) for f in TAG_FIELDS)).exposure_id
                           if named[k] else None)
            so, length = int(pk.stream_offset[i]), int(pk.length[i])
            metrics.DEMUX_REJECTED.labels(reason).inc()
            out.bulk.append(Output("tlm.deadletter", DeadLetter(
                reason=f"invalid packet: {reason}", data=decoded.packet(i), contact=state.contact,
                stream_offset=so, length=length, apid=apid, exposure_id=exposure_id,
                time=self.wall()), key=state.contact.encode()))
            self.alerts.add(state.contact, "invalid_packet", "warning", so, length, apid=apid,
                            source=int(pk.source[i]), stream_offset=so, exposure_id=exposure_id,
                            reason=reason)
        log.warning("packets rejected", extra={"contact": state.contact, "count": len(bad),
                                               "apid": int(pk.apid[bad[0]]),
                                               "reason": REASONS[int(reasons[bad[0]])]})

    def _account_events(self, state: ContactState, events: Iterable[AccountingEvent]) -> None:
        for event in events:
            labels = (str(event.apid), str(event.source))
            if event.type == "gap":
                metrics.SEQ_GAPS.labels(*labels).inc()
                metrics.SEQ_MISSING.labels(*labels).inc(event.count)
                log.warning("sequence gap", extra={"contact": state.contact, "apid": event.apid,
                                                   "first_seq": event.first_seq, "count": event.count})
            elif event.type == "duplicate":
                metrics.SEQ_DUPLICATES.labels(*labels).inc()
            elif event.type == OUTLIER:
                metrics.SEQ_OUTLIERS.labels(*labels).inc()
            else:
                metrics.SEQ_OUT_OF_ORDER.labels(*labels).inc()
            self.alerts.add(state.contact, event.type, "warning" if event.type == "gap" else "info",
                            event.first_seq, event.count, apid=event.apid, source=event.source,
                            stream_offset=event.stream_offset)

    # outputs -------------------------------------------------------------------------------------
    def _flush_alerts(self, out: Emitted, force: bool, contact: str | None = None) -> None:
        for alert in self.alerts.flush(force=force, contact=contact):
            metrics.ALERTS_COALESCED.labels(alert.type).inc(alert.detail.get("events", 1))
            lane = out.fast if alert.type in FAST_ALERTS else out.bulk
            lane.append(Output("ops.alerts", alert, key=alert.contact.encode()))

    def _alert(self, contact: str, type_: str, severity: str, *, stream_offset: int | None = None,
               count: int = 0, detail: dict | None = None) -> Output:
        alert = OpsAlert(contact=contact, type=type_, severity=severity, time=self.wall(),
                         count=count, stream_offset=stream_offset, detail=detail or {})
        return Output("ops.alerts", alert, key=contact.encode())

    def _poison(self, rec: Record, reason: str) -> Output:
        raw = rec.value if isinstance(rec.value, (bytes, bytearray)) else b""
        metrics.DEADLETTER_RECORDS.labels("demux", "unusable raw record").inc()
        log.warning("raw record dead-lettered", extra={"topic": rec.topic, "partition": rec.tp.partition,
                                                       "offset": rec.offset, "reason": reason})
        return Output("tlm.deadletter", DeadLetter(
            reason=reason, data=bytes(raw[:self.budget]), service="demux",
            contact=rec.headers.get("contact"), source_topic=rec.topic,
            partition=rec.tp.partition, offset=rec.offset, length=len(raw), time=self.wall()),
            key=rec.key)
