"""``downlink calibrate FILE_uncal.fits [--out DIR] [--context C] [--steps ...]``: the offline pipeline.

The same steps the calibrate service runs, on any uncal file (ours, or one
written by stdatamodels / the jwst pipeline): geometry and times come from its
keywords. Bad input (not FITS, truncated, keywords contradicting the data,
reference files missing for its detector or subarray) is one clear line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_cmd(
        ctx: typer.Context,
        file: Path = typer.Argument(..., help="an uncal FITS file (NINTS, NGROUPS, NY, NX ramps)"),
        out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the input's folder)"),
        context: Optional[str] = typer.Option(None, "--context", help="reference context, e.g. downlink_0001 "
                                              "(default: DOWNLINK_CALIBRATE_CONTEXT, else the newest)"),
        steps: Optional[str] = typer.Option(None, "--steps", help="comma-separated subset, run in pipeline "
                                            "order (ramp_fit required); the others are recorded SKIPPED"),
        refs: Optional[Path] = typer.Option(None, "--refs", help="reference root (default: "
                                            "DOWNLINK_CALIBRATE_REFS_DIR, else <data dir>/refs)"),
        block_rows: Optional[int] = typer.Option(None, "--block-rows", min=1,
                                                 help="rows per processing block (memory bound)"),
        as_json: bool = typer.Option(False, "--json", help="print the products as JSON"),
    ) -> None:
        """Calibrate one uncal file into _rate, _rateints and _cal products."""
        from consumers.calibrate.pipeline import run_pipeline
        from products.refs.store import RefStore, refs_root

        settings = settings_of(ctx)
        root = refs or refs_root(settings)
        chosen = RefStore(root).best(context or settings.calibrate.context or None)
        names = None if steps is None else [s for s in steps.split(",") if s.strip()]
        result = run_pipeline(file, out or file.parent, chosen, steps=names,
                              block_rows=block_rows or settings.calibrate.block_rows)
        if as_json:
            print(json.dumps({"context": chosen.name, "products": [p.to_dict() for p in result.products],
                              "steps": [{"step": n, "status": s} for n, _, s in result.provenance.steps],
                              "seconds": {k: round(v, 4) for k, v in result.step_seconds.items()}}))
            return
        for n, _, s in result.provenance.steps:
            typer.echo(f"  {n:<13} {s}")
        for p in result.products:
            typer.echo(f"{p.kind:<9} {p.path}  {p.size} bytes  sha256 {p.sha256[:16]}")
        typer.echo(f"context {chosen.name}, {result.step_seconds['total']:.2f} s")
