"""``downlink reprocess --program P | --exposure ID [--context C]``: reprocess requests to cal.requests.

Reads the catalogue for the exposures (and their uncal files), sends one
``reprocess``-priority CalRequest per exposure and prints what it sent. The
new products become new versions in the archive; old versions stay.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import typer

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    @app.command("reprocess")
    def reprocess_cmd(
        ctx: typer.Context,
        program: Optional[int] = typer.Option(None, min=1, max=99999, help="every exposure of a program"),
        exposure: Optional[str] = typer.Option(None, help="one exposure id"),
        context: Optional[str] = typer.Option(None, help="pin a reference context (default: the best at run time)"),
    ) -> None:
        """Ask calibration to reprocess exposures (priority lane 'reprocess')."""
        import re

        from consumers.archive import db, reprocess as rp

        if (program is None) == (exposure is None):
            raise typer.BadParameter("give exactly one of --program or --exposure")
        if context is not None and not re.match(rp.CONTEXT_PATTERN, context):
            raise typer.BadParameter(f"context {context!r} should look like downlink_0002")
        settings = settings_of(ctx)

        async def main() -> list[str]:
            engine = db.async_engine(settings)
            try:
                async with db.sessionmaker(engine)() as session:
                    exposures = await rp.exposures_for(session, program=program, exposure=exposure)
            finally:
                await engine.dispose()
            requests = rp.requests_for(exposures, context=context, reason="downlink reprocess")
            await rp.send(settings, requests)
            return [r.exposure_id for r in requests]

        db.migrate(settings)
        sent = asyncio.run(main())
        if not sent:
            typer.secho("nothing to reprocess: no catalogued exposure with an uncal file matches",
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(1)
        for exp in sent:
            typer.echo(f"reprocess requested: {exp} (context {context or 'best'})")
        typer.echo(f"{len(sent)} request(s) sent to {settings.topic('cal.requests')}")
