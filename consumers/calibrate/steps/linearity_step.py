"""linearity: the polynomial of the reference file turns measured counts into linear counts.

``linear = sum_k c_k * x**k`` per pixel (the JWST LinearityModel convention,
coefficients (ncoeffs, ny, nx), applied to bias-subtracted counts). Saturated
groups are left alone (their counts mean nothing); a pixel with a NaN
coefficient is NO_LIN_CORR and left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import RampBlock
from consumers.calibrate.steps.dq import NO_LIN_CORR, SATURATED


def do_linearity(data: np.ndarray, groupdq: np.ndarray, pixeldq: np.ndarray,
                 coeffs: np.ndarray) -> None:
    """Correct ``data`` (nints, ngroups, rows, nx) in place with Horner's scheme."""
    coeffs = np.asarray(coeffs, dtype=np.float32)
    bad = ~np.isfinite(coeffs).all(axis=0)
    if bad.any():
        pixeldq[bad] |= NO_LIN_CORR
        coeffs = coeffs.copy()
        coeffs[:, bad] = 0.0
        coeffs[1, bad] = 1.0
    keep = (groupdq & SATURATED) != 0
    for i in range(data.shape[0]):          # one integration at a time bounds the temporaries
        x = data[i]
        out = np.empty_like(x)
        out[...] = coeffs[-1]
        for c in coeffs[-2::-1]:
            out *= x
            out += c
        np.copyto(x, out, where=~keep[i])


@dataclass(frozen=True)
class LinearityStep(Step):
    name: ClassVar[str] = "linearity"
    status_keyword: ClassVar[str] = "S_LINEAR"
    reftypes: ClassVar[tuple[str, ...]] = ("linearity",)
    stage: ClassVar[str] = "ramp"

    def apply(self, block: RampBlock, refs: Mapping[str, Any]) -> RampBlock:
        do_linearity(block.data, block.groupdq, block.pixeldq, refs["linearity"])
        return block
