"""ramp_fit: count rates by least squares on the usable segments of every ramp (stcal's OLS_C rules).

Per pixel and integration, the ramp is cut into segments of good groups; a
group flagged only JUMP_DET starts a new segment, any other flag (saturated,
do-not-use, dropout) ends one. Each segment of three or more groups gets a
weighted least-squares line with the "optimal" weights of Fixsen et al.
(2000) as stcal applies them: ``w_k = |(k - mid) / mid| ** P`` with the power
``P`` from the segment's signal-to-noise ratio; two-group segments are a
difference, one-group segments the value over its exposure time. Variances per
segment (DN^2/s^2):

- read noise: ``12 rn^2 / ((n^3 - n) t^2 g^2)`` with the per-read noise in electrons
  ``rn = readnoise * gain / sqrt(2 NFRAMES)`` (the reference is CDS noise in DN),
- Poisson: ``(median rate + dark) / (t g (n - 1))`` from the pixel's median
  first difference, which a single bright segment cannot bias.

Segments, then integrations, are combined as stcal does: the slope is weighted
by the inverse read-noise variance (stcal JP-4318), ``VAR_POISSON`` and
``VAR_RNOISE`` are the inverse sums of their inverses and ``ERR`` is
``sqrt(VAR_POISSON + VAR_RNOISE)``. Pixels whose DQ has DO_NOT_USE or
SATURATED, or with no usable segment, get NaN and zero variances.

Speed: almost every pixel has one clean segment through all groups. For those
the weighted fit is a fixed linear combination of the groups for each of the
six weight powers, so one (6 x ngroups) @ (ngroups x pixels) product gives all
candidate slopes and each pixel takes the one of its power. Only the few
irregular pixels (jumps, saturation, missing data) go through the general
segment code, which is vectorized over their segments with ``reduceat``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import ExposureMeta, RampBlock, SlopeArrays, SlopeBlock
from consumers.calibrate.steps.dq import DO_NOT_USE, JUMP_DET, NO_GAIN_VALUE, SATURATED
from consumers.calibrate.steps.median import median0, nanmedian0

#: stcal's SNR edges and the weight power of each class
SNR_EDGES = np.array([5.0, 10.0, 20.0, 50.0, 100.0])
POWERS = (0.0, 0.4, 1.0, 3.0, 6.0, 10.0)
_INVALID = DO_NOT_USE | SATURATED


@functools.lru_cache(maxsize=256)
def fit_coefficients(n: int) -> np.ndarray:
    """(6, n): slope per group of a clean n-group segment = coefficients @ values, per power class."""
    x = np.arange(n, dtype=np.float64)
    mid = (n - 1) / 2.0
    out = np.empty((len(POWERS), n))
    for c, p in enumerate(POWERS):
        w = np.abs((x - mid) / mid) ** p
        sw, sx, sxx = w.sum(), (w * x).sum(), (w * x * x).sum()
        out[c] = w * (sw * x - sx) / (sw * sxx - sx * sx)
    return out.astype(np.float32)


def _snr(data_range: np.ndarray, rn_e: np.ndarray, gain: np.ndarray) -> np.ndarray:
    sig = data_range * gain
    den = rn_e * rn_e + sig
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(den > 0, sig / np.sqrt(np.where(den > 0, den, 1)), 0)
    return np.maximum(s, 0)


def _median_rate(d: np.ndarray, gq: np.ndarray, meta: ExposureMeta) -> np.ndarray:
    """stcal's per-integration median rate (DN/s) of every pixel (NaN -> 0)."""
    ngroups, npix = d.shape
    tg = meta.tgroup
    if ngroups == 1:
        return np.nan_to_num(d[0] / np.float32(meta.one_group_time))
    irregular = (gq != 0).any(axis=0)
    out = median0(np.subtract(d[1:], d[:-1], dtype=np.float32)) / np.float32(tg)
    if irregular.any():
        di, gi = d[:, irregular], gq[:, irregular]
        loc = np.where((gi & DO_NOT_USE) != 0, np.float32(np.nan), di / np.float32(tg))
        diffs = loc[1:] - loc[:-1]
        diffs[(gi[1:] & JUMP_DET) != 0] = np.nan
        med = nanmedian0(diffs)
        allnan = np.isnan(diffs).all(axis=0)
        med = np.where(allnan & ~np.isnan(loc[0]), loc[0], med)
        good = gi == 0
        zeroth = (good.sum(axis=0) == 1) & good[0]
        med = np.where(zeroth, di[0] / np.float32(meta.one_group_time), med)
        out[irregular] = med
    return np.nan_to_num(out, nan=0.0)


