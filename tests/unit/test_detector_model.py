"""The physical detector model, and the simulator's ramps built from it.

The last test calibrates simulated ramps with the model's own numbers (the
ones the reference files hold) and a plain least-squares fit, and checks the
slopes against the injected rate the truth file lets us regenerate: the pulls
must have unit width, which only holds if ramps, model and truth agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streams.decoder import decode_all
from streams.packets import Kind
from streams.simulator import SimOptions, simulate
from streams.simulator import detector as D
from streams.simulator.detector import DetectorModel, PixelMaps
from streams.simulator.ramps import PIXEL_FLOOR, expected_slope, injected_rate

FIELDS = ("superbias", "dark", "gain", "readnoise", "signal_range", "flat", "alive", "dq",
          "well", "saturation", "beta")


@pytest.mark.parametrize("detector, window", [("NRCA1", (101, 37, 200, 90)), ("MIRIMAGE", (1, 960, 1032, 65)),
                                               ("NIS", (1985, 1, 64, 64))])
def test_cutout_equals_the_same_pixels_of_the_full_frame(detector, window):
    model = DetectorModel(detector)
    full = model.maps()
    x1, y1, nx, ny = window
    cut = model.maps(x1, y1, nx, ny)
    for name in FIELDS:
        assert np.array_equal(getattr(cut, name), getattr(full, name)[y1 - 1:y1 - 1 + ny, x1 - 1:x1 - 1 + nx]), name
    assert np.array_equal(cut.linearity_coeffs(), full.linearity_coeffs()[:, y1 - 1:y1 - 1 + ny, x1 - 1:x1 - 1 + nx])


def test_deterministic_per_seed_and_detector():
    a, b = DetectorModel("NRCB2").maps(1, 1, 256, 256), DetectorModel("NRCB2").maps(1, 1, 256, 256)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS)
    other = DetectorModel("NRCB2", seed=7).maps(1, 1, 256, 256)
    assert not np.array_equal(a.superbias, other.superbias)
    assert not np.array_equal(a.gain, DetectorModel("NRCB3").maps(1, 1, 256, 256).gain)
    with pytest.raises(ValueError, match="outside"):
        DetectorModel("NRCA1").maps(2000, 1, 64, 64)


@pytest.fixture(scope="module")
def nrc() -> PixelMaps:
    return DetectorModel("NRCA1").maps()


def test_linearity_coefficients_invert_the_non_linearity(nrc):
    sl = (slice(0, 2048, 97), slice(5, 2048, 89))
    beta, rng = nrc.beta[sl].astype(np.float64), nrc.signal_range[sl].astype(np.float64)
    clip = rng / (1 - D.NONLINEARITY_AT_WELL)
    linear = np.linspace(0.0, 1.0, 60)[:, None, None] * clip[None]
    measured = linear - beta * linear**2
    assert np.allclose(measured[-1], rng, rtol=1e-5)  # the clip is the end of the signal range
    c = nrc.linearity_coeffs()[(slice(None),) + sl].astype(np.float64)
    corrected = sum(c[k] * measured**k for k in range(D.LINEARITY_COEFFS))
    below = measured <= (D.SATURATION_FRACTION * rng)[None]
    assert np.abs(corrected - linear)[below].max() < 0.1  # DN, far below the read noise
    assert np.all(np.diff(measured, axis=0) > 0)  # monotonic up to the clip


def test_levels_stay_inside_uint16_and_saturation_is_below_the_clip(nrc):
    assert float((nrc.well + 6 * nrc.readnoise).max()) < 65535
    assert float((nrc.superbias - 6 * nrc.readnoise).min()) > PIXEL_FLOOR
    assert np.all(nrc.saturation < nrc.well - 500)
    assert np.all(nrc.saturation > nrc.superbias + 30000)
    assert 1.8 < float(np.median(nrc.gain)) < 2.3 and 8 < float(np.median(nrc.readnoise)) < 13


def test_dq_bits_are_the_jwst_ones_and_flag_what_the_maps_say(nrc):
    from stdatamodels.jwst.datamodels import dqflags

    for name in ("DO_NOT_USE", "SATURATED", "JUMP_DET", "DROPOUT", "DEAD", "HOT", "WARM", "LOW_QE",
                 "NO_FLAT_FIELD", "REFERENCE_PIXEL"):
        assert getattr(D, name) == dqflags.pixel[name], name
    dq = nrc.dq
    ref = (dq & D.REFERENCE_PIXEL) != 0
    assert ref[:4].all() and ref[-4:].all() and ref[:, :4].all() and ref[:, -4:].all() and not ref[4:-4, 4:-4].any()
    dead = (dq & D.DEAD) != 0
    assert dead.sum() > 100 and np.all(dq[dead] & D.DO_NOT_USE) and not nrc.alive[dead].any()
    assert not nrc.alive[ref].any() and nrc.alive[~ref & ~dead].all()
    hot = (dq & D.HOT) != 0
    assert hot.sum() > 1000 and nrc.dark[hot].min() >= 20 and float(np.median(nrc.dark[~hot & ~ref])) < 0.01
    assert np.all(nrc.flat[(dq & D.LOW_QE) != 0] < 0.65)
    assert np.all(nrc.dark[ref] == 0)


# -- the simulator renders through the model --------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> tuple[dict, bytes]:
    tmp = tmp_path_factory.mktemp("model")
    simulate(SimOptions(seed=24, exposures=4, detectors=("NRCA1", "MIRIMAGE", "NIS"), max_subarray=320),
             tmp / "c.bin", tmp / "c.json")
    return json.loads((tmp / "c.json").read_text()), (tmp / "c.bin").read_bytes()


def _cube(raw: bytes, e: dict) -> np.ndarray:
    chunk = decode_all(raw)
    p, tag, m = chunk.packets, e["tag"], e["meta"]
    mine = (p.apid == e["apid"]) & (p.kind == Kind.SCIENCE_DATA)
    for field in ("program", "observation", "visit", "activity", "exposure"):
        mine &= getattr(p, field) == tag[field]
    cube = np.zeros((m["nints"], m["ngroups"], m["subsize1"] * m["subsize2"]), np.uint16)
    for i in np.flatnonzero(mine).tolist():
        n, o = int(p.pixel_count[i]), int(p.pixel_offset[i])
        cube[p.integration[i] - 1, p.group[i] - 1, o:o + n] = np.frombuffer(chunk.data, ">u2", n, int(p.offset[i]) + 38)
    return cube.reshape(m["nints"], m["ngroups"], m["subsize2"], m["subsize1"])


def test_truth_records_what_regenerates_the_injected_rate(sim):
    truth, _ = sim
    for e in truth["exposures"]:
        r = e["ramps"]
        assert r["model_seed"] == D.MODEL_SEED and r["model_version"] == D.MODEL_VERSION
        assert r["scene_seed"] == truth["seed"] and r["rate_unit"] == "DN/s"
        assert r["cosmic_rays"] >= len(r["cr_sample"])
        rate = injected_rate(truth, e["exposure_id"])
        assert rate.shape == (e["meta"]["subsize2"], e["meta"]["subsize1"]) and rate.min() > 0
    assert len(json.dumps(truth)) < 200_000  # no big arrays in the truth file


def test_simulated_slopes_match_the_injected_rate(sim):
    """Calibrate with the model (superbias, linearity, dark), fit OLS, compare with rate * flat."""
    truth, raw = sim
    checked = 0
    for e in truth["exposures"]:
        m, r = e["meta"], e["ramps"]
        if m["ngroups"] < 5:
            continue
        maps = DetectorModel(e["tag"]["detector"], r["model_seed"]).maps(
            m["substrt1"], m["substrt2"], m["subsize1"], m["subsize2"])
        tgroup = (m["nframes"] + m["groupgap"]) * m["tframe_us"] * 1e-6
        cube = _cube(raw, e).astype(np.float64)
        c = maps.linearity_coeffs().astype(np.float64)
        meas = cube - maps.superbias
        linear = sum(c[k] * meas**k for k in range(D.LINEARITY_COEFFS))
        n = m["ngroups"]
        t = np.arange(1, n + 1) * tgroup
        tc = t - t.mean()
        slope = np.einsum("g,ig...->i...", tc, linear) / (tc**2).sum() - maps.dark
        expect = expected_slope(truth, e["exposure_id"])
        assert np.allclose(expect, injected_rate(truth, e["exposure_id"]) * maps.flat * maps.alive)
        total = expect + maps.dark  # what accumulates, and sets the Poisson noise
        sigma2 = maps.readnoise.astype(np.float64)**2 / m["nframes"] + 1 / 12  # + uint16 quantization
        var = (12 * sigma2 / (n * (n * n - 1) * tgroup**2)
               + 6 * (n * n + 1) / (5 * n * (n * n - 1)) * total / (maps.gain * tgroup))
        pulls = (slope - expect) / np.sqrt(var)
        # pixels without cosmic rays (listed when the sample is complete) and far from saturation
        clean = np.ones(slope.shape, bool)
        if r["cosmic_rays"] == len(r["cr_sample"]):
            for i, _g, y, x, _a in r["cr_sample"]:
                clean[i - 1, y, x] = False
        else:
            clean &= np.abs(pulls) < 8
        clean &= (cube.max(axis=1) < maps.superbias + 0.3 * maps.signal_range) & (maps.dq == 0)[None]
        p = pulls[clean]
        assert p.size > 2000
        assert abs(float(np.mean(p))) < 0.06, e["exposure_id"]
        assert 0.9 < float(np.std(p)) < 1.1, e["exposure_id"]
        # the flat is in the ramps: regress the residuals on the flat's effect (-1 if it were missing)
        w = np.broadcast_to(1 / var, slope.shape)[clean]
        x = np.broadcast_to(expect * (maps.flat - 1), slope.shape)[clean]
        resid = (slope - expect)[clean]
        coef, err = float((w * x * resid).sum() / (w * x * x).sum()), float((w * x * x).sum() ** -0.5)
        assert err < 0.1 and abs(coef) < 5 * err, (e["exposure_id"], coef, err)
        checked += 1
    assert checked >= 2
