"""flat_field: divide by the pixel-to-pixel response (reference type ``flat``).

The variances scale by 1/flat^2 and the flat's own uncertainty becomes
VAR_FLAT = (sci * flat_err / flat)^2 (zero when the reference has no error
plane). Pixels with a flat that is NaN or <= 0 are DO_NOT_USE | NO_FLAT_FIELD
and their values NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import SlopeArrays
from consumers.calibrate.steps.dq import DO_NOT_USE, NO_FLAT_FIELD


def do_flat_field(arrays: SlopeArrays, flat: np.ndarray, flat_err: np.ndarray | None = None,
                  flat_dq: np.ndarray | None = None) -> None:
    """Flat-field ``arrays`` (rows, nx) in place and set ``arrays.var_flat``."""
    flat = np.asarray(flat, dtype=np.float32)
    bad = ~np.isfinite(flat) | (flat <= 0)
    f = np.where(bad, np.float32(1), flat)
    if flat_dq is not None:
        arrays.dq |= np.asarray(flat_dq).astype(np.uint32)
    arrays.sci /= f
    f2 = f * f
    arrays.var_poisson /= f2
    arrays.var_rnoise /= f2
    if flat_err is not None:
        arrays.var_flat = ((arrays.sci * np.asarray(flat_err, np.float32)) / f) ** 2
        arrays.var_flat = np.nan_to_num(arrays.var_flat, nan=0.0).astype(np.float32)
    else:
        arrays.var_flat = np.zeros_like(arrays.sci)
    arrays.err[...] = np.sqrt(arrays.var_poisson + arrays.var_rnoise + arrays.var_flat)
    if bad.any():
        arrays.dq[bad] |= np.uint32(DO_NOT_USE | NO_FLAT_FIELD)
        for a in (arrays.sci,):
            a[bad] = np.nan
        for a in (arrays.err, arrays.var_poisson, arrays.var_rnoise, arrays.var_flat):
            a[bad] = 0


@dataclass(frozen=True)
class FlatFieldStep(Step):
    name: ClassVar[str] = "flat_field"
    status_keyword: ClassVar[str] = "S_FLAT"
    reftypes: ClassVar[tuple[str, ...]] = ("flat",)
    stage: ClassVar[str] = "image"

    def apply(self, arrays: SlopeArrays, refs: Mapping[str, Any]) -> SlopeArrays:
        do_flat_field(arrays, refs["flat"], refs.get("flat_err"), refs.get("flat_dq"))
        return arrays
