"""The durable write every product goes through: the file is whole, or absent.

Temp file in the same folder, fsync, atomic rename, directory fsync. A failed
write (ENOSPC, EIO) removes its temp file and re-raises as a retriable
:class:`~core.errors.StorageError`, so a full disk never leaves ``.tmp``
debris or a half-written product behind.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from core.errors import StorageError

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def durable_write(path: Path, data: bytes | memoryview | Iterable[bytes | memoryview]) -> None:
    """Write ``data`` (bytes or an iterable of chunks) to ``path`` atomically and durably."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                for chunk in data:
                    fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageError(
            f"cannot write {path}: {exc.strerror or exc}"
            + ("; the disk is full: free space on the data dir, the service resumes by itself"
               if full else "; check the data dir's permissions and health"),
            disk_full=full) from exc


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files a crash left behind under ``folder``; returns how many."""
    n = 0
    if Path(folder).is_dir():
        for p in Path(folder).rglob(f".*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)
            n += 1
    return n
