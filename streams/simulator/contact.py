"""Contact assembly: what the downlink carries, packet run by packet run.

A contact's stream is a list of *items*, each a run of packets rendered
together: exposure start / end packets, a slice of a chunk of science data
packets (one or more whole groups of one exposure), a burst of engineering
packets, or raw re-sent packets. Items are planned before any pixel is made,
so every packet's position, size and sequence count is known up front; that
is what lets faults be drawn over the whole contact while the bytes are
still streamed out.

The recorded dump replays the observatory recorder in time order: the
exposures of one activity (detectors read out in parallel) interleave per
chunk of groups, and recorded engineering (source 1) is merged in by time.
Real-time engineering (source 0) is inserted by byte position: a burst at
every second of contact time at the Ka rate (each APID every ``period_s``),
splitting science runs between packets where needed.

Sequence counts are kept per (APID, source) as a *counter index* (0, 1, 2...
in dump order; for real time, whole periods since the first contact's start)
and become the 14-bit sequence count as ``(base + index) % 16384``; ``base``
is 0 except for a forced wrap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from streams.dictionary import EngDictionary
from streams.packets import (
    EXPOSURE_END_LEN,
    EXPOSURE_START_LEN,
    MAX_PIXELS_PER_PACKET,
    SCIENCE_DATA_HEADER_LEN,
    SEQ_MODULO,
    Kind,
    Source,
)
from streams.simulator.plan import ExposurePlan, Plan

#: recorded engineering is sampled every RECORDED_PERIOD_FACTOR x the APID period
RECORDED_PERIOD_FACTOR = 4
#: seconds between the start of one contact and the next
CONTACT_SPACING_S = 12 * 3600.0

Bases = dict[tuple[int, int], int]


@lru_cache(maxsize=256)
def chunk_sizes(npix: int, ngroups: int) -> np.ndarray:
    """Packet sizes of ``ngroups`` groups of an ``npix`` frame, canonical order (read-only)."""
    nfull, rem = divmod(npix, MAX_PIXELS_PER_PACKET)
    one = [SCIENCE_DATA_HEADER_LEN + 2 * MAX_PIXELS_PER_PACKET] * nfull
    if rem:
        one.append(SCIENCE_DATA_HEADER_LEN + 2 * rem)
    sizes = np.tile(np.array(one, dtype=np.int64), ngroups)
    sizes.setflags(write=False)
    return sizes


def seq_of(bases: Bases, apid: int, source: int, cidx: int) -> int:
    return (bases.get((apid, source), 0) + cidx) % SEQ_MODULO


@dataclass
class SciItem:
    """Packets of one exposure: its start (kind 2), end (kind 4) or data packets p0..p1 of a chunk."""

    exp: ExposurePlan
    kind: int
    chunk: int  # index into exp.chunks() for data; -1 otherwise
    p0: int
    p1: int
    chunk_cidx0: int  # counter index of the chunk's packet 0 (of the packet itself for start/end)

    @property
    def n(self) -> int:
        return self.p1 - self.p0

    @property
    def apid(self) -> int:
        return self.exp.tag.apid

    @property
    def source(self) -> int:
        return int(Source.RECORDED)

    def sizes(self) -> np.ndarray:
        if self.kind == Kind.EXPOSURE_START:
            return np.array([EXPOSURE_START_LEN], dtype=np.int64)
        if self.kind == Kind.EXPOSURE_END:
            return np.array([EXPOSURE_END_LEN], dtype=np.int64)
        i, g0, g1 = self.exp.chunks()[self.chunk]
        return chunk_sizes(self.exp.npix, g1 - g0)[self.p0:self.p1]

    @property
    def nbytes(self) -> int:
        return int(self.sizes().sum())

    def cidx(self) -> np.ndarray:
        return np.arange(self.chunk_cidx0 + self.p0, self.chunk_cidx0 + self.p1, dtype=np.int64)

    def split(self, k: int) -> tuple["SciItem", "SciItem"]:
        return replace(self, p1=self.p0 + k), replace(self, p0=self.p0 + k)

    def describe(self, local: int, bases: Bases) -> dict:
        """Identity of packet ``local`` of this item, as the truth file lists packets."""
        e = self.exp
        q = self.p0 + local
        d = {"apid": e.tag.apid, "source": self.source,
             "seq": seq_of(bases, e.tag.apid, self.source, self.chunk_cidx0 + q),
             "exposure_id": e.exposure_id, "kind": self.kind,
             "integration": None, "group": None, "pixel_offset": None}
        if self.kind == Kind.SCIENCE_DATA:
            i, g0, _ = e.chunks()[self.chunk]
            gi, j = divmod(q, e.packets_per_group)
            d.update(integration=i, group=g0 + gi, pixel_offset=j * MAX_PIXELS_PER_PACKET)
        return d


@dataclass
class EngItem:
    """Engineering packets (one burst, or recorded samples), each a row of a parameter-block series."""

    source: int
    apids: np.ndarray  # uint16 per packet
    cidx_: np.ndarray  # counter index per packet
    times: np.ndarray  # TAI seconds per packet
    series: np.ndarray  # index into the contact's list of block series, per packet
    rows: np.ndarray  # row of that series, per packet
    lengths: np.ndarray  # total packet length per packet

    @property
    def n(self) -> int:
        return len(self.apids)

    def sizes(self) -> np.ndarray:
        return self.lengths

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum())

    def cidx(self) -> np.ndarray:
        return self.cidx_

    def split(self, k: int) -> tuple["EngItem", "EngItem"]:
        cut = lambda a, s: a[s]  # noqa: E731
        head = EngItem(self.source, *(cut(a, slice(None, k)) for a in
                                      (self.apids, self.cidx_, self.times, self.series, self.rows, self.lengths)))
        tail = EngItem(self.source, *(cut(a, slice(k, None)) for a in
                                      (self.apids, self.cidx_, self.times, self.series, self.rows, self.lengths)))
        return head, tail

    def describe(self, local: int, bases: Bases) -> dict:
        apid = int(self.apids[local])
        return {"apid": apid, "source": self.source,
                "seq": seq_of(bases, apid, self.source, int(self.cidx_[local])),
                "exposure_id": None, "kind": int(Kind.ENG),
                "integration": None, "group": None, "pixel_offset": None}


@dataclass
class RawItem:
    """Packets re-sent byte for byte (a re-dump), each with its truth description."""

    packets: list[bytes]
    descs: list[dict]
    origins: list[str]  # the fault that lost each packet first (drop | corrupt | truncate)

    @property
    def n(self) -> int:
        return len(self.packets)

    def sizes(self) -> np.ndarray:
        return np.array([len(p) for p in self.packets], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.packets)

    def split(self, k: int) -> tuple["RawItem", "RawItem"]:
        return (RawItem(self.packets[:k], self.descs[:k], self.origins[:k]),
                RawItem(self.packets[k:], self.descs[k:], self.origins[k:]))

    def describe(self, local: int, bases: Bases) -> dict:
        return dict(self.descs[local])


Item = SciItem | EngItem | RawItem


@dataclass
class EngSeries:
    """Parameter blocks of one engineering APID and source, filled once all sample times are known."""

    apid: int
    source: int
    times: list[float] = field(default_factory=list)
    blocks: np.ndarray | None = None


@dataclass
class ContactSchedule:
    """Everything one contact's stream will hold, in order."""

    contact: str
    start_tai: float
    items: list[Item]
    series: list[EngSeries]
    seconds: int  # real-time bursts (= contact duration in whole seconds)

    @property
    def packets(self) -> int:
        return sum(it.n for it in self.items)

    @property
    def nbytes(self) -> int:
        return sum(it.nbytes for it in self.items)


