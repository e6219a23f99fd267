"""What every step declares: its name, status keyword, reference types, stage and parameters.

A step is a frozen dataclass whose fields are its parameters (typed, with
defaults, checked in ``__post_init__``), around one pure numpy function
``do_<name>()`` in the same module. The pipeline reads the declarations to know
which reference files to fetch before any step runs, which ``S_<STEP>`` keyword
to write (COMPLETE or SKIPPED, never missing) and which ``R_<TYPE>`` keywords
name the files used.

Stages, in pipeline order:
``ramp`` steps change a :class:`RampBlock` in place; ``fit`` turns it into a
:class:`SlopeBlock`; ``slope`` steps change the slopes (rate and rateints);
``image`` steps change the Image2 arrays that become the ``_cal`` product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from core.errors import ConfigError

#: reference type -> the FITS keyword recording the file used (stdatamodels' core schema)
REF_KEYWORDS: dict[str, str] = {
    "mask": "R_MASK", "saturation": "R_SATURA", "superbias": "R_SUPERB",
    "linearity": "R_LINEAR", "dark": "R_DARK", "gain": "R_GAIN", "readnoise": "R_READNO",
    "flat": "R_FLAT", "photom": "R_PHOTOM", "area": "R_AREA",
}

STAGES = ("ramp", "fit", "slope", "image")


@dataclass(frozen=True)
class Step:
    """Base of every step; subclasses set the class variables and implement :meth:`apply`."""

    name: ClassVar[str] = ""
    #: the S_<STEP> keyword of stdatamodels' cal_step schema
    status_keyword: ClassVar[str] = ""
    reftypes: ClassVar[tuple[str, ...]] = ()
    stage: ClassVar[str] = "ramp"
    #: rows above and below a block this step needs to see (neighbour flagging)
    halo: ClassVar[int] = 0

    def apply(self, target: Any, refs: Mapping[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None) -> "Step":
        """Build the step from a parameter mapping; unknown names are a ConfigError."""
        params = dict(params or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(f"step {cls.name}: unknown parameter(s) {', '.join(unknown)}; "
                              f"known: {', '.join(known) or 'none'}")
        values = {}
        for k, v in params.items():
            typ = type(known[k].default)
            try:
                values[k] = typ(v) if typ in (int, float, bool, str) else v
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"step {cls.name}: parameter {k}={v!r} is not a {typ.__name__}") from exc
        return cls(**values)

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def positive(step: str, **values: float) -> None:
    """Raise a ConfigError naming the first parameter that is not > 0."""
    for k, v in values.items():
        if not v > 0:
            raise ConfigError(f"step {step}: {k} must be > 0, got {v}")
