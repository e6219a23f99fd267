"""gain_scale: rescale slopes by a gain factor (jwst's step for readouts whose gain differs
from the gain reference; 1.0 for every readout this observatory has, so the
rate stays in DN/s)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step, positive
from consumers.calibrate.steps.blocks import SlopeArrays, SlopeBlock


def do_gain_scale(arrays: SlopeArrays, factor: float) -> None:
    """Multiply SCI and ERR by ``factor`` and the variances by its square, in place."""
    if factor == 1.0:
        return
    f = np.float32(factor)
    arrays.sci *= f
    arrays.err *= f
    arrays.var_poisson *= f * f
    arrays.var_rnoise *= f * f


@dataclass(frozen=True)
class GainScaleStep(Step):
    factor: float = 1.0

    name: ClassVar[str] = "gain_scale"
    status_keyword: ClassVar[str] = "S_GANSCL"
    reftypes: ClassVar[tuple[str, ...]] = ()
    stage: ClassVar[str] = "slope"

    def __post_init__(self) -> None:
        positive(self.name, factor=self.factor)

    def apply(self, block: SlopeBlock, refs: Mapping[str, Any]) -> SlopeBlock:
        do_gain_scale(block.rate, self.factor)
        do_gain_scale(block.ints, self.factor)
        return block
