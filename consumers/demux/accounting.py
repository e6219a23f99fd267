"""Yamcs-style packet accounting per (APID, source) within a contact, robust to corrupt counts.

The 14-bit sequence count is unwrapped into an extended counter: each packet's
signed distance to the previous packet of the same stream, in [-8192, 8191],
is accumulated (``numpy.cumsum``), so a wrap 16383 -> 0 is a step of +1.

**Isolated outliers first.** A packet whose count is more than ``jump`` away
from the previous packet, while each of the next ``confirm`` packets (fewer at
the end of the contact, at least one) is within ``jump`` of that previous
packet and more than ``jump`` away from it, is *isolated*: a corrupt count,
not a gap. Its followers are unwrapped against the packet before it, so it
changes nothing else. A forward isolated packet is one ``seq_outlier``
anomaly, outside the counts; a backward one is judged as any packet behind the
maximum (a late fill or a duplicate) unless it lies before the stream's first
count, where it is a ``seq_outlier`` too. A
decision that needs packets not yet received is deferred (at most
``confirm`` packets are held per stream); a jump that the next packet
continues is a gap at once.

The first packet of a stream has no packet before it: it is an outlier when
its next ``confirm`` packets (at least one) agree with each other and are all
more than ``jump`` away from it.

Then, against the running maximum of the other packets:

* a packet above the maximum + 1 opens a gap (the skipped counts are *missing*);
* a packet at or below the maximum either fills a missing count
  (*out of order*) or repeats one already received (*duplicate*).

Missing counts are kept as ranges, at most ``max_ranges`` per stream: beyond
that the oldest are folded into one coarse range that only keeps its count
(``gaps_merged`` says how many), so the state stays bounded whatever the link
does. The simulator's truth (``streams.simulator.truth.sequence_accounting``)
states the same rule for whole streams. The common case (every packet one
above the last) is vectorized; only anomalies loop.
"""

from __future__ import annotations

import bisect
import copy as copy_module
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitoring import metrics
from streams.packets import SEQ_MODULO

HALF = SEQ_MODULO // 2
OUTLIER = "seq_outlier"


def _wrap(x: np.ndarray | int) -> Any:
    """Signed distance of 14-bit counts, in [-8192, 8191]."""
    return (x + HALF) % SEQ_MODULO - HALF


@dataclass(frozen=True)
class Rules:
    """Parameters of the accounting rule (``settings.demux``)."""

    jump: int = 16
    confirm: int = 3
    max_ranges: int = 1024

    @classmethod
    def from_settings(cls, settings) -> "Rules":
        d = settings.demux
        return cls(jump=d.outlier_min_jump, confirm=d.outlier_confirm_packets,
                   max_ranges=d.max_gap_ranges)


