"""Vectorized, chunk-fed decoder of the packet format (docs/icd.md).

Pure and synchronous: bytes in, column arrays out, no I/O (the consumers do
the I/O, as Yamcs' ``PacketDecoder`` does). CCSDS Space Packet Protocol,
CCSDS 133.0-B-2, with our 8-byte secondary header and science tag; every
byte offset comes from :mod:`streams.packets`.

How a buffer is decoded, without a per-packet Python loop:

1. **Candidate scan.** numpy finds every byte position whose bytes form a
   strictly valid header (version 0, TM, secondary header, unsegmented,
   source 0/1, kind 1..4 consistent with the APID range, detector byte equal
   to the APID's detector, exact lengths for the fixed-size kinds, length =
   38 + 2 * pixel count for science data, dictionary length for engineering).
2. **Chain.** Candidates that do not overlap any other are accepted. The rare
   overlapping ones (a header-like pattern inside pixel data, a truncated
   packet whose claimed length runs over the next packet, a corrupt length)
   form small clusters resolved by weighted interval scheduling: a candidate
   counts 2 when its end is the start of another valid header (the two-header
   confirmation of a sync word search) or the end of the stream, and 1
   otherwise; on a tie the later header wins (a real header inside a
   truncated packet is far likelier than a false header inside a real one).
   So a corrupt or truncated packet does not swallow the intact packets that
   follow it.
3. **Skipped bytes.** Bytes not covered by an accepted packet are reported as
   :class:`Skipped` with a reason naming the defect of the header found there.
4. **Carry.** Decisions that more bytes could still change (the partial
   packet at the end, a cluster that reaches the end) are deferred: those
   bytes are carried into the next :meth:`StreamDecoder.feed`. Decoding is
   therefore independent of how the stream is split into chunks; only a
   skipped run that crosses a chunk boundary is reported in pieces
   (contiguous, same reason; :func:`merge_skipped` joins them).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.errors import CodecError
from streams.packets import (
    DETECTORS,
    ENG_APID_MAX,
    ENG_APID_MIN,
    EXPOSURE_END_LEN,
    EXPOSURE_START_LEN,
    HEADER_LEN,
    MAX_PACKET_LEN,
    MAX_PIXELS_PER_PACKET,
    PRIMARY_HEADER_LEN,
    SCI_APID_BASE,
    SCIENCE_DATA_HEADER_LEN,
    SCIENCE_TAG_END,
    SEQ_MODULO,
    SEQ_UNSEGMENTED,
    Kind,
)

__all__ = [
    "DecodedChunk",
    "PacketIndex",
    "Skipped",
    "StreamDecoder",
    "decode_all",
    "header_defects",
    "merge_skipped",
    "REASON_BAD_KIND",
    "REASON_BAD_SEQ_FLAGS",
    "REASON_BAD_SOURCE",
    "REASON_BAD_TYPE",
    "REASON_BAD_VERSION",
    "REASON_DETECTOR_MISMATCH",
    "REASON_GARBAGE",
    "REASON_IMPOSSIBLE_LENGTH",
    "REASON_INPUT_GAP",
    "REASON_TRUNCATED",
    "REASON_TRUNCATED_EOS",
    "REASON_UNKNOWN_APID",
]

# --- skip reasons (fixed strings: usable as metric labels) -------------------------------------
REASON_GARBAGE = "garbage/corrupt header: no valid packet header"
REASON_BAD_VERSION = "bad version"
REASON_BAD_TYPE = "bad packet type or secondary header flag"
REASON_BAD_SEQ_FLAGS = "bad sequence flags"
REASON_UNKNOWN_APID = "unknown APID"
REASON_IMPOSSIBLE_LENGTH = "impossible length"
REASON_BAD_SOURCE = "bad source"
REASON_BAD_KIND = "bad packet kind"
REASON_DETECTOR_MISMATCH = "detector code does not match APID"
REASON_TRUNCATED = "truncated or corrupt-length packet: a confirmed packet starts inside it"
REASON_TRUNCATED_EOS = "truncated packet at end of stream"
REASON_INPUT_GAP = "truncated packet before a gap in the input"

# --- header geometry, derived from streams.packets ----------------------------------------------
#: bytes needed to judge any header (the science-data header is the longest)
LOOKAHEAD = SCIENCE_DATA_HEADER_LEN
_SOURCE_BYTE = HEADER_LEN - 2  # 12
_KIND_BYTE = HEADER_LEN - 1  # 13
_DETECTOR_BYTE = SCIENCE_TAG_END - 1  # 27
_PIXEL_COUNT_BYTE = SCIENCE_DATA_HEADER_LEN - 2  # 36
_SEQ_FLAGS_MIN = SEQ_UNSEGMENTED << 6  # byte 2 >= 0xC0 <=> sequence flags == 3

#: first header byte: version 0 (3 b), type 0 (1 b), secondary header 1 (1 b), APID bits 10-8
_B0_FIXED = 0b00001000
ENG_B0 = _B0_FIXED | (ENG_APID_MIN >> 8)
SCI_B0 = _B0_FIXED | (SCI_APID_BASE >> 8)
assert ENG_APID_MIN & 0xFF == 0 and ENG_APID_MAX == ENG_APID_MIN | 0xFF, "eng APIDs fill one byte"
assert max(DETECTORS) < 0x100 and SCI_APID_BASE & 0xFF == 0, "science APIDs share byte 0"
#: cheap first filter: (byte0 & _SCAN_MASK) == _SCAN_VALUE keeps ENG_B0 and SCI_B0
_SCAN_MASK = 0xFF & ~(ENG_B0 ^ SCI_B0)
_SCAN_VALUE = ENG_B0 & _SCAN_MASK

#: shortest engineering packet: the headers alone
_MIN_ENG_LEN = HEADER_LEN

_DETECTOR_OK = np.zeros(256, dtype=bool)
_DETECTOR_OK[list(DETECTORS)] = True

#: one science header (bytes 0..37) as a record; tag/data fields are zeroed where they do not apply
_HEADER_DTYPE = np.dtype([
    ("w0", ">u2"), ("w1", ">u2"), ("length", ">u2"), ("coarse", ">u4"), ("fine", ">u2"),
    ("source", "u1"), ("kind", "u1"),
    ("program", ">u4"), ("observation", ">u2"), ("visit", ">u2"), ("visit_group", "u1"),
    ("parallel_seq", "u1"), ("activity", "u1"), ("exposure", ">u2"), ("detector", "u1"),
    ("integration", ">u2"), ("group", ">u2"), ("pixel_offset", ">u4"), ("pixel_count", ">u2"),
])
assert _HEADER_DTYPE.fields["coarse"][1] == PRIMARY_HEADER_LEN
assert _HEADER_DTYPE.fields["program"][1] == HEADER_LEN
assert _HEADER_DTYPE.fields["detector"][1] == _DETECTOR_BYTE
assert _HEADER_DTYPE.fields["integration"][1] == SCIENCE_TAG_END
assert _HEADER_DTYPE.fields["pixel_count"][1] == _PIXEL_COUNT_BYTE
assert _HEADER_DTYPE.itemsize == LOOKAHEAD

_SCAN_BLOCK = 1 << 18  # scan in L2-sized blocks
_GATHER_BELOW = 160  # packets_bytes: mean run length (bytes) under which a numpy gather wins
_ENG, _START, _DATA, _END = (int(k) for k in (Kind.ENG, Kind.EXPOSURE_START, Kind.SCIENCE_DATA,
                                              Kind.EXPOSURE_END))


def _windows(arr: np.ndarray) -> np.ndarray:
    """(len - LOOKAHEAD + 1, LOOKAHEAD) read-only view: row p = the header bytes at p."""
    return np.ndarray((len(arr) - LOOKAHEAD + 1, LOOKAHEAD), dtype=np.uint8, buffer=arr,
                      strides=(1, 1))


# --- PacketIndex -------------------------------------------------------------------------------

@dataclass
class PacketIndex:
    """Column arrays describing decoded packets (all numpy, same length).

    ``offset`` indexes :attr:`DecodedChunk.data`; ``stream_offset`` is the
    absolute position in the contact stream (the packet's identity on replay).
    Tag fields are 0 for engineering packets; integration .. pixel_count are 0
    unless kind 3.
    """

    offset: np.ndarray
    stream_offset: np.ndarray
    length: np.ndarray
    apid: np.ndarray
    seq_flags: np.ndarray
    seq: np.ndarray
    coarse: np.ndarray
    fine: np.ndarray
    source: np.ndarray
    kind: np.ndarray
    program: np.ndarray
    observation: np.ndarray
    visit: np.ndarray
    visit_group: np.ndarray
    parallel_seq: np.ndarray
    activity: np.ndarray
    exposure: np.ndarray
    detector: np.ndarray
    integration: np.ndarray
    group: np.ndarray
    pixel_offset: np.ndarray
    pixel_count: np.ndarray

    #: column name -> dtype, in serialisation order
    COLUMNS: ClassVar[dict[str, np.dtype]] = {
        "offset": np.dtype(np.int64), "stream_offset": np.dtype(np.int64),
        "length": np.dtype(np.int32), "apid": np.dtype(np.uint16),
        "seq_flags": np.dtype(np.uint8), "seq": np.dtype(np.uint16),
        "coarse": np.dtype(np.uint32), "fine": np.dtype(np.uint16),
        "source": np.dtype(np.uint8), "kind": np.dtype(np.uint8),
        "program": np.dtype(np.uint32), "observation": np.dtype(np.uint16),
        "visit": np.dtype(np.uint16), "visit_group": np.dtype(np.uint8),
        "parallel_seq": np.dtype(np.uint8), "activity": np.dtype(np.uint8),
        "exposure": np.dtype(np.uint16), "detector": np.dtype(np.uint8),
        "integration": np.dtype(np.uint16), "group": np.dtype(np.uint16),
        "pixel_offset": np.dtype(np.uint32), "pixel_count": np.dtype(np.uint16),
    }
    _MAGIC: ClassVar[bytes] = b"DLPX\x01"
    _COUNT: ClassVar[struct.Struct] = struct.Struct("<Q")

    def __len__(self) -> int:
        return len(self.offset)

    @classmethod
    def empty(cls) -> "PacketIndex":
        return cls(**{name: np.empty(0, dtype) for name, dtype in cls.COLUMNS.items()})

    def take(self, idx: Any) -> "PacketIndex":
        """Rows selected by an index array, a boolean mask or a slice."""
        if isinstance(idx, np.ndarray) and idx.dtype == bool:
            idx = np.flatnonzero(idx)  # scan the mask once, not once per column
        return PacketIndex(**{name: getattr(self, name)[idx] for name in self.COLUMNS})

    @classmethod
    def concat(cls, parts: Sequence["PacketIndex"]) -> "PacketIndex":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts])
                      for name in cls.COLUMNS})

    def to_bytes(self) -> bytes:
        """Compact, deterministic serialisation: magic, row count, then each column
        little-endian in :attr:`COLUMNS` order (for msgpack envelopes)."""
        cols = [np.ascontiguousarray(getattr(self, name), dtype.newbyteorder("<")).tobytes()
                for name, dtype in self.COLUMNS.items()]
        return b"".join([self._MAGIC, self._COUNT.pack(len(self)), *cols])

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview) -> "PacketIndex":
        raw = memoryview(raw).cast("B")
        head = len(cls._MAGIC) + cls._COUNT.size
        if len(raw) < head or bytes(raw[:len(cls._MAGIC)]) != cls._MAGIC:
            raise CodecError("not a serialised PacketIndex (bad magic); was it written by "
                             "PacketIndex.to_bytes of this version?")
        (n,) = cls._COUNT.unpack_from(raw, len(cls._MAGIC))
        row = sum(dtype.itemsize for dtype in cls.COLUMNS.values())
        if len(raw) != head + n * row:
            raise CodecError(f"serialised PacketIndex of {n} rows should be {head + n * row} "
                             f"bytes, got {len(raw)}: truncated or corrupt message")
        out: dict[str, np.ndarray] = {}
        pos = head
        for name, dtype in cls.COLUMNS.items():
            size = n * dtype.itemsize
            out[name] = np.frombuffer(raw[pos:pos + size], dtype.newbyteorder("<")).astype(dtype)
            pos += size
        return cls(**out)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PacketIndex):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in self.COLUMNS)


@dataclass
class Skipped:
    """Bytes that are not part of any valid packet, kept intact for the dead-letter topic."""

    stream_offset: int
    data: bytes
    reason: str

    @property
    def end(self) -> int:
        return self.stream_offset + len(self.data)


@dataclass
class DecodedChunk:
    """Result of one :meth:`StreamDecoder.feed`.

    ``data`` is the buffer the packets index into (``packets.offset``);
    ``stream_offset`` is the stream position of ``data[0]``. This result
    accounts for ``data[:consumed]`` (its packets and skipped ranges); any bytes
    after that were carried and come again in the next result, so count bytes
    with ``packets.length`` and ``skipped``, never ``len(data)``. (Not trimming
    saves a copy of every chunk.)
    """

    data: bytes
    packets: PacketIndex
    skipped: list[Skipped] = field(default_factory=list)
    stream_offset: int = 0
    consumed: int = -1  # -1: all of data

    def __post_init__(self) -> None:
        if self.consumed < 0:
            self.consumed = len(self.data)

    def packet(self, i: int) -> bytes:
        off = int(self.packets.offset[i])
        return self.data[off:off + int(self.packets.length[i])]

    def packets_bytes(self, idx: Any = None) -> bytes:
        """Concatenation of the selected packets (index array, mask, slice; None = all).

        Packets adjacent in ``data`` are merged into runs first. Long runs are
        joined as memoryview slices (one copy each, ~10 GB/s for science
        packets); many short runs (small engineering packets) are gathered with
        one numpy fancy index instead, which is faster there (measured).
        """
        starts, lengths = self.packets.offset, self.packets.length
        if idx is not None:
            if isinstance(idx, np.ndarray) and idx.dtype == bool:
                idx = np.flatnonzero(idx)
            starts, lengths = starts[idx], lengths[idx]
        if len(starts) == 0:
            return b""
        ends = starts + lengths
        brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        run_s = starts[np.concatenate(([0], brk))]
        run_e = ends[np.concatenate((brk - 1, [len(starts) - 1]))]
        if len(run_s) == 1:
            return self.data[int(run_s[0]):int(run_e[0])]
        run_len = run_e - run_s
        total = int(run_len.sum())
        if total < _GATHER_BELOW * len(run_s):
            shift = np.repeat(run_s - (np.cumsum(run_len) - run_len), run_len)
            shift += np.arange(total)
            return np.frombuffer(self.data, dtype=np.uint8)[shift].tobytes()
        mv = memoryview(self.data)
        return b"".join([mv[a:b] for a, b in zip(run_s.tolist(), run_e.tolist())])


def merge_skipped(skipped: Sequence[Skipped]) -> list[Skipped]:
    """Join contiguous pieces with the same reason (a skipped run split across feeds)."""
    out: list[Skipped] = []
    for s in skipped:
        if out and out[-1].end == s.stream_offset and out[-1].reason == s.reason:
            last = out[-1]
            out[-1] = Skipped(last.stream_offset, last.data + s.data, last.reason)
        else:
            out.append(s)
    return out


# --- header judgement (scalar; used on skipped bytes and the last few bytes of a buffer) -------

def header_defects(h: bytes | memoryview, eng_lengths: Mapping[int, int] | None = None,
                   max_eng_len: int = MAX_PACKET_LEN) -> list[str]:
    """Defects of the header bytes ``h`` (may be shorter than a header: only the
    bytes present are judged). Empty list = valid (or a valid prefix)."""
    k = len(h)
    d: list[str] = []
    if k == 0:
        return d
    b0 = h[0]
    if b0 >> 5:
        d.append(REASON_BAD_VERSION)
    if (b0 >> 3) & 0b11 != 0b01:
        d.append(REASON_BAD_TYPE)
    if k < 2:
        return d
    apid = ((b0 & 0x07) << 8) | h[1]
    if k > 2 and h[2] >> 6 != SEQ_UNSEGMENTED:
        d.append(REASON_BAD_SEQ_FLAGS)
    if k > _SOURCE_BYTE and h[_SOURCE_BYTE] > 1:
        d.append(REASON_BAD_SOURCE)
    kind = h[_KIND_BYTE] if k > _KIND_BYTE else None
    if kind is not None and not _ENG <= kind <= _END:
        d.append(REASON_BAD_KIND)
        kind = None
    is_eng = ENG_APID_MIN <= apid <= ENG_APID_MAX and (eng_lengths is None or apid in eng_lengths)
    is_sci = (apid - SCI_APID_BASE) in DETECTORS
    if kind == _ENG:
        apid_ok = is_eng
    elif kind is not None:
        apid_ok = is_sci
    else:
        apid_ok = is_eng or is_sci
    if not apid_ok:
        d.append(REASON_UNKNOWN_APID)
    elif k > 5:
        length = ((h[4] << 8) | h[5]) + PRIMARY_HEADER_LEN + 1
        if is_eng and kind in (None, _ENG):
            ok = (length == eng_lengths[apid] if eng_lengths is not None
                  else _MIN_ENG_LEN <= length <= max_eng_len)
        else:
            ok = False
        if is_sci and kind in (None, _START) and length == EXPOSURE_START_LEN:
            ok = True
        if is_sci and kind in (None, _END) and length == EXPOSURE_END_LEN:
            ok = True
        if is_sci and kind in (None, _DATA):
            npix, odd = divmod(length - SCIENCE_DATA_HEADER_LEN, 2)
            if not odd and 1 <= npix <= MAX_PIXELS_PER_PACKET:
                ok = ok or k <= _PIXEL_COUNT_BYTE + 1 or (
                    (h[_PIXEL_COUNT_BYTE] << 8) | h[_PIXEL_COUNT_BYTE + 1]) == npix
        if not ok:
            d.append(REASON_IMPOSSIBLE_LENGTH)
        if (kind is not None and kind != _ENG and is_sci and k > _DETECTOR_BYTE
                and h[_DETECTOR_BYTE] != apid - SCI_APID_BASE):
            d.append(REASON_DETECTOR_MISMATCH)
    return d


def _classify(h: bytes | memoryview, eng_lengths: Mapping[int, int] | None,
              max_eng_len: int) -> str:
    """Reason for skipped bytes starting with ``h``: the one defect of a header-like
    pattern, a valid header that lost to a confirmed one, or plain garbage."""
    d = header_defects(h, eng_lengths, max_eng_len)
    if not d:
        return REASON_TRUNCATED
    if len(d) == 1:
        return d[0]
    return REASON_GARBAGE


def _flatnonzero(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """np.flatnonzero of a sparse 0/1 uint8 array, 8 bytes at a time (a few times faster)."""
    k = len(x)
    full = k - k % 8
    words = x[:full].view(np.uint64)
    nz = scratch[:len(words)]
    np.not_equal(words, 0, out=nz)
    wi = np.flatnonzero(nz)
    hit = np.flatnonzero(np.take(x[:full].reshape(-1, 8), wi, axis=0))
    idx = (wi[hit >> 3] << 3) | (hit & 7)
    if full < k:
        idx = np.concatenate((idx, np.flatnonzero(x[full:]) + full))
    return idx


# --- the decoder -------------------------------------------------------------------------------

class StreamDecoder:
    """Incremental decoder of one contact stream.

    ``feed`` chunks in stream order; a packet cut by the end of a chunk is
    carried into the next one. ``carry`` and ``next_offset`` are the restart
    snapshot: ``StreamDecoder(eng_lengths, stream_offset=next_offset - len(carry),
    carry=carry, open_skip=open_skip)`` continues identically (``open_skip``
    only keeps the reason of a skipped run that crosses the snapshot).

    Parameters
    ----------
    eng_lengths
        Engineering APID -> total packet length (from the dictionary). ``None``
        accepts any APID 0x100-0x1FF with a length of 14..MAX_PACKET_LEN.
    stream_offset
        Stream position of the first byte of ``carry`` (or of the first chunk).
    carry
        Bytes carried over from a previous decoder (restart).
    """

    def __init__(self, eng_lengths: Mapping[int, int] | None = None, *, stream_offset: int = 0,
                 carry: bytes = b"", open_skip: str | None = None) -> None:
        self.eng_lengths: dict[int, int] | None = None
        self._eng_table: np.ndarray | None = None  # byte 1 -> length (0 = unknown APID)
        max_len = MAX_PACKET_LEN
        if eng_lengths is not None:
            self.eng_lengths = {int(a): int(n) for a, n in eng_lengths.items()}
            table = np.zeros(256, dtype=np.int64)
            for apid, length in self.eng_lengths.items():
                if not ENG_APID_MIN <= apid <= ENG_APID_MAX:
                    raise CodecError(f"engineering APID 0x{apid:03x} outside "
                                     f"0x{ENG_APID_MIN:03x}-0x{ENG_APID_MAX:03x}; fix the "
                                     "engineering dictionary")
                if not _MIN_ENG_LEN <= length <= 0xFFFF + PRIMARY_HEADER_LEN + 1:
                    raise CodecError(f"engineering APID 0x{apid:03x} length {length} is not "
                                     f"a CCSDS packet length >= {_MIN_ENG_LEN}; fix the "
                                     "engineering dictionary")
                table[apid & 0xFF] = length
            self._eng_table = table
            max_len = max(max_len, max(self.eng_lengths.values(), default=0))
        self._max_eng_len = MAX_PACKET_LEN
        #: a pathological chain of overlapping headers longer than this is decided greedily
        self.max_carry = 8 * max_len
        self.carry = bytes(carry)
        self.next_offset = int(stream_offset) + len(self.carry)
        self.open_skip = open_skip
        self._scratch_u8 = np.empty(_SCAN_BLOCK, dtype=np.uint8)
        self._scratch_b = np.empty(_SCAN_BLOCK, dtype=bool)
        self._scratch_w = np.empty(_SCAN_BLOCK // 8 + 1, dtype=bool)

    # -- public API --------------------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview | np.ndarray,
             stream_offset: int | None = None) -> DecodedChunk:
        """Decode ``chunk`` (following the previous one unless ``stream_offset`` says
        otherwise). A chunk already seen (offset below ``next_offset``) is trimmed
        to its new bytes; a jump forward ends the carried packet as skipped."""
        if not isinstance(chunk, bytes):
            chunk = memoryview(chunk).cast("B")
        head: DecodedChunk | None = None
        if stream_offset is not None and stream_offset != self.next_offset:
            if stream_offset < self.next_offset:
                overlap = self.next_offset - stream_offset
                if overlap >= len(chunk):
                    return DecodedChunk(b"", PacketIndex.empty(), [], self.next_offset, 0)
                chunk = chunk[overlap:]
            else:
                head = self._finish(REASON_INPUT_GAP)
                self.next_offset = int(stream_offset)
        if self.carry:
            buf = self.carry + chunk
        else:
            buf = chunk if isinstance(chunk, bytes) else bytes(chunk)
        base = self.next_offset - len(self.carry)
        self.next_offset += len(chunk)
        out = self._decode(buf, base, final=False)
        return out if head is None else _join(head, out)

    def flush(self) -> DecodedChunk:
        """End of stream: decode what is carried; an unfinished packet is skipped."""
        return self._finish(REASON_TRUNCATED_EOS)

    # -- internals ----------------------------------------------------------------------------

    def _finish(self, tail_reason: str) -> DecodedChunk:
        buf, base = self.carry, self.next_offset - len(self.carry)
        out = self._decode(buf, base, final=True, tail_reason=tail_reason)
        self.open_skip = None
        return out

    def _candidates(self, arr: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Valid header positions p < limit (arr must extend LOOKAHEAD past limit) and lengths."""
        found: list[np.ndarray] = []
        u8, bl, wb = self._scratch_u8, self._scratch_b, self._scratch_w
        for s0 in range(0, limit, _SCAN_BLOCK):
            e0 = min(s0 + _SCAN_BLOCK, limit)
            k = e0 - s0
            x = u8[:k]
            m = x.view(bool)
            y = bl[:k]
            # byte 0: version/type/sec-hdr/APID high bits; byte 2: sequence flags; byte 12: source
            np.bitwise_and(arr[s0:e0], _SCAN_MASK, out=x)
            np.equal(x, _SCAN_VALUE, out=m)
            np.greater_equal(arr[s0 + 2:e0 + 2], _SEQ_FLAGS_MIN, out=y)
            np.logical_and(m, y, out=m)
            np.less_equal(arr[s0 + _SOURCE_BYTE:e0 + _SOURCE_BYTE], 1, out=y)
            np.logical_and(m, y, out=m)
            idx = _flatnonzero(u8[:k], wb)
            if idx.size:
                found.append(idx + s0 if s0 else idx)
        if not found:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        c = found[0] if len(found) == 1 else np.concatenate(found)
        rows = _windows(arr)[c]
        b0 = rows[:, 0]
        b1 = rows[:, 1]
        kind = rows[:, _KIND_BYTE]
        length = ((rows[:, 4].astype(np.int64) << 8) | rows[:, 5]) + (PRIMARY_HEADER_LEN + 1)
        eng = (b0 == ENG_B0) & (kind == _ENG)
        if self._eng_table is not None:
            eng &= self._eng_table[b1] == length
        else:
            eng &= (length >= _MIN_ENG_LEN) & (length <= self._max_eng_len)
        sci = (b0 == SCI_B0) & _DETECTOR_OK[b1] & (rows[:, _DETECTOR_BYTE] == b1)
        npix = (rows[:, _PIXEL_COUNT_BYTE].astype(np.int64) << 8) | rows[:, _PIXEL_COUNT_BYTE + 1]
        sci &= (((kind == _START) & (length == EXPOSURE_START_LEN))
                | ((kind == _END) & (length == EXPOSURE_END_LEN))
                | ((kind == _DATA) & (npix >= 1) & (npix <= MAX_PIXELS_PER_PACKET)
                   & (length == SCIENCE_DATA_HEADER_LEN + 2 * npix)))
        ok = (eng | sci) & (rows[:, _SOURCE_BYTE] <= 1)
        return c[ok], length[ok]

    def _first_open(self, buf: bytes, arr: np.ndarray, start: int, n: int) -> int:
        """First position in [start, n) whose (incomplete) bytes may still start a packet."""
        if start >= n:
            return n
        tail = np.flatnonzero((arr[start:n] & _SCAN_MASK) == _SCAN_VALUE)
        for p in (tail + start).tolist():
            if not header_defects(buf[p:min(n, p + LOOKAHEAD)], self.eng_lengths,
                                  self._max_eng_len):
                return p
        return n

    def _decode(self, buf: bytes, base: int, *, final: bool,
                tail_reason: str = REASON_TRUNCATED_EOS) -> DecodedChunk:
        n = len(buf)
        if final:
            arr = np.zeros(n + LOOKAHEAD, dtype=np.uint8)
            arr[:n] = np.frombuffer(buf, dtype=np.uint8)
            limit = max(n - HEADER_LEN + 1, 0)
        else:
            arr = np.frombuffer(buf, dtype=np.uint8)
            limit = max(n - LOOKAHEAD + 1, 0)
        c, length = self._candidates(arr, limit)
        e = c + length
        links = c  # link targets: every valid header, complete or not
        incomplete = c[:0]
        if final:
            links = np.append(c, n)  # ending exactly at the end of the stream confirms too
            complete = e <= n
            incomplete = c[~complete]
            c, e = c[complete], e[complete]
            undecided = n
        else:
            undecided = self._first_open(buf, arr, limit, n)
        acc_s, acc_e, commit = self._resolve(c, e, links, undecided, n, final)

        # skipped ranges: every byte of [0, commit) outside accepted packets
        gap_s = np.concatenate(([0], acc_e))
        gap_e = np.concatenate((acc_s, [commit]))
        has = np.flatnonzero(gap_e > gap_s)
        if not final and has.size and has[-1] == len(gap_s) - 1:
            g = int(gap_s[-1])
            if commit - g < LOOKAHEAD and not (g == 0 and self.open_skip is not None):
                # a skipped run is named after its first LOOKAHEAD bytes: wait for them
                commit = g
                has = has[:-1]
        skipped: list[Skipped] = []
        mv = memoryview(buf)
        for i in has.tolist():
            g, h = int(gap_s[i]), int(gap_e[i])
            if final and h == n:
                # the unfinished packet at the end: a valid header whose length runs past
                # the end, or a header prefix too short to judge
                t = self._first_open(buf, arr, max(g, n - LOOKAHEAD + 1), n)
                later = incomplete[incomplete >= g]
                if later.size:
                    t = min(t, int(later[0]))
                if t < n:
                    if t > g:
                        skipped.append(self._skip(buf, g, t, base))
                    skipped.append(Skipped(base + t, bytes(mv[t:n]), tail_reason))
                    continue
            skipped.append(self._skip(buf, g, h, base))
        if final or commit == 0:
            self.open_skip = None if final else self.open_skip
        else:
            self.open_skip = (skipped[-1].reason if has.size and int(gap_e[has[-1]]) == commit
                              else None)

        self.carry = buf[commit:] if not final else b""
        return DecodedChunk(buf, self._index(arr, acc_s, acc_e, base), skipped, base, commit)

    def _skip(self, buf: bytes, g: int, h: int, base: int) -> Skipped:
        """Skipped bytes [g, h), named after their own first bytes (or the run they continue)."""
        if g == 0 and self.open_skip is not None:
            reason = self.open_skip
        else:
            reason = _classify(memoryview(buf)[g:min(h, g + LOOKAHEAD)],
                               self.eng_lengths, self._max_eng_len)
        return Skipped(base + g, bytes(memoryview(buf)[g:h]), reason)

    def _resolve(self, c: np.ndarray, e: np.ndarray, links: np.ndarray, undecided: int, n: int,
                 final: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Accepted (starts, ends) and the commit point (bytes after it are carried)."""
        m = len(c)
        if m == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, (n if final else undecided)
        cm = np.maximum.accumulate(e)
        first = np.empty(m, dtype=bool)
        first[0] = True
        np.greater_equal(c[1:], cm[:-1], out=first[1:])
        cs = np.flatnonzero(first)
        ce = np.append(cs[1:], m) - 1
        cend = cm[ce]
        single = ce == cs
        if final:
            n_final = len(cs)
        else:
            done = np.where(single, cend <= undecided, cend < undecided)
            pending = np.flatnonzero(~done)
            n_final = int(pending[0]) if pending.size else len(cs)
        commit = int(c[cs[n_final]]) if n_final < len(cs) else (n if final else undecided)

        keep = [cs[:n_final][single[:n_final]]]
        for k in np.flatnonzero(~single[:n_final]).tolist():
            keep.append(self._best_chain(c, e, links, int(cs[k]), int(ce[k]) + 1))
        if not final and n_final < len(cs) and commit < n - self.max_carry:
            forced, commit = self._greedy(c, e, int(cs[n_final]), n - self.max_carry, undecided)
            keep.append(forced)
        acc = keep[0] if len(keep) == 1 else np.sort(np.concatenate(keep))
        return c[acc], e[acc], commit

    @staticmethod
    def _best_chain(c: np.ndarray, e: np.ndarray, links: np.ndarray, i0: int, i1: int
                    ) -> np.ndarray:
        """Weighted interval scheduling over one cluster of overlapping candidates [i0, i1)."""
        s, en = c[i0:i1], e[i0:i1]
        at = np.searchsorted(links, en)
        linked = (at < len(links)) & (links[np.minimum(at, len(links) - 1)] == en)
        weight = (1 + linked).tolist()
        nxt = np.searchsorted(s, en).tolist()
        k = i1 - i0
        best = [0] * (k + 1)
        take = [False] * k
        for j in range(k - 1, -1, -1):
            with_j = weight[j] + best[nxt[j]]
            if with_j > best[j + 1]:  # on a tie keep the later header: it lies inside the other
                best[j], take[j] = with_j, True
            else:
                best[j] = best[j + 1]
        chosen = []
        j = 0
        while j < k:
            if take[j]:
                chosen.append(i0 + j)
                j = nxt[j]
            else:
                j += 1
        return np.asarray(chosen, dtype=np.int64)

    @staticmethod
    def _greedy(c: np.ndarray, e: np.ndarray, j: int, horizon: int, undecided: int
                ) -> tuple[np.ndarray, int]:
        """Pathological overlap chains only: accept first-come from candidate j while
        candidates start before ``horizon``, bounding the carry."""
        chosen = []
        m = len(c)
        end = 0
        while j < m and c[j] < horizon:
            chosen.append(j)
            end = int(e[j])
            j = int(np.searchsorted(c, end))
        commit = int(c[j]) if j < m else max(undecided, end)
        return np.asarray(chosen, dtype=np.int64), commit

    @staticmethod
    def _index(arr: np.ndarray, s: np.ndarray, e: np.ndarray, base: int) -> PacketIndex:
        """Gather the header bytes of the accepted packets and split them into columns."""
        if len(s) == 0:
            return PacketIndex.empty()
        rows = _windows(arr)[s]
        kind = rows[:, _KIND_BYTE].copy()
        rows[kind == _ENG, HEADER_LEN:] = 0  # no tag, no science-data fields
        rows[(kind != _DATA) & (kind != _ENG), SCIENCE_TAG_END:] = 0
        rec = rows.view(_HEADER_DTYPE)[:, 0]
        w0 = rec["w0"].astype(np.uint16)
        w1 = rec["w1"].astype(np.uint16)
        return PacketIndex(
            offset=s.astype(np.int64),
            stream_offset=s + base,
            length=(e - s).astype(np.int32),
            apid=w0 & 0x07FF,
            seq_flags=(w1 >> 14).astype(np.uint8),
            seq=w1 & (SEQ_MODULO - 1),
            coarse=rec["coarse"].astype(np.uint32),
            fine=rec["fine"].astype(np.uint16),
            source=rec["source"].copy(),
            kind=kind,
            program=rec["program"].astype(np.uint32),
            observation=rec["observation"].astype(np.uint16),
            visit=rec["visit"].astype(np.uint16),
            visit_group=rec["visit_group"].copy(),
            parallel_seq=rec["parallel_seq"].copy(),
            activity=rec["activity"].copy(),
            exposure=rec["exposure"].astype(np.uint16),
            detector=rec["detector"].copy(),
            integration=rec["integration"].astype(np.uint16),
            group=rec["group"].astype(np.uint16),
            pixel_offset=rec["pixel_offset"].astype(np.uint32),
            pixel_count=rec["pixel_count"].astype(np.uint16),
        )


def _join(a: DecodedChunk, b: DecodedChunk) -> DecodedChunk:
    """One result from two consecutive decodes (offsets of ``b`` shift past ``a.data``)."""
    if not a.data and not len(a.packets) and not a.skipped:
        return b
    pb = b.packets
    if len(pb):
        pb = PacketIndex(**{name: getattr(pb, name) for name in PacketIndex.COLUMNS})
        pb.offset = pb.offset + len(a.data)
    return DecodedChunk(a.data + b.data, PacketIndex.concat([a.packets, pb]),
                        a.skipped + b.skipped, a.stream_offset, len(a.data) + b.consumed)


def decode_all(data: bytes | bytearray | memoryview | np.ndarray,
               eng_lengths: Mapping[int, int] | None = None) -> DecodedChunk:
    """Decode a whole stream at once (same result as feeding it in any chunks, then flush)."""
    if not isinstance(data, bytes):
        data = bytes(memoryview(data).cast("B"))
    dec = StreamDecoder(eng_lengths)
    dec.next_offset = len(data)
    dec.carry = data
    return dec.flush()
