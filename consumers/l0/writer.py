"""Publish one L0 version on disk from an :class:`~consumers.l0.assembly.Assembly` (no Kafka).

Order, so that a crash at any point leaves either the previous version or
the new one, and never a manifest naming bytes it does not describe:

1. the superseded version's files are hard-linked to ``<id>_l0.v<N>.*``
   (copied in blocks where links are not possible);
2. everything that needs space goes to temp files, fsynced: the data (renamed
   spool or a block copy, tagged with ``version:sha256`` as an extended
   attribute where the file system allows it), the conflict side file, the
   manifest (carrying version and sha256). A full disk fails here, before
   anything visible changed;
3. renames: data over ``<id>_l0.dat``, side file, directory fsync, then the
   manifest over ``<id>_l0.json`` last, directory fsync.

A failed step removes its temp files and raises a retriable StorageError.
Used by the l0 service and by ``downlink l0 rebuild``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.l0.assembly import Assembly
from core.errors import StorageError
from products.durable import fsync_dir, tmp_path
from products.l0 import L0_XATTR, conflicts_path, l0_paths


@dataclass(frozen=True)
class Written:
    version: int
    sha256: str
    manifest: dict[str, Any]
    data_path: Path
    manifest_path: Path


def publish(data_dir: Path, assembly: Assembly, version: int, sha256: str, nbytes: int, *,
            supersedes: int | None, extra: dict[str, Any] | None = None) -> Written:
    """Write version ``version`` of the exposure (steps 1-3 of the module docstring)."""
    exposure_id = assembly.exposure_id
    data_path, manifest_path = l0_paths(data_dir, exposure_id)
    manifest = assembly.manifest(version, sha256, nbytes, extra=extra)
    tmp, side_tmp, manifest_tmp = (tmp_path(data_path), tmp_path(conflicts_path(data_dir, exposure_id)),
                                   tmp_path(manifest_path))
    try:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        if supersedes is not None and data_path.exists():
            old_data, old_manifest = l0_paths(data_dir, exposure_id, supersedes)
            _keep(data_path, old_data)
            if manifest_path.exists():
                _keep(manifest_path, old_manifest)
        # everything that needs space is written first: a full disk fails here, before any rename
        sha, n = assembly.write(tmp)
        if (sha, n) != (sha256, nbytes):
            raise StorageError(f"{exposure_id}: L0 bytes changed while written "
                               f"({n} bytes, sha256 {sha[:12]}; expected {nbytes}, {sha256[:12]})")
        _tag(tmp, version, sha)
        if assembly.conflicts:
            assembly.write_conflicts(side_tmp)
            manifest["conflicts_file"] = conflicts_path(data_dir, exposure_id).name
        _write_synced(manifest_tmp, json.dumps(manifest, indent=1, sort_keys=True).encode())
        # then the renames: data, side file, manifest last
        os.replace(tmp, data_path)
        if assembly.conflicts:
            os.replace(side_tmp, conflicts_path(data_dir, exposure_id))
        fsync_dir(data_path.parent)
        os.replace(manifest_tmp, manifest_path)
        fsync_dir(data_path.parent)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageError(f"cannot write L0 {data_path}: {exc.strerror or exc}"
                           + ("; the data dir is full: free space, l0 resumes by itself" if full
                              else "; check the data dir"), disk_full=full) from exc
    finally:
        for t in (tmp, side_tmp, manifest_tmp):
            t.unlink(missing_ok=True)
    return Written(version, sha256, manifest, data_path, manifest_path)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _keep(current: Path, superseded: Path) -> None:
    """Keep the superseded version under its versioned name (a link: no copy, no RAM)."""
    if superseded.exists():
        return
    try:
        os.link(current, superseded)
    except OSError:
        tmp = tmp_path(superseded)
        try:
            with open(current, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, superseded)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(superseded.parent)


def _tag(path: Path, version: int, sha256: str) -> None:
    """Best effort: the data file names its own version (read back by products.l0.open_l0)."""
    try:
        os.setxattr(path, L0_XATTR, f"{version}:{sha256}".encode())
    except (OSError, AttributeError):
        pass
