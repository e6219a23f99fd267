"""``downlink verify --truth FILE --data DIR``: L0 outputs against simulator truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify_cmd(
        ctx: typer.Context,
        truth: Path = typer.Option(..., exists=True, dir_okay=False, help="truth JSON from `downlink simulate`"),
        data: Optional[Path] = typer.Option(None, help="L0 folder (default: the data dir)"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """Compare L0 files with the truth; exit 1 on any mismatch."""
        from products.verify import load_truth, verify

        data_dir = data or settings_of(ctx).data_dir
        result = verify(load_truth(truth), data_dir)
        if as_json:
            print(json.dumps({"ok": result.ok, "rows": [r.__dict__ for r in result.rows]}))
        else:
            table = Table(title=f"L0 vs truth ({data_dir})")
            for col in ("exposure", "expected", "found", "version", "ok", "detail"):
                table.add_column(col)
            for r in result.rows:
                table.add_row(r.exposure_id, r.expected, r.found, str(r.version or "-"),
                              "[green]yes[/]" if r.ok else "[red]NO[/]", r.detail)
            console = Console(width=max(Console().width, 140))
            console.print(table)
            console.print(f"{len(result.rows) - len(result.mismatches)}/{len(result.rows)} match"
                          + ("" if result.ok else f", [red]{len(result.mismatches)} mismatch(es)[/]"))
        raise typer.Exit(0 if result.ok else 1)
