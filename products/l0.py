"""Where L0 products live and how they are read: the one place that knows the L0 layout.

``<data dir>/jw<ppppp>/<exposure id>_l0.dat`` holds the exposure's packets
byte for byte in canonical order; ``<exposure id>_l0.json`` is its manifest
(schema ``downlink.l0-manifest/2``). A superseded version N stays as
``<exposure id>_l0.v<N>.dat/.json``. Two different packets with one identity
(a conflict) are both kept in ``<exposure id>_l0.conflicts.dat``. The manifest
is written after the data and carries the version and the sha256 of the data;
the data file carries ``version:sha256`` in the extended attribute
``user.downlink.l0`` where the file system allows it. :func:`open_l0` checks
the pair is of one version (attribute, size, and the sha256 on request) and
waits out the instant between the two renames of a writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from core.errors import AssemblyError

MANIFEST_SCHEMA = "downlink.l0-manifest/2"
MANIFEST_SCHEMAS = ("downlink.l0-manifest/1", MANIFEST_SCHEMA)
#: extended attribute of an L0 data file: b"<version>:<sha256>"
L0_XATTR = "user.downlink.l0"


def l0_folder(data_dir: Path, exposure_id: str) -> Path:
    return Path(data_dir) / exposure_id[:7]


def l0_paths(data_dir: Path, exposure_id: str, version: int | None = None) -> tuple[Path, Path]:
    """Deterministic file names of the current version, or of superseded ``version``."""
    stem = f"{exposure_id}_l0" if version is None else f"{exposure_id}_l0.v{version}"
    folder = l0_folder(data_dir, exposure_id)
    return folder / f"{stem}.dat", folder / f"{stem}.json"


def conflicts_path(data_dir: Path, exposure_id: str) -> Path:
    """Side file holding both copies of every conflicting packet of the exposure."""
    return l0_folder(data_dir, exposure_id) / f"{exposure_id}_l0.conflicts.dat"


def iter_manifests(data_dir: Path) -> Iterator[Path]:
    """Manifests of the current versions under ``data_dir``."""
    yield from sorted(Path(data_dir).glob("jw*/*_l0.json"))


def exposure_of_manifest(path: Path) -> str:
    return Path(path).name[: -len("_l0.json")]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class L0Product:
    """An L0 file and its manifest, checked to be of one version."""

    exposure_id: str
    data_path: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def read_bytes(self) -> bytes:
        return self.data_path.read_bytes()


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AssemblyError(f"cannot read L0 manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") not in MANIFEST_SCHEMAS:
        raise AssemblyError(f"{path} is not an L0 manifest ({' or '.join(MANIFEST_SCHEMAS)})")
    return manifest


def file_tag(path: Path) -> tuple[int, str] | None:
    """(version, sha256) the writer attached to a data file, or None where unsupported."""
    try:
        raw = os.getxattr(path, L0_XATTR).decode()
        version, sha = raw.split(":", 1)
        return int(version), sha
    except (OSError, AttributeError, ValueError):
        return None


def disk_problem(data_dir: Path, exposure_id: str, version: int, sha256: str, nbytes: int,
                 version_of_file: int | None = None) -> str | None:
    """Why the files on disk are not version ``version`` (sha256, bytes), or None when they are.

    Cheap: stats, the manifest and the file's tag; the data is not re-hashed.
    """
    data_path, manifest_path = l0_paths(data_dir, exposure_id, version_of_file)
    try:
        size = data_path.stat().st_size
    except OSError:
        return f"{data_path.name} is missing"
    if size != nbytes:
        return f"{data_path.name} has {size} bytes, version {version} has {nbytes}"
    tag = file_tag(data_path)
    if tag is not None and tag != (version, sha256):
        return f"{data_path.name} is version {tag[0]}, not {version}"
    try:
        manifest = read_manifest(manifest_path)
    except AssemblyError as exc:
        return str(exc)
    if manifest.get("version") != version or manifest.get("sha256") != sha256:
        return f"{manifest_path.name} describes version {manifest.get('version')}, not {version}"
    return None


def open_l0(data_dir: Path, exposure_id: str, *, check_sha: bool = False,
            version: int | None = None) -> L0Product | None:
    """The current L0 product (or superseded ``version``), or None when absent.

    Raises AssemblyError when the data and the manifest are not of one version
    after a short wait (a writer replaces the data, then the manifest).
    """
    data_path, manifest_path = l0_paths(data_dir, exposure_id, version)
    problem = ""
    for attempt in range(5):
        if not data_path.exists() or not manifest_path.exists():
            return None
        manifest = read_manifest(manifest_path)
        size = data_path.stat().st_size
        tag = file_tag(data_path)
        if size != manifest.get("bytes"):
            problem = f"has {size} bytes, its manifest says {manifest.get('bytes')}"
        elif tag is not None and tag != (manifest.get("version"), manifest.get("sha256")):
            problem = f"is version {tag[0]}, its manifest version {manifest.get('version')}"
        elif check_sha and sha256_file(data_path) != manifest.get("sha256"):
            problem = "does not match the sha256 of its manifest"
        else:
            return L0Product(exposure_id, data_path, manifest_path, manifest)
        time.sleep(0.05 * (attempt + 1))
    raise AssemblyError(f"{data_path} {problem} (version mix or damaged file); "
                        f"run `downlink l0 rebuild --exposure {exposure_id}`")