def build_dump(plan: Plan, dictionary: EngDictionary) -> tuple[list[Item], list[EngSeries]]:
    """The recorder's playback: science in plan order, recorded engineering merged in by time."""
    lengths = dictionary.packet_lengths()
    series: list[EngSeries] = []
    sid: dict[int, int] = {}
    eng_t, eng_apid = [], []
    t_first, t_last = plan.start_tai - 60.0, plan.end_tai
    for pk in dictionary.packets:
        step = pk.period_s * RECORDED_PERIOD_FACTOR
        times = np.arange(np.ceil(t_first / step) * step, t_last, step)
        sid[pk.apid] = len(series)
        series.append(EngSeries(pk.apid, int(Source.RECORDED), times.tolist()))
        eng_t.append(times)
        eng_apid.append(np.full(len(times), pk.apid, dtype=np.uint16))
    all_t = np.concatenate(eng_t)
    all_apid = np.concatenate(eng_apid)
    row_in_series = np.concatenate([np.arange(len(t)) for t in eng_t])
    order = np.lexsort((all_apid, all_t))
    all_t, all_apid, row_in_series = all_t[order], all_apid[order], row_in_series[order]
    counters: dict[tuple[int, int], int] = {}
    pos = 0
    items: list[Item] = []

    def eng_until(t: float) -> None:
        nonlocal pos
        end = int(np.searchsorted(all_t, t, side="right"))
        if end <= pos:
            return
        apids = all_apid[pos:end]
        cidx = np.empty(end - pos, dtype=np.int64)
        for k, a in enumerate(apids.tolist()):
            key = (a, int(Source.RECORDED))
            cidx[k] = counters.get(key, 0)
            counters[key] = cidx[k] + 1
        items.append(EngItem(int(Source.RECORDED), apids, cidx, all_t[pos:end],
                             np.array([sid[a] for a in apids.tolist()], dtype=np.int64),
                             row_in_series[pos:end],
                             np.array([lengths[a] for a in apids.tolist()], dtype=np.int64)))
        pos = end

    def take(apid: int, n: int) -> int:
        key = (apid, int(Source.RECORDED))
        c = counters.get(key, 0)
        counters[key] = c + n
        return c

    for act in plan.activities:
        eng_until(act.start_tai)
        for e in act.exposures:
            items.append(SciItem(e, Kind.EXPOSURE_START, -1, 0, 1, take(e.tag.apid, 1)))
        first = act.exposures[0]
        for c, (i, g0, g1) in enumerate(first.chunks()):
            eng_until(first.group_time(i, g1 - 1))
            for e in act.exposures:
                n = (g1 - g0) * e.packets_per_group
                items.append(SciItem(e, Kind.SCIENCE_DATA, c, 0, n, take(e.tag.apid, n)))
        for e in act.exposures:
            items.append(SciItem(e, Kind.EXPOSURE_END, -1, 0, 1, take(e.tag.apid, 1)))
    eng_until(t_last + 1.0)
    return items, series


