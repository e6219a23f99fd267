"""Synthetic up-the-ramp pixel data, vectorized and fast.

Each exposure gets a bias frame, a count-rate image (sky, point sources with a
Gaussian PSF, hot pixels) and, group after group, accumulated signal with
shot noise, read noise, cosmic-ray jumps and saturation at full well; the
output is uint16 as the detector electronics deliver it.

Speed comes from never drawing fresh random normals per pixel: one pool of
float32 standard normals (``NoisePool``) is drawn per simulation and every
group takes a slice of it at a random offset. Shot noise uses the normal
approximation of the Poisson increment (sqrt(rate * TGROUP) * N(0,1)); that
and the read noise are one multiply-add each. Everything stays float32.
Values are floored at ``PIXEL_FLOOR`` (well below any bias level) so no
pixel's high byte equals a packet header's first byte (0x08-0x0F): header-like
patterns inside pixel data, which a resynchronising decoder must reject, stay rare.
Per-detector patterns (bias structure, hot pixels) are made once and reused.
"""

from __future__ import annotations

import numpy as np

from streams.simulator.plan import MIRI_DETECTORS, ExposurePlan, full_frame

#: lowest pixel value written (0x1400); bias levels are ~11000-15000 DN
PIXEL_FLOOR = 0x1400
PIXEL_MAX = 65535
#: cosmic-ray hits per pixel per second (~5 /cm^2/s on 18 um pixels)
CR_RATE = 1.6e-5
#: float32 values per rendering block (groups x pixels), sized to stay in cache
BLOCK_VALUES = 1 << 15


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


class DetectorPatterns:
    """What does not change between exposures of a detector: bias structure and hot pixels.

    Made once per detector and simulation (full frame), from the seed alone, and
    cut to each exposure's subarray, so a detector looks the same in every exposure.
    """

    def __init__(self, seed: int, pool: NoisePool) -> None:
        self.seed = seed
        self.pool = pool
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def get(self, detector: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(full-frame bias (ny, nx) float32, hot pixel flat indices, their rates in DN/s)."""
        if detector not in self._cache:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x444554, detector]))
            fx, fy = full_frame(detector)
            bias = np.empty((fy, fx), dtype=np.float32)
            bias[:] = np.float32(rng.uniform(11500, 14500))
            bias += rng.normal(0.0, 15.0, fx).astype(np.float32)[None, :]
            bias += rng.normal(0.0, 8.0, fy).astype(np.float32)[:, None]
            noise = np.float32(20.0) * self.pool.take(rng, min(fx * fy, self.pool.values.size))
            flat = bias.reshape(-1)
            for k in range(0, flat.size, noise.size):  # the pool may be smaller than a frame: repeat it
                part = flat[k:k + noise.size]
                part += noise[:part.size]
            hot = np.unique(rng.integers(0, fx * fy, int(rng.poisson(fx * fy * 5e-4))))
            self._cache[detector] = (bias, hot, rng.uniform(20.0, 500.0, hot.size).astype(np.float32))
        return self._cache[detector]


class RampSynth:
    """Pixel ramps of one exposure, rendered in canonical order a chunk of groups at a time."""

    def __init__(self, exposure: ExposurePlan, pool: NoisePool, workspace: Workspace,
                 patterns: DetectorPatterns, seed: int) -> None:
        self.exposure = exposure
        self.pool = pool
        self.workspace = workspace
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x52414D50, exposure.index]))
        rng = self.rng
        nx, ny = exposure.nx, exposure.ny
        npix = nx * ny
        h = exposure.header
        det = exposure.tag.detector
        miri = det in MIRI_DETECTORS
        full_bias, hot, hot_rate = patterns.get(det)
        x0, y0 = h.substrt1 - 1, h.substrt2 - 1
        # bias: the detector's pattern in this subarray, plus this exposure's level offset
        self._bias_view = full_bias[y0:y0 + ny, x0:x0 + nx]
        self._bias_offset = np.float32(rng.normal(0.0, 30.0))
        # count rate (DN/s): sky, point sources with a Gaussian PSF, the detector's hot pixels
        sky = rng.uniform(60.0, 250.0) if miri else rng.uniform(0.3, 4.0)
        rate = workspace.take(npix)
        rate.fill(sky)
        nsrc = 1 + int(rng.poisson(npix / 3000.0))
        x = rng.integers(0, nx, nsrc)
        y = rng.integers(0, ny, nsrc)
        peak = np.exp(rng.uniform(np.log(2.0), np.log(4000.0), nsrc))
        sigma = 1.0 + 0.6 * (det in (5, 10)) + (1.2 if miri else 0.0)
        d = np.arange(-3, 4)
        dy, dx = np.meshgrid(d, d, indexing="ij")
        psf = np.exp(-(dx**2 + dy**2) / (2.0 * sigma**2)).reshape(-1)
        xs = x[:, None] + dx.reshape(1, -1)
        ys = y[:, None] + dy.reshape(1, -1)
        ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
        np.add.at(rate, (ys * nx + xs)[ok], (peak[:, None] * psf[None, :])[ok].astype(np.float32))
        hy, hx = np.divmod(hot, full_bias.shape[1])
        inside = (hx >= x0) & (hx < x0 + nx) & (hy >= y0) & (hy < y0 + ny)
        rate[(hy[inside] - y0) * nx + (hx[inside] - x0)] += hot_rate[inside]
        rate *= np.float32(exposure.tgroup)
        self.rdt = rate  # mean signal per group
        self.sdt = np.sqrt(rate, out=workspace.take(npix))  # its shot noise
        self.read_noise = np.float32((28.0 if miri else 12.0) / np.sqrt(h.nframes))
        self.full_well = np.float32(rng.uniform(60000.0, 63000.0))
        self.cr_per_pixel_group = CR_RATE * exposure.tgroup
        self.acc = workspace.take(npix)  # bias + accumulated signal of the current integration
        self.reset()

    def reset(self) -> None:
        """Start an integration: the accumulator holds just the bias."""
        np.add(self._bias_view, self._bias_offset, out=self.acc.reshape(self._bias_view.shape))

    def release(self) -> None:
        """Hand the exposure's big arrays back to the workspace (the synth is done)."""
        self.workspace.give(self.rdt, self.sdt, self.acc)

    def render(self, integration: int, g0: int, g1: int) -> np.ndarray:
        """Frames of groups g0..g1-1 (1-based) of an integration: (groups, npix) uint16, row-major.

        Works through the frame in pixel blocks that stay in cache, so the steps
        (noise, running sum, saturation, read noise, cast) do not each stream the frame.
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
        out = self.workspace.take(n, np.uint16).reshape(ngroups, npix)
        block = max(1024, BLOCK_VALUES // ngroups)
        buf, tmp = self.workspace.buffers((ngroups, min(block, npix)))
        sdt, rdt, acc, fw, rn = self.sdt, self.rdt, self.acc, self.full_well, self.read_noise
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
            np.minimum(bb, fw, out=bb)
            np.multiply(read[:, a:b], rn, out=tb)
            bb += tb
            np.clip(bb, PIXEL_FLOOR, PIXEL_MAX, out=bb)
            np.copyto(out[:, a:b], bb, casting="unsafe")
        return out
