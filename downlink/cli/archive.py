"""``downlink archive search | get ID [-o FILE] | programs | program P``: the archive from a terminal.

``search``, ``get`` and ``programs`` are clients of the archive API
(``--url``, default the configured API address; ``--token`` or
``DOWNLINK_TOKEN``), so they see exactly what the API lets the token see.
``program P [--period N] [--pi NAME] [--title T]`` is an operator command on
the catalogue itself: it registers or changes a program.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from downlink.cli import settings_of

archive_app = typer.Typer(help="search and fetch archive products; manage programs", no_args_is_help=True)

URL_HELP = "archive API base URL [default: http://DOWNLINK_ARCHIVE_API_HOST:PORT]"
TOKEN_HELP = "API token [DOWNLINK_TOKEN]"


def _client(ctx: typer.Context, url: str | None, token: str | None):
    import httpx

    s = settings_of(ctx).archive
    base = (url or f"http://{s.api_host}:{s.api_port}").rstrip("/")
    token = token or os.environ.get("DOWNLINK_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=60.0)


def _fail(response: Any) -> None:
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text
    typer.secho(f"error: HTTP {response.status_code}: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1 if response.status_code < 500 else 2)


def _call(client: Any, path: str, **params: Any) -> dict[str, Any]:
    import httpx

    try:
        r = client.get(path, params={k: v for k, v in params.items() if v is not None})
    except httpx.HTTPError as exc:
        typer.secho(f"error: cannot reach the archive at {client.base_url}: {exc}; is `downlink serve` "
                    "running?", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if r.status_code != 200:
        _fail(r)
    return r.json()


@archive_app.command("search")
def search(
    ctx: typer.Context,
    program: Optional[int] = typer.Option(None), target: Optional[str] = typer.Option(None),
    instrument: Optional[str] = typer.Option(None), detector: Optional[str] = typer.Option(None),
    level: Optional[str] = typer.Option(None, help="L1b, L2a, L2b, L3, contributed (staff: L0, L1a)"),
    exposure: Optional[str] = typer.Option(None),
    start: Optional[str] = typer.Option(None, help="exposures starting at/after (ISO UTC)"),
    end: Optional[str] = typer.Option(None, help="exposures starting before (ISO UTC)"),
    public: Optional[bool] = typer.Option(None, "--public/--proprietary", help="only public / only proprietary"),
    all_versions: bool = typer.Option(False, "--all-versions", help="every version, not only the newest"),
    limit: int = typer.Option(100, min=1, max=1000), offset: int = typer.Option(0, min=0),
    as_json: bool = typer.Option(False, "--json"),
    url: Optional[str] = typer.Option(None, help=URL_HELP), token: Optional[str] = typer.Option(None, help=TOKEN_HELP),
) -> None:
    """Products you may see, newest versions by default."""
    from rich.console import Console
    from rich.table import Table

    with _client(ctx, url, token) as client:
        data = _call(client, "/api/v1/products", program=program, target=target, instrument=instrument,
                     detector=detector, level=level, exposure=exposure, start=start, end=end,
                     public=None if public is None else str(public).lower(),
                     all_versions=str(all_versions).lower(), limit=limit, offset=offset)
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table(title=f"{data['total']} product(s)")
    for col in ("id", "v", "level", "target", "size", "release", "public", "context"):
        table.add_column(col)
    for p in data["products"]:
        table.add_row(p["id"], str(p["version"]), p["level"], p.get("target") or "", f"{p['size']:,}",
                      (p["release_date"] or "-")[:10], "yes" if p["public"] else "no", p["context"] or "-")
    Console(width=max(Console().width, 150)).print(table)
    shown = data["offset"] + len(data["products"])
    if shown < data["total"]:
        typer.echo(f"showing {data['offset'] + 1}-{shown} of {data['total']}; --offset {shown} for more")


@archive_app.command("get")
def get(
    ctx: typer.Context,
    product_id: str = typer.Argument(..., metavar="ID"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="output file (default: its name, here)"),
    version: Optional[int] = typer.Option(None, min=1, help="a specific version"),
    url: Optional[str] = typer.Option(None, help=URL_HELP), token: Optional[str] = typer.Option(None, help=TOKEN_HELP),
) -> None:
    """Download a product with a progress bar; the sha256 is checked before the file is kept."""
    import hashlib
    import re

    import httpx
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    params = {"version": version} if version else {}
    with _client(ctx, url, token) as client:
        try:
            with client.stream("GET", f"/api/v1/products/{product_id}/file", params=params) as r:
                if r.status_code != 200:
                    r.read()
                    _fail(r)
                name = re.findall(r'filename="?([^";]+)"?', r.headers.get("content-disposition", ""))
                dest = out or Path(name[0] if name else f"{product_id}.fits")
                expected = r.headers.get("x-checksum-sha256", "")
                total = int(r.headers.get("content-length", 0)) or None
                tmp = dest.with_name(f".{dest.name}.part")
                h = hashlib.sha256()
                with open(tmp, "wb") as fh, Progress(
                        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), transient=False) as bar:
                    task = bar.add_task(dest.name, total=total)
                    for chunk in r.iter_bytes(1 << 20):
                        fh.write(chunk)
                        h.update(chunk)
                        bar.update(task, advance=len(chunk))
                note = r.headers.get("x-reprocess")
        except httpx.HTTPError as exc:
            typer.secho(f"error: download failed: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
    if expected and h.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        typer.secho(f"error: sha256 mismatch ({h.hexdigest()} != {expected}); nothing kept",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    os.replace(tmp, dest)
    if note:
        typer.echo(f"note: a newer calibration was requested ({note})")
    typer.echo(f"saved {dest} ({dest.stat().st_size} bytes, sha256 {h.hexdigest()}, "
               f"version {r.headers.get('x-product-version', '?')})")


@archive_app.command("programs")
def programs(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json"),
    url: Optional[str] = typer.Option(None, help=URL_HELP), token: Optional[str] = typer.Option(None, help=TOKEN_HELP),
) -> None:
    """Programs with their PI and exclusive-access period."""
    with _client(ctx, url, token) as client:
        data = _call(client, "/api/v1/programs")
    if as_json:
        typer.echo(json.dumps(data))
        return
    for p in data["programs"]:
        typer.echo(f"{p['id']:05d}  period {p['period_months']:>2} months  PI {p['pi'] or '-':<16} {p['title']}")
    if not data["programs"]:
        typer.echo("no programs yet")


@archive_app.command("program")
def program(
    ctx: typer.Context,
    program_id: int = typer.Argument(..., metavar="P", min=1, max=99999),
    period: Optional[int] = typer.Option(None, help="exclusive access period: 0, 3, 6 or 12 months"),
    pi: Optional[str] = typer.Option(None, help="principal investigator (an existing user; becomes a member)"),
    title: Optional[str] = typer.Option(None),
) -> None:
    """Register a program or change its period, PI or title (operator command, on the catalogue)."""
    from consumers.archive import db
    from consumers.archive.admin import Admin

    settings = settings_of(ctx)
    db.migrate(settings)
    with Admin(settings) as admin:
        info = admin.set_program(program_id, period=period, pi=pi, title=title)
    typer.echo(f"program {info.id:05d}: period {info.period_months} months, PI {info.pi or '-'}, "
               f"members {', '.join(info.members) or '-'}, {info.exposures} exposure(s), "
               f"{info.products} product(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(archive_app, name="archive")
