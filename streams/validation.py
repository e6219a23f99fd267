"""Field validity of decoded packets (docs/icd.md, "Validity"), vectorized, one reason per rejection.

The decoder (:mod:`streams.decoder`) only accepts byte ranges whose headers
are self-consistent (version, type, APID range, kind, lengths). A packet can
still carry fields that break the packet format — an undetected bit error, a
flight-software bug, a misconfigured ground station — and one such packet
must never crash a consumer or reach an L0 file. :func:`validate` checks
every decoded packet's own fields with numpy column operations (no
per-packet Python loop) and returns a reason code per packet (0 = valid).

Checked here, packet by packet (nothing needs another packet):

* header: version 0, TM, secondary header, unsegmented, source 0/1, kind 1 on
  dictionary engineering APIDs and 2-4 on detector APIDs, detector byte = APID,
  lengths (dictionary length, 114, 34, 38 + 2 x pixel count);
* tag within the exposure-id format: program <= 99999, observation <= 999,
  visit <= 999, visit group <= 99, parallel sequence <= 9, activity <= 99,
  exposure 1-65535;
* exposure start: NINTS, NGROUPS, NFRAMES >= 1, SUBSIZE >= 1, SUBSTRT >= 1,
  SUBSTRT + SUBSIZE - 1 within the detector (2048 x 2048; MIRI 1032 x 1024),
  NINTS / NGROUPS / exposure bytes within the configured limits;
* science data: pixel count 1-4000 and equal to the bytes present,
  integration / group 1-based and within the configured limits, pixel
  offset + count within the detector.

What needs the exposure's start packet (integration <= NINTS, offset + count
<= SUBSIZE1 x SUBSIZE2) is checked by the L0 assembler, which holds it.

Reasons are fixed strings (:data:`REASONS`): usable as metric labels, one
label per defect class, never a value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from core.errors import ValidationError
from streams.decoder import DecodedChunk, PacketIndex
from streams.packets import (
    DETECTORS,
    ENG_APID_MAX,
    ENG_APID_MIN,
    EXPOSURE_END_LEN,
    EXPOSURE_START_LEN,
    MAX_PIXELS_PER_PACKET,
    SCI_APID_BASE,
    SCIENCE_DATA_HEADER_LEN,
    SCIENCE_TAG_END,
    SEQ_UNSEGMENTED,
    ExposureTag,
    Kind,
)

#: reason code -> reason (code 0 = valid). Order = check order: a packet gets its first defect.
REASONS: tuple[str, ...] = (
    "",
    "bad header: version, type or secondary header flag",
    "bad header: sequence flags not unsegmented",
    "bad header: source not 0 or 1",
    "unknown APID",
    "kind does not match the APID range",
    "detector code does not match APID",
    "length does not match the packet kind",
    "tag: program above 99999",
    "tag: observation above 999",
    "tag: visit above 999",
    "tag: visit group above 99",
    "tag: parallel sequence above 9",
    "tag: activity above 99",
    "tag: exposure number 0",
    "exposure start: NINTS, NGROUPS or NFRAMES is 0",
    "exposure start: empty subarray (SUBSIZE 0)",
    "exposure start: SUBSTRT 0 (1-based)",
    "exposure start: subarray outside the detector",
    "exposure start: NINTS above the limit",
    "exposure start: NGROUPS above the limit",
    "exposure start: exposure size above the limit",
    "science data: pixel count outside 1-4000",
    "science data: pixel count does not match the bytes present",
    "science data: integration or group 0 (1-based)",
    "science data: integration above the limit",
    "science data: group above the limit",
    "science data: pixels outside the detector",
)
CODE = {reason: code for code, reason in enumerate(REASONS)}

#: detector code -> (columns, rows) of the full frame: NIRCam, NIRISS, NIRSpec, FGS 2048 x 2048;
#: MIRI 1032 x 1024
FRAME: dict[int, tuple[int, int]] = {
    code: ((1032, 1024) if name.startswith("MIRI") else (2048, 2048))
    for code, name in DETECTORS.items()
}
_FRAME_X = np.zeros(256, dtype=np.int64)
_FRAME_Y = np.zeros(256, dtype=np.int64)
for _code, (_x, _y) in FRAME.items():
    _FRAME_X[_code], _FRAME_Y[_code] = _x, _y
_DETECTOR_OK = np.zeros(256, dtype=bool)
_DETECTOR_OK[list(DETECTORS)] = True

#: exposure-start fields after the tag (bytes 28-49)
_START_DTYPE = np.dtype([("nints", ">u2"), ("ngroups", ">u2"), ("nframes", "u1"), ("groupgap", "u1"),
                         ("substrt1", ">u2"), ("substrt2", ">u2"), ("subsize1", ">u2"),
                         ("subsize2", ">u2"), ("expected", ">u4"), ("tframe", ">u4")])
_START_FIELDS = np.arange(SCIENCE_TAG_END, SCIENCE_TAG_END + _START_DTYPE.itemsize)

#: tag field -> (largest value of the id format, reason)
_TAG_LIMITS = (("program", 99999, CODE["tag: program above 99999"]),
               ("observation", 999, CODE["tag: observation above 999"]),
               ("visit", 999, CODE["tag: visit above 999"]),
               ("visit_group", 99, CODE["tag: visit group above 99"]),
               ("parallel_seq", 9, CODE["tag: parallel sequence above 9"]),
               ("activity", 99, CODE["tag: activity above 99"]))


@dataclass(frozen=True)
class Limits:
    """What an exposure may declare (``settings.l0``) and the engineering packet lengths."""

    eng_lengths: Mapping[int, int] | None = None
    max_nints: int = 1000
    max_ngroups: int = 1000
    max_exposure_bytes: int = 4 << 30

    @classmethod
    def from_settings(cls, settings, eng_lengths: Mapping[int, int] | None) -> "Limits":
        l0 = settings.l0
        return cls(eng_lengths=eng_lengths, max_nints=l0.max_nints, max_ngroups=l0.max_ngroups,
                   max_exposure_bytes=l0.max_exposure_bytes)


def _first(reason: np.ndarray, bad: np.ndarray, code: int) -> None:
    """Give ``code`` to packets that are ``bad`` and have no reason yet (in place)."""
    reason[bad & (reason == 0)] = code


def validate(decoded: DecodedChunk, limits: Limits, packets: PacketIndex | None = None) -> np.ndarray:
    """Reason code (index into :data:`REASONS`) of every packet of ``decoded``; 0 = valid."""
    pk = decoded.packets if packets is None else packets
    n = len(pk)
    reason = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return reason
    arr = np.frombuffer(decoded.data, dtype=np.uint8)
    off = pk.offset.astype(np.int64)
    length = pk.length.astype(np.int64)
    apid = pk.apid.astype(np.int64)
    kind = pk.kind.astype(np.int64)

    # header --------------------------------------------------------------------------------
    b0 = arr[off]
    _first(reason, (b0 >> 3) != 0b00001, CODE["bad header: version, type or secondary header flag"])
    _first(reason, pk.seq_flags != SEQ_UNSEGMENTED, CODE["bad header: sequence flags not unsegmented"])
    _first(reason, pk.source > 1, CODE["bad header: source not 0 or 1"])
    in_eng_range = (apid >= ENG_APID_MIN) & (apid <= ENG_APID_MAX)
    eng_len = np.zeros(n, dtype=np.int64)
    if limits.eng_lengths is not None:
        table = np.zeros(ENG_APID_MAX - ENG_APID_MIN + 1, dtype=np.int64)
        for a, ln in limits.eng_lengths.items():
            table[int(a) - ENG_APID_MIN] = int(ln)
        eng_len[in_eng_range] = table[apid[in_eng_range] - ENG_APID_MIN]
        known_eng = in_eng_range & (eng_len > 0)
    else:
        known_eng = in_eng_range
    det_of_apid = apid - SCI_APID_BASE
    is_sci = (det_of_apid >= 0) & (det_of_apid < 256)
    is_sci[is_sci] = _DETECTOR_OK[det_of_apid[is_sci]]
    _first(reason, ~(known_eng | is_sci), CODE["unknown APID"])
    eng = kind == Kind.ENG
    sci = (kind >= Kind.EXPOSURE_START) & (kind <= Kind.EXPOSURE_END)
    _first(reason, ~((known_eng & eng) | (is_sci & sci)), CODE["kind does not match the APID range"])
    _first(reason, sci & (pk.detector.astype(np.int64) != det_of_apid),
           CODE["detector code does not match APID"])
    start = kind == Kind.EXPOSURE_START
    data = kind == Kind.SCIENCE_DATA
    end = kind == Kind.EXPOSURE_END
    npix = pk.pixel_count.astype(np.int64)
    bad_len = ((eng & (limits.eng_lengths is not None) & (length != eng_len))
               | (start & (length != EXPOSURE_START_LEN)) | (end & (length != EXPOSURE_END_LEN))
               | (data & (length < SCIENCE_DATA_HEADER_LEN)))
    _first(reason, bad_len, CODE["length does not match the packet kind"])

    # tag -----------------------------------------------------------------------------------
    for name, top, code in _TAG_LIMITS:
        _first(reason, sci & (getattr(pk, name).astype(np.int64) > top), code)
    _first(reason, sci & (pk.exposure == 0), CODE["tag: exposure number 0"])

    # exposure start geometry ------------------------------------------------------------------
    s_idx = np.flatnonzero(start & (reason == 0))
    if s_idx.size:
        rows = arr[off[s_idx, None] + _START_FIELDS]
        f = np.ascontiguousarray(rows).view(_START_DTYPE)[:, 0]
        r = reason[s_idx]
        det = pk.detector[s_idx].astype(np.int64)
        nints, ngroups = f["nints"].astype(np.int64), f["ngroups"].astype(np.int64)
        nx, ny = f["subsize1"].astype(np.int64), f["subsize2"].astype(np.int64)
        x0, y0 = f["substrt1"].astype(np.int64), f["substrt2"].astype(np.int64)
        _first(r, (nints < 1) | (ngroups < 1) | (f["nframes"] < 1),
               CODE["exposure start: NINTS, NGROUPS or NFRAMES is 0"])
        _first(r, (nx < 1) | (ny < 1), CODE["exposure start: empty subarray (SUBSIZE 0)"])
        _first(r, (x0 < 1) | (y0 < 1), CODE["exposure start: SUBSTRT 0 (1-based)"])
        _first(r, (x0 + nx - 1 > _FRAME_X[det]) | (y0 + ny - 1 > _FRAME_Y[det]),
               CODE["exposure start: subarray outside the detector"])
        _first(r, nints > limits.max_nints, CODE["exposure start: NINTS above the limit"])
        _first(r, ngroups > limits.max_ngroups, CODE["exposure start: NGROUPS above the limit"])
        size = nints.astype(np.float64) * ngroups * nx * ny * 2
        _first(r, size > limits.max_exposure_bytes, CODE["exposure start: exposure size above the limit"])
        reason[s_idx] = r

    # science data ------------------------------------------------------------------------------
    _first(reason, data & ((npix < 1) | (npix > MAX_PIXELS_PER_PACKET)),
           CODE["science data: pixel count outside 1-4000"])
    _first(reason, data & (length != SCIENCE_DATA_HEADER_LEN + 2 * npix),
           CODE["science data: pixel count does not match the bytes present"])
    integ, group = pk.integration.astype(np.int64), pk.group.astype(np.int64)
    _first(reason, data & ((integ < 1) | (group < 1)), CODE["science data: integration or group 0 (1-based)"])
    _first(reason, data & (integ > limits.max_nints), CODE["science data: integration above the limit"])
    _first(reason, data & (group > limits.max_ngroups), CODE["science data: group above the limit"])
    det = np.clip(pk.detector.astype(np.int64), 0, 255)
    frame = _FRAME_X[det] * _FRAME_Y[det]
    _first(reason, data & (pk.pixel_offset.astype(np.int64) + npix > frame),
           CODE["science data: pixels outside the detector"])
    return reason


def tag_valid(packets: PacketIndex) -> np.ndarray:
    """Packets whose tag fits the exposure-id format (so their exposure id can be named)."""
    ok = (packets.kind >= Kind.EXPOSURE_START) & (packets.kind <= Kind.EXPOSURE_END)
    for name, top, _ in _TAG_LIMITS:
        ok &= getattr(packets, name).astype(np.int64) <= top
    ok &= packets.exposure > 0
    ok &= _DETECTOR_OK[packets.detector]
    ok &= packets.apid.astype(np.int64) == SCI_APID_BASE + packets.detector.astype(np.int64)
    return ok


def exposure_id_of(packets: PacketIndex, i: int) -> str | None:
    """Exposure id of packet ``i`` when its tag is valid, else None."""
    if not tag_valid(packets.take(np.array([i])))[0]:
        return None
    return ExposureTag(*(int(getattr(packets, f)[i]) for f in (
        "program", "observation", "visit", "visit_group", "parallel_seq", "activity", "exposure",
        "detector"))).exposure_id


# --- contact ids ----------------------------------------------------------------------------------

#: reserved in contact ids: demux names a later pass of a contact ``<id>#<n>``
PASS_SEP = "#"
_CONTACT_ID = re.compile(r"^[A-Za-z0-9._:+-]{1,200}$")


class ContactIdError(ValidationError):
    """A contact id (or a raw record) that cannot be used."""


def check_contact_id(contact: str) -> str:
    """``contact`` if it is a usable contact id (1-200 letters, digits, ``. _ - : +``), else
    :class:`ContactIdError` saying why."""
    if not contact:
        raise ContactIdError("no contact id (neither a 'contact' header nor a record key)")
    if not _CONTACT_ID.match(contact):
        raise ContactIdError(
            f"contact id {contact[:60]!r} must be 1-200 letters, digits or . _ - : + "
            f"('{PASS_SEP}' is reserved for later passes of a contact)")
    return contact
