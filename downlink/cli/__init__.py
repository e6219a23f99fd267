"""Command-line interface; ``main.py`` assembles the command modules."""

from __future__ import annotations

import typer

from core.settings import Settings


def settings_of(ctx: typer.Context) -> Settings:
    """The Settings built by the global callback (every command calls this)."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else Settings.from_env()
