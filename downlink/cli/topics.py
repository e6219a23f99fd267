"""`downlink topics create | list`: make the broker match topics.yaml."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from downlink.cli import settings_of
from core.settings import Settings
from streams.kafka import make_admin, wait_for_kafka
from streams.topics import create_topics, load_topics

topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics declared in topics.yaml.")
console = Console()


@topics_app.command()
def create(
    ctx: typer.Context,
    wait: float = typer.Option(30.0, help="seconds to wait for Kafka to answer first"),
) -> None:
    """Create missing topics, raise partition counts, align configs (idempotent)."""
    settings = settings_of(ctx)
    specs = load_topics(settings.topics_file)

    async def run() -> list[str]:
        await wait_for_kafka(settings, wait)
        return await create_topics(settings, specs)

    changed = asyncio.run(run())
    if changed:
        console.print(f"created or updated {len(changed)} topic(s): {', '.join(changed)}")
    else:
        console.print(f"all {len(specs)} topics already match {settings.topics_file}")


async def _partitions(settings: Settings, names: list[str]) -> dict[str, int]:
    admin = make_admin(settings)
    try:
        await admin.start()
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}


@topics_app.command("list")
def list_(ctx: typer.Context) -> None:
    """Declared topics with their physical names and whether they exist on the broker."""
    settings = settings_of(ctx)
    specs = load_topics(settings.topics_file)
    actual = asyncio.run(_partitions(settings, [settings.topic(name) for name in specs]))
    table = Table(title=f"topics ({settings.topics_file}) on {settings.kafka.bootstrap}")
    for column in ("topic", "partitions", "on broker", "retention ms", "cleanup", "key", "schema"):
        table.add_column(column)
    for name, spec in specs.items():
        physical = settings.topic(name)
        present = actual.get(physical)
        table.add_row(
            physical, str(spec.partitions), "[red]missing[/red]" if present is None else str(present),
            str(spec.retention_ms), spec.cleanup_policy, spec.key, spec.schema,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")