@dataclass
class AccountingEvent:
    """An anomaly worth an operator's attention (becomes part of an ops.alerts message)."""

    type: str  # gap | duplicate | out_of_order | seq_outlier
    apid: int
    source: int
    first_seq: int
    count: int
    stream_offset: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StreamAccount:
    """Sequence accounting of one (APID, source) stream."""

    apid: int
    source: int
    packets: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gap_events: int = 0
    outliers: int = 0
    first_ext: int | None = None
    last_ext: int | None = None
    max_ext: int | None = None
    #: sorted, disjoint [lo, hi) ranges of extended counts never received so far
    missing: list[list[int]] = field(default_factory=list)
    #: ranges folded out of ``missing`` (the cap): [lo, hi, still missing] or None
    older: list[int] | None = None
    gaps_merged: int = 0
    #: counts and stream offsets of packets whose classification waits for followers
    pending: list[list[int]] = field(default_factory=list)
    rules: Rules = field(default_factory=Rules, repr=False, compare=False)

    # -- the rule ---------------------------------------------------------------------------------
    def update(self, seq: np.ndarray, stream_offset: np.ndarray, final: bool = False
               ) -> list[AccountingEvent]:
        """Account a run of packets in arrival order; returns new anomalies.

        ``final``: the stream ends here (end of contact), nothing is deferred.
        """
        s = np.asarray(seq, dtype=np.int64)
        o = np.asarray(stream_offset, dtype=np.int64)
        if self.pending:
            held = np.asarray(self.pending, dtype=np.int64).reshape(-1, 2)
            s, o = np.concatenate((held[:, 0], s)), np.concatenate((held[:, 1], o))
            self.pending = []
        n = len(s)
        if n == 0:
            return []
        first_events: list[AccountingEvent] = []
        if self.last_ext is None:
            first = self._first_is_outlier(s, final)
            if first is None:  # undecided: wait for the next packets
                self.pending = np.stack((s, o), axis=1).tolist()
                return []
            if first:
                first_events.append(self._outlier(int(s[0]), int(o[0])))
                s, o = s[1:], o[1:]
                n -= 1
            self.first_ext = self.last_ext = self.max_ext = int(s[0]) - 1
        ref0 = self.last_ext % SEQ_MODULO
        d = _wrap(s - np.concatenate(([ref0], s[:-1])))
        isolated, decided = self._isolated(s, d, ref0, final)
        if decided < n:
            self.pending = np.stack((s[decided:], o[decided:]), axis=1).tolist()
            s, o, d, isolated = s[:decided], o[:decided], d[:decided], isolated[:decided]
            n = decided
            if n == 0:
                return []
        step = d.copy()
        for j in np.flatnonzero(isolated).tolist():
            before = int(s[j - 1]) if j else ref0
            step[j + 1] = _wrap(int(s[j + 1]) - before) - int(d[j])
        ext = self.last_ext + np.cumsum(step)
        forward = isolated & (d > 0)
        counted = np.where(forward, np.iinfo(np.int64).min, ext)
        prior_max = np.maximum.accumulate(np.concatenate(([self.max_ext], counted[:-1])))
        odd = (ext > prior_max + 1) | (ext <= prior_max) | forward
        events: list[AccountingEvent] = []
        for i in np.flatnonzero(odd).tolist():
            e, off = int(ext[i]), int(o[i])
            if forward[i]:
                events.append(self._outlier(int(s[i]), off))
            elif e > prior_max[i]:
                lo = int(prior_max[i]) + 1
                self._add_missing(lo, e)
                self.gap_events += 1
                events.append(AccountingEvent("gap", self.apid, self.source, lo % SEQ_MODULO,
                                              e - lo, off))
            elif self._fill(e):
                self.out_of_order += 1
                events.append(AccountingEvent("out_of_order", self.apid, self.source,
                                              e % SEQ_MODULO, 1, off))
            elif isolated[i] and e <= int(self.first_ext):
                events.append(self._outlier(int(s[i]), off))  # behind the first count: no repeat
            else:
                self.duplicates += 1
                events.append(AccountingEvent("duplicate", self.apid, self.source,
                                              e % SEQ_MODULO, 1, off))
        self.packets += n - sum(1 for ev in events if ev.type == OUTLIER)
        self.last_ext = int(ext[-1])
        self.max_ext = max(int(self.max_ext), int(counted.max()))
        return first_events + events

    def _first_is_outlier(self, s: np.ndarray, final: bool) -> bool | None:
        """Is the stream's first packet an isolated outlier (its next packets agree with each
        other and are all far from it)? None while that needs packets not yet received."""
        J, K = self.rules.jump, self.rules.confirm
        fol = s[1:1 + K]
        if len(fol) == 0:
            return False if final else None
        ok = (np.abs(_wrap(fol - fol[0])) <= J) & (np.abs(_wrap(fol - s[0])) > J)
        if not ok.all():
            return False
        if len(fol) < K and not final:
            return None
        return True

    def finish(self) -> list[AccountingEvent]:
        """End of the stream: decide what was held."""
        return self.update(np.empty(0, np.int64), np.empty(0, np.int64), final=True)

    def _isolated(self, s: np.ndarray, d: np.ndarray, ref0: int, final: bool
                  ) -> tuple[np.ndarray, int]:
        """Isolated packets, and how many leading packets can be decided now."""
        n = len(s)
        J, K = self.rules.jump, self.rules.confirm
        isolated = np.zeros(n, dtype=bool)
        for i in np.flatnonzero(np.abs(d) > J).tolist():
            if i and isolated[i - 1]:
                continue  # the follower of an isolated packet: it continues the sequence
            before = int(s[i - 1]) if i else ref0
            fol = s[i + 1:i + 1 + K]
            if len(fol) == 0:
                if final:
                    continue
                return isolated, i
            ok = (np.abs(_wrap(fol - before)) <= J) & (np.abs(_wrap(fol - s[i])) > J)
            if not ok.all():
                continue  # the jump is followed: a real gap (or not isolated)
            if len(fol) < K and not final:
                return isolated, i
            isolated[i] = True
        return isolated, n

    def _outlier(self, seq: int, off: int) -> AccountingEvent:
        self.outliers += 1
        return AccountingEvent(OUTLIER, self.apid, self.source, seq, 1, off)

    def _add_missing(self, lo: int, hi: int) -> None:
        self.missing.append([lo, hi])
        while len(self.missing) > self.rules.max_ranges:
            a, b = self.missing.pop(0)
            if self.older is None:
                self.older = [a, b, b - a]
            else:
                self.older = [min(self.older[0], a), max(self.older[1], b), self.older[2] + b - a]
            self.gaps_merged += 1
            metrics.GAP_RANGES_MERGED.inc()

    def _fill(self, e: int) -> bool:
        """Remove ``e`` from the missing counts; False if it was not missing."""
        i = bisect.bisect_right(self.missing, [e, float("inf")]) - 1
        if i >= 0:
            lo, hi = self.missing[i]
            if lo <= e < hi:
                self.missing[i:i + 1] = [r for r in ([lo, e], [e + 1, hi]) if r[0] < r[1]]
                return True
        if self.older is not None and self.older[0] <= e < self.older[1] and self.older[2] > 0:
            self.older[2] -= 1  # coarse: counted as a fill (it may repeat a received count)
            return True
        return False

    # -- views ------------------------------------------------------------------------------------
    @property
    def gaps(self) -> list[list[int]]:
        """Final missing ranges as [first_missing_seq (wrapped), count] (coarse part excluded)."""
        return [[lo % SEQ_MODULO, hi - lo] for lo, hi in self.missing]

    @property
    def missing_count(self) -> int:
        return sum(hi - lo for lo, hi in self.missing) + (self.older[2] if self.older else 0)

    def summary(self) -> dict[str, Any]:
        first = None if self.first_ext is None else (self.first_ext + 1) % SEQ_MODULO
        last = None if self.max_ext is None else self.max_ext % SEQ_MODULO
        return {"apid": self.apid, "source": self.source, "packets": self.packets,
                "first_seq": first, "last_seq": last, "gaps": self.gaps,
                "missing": self.missing_count, "duplicates": self.duplicates,
                "out_of_order": self.out_of_order, "outliers": self.outliers,
                "gaps_merged": self.gaps_merged, "pending": len(self.pending)}

    def to_dict(self) -> dict[str, Any]:
        """A snapshot: its lists are copies (bounded), never views of the live ranges."""
        return {k: copy_module.deepcopy(v) if isinstance(v, list) else v
                for k, v in self.__dict__.items() if k != "rules"}

    @classmethod
    def from_dict(cls, d: dict[str, Any], rules: Rules | None = None) -> "StreamAccount":
        fields_ = {k: copy_module.deepcopy(v) if isinstance(v, list) else v
                   for k, v in d.items() if k in cls.__dataclass_fields__ and k != "rules"}
        return cls(**fields_, rules=rules or Rules())


