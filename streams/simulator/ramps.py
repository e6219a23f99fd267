"""Synthetic up-the-ramp pixel data through the physical detector model, vectorized and fast.

Each exposure gets an injected count-rate image (sky and point sources with a
Gaussian PSF: :func:`scene_rate`, the truth calibration is checked against)
and, group after group, the signal chain of :mod:`streams.simulator.detector`:
rate * flat (0 on dead and reference pixels) + dark current, Poisson noise of
the electrons (gain), cosmic-ray jumps, the full-well clip, the quadratic
non-linearity, the superbias and the read noise; the output is uint16 as the
detector electronics deliver it.

Speed comes from never drawing fresh random normals per pixel: one pool of
float32 standard normals (``NoisePool``) is drawn per simulation and every
group takes a slice of it at a random offset. Shot noise uses the normal
approximation of the Poisson increment (sqrt(mean / gain) * N(0,1) in DN);
everything stays float32 and is done in cache-sized pixel blocks. Values are
above ``PIXEL_FLOOR`` by construction (the lowest bias is far above it) so no pixel's high byte
equals a packet header's first byte (0x08-0x0F): header-like patterns inside
pixel data, which a resynchronising decoder must reject, stay rare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streams.simulator.detector import (
    MODEL_SEED,
    MODEL_VERSION,
    NONLINEARITY_AT_WELL,
    DetectorModel,
    detector_model,
)
from streams.simulator.plan import MIRI_DETECTORS, ExposurePlan

#: lowest pixel value written (0x1400); bias levels are ~11000-15000 DN
PIXEL_FLOOR = 0x1400
PIXEL_MAX = 65535
#: cosmic-ray hits per pixel per second (~5 /cm^2/s on 18 um pixels)
CR_RATE = 1.6e-5
#: float32 values per rendering block (groups x pixels), sized to stay in cache
BLOCK_VALUES = 1 << 15
#: model arrays kept per simulation for windows that repeat (~117 MB per 2048^2 window)
MODEL_CACHE_BYTES = 1 << 30
#: cosmic-ray hits listed per exposure in the truth file (the count is always complete)
CR_SAMPLE = 64


class NoisePool:
    """A reusable pool of float32 standard normals; slices at random offsets are the noise."""

    def __init__(self, seed: int, size: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E4F4953]))
        self.values = rng.standard_normal(size, dtype=np.float32)

    def take(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if n > self.values.size:
            raise ValueError(f"noise pool of {self.values.size} values cannot serve {n}")
        start = int(rng.integers(0, self.values.size - n + 1))
        return self.values[start:start + n]


class Workspace:
    """Scratch buffers and recycled per-exposure arrays (one rendering at a time).

    Large arrays are reused rather than re-allocated: a fresh multi-MB numpy
    array costs a page fault per 4 KiB on first touch, more than the arithmetic.
    """

    def __init__(self) -> None:
        self._a = np.empty(0, dtype=np.float32)
        self._b = np.empty(0, dtype=np.float32)
        self._free: dict[tuple[int, str], list[np.ndarray]] = {}

    def buffers(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        n = shape[0] * shape[1]
        if self._a.size < n:
            self._a = np.empty(n, dtype=np.float32)
            self._b = np.empty(n, dtype=np.float32)
        return self._a[:n].reshape(shape), self._b[:n].reshape(shape)

    def take(self, n: int, dtype: type = np.float32) -> np.ndarray:
        """A 1-D array of n elements (contents undefined), recycled when possible."""
        free = self._free.get((n, np.dtype(dtype).str))
        return free.pop() if free else np.empty(n, dtype=dtype)

    def give(self, *arrays: np.ndarray) -> None:
        """Return arrays from ``take`` for reuse (keeps a few per size)."""
        for a in arrays:
            free = self._free.setdefault((a.size, a.dtype.str), [])
            if len(free) < 24:
                free.append(a)


@dataclass
class ModelArrays:
    """The detector model over one exposure window, as the renderer uses it (read-only, shared).

    Exposures on the same detector and window share one set (read noise is per
    frame; the renderer scales it for NFRAMES), so the model is evaluated once
    per window, not once per exposure.
    """

    bias: np.ndarray  # DN
    clip: np.ndarray  # linear DN where the electronics clip
    beta: np.ndarray  # 1/DN non-linearity
    read_noise: np.ndarray  # DN per frame read
    response: np.ndarray  # flat, 0 on dead and reference pixels
    dark: np.ndarray  # DN/s
    inv_gain: np.ndarray  # DN/e
    users: int = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.bias, self.clip, self.beta, self.read_noise, self.response, self.dark, self.inv_gain)


class DetectorPatterns:
    """What is shared by the exposures of one simulation: detector models, their arrays, a truth ledger.

    The models (``streams.simulator.detector``) are per detector and do not
    depend on the simulation seed: every simulation observes with the same
    detectors "as built", which the reference files of ``downlink refs make``
    describe. Model arrays are kept per (detector, window) in a least-recently
    used cache of MODEL_CACHE_BYTES (never evicting arrays in use), handed back
    to the workspace when evicted. The ledger keeps, per exposure,
    what the truth file records about its ramps (cosmic rays).
    """

    def __init__(self, seed: int, pool: NoisePool, model_seed: int = MODEL_SEED) -> None:
        self.seed = seed
        self.pool = pool
        self.model_seed = model_seed
        self.ledger: dict[int, dict] = {}
        self._arrays: dict[tuple[int, int, int, int, int], ModelArrays] = {}  # insertion = LRU order
        self._bytes = 0

    def model(self, detector: int) -> DetectorModel:
        return detector_model(detector, self.model_seed)

    def acquire(self, exposure: ExposurePlan, workspace: Workspace) -> ModelArrays:
        h = exposure.header
        key = (exposure.tag.detector, h.substrt1, h.substrt2, h.subsize1, h.subsize2)
        entry = self._arrays.pop(key, None)
        if entry is None:
            entry = self._evaluate(exposure, workspace)
            self._bytes += entry.nbytes
        self._arrays[key] = entry  # most recently used last
        entry.users += 1
        for k in [k for k, v in self._arrays.items() if v.users == 0]:
            if self._bytes <= MODEL_CACHE_BYTES:
                break
            old = self._arrays.pop(k)
            self._bytes -= old.nbytes
            workspace.give(*old.arrays())
        return entry

    def release(self, entry: ModelArrays) -> None:
        entry.users -= 1

    def _evaluate(self, exposure: ExposurePlan, workspace: Workspace) -> ModelArrays:
        """The model over the exposure's window (only the rows it covers are generated)."""
        h = exposure.header
        return self._window(exposure.tag.detector, h.substrt1, h.substrt2, h.subsize1, h.subsize2,
                            workspace.take)

    def _window(self, det: int, x1: int, y1: int, nx: int, ny: int,
                alloc: Callable[[int], np.ndarray] | None) -> ModelArrays:
        f32 = np.float32
        maps = self.model(det).maps(x1, y1, nx, ny, alloc=alloc, with_dq=False)
        take = alloc or (lambda n: np.empty(n, dtype=f32))
        flat = maps.flat.reshape(-1)
        np.copyto(flat, f32(0.0), where=~maps.alive.reshape(-1))
        inv_gain = np.reciprocal(maps.gain.reshape(-1), out=maps.gain.reshape(-1))
        # the linear signal where the electronics clip, and beta = 0.05 / that
        clip = np.multiply(maps.signal_range.reshape(-1), f32(1.0 / (1.0 - NONLINEARITY_AT_WELL)),
                           out=maps.signal_range.reshape(-1))
        beta = np.divide(f32(NONLINEARITY_AT_WELL), clip, out=take(clip.size))
        return ModelArrays(maps.superbias.reshape(-1), clip, beta, maps.readnoise.reshape(-1), flat,
                           maps.dark.reshape(-1), inv_gain)

    def exposure_truth(self, exposure: ExposurePlan) -> dict:
        """The truth file's ``ramps`` entry: enough to regenerate the injected rate and the model."""
        kept = self.ledger.get(exposure.index, {"cosmic_rays": 0, "cr_sample": []})
        return {"scene_seed": self.seed, "scene_index": exposure.index, "model_seed": self.model_seed,
                "model_version": MODEL_VERSION, "rate_unit": "DN/s", **self.model(exposure.tag.detector).describe(),
                "cosmic_rays": kept["cosmic_rays"], "cr_sample": kept["cr_sample"],
                "cr_sample_format": ["integration", "group", "y", "x", "linear_dn"]}


