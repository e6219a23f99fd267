"""superbias: subtract the bias frame from every group."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import RampBlock
from consumers.calibrate.steps.dq import UNRELIABLE_BIAS


def do_superbias(data: np.ndarray, pixeldq: np.ndarray, bias: np.ndarray) -> None:
    """``data -= bias`` in place; a pixel without a bias value (NaN) is UNRELIABLE_BIAS, left as is."""
    bias = np.asarray(bias, dtype=np.float32)
    bad = ~np.isfinite(bias)
    if bad.any():
        pixeldq[bad] |= UNRELIABLE_BIAS
        bias = np.where(bad, np.float32(0), bias)
    data -= bias


@dataclass(frozen=True)
class SuperBiasStep(Step):
    name: ClassVar[str] = "superbias"
    status_keyword: ClassVar[str] = "S_SUPERB"
    reftypes: ClassVar[tuple[str, ...]] = ("superbias",)
    stage: ClassVar[str] = "ramp"

    def apply(self, block: RampBlock, refs: Mapping[str, Any]) -> RampBlock:
        do_superbias(block.data, block.pixeldq, refs["superbias"])
        return block
