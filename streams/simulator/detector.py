"""The physical detector model shared by the simulator's ramps and the reference files.

One :class:`DetectorModel` per (model seed, detector) describes the detector as
built: superbias, dark current, gain, read noise, hard saturation (the clip
level of the electronics), the saturation *threshold* a reference file gives,
a classic quadratic non-linearity with the polynomial correction that inverts
it, the flat field, bad pixels and the photometric conversion. The simulator
renders ramps through exactly these numbers and ``downlink refs make`` writes
them as reference files, so a calibration with those files can be checked
against the rate the simulator injected.

Signal chain of one pixel (what :mod:`streams.simulator.ramps` does)::

    rate (DN/s, the injected truth) * flat * alive + dark   -> DN/s
    * gain * t                                               -> electrons, Poisson
    / gain                                                   -> linear DN  S
    S - beta * S**2                                          -> measured DN  (non-linearity)
    + superbias, min(., well), + read noise / sqrt(NFRAMES)  -> raw DN, uint16

so after superbias subtraction, linearity correction and dark subtraction a
perfect ramp fit returns ``rate * flat`` in DN/s; flat-fielding gives ``rate``
and photom ``rate * PHOTMJSR`` in MJy/sr. ``alive`` is 0 for dead and
reference pixels (they see no light).

Everything is pure numpy and deterministic from (seed, detector) alone, and a
subarray cut-out equals the same rows and columns of the full frame: random
fields come from a shared pool of standard normals (made once per seed), each
block of :data:`BLOCK_ROWS` full-width rows taking a slice at an offset drawn
from (seed, detector, field). A cut-out therefore only pays for the rows it
covers, which keeps the simulator fast for subarrays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streams.packets import DETECTOR_CODES, DETECTORS, instrument_of

#: the detectors "as built": the default seed of the simulator's ramps and of `downlink refs make`
MODEL_SEED = 2026
#: bump when the model's formulas change (recorded in the truth file and reference files)
MODEL_VERSION = 1
#: rows per generation block (subarrays cost only the blocks they touch)
BLOCK_ROWS = 64
_POOL_SIZE = 1 << 22

# DQ bits (the JWST convention, stdatamodels.jwst.datamodels.dqflags.pixel)
DO_NOT_USE = 1
SATURATED = 2
JUMP_DET = 4
DROPOUT = 8
DEAD = 1 << 10
HOT = 1 << 11
WARM = 1 << 12
LOW_QE = 1 << 13
NO_FLAT_FIELD = 1 << 18
REFERENCE_PIXEL = 1 << 31

#: DQ bits of the outlier pixels the model draws
_SPECIAL_BITS = {"hot": HOT, "warm": WARM, "dead": DEAD | DO_NOT_USE, "lowqe": LOW_QE}
#: the saturation threshold of the reference file, as a fraction of the signal range to the clip
SATURATION_FRACTION = 0.97
#: non-linearity at the hard clip: the measured signal falls this far below the linear one
NONLINEARITY_AT_WELL = 0.05
#: highest raw level the clip may reach (read noise on top stays within uint16)
MAX_RAW = 65000.0
#: number of linearity correction coefficients (c0..c4, as JWST's)
LINEARITY_COEFFS = 5

#: the nominal optical element per detector (the packet format carries no filter)
_FILTERS = {"NIRCAM_SW": ("F200W", "CLEAR"), "NIRCAM_LW": ("F444W", "CLEAR"),
            "MIRIMAGE": ("F770W", "N/A"), "MIRI_MRS": ("N/A", "N/A"), "NIRISS": ("CLEAR", "F150W"),
            "NIRSPEC": ("F170LP", "N/A"), "FGS": ("N/A", "N/A")}


def nominal_optics(detector: str) -> tuple[str, str]:
    """(FILTER, PUPIL) a detector observes with: one nominal element each (the packets carry none)."""
    return _FILTERS[_family(detector.upper())]


def _family(name: str) -> str:
    if name.startswith("NRC"):
        return "NIRCAM_LW" if name.endswith("LONG") else "NIRCAM_SW"
    if name == "MIRIMAGE":
        return "MIRIMAGE"
    if name.startswith("MIRI"):
        return "MIRI_MRS"
    return instrument_of(DETECTOR_CODES[name])


#: per family: (full frame (nx, ny), pixel scale arcsec, gain e/DN, read noise DN per frame,
#:              median dark DN/s, signal range to the clip DN, PHOTMJSR per DN/s)
_FAMILY = {
    "NIRCAM_SW": ((2048, 2048), 0.031, 2.05, 10.5, 0.004, 45000.0, 0.23),
    "NIRCAM_LW": ((2048, 2048), 0.063, 1.85, 9.0, 0.02, 44000.0, 0.19),
    "MIRIMAGE": ((1032, 1024), 0.11, 5.5, 24.0, 0.15, 46000.0, 0.45),
    "MIRI_MRS": ((1032, 1024), 0.196, 5.5, 24.0, 0.15, 46000.0, 0.45),
    "NIRISS": ((2048, 2048), 0.0656, 1.62, 11.0, 0.01, 44000.0, 0.26),
    "NIRSPEC": ((2048, 2048), 0.1, 1.0, 13.0, 0.008, 43000.0, 0.30),
    "FGS": ((2048, 2048), 0.069, 2.0, 12.0, 0.01, 44000.0, 0.28),
}
_ARCSEC2_SR = (math.pi / 180 / 3600) ** 2


@functools.lru_cache(maxsize=4)
def _pool(seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4D4F44454C]))
    pool = rng.standard_normal(_POOL_SIZE, dtype=np.float32)
    pool.setflags(write=False)
    return pool


@functools.lru_cache(maxsize=4)
def _pool_peak(seed: int) -> float:
    """Largest |value| in the pool: bounds every field without scanning it."""
    pool = _pool(seed)
    return float(max(pool.max(), -pool.min()))


def _linearity_shape() -> np.ndarray:
    """a2..a4 of the correction y + a2 y^2 + a3 y^3 + a4 y^4 ~ (1 - sqrt(1 - 4y)) / 2 on the used range.

    The forward non-linearity is m = s - beta s^2, so s = f(beta m) / beta with
    f(y) = (1 - sqrt(1 - 4 y)) / 2. A least-squares fit of f over [0, y_max]
    (c0 = 0, c1 = 1 fixed) is accurate to ~1e-6 relative there, far below the
    noise, where the Taylor series would be off by ~1e-4 at full well.
    """
    y_max = 1.15 * NONLINEARITY_AT_WELL
    y = np.linspace(0.0, y_max, 400)
    f = (1.0 - np.sqrt(1.0 - 4.0 * y)) / 2.0
    a, *_ = np.linalg.lstsq(np.stack([y**2, y**3, y**4], axis=1), f - y, rcond=None)
    return a


_LIN_SHAPE = _linearity_shape()


@dataclass(frozen=True)
class PixelMaps:
    """The model over one rectangle of a detector (arrays (ny, nx), float32 unless noted)."""

    superbias: np.ndarray  # DN
    dark: np.ndarray  # DN/s
    gain: np.ndarray  # e/DN
    readnoise: np.ndarray  # DN per frame read
    signal_range: np.ndarray  # DN of measured signal above the bias where the electronics clip
    flat: np.ndarray  # relative response (1 = nominal)
    alive: np.ndarray  # bool: light-sensitive (False for dead and reference pixels)
    dq: np.ndarray | None  # uint32 mask (DEAD|DO_NOT_USE, HOT, WARM, LOW_QE, REFERENCE_PIXEL); None if not asked

    @property
    def shape(self) -> tuple[int, int]:
        return self.superbias.shape  # type: ignore[return-value]

    @property
    def well(self) -> np.ndarray:
        """Raw DN where the electronics clip (hard saturation)."""
        return self.superbias + self.signal_range

    @property
    def saturation(self) -> np.ndarray:
        """Raw DN threshold of the saturation reference file, safely below the clip."""
        return self.superbias + np.float32(SATURATION_FRACTION) * self.signal_range

    @property
    def beta(self) -> np.ndarray:
        """Non-linearity (1/DN): measured = linear - beta * linear**2; the linear signal at the clip
        loses NONLINEARITY_AT_WELL: S (1 - 0.05) = range and beta S = 0.05."""
        return np.float32(NONLINEARITY_AT_WELL * (1.0 - NONLINEARITY_AT_WELL)) / self.signal_range

    def linearity_coeffs(self) -> np.ndarray:
        """(5, ny, nx) float32 c0..c4 with linear = sum c_k * measured**k (measured bias-subtracted)."""
        b = self.beta.astype(np.float64)
        a2, a3, a4 = _LIN_SHAPE
        out = np.empty((LINEARITY_COEFFS,) + self.shape, dtype=np.float32)
        out[0] = 0.0
        out[1] = 1.0
        out[2] = a2 * b
        out[3] = a3 * b * b
        out[4] = a4 * b * b * b
        return out

    def nonlinear(self, linear: np.ndarray) -> np.ndarray:
        """Measured (bias-subtracted) DN from linear DN, per pixel (broadcasts over leading axes)."""
        return linear - self.beta * linear * linear


class DetectorModel:
    """One detector as built: scalars drawn from (seed, detector), pixel maps on demand."""

    def __init__(self, detector: int | str, seed: int = MODEL_SEED) -> None:
        code = DETECTOR_CODES[detector.upper()] if isinstance(detector, str) else int(detector)
        if code not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}")
        self.code = code
        self.name = DETECTORS[code]
        self.seed = int(seed)
        self.instrument = instrument_of(code)
        self.family = _family(self.name)
        full, scale, gain, rn, dark, well, phot = _FAMILY[self.family]
        self.full = full  # (nx, ny)
        self.filter, self.pupil = _FILTERS[self.family]
        rng = self._rng(0x5343414C)
        self.bias_level = float(rng.uniform(11500.0, 14500.0) if self.family[:4] != "MIRI"
                                else rng.uniform(9500.0, 12500.0))
        self.gain_mean = float(gain * rng.uniform(0.95, 1.05))
        self.readnoise_mean = float(rn * rng.uniform(0.9, 1.1))
        self.dark_median = float(dark * rng.uniform(0.8, 1.25))
        self.well_range = float(well * rng.uniform(0.97, 1.03))
        self.photmjsr = float(phot * rng.uniform(0.95, 1.05))
        self.pixar_a2 = scale * scale
        self.pixar_sr = self.pixar_a2 * _ARCSEC2_SR
        self.outputs = 4
        self._amp = rng.normal(0.0, 40.0, self.outputs)  # per-output bias offsets (DN)
        self._amp_gain = rng.normal(1.0, 0.02, self.outputs)
        self._col = self._rng(0x434F4C).normal(0.0, 15.0, full[0]).astype(np.float32)
        self._row = self._rng(0x524F57).normal(0.0, 8.0, full[1]).astype(np.float32)
        self._specials = self._draw_specials()

    # -- helpers ----------------------------------------------------------------------------------
    def _rng(self, what: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, 0x444554, self.code, what]))

    def _normals(self, field: int, x0: int, y0: int, out: np.ndarray, scale: float,
                 row: float | np.ndarray = 0.0, col: np.ndarray | None = None,
                 floor: float | None = None) -> None:
        """``out`` (ny, nx) = scale * standard normals + row (per column) + col (per row), floored.

        The normals of rows y0.., columns x0.. are the same for any cut-out. All
        steps run on one cache-sized block of rows at a time (one pass over memory).
        """
        fx, fy = self.full
        ny, nx = out.shape
        block = BLOCK_ROWS * fx
        nblocks = -(-fy // BLOCK_ROWS)
        offsets = self._rng(0x4E4F524D + field).integers(0, _POOL_SIZE - block, nblocks)
        pool = _pool(self.seed)
        s = np.float32(scale)
        y = y0
        while y < y0 + ny:  # one step per block of rows touched, not per pixel
            b = y // BLOCK_ROWS
            r1 = min((b + 1) * BLOCK_ROWS, y0 + ny)
            rows = pool[int(offsets[b]):int(offsets[b]) + block].reshape(BLOCK_ROWS, fx)
            dst = out[y - y0:r1 - y0]
            np.multiply(rows[y - b * BLOCK_ROWS:r1 - b * BLOCK_ROWS, x0:x0 + nx], s, out=dst)
            dst += row
            if col is not None:
                dst += col[y - y0:r1 - y0, None]
            if floor is not None:
                np.maximum(dst, np.float32(floor), out=dst)
            y = r1

    def _draw_specials(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Full-frame flat indices (and values) of hot, warm, dead and low-QE pixels."""
        nx, ny = self.full
        n = nx * ny
        rng = self._rng(0x42414450)

        def pick(fraction: float) -> np.ndarray:
            return np.unique(rng.integers(0, n, int(rng.poisson(n * fraction))))

        hot, warm, dead, lowqe = pick(5e-4), pick(2e-3), pick(1e-4), pick(1e-4)
        warm = np.setdiff1d(warm, hot)  # one dark current per pixel: a hot pixel is not also warm
        return {"hot": (hot, rng.uniform(20.0, 500.0, hot.size).astype(np.float32)),
                "warm": (warm, rng.uniform(0.5, 5.0, warm.size).astype(np.float32)),
                "dead": (dead, np.zeros(dead.size, np.float32)),
                "lowqe": (lowqe, rng.uniform(0.3, 0.6, lowqe.size).astype(np.float32))}

    def _is_reference(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Reference pixels: a 4-pixel border (H2RG) or 4 columns each side (MIRI)."""
        nx, ny = self.full
        ref = (x < 4) | (x >= nx - 4)
        if not self.family.startswith("MIRI"):
            ref |= (y < 4) | (y >= ny - 4)
        return ref

    def _reference_lines(self, x0: int, y0: int, nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
        """Local row and column indices of a window that are reference rows / columns."""
        xs, ys = np.arange(x0, x0 + nx), np.arange(y0, y0 + ny)
        cols = np.flatnonzero(self._is_reference(xs, np.full(nx, 4)))
        rows = np.flatnonzero(self._is_reference(np.full(ny, 4), ys))
        return rows, cols

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        """Readout output of each column: 4 stripes of 512 (H2RG) or every 4th column (MIRI)."""
        if self.family.startswith("MIRI"):
            return x % 4
        return np.minimum(x // (self.full[0] // self.outputs), self.outputs - 1)

    # -- the model ------------------------------------------------------------------------------
    def check_window(self, substrt1: int, substrt2: int, subsize1: int, subsize2: int) -> None:
        nx, ny = self.full
        if not (substrt1 >= 1 and substrt2 >= 1 and subsize1 >= 1 and subsize2 >= 1
                and substrt1 + subsize1 - 1 <= nx and substrt2 + subsize2 - 1 <= ny):
            raise ValueError(f"subarray ({substrt1}, {substrt2}) + ({subsize1}, {subsize2}) is outside "
                             f"the {nx} x {ny} frame of {self.name}")

    def maps(self, substrt1: int = 1, substrt2: int = 1, subsize1: int | None = None,
             subsize2: int | None = None, alloc: Callable[[int], np.ndarray] | None = None,
             with_dq: bool = True) -> PixelMaps:
        """The model over a subarray (1-based start, sizes in pixels); the full frame by default.

        ``alloc(n)`` may supply the float32 buffers (the simulator recycles them:
        a fresh 16 MB array costs more in page faults than the arithmetic);
        ``with_dq=False`` skips the DQ mask (``dq`` is then None; the renderer needs only ``alive``).
        """
        fx, fy = self.full
        nx = fx - substrt1 + 1 if subsize1 is None else subsize1
        ny = fy - substrt2 + 1 if subsize2 is None else subsize2
        self.check_window(substrt1, substrt2, nx, ny)
        x0, y0 = substrt1 - 1, substrt2 - 1
        xs, ys = np.arange(x0, x0 + nx), np.arange(y0, y0 + ny)
        out_of = self._outputs(xs)
        f32 = np.float32
        take = alloc or (lambda n: np.empty(n, dtype=f32))

        def field(k: int, scale: float, row: float | np.ndarray, col: np.ndarray | None = None,
                  floor: float | None = None) -> np.ndarray:
            out = take(nx * ny).reshape(ny, nx)
            self._normals(k, x0, y0, out, scale, row, col, floor)
            return out

        bias_row = np.float32(self.bias_level) + self._amp[out_of].astype(f32) + self._col[x0:x0 + nx]
        bias = field(1, 20.0, bias_row, self._row[y0:y0 + ny])
        gain = field(2, 0.015 * self.gain_mean, (self.gain_mean * self._amp_gain[out_of]).astype(f32))
        readnoise = field(3, 0.08 * self.readnoise_mean, f32(self.readnoise_mean),
                          floor=0.3 * self.readnoise_mean)
        dark = field(4, 0.3 * self.dark_median, f32(self.dark_median), floor=0.2 * self.dark_median)
        signal_range = field(5, 0.01 * self.well_range, f32(self.well_range))
        # headroom: the clip plus 10 sigma of read noise stays below 65535, so no raw value overflows
        # (a bound from the pieces decides cheaply when the exact cap is needed at all)
        peak = float(_pool_peak(self.seed))
        bias_bound = (self.bias_level + float(self._amp.max()) + float(self._col.max())
                      + float(self._row.max()) + 20.0 * peak)
        if bias_bound + self.well_range * (1 + 0.01 * peak) > MAX_RAW:
            np.minimum(signal_range, f32(MAX_RAW) - bias, out=signal_range)
        gx = (xs / fx - 0.5).astype(f32)
        gy = (ys / fy - 0.5).astype(f32)
        flat = field(6, 0.015, f32(1.0) + f32(0.03) * gx * gx, -f32(0.02) * gy)

        dq = np.zeros((ny, nx), dtype=np.uint32) if with_dq else None
        alive = np.ones((ny, nx), dtype=bool)
        ref_rows, ref_cols = self._reference_lines(x0, y0, nx, ny)
        for sl in ((ref_rows, slice(None)), (slice(None), ref_cols)):
            if dq is not None:
                dq[sl] |= np.uint32(REFERENCE_PIXEL)
            alive[sl] = False
            dark[sl] = 0.0
        for kind, (idx, value) in self._specials.items():
            py, px = np.divmod(idx, fx)
            inside = (px >= x0) & (px < x0 + nx) & (py >= y0) & (py < y0 + ny) & ~self._is_reference(px, py)
            py, px, value = py[inside] - y0, px[inside] - x0, value[inside]
            if kind in ("hot", "warm"):
                dark[py, px] = value
            elif kind == "dead":
                alive[py, px] = False
            else:
                flat[py, px] = value
            if dq is not None:
                dq[py, px] |= np.uint32(_SPECIAL_BITS[kind])
        if dq is None:
            return PixelMaps(bias, dark, gain, readnoise, signal_range, flat, alive, None)  # type: ignore[arg-type]
        return PixelMaps(bias, dark, gain, readnoise, signal_range, flat, alive, dq)

    def describe(self) -> dict[str, object]:
        """Scalars for the truth file and reference file headers."""
        return {"detector": self.name, "seed": self.seed, "model_version": MODEL_VERSION,
                "bias_level": round(self.bias_level, 3), "gain": round(self.gain_mean, 5),
                "readnoise": round(self.readnoise_mean, 4), "dark_median": round(self.dark_median, 6),
                "signal_range": round(self.well_range, 2), "photmjsr": round(self.photmjsr, 6),
                "pixar_sr": self.pixar_sr, "filter": self.filter, "pupil": self.pupil}


@functools.lru_cache(maxsize=64)
def detector_model(detector: int | str, seed: int = MODEL_SEED) -> DetectorModel:
    """A cached model (the scalars and outlier positions; pixel maps are made per call)."""
    return DetectorModel(detector, seed)
