"""``downlink run`` (all consumers in one process) and ``downlink consumer NAME``."""

from __future__ import annotations

import asyncio
from typing import Optional

import typer

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        ctx: typer.Context,
        until_idle: bool = typer.Option(False, "--until-idle", help="exit once every topic is drained and every output written"),
        only: Optional[str] = typer.Option(None, help="comma-separated services to run [default: every default service of the registry]"),
        metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus /metrics here [DOWNLINK_METRICS_PORT]"),
        instance: Optional[str] = typer.Option(None, help="stable instance id (transactional id suffix) [DOWNLINK_INSTANCE]"),
    ) -> None:
        """Run consumers together in one asyncio process."""
        from consumers.framework.runner import run_services

        settings = settings_of(ctx).replace(**({"metrics_port": metrics_port} if metrics_port is not None else {}))
        from consumers.framework import registry

        names = ([n.strip() for n in only.split(",") if n.strip()] if only is not None
                 else registry.names(default_only=True))
        _background_if_bulk(settings, names)
        raise typer.Exit(asyncio.run(run_services(settings, names, until_idle=until_idle, instance=instance)))

    @app.command("consumer")
    def consumer(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="a service of the registry: demux, l0, l1b, calibrate, archive, realtime, ..."),
        until_idle: bool = typer.Option(False, "--until-idle"),
        metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus /metrics here"),
        instance: Optional[str] = typer.Option(None, help="stable instance id; give each replica its own"),
    ) -> None:
        """Run one consumer; start several (distinct --instance) to share its group."""
        from consumers.framework.runner import run_services

        settings = settings_of(ctx).replace(**({"metrics_port": metrics_port} if metrics_port is not None else {}))
        _background_if_bulk(settings, [name])
        raise typer.Exit(asyncio.run(run_services(settings, [name], until_idle=until_idle, instance=instance)))


def _background_if_bulk(settings, names: list[str]) -> None:
    """A process of bulk services only yields the CPU to real-time ones (run.bulk_nice)."""
    from consumers.framework import registry
    from consumers.framework.priority import yield_to_realtime

    if registry.is_bulk(names, tapped=settings.ingest.realtime_tap):
        yield_to_realtime(settings, ",".join(names))
