"""FITS layouts of the calibrated products and a writer that fills them a block of rows at a time.

Layouts (what stdatamodels' models expect; every product opens with
``strict_validation=True``)::

    _rate      ImageModel  SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE        (NY, NX), DN/s
    _rateints  CubeModel   the same planes, one per integration          (NINTS, NY, NX), DN/s
    _cal       ImageModel  the rate planes + VAR_FLAT                    (NY, NX), MJy/sr
    _i2d       ImageModel  SCI, ERR, DQ, WHT, CON... (written whole by consumers.calibrate.l3)

SCI, ERR and the variances are float32, DQ uint32 (stored as int32 with
BZERO = 2^31, astropy's unsigned convention).

Why not astropy's writer: it needs every plane whole in memory, five 16 MB
planes per 2048x2048 product while the calibration works on 128 rows at a
time. :class:`BlockWriter` lays the file out up front (headers are fixed once
the shape is known), then writes each block's rows of each plane at their
offsets with ``pwrite``; the file is a temp file until :meth:`BlockWriter.commit`
fsyncs and renames it, the same guarantee as :func:`products.durable.durable_write`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StorageError
from products.durable import fsync_dir, tmp_path

BLOCK = 2880

#: product kind -> (datamodel, plane names)
RATE_PLANES = ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE")
CAL_PLANES = RATE_PLANES + ("VAR_FLAT",)
DATAMODELS = {"rate": "ImageModel", "rateints": "CubeModel", "cal": "ImageModel", "i2d": "ImageModel"}
PLANES = {"rate": RATE_PLANES, "rateints": RATE_PLANES, "cal": CAL_PLANES}
LEVELS = {"rate": "2a", "rateints": "2a", "cal": "2b", "i2d": "3"}
#: plane -> numpy dtype on disk
DTYPES = {"DQ": np.dtype(">i4")}
_F32 = np.dtype(">f4")


def product_name(stem: str, kind: str) -> str:
    """``<stem>_<kind>.fits`` (stem = the exposure id, or the uncal name without ``_uncal.fits``)."""
    return f"{stem}_{kind}.fits"


def units(kind: str, plane: str) -> str | None:
    flux = "MJy/sr" if kind == "cal" else "DN/s"
    if plane in ("SCI", "ERR"):
        return flux
    if plane.startswith("VAR_"):
        return f"({flux})^2"
    return None


@dataclass(frozen=True)
class _Ext:
    name: str
    header: bytes
    data_offset: int
    data_bytes: int
    dtype: np.dtype


def _comment(key: str, value: Any, comment: str) -> str:
    """The comment cut to what fits on the card beside its value (astropy would warn and cut)."""
    if not comment:
        return ""
    width = max(20, len(str(value).replace("'", "''")) + 2) if isinstance(value, str) else 20
    room = 80 - 10 - width - 3
    return comment[:room] if room > 0 else ""


def _card_header(cards: Iterable[tuple[str, Any, str]]) -> Any:
    from astropy.io import fits
    h = fits.Header()
    for key, value, comment in cards:
        comment = _comment(key, value, comment)
        if key in ("HISTORY", "COMMENT"):
            h.add_history(str(value)) if key == "HISTORY" else h.add_comment(str(value))
        else:
            h[key] = (value, comment)
    return h


def _ext_header(name: str, shape: Sequence[int], dtype: np.dtype,
                cards: Iterable[tuple[str, Any, str]]) -> bytes:
    from astropy.io import fits
    h = fits.Header()
    h["XTENSION"] = ("IMAGE", "Image extension")
    h["BITPIX"] = (-32 if dtype.kind == "f" else 32, "array data type")
    h["NAXIS"] = (len(shape), "number of array dimensions")
    for k, n in enumerate(reversed(shape), 1):
        h[f"NAXIS{k}"] = n
    h["PCOUNT"] = (0, "number of parameters")
    h["GCOUNT"] = (1, "number of groups")
    if dtype.kind == "i":
        h["BSCALE"] = 1
        h["BZERO"] = 2147483648
    h["EXTNAME"] = (name, "extension name")
    for key, value, comment in cards:
        h[key] = (value, _comment(key, value, comment))
    return h.tostring(padding=True).encode("ascii")


def primary_header(cards: Iterable[tuple[str, Any, str]]) -> bytes:
    from astropy.io import fits
    h = fits.Header()
    h["SIMPLE"] = (True, "conforms to FITS standard")
    h["BITPIX"] = (8, "array data type")
    h["NAXIS"] = (0, "number of array dimensions")
    h["EXTEND"] = True
    extra = _card_header(cards)
    for card in extra.cards:
        h.append(card)
    return h.tostring(padding=True).encode("ascii")


def _pad(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class BlockWriter:
    """One product file written row block by row block (see the module docstring).

    ``shape`` is (NY, NX) or (NINTS, NY, NX); ``planes`` maps EXTNAME -> extra
    header cards (BUNIT, PHOTMJSR ...).
    """

    def __init__(self, path: Path, primary_cards: Iterable[tuple[str, Any, str]],
                 planes: dict[str, list[tuple[str, Any, str]]], shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self._tmp = tmp_path(self.path)
        self._exts: dict[str, _Ext] = {}
        head = primary_header(primary_cards)
        pos = len(head)
        npix = int(np.prod(self.shape))
        for name, cards in planes.items():
            dtype = DTYPES.get(name, _F32)
            h = _ext_header(name, self.shape, dtype, cards)
            pos += len(h)
            nbytes = npix * dtype.itemsize
            self._exts[name] = _Ext(name, h, pos, nbytes, dtype)
            pos += _pad(nbytes)
        self.size = pos
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(self._fd, self.size)   # the data padding is zeros, as FITS wants
            os.pwrite(self._fd, head, 0)
            for ext in self._exts.values():
                os.pwrite(self._fd, ext.header, ext.data_offset - len(ext.header))
        except OSError as exc:
            self._fail(exc)

    @property
    def planes(self) -> tuple[str, ...]:
        return tuple(self._exts)

    def write_rows(self, plane: str, values: np.ndarray, row0: int) -> None:
        """Write ``values`` ((rows, NX) or (NINTS, rows, NX)) at rows ``row0..`` of ``plane``."""
        ext = self._exts[plane]
        ny, nx = self.shape[-2:]
        if ext.dtype.kind == "i":   # uint32 -> the int32 + BZERO form
            raw = (np.asarray(values, dtype=np.uint32) ^ np.uint32(0x80000000)).astype(">u4").view(">i4")
        else:
            raw = np.asarray(values, dtype=ext.dtype)
        raw = raw.reshape((-1,) + raw.shape[-2:])
        rows = raw.shape[-2]
        if raw.shape[-1] != nx or row0 < 0 or row0 + rows > ny:
            raise ValueError(f"rows {row0}..{row0 + rows} x {raw.shape[-1]} do not fit {self.shape}")
        try:
            for lead in range(raw.shape[0]):
                at = ext.data_offset + ((lead * ny + row0) * nx) * ext.dtype.itemsize
                os.pwrite(self._fd, np.ascontiguousarray(raw[lead]).data, at)
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> None:
        """fsync, rename into place, fsync the folder: the product is durable when this returns."""
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            self._fail(exc)

    def abort(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)

    def _fail(self, exc: OSError) -> None:
        self.abort()
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageError(
            f"cannot write {self.path}: {exc.strerror or exc}"
            + ("; the disk is full: free space on the data dir, the service resumes by itself"
               if full else "; check the data dir's permissions and health"),
            disk_full=full) from exc

    def __enter__(self) -> "BlockWriter":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abort()
