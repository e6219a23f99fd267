"""The packet format of docs/icd.md: constants, tags and encoders.

This module is the interface control document in code. The simulator, the
decoder (``streams.decoder``) and every consumer use it; nothing else in the
project knows a byte offset. CCSDS Space Packet Protocol, CCSDS 133.0-B-2:
a 6-byte primary header (version, type, secondary-header flag, APID,
sequence flags, 14-bit sequence count, data length = bytes after header - 1),
then our 8-byte secondary header (time coarse/fine, source, kind).
All integers are big-endian.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

import numpy as np

from core.errors import CodecError

PRIMARY_HEADER_LEN = 6
SECONDARY_HEADER_LEN = 8
HEADER_LEN = PRIMARY_HEADER_LEN + SECONDARY_HEADER_LEN  # 14: parameter block / tag start
SCIENCE_TAG_END = 28  # science kind-specific fields start here
SEQ_MODULO = 1 << 14  # sequence count wraps 16383 -> 0 per APID
SEQ_UNSEGMENTED = 3
MAX_PIXELS_PER_PACKET = 4000

ENG_APID_MIN, ENG_APID_MAX = 0x100, 0x1FF
SCI_APID_BASE = 0x400
SCI_APID_MIN, SCI_APID_MAX = 0x400, 0x4FF

#: total packet lengths of the fixed-size science kinds
EXPOSURE_START_LEN = 114
EXPOSURE_END_LEN = 34
SCIENCE_DATA_HEADER_LEN = 38  # pixels start here
MAX_PACKET_LEN = SCIENCE_DATA_HEADER_LEN + 2 * MAX_PIXELS_PER_PACKET



class Kind(enum.IntEnum):
    ENG = 1
    EXPOSURE_START = 2
    SCIENCE_DATA = 3
    EXPOSURE_END = 4


class Source(enum.IntEnum):
    REALTIME = 0
    RECORDED = 1


#: detector code (byte 27) -> name; APID = 0x400 + code
DETECTORS: dict[int, str] = {
    1: "NRCA1", 2: "NRCA2", 3: "NRCA3", 4: "NRCA4", 5: "NRCALONG",
    6: "NRCB1", 7: "NRCB2", 8: "NRCB3", 9: "NRCB4", 10: "NRCBLONG",
    11: "MIRIMAGE", 12: "MIRIFULONG", 13: "MIRIFUSHORT", 14: "NIS",
    15: "NRS1", 16: "NRS2", 17: "GUIDER1", 18: "GUIDER2",
}
DETECTOR_CODES: dict[str, int] = {name: code for code, name in DETECTORS.items()}
SCIENCE_APIDS = frozenset(SCI_APID_BASE + code for code in DETECTORS)


def detector_apid(detector: int) -> int:
    if detector not in DETECTORS:
        raise CodecError(f"unknown detector code {detector}; valid codes are 1..18 (docs/icd.md)")
    return SCI_APID_BASE + detector


def instrument_of(detector: int) -> str:
    name = DETECTORS[detector]
    if name.startswith("NRC"):
        return "NIRCAM"
    if name.startswith("MIRI"):
        return "MIRI"
    if name.startswith("NRS"):
        return "NIRSPEC"
    if name == "NIS":
        return "NIRISS"
    return "FGS"


_EXPOSURE_ID = re.compile(
    r"^jw(\d{5})(\d{3})(\d{3})_(\d{2})(\d)(\d{2})_(\d{5})_([a-z0-9]+)$"
)


@dataclass(frozen=True, order=True)
class ExposureTag:
    """The exposure tag every science packet carries (bytes 14-27)."""

    program: int
    observation: int
    visit: int
    visit_group: int
    parallel_seq: int
    activity: int
    exposure: int
    detector: int

    @property
    def exposure_id(self) -> str:
        """``jw<ppppp><ooo><vvv>_<gg><s><aa>_<eeeee>_<detector>``."""
        return (
            f"jw{self.program:05d}{self.observation:03d}{self.visit:03d}_"
            f"{self.visit_group:02d}{self.parallel_seq:01d}{self.activity:02d}_"
            f"{self.exposure:05d}_{DETECTORS[self.detector].lower()}"
        )

    @property
    def apid(self) -> int:
        return detector_apid(self.detector)

    @classmethod
    def from_exposure_id(cls, exposure_id: str) -> "ExposureTag":
        m = _EXPOSURE_ID.match(exposure_id)
        if not m or m.group(8).upper() not in DETECTOR_CODES:
            raise CodecError(
                f"{exposure_id!r} is not an exposure id like jw01234001001_01101_00001_nrca1"
            )
        g = m.groups()
        return cls(int(g[0]), int(g[1]), int(g[2]), int(g[3]), int(g[4]), int(g[5]), int(g[6]),
                   DETECTOR_CODES[g[7].upper()])

    def pack(self) -> bytes:
        try:
            return _TAG.pack(self.program, self.observation, self.visit, self.visit_group,
                             self.parallel_seq, self.activity, self.exposure, self.detector)
        except struct.error as exc:  # e.g. exposure > 65535: the tag field is uint16
            raise CodecError(f"exposure tag {self} does not fit the packet tag fields "
                             f"(docs/icd.md): {exc}") from exc


@dataclass(frozen=True)
class ExposureStart:
    """Kind-2 fields (bytes 28-113)."""

    nints: int
    ngroups: int
    nframes: int
    groupgap: int
    substrt1: int
    substrt2: int
    subsize1: int  # nx
    subsize2: int  # ny
    expected_packets: int
    tframe_us: int
    readpatt: str
    exp_type: str
    target: str


@dataclass(frozen=True)
class ExposureEnd:
    """Kind-4 fields (bytes 28-33)."""

    packets_sent: int
    completion_code: int = 0


_PRIMARY = struct.Struct(">HHH")
_SECONDARY = struct.Struct(">IHBB")
_TAG = struct.Struct(">IHHBBBHB")
_START = struct.Struct(">HHBBHHHHII16s16s32s")
_DATA = struct.Struct(">HHIH")
_END = struct.Struct(">IH")


def encode_packet(apid: int, seq: int, kind: int, source: int, coarse: int, fine: int,
                  body: bytes) -> bytes:
    """One CCSDS packet; ``body`` is everything after byte 13."""
    total = HEADER_LEN + len(body)
    if not 0 <= apid < 2048:
        raise CodecError(f"APID {apid} does not fit 11 bits")
    if total - PRIMARY_HEADER_LEN - 1 > 0xFFFF:
        raise CodecError(f"packet of {total} bytes exceeds the CCSDS length field")
    word0 = (0 << 13) | (0 << 12) | (1 << 11) | apid
    word1 = (SEQ_UNSEGMENTED << 14) | (seq % SEQ_MODULO)
    return (_PRIMARY.pack(word0, word1, total - PRIMARY_HEADER_LEN - 1)
            + _SECONDARY.pack(coarse, fine, source, kind) + body)


def encode_eng(apid: int, seq: int, source: int, coarse: int, fine: int, params: bytes) -> bytes:
    if not ENG_APID_MIN <= apid <= ENG_APID_MAX:
        raise CodecError(f"engineering APID 0x{apid:03x} outside 0x100-0x1FF")
    return encode_packet(apid, seq, Kind.ENG, source, coarse, fine, params)


def _ascii(text: str, size: int, what: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > size:
        raise CodecError(f"{what} {text!r} longer than {size} bytes")
    return raw.ljust(size, b"\0")


def encode_exposure_start(tag: ExposureTag, seq: int, source: int, coarse: int, fine: int,
                          start: ExposureStart) -> bytes:
    body = tag.pack() + _START.pack(
        start.nints, start.ngroups, start.nframes, start.groupgap, start.substrt1,
        start.substrt2, start.subsize1, start.subsize2, start.expected_packets,
        start.tframe_us, _ascii(start.readpatt, 16, "READPATT"),
        _ascii(start.exp_type, 16, "EXP_TYPE"), _ascii(start.target, 32, "target name"))
    return encode_packet(tag.apid, seq, Kind.EXPOSURE_START, source, coarse, fine, body)


def encode_science_data(tag: ExposureTag, seq: int, source: int, coarse: int, fine: int,
                        integration: int, group: int, pixel_offset: int,
                        pixels: np.ndarray) -> bytes:
    if len(pixels) > MAX_PIXELS_PER_PACKET:
        raise CodecError(f"{len(pixels)} pixels exceed {MAX_PIXELS_PER_PACKET} per packet")
    body = (tag.pack() + _DATA.pack(integration, group, pixel_offset, len(pixels))
            + np.asarray(pixels, dtype=">u2").tobytes())
    return encode_packet(tag.apid, seq, Kind.SCIENCE_DATA, source, coarse, fine, body)


def encode_exposure_end(tag: ExposureTag, seq: int, source: int, coarse: int, fine: int,
                        end: ExposureEnd) -> bytes:
    body = tag.pack() + _END.pack(end.packets_sent, end.completion_code)
    return encode_packet(tag.apid, seq, Kind.EXPOSURE_END, source, coarse, fine, body)


def encode_science_data_batch(tag: ExposureTag, seq: np.ndarray, source: int,
                              coarse: np.ndarray, fine: np.ndarray,
                              integration: np.ndarray, group: np.ndarray,
                              pixel_offset: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Many equal-size science-data packets at once, vectorized.

    ``pixels`` is (n, npix) uint16; returns an (n, 38 + 2*npix) uint8 array whose
    rows are byte-identical to ``encode_science_data`` of each packet.
    """
    pixels = np.asarray(pixels)
    n, npix = pixels.shape
    if npix > MAX_PIXELS_PER_PACKET or npix == 0:
        raise CodecError(f"{npix} pixels per packet outside 1..{MAX_PIXELS_PER_PACKET}")
    plen = SCIENCE_DATA_HEADER_LEN + 2 * npix
    dtype = np.dtype([
        ("w0", ">u2"), ("w1", ">u2"), ("len", ">u2"), ("coarse", ">u4"), ("fine", ">u2"),
        ("source", "u1"), ("kind", "u1"), ("tag", "V14"), ("integration", ">u2"),
        ("group", ">u2"), ("offset", ">u4"), ("count", ">u2"), ("pix", ">u2", (npix,)),
    ])
    assert dtype.itemsize == plen
    out = np.empty(n, dtype=dtype)
    out["w0"] = (1 << 11) | tag.apid
    out["w1"] = (SEQ_UNSEGMENTED << 14) | (np.asarray(seq) % SEQ_MODULO)
    out["len"] = plen - PRIMARY_HEADER_LEN - 1
    out["coarse"] = coarse
    out["fine"] = fine
    out["source"] = source
    out["kind"] = Kind.SCIENCE_DATA
    out["tag"] = np.frombuffer(tag.pack(), dtype="V14")[0]
    out["integration"] = integration
    out["group"] = group
    out["offset"] = pixel_offset
    out["count"] = npix
    out["pix"] = pixels
    return out.view(np.uint8).reshape(n, plen)


