"""Synthetic exposures with known truth for the calibration tests.

Ramps are rendered here, independently of the simulator's code, from the
documented signal chain of streams.simulator.detector (docs/simulator.md):
frames accumulate Poisson electrons of (rate * flat + dark) * gain, cosmic rays
add charge at a random frame, the measured signal is S - beta S^2 above the
superbias, a group averages NFRAMES frames and gets read noise / sqrt(NFRAMES),
and the electronics clip at the well. Calibrating with the reference files
made from the same model must give back ``rate * flat`` in DN/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from products.fits.uncal import MISSING_DTYPE, SciBuffer, UncalMeta, write_uncal
from streams.simulator.detector import detector_model

TFRAME_FULL = 10.73677


@dataclass
class Truth:
    rate: np.ndarray          # DN/s before the flat (what the sky gives)
    expected: np.ndarray      # DN/s a perfect rate product shows: rate * flat (0 for dead pixels)
    cr: np.ndarray            # bool (nints, ny, nx): a cosmic ray hit in that integration
    saturated: np.ndarray     # bool (ny, nx): the ramp reaches the saturation threshold
    dead: np.ndarray          # bool (ny, nx): dead or reference pixel
    photmjsr: float
    meta: UncalMeta


def make_meta(detector: str = "NRCA1", *, substrt: tuple[int, int] = (101, 201),
              size: tuple[int, int] = (64, 48), nints: int = 1, ngroups: int = 10,
              nframes: int = 1, groupgap: int = 0, exposure: int = 1, visit: int = 1,
              program: int = 1234, target: str = "NGC 1234", tframe: float | None = None,
              readpatt: str = "RAPID") -> UncalMeta:
    model = detector_model(detector)
    if tframe is None:   # frame time scales with the subarray size, as on the detector
        full = model.full[0] * model.full[1]
        tframe = TFRAME_FULL * (size[0] * size[1]) / full if size != model.full else TFRAME_FULL
        tframe = max(tframe, 0.05)
    start = 2.1e9 + exposure * 1000.0
    tint = ngroups * (nframes + groupgap) * tframe + tframe
    exp_type = "NRC_IMAGE" if model.instrument == "NIRCAM" else "MIR_IMAGE"
    return UncalMeta(
        exposure_id=f"jw{program:05d}001{visit:03d}_03101_{exposure:05d}_{detector.lower()}",
        program=program, observation=1, visit=visit, visit_group=3, parallel_seq=1, activity=1,
        exposure=exposure, instrument=model.instrument, detector=detector, exp_type=exp_type,
        readpatt=readpatt, nints=nints, ngroups=ngroups, nframes=nframes, groupgap=groupgap,
        tframe=tframe, substrt1=substrt[0], substrt2=substrt[1], subsize1=size[0], subsize2=size[1],
        target=target, start_tai=start, end_tai=start + nints * tint, filter=model.filter,
        pupil=model.pupil, sdp_version="test", module="A" if detector.startswith("NRCA") else None,
        channel="SHORT" if detector.startswith("NRC") and not detector.endswith("LONG") else None)


def render(meta: UncalMeta, *, seed: int = 7, rate: np.ndarray | None = None,
           cr_per_int: float = 0.02, bright_fraction: float = 0.02,
           missing: list[tuple[int, int, int, int]] | None = None) -> tuple[np.ndarray, Truth]:
    """uint16 SCI (NINTS, NGROUPS, NY, NX) and the truth for ``meta``."""
    rng = np.random.default_rng(seed)
    model = detector_model(meta.detector)
    maps = model.maps(meta.substrt1, meta.substrt2, meta.subsize1, meta.subsize2)
    ny, nx = meta.subsize2, meta.subsize1
    if rate is None:
        rate = np.exp(rng.uniform(np.log(0.5), np.log(200.0), (ny, nx))).astype(np.float32)
        bright = rng.random((ny, nx)) < bright_fraction   # these saturate within the ramp
        t_end = meta.ngroups * (meta.nframes + meta.groupgap) * meta.tframe
        rate[bright] = (maps.signal_range[bright] * rng.uniform(1.2, 3.0, bright.sum()) / t_end)
    alive = maps.alive
    flux = np.where(alive, rate * maps.flat, 0).astype(np.float64)
    e_rate = (flux + maps.dark) * maps.gain          # electrons per second
    step = meta.nframes + meta.groupgap
    nfr = meta.ngroups * step
    out = np.empty((meta.nints, meta.ngroups, ny, nx), dtype=np.uint16)
    cr = np.zeros((meta.nints, ny, nx), bool)
    beta = maps.beta.astype(np.float64)
    for i in range(meta.nints):
        e = np.zeros((ny, nx))
        hit = rng.random((ny, nx)) < cr_per_int
        hit_frame = rng.integers(1, nfr, (ny, nx))
        hit_e = rng.uniform(300, 3000, (ny, nx)) * maps.gain
        cr[i] = hit
        frames_sum = np.zeros((meta.ngroups, ny, nx))
        for k in range(nfr):
            e += rng.poisson(e_rate * meta.tframe)
            e += np.where(hit & (hit_frame == k), hit_e, 0)
            g, j = divmod(k, step)
            if j < meta.nframes:
                s = e / maps.gain
                frames_sum[g] += s - beta * s * s
        groups = frames_sum / meta.nframes + maps.superbias
        groups += rng.standard_normal(groups.shape) * (maps.readnoise / np.sqrt(meta.nframes))
        np.minimum(groups, maps.well, out=groups)
        out[i] = np.clip(np.round(groups), 0, 65535).astype(np.uint16)
    saturated = (out >= maps.saturation).any(axis=(0, 1))
    truth = Truth(rate=rate, expected=flux.astype(np.float32), cr=cr, saturated=saturated,
                  dead=~alive, photmjsr=model.photmjsr, meta=meta)
    return out, truth


def missing_rows(ranges: list[tuple[int, int, int, int]]) -> np.ndarray:
    """MISSING rows from (integration, group, first_pixel, count) tuples (1-based int/group)."""
    m = np.zeros(len(ranges), MISSING_DTYPE)
    for k, (i, g, a, n) in enumerate(ranges):
        m[k] = (i, g, a, n)
    return m


def write_exposure(folder: Path, meta: UncalMeta, sci: np.ndarray,
                   missing: np.ndarray | None = None) -> Path:
    path = Path(folder) / f"{meta.exposure_id}_uncal.fits"
    if missing is not None and missing.size:
        flat = sci.reshape(meta.nints, meta.ngroups, -1)
        for i, g, a, n in missing.tolist():
            flat[i - 1, g - 1, a:a + n] = 0       # what l1b leaves where no packet came
    write_uncal(path, meta, SciBuffer.from_values(sci), missing=missing)
    return path
