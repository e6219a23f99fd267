"""The stack launcher with real processes: status, idempotent up, clean down, clear failures.

Lifecycle tests run a SECOND stack on free ports in a private state dir, so the
session's stack (possibly a developer's) is never touched. PostgreSQL (a real
server, run as the postgres user) joins the stack only when asked
(``--with postgres``) or configured as the archive's database.
"""

from __future__ import annotations

import os
import socket
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
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
                 "stack_mqtt_port", "stack_mqtt_ws_port", "stack_prometheus_port", "stack_postgres_port",
                 "state_dir"):
        env[f"DOWNLINK_{name.upper()}"] = str(settings.get(name))
    env.pop("DOWNLINK_ARCHIVE_DATABASE_URL", None)
    if settings.archive.database_url.reveal():
        env["DOWNLINK_ARCHIVE_DATABASE_URL"] = settings.archive.database_url.reveal()
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


@pytest.fixture
def pg_state() -> Iterator[Path]:
    """A state dir the postgres user can reach (pytest's tmp_path is mode 0700 under root)."""
    state = Path(tempfile.mkdtemp(prefix="downlink-stack-pg-"))
    state.chmod(0o755)
    try:
        yield state
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_postgres_joins_the_stack_only_when_asked_or_configured(stack: Settings, tmp_path: Path) -> None:
    base = stack.replace(state_dir=tmp_path, archive_database_url="")
    names = lambda st: [c.name for c in st.components]  # noqa: E731
    assert "postgres" not in names(Stack(base))
    assert names(Stack(base, extras=["postgres"]))[-1] == "postgres"
    assert Stack(base, extras=["postgres"]).required == ["kafka", "mosquitto", "postgres"]
    local = Stack(base.replace(archive_database_url="postgresql://arch:pw@127.0.0.1:54321/cat"))
    assert "postgres" in names(local) and "postgres" in local.required
    assert local.settings.stack.postgres_port == 54321  # where the archive will look
    pg = local.component("postgres")
    assert (pg.user, pg.database) == ("arch", "cat")
    elsewhere = Stack(base.replace(archive_database_url="postgresql+psycopg://arch:pw@db.example:5432/cat"))
    assert "postgres" not in names(elsewhere)
    assert "postgres" not in names(Stack(base.replace(archive_database_url="sqlite:///x.sqlite")))
    with pytest.raises(StackError, match="unknown stack component"):
        Stack(base, extras=["redis"])


async def test_stack_up_starts_the_configured_postgres_and_down_stops_it(stack: Settings, pg_state: Path) -> None:
    """The archive configured for a local PostgreSQL: `stack up` runs it with the URL's role, password,
    database and port, the archive migrates and writes there, `stack status` shows it, `down` stops it."""
    from sqlalchemy import create_engine, text

    from consumers.archive import db

    pg_port, = free_ports(1)
    url = f"postgresql://archivist:s3cret%2Fpw@127.0.0.1:{pg_port}/catalogue"
    settings = second_stack_settings(stack, pg_state).replace(archive_database_url=url)
    try:
        up = cli(settings, "stack", "up", "--timeout", "180")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "postgres" in up.stdout and "s3cret" not in up.stdout + up.stderr
        status = cli(settings, "stack", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        row = next(line for line in status.stdout.splitlines() if " postgres " in line)
        assert "running" in row and str(pg_port) in row and " yes " in row

        db.migrate(settings)  # the archive's own path: Alembic through the configured URL
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT current_user, current_database()")).one() == ("archivist",
                                                                                             "catalogue")
                assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        finally:
            engine.dispose()
        record = Stack(settings).pid_file(Stack(settings).component("postgres")).read()
        assert record is not None and alive(record)

        again = cli(settings, "stack", "up")  # idempotent: the cluster and the server are reused
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    finally:
        down = cli(settings, "stack", "down")
    assert down.returncode == 0 and "postgres" in down.stdout, down.stdout + down.stderr
    assert not alive(record) and not port_open(pg_port)
    assert "database system is shut down" in (pg_state / "logs" / "postgres.log").read_text()
    after = cli(settings, "stack", "status")
    assert after.returncode == 1  # configured but stopped: the archive has no database
    assert "stopped" in next(line for line in after.stdout.splitlines() if " postgres " in line)


async def test_with_postgres_then_plain_status_and_down(stack: Settings, pg_state: Path) -> None:
    """`--with postgres` (no URL configured): a random password in a 0600 url file the archive can use;
    a later plain `status` and `down` know the running server without being asked."""
    import psycopg

    pg_port, = free_ports(1)
    settings = second_stack_settings(stack, pg_state).replace(stack_postgres_port=pg_port, archive_database_url="")
    started = Stack(settings, ["mosquitto"], extras=["postgres"])
    try:
        report = await started.up(timeout=120)
        assert set(report.started) == {"mosquitto", "postgres"}
        pg = started.component("postgres")
        url_file = pg.url_file
        assert url_file.stat().st_mode & 0o077 == 0
        url = url_file.read_text().strip()
        async with await psycopg.AsyncConnection.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            assert (await (await conn.execute("SELECT current_database()")).fetchone()) == ("downlink",)
        plain = Stack(settings)  # no --with, no URL: still part of status and down while it runs
        rows = {row.name: row for row in await plain.status()}
        assert rows["postgres"].state == "running" and rows["postgres"].healthy
        assert "postgres" not in plain.required
        record = plain.pid_file(pg).read()
    finally:
        stopped = await Stack(settings).down()
    assert "postgres" in stopped and not alive(record) and not port_open(pg_port)
    assert "postgres" not in [c.name for c in Stack(settings).components]
