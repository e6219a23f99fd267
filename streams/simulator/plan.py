"""The observing plan: programs, observations, visits and exposures on detectors.

Exposures are grouped in *activities*: the detectors one instrument reads out
in parallel with one configuration (NIRCam module A's four short-wave
detectors and its long-wave one, say), which the recorder interleaves. The
plan is drawn from the seed alone and sized to a byte budget (``--size`` /
``--duration``) or an exposure count (``--exposures``), shrinking the last
activity's ramps, subarray or detector set so the budget is not exceeded.

Readout timing follows docs/domain.md: NIRCam patterns with NFRAMES/GROUPGAP,
TGROUP = (NFRAMES + GROUPGAP) * TFRAME, and TFRAME from the H2RG frame clock
(10 us per pixel, 12 extra columns per row, one extra row; four outputs at
full frame, one otherwise), which gives the full-frame 10.73677 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import SimulationError
from streams.packets import (
    DETECTOR_CODES,
    EXPOSURE_END_LEN,
    EXPOSURE_START_LEN,
    MAX_PIXELS_PER_PACKET,
    SCIENCE_DATA_HEADER_LEN,
    ExposureStart,
    ExposureTag,
)

#: one rendering step covers at most this many pixels (groups x frame), bounding memory
CHUNK_PIXELS = 1 << 22

NIRCAM_READOUTS = (("RAPID", 1, 0), ("BRIGHT1", 1, 1), ("BRIGHT2", 2, 0), ("SHALLOW2", 2, 3),
                   ("SHALLOW4", 4, 1), ("MEDIUM2", 2, 8), ("MEDIUM8", 8, 2), ("DEEP2", 2, 18),
                   ("DEEP8", 8, 12))

TARGETS = ("NGC 3132", "WASP-39", "SMACS 0723", "TRAPPIST-1", "NGC 3324", "Stephans Quintet",
           "Cartwheel Galaxy", "NGC 628", "Orion Bar", "Jupiter", "HD 141569", "GN-z11",
           "Abell 2744", "NGC 7469", "Westerlund 1", "M16 Pillars", "Crab Nebula", "Uranus")


@dataclass(frozen=True)
class InstrumentSet:
    """Detectors read out together with one configuration, and what they allow."""

    name: str
    detectors: tuple[str, ...]
    full: tuple[int, int]  # (nx, ny)
    subarrays: tuple[tuple[int, int], ...]  # (nx, ny), smallest first; weights below
    subarray_weights: tuple[float, ...]
    readouts: tuple[tuple[str, int, int], ...]  # (READPATT, NFRAMES, GROUPGAP)
    ngroups: tuple[int, int]
    nints: tuple[int, int]
    exp_type_full: str
    exp_type_sub: str
    weight: float
    miri: bool = False


INSTRUMENT_SETS: tuple[InstrumentSet, ...] = (
    InstrumentSet("NIRCAM_A", ("NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCALONG"), (2048, 2048),
                  ((64, 64), (160, 160), (320, 320), (400, 400), (640, 640), (2048, 2048)),
                  (1, 1.5, 1.5, 1, 1.5, 3.5), NIRCAM_READOUTS, (2, 10), (1, 3),
                  "NRC_IMAGE", "NRC_IMAGE", 2.0),
    InstrumentSet("NIRCAM_B", ("NRCB1", "NRCB2", "NRCB3", "NRCB4", "NRCBLONG"), (2048, 2048),
                  ((64, 64), (160, 160), (320, 320), (400, 400), (640, 640), (2048, 2048)),
                  (1, 1.5, 1.5, 1, 1.5, 3.5), NIRCAM_READOUTS, (2, 10), (1, 3),
                  "NRC_IMAGE", "NRC_IMAGE", 1.5),
    InstrumentSet("NIRCAM_AB", ("NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCALONG",
                                "NRCB1", "NRCB2", "NRCB3", "NRCB4", "NRCBLONG"), (2048, 2048),
                  ((160, 160), (320, 320), (640, 640), (2048, 2048)), (1, 1, 1, 3),
                  NIRCAM_READOUTS, (2, 8), (1, 2), "NRC_IMAGE", "NRC_IMAGE", 0.7),
    InstrumentSet("NIRCAM_TSO", ("NRCA3",), (2048, 2048), ((64, 64), (160, 160), (400, 400)),
                  (1, 1, 1), (("RAPID", 1, 0), ("BRIGHT2", 2, 0)), (2, 10), (3, 12),
                  "NRC_TSIMAGE", "NRC_TSIMAGE", 1.0),
    InstrumentSet("MIRI_IMAGER", ("MIRIMAGE",), (1032, 1024),
                  ((72, 64), (136, 128), (412, 256), (864, 512), (1032, 1024)), (1, 1, 1, 1, 3),
                  (("FAST", 1, 0),), (4, 25), (1, 3), "MIR_IMAGE", "MIR_IMAGE", 1.5, miri=True),
    InstrumentSet("MIRI_MRS", ("MIRIFUSHORT", "MIRIFULONG"), (1032, 1024), ((1032, 1024),), (1,),
                  (("FAST", 1, 0),), (4, 20), (1, 2), "MIR_MRS", "MIR_MRS", 1.0, miri=True),
    InstrumentSet("NIRISS", ("NIS",), (2048, 2048), ((64, 64), (80, 80), (2048, 256), (2048, 2048)),
                  (1, 1, 1, 2), (("NIS", 4, 0), ("NISRAPID", 1, 0)), (2, 10), (1, 3),
                  "NIS_IMAGE", "NIS_IMAGE", 1.2),
    InstrumentSet("NIRSPEC", ("NRS1", "NRS2"), (2048, 2048), ((512, 32), (2048, 32), (2048, 2048)),
                  (1, 1, 2), (("NRSRAPID", 1, 0), ("NRS", 4, 0)), (2, 10), (1, 3),
                  "NRS_MSASPEC", "NRS_FIXEDSLIT", 1.2),
    InstrumentSet("FGS", ("GUIDER1", "GUIDER2"), (2048, 2048), ((64, 64), (128, 128), (2048, 2048)),
                  (1, 1, 1), (("FGSRAPID", 1, 0), ("FGS", 4, 0)), (2, 8), (1, 2),
                  "FGS_IMAGE", "FGS_IMAGE", 0.6),
)


#: MIRI detector codes (1032 x 1024); every other detector is a 2048 x 2048 H2RG
MIRI_DETECTORS = frozenset((11, 12, 13))


def full_frame(detector: int) -> tuple[int, int]:
    """(nx, ny) of a detector's full frame."""
    return (1032, 1024) if detector in MIRI_DETECTORS else (2048, 2048)


