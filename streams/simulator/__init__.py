"""Contact simulator: a JWST-like downlink stream with known truth.

Public API::

    from streams.simulator import SimOptions, FaultSpec, simulate
    result = simulate(SimOptions(seed=1, size_bytes=200_000_000), "c.bin", truth="c.json")

Modules, one job each: ``options`` (what is asked), ``plan`` (observing plan),
``ramps`` (pixel data), ``engineering`` (parameter values), ``contact``
(stream assembly), ``faults`` (fault injection), ``emit`` (rendering and
writing with faults), ``writer`` (threaded I/O and hashing), ``truth``
(truth file and accounting rule), ``run`` (the orchestration).
"""

from streams.simulator.options import (
    KA_RATE_BYTES_PER_S,
    FaultSpec,
    SimOptions,
    parse_duration,
    parse_size,
    tai_from_iso,
)
from streams.simulator.run import ContactResult, SimulationResult, simulate
from streams.simulator.truth import SCHEMA, sequence_accounting

__all__ = [
    "KA_RATE_BYTES_PER_S", "SCHEMA", "ContactResult", "FaultSpec", "SimOptions", "SimulationResult",
    "parse_duration", "parse_size", "sequence_accounting", "simulate", "tai_from_iso",
]
