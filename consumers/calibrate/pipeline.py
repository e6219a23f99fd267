"""Detector1-like then Image2-like calibration of one uncal file, a block of rows at a time.

Order (the jwst pipeline's, steps it does not have left out)::

    dq_init, saturation, superbias, linearity, dark_current, jump,   (ramps)
    ramp_fit,                                                         -> _rate, _rateints
    gain_scale,                                                       (slopes)
    flat_field, photom                                                -> _cal

``steps`` selects a subset (always run in this order; ramp_fit is required since
every product is a slope image); the others are recorded SKIPPED. Reference
files for the selected steps are all looked up before the first block, so a
missing one fails the run before anything is written, with a message naming
the reference type, detector and subarray.

Memory: the subarray is processed in blocks of ``block_rows`` rows plus a
halo row above and below when jump flags neighbours; each block's rows of
every product are written to the (temp) product files at once, so the peak
is a few blocks, whatever the exposure size. Products become visible
(renamed into place, fsynced) only when every block is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import CalibrationError, ConfigError
from core.version import SOFTWARE_VERSION
from consumers.calibrate import steps as S
from consumers.calibrate.steps.blocks import ExposureMeta, RampBlock, SlopeArrays, SlopeBlock
from consumers.calibrate.steps.dq import DO_NOT_USE, DROPOUT
from consumers.calibrate.steps.photom_step import photom_keywords
from products.provenance import COMPLETE, SKIPPED, Provenance

log = logging.getLogger(__name__)

DEFAULT_BLOCK_ROWS = 64
#: DETECTOR1 products and IMAGE2 products
RATE_KINDS = ("rate", "rateints")


class RefSource(Protocol):
    """A reference context: its name and windowed loads (products.refs.store.Context)."""

    name: str

    def load(self, reftype: str, detector: str, substrt1: int, substrt2: int,
             subsize1: int, subsize2: int) -> Any: ...


@dataclass(frozen=True)
class ProductInfo:
    kind: str
    level: str
    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "suffix": self.kind, "level": self.level, "path": self.path,
                "sha256": self.sha256, "size": self.size}


@dataclass
class PipelineResult:
    products: list[ProductInfo]
    provenance: Provenance
    meta: Any
    step_seconds: dict[str, float] = field(default_factory=dict)
    blocks: int = 0


def select_steps(names: Iterable[str] | None) -> tuple[str, ...]:
    """The selected step names in pipeline order; unknown names are a ConfigError."""
    if names is None:
        return S.ORDER
    wanted = [n.strip() for n in names if n and n.strip()]
    unknown = [n for n in wanted if n not in S.BY_NAME]
    if unknown:
        raise ConfigError(f"unknown step(s) {', '.join(unknown)}; the pipeline's steps are "
                          f"{', '.join(S.ORDER)}")
    if "ramp_fit" not in wanted:
        raise ConfigError("ramp_fit must be among the steps: every product is a slope image")
    return tuple(n for n in S.ORDER if n in wanted)


def exposure_meta(m: Any) -> ExposureMeta:
    """Our geometry/timing view of a products.fits.uncal.UncalMeta."""
    return ExposureMeta(
        detector=m.detector, instrument=m.instrument, nints=m.nints, ngroups=m.ngroups,
        nframes=m.nframes, groupgap=m.groupgap, tframe=m.tframe, tgroup=m.tgroup,
        substrt1=m.substrt1, substrt2=m.substrt2, subsize1=m.subsize1, subsize2=m.subsize2,
        exp_type=m.exp_type, filter=m.filter, pupil=m.pupil)


# --- reference access ------------------------------------------------------------------------------

#: the readnoise reference holds the noise of one frame read (docs/refs.md); the steps use the
#: JWST/stcal convention, the CDS noise of a frame pair, which is sqrt(2) times larger
READNOISE_TO_CDS = float(np.sqrt(2.0))

#: reftype -> key of products.refs.store.RefData.values holding what the step needs
_VALUE_KEYS = {"mask": "dq", "superbias": "data", "saturation": "data", "linearity": "coeffs",
               "gain": "data", "readnoise": "data"}


#: reftype -> the extensions a step needs from a reference file (docs/refs.md), read by row window
_EXTENSIONS = {"mask": ("DQ",), "superbias": ("SCI",), "saturation": ("SCI",), "linearity": ("COEFFS",),
               "gain": ("SCI",), "readnoise": ("SCI",), "dark": ("AVDRKCUR",), "flat": ("SCI", "DQ")}


class _Image:
    """One image extension of a full-frame reference file, rows read with ``pread``."""

    def __init__(self, fd: int, hdu: Any) -> None:
        h = hdu.header
        self.fd = fd
        self.offset = int(hdu.fileinfo()["datLoc"])
        self.shape = tuple(int(h[f"NAXIS{k}"]) for k in range(int(h["NAXIS"]), 0, -1))
        self.dtype = np.dtype(RowReader._TYPES[int(h["BITPIX"])])
        self.bzero = float(h.get("BZERO", 0.0))
        self.bscale = float(h.get("BSCALE", 1.0))

    def rows(self, y0: int, y1: int, x0: int, nx: int) -> np.ndarray:
        lead = int(np.prod(self.shape[:-2])) if len(self.shape) > 2 else 1
        ny, fx = self.shape[-2:]
        if y0 < 0 or y1 > ny or x0 < 0 or x0 + nx > fx:
            raise CalibrationError(f"rows {y0 + 1}..{y1}, columns {x0 + 1}..{x0 + nx} are outside the "
                                   f"{fx} x {ny} reference image")
        item = self.dtype.itemsize
        buf = np.empty((lead, y1 - y0, fx), dtype=self.dtype)
        for k in range(lead):
            at = self.offset + ((k * ny + y0) * fx) * item
            n = os.preadv(self.fd, [buf[k]], at)
            if n != buf[k].nbytes:
                raise CalibrationError("a reference file is shorter than its header says")
        cut = buf[:, :, x0:x0 + nx]
        if self.dtype.kind == "i" and self.bzero == 2.0 ** (8 * item - 1):   # unsigned convention
            out = (cut.astype(np.int64) + int(self.bzero)).astype(f"u{item}")
        else:
            out = cut.astype(np.float32)
            if self.bscale != 1.0:
                out *= np.float32(self.bscale)
            if self.bzero:
                out += np.float32(self.bzero)
        return out.reshape(self.shape[:-2] + out.shape[-2:]) if len(self.shape) > 2 else out[0]


class _Refs:
    """Windowed reference reads for one exposure, with the file names for R_ keywords.

    A products.refs.store.Context (anything with ``verify(reftype, detector) -> path``)
    is read directly: each file is checksum-verified by the context, opened once
    per run, and each block reads only its rows with ``pread`` (re-opening nine
    FITS files per block cost more than the arithmetic). Other sources go
    through their ``load``.
    """

    def __init__(self, source: RefSource, meta: ExposureMeta) -> None:
        self.source = source
        self.meta = meta
        self.names: dict[str, str] = {}
        self._photom: tuple[float, float] | None = None
        self._open: dict[str, tuple[int, dict[str, _Image], int, int]] = {}

    def _file(self, reftype: str) -> tuple[int, dict[str, _Image], int, int] | None:
        if reftype in self._open:
            return self._open[reftype]
        verify = getattr(self.source, "verify", None)
        if not callable(verify) or reftype not in _EXTENSIONS:
            return None
        from astropy.io import fits

        path = Path(verify(reftype, self.meta.detector))
        try:
            with fits.open(path, memmap=False, lazy_load_hdus=True) as h:
                x0 = int(h[0].header.get("SUBSTRT1", 1)) - 1
                y0 = int(h[0].header.get("SUBSTRT2", 1)) - 1
                fd = os.open(path, os.O_RDONLY)
                images = {ext: _Image(fd, h[ext]) for ext in _EXTENSIONS[reftype]}
        except (OSError, KeyError, ValueError) as exc:
            raise CalibrationError(f"reference file {path} ({reftype}, {self.meta.detector}) cannot be "
                                   f"read: {exc}; run `downlink refs make` to make a new context") from None
        self.names[reftype] = path.name
        self._open[reftype] = (fd, images, x0, y0)
        return self._open[reftype]

    def close(self) -> None:
        for fd, *_ in self._open.values():
            os.close(fd)
        self._open.clear()

    def window(self, reftype: str, row0: int, rows: int) -> Any:
        m = self.meta
        opened = self._file(reftype)
        if opened is not None:
            _, images, fx0, fy0 = opened
            x0 = m.substrt1 - 1 - fx0
            y0 = m.substrt2 - 1 - fy0 + row0
            try:
                cut = {ext: img.rows(y0, y0 + rows, x0, m.nx) for ext, img in images.items()}
            except CalibrationError as exc:
                raise CalibrationError(f"{reftype} reference {self.names[reftype]} of {m.detector} does not "
                                       f"cover SUBSTRT=({m.substrt1}, {m.substrt2}) SUBSIZE=({m.nx}, "
                                       f"{m.ny}): {exc}") from None
            if reftype == "flat":
                return {"flat": cut["SCI"], "dq": cut["DQ"], "err": None}
            out = next(iter(cut.values()))
            if reftype == "readnoise":
                out = out * np.float32(READNOISE_TO_CDS)
            return out
        value = self.source.load(reftype, m.detector, m.substrt1, m.substrt2 + row0, m.subsize1, rows)
        name = getattr(value, "name", None)
        self.names[reftype] = str(name) if isinstance(name, str) else f"{self.source.name}:{reftype}"
        values = getattr(value, "values", None)
        if not isinstance(values, Mapping):
            return value           # a plain array (or mapping): already what the step wants
        if reftype == "dark":
            return values["rate"] if "rate" in values else values["data"]
        if reftype == "flat":
            return {"flat": values["data"], "dq": values.get("dq"), "err": values.get("err")}
        if reftype == "photom":
            return values
        out = values[_VALUE_KEYS[reftype]]
        if reftype == "readnoise":
            out = np.asarray(out, dtype=np.float32) * np.float32(READNOISE_TO_CDS)
        return out

    def name(self, reftype: str) -> str:
        return self.names.get(reftype, f"{self.source.name}:{reftype}")

    def photom(self) -> tuple[float, float]:
        if self._photom is None:
            self._photom = _photom_values(self.window("photom", 0, 1))
        return self._photom


def _photom_values(value: Any) -> tuple[float, float]:
    """(PHOTMJSR, PIXAR_SR) from whatever a context's photom load returns."""
    def pick(obj: Any, *names: str) -> Any:
        for n in names:
            if isinstance(obj, Mapping) and n in obj:
                return obj[n]
            if hasattr(obj, n):
                return getattr(obj, n)
        return None
    phot = pick(value, "photmjsr", "PHOTMJSR", "conversion_megajanskys")
    area = pick(value, "pixar_sr", "PIXAR_SR", "pixelarea_steradians")
    if phot is None and isinstance(value, np.ndarray):
        phot = float(np.nanmedian(value))
    if phot is None:
        raise CalibrationError(f"the photom reference gives no PHOTMJSR ({type(value).__name__})")
    return float(np.asarray(phot).reshape(-1)[0]), float(area) if area is not None else 0.0


