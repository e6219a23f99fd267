"""The stack launcher with real processes: status, idempotent up, clean down, clear failures.

Lifecycle tests run a SECOND stack on free ports in a private state dir, so the
session's stack (possibly a developer's) is never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from core.errors import StackError
from core.settings import Settings
from downlink.stack.launcher import Stack
from downlink.stack.process import alive, port_open

pytestmark = pytest.mark.integration


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (the kernel's choice, released before use)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def second_stack_settings(base: Settings, state_dir: Path) -> Settings:
    kafka, controller, mqtt, ws, prom = free_ports(5)
    return base.replace(
        state_dir=state_dir, stack_kafka_port=kafka, stack_kafka_controller_port=controller,
        kafka_bootstrap=f"127.0.0.1:{kafka}", stack_mqtt_port=mqtt, stack_mqtt_ws_port=ws,
        mqtt_url=f"mqtt://127.0.0.1:{mqtt}", stack_prometheus_port=prom,
    )


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("kafka_bootstrap", "stack_kafka_port", "stack_kafka_controller_port", "mqtt_url",
                 "stack_mqtt_port", "stack_mqtt_ws_port", "stack_prometheus_port", "state_dir"):
        env[f"DOWNLINK_{name.upper()}"] = str(settings.get(name))
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "downlink", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest_asyncio.fixture
async def second(stack: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    """A private stack (not started yet); whatever it started is stopped at teardown."""
    launcher = Stack(second_stack_settings(stack, tmp_path / "second"))
    try:
        yield launcher
    finally:
        await launcher.down()


async def test_session_stack_status_shows_healthy_components(stack: Settings) -> None:
    rows = {row.name: row for row in await Stack(stack).status()}
    for name in ("kafka", "mosquitto"):
        assert rows[name].healthy, rows[name]
        assert rows[name].state in ("running", "foreign")
    result = cli(stack, "stack", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any("component" in line and "healthy" in line and "pid" in line and "port" in line for line in lines)
    for name, port in (("kafka", stack.stack.kafka_port), ("mosquitto", stack.stack.mqtt_port)):
        row = next(line for line in lines if f" {name} " in line)
        assert str(port) in row and " yes " in row


async def test_up_twice_is_harmless_and_down_leaves_nothing(second: Stack) -> None:
    first = await second.up(timeout=120)
    assert "kafka" in first.started and "mosquitto" in first.started
    status = {row.name: row for row in await second.status()}
    running = [row for row in status.values() if row.state == "running"]
    assert {"kafka", "mosquitto"} <= {row.name for row in running}
    assert all(row.healthy for row in running)
    pids = {row.name: row.pid for row in running}
    records = {comp.name: second.pid_file(comp).read() for comp in second.components}

    again = await second.up(timeout=120)
    assert again.started == []
    assert set(again.already_running) == set(pids)
    assert {row.name: row.pid for row in await second.status() if row.state == "running"} == pids

    stopped = await second.down()
    assert set(stopped) == set(pids)
    for name, record in records.items():
        if record is not None:
            assert not alive(record), f"{name} pid {record.pid} survived `down`"
    assert not any(port_open(port) for comp in second.components for port in comp.ports)
    assert list(second.run_dir.glob("*.pid")) == []
    assert await second.down() == []  # down twice is harmless too
    assert all(row.state == "stopped" for row in await second.status())


async def test_foreign_process_on_a_port_is_named_and_left_alone(second: Stack, tmp_path: Path) -> None:
    only_mqtt = Stack(second.settings, ["mosquitto"])
    await only_mqtt.up(timeout=60)
    mosquitto_pid = (await only_mqtt.status())[0].pid
    intruder = Stack(second.settings.replace(state_dir=tmp_path / "intruder"), ["mosquitto"])
    with pytest.raises(StackError, match=rf"port {second.settings.stack.mqtt_port} needed by mosquitto is taken by pid {mosquitto_pid}"):
        await intruder.up(timeout=60)
    assert await intruder.down() == []
    assert (await only_mqtt.status())[0].healthy


async def test_crash_at_start_names_the_log_file(second: Stack) -> None:
    broken = Stack(second.settings.replace(stack_kafka_heap="1m"), ["kafka"])
    with pytest.raises(StackError, match=r"kafka \(pid \d+\) exited during start-up; read .*kafka\.log"):
        await broken.up(timeout=60)
    assert list(broken.run_dir.glob("*.pid")) == []