def cut_dump(items: list[Item], plan: Plan) -> tuple[list[Item], list[Item]]:
    """Split the dump inside the data run holding the middle of the last activity's data packets.

    The cut falls in the middle of that run (``split`` fault), so at least one
    exposure has data packets in both contacts; every exposure of the last
    activity has its end packet in the second one.
    """
    last = plan.activities[-1].index
    data = [k for k, it in enumerate(items) if isinstance(it, SciItem)
            and it.kind == Kind.SCIENCE_DATA and it.exp.activity == last]
    middle = sum(items[k].n for k in data) // 2
    for k in data:
        it = items[k]
        if middle < it.n:
            if it.n < 2:
                return items[:k], items[k:]
            head, tail = it.split(it.n // 2)  # type: ignore[union-attr]
            return items[:k] + [head], [tail] + items[k + 1:]
        middle -= it.n
    raise AssertionError("unreachable: the last activity has data packets")


def interleave_realtime(dump: list[Item], contact: str, start_tai: float, first_contact_tai: float,
                        dictionary: EngDictionary, rate: float) -> ContactSchedule:
    """Insert a real-time engineering burst at every second of contact time, by byte position."""
    lengths = dictionary.packet_lengths()
    packets = dictionary.packets
    series = [EngSeries(pk.apid, int(Source.REALTIME)) for pk in packets]
    out: list[Item] = []
    total = 0
    second = 0

    def burst(s: int) -> EngItem:
        t = start_tai + s
        chosen = [(k, pk) for k, pk in enumerate(packets) if s % max(1, round(pk.period_s)) == 0]
        apids = np.array([pk.apid for _, pk in chosen], dtype=np.uint16)
        cidx = np.array([round((t - first_contact_tai) / max(1, round(pk.period_s))) for _, pk in chosen],
                        dtype=np.int64)
        rows = []
        for k, _ in chosen:
            rows.append(len(series[k].times))
            series[k].times.append(t)
        return EngItem(int(Source.REALTIME), apids, cidx, np.full(len(chosen), t),
                       np.array([k for k, _ in chosen], dtype=np.int64), np.array(rows, dtype=np.int64),
                       np.array([lengths[pk.apid] for _, pk in chosen], dtype=np.int64))

    for item in dump:
        while item.n:
            boundary = second * rate
            if total >= boundary:
                b = burst(second)
                out.append(b)
                total += b.nbytes
                second += 1
                continue
            sizes = item.sizes()
            fit = int(np.searchsorted(np.cumsum(sizes), boundary - total, side="right"))
            fit = max(1, fit)
            if fit >= item.n:
                out.append(item)
                total += item.nbytes
                break
            head, item = item.split(fit)  # type: ignore[assignment]
            out.append(head)
            total += head.nbytes
    if second == 0:  # an empty dump still gets one burst
        b = burst(0)
        out.append(b)
        second = 1
    return ContactSchedule(contact, start_tai, out, series, second)
