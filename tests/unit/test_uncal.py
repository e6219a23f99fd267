"""The uncal layout and the L0 -> L1b reformatting (no Kafka).

L0 files are cut from a simulated contact (the exposure's packets in canonical
order, as the l0 service writes them); pixel placement is checked against a
plain per-packet loop over the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from consumers.l1b.reformat import reformat
from consumers.l1b.service import L1b, too_programs
from core.errors import CalibrationError, ConfigError, ValidationError
from core.settings import Settings
from core.timecodes import tai_to_mjd_utc
from products.fits.uncal import (
    MISSING_DTYPE,
    SciBuffer,
    UncalFile,
    UncalMeta,
    mark_missing,
    read_uncal,
    uncal_path,
    write_uncal,
)
from products.l0 import MANIFEST_SCHEMA, l0_paths
from streams.decoder import decode_all
from streams.messages import L0Ready
from streams.packets import Kind, encode_science_data
from streams.simulator import SimOptions, simulate


def _models(path: Path) -> None:
    from stdatamodels.jwst import datamodels

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cls in (datamodels.Level1bModel, datamodels.RampModel):
            with cls(str(path), strict_validation=True) as model:
                model.validate()


class Contact:
    def __init__(self, tmp: Path, **kw) -> None:
        simulate(SimOptions(**kw), tmp / "c.bin", tmp / "c.json")
        self.truth = json.loads((tmp / "c.json").read_text())
        self.chunk = decode_all((tmp / "c.bin").read_bytes())

    def rows(self, e: dict) -> np.ndarray:
        p, tag = self.chunk.packets, e["tag"]
        m = (p.apid == e["apid"]) & (p.kind >= 2)
        for field in ("program", "observation", "visit", "activity", "exposure"):
            m &= getattr(p, field) == tag[field]
        return np.flatnonzero(m)

    def l0(self, e: dict, drop: set[int] = frozenset()) -> bytes:
        """The exposure's L0 bytes; ``drop`` = positions (in the exposure's packets) to leave out."""
        return b"".join(self.chunk.packet(i) for k, i in enumerate(self.rows(e).tolist()) if k not in drop)

    def cube(self, e: dict) -> np.ndarray:
        p, m = self.chunk.packets, e["meta"]
        cube = np.zeros((m["nints"], m["ngroups"], m["subsize1"] * m["subsize2"]), np.uint16)
        for i in self.rows(e).tolist():
            if p.kind[i] == Kind.SCIENCE_DATA:
                n, o = int(p.pixel_count[i]), int(p.pixel_offset[i])
                cube[p.integration[i] - 1, p.group[i] - 1, o:o + n] = np.frombuffer(
                    self.chunk.data, ">u2", n, int(p.offset[i]) + 38)
        return cube.reshape(m["nints"], m["ngroups"], m["subsize2"], m["subsize1"])


@pytest.fixture(scope="module")
def contact(tmp_path_factory) -> Contact:
    return Contact(tmp_path_factory.mktemp("uncal"), seed=52, exposures=4,
                   detectors=("NRCA1", "NIS", "MIRIMAGE"), max_subarray=320)


def _write(tmp: Path, contact: Contact, e: dict, blob: bytes, version: int = 1) -> Path:
    l0 = tmp / f"{e['exposure_id']}_l0.dat"
    l0.write_bytes(blob)
    rf = reformat(l0, e["exposure_id"], l0_version=version, l0_sha256=hashlib.sha256(blob).hexdigest())
    out = uncal_path(tmp, e["exposure_id"])
    write_uncal(out, rf.meta, rf.sci, group_end_tai=rf.group_end_tai, missing=rf.missing)
    return out


def test_uncal_equals_the_transmitted_ramps_and_validates(contact, tmp_path):
    assert len({e["tag"]["detector"] for e in contact.truth["exposures"]}) >= 2
    for e in contact.truth["exposures"]:
        blob = contact.l0(e)
        assert hashlib.sha256(blob).hexdigest() == e["l0_sha256"]
        out = _write(tmp_path, contact, e, blob)
        _models(out)
        meta, sci, missing = read_uncal(out)
        assert sci.dtype == np.uint16 and np.array_equal(sci, contact.cube(e)), e["exposure_id"]
        assert missing.size == 0
        m = e["meta"]
        assert (meta.nints, meta.ngroups, meta.nframes, meta.groupgap) == (
            m["nints"], m["ngroups"], m["nframes"], m["groupgap"])
        assert (meta.substrt1, meta.substrt2, meta.subsize1, meta.subsize2) == (
            m["substrt1"], m["substrt2"], m["subsize1"], m["subsize2"])
        assert abs(meta.start_tai - e["start_tai"]) < 1e-3 and meta.l0_sha256 == e["l0_sha256"]
        from astropy.io import fits

        h = fits.getheader(out)
        assert h["EXPSTART"] == pytest.approx(tai_to_mjd_utc(e["start_tai"]), abs=1e-8)
        assert h["EXPSTART"] < h["EXPMID"] < h["EXPEND"]
        assert h["TGROUP"] == pytest.approx((m["nframes"] + m["groupgap"]) * m["tframe_us"] * 1e-6)
        assert h["PROGRAM"] == f"{e['tag']['program']:05d}" and h["EXPOSURE"] == f"{e['tag']['exposure']:05d}"
        assert h["READPATT"] == m["readpatt"] and h["EXP_TYPE"] == m["exp_type"]
        assert h["L0_VER"] == 1 and h["L0_CMPLT"] is True and h["MISSPIX"] == 0 and h["SDP_VER"]
        assert fits.getheader(out, "SCI")["BZERO"] == 32768
        with fits.open(out) as hdul:
            assert [x.name for x in hdul] == ["PRIMARY", "SCI", "GROUP", "INT_TIMES", "MISSING"]
            assert len(hdul["GROUP"].data) == m["nints"] * m["ngroups"]
            assert len(hdul["INT_TIMES"].data) == m["nints"]
            assert np.all(np.diff(hdul["GROUP"].data["bary_end_time"][: m["ngroups"]]) > 0)


def test_missing_packets_become_missing_ranges(contact, tmp_path):
    e = max(contact.truth["exposures"], key=lambda x: x["data_packets"])
    m = e["meta"]
    npix = m["subsize1"] * m["subsize2"]
    ppg = -(-npix // 4000)
    n = e["packets"]
    # drop: the 2nd data packet, a whole group (the 2nd), and the exposure end
    drop = {2} | set(range(1 + ppg, 1 + 2 * ppg)) | {n - 1}
    out = _write(tmp_path, contact, e, contact.l0(e, drop))
    _models(out)
    with UncalFile(out) as f:
        got = f.missing
        assert not f.meta.l0_complete and f.meta.missing_pixels == int(got["count"].sum())
        sci = f.sci()
    want = [(1, 1, 4000, min(4000, npix - 4000))] if ppg > 1 else [(1, 2 if ppg == 1 else 1, 0, npix)]
    if ppg > 1:
        want.append((1, 2, 0, npix))
    assert sorted(map(tuple, got.tolist())) == sorted(set(want))
    cube = contact.cube(e)
    mask = np.zeros(cube.shape, bool).reshape(m["nints"], m["ngroups"], -1)
    for i, g, a, c in got.tolist():
        mask[i - 1, g - 1, a:a + c] = True
    mask = mask.reshape(cube.shape)
    assert not sci[mask].any() and np.array_equal(sci[~mask], cube[~mask])
    from astropy.io import fits

    with fits.open(out) as hdul:
        gaps = hdul["GROUP"].data["number_of_gaps"]
        assert gaps.sum() == len(got) and hdul[0].header["EXPEND"] > hdul[0].header["EXPSTART"]
    # mark_missing over row blocks gives the same mask as the whole frame at once
    ny = m["subsize2"]
    dq = np.zeros(cube.shape, np.uint8)
    for y0 in range(0, ny, 37):
        y1 = min(ny, y0 + 37)
        block = np.zeros((m["nints"], m["ngroups"], y1 - y0, m["subsize1"]), np.uint8)
        mark_missing(block, got, 9, y0, y1)
        dq[:, :, y0:y1] = block
    assert np.array_equal(dq == 9, mask) and set(np.unique(dq)) <= {0, 9}


def test_bad_l0_files_are_validation_errors(contact, tmp_path):
    e = contact.truth["exposures"][0]
    eid = e["exposure_id"]
    cases = {
        "no exposure-start": contact.l0(e, {0}),
        "not packets": contact.l0(e) + b"\x01\x02\x03garbage",
    }
    other = contact.truth["exposures"][1]
    cases["another exposure"] = contact.l0(e) + contact.chunk.packet(int(contact.rows(other)[1]))
    p = contact.chunk.packets
    first = int(contact.rows(e)[1])
    tag_time = (int(p.coarse[first]), int(p.fine[first]))
    from streams.packets import ExposureTag

    tag = ExposureTag(**e["tag"])
    outside = encode_science_data(tag, 1, 1, *tag_time, 1, e["meta"]["ngroups"] + 1, 0, np.arange(10, dtype=np.uint16))
    cases["outside the geometry"] = contact.l0(e) + outside
    for expect, blob in cases.items():
        path = tmp_path / "bad_l0.dat"
        path.write_bytes(blob)
        with pytest.raises(ValidationError, match=expect):
            reformat(path, eid, l0_version=1)
    path.write_bytes(contact.l0(e))
    with pytest.raises(ValidationError, match="sha256"):
        reformat(path, eid, l0_version=1, l0_sha256="0" * 64)


def test_the_sci_cube_is_written_without_a_copy(tmp_path):
    small = _meta()
    write_uncal(tmp_path / "warm_uncal.fits", small, SciBuffer(*small.shape))  # imports astropy's writers
    meta = _meta(nints=2, ngroups=5, nx=1024, ny=1024)
    values = np.random.default_rng(1).integers(0, 65536, meta.shape, dtype=np.uint16)
    buf = SciBuffer.from_values(values)
    tracemalloc.start()
    try:
        write_uncal(tmp_path / "x_uncal.fits", meta, buf)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < values.nbytes / 8, f"writing allocated {peak} bytes for a {values.nbytes}-byte cube"
    assert np.array_equal(read_uncal(tmp_path / "x_uncal.fits")[1], values)


def test_reformat_memory_is_one_cube_plus_a_chunk(contact, tmp_path):
    e = max(contact.truth["exposures"], key=lambda x: x["l0_bytes"])
    path = tmp_path / "l0.dat"
    path.write_bytes(contact.l0(e))
    tracemalloc.start()
    try:
        rf = reformat(path, e["exposure_id"], l0_version=1, chunk_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    cube = rf.sci.values.nbytes
    assert peak < cube + 12 * (1 << 20), (peak, cube)


def _meta(nints=1, ngroups=3, nx=64, ny=64, **kw) -> UncalMeta:
    base = dict(exposure_id="jw01234001001_01101_00001_nrca1", program=1234, observation=1, visit=1,
                visit_group=1, parallel_seq=1, activity=1, exposure=1, instrument="NIRCAM", detector="NRCA1",
                exp_type="NRC_IMAGE", readpatt="RAPID", nints=nints, ngroups=ngroups, nframes=1, groupgap=0,
                tframe=0.05, substrt1=1, substrt2=1, subsize1=nx, subsize2=ny, target="NGC 3132",
                start_tai=2.15e9, end_tai=2.15e9 + 10, filter="F200W", pupil="CLEAR", module="A", channel="SHORT")
    base.update(kw)
    return UncalMeta(**base)


def test_foreign_uncal_written_by_stdatamodels_opens(tmp_path):
    from stdatamodels.jwst import datamodels

    values = np.random.default_rng(2).integers(0, 65536, (2, 4, 32, 48), dtype=np.uint16)
    model = datamodels.Level1bModel(data=values)
    model.meta.instrument.name, model.meta.instrument.detector = "NIRCAM", "NRCB2"
    model.meta.exposure.nints, model.meta.exposure.ngroups, model.meta.exposure.nframes = 2, 4, 1
    model.meta.exposure.groupgap, model.meta.exposure.frame_time = 0, 0.1
    model.meta.exposure.start_time, model.meta.exposure.type = 60000.5, "NRC_IMAGE"
    path = tmp_path / "foreign_uncal.fits"
    model.save(path)
    with UncalFile(path) as f:
        assert f.meta.detector == "NRCB2" and f.meta.shape == (2, 4, 32, 48)
        assert (f.meta.substrt1, f.meta.subsize1, f.meta.subsize2) == (1, 48, 32)
        assert np.array_equal(f.sci(), values) and np.array_equal(f.sci(5, 9), values[:, :, 5:9])
        assert f.missing.size == 0


def test_broken_uncal_files_are_calibration_errors(tmp_path):
    good = tmp_path / "good_uncal.fits"
    write_uncal(good, _meta(), SciBuffer.from_values(np.zeros((1, 3, 64, 64), np.uint16)))
    truncated = tmp_path / "truncated_uncal.fits"
    truncated.write_bytes(good.read_bytes()[:20000])
    with pytest.raises(CalibrationError, match="truncated|not a readable FITS"):
        UncalFile(truncated)
    garbage = tmp_path / "garbage_uncal.fits"
    garbage.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(CalibrationError, match="not a readable FITS"):
        UncalFile(garbage)
    from astropy.io import fits

    with fits.open(good) as hdul:
        hdul[0].header["NGROUPS"] = 4
        hdul.writeto(tmp_path / "contradict_uncal.fits")
        del hdul[0].header["TFRAME"]
        hdul.writeto(tmp_path / "nokey_uncal.fits")
    with pytest.raises(CalibrationError, match="shape"):
        UncalFile(tmp_path / "contradict_uncal.fits")
    with pytest.raises(CalibrationError, match="TFRAME"):
        UncalFile(tmp_path / "nokey_uncal.fits")
    with pytest.raises(CalibrationError, match="no such"):
        UncalFile(tmp_path / "absent_uncal.fits")


# -- the service's file logic (versions, replays), without Kafka -----------------------------------

def _ready(settings: Settings, e: dict, blob: bytes, version: int) -> L0Ready:
    data, manifest = l0_paths(settings.data_dir, e["exposure_id"])
    data.parent.mkdir(parents=True, exist_ok=True)
    if data.exists() and version > 1:  # keep the superseded version as the l0 service does
        kept, kept_m = l0_paths(settings.data_dir, e["exposure_id"], version - 1)
        kept.write_bytes(data.read_bytes())
        kept_m.write_bytes(manifest.read_bytes())
    data.write_bytes(blob)
    manifest.write_text(json.dumps({"schema": MANIFEST_SCHEMA, "version": version, "bytes": len(blob)}))
    return L0Ready(exposure_id=e["exposure_id"], version=version, complete=version > 1,
                   sha256=hashlib.sha256(blob).hexdigest(), packets=0, bytes=len(blob), path=str(data),
                   manifest=str(manifest), program=e["tag"]["program"], detector=e["tag"]["detector"])


def test_service_versions_replays_and_priorities(contact, tmp_path):
    e = contact.truth["exposures"][0]
    settings = Settings().replace(data_dir=tmp_path, calibrate_too_programs=f"{e['tag']['program']}, 77")
    service = L1b(settings)
    v1 = _ready(settings, e, contact.l0(e, {3}), 1)
    r1 = service.make(v1)
    out = Path(r1.uncal_path)
    assert r1.priority == "too" and r1.l0_version == 1 and read_uncal(out)[2].size == 1
    v2 = _ready(settings, e, contact.l0(e), 2)
    r2 = service.make(v2)
    kept = uncal_path(out.parent, e["exposure_id"], version=1)
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == r1.uncal_sha256
    assert hashlib.sha256(out.read_bytes()).hexdigest() == r2.uncal_sha256 != r1.uncal_sha256
    assert read_uncal(out)[2].size == 0 and read_uncal(out)[0].l0_version == 2
    mtime = out.stat().st_mtime_ns
    again = service.make(v2)  # a replay: same request, the file untouched
    assert again.uncal_sha256 == r2.uncal_sha256 and out.stat().st_mtime_ns == mtime
    assert service.make(v1) is None  # stale: a newer version is already there
    other = L1b(settings.replace(calibrate_too_programs=""))
    assert other.make(v2).priority == "normal"
    gone = L0Ready(**{**v1.__dict__, "version": 5})
    with pytest.raises(ValidationError, match="not on disk"):
        service.make(gone)


def test_too_programs_setting():
    assert too_programs(" 1234, 5678;9 ") == {1234, 5678, 9} and too_programs("") == frozenset()
    with pytest.raises(ConfigError, match="program number"):
        too_programs("12a")
    assert MISSING_DTYPE.names == ("integration", "group", "first_pixel", "count")
