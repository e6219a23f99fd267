"""Packet identity and validation within one exposure (pure numpy, no I/O).

Identity. A science packet of an exposure is identified by its kind and, for
data, (integration, group, pixel offset). The three data fields are 16, 16
and 32 bits wide in the packet, so they fill one uint64 exactly:
``integration << 48 | group << 32 | pixel_offset``. The start packet is 0
and the end packet is 2**64 - 1; a data packet with integration >= 1 (the
format is 1-based, checked before an identity is used) can be neither, so no
two different (kind, integration, group, offset) ever share an identity, and
sorting identities gives the canonical L0 order.

Validation. Every packet is first checked on its own (kind, length, pixel
count, 1-based numbering, offset on the packet grid, tag equal to the run's
exposure id). A start packet's geometry is checked against the format and
the configured limits (:class:`Geometry`). Data packets are then checked
against their exposure's geometry: integration <= NINTS, group <= NGROUPS,
offset + count <= SUBSIZE1 x SUBSIZE2 and count equal to what the grid
says for that offset. Each rejection has a fixed reason string (a metric
label) so operators can tell the classes apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.decoder import PacketIndex
from streams.packets import (EXPOSURE_END_LEN, EXPOSURE_START_LEN, MAX_PIXELS_PER_PACKET,
                             SCIENCE_DATA_HEADER_LEN, ExposureStart, ExposureTag, Kind,
                             instrument_of, science_data_length)

START_KEY = np.uint64(0)
END_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
#: pixels per data packet except the last of a group: offsets are multiples of it
PACKET_GRID = MAX_PIXELS_PER_PACKET

# --- rejection reasons (fixed strings) ---------------------------------------------------------
OK = ""
R_KIND = "not a science packet kind (2, 3 or 4)"
R_LENGTH = "packet length does not match its kind or pixel count"
R_NUMBERING = "integration or group is 0 (they are 1-based)"
R_GRID = "pixel offset is not on the packet grid (a multiple of 4000)"
R_TAG = "packet tag does not match the exposure id of its run"
R_INTEGRATION = "integration > NINTS of the exposure start"
R_GROUP = "group > NGROUPS of the exposure start"
R_PIXELS = "pixel offset + count > SUBSIZE1 x SUBSIZE2 of the exposure start"
R_COUNT = "pixel count differs from what the packet grid gives for its offset"
R_BAD_START = "exposure start geometry invalid"

#: the first 38 bytes of a science packet (kind-specific fields are garbage for kinds 2 and 4)
_HEADER = np.dtype([
    ("w0", ">u2"), ("w1", ">u2"), ("length", ">u2"), ("coarse", ">u4"), ("fine", ">u2"),
    ("source", "u1"), ("kind", "u1"), ("program", ">u4"), ("observation", ">u2"), ("visit", ">u2"),
    ("visit_group", "u1"), ("parallel_seq", "u1"), ("activity", "u1"), ("exposure", ">u2"),
    ("detector", "u1"), ("integration", ">u2"), ("group", ">u2"), ("pixel_offset", ">u4"),
    ("pixel_count", ">u2"),
])


def identity(index: PacketIndex) -> np.ndarray:
    """Collision-free uint64 identity of each packet (sorting it gives canonical order)."""
    kind = index.kind
    data = ((index.integration.astype(np.uint64) << np.uint64(48))
            | (index.group.astype(np.uint64) << np.uint64(32))
            | index.pixel_offset.astype(np.uint64))
    return np.where(kind == Kind.EXPOSURE_START, START_KEY,
                    np.where(kind == Kind.EXPOSURE_END, END_KEY, data)).astype(np.uint64)


def split_identity(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(kind, integration, group, pixel offset) of identities (inverse of :func:`identity`)."""
    keys = np.asarray(keys, dtype=np.uint64)
    kind = np.where(keys == START_KEY, int(Kind.EXPOSURE_START),
                    np.where(keys == END_KEY, int(Kind.EXPOSURE_END), int(Kind.SCIENCE_DATA)))
    data = kind == Kind.SCIENCE_DATA
    integ = np.where(data, keys >> np.uint64(48), 0).astype(np.int64)
    group = np.where(data, (keys >> np.uint64(32)) & np.uint64(0xFFFF), 0).astype(np.int64)
    off = np.where(data, keys & np.uint64(0xFFFF_FFFF), 0).astype(np.int64)
    return kind.astype(np.int64), integ, group, off