@dataclass
class _Sums:
    """Per-pixel accumulators of one integration (or the exposure)."""

    num: np.ndarray     # sum of slope / var_r
    inv_r: np.ndarray   # sum of 1 / var_r
    inv_p: np.ndarray   # sum of 1 / var_p (var_p > 0 only)
    inv_e: np.ndarray   # sum of 1 / (var_p + var_r)

    @classmethod
    def zeros(cls, npix: int) -> "_Sums":
        return cls(*(np.zeros(npix, dtype=np.float64) for _ in range(4)))


def _fit_clean(d: np.ndarray, rn_e, gain, rate_p, meta: ExposureMeta):
    """Slope and variances of pixels whose whole integration is one clean segment."""
    ngroups = d.shape[0]
    tg = meta.tgroup
    n = float(ngroups)
    if ngroups >= 3:
        cls = np.searchsorted(SNR_EDGES, _snr(d[-1] - d[0], rn_e, gain), side="right")
        cand = fit_coefficients(ngroups) @ d
        slope = np.take_along_axis(cand, cls[None, :], axis=0)[0] / np.float32(tg)
        t = tg
    elif ngroups == 2:
        slope = (d[1] - d[0]) / np.float32(tg)
        t = tg
    else:
        t = meta.one_group_time
        slope = d[0] / np.float32(t)
    var_r = 12.0 * (rn_e / t) ** 2 / (max(n ** 3 - n, 6.0) * gain * gain)
    var_p = rate_p / (t * gain * max(n - 1.0, 1.0))
    return slope, var_r, var_p


