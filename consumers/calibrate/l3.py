"""Level 3: the calibrated exposures of one visit and detector combined into one ``_i2d`` image.

Members are the visit's ``_cal`` products of that detector. They share the
detector's pixel grid (no dithers in our observations), so combining needs no
resampling: each member is placed at its SUBSTRT in detector coordinates, the
output covers the union of the members' subarrays, and every pixel is the
inverse-variance weighted mean of the members that saw it with usable data.

Outlier rejection: where at least ``min_for_rejection`` members contribute, a
member more than ``reject_sigma`` of its own ERR from the members' median is
dropped (cosmic rays the jump step missed, a satellite trail) before the mean.
With two members there is no majority, so both are kept.

Planes: SCI (MJy/sr), ERR = sqrt(1 / sum w), DQ (DO_NOT_USE where no member
contributes), WHT = sum w, CON = number of members used. The members are
listed in the primary header (NMEMBER, MEM<nnn> file name, MSH<nnn> sha256).
Rows are processed in blocks like the rest of the calibration, so memory is
(members x block rows x width), never whole images.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from products.superseded import keep_superseded

import numpy as np

from core.errors import CalibrationError
from core.version import SOFTWARE_VERSION
from consumers.calibrate.steps.dq import DO_NOT_USE
from consumers.calibrate.steps.median import nanmedian0

I2D_PLANES = ("SCI", "ERR", "DQ", "WHT", "CON")
#: identity keywords taken from the first member
_KEEP = ("TELESCOP", "ORIGIN", "PROGRAM", "OBSERVTN", "VISIT", "VISITGRP", "VISIT_ID", "TARGPROP",
         "TARGNAME", "INSTRUME", "DETECTOR", "MODULE", "CHANNEL", "FILTER", "PUPIL", "EXP_TYPE",
         "READPATT", "SUBARRAY", "CAL_VER", "CRDS_CTX")


def _token(text: str) -> str:
    t = re.sub(r"[^a-z0-9]+", "-", str(text).strip().lower()).strip("-")
    return t[:24] or "unknown"


def l3_name(program: int, observation: int, target: str, instrument: str, filter_: str) -> str:
    """``jw<ppppp>-o<ooo>_t<target>_<instrument>_<filter>_i2d.fits`` (target and filter as tokens)."""
    return (f"jw{int(program):05d}-o{int(observation):03d}_t{_token(target)}_"
            f"{_token(instrument)}_{_token(filter_)}_i2d.fits")


def l3_folder(root: Path, program: int, observation: int, visit: int, detector: str) -> Path:
    """One folder per visit and detector (the L3 name itself carries neither)."""
    return Path(root) / "l3" / f"jw{int(program):05d}{int(observation):03d}{int(visit):03d}_{detector.lower()}"


@dataclass(frozen=True)
class Member:
    path: Path
    sha256: str
    x0: int
    y0: int
    nx: int
    ny: int
    header: Any


def _open_member(path: Path) -> tuple[Any, Member]:
    from astropy.io import fits

    from products.fits import sha256_of
    try:
        hdul = fits.open(path, memmap=True, do_not_scale_image_data=True)
        h = hdul[0].header
        sci = hdul["SCI"]
        ny, nx = sci.data.shape
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CalibrationError(f"L3 member {path} cannot be read as a cal product: {exc}") from None
    x0, y0 = int(h.get("SUBSTRT1", 1)) - 1, int(h.get("SUBSTRT2", 1)) - 1
    return hdul, Member(Path(path), sha256_of(path), x0, y0, nx, ny, h)


def combine(members: Sequence[Path], out_dir: Path, *, block_rows: int = 128,
            reject_sigma: float = 4.0, min_for_rejection: int = 3) -> dict[str, Any]:
    """Write the i2d of ``members`` (cal products of one visit and detector) into ``out_dir``.

    Returns {"kind", "level", "path", "sha256", "size", "members"}.
    """
    from products.fits import sha256_of
    from products.fits.products import BlockWriter

    if not members:
        raise CalibrationError("L3 needs at least one calibrated exposure")
    paths = sorted({Path(p) for p in members}, key=lambda p: p.name)
    opened = [_open_member(p) for p in paths]
    try:
        ms = [m for _, m in opened]
        first = ms[0].header
        dets = {str(m.header.get("DETECTOR")) for m in ms}
        if len(dets) != 1:
            raise CalibrationError(f"L3 members come from several detectors ({', '.join(sorted(dets))})")
        x0 = min(m.x0 for m in ms)
        y0 = min(m.y0 for m in ms)
        nx = max(m.x0 + m.nx for m in ms) - x0
        ny = max(m.y0 + m.ny for m in ms) - y0
        name = l3_name(int(first.get("PROGRAM", 0)), int(first.get("OBSERVTN", 0)),
                       first.get("TARGPROP", first.get("TARGNAME", "")),
                       first.get("INSTRUME", ""), first.get("FILTER", "N/A"))
        cards: list[tuple[str, Any, str]] = [(k, first[k], "") for k in _KEEP if k in first]
        cards += [
            ("DATAMODL", "ImageModel", "stdatamodels model"), ("FILENAME", name, ""),
            ("CAL_VER", SOFTWARE_VERSION, "calibration software version"),
            ("EXPSTART", min(float(m.header.get("EXPSTART", 0)) for m in ms), "[MJD] first member start"),
            ("EXPEND", max(float(m.header.get("EXPEND", 0)) for m in ms), "[MJD] last member end"),
            ("SUBSTRT1", x0 + 1, ""), ("SUBSTRT2", y0 + 1, ""), ("SUBSIZE1", nx, ""), ("SUBSIZE2", ny, ""),
            ("S_OUTLIR", "COMPLETE", "outlier rejection across members"),
            ("S_RESAMP", "SKIPPED", "members share the detector grid"),
            ("NMEMBER", len(ms), "exposures combined"),
            ("REJSIGMA", float(reject_sigma), "outlier rejection threshold (sigma)"),
        ]
        for k, m in enumerate(ms, 1):
            cards.append((f"MEM{k:03d}", m.path.name[-68:], "member"))
            cards.append((f"MSH{k:03d}", m.sha256, "member sha256"))
        bunit = str(opened[0][0]["SCI"].header.get("BUNIT", "MJy/sr"))
        planes = {"SCI": [("BUNIT", bunit, "")], "ERR": [("BUNIT", bunit, "")], "DQ": [],
                  "WHT": [("BUNIT", f"1/({bunit})^2", "")], "CON": []}
        out_dir = Path(out_dir)
        path = out_dir / name
        keep_superseded(path)  # an earlier build's cal.done may not be archived yet
        with BlockWriter(path, cards, planes, (ny, nx)) as w:
            for r0 in range(0, ny, block_rows):
                r1 = min(ny, r0 + block_rows)
                sci, err, dq, wht, con = _combine_rows(opened, x0, y0 + r0, y0 + r1, nx,
                                                       reject_sigma, min_for_rejection)
                w.write_rows("SCI", sci, r0)
                w.write_rows("ERR", err, r0)
                w.write_rows("DQ", dq, r0)
                w.write_rows("WHT", wht, r0)
                w.write_rows("CON", con, r0)
            w.commit()
    finally:
        for hdul, _ in opened:
            hdul.close()
    return {"kind": "i2d", "suffix": "i2d", "level": "3", "path": str(path), "sha256": sha256_of(path),
            "size": path.stat().st_size, "members": [m.path.name for m in ms]}


def _combine_rows(opened: list[tuple[Any, Member]], x0: int, ya: int, yb: int, nx: int,
                  reject_sigma: float, min_for_rejection: int) -> tuple[np.ndarray, ...]:
    """Rows ya..yb (detector coordinates) of the combined planes."""
    n = len(opened)
    rows = yb - ya
    val = np.full((n, rows, nx), np.nan, dtype=np.float32)
    sig = np.full((n, rows, nx), np.nan, dtype=np.float32)
    for k, (hdul, m) in enumerate(opened):
        a, b = max(ya, m.y0), min(yb, m.y0 + m.ny)
        if a >= b:
            continue
        s = np.asarray(hdul["SCI"].data[a - m.y0:b - m.y0], dtype=np.float32)
        e = np.asarray(hdul["ERR"].data[a - m.y0:b - m.y0], dtype=np.float32)
        raw = np.asarray(hdul["DQ"].data[a - m.y0:b - m.y0])
        dq = raw.astype(np.int64).astype(np.uint32) ^ np.uint32(0x80000000) \
            if raw.dtype.kind == "i" else raw.astype(np.uint32)
        ok = ((dq & DO_NOT_USE) == 0) & np.isfinite(s) & np.isfinite(e) & (e > 0)
        sl = (slice(k, k + 1), slice(a - ya, b - ya), slice(m.x0 - x0, m.x0 - x0 + m.nx))
        val[sl] = np.where(ok, s, np.nan)[None]
        sig[sl] = np.where(ok, e, np.nan)[None]
    used = np.isfinite(val)
    count = used.sum(axis=0)
    if n >= min_for_rejection:
        med = nanmedian0(val)
        test = count >= min_for_rejection
        with np.errstate(invalid="ignore"):
            out = np.abs(val - med[None]) > reject_sigma * sig
        used &= ~(out & test[None])
    w = np.where(used, 1.0 / np.where(used, sig, 1.0) ** 2, 0.0)
    wsum = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sci = np.where(wsum > 0, (w * np.where(used, val, 0)).sum(axis=0) / wsum, np.nan)
        err = np.where(wsum > 0, np.sqrt(1.0 / wsum), 0)
    dq = np.where(wsum > 0, 0, DO_NOT_USE).astype(np.uint32)
    return (sci.astype(np.float32), err.astype(np.float32), dq, wsum.astype(np.float32),
            used.sum(axis=0).astype(np.float32))


def members_digest(members: Sequence[Path]) -> str:
    """A stable id of a member set (names), for logs and idempotence checks."""
    return hashlib.sha256("\n".join(sorted(Path(p).name for p in members)).encode()).hexdigest()[:12]
