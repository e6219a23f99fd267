"""dq_init: the bad-pixel mask becomes the pixel DQ (reference type ``mask``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import RampBlock
from consumers.calibrate.steps.dq import PIXEL_DTYPE


def do_dq_init(pixeldq: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """OR the mask's flags into the pixel DQ (in place; returns it)."""
    pixeldq |= np.asarray(mask).astype(PIXEL_DTYPE, copy=False)
    return pixeldq


@dataclass(frozen=True)
class DQInitStep(Step):
    name: ClassVar[str] = "dq_init"
    status_keyword: ClassVar[str] = "S_DQINIT"
    reftypes: ClassVar[tuple[str, ...]] = ("mask",)
    stage: ClassVar[str] = "ramp"

    def apply(self, block: RampBlock, refs: Mapping[str, Any]) -> RampBlock:
        do_dq_init(block.pixeldq, refs["mask"])
        return block