def _fit_irregular(d: np.ndarray, gq: np.ndarray, rn_e, gain, rate_p, meta: ExposureMeta):
    """Per-pixel sums for pixels with flags: every segment fitted, vectorized over segments."""
    ngroups, k = d.shape
    good = gq == 0
    jump_only = gq == JUMP_DET
    starts_seg = np.zeros_like(good)
    starts_seg[:-1] = jump_only[:-1] & good[1:]   # a jump group followed by a good one starts a segment
    member = good | starts_seg
    first = member.copy()
    first[1:] &= ~member[:-1] | starts_seg[1:]
    segid = np.cumsum(first, axis=0) - 1
    # flatten members pixel-major: keys (pixel, segment) come out sorted
    pix, grp = np.nonzero(member.T)
    if pix.size == 0:
        z = np.zeros(k)
        return z, z.copy(), z.copy(), z.copy(), np.zeros(k, bool)
    key = pix * ngroups + segid.T[pix, grp]
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    seg_len = np.diff(np.r_[bounds, key.size])
    seg_pix = pix[bounds]
    seg_start = grp[bounds]
    y = d.T[pix, grp].astype(np.float64)
    # stcal's pruning: one-group segments count only when no longer segment exists (first one only)
    maxlen = np.zeros(k, dtype=np.int64)
    np.maximum.at(maxlen, seg_pix, seg_len)
    first_of_pix = np.r_[True, seg_pix[1:] != seg_pix[:-1]]
    keep = (seg_len > 1) | ((maxlen[seg_pix] == 1) & first_of_pix)
    g, rn = gain[seg_pix].astype(np.float64), rn_e[seg_pix].astype(np.float64)
    y_first = y[bounds]
    y_last = y[bounds + seg_len - 1]
    tg = meta.tgroup
    # weights for segments of >= 3 groups
    power = np.asarray(POWERS)[np.searchsorted(SNR_EDGES, _snr(y_last - y_first, rn, g), side="right")]
    elem_seg = np.repeat(np.arange(bounds.size), seg_len)
    mid = (seg_len - 1) / 2.0
    xrel = grp - seg_start[elem_seg]
    with np.errstate(divide="ignore", invalid="ignore"):
        base = np.abs((xrel - mid[elem_seg]) / mid[elem_seg])
    w = np.where(seg_len[elem_seg] >= 3, base ** power[elem_seg], 0.0)
    x = grp.astype(np.float64)
    sw = np.add.reduceat(w, bounds)
    sx = np.add.reduceat(w * x, bounds)
    sxx = np.add.reduceat(w * x * x, bounds)
    sy = np.add.reduceat(w * y, bounds)
    sxy = np.add.reduceat(w * x * y, bounds)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope3 = (sw * sxy - sx * sy) / (sw * sxx - sx * sx) / tg
    nxt = np.minimum(bounds + 1, key.size - 1)
    slope2 = (y[nxt] - y_first) / tg
    # one-group segments: the 0th group alone uses the 0th-group time
    zeroth = (good.sum(axis=0) == 1) & good[0]
    t1 = np.where(zeroth[seg_pix] & (seg_start == 0), meta.one_group_time, tg)
    slope1 = y_first / t1
    slope = np.where(seg_len >= 3, slope3, np.where(seg_len == 2, slope2, slope1))
    t = np.where(seg_len == 1, t1, tg)
    n = seg_len.astype(np.float64)
    var_r = 12.0 * (rn / t) ** 2 / (np.maximum(n ** 3 - n, 6.0) * g * g)
    var_p = rate_p[seg_pix] / (t * g * np.maximum(n - 1.0, 1.0))
    sp, vr, vp = seg_pix[keep], var_r[keep], var_p[keep]
    num = np.bincount(sp, slope[keep] / vr, minlength=k)
    inv_r = np.bincount(sp, 1.0 / vr, minlength=k)
    with np.errstate(divide="ignore"):
        inv_p = np.bincount(sp, np.where(vp > 0, 1.0 / vp, 0.0), minlength=k)
    inv_e = np.bincount(sp, 1.0 / (vp + vr), minlength=k)
    has = np.bincount(sp, minlength=k) > 0
    return num, inv_r, inv_p, inv_e, has


