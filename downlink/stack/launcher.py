"""`downlink stack up | down | status | logs`: the local stack as plain processes.

``up`` returns only once every component answers real requests (Kafka:
metadata and an admin request; Mosquitto: an MQTT connection on both
listeners; Prometheus: /-/ready; PostgreSQL: a query in the archive's
database). It is idempotent: components already running from this state dir
are left alone. ``down`` stops only processes recorded in
``<state_dir>/run/*.pid`` — never a process this launcher did not start, even
if it holds our ports.

PostgreSQL is started on demand: when asked (``up --with postgres``) or when
the archive is configured for a PostgreSQL server on this machine
(``DOWNLINK_ARCHIVE_DATABASE_URL=postgresql://USER:PASSWORD@127.0.0.1:PORT/DB``:
the server then runs on that port with that role, password and database).
Once running from this state dir it is part of ``status`` and ``down``
whatever the settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from core.errors import StackError
from core.settings import Settings
from downlink.stack import kafka as kafka_mod
from downlink.stack.component import Component
from downlink.stack.kafka import Kafka
from downlink.stack.mosquitto import Mosquitto
from downlink.stack.postgres import Postgres, local_postgres
from downlink.stack.process import (
    PidFile,
    PidRecord,
    alive,
    describe_port_owner,
    port_open,
    port_owner,
    spawn,
    stop,
    tail,
)
from downlink.stack.prometheus import Prometheus

log = logging.getLogger(__name__)

COMPONENTS: dict[str, type[Component]] = {"kafka": Kafka, "mosquitto": Mosquitto, "prometheus": Prometheus,
                                           "postgres": Postgres}
#: started only when their binary exists (and their port is free); never fail `up`
OPTIONAL = frozenset({"prometheus"})
#: not part of the default stack: started when asked (``extras``, ``up --with``) or configured
ON_DEMAND = frozenset({"postgres"})
#: a stack is unusable without these (``stack status`` exits 1); a wanted on-demand one joins them
REQUIRED = ("kafka", "mosquitto")


def configured(settings: Settings) -> set[str]:
    """On-demand components the settings ask for: PostgreSQL when the archive's database URL
    names a PostgreSQL server on this machine."""
    return {"postgres"} if local_postgres(settings.archive.database_url.reveal()) else set()


@dataclass(frozen=True)
class ComponentStatus:
    """One row of `stack status`."""

    name: str
    state: str  # running (ours) | foreign (port held by another process) | stopped | unavailable
    pid: int | None
    port: int
    healthy: bool
    detail: str
    log_file: Path


@dataclass
class UpReport:
    """What `up` did, for the CLI to print."""

    seconds: float = 0.0
    kafka_fetch: str = "n/a"  # cold | warm | n/a
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class Stack:
    """The local stack of one state dir."""

    def __init__(self, settings: Settings, components: Sequence[str] | None = None,
                 extras: Sequence[str] = ()) -> None:
        """``components``: exactly these; default: Kafka, Mosquitto, Prometheus, plus the on-demand
        ones in ``extras``, configured (:func:`configured`) or running from this state dir."""
        unknown = [n for n in [*(components or ()), *extras] if n not in COMPONENTS]
        if unknown:
            raise StackError(f"unknown stack component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
        pg = local_postgres(settings.archive.database_url.reveal())
        if pg is not None and pg.port and pg.port != settings.stack.postgres_port:
            settings = settings.replace(stack_postgres_port=pg.port)  # where the archive will look
        self.settings = settings
        self.credentials = pg
        self.run_dir = settings.state_dir.resolve() / "run"
        if components is not None:
            names = list(dict.fromkeys([*components, *extras]))
            wanted = set(names)
        else:
            wanted = set(extras) | configured(settings)
            names = [n for n in COMPONENTS if n not in ON_DEMAND
                     or n in wanted or PidFile(self.run_dir, n).running() is not None]
        #: on-demand components asked for or configured (not merely found running)
        self.wanted = [n for n in names if n in ON_DEMAND and n in wanted]
        self.components: list[Component] = [self._make(n) for n in names]

    def _make(self, name: str) -> Component:
        if name == "postgres":
            return Postgres(self.settings, credentials=self.credentials)
        return COMPONENTS[name](self.settings)

    @property
    def required(self) -> list[str]:
        """Components whose health ``stack status`` answers for with its exit code."""
        return [*REQUIRED, *self.wanted]

    def pid_file(self, component: Component) -> PidFile:
        return PidFile(self.run_dir, component.name)

    def component(self, name: str) -> Component:
        for comp in self.components:
            if comp.name == name:
                return comp
        if name in COMPONENTS:
            return self._make(name)
        raise StackError(f"unknown stack component {name!r}; choose from {', '.join(COMPONENTS)}")

    # -- up -------------------------------------------------------------------------------
    async def fetch(self) -> bool:
        """Fetch the Kafka jars only; True if Maven ran (cold cache)."""
        return await kafka_mod.fetch(self.settings)

    async def up(self, timeout: float = 120.0) -> UpReport:
        """Start what is not running and wait until everything is healthy."""
        started_at = time.monotonic()
        report = UpReport()
        if any(c.name == "kafka" for c in self.components):
            report.kafka_fetch = "cold" if await self.fetch() else "warm"
        started: dict[str, PidRecord] = {}
        deadline = started_at + timeout
        try:
            results = await asyncio.gather(
                *(self._up_one(comp, report, started, deadline) for comp in self.components),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException:
            # leave nothing half-started behind: stop what this call launched
            await asyncio.gather(*(self._stop(self.component(n), rec) for n, rec in started.items()))
            raise
        report.seconds = time.monotonic() - started_at
        log.info("stack up", extra={"seconds": round(report.seconds, 2), "kafka_fetch": report.kafka_fetch})
        return report

    async def _up_one(
        self, comp: Component, report: UpReport, started: dict[str, PidRecord], deadline: float
    ) -> None:
        optional = comp.name in OPTIONAL
        reason = comp.missing()
        if reason:
            if optional:
                report.skipped[comp.name] = reason
                return
            raise StackError(f"cannot start {comp.name}: {reason}")
        pid_file = self.pid_file(comp)
        record = pid_file.running()
        if record is None:
            for port in comp.ports:
                if port_open(port) or port_owner(port) is not None:
                    message = (
                        f"port {port} needed by {comp.name} is taken by {describe_port_owner(port)}, "
                        f"which this stack (state dir {self.settings.state_dir.resolve()}) did not start; "
                        f"stop it, or choose other ports (DOWNLINK_*_PORT settings)"
                    )
                    if optional:
                        report.skipped[comp.name] = message
                        return
                    raise StackError(message)
            await comp.prepare()
            record = await spawn(comp.argv(), comp.log_file)
            pid_file.write(record)
            started[comp.name] = record
            report.started.append(comp.name)
            log.info("started", extra={"component": comp.name, "pid": record.pid})
        else:
            report.already_running.append(comp.name)
        try:
            await self._wait_ready(comp, record, deadline)
        except StackError as exc:
            if not optional:
                raise
            # an optional extra must not keep Kafka and Mosquitto from being usable
            if comp.name in started:
                await self._stop(comp, started.pop(comp.name))
                report.started.remove(comp.name)
            report.skipped[comp.name] = str(exc)

    async def _wait_ready(self, comp: Component, record: PidRecord, deadline: float) -> None:
        reason = "not probed yet"
        while True:
            if not alive(record):
                self.pid_file(comp).remove()
                last = "\n".join(tail(comp.log_file, 15))
                raise StackError(
                    f"{comp.name} (pid {record.pid}) exited during start-up; read {comp.log_file}. Last lines:\n{last}"
                )
            reason = await comp.probe() or ""
            if not reason:
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{comp.name} did not become ready in time ({reason}); read {comp.log_file}"
                )
            await asyncio.sleep(0.2)

    # -- down -----------------------------------------------------------------------------
    async def _stop(self, comp: Component, record: PidRecord) -> bool:
        if alive(record):
            try:
                await comp.shutdown()  # the server's own way first (PostgreSQL: pg_ctl stop -m fast)
            except StackError as exc:
                log.warning("shutdown refused; signalling", extra={"component": comp.name, "error": str(exc)})
        killed = await stop(record, comp.grace)
        if alive(record):
            raise StackError(f"{comp.name} (pid {record.pid}) survived SIGKILL; check `ps -p {record.pid}`")
        self.pid_file(comp).remove()
        if killed:
            log.warning("killed after grace period", extra={"component": comp.name, "pid": record.pid})
        return killed

    async def down(self) -> list[str]:
        """Stop the processes this state dir started (SIGTERM, then SIGKILL after the grace period)."""
        stopped: list[str] = []

        async def one(comp: Component) -> None:
            record = self.pid_file(comp).running()  # removes stale pid files
            if record is not None:
                await self._stop(comp, record)
                stopped.append(comp.name)

        # the components do not depend on each other: stop them in parallel
        await asyncio.gather(*(one(comp) for comp in self.components))
        return stopped

    # -- status / logs --------------------------------------------------------------------
    async def status(self) -> list[ComponentStatus]:
        return list(await asyncio.gather(*(self._status_one(comp) for comp in self.components)))

    async def _status_one(self, comp: Component) -> ComponentStatus:
        port = comp.ports[0]
        missing = comp.missing()
        record = self.pid_file(comp).running()
        if record is not None:
            state, pid = "running", record.pid
        elif port_open(port):
            owner = port_owner(port)
            state, pid = "foreign", owner[0] if owner else None
        elif missing:
            return ComponentStatus(comp.name, "unavailable", None, port, False, missing, comp.log_file)
        else:
            return ComponentStatus(comp.name, "stopped", None, port, False, "not running", comp.log_file)
        reason = await comp.probe()
        detail = reason or ("answering" if state == "running" else "answering (not started by this state dir)")
        return ComponentStatus(comp.name, state, pid, port, reason is None, detail, comp.log_file)

    def logs(self, name: str | None, lines: int) -> list[tuple[str, Path, list[str]]]:
        """Last ``lines`` lines of each (or one) component's log file."""
        comps = [self.component(name)] if name else self.components
        return [(comp.name, comp.log_file, tail(comp.log_file, lines)) for comp in comps]