def packet_length(total_after_header_minus_one: int) -> int:
    """Total packet length from the CCSDS data-length field."""
    return total_after_header_minus_one + PRIMARY_HEADER_LEN + 1


def science_data_length(pixel_count: int) -> int:
    return SCIENCE_DATA_HEADER_LEN + 2 * pixel_count


@dataclass(frozen=True)
class PacketTime:
    coarse: int
    fine: int

    @property
    def seconds(self) -> float:
        """Seconds since 1958-01-01 TAI."""
        return self.coarse + self.fine / 65536.0


def decode_tag(packet: bytes) -> ExposureTag:
    """Exposure tag of one science packet (kinds 2-4)."""
    return ExposureTag(*_TAG.unpack_from(packet, HEADER_LEN))


def decode_exposure_start(packet: bytes) -> tuple[ExposureTag, ExposureStart]:
    """Tag and fields of one kind-2 packet (the L0 assembler needs the geometry)."""
    if len(packet) != EXPOSURE_START_LEN or packet[13] != Kind.EXPOSURE_START:
        raise CodecError("not an exposure-start packet (kind 2, 114 bytes)")
    f = _START.unpack_from(packet, SCIENCE_TAG_END)
    text = [b.rstrip(b"\0").decode("ascii", "replace") for b in f[10:13]]
    return decode_tag(packet), ExposureStart(*f[:10], *text)


def decode_exposure_end(packet: bytes) -> tuple[ExposureTag, ExposureEnd]:
    if len(packet) != EXPOSURE_END_LEN or packet[13] != Kind.EXPOSURE_END:
        raise CodecError("not an exposure-end packet (kind 4, 34 bytes)")
    return decode_tag(packet), ExposureEnd(*_END.unpack_from(packet, SCIENCE_TAG_END))
