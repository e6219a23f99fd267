"""The runner's stop is never held hostage: a signal during a start that hangs, or a service whose
stop hangs (a broker that went away while clients flush), still ends the process."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import consumers.framework.runner as runner
from consumers.framework.service import Service


class Hanging(Service):
    name = "hanging"
    hang_in = "start"

    async def start(self) -> None:
        if self.hang_in == "start":
            await asyncio.Event().wait()
        self.lifecycle = "running"

    async def run(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        if self.hang_in == "stop":
            await asyncio.Event().wait()
        self.lifecycle = "stopped"

    def has_pending_work(self) -> bool:
        return False

    async def caught_up(self) -> bool:
        return True


@pytest.fixture
def hanging(monkeypatch: pytest.MonkeyPatch):
    def use(where: str) -> None:
        cls = type("H", (Hanging,), {"hang_in": where})
        monkeypatch.setattr(runner.registry, "load", lambda name: cls)
    return use


async def _signal_soon(sig: signal.Signals, after: float = 0.3) -> None:
    await asyncio.sleep(after)
    os.kill(os.getpid(), sig)


async def test_a_signal_while_a_service_is_starting_ends_the_run(settings, hanging):
    hanging("start")
    killer = asyncio.create_task(_signal_soon(signal.SIGTERM))
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        status = await runner.run_services(settings, ["hanging"])
    await killer
    assert status == 0


async def test_a_stop_that_hangs_is_abandoned_after_the_grace_period(settings, hanging):
    hanging("stop")
    killer = asyncio.create_task(_signal_soon(signal.SIGTERM))
    async with asyncio.timeout(30):
        status = await runner.run_services(settings.replace(kafka_revoke_timeout_seconds=0.5), ["hanging"])
    await killer
    assert status == 1  # the operator learns the stop was not clean
