"""The truth file (docs/simulator.md, schema ``downlink.truth/1``) and the accounting rule it states.

Accounting (``accounting[contact]["<apid>/<source>"]``, APID in decimal) is
what a Yamcs-style sequence checker that starts fresh at each contact must
report for the packets it can decode (intact header, full length; corrupt
and truncated packets are not packets). Per (APID, source), in arrival order:

1. *Unwrap*: the first packet's count is its 14-bit sequence count; each next
   packet adds the signed step to the previous packet's count, taken in
   [-8192, 8191] (so 16383 -> 0 is +1).
   *Isolated outliers* come out first: a packet more than ``OUTLIER_JUMP``
   from the previous one, while each of the next ``OUTLIER_CONFIRM`` packets
   (fewer at the end, at least one) is within ``OUTLIER_JUMP`` of that previous
   packet and more than ``OUTLIER_JUMP`` from it, is a corrupt count: the next
   packet unwraps against the packet before it; a forward one is left out of
   every count, a backward one is judged below, except that one before the
   first packet's count is left out too (no duplicate of anything received).
   The first packet is an outlier (left out) when its next packets agree with
   each other and are all more than ``OUTLIER_JUMP`` from it.
2. Against the highest count seen before it (for the first packet: its own
   count - 1), a packet is
   - *in order* if above it (skipping past counts opens a gap);
   - *out_of_order* if at or below it, not below the first packet's count,
     and never received before (it fills a gap: a reorder or a late re-send);
   - a *duplicate* otherwise (received before, or below the first count).
3. ``gaps``: the counts between the first packet's and the highest, never
   received by the end of the contact, as ``[first_missing_seq, count]``
   (first_missing_seq wrapped to 14 bits; a range may cross 16383 -> 0).
4. ``packets``: packets received, duplicates included.

A reordered packet thus shows as one out_of_order and no gap; a dropped one as
a gap; a duplicate as a duplicate. Streams with no decodable packet are absent.
``sequence_accounting`` implements this with numpy (no per-packet loop); the
demux's incremental checker (consumers/accounting.py) must agree with it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.packets import SEQ_MODULO, Kind

SCHEMA = "downlink.truth/1"
_HALF = SEQ_MODULO // 2
#: isolated-outlier rule (the defaults of settings.demux.outlier_min_jump / outlier_confirm_packets)
OUTLIER_JUMP = 16
OUTLIER_CONFIRM = 3


def sequence_accounting(seq: np.ndarray) -> dict[str, Any]:
    """Accounting of one (APID, source) stream from its sequence counts in arrival order."""
    s = np.asarray(seq, dtype=np.int64)
    if s.size == 0:
        return {"packets": 0, "gaps": [], "duplicates": 0, "out_of_order": 0}
    wrap = lambda x: (x + _HALF) % SEQ_MODULO - _HALF  # noqa: E731
    fol = s[1:1 + OUTLIER_CONFIRM]
    if fol.size and np.all((np.abs(wrap(fol - fol[0])) <= OUTLIER_JUMP)
                           & (np.abs(wrap(fol - s[0])) > OUTLIER_JUMP)):
        s = s[1:]  # the first packet is an outlier: its next packets agree and are far from it
    d = np.concatenate(([0], wrap(np.diff(s))))
    isolated = np.zeros(s.size, dtype=bool)
    for i in np.flatnonzero(np.abs(d) > OUTLIER_JUMP).tolist():
        fol = s[i + 1:i + 1 + OUTLIER_CONFIRM]
        if isolated[i - 1] or not fol.size:
            continue
        isolated[i] = bool(np.all((np.abs(wrap(fol - s[i - 1])) <= OUTLIER_JUMP)
                                  & (np.abs(wrap(fol - s[i])) > OUTLIER_JUMP)))
    step = d.copy()
    for j in np.flatnonzero(isolated).tolist():
        step[j + 1] = wrap(s[j + 1] - s[j - 1]) - d[j]
    keep = ~(isolated & (d > 0))
    ext = (s[0] + np.cumsum(step))[keep]
    isolated = isolated[keep]
    prior_max = np.maximum.accumulate(np.concatenate(([ext[0] - 1], ext[:-1])))
    behind = ext <= prior_max
    first_seen = np.zeros(ext.size, dtype=bool)
    first_seen[np.unique(ext, return_index=True)[1]] = True
    out_of_order = behind & first_seen & (ext >= ext[0])
    isolated &= ext < ext[0]
    duplicates = behind & ~out_of_order & ~isolated
    received = np.unique(ext[ext >= ext[0]])
    holes = np.flatnonzero(np.diff(received) > 1)
    gaps = [[int((received[i] + 1) % SEQ_MODULO), int(received[i + 1] - received[i] - 1)]
            for i in holes.tolist()]
    return {"packets": int(ext.size - isolated.sum()), "gaps": gaps,
            "duplicates": int(duplicates.sum()), "out_of_order": int(out_of_order.sum())}


def packet_identity(desc: dict[str, Any]) -> tuple[int, int, int, int]:
    """What identifies a packet inside its exposure: (kind, integration, group, pixel offset)."""
    if desc["kind"] == Kind.SCIENCE_DATA:
        return (3, desc["integration"], desc["group"], desc["pixel_offset"])
    return (int(desc["kind"]), 0, 0, 0)


@dataclass
class TruthBuilder:
    """Collects faults, received sequence counts and per-exposure delivery while contacts are written."""

    faults: list[dict[str, Any]] = field(default_factory=list)
    _received: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: defaultdict(list))
    delivered: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: decodable packets per contact (duplicates included)
    packets: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lost: dict[str, dict[tuple[int, int, int, int], dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict))

    def fault(self, type_: str, contact: str, stream_offset: int | None, length: int | None,
              desc: dict[str, Any] | None = None, **extra: Any) -> None:
        entry: dict[str, Any] = {"type": type_, "contact": contact, "stream_offset": stream_offset,
                                 "length": length, "apid": None, "source": None, "seq": None,
                                 "exposure_id": None, "kind": None, "integration": None,
                                 "group": None, "pixel_offset": None}
        if desc:
            entry.update({k: desc[k] for k in ("apid", "source", "seq", "exposure_id", "kind",
                                               "integration", "group", "pixel_offset")})
        entry.update(extra)
        self.faults.append(entry)

    def received(self, contact: str, apid: np.ndarray, source: np.ndarray, seq: np.ndarray) -> None:
        """Packets a decoder will deliver, in arrival order."""
        self.packets[contact] += len(seq)
        if len(seq):
            self._received[contact].append((apid.astype(np.uint16), source.astype(np.uint8),
                                            seq.astype(np.uint16)))

    def deliver(self, contact: str, exposure_id: str) -> None:
        seen = self.delivered[exposure_id]
        if contact not in seen:
            seen.append(contact)

    def lose(self, desc: dict[str, Any]) -> None:
        if desc.get("exposure_id"):
            self.lost[desc["exposure_id"]][packet_identity(desc)] = {
                k: desc[k] for k in ("seq", "kind", "integration", "group", "pixel_offset")}

    def recover(self, desc: dict[str, Any]) -> None:
        if desc.get("exposure_id"):
            self.lost[desc["exposure_id"]].pop(packet_identity(desc), None)

    def accounting(self, contact: str) -> dict[str, dict[str, Any]]:
        runs = self._received.get(contact, [])
        if not runs:
            return {}
        apid = np.concatenate([r[0] for r in runs]).astype(np.int64)
        source = np.concatenate([r[1] for r in runs]).astype(np.int64)
        seq = np.concatenate([r[2] for r in runs])
        key = apid * 2 + source
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        out = {}
        for idx in np.split(order, bounds):
            out[f"{int(apid[idx[0]])}/{int(source[idx[0]])}"] = sequence_accounting(seq[idx])
        return dict(sorted(out.items(), key=lambda kv: tuple(map(int, kv[0].split("/")))))

    def build(self, *, seed: int, options: dict[str, Any], contacts: list[dict[str, Any]],
              exposures: list[dict[str, Any]], excursions: list[dict[str, Any]]) -> dict[str, Any]:
        for e in exposures:
            lost = self.lost.get(e["exposure_id"], {})
            e["contacts"] = list(self.delivered.get(e["exposure_id"], []))
            e["lost"] = [lost[k] for k in sorted(lost)]
            e["complete"] = not lost
        self.faults.sort(key=lambda f: ([c["contact"] for c in contacts].index(f["contact"]),
                                        f["stream_offset"] if f["stream_offset"] is not None else -1))
        return {"schema": SCHEMA, "seed": seed, "options": options, "contacts": contacts,
                "exposures": exposures, "faults": self.faults,
                "accounting": {c["contact"]: self.accounting(c["contact"]) for c in contacts},
                "eng_excursions": excursions}
