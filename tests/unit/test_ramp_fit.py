"""Our ramp fit against stcal's OLS_C on the same ramps, and against the injected truth."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.calibrate.steps import dq
from consumers.calibrate.steps.blocks import ExposureMeta
from consumers.calibrate.steps.jump_step import do_jump
from consumers.calibrate.steps.ramp_fit_step import do_ramp_fit, fit_coefficients

DQFLAGS = {"DO_NOT_USE": 1, "SATURATED": 2, "JUMP_DET": 4, "NO_GAIN_VALUE": 1 << 19,
           "UNRELIABLE_SLOPE": 1 << 24, "CHARGELOSS": 128, "PERSISTENCE": 32, "REFERENCE_PIXEL": 1 << 31}


def ramps(n: int = 96, nints: int = 1, ngroups: int = 10, seed: int = 1, cr_fraction: float = 0.02):
    """Poisson + read-noise ramps with saturation and cosmic rays; rn is CDS noise in DN."""
    rng = np.random.default_rng(seed)
    m = ExposureMeta("NRCA1", "NIRCAM", nints, ngroups, 1, 0, 10.737, 10.737, 1, 1, n, n)
    rate = np.exp(rng.uniform(np.log(0.3), np.log(400), (n, n))).astype(np.float32)
    gain = rng.uniform(1.8, 2.2, (n, n)).astype(np.float32)
    rn = rng.uniform(9, 13, (n, n)).astype(np.float32)
    t = np.arange(1, ngroups + 1) * m.tgroup
    lam = np.diff(np.concatenate([[0.0], t]))[None, :, None, None] * (rate * gain)[None, None]
    e = np.cumsum(rng.poisson(np.broadcast_to(lam, (nints, ngroups, n, n))), axis=1)
    data = (e / gain + rng.normal(0, 1, e.shape) * rn / np.sqrt(2)).astype(np.float32)
    gdq = np.zeros(data.shape, np.uint8)
    cr = rng.random((nints, n, n)) < cr_fraction
    at = rng.integers(1, ngroups, (nints, n, n))
    for i in range(nints):
        hit = np.where(cr[i][None] & (np.arange(ngroups)[:, None, None] >= at[i][None]),
                       rng.uniform(200, 2000, (n, n))[None], 0)
        data[i] += hit.astype(np.float32)
    data[:, 7:, :3, :] = 65000.0                      # rows 0-2 saturate at group 8
    gdq[:, 7:, :3, :] = dq.SATURATED | dq.DO_NOT_USE
    data[:, 1:, 3, :2] = 65000.0                      # only the 0th group is good
    gdq[:, 1:, 3, :2] = dq.SATURATED | dq.DO_NOT_USE
    data[:, :, 4, :2] = 65000.0                       # saturated from the start
    gdq[:, :, 4, :2] = dq.SATURATED | dq.DO_NOT_USE
    pdq = np.zeros((n, n), np.uint32)
    pdq[5, 0] = dq.DO_NOT_USE
    do_jump(data, gdq, gain, rn, nframes=1)
    return m, data, gdq, pdq, rn, gain, rate, cr


def stcal_fit(m, data, gdq, pdq, rn, gain):
    from stcal.ramp_fitting.ramp_fit import ramp_fit_data
    from stcal.ramp_fitting.ramp_fit_class import RampData

    rd = RampData()
    rd.set_arrays(data.copy(), gdq.copy(), pdq.copy(), np.zeros(pdq.shape, np.float32))
    rd.set_meta(name="NIRCAM", frame_time=m.tframe, group_time=m.tgroup, groupgap=m.groupgap,
                nframes=m.nframes, drop_frames1=None)
    rd.set_dqflags(DQFLAGS)
    rd.start_row, rd.num_rows, rd.algorithm = 0, data.shape[2], "OLS_C"
    image, ints, _ = ramp_fit_data(rd, False, rn.copy(), gain.copy(), "OLS_C", "optimal", "none")
    return image, ints


@pytest.mark.parametrize("nints,ngroups", [(1, 10), (3, 6), (2, 3), (1, 2)])
def test_matches_stcal_ols_c(nints: int, ngroups: int) -> None:
    m, data, gdq, pdq, rn, gain, _, _ = ramps(nints=nints, ngroups=ngroups)
    rate, ints = do_ramp_fit(data, gdq, pdq, rn, gain, m)
    image, integ = stcal_fit(m, data, gdq, pdq, rn, gain)
    assert (np.isnan(rate.sci) == np.isnan(image["slope"])).all()
    ok = np.isfinite(rate.sci)
    assert ok.mean() > 0.9
    # slopes agree far inside 0.1 sigma; the variances to float32 precision
    assert np.abs((rate.sci - image["slope"])[ok] / image["err"][ok]).max() < 1e-3
    np.testing.assert_allclose(rate.var_rnoise[ok], image["var_rnoise"][ok], rtol=1e-4)
    np.testing.assert_allclose(rate.var_poisson[ok], image["var_poisson"][ok], rtol=2e-3, atol=1e-9)
    np.testing.assert_allclose(rate.err[ok], image["err"][ok], rtol=1e-3)
    assert (rate.dq == image["dq"]).all()
    iok = np.isfinite(ints.sci)
    assert (iok == np.isfinite(integ["slope"])).all()
    np.testing.assert_allclose(ints.sci[iok], integ["slope"][iok], rtol=1e-4, atol=1e-4)
    assert (ints.dq == integ["dq"]).all()


def test_pulls_against_injected_rates_have_unit_width() -> None:
    m, data, gdq, pdq, rn, gain, truth, cr = ramps(n=160, nints=2, seed=3, cr_fraction=0.05)
    rate, _ = do_ramp_fit(data, gdq, pdq, rn, gain, m)
    pull = (rate.sci - truth) / rate.err
    rows = np.arange(160)[:, None] >= 6                      # leave out the saturation test rows
    jumped = (rate.dq & dq.JUMP_DET) != 0
    clean = rows & ~jumped & ~cr.any(axis=0)
    hit = rows & cr.any(axis=0) & jumped
    for sel in (clean, hit):
        assert sel.sum() > 300
        assert abs(np.mean(pull[sel])) < 0.1
        assert 0.9 < np.std(pull[sel]) < 1.1


def test_flags_and_invalid_pixels() -> None:
    m, data, gdq, pdq, rn, gain, truth, _ = ramps()
    rate, ints = do_ramp_fit(data, gdq, pdq, rn, gain, m)
    assert (rate.dq[:3] & dq.SATURATED).all()                # partial saturation flagged
    assert np.isfinite(rate.sci[:3]).mean() > 0.95           # yet fitted from the good groups
    assert np.isnan(rate.sci[4, :2]).all() and (rate.dq[4, :2] & dq.DO_NOT_USE).all()
    assert (rate.var_poisson[4, :2] == 0).all() and (rate.err[4, :2] == 0).all()
    assert np.isnan(rate.sci[5, 0]) and rate.dq[5, 0] & dq.DO_NOT_USE
    zeroth = rate.sci[3, :2]                                 # one good group: its counts / 0th-group time
    np.testing.assert_allclose(zeroth, data[0, 0, 3, :2] / m.one_group_time, rtol=1e-5)


def test_clean_segment_coefficients_are_a_least_squares_slope() -> None:
    x = np.arange(7, dtype=np.float64)
    for row in fit_coefficients(7):
        assert row.sum() == pytest.approx(0, abs=1e-6)            # a constant has no slope
        assert (row * x).sum() == pytest.approx(1, abs=1e-5)       # a unit ramp has slope 1
