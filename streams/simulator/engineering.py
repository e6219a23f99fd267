"""Engineering parameter values: plausible drifts, noise and limit excursions.

Every analog parameter follows a smooth function of time (a slow periodic
term, as thermal and orbital cycles give, plus a small drift) with a little
noise; states stay constant and counters count. A few *excursions* push a
parameter beyond its yellow or red limit for a while, so the real-time limit
checker and alerting have something to find; they are listed in the truth
file (``eng_excursions``) with the interval during which the value is held
beyond the limit.

Values are made in engineering units and converted to raw through the
inverse of the calibration polynomial, then packed with the dictionary's
layout (``EngDictionary.encode_many``).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

from streams.dictionary import EngDictionary, Parameter, TYPES

#: time origin of the periodic terms (TAI seconds since 1958, early 2021)
_T_REF = 2.0e9


@dataclass(frozen=True)
class Excursion:
    """A parameter held beyond a limit from ``start_tai`` to ``end_tai`` (both inclusive)."""

    parameter: str
    apid: int
    source: int
    contact: str | None  # the contact for real-time samples; None for recorded ones
    level: str  # yellow | red
    side: str  # lo | hi
    value: float
    start_tai: float
    end_tai: float

    def to_dict(self) -> dict:
        return asdict(self)


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


class EngModel:
    """Deterministic engineering values for one simulation."""

    def __init__(self, dictionary: EngDictionary, seed: int) -> None:
        self.dictionary = dictionary
        self.seed = seed
        self.excursions: list[Excursion] = []
        self._shape: dict[str, tuple[float, float, float, float, float, float]] = {}
        for p in dictionary.parameters:
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0x454E47, _stable(p.name)]))
            center, half = _center_half(p)
            self._shape[p.name] = (
                center, half,
                float(rng.uniform(900.0, 7200.0)),  # period (s)
                float(rng.uniform(0.0, 2 * np.pi)),  # phase
                float(rng.uniform(-0.05, 0.05)) * half / 3600.0,  # drift per second
                float(rng.integers(0, 1 << 20)),  # counter start
            )

    # -- excursions -----------------------------------------------------------------------
    def add_excursions(self, source: int, start: float, end: float, contact: str | None,
                       key: int) -> None:
        """Draw yellow and red excursions inside [start, end] for samples of ``source``."""
        span = end - start
        if span < 2.0:
            return
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x455843, source, key]))
        limited = [p for p in self.dictionary.parameters
                   if p.model == "analog" and p.yellow is not None and p.red is not None]
        plan = ["yellow"] * min(10, 1 + int(span // 1800)) + ["red"] * min(10, 1 + int(span // 3600))
        for level in plan:
            p = limited[int(rng.integers(len(limited)))]
            duration = float(min(60.0, max(2.0, 0.3 * span)))
            t0 = float(rng.uniform(start, end - duration))
            side = "hi" if rng.random() < 0.5 else "lo"
            (ylo, yhi), (rlo, rhi) = p.yellow, p.red  # type: ignore[misc]
            if level == "yellow":
                value = (yhi + 0.5 * (rhi - yhi)) if side == "hi" else (ylo - 0.5 * (ylo - rlo))
                if value == (yhi if side == "hi" else ylo):  # yellow and red coincide on this side
                    side = "lo" if side == "hi" else "hi"
                    value = (yhi + 0.5 * (rhi - yhi)) if side == "hi" else (ylo - 0.5 * (ylo - rlo))
            else:
                margin = 0.1 * (rhi - rlo)
                value = rhi + margin if side == "hi" else rlo - margin
            value = self._representable(p, value)
            ramp = 0.2 * duration
            self.excursions.append(Excursion(p.name, p.apid, source, contact, level, side, value,
                                             t0 + ramp, t0 + duration - ramp))

    def _representable(self, p: Parameter, value: float) -> float:
        """Clamp an excursion value to what the raw type can carry (and report that value)."""
        raw = self.to_raw(p, np.array([value]))
        return float(p.calibrate(raw)[0])

    # -- values ---------------------------------------------------------------------------
    def values(self, p: Parameter, times: np.ndarray, source: int, rng: np.random.Generator) -> np.ndarray:
        """Engineering values of ``p`` at ``times`` (TAI seconds)."""
        center, half, period, phase, drift, start = self._shape[p.name]
        t = times - _T_REF
        if p.model == "state":
            return np.full(times.shape, center)
        if p.model == "counter":
            return np.floor(start + (p.rate or 1.0) * t)
        v = (center + 0.3 * half * np.sin(2 * np.pi * t / period + phase)
             + drift * (t % 86400.0) + 0.03 * half * rng.standard_normal(times.shape))
        for ex in self.excursions:
            if ex.parameter != p.name or ex.source != source:
                continue
            ramp = 0.25 * (ex.end_tai - ex.start_tai) if ex.end_tai > ex.start_tai else 0.0
            ramp = max(ramp, 0.5)
            a, b = ex.start_tai - ramp, ex.end_tai + ramp
            inside = (times >= a) & (times <= b)
            if inside.any():
                ti = times[inside]
                f = np.clip(np.minimum(ti - a, b - ti) / ramp, 0.0, 1.0)
                v[inside] = v[inside] * (1.0 - f) + ex.value * f
        return v

    def to_raw(self, p: Parameter, value: np.ndarray) -> np.ndarray:
        """Invert the calibration polynomial (Newton steps beyond linear) and fit the raw type."""
        c = np.asarray(p.calibration, dtype=np.float64)
        x = (value - c[0]) / c[1] if len(c) > 1 and c[1] != 0 else np.zeros_like(value)
        if len(c) > 2:
            dc = np.polynomial.polynomial.polyder(c)
            for _ in range(30):
                x = x - (np.polynomial.polynomial.polyval(x, c) - value) / \
                    np.polynomial.polynomial.polyval(x, dc)
        dt = np.dtype(TYPES[p.type])
        if dt.kind in "iu":
            info = np.iinfo(dt)
            if p.model == "counter":
                return np.mod(np.round(x), float(info.max) + 1.0).astype(dt.newbyteorder("="))
            return np.clip(np.round(x), info.min, info.max).astype(dt.newbyteorder("="))
        return x.astype(dt.newbyteorder("="))

    def blocks(self, apid: int, times: np.ndarray, source: int, key: int,
               values_out: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Parameter blocks of ``apid`` sampled at ``times``: (n, block length) uint8.

        ``values_out``, when given, receives the engineering values before quantization.
        """
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x424C4B, apid, source, key]))
        raw = {}
        for p in self.dictionary.by_apid()[apid]:
            eng = self.values(p, times, source, rng)
            if values_out is not None:
                values_out[p.name] = eng
            raw[p.name] = self.to_raw(p, eng)
        return self.dictionary.encode_many(apid, raw, n=len(times))


def _center_half(p: Parameter) -> tuple[float, float]:
    """Typical value and the half-width of its comfortable band."""
    if p.yellow is not None:
        lo, hi = p.yellow
        center = p.nominal if p.nominal is not None else 0.5 * (lo + hi)
        half = min(center - lo, hi - center) if lo < center < hi else 0.5 * (hi - lo)
        return center, max(half, 1e-9)
    center = p.nominal if p.nominal is not None else 0.0
    return center, max(abs(center) * 0.02, 1e-3)
