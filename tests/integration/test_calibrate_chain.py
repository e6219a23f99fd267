"""Simulated contact -> demux -> l0 -> l1b -> calibrate: slopes against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from consumers.calibrate.steps import dq
from consumers.framework.runner import run_services
from products.fits.uncal import UncalFile
from products.refs.store import RefStore
from streams.simulator.ramps import expected_slope
from tests.integration.helpers import fast, ingest, read_all, simulate

pytestmark = pytest.mark.integration


async def test_contact_to_calibrated_products_match_the_truth(settings, topics, tmp_path):
    from stdatamodels.jwst import datamodels as dm

    settings = fast(settings).replace(calibrate_workers=1)
    truth = simulate(settings, tmp_path, seed=180, contact="CALA", exposures=3, max_subarray=128,
                     faults="drop=0.02")
    detectors = sorted({e["exposure_id"].rsplit("_", 1)[-1].upper() for e in truth["exposures"]})
    RefStore(settings.data_dir / "refs").make(detectors)
    ingest(settings, tmp_path / "CALA.bin", "CALA")
    assert await run_services(settings, ["demux", "l0", "l1b", "calibrate"], until_idle=True) == 0

    done = {m["exposure_id"]: m for _, m in await read_all(settings, "cal.done")
            if m.get("kind", "exposure") == "exposure"}
    assert set(done) == {e["exposure_id"] for e in truth["exposures"]}
    pulls_clean, pulls_jump, dropped = [], [], 0
    for e in truth["exposures"]:
        eid = e["exposure_id"]
        paths = {p["suffix"]: p["path"] for p in done[eid]["products"]}
        with dm.ImageModel(paths["rate"], strict_validation=True) as m:
            m.validate()
        with dm.CubeModel(paths["rateints"], strict_validation=True) as m:
            m.validate()
        with dm.ImageModel(paths["cal"], strict_validation=True) as m:
            m.validate()
        with fits.open(paths["rate"]) as h:
            sci, err, q = h["SCI"].data, h["ERR"].data, h["DQ"].data
        expected = expected_slope(truth, eid)
        usable = (q & (dq.DO_NOT_USE | dq.SATURATED)) == 0
        pull = (sci - expected) / np.where(err > 0, err, np.inf)
        jumped = (q & dq.JUMP_DET) != 0
        pulls_clean.append(pull[usable & ~jumped])
        pulls_jump.append(pull[usable & jumped])
        # pixels no packet delivered are DO_NOT_USE | DROPOUT in the rate
        uncal = done[eid]["uncal_path"]
        with UncalFile(uncal) as u:
            missing = u.missing
        flat = q.reshape(-1)
        for row in missing:
            a, n = int(row["first_pixel"]), int(row["count"])
            assert (flat[a:a + n] & dq.DO_NOT_USE).all() and (flat[a:a + n] & dq.DROPOUT).all()
            dropped += n
    clean, jump = np.concatenate(pulls_clean), np.concatenate(pulls_jump)
    assert clean.size > 5000
    assert abs(np.mean(clean)) < 0.1 and 0.9 < np.std(clean) < 1.15, (np.mean(clean), np.std(clean))
    print(f"pulls: clean n={clean.size} mean={np.mean(clean):.3f} std={np.std(clean):.3f}; "
          f"with jumps n={jump.size} median={np.median(jump):.3f} std={np.std(jump):.3f}")
    if jump.size > 30:   # few pixels: allow three standard errors of a median
        assert abs(np.median(jump)) < 3 * 1.25 * np.std(jump) / np.sqrt(jump.size)
        assert 0.7 < np.std(jump) < 1.4
    assert dropped > 0 or not any(e["lost"] for e in truth["exposures"])
