"""Numbered, immutable reference contexts (CRDS-like) over the synthetic reference files.

Layout under the refs root (``settings.calibrate.refs_dir``, else ``<data dir>/refs``)::

    downlink_0001.json               a context: which file serves each (detector, reftype)
    downlink_0002.json               derived from 0001: its table plus what changed
    files/<detector>/downlink_<detector>_<reftype>_<NNNN>.fits   (NNNN = the context that made it)

A context file is written once (temp file, fsync, hard link to its final name,
which fails rather than overwrite) and never modified; reference files are
never rewritten either. Each context lists a sha256 per file, checked the first
time a process reads the file. "Best" is the newest context unless one is
pinned (``settings.calibrate.context``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from core.errors import CalibrationError, StorageError
from core.version import SOFTWARE_VERSION
from products.durable import fsync_dir, tmp_path
from products.fits import sha256_of
from products.refs.files import REFTYPES, applicable, read_arrays, write_reference
from streams.packets import DETECTORS

log = logging.getLogger(__name__)

SCHEMA = "downlink.refs-context/1"
PREFIX = "downlink_"
_NAME = re.compile(r"^downlink_(\d{4})$")


def refs_root(settings: Any) -> Path:
    """Where reference contexts live for these settings."""
    configured = settings.calibrate.refs_dir
    return Path(configured) if configured else Path(settings.data_dir) / "refs"


def context_name(serial: int) -> str:
    return f"{PREFIX}{serial:04d}"


@dataclass(frozen=True)
class RefData:
    """One reference file's content for one subarray: arrays (or photom scalars) plus where it came from."""

    reftype: str
    detector: str
    path: Path
    sha256: str
    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def name(self) -> str:
        """The file name products record in their R_<STEP> keywords."""
        return self.path.name


_verified: set[tuple[str, str]] = set()
_verified_lock = threading.Lock()


class Context:
    """One immutable context, read from its JSON file."""

    def __init__(self, root: Path, document: dict[str, Any]) -> None:
        self.root = Path(root)
        self.document = document
        self.name: str = document["name"]
        self.files: dict[str, dict[str, dict[str, Any]]] = document["files"]

    def __repr__(self) -> str:
        return f"Context({self.name!r}, detectors={sorted(self.files)})"

    @property
    def parent(self) -> str | None:
        return self.document.get("parent")

    @property
    def detectors(self) -> list[str]:
        return sorted(self.files)

    def entry(self, reftype: str, detector: str) -> dict[str, Any]:
        detector = detector.upper()
        if reftype not in REFTYPES:
            raise CalibrationError(f"unknown reference type {reftype!r}; known: {', '.join(REFTYPES)}")
        per = self.files.get(detector)
        if per is None:
            raise CalibrationError(
                f"context {self.name} has no reference files for detector {detector} (it covers "
                f"{', '.join(self.detectors) or 'no detector'}); run `downlink refs make --detectors {detector}`")
        e = per.get(reftype)
        if e is None:
            raise CalibrationError(f"context {self.name} has no {reftype} reference file for {detector} "
                                   f"(it has {', '.join(sorted(per))})")
        return e

    def has(self, reftype: str, detector: str) -> bool:
        return reftype in self.files.get(detector.upper(), {})

    def path(self, reftype: str, detector: str) -> Path:
        """The file serving (reftype, detector); CalibrationError naming what is missing."""
        e = self.entry(reftype, detector)
        p = self.root / e["file"]
        if not p.is_file():
            raise CalibrationError(f"reference file {p} of context {self.name} ({reftype}, {detector}) "
                                   "is missing on disk; restore it or make a new context")
        return p

    def verify(self, reftype: str, detector: str) -> Path:
        """Check the file's size and sha256 against the context (once per process per file)."""
        e = self.entry(reftype, detector)
        p = self.path(reftype, detector)
        key = (str(p), e["sha256"])
        with _verified_lock:
            if key in _verified:
                return p
        if p.stat().st_size != e["bytes"] or sha256_of(p) != e["sha256"]:
            raise CalibrationError(f"reference file {p} does not match the sha256 of context {self.name}; "
                                   "it was modified or damaged: restore it or make a new context")
        with _verified_lock:
            _verified.add(key)
        return p

    def load(self, reftype: str, detector: str, substrt1: int = 1, substrt2: int = 1,
             subsize1: int | None = None, subsize2: int | None = None) -> RefData:
        """The (reftype, detector) arrays cut to a subarray (full frame by default), checksum-verified."""
        p = self.verify(reftype, detector)
        e = self.entry(reftype, detector)
        fx, fy = e.get("full", (None, None))
        nx = subsize1 if subsize1 is not None else (fx - substrt1 + 1 if fx else 0)
        ny = subsize2 if subsize2 is not None else (fy - substrt2 + 1 if fy else 0)
        values = read_arrays(p, reftype, detector.upper(), substrt1, substrt2, nx, ny)
        return RefData(reftype, detector.upper(), p, e["sha256"], values)


