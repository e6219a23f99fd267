"""Runs of decoded packets cut into messages that fit the Kafka message limit.

Shared by demux (every lane) and ingest's real-time tap: both turn a
:class:`~streams.decoder.DecodedChunk` into ``EngBatch``/``SciRun`` bodies
whose packets plus index stay under ``kafka.max_message_bytes`` less
:data:`ENVELOPE_MARGIN`.
"""

from __future__ import annotations

import numpy as np

from streams.decoder import DecodedChunk, PacketIndex
from streams.messages import EngBatch

#: bytes kept free in every message for the envelope, the key and the headers
ENVELOPE_MARGIN = 64 << 10
#: serialised PacketIndex bytes per packet
INDEX_ROW = sum(dt.itemsize for dt in PacketIndex.COLUMNS.values())


def groups(keys: np.ndarray) -> list[np.ndarray]:
    """Indices grouped by key (rows of a 2-D array or values of a 1-D one), arrival order kept."""
    if len(keys) == 0:
        return []
    if keys.ndim == 1:
        _, inverse = np.unique(keys, return_inverse=True)
    else:
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def pieces(lengths: np.ndarray, budget: int) -> list[slice]:
    """Cut a run of packets into consecutive slices whose packets plus index fit ``budget`` bytes."""
    n = len(lengths)
    if n == 0:
        return []
    cost = np.cumsum(lengths.astype(np.int64) + INDEX_ROW)
    out: list[slice] = []
    start, base = 0, 0
    while start < n:
        end = int(np.searchsorted(cost, base + budget, side="right"))
        end = max(end, start + 1)  # one packet always fits (a packet is at most 64 KiB)
        out.append(slice(start, end))
        base = int(cost[end - 1])
        start = end
    return out


def extract(decoded: DecodedChunk, idx: np.ndarray) -> tuple[bytes, bytes]:
    """Selected packets as one byte string, with their index rebased onto it."""
    index = decoded.packets.take(idx)
    index.offset = np.concatenate(([0], np.cumsum(index.length[:-1], dtype=np.int64)))
    return decoded.packets_bytes(idx), index.to_bytes()


def eng_batches(decoded: DecodedChunk, sel: np.ndarray, *, contact: str, source: int, raw_ts: int,
                budget: int) -> list[EngBatch]:
    """The selected engineering packets as one or more batches per APID, arrival order kept."""
    pk = decoded.packets
    out: list[EngBatch] = []
    for group in groups(pk.apid[sel]):
        idx = sel[group]
        apid = int(pk.apid[idx[0]])
        for part in pieces(pk.length[idx], budget):
            packets, index = extract(decoded, idx[part])
            out.append(EngBatch(contact=contact, apid=apid, source=source, raw_ts=raw_ts,
                                packets=packets, index=index))
    return out
