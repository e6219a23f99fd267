"""Publish one L0 version on disk from an :class:`~consumers.l0.assembly.Assembly` (no Kafka).

Order, so that a crash at any point leaves either the previous version or
the new one, and never a manifest naming bytes it does not describe:

1. the superseded version's files are hard-linked to ``<id>_l0.v<N>.*``
   (copied in blocks where links are not possible);
2. the data goes to a temp file (renamed spool or a block copy), fsynced,
   tagged with ``version:sha256`` as an extended attribute where the file
   system allows it, renamed over ``<id>_l0.dat``, directory fsynced;
3. the conflict side file ``<id>_l0.conflicts.dat`` (if any), same way;
4. the manifest (carrying version and sha256) last, same way.

A failed step removes its temp file and raises a retriable StorageError.
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
from products.durable import durable_write, fsync_dir, tmp_path
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
    """Write version ``version`` of the exposure (steps 1-4 of the module docstring)."""
    exposure_id = assembly.exposure_id
    data_path, manifest_path = l0_paths(data_dir, exposure_id)
    manifest = assembly.manifest(version, sha256, nbytes, extra=extra)
    try:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        if supersedes is not None and data_path.exists():
            old_data, old_manifest = l0_paths(data_dir, exposure_id, supersedes)
            _keep(data_path, old_data)
            if manifest_path.exists():
                _keep(manifest_path, old_manifest)
        tmp = tmp_path(data_path)
        try:
            sha, n = assembly.write(tmp)
            if (sha, n) != (sha256, nbytes):
                raise StorageError(f"{exposure_id}: L0 bytes changed while written "
                                   f"({n} bytes, sha256 {sha[:12]}; expected {nbytes}, {sha256[:12]})")
            _tag(tmp, version, sha)
            os.replace(tmp, data_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(data_path.parent)
        if assembly.conflicts:
            side = conflicts_path(data_dir, exposure_id)
            side_tmp = tmp_path(side)
            try:
                assembly.write_conflicts(side_tmp)
                os.replace(side_tmp, side)
            except BaseException:
                side_tmp.unlink(missing_ok=True)
                raise
            manifest["conflicts_file"] = side.name
        durable_write(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageError(f"cannot write L0 {data_path}: {exc.strerror or exc}"
                           + ("; the data dir is full: free space, l0 resumes by itself" if full
                              else "; check the data dir"), disk_full=full) from exc
    return Written(version, sha256, manifest, data_path, manifest_path)


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
