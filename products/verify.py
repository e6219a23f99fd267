"""Compare L0 outputs with the simulator's truth file.

A complete exposure must be complete on disk with the truth's sha256 (the file
is re-hashed, not just its manifest read). A faulted exposure must be flagged
incomplete and list exactly the packets the truth says were never delivered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from products.l0 import exposure_of_manifest, iter_manifests, l0_paths, sha256_file
from core.errors import VerificationError


@dataclass
class Row:
    exposure_id: str
    expected: str  # complete | partial
    found: str  # complete | partial | missing | unexpected
    version: int | None
    ok: bool
    detail: str = ""


@dataclass
class Verification:
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def mismatches(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]


def _identity(p: dict[str, Any]) -> tuple[int, int, int, int]:
    if p["kind"] == 3:
        return (3, p["integration"], p["group"], p["pixel_offset"])
    return (p["kind"], 0, 0, 0)


def load_truth(path: Path) -> dict[str, Any]:
    try:
        truth = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise VerificationError(f"cannot read truth file {path}: {exc}") from exc
    if truth.get("schema") != "downlink.truth/1":
        raise VerificationError(f"{path} is not a downlink truth file (schema downlink.truth/1)")
    return truth


def verify(truth: dict[str, Any], data_dir: Path) -> Verification:
    result = Verification()
    expected_ids = set()
    for exp in truth["exposures"]:
        exposure_id = exp["exposure_id"]
        expected_ids.add(exposure_id)
        want = "complete" if exp["complete"] else "partial"
        data_path, manifest_path = l0_paths(data_dir, exposure_id)
        if not manifest_path.exists() or not data_path.exists():
            result.rows.append(Row(exposure_id, want, "missing", None, False, "no L0 file"))
            continue
        manifest = json.loads(manifest_path.read_text())
        found = "complete" if manifest["complete"] else "partial"
        problems = []
        sha = sha256_file(data_path)
        if sha != manifest["sha256"]:
            problems.append("file sha256 differs from its manifest")
        if want == "complete":
            if found != "complete":
                problems.append(f"flagged partial, missing {len(manifest['missing_packets'])} packets")
            elif sha != exp["l0_sha256"]:
                problems.append("sha256 differs from truth")
        else:
            lost = {_identity(p) for p in exp.get("lost", [])}
            listed = {_identity(p) for p in manifest["missing_packets"]}
            if found == "complete":
                problems.append("flagged complete but the truth lost packets")
            elif lost != listed:
                problems.append(f"missing packets differ: truth-only {sorted(lost - listed)[:3]}, "
                                f"manifest-only {sorted(listed - lost)[:3]}")
        result.rows.append(Row(exposure_id, want, found, manifest.get("version"), not problems,
                               "; ".join(problems)))
    for manifest_path in iter_manifests(data_dir):
        exposure_id = exposure_of_manifest(manifest_path)
        if exposure_id not in expected_ids:
            result.rows.append(Row(exposure_id, "-", "unexpected", None, False, "not in truth"))
    return result