def scene_rate(seed: int, index: int, detector: int, substrt1: int, substrt2: int, nx: int, ny: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """The injected count rate (DN/s, flat npix, row-major) of one exposure: the truth slopes come from.

    Sky background plus point sources with a Gaussian PSF, drawn from (seed,
    exposure index) alone, so a test regenerates it from the truth file
    (:func:`injected_rate`). The detector multiplies it by flat * alive and
    adds its dark current.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5343454E, index]))
    miri = detector in MIRI_DETECTORS
    npix = nx * ny
    sky = rng.uniform(60.0, 250.0) if miri else rng.uniform(0.3, 4.0)
    rate = np.empty(npix, dtype=np.float32) if out is None else out
    rate.fill(sky)
    nsrc = 1 + int(rng.poisson(npix / 3000.0))
    x = rng.integers(0, nx, nsrc)
    y = rng.integers(0, ny, nsrc)
    peak = np.exp(rng.uniform(np.log(2.0), np.log(4000.0), nsrc))
    sigma = 1.0 + 0.6 * (detector in (5, 10)) + (1.2 if miri else 0.0)
    d = np.arange(-3, 4)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    psf = np.exp(-(dx**2 + dy**2) / (2.0 * sigma**2)).reshape(-1)
    xs = x[:, None] + dx.reshape(1, -1)
    ys = y[:, None] + dy.reshape(1, -1)
    ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
    np.add.at(rate, (ys * nx + xs)[ok], (peak[:, None] * psf[None, :])[ok].astype(np.float32))
    return rate


def injected_rate(truth: dict, exposure_id: str) -> np.ndarray:
    """(ny, nx) DN/s the simulator injected for an exposure of a truth document (before flat and dark)."""
    e = next((x for x in truth["exposures"] if x["exposure_id"] == exposure_id), None)
    if e is None:
        raise KeyError(f"{exposure_id} is not in this truth file")
    m, r = e["meta"], e["ramps"]
    return scene_rate(r["scene_seed"], r["scene_index"], e["tag"]["detector"], m["substrt1"], m["substrt2"],
                      m["subsize1"], m["subsize2"]).reshape(m["subsize2"], m["subsize1"])


def expected_slope(truth: dict, exposure_id: str) -> np.ndarray:
    """(ny, nx) DN/s a perfect Detector1 (superbias, linearity, dark subtracted) fits: rate * flat * alive."""
    e = next(x for x in truth["exposures"] if x["exposure_id"] == exposure_id)
    m, r = e["meta"], e["ramps"]
    maps = detector_model(e["tag"]["detector"], r["model_seed"]).maps(
        m["substrt1"], m["substrt2"], m["subsize1"], m["subsize2"])
    return injected_rate(truth, exposure_id) * maps.flat * maps.alive


class RampSynth:
    """Pixel ramps of one exposure through the detector model, rendered a chunk of groups at a time."""

    def __init__(self, exposure: ExposurePlan, pool: NoisePool, workspace: Workspace,
                 patterns: DetectorPatterns, seed: int) -> None:
        self.exposure = exposure
        self.pool = pool
        self.workspace = workspace
        self.patterns = patterns
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x52414D50, exposure.index]))
        nx, ny = exposure.nx, exposure.ny
        npix = nx * ny
        h = exposure.header
        det = exposure.tag.detector
        self.model = m = patterns.acquire(exposure, workspace)
        # mean DN per group: (rate * flat * alive + dark) * TGROUP; its Poisson noise sqrt(mean / gain)
        rate = scene_rate(seed, exposure.index, det, h.substrt1, h.substrt2, nx, ny, out=workspace.take(npix))
        rate *= m.response
        rate += m.dark
        rate *= np.float32(exposure.tgroup)
        self.rdt = rate
        self.sdt = np.multiply(rate, m.inv_gain, out=workspace.take(npix))
        np.maximum(self.sdt, np.float32(0.0), out=self.sdt)
        np.sqrt(self.sdt, out=self.sdt)
        self.cr_per_pixel_group = CR_RATE * exposure.tgroup
        self.acc = workspace.take(npix)  # linear signal accumulated so far in the current integration
        self.cosmic_rays = 0
        self.cr_sample: list[list] = []
        self.reset()

    def reset(self) -> None:
        """Start an integration: the detector was reset, no signal yet."""
        self.acc.fill(0.0)

    def release(self) -> None:
        """Hand the exposure's big arrays back to the workspace (the synth is done)."""
        self.patterns.ledger[self.exposure.index] = {"cosmic_rays": self.cosmic_rays,
                                                     "cr_sample": self.cr_sample}
        self.workspace.give(self.rdt, self.sdt, self.acc)
        self.patterns.release(self.model)

    def render(self, integration: int, g0: int, g1: int) -> np.ndarray:
        """Frames of groups g0..g1-1 (1-based) of an integration: (groups, npix) uint16, row-major.

        Works through the frame in pixel blocks that stay in cache, so the steps
        (noise, running sum, non-linearity, clip, read noise, cast) do not each
        stream the whole frame.
        """
        ngroups = g1 - g0
        npix = self.acc.size
        n = ngroups * npix
        rng, pool = self.rng, self.pool
        if g0 == 1 and integration > 1:
            self.reset()
        shot = pool.take(rng, n).reshape(ngroups, npix)
        read = pool.take(rng, n).reshape(ngroups, npix)
        hits = int(rng.poisson(n * self.cr_per_pixel_group))
        cr_pix = np.sort(rng.integers(0, npix, hits))
        cr_group = rng.integers(0, ngroups, hits)
        cr_amp = rng.uniform(150.0, 5000.0, hits).astype(np.float32)
        self._note_hits(integration, g0, cr_pix, cr_group, cr_amp)
        out = self.workspace.take(n, np.uint16).reshape(ngroups, npix)
        block = max(1024, BLOCK_VALUES // ngroups)
        buf, tmp = self.workspace.buffers((ngroups, min(block, npix)))
        sdt, rdt, acc = self.sdt, self.rdt, self.acc
        m = self.model
        bias, clip, beta, rn = m.bias, m.clip, m.beta, m.read_noise
        frames = self.exposure.header.nframes
        rn_scale = np.float32(1.0 / np.sqrt(frames))  # a group averages NFRAMES frame reads
        rn_block = np.empty(min(block, npix), dtype=np.float32)
        for a in range(0, npix, block):
            b = min(a + block, npix)
            bb, tb = (buf, tmp) if b - a == buf.shape[1] else (buf[:, :b - a], tmp[:, :b - a])
            np.multiply(shot[:, a:b], sdt[a:b], out=bb)
            bb += rdt[a:b]
            lo, hi = np.searchsorted(cr_pix, (a, b))
            if hi > lo:
                np.add.at(bb, (cr_group[lo:hi], cr_pix[lo:hi] - a), cr_amp[lo:hi])
            bb[0] += acc[a:b]
            for g in range(1, ngroups):
                bb[g] += bb[g - 1]
            acc[a:b] = bb[-1]
            np.minimum(bb, clip[a:b], out=bb)  # full well (in linear DN)
            np.multiply(bb, bb, out=tb)  # non-linearity: measured = S - beta S^2
            tb *= beta[a:b]
            bb -= tb
            bb += bias[a:b]
            if frames == 1:
                np.multiply(read[:, a:b], rn[a:b], out=tb)
            else:  # per-pixel scaling on one row of the block, not on every group
                np.multiply(rn[a:b], rn_scale, out=rn_block[:b - a])
                np.multiply(read[:, a:b], rn_block[:b - a], out=tb)
            bb += tb  # within PIXEL_FLOOR..PIXEL_MAX by construction of the model (no clip pass)
            np.copyto(out[:, a:b], bb, casting="unsafe")
        return out

    def _note_hits(self, integration: int, g0: int, pix: np.ndarray, group: np.ndarray, amp: np.ndarray) -> None:
        self.cosmic_rays += int(pix.size)
        room = CR_SAMPLE - len(self.cr_sample)
        if room > 0 and pix.size:
            nx = self.exposure.nx
            y, x = np.divmod(pix[:room], nx)
            self.cr_sample += [[integration, g0 + int(g), int(yy), int(xx), round(float(v), 1)]
                               for g, yy, xx, v in zip(group[:room].tolist(), y.tolist(), x.tolist(),
                                                       amp[:room].tolist())]
