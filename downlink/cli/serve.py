"""``downlink serve [--host 127.0.0.1] [--port 8000]``: the archive API (migrates the catalogue first)."""

from __future__ import annotations

import asyncio
from typing import Optional

import typer

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        ctx: typer.Context,
        host: Optional[str] = typer.Option(None, help="bind address [DOWNLINK_ARCHIVE_API_HOST, 127.0.0.1]"),
        port: Optional[int] = typer.Option(None, help="TCP port [DOWNLINK_ARCHIVE_API_PORT, 8000]"),
    ) -> None:
        """Serve the archive API (OpenAPI at /openapi.json) until interrupted."""
        from consumers.framework.runner import run_services

        settings = settings_of(ctx).replace(**{k: v for k, v in (("archive_api_host", host),
                                                         ("archive_api_port", port)) if v is not None})
        raise typer.Exit(asyncio.run(run_services(settings, ["api"])))
