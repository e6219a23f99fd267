"""dark_current: subtract the dark signal accumulated by each group.

The reference is either a dark cube with one plane per frame (the readout of
the dark itself: NFRAMES=1, GROUPGAP=0), from which each science group's
planes are averaged as the science readout pattern averages its frames, or a
cube with one plane per group already matching the science pattern, or a
2-D dark rate in DN/s (multiplied by each group's mean frame time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from core.errors import CalibrationError
from consumers.calibrate.steps.base import Step
from consumers.calibrate.steps.blocks import ExposureMeta, RampBlock
from consumers.calibrate.steps.dq import UNRELIABLE_DARK


def group_frames(meta: ExposureMeta) -> np.ndarray:
    """Frame indices (0-based) averaged into each group: (ngroups, nframes)."""
    step = meta.nframes + meta.groupgap
    return np.arange(meta.ngroups)[:, None] * step + np.arange(meta.nframes)[None, :]


def dark_per_group(dark: np.ndarray, meta: ExposureMeta) -> np.ndarray:
    """The dark signal of every science group, (ngroups, rows, nx) float32."""
    dark = np.asarray(dark, dtype=np.float32)
    if dark.ndim == 2:  # a dark rate: a group's frames are read at (k + 1) * tframe
        t = (group_frames(meta) + 1).mean(axis=1) * meta.tframe
        return t.astype(np.float32)[:, None, None] * dark[None]
    frames = group_frames(meta)
    if dark.shape[0] == meta.ngroups and (meta.nframes, meta.groupgap) != (1, 0) \
            and dark.shape[0] <= frames.max():
        return dark  # already one plane per science group
    if frames.max() >= dark.shape[0]:
        raise CalibrationError(
            f"the dark reference has {dark.shape[0]} frames but this exposure reads frame "
            f"{frames.max() + 1} ({meta.ngroups} groups of {meta.nframes} frames, gap "
            f"{meta.groupgap}): make a reference context with a longer dark")
    if meta.nframes == 1:
        return dark[frames[:, 0]]
    out = np.empty((meta.ngroups,) + dark.shape[1:], dtype=np.float32)
    for g in range(meta.ngroups):
        out[g] = dark[frames[g]].mean(axis=0)
    return out


def do_dark_current(data: np.ndarray, pixeldq: np.ndarray, dark: np.ndarray,
                    meta: ExposureMeta) -> None:
    """``data[i, g] -= dark[g]`` in place; NaN dark values flag UNRELIABLE_DARK and subtract 0."""
    per_group = dark_per_group(dark, meta)
    bad = ~np.isfinite(per_group).all(axis=0)
    if bad.any():
        pixeldq[bad] |= UNRELIABLE_DARK
        per_group = np.where(bad[None], np.float32(0), per_group)
    data -= per_group[None]


@dataclass(frozen=True)
class DarkCurrentStep(Step):
    name: ClassVar[str] = "dark_current"
    status_keyword: ClassVar[str] = "S_DARK"
    reftypes: ClassVar[tuple[str, ...]] = ("dark",)
    stage: ClassVar[str] = "ramp"

    def apply(self, block: RampBlock, refs: Mapping[str, Any]) -> RampBlock:
        do_dark_current(block.data, block.pixeldq, refs["dark"], block.meta)
        return block
