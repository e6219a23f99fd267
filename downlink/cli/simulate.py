"""``downlink simulate``: write a simulated contact's raw stream and its truth file.

All human output (progress bar, summary) goes to stderr, so ``--out -`` can
pipe the stream into ``downlink ingest`` or a socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from downlink.cli import settings_of
from core.errors import SimulationError


def _parsed(parse, value, hint: str):
    """Parse an option value, turning a SimulationError into a usage error naming the option."""
    if value is None:
        return None
    try:
        return parse(value)
    except SimulationError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        ctx: typer.Context,
        seed: int = typer.Option(0, min=0, help="random seed: same seed and options, same bytes"),
        size: Optional[str] = typer.Option(None, help="contact size, e.g. 200MB, 2GB, 512MiB"),
        duration: Optional[str] = typer.Option(
            None, help="contact time at the Ka rate (3.5 MB/s), e.g. 4h, 30m, 1h30m"),
        exposures: Optional[int] = typer.Option(
            None, min=1, help="exactly this many exposures (small test contacts; subarrays <= 256 "
                              "unless --max-subarray)"),
        out: str = typer.Option(..., help="raw stream file, or - for stdout"),
        truth: Path = typer.Option(..., dir_okay=False, help="truth JSON (downlink.truth/1)"),
        faults: Optional[str] = typer.Option(
            None, help="drop=P,dup=P,reorder=N,corrupt=P,garbage=P,hostile=P,wrap,split,truncate,redump "
                       "(reorder_p=P sets the reorder rate, default 0.001)"),
        next_out: Optional[str] = typer.Option(
            None, help="second contact's stream (required with split or redump)"),
        contact: Optional[str] = typer.Option(None, help="contact id (default sim<seed>)"),
        next_contact: Optional[str] = typer.Option(None, help="second contact id (default <contact>-next)"),
        max_subarray: Optional[int] = typer.Option(
            None, help="largest subarray side in pixels, 64..2048 (default 2048; 256 with --exposures)"),
        detectors: Optional[str] = typer.Option(
            None, help="comma-separated detectors to observe with, e.g. NRCA1,NRCALONG,MIRIMAGE"),
        start: Optional[str] = typer.Option(
            None, help="contact start, UTC ISO 8601 (default: 2026-01-01 + 12 h x seed)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary"),
    ) -> None:
        """Simulate one ground-station contact (and a second for split/redump) with known truth."""
        from streams.simulator import FaultSpec, SimOptions, parse_duration, parse_size, simulate, tai_from_iso
        from streams.simulator.options import check_paths, check_space
        from streams.simulator.run import check_outputs

        settings = settings_of(ctx)
        size_bytes = _parsed(parse_size, size, "--size")
        duration_s = _parsed(parse_duration, duration, "--duration")
        spec = _parsed(FaultSpec.parse, faults, "--faults") or FaultSpec()
        start_tai = _parsed(tai_from_iso, start, "--start")
        if size_bytes is None and duration_s is None and exposures is None:
            raise typer.BadParameter("give one of --size, --duration or --exposures", param_hint="--size")
        try:
            options = SimOptions(
                seed=seed, size_bytes=size_bytes, duration_s=duration_s, exposures=exposures, faults=spec,
                contact=contact, next_contact=next_contact, max_subarray=max_subarray,
                detectors=tuple(d.strip() for d in detectors.split(",") if d.strip()) if detectors else None,
                start_tai=start_tai, dictionary=str(settings.dictionary_file))
            # before any work: outputs distinct from each other and from the inputs, writable, and
            # a size that fits (an absurd size is refused at once, never attempted)
            check_outputs(options, out, next_out)
            check_paths(out, truth, next_out, (settings.dictionary_file,))
            check_space(out, next_out, options.target_bytes)
        except SimulationError as exc:
            raise typer.BadParameter(str(exc)) from None
        if quiet:
            result = simulate(options, out, truth, next_out)
        else:
            result = _with_progress(simulate, options, out, truth, next_out)
            _summary(result, truth)


def _with_progress(simulate, options, out, truth, next_out):
    """Run the simulation under a rich progress bar (bytes, MB/s, ETA) on stderr."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    console = Console(stderr=True)
    columns = (TextColumn("[bold]simulate[/] {task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(options.contact_id, total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=max(total, done))

        return simulate(options, out, truth, next_out, progress=tick)


def _summary(result, truth: Path) -> None:
    from collections import Counter

    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    doc = result.truth
    for c in result.contacts:
        console.print(f"contact [bold]{c.contact}[/]: {c.bytes:,} bytes, {c.packets:,} packets, "
                      f"{c.duration_s:.1f} s at the Ka rate -> {c.file} (sha256 {c.sha256[:16]}...)")
    kinds = Counter(f["type"] for f in doc["faults"])
    incomplete = sum(not e["complete"] for e in doc["exposures"])
    console.print(f"{len(doc['exposures'])} exposures ({incomplete} incomplete), faults: "
                  f"{', '.join(f'{k}={n}' for k, n in sorted(kinds.items())) or 'none'}; truth -> {truth}")
    console.print(f"{result.bytes / 1e6:,.1f} MB in {result.seconds:.1f} s = "
                  f"[bold]{result.mb_per_s:.1f} MB/s[/]")
