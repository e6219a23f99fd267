"""Yamcs-style packet accounting per (APID, source) within a contact.

The 14-bit sequence count is unwrapped into an extended counter: each packet's
signed distance to the previous packet of the same stream, in [-8192, 8191],
is accumulated (``numpy.cumsum``), so a wrap 16383 -> 0 is a step of +1.
Against the running maximum of that counter:

* a packet above the maximum + 1 opens a gap (the skipped counts are *missing*;
  an ``ops.alerts`` event is raised at once);
* a packet at or below the maximum either fills a missing count
  (*out of order*) or repeats one already received (*duplicate*).

Gaps reported at the end are the counts never received. The common case (every
packet one above the last) is fully vectorized; only anomalies loop.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.packets import SEQ_MODULO

HALF = SEQ_MODULO // 2


@dataclass
class AccountingEvent:
    """An anomaly worth an operator's attention (becomes an ops.alerts message)."""

    type: str  # gap | duplicate | out_of_order
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
    first_ext: int | None = None
    last_ext: int | None = None
    max_ext: int | None = None
    #: sorted, disjoint [lo, hi) ranges of extended counts never received so far
    missing: list[list[int]] = field(default_factory=list)

    def update(self, seq: np.ndarray, stream_offset: np.ndarray) -> list[AccountingEvent]:
        """Account a run of packets in arrival order; returns new anomalies."""
        n = len(seq)
        if n == 0:
            return []
        s = seq.astype(np.int64)
        if self.last_ext is None:
            self.first_ext = self.last_ext = self.max_ext = int(s[0]) - 1
        prev = np.empty(n, dtype=np.int64)
        prev[0] = self.last_ext % SEQ_MODULO
        prev[1:] = s[:-1]
        step = (s - prev + HALF) % SEQ_MODULO - HALF
        ext = self.last_ext + np.cumsum(step)
        prior_max = np.maximum.accumulate(np.concatenate(([self.max_ext], ext[:-1])))
        jumps = np.flatnonzero(ext > prior_max + 1)
        behind = np.flatnonzero(ext <= prior_max)
        events: list[AccountingEvent] = []
        for i in sorted(np.concatenate((jumps, behind)).tolist()):
            e = int(ext[i])
            if e > prior_max[i]:
                lo = int(prior_max[i]) + 1
                self.missing.append([lo, e])
                self.gap_events += 1
                events.append(AccountingEvent("gap", self.apid, self.source, lo % SEQ_MODULO,
                                              e - lo, int(stream_offset[i])))
            elif self._fill(e):
                self.out_of_order += 1
                events.append(AccountingEvent("out_of_order", self.apid, self.source,
                                              e % SEQ_MODULO, 1, int(stream_offset[i])))
            else:
                self.duplicates += 1
                events.append(AccountingEvent("duplicate", self.apid, self.source,
                                              e % SEQ_MODULO, 1, int(stream_offset[i])))
        self.packets += n
        self.last_ext = int(ext[-1])
        self.max_ext = max(int(self.max_ext), int(ext.max()))
        return events

    def _fill(self, e: int) -> bool:
        """Remove ``e`` from the missing ranges; False if it was not missing."""
        i = bisect.bisect_right(self.missing, [e, float("inf")]) - 1
        if i < 0:
            return False
        lo, hi = self.missing[i]
        if not lo <= e < hi:
            return False
        pieces = [r for r in ([lo, e], [e + 1, hi]) if r[0] < r[1]]
        self.missing[i:i + 1] = pieces
        return True

    @property
    def gaps(self) -> list[list[int]]:
        """Final missing ranges as [first_missing_seq (wrapped), count]."""
        return [[lo % SEQ_MODULO, hi - lo] for lo, hi in self.missing]

    @property
    def missing_count(self) -> int:
        return sum(hi - lo for lo, hi in self.missing)

    def summary(self) -> dict[str, Any]:
        first = None if self.first_ext is None else (self.first_ext + 1) % SEQ_MODULO
        last = None if self.max_ext is None else self.max_ext % SEQ_MODULO
        return {"apid": self.apid, "source": self.source, "packets": self.packets,
                "first_seq": first, "last_seq": last, "gaps": self.gaps,
                "missing": self.missing_count, "duplicates": self.duplicates,
                "out_of_order": self.out_of_order}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamAccount":
        return cls(**d)


@dataclass
class ContactAccount:
    """Accounting of one contact: every (APID, source) stream plus decoder skips."""

    contact: str
    streams: dict[str, StreamAccount] = field(default_factory=dict)
    bytes: int = 0
    skipped_bytes: int = 0
    resyncs: int = 0
    ended: bool = False

    def update(self, apid: np.ndarray, source: np.ndarray, seq: np.ndarray,
               stream_offset: np.ndarray) -> list[AccountingEvent]:
        """Account a decoded run of packets (arrival order) of any streams."""
        if len(apid) == 0:
            return []
        key = apid.astype(np.int64) * 2 + source
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        bounds = np.flatnonzero(np.diff(sorted_key)) + 1
        events: list[AccountingEvent] = []
        for idx in np.split(order, bounds):
            a, s = int(apid[idx[0]]), int(source[idx[0]])
            name = f"{a}/{s}"
            acct = self.streams.get(name)
            if acct is None:
                acct = self.streams[name] = StreamAccount(a, s)
            events.extend(acct.update(seq[idx], stream_offset[idx]))
        events.sort(key=lambda e: e.stream_offset)
        return events

    def report(self) -> dict[str, Any]:
        streams = {k: v.summary() for k, v in sorted(self.streams.items(),
                                                       key=lambda kv: (kv[1].apid, kv[1].source))}
        return {"contact": self.contact, "bytes": self.bytes, "skipped_bytes": self.skipped_bytes,
                "resyncs": self.resyncs, "ended": self.ended,
                "packets": sum(s.packets for s in self.streams.values()),
                "missing": sum(s.missing_count for s in self.streams.values()),
                "duplicates": sum(s.duplicates for s in self.streams.values()),
                "out_of_order": sum(s.out_of_order for s in self.streams.values()),
                "streams": streams}

    def to_dict(self) -> dict[str, Any]:
        return {"contact": self.contact, "bytes": self.bytes, "skipped_bytes": self.skipped_bytes,
                "resyncs": self.resyncs, "ended": self.ended,
                "streams": {k: v.to_dict() for k, v in self.streams.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContactAccount":
        return cls(contact=d["contact"], bytes=d["bytes"], skipped_bytes=d["skipped_bytes"],
                   resyncs=d["resyncs"], ended=d["ended"],
                   streams={k: StreamAccount.from_dict(v) for k, v in d["streams"].items()})
