"""Assembly of one exposure's Level 0 content (pure logic over a spool file; no Kafka).

Packets are identified by :func:`consumers.l0.identity.identity` (collision
free). Each new packet's bytes are appended to the exposure's spool file;
memory holds only a compact row per packet (identity, spool offset, length,
sequence count, time: ~40 bytes), so an 805 MB exposure costs a few MB.

* A repeat of an identity with the same bytes is a duplicate (dropped).
  With different bytes it is a *conflict*: neither copy goes into the L0,
  both are kept in a side file and listed in the manifest, and the exposure
  is never complete (which copy is right would be a guess).
* Every packet is validated (:mod:`consumers.l0.identity`); data packets
  that arrive before their exposure start are held (spooled, unchecked)
  and checked when the start arrives. A failing packet is returned as
  :class:`Rejected` (the service dead-letters it) and listed in the manifest.
* Complete means: a valid start, an end, no conflict, and exactly the data
  identities the start's geometry predicts.

The L0 content is every kept packet byte-for-byte in canonical order
(exposure start, data by (integration, group, pixel offset), exposure end).
When packets arrived in that order (the usual case) the spool already *is*
the L0 file and its sha256 was computed while appending: writing it is a
rename. Otherwise it is copied out of the spool in canonical order through
one bounded buffer.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from consumers.l0.identity import (END_KEY, OK, START_KEY, Geometry, Limits, check_packets,
                                   identity, split_identity)
from consumers.l0.spool import BLOCK, Spool
from core.timecodes import tai_to_iso
from core.version import SOFTWARE_VERSION
from products.l0 import MANIFEST_SCHEMA
from streams.decoder import PacketIndex, StreamDecoder
from streams.packets import (SCIENCE_DATA_HEADER_LEN, SEQ_MODULO, ExposureEnd, ExposureStart,
                             ExposureTag, Kind, decode_exposure_end, decode_exposure_start)

#: rows of a manifest's per-packet lists (missing, rejected, conflicts) at most; counts stay exact
MAX_LISTED = 200_000

_COLUMNS = {"key": np.uint64, "off": np.int64, "length": np.int32, "seq": np.uint16,
            "coarse": np.uint32, "fine": np.uint16, "alive": np.bool_, "checked": np.bool_}


class _Rows:
    """Growable column table (amortised doubling), one row per spooled packet."""

    def __init__(self) -> None:
        self.n = 0
        self._cols = {k: np.empty(0, t) for k, t in _COLUMNS.items()}

    def append(self, **cols: np.ndarray) -> np.ndarray:
        m = len(cols["key"])
        if self.n + m > len(self._cols["key"]):
            cap = max(1024, 2 * (self.n + m))
            for k, arr in self._cols.items():
                grown = np.empty(cap, arr.dtype)
                grown[:self.n] = arr[:self.n]
                self._cols[k] = grown
        for k, arr in self._cols.items():
            arr[self.n:self.n + m] = cols[k]
        rows = np.arange(self.n, self.n + m)
        self.n += m
        return rows

    def __getattr__(self, name: str) -> np.ndarray:
        cols = self.__dict__.get("_cols")
        if cols is None or name not in cols:
            raise AttributeError(name)
        return cols[name][:self.n]


@dataclass
class Rejected:
    """A packet that failed validation (the service sends it to the dead-letter topic)."""

    reason: str
    data: bytes
    kind: int
    integration: int = 0
    group: int = 0
    pixel_offset: int = 0
    stream_offset: int | None = None
    contact: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"reason": self.reason, "kind": self.kind, "integration": self.integration,
                "group": self.group, "pixel_offset": self.pixel_offset,
                "stream_offset": self.stream_offset, "contact": self.contact,
                "length": len(self.data)}


@dataclass
class Conflict:
    """Two different packets with one identity; both are in the side file at these ranges."""

    kind: int
    integration: int
    group: int
    pixel_offset: int
    sha256: tuple[str, str]
    ranges: tuple[tuple[int, int], tuple[int, int]]
    contact: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "integration": self.integration, "group": self.group,
                "pixel_offset": self.pixel_offset, "sha256": list(self.sha256),
                "side_file_ranges": [list(r) for r in self.ranges], "contact": self.contact}


@dataclass
class Added:
    """What one :meth:`Assembly.add` did."""

    fresh: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


class Assembly:
    """Packets of one exposure gathered so far, spooled under ``spool_path``."""

    def __init__(self, exposure_id: str, spool_path: Path, limits: Limits | None = None) -> None:
        self.exposure_id = exposure_id
        self.tag = ExposureTag.from_exposure_id(exposure_id)  # CodecError: the caller dead-letters
        self.limits = limits or Limits()
        self.spool_path = Path(spool_path)
        self.contacts: set[str] = set()
        self.duplicates = 0
        self.raw_ts = 0
        self.start: ExposureStart | None = None
        self.end: ExposureEnd | None = None
        self.geometry: Geometry | None = None
        self.start_rejection: str | None = None
        self.rejected: list[dict[str, Any]] = []
        self.rejected_count = 0
        self.rejected_reasons: Counter[str] = Counter()
        self.conflicts: list[Conflict] = []
        #: identity in conflict -> sha256 of every variant seen (a repeat of one is a duplicate)
        self._conflicted: dict[int, set[str]] = {}
        self._spool: Spool | None = None
        self._side: Spool | None = None
        self._rows = _Rows()
        #: sorted identities of every spooled packet not rejected, and their rows
        self._keys = np.empty(0, np.uint64)
        self._key_rows = np.empty(0, np.int64)
        #: the spool holds exactly the L0 bytes in canonical order, hashed so far
        self._inorder = True
        self._hasher = hashlib.sha256()

    @classmethod
    def for_exposure(cls, exposure_id: str, spool_dir: Path, limits: Limits | None = None,
                     token: str = "") -> "Assembly":
        return cls(exposure_id, Path(spool_dir) / f"{exposure_id}{token}.spool", limits)

    # adding ----------------------------------------------------------------------------------
    def add(self, index: PacketIndex, packets: bytes | memoryview, contact: str | None,
            raw_ts: int = 0) -> Added:
        """Add a run of packets (``index.offset`` relative to ``packets``)."""
        out = Added()
        if contact:
            self.contacts.add(contact)
        self.raw_ts = max(self.raw_ts, raw_ts)
        if len(index) == 0:
            return out
        reasons = check_packets(index, self.tag)
        ok = reasons == OK
        for i in np.flatnonzero(ok & (index.kind == Kind.EXPOSURE_START)).tolist():
            raw = bytes(packets[int(index.offset[i]):int(index.offset[i]) + int(index.length[i])])
            _, start = decode_exposure_start(raw)
            geo = Geometry.check(start, self.tag.detector, self.limits)
            if isinstance(geo, str):
                reasons[i], ok[i] = geo, False
                if self.geometry is None:
                    self.start_rejection = geo
            elif self.geometry is None:
                self.geometry, self.start, self.start_rejection = geo, start, None
                out.rejected += self._check_held()
        if self.geometry is not None:
            data = ok & (index.kind == Kind.SCIENCE_DATA)
            if data.any():
                r = self.geometry.check_data(index)
                bad = data & (r != OK)
                reasons[bad] = r[bad]
                ok &= ~bad
        for i in np.flatnonzero(~ok).tolist():
            off, n = int(index.offset[i]), int(index.length[i])
            out.rejected.append(Rejected(
                str(reasons[i]), bytes(packets[off:off + n]), int(index.kind[i]),
                int(index.integration[i]), int(index.group[i]), int(index.pixel_offset[i]),
                int(index.stream_offset[i]), contact))
        good = np.flatnonzero(ok)
        if len(good):
            self._add_valid(index.take(good), packets, contact, out)
        for r in out.rejected:
            self._note_rejected(r)
        return out

    def _add_valid(self, index: PacketIndex, packets: bytes | memoryview, contact: str | None,
                   out: Added) -> None:
        keys = identity(index)
        n = len(keys)
        ascending = n == 1 or bool(np.all(keys[1:] > keys[:-1]))
        if ascending and (len(self._keys) == 0 or keys[0] > self._keys[-1]) and not self._conflicted:
            fresh = np.arange(n)  # fast path: a run in canonical order after everything so far
            self._append(index, keys, fresh, packets)
        else:
            fresh = self._dedupe(index, keys, packets, contact, out)
        out.fresh = len(fresh)
        kinds = index.kind[fresh]
        if self.end is None and np.any(kinds == Kind.EXPOSURE_END):
            i = int(fresh[np.flatnonzero(kinds == Kind.EXPOSURE_END)[0]])
            off = int(index.offset[i])
            self.end = decode_exposure_end(bytes(packets[off:off + int(index.length[i])]))[1]

    def _dedupe(self, index: PacketIndex, keys: np.ndarray, packets: bytes | memoryview,
                contact: str | None, out: Added) -> np.ndarray:
        """Append the new identities; compare repeats byte for byte (duplicate or conflict)."""
        n = len(keys)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        first_of = first[inverse]
        pos = np.searchsorted(self._keys, keys)
        pos_c = np.minimum(pos, max(len(self._keys) - 1, 0))
        exists = (len(self._keys) > 0) & (self._keys[pos_c] == keys) if len(self._keys) else \
            np.zeros(n, bool)
        is_first = first_of == np.arange(n)
        conflicted = np.isin(keys, np.fromiter(self._conflicted, np.uint64, len(self._conflicted))) \
            if self._conflicted else np.zeros(n, bool)
        fresh = np.flatnonzero(is_first & ~exists & ~conflicted)
        rep = np.flatnonzero(exists)
        ref_rows = self._key_rows[pos_c[rep]]  # before the append moves the sorted index
        rows = self._append(index, keys, fresh, packets)
        row_of_fresh = dict(zip(fresh.tolist(), rows.tolist()))
        mv = memoryview(packets)
        # repeats of a spooled packet: compare with the spool
        if len(rep):
            same = self._same(index, rep, mv, self._rows.off[ref_rows], self._rows.length[ref_rows],
                              lambda o, k: self._spool.read(o, k) if self._spool else b"")
            out.duplicates += int(np.count_nonzero(same))
            for i, row in zip(rep[~same].tolist(), ref_rows[~same].tolist()):
                self._conflict(row, index, i, mv, contact, out)
        # repeats within this run of a packet first seen in it
        inrun = np.flatnonzero(~is_first & ~exists & ~conflicted)
        if len(inrun):
            ref = first_of[inrun]  # always fresh: existence and conflict are per identity
            same = self._same(index, inrun, mv, index.offset[ref], index.length[ref],
                              lambda o, k: bytes(mv[o:o + k]))
            out.duplicates += int(np.count_nonzero(same))
            for i, r in zip(inrun[~same].tolist(), ref[~same].tolist()):
                if r in row_of_fresh:
                    self._conflict(row_of_fresh[r], index, i, mv, contact, out)
        # packets whose identity is already in conflict: every copy is evidence, none is kept
        for i in np.flatnonzero(conflicted & ~exists).tolist():
            self._conflict(None, index, i, mv, contact, out)
        self.duplicates += out.duplicates
        return fresh

    @staticmethod
    def _same(index: PacketIndex, new: np.ndarray, mv: memoryview, ref_off: np.ndarray,
              ref_len: np.ndarray, read: Callable[[int, int], bytes]) -> np.ndarray:
        """Per packet of ``new``: are its bytes equal to the reference copy?

        Adjacent packets whose references are adjacent too are compared as one
        run (a replayed record is one comparison), packet by packet only
        inside a run that differs.
        """
        n_off = index.offset[new].astype(np.int64)
        n_len = index.length[new].astype(np.int64)
        r_off = np.asarray(ref_off, np.int64)
        same = n_len == np.asarray(ref_len, np.int64)
        if len(new) == 0:
            return same
        cont = (n_off[1:] == n_off[:-1] + n_len[:-1]) & (r_off[1:] == r_off[:-1] + n_len[:-1])
        cont &= same[1:] & same[:-1]
        brk = np.flatnonzero(~cont) + 1
        for a, b in zip(np.concatenate(([0], brk)).tolist(), np.concatenate((brk, [len(new)])).tolist()):
            if not same[a]:
                continue
            s, e = int(n_off[a]), int(n_off[b - 1] + n_len[b - 1])
            if mv[s:e] == read(int(r_off[a]), e - s):
                continue
            for j in range(a, b):
                s, k = int(n_off[j]), int(n_len[j])
                same[j] = mv[s:s + k] == read(int(r_off[j]), k)
        return same

    def _append(self, index: PacketIndex, keys: np.ndarray, fresh: np.ndarray,
                packets: bytes | memoryview) -> np.ndarray:
        if len(fresh) == 0:
            return np.empty(0, np.int64)
        offs = index.offset[fresh].astype(np.int64)
        lens = index.length[fresh].astype(np.int64)
        ends = offs + lens
        brk = np.flatnonzero(offs[1:] != ends[:-1]) + 1
        run_s = offs[np.concatenate(([0], brk))].tolist()
        run_e = ends[np.concatenate((brk - 1, [len(offs) - 1]))].tolist()
        mv = memoryview(packets)
        chunks = [mv[s:e] for s, e in zip(run_s, run_e)]
        if self._spool is None:
            self._spool = Spool(self.spool_path)
        base = self._spool.append(chunks)
        fkeys = keys[fresh]
        ascending = len(fkeys) == 1 or bool(np.all(fkeys[1:] > fkeys[:-1]))
        after = len(self._keys) == 0 or fkeys.min() > self._keys[-1]
        if self._inorder and ascending and after:
            for c in chunks:
                self._hasher.update(c)
        else:
            self._inorder = False
        rows = self._rows.append(
            key=fkeys, off=base + np.cumsum(lens) - lens, length=lens, seq=index.seq[fresh],
            coarse=index.coarse[fresh], fine=index.fine[fresh], alive=True,
            checked=self.geometry is not None)
        if after:
            self._keys = np.concatenate((self._keys, fkeys if ascending else np.sort(fkeys)))
            self._key_rows = np.concatenate((self._key_rows, rows if ascending
                                             else rows[np.argsort(fkeys, kind="stable")]))
        else:
            allk = np.concatenate((self._keys, fkeys))
            allr = np.concatenate((self._key_rows, rows))
            order = np.argsort(allk, kind="stable")
            self._keys, self._key_rows = allk[order], allr[order]
        return rows

    def _conflict(self, row: int | None, index: PacketIndex, i: int, mv: memoryview,
                  contact: str | None, out: Added) -> None:
        """Keep both copies aside; the identity stays out of the L0 and out of 'complete'."""
        off, n = int(index.offset[i]), int(index.length[i])
        other = bytes(mv[off:off + n])
        key = int(identity(index.take(np.array([i])))[0])
        other_sha = hashlib.sha256(other).hexdigest()
        if other_sha in self._conflicted.get(key, ()):
            out.duplicates += 1  # a copy of a variant already kept aside
            return
        if row is not None:
            first = self._spool.read(int(self._rows.off[row]), int(self._rows.length[row]))
            if self._rows.alive[row]:
                self._rows._cols["alive"][row] = False
        else:  # a further variant of an identity already in conflict: pair it with the first
            first = next((self._side.read(*c.ranges[0]) for c in self.conflicts
                          if _key_of(c) == key and self._side is not None), b"")
        self._inorder = False
        if self._side is None:
            self._side = Spool(self.spool_path.with_suffix(".conflicts"))
        a = self._side.append([first])
        b = self._side.append([other])
        kind, integ, group, poff = (int(x[0]) for x in split_identity(np.array([key], np.uint64)))
        first_sha = hashlib.sha256(first).hexdigest()
        self._conflicted.setdefault(key, set()).update((first_sha, other_sha))
        c = Conflict(kind, integ, group, poff, (first_sha, other_sha),
                     ((a, len(first)), (b, len(other))), contact)
        self.conflicts.append(c)
        out.conflicts.append(c)

    def _check_held(self) -> list[Rejected]:
        """Validate the data packets spooled before the start arrived."""
        assert self.geometry is not None
        r = self._rows
        held = np.flatnonzero(~r.checked & r.alive)
        r._cols["checked"][:r.n] = True
        if len(held) == 0:
            return []
        kind, integ, group, off = split_identity(r.key[held])
        count = (r.length[held].astype(np.int64) - SCIENCE_DATA_HEADER_LEN) // 2
        reasons = self.geometry.check_fields(kind, integ, group, off, count)
        bad = held[reasons != OK]
        if len(bad) == 0:
            return []
        self._inorder = False
        out = []
        for row, reason in zip(bad.tolist(), reasons[reasons != OK].tolist()):
            data = self._spool.read(int(r.off[row]), int(r.length[row])) if self._spool else b""
            k, i, g, o = (int(x[0]) for x in split_identity(r.key[row:row + 1]))
            out.append(Rejected(reason, data, k, i, g, o))
        r._cols["alive"][bad] = False
        keep = ~np.isin(self._key_rows, bad)
        self._keys, self._key_rows = self._keys[keep], self._key_rows[keep]
        return out

    def _note_rejected(self, r: Rejected) -> None:
        self.rejected_count += 1
        self.rejected_reasons[r.reason.split(":")[0]] += 1
        if len(self.rejected) < MAX_LISTED:
            self.rejected.append(r.describe())

    def seed(self, data_path: Path, previous: dict[str, Any] | None = None) -> None:
        """Start from the packets of a version already written (streamed, block by block)."""
        decoder = StreamDecoder()
        with open(data_path, "rb") as fh:
            for block in iter(lambda: fh.read(BLOCK), b""):
                chunk = decoder.feed(block)
                self.add(chunk.packets, chunk.data, None)
        chunk = decoder.flush()
        self.add(chunk.packets, chunk.data, None)
        self.duplicates = 0
        if previous:
            self.contacts.update(previous.get("contacts", []))
            self.rejected = list(previous.get("rejected", []))[:MAX_LISTED]
            self.rejected_count = int(previous.get("rejected_count", len(self.rejected)))
            self.rejected_reasons.update(previous.get("rejected_reasons", {}))
            side = Path(data_path).parent / str(previous.get("conflicts_file") or "")
            if previous.get("conflicts_file") and side.is_file():
                self._side = Spool(self.spool_path.with_suffix(".conflicts"))
                with open(side, "rb") as fh:  # the evidence of earlier conflicts stays with the exposure
                    for block in iter(lambda: fh.read(BLOCK), b""):
                        self._side.append([block])
                for c in previous.get("conflicts", []):
                    (a, na), (b, nb) = c["side_file_ranges"]
                    self.conflicts.append(Conflict(c["kind"], c["integration"], c["group"],
                                                   c["pixel_offset"], tuple(c["sha256"]),
                                                   ((a, na), (b, nb)), c.get("contact")))
            for c in previous.get("conflicts", []):
                key = _key_of_fields(c["kind"], c["integration"], c["group"], c["pixel_offset"])
                self._conflicted.setdefault(key, set()).update(c.get("sha256", []))
                self._inorder = False

    # state -----------------------------------------------------------------------------------
    @property
    def packets(self) -> int:
        return int(np.count_nonzero(self._rows.alive))

    @property
    def spooled_bytes(self) -> int:
        return self._spool.size if self._spool else 0

    def _data_keys(self) -> np.ndarray:
        r = self._rows
        keep = r.alive & (r.key != START_KEY) & (r.key != END_KEY)
        return r.key[keep]

    @property
    def complete(self) -> bool:
        g = self.geometry
        if g is None or self.end is None or self.conflicts:
            return False
        keys = self._data_keys()
        if len(keys) != g.expected:
            return False
        return bool(np.all(np.isin(g.expected_keys(), keys)))  # exactly the expected set

    def _order(self) -> np.ndarray:
        """Rows of the L0 content in canonical order."""
        r = self._rows
        rows = np.flatnonzero(r.alive)
        return rows[np.argsort(r.key[rows], kind="stable")]

    @property
    def nbytes(self) -> int:
        r = self._rows
        return int(r.length[r.alive].sum())

    def content_sha256(self) -> tuple[str, int]:
        """(sha256, bytes) of the L0 content; reads the spool only when it is out of order."""
        r = self._rows
        if self._spool is None:
            return hashlib.sha256().hexdigest(), 0
        if self._inorder and bool(np.all(r.alive)):
            return self._hasher.hexdigest(), self._spool.size
        rows = self._order()
        digest = hashlib.sha256()
        for view in self._spool.read_ranges(r.off[rows], r.length[rows]):
            digest.update(view)
        return digest.hexdigest(), self.nbytes

    def write(self, dest: Path) -> tuple[str, int]:
        """Write the L0 bytes to ``dest`` (a temp file), fsynced; returns (sha256, bytes).

        The assembly's spool is used up when it already is the L0 file (renamed).
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        r = self._rows
        if self._spool is None:
            with open(dest, "wb") as fh:
                os.fsync(fh.fileno())
            return hashlib.sha256().hexdigest(), 0
        if self._inorder and bool(np.all(r.alive)):
            os.fsync(self._spool.fd)
            try:
                os.replace(self._spool.path, dest)
                self._spool.detach()
                return self._hasher.hexdigest(), self._spool.size
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        rows = self._order()
        digest = hashlib.sha256()
        size = 0
        with open(dest, "wb") as fh:
            for view in self._spool.read_ranges(r.off[rows], r.length[rows]):
                digest.update(view)
                fh.write(view)
                size += len(view)
            fh.flush()
            os.fsync(fh.fileno())
        return digest.hexdigest(), size

    def write_conflicts(self, dest: Path) -> bool:
        """Copy the side file of conflicting copies to ``dest`` (fsynced); False when none."""
        if self._side is None:
            return False
        with open(dest, "wb") as fh:
            for view in self._side.read_ranges(np.array([0]), np.array([self._side.size])):
                fh.write(view)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def close(self) -> None:
        """Remove the spool files (the exposure was written or handed over)."""
        for s in (self._spool, self._side):
            if s is not None:
                s.remove()
        self._spool = self._side = None

    # manifest ----------------------------------------------------------------------------------
    def manifest(self, version: int, sha256: str, nbytes: int, *,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        t = self.tag
        r = self._rows
        rows = self._order()
        times = r.coarse[rows].astype(np.float64) + r.fine[rows] / 65536.0
        missing, n_missing = self.missing_packets()
        out = {
            "schema": MANIFEST_SCHEMA, "software_version": SOFTWARE_VERSION,
            "exposure_id": self.exposure_id, "version": version,
            "program": t.program, "observation": t.observation, "visit": t.visit,
            "visit_group": t.visit_group, "parallel_seq": t.parallel_seq,
            "activity": t.activity, "exposure": t.exposure, "detector": t.detector,
            "apid": t.apid,
            "complete": self.complete, "validated": self.geometry is not None,
            "packets": len(rows), "data_packets": int(len(self._data_keys())),
            "expected_data_packets": None if self.geometry is None else self.geometry.expected,
            "bytes": nbytes, "sha256": sha256,
            "first_packet_time": tai_to_iso(float(times.min())) if len(times) else None,
            "last_packet_time": tai_to_iso(float(times.max())) if len(times) else None,
            "contacts": sorted(self.contacts),
            "duplicates_dropped": self.duplicates,
            "missing_seq": self.missing_seq(rows),
            "missing_packets": missing, "missing_count": n_missing,
            "rejected": self.rejected, "rejected_count": self.rejected_count,
            "rejected_reasons": dict(self.rejected_reasons),
            "start_rejection": self.start_rejection,
            "conflicts": [c.describe() for c in self.conflicts[:MAX_LISTED]],
            "conflict_count": len(self.conflicts),
            "start": None if self.start is None else dict(self.start.__dict__),
            "end": None if self.end is None else dict(self.end.__dict__),
        }
        out.update(extra or {})
        return out

    def missing_seq(self, rows: np.ndarray) -> list[list[int]]:
        """Missing sequence counts as [first, count]: holes between kept packets in
        canonical order, and the tail up to the end packet the start announces."""
        if len(rows) == 0:
            return []
        seq = self._rows.seq[rows].astype(np.int64)
        step = np.diff(seq) % SEQ_MODULO
        holes = np.flatnonzero(step > 1)
        out = [[(int(seq[i]) + 1) % SEQ_MODULO, int(step[i]) - 1] for i in holes[:MAX_LISTED].tolist()]
        if self.geometry is not None and int(self._rows.key[rows[0]]) == int(START_KEY):
            expected_total = self.geometry.expected + 2
            have_span = int(np.sum(step)) + 1
            if have_span < expected_total:
                out.append([(int(seq[-1]) + 1) % SEQ_MODULO, expected_total - have_span])
        return out

    def missing_packets(self) -> tuple[list[dict[str, int]], int]:
        """Missing packets by identity (listed up to MAX_LISTED) and their exact count."""
        out: list[dict[str, int]] = []
        n = 0
        g = self.geometry
        if g is None:
            out.append({"kind": int(Kind.EXPOSURE_START)})
            n += 1
        else:
            expected = g.expected_keys()
            have = np.union1d(self._data_keys(), np.fromiter(self._conflicted, np.uint64,
                                                            len(self._conflicted)))
            gone = expected[~np.isin(expected, have)]
            n += len(gone)
            _, i, gr, o = split_identity(gone[:MAX_LISTED])
            cnt = g.count_of(o)
            out += [{"kind": int(Kind.SCIENCE_DATA), "integration": a, "group": b,
                     "pixel_offset": c, "pixel_count": d}
                    for a, b, c, d in zip(i.tolist(), gr.tolist(), o.tolist(), cnt.tolist())]
        if self.end is None:
            out.append({"kind": int(Kind.EXPOSURE_END)})
            n += 1
        return out, n


def _key_of_fields(kind: int, integration: int, group: int, offset: int) -> int:
    if kind == Kind.EXPOSURE_START:
        return int(START_KEY)
    if kind == Kind.EXPOSURE_END:
        return int(END_KEY)
    return (integration << 48) | (group << 32) | offset


def _key_of(c: Conflict) -> int:
    return _key_of_fields(c.kind, c.integration, c.group, c.pixel_offset)
