"""Where L0 products live and how they are read: the one place that knows the L0 layout.

``<data dir>/jw<ppppp>/<exposure id>_l0.dat`` holds the exposure's packets
byte for byte in canonical order; ``<exposure id>_l0.json`` is its manifest
(schema ``downlink.l0-manifest/2``). A superseded version N stays as
``<exposure id>_l0.v<N>.dat/.json``. The manifest is written after the data,
and both carry the version and the sha256 of the data, so a reader can tell a
pair of one version from a mix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from core.errors import AssemblyError

MANIFEST_SCHEMA = "downlink.l0-manifest/2"
MANIFEST_SCHEMAS = ("downlink.l0-manifest/1", MANIFEST_SCHEMA)


def l0_folder(data_dir: Path, exposure_id: str) -> Path:
    return Path(data_dir) / exposure_id[:7]


def l0_paths(data_dir: Path, exposure_id: str, version: int | None = None) -> tuple[Path, Path]:
    """Deterministic file names of the current version, or of superseded ``version``."""
    stem = f"{exposure_id}_l0" if version is None else f"{exposure_id}_l0.v{version}"
    folder = l0_folder(data_dir, exposure_id)
    return folder / f"{stem}.dat", folder / f"{stem}.json"


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


def open_l0(data_dir: Path, exposure_id: str, *, check_sha: bool = False) -> L0Product | None:
    """The current L0 product of an exposure, or None when absent (either file missing)."""
    data_path, manifest_path = l0_paths(data_dir, exposure_id)
    if not data_path.exists() or not manifest_path.exists():
        return None
    manifest = read_manifest(manifest_path)
    size = data_path.stat().st_size
    if size != manifest.get("bytes"):
        raise AssemblyError(f"{data_path} has {size} bytes, its manifest says {manifest.get('bytes')} "
                            "(version mix or damaged file); run `downlink l0 rebuild`")
    if check_sha and sha256_file(data_path) != manifest["sha256"]:
        raise AssemblyError(f"{data_path} does not match the sha256 of its manifest; "
                            "run `downlink l0 rebuild`")
    return L0Product(exposure_id, data_path, manifest_path, manifest)
