"""Assembly of one exposure's Level 0 content (pure: no I/O, no Kafka).

Packets are identified by (kind, integration, group, pixel offset): a repeat of
an identity is a duplicate and the first copy wins. The L0 content is every
kept packet byte-for-byte in canonical order (DESIGN.md, "L0 content"): exposure
start, data by (integration, group, pixel offset), exposure end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.timecodes import tai_to_iso
from core.version import SOFTWARE_VERSION
from products.l0 import MANIFEST_SCHEMA
from streams.decoder import PacketIndex
from streams.packets import (SEQ_MODULO, ExposureEnd, ExposureStart, ExposureTag, Kind,
                             decode_exposure_end, decode_exposure_start)

def identity(index: PacketIndex) -> np.ndarray:
    """Packet identity within an exposure as one sortable int64 (canonical order)."""
    kind_rank = np.where(index.kind == Kind.EXPOSURE_START, 0,
                         np.where(index.kind == Kind.SCIENCE_DATA, 1, 2)).astype(np.int64)
    return ((kind_rank << 60) | (index.integration.astype(np.int64) << 44)
            | (index.group.astype(np.int64) << 28) | index.pixel_offset.astype(np.int64))


@dataclass
class L0Content:
    """The L0 bytes as a few slices of the received messages (no joined copy), hashed."""

    chunks: list[memoryview]
    sha256: str
    manifest: dict[str, Any]

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class Assembly:
    """Packets of one exposure gathered so far."""

    exposure_id: str
    tag: ExposureTag
    contacts: set[str] = field(default_factory=set)
    duplicates: int = 0
    raw_ts: int = 0
    _buffers: list[bytes] = field(default_factory=list)
    _parts: list[PacketIndex] = field(default_factory=list)
    _part_buffer: list[np.ndarray] = field(default_factory=list)
    #: sorted identities of the packets kept so far
    _keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _max_key: int = -1
    start: ExposureStart | None = None
    end: ExposureEnd | None = None
    n_data: int = 0

    @classmethod
    def for_exposure(cls, exposure_id: str) -> "Assembly":
        return cls(exposure_id, ExposureTag.from_exposure_id(exposure_id))

    def add(self, index: PacketIndex, packets: bytes, contact: str | None, raw_ts: int = 0) -> int:
        """Add a run of packets (``index.offset`` relative to ``packets``); returns how many were new."""
        if contact:
            self.contacts.add(contact)
        self.raw_ts = max(self.raw_ts, raw_ts)
        keys = identity(index)
        if len(keys) and keys[0] > self._max_key and bool(np.all(keys[1:] > keys[:-1])):
            # fast path, the usual one: a run in canonical order after everything so far
            fresh = np.arange(len(keys))
            self._keys = np.concatenate((self._keys, keys))
        else:
            _, first = np.unique(keys, return_index=True)
            first.sort()
            fresh = first[~np.isin(keys[first], self._keys)]
            self._keys = np.union1d(self._keys, keys[fresh])
        self.duplicates += len(keys) - len(fresh)
        if len(fresh) == 0:
            return 0
        self._max_key = int(self._keys[-1])
        part = index.take(fresh)
        self._buffers.append(packets)
        self._parts.append(part)
        self._part_buffer.append(np.full(len(fresh), len(self._buffers) - 1, np.int64))
        kinds = part.kind
        self.n_data += int(np.count_nonzero(kinds == Kind.SCIENCE_DATA))
        for i in np.flatnonzero(kinds != Kind.SCIENCE_DATA).tolist():
            off, length = int(part.offset[i]), int(part.length[i])
            raw = packets[off:off + length]
            if kinds[i] == Kind.EXPOSURE_START:
                self.start = decode_exposure_start(raw)[1]
            else:
                self.end = decode_exposure_end(raw)[1]
        return len(fresh)

    @property
    def packets(self) -> int:
        return len(self._keys)

    @property
    def complete(self) -> bool:
        return (self.start is not None and self.end is not None
                and self.n_data == self.start.expected_packets)

    def build(self, version: int) -> L0Content:
        """Canonical-order bytes, their sha256 and the manifest."""
        index = PacketIndex.concat(self._parts)
        buf_of = np.concatenate(self._part_buffer) if self._part_buffer else np.empty(0, np.int64)
        order = np.argsort(identity(index), kind="stable")
        index, buf_of = index.take(order), buf_of[order]
        chunks = self._runs(index, buf_of)
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        sha = digest.hexdigest()
        nbytes = sum(len(c) for c in chunks)
        return L0Content(chunks, sha, self._manifest(index, nbytes, sha, version))

    def _runs(self, index: PacketIndex, buf_of: np.ndarray) -> list[memoryview]:
        """The packets in order as slices, one per contiguous run of one received buffer."""
        if len(index) == 0:
            return []
        starts = index.offset.astype(np.int64)
        ends = starts + index.length
        breaks = np.flatnonzero((buf_of[1:] != buf_of[:-1]) | (starts[1:] != ends[:-1])) + 1
        first = np.concatenate(([0], breaks))
        last = np.concatenate((breaks, [len(index)])) - 1
        views = [memoryview(b) for b in self._buffers]
        return [views[b][s:e] for b, s, e in zip(
            buf_of[first].tolist(), starts[first].tolist(), ends[last].tolist())]

    def _manifest(self, index: PacketIndex, nbytes: int, sha: str, version: int) -> dict[str, Any]:
        t = self.tag
        times = index.coarse.astype(np.float64) + index.fine / 65536.0
        missing_packets = self.missing_packets(index)
        return {
            "schema": MANIFEST_SCHEMA, "software_version": SOFTWARE_VERSION,
            "exposure_id": self.exposure_id, "version": version,
            "program": t.program, "observation": t.observation, "visit": t.visit,
            "visit_group": t.visit_group, "parallel_seq": t.parallel_seq,
            "activity": t.activity, "exposure": t.exposure, "detector": t.detector,
            "apid": t.apid,
            "complete": self.complete, "packets": len(index), "data_packets": self.n_data,
            "expected_data_packets": None if self.start is None else self.start.expected_packets,
            "bytes": nbytes, "sha256": sha,
            "first_packet_time": tai_to_iso(float(times.min())) if len(times) else None,
            "last_packet_time": tai_to_iso(float(times.max())) if len(times) else None,
            "contacts": sorted(self.contacts),
            "duplicates_dropped": self.duplicates,
            "missing_seq": self.missing_seq(index),
            "missing_packets": missing_packets,
            "start": None if self.start is None else dict(self.start.__dict__),
            "end": None if self.end is None else dict(self.end.__dict__),
        }

    def missing_seq(self, index: PacketIndex) -> list[list[int]]:
        """Missing sequence counts as [first, count]: holes between kept packets in
        canonical order, and the tail up to the end packet the start announces."""
        if len(index) == 0:
            return []
        seq = index.seq.astype(np.int64)
        step = (np.diff(seq) % SEQ_MODULO)
        out = [[(int(seq[i]) + 1) % SEQ_MODULO, int(step[i]) - 1]
               for i in np.flatnonzero(step > 1).tolist()]
        if self.start is not None and index.kind[0] == Kind.EXPOSURE_START:
            expected_total = self.start.expected_packets + 2
            have_span = int(np.sum(step)) + 1 if len(step) else 1
            if have_span < expected_total:
                out.append([(int(seq[-1]) + 1) % SEQ_MODULO, expected_total - have_span])
        return out

    def missing_packets(self, index: PacketIndex) -> list[dict[str, int]]:
        """Missing packets by identity; data packets need the start packet's geometry."""
        out: list[dict[str, int]] = []
        if self.start is None:
            out.append({"kind": int(Kind.EXPOSURE_START)})
        else:
            s = self.start
            data = index.kind == Kind.SCIENCE_DATA
            step = int(index.pixel_count[data].max()) if data.any() else s.subsize1 * s.subsize2
            npix = s.subsize1 * s.subsize2
            offsets = np.arange(0, npix, step, dtype=np.int64)
            ints, groups = np.meshgrid(np.arange(1, s.nints + 1), np.arange(1, s.ngroups + 1),
                                       indexing="ij")
            exp_i = np.repeat(ints.ravel(), len(offsets))
            exp_g = np.repeat(groups.ravel(), len(offsets))
            exp_o = np.tile(offsets, ints.size)
            expected = (1 << 60) | (exp_i << 44) | (exp_g << 28) | exp_o
            gone = ~np.isin(expected, self._keys)
            for i, g, o in zip(exp_i[gone].tolist(), exp_g[gone].tolist(), exp_o[gone].tolist()):
                out.append({"kind": int(Kind.SCIENCE_DATA), "integration": i, "group": g,
                            "pixel_offset": o, "pixel_count": int(min(step, npix - o))})
        if self.end is None:
            out.append({"kind": int(Kind.EXPOSURE_END)})
        return out
