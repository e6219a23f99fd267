"""saturation: groups at or above the saturation level, and every later group, are flagged.

Compared with the raw counts (bias included), as the reference file is, so it
runs before superbias. A pixel without a level (NaN) is flagged NO_SAT_CHECK.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import RampBlock
from consumers.calibrate.steps.dq import DO_NOT_USE, NO_SAT_CHECK, SATURATED


def do_saturation(data: np.ndarray, groupdq: np.ndarray, pixeldq: np.ndarray,
                  level: np.ndarray) -> None:
    """Flag SATURATED | DO_NOT_USE in ``groupdq`` (nints, ngroups, rows, nx) in place."""
    level = np.asarray(level, dtype=np.float32)
    nocheck = ~np.isfinite(level)
    if nocheck.any():
        pixeldq[nocheck] |= NO_SAT_CHECK
        level = np.where(nocheck, np.float32(np.inf), level)
    sat = data >= level
    # once saturated, a pixel stays saturated until the reset that ends the integration
    np.logical_or.accumulate(sat, axis=1, out=sat)
    flags = sat.view(np.uint8)              # 0 / 1, no copy
    flags *= np.uint8(SATURATED | DO_NOT_USE)
    groupdq |= flags


@dataclass(frozen=True)
class SaturationStep(Step):
    name: ClassVar[str] = "saturation"
    status_keyword: ClassVar[str] = "S_SATURA"
    reftypes: ClassVar[tuple[str, ...]] = ("saturation",)
    stage: ClassVar[str] = "ramp"

    def apply(self, block: RampBlock, refs: Mapping[str, Any]) -> RampBlock:
        do_saturation(block.data, block.groupdq, block.pixeldq, refs["saturation"])
        return block
