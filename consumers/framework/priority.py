"""CPU priority of a process: bulk work yields the processor to real-time telemetry.

On a saturated machine (a dump ingested at full speed while a contact is
live) the scheduler shares the cores evenly between processes; an operator's
real-time value then waits behind l0's file writes. A process that runs only
background work lowers its priority once, at start, to ``run.bulk_nice``
(containers: the same via the compose file's ``cpu_shares``).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def yield_to_realtime(settings, what: str) -> int:
    """Raise this process's niceness to ``run.bulk_nice`` (never lowers it); the niceness now."""
    target = settings.run.bulk_nice
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if target > current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, target)
        except OSError as exc:  # a sandbox may refuse; the work goes on at the old priority
            log.warning("could not lower the CPU priority", extra={"what": what, "error": str(exc)})
            return current
        log.info("bulk work: CPU priority lowered", extra={"what": what, "nice": target})
        return target
    return current