def _flat_parts(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {"flat": value.get("flat", value.get("data")), "flat_err": value.get("err"),
                "flat_dq": value.get("dq")}
    if isinstance(value, tuple):
        parts = list(value) + [None, None]
        return {"flat": parts[0], "flat_err": parts[1], "flat_dq": parts[2]}
    return {"flat": value}


# --- the run ---------------------------------------------------------------------------------------

def _primary_cards(header: Any) -> list[tuple[str, Any, str]]:
    """The uncal's primary keywords worth keeping (identity, instrument, timing, subarray)."""
    drop = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "DATAMODL", "FILENAME", "CHECKSUM", "DATASUM",
            "CAL_VER", "CRDS_CTX", "CRDS_VER", "IN_SHA", "IN_NAME", "CALPARS", "HISTORY", "COMMENT",
            ""}
    out = []
    for card in header.cards:
        key = card.keyword
        if key in drop or key.startswith("NAXIS") or key.startswith("S_") or key.startswith("R_"):
            continue
        out.append((key, card.value, card.comment))
    return out


def _plane_cards(kind: str, plane: str, extra: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    from products.fits.products import units
    cards: list[tuple[str, Any, str]] = []
    u = units(kind, plane)
    if u:
        cards.append(("BUNIT", u, "physical units"))
    if plane == "SCI":
        cards.extend((k, v, "") for k, v in extra.items())
    return cards


def run_pipeline(uncal_path: Path | str, out_dir: Path | str, refs: RefSource, *,
                 steps: Iterable[str] | None = None,
                 params: Mapping[str, Mapping[str, Any]] | None = None,
                 block_rows: int = DEFAULT_BLOCK_ROWS, stem: str | None = None,
                 input_sha256: str | None = None,
                 between_blocks: Callable[[], None] | None = None) -> PipelineResult:
    """Calibrate one uncal file into ``out_dir``; returns the products and their provenance.

    ``between_blocks`` is called after every block (the service pauses bulk work
    there while a ToO runs). Raises CalibrationError for bad input or missing
    references, ConfigError for bad steps/parameters, StorageError for disk trouble.
    """
    from products.fits.products import DATAMODELS, LEVELS, PLANES, BlockWriter, product_name
    from products.fits.uncal import UncalFile, mark_missing

    t_start = time.perf_counter()
    selected = select_steps(steps)
    params = dict(params or {})
    bad = sorted(set(params) - set(S.ORDER))
    if bad:
        raise ConfigError(f"parameters given for unknown step(s) {', '.join(bad)}")
    instances = {name: S.BY_NAME[name].from_params(params.get(name)) for name in selected}
    if block_rows < 1:
        raise ConfigError(f"block_rows must be >= 1, got {block_rows}")
    uncal_path = Path(uncal_path)
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {n: 0.0 for n in selected}
    seconds.update(read=0.0, write=0.0, references=0.0)

    with UncalFile(uncal_path) as uf, contextlib.closing(_Refs(refs, exposure_meta(uf.meta))) as source:
        umeta = uf.meta
        meta = source.meta
        if stem is None:
            name = uncal_path.name
            stem = name[:-len("_uncal.fits")] if name.endswith("_uncal.fits") else uncal_path.stem
        # every reference the selected steps need, before any output exists
        t0 = time.perf_counter()
        needed = [(n, rt) for n in selected for rt in S.BY_NAME[n].reftypes]
        for _, rt in needed:
            if rt == "photom":
                source.photom()
            else:
                source.window(rt, 0, 1)
        references = tuple((n, S.REF_KEYWORDS[rt], source.name(rt)) for n, rt in needed)
        seconds["references"] += time.perf_counter() - t0
        sha = input_sha256 or sha256_of(uncal_path)
        prov = Provenance(
            cal_version=SOFTWARE_VERSION, context=refs.name, input_sha256=sha,
            input_name=uncal_path.name,
            steps=tuple((n, S.BY_NAME[n].status_keyword, COMPLETE if n in selected else SKIPPED)
                        for n in S.ORDER),
            references=references,
            params={n: instances[n].params() for n in selected})
        image_steps = [n for n in selected if S.BY_NAME[n].stage == "image"]
        kinds = list(RATE_KINDS) + (["cal"] if image_steps else [])
        phot_cards: dict[str, Any] = {}
        if "photom" in selected:
            phot_cards = photom_keywords(*source.photom())
        base_cards = _primary_cards(uf.header)
        detector1 = tuple(n for n in selected if S.BY_NAME[n].stage != "image")
        writers: dict[str, BlockWriter] = {}
        try:
            for kind in kinds:
                shape = (meta.ny, meta.nx) if kind != "rateints" else (meta.nints, meta.ny, meta.nx)
                path = out_dir / product_name(stem, kind)
                cards = base_cards + [("DATAMODL", DATAMODELS[kind], "stdatamodels model"),
                                      ("FILENAME", path.name, "")]
                if kind == "cal":
                    cards += prov.cards()
                else:
                    cards += prov.cards(only=detector1)
                planes = {p: _plane_cards(kind, p, phot_cards if kind == "cal" else {})
                          for p in PLANES[kind]}
                writers[kind] = BlockWriter(path, cards, planes, shape)
            halo = max([S.BY_NAME[n].halo for n in selected] + [0])
            ramp_steps = [n for n in selected if S.BY_NAME[n].stage == "ramp"]
            slope_steps = [n for n in selected if S.BY_NAME[n].stage == "slope"]
            missing = uf.missing
            reader = RowReader(uncal_path, meta)
            nblocks = 0
            for r0 in range(0, meta.ny, block_rows):
                r1 = min(meta.ny, r0 + block_rows)
                a0, a1 = max(0, r0 - halo), min(meta.ny, r1 + halo)
                t0 = time.perf_counter()
                data = reader.rows(a0, a1)
                groupdq = np.zeros(data.shape, dtype=np.uint8)
                if missing.size:
                    mark_missing(groupdq, missing, DO_NOT_USE | DROPOUT, a0, a1)
                pixeldq = np.zeros(data.shape[2:], dtype=np.uint32)
                dropped = ((groupdq & DROPOUT) != 0).any(axis=(0, 1))
                pixeldq[dropped] |= np.uint32(DO_NOT_USE | DROPOUT)
                seconds["read"] += time.perf_counter() - t0
                block = RampBlock(data, groupdq, pixeldq, a0, meta)
                cache: dict[str, Any] = {}

                def refs_for(name: str, lo: int, hi: int) -> dict[str, Any]:
                    t = time.perf_counter()
                    out: dict[str, Any] = {}
                    for rt in S.BY_NAME[name].reftypes:
                        if rt == "photom":
                            out["photmjsr"], out["pixar_sr"] = source.photom()
                            continue
                        if rt not in cache:
                            cache[rt] = source.window(rt, a0, a1 - a0)
                        value = cache[rt]
                        if rt == "flat":
                            for k, v in _flat_parts(value).items():
                                out[k] = None if v is None else np.asarray(v)[..., lo:hi, :]
                        else:
                            out[rt] = np.asarray(value)[..., lo:hi, :]
                    seconds["references"] += time.perf_counter() - t
                    return out

                for name in ramp_steps:
                    r = refs_for(name, 0, a1 - a0)
                    t0 = time.perf_counter()
                    instances[name].apply(block, r)
                    seconds[name] += time.perf_counter() - t0
                lo, hi = r0 - a0, r1 - a0
                core = RampBlock(block.data[:, :, lo:hi], block.groupdq[:, :, lo:hi],
                                 block.pixeldq[lo:hi], r0, meta)
                r = refs_for("ramp_fit", lo, hi)
                t0 = time.perf_counter()
                slopes: SlopeBlock = instances["ramp_fit"].apply(core, r)
                seconds["ramp_fit"] += time.perf_counter() - t0
                del block, core, data, groupdq
                for name in slope_steps:
                    t0 = time.perf_counter()
                    instances[name].apply(slopes, refs_for(name, lo, hi))
                    seconds[name] += time.perf_counter() - t0
                t0 = time.perf_counter()
                _write(writers["rate"], slopes.rate, r0)
                _write(writers["rateints"], slopes.ints, r0)
                seconds["write"] += time.perf_counter() - t0
                if image_steps:
                    cal = slopes.rate.copy()
                    for name in image_steps:
                        rr = refs_for(name, lo, hi)
                        t0 = time.perf_counter()
                        instances[name].apply(cal, rr)
                        seconds[name] += time.perf_counter() - t0
                    if cal.var_flat is None:
                        cal.var_flat = np.zeros_like(cal.sci)
                    t0 = time.perf_counter()
                    _write(writers["cal"], cal, r0)
                    seconds["write"] += time.perf_counter() - t0
                nblocks += 1
                if between_blocks is not None:
                    between_blocks()
            t0 = time.perf_counter()
            for w in writers.values():
                w.commit()
            seconds["write"] += time.perf_counter() - t0
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
    products = []
    for kind in kinds:
        path = writers[kind].path
        products.append(ProductInfo(kind, LEVELS[kind], str(path), sha256_of(path),
                                    path.stat().st_size))
    seconds["total"] = time.perf_counter() - t_start
    log.info("calibrated %s", stem, extra={"exposure_id": stem, "context": refs.name,
                                             "blocks": nblocks, "seconds": round(seconds["total"], 3)})
    return PipelineResult(products, prov, umeta, seconds, nblocks)


class RowReader:
    """SCI rows read with ``pread`` into float32, not through a memory map.

    Pages of a memory-mapped file that were touched count in the process's
    RSS while the map lives; reading each block's rows with ``pread`` keeps the
    input out of the working set (the kernel's page cache holds it, not us).
    """

    _TYPES = {16: ">i2", 32: ">i4", -32: ">f4", -64: ">f8", 8: "u1"}

    def __init__(self, path: Path, meta: ExposureMeta) -> None:
        from astropy.io import fits

        with fits.open(path, memmap=False, lazy_load_hdus=True) as h:
            sci = h["SCI"]
            self.offset = int(sci.fileinfo()["datLoc"])
            bitpix = int(sci.header["BITPIX"])
            self.bzero = float(sci.header.get("BZERO", 0.0))
            self.bscale = float(sci.header.get("BSCALE", 1.0))
        if bitpix not in self._TYPES:
            raise CalibrationError(f"{path}: SCI has BITPIX={bitpix}, not a pixel type")
        self.dtype = np.dtype(self._TYPES[bitpix])
        self.path = Path(path)
        self.meta = meta

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """float32 (NINTS, NGROUPS, y1 - y0, NX) of rows y0..y1-1, scaled by BSCALE/BZERO."""
        m = self.meta
        nx, ny = m.nx, m.ny
        n = (y1 - y0) * nx
        out = np.empty((m.nints, m.ngroups, y1 - y0, nx), dtype=np.float32)
        buf = np.empty(n, dtype=self.dtype)
        item = self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i in range(m.nints):
                for g in range(m.ngroups):
                    at = self.offset + ((i * m.ngroups + g) * ny + y0) * nx * item
                    got = os.preadv(fd, [buf], at)
                    if got != n * item:
                        raise CalibrationError(f"{self.path} is truncated: rows {y0}..{y1} of group "
                                               f"{g + 1} are past the end of the file")
                    plane = out[i, g].reshape(-1)
                    np.copyto(plane, buf, casting="unsafe")
                    if self.bscale != 1.0:
                        plane *= np.float32(self.bscale)
                    if self.bzero:
                        plane += np.float32(self.bzero)
        finally:
            os.close(fd)
        return out


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file read into one reused 1 MiB buffer (hashing must not cost memory)."""
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def _write(writer: Any, arrays: SlopeArrays, row0: int) -> None:
    writer.write_rows("SCI", arrays.sci, row0)
    writer.write_rows("ERR", arrays.err, row0)
    writer.write_rows("DQ", arrays.dq, row0)
    writer.write_rows("VAR_POISSON", arrays.var_poisson, row0)
    writer.write_rows("VAR_RNOISE", arrays.var_rnoise, row0)
    if "VAR_FLAT" in writer.planes:
        writer.write_rows("VAR_FLAT", arrays.var_flat, row0)
