"""One synthetic reference file per (reference type, detector), written from the detector model.

Each file is a full-frame FITS file in the layout of its stdatamodels
reference model (the class in :data:`MODELS` opens it with strict
validation); :func:`read_arrays` reads a subarray cut-out back as numpy
arrays. What the files hold (units, conventions) is in docs/refs.md; in short:

=========== ======================== ==========================================================
reftype     model                    content
=========== ======================== ==========================================================
mask        MaskModel                DQ uint32: DEAD|DO_NOT_USE, HOT, WARM, LOW_QE, REFERENCE_PIXEL
superbias   SuperBiasModel           SCI: bias level per pixel (DN)
dark        DarkModel                AVDRKCUR: dark current (DN/s); SCI (1, ny, nx): DN in one frame
gain        GainModel                SCI: e-/DN
readnoise   ReadnoiseModel           SCI: read noise of one frame read (DN)
saturation  SaturationModel          SCI: raw DN threshold (bias included) at or above which a
                                     group is saturated
linearity   LinearityModel           COEFFS (5, ny, nx): linear = sum c_k m**k, m = DN above bias
flat        FlatModel                SCI: relative response; DQ: NO_FLAT_FIELD on dead pixels
photom      NrcImgPhotomModel, ...   PHOTOM table (PHOTMJSR: MJy/sr per DN/s), PIXAR_SR/PIXAR_A2
=========== ======================== ==========================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import CalibrationError
from products.fits import ORIGIN, durable_fits
from streams.simulator.detector import (
    DEAD,
    DO_NOT_USE,
    HOT,
    LOW_QE,
    MODEL_VERSION,
    NO_FLAT_FIELD,
    REFERENCE_PIXEL,
    WARM,
    DetectorModel,
    PixelMaps,
)

REFTYPES = ("mask", "superbias", "dark", "gain", "readnoise", "saturation", "linearity", "flat", "photom")

#: reftype -> stdatamodels.jwst.datamodels class name (photom depends on the instrument)
MODELS = {"mask": "MaskModel", "superbias": "SuperBiasModel", "dark": "DarkModel", "gain": "GainModel",
          "readnoise": "ReadnoiseModel", "saturation": "SaturationModel", "linearity": "LinearityModel",
          "flat": "FlatModel"}
PHOTOM_MODELS = {"NIRCAM": "NrcImgPhotomModel", "MIRIMAGE": "MirImgPhotomModel",
                 "NIRISS": "NisImgPhotomModel", "FGS": "FgsImgPhotomModel"}

_DQ_BITS = ((0, DO_NOT_USE, "DO_NOT_USE", "Bad pixel, do not use"),
            (10, DEAD, "DEAD", "Dead pixel"), (11, HOT, "HOT", "Hot pixel"),
            (12, WARM, "WARM", "Warm pixel"), (13, LOW_QE, "LOW_QE", "Low quantum efficiency"),
            (18, NO_FLAT_FIELD, "NO_FLAT_FIELD", "Flat field cannot be measured"),
            (31, REFERENCE_PIXEL, "REFERENCE_PIXEL", "Reference pixel"))


def model_class(reftype: str, detector: str) -> str | None:
    """stdatamodels class for a (reftype, detector), None when no file of that type fits it."""
    if reftype != "photom":
        return MODELS[reftype]
    if detector == "MIRIMAGE":
        return PHOTOM_MODELS["MIRIMAGE"]
    if detector.startswith("MIRI") or detector.startswith("NRS"):
        return None  # spectroscopic detectors: no imaging photometric calibration
    return PHOTOM_MODELS[DetectorModel(detector).instrument]


def applicable(detector: str) -> tuple[str, ...]:
    """The reference types made for a detector."""
    return tuple(r for r in REFTYPES if model_class(r, detector) is not None)


def _primary(model: DetectorModel, reftype: str, description: str, useafter: str) -> Any:
    from astropy.io import fits

    h = fits.PrimaryHDU().header
    cards = [("DATAMODL", model_class(reftype, model.name)), ("TELESCOP", "JWST"), ("ORIGIN", ORIGIN),
             ("REFTYPE", reftype.upper()), ("DESCRIP", description[:68]),
             ("AUTHOR", "downlink refs make"), ("PEDIGREE", "SIMULATION"), ("USEAFTER", useafter),
             ("INSTRUME", model.instrument), ("DETECTOR", model.name),
             ("SUBARRAY", "FULL"), ("SUBSTRT1", 1), ("SUBSTRT2", 1),
             ("SUBSIZE1", model.full[0]), ("SUBSIZE2", model.full[1]), ("FASTAXIS", 1), ("SLOWAXIS", 2),
             ("MODELSED", model.seed), ("MODELVER", MODEL_VERSION)]
    for key, value in cards:
        h[key] = value
    return h


def _dq_def() -> Any:
    from astropy.io import fits

    return fits.BinTableHDU.from_columns([
        fits.Column("BIT", "J", array=np.array([b[0] for b in _DQ_BITS], np.int32)),
        fits.Column("VALUE", "J", bzero=2**31, array=np.array([b[1] for b in _DQ_BITS], np.uint32)),
        fits.Column("NAME", "40A", array=[b[2] for b in _DQ_BITS]),
        fits.Column("DESCRIPTION", "80A", array=[b[3] for b in _DQ_BITS])], name="DQ_DEF")


def _image(name: str, data: np.ndarray, bunit: str | None = None) -> Any:
    from astropy.io import fits

    hdu = fits.ImageHDU(data=data, name=name)
    if bunit:
        hdu.header["BUNIT"] = bunit
    return hdu


def write_reference(path: Path, reftype: str, model: DetectorModel, maps: PixelMaps,
                    useafter: str = "2022-01-01T00:00:00") -> tuple[str, int]:
    """Write one reference file; returns (sha256, bytes)."""
    from astropy.io import fits

    desc = f"synthetic {reftype} of {model.name} from the downlink detector model (seed {model.seed})"
    primary = fits.PrimaryHDU(header=_primary(model, reftype, desc, useafter))
    hdus: list[Any] = [primary]
    h = primary.header
    f32 = np.float32
    if reftype == "mask":
        hdus += [_image("DQ", maps.dq), _dq_def()]
    elif reftype == "superbias":
        h["BUNIT"] = "DN"
        hdus += [_image("SCI", maps.superbias.astype(f32), "DN"), _dq_def()]
    elif reftype == "dark":
        full_tframe = 10.73677 if model.full == (2048, 2048) else 2.775
        h["NFRAMES"], h["NGROUPS"], h["GROUPGAP"], h["READPATT"] = 1, 1, 0, "ANY"
        h["NOUTPUTS"] = model.outputs
        h["AVDRKCUR"] = (float(np.median(maps.dark)), "median dark current (DN/s)")
        h["TFRAME"] = (full_tframe, "[s] frame time of SCI plane 1")
        hdus += [_image("SCI", (maps.dark * f32(full_tframe))[None].astype(f32), "DN"),
                 _image("DQ", np.zeros(maps.shape, np.uint32)),
                 _image("AVDRKCUR", maps.dark.astype(f32), "DN/s"), _dq_def()]
    elif reftype == "gain":
        h["BUNIT"] = "electrons/DN"
        hdus += [_image("SCI", maps.gain.astype(f32), "electrons/DN")]
    elif reftype == "readnoise":
        h["BUNIT"] = "DN"
        h["READPATT"], h["NOUTPUTS"] = "ANY", model.outputs
        hdus += [_image("SCI", maps.readnoise.astype(f32), "DN")]
    elif reftype == "saturation":
        hdus += [_image("SCI", maps.saturation.astype(f32), "DN"),
                 _image("DQ", np.zeros(maps.shape, np.uint32)), _dq_def()]
    elif reftype == "linearity":
        hdus += [_image("COEFFS", maps.linearity_coeffs()), _image("DQ", np.zeros(maps.shape, np.uint32)),
                 _dq_def()]
    elif reftype == "flat":
        if model.filter != "N/A":
            h["FILTER"] = model.filter
        if model.pupil != "N/A":
            h["PUPIL"] = model.pupil
        dq = np.where(maps.alive | (maps.dq & np.uint32(REFERENCE_PIXEL)).astype(bool), 0,
                      NO_FLAT_FIELD | DO_NOT_USE).astype(np.uint32)
        flat = np.where(maps.alive, maps.flat, f32(1.0)).astype(f32)
        hdus += [_image("SCI", flat), _image("DQ", dq), _dq_def()]
    elif reftype == "photom":
        h["PIXAR_SR"] = (model.pixar_sr, "nominal pixel area in steradians")
        h["PIXAR_A2"] = (model.pixar_a2, "nominal pixel area in arcsec^2")
        h["PHOTMJSR"] = (model.photmjsr, "MJy/sr per DN/s")
        second = ("subarray", "17A", "GENERIC") if model.name == "MIRIMAGE" else ("pupil", "12A", model.pupil)
        cols = [fits.Column("filter", "12A", array=[model.filter]),
                fits.Column(second[0], second[1], array=[second[2]]),
                fits.Column("photmjsr", "E", array=np.array([model.photmjsr], f32)),
                fits.Column("uncertainty", "E", array=np.array([0.01 * model.photmjsr], f32))]
        hdus.append(fits.BinTableHDU.from_columns(cols, name="PHOTOM"))
    else:
        raise ValueError(f"unknown reference type {reftype!r}; known: {', '.join(REFTYPES)}")
    return durable_fits(path, fits.HDUList(hdus))


#: reftype -> (extension, key in the result); images are cut to the subarray
_ARRAYS = {"mask": (("DQ", "dq"),), "superbias": (("SCI", "data"),),
           "dark": (("AVDRKCUR", "rate"), ("SCI", "data")), "gain": (("SCI", "data"),),
           "readnoise": (("SCI", "data"),), "saturation": (("SCI", "data"), ("DQ", "dq")),
           "linearity": (("COEFFS", "coeffs"), ("DQ", "dq")), "flat": (("SCI", "data"), ("DQ", "dq"))}


def read_arrays(path: Path, reftype: str, detector: str, substrt1: int, substrt2: int,
                subsize1: int, subsize2: int) -> dict[str, Any]:
    """Arrays (or photom scalars) of one reference file, cut to a subarray (1-based start)."""
    from astropy.io import fits

    try:
        hdul = fits.open(path, memmap=True, do_not_scale_image_data=True)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"reference file {path} ({reftype}, {detector}) cannot be read: {exc}; "
                               "run `downlink refs make` to make a new context") from None
    with hdul:
        if reftype == "photom":
            row = hdul["PHOTOM"].data[0]
            return {"photmjsr": float(row["photmjsr"]), "uncertainty": float(row["uncertainty"]),
                    "pixar_sr": float(hdul[0].header["PIXAR_SR"]), "pixar_a2": float(hdul[0].header["PIXAR_A2"])}
        fx, fy = int(hdul[0].header["SUBSIZE1"]), int(hdul[0].header["SUBSIZE2"])
        x0, y0 = substrt1 - 1, substrt2 - 1
        if not (substrt1 >= 1 and substrt2 >= 1 and subsize1 >= 1 and subsize2 >= 1
                and x0 + subsize1 <= fx and y0 + subsize2 <= fy):
            raise CalibrationError(
                f"subarray SUBSTRT=({substrt1}, {substrt2}) SUBSIZE=({subsize1}, {subsize2}) is outside the "
                f"{fx} x {fy} {reftype} reference file of {detector} ({path.name})")
        out: dict[str, Any] = {}
        for ext, key in _ARRAYS[reftype]:
            hdu = hdul[ext]
            cut = np.array(hdu.data[..., y0:y0 + subsize2, x0:x0 + subsize1])  # only the cut is read
            bzero = hdu.header.get("BZERO", 0)
            if bzero == 2**31 and cut.dtype.kind == "i":  # uint32 stored as int32 + 2**31
                cut = (cut.astype(np.int64) + 2**31).astype(np.uint32)
            elif bzero or hdu.header.get("BSCALE", 1) != 1:
                cut = cut * hdu.header.get("BSCALE", 1) + bzero
            out[key] = cut.astype(cut.dtype.newbyteorder("=")) if cut.dtype.byteorder == ">" else cut
        if reftype == "dark":
            out["frame_time"] = float(hdul[0].header["TFRAME"])
        return out
