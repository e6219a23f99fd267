"""``downlink dashboard [--port N]``: the live engineering dashboard (Open MCT) until interrupted."""

from __future__ import annotations

import asyncio
from typing import Optional

import typer

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard(
        ctx: typer.Context,
        port: Optional[int] = typer.Option(None, help="TCP port [DOWNLINK_REALTIME_DASHBOARD_PORT, 8080]"),
        host: Optional[str] = typer.Option(None, help="bind address [DOWNLINK_REALTIME_DASHBOARD_HOST, 127.0.0.1]"),
    ) -> None:
        """Serve the dashboard; live values come from `downlink consumer realtime` over MQTT."""
        from consumers.framework.runner import run_services

        settings = settings_of(ctx).replace(**{k: v for k, v in (("realtime_dashboard_host", host),
                                                         ("realtime_dashboard_port", port)) if v is not None})
        raise typer.Exit(asyncio.run(run_services(settings, ["dashboard"])))
