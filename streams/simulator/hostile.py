"""Hostile packets: valid CCSDS headers, bad fields (``--faults hostile=P``).

What a real downlink delivers after an undetected bit error, a flight-software
bug or a misconfigured ground station: a packet whose primary header is fine
but whose fields break the packet format (DESIGN.md "Validity") or contradict
the exposure it names. Each hostile packet is an *extra* packet inserted
before a packet of the planned stream, so every valid exposure stays exactly
as transmitted and its truth (L0 sha256) is unchanged; the truth file lists
each hostile packet with its class, stream offset, length and the outcome a
correct receiver must produce (``expected``):

``deadletter``
    rejected with a reason (to ``tlm.deadletter``); the exposure it names,
    if real, is still assembled from its valid packets only;
``conflict``
    same identity as a transmitted packet, different bytes: the named
    exposure must not be marked complete on a guess;
``anomaly``
    one sequence-count outlier: a single accounting anomaly, no phantom gap.

Science hostile packets repeat the sequence count of the packet sent just
before them on their APID (so a sequence checker counts one duplicate); the
truth's accounting includes them. Packets a decoder cannot accept at all
(pixel count vs length, detector byte vs APID) are skipped bytes, not
packets; the ``seq_outlier`` packet is left out of the truth's accounting:
an isolated outlier must not change a stream's gaps or counts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streams.packets import (
    DETECTORS,
    HEADER_LEN,
    SCIENCE_TAG_END,
    SEQ_MODULO,
    ExposureStart,
    ExposureTag,
    Kind,
    encode_exposure_start,
)

if TYPE_CHECKING:  # pragma: no cover
    from streams.simulator.emit import ContactEmitter

#: class -> (what it is made from, expected outcome, reason a receiver should give)
CLASSES: dict[str, tuple[str, str, str]] = {
    "tag_program": ("data", "deadletter", "program field above 99999 (exposure-id format)"),
    "tag_field": ("data", "deadletter", "observation/visit/visit group/parallel/activity outside the id format"),
    "exposure_zero": ("data", "deadletter", "exposure number 0 (must be 1-65535)"),
    "zero_subarray": ("data", "deadletter", "exposure start with a 0x0 subarray"),
    "huge_geometry": ("data", "deadletter", "exposure start with NINTS=NGROUPS=4000 (above the limits)"),
    "subarray_outside": ("data", "deadletter", "exposure start whose subarray leaves the detector"),
    "pixel_offset": ("data", "deadletter", "data packet with pixel offset 2^28 (outside the subarray)"),
    "integration_range": ("data", "deadletter", "data packet with an integration outside the exposure"),
    "group_range": ("data", "deadletter", "data packet with a group outside the exposure"),
    "pixel_count": ("data", "deadletter", "pixel count field disagrees with the packet length"),
    "detector_mismatch": ("data", "deadletter", "detector byte disagrees with the APID"),
    "conflict": ("data", "conflict", "same identity as a transmitted packet, different bytes"),
    "seq_outlier": ("eng", "anomaly", "isolated sequence-count outlier"),
}
#: classes a decoder itself refuses (header-level defects: skipped bytes, never packets)
UNDECODABLE = frozenset({"pixel_count", "detector_mismatch"})
#: fake exposures made by hostile start packets use exposure numbers from here up
FAKE_EXPOSURE_BASE = 60000

_TAG = struct.Struct(">IHHBBBHB")
_DATA = struct.Struct(">HHIH")


@dataclass(frozen=True)
class Hostile:
    """One planned hostile packet: its class and the random choices that shape it."""

    cls: str
    serial: int  # k-th hostile packet of the contact (fake exposure numbers, variants)
    variant: int  # a random draw (which tag field, which pixel to flip, ...)


def classes_for(kind: str) -> list[str]:
    return [c for c, (src, _, _) in CLASSES.items() if src == kind]


def plan(rng: np.random.Generator, data_slots: np.ndarray, eng_slots: np.ndarray,
         p: float) -> dict[int, Hostile]:
    """Global packet index -> hostile packet inserted before it; every class at least once."""
    out: dict[int, Hostile] = {}
    serial = 0
    for slots, names in ((data_slots, classes_for("data")), (eng_slots, classes_for("eng"))):
        if not len(slots) or not names:
            continue
        k = min(len(slots), max(len(names), int(rng.binomial(len(slots), p))))
        chosen = np.sort(slots[rng.choice(len(slots), k, replace=False)])
        order = np.concatenate([rng.permutation(len(names)) for _ in range(-(-k // len(names)))])[:k]
        for g, c in zip(chosen.tolist(), order.tolist()):
            out[g] = Hostile(names[c], serial, int(rng.integers(0, 1 << 30)))
            serial += 1
    return out


def _with_seq(pkt: bytearray, seq: int) -> None:
    word1 = struct.unpack_from(">H", pkt, 2)[0]
    struct.pack_into(">H", pkt, 2, (word1 & 0xC000) | (seq % SEQ_MODULO))


def render(h: Hostile, item: Any, pkt: bytes, desc: dict[str, Any]) -> tuple[bytes, dict[str, Any], int | None]:
    """(bytes, truth fields, sequence count a decoder sees or None) of a hostile packet.

    ``pkt`` / ``desc`` are the planned packet it is inserted before (a science
    data packet for science classes, an engineering packet for ``seq_outlier``).
    """
    _, expected, reason = CLASSES[h.cls]
    b = bytearray(pkt)
    seq = (desc["seq"] - 1) % SEQ_MODULO  # the previous packet on this APID: one duplicate
    named: str | None = desc.get("exposure_id")
    fields = {"kind": int(Kind.SCIENCE_DATA), "integration": desc.get("integration"),
              "group": desc.get("group"), "pixel_offset": desc.get("pixel_offset")}
    if h.cls == "seq_outlier":
        seq = (desc["seq"] + SEQ_MODULO // 3 + h.variant % 1000) % SEQ_MODULO
        fields = {"kind": int(Kind.ENG), "integration": None, "group": None, "pixel_offset": None}
    elif h.cls in ("tag_program", "tag_field", "exposure_zero"):
        tag = list(_TAG.unpack_from(b, HEADER_LEN))
        if h.cls == "tag_program":
            tag[0] = 100000 + h.variant % 900000
        elif h.cls == "exposure_zero":
            tag[6] = 0
        else:  # observation > 999, visit > 999, visit group > 99, parallel > 9, activity > 99
            field, bad = [(1, 1000 + h.variant % 64000), (2, 1000 + h.variant % 64000),
                          (3, 100 + h.variant % 150), (4, 10 + h.variant % 240),
                          (5, 100 + h.variant % 150)][h.variant % 5]
            tag[field] = bad
        _TAG.pack_into(b, HEADER_LEN, *tag)
        named = None
    elif h.cls in ("zero_subarray", "huge_geometry", "subarray_outside"):
        e = item.exp
        fake = ExposureTag(**{**e.tag.__dict__, "exposure": FAKE_EXPOSURE_BASE + h.serial})
        hdr = e.header
        geometry = {"zero_subarray": dict(subsize1=0, subsize2=0, expected_packets=0),
                    "huge_geometry": dict(nints=4000, ngroups=4000, expected_packets=0xFFFFFFFF),
                    "subarray_outside": dict(substrt1=2000, subsize1=max(64, hdr.subsize1))}[h.cls]
        start = ExposureStart(**{**hdr.__dict__, **geometry})
        coarse, fine = struct.unpack_from(">IH", pkt, 6)
        b = bytearray(encode_exposure_start(fake, seq, desc["source"], coarse, fine, start))
        named = fake.exposure_id
        fields = {"kind": int(Kind.EXPOSURE_START), "integration": None, "group": None,
                  "pixel_offset": None}
    elif h.cls in ("pixel_offset", "integration_range", "group_range"):
        integ, group, offset, count = _DATA.unpack_from(b, SCIENCE_TAG_END)
        hdr = item.exp.header
        if h.cls == "pixel_offset":
            offset = 1 << 28
        elif h.cls == "integration_range":
            integ = hdr.nints + 1 + h.variant % 3 if h.variant % 4 else 0
        else:
            group = hdr.ngroups + 1 + h.variant % 3 if h.variant % 4 else 0
        _DATA.pack_into(b, SCIENCE_TAG_END, integ, group, offset, count)
        fields.update(integration=integ, group=group, pixel_offset=offset)
    elif h.cls == "pixel_count":
        integ, group, offset, count = _DATA.unpack_from(b, SCIENCE_TAG_END)
        _DATA.pack_into(b, SCIENCE_TAG_END, integ, group, offset, max(0, count - 1 - h.variant % 7))
    elif h.cls == "detector_mismatch":
        det = b[SCIENCE_TAG_END - 1]
        others = [d for d in DETECTORS if d != det]
        b[SCIENCE_TAG_END - 1] = others[h.variant % len(others)]
    elif h.cls == "conflict":
        pix = 38 + 2 * (h.variant % ((len(b) - 38) // 2))  # one pixel differs
        b[pix] ^= 0x01 | (h.variant >> 8 & 0xFE)
    _with_seq(b, seq)
    entry = {"apid": desc["apid"], "source": desc["source"], "seq": seq, "exposure_id": named,
             "class": h.cls, "expected": expected, "reason": reason, **fields}
    decodable = h.cls not in UNDECODABLE and h.cls != "seq_outlier"
    return bytes(b), entry, seq if decodable else None


def emit(emitter: "ContactEmitter", hostiles: list[Hostile], item: Any, pkt: Any,
         desc: dict[str, Any], pos: int, received: list[tuple[int, int, int]]) -> int:
    """Write hostile packets at stream offset ``pos``; record them; return the new offset."""
    for h in hostiles:
        data, entry, seq = render(h, item, bytes(pkt), desc)
        emitter.truth.fault("hostile", emitter.contact, pos, len(data), None, **entry)
        emitter.sink.write(data)
        if seq is not None:
            received.append((entry["apid"], entry["source"], seq))
        elif h.cls == "seq_outlier":
            emitter.truth.packets[emitter.contact] += 1  # a packet, outside the accounting
        pos += len(data)
    return pos