def frame_time(nx: int, ny: int, full: tuple[int, int], miri: bool) -> float:
    """TFRAME in seconds for a subarray (docs/domain.md: NIRCam full frame 10.73677 s)."""
    if miri:  # MIRI full frame 2.775 s, row-clocked: scales with rows and (columns + overhead)
        return 2.775 * (ny / full[1]) * ((nx + 100) / (full[0] + 100))
    namps = 4 if (nx, ny) == full else 1
    return (nx / namps + 12) * (ny + 1) * 10e-6


def packets_per_group(npix: int) -> int:
    return -(-npix // MAX_PIXELS_PER_PACKET)


def group_bytes(npix: int) -> int:
    """Bytes of one group's data packets."""
    return 2 * npix + SCIENCE_DATA_HEADER_LEN * packets_per_group(npix)


@dataclass(frozen=True)
class ExposurePlan:
    """One exposure on one detector: tag, ExposureStart fields and timing."""

    index: int
    activity: int
    tag: ExposureTag
    header: ExposureStart
    start_tai: float

    @property
    def nx(self) -> int:
        return self.header.subsize1

    @property
    def ny(self) -> int:
        return self.header.subsize2

    @property
    def npix(self) -> int:
        return self.nx * self.ny

    @property
    def exposure_id(self) -> str:
        return self.tag.exposure_id

    @property
    def tframe(self) -> float:
        return self.header.tframe_us * 1e-6

    @property
    def tgroup(self) -> float:
        return (self.header.nframes + self.header.groupgap) * self.tframe

    @property
    def tint(self) -> float:
        """Integration duration including its reset frame."""
        return self.header.ngroups * self.tgroup + self.tframe

    @property
    def duration(self) -> float:
        return self.header.nints * self.tint

    @property
    def packets_per_group(self) -> int:
        return packets_per_group(self.npix)

    @property
    def data_packets(self) -> int:
        return self.header.nints * self.header.ngroups * self.packets_per_group

    @property
    def packets(self) -> int:
        return self.data_packets + 2

    @property
    def l0_bytes(self) -> int:
        return (EXPOSURE_START_LEN + EXPOSURE_END_LEN
                + self.header.nints * self.header.ngroups * group_bytes(self.npix))

    @property
    def chunk_groups(self) -> int:
        """Groups rendered per step (whole groups, at most CHUNK_PIXELS pixels)."""
        return max(1, min(self.header.ngroups, CHUNK_PIXELS // self.npix))

    def group_time(self, integration: int, group: int) -> float:
        """TAI time at the end of a group (1-based integration and group)."""
        return (self.start_tai + (integration - 1) * self.tint + self.tframe
                + group * self.tgroup - self.header.groupgap * self.tframe)

    def chunks(self) -> list[tuple[int, int, int]]:
        """Rendering steps in canonical order: (integration, first group, end group), 1-based, end exclusive."""
        g = self.chunk_groups
        return [(i, g0, min(g0 + g, self.header.ngroups + 1))
                for i in range(1, self.header.nints + 1)
                for g0 in range(1, self.header.ngroups + 1, g)]


@dataclass(frozen=True)
class Activity:
    index: int
    exposures: tuple[ExposurePlan, ...]

    @property
    def start_tai(self) -> float:
        return self.exposures[0].start_tai

    @property
    def end_tai(self) -> float:
        return max(e.start_tai + e.duration for e in self.exposures)


@dataclass(frozen=True)
class Plan:
    activities: tuple[Activity, ...]

    @property
    def exposures(self) -> list[ExposurePlan]:
        return [e for a in self.activities for e in a.exposures]

    @property
    def bytes(self) -> int:
        return sum(e.l0_bytes for e in self.exposures)

    @property
    def start_tai(self) -> float:
        return self.activities[0].start_tai

    @property
    def end_tai(self) -> float:
        return max(a.end_tai for a in self.activities)


@dataclass
class _Config:
    """A sampled configuration before it becomes ExposurePlans (mutable while fitting)."""

    iset: InstrumentSet
    detectors: list[str]
    sub: int  # index into iset.subarrays
    readout: tuple[str, int, int]
    ngroups: int
    nints: int
    target: str
    substrt: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.iset.subarrays[self.sub]

    def exposure_bytes(self) -> int:
        nx, ny = self.size
        return (EXPOSURE_START_LEN + EXPOSURE_END_LEN
                + self.nints * self.ngroups * group_bytes(nx * ny))

    def bytes(self) -> int:
        return len(self.detectors) * self.exposure_bytes()

    def duration(self) -> float:
        nx, ny = self.size
        tf = frame_time(nx, ny, self.iset.full, self.iset.miri)
        return self.nints * (self.ngroups * (self.readout[1] + self.readout[2]) * tf + tf)

    def shrink_to(self, budget: int, rng: np.random.Generator) -> bool:
        """Reduce ramps, then subarray, then detectors until the bytes fit; False if impossible."""
        while self.bytes() > budget:
            per_group = len(self.detectors) * group_bytes(self.size[0] * self.size[1])
            fixed = len(self.detectors) * (EXPOSURE_START_LEN + EXPOSURE_END_LEN)
            groups_fit = (budget - fixed) // per_group if budget > fixed else 0
            if groups_fit >= 1:
                self.nints = max(1, min(self.nints, groups_fit // self.ngroups))
                self.ngroups = max(1, min(self.ngroups, groups_fit // self.nints))
                continue
            if self.sub > 0:
                self.sub -= 1
                self.substrt = _substrt(self.iset, self.size, rng)
                continue
            if len(self.detectors) > 1:
                self.detectors = self.detectors[:-1]
                continue
            return False
        return True


def _substrt(iset: InstrumentSet, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """1-based subarray corner inside the full frame, on a 4-pixel grid."""
    (fx, fy), (nx, ny) = iset.full, size
    return (1 + 4 * int(rng.integers(0, (fx - nx) // 4 + 1)),
            1 + 4 * int(rng.integers(0, (fy - ny) // 4 + 1)))


def allowed_sets(detectors: tuple[str, ...] | None, max_side: int) -> list[tuple[InstrumentSet, int]]:
    """Instrument sets usable with these detectors and subarray limit, with their largest subarray index."""
    out = []
    for iset in INSTRUMENT_SETS:
        dets = tuple(d for d in iset.detectors if detectors is None or d in detectors)
        fits = [i for i, (nx, ny) in enumerate(iset.subarrays) if max(nx, ny) <= max_side]
        if dets and fits:
            out.append((InstrumentSet(**{**iset.__dict__, "detectors": dets}), max(fits)))
    return out


def make_plan(seed: int, *, budget_bytes: int | None = None, exposures: int | None = None,
              detectors: tuple[str, ...] | None = None, max_side: int = 2048,
              end_tai: float = 0.0) -> Plan:
    """Draw a plan whose recorded science fits ``budget_bytes`` or has ``exposures`` exposures.

    Exposures end before ``end_tai`` (the contact start): the dump replays
    observations already made.
    """
    if (budget_bytes is None) == (exposures is None):
        raise SimulationError("a plan needs either a byte budget or an exposure count")
    sets = allowed_sets(detectors, max_side)
    if not sets:
        raise SimulationError(f"no instrument can observe with detectors {detectors} and "
                              f"--max-subarray {max_side}; widen one of them")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x504C414E]))
    weights = np.array([s.weight for s, _ in sets])
    weights /= weights.sum()
    remaining = budget_bytes
    drafts: list[tuple[float, _Config, tuple[int, int, int, int, int, int]]] = []
    count = 0
    t = 0.0
    program = 0
    observations: dict[int, int] = {}  # program -> last observation number used
    done = False
    while not done:
        if program == 0 or rng.random() < 0.35:
            program = int(rng.integers(1000, 7000))
        observation = observations[program] = observations.get(program, 0) % 999 + 1
        for visit in range(1, int(rng.integers(1, 3)) + 1):
            t += float(rng.uniform(300, 1800))  # slew and acquisition
            iset, top = sets[int(rng.choice(len(sets), p=weights))]
            target = TARGETS[int(rng.integers(len(TARGETS)))]
            for activity in range(1, int(rng.integers(1, 3)) + 1):
                cfg = _sample_config(iset, top, target, rng)
                for expnum in range(1, int(rng.integers(1, 5)) + 1):
                    c = _Config(**{**cfg.__dict__, "detectors": list(cfg.detectors)})
                    if exposures is not None:
                        c.detectors = c.detectors[: exposures - count]
                    elif not c.shrink_to(remaining, rng):
                        done = True
                        break
                    tag_base = (program, observation, visit, 1, 1, activity)
                    drafts.append((t, c, tag_base + (expnum,)))  # type: ignore[arg-type]
                    count += len(c.detectors)
                    if remaining is not None:
                        remaining -= c.bytes()
                    t += c.duration() + float(rng.uniform(20, 90))
                    if (exposures is not None and count >= exposures) or (
                            remaining is not None and remaining < _smallest_bytes(sets)):
                        done = True
                        break
                if done:
                    break
            if done:
                break
    if not drafts:
        raise SimulationError(f"a contact of {budget_bytes} bytes cannot hold even one exposure; "
                              "ask for a larger --size or --duration")
    base = end_tai - t - 600.0  # observations end ten minutes before the contact starts
    activities = []
    index = 0
    for a_index, (t0, c, tag_fields) in enumerate(drafts):
        nx, ny = c.size
        tframe_us = round(frame_time(nx, ny, c.iset.full, c.iset.miri) * 1e6)
        exp_type = c.iset.exp_type_full if c.size == c.iset.full else c.iset.exp_type_sub
        ppg = packets_per_group(nx * ny)
        exps = []
        for det in c.detectors:
            tag = ExposureTag(*tag_fields[:6], tag_fields[6], DETECTOR_CODES[det])
            header = ExposureStart(
                nints=c.nints, ngroups=c.ngroups, nframes=c.readout[1], groupgap=c.readout[2],
                substrt1=c.substrt[0], substrt2=c.substrt[1], subsize1=nx, subsize2=ny,
                expected_packets=c.nints * c.ngroups * ppg, tframe_us=tframe_us,
                readpatt=c.readout[0], exp_type=exp_type, target=c.target)
            exps.append(ExposurePlan(index, a_index, tag, header, base + t0))
            index += 1
        activities.append(Activity(a_index, tuple(exps)))
    return Plan(tuple(activities))


def _smallest_bytes(sets: list[tuple[InstrumentSet, int]]) -> int:
    return min(EXPOSURE_START_LEN + EXPOSURE_END_LEN + group_bytes(nx * ny)
               for s, _ in sets for nx, ny in s.subarrays[:1])


def _sample_config(iset: InstrumentSet, top: int, target: str, rng: np.random.Generator) -> _Config:
    w = np.array(iset.subarray_weights[: top + 1], dtype=float)
    sub = int(rng.choice(top + 1, p=w / w.sum()))
    readout = iset.readouts[int(rng.integers(len(iset.readouts)))]
    lo, hi = iset.ngroups
    if readout[0].startswith("DEEP"):
        hi = min(hi, 6)
    ngroups = int(rng.integers(lo, hi + 1))
    nlo, nhi = iset.nints
    nints = nlo if nhi == nlo else int(min(nhi, nlo + math.floor(rng.exponential(1.0))))
    return _Config(iset, list(iset.detectors), sub, readout, ngroups, nints, target,
                   _substrt(iset, iset.subarrays[sub], rng))