def _settled(acct: StreamAccount) -> StreamAccount:
    """``acct`` with its held packets decided (a copy; the original keeps waiting)."""
    if not acct.pending:
        return acct
    copy = StreamAccount.from_dict(acct.to_dict(), acct.rules)
    copy.finish()
    return copy


@dataclass
class ContactAccount:
    """Accounting of one contact: every (APID, source) stream plus decoder skips."""

    contact: str
    streams: dict[str, StreamAccount] = field(default_factory=dict)
    bytes: int = 0
    skipped_bytes: int = 0
    resyncs: int = 0
    rejected: int = 0
    ended: bool = False
    rules: Rules = field(default_factory=Rules, repr=False, compare=False)

    def update(self, apid: np.ndarray, source: np.ndarray, seq: np.ndarray,
               stream_offset: np.ndarray) -> list[AccountingEvent]:
        """Account a decoded run of packets (arrival order) of any streams."""
        if len(apid) == 0:
            return []
        key = apid.astype(np.int64) * 2 + source
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        events: list[AccountingEvent] = []
        for idx in np.split(order, bounds):
            events.extend(self._stream(int(apid[idx[0]]), int(source[idx[0]])).update(
                seq[idx], stream_offset[idx]))
        events.sort(key=lambda e: e.stream_offset)
        return events

    def finish(self) -> list[AccountingEvent]:
        """End of contact: decide every stream's held packets."""
        events = [e for s in self.streams.values() for e in s.finish()]
        events.sort(key=lambda e: e.stream_offset)
        return events

    def _stream(self, apid: int, source: int) -> StreamAccount:
        name = f"{apid}/{source}"
        acct = self.streams.get(name)
        if acct is None:
            acct = self.streams[name] = StreamAccount(apid, source, rules=self.rules)
        return acct

    def report(self) -> dict[str, Any]:
        """Totals and per-stream summaries; packets still held are judged as if the contact ended."""
        streams = {k: _settled(v).summary() for k, v in sorted(
            self.streams.items(), key=lambda kv: (kv[1].apid, kv[1].source))}
        return {"contact": self.contact, "bytes": self.bytes, "skipped_bytes": self.skipped_bytes,
                "resyncs": self.resyncs, "rejected": self.rejected, "ended": self.ended,
                **{k: sum(s[k] for s in streams.values())
                   for k in ("packets", "missing", "duplicates", "out_of_order", "outliers",
                             "gaps_merged")},
                "streams": streams}

    def to_dict(self) -> dict[str, Any]:
        return {"contact": self.contact, "bytes": self.bytes, "skipped_bytes": self.skipped_bytes,
                "resyncs": self.resyncs, "rejected": self.rejected, "ended": self.ended,
                "streams": {k: v.to_dict() for k, v in self.streams.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], rules: Rules | None = None) -> "ContactAccount":
        rules = rules or Rules()
        return cls(contact=d["contact"], bytes=d["bytes"], skipped_bytes=d["skipped_bytes"],
                   resyncs=d["resyncs"], rejected=d.get("rejected", 0), ended=d["ended"],
                   streams={k: StreamAccount.from_dict(v, rules) for k, v in d["streams"].items()},
                   rules=rules)
