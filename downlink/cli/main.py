"""The ``downlink`` command: one Typer app, each command group in its own module.

Every module of ``downlink/cli`` that defines ``register(app)`` adds its
commands (a new command group is a new module, nothing else to edit); global
options (settings overrides) are parsed here and reach commands through
``ctx.obj``. Command modules import their heavy dependencies inside the
command functions, so ``downlink consumer demux`` never loads astropy.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Optional

import typer

from downlink import logs
from core.errors import DownlinkError
from core.settings import Settings

COMMAND_MODULES = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                         if m.name not in ("main", "__init__"))

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Streaming telemetry processor for a JWST-like observatory.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    kafka_bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap servers [DOWNLINK_KAFKA_BOOTSTRAP]"),
    mqtt_url: Optional[str] = typer.Option(None, help="MQTT broker URL [DOWNLINK_MQTT_URL]"),
    state_dir: Optional[Path] = typer.Option(None, help="state folder (stack data, logs, spools) [DOWNLINK_STATE_DIR]"),
    data_dir: Optional[Path] = typer.Option(None, help="product folder (L0 files...) [DOWNLINK_DATA_DIR]"),
    topic_prefix: Optional[str] = typer.Option(None, help="prefix for topic and group names [DOWNLINK_TOPIC_PREFIX]"),
    log_level: Optional[str] = typer.Option(None, help="DEBUG, INFO, WARNING [DOWNLINK_LOG_LEVEL]"),
    log_format: Optional[str] = typer.Option(None, help="kv or json [DOWNLINK_LOG_FORMAT]"),
) -> None:
    settings = Settings.from_env(
        kafka_bootstrap=kafka_bootstrap, mqtt_url=mqtt_url, state_dir=state_dir,
        data_dir=data_dir, topic_prefix=topic_prefix, log_level=log_level, log_format=log_format,
    )
    logs.configure(settings.log_level, settings.log_format)
    ctx.obj = settings


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"downlink.cli.{_name}")
    if hasattr(_module, "register"):
        _module.register(app)


def main() -> None:
    try:
        app()
    except DownlinkError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
