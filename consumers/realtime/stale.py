"""Staleness: a parameter is stale once its APID has been silent longer than its cadence allows.

Each engineering APID has a sampling period (dictionary ``period_s``); after
``periods`` x that period without a packet, every parameter of the APID is
stale. Times are the caller's monotonic clock (arrival, not packet time: a
replayed contact is as fresh as its arrival). APIDs never seen are unknown,
not stale.
"""

from __future__ import annotations


class StaleTracker:
    def __init__(self, period_s: dict[int, float], periods: float) -> None:
        if periods <= 1:
            raise ValueError("periods must exceed 1 (a packet is due every period)")
        self.limit = {apid: p * periods for apid, p in period_s.items()}
        self.last: dict[int, float] = {}
        self.stale: set[int] = set()

    def seen(self, apid: int, now: float) -> bool:
        """Record a packet of ``apid``; True if that APID was stale until now."""
        self.last[apid] = now
        if apid in self.stale:
            self.stale.discard(apid)
            return True
        return False

    def is_stale(self, apid: int) -> bool:
        return apid in self.stale

    def check(self, now: float) -> list[int]:
        """APIDs that became stale since the last check (sorted)."""
        newly = sorted(a for a, t in self.last.items()
                       if a not in self.stale and now - t > self.limit.get(a, float("inf")))
        self.stale.update(newly)
        return newly

    def ages(self, now: float) -> dict[int, float]:
        """Seconds since the last packet, per APID seen."""
        return {a: now - t for a, t in sorted(self.last.items())}
