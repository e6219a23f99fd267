"""The one list of services: name -> where its class lives (imported only when it starts).

The runner, ``downlink consumer NAME``, the compose file and the benchmarks
all read this table, so a new service is one line here. Lazy imports keep a
process small: ``downlink consumer demux`` loads no astropy, SQLAlchemy or
FastAPI.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from consumers.framework.service import Service


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    #: "package.module:Class"
    target: str
    #: started by ``downlink run`` when no ``--only`` is given
    default: bool = True
    description: str = ""
    #: background work: a process running only such services yields the CPU to real-time ones
    #: (``run.bulk_nice``)
    bulk: bool = False
    #: background work only while ingest's real-time tap carries live feeds' real-time packets
    #: and gap alerts (``ingest.realtime_tap``): demux then serves dumps and replays, and at
    #: normal priority it took the CPU from realtime and the broker (docs/realtime.md)
    bulk_when_tapped: bool = False


SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (
    ServiceSpec("demux", "consumers.demux.service:Demux", description="raw chunks -> telemetry topics",
                bulk_when_tapped=True),
    ServiceSpec("l0", "consumers.l0.service:L0Assembler", description="science runs -> L0 files", bulk=True),
    ServiceSpec("l1b", "consumers.l1b.service:L1b", description="L0 files -> uncal FITS -> cal.requests", bulk=True),
    ServiceSpec("realtime", "consumers.realtime.service:Realtime", description="real-time engineering and alerts -> MQTT"),
    ServiceSpec("dashboard", "consumers.dashboard.service:Dashboard", default=False, description="live engineering dashboard (Open MCT)"),
    ServiceSpec("archive", "consumers.archive.service:ArchiveSink", description="l0.ready, cal.done, recorded engineering -> catalogue", bulk=True),
    ServiceSpec("api", "consumers.archive.api.server:ApiServer", default=False, description="archive API (HTTP)"),
    ServiceSpec("calibrate", "consumers.calibrate.service:Calibrate", description="cal.requests -> rate, rateints, cal, i2d -> cal.done", bulk=True),
)}


def is_bulk(names: list[str], tapped: bool) -> bool:
    """True when every named service is background work (see :attr:`ServiceSpec.bulk`);
    ``tapped``: ingest's real-time tap is on (``ingest.realtime_tap``)."""
    return bool(names) and all(SERVICES[n].bulk or (tapped and SERVICES[n].bulk_when_tapped)
                               for n in names if n in SERVICES)


def names(default_only: bool = False) -> list[str]:
    return [n for n, s in SERVICES.items() if s.default or not default_only]


def load(name: str) -> type["Service"]:
    """The service class registered under ``name`` (imports its module now)."""
    spec = SERVICES.get(name)
    if spec is None:
        raise ConfigError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
    module, _, cls = spec.target.partition(":")
    return getattr(importlib.import_module(module), cls)
