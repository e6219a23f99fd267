"""Rendering items to packet bytes and writing them out with their faults.

``Renderer`` makes the ideal bytes of an item (what the spacecraft sent)
with the ICD encoders of ``streams.packets``: ``encode_science_data_batch``
for whole chunks of groups, the scalar encoders for the rest. It feeds each
exposure's L0 hash with its packets in canonical order as they are made.

``ContactEmitter`` writes one contact: items without faults go out as one
buffer; items with faults go packet by packet, and every fault, every packet
a decoder will receive (for the accounting) and every exposure packet lost
or delivered is reported to the ``TruthBuilder`` with its stream offset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from streams.packets import (
    MAX_PIXELS_PER_PACKET,
    SEQ_MODULO,
    ExposureEnd,
    Kind,
    Source,
    encode_eng,
    encode_exposure_end,
    encode_exposure_start,
    encode_science_data_batch,
)
from streams.simulator.contact import (
    Bases,
    EngItem,
    EngSeries,
    Item,
    RawItem,
    SciItem,
    chunk_sizes,
    seq_of,
)
from streams.simulator import hostile
from streams.simulator.faults import ItemFaults
from streams.simulator.plan import CHUNK_PIXELS, ExposurePlan, Plan
from streams.simulator.ramps import DetectorPatterns, NoisePool, RampSynth, Workspace
from streams.simulator.truth import TruthBuilder
from streams.simulator.writer import Hasher, StreamSink


#: science is always recorded playback
RECORDED = int(Source.RECORDED)


def time_code(t: float | np.ndarray) -> tuple[Any, Any]:
    """TAI seconds -> (coarse seconds, fine 2^-16 s units)."""
    coarse = np.floor(t)
    fine = np.floor((np.asarray(t) - coarse) * 65536.0)
    if np.ndim(t) == 0:
        return int(coarse), int(fine)
    return coarse.astype(np.uint32), fine.astype(np.uint16)


class Renderer:
    """Ideal packet bytes of items, and the L0 hashes of exposures."""

    def __init__(self, plan: Plan, seed: int, bases: Bases, hasher: Hasher) -> None:
        largest = max(e.chunk_groups * e.npix for e in plan.exposures)
        size = int(min(2 * CHUNK_PIXELS, max(1 << 20, 2 * largest)))
        self.pool = NoisePool(seed, size)
        self.workspace = Workspace()
        self.patterns = DetectorPatterns(seed, self.pool)
        self.seed = seed
        self.bases = bases
        self.hasher = hasher
        self.l0 = {e.index: hashlib.sha256() for e in plan.exposures}
        self._synths: dict[int, RampSynth] = {}
        self._chunks: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def render(self, item: Item, series: list[EngSeries]) -> tuple[Any, np.ndarray]:
        """(contiguous bytes, packet offsets with the end appended) of an item."""
        if isinstance(item, SciItem):
            return self._science(item)
        if isinstance(item, EngItem):
            return self._eng(item, series)
        return b"".join(item.packets), np.concatenate(([0], np.cumsum(item.sizes())))

    def _science(self, item: SciItem) -> tuple[Any, np.ndarray]:
        e = item.exp
        seq = seq_of(self.bases, e.tag.apid, item.source, item.chunk_cidx0)
        if item.kind == Kind.EXPOSURE_START:
            pkt = encode_exposure_start(e.tag, seq, item.source, *time_code(e.start_tai), e.header)
            self.hasher.update(self.l0[e.index], pkt)
            return pkt, np.array([0, len(pkt)], dtype=np.int64)
        if item.kind == Kind.EXPOSURE_END:
            pkt = encode_exposure_end(e.tag, seq, item.source, *time_code(e.start_tai + e.duration),
                                      ExposureEnd(e.data_packets, 0))
            self.hasher.update(self.l0[e.index], pkt)
            synth = self._synths.pop(e.index, None)
            if synth is not None:
                synth.release()
            return pkt, np.array([0, len(pkt)], dtype=np.int64)
        cached = self._chunks.get(e.index)
        if cached is None or cached[0] != item.chunk:
            assert item.p0 == 0, "chunks are rendered in order"
            buf, offsets = self._render_chunk(e, item.chunk, seq)
            self.hasher.update(self.l0[e.index], buf)
            cached = self._chunks[e.index] = (item.chunk, buf, offsets)
        _, buf, offsets = cached
        if item.p1 == len(offsets) - 1:
            del self._chunks[e.index]
        a, b = int(offsets[item.p0]), int(offsets[item.p1])
        return buf[a:b], offsets[item.p0:item.p1 + 1] - a

    def _render_chunk(self, e: ExposurePlan, chunk: int, seq0: int) -> tuple[np.ndarray, np.ndarray]:
        synth = self._synths.get(e.index)
        if synth is None:
            synth = self._synths[e.index] = RampSynth(e, self.pool, self.workspace, self.patterns, self.seed)
        i, g0, g1 = e.chunks()[chunk]
        ngroups = g1 - g0
        frames = synth.render(i, g0, g1)
        npix, ppg = e.npix, e.packets_per_group
        nfull, rem = divmod(npix, MAX_PIXELS_PER_PACKET)
        groups = np.arange(g0, g1)
        coarse, fine = time_code(np.array([e.group_time(i, g) for g in groups.tolist()]))
        q = np.arange(ngroups * ppg).reshape(ngroups, ppg)
        seq = (seq0 + q) % SEQ_MODULO
        parts = []
        if nfull:
            sl = (slice(None), slice(0, nfull))
            full = encode_science_data_batch(
                e.tag, seq[sl].reshape(-1), RECORDED,
                np.repeat(coarse, nfull), np.repeat(fine, nfull),
                np.full(ngroups * nfull, i), np.repeat(groups, nfull),
                np.tile(np.arange(nfull) * MAX_PIXELS_PER_PACKET, ngroups),
                frames[:, :nfull * MAX_PIXELS_PER_PACKET].reshape(ngroups * nfull, MAX_PIXELS_PER_PACKET))
            parts.append(full.reshape(ngroups, -1))
        if rem:
            last = encode_science_data_batch(
                e.tag, seq[:, -1], RECORDED, coarse, fine, np.full(ngroups, i), groups,
                np.full(ngroups, nfull * MAX_PIXELS_PER_PACKET), frames[:, nfull * MAX_PIXELS_PER_PACKET:])
            parts.append(last)
        if len(parts) == 1:
            buf = parts[0].reshape(-1)
        else:
            out = np.empty((ngroups, parts[0].shape[1] + parts[1].shape[1]), dtype=np.uint8)
            out[:, :parts[0].shape[1]] = parts[0]
            out[:, parts[0].shape[1]:] = parts[1]
            buf = out.reshape(-1)
        self.workspace.give(frames.reshape(-1))  # encoded copies hold the pixels now
        offsets = np.concatenate(([0], np.cumsum(chunk_sizes(npix, ngroups))))
        assert offsets[-1] == buf.size
        return buf, offsets

    def _eng(self, item: EngItem, series: list[EngSeries]) -> tuple[bytes, np.ndarray]:
        coarse, fine = time_code(item.times)
        pkts = []
        for k in range(item.n):
            apid = int(item.apids[k])
            blocks = series[int(item.series[k])].blocks
            assert blocks is not None
            pkts.append(encode_eng(apid, seq_of(self.bases, apid, item.source, int(item.cidx_[k])),
                                   item.source, int(coarse[k]), int(fine[k]),
                                   blocks[int(item.rows[k])].tobytes()))
        return b"".join(pkts), np.concatenate(([0], np.cumsum(item.lengths)))

    def l0_digests(self) -> dict[int, str]:
        return {k: h.hexdigest() for k, h in self.l0.items()}


@dataclass
class Redumped:
    """Recorded packets a contact lost, kept for a re-dump in the next contact."""

    packets: list[bytes] = field(default_factory=list)
    descs: list[dict] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)


@dataclass
class ContactEmitter:
    """Writes one contact's items to a sink, applying faults and telling the truth."""

    contact: str
    sink: StreamSink
    renderer: Renderer
    truth: TruthBuilder
    bases: Bases
    faults: dict[int, ItemFaults] = field(default_factory=dict)
    redump: Redumped | None = None
    #: (apid, source, counter index) of the packet where a forced wrap reaches seq 0
    wrap_at: tuple[int, int, int] | None = None
    wrap_start: int = 0
    #: exposure index -> packets it had in the previous contact (for ``split`` records)
    split: dict[int, int] = field(default_factory=dict)
    split_totals: dict[int, int] = field(default_factory=dict)
    progress: Callable[[int], None] | None = None
    offset: int = 0
    _wrap_done: bool = False

    def emit(self, k: int, item: Item, series: list[EngSeries]) -> None:
        buf, offsets = self.renderer.render(item, series)
        f = self.faults.get(k)
        if f is None:
            self._plain(item, buf, offsets)
        else:
            self._faulted(item, buf, offsets, f)
        if self.progress is not None:
            self.progress(self.offset)

    # -- helpers --------------------------------------------------------------------------
    def _ids(self, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """apid, source, seq per packet of an item."""
        if isinstance(item, SciItem):
            n = item.n
            base = self.bases.get((item.apid, item.source), 0)
            return (np.full(n, item.apid, dtype=np.uint16), np.full(n, item.source, dtype=np.uint8),
                    ((base + item.cidx()) % SEQ_MODULO).astype(np.uint16))
        if isinstance(item, EngItem):
            base = np.array([self.bases.get((int(a), item.source), 0) for a in item.apids.tolist()],
                            dtype=np.int64)
            return (item.apids, np.full(item.n, item.source, dtype=np.uint8),
                    ((base + item.cidx_) % SEQ_MODULO).astype(np.uint16))
        descs = item.descs
        return (np.array([d["apid"] for d in descs], dtype=np.uint16),
                np.array([d["source"] for d in descs], dtype=np.uint8),
                np.array([d["seq"] for d in descs], dtype=np.uint16))

    def _wrap_local(self, item: Item) -> int | None:
        """Index in this item of the packet where the forced wrap reaches seq 0, if here."""
        if self.wrap_at is None or self._wrap_done or not isinstance(item, SciItem):
            return None
        apid, source, cidx = self.wrap_at
        if item.apid != apid or item.source != source:
            return None
        local = cidx - (item.chunk_cidx0 + item.p0)
        return local if 0 <= local < item.n else None

    def _record_wrap(self, item: Item, local: int, offset: int | None, length: int) -> None:
        self._wrap_done = True
        self.truth.fault("wrap", self.contact, offset, length, item.describe(local, self.bases),
                         start_seq=self.wrap_start)

    def _note_split(self, item: Item, at: int) -> None:
        if isinstance(item, SciItem) and item.exp.index in self.split:
            first_part = self.split.pop(item.exp.index)
            total = self.split_totals[item.exp.index]
            self.truth.fault("split", self.contact, at, None, item.describe(0, self.bases),
                             packets_previous_contact=first_part, packets_this_contact=total - first_part)

    # -- fast path ------------------------------------------------------------------------
    def _plain(self, item: Item, buf: Any, offsets: np.ndarray) -> None:
        start = self.offset
        self.sink.write(buf)
        self.offset += int(offsets[-1])
        self.truth.received(self.contact, *self._ids(item))
        local = self._wrap_local(item)
        if local is not None:
            self._record_wrap(item, local, start + int(offsets[local]),
                              int(offsets[local + 1] - offsets[local]))
        self._note_split(item, start)
        if isinstance(item, SciItem):
            self.truth.deliver(self.contact, item.exp.exposure_id)
        elif isinstance(item, RawItem):
            for j, (d, origin) in enumerate(zip(item.descs, item.origins)):
                self.truth.fault("redump", self.contact, start + int(offsets[j]),
                                 int(offsets[j + 1] - offsets[j]), d, original_fault=origin)
                if d.get("exposure_id"):
                    self.truth.deliver(self.contact, d["exposure_id"])
                    self.truth.recover(d)

    # -- faulted path ---------------------------------------------------------------------
    def _faulted(self, item: Item, buf: Any, offsets: np.ndarray, f: ItemFaults) -> None:
        """Write an item with faults: untouched runs go out as slices, faulted packets one by one."""
        view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)
        apid, source, seq = self._ids(item)
        pos = self.offset
        got: list[np.ndarray] = []  # packet indices received intact, in arrival order
        placed: dict[int, int] = {}  # stream offset of each faulted packet that arrived
        runs: list[tuple[int, int, int]] = []  # (first, end, stream offset) of untouched runs
        last = item.n - 1
        special = (f.drop | f.dup | set(f.corrupt) | set(f.reorder) | set(f.garbage) | set(f.hostile)
                   | ({last} if f.truncate is not None else set()))
        hostile_seqs: list[tuple[int, int, int]] = []
        self._note_split(item, self.offset)
        order = f.output_order(item.n)
        i = 0
        while i < len(order):
            j = order[i]
            if j not in special:
                k = i
                while k + 1 < len(order) and order[k + 1] == order[k] + 1 and order[k + 1] not in special:
                    k += 1
                a, b = j, order[k] + 1
                self.sink.write(view[int(offsets[a]):int(offsets[b])])
                runs.append((a, b, pos))
                got.append(np.arange(a, b))
                pos += int(offsets[b] - offsets[a])
                i = k + 1
                continue
            i += 1
            pkt = view[int(offsets[j]):int(offsets[j + 1])]
            desc = item.describe(j, self.bases)
            if j in f.garbage:
                g = f.garbage[j]
                self.truth.fault("garbage", self.contact, pos, len(g))
                self.sink.write(g)
                pos += len(g)
            if j in f.hostile:
                pos = hostile.emit(self, f.hostile[j], item, pkt, desc, pos, hostile_seqs)
            if j in f.drop:
                self.truth.fault("drop", self.contact, pos, len(pkt), desc)
                self._lost(pkt, desc, "drop")
                continue
            if j in f.corrupt:
                self.truth.fault("corrupt", self.contact, pos, len(pkt), desc)
                self.sink.write(f.corrupt[j] + bytes(pkt[len(f.corrupt[j]):]))
                pos += len(pkt)
                self._lost(pkt, desc, "corrupt")
                continue
            if j == last and f.truncate is not None:
                self.truth.fault("truncate", self.contact, pos, f.truncate, desc, packet_length=len(pkt))
                self.sink.write(pkt[:f.truncate])
                pos += f.truncate
                self._lost(pkt, desc, "truncate")
                continue
            if j in f.reorder:
                self.truth.fault("reorder", self.contact, pos, len(pkt), desc, displacement=f.reorder[j])
            placed[j] = pos
            self.sink.write(pkt)
            pos += len(pkt)
            got.append(np.array([j]))
            if j in f.dup:
                self.truth.fault("dup", self.contact, pos, len(pkt), desc, original_offset=pos - len(pkt))
                self.sink.write(pkt)
                pos += len(pkt)
                got.append(np.array([j]))
        self.offset = pos
        idx = np.concatenate(got) if got else np.empty(0, dtype=np.int64)
        self.truth.received(self.contact, apid[idx], source[idx], seq[idx])
        if hostile_seqs:
            self.truth.received(self.contact, *np.array(hostile_seqs, dtype=np.int64).T)
        local = self._wrap_local(item)
        if local is not None:
            at = placed.get(local)
            for a, b, p in runs:
                if a <= local < b:
                    at = p + int(offsets[local] - offsets[a])
            self._record_wrap(item, local, at, int(offsets[local + 1] - offsets[local]))
        if isinstance(item, SciItem) and len(idx):
            self.truth.deliver(self.contact, item.exp.exposure_id)

    def _lost(self, pkt: memoryview, desc: dict, origin: str) -> None:
        self.truth.lose(desc)
        if self.redump is not None and desc["source"] == 1:
            self.redump.packets.append(bytes(pkt))
            self.redump.descs.append(desc)
            self.redump.origins.append(origin)
