"""Reference files from the detector model and their immutable, numbered contexts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from core.errors import CalibrationError
from core.settings import Settings
from products.refs import RefStore, applicable, model_class, refs_root
from streams.simulator.detector import DetectorModel


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> RefStore:
    s = RefStore(tmp_path_factory.mktemp("refs"))
    s.make(["NRCA1", "MIRIMAGE"])
    return s


def test_every_file_opens_with_its_stdatamodels_model(store):
    from stdatamodels.jwst import datamodels

    ctx = store.best()
    assert ctx.name == "downlink_0001" and ctx.detectors == ["MIRIMAGE", "NRCA1"]
    for det in ctx.detectors:
        assert set(ctx.files[det]) == set(applicable(det))
        # every type on NIRCam; on MIRI the instrument-specific photom model (time: these are full frames)
        for reftype in applicable(det) if det == "NRCA1" else ("photom", "mask"):
            cls = getattr(datamodels, model_class(reftype, det))
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with cls(str(ctx.path(reftype, det)), strict_validation=True) as model:
                    model.validate()
                    assert model.meta.instrument.detector == det
                    assert model.meta.reftype.lower() == reftype


def test_files_hold_the_detector_model_cut_to_the_subarray(store):
    ctx = store.best()
    window = (101, 205, 64, 48)
    maps = DetectorModel("NRCA1").maps(*window)
    x = {r: ctx.load(r, "NRCA1", *window) for r in applicable("NRCA1")}
    assert np.array_equal(x["mask"]["dq"], maps.dq)
    assert np.array_equal(x["superbias"]["data"], maps.superbias)
    assert np.array_equal(x["gain"]["data"], maps.gain)
    assert np.array_equal(x["readnoise"]["data"], maps.readnoise)
    assert np.array_equal(x["dark"]["rate"], maps.dark)
    assert np.allclose(x["dark"]["data"][0], maps.dark * x["dark"]["frame_time"], rtol=1e-6)
    assert np.array_equal(x["saturation"]["data"], maps.saturation)
    assert np.array_equal(x["linearity"]["coeffs"], maps.linearity_coeffs())
    assert np.array_equal(x["flat"]["data"][maps.alive], maps.flat[maps.alive])
    model = DetectorModel("NRCA1")
    assert x["photom"]["photmjsr"] == pytest.approx(model.photmjsr, rel=1e-6)
    assert x["photom"]["pixar_sr"] == pytest.approx(model.pixar_sr)
    assert x["mask"].path.name.startswith("downlink_nrca1_mask_") and len(x["gain"].sha256) == 64
    full = ctx.load("gain", "NRCA1")
    assert full["data"].shape == (2048, 2048)


def test_missing_things_are_named(store):
    ctx = store.best()
    with pytest.raises(CalibrationError, match="no reference files for detector NRCB4.*refs make --detectors NRCB4"):
        ctx.load("gain", "NRCB4", 1, 1, 64, 64)
    with pytest.raises(CalibrationError, match="outside"):
        ctx.load("gain", "MIRIMAGE", 1000, 1, 64, 64)
    with pytest.raises(CalibrationError, match="unknown reference type"):
        ctx.path("ipc", "NRCA1")
    with pytest.raises(CalibrationError, match="downlink_0042 does not exist"):
        store.best("downlink_0042")
    with pytest.raises(CalibrationError, match="no reference context"):
        RefStore(store.root / "nowhere").best()
    spectro = RefStore(store.root.parent / "spectro")
    ctx2, _ = spectro.make(["MIRIFUSHORT"])
    assert "photom" not in ctx2.files["MIRIFUSHORT"] and "photom" not in applicable("NRS1")
    with pytest.raises(CalibrationError, match="no photom reference file for MIRIFUSHORT"):
        ctx2.load("photom", "MIRIFUSHORT")


def test_contexts_derive_and_never_change(store, tmp_path):
    root = tmp_path / "r"
    s = RefStore(root)
    c1, made = s.make(["MIRIFULONG"])
    first = (root / "downlink_0001.json").read_bytes()
    again, made_again = s.make(["MIRIFULONG"])
    assert made and not made_again and again.name == "downlink_0001" and s.contexts() == ["downlink_0001"]
    c2, made2 = s.make(["MIRIFULONG", "MIRIFUSHORT"])
    assert made2 and c2.name == "downlink_0002" and c2.parent == "downlink_0001"
    assert c2.files["MIRIFULONG"] == c1.files["MIRIFULONG"]  # unchanged detectors share their files
    assert c2.document["changed"] == ["MIRIFUSHORT"]
    c3, _ = s.make(["MIRIFULONG"], seed=99)
    assert c3.name == "downlink_0003" and c3.files["MIRIFULONG"]["gain"]["file"] != c1.files["MIRIFULONG"]["gain"]["file"]
    assert (root / "downlink_0001.json").read_bytes() == first
    assert s.best().name == "downlink_0003" and s.best("downlink_0001").name == "downlink_0001"
    assert not np.array_equal(s.best().load("gain", "MIRIFULONG", 1, 1, 64, 64)["data"],
                              s.best("downlink_0002").load("gain", "MIRIFULONG", 1, 1, 64, 64)["data"])
    # a damaged file is refused by its checksum
    path = c3.path("readnoise", "MIRIFULONG")
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) - 100)
        fh.write(b"\xff" * 8)
    with pytest.raises(CalibrationError, match="does not match the sha256"):
        s.best().load("readnoise", "MIRIFULONG", 1, 1, 8, 8)
    # a context name is taken once: publishing over it fails
    with pytest.raises(CalibrationError, match="created by someone else"):
        s._publish("downlink_0003", {"schema": "x"})
    assert json.loads((root / "downlink_0003.json").read_text())["name"] == "downlink_0003"


def test_refs_root_setting(tmp_path):
    assert refs_root(Settings().replace(data_dir=tmp_path)) == tmp_path / "refs"
    assert refs_root(Settings().replace(calibrate_refs_dir=str(tmp_path / "x"))) == tmp_path / "x"


def test_cli_make_list_show(tmp_path):
    from downlink.cli.main import app

    runner = CliRunner()
    root = str(tmp_path / "cli")
    r = runner.invoke(app, ["refs", "make", "--detectors", "MIRIFUSHORT", "--root", root, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["context"] == "downlink_0001"
    r = runner.invoke(app, ["refs", "list", "--root", root, "--json"])
    listed = json.loads(r.output.strip().splitlines()[-1])
    assert [c["context"] for c in listed["contexts"]] == ["downlink_0001"] and listed["contexts"][0]["best"]
    r = runner.invoke(app, ["refs", "show", "downlink_0001", "--root", root, "--verify", "--json"])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["bad"] == []
    r = subprocess.run([sys.executable, "-m", "downlink", "refs", "make", "--detectors", "NOPE", "--root", root],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unknown detector 'NOPE'" in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not (Path(root) / "downlink_0002.json").exists()
