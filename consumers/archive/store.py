"""The archive's own hold on product files: ``<data dir>/archive/store/<sha[:2]>/<sha256><ext>``.

Producers replace files in place (a new L0 version renames the old one, a
reprocessing run may rewrite ``_cal.fits``), but every catalogued version must
stay downloadable. So a file is checked against the sha256 its message
announced, then hard-linked (copied across file systems) into a
content-addressed store: the same bytes are kept once, a replay finds the
file already there, and nothing a producer does later changes it. All of it
is blocking I/O: callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.errors import StorageError, ValidationError
from products.durable import fsync_dir, tmp_path

BLOCK = 1 << 22


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def store_root(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "archive" / "store"


def store_path(data_dir: Path, sha256: str, ext: str) -> Path:
    return store_root(data_dir) / sha256[:2] / f"{sha256}{ext}"


@dataclass(frozen=True)
class Secured:
    source: Path
    path: Path
    size: int
    sha256: str


def secure(data_dir: Path, candidates: list[Path], sha256: str, size: int | None = None) -> Secured:
    """Find the candidate file with the announced content and keep it in the store.

    ``candidates`` are tried in order (an L0 version may have moved to its
    superseded name). No match is a :class:`ValidationError` (the message
    announced bytes that are not on disk); an I/O failure is a retriable
    :class:`StorageError`.
    """
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValidationError(f"sha256 {sha256!r} is not 64 lowercase hex digits")
    tried = []
    for cand in candidates:
        cand = Path(cand)
        ext = "".join(cand.suffixes[-1:]) or ".dat"
        dest = store_path(data_dir, sha256, ext)
        try:
            if dest.exists() and (size is None or dest.stat().st_size == size):
                return Secured(cand, dest, dest.stat().st_size, sha256)
            if not cand.is_file():
                tried.append(f"{cand} (absent)")
                continue
            actual_size = cand.stat().st_size
            if size is not None and actual_size != size:
                tried.append(f"{cand} ({actual_size} bytes, announced {size})")
                continue
            actual = sha256_of(cand)
            if actual != sha256:
                tried.append(f"{cand} (sha256 {actual[:12]}..)")
                continue
            _link_or_copy(cand, dest)
            return Secured(cand, dest, actual_size, sha256)
        except OSError as exc:
            raise StorageError(f"cannot keep {cand} in the archive store {dest.parent}: "
                               f"{exc.strerror or exc}") from exc
    raise ValidationError(f"no file with sha256 {sha256[:12]}.. found: tried {'; '.join(tried)}")


def keep_bytes(data_dir: Path, source: Path, ext: str) -> Secured:
    """Put an uploaded file (already complete in ``source``) into the store; ``source`` is removed."""
    sha = sha256_of(source)
    dest = store_path(data_dir, sha, ext)
    size = source.stat().st_size
    try:
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest)
            fsync_dir(dest.parent)
        else:
            source.unlink()
    except OSError as exc:
        raise StorageError(f"cannot keep an upload in {dest.parent}: {exc.strerror or exc}") from exc
    return Secured(source, dest, size, sha)


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(dest)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
