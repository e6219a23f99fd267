"""The calibration steps, in the jwst pipeline's order (Detector1, then Image2).

Each module holds one step: a pure vectorized ``do_<step>()`` numpy function and
a thin :class:`~consumers.calibrate.steps.base.Step` wrapper declaring its
name, status keyword, reference types and parameters.
"""

from __future__ import annotations

from consumers.calibrate.steps.base import REF_KEYWORDS, Step
from consumers.calibrate.steps.dark_current_step import DarkCurrentStep
from consumers.calibrate.steps.dq_init_step import DQInitStep
from consumers.calibrate.steps.flat_field_step import FlatFieldStep
from consumers.calibrate.steps.gain_scale_step import GainScaleStep
from consumers.calibrate.steps.jump_step import JumpStep
from consumers.calibrate.steps.linearity_step import LinearityStep
from consumers.calibrate.steps.photom_step import PhotomStep
from consumers.calibrate.steps.ramp_fit_step import RampFitStep
from consumers.calibrate.steps.saturation_step import SaturationStep
from consumers.calibrate.steps.superbias_step import SuperBiasStep

#: Detector1-like, then Image2-like, in the jwst order
DETECTOR1: tuple[type[Step], ...] = (
    DQInitStep, SaturationStep, SuperBiasStep, LinearityStep, DarkCurrentStep, JumpStep,
    RampFitStep, GainScaleStep)
IMAGE2: tuple[type[Step], ...] = (FlatFieldStep, PhotomStep)
PIPELINE: tuple[type[Step], ...] = DETECTOR1 + IMAGE2
BY_NAME: dict[str, type[Step]] = {s.name: s for s in PIPELINE}
ORDER: tuple[str, ...] = tuple(s.name for s in PIPELINE)

__all__ = ["BY_NAME", "DETECTOR1", "IMAGE2", "ORDER", "PIPELINE", "REF_KEYWORDS", "Step"]
