"""The calibration steps' pure functions on synthetic arrays (no files, no references store)."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.calibrate import steps as S
from consumers.calibrate.pipeline import select_steps
from consumers.calibrate.steps import dq
from consumers.calibrate.steps.blocks import ExposureMeta, SlopeArrays
from consumers.calibrate.steps.dark_current_step import dark_per_group, do_dark_current
from consumers.calibrate.steps.dq_init_step import do_dq_init
from consumers.calibrate.steps.flat_field_step import do_flat_field
from consumers.calibrate.steps.gain_scale_step import do_gain_scale
from consumers.calibrate.steps.jump_step import do_jump
from consumers.calibrate.steps.linearity_step import do_linearity
from consumers.calibrate.steps.median import median0, nanmedian0
from consumers.calibrate.steps.photom_step import do_photom
from consumers.calibrate.steps.saturation_step import do_saturation
from consumers.calibrate.steps.superbias_step import do_superbias
from core.errors import CalibrationError, ConfigError
from streams.simulator.detector import detector_model


def meta(ngroups: int = 6, nframes: int = 1, groupgap: int = 0, nints: int = 1) -> ExposureMeta:
    return ExposureMeta("NRCA1", "NIRCAM", nints, ngroups, nframes, groupgap, 10.0,
                        (nframes + groupgap) * 10.0, 1, 1, 8, 4)


def test_pipeline_order_is_jwst_order() -> None:
    assert S.ORDER == ("dq_init", "saturation", "superbias", "linearity", "dark_current", "jump",
                       "ramp_fit", "gain_scale", "flat_field", "photom")
    assert select_steps(["ramp_fit", "jump", "dq_init"]) == ("dq_init", "jump", "ramp_fit")
    with pytest.raises(ConfigError, match="unknown step"):
        select_steps(["ramp_fit", "refpix_magic"])
    with pytest.raises(ConfigError, match="ramp_fit"):
        select_steps(["dq_init", "jump"])


def test_step_parameters_are_typed_and_checked() -> None:
    jump = S.BY_NAME["jump"].from_params({"threshold": "5.5"})
    assert jump.threshold == 5.5
    with pytest.raises(ConfigError, match="unknown parameter"):
        S.BY_NAME["jump"].from_params({"sigma": 3})
    with pytest.raises(ConfigError, match="threshold"):
        S.BY_NAME["jump"].from_params({"threshold": -1})
    for step in S.PIPELINE:
        assert step.status_keyword.startswith("S_") and all(r in S.REF_KEYWORDS for r in step.reftypes)


def test_median_network_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 26):
        a = rng.normal(size=(n, 257)).astype(np.float32)
        np.testing.assert_allclose(median0(a), np.median(a, axis=0), rtol=0, atol=1e-6)
    b = rng.normal(size=(5, 40)).astype(np.float32)
    b[:, :3] = np.nan
    b[0, 10] = np.nan
    m = nanmedian0(b)
    assert np.isnan(m[:3]).all() and m[10] == np.median(b[1:, 10])


def test_dq_init_ors_the_mask() -> None:
    pdq = np.array([[dq.DROPOUT, 0]], np.uint32)
    do_dq_init(pdq, np.array([[dq.DO_NOT_USE, dq.REFERENCE_PIXEL]], np.uint32))
    assert pdq.tolist() == [[dq.DROPOUT | dq.DO_NOT_USE, dq.REFERENCE_PIXEL]]


def test_saturation_flags_the_first_saturated_group_and_all_later() -> None:
    data = np.array([10, 20, 95, 80, 110], np.float32).reshape(1, 5, 1, 1).repeat(2, axis=3)
    gdq = np.zeros(data.shape, np.uint8)
    pdq = np.zeros((1, 2), np.uint32)
    do_saturation(data, gdq, pdq, np.array([[90.0, np.nan]], np.float32))
    flags = gdq[0, :, 0, 0].tolist()
    assert flags == [0, 0, 3, 3, 3]   # 80 after 95 is still saturated (no reset within a ramp)
    assert (gdq[..., 1] == 0).all() and pdq[0, 1] & dq.NO_SAT_CHECK


def test_superbias_and_dark_subtract() -> None:
    m = meta(ngroups=3, nframes=2, groupgap=1)
    data = np.full((1, 3, 4, 8), 1000.0, np.float32)
    pdq = np.zeros((4, 8), np.uint32)
    bias = np.full((4, 8), 100.0, np.float32)
    bias[0, 0] = np.nan
    do_superbias(data, pdq, bias)
    assert data[0, 0, 1, 1] == 900 and data[0, 0, 0, 0] == 1000 and pdq[0, 0] & dq.UNRELIABLE_BIAS
    rate = np.full((4, 8), 0.5, np.float32)
    # frames of group g are g*3 + (0, 1), read at (k+1)*tframe: mean times 15, 45, 75 s
    np.testing.assert_allclose(dark_per_group(rate, m)[:, 0, 0], [7.5, 22.5, 37.5])
    cube = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((9, 4, 8), np.float32)
    np.testing.assert_allclose(dark_per_group(cube, m)[:, 0, 0], [0.5, 3.5, 6.5])
    with pytest.raises(CalibrationError, match="frames"):
        dark_per_group(cube[:5], m)
    do_dark_current(data, pdq, rate, m)
    np.testing.assert_allclose(data[0, :, 1, 1], [892.5, 877.5, 862.5])


def test_linearity_inverts_the_detector_nonlinearity() -> None:
    maps = detector_model("NRCA1").maps(101, 201, 16, 8)
    linear = np.linspace(0, 40000, 6, dtype=np.float32)[None, :, None, None] * np.ones((1, 6, 8, 16), np.float32)
    measured = maps.nonlinear(linear).astype(np.float32)
    gdq = np.zeros(measured.shape, np.uint8)
    gdq[0, 5] = dq.SATURATED
    pdq = np.zeros((8, 16), np.uint32)
    out = measured.copy()
    do_linearity(out, gdq, pdq, maps.linearity_coeffs())
    np.testing.assert_allclose(out[0, :5], linear[0, :5], rtol=2e-5, atol=0.05)
    assert (out[0, 5] == measured[0, 5]).all()   # saturated groups keep their counts


def test_jump_finds_hits_flags_neighbours_and_few_false_positives() -> None:
    rng = np.random.default_rng(4)
    ny, nx, ng = 64, 64, 10
    gain = np.full((ny, nx), 2.0, np.float32)
    rn = np.full((ny, nx), 12.0, np.float32)       # CDS noise in DN
    t = np.arange(1, ng + 1, dtype=np.float32)[None, :, None, None]
    data = (5.0 * t + rng.normal(0, 12 / np.sqrt(2), (1, ng, ny, nx))).astype(np.float32)
    data[0, 6:, 20, 30] += 400.0                    # a big hit: ~30 sigma
    data[0, 3:, 40, 10] += 90.0                     # a small one: ~7 sigma, no neighbours
    gdq = np.zeros(data.shape, np.uint8)
    do_jump(data, gdq, gain, rn, nframes=1, threshold=4.0, neighbor_threshold=10.0)
    jumps = (gdq & dq.JUMP_DET) != 0
    assert jumps[0, 6, 20, 30] and jumps[0, 3, 40, 10]
    assert jumps[0, 6, 19, 30] and jumps[0, 6, 21, 30] and jumps[0, 6, 20, 29] and jumps[0, 6, 20, 31]
    assert not jumps[0, 3, 39, 10] and not jumps[0, 3, 40, 11]
    hit_pixels = jumps.any(axis=(0, 1))
    hit_pixels[19:22, 29:32] = False
    hit_pixels[40, 10] = False
    assert hit_pixels.mean() < 0.003              # 4 sigma on 9 differences: ~5e-4 expected


def test_jump_ignores_saturated_groups() -> None:
    data = np.cumsum(np.full((1, 8, 2, 2), 50.0, np.float32), axis=1)
    data[0, 5:] = 60000.0
    gdq = np.zeros(data.shape, np.uint8)
    gdq[0, 5:] = dq.SATURATED | dq.DO_NOT_USE
    do_jump(data, gdq, np.full((2, 2), 2.0, np.float32), np.full((2, 2), 10.0, np.float32), nframes=1)
    assert not ((gdq & dq.JUMP_DET) != 0).any()


def _slopes(n: int = 4) -> SlopeArrays:
    one = lambda v: np.full((2, n), v, np.float32)  # noqa: E731
    return SlopeArrays(one(10.0), one(1.0), np.zeros((2, n), np.uint32), one(0.6), one(0.4))


def test_gain_scale_flat_field_and_photom() -> None:
    s = _slopes()
    do_gain_scale(s, 2.0)
    assert s.sci[0, 0] == 20 and s.err[0, 0] == 2 and s.var_poisson[0, 0] == pytest.approx(2.4)
    s = _slopes()
    flat = np.array([[2.0, 0.0, np.nan, 1.0]] * 2, np.float32)
    do_flat_field(s, flat, flat_err=np.full((2, 4), 0.1, np.float32))
    assert s.sci[0, 0] == 5 and s.var_poisson[0, 0] == pytest.approx(0.15)
    assert s.var_flat[0, 0] == pytest.approx((5 * 0.1 / 2) ** 2)
    assert s.err[0, 0] == pytest.approx(np.sqrt(0.15 + 0.1 + (5 * 0.1 / 2) ** 2))
    for col in (1, 2):
        assert np.isnan(s.sci[0, col]) and s.dq[0, col] & dq.NO_FLAT_FIELD and s.dq[0, col] & dq.DO_NOT_USE
    do_photom(s, 0.25)
    assert s.sci[0, 0] == pytest.approx(1.25) and s.var_rnoise[0, 0] == pytest.approx(0.1 * 0.0625)
    with pytest.raises(CalibrationError):
        do_photom(_slopes(), float("nan"))
