"""Append-only spool file of one open exposure: packet bytes live on disk, not in RAM.

The assembler appends every new packet of an open exposure here and keeps
only a compact index (identity, spool offset, length) in memory, so memory
does not grow with the exposure. The L0 file is then copied from the spool
in canonical order through one bounded buffer (:meth:`Spool.read_ranges`).
A spool is scratch: it is never fsynced and is rebuilt by replaying
``tlm.sci`` after a crash (the offsets of an open exposure stay pinned), so
a restart removes the spools it finds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from core.errors import StorageError

#: bytes per read when copying out of a spool
BLOCK = 8 << 20
_IOV_MAX = 512


class Spool:
    """One spool file, opened read-write; offsets are byte positions in it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise _storage_error(self.path, exc) from exc
        self.size = 0

    def append(self, chunks: Sequence[bytes | memoryview]) -> int:
        """Append ``chunks`` in order; returns the offset of the first byte."""
        start = self.size
        try:
            for i in range(0, len(chunks), _IOV_MAX):
                part = list(chunks[i:i + _IOV_MAX])
                want = sum(len(c) for c in part)
                done = os.pwritev(self.fd, part, self.size)
                if done < want:  # short write: finish the rest
                    flat = memoryview(b"".join(part))
                    while done < want:
                        done += os.pwrite(self.fd, flat[done:], self.size + done)
                self.size += want
        except OSError as exc:
            raise _storage_error(self.path, exc) from exc
        return start

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise StorageError(f"spool {self.path} is shorter than its index "
                               f"({offset}+{length} > {len(data) + offset}); it was modified outside l0")
        return data

    def read_ranges(self, starts: np.ndarray, lengths: np.ndarray, block: int = BLOCK
                    ) -> Iterator[memoryview]:
        """The bytes of the ranges in the order given, as views of one reused buffer.

        Adjacent ranges are merged first, so a spool already in the wanted
        order is one sequential copy. Each view is valid until the next one
        is taken (write it out at once).
        """
        if len(starts) == 0:
            return
        starts = np.asarray(starts, dtype=np.int64)
        ends = starts + np.asarray(lengths, dtype=np.int64)
        brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        run_s = starts[np.concatenate(([0], brk))].tolist()
        run_e = ends[np.concatenate((brk - 1, [len(starts) - 1]))].tolist()
        buf = bytearray(block)
        view = memoryview(buf)
        fill = 0
        for s, e in zip(run_s, run_e):
            while s < e:
                n = min(e - s, block - fill)
                got = os.preadv(self.fd, [view[fill:fill + n]], s)
                if got != n:
                    raise StorageError(f"spool {self.path} is shorter than its index")
                fill += n
                s += n
                if fill == block:
                    yield view[:fill]
                    fill = 0
        if fill:
            yield view[:fill]

    def detach(self) -> None:
        """Close the descriptor (the file stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.detach()
        self.path.unlink(missing_ok=True)


def clear_spools(folder: Path) -> int:
    """Remove the spools a previous run left (they are rebuilt by replay); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = sum(1 for _ in folder.glob("*.spool"))
    shutil.rmtree(folder, ignore_errors=True)
    return n


def _storage_error(path: Path, exc: OSError) -> StorageError:
    import errno
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return StorageError(f"cannot write spool {path}: {exc.strerror or exc}"
                        + ("; the state dir is full: free space, l0 resumes by itself" if full
                           else "; check the state dir's permissions"), disk_full=full)
