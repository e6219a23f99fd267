"""``downlink bench [NAME] [--json]``: run benchmarks from benchmarks/ (JSON on the last line)."""

from __future__ import annotations

import importlib
import sys
from typing import Optional

import typer

from benchmarks import BENCHMARKS


def register(app: typer.Typer) -> None:
    @app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def bench(
        ctx: typer.Context,
        name: Optional[str] = typer.Argument(None, help=f"one of {', '.join(BENCHMARKS)}; all when omitted"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last line"),
    ) -> None:
        """Run a benchmark (extra options go to it, e.g. --size-mb 2048)."""
        names = [name] if name else list(BENCHMARKS)
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            raise typer.BadParameter(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
        status = 0
        for n in names:
            module = importlib.import_module(f"benchmarks.{n}")
            argv = list(ctx.args) + (["--json"] if as_json else [])
            status |= int(module.main(argv) or 0)
        sys.exit(status)
