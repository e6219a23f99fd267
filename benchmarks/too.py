"""``downlink bench too``: a ToO exposure through the whole chain while a bulk backlog waits.

1. A private topic prefix and data dir; reference files for NRCA1.
2. A bulk backlog: ``--backlog`` (default 20) full-frame 10-group exposures as
   ``normal`` requests on ``cal.requests`` (hard links of one uncal file).
3. ``downlink run --only demux,l0,l1b,calibrate`` (one bulk worker, the ToO
   program in ``DOWNLINK_CALIBRATE_TOO_PROGRAMS``), started and given time to
   start on the backlog.
4. A contact holding one full-frame 2048 x 2048, 10-group NRCA1 exposure of that
   program (``downlink simulate --seed 0 --exposures 1``) is ingested.
5. ``too_l2a_seconds``: from the end of the ingest (its last packet acknowledged
   by Kafka) to the ToO's ``_rate.fits`` on disk; ``bulk_done_before_too`` is how
   many backlog exposures finished before it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SEED = 0                       # its one exposure: NRCA1 full frame, 10 groups (SHALLOW2), program 5050
TOO_PROGRAM = 5050


def _env(prefix: str, data: Path, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DOWNLINK_TOPIC_PREFIX": prefix, "DOWNLINK_DATA_DIR": str(data),
                "DOWNLINK_STATE_DIR": str(state), "DOWNLINK_CALIBRATE_TOO_PROGRAMS": str(TOO_PROGRAM),
                "DOWNLINK_CALIBRATE_WORKERS": "1", "DOWNLINK_L0_EOC_MARGIN_SECONDS": "0.5"})
    return env


def _cli(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "downlink", *args], env=env, check=True,
                   capture_output=True, text=True)


async def _send_backlog(settings: Any, requests: list[Any]) -> None:
    from streams.kafka import make_producer, start_client

    producer = make_producer(settings)
    await start_client(settings, producer)
    try:
        for r in requests:
            await producer.send_and_wait(settings.topic("cal.requests"), r.encode(), key=r.exposure_id.encode())
    finally:
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    import asyncio

    from benchmarks.calibration import _write_full_frame_uncal
    from benchmarks.common import machine
    from core.settings import Settings
    from products.refs.store import RefStore
    from streams.messages import CalRequest

    p = argparse.ArgumentParser(prog="downlink bench too")
    p.add_argument("--json", action="store_true")
    p.add_argument("--backlog", type=int, default=20)
    p.add_argument("--timeout", type=float, default=900.0)
    a = p.parse_args(argv)
    prefix = f"benchtoo{uuid.uuid4().hex[:6]}."
    with tempfile.TemporaryDirectory(prefix="downlink-bench-too-") as tmp:
        tmp_path = Path(tmp)
        data, state = tmp_path / "data", tmp_path / "state"
        data.mkdir()
        state.mkdir()
        env = _env(prefix, data, state)
        settings = Settings.from_env(env)
        _cli(env, "topics", "create")
        RefStore(data / "refs").make(["NRCA1"])
        src = _write_full_frame_uncal(tmp_path, 10)
        now = time.time()
        backlog = []
        for k in range(1, a.backlog + 1):
            eid = f"jw09999001001_01101_{k:05d}_nrca1"
            path = data / "backlog" / f"{eid}_uncal.fits"
            path.parent.mkdir(exist_ok=True)
            os.link(src, path)
            backlog.append(CalRequest(exposure_id=eid, uncal_path=str(path), priority="normal",
                                      program=9999, requested_at=now))
        asyncio.run(_send_backlog(settings, backlog))
        _cli(env, "simulate", "--seed", str(SEED), "--exposures", "1", "--detectors", "NRCA1",
             "--max-subarray", "2048", "--contact", "TOO1", "--out", str(tmp_path / "too.bin"),
             "--truth", str(tmp_path / "too.truth.json"), "--quiet")
        truth = json.loads((tmp_path / "too.truth.json").read_text())
        exp = truth["exposures"][0]
        too_id = exp["exposure_id"]
        log = open(tmp_path / "run.log", "ab")
        run = subprocess.Popen([sys.executable, "-m", "downlink", "run", "--only", "demux,l0,l1b,calibrate"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            cal = data / "cal"
            deadline = time.time() + a.timeout
            while not list(cal.glob("jw09999*/*")) and time.time() < deadline:   # bulk work under way
                time.sleep(0.5)
            queued_at = time.time()
            subprocess.run([sys.executable, "-m", "downlink", "ingest", str(tmp_path / "too.bin"),
                            "--contact", "TOO1"], env=env, check=True, capture_output=True)
            ingested = time.time()
            rate = None
            while time.time() < deadline:
                found = list(cal.glob(f"{too_id}/*/{too_id}_rate.fits"))
                if found:
                    rate = found[0]
                    break
                time.sleep(0.2)
            if rate is None:
                raise RuntimeError(f"the ToO's rate product did not appear within {a.timeout} s; see "
                                   f"{tmp_path / 'run.log'}")
            written = rate.stat().st_mtime
            bulk_before = sum(1 for r in cal.glob("jw09999*/*/*_rate.fits") if r.stat().st_mtime < written)
        finally:
            run.send_signal(signal.SIGTERM)
            try:
                run.wait(60)
            except subprocess.TimeoutExpired:
                run.kill()
            log.close()
        result = {"bench": "too", "too_l2a_seconds": round(written - ingested, 2),
                  "bulk_backlog_exposures": a.backlog, "bulk_done_before_too": bulk_before,
                  "ingest_seconds": round(ingested - queued_at, 1),
                  "too_exposure": too_id, "too_shape": [exp["meta"][k] for k in
                                                        ("nints", "ngroups", "subsize2", "subsize1")],
                  "too_readpatt": exp["meta"]["readpatt"],
                  "goal_seconds": 60}
        result.update(machine("stcal", "astropy"))
    if not a.json:
        for k, v in result.items():
            print(f"{k:>24}: {v}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
