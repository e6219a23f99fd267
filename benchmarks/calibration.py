"""``downlink bench calibration``: our ramp fit against stcal's OLS_C, and a whole run's memory.

1. Ramp fit, single core (BLAS and OpenMP pinned to one thread, in a child
   process): the same 2048 x 2048 x 10-group ramps (Poisson + read noise,
   cosmic rays flagged by our jump step, a saturated corner) fitted by our
   ``do_ramp_fit`` (in 128-row blocks, as the pipeline runs it) and by stcal's
   ``ramp_fit_data(..., "OLS_C", "optimal")`` in the same process. Speed in
   megapixel x groups per second; agreement as |ours - stcal| / stcal's ERR on
   the jump-free, unsaturated pixels.
2. Memory: ``downlink calibrate`` (Detector1 + Image2, every step) on a
   full-frame 10-group uncal file in a fresh process; ``peak_rss_x_input`` is
   its peak RSS over the file's size (the interpreter with numpy and astropy
   included), ``rss_growth_x_input`` the same above an idle process that
   imported the same modules.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DQFLAGS = {"DO_NOT_USE": 1, "SATURATED": 2, "JUMP_DET": 4, "NO_GAIN_VALUE": 1 << 19,
           "UNRELIABLE_SLOPE": 1 << 24, "CHARGELOSS": 128, "PERSISTENCE": 32, "REFERENCE_PIXEL": 1 << 31}


def synthetic_ramps(n: int, ngroups: int, seed: int = 1) -> dict[str, Any]:
    import numpy as np

    from consumers.calibrate.steps.blocks import ExposureMeta
    from consumers.calibrate.steps.jump_step import do_jump

    rng = np.random.default_rng(seed)
    meta = ExposureMeta("NRCA1", "NIRCAM", 1, ngroups, 1, 0, 10.73677, 10.73677, 1, 1, n, n)
    rate = np.exp(rng.uniform(np.log(0.3), np.log(300), (n, n))).astype(np.float32)
    gain = np.full((n, n), 2.05, np.float32)
    rn = np.full((n, n), 14.8, np.float32)    # CDS noise (DN), as stcal expects
    data = np.empty((1, ngroups, n, n), np.float32)
    acc = np.zeros((n, n), np.float32)
    sig_read = rn / np.float32(np.sqrt(2))
    for g in range(ngroups):      # normal approximation of the Poisson increments
        lam = rate * np.float32(meta.tgroup)
        acc += lam + np.sqrt(lam / gain) * rng.standard_normal((n, n), dtype=np.float32)
        data[0, g] = acc + sig_read * rng.standard_normal((n, n), dtype=np.float32)
    hits = rng.random((n, n)) < 0.002
    at = rng.integers(1, ngroups, (n, n))
    for g in range(1, ngroups):
        data[0, g][hits & (at <= g)] += 800.0
    gdq = np.zeros(data.shape, np.uint8)
    data[0, 6:, :64, :64] = 65000.0
    gdq[0, 6:, :64, :64] = 3
    pdq = np.zeros((n, n), np.uint32)
    do_jump(data, gdq, gain, rn, 1)
    return {"meta": meta, "data": data, "gdq": gdq, "pdq": pdq, "rn": rn, "gain": gain}


def ramp_fit_child(n: int, ngroups: int, block_rows: int) -> dict[str, Any]:
    """Runs in a single-threaded child: both fits on the same ramps."""
    import numpy as np
    from stcal.ramp_fitting.ramp_fit import ramp_fit_data
    from stcal.ramp_fitting.ramp_fit_class import RampData

    from consumers.calibrate.steps.ramp_fit_step import do_ramp_fit

    r = synthetic_ramps(n, ngroups)
    m, data, gdq, pdq, rn, gain = r["meta"], r["data"], r["gdq"], r["pdq"], r["rn"], r["gain"]
    ours = np.empty((n, n), np.float32)
    t0 = time.perf_counter()
    for y in range(0, n, block_rows):
        rate, _ = do_ramp_fit(data[:, :, y:y + block_rows], gdq[:, :, y:y + block_rows],
                              pdq[y:y + block_rows], rn[y:y + block_rows], gain[y:y + block_rows], m)
        ours[y:y + block_rows] = rate.sci
    t_ours = time.perf_counter() - t0
    rd = RampData()
    rd.set_arrays(data, gdq, pdq, np.zeros((n, n), np.float32))
    rd.set_meta(name="NIRCAM", frame_time=m.tframe, group_time=m.tgroup, groupgap=0, nframes=1,
                drop_frames1=None)
    rd.set_dqflags(DQFLAGS)
    rd.start_row, rd.num_rows, rd.algorithm = 0, n, "OLS_C"
    t0 = time.perf_counter()
    image, _, _ = ramp_fit_data(rd, False, rn.copy(), gain.copy(), "OLS_C", "optimal", "none")
    t_stcal = time.perf_counter() - t0
    clean = ~((gdq != 0).any(axis=(0, 1))) & np.isfinite(image["slope"]) & (image["err"] > 0)
    dev = np.abs(ours - image["slope"])[clean] / image["err"][clean]
    work = n * n * ngroups / 1e6
    return {"ours_seconds": round(t_ours, 3), "stcal_seconds": round(t_stcal, 3),
            "ours_mpix_per_s": round(work / t_ours, 2), "stcal_mpix_per_s": round(work / t_stcal, 2),
            "ratio_to_stcal": round(t_stcal / t_ours, 3),
            "slope_max_dev_sigma": float(f"{dev.max():.3g}"),
            "slope_p999_dev_sigma": float(f"{np.quantile(dev, 0.999):.3g}"),
            "slopes_within_0p1_sigma": float(np.mean(dev < 0.1)),
            "jump_free_pixels": int(clean.sum())}


def _write_full_frame_uncal(folder: Path, ngroups: int) -> Path:
    """A full-frame NRCA1 uncal from the detector model (bias, dark, gain, flat, non-linearity)."""
    import numpy as np

    from products.fits.uncal import SciBuffer, UncalMeta, write_uncal
    from streams.simulator.detector import detector_model

    model = detector_model("NRCA1")
    maps = model.maps()
    ny, nx = maps.shape
    tframe = 10.73677
    rng = np.random.default_rng(3)
    rate = np.exp(rng.uniform(np.log(0.5), np.log(100), (ny, nx))).astype(np.float32)
    e_rate = (rate * maps.flat * maps.alive + maps.dark) * maps.gain
    buf = SciBuffer(1, ngroups, ny, nx)
    acc = np.zeros((ny, nx), np.float32)
    for g in range(ngroups):
        lam = e_rate * np.float32(tframe)
        acc += lam + np.sqrt(lam) * rng.standard_normal((ny, nx), dtype=np.float32)
        s = acc / maps.gain
        raw = maps.superbias + maps.nonlinear(s) + maps.readnoise * rng.standard_normal((ny, nx), dtype=np.float32)
        np.minimum(raw, maps.well, out=raw)
        buf.values[0, g] = np.clip(np.round(raw), 0, 65535).astype(np.uint16).reshape(-1)
    start = 2.1e9
    meta = UncalMeta(exposure_id="jw09999001001_01101_00001_nrca1", program=9999, observation=1, visit=1,
                     visit_group=1, parallel_seq=1, activity=1, exposure=1, instrument="NIRCAM",
                     detector="NRCA1", exp_type="NRC_IMAGE", readpatt="RAPID", nints=1, ngroups=ngroups,
                     nframes=1, groupgap=0, tframe=tframe, substrt1=1, substrt2=1, subsize1=nx, subsize2=ny,
                     target="BENCH", start_tai=start, end_tai=start + (ngroups + 1) * tframe,
                     filter=model.filter, pupil=model.pupil, module="A", channel="SHORT")
    path = folder / f"{meta.exposure_id}_uncal.fits"
    write_uncal(path, meta, buf)
    return path


def _child_rss(args: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """(peak RSS bytes, seconds, stdout) of one fresh child process."""
    wrapper = ("import resource, subprocess, sys, json, time; t=time.time(); "
               "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(json.dumps({'rc': p.returncode, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
               " 's': time.time()-t, 'out': p.stdout[-4000:], 'err': p.stderr[-4000:]}))")
    run = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, env=env,
                         check=True)
    res = json.loads(run.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{args[:4]} failed: {res['err']}")
    return res["rss"] * 1024, res["s"], res["out"]


def memory_run(ngroups: int) -> dict[str, Any]:
    from products.refs.store import RefStore

    with tempfile.TemporaryDirectory(prefix="downlink-bench-cal-") as tmp:
        folder = Path(tmp)
        uncal = _write_full_frame_uncal(folder, ngroups)
        RefStore(folder / "refs").make(["NRCA1"])
        env = dict(os.environ, **ONE_THREAD)
        # what an idle interpreter with the same imports holds, to tell growth from baseline
        idle, _, _ = _child_rss([sys.executable, "-c", "import consumers.calibrate.pipeline, "
                                 "products.refs.store, astropy.io.fits, downlink.cli.main"], env)
        peak, seconds, out = _child_rss([sys.executable, "-m", "downlink", "calibrate", str(uncal),
                                         "--refs", str(folder / "refs"), "--out", str(folder / "out"),
                                         "--json"], env)
        size = uncal.stat().st_size
        steps = json.loads(out.strip().splitlines()[-1])["seconds"]
        return {"uncal_mb": round(size / 2**20, 1), "peak_rss_mb": round(peak / 2**20, 1),
                "idle_rss_mb": round(idle / 2**20, 1), "peak_rss_x_input": round(peak / size, 2),
                "rss_growth_x_input": round((peak - idle) / size, 2),
                "calibrate_seconds": round(seconds, 2),
                "step_seconds": {k: round(v, 3) for k, v in steps.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="downlink bench calibration")
    p.add_argument("--json", action="store_true")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--block-rows", type=int, default=128)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(ramp_fit_child(a.size, a.groups, a.block_rows)))
        return 0
    from benchmarks.common import machine

    env = dict(os.environ, **ONE_THREAD)
    child = subprocess.run([sys.executable, "-m", "benchmarks.calibration", "--child", "--size", str(a.size),
                            "--groups", str(a.groups), "--block-rows", str(a.block_rows)],
                           capture_output=True, text=True, env=env)
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return 1
    result: dict[str, Any] = {"bench": "calibration", "pixels": a.size * a.size, "groups": a.groups,
                              "single_core": True}
    result.update(json.loads(child.stdout.strip().splitlines()[-1]))
    result.update(memory_run(a.groups))
    result.update(machine("stcal", "stdatamodels", "astropy"))
    if not a.json:
        for k, v in result.items():
            print(f"{k:>24}: {v}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
