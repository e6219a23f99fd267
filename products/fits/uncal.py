"""The L1b ``uncal`` FITS layout: written from L0 by the l1b service, read by calibration.

Layout (docs/l1b.md has the full keyword list)::

    PRIMARY   keywords only: identity, instrument, timing, subarray, provenance
    SCI       uint16 (NINTS, NGROUPS, NY, NX), stored as int16 with BZERO=32768
    GROUP     one row per (integration, group): end times, size, gaps, completion
    INT_TIMES one row per integration: start/mid/end MJD
    MISSING   pixels that no packet delivered: integration, group, first_pixel, count

``MISSING`` rows are runs of pixels in row-major order inside the subarray
(``first_pixel = y * SUBSIZE1 + x``) of one (integration, group) that the L0
file lacks; calibration marks them DO_NOT_USE | DROPOUT in the group DQ. An
empty ``MISSING`` table means a complete exposure.

Memory: :func:`write_uncal` takes the SCI array in its on-disk form (big-endian
int16, see :class:`SciBuffer`) so astropy streams it without a single copy;
:class:`UncalFile` reads row blocks from a memory map, so a calibration never
holds more than the rows it works on.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import CalibrationError
import datetime as dt

from core.timecodes import TAI_MINUS_UTC, tai_to_iso, tai_to_mjd_utc, tai_to_utc, utc_to_tai
from products.fits import ORIGIN, durable_fits

SUFFIX = "_uncal.fits"
BZERO = 32768
MISSING_EXTNAME = "MISSING"
#: 2000-01-01T00:00:00 UTC in TAI seconds since 1958, minus TAI-UTC (the GROUP end_day epoch)
_TAI_2000_UTC = utc_to_tai(dt.datetime(2000, 1, 1)) - TAI_MINUS_UTC
MISSING_DTYPE = np.dtype([("integration", ">i4"), ("group", ">i4"), ("first_pixel", ">i8"),
                          ("count", ">i8")])

_INSTRUMENT_PREFIX = {"NRC": "NIRCAM", "MIR": "MIRI", "NRS": "NIRSPEC", "NIS": "NIRISS", "GUI": "FGS"}

#: named subarrays per instrument by (nx, ny); anything else is GENERIC (full frames are FULL)
SUBARRAY_NAMES: dict[str, dict[tuple[int, int], str]] = {
    "NIRCAM": {(2048, 2048): "FULL", (64, 64): "SUB64P", (160, 160): "SUB160", (320, 320): "SUB320",
               (400, 400): "SUB400P", (640, 640): "SUB640"},
    "MIRI": {(1032, 1024): "FULL", (72, 64): "SUB64", (136, 128): "SUB128", (412, 256): "SUB256",
             (864, 512): "BRIGHTSKY"},
    "NIRISS": {(2048, 2048): "FULL", (64, 64): "SUB64", (80, 80): "SUB80", (2048, 256): "SUBSTRIP256"},
    "NIRSPEC": {(2048, 2048): "FULL", (512, 32): "SUB512", (2048, 32): "SUB2048"},
    "FGS": {(2048, 2048): "FULL", (128, 128): "128X128", (32, 32): "32X32", (8, 8): "8X8"},
}


def subarray_name(instrument: str, nx: int, ny: int) -> str:
    return SUBARRAY_NAMES.get(instrument, {}).get((nx, ny), "GENERIC")


def uncal_path(folder: Path, exposure_id: str, version: int | None = None) -> Path:
    """``<id>_uncal.fits``, or the kept ``<id>_uncal.v<N>.fits`` of a superseded version."""
    name = f"{exposure_id}{SUFFIX}" if version is None else f"{exposure_id}_uncal.v{version}.fits"
    return Path(folder) / name


@dataclass(frozen=True)
class UncalMeta:
    """Everything the primary header says, typed (one field per keyword; docs/l1b.md)."""

    exposure_id: str
    program: int
    observation: int
    visit: int
    visit_group: int
    parallel_seq: int
    activity: int
    exposure: int
    instrument: str
    detector: str
    exp_type: str
    readpatt: str
    nints: int
    ngroups: int
    nframes: int
    groupgap: int
    tframe: float
    substrt1: int
    substrt2: int
    subsize1: int
    subsize2: int
    target: str
    start_tai: float
    end_tai: float
    filter: str = "N/A"
    pupil: str = "N/A"
    subarray: str = ""
    l0_version: int = 0
    l0_sha256: str = ""
    l0_complete: bool = True
    missing_pixels: int = 0
    sdp_version: str = ""
    module: str | None = None
    channel: str | None = None

    # -- derived timing (JWST conventions) ------------------------------------------------------
    @property
    def tgroup(self) -> float:
        return (self.nframes + self.groupgap) * self.tframe

    @property
    def effinttm(self) -> float:
        """Effective integration time: from the first to the last group's frames."""
        return self.tframe * ((self.ngroups - 1) * (self.nframes + self.groupgap) + self.nframes) \
            if self.ngroups > 1 else self.tframe * self.nframes

    @property
    def effexptm(self) -> float:
        return self.effinttm * self.nints

    @property
    def tint(self) -> float:
        """Integration duration including its reset frame (the simulator's and our timing)."""
        return self.ngroups * self.tgroup + self.tframe

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.nints, self.ngroups, self.subsize2, self.subsize1)

    @property
    def subarray_name(self) -> str:
        return self.subarray or subarray_name(self.instrument, self.subsize1, self.subsize2)

    @property
    def obs_id(self) -> str:
        """``V<ppppp><ooo><vvv>P<gg><s><aa>`` style observation id (JWST OBS_ID)."""
        return (f"V{self.program:05d}{self.observation:03d}{self.visit:03d}P0000000000{self.visit_group:02d}"
                f"{self.parallel_seq:01d}{self.activity:02d}")

    @property
    def visit_id(self) -> str:
        return f"{self.program:05d}{self.observation:03d}{self.visit:03d}"

    def nominal_group_end(self, integration: np.ndarray, group: np.ndarray) -> np.ndarray:
        """TAI end time of groups from the start time and the readout pattern (1-based)."""
        return (self.start_tai + (integration - 1) * self.tint + self.tframe
                + group * self.tgroup - self.groupgap * self.tframe)

    def header_cards(self) -> list[tuple[str, Any, str]]:
        t0, t1 = self.start_tai, self.end_tai
        utc = tai_to_utc(t0)
        cards: list[tuple[str, Any, str]] = [
            ("DATAMODL", "Level1bModel", "type of data model"),
            ("TELESCOP", "JWST", "telescope used to acquire the data"),
            ("ORIGIN", ORIGIN, "organization responsible for creating file"),
            ("FILENAME", f"{self.exposure_id}{SUFFIX}", "name of the file"),
            ("FILETYPE", "uncalibrated", "type of data in the file"),
            ("SDP_VER", self.sdp_version, "data processing software version"),
            ("PROGRAM", f"{self.program:05d}", "program number"),
            ("OBSERVTN", f"{self.observation:03d}", "observation number"),
            ("VISIT", f"{self.visit:03d}", "visit number"),
            ("VISITGRP", f"{self.visit_group:02d}", "visit group identifier"),
            ("SEQ_ID", f"{self.parallel_seq:01d}", "parallel sequence identifier"),
            ("ACT_ID", f"{self.activity:02d}", "activity identifier"),
            ("EXPOSURE", f"{self.exposure:05d}", "exposure request number"),
            ("OBS_ID", self.obs_id, "programmatic observation identifier"),
            ("VISIT_ID", self.visit_id, "visit identifier"),
            ("TARGPROP", self.target[:31] or "UNKNOWN", "proposer's name for the target"),
            ("TARGNAME", self.target[:31] or "UNKNOWN", "standard astronomical catalog name"),
            ("INSTRUME", self.instrument, "instrument used to acquire the data"),
            ("DETECTOR", self.detector, "name of detector used to acquire the data"),
            ("FILTER", self.filter, "name of the filter element used"),
            ("PUPIL", self.pupil, "name of the pupil element used"),
        ]
        if self.module:
            cards.append(("MODULE", self.module, "NIRCam module"))
        if self.channel:
            cards.append(("CHANNEL", self.channel, "instrument channel"))
        cards += [
            ("DATE-OBS", utc.strftime("%Y-%m-%d"), "UTC date at start of exposure"),
            ("TIME-OBS", utc.strftime("%H:%M:%S.%f")[:12], "UTC time at start of exposure"),
            ("DATE-BEG", tai_to_iso(t0)[:-1], "UTC date-time at start of exposure"),
            ("DATE-END", tai_to_iso(t1)[:-1], "UTC date-time at end of exposure"),
            ("EXP_TYPE", self.exp_type, "type of data in the exposure"),
            ("EXPSTART", tai_to_mjd_utc(t0), "[MJD] UTC exposure start time"),
            ("EXPMID", tai_to_mjd_utc((t0 + t1) / 2), "[MJD] UTC exposure mid time"),
            ("EXPEND", tai_to_mjd_utc(t1), "[MJD] UTC exposure end time"),
            ("READPATT", self.readpatt, "readout pattern"),
            ("NINTS", self.nints, "number of integrations in exposure"),
            ("NGROUPS", self.ngroups, "number of groups in integration"),
            ("NFRAMES", self.nframes, "number of frames per group"),
            ("GROUPGAP", self.groupgap, "number of frames dropped between groups"),
            ("NRSTSTRT", 1, "number of resets at start of exposure"),
            ("NRESETS", 1, "number of resets between integrations"),
            ("FRMDIVSR", self.nframes, "divisor applied to frame-averaged groups"),
            ("DRPFRMS1", 0, "frames dropped prior to first integration"),
            ("DRPFRMS3", 0, "frames dropped between integrations"),
            ("INTSTART", 1, "first integration in this file"),
            ("INTEND", self.nints, "last integration in this file"),
            ("ZEROFRAM", False, "zero frame was downlinked separately"),
            ("TFRAME", self.tframe, "[s] time between frames"),
            ("TGROUP", self.tgroup, "[s] time between groups"),
            ("EFFINTTM", self.effinttm, "[s] effective integration time"),
            ("EFFEXPTM", self.effexptm, "[s] effective exposure time"),
            ("DURATION", t1 - t0, "[s] total duration of exposure"),
            ("SUBARRAY", self.subarray_name, "subarray used"),
            ("SUBSTRT1", self.substrt1, "starting pixel in axis 1 direction"),
            ("SUBSTRT2", self.substrt2, "starting pixel in axis 2 direction"),
            ("SUBSIZE1", self.subsize1, "number of pixels in axis 1 direction"),
            ("SUBSIZE2", self.subsize2, "number of pixels in axis 2 direction"),
            ("FASTAXIS", 1, "fast readout axis direction"),
            ("SLOWAXIS", 2, "slow readout axis direction"),
            ("L0_VER", self.l0_version, "version of the L0 file this was made from"),
            ("L0_SHA", self.l0_sha256, ""),
            ("L0_CMPLT", self.l0_complete, "the L0 file held every packet"),
            ("MISSPIX", self.missing_pixels, "pixels no packet delivered (table MISSING)"),
        ]
        return cards

    @classmethod
    def from_header(cls, header: Any, path: Path | str = "") -> "UncalMeta":
        """Parse a primary header (any uncal file, not only ours); CalibrationError naming what is wrong."""
        def need(key: str, kind: type) -> Any:
            if key not in header:
                raise CalibrationError(f"{path}: keyword {key} is missing from the primary header; "
                                       "an uncal file needs it to be calibrated")
            value = header[key]
            try:
                if kind is int:
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError(value)
                    return int(value)
                return kind(value)
            except (TypeError, ValueError):
                raise CalibrationError(f"{path}: keyword {key}={value!r} is not a valid "
                                       f"{kind.__name__}") from None

        def get(key: str, default: Any, kind: type = str) -> Any:
            return need(key, kind) if key in header else default

        instrument = need("INSTRUME", str).strip().upper()
        nints, ngroups, nframes = need("NINTS", int), need("NGROUPS", int), need("NFRAMES", int)
        tframe = need("TFRAME", float)
        groupgap = get("GROUPGAP", 0, int)
        for key, value in (("NINTS", nints), ("NGROUPS", ngroups), ("NFRAMES", nframes)):
            if value < 1:
                raise CalibrationError(f"{path}: {key}={value} must be at least 1")
        if not (tframe > 0 and math.isfinite(tframe)):
            raise CalibrationError(f"{path}: TFRAME={tframe} must be a positive number of seconds")
        tint = ngroups * (nframes + groupgap) * tframe + tframe
        if "EXPSTART" in header:
            start = _mjd_to_tai(need("EXPSTART", float))
        else:
            raise CalibrationError(f"{path}: keyword EXPSTART is missing (exposure start, MJD UTC)")
        end = _mjd_to_tai(get("EXPEND", 0.0, float)) if "EXPEND" in header else start + nints * tint
        detector = need("DETECTOR", str).strip().upper()
        return cls(
            exposure_id=_exposure_id(header, detector),
            program=_int_or(header.get("PROGRAM"), 0), observation=_int_or(header.get("OBSERVTN"), 0),
            visit=_int_or(header.get("VISIT"), 0), visit_group=_int_or(header.get("VISITGRP"), 0),
            parallel_seq=_int_or(header.get("SEQ_ID"), 0), activity=_int_or(header.get("ACT_ID"), 0),
            exposure=_int_or(header.get("EXPOSURE"), 0),
            instrument=instrument, detector=detector, exp_type=get("EXP_TYPE", "UNKNOWN"),
            readpatt=get("READPATT", "UNKNOWN"), nints=nints, ngroups=ngroups, nframes=nframes,
            groupgap=groupgap, tframe=tframe,
            substrt1=get("SUBSTRT1", 1, int), substrt2=get("SUBSTRT2", 1, int),
            subsize1=get("SUBSIZE1", 0, int), subsize2=get("SUBSIZE2", 0, int),
            target=str(header.get("TARGPROP", header.get("TARGNAME", ""))),
            start_tai=start, end_tai=end,
            filter=str(header.get("FILTER", "N/A")), pupil=str(header.get("PUPIL", "N/A")),
            subarray=str(header.get("SUBARRAY", "")),
            l0_version=_int_or(header.get("L0_VER"), 0), l0_sha256=str(header.get("L0_SHA", "")),
            l0_complete=bool(header.get("L0_CMPLT", True)),
            missing_pixels=_int_or(header.get("MISSPIX"), 0),
            sdp_version=str(header.get("SDP_VER", "")),
            module=header.get("MODULE"), channel=header.get("CHANNEL"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _mjd_to_tai(mjd: float) -> float:
    from core.timecodes import MJD_1958, TAI_MINUS_UTC
    return (mjd - MJD_1958) * 86400.0 + TAI_MINUS_UTC


def _exposure_id(header: Any, detector: str) -> str:
    """The jw... id from the identity keywords, or the file name's stem for foreign files."""
    try:
        return (f"jw{int(header['PROGRAM']):05d}{int(header['OBSERVTN']):03d}{int(header['VISIT']):03d}_"
                f"{int(header['VISITGRP']):02d}{int(header['SEQ_ID']):01d}{int(header['ACT_ID']):02d}_"
                f"{int(header['EXPOSURE']):05d}_{detector.lower()}")
    except (KeyError, TypeError, ValueError):
        name = str(header.get("FILENAME", "unknown_uncal.fits"))
        return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else Path(name).stem


# --- SCI in its on-disk form ----------------------------------------------------------------------

class SciBuffer:
    """The SCI cube, preallocated once, filled with big-endian uint16 pixels, written without a copy.

    ``values`` is the (NINTS, NGROUPS, NY*NX) big-endian uint16 view that the
    packets' pixel bytes are copied into; :meth:`disk_form` flips the sign bit
    in place (value - 32768 as int16 is the BZERO=32768 encoding) and returns
    the int16 view astropy writes as is. After that the buffer is consumed.
    """

    def __init__(self, nints: int, ngroups: int, ny: int, nx: int, fill: int = 0) -> None:
        self.shape = (nints, ngroups, ny, nx)
        self._raw = np.empty(self.shape, dtype=">u2")
        self._raw.fill(fill)
        self._consumed = False

    @property
    def values(self) -> np.ndarray:
        if self._consumed:
            raise RuntimeError("the SCI buffer was already turned into its disk form")
        return self._raw.reshape(self.shape[0], self.shape[1], -1)

    @property
    def bytes(self) -> np.ndarray:
        """Flat uint8 view of the values (2 bytes per pixel, big-endian), for byte-wise placement."""
        return self.values.reshape(-1).view(np.uint8)

    def disk_form(self) -> np.ndarray:
        if not self._consumed:
            self._raw.reshape(-1).view(np.uint8)[0::2] ^= 0x80
            self._consumed = True
        return self._raw.view(">i2")

    @classmethod
    def from_values(cls, values: np.ndarray) -> "SciBuffer":
        """A buffer holding a copy of a uint16 (NINTS, NGROUPS, NY, NX) array (tests, foreign data)."""
        if values.ndim != 4:
            raise ValueError(f"SCI must be 4-D (NINTS, NGROUPS, NY, NX), got shape {values.shape}")
        buf = cls(*values.shape)
        buf._raw[...] = values
        return buf


# --- write ------------------------------------------------------------------------------------------

def group_table(meta: UncalMeta, end_tai: np.ndarray, gaps: np.ndarray) -> Any:
    """GROUP rows (one per integration and group): end times as JWST splits them, gaps, completion."""
    from astropy.io import fits

    ni, ng = meta.nints, meta.ngroups
    integ, group = np.meshgrid(np.arange(1, ni + 1), np.arange(1, ng + 1), indexing="ij")
    t = np.asarray(end_tai, dtype=np.float64).reshape(-1)
    mjd = np.array([tai_to_mjd_utc(float(v)) for v in t])  # one per group: a few hundred at most
    utc2000 = t - TAI_MINUS_UTC - _TAI_2000_UTC  # UTC seconds since 2000-01-01
    end_day = np.floor(utc2000 / 86400.0)
    us = np.round((utc2000 - end_day * 86400.0) * 1e6)
    ms, sub = np.divmod(us, 1000.0)
    iso = np.array([tai_to_iso(float(v))[:-1].ljust(26, "0")[:26] for v in t])
    code = np.zeros(t.size, dtype=np.int16)
    cols = [
        fits.Column("integration_number", "J", array=integ.reshape(-1).astype(np.int32)),
        fits.Column("group_number", "I", array=group.reshape(-1).astype(np.int16)),
        fits.Column("end_day", "I", array=end_day.astype(np.int16)),
        fits.Column("end_milliseconds", "J", array=ms.astype(np.int32)),
        fits.Column("end_submilliseconds", "I", array=sub.astype(np.int16)),
        fits.Column("group_end_time", "26A", array=iso),
        fits.Column("number_of_columns", "I", array=np.full(t.size, meta.subsize1, np.int16)),
        fits.Column("number_of_rows", "I", array=np.full(t.size, meta.subsize2, np.int16)),
        fits.Column("number_of_gaps", "I", array=np.asarray(gaps, dtype=np.int16).reshape(-1)),
        fits.Column("completion_code_number", "I", array=code),
        fits.Column("completion_code_text", "36A",
                    array=np.where(np.asarray(gaps).reshape(-1) > 0, "PARTIAL", "COMPLETE")),
        # no barycentric / heliocentric correction is applied: both hold the UTC MJD
        fits.Column("bary_end_time", "D", array=mjd),
        fits.Column("helio_end_time", "D", array=mjd),
    ]
    return fits.BinTableHDU.from_columns(cols, name="GROUP")


def int_times_table(meta: UncalMeta, end_tai: np.ndarray) -> Any:
    from astropy.io import fits

    ends = np.asarray(end_tai, dtype=np.float64).reshape(meta.nints, meta.ngroups)[:, -1]
    starts = meta.start_tai + np.arange(meta.nints) * meta.tint
    mjd = np.vectorize(tai_to_mjd_utc, otypes=[np.float64])
    s, e = mjd(starts), mjd(ends)
    m = (s + e) / 2
    cols = [fits.Column("integration_number", "J", array=np.arange(1, meta.nints + 1, dtype=np.int32))]
    for name, arr in (("int_start_MJD_UTC", s), ("int_mid_MJD_UTC", m), ("int_end_MJD_UTC", e),
                      ("int_start_BJD_TDB", s), ("int_mid_BJD_TDB", m), ("int_end_BJD_TDB", e)):
        cols.append(fits.Column(name, "D", array=arr))
    return fits.BinTableHDU.from_columns(cols, name="INT_TIMES")


def missing_table(missing: np.ndarray) -> Any:
    from astropy.io import fits

    m = np.asarray(missing, dtype=MISSING_DTYPE)
    cols = [fits.Column("integration", "J", array=m["integration"]),
            fits.Column("group", "J", array=m["group"]),
            fits.Column("first_pixel", "K", array=m["first_pixel"]),
            fits.Column("count", "K", array=m["count"])]
    hdu = fits.BinTableHDU.from_columns(cols, name=MISSING_EXTNAME)
    hdu.header["COMMENT"] = "pixels of (integration, group) no packet delivered: first_pixel = y*SUBSIZE1+x"
    return hdu


def write_uncal(path: Path, meta: UncalMeta, sci: SciBuffer, *, group_end_tai: np.ndarray | None = None,
                missing: np.ndarray | None = None) -> tuple[str, int]:
    """Write an uncal file durably; returns (sha256, bytes). ``sci`` is consumed (see SciBuffer).

    ``group_end_tai`` (NINTS, NGROUPS) are the groups' end times (default: nominal
    from the start time); ``missing`` rows of MISSING_DTYPE.
    """
    from astropy.io import fits

    if sci.shape != meta.shape:
        raise ValueError(f"SCI shape {sci.shape} differs from the header's {meta.shape}")
    missing = np.zeros(0, MISSING_DTYPE) if missing is None else np.asarray(missing, MISSING_DTYPE)
    if group_end_tai is None:
        i, g = np.meshgrid(np.arange(1, meta.nints + 1), np.arange(1, meta.ngroups + 1), indexing="ij")
        group_end_tai = meta.nominal_group_end(i, g)
    gaps = np.zeros((meta.nints, meta.ngroups), dtype=np.int64)
    if missing.size:
        np.add.at(gaps, (missing["integration"] - 1, missing["group"] - 1), 1)
    primary = fits.PrimaryHDU()
    for key, value, comment in meta.header_cards():
        primary.header[key] = (value, comment)
    data = fits.ImageHDU(data=sci.disk_form(), name="SCI", do_not_scale_image_data=True)
    data.header["BZERO"] = BZERO
    data.header["BSCALE"] = 1
    data.header["BUNIT"] = ("DN", "raw counts")
    hdul = fits.HDUList([primary, data, group_table(meta, group_end_tai, gaps),
                         int_times_table(meta, group_end_tai), missing_table(missing)])
    return durable_fits(path, hdul)


# --- read -------------------------------------------------------------------------------------------

class UncalFile:
    """An open uncal file: header meta, missing ranges, SCI read in row blocks from a memory map.

    Works on any uncal file (ours or written by stdatamodels / the jwst
    pipeline); a truncated file, a missing SCI, or keywords that contradict the
    data shape raise :class:`~core.errors.CalibrationError` saying what is wrong.
    """

    def __init__(self, path: Path | str) -> None:
        from astropy.io import fits

        self.path = Path(path)
        if not self.path.is_file():
            raise CalibrationError(f"{self.path}: no such uncal file")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._hdul = fits.open(self.path, memmap=True, do_not_scale_image_data=True,
                                       lazy_load_hdus=False)
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise CalibrationError(f"{self.path} is not a readable FITS file ({exc}); "
                                   "re-make it from its L0 file or fetch it again") from None
        if any("truncated" in str(w.message) for w in caught):
            self._hdul.close()
            raise CalibrationError(f"{self.path} is truncated (astropy: "
                                   f"{next(str(w.message) for w in caught if 'truncated' in str(w.message))}); "
                                   "re-make it from its L0 file or fetch it again")
        try:
            self._check()
        except BaseException:
            self._hdul.close()
            raise

    def _check(self) -> None:
        names = [h.name for h in self._hdul]
        if "SCI" not in names:
            raise CalibrationError(f"{self.path} has no SCI extension (extensions: {', '.join(names)})")
        sci = self._hdul["SCI"]
        self.meta = UncalMeta.from_header(self._hdul[0].header, self.path)
        shape = tuple(sci.header.get(f"NAXIS{k}", 0) for k in range(sci.header.get("NAXIS", 0), 0, -1))
        if len(shape) != 4:
            raise CalibrationError(f"{self.path}: SCI must be 4-D (NINTS, NGROUPS, NY, NX), has shape {shape}")
        m = self.meta
        declared = (m.nints, m.ngroups, m.subsize2 or shape[2], m.subsize1 or shape[3])
        if shape != declared:
            raise CalibrationError(
                f"{self.path}: SCI has shape {shape} but the keywords say (NINTS, NGROUPS, SUBSIZE2, "
                f"SUBSIZE1) = {declared}; the file is inconsistent")
        if not m.subsize1 or not m.subsize2:
            self.meta = dataclasses.replace(m, subsize1=shape[3], subsize2=shape[2])
        bitpix = sci.header.get("BITPIX")
        self._bzero = float(sci.header.get("BZERO", 0))
        self._bscale = float(sci.header.get("BSCALE", 1))
        if bitpix not in (16, -32, 32):
            raise CalibrationError(f"{self.path}: SCI has BITPIX={bitpix}; uncal data are 16-bit integers")
        need = sci._data_offset + abs(bitpix) // 8 * int(np.prod(shape))
        size = self.path.stat().st_size
        if size < need:
            raise CalibrationError(f"{self.path} is truncated: {size} bytes, the SCI data need {need}; "
                                   "re-make or fetch the file again")
        self._sci = sci

    def __enter__(self) -> "UncalFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._hdul.close()

    @property
    def header(self) -> Any:
        return self._hdul[0].header

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.meta.shape

    def sci(self, y0: int = 0, y1: int | None = None) -> np.ndarray:
        """SCI rows y0..y1-1 as native uint16 (NINTS, NGROUPS, y1-y0, NX): the only copy made."""
        raw = self._sci.data[:, :, y0:y1, :]
        if raw.dtype.kind == "i" and raw.dtype.itemsize == 2 and self._bzero == BZERO and self._bscale == 1:
            out = raw.view(">u2").astype(np.uint16)
            out ^= np.uint16(0x8000)
            return out
        values = raw.astype(np.float64) * self._bscale + self._bzero
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise CalibrationError(f"{self.path}: SCI values outside 0..65535 cannot be raw uint16 counts")
        return values.astype(np.uint16)

    @property
    def missing(self) -> np.ndarray:
        """MISSING rows (MISSING_DTYPE); empty when the file has none (complete, or not ours)."""
        if MISSING_EXTNAME not in self._hdul:
            return np.zeros(0, MISSING_DTYPE)
        t = self._hdul[MISSING_EXTNAME].data
        out = np.zeros(0 if t is None else len(t), MISSING_DTYPE)
        if t is not None:
            for name in MISSING_DTYPE.names:
                out[name] = t[name]
        return out

    @property
    def group_end_tai(self) -> np.ndarray | None:
        """(NINTS, NGROUPS) group end times (TAI s since 1958) from GROUP, if present."""
        if "GROUP" not in self._hdul or self._hdul["GROUP"].data is None:
            return None
        t = self._hdul["GROUP"].data
        if "bary_end_time" not in t.names or len(t) != self.meta.nints * self.meta.ngroups:
            return None
        return np.array([_mjd_to_tai(float(v)) for v in t["bary_end_time"]]).reshape(
            self.meta.nints, self.meta.ngroups)


def read_uncal(path: Path | str) -> tuple[UncalMeta, np.ndarray, np.ndarray]:
    """(meta, SCI uint16 (NINTS, NGROUPS, NY, NX), missing) of a whole uncal file (small files, tests)."""
    with UncalFile(path) as f:
        return f.meta, f.sci(), f.missing


def mark_missing(groupdq: np.ndarray, missing: np.ndarray, flag: int, y0: int = 0,
                 y1: int | None = None) -> None:
    """OR ``flag`` into ``groupdq`` (NINTS, NGROUPS, rows, NX) over the MISSING ranges, for rows y0..y1-1.

    The ranges are row-major over the whole subarray; a block of rows only
    takes the part that falls inside it. One numpy call per range, not per pixel.
    """
    nints, ngroups, rows, nx = groupdq.shape
    y1 = y0 + rows if y1 is None else y1
    lo, hi = y0 * nx, y1 * nx
    flat = groupdq.reshape(nints, ngroups, -1)
    for i, g, a, n in zip(missing["integration"].tolist(), missing["group"].tolist(),
                          missing["first_pixel"].tolist(), missing["count"].tolist()):
        a0, b0 = max(a, lo), min(a + n, hi)
        if a0 < b0:
            flat[i - 1, g - 1, a0 - lo:b0 - lo] |= np.uint8(flag) if flat.dtype == np.uint8 else flag