def do_ramp_fit(data: np.ndarray, groupdq: np.ndarray, pixeldq: np.ndarray,
                readnoise: np.ndarray, gain: np.ndarray, meta: ExposureMeta,
                dark_rate: np.ndarray | None = None) -> tuple[SlopeArrays, SlopeArrays]:
    """Fit every ramp of a block: returns (rate (rows, nx), rateints (nints, rows, nx))."""
    nints, ngroups, rows, nx = data.shape
    npix = rows * nx
    shape = (rows, nx)
    gain = np.asarray(gain, dtype=np.float32).reshape(npix)
    nogain = ~np.isfinite(gain) | (gain <= 0)
    g = np.where(nogain, np.float32(1), gain)
    rn_e = (np.asarray(readnoise, dtype=np.float32).reshape(npix) * g
            / np.float32(np.sqrt(2.0 * meta.nframes)))
    dark = (np.zeros(npix, np.float32) if dark_rate is None
            else np.nan_to_num(np.asarray(dark_rate, np.float32).reshape(npix)))
    pdq = pixeldq.reshape(npix).astype(np.uint32, copy=True)
    pdq[nogain] |= np.uint32(NO_GAIN_VALUE | DO_NOT_USE)

    d_all = data.reshape(nints, ngroups, npix)
    q_all = groupdq.reshape(nints, ngroups, npix)
    med = np.zeros(npix, dtype=np.float32)
    for i in range(nints):
        med += _median_rate(d_all[i], q_all[i], meta)
    med /= np.float32(nints)
    rate_p = np.where(med > 0, med + dark, dark).astype(np.float32)

    total = _Sums.zeros(npix)
    ints = SlopeArrays(*(np.zeros((nints, npix), np.float32) for _ in range(2)),
                       np.zeros((nints, npix), np.uint32),
                       *(np.zeros((nints, npix), np.float32) for _ in range(2)))
    rate_flags = np.zeros(npix, np.uint32)
    any_valid = np.zeros(npix, bool)
    for i in range(nints):
        d, gq = d_all[i], q_all[i]
        irregular = (gq != 0).any(axis=0)
        slope, var_r, var_p = _fit_clean(d, rn_e, g, rate_p, meta)
        num = (slope / var_r).astype(np.float64)
        inv_r = (1.0 / var_r).astype(np.float64)
        with np.errstate(divide="ignore"):
            inv_p = np.where(var_p > 0, 1.0 / var_p, 0.0)
        inv_e = 1.0 / (var_p.astype(np.float64) + var_r)
        has = np.ones(npix, bool)
        if irregular.any():
            idx = np.flatnonzero(irregular)
            r = _fit_irregular(d[:, idx], gq[:, idx], rn_e[idx], g[idx], rate_p[idx], meta)
            num[idx], inv_r[idx], inv_p[idx], inv_e[idx], has[idx] = r
        flags = pdq.copy()
        jumped = ((gq & JUMP_DET) != 0).any(axis=0)
        saturated = ((gq & SATURATED) != 0)
        flags[jumped] |= JUMP_DET
        invalid = ~has | ((pdq & _INVALID) != 0)
        flags[~has] |= DO_NOT_USE
        flags[saturated.all(axis=0)] |= SATURATED
        with np.errstate(divide="ignore", invalid="ignore"):
            ints.sci[i] = np.where(invalid, np.nan, num / inv_r)
            ints.var_rnoise[i] = np.where(invalid, 0, 1.0 / inv_r)
            ints.var_poisson[i] = np.where(invalid | (inv_p <= 0), 0, 1.0 / inv_p)
            ints.err[i] = np.where(invalid, 0, np.sqrt(1.0 / inv_e))
        flags[saturated.any(axis=0)] |= SATURATED   # partial saturation, after the validity check
        ints.dq[i] = flags
        rate_flags |= flags & np.uint32(JUMP_DET | SATURATED)
        ok = has & ~invalid
        any_valid |= ok
        total.num += np.where(ok, num, 0)
        total.inv_r += np.where(ok, inv_r, 0)
        total.inv_p += np.where(ok, inv_p, 0)
    invalid = ~any_valid
    with np.errstate(divide="ignore", invalid="ignore"):
        sci = np.where(invalid, np.nan, total.num / total.inv_r)
        var_r = np.where(invalid, 0, 1.0 / total.inv_r)
        var_p = np.where(invalid | (total.inv_p <= 0), 0, 1.0 / total.inv_p)
    dq = pdq | rate_flags
    dq[invalid] |= DO_NOT_USE
    rate = SlopeArrays(sci.astype(np.float32).reshape(shape),
                       np.sqrt(var_p + var_r).astype(np.float32).reshape(shape),
                       dq.reshape(shape), var_p.astype(np.float32).reshape(shape),
                       var_r.astype(np.float32).reshape(shape))
    per_int = SlopeArrays(*(a.reshape((nints,) + shape) for a in (
        ints.sci, ints.err, ints.dq, ints.var_poisson, ints.var_rnoise)))
    return rate, per_int


@dataclass(frozen=True)
class RampFitStep(Step):
    name: ClassVar[str] = "ramp_fit"
    status_keyword: ClassVar[str] = "S_RAMP"
    reftypes: ClassVar[tuple[str, ...]] = ("readnoise", "gain")
    stage: ClassVar[str] = "fit"

    def apply(self, block: RampBlock, refs: Mapping[str, Any]) -> SlopeBlock:
        rate, ints = do_ramp_fit(block.data, block.groupdq, block.pixeldq, refs["readnoise"],
                                 refs["gain"], block.meta)
        return SlopeBlock(rate, ints, block.row0, block.meta)
