"""Raw contact -> demux -> l0 -> l1b on the real broker: uncal files and calibration requests.

Checked against what was transmitted (the simulated stream, decoded and placed
pixel by pixel here, independently of the service) and against the truth file
(lost packets become MISSING ranges; a re-dump makes a new uncal version).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from consumers.framework.runner import run_services
from products.fits.uncal import UncalFile, uncal_path
from streams.decoder import decode_all
from streams.kafka import make_producer, start_client
from streams.messages import L0Ready
from streams.packets import MAX_PIXELS_PER_PACKET, Kind
from tests.integration.helpers import fast, ingest, read_all, simulate

pytestmark = pytest.mark.integration


def _transmitted(stream: Path, e: dict) -> np.ndarray:
    """The exposure's ramps as sent: every data packet of the stream placed with a plain loop."""
    chunk = decode_all(stream.read_bytes())
    p, tag, m = chunk.packets, e["tag"], e["meta"]
    mine = (p.apid == e["apid"]) & (p.kind == Kind.SCIENCE_DATA)
    for field in ("program", "observation", "visit", "activity", "exposure"):
        mine &= getattr(p, field) == tag[field]
    cube = np.zeros((m["nints"], m["ngroups"], m["subsize1"] * m["subsize2"]), np.uint16)
    for i in np.flatnonzero(mine).tolist():
        n, o = int(p.pixel_count[i]), int(p.pixel_offset[i])
        cube[p.integration[i] - 1, p.group[i] - 1, o:o + n] = np.frombuffer(
            chunk.data, ">u2", n, int(p.offset[i]) + 38)
    return cube.reshape(m["nints"], m["ngroups"], m["subsize2"], m["subsize1"])


def _lost_mask(e: dict, lost: list[dict]) -> np.ndarray:
    m = e["meta"]
    npix = m["subsize1"] * m["subsize2"]
    mask = np.zeros((m["nints"], m["ngroups"], npix), bool)
    for x in lost:
        if x["kind"] == Kind.SCIENCE_DATA:
            o = x["pixel_offset"]
            mask[x["integration"] - 1, x["group"] - 1, o:o + min(MAX_PIXELS_PER_PACKET, npix - o)] = True
    return mask


def _missing_mask(f: UncalFile) -> np.ndarray:
    m = f.meta
    mask = np.zeros((m.nints, m.ngroups, m.subsize1 * m.subsize2), bool)
    for i, g, a, n in f.missing.tolist():
        mask[i - 1, g - 1, a:a + n] = True
    return mask


def _open_models(path: Path) -> None:
    from stdatamodels.jwst import datamodels

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cls in (datamodels.Level1bModel, datamodels.RampModel):
            with cls(str(path), strict_validation=True) as model:
                model.validate()


async def _bogus_ready(settings, tmp: Path) -> str:
    """An l0.ready record whose file is not an L0 file: it must be dead-lettered, not stop the service."""
    junk = tmp / "junk_l0.dat"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    exposure_id = "jw09999001001_01101_00001_nrca1"
    msg = L0Ready(exposure_id=exposure_id, version=1, complete=True, sha256="0" * 64, packets=3, bytes=5000,
                  path=str(junk), manifest=str(tmp / "junk_l0.json"), program=9999, detector=1)
    producer = make_producer(settings)
    await start_client(settings, producer)
    try:
        await producer.send_and_wait(settings.topic("l0.ready"), msg.encode(), key=exposure_id.encode())
    finally:
        await producer.stop()
    return exposure_id


