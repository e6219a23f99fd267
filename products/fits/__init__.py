"""FITS layouts of the products (uncal here; rate/cal/i2d by the calibrate layer) and their one durable write.

Every FITS product goes through :func:`durable_fits`: astropy writes the HDU
list into a temp file in the target folder, which is fsynced and atomically
renamed (the same guarantee as :func:`products.durable.durable_write`), so a
reader never sees half a file. astropy is imported lazily: modules that only
need names and paths must not load it.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

from core.errors import StorageError
from products.durable import fsync_dir, tmp_path

#: what every product says made it
ORIGIN = "DOWNLINK"


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def durable_fits(path: Path, hdul: Any) -> tuple[str, int]:
    """Write an astropy ``HDUList`` to ``path`` atomically and durably; returns (sha256, bytes).

    Raises a retriable :class:`~core.errors.StorageError` (``disk_full`` set
    on ENOSPC) and leaves no temp file behind on failure.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            hdul.writeto(fh)
            fh.flush()
            os.fsync(fh.fileno())
        digest, size = sha256_of(tmp), tmp.stat().st_size
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return digest, size
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageError(
            f"cannot write {path}: {exc.strerror or exc}"
            + ("; the disk is full: free space on the data dir, the service resumes by itself"
               if full else "; check the data dir's permissions and health"),
            disk_full=full) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keep_version(path: Path, version: int) -> Path | None:
    """Before ``path`` is replaced by a new version, keep it as ``<stem>.v<version><suffix>``.

    ``<id>_uncal.fits`` becomes ``<id>_uncal.v1.fits`` (like the L0 files).
    Hard-linked when possible (instant, no copy), else copied durably. Returns
    the kept path, or None when there was nothing to keep.
    """
    path = Path(path)
    if not path.exists():
        return None
    kept = path.with_name(f"{path.stem}.v{version}{path.suffix}")
    if kept.exists():
        return kept
    try:
        os.link(path, kept)
    except OSError:
        from products.durable import durable_write
        with open(path, "rb") as fh:
            durable_write(kept, iter(lambda: fh.read(1 << 22), b""))
    fsync_dir(kept.parent)
    return kept
