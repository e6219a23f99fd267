"""Facts every benchmark records next to its figures."""

from __future__ import annotations

import asyncio
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from core.settings import Settings
from streams.kafka import make_producer

#: sends in flight before the baseline waits for them (as ingest does)
WINDOW = 64


def machine(*packages: str) -> dict[str, Any]:
    """Cores, RAM, Python and package versions, and the exact command line."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {"python": platform.python_version()}
    for name in ("numpy", "aiokafka", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cores": os.cpu_count(), "ram_gb": round(ram, 1), "versions": versions,
            "command": " ".join(shlex.quote(a) for a in sys.argv)}


async def send_file(settings: Settings, path: Path, topic: str, key: bytes,
                    partition: int | None = None) -> float:
    """Raw-Kafka baseline: a bare aiokafka send loop over a file's chunks; returns seconds.

    Same chunk size, producer settings (bulk path) and send window as ingest.
    """
    producer = make_producer(settings, compression_type=settings.compression_type(bulk=True))
    await producer.start()
    try:
        started = time.perf_counter()
        pending: list[asyncio.Future] = []
        with open(path, "rb") as fh:
            while block := await asyncio.to_thread(fh.read, settings.ingest.chunk_bytes):
                pending.append(await producer.send(topic, block, key=key, partition=partition))
                if len(pending) >= WINDOW:
                    await asyncio.gather(*pending)
                    pending.clear()
        await asyncio.gather(*pending)
        return time.perf_counter() - started
    finally:
        await producer.stop()
