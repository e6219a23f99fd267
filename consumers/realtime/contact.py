"""Packet-accounting summary of a contact for operators, from demux's ``demux.state`` snapshot.

Only the account part of the snapshot is read (a plain dict, see
``docs/messages.md``): totals, and per (APID, source) stream the packets,
missing counts (from its missing ranges), duplicates and out-of-order
arrivals. Unknown or absent fields count as zero, so a newer demux adding
fields does not break the dashboard.
"""

from __future__ import annotations

from typing import Any


def _missing(ranges: Any) -> int:
    total = 0
    for r in ranges or ():
        if isinstance(r, (list, tuple)) and len(r) == 2:
            total += max(0, int(r[1]) - int(r[0]))
    return total


def contact_summary(contact: str, account: dict[str, Any], now: float) -> dict[str, Any]:
    """Totals and per-stream counts, JSON-ready (stream key ``<apid>/<source>``, APID decimal)."""
    streams: dict[str, dict[str, int]] = {}
    for key, s in sorted((account.get("streams") or {}).items()):
        if not isinstance(s, dict):
            continue
        streams[key] = {"apid": int(s.get("apid", 0)), "source": int(s.get("source", 0)),
                        "packets": int(s.get("packets", 0)), "missing": _missing(s.get("missing")),
                        "gaps": int(s.get("gap_events", 0)), "duplicates": int(s.get("duplicates", 0)),
                        "out_of_order": int(s.get("out_of_order", 0))}
    totals = {k: sum(s[k] for s in streams.values())
              for k in ("packets", "missing", "gaps", "duplicates", "out_of_order")}
    return {"contact": contact, "time": now, "ended": bool(account.get("ended", False)),
            "bytes": int(account.get("bytes", 0)),
            "skipped_bytes": int(account.get("skipped_bytes", 0)),
            "resyncs": int(account.get("resyncs", 0)), **totals, "streams": streams}
