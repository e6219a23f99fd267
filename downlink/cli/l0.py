"""``downlink l0 rebuild [--exposure ID]``: re-create missing or damaged L0 files (docs/l0.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    l0 = typer.Typer(help="Level 0 products: check and rebuild from tlm.sci retention (docs/l0.md).",
                     no_args_is_help=True)
    app.add_typer(l0, name="l0")

    @l0.command("rebuild")
    def rebuild_cmd(
        ctx: typer.Context,
        exposure: Optional[str] = typer.Option(None, "--exposure", help="only this exposure id "
                                               "(its data file is then re-hashed)"),
        check_sha: bool = typer.Option(False, "--check-sha", help="re-hash every data file, "
                                       "not only compare sizes, manifests and version tags"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """Re-create L0 files that l0.state records but the data dir lacks or holds damaged.

        A file is written only when tlm.sci still gives the recorded bytes (same sha256);
        exit 1 when any exposure could not be rebuilt.
        """
        from consumers.l0.rebuild import rebuild

        settings = settings_of(ctx)
        rows = asyncio.run(rebuild(settings, exposure, check_sha=check_sha))
        failed = [r for r in rows if r.status == "failed"]
        if as_json:
            print(json.dumps({"ok": not failed, "rows": [r.as_dict() for r in rows]}))
        else:
            table = Table(title=f"L0 rebuild ({settings.data_dir})")
            for col in ("exposure", "version", "status", "detail"):
                table.add_column(col)
            colour = {"ok": "green", "rebuilt": "yellow", "failed": "red"}
            for r in rows:
                if r.status != "ok" or exposure:
                    table.add_row(r.exposure_id, str(r.version), f"[{colour[r.status]}]{r.status}[/]",
                                  r.detail)
            console = Console(width=max(Console().width, 140))
            console.print(table)
            counts = {s: sum(r.status == s for r in rows) for s in ("ok", "rebuilt", "failed")}
            console.print(f"{counts['ok']} intact, {counts['rebuilt']} rebuilt, {counts['failed']} failed")
        raise typer.Exit(1 if failed else 0)
