"""``downlink refs make | list | show CONTEXT``: synthetic reference files and their contexts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from downlink.cli import settings_of


def register(app: typer.Typer) -> None:
    refs = typer.Typer(help="Reference files and numbered immutable contexts (docs/refs.md).",
                       no_args_is_help=True)
    app.add_typer(refs, name="refs")

    def store_of(ctx: typer.Context, root: Optional[Path]):
        from products.refs import RefStore, refs_root

        return RefStore(root or refs_root(settings_of(ctx)))

    @refs.command("make")
    def make_cmd(
        ctx: typer.Context,
        detectors: Optional[str] = typer.Option(None, help="comma-separated detectors, e.g. NRCA1,MIRIMAGE "
                                                           "(default: all 18)"),
        seed: Optional[int] = typer.Option(None, help="detector model seed (default: the simulator's)"),
        description: str = typer.Option("", help="what this context is for"),
        force: bool = typer.Option(False, help="re-make files even when the newest context has them"),
        root: Optional[Path] = typer.Option(None, help="refs folder (default: calibrate.refs_dir or "
                                                       "<data dir>/refs)"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Write reference files from the detector model and a new context derived from the newest."""
        store = store_of(ctx, root)
        names = detectors.split(",") if detectors else None
        context, made = store.make(names, seed=seed, description=description, force=force)
        if as_json:
            print(json.dumps({"context": context.name, "made": made, "root": str(store.root),
                              "changed": context.document.get("changed", []) if made else []}))
            return
        if made:
            print(f"made {context.name} under {store.root} (from {context.parent or 'nothing'}): "
                  f"{', '.join(context.document['changed'])}")
        else:
            print(f"{context.name} already has these detectors from this model; nothing made "
                  "(--force to re-make)")

    @refs.command("list")
    def list_cmd(
        ctx: typer.Context,
        root: Optional[Path] = typer.Option(None, help="refs folder"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Contexts, oldest first; the best (newest or pinned) is marked."""
        store = store_of(ctx, root)
        pinned = settings_of(ctx).calibrate.context or None
        names = store.contexts()
        best = store.best(pinned).name if names else None
        rows = []
        for name in names:
            c = store.context(name)
            rows.append({"context": name, "parent": c.parent, "created": c.document.get("created"),
                         "detectors": c.detectors, "changed": c.document.get("changed", []),
                         "best": name == best})
        if as_json:
            print(json.dumps({"root": str(store.root), "pinned": pinned, "contexts": rows}))
            return
        table = Table(title=f"reference contexts ({store.root})")
        for col in ("context", "parent", "created", "detectors", "changed", "best"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["context"], r["parent"] or "-", r["created"] or "-", str(len(r["detectors"])),
                          ",".join(r["changed"]), ("pinned" if pinned else "newest") if r["best"] else "")
        Console(width=max(Console().width, 120)).print(table)

    @refs.command("show")
    def show_cmd(
        ctx: typer.Context,
        context: str = typer.Argument(..., help="context name, e.g. downlink_0001"),
        root: Optional[Path] = typer.Option(None, help="refs folder"),
        verify: bool = typer.Option(False, help="check every file's sha256"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """The files of one context, per detector and reference type."""
        store = store_of(ctx, root)
        c = store.context(context)
        bad = []
        if verify:
            from core.errors import CalibrationError

            for det, per in c.files.items():
                for reftype in per:
                    try:
                        c.verify(reftype, det)
                    except CalibrationError as exc:
                        bad.append(str(exc))
        if as_json:
            print(json.dumps({**c.document, "verified": verify, "bad": bad}))
        else:
            table = Table(title=f"{c.name} (parent {c.parent or '-'}) {c.document.get('description', '')}")
            for col in ("detector", "reftype", "file", "sha256", "MB"):
                table.add_column(col)
            for det, per in sorted(c.files.items()):
                for reftype, e in per.items():
                    table.add_row(det, reftype, e["file"], e["sha256"][:16], f"{e['bytes'] / 1e6:.1f}")
            Console(width=max(Console().width, 140)).print(table)
            for b in bad:
                print(b)
        raise typer.Exit(1 if bad else 0)
