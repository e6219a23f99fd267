"""``downlink ingest FILE | --listen HOST:PORT``: publish raw contact streams to ``downlink.raw``.

Progress goes to stderr (a rich bar: bytes, MB/s, ETA); the one-line summary
per contact goes to stdout so scripts can capture it.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from downlink.cli import settings_of
from core.settings import Settings


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _tracker(bar: Progress, task: TaskID):
    """A consumers.ingest progress callback that moves one bar (shown from the first call on,
    so an error before publishing prints no empty bar)."""

    def update(done: int, total: int | None) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    return update


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) into a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT (e.g. 0.0.0.0:7000)", param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        ctx: typer.Context,
        file: Optional[Path] = typer.Argument(None, help="raw contact stream file (omit with --listen)"),
        contact: Optional[str] = typer.Option(
            None, "--contact",
            help="contact id (default: file stem). With --listen: <ID>-001, <ID>-002... per connection, the same "
            "after a restart, so a feed replayed from its first byte resumes (use a new ID for new contacts)",
        ),
        rate: Optional[str] = typer.Option(
            None, "--rate", help="pace a file at a downlink rate, e.g. 28Mbps (latency tests)"
        ),
        chunk_bytes: Optional[str] = typer.Option(
            None, "--chunk-bytes", help="chunk size, e.g. 1MiB [DOWNLINK_INGEST_CHUNK_BYTES]; keep it fixed per contact"
        ),
        listen: Optional[str] = typer.Option(
            None, "--listen", help="serve ground-station feeds on HOST:PORT; one connection = one contact"
        ),
        once: bool = typer.Option(False, "--once", help="with --listen: exit after the first connection ends"),
        metrics_port: Optional[int] = typer.Option(
            None, "--metrics-port", min=0, max=65535,
            help="with --listen: serve Prometheus /metrics here [DOWNLINK_METRICS_PORT]",
        ),
    ) -> None:
        """Publish a contact's raw stream to downlink.raw in chunks; re-running resumes, never duplicates."""
        from consumers.ingest import parse_rate, parse_size

        settings = settings_of(ctx)
        if chunk_bytes is not None:
            settings = settings.replace(ingest_chunk_bytes=parse_size(chunk_bytes))
            settings.validate()
        if (file is None) == (listen is None):
            raise typer.BadParameter("give either FILE or --listen HOST:PORT (not both)")
        if listen is None and once:
            raise typer.BadParameter("--once only applies to --listen", param_hint="--once")
        if listen is None and metrics_port is not None:
            raise typer.BadParameter("a file ingest ends by itself and serves no /metrics; --metrics-port "
                                     "applies to --listen", param_hint="--metrics-port")
        if metrics_port is not None:
            settings = settings.replace(metrics_port=metrics_port)
        if listen is not None and rate is not None:
            raise typer.BadParameter("a TCP feed sets its own pace; --rate applies to files", param_hint="--rate")
        rate_bps = parse_rate(rate) if rate is not None else None
        try:
            if file is not None:
                asyncio.run(_ingest_file(settings, file, contact, rate_bps))
            else:
                host, port = parse_listen(listen)
                asyncio.run(_ingest_socket(settings, host, port, contact, once))
        except (KeyboardInterrupt, asyncio.CancelledError):
            typer.secho(
                "interrupted; what was acknowledged stays in downlink.raw — run the same command to resume",
                fg=typer.colors.YELLOW, err=True,
            )
            raise typer.Exit(130) from None


def _stop_on_sigterm() -> None:
    """SIGTERM (a service manager stopping us) cancels the command like Ctrl-C: in-flight sends are flushed."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


async def _ingest_file(settings: Settings, file: Path, contact: Optional[str], rate_bps: Optional[float]) -> None:
    from consumers.ingest import ingest_file

    _stop_on_sigterm()
    if rate_bps is None:  # a recorded dump, not a live feed: background work
        from consumers.framework.priority import yield_to_realtime

        yield_to_realtime(settings, "ingest of a recorded dump")
    bar = _progress_bar()
    try:
        task = bar.add_task(contact or file.stem, total=None)
        result = await ingest_file(settings, file, contact, rate_bps=rate_bps, progress=_tracker(bar, task))
    finally:
        if bar.live.is_started:
            bar.stop()
    typer.echo(result.summary())


async def _ingest_socket(settings: Settings, host: str, port: int, contact: Optional[str], once: bool) -> None:
    from consumers.ingest import IngestResult, ingest_socket

    _stop_on_sigterm()
    bar = _progress_bar()
    try:

        def factory(contact_id: str):
            return _tracker(bar, bar.add_task(contact_id, total=None))

        def listening(address: tuple[str, int]) -> None:
            bar.console.print(f"listening on {address[0]}:{address[1]} (Ctrl-C to stop)")

        def finished(result: IngestResult) -> None:
            typer.echo(result.summary())

        await ingest_socket(
            settings, host, port, contact, once=once,
            progress_factory=factory, on_listening=listening, on_result=finished,
        )
    finally:
        if bar.live.is_started:
            bar.stop()
