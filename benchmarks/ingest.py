"""Ingest throughput: a contact file -> ``downlink.raw`` on the configured broker.

Writes ``size_mb`` MB of random bytes (ingest never parses packets, and the raw
producer does not compress, so content does not change the cost) to a temporary
file, ingests it with :func:`consumers.ingest.ingest_file` under a unique topic
prefix, and in the same run pushes the same chunks through a bare aiokafka send
loop with the same producer settings (``baseline_mb_per_s``): the ratio shows what
ingest's bookkeeping costs on top of Kafka itself on this machine, at this moment.
The file is freshly written, so it is read from the page cache; the figure is the
publishing rate, not a disk's.

``run`` is synchronous (it owns its event loop); ``arun`` is the coroutine.
The topics created for the run are deleted afterwards. The last line printed
by ``main`` is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import machine, send_file
from core.settings import Settings
from consumers.ingest import RAW_TOPIC, ingest_file, partition_for
from streams.topics import create_topics, delete_topics, load_topics

BLOCK = 16 << 20


def _write_random(path: Path, size: int) -> None:
    """Random bytes in 16 MiB blocks (bounded memory)."""
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(BLOCK, left)
            fh.write(os.urandom(n))
            left -= n


async def _baseline(settings: Settings, path: Path, partitions: int) -> float:
    """MB/s of a bare send loop: same chunks, producer settings and send window as ingest."""
    partition = partition_for("baseline", range(partitions))
    seconds = await send_file(settings, path, settings.topic(RAW_TOPIC), b"baseline", partition)
    return path.stat().st_size / 1e6 / seconds


async def arun(settings: Settings, size_mb: int = 512) -> dict[str, Any]:
    """Ingest ``size_mb`` MB once and measure; creates and deletes its own topics."""
    settings = settings.replace(topic_prefix=f"{settings.topic_prefix}bench-ingest-{uuid.uuid4().hex[:8]}.")
    spec = load_topics(settings.topics_file)[RAW_TOPIC]
    size = size_mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="downlink-bench-ingest-") as tmp:
        path = Path(tmp) / "BENCH1.bin"
        await asyncio.to_thread(_write_random, path, size)
        await create_topics(settings, {RAW_TOPIC: spec})
        try:
            started = time.perf_counter()
            result = await ingest_file(settings, path, "BENCH1")
            seconds = time.perf_counter() - started
            baseline = await _baseline(settings, path, spec.partitions)
        finally:
            await delete_topics(settings, [settings.topic(RAW_TOPIC)])
    ingest_mb_per_s = result.total_bytes / 1e6 / seconds
    return {
        "ingest_mb_per_s": round(ingest_mb_per_s, 1),
        "baseline_mb_per_s": round(baseline, 1),
        "ratio_to_kafka_baseline": round(ingest_mb_per_s / baseline, 3),
        "x_realtime": round(ingest_mb_per_s / 3.5, 1),  # Ka-band downlink ~28 Mbit/s = 3.5 MB/s
        "bytes": result.total_bytes,
        "chunks": result.published_chunks,
        "chunk_bytes": settings.ingest.chunk_bytes,
        "seconds": round(seconds, 3),
        "kafka_bootstrap": settings.kafka.bootstrap,
        **machine(),
    }


def run(settings: Settings, size_mb: int = 512) -> dict[str, Any]:
    """Synchronous entry point (own event loop); see :func:`arun`."""
    return asyncio.run(arun(settings, size_mb))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="downlink bench ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="contact size in MB (10^6 bytes)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    figures = run(Settings.from_env(), args.size_mb)
    if not args.json:
        print(
            f"ingest: {figures['bytes'] / 1e6:.0f} MB in {figures['chunks']} chunks, {figures['seconds']:.2f} s, "
            f"{figures['ingest_mb_per_s']} MB/s ({figures['x_realtime']}x the 3.5 MB/s downlink); "
            f"bare aiokafka send loop {figures['baseline_mb_per_s']} MB/s"
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
