"""``downlink report CONTACT``: packet accounting of a contact (table or JSON)."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.console import Console
from rich.table import Table

from downlink.cli import settings_of
from core.errors import DownlinkError


async def contact_report(settings, contact: str) -> dict:
    from consumers.demux.accounting import ContactAccount
    from streams.kafka import read_table

    table = await read_table(settings, "demux.state")
    if contact not in table:
        known = ", ".join(sorted(table)) or "none"
        raise DownlinkError(f"no accounting for contact {contact!r} (known: {known}); "
                            "has `downlink run` processed it?")
    return ContactAccount.from_dict(table[contact]["account"]).report()


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        ctx: typer.Context,
        contact: str = typer.Argument(..., help="contact id"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Per-(APID, source) sequence accounting: packets, gaps, duplicates, out of order."""
        rep = asyncio.run(contact_report(settings_of(ctx), contact))
        if as_json:
            print(json.dumps(rep))
            return
        t = Table(title=f"contact {contact}: {rep['bytes']:,} bytes, {rep['packets']:,} packets, "
                        f"{rep['skipped_bytes']:,} bytes dead-lettered, "
                        f"{'ended' if rep['ended'] else 'in progress'}")
        for col in ("APID", "source", "packets", "first", "last", "missing", "gaps", "dup", "ooo"):
            t.add_column(col, justify="right")
        for s in rep["streams"].values():
            gaps = ", ".join(f"{a}+{n}" for a, n in s["gaps"][:4]) + (" ..." if len(s["gaps"]) > 4 else "")
            t.add_row(f"0x{s['apid']:03x}", "rt" if s["source"] == 0 else "rec", f"{s['packets']:,}",
                      str(s["first_seq"]), str(s["last_seq"]), str(s["missing"]), gaps or "-",
                      str(s["duplicates"]), str(s["out_of_order"]))
        Console().print(t)
