"""What made a calibrated product, written into its primary header.

Keywords (the stdatamodels core schema's where one exists):

- ``CAL_VER``  the software version (core.version),
- ``CRDS_CTX`` the reference context used (``downlink_0001`` ...),
- ``S_<STEP>`` COMPLETE or SKIPPED for every step of the pipeline, never missing,
- ``R_<TYPE>`` the reference file used for each type (``N/A`` when none was used),
- ``IN_SHA``   sha256 of the input (uncal) file and ``IN_NAME`` its name,
- ``CALPARS``  sha256 (first 16 hex) of the steps' parameters, listed in HISTORY cards.

No wall-clock time is written: the same input, context, version and parameters
give byte-identical products (the output folder name derives from
:meth:`Provenance.key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMPLETE = "COMPLETE"
SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Provenance:
    cal_version: str
    context: str
    input_sha256: str
    input_name: str
    #: step name -> (S_ keyword, COMPLETE | SKIPPED), in pipeline order
    steps: tuple[tuple[str, str, str], ...]
    #: (step name, R_ keyword, reference file name) for the references the steps used
    references: tuple[tuple[str, str, str], ...]
    #: step name -> its parameters
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, separators=(",", ":"), default=str)

    def key(self) -> str:
        """A short stable id of (input, context, version, steps, parameters)."""
        blob = json.dumps([self.cal_version, self.context, self.input_sha256,
                           [list(s) for s in self.steps], self.params_json()]).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def status(self, step: str) -> str:
        for name, _, status in self.steps:
            if name == step:
                return status
        raise KeyError(step)

    def cards(self, only: tuple[str, ...] | None = None) -> list[tuple[str, Any, str]]:
        """Header cards. ``only``: the steps that made this product (a rate is not flat-fielded even
        when its cal is): the others are written SKIPPED and their references left out."""
        cards: list[tuple[str, Any, str]] = [
            ("CAL_VER", self.cal_version, "calibration software version"),
            ("CRDS_CTX", self.context, "reference context used"),
            ("IN_NAME", self.input_name[-68:], "input file"),
            ("IN_SHA", self.input_sha256, "sha256 of the input file"),
            ("CALPARS", hashlib.sha256(self.params_json().encode()).hexdigest()[:16],
             "sha256 of the step parameters (HISTORY)"),
        ]
        for name, keyword, status in self.steps:
            if only is not None and name not in only:
                status = SKIPPED
            cards.append((keyword, status, f"{name} step"))
        seen = set()
        for step, keyword, value in self.references:
            if (only is None or step in only) and keyword not in seen:
                seen.add(keyword)
                cards.append((keyword, value[-68:], "reference file used"))
        text = self.params_json()
        for k in range(0, len(text), 64):
            cards.append(("HISTORY", f"params {text[k:k + 64]}", ""))
        return cards
