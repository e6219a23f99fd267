"""Background writing and hashing, so numpy rendering never waits for I/O or SHA-256.

``StreamSink`` writes a contact's pieces to a binary file (or stdout) with
large buffered writes and hashes them; ``Hasher`` feeds the per-exposure L0
hashes. Each runs one thread fed by a bounded queue (the bound caps memory at
a few chunks); hashlib and file writes release the GIL, so they overlap with
the renderer. Pieces handed over must not be modified afterwards (the
renderer always makes fresh arrays). An error in a thread is re-raised in
the caller at the next call.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, BinaryIO, Callable

_QUEUE_PIECES = 32


class _Worker:
    def __init__(self, name: str, handle: Callable[[Any], None]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_PIECES)
        self._handle = handle
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is None:
                try:
                    self._handle(job)
                except BaseException as exc:  # re-raised in the caller
                    self._error = exc

    def submit(self, job: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(job)

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class StreamSink:
    """Writes one contact's bytes in order, counting and hashing them."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._sha = hashlib.sha256()
        self.bytes = 0
        self._worker = _Worker("sim-writer", self._write)

    def _write(self, piece: Any) -> None:
        view = memoryview(piece).cast("B")
        self._sha.update(view)
        self._fh.write(view)

    def write(self, piece: Any) -> None:
        n = memoryview(piece).nbytes
        if n:
            self.bytes += n
            self._worker.submit(piece)

    def close(self) -> str:
        """Drain, flush and return the sha256 hex digest (the file handle stays open)."""
        self._worker.finish()
        self._fh.flush()
        return self._sha.hexdigest()


class Hasher:
    """Updates many hashlib objects in submission order on one background thread."""

    def __init__(self) -> None:
        self._worker = _Worker("sim-l0-hash", lambda job: job[0].update(job[1]))

    def update(self, h: Any, piece: Any) -> None:
        self._worker.submit((h, piece))

    def finish(self) -> None:
        self._worker.finish()
