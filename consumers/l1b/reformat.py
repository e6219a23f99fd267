"""L0 -> L1b reformatting (pure: a file path in, arrays and header values out; no Kafka).

The L0 file is decoded in chunks with the stream decoder (memory stays the SCI
cube plus one chunk, whatever the exposure size). Pixel payloads go straight
into the preallocated SCI buffer, in big-endian as they travel, with one
fancy-indexed copy per batch of equally sized packets (no per-packet Python
loop). Whatever no packet delivered is recorded as row-major pixel ranges per
(integration, group) for the MISSING table and set to 0 in SCI.

Times: the exposure-start packet's time is EXPSTART, the end packet's EXPEND
(nominal from the readout pattern when it was lost); a group ends at the
latest time of its data packets (nominal when none arrived).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from core.errors import CodecError, ValidationError
from core.version import SOFTWARE_VERSION
from products.fits.uncal import MISSING_DTYPE, SciBuffer, UncalMeta
from streams.decoder import PacketIndex, StreamDecoder
from streams.packets import (
    DETECTORS,
    SCIENCE_DATA_HEADER_LEN,
    ExposureStart,
    ExposureTag,
    Kind,
    decode_exposure_start,
    instrument_of,
)
from streams.simulator.detector import nominal_optics

#: bytes of L0 decoded per step
CHUNK_BYTES = 8 << 20
#: packets placed per fancy-indexed copy (bounds the temporary to ~32 MB)
PLACE_BATCH = 4096


@dataclass
class Reformatted:
    """An exposure ready to be written as uncal."""

    meta: UncalMeta
    sci: SciBuffer
    group_end_tai: np.ndarray  # (NINTS, NGROUPS) TAI seconds
    missing: np.ndarray  # MISSING_DTYPE rows
    data_packets: int
    l0_sha256: str

    @property
    def missing_pixels(self) -> int:
        return int(self.missing["count"].sum()) if self.missing.size else 0


def _times(index: PacketIndex) -> np.ndarray:
    return index.coarse.astype(np.float64) + index.fine.astype(np.float64) / 65536.0


class _Placer:
    """Accumulates one exposure while its L0 file streams through the decoder."""

    def __init__(self, exposure_id: str, max_bytes: int) -> None:
        self.exposure_id = exposure_id
        self.tag = ExposureTag.from_exposure_id(exposure_id)
        self.max_bytes = max_bytes
        self.start: ExposureStart | None = None
        self.start_tai: float | None = None
        self.end_tai: float | None = None
        self.sci: SciBuffer | None = None
        self.pending: list[tuple[bytes, PacketIndex]] = []  # data before the start packet (rare)
        self.keys: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.group_end: np.ndarray | None = None
        self.n_data = 0

    def add(self, data: bytes, index: PacketIndex) -> None:
        if not len(index):
            return
        bad = (index.apid != self.tag.apid) | (index.kind < Kind.EXPOSURE_START)
        for field in ("program", "observation", "visit", "visit_group", "parallel_seq", "activity",
                      "exposure", "detector"):
            bad |= getattr(index, field) != getattr(self.tag, field)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValidationError(f"L0 file of {self.exposure_id} holds a packet of another exposure or "
                                  f"APID (apid {int(index.apid[i])}, kind {int(index.kind[i])}, stream "
                                  f"offset {int(index.stream_offset[i])})")
        kinds = index.kind
        for i in np.flatnonzero(kinds != Kind.SCIENCE_DATA).tolist():
            off, length = int(index.offset[i]), int(index.length[i])
            t = float(index.coarse[i]) + float(index.fine[i]) / 65536.0
            if kinds[i] == Kind.EXPOSURE_START:
                try:
                    self._begin(decode_exposure_start(bytes(data[off:off + length]))[1], t)
                except CodecError as exc:
                    raise ValidationError(f"exposure start of {self.exposure_id}: {exc}") from None
            else:
                self.end_tai = t
        data_rows = np.flatnonzero(kinds == Kind.SCIENCE_DATA)
        if data_rows.size:
            part = index.take(data_rows)
            if self.sci is None:
                self.pending.append((data, part))
            else:
                self._place(data, part)

    def _begin(self, start: ExposureStart, t: float) -> None:
        if self.start is not None:
            if start != self.start:
                raise ValidationError(f"L0 file of {self.exposure_id} holds two different exposure starts")
            return
        s = start
        if min(s.nints, s.ngroups, s.nframes, s.subsize1, s.subsize2) < 1 or s.tframe_us <= 0:
            raise ValidationError(f"exposure start of {self.exposure_id} has an impossible geometry "
                                  f"(NINTS {s.nints}, NGROUPS {s.ngroups}, NFRAMES {s.nframes}, "
                                  f"SUBSIZE {s.subsize1}x{s.subsize2}, TFRAME {s.tframe_us} us)")
        size = 2 * s.nints * s.ngroups * s.subsize1 * s.subsize2
        if size > self.max_bytes:
            raise ValidationError(f"{self.exposure_id}: SCI of {size} bytes exceeds the limit of "
                                  f"{self.max_bytes} (settings l0.max_exposure_bytes)")
        self.start, self.start_tai = s, t
        self.sci = SciBuffer(s.nints, s.ngroups, s.subsize2, s.subsize1)
        self.group_end = np.full(s.nints * s.ngroups, -np.inf)
        for data, part in self.pending:
            self._place(data, part)
        self.pending.clear()

    def _place(self, data: bytes, part: PacketIndex) -> None:
        """Copy the pixel payloads of data packets into SCI (vectorized per equal-size batch)."""
        s = self.start
        assert s is not None and self.sci is not None and self.group_end is not None
        npix = s.subsize1 * s.subsize2
        integ = part.integration.astype(np.int64)
        group = part.group.astype(np.int64)
        first = part.pixel_offset.astype(np.int64)
        count = part.pixel_count.astype(np.int64)
        bad = (integ < 1) | (integ > s.nints) | (group < 1) | (group > s.ngroups) | (first + count > npix)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValidationError(
                f"L0 file of {self.exposure_id}: a data packet (integration {int(integ[i])}, group "
                f"{int(group[i])}, pixels {int(first[i])}+{int(count[i])}) lies outside the geometry of "
                f"its exposure start ({s.nints} x {s.ngroups} x {npix} pixels)")
        key = (integ - 1) * s.ngroups + (group - 1)
        np.maximum.at(self.group_end, key, _times(part))
        self.keys.append(key)
        self.lo.append(first)
        self.hi.append(first + count)
        self.n_data += len(part)
        src = np.frombuffer(data, dtype=np.uint8)
        dst = self.sci.bytes
        src_off = part.offset.astype(np.int64) + SCIENCE_DATA_HEADER_LEN
        dst_off = 2 * (key * npix + first)
        for c in np.unique(count).tolist():
            rows = np.flatnonzero(count == c)
            width = 2 * c
            sv = as_strided(src, shape=(src.size - width + 1, width), strides=(1, 1), writeable=False)
            dv = as_strided(dst, shape=(dst.size - width + 1, width), strides=(1, 1))
            for a in range(0, rows.size, PLACE_BATCH):
                r = rows[a:a + PLACE_BATCH]
                dv[dst_off[r]] = sv[src_off[r]]

    def missing(self) -> np.ndarray:
        """Pixel ranges of every (integration, group) that no packet covered."""
        s = self.start
        assert s is not None
        npix = s.subsize1 * s.subsize2
        ngroups_total = s.nints * s.ngroups
        if self.keys:
            key = np.concatenate(self.keys)
            lo = np.concatenate(self.lo)
            hi = np.concatenate(self.hi)
        else:
            key = lo = hi = np.empty(0, np.int64)
        order = np.lexsort((lo, key))
        key, lo, hi = key[order], lo[order], hi[order]
        # covered end so far within each group (overlapping packets never open a false gap)
        new_group = np.ones(key.size, dtype=bool)
        new_group[1:] = key[1:] != key[:-1]
        seg = np.cumsum(new_group) - 1
        reach = hi.copy()
        if reach.size:
            # running max of hi within each group: offset groups apart so one accumulate does it
            shift = seg.astype(np.int64) * (npix + 1)
            reach = np.maximum.accumulate(hi + shift) - shift
        prev_end = np.zeros(key.size, dtype=np.int64)
        prev_end[1:] = reach[:-1]
        prev_end[new_group] = 0
        gap = lo > prev_end
        parts = [np.stack([key[gap], prev_end[gap], lo[gap] - prev_end[gap]], axis=1)]
        last = np.ones(key.size, dtype=bool)
        last[:-1] = key[1:] != key[:-1]
        tail = last & (reach < npix)
        parts.append(np.stack([key[tail], reach[tail], npix - reach[tail]], axis=1))
        absent = np.setdiff1d(np.arange(ngroups_total), key)
        parts.append(np.stack([absent, np.zeros_like(absent), np.full_like(absent, npix)], axis=1))
        rows = np.concatenate(parts)
        rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
        out = np.zeros(len(rows), MISSING_DTYPE)
        out["integration"] = rows[:, 0] // s.ngroups + 1
        out["group"] = rows[:, 0] % s.ngroups + 1
        out["first_pixel"] = rows[:, 1]
        out["count"] = rows[:, 2]
        return out


def reformat(path: Path, exposure_id: str, *, l0_version: int, l0_sha256: str | None = None,
             l0_complete: bool = True, max_bytes: int = 4 << 30, chunk_bytes: int = CHUNK_BYTES) -> Reformatted:
    """Read an L0 file and lay its exposure out as uncal (SCI, times, missing ranges).

    Raises :class:`~core.errors.ValidationError` (the record goes to the dead
    letters) when the file is not this exposure's packets, lacks its exposure
    start (no geometry), contradicts its geometry, or does not match
    ``l0_sha256``; OSError when it cannot be read.
    """
    placer = _Placer(exposure_id, max_bytes)
    decoder = StreamDecoder(None)
    digest = hashlib.sha256()
    skipped = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(chunk_bytes)
            if not chunk:
                break
            digest.update(chunk)
            out = decoder.feed(chunk)
            skipped += sum(len(s.data) for s in out.skipped)
            placer.add(out.data, out.packets)
    out = decoder.flush()
    skipped += sum(len(s.data) for s in out.skipped)
    placer.add(out.data, out.packets)
    sha = digest.hexdigest()
    if l0_sha256 and sha != l0_sha256:
        raise ValidationError(f"{path} has sha256 {sha[:16]}..., the L0 announcement says "
                              f"{l0_sha256[:16]}...: the file changed or is damaged")
    if skipped:
        raise ValidationError(f"{path}: {skipped} bytes are not packets; an L0 file holds whole packets only")
    if placer.start is None or placer.sci is None:
        raise ValidationError(f"L0 file of {exposure_id} has no exposure-start packet: the geometry "
                              "(NINTS, NGROUPS, subarray) is unknown, no uncal file can be made; a re-dump "
                              "of the start packet makes a new L0 version")
    s, tag = placer.start, placer.tag
    missing = placer.missing()
    sci = placer.sci
    flat = sci.values
    for i, g, a, n in zip(missing["integration"].tolist(), missing["group"].tolist(),
                          missing["first_pixel"].tolist(), missing["count"].tolist()):
        flat[i - 1, g - 1, a:a + n] = 0  # one slice per missing range (ranges, not pixels)
    name = DETECTORS[tag.detector]
    instrument = instrument_of(tag.detector)
    filt, pupil = nominal_optics(name)
    meta = UncalMeta(
        exposure_id=exposure_id, program=tag.program, observation=tag.observation, visit=tag.visit,
        visit_group=tag.visit_group, parallel_seq=tag.parallel_seq, activity=tag.activity,
        exposure=tag.exposure, instrument=instrument, detector=name, exp_type=s.exp_type,
        readpatt=s.readpatt, nints=s.nints, ngroups=s.ngroups, nframes=s.nframes, groupgap=s.groupgap,
        tframe=s.tframe_us * 1e-6, substrt1=s.substrt1, substrt2=s.substrt2, subsize1=s.subsize1,
        subsize2=s.subsize2, target=s.target, start_tai=float(placer.start_tai),  # type: ignore[arg-type]
        end_tai=0.0, filter=filt, pupil=pupil, l0_version=l0_version, l0_sha256=sha,
        l0_complete=l0_complete and not missing.size and placer.end_tai is not None,
        missing_pixels=int(missing["count"].sum()) if missing.size else 0,
        sdp_version=SOFTWARE_VERSION,
        module=(name[3] if instrument == "NIRCAM" else None),
        channel=(("LONG" if name.endswith("LONG") else "SHORT") if instrument == "NIRCAM" else None))
    end = placer.end_tai if placer.end_tai is not None else meta.start_tai + meta.nints * meta.tint
    meta = UncalMeta(**{**meta.to_dict(), "end_tai": float(end)})
    ends = placer.group_end
    assert ends is not None
    integ, group = np.meshgrid(np.arange(1, s.nints + 1), np.arange(1, s.ngroups + 1), indexing="ij")
    nominal = meta.nominal_group_end(integ.reshape(-1), group.reshape(-1))
    ends = np.where(np.isfinite(ends), ends, nominal).reshape(s.nints, s.ngroups)
    return Reformatted(meta, sci, ends, missing, placer.n_data, sha)
