"""Earlier builds of a product kept beside it as ``<stem>.v<N><suffix>`` (newest = highest N).

A product rebuilt in place (a visit's L3 image when more of its exposures are
calibrated) may have been announced before: the earlier announcement's bytes
must still exist when the archive gets to it, as superseded L0 versions do.
"""

from __future__ import annotations

import os
from pathlib import Path


def _number(path: Path, candidate: Path) -> int | None:
    middle = candidate.name[len(path.stem) + 2:len(candidate.name) - len(path.suffix)]
    return int(middle) if middle.isdigit() else None


def superseded_paths(path: Path) -> list[Path]:
    """Earlier builds of ``path``, newest first."""
    path = Path(path)
    found = [(n, p) for p in path.parent.glob(f"{path.stem}.v*{path.suffix}")
             if (n := _number(path, p)) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def keep_superseded(path: Path) -> Path | None:
    """Keep the current build of ``path`` as its next ``.v<N>`` before a rebuild replaces it.

    A hard link: atomic and no copy; the rebuild then replaces the name
    atomically, so the old bytes live on under the versioned name.
    """
    path = Path(path)
    if not path.exists():
        return None
    n = 1 + max((_number(path, p) or 0 for p in superseded_paths(path)), default=0)
    kept = path.with_name(f"{path.stem}.v{n}{path.suffix}")
    os.link(path, kept)
    return kept
