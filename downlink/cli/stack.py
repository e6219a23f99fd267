"""`downlink stack up | down | status | logs | fetch`: the local Kafka + Mosquitto (+ Prometheus,
+ PostgreSQL when asked with ``--with postgres`` or configured as the archive's database)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from downlink.cli import settings_of
from downlink.stack.launcher import COMPONENTS, ON_DEMAND, Stack

stack_app = typer.Typer(no_args_is_help=True,
                        help="Local stack: Kafka (KRaft), Mosquitto, Prometheus (+ PostgreSQL on demand).")
console = Console()


def _components(only: Optional[str]) -> list[str] | None:
    return [name.strip() for name in only.split(",") if name.strip()] if only else None


@stack_app.command()
def up(
    ctx: typer.Context,
    timeout: float = typer.Option(120.0, help="seconds to wait for every component to be healthy"),
    only: Optional[str] = typer.Option(None, help=f"comma-separated subset of {','.join(COMPONENTS)}"),
    extra: Optional[str] = typer.Option(
        None, "--with", help=f"also start {','.join(sorted(ON_DEMAND))} (started anyway when "
        "DOWNLINK_ARCHIVE_DATABASE_URL names a PostgreSQL server on 127.0.0.1)"),
) -> None:
    """Start the stack (idempotent) and wait until every component answers real requests."""
    settings = settings_of(ctx)
    extras = _components(extra) or []
    bad = [n for n in extras if n not in ON_DEMAND]
    if bad:
        raise typer.BadParameter(f"{', '.join(bad)}: --with takes {', '.join(sorted(ON_DEMAND))} "
                                 "(the rest is started by default)", param_hint="--with")
    stack = Stack(settings, _components(only), extras=extras)
    report = asyncio.run(stack.up(timeout=timeout))
    parts = []
    if report.started:
        parts.append(f"started {', '.join(report.started)}")
    if report.already_running:
        parts.append(f"already running {', '.join(report.already_running)}")
    console.print(
        f"stack up in {report.seconds:.1f}s (Kafka fetch: {report.kafka_fetch}); " + "; ".join(parts)
        + f" — state dir {settings.state_dir.resolve()}"
    )
    for name, reason in report.skipped.items():
        console.print(f"[yellow]skipped {name}[/yellow]: {reason}")
    pg = next((c for c in stack.components if c.name == "postgres"), None)
    if pg is not None and pg.name not in report.skipped:
        url_file = pg.url_file  # type: ignore[attr-defined]
        if stack.credentials is not None:
            console.print(f"PostgreSQL on 127.0.0.1:{pg.ports[0]} serves DOWNLINK_ARCHIVE_DATABASE_URL")
        else:
            console.print(f"PostgreSQL on 127.0.0.1:{pg.ports[0]}; to archive there: "
                          f'export DOWNLINK_ARCHIVE_DATABASE_URL="$(cat {url_file})"')


@stack_app.command()
def down(ctx: typer.Context) -> None:
    """Stop the processes this state dir started (SIGTERM, then SIGKILL after a grace period)."""
    settings = settings_of(ctx)
    started = time.monotonic()
    stopped = asyncio.run(Stack(settings).down())
    if stopped:
        console.print(f"stopped {', '.join(stopped)} in {time.monotonic() - started:.1f}s")
    else:
        console.print(f"nothing to stop (no running process recorded under {settings.state_dir.resolve() / 'run'})")


@stack_app.command()
def status(ctx: typer.Context) -> None:
    """Table of components: pid, port, healthy or not. Exit code 1 if Kafka, Mosquitto or a configured
    PostgreSQL is unhealthy."""
    settings = settings_of(ctx)
    stack = Stack(settings)
    rows = asyncio.run(stack.status())
    table = Table(title=f"downlink stack ({settings.state_dir.resolve()})")
    for column in ("component", "state", "pid", "port", "healthy", "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.name, row.state, str(row.pid) if row.pid else "-", str(row.port),
            "[green]yes[/green]" if row.healthy else "[red]no[/red]", row.detail,
        )
    console.print(table)
    required = [row for row in rows if row.name in stack.required]
    if not all(row.healthy for row in required):
        raise typer.Exit(1)


@stack_app.command()
def logs(
    ctx: typer.Context,
    component: Optional[str] = typer.Argument(None, help=f"one of {', '.join(COMPONENTS)} (default: all)"),
    lines: int = typer.Option(40, "-n", "--lines", help="how many last lines"),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing new lines (Ctrl-C to stop)"),
) -> None:
    """Print the end of the component logs (under <state_dir>/logs)."""
    stack = Stack(settings_of(ctx))
    sections = stack.logs(component, lines)
    for name, path, text in sections:
        if len(sections) > 1:
            typer.echo(f"==> {name} ({path}) <==")
        if not path.exists():
            typer.echo(f"(no log yet at {path})")
        for line in text:
            typer.echo(line)
    if follow:
        _follow([path for _, path, _ in sections])


def _follow(paths: list[Path]) -> None:
    positions = {path: path.stat().st_size if path.exists() else 0 for path in paths}
    try:
        while True:
            for path in paths:
                if not path.exists():
                    continue
                size = path.stat().st_size
                if size < positions[path]:
                    positions[path] = 0  # truncated or recreated
                if size > positions[path]:
                    with path.open("rb") as handle:
                        handle.seek(positions[path])
                        chunk = handle.read(size - positions[path])
                    positions[path] = size
                    prefix = f"{path.stem}| " if len(paths) > 1 else ""
                    for line in chunk.decode(errors="replace").splitlines():
                        typer.echo(prefix + line)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


@stack_app.command()
def fetch(ctx: typer.Context) -> None:
    """Only fetch the Kafka jars with Maven into the cache (no-op when already cached)."""
    settings = settings_of(ctx)
    started = time.monotonic()
    cold = asyncio.run(Stack(settings, ["kafka"]).fetch())
    state = "fetched" if cold else "already cached"
    console.print(
        f"Kafka {settings.kafka.version} jars {state} in {settings.cache_dir / ('kafka-' + settings.kafka.version)} "
        f"({time.monotonic() - started:.1f}s)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