class RefStore:
    """The contexts under one root: list, pick the best, make a new one."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def contexts(self) -> list[str]:
        """Context names, oldest first."""
        if not self.root.is_dir():
            return []
        names = [p.stem for p in self.root.glob(f"{PREFIX}*.json") if _NAME.match(p.stem)]
        return sorted(names)

    def context(self, name: str) -> Context:
        if not _NAME.match(name):
            raise CalibrationError(f"{name!r} is not a context name like downlink_0001")
        path = self.root / f"{name}.json"
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            known = ", ".join(self.contexts()) or "none"
            raise CalibrationError(f"reference context {name} does not exist under {self.root} "
                                   f"(contexts: {known}); run `downlink refs make`") from None
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"context file {path} cannot be read: {exc}") from None
        if document.get("schema") != SCHEMA or document.get("name") != name:
            raise CalibrationError(f"{path} is not a reference context ({SCHEMA})")
        return Context(self.root, document)

    def best(self, pinned: str | None = None) -> Context:
        """The pinned context if given (non-empty), else the newest."""
        if pinned:
            return self.context(pinned)
        names = self.contexts()
        if not names:
            raise CalibrationError(f"no reference context under {self.root}; run `downlink refs make` "
                                   "(or set DOWNLINK_CALIBRATE_REFS_DIR to where they are)")
        return self.context(names[-1])

    # -- making ----------------------------------------------------------------------------------
    def make(self, detectors: Iterable[str] | None = None, *, seed: int | None = None,
             description: str = "", force: bool = False) -> tuple[Context, bool]:
        """Derive a new context from the newest one with files for ``detectors`` (all by default).

        A detector already served by the newest context from the same model
        (seed and version) is kept as it is unless ``force``; when nothing
        changes no context is made. Returns (context, made).
        """
        from streams.simulator.detector import MODEL_SEED, MODEL_VERSION, DetectorModel

        seed = MODEL_SEED if seed is None else int(seed)
        wanted = _detector_names(detectors)
        names = self.contexts()
        parent = self.context(names[-1]) if names else None
        serial = (int(_NAME.match(names[-1]).group(1)) + 1) if names else 1  # type: ignore[union-attr]
        name = context_name(serial)
        files = {d: dict(v) for d, v in (parent.files.items() if parent else [])}
        changed = []
        for det in wanted:
            old = files.get(det, {})
            same = old and all(e.get("model_seed") == seed and e.get("model_version") == MODEL_VERSION
                               for e in old.values()) and set(old) == set(applicable(det))
            if same and not force:
                continue
            model = DetectorModel(det, seed)
            maps = model.maps()
            entries = {}
            for reftype in applicable(det):
                rel = Path("files") / det.lower() / f"{PREFIX}{det.lower()}_{reftype}_{serial:04d}.fits"
                sha, size = write_reference(self.root / rel, reftype, model, maps)
                entries[reftype] = {"file": str(rel), "sha256": sha, "bytes": size, "model_seed": seed,
                                    "model_version": MODEL_VERSION, "full": list(model.full)}
            files[det] = entries
            changed.append(det)
            log.info("reference files made", extra={"detector": det, "context": name, "seed": seed})
        if not changed:
            assert parent is not None
            return parent, False
        document = {"schema": SCHEMA, "name": name, "parent": parent.name if parent else None,
                    "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "software_version": SOFTWARE_VERSION, "description": description,
                    "changed": changed, "files": dict(sorted(files.items()))}
        self._publish(name, document)
        return Context(self.root, document), True

    def _publish(self, name: str, document: dict[str, Any]) -> None:
        """Write a context file once: temp + fsync + link to the final name (never overwrites)."""
        final = self.root / f"{name}.json"
        tmp = tmp_path(final)
        try:
            with open(tmp, "w") as fh:
                fh.write(json.dumps(document, indent=1, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise CalibrationError(f"context {name} was created by someone else meanwhile; "
                                       "run `downlink refs make` again") from None
            fsync_dir(self.root)
        except OSError as exc:
            raise StorageError(f"cannot write context {final}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)


def _detector_names(detectors: Iterable[str] | None) -> list[str]:
    if detectors is None:
        return [DETECTORS[c] for c in sorted(DETECTORS)]
    out = []
    known = set(DETECTORS.values())
    for d in detectors:
        d = d.strip().upper()
        if not d:
            continue
        if d not in known:
            raise CalibrationError(f"unknown detector {d!r}; known: {', '.join(DETECTORS[c] for c in sorted(DETECTORS))}")
        if d not in out:
            out.append(d)
    if not out:
        raise CalibrationError("no detector given")
    return out
