"""What steps work on: a block of detector rows of one exposure, all integrations and groups.

The pipeline never holds a whole exposure: it cuts the subarray into row blocks
(plus a halo row above and below for steps that look at neighbours), runs every
step on a block, writes the block's rows of each product and moves on. So a
step sees arrays of shape (nints, ngroups, rows, nx) for ramps and (rows, nx)
or (nints, rows, nx) for slopes, never more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ExposureMeta:
    """Geometry and timing of an exposure, as its uncal keywords state them."""

    detector: str
    instrument: str
    nints: int
    ngroups: int
    nframes: int
    groupgap: int
    tframe: float
    tgroup: float
    substrt1: int
    substrt2: int
    subsize1: int
    subsize2: int
    exp_type: str = ""
    filter: str = ""
    pupil: str = ""

    @property
    def ny(self) -> int:
        return self.subsize2

    @property
    def nx(self) -> int:
        return self.subsize1

    @property
    def one_group_time(self) -> float:
        """Effective time of a ramp whose only good group is the first (as stcal)."""
        return (self.nframes + 1.0) * self.tframe / 2.0


@dataclass
class RampBlock:
    """Rows ``row0 .. row0 + rows`` (subarray coordinates, halo included) of every group."""

    data: np.ndarray      # float32 (nints, ngroups, rows, nx), DN
    groupdq: np.ndarray   # uint8, same shape
    pixeldq: np.ndarray   # uint32 (rows, nx)
    row0: int
    meta: ExposureMeta

    @property
    def rows(self) -> int:
        return self.data.shape[2]


@dataclass
class SlopeArrays:
    """Slopes and their variances (rate: (rows, nx); rateints: (nints, rows, nx))."""

    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    var_poisson: np.ndarray
    var_rnoise: np.ndarray
    var_flat: np.ndarray | None = None

    def crop(self, start: int, stop: int) -> "SlopeArrays":
        """The rows ``start:stop`` (last-but-one axis) of every array."""
        cut = lambda a: None if a is None else a[..., start:stop, :]  # noqa: E731
        return SlopeArrays(cut(self.sci), cut(self.err), cut(self.dq), cut(self.var_poisson),
                           cut(self.var_rnoise), cut(self.var_flat))

    def copy(self) -> "SlopeArrays":
        return SlopeArrays(*(None if a is None else a.copy() for a in (
            self.sci, self.err, self.dq, self.var_poisson, self.var_rnoise, self.var_flat)))


@dataclass
class SlopeBlock:
    """Ramp-fit results of a row block: the exposure rate and one slope per integration."""

    rate: SlopeArrays
    ints: SlopeArrays
    row0: int
    meta: ExposureMeta
    extra: dict = field(default_factory=dict)