def detector_shape(detector: int) -> tuple[int, int]:
    """(columns, rows) of a detector: MIRI is 1032 x 1024, every other one 2048 x 2048."""
    return (1032, 1024) if instrument_of(detector) == "MIRI" else (2048, 2048)


@dataclass(frozen=True)
class Limits:
    """Configured bounds on an exposure start (settings.l0)."""

    max_nints: int = 1000
    max_ngroups: int = 1000
    max_exposure_bytes: int = 4 << 30

    @classmethod
    def from_settings(cls, l0) -> "Limits":
        return cls(l0.max_nints, l0.max_ngroups, l0.max_exposure_bytes)


@dataclass(frozen=True)
class Geometry:
    """The expected data packets of an exposure, derived from its start packet."""

    nints: int
    ngroups: int
    npix: int
    #: data packets per (integration, group)
    per_group: int

    @property
    def expected(self) -> int:
        return self.nints * self.ngroups * self.per_group

    @classmethod
    def check(cls, start: ExposureStart, detector: int, limits: Limits) -> "Geometry | str":
        """The geometry, or the reason the start packet cannot be trusted."""
        s = start
        if min(s.nints, s.ngroups, s.nframes) < 1:
            return f"{R_BAD_START}: NINTS, NGROUPS and NFRAMES must be >= 1 " \
                   f"(got {s.nints}, {s.ngroups}, {s.nframes})"
        if s.subsize1 < 1 or s.subsize2 < 1:
            return f"{R_BAD_START}: empty subarray {s.subsize1}x{s.subsize2}"
        cols, rows = detector_shape(detector)
        if (s.substrt1 < 1 or s.substrt2 < 1 or s.substrt1 + s.subsize1 - 1 > cols
                or s.substrt2 + s.subsize2 - 1 > rows):
            return (f"{R_BAD_START}: subarray {s.subsize1}x{s.subsize2} at ({s.substrt1}, "
                    f"{s.substrt2}) does not fit the {cols}x{rows} detector")
        if s.nints > limits.max_nints or s.ngroups > limits.max_ngroups:
            return (f"{R_BAD_START}: NINTS={s.nints}, NGROUPS={s.ngroups} above the limits "
                    f"{limits.max_nints}, {limits.max_ngroups} (settings l0_max_nints/_ngroups)")
        npix = s.subsize1 * s.subsize2
        size = s.nints * s.ngroups * npix * 2
        if size > limits.max_exposure_bytes:
            return (f"{R_BAD_START}: {size} bytes of pixels above l0_max_exposure_bytes "
                    f"{limits.max_exposure_bytes}")
        per_group = -(-npix // PACKET_GRID)
        if s.expected_packets != s.nints * s.ngroups * per_group:
            return (f"{R_BAD_START}: expected data packets {s.expected_packets} differs from "
                    f"NINTS x NGROUPS x ceil(npix / {PACKET_GRID}) = "
                    f"{s.nints * s.ngroups * per_group}")
        return cls(s.nints, s.ngroups, npix, per_group)

    def expected_keys(self) -> np.ndarray:
        """Identities of every expected data packet, sorted."""
        offsets = np.arange(self.per_group, dtype=np.uint64) * np.uint64(PACKET_GRID)
        ig = ((np.arange(1, self.nints + 1, dtype=np.uint64)[:, None] << np.uint64(48))
              | (np.arange(1, self.ngroups + 1, dtype=np.uint64)[None, :] << np.uint64(32)))
        return (ig.reshape(-1, 1) | offsets[None, :]).ravel()

    def count_of(self, offset: np.ndarray) -> np.ndarray:
        """Pixel count the grid gives a packet at ``offset``."""
        return np.minimum(PACKET_GRID, self.npix - offset.astype(np.int64))

    def check_data(self, index: PacketIndex) -> np.ndarray:
        """Reason per packet ('' = fits) for data packets against this geometry."""
        return self.check_fields(index.kind, index.integration, index.group,
                                 index.pixel_offset, index.pixel_count)

    def check_fields(self, kind: np.ndarray, integration: np.ndarray, group: np.ndarray,
                     offset: np.ndarray, count: np.ndarray) -> np.ndarray:
        reasons = np.full(len(kind), OK, dtype=object)
        data = np.asarray(kind) == Kind.SCIENCE_DATA
        off = np.asarray(offset).astype(np.int64)
        cnt = np.asarray(count).astype(np.int64)
        checks = (
            (R_INTEGRATION, np.asarray(integration).astype(np.int64) > self.nints),
            (R_GROUP, np.asarray(group).astype(np.int64) > self.ngroups),
            (R_PIXELS, off + cnt > self.npix),
            (R_COUNT, cnt != self.count_of(off)),
        )
        for reason, bad in reversed(checks):  # the first failing check names the reason
            reasons[data & bad] = reason
        return reasons


def index_mismatch(index: PacketIndex, packets: bytes | memoryview) -> str | None:
    """Why a run's index does not describe its packet bytes, or None when it does.

    The identity and validation use the index columns, the L0 file gets the
    bytes: a record whose two disagree (a hand-made or corrupt ``tlm.sci``
    record) must not reach an assembly. Vectorized: the header, tag and data
    fields are gathered from the bytes at the index offsets and compared.
    """
    n = len(index)
    if n == 0:
        return None
    buf = np.frombuffer(packets, dtype=np.uint8)
    off = index.offset.astype(np.int64)
    length = index.length.astype(np.int64)
    if int(off.min()) < 0 or int((off + length).max()) > len(buf) or int(length.min()) < 34:
        return f"the run's index points outside its {len(buf)} packet bytes"
    rows = buf[np.minimum(off[:, None] + np.arange(_HEADER.itemsize), len(buf) - 1)]
    h = np.ascontiguousarray(rows).view(_HEADER).ravel()
    data = index.kind == Kind.SCIENCE_DATA
    if np.any(data & (length < SCIENCE_DATA_HEADER_LEN)):
        return "a data packet of the run's index is shorter than its header"
    checks = (
        ("apid", h["w0"] & 0x7FF, index.apid), ("sequence count", h["w1"] & 0x3FFF, index.seq),
        ("length", h["length"].astype(np.int64) + 7, length), ("time", h["coarse"], index.coarse),
        ("fine time", h["fine"], index.fine), ("source", h["source"], index.source),
        ("kind", h["kind"], index.kind), ("program", h["program"], index.program),
        ("observation", h["observation"], index.observation), ("visit", h["visit"], index.visit),
        ("visit group", h["visit_group"], index.visit_group),
        ("parallel sequence", h["parallel_seq"], index.parallel_seq),
        ("activity", h["activity"], index.activity), ("exposure", h["exposure"], index.exposure),
        ("detector", h["detector"], index.detector),
    )
    for name, from_bytes, from_index in checks:
        if not np.array_equal(from_bytes, from_index):
            return f"the run's index disagrees with its packet bytes ({name})"
    if data.any():
        for name in ("integration", "group", "pixel_offset", "pixel_count"):
            if not np.array_equal(h[name][data], getattr(index, name)[data]):
                return f"the run's index disagrees with its packet bytes ({name.replace('_', ' ')})"
    return None


def check_packets(index: PacketIndex, tag: ExposureTag) -> np.ndarray:
    """Reason per packet ('' = fits) for checks that need no exposure start."""
    reasons = np.full(len(index), OK, dtype=object)
    kind = index.kind
    data = kind == Kind.SCIENCE_DATA
    length = index.length.astype(np.int64)
    want_len = np.where(kind == Kind.EXPOSURE_START, EXPOSURE_START_LEN,
                        np.where(kind == Kind.EXPOSURE_END, EXPOSURE_END_LEN,
                                 science_data_length(index.pixel_count.astype(np.int64))))
    tag_ok = ((index.program == tag.program) & (index.observation == tag.observation)
              & (index.visit == tag.visit) & (index.visit_group == tag.visit_group)
              & (index.parallel_seq == tag.parallel_seq) & (index.activity == tag.activity)
              & (index.exposure == tag.exposure) & (index.detector == tag.detector))
    checks = (
        (R_KIND, (kind < Kind.EXPOSURE_START) | (kind > Kind.EXPOSURE_END)),
        (R_TAG, ~tag_ok),
        (R_LENGTH, (length != want_len) | (data & ((index.pixel_count < 1)
                                                   | (index.pixel_count > MAX_PIXELS_PER_PACKET)))),
        (R_NUMBERING, data & ((index.integration < 1) | (index.group < 1))),
        (R_GRID, data & (index.pixel_offset.astype(np.int64) % PACKET_GRID != 0)),
    )
    for reason, bad in reversed(checks):
        reasons[bad] = reason
    return reasons
