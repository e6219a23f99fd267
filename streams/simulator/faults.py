"""Fault injection: which packets of a contact are dropped, duplicated, moved, corrupted.

Faults are drawn over the whole planned contact (every packet's position is
known before rendering) from the seed alone, then applied item by item as
the stream is written (``streams.simulator.emit``). Rules, so the truth file
can say exactly what a receiver must see:

* drop / dup / corrupt / reorder pick disjoint packets; each requested fault
  happens at least once, otherwise Binomial(eligible packets, P) times;
* dup: the copy follows the original immediately;
* reorder=N: a science data packet is sent right after the next k (1..N)
  packets of its own run (same APID), so a sequence checker counts exactly one
  out-of-order packet; a window never overlaps another, never holds a
  dropped, corrupt or duplicated packet, a forced wrap or a truncated end;
* corrupt: the 6-byte primary header is overwritten with random bytes whose
  version field is non-zero, so no decoder can accept it: the packet is lost
  and the decoder must resynchronise at the next packet;
* garbage=P: 1..256 random bytes before a packet (never first, never next to a
  corrupt header or before a truncated final packet); garbage bytes avoid
  0x08-0x0F, the values a packet header's first byte can take, so a decoder
  never locks onto garbage. Adjacent defects (two corrupt packets in a row, say)
  show as one skipped byte range;
* hostile=P: extra packets with valid headers and bad fields inserted before
  science data / engineering packets not otherwise faulted (every class of
  ``streams.simulator.hostile`` at least once; see there for the outcomes);
* truncate: the contact's final packet loses its tail;
* wrap, split, redump are planned by the contact assembly (``contact.py``,
  ``run.py``) and only recorded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streams.packets import Kind, PRIMARY_HEADER_LEN
from streams.simulator import hostile as hostile_mod
from streams.simulator.contact import EngItem, Item, SciItem
from streams.simulator.options import GARBAGE_MAX_BYTES, FaultSpec


@dataclass
class ItemFaults:
    """Faults of one item, by packet index within the item."""

    drop: set[int] = field(default_factory=set)
    dup: set[int] = field(default_factory=set)
    corrupt: dict[int, bytes] = field(default_factory=dict)  # replacement primary header
    reorder: dict[int, int] = field(default_factory=dict)  # packet -> packets it is sent after
    garbage: dict[int, bytes] = field(default_factory=dict)  # bytes sent before the packet
    hostile: dict[int, list[hostile_mod.Hostile]] = field(default_factory=dict)  # packets sent before it
    truncate: int | None = None  # bytes kept of the item's last packet

    def output_order(self, n: int) -> list[int]:
        """Packet indices in the order they go out (reorders applied)."""
        order = list(range(n))
        for p, k in sorted(self.reorder.items()):
            order.remove(p)
            order.insert(order.index(p + k) + 1, p)
        return order


def garbage_bytes(rng: np.random.Generator, n: int) -> bytes:
    """Random bytes that can never start a packet header (no 0x08-0x0F)."""
    v = rng.integers(0, 248, n, dtype=np.int64)
    return (v + 8 * (v >= 8)).astype(np.uint8).tobytes()


def corrupt_header(rng: np.random.Generator) -> bytes:
    """A primary header no decoder can accept: random bytes, version field 1..7."""
    b = rng.integers(0, 256, PRIMARY_HEADER_LEN, dtype=np.int64)
    b[0] = rng.integers(0x20, 0x100)
    return b.astype(np.uint8).tobytes()


def plan_faults(spec: FaultSpec, items: list[Item], seed: int,
                protected: np.ndarray | None = None) -> dict[int, ItemFaults]:
    """Draw the probabilistic faults of one contact: item index -> ItemFaults."""
    counts = np.array([it.n for it in items], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)))
    total = int(starts[-1])
    out: dict[int, ItemFaults] = {}
    if total == 0:
        return out
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x464C54]))
    available = np.ones(total, dtype=bool)
    if protected is not None and len(protected):
        available[protected] = False
    if spec.truncate:
        available[total - 1] = False

    def at(g: int) -> tuple[ItemFaults, int, int]:
        k = int(np.searchsorted(starts, g, side="right")) - 1
        return out.setdefault(k, ItemFaults()), k, g - int(starts[k])

    def pick(p: float, mask: np.ndarray | None = None) -> np.ndarray:
        pool = available if mask is None else available & mask
        cand = np.flatnonzero(pool)
        if p <= 0 or not len(cand):
            return cand[:0]
        k = min(len(cand), max(1, int(rng.binomial(len(cand), p))))
        chosen = np.sort(cand[rng.choice(len(cand), k, replace=False)])
        available[chosen] = False
        return chosen

    if spec.reorder:
        is_data = np.repeat(np.array([isinstance(it, SciItem) and it.kind == Kind.SCIENCE_DATA
                                      for it in items]), counts)
        local = np.arange(total) - np.repeat(starts[:-1], counts)
        eligible = is_data & (local <= np.repeat(counts, counts) - 2)
        # windows never overlap, never reach a truncated final packet, never cross a forced wrap,
        # and hold no dropped, corrupt or duplicated packet (so the move is exactly as declared)
        fence = np.sort(np.concatenate((protected if protected is not None else np.empty(0, np.int64),
                                        [total - 1] if spec.truncate else [])).astype(np.int64))
        windows: list[tuple[int, int]] = []

        def reorder(g: int) -> bool:
            k = int(np.searchsorted(starts, g, side="right")) - 1
            room = int(starts[k + 1]) - 1 - g
            nxt = int(np.searchsorted(fence, g))
            if nxt < len(fence):
                room = min(room, int(fence[nxt]) - 1 - g)
            if room < 1 or not available[g]:
                return False
            disp = min(int(rng.integers(1, spec.reorder + 1)), room)
            if not available[g:g + disp + 1].all():
                return False
            f, _, local = at(g)
            f.reorder[local] = disp
            windows.append((g, g + disp))
            available[g:g + disp + 1] = False
            return True

        cand = np.flatnonzero(available & eligible)
        if len(cand):
            k = min(len(cand), max(1, int(rng.binomial(len(cand), spec.reorder_p))))
            for g in np.sort(cand[rng.choice(len(cand), k, replace=False)]).tolist():
                reorder(g)
        if not windows:  # at least one: try other candidates until one fits
            for g in rng.permutation(np.flatnonzero(available & eligible))[:10000].tolist():
                if reorder(g):
                    break
    dropped = pick(spec.drop)
    for g in dropped.tolist():
        at(g)[0].drop.add(at(g)[2])
    corrupted = pick(spec.corrupt)
    for g in corrupted.tolist():
        f, _, local = at(g)
        f.corrupt[local] = corrupt_header(rng)
    for g in pick(spec.dup).tolist():
        at(g)[0].dup.add(at(g)[2])
    if spec.garbage:
        mask = np.ones(total, dtype=bool)
        mask[0] = False
        mask[corrupted] = False
        mask[np.minimum(corrupted + 1, total - 1)] = False
        if spec.truncate:
            mask[total - 1] = False
        cand = np.flatnonzero(mask)
        if len(cand):
            k = min(len(cand), max(1, int(rng.binomial(len(cand), spec.garbage))))
            for g in np.sort(cand[rng.choice(len(cand), k, replace=False)]).tolist():
                f, _, local = at(g)
                f.garbage[local] = garbage_bytes(rng, int(rng.integers(1, GARBAGE_MAX_BYTES + 1)))
    if spec.truncate:
        f, k, _ = at(total - 1)
        last = int(items[k].sizes()[-1])
        f.truncate = int(rng.integers(1, last))
    if spec.hostile:
        # before a packet no other fault touches (nor the one after a corrupt header or a garbage run)
        free = available.copy()
        free[corrupted] = False
        free[np.minimum(corrupted + 1, total - 1)] = False
        free[np.minimum(dropped + 1, total - 1)] = False  # its sequence count would fill the gap
        free[[s for s, f in _garbage_slots(out, starts)]] = False
        kinds = np.repeat(np.array([1 if isinstance(it, SciItem) and it.kind == Kind.SCIENCE_DATA
                                    else 2 if isinstance(it, EngItem) else 0 for it in items]), counts)
        hrng = np.random.default_rng(np.random.SeedSequence([seed, 0x484F53]))
        for g, h in hostile_mod.plan(hrng, np.flatnonzero(free & (kinds == 1)),
                                     np.flatnonzero(free & (kinds == 2)), spec.hostile).items():
            f, _, local = at(g)
            f.hostile[local] = [h]
    return {k: f for k, f in out.items()
            if f.drop or f.dup or f.corrupt or f.reorder or f.garbage or f.hostile
            or f.truncate is not None}


def _garbage_slots(out: dict[int, ItemFaults], starts: np.ndarray) -> list[tuple[int, ItemFaults]]:
    return [(int(starts[k]) + local, f) for k, f in out.items() for local in f.garbage]
