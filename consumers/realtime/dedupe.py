"""Drop repeats of real-time packets: the fast lane out of demux is at-least-once.

A packet's identity is (APID, sequence count, packet time). Per APID the last
``window`` identities are kept in arrival order (bounded memory: APIDs are
bounded by the dictionary), and a batch is checked against them with one
``numpy.isin``. A demux that crashed and re-sent its last chunks therefore
publishes nothing twice.
"""

from __future__ import annotations

import numpy as np


def identity(seq: np.ndarray, ticks: np.ndarray) -> np.ndarray:
    """One int64 per packet: 48-bit packet time above the 14-bit sequence count."""
    return (ticks.astype(np.int64) << 14) | (seq.astype(np.int64) & 0x3FFF)


class Deduper:
    """Remembers recent packet identities per APID."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be positive")
        self.window = window
        self._seen: dict[int, np.ndarray] = {}

    def fresh(self, apid: int, seq: np.ndarray, ticks: np.ndarray) -> np.ndarray:
        """Boolean mask of packets never seen before (first occurrence within the batch too),
        and remember them."""
        keys = identity(seq, ticks)
        if keys.size == 0:
            return np.zeros(0, dtype=bool)
        seen = self._seen.get(apid)
        mask = np.zeros(keys.size, dtype=bool)
        _, first = np.unique(keys, return_index=True)
        mask[first] = True
        if seen is not None and seen.size:
            mask &= ~np.isin(keys, seen)
        new = keys[mask]
        if new.size:
            kept = new if seen is None else np.concatenate((seen, new))
            self._seen[apid] = kept[-self.window:]
        return mask

    def __len__(self) -> int:
        return sum(a.size for a in self._seen.values())
