"""Contact ids and passes: a new stream under an id that already ended is a new pass, never dropped.

A contact id names one ground-station contact's raw stream (ingest's
``--contact``, the TCP listener's generated ids). Ids are 1-200 characters
of letters, digits and ``. _ - : +`` (:func:`check_contact_id`); ``#`` is
reserved for passes.

When bytes arrive under an id whose stream demux already closed (its
end-of-contact marker was processed) — a station re-sending a contact, an
ingest that did not see the earlier run (``ingest.lookback_hours``) — they
are a **new pass** of that contact: pass id ``<id>#2``, ``<id>#3``...,
decoded and accounted on its own, with its own ``tlm.sci`` end-of-contact
markers and ``demux.state`` snapshot, announced by a ``contact_reopened``
alert. Downstream services see the pass id as the contact. The first pass
keeps the plain id.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.validation import PASS_SEP, ContactIdError, check_contact_id

__all__ = ["PASS_SEP", "ContactIdError", "Passes", "check_contact_id", "pass_id", "split_pass"]

def split_pass(pass_id: str) -> tuple[str, int]:
    """(contact id, pass number) of a pass id: ``C`` -> (C, 1), ``C#3`` -> (C, 3)."""
    base, sep, n = pass_id.rpartition(PASS_SEP)
    if sep and n.isdigit() and int(n) >= 2:
        return base, int(n)
    return pass_id, 1


def pass_id(contact: str, n: int) -> str:
    return contact if n == 1 else f"{contact}{PASS_SEP}{n}"


class Passes:
    """The current pass of every contact id."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    @classmethod
    def from_ids(cls, pass_ids: Iterable[str]) -> "Passes":
        p = cls()
        for pid in pass_ids:
            base, n = split_pass(pid)
            p._current[base] = max(n, p._current.get(base, 0))
        return p

    def current(self, contact: str) -> str | None:
        n = self._current.get(contact)
        return None if n is None else pass_id(contact, n)

    def open(self, contact: str) -> str:
        """Start the next pass of ``contact`` (the first one is the plain id)."""
        n = self._current.get(contact, 0) + 1
        self._current[contact] = n
        return pass_id(contact, n)
