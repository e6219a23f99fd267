"""Decommutation: one ``EngBatch`` (a run of one APID's packets) -> calibrated samples.

Vectorized per batch: the packets of one APID have one fixed layout, so the
whole batch is viewed as a numpy structured array
(:meth:`EngDictionary.decode_many`) and every parameter is calibrated with one
polynomial evaluation (:meth:`EngDictionary.calibrate_all`). Sequence counts
and packet times come from the batch's packet index, so no header is parsed
twice. A batch that contradicts the dictionary or its own index is a
:class:`~core.errors.CodecError` (the service dead-letters it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import CodecError, ConfigError, EnvelopeError
from streams.decoder import PacketIndex
from streams.dictionary import EngDictionary
from streams.messages import EngBatch
from streams.packets import Source

#: packet time in units of 2^-16 s (coarse << 16 | fine): exact, comparable, 48 bits
FINE_PER_S = 1 << 16


@dataclass(frozen=True)
class Samples:
    """Decoded samples of one APID in arrival order (all arrays of one length)."""

    apid: int
    contact: str
    seq: np.ndarray  # uint16 sequence counts
    ticks: np.ndarray  # int64 packet time, 2^-16 s since 1958 TAI
    raw: np.ndarray  # structured: one field per parameter (raw values)
    values: dict[str, np.ndarray]  # engineering values per parameter
    raw_ts: float  # wall time (s) the raw chunk reached Kafka

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def tai(self) -> np.ndarray:
        """Packet times as float TAI seconds (exact: 48 bits fit a double)."""
        return self.ticks / FINE_PER_S

    def take(self, idx: np.ndarray) -> "Samples":
        return Samples(self.apid, self.contact, self.seq[idx], self.ticks[idx], self.raw[idx],
                       {k: v[idx] for k, v in self.values.items()}, self.raw_ts)


def decommutate(dictionary: EngDictionary, batch: EngBatch) -> Samples:
    """Raw and calibrated values of every packet of ``batch``.

    Raises CodecError when the batch is recorded engineering (never live
    state), names an APID the dictionary does not know, or its bytes and index
    disagree.
    """
    apid = batch.apid
    if batch.source != Source.REALTIME:
        raise CodecError(f"APID 0x{apid:03x}: source {batch.source} (recorded) on the real-time "
                         "topic; recorded engineering is never published as live state")
    try:
        index = PacketIndex.from_bytes(batch.index)
    except (CodecError, EnvelopeError, ValueError) as exc:
        raise CodecError(f"APID 0x{apid:03x}: unreadable packet index: {exc}") from None
    try:
        raw = dictionary.decode_many(apid, batch.packets, header=True)
    except ConfigError as exc:
        raise CodecError(f"APID 0x{apid:03x}: {exc}") from None
    if len(raw) != len(index):
        raise CodecError(f"APID 0x{apid:03x}: {len(raw)} packets in the bytes but {len(index)} "
                         "in the index")
    if len(index) and (np.any(index.apid != apid) or np.any(index.source != Source.REALTIME)):
        raise CodecError(f"APID 0x{apid:03x}: index rows of another APID or source in the batch")
    ticks = (index.coarse.astype(np.int64) << 16) | index.fine.astype(np.int64)
    values = dictionary.calibrate_all(apid, raw)
    return Samples(apid, batch.contact, index.seq.astype(np.uint16), ticks, raw, values,
                   batch.raw_ts / 1000.0)


def encode_batch(dictionary: EngDictionary, contact: str, apid: int, seq: np.ndarray,
                 ticks: np.ndarray, raw: dict[str, np.ndarray], raw_ts_ms: int = 0) -> EngBatch:
    """A real-time ``EngBatch`` as demux makes one, from raw values (tests and benchmarks)."""
    from streams.decoder import decode_all
    from streams.packets import encode_eng

    blocks = dictionary.encode_many(apid, raw, n=len(seq))
    packets = b"".join(encode_eng(apid, int(s) & 0x3FFF, int(Source.REALTIME), int(t) >> 16,
                                  int(t) & 0xFFFF, blocks[i].tobytes())
                       for i, (s, t) in enumerate(zip(seq, ticks)))
    decoded = decode_all(packets, dictionary.packet_lengths())
    return EngBatch(contact=contact, apid=apid, source=int(Source.REALTIME), packets=packets,
                    index=decoded.packets.to_bytes(), raw_ts=raw_ts_ms)
