"""jump: cosmic-ray hits found by the two-point difference method (as stcal's ``twopoint``).

Per pixel and integration, the first differences of the groups (in electrons)
are compared with their median: a difference more than ``threshold`` sigma
away flags its later group JUMP_DET, where sigma combines the Poisson noise of
the median difference and the read noise of a difference (the readnoise
reference is the CDS noise of one frame pair in DN, averaged over NFRAMES).
A hit above ``neighbor_threshold`` sigma also flags its four neighbours in the
same group (charge spreads to them); the pipeline gives this step one halo row
above and below its block so neighbours across block edges are flagged too.
Ramps with fewer than ``min_diffs`` usable differences are not searched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from consumers.calibrate.steps.base import Step, positive
from consumers.calibrate.steps.blocks import RampBlock
from consumers.calibrate.steps.dq import DO_NOT_USE, JUMP_DET, SATURATED
from consumers.calibrate.steps.median import median0, nanmedian0

_UNUSABLE = np.uint8(DO_NOT_USE | SATURATED)


def do_jump(data: np.ndarray, groupdq: np.ndarray, gain: np.ndarray, readnoise: np.ndarray,
            nframes: int, threshold: float = 4.0, neighbor_threshold: float = 10.0,
            flag_neighbors: bool = True, min_diffs: int = 3) -> int:
    """Flag JUMP_DET in ``groupdq`` in place; returns the number of groups flagged as hits."""
    nints, ngroups = data.shape[:2]
    if ngroups < 2:
        return 0
    gain = np.asarray(gain, dtype=np.float32)
    okgain = np.isfinite(gain) & (gain > 0)
    g = np.where(okgain, gain, np.float32(1))
    rn2 = (np.asarray(readnoise, dtype=np.float32) * g) ** 2 / np.float32(nframes)
    hits = 0
    for i in range(nints):
        d, gq = data[i], groupdq[i]
        diffs = np.subtract(d[1:], d[:-1], dtype=np.float32)
        diffs *= g
        bad = ((gq[1:] | gq[:-1]) & _UNUSABLE) != 0
        irregular = bad.any(axis=0)
        med = median0(diffs) if ngroups > 2 else diffs[0].copy()
        if irregular.any():
            sub = np.where(bad[:, irregular], np.float32(np.nan), diffs[:, irregular])
            med[irregular] = nanmedian0(sub)
        nvalid = ngroups - 1 - bad.sum(axis=0)
        sigma = np.sqrt(np.abs(med) + rn2)
        ratio = np.abs(diffs - med)
        ratio /= np.where(sigma > 0, sigma, np.float32(np.inf))
        ratio[bad] = 0
        ratio[:, (nvalid < min_diffs) | ~okgain] = 0
        jump = ratio > threshold
        n = int(jump.sum())
        hits += n
        if n:
            later = gq[1:]
            later[jump] |= np.uint8(JUMP_DET)
            if flag_neighbors:
                big = ratio > neighbor_threshold
                nb = np.zeros_like(big)
                nb[:, 1:, :] |= big[:, :-1, :]
                nb[:, :-1, :] |= big[:, 1:, :]
                nb[:, :, 1:] |= big[:, :, :-1]
                nb[:, :, :-1] |= big[:, :, 1:]
                nb &= (later & _UNUSABLE) == 0
                later[nb] |= np.uint8(JUMP_DET)
    return hits


@dataclass(frozen=True)
class JumpStep(Step):
    threshold: float = 4.0
    neighbor_threshold: float = 10.0
    flag_neighbors: bool = True
    min_diffs: int = 3

    name: ClassVar[str] = "jump"
    status_keyword: ClassVar[str] = "S_JUMP"
    reftypes: ClassVar[tuple[str, ...]] = ("gain", "readnoise")
    stage: ClassVar[str] = "ramp"
    halo: ClassVar[int] = 1

    def __post_init__(self) -> None:
        positive(self.name, threshold=self.threshold, neighbor_threshold=self.neighbor_threshold,
                 min_diffs=self.min_diffs)

    def apply(self, block: RampBlock, refs: Mapping[str, Any]) -> RampBlock:
        do_jump(block.data, block.groupdq, refs["gain"], refs["readnoise"], block.meta.nframes,
                self.threshold, self.neighbor_threshold, self.flag_neighbors, self.min_diffs)
        return block
