"""The whole pipeline on uncal files with known truth, with reference files of the detector model."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from consumers.calibrate.l3 import combine
from consumers.calibrate.pipeline import run_pipeline
from consumers.calibrate.steps import ORDER, dq
from core.errors import CalibrationError
from products.fits import sha256_of
from products.refs.store import RefStore
from tests.unit.calibrate_fixtures import make_meta, missing_rows, render, write_exposure

STATUS = {"dq_init": "S_DQINIT", "saturation": "S_SATURA", "superbias": "S_SUPERB",
          "linearity": "S_LINEAR", "dark_current": "S_DARK", "jump": "S_JUMP", "ramp_fit": "S_RAMP",
          "gain_scale": "S_GANSCL", "flat_field": "S_FLAT", "photom": "S_PHOTOM"}


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("refs")
    ctx, _ = RefStore(root).make(["NRCA1"])
    return root, ctx


@pytest.fixture(scope="module")
def exposure(tmp_path_factory: pytest.TempPathFactory, refs):
    folder = tmp_path_factory.mktemp("exp")
    meta = make_meta(size=(96, 64), ngroups=10, nints=2)
    sci, truth = render(meta, seed=11, cr_per_int=0.03)
    missing = missing_rows([(1, 4, 700, 150), (2, 9, 3000, 40)])
    path = write_exposure(folder, meta, sci, missing)
    result = run_pipeline(path, folder / "out", refs[1], block_rows=13)
    return path, truth, result


def _planes(path: str) -> dict[str, np.ndarray]:
    with fits.open(path) as h:
        return {x.name: np.array(x.data) for x in h[1:]} | {"_primary": h[0].header.copy(),
                                                           "_sci": h["SCI"].header.copy()}


def test_products_open_with_stdatamodels_strict(exposure) -> None:
    from stdatamodels.jwst import datamodels as dm

    _, _, result = exposure
    models = {"rate": dm.ImageModel, "rateints": dm.CubeModel, "cal": dm.ImageModel}
    assert [p.kind for p in result.products] == ["rate", "rateints", "cal"]
    for p in result.products:
        with models[p.kind](p.path, strict_validation=True) as m:
            m.validate()
            assert m.meta.cal_step.ramp_fit == "COMPLETE" and m.meta.instrument.detector == "NRCA1"
            assert m.meta.ref_file.crds.context_used == "downlink_0001"
            assert m.meta.ref_file.readnoise.name == "downlink_nrca1_readnoise_0001.fits"
            assert m.data.dtype.newbyteorder("=") == np.float32 and m.dq.dtype.newbyteorder("=") == np.uint32
        if p.kind == "rateints":
            assert m.data.shape == (2, 64, 96)
    with dm.ImageModel(result.products[2].path, strict_validation=True) as cal:
        assert cal.meta.cal_step.flat_field == "COMPLETE" and cal.meta.bunit_data == "MJy/sr"
        assert cal.meta.photometry.conversion_megajanskys > 0 and cal.meta.photometry.pixelarea_steradians > 0


def test_provenance_keywords(exposure) -> None:
    from core.version import SOFTWARE_VERSION

    path, _, result = exposure
    for p in result.products:
        h = _planes(p.path)["_primary"]
        assert h["CAL_VER"] == SOFTWARE_VERSION and h["CRDS_CTX"] == "downlink_0001"
        assert h["IN_SHA"] == sha256_of(path) and h["IN_NAME"] == path.name
        for step in ORDER:                       # every step recorded, none missing
            assert h[STATUS[step]] in ("COMPLETE", "SKIPPED")
        for key in ("R_MASK", "R_SATURA", "R_SUPERB", "R_LINEAR", "R_DARK", "R_GAIN", "R_READNO"):
            assert h[key].startswith("downlink_nrca1_")
        assert "DATE" not in h                     # no wall clock: products are reproducible
    rate, cal = (_planes(result.products[k].path)["_primary"] for k in (0, 2))
    assert rate["S_FLAT"] == "SKIPPED" and "R_FLAT" not in rate   # a rate is not flat-fielded
    assert cal["S_FLAT"] == "COMPLETE" and cal["R_FLAT"] == "downlink_nrca1_flat_0001.fits"


def test_slopes_match_the_injected_rates(exposure) -> None:
    _, truth, result = exposure
    rate = _planes(result.products[0].path)
    sci, err, q = rate["SCI"], rate["ERR"], rate["DQ"]
    usable = (q & (dq.DO_NOT_USE | dq.SATURATED)) == 0
    pull = (sci - truth.expected) / err
    hit = truth.cr.any(axis=0)
    jumped = (q & dq.JUMP_DET) != 0
    for sel in (usable & ~hit & ~jumped, usable & hit & jumped):
        assert sel.sum() > 100
        assert abs(pull[sel].mean()) < 0.15 and 0.85 < pull[sel].std() < 1.15
    # flux calibration: the cal product gives the sky rate times PHOTMJSR
    cal = _planes(result.products[2].path)
    ok = (cal["DQ"] & dq.DO_NOT_USE) == 0
    cal_pull = (cal["SCI"] - truth.rate * truth.photmjsr) / cal["ERR"]
    sel = ok & ~hit & ~truth.saturated
    assert abs(cal_pull[sel].mean()) < 0.15 and 0.85 < cal_pull[sel].std() < 1.15


def test_saturated_and_missing_pixels_are_flagged(exposure) -> None:
    _, truth, result = exposure
    q = _planes(result.products[0].path)["DQ"].reshape(-1)
    assert truth.saturated.sum() > 20
    assert (q.reshape(truth.saturated.shape)[truth.saturated] & dq.SATURATED).all()
    for a, n in ((700, 150), (3000, 40)):
        assert (q[a:a + n] & dq.DO_NOT_USE).all() and (q[a:a + n] & dq.DROPOUT).all()
    assert not (q[850:900] & dq.DROPOUT).any()
    ints = _planes(result.products[1].path)["DQ"].reshape(2, -1)
    assert (ints[0, 700:850] & dq.DROPOUT).all()


def test_same_input_same_bytes_whatever_the_block_size(exposure, refs, tmp_path: Path) -> None:
    path, _, result = exposure
    again = run_pipeline(path, tmp_path, refs[1], block_rows=64)
    assert [p.sha256 for p in again.products] == [p.sha256 for p in result.products]


def test_step_subset_records_skipped(exposure, refs, tmp_path: Path) -> None:
    path, _, _ = exposure
    res = run_pipeline(path, tmp_path, refs[1], steps=["ramp_fit", "saturation", "dq_init"])
    assert [p.kind for p in res.products] == ["rate", "rateints"]
    h = _planes(res.products[0].path)["_primary"]
    assert (h["S_DQINIT"], h["S_SATURA"], h["S_RAMP"]) == ("COMPLETE",) * 3
    assert all(h[STATUS[s]] == "SKIPPED" for s in ORDER if s not in ("dq_init", "saturation", "ramp_fit"))
    assert "R_DARK" not in h and h["R_MASK"].startswith("downlink_nrca1_mask")


def test_missing_references_name_what_is_missing(refs, tmp_path: Path) -> None:
    meta = make_meta("NRCB1", size=(16, 16), ngroups=3)
    sci, _ = render(meta)
    path = write_exposure(tmp_path, meta, sci)
    with pytest.raises(CalibrationError, match="NRCB1"):
        run_pipeline(path, tmp_path / "out", refs[1])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bad_files_are_clear_errors(exposure, refs, tmp_path: Path) -> None:
    path, _, _ = exposure
    trunc = tmp_path / "trunc_uncal.fits"
    trunc.write_bytes(path.read_bytes()[: 40000])
    junk = tmp_path / "junk_uncal.fits"
    junk.write_bytes(b"not a fits file" * 100)
    liar = tmp_path / "liar_uncal.fits"
    with fits.open(path) as h:
        h[0].header["NGROUPS"] = 7
        h.writeto(liar)
    for bad, what in ((trunc, "truncated"), (junk, "not a readable FITS"), (liar, "keywords say")):
        with pytest.raises(CalibrationError, match=what):
            run_pipeline(bad, tmp_path / "out", refs[1])


def _traced_peak(path: Path, out: Path, ctx: object, block_rows: int) -> int:
    tracemalloc.start()
    try:
        run_pipeline(path, out, ctx, block_rows=block_rows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_block_not_the_exposure(refs, tmp_path: Path) -> None:
    peaks, sizes = [], []
    for rows in (128, 512):
        meta = make_meta(size=(512, rows), ngroups=10, substrt=(1, 1), exposure=rows)
        sci, _ = render(meta, cr_per_int=0.01, bright_fraction=0.0)
        path = write_exposure(tmp_path, meta, sci)
        run_pipeline(path, tmp_path / "warm", refs[1], block_rows=16)   # imports, reference checks
        peaks.append(_traced_peak(path, tmp_path / f"out{rows}", refs[1], block_rows=16))
        sizes.append(path.stat().st_size)
    assert sizes[1] > 3.5 * sizes[0]
    # four times the exposure, (about) the same peak: the work is per block of rows
    assert peaks[1] < 1.3 * peaks[0], f"peaks {peaks} for inputs of {sizes} bytes"
    assert peaks[1] < sizes[1]


def test_l3_combines_a_visit_and_rejects_outliers(refs, tmp_path: Path) -> None:
    from stdatamodels.jwst import datamodels as dm

    rng = np.random.default_rng(5)
    rate = np.exp(rng.uniform(np.log(1), np.log(50), (40, 48))).astype(np.float32)
    cals = []
    for e in (1, 2, 3):
        meta = make_meta(size=(48, 40), exposure=e)
        sci, truth = render(meta, seed=e, rate=rate, cr_per_int=0.0)
        res = run_pipeline(write_exposure(tmp_path, meta, sci), tmp_path / "cal", refs[1])
        cals.append(Path(res.products[2].path))
    with fits.open(cals[1], mode="update") as h:
        h["SCI"].data[10, 10] += 1000.0           # an outlier in one member
    out = combine(cals, tmp_path / "l3")
    assert Path(out["path"]).name == "jw01234-o001_tngc-1234_nircam_f200w_i2d.fits"
    with dm.ImageModel(out["path"], strict_validation=True) as m:
        m.validate()
        assert m.data.shape == (40, 48)
    p = _planes(out["path"])
    assert p["_primary"]["NMEMBER"] == 3 and p["_primary"]["MEM002"] == cals[1].name
    assert p["CON"][10, 10] == 2 and p["CON"][20, 20] == 3
    ok = p["CON"] == 3
    pull = (p["SCI"] - rate * truth.photmjsr) / p["ERR"]
    assert abs(pull[ok].mean()) < 0.2 and 0.8 < pull[ok].std() < 1.2
    # the combination is tighter than any member
    one = _planes(str(cals[0]))["ERR"]
    assert np.median(p["ERR"][ok]) < 0.7 * np.median(one[ok])


def _stdatamodels_uncal(path: Path) -> None:
    """An uncal written by stdatamodels itself (not by downlink)."""
    from stdatamodels.jwst import datamodels as dm

    meta = make_meta(size=(32, 24), ngroups=5, substrt=(301, 401))
    sci, _ = render(meta, seed=2)
    m = dm.Level1bModel(data=sci)
    m.meta.instrument.name = "NIRCAM"
    m.meta.instrument.detector = "NRCA1"
    m.meta.instrument.filter = "F200W"
    m.meta.instrument.pupil = "CLEAR"
    m.meta.exposure.type = "NRC_IMAGE"
    m.meta.exposure.readpatt = "RAPID"
    m.meta.exposure.nints, m.meta.exposure.ngroups = 1, 5
    m.meta.exposure.nframes, m.meta.exposure.groupgap = 1, 0
    m.meta.exposure.frame_time = meta.tframe
    m.meta.exposure.group_time = meta.tframe
    m.meta.exposure.start_time = 60000.5
    m.meta.exposure.end_time = 60000.51
    m.meta.subarray.name = "SUBGRISM64" if False else "FULL"
    m.meta.subarray.xstart, m.meta.subarray.ystart = 301, 401
    m.meta.subarray.xsize, m.meta.subarray.ysize = 32, 24
    m.save(path)
    m.close()


@pytest.mark.parametrize("steps", [None, "dq_init,saturation,jump,ramp_fit"])
def test_offline_command_on_a_stdatamodels_uncal(refs, tmp_path: Path, steps: str | None) -> None:
    from stdatamodels.jwst import datamodels as dm

    path = tmp_path / "foreign_uncal.fits"
    _stdatamodels_uncal(path)
    args = [sys.executable, "-m", "downlink", "calibrate", str(path), "--out", str(tmp_path / "o"),
            "--refs", str(refs[0]), "--json"] + (["--steps", steps] if steps else [])
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rate = tmp_path / "o" / "foreign_rate.fits"
    with dm.ImageModel(rate, strict_validation=True) as m:
        m.validate()
        assert m.data.shape == (24, 32)
        assert m.meta.cal_step.jump == "COMPLETE"
        assert m.meta.cal_step.dark_sub == ("SKIPPED" if steps else "COMPLETE")
    assert (tmp_path / "o" / "foreign_cal.fits").exists() == (steps is None)


def test_offline_command_fails_cleanly(refs, tmp_path: Path) -> None:
    bad = tmp_path / "bad_uncal.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b" " * 3000)
    run = subprocess.run([sys.executable, "-m", "downlink", "calibrate", str(bad), "--refs", str(refs[0])],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "error:" in run.stderr