async def test_contact_to_uncal_and_requests(settings, topics, tmp_path):
    truth = simulate(settings, tmp_path, seed=36, contact="L1BA", exposures=6, max_subarray=160,
                     faults="drop=0.01,redump", next_contact="L1BB")
    exposures = {e["exposure_id"]: e for e in truth["exposures"]}
    too_program = truth["exposures"][0]["tag"]["program"]
    settings = fast(settings).replace(calibrate_too_programs=str(too_program))
    partial = {k for k, e in exposures.items() if e["lost"] or len(e["contacts"]) > 1}
    lost_first = {f["exposure_id"]: [] for f in truth["faults"] if f["type"] == "drop" and f["exposure_id"]}
    for f in truth["faults"]:
        if f["type"] == "drop" and f["exposure_id"]:
            lost_first[f["exposure_id"]].append(f)
    assert lost_first, "the simulator dropped no science packet"
    bogus = await _bogus_ready(settings, tmp_path)

    # contact 1: the exposures that lost packets get a partial L0 and a partial uncal (version 1)
    ingest(settings, tmp_path / "L1BA.bin", "L1BA")
    assert await run_services(settings, ["demux", "l0", "l1b"], until_idle=True) == 0
    for exposure_id, lost in lost_first.items():
        e = exposures[exposure_id]
        path = uncal_path(settings.data_dir / exposure_id[:7], exposure_id)
        _open_models(path)
        with UncalFile(path) as f:
            assert f.meta.l0_version == 1 and not f.meta.l0_complete
            missing = _missing_mask(f)
            assert np.array_equal(missing, _lost_mask(e, lost)), exposure_id
            assert f.meta.missing_pixels == int(missing.sum()) > 0
            assert not f.sci()[missing.reshape(f.shape)].any()  # nothing invented where nothing came
    v1_sha = {k: hashlib.sha256(uncal_path(settings.data_dir / k[:7], k).read_bytes()).hexdigest()
              for k in lost_first}

    # contact 2 re-dumps the lost packets: a complete L0 version 2 and a new uncal; version 1 is kept
    ingest(settings, tmp_path / "L1BB.bin", "L1BB")
    assert await run_services(settings, ["demux", "l0", "l1b"], until_idle=True) == 0
    for exposure_id, e in exposures.items():
        folder = settings.data_dir / exposure_id[:7]
        path = uncal_path(folder, exposure_id)
        _open_models(path)
        sent = _transmitted(tmp_path / "L1BA.bin", e)
        with UncalFile(path) as f:
            assert f.meta.l0_sha256 == e["l0_sha256"] and f.meta.l0_complete
            assert f.missing.size == 0
            sci = f.sci()
            if exposure_id not in partial:
                assert np.array_equal(sci, sent), exposure_id  # byte-exact placement
            else:
                # all pixels equal the first contact's where it delivered them; the rest came later
                got = ~_lost_mask(e, lost_first.get(exposure_id, [])).reshape(sci.shape)
                assert np.array_equal(sci[got], sent[got]), exposure_id
            m = e["meta"]
            assert (f.meta.nints, f.meta.ngroups, f.meta.subsize2, f.meta.subsize1) == (
                m["nints"], m["ngroups"], m["subsize2"], m["subsize1"])
            assert abs(f.meta.start_tai - e["start_tai"]) < 1e-3
        if exposure_id in lost_first:
            kept = uncal_path(folder, exposure_id, version=1)
            assert hashlib.sha256(kept.read_bytes()).hexdigest() == v1_sha[exposure_id]
            assert f.meta.l0_version == 2

    requests = [m for _, m in await read_all(settings, "cal.requests")]
    by_version = {(r["exposure_id"], r["l0_version"]): r for r in requests}
    assert len(by_version) == len(requests), "one request per exposure version"
    expected = {(k, 1) for k in exposures} | {(k, 2) for k in lost_first}
    assert set(by_version) == expected
    for (exposure_id, version), r in by_version.items():
        want = "too" if exposures[exposure_id]["tag"]["program"] == too_program else "normal"
        assert r["priority"] == want
    for exposure_id in exposures:
        latest = max(v for k, v in by_version if k == exposure_id)
        r = by_version[(exposure_id, latest)]
        assert r["uncal_sha256"] == hashlib.sha256(Path(r["uncal_path"]).read_bytes()).hexdigest()
    assert {r["priority"] for r in requests} == {"too", "normal"}

    dead = [m for _, m in await read_all(settings, "tlm.deadletter") if isinstance(m, dict)]
    l1b_dead = [d for d in dead if d.get("service") == "l1b"]
    assert [d["exposure_id"] for d in l1b_dead] == [bogus]
    assert "ValidationError" in l1b_dead[0]["reason"]
