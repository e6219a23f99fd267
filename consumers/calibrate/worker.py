"""What runs inside the calibrate service's worker processes (plain dicts in, plain dicts out).

Two pools: the bulk lane (``settings.calibrate.workers`` processes) and one
process reserved for ToO requests, so a ToO never waits for a free worker.
While a ToO runs, the service sets a shared event and bulk workers pause
between row blocks (``_between_blocks``), giving the ToO the CPU; they resume
where they were once it is done.

Idempotence: products go to ``<out>/<exposure id>/<context>-<sha12 of the uncal>/``;
when a replayed request finds all its products there (the renames are the last
thing a run does), it returns them without recomputing.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

_PAUSE: Any = None
_LANE = "bulk"


def init_worker(pause_event: Any, lane: str) -> None:
    """Process-pool initializer: remember the shared pause event and this pool's lane."""
    global _PAUSE, _LANE
    _PAUSE = pause_event
    _LANE = lane


def _between_blocks() -> None:
    if _LANE == "bulk" and _PAUSE is not None:
        while _PAUSE.is_set():
            time.sleep(0.02)


def output_dir(out_root: Path, exposure_id: str, context: str, uncal_sha256: str) -> Path:
    return Path(out_root) / exposure_id / f"{context}-{uncal_sha256[:12]}"


def calibrate_request(job: dict[str, Any]) -> dict[str, Any]:
    """Calibrate one request's uncal file; returns products, provenance summary and step seconds."""
    from consumers.calibrate.pipeline import RATE_KINDS, run_pipeline
    from products.fits import sha256_of
    from products.fits.products import LEVELS, product_name
    from products.refs.store import RefStore

    started = time.time()
    req = job["request"]
    uncal = Path(req["uncal_path"])
    context = RefStore(job["refs_root"]).best(req.get("context") or job.get("pinned") or None)
    from core.errors import CalibrationError
    if not uncal.is_file():
        raise CalibrationError(f"{uncal}: the uncal file of {req['exposure_id']} does not exist")
    sha = sha256_of(uncal)
    folder = output_dir(job["out_root"], req["exposure_id"], context.name, sha)
    kinds = list(RATE_KINDS) + ["cal"]
    existing = [folder / product_name(req["exposure_id"], k) for k in kinds]
    if all(p.is_file() for p in existing):
        products = [{"kind": k, "suffix": k, "level": LEVELS[k], "path": str(p), "sha256": sha256_of(p),
                     "size": p.stat().st_size} for k, p in zip(kinds, existing)]
        return {"products": products, "context": context.name, "uncal_sha256": sha, "seconds": {},
                "reused": True, "started_at": started, "finished_at": time.time()}
    result = run_pipeline(uncal, folder, context, block_rows=job["block_rows"],
                          stem=req["exposure_id"], input_sha256=sha, between_blocks=_between_blocks)
    m = result.meta
    return {"products": [p.to_dict() for p in result.products], "context": context.name,
            "uncal_sha256": sha, "seconds": result.step_seconds, "reused": False,
            "program": m.program, "observation": m.observation, "visit": m.visit,
            "detector": m.detector, "started_at": started, "finished_at": time.time()}


def build_l3(job: dict[str, Any]) -> dict[str, Any]:
    """Combine a visit's cal products of one detector into its i2d."""
    from consumers.calibrate.l3 import combine, l3_folder

    started = time.time()
    folder = l3_folder(job["out_root"], job["program"], job["observation"], job["visit"], job["detector"])
    product = combine([Path(p) for p in job["members"]], folder, block_rows=job["block_rows"])
    return {"products": [product], "started_at": started, "finished_at": time.time()}


def spawn_context() -> Any:
    """Worker processes are spawned, not forked: the service process runs threads and a loop."""
    return multiprocessing.get_context("spawn")
