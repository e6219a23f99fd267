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
    """Accounting of a contact (or one pass of it, ``C#2``) from the demux.state snapshots."""
    from consumers.demux.accounting import ContactAccount, Rules
    from consumers.demux.contacts import split_pass
    from streams.kafka import read_table
    from streams.messages import DemuxState

    table = await read_table(settings, "demux.state", DemuxState)
    if contact not in table:
        known = ", ".join(sorted(table)) or "none"
        raise DownlinkError(f"no accounting for contact {contact!r} (known: {known}); "
                            "has `downlink run` processed it?")
    report = ContactAccount.from_dict(table[contact].account, Rules.from_settings(settings)).report()
    base = split_pass(contact)[0]
    report["passes"] = sorted((c for c in table if split_pass(c)[0] == base),
                              key=lambda c: split_pass(c)[1])
    return report


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        ctx: typer.Context,
        contact: str = typer.Argument(..., help="contact id"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Per-(APID, source) sequence accounting: packets, gaps, duplicates, out of order, outliers."""
        rep = asyncio.run(contact_report(settings_of(ctx), contact))
        if as_json:
            print(json.dumps(rep))
            return
        t = Table(title=f"contact {contact}: {rep['bytes']:,} bytes, {rep['packets']:,} packets, "
                        f"{rep['skipped_bytes']:,} bytes dead-lettered, {rep['rejected']:,} packets "
                        f"rejected, {'ended' if rep['ended'] else 'in progress'}"
                        + (f"; passes: {', '.join(rep['passes'])}" if len(rep["passes"]) > 1 else ""))
        for col in ("APID", "source", "packets", "first", "last", "missing", "gaps", "dup", "ooo",
                    "outliers"):
            t.add_column(col, justify="right")
        for s in rep["streams"].values():
            gaps = ", ".join(f"{a}+{n}" for a, n in s["gaps"][:4]) + (" ..." if len(s["gaps"]) > 4 else "")
            t.add_row(f"0x{s['apid']:03x}", "rt" if s["source"] == 0 else "rec", f"{s['packets']:,}",
                      str(s["first_seq"]), str(s["last_seq"]), str(s["missing"]), gaps or "-",
                      str(s["duplicates"]), str(s["out_of_order"]), str(s["outliers"]))
        Console().print(t)
