"""Run consumer services in one asyncio process, supervised.

If any service task dies, the others are stopped and the process exits
non-zero (no zombie consumer that looks alive but does nothing). With
``until_idle`` the run ends once every service has consumed its topics to the
last stable offset and holds no pending work for ``idle_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from consumers.framework import registry
from consumers.framework.service import Service
from core.settings import Settings
from monitoring import metrics
from monitoring.sampler import sample_forever

log = logging.getLogger(__name__)

def build(settings: Settings, names: list[str], instance: str | None = None) -> list[Service]:
    classes = [registry.load(n) for n in names]  # unknown names fail before anything starts
    return [cls(settings, instance=instance) for cls in classes]


async def _idle(services: list[Service], idle_seconds: float) -> None:
    since: float | None = None
    while True:
        await asyncio.sleep(0.25)
        idle = True
        for s in services:
            if s.has_pending_work() or not await s.caught_up():
                idle = False
                break
        if not idle:
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= idle_seconds:
            return


async def _watch_health(services: list[Service]) -> None:
    """Return (ending the run) once an owned task of any service died: no zombie process."""
    while True:
        await asyncio.sleep(0.5)
        for s in services:
            if not s.healthy:
                log.error("service unhealthy; stopping all", extra={"service": s.name,
                                                                     "error": repr(s._fatal)})
                return


async def run_services(settings: Settings, names: list[str], *, until_idle: bool = False,
                       instance: str | None = None) -> int:
    """Start, supervise and stop services; returns the process exit status."""
    services = build(settings, names, instance)
    metrics.serve(settings.metrics.port, settings.metrics.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():  # a second signal: the operator does not want to wait for a clean stop
            log.error("second signal; exiting now without a clean stop", extra={"signal": sig.name})
            os._exit(128 + sig.value)
        log.info("signal received; stopping (a second one exits at once)", extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    started: list[Service] = []
    status = 0
    grace = settings.kafka.revoke_timeout_seconds
    try:
        for s in services:
            # a stop asked while a service starts (Kafka unreachable, state loading) is not deferred
            starting = asyncio.create_task(s.start(), name=f"start:{s.name}")
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("stopped while starting", extra={"service": s.name})
                return status
            starting.result()
            started.append(s)
        tasks = {asyncio.create_task(s.run(), name=f"service:{s.name}") for s in services}
        waiters = {asyncio.create_task(stop.wait(), name="signal"),
                   asyncio.create_task(_watch_health(services), name="health"),
                   asyncio.create_task(sample_forever(settings, services), name="metrics")}
        if until_idle:
            waiters.add(asyncio.create_task(_idle(services, settings.run.idle_seconds), name="idle"))
        done, _ = await asyncio.wait(tasks | waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in done & tasks:
            exc = task.exception() if not task.cancelled() else None
            log.error("service task ended unexpectedly; stopping all",
                      extra={"task": task.get_name(), "error": repr(exc)}, exc_info=exc)
            status = 1
        if any(t.get_name() == "health" for t in done):
            status = 1
        # graceful first: each loop finishes its unit of work; then whatever is left is cancelled
        for s in services:
            await s.request_stop()
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late | waiters:
            task.cancel()
        ended, _ = await asyncio.wait(tasks | waiters, timeout=grace)  # one stuck in its cleanup is left
        for task in ended:
            if not task.cancelled():
                task.exception()  # read (logged above when it mattered)
    finally:
        for s in reversed(started):
            # closing clients flushes what they hold: bounded, a broker that is away cannot hold the exit
            try:
                await asyncio.wait_for(s.stop(), grace)
            except asyncio.TimeoutError:
                log.warning("service did not stop in time; exiting without waiting for it",
                            extra={"service": s.name, "seconds": grace})
                status = status or 1
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
    return status
