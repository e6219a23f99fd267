"""photom: DN/s -> MJy/sr with the photom reference's PHOTMJSR (and PIXAR_SR recorded).

The conversion is one number per detector and filter (PHOTMJSR: MJy/sr
producing 1 DN/s), so it needs no row window; PIXAR_SR (the nominal pixel
area in steradians) is written next to it so users can go to flux per pixel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from core.errors import CalibrationError
from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import SlopeArrays

#: 1 MJy/sr in uJy/arcsec^2
UJA2_PER_MJYSR = 1e12 / 4.25451702961522e10


def do_photom(arrays: SlopeArrays, photmjsr: float) -> None:
    """Multiply SCI/ERR by ``photmjsr`` and the variances by its square, in place."""
    if not (np.isfinite(photmjsr) and photmjsr > 0):
        raise CalibrationError(f"PHOTMJSR must be a positive number, the reference gives {photmjsr!r}")
    c = np.float32(photmjsr)
    arrays.sci *= c
    arrays.err *= c
    for v in (arrays.var_poisson, arrays.var_rnoise, arrays.var_flat):
        if v is not None:
            v *= c * c


def photom_keywords(photmjsr: float, pixar_sr: float) -> dict[str, float]:
    """The SCI header keywords of a flux-calibrated product."""
    return {"PHOTMJSR": float(photmjsr), "PHOTUJA2": float(photmjsr) * UJA2_PER_MJYSR,
            "PIXAR_SR": float(pixar_sr), "PIXAR_A2": float(pixar_sr) * (180 / np.pi * 3600) ** 2}


@dataclass(frozen=True)
class PhotomStep(Step):
    name: ClassVar[str] = "photom"
    status_keyword: ClassVar[str] = "S_PHOTOM"
    reftypes: ClassVar[tuple[str, ...]] = ("photom",)
    stage: ClassVar[str] = "image"

    def apply(self, arrays: SlopeArrays, refs: Mapping[str, Any]) -> SlopeArrays:
        do_photom(arrays, refs["photmjsr"])
        return arrays
