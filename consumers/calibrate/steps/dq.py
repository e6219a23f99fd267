"""Data-quality bits, the JWST values (the same as stdatamodels' ``dqflags``), kept here so the
calibration service does not import stdatamodels at run time."""

from __future__ import annotations

import numpy as np

GOOD = 0
DO_NOT_USE = 1
SATURATED = 2
JUMP_DET = 4
DROPOUT = 8
NO_FLAT_FIELD = 1 << 18
NO_GAIN_VALUE = 1 << 19
NO_LIN_CORR = 1 << 20
NO_SAT_CHECK = 1 << 21
UNRELIABLE_BIAS = 1 << 22
UNRELIABLE_DARK = 1 << 23
UNRELIABLE_SLOPE = 1 << 24
UNRELIABLE_FLAT = 1 << 25
REFERENCE_PIXEL = 1 << 31

#: group DQ is uint8 (the low bits: DO_NOT_USE, SATURATED, JUMP_DET, DROPOUT)
GROUP_DTYPE = np.uint8
PIXEL_DTYPE = np.uint32
