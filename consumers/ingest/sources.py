"""Byte sources of a contact stream: a raw file, or one TCP connection of a ground-station feed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import BinaryIO, Protocol

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sources


class ByteSource(Protocol):
    """A contact stream read front to back (a file or a TCP connection)."""

    #: total length if known in advance (files), else None
    size: int | None

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""

    async def read_some(self, n: int) -> bytes:
        """Between 1 and ``n`` bytes as soon as any are there; empty at the end of the stream."""

    async def skip_to(self, offset: int) -> int:
        """Advance to ``offset`` (>= current position) without returning the bytes; the position reached."""


class FileSource:
    """A raw stream file, read in large blocks in a worker thread so the event loop stays free."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self.size: int | None = None

    async def open(self) -> None:
        self._file = await asyncio.to_thread(open, self.path, "rb")
        self.size = (await asyncio.to_thread(self.path.stat)).st_size

    async def close(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def read(self, n: int) -> bytes:
        assert self._file is not None, "FileSource.open() first"
        return await asyncio.to_thread(self._file.read, n)

    async def read_some(self, n: int) -> bytes:
        return await self.read(n)

    async def skip_to(self, offset: int) -> int:
        assert self._file is not None, "FileSource.open() first"
        return await asyncio.to_thread(self._file.seek, offset)


class StreamSource:
    """One TCP connection of a ground-station feed; skipping reads and discards (a feed cannot seek)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._position = 0
        self.size: int | None = None

    async def read(self, n: int) -> bytes:
        try:
            data = await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            data = exc.partial
        self._position += len(data)
        return data

    async def read_some(self, n: int) -> bytes:
        data = await self._reader.read(n)
        self._position += len(data)
        return data

    async def skip_to(self, offset: int) -> int:
        while self._position < offset:
            block = await self.read(min(offset - self._position, 1 << 20))
            if not block:
                break
        return self._position
