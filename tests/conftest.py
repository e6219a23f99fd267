"""Shared fixtures: one real stack per session, isolated topics and clients per test.

- ``stack`` (session): reuses a stack already answering on the configured ports
  (``DOWNLINK_*`` settings), else starts Kafka and Mosquitto with the launcher in
  a temporary state dir and stops them at the end of the session. It is lazy:
  only tests that need a broker (directly or through ``topics``/factories)
  trigger it, so unit tests run without any server. A broker that cannot be
  started is an error, never a skip; deselect with ``-m "not integration"``.
- ``settings`` (function): Settings with a unique ``topic_prefix`` and temporary
  data/state dirs, so tests never see each other's topics, groups or files.
- ``postgres`` (session): URL of a real PostgreSQL server started for the session.
- ``topics``: every topics.yaml topic created under that prefix (deleted after).
- ``topic_factory``, ``producer_factory``, ``consumer_factory``: started clients
  and ad-hoc topics, all stopped/deleted at teardown.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import NewTopic

from core.settings import Settings
from downlink.stack.launcher import Stack
from downlink.stack.mosquitto import probe_mqtt
from streams.kafka import make_admin, make_consumer, make_producer, probe_kafka
from streams.topics import create_topics, delete_topics, load_topics

#: fixtures that need the real broker; a test using them must be marked integration
_BROKER_FIXTURES = {"stack", "topics", "topic_factory", "producer_factory", "consumer_factory", "postgres"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse unmarked tests that use the broker: `-m "not integration"` must really exclude them."""
    unmarked = [
        item.nodeid
        for item in items
        if _BROKER_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the Kafka/MQTT stack but lack @pytest.mark.integration: " + ", ".join(unmarked)
        )


#: how long the interpreter may take to exit after the session (it joins every worker thread)
EXIT_GRACE_S = 120.0
_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Never let a thread a test left blocked hang the run after the summary.

    Interpreter exit joins every executor thread (``asyncio.to_thread``); one
    blocked for good would stall CI without a word. After EXIT_GRACE_S every
    thread's stack is printed and the process exits with the session's status.
    """
    status = config.stash.get(_EXIT_STATUS, 1)

    def watchdog() -> None:
        time.sleep(EXIT_GRACE_S)
        sys.stderr.write(f"\npytest is still exiting {EXIT_GRACE_S:.0f} s after the session; "
                         "a test left a thread blocked. Stacks:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(status)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()



def base_settings() -> Settings:
    """Settings from the environment (DOWNLINK_*), as the CLI would build them."""
    return Settings.from_env()


@pytest_asyncio.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """Settings of a running stack: reused if already up, else started for this session."""
    settings = base_settings()
    kafka_ok = await probe_kafka(settings) is None
    mqtt_ok = await probe_mqtt(_mqtt_host(settings), _mqtt_port(settings)) is None
    missing = [name for name, ok in (("kafka", kafka_ok), ("mosquitto", mqtt_ok)) if not ok]
    if not missing:
        yield settings
        return
    state_dir = tmp_path_factory.mktemp("stack")
    # start servers where the clients will look for them (bootstrap / MQTT URL win over *_port)
    launcher = Stack(
        settings.replace(state_dir=state_dir, stack_kafka_port=_kafka_port(settings), stack_mqtt_port=_mqtt_port(settings)),
        components=missing,
    )
    # a failure here is an error of every integration test, with the launcher's message
    await launcher.up(timeout=120.0)
    try:
        yield launcher.settings
    finally:
        await asyncio.wait_for(launcher.down(), 120)


def _mqtt_host(settings: Settings) -> str:
    return urlsplit(settings.mqtt.url).hostname or "127.0.0.1"


def _mqtt_port(settings: Settings) -> int:
    return urlsplit(settings.mqtt.url).port or settings.stack.mqtt_port


def _kafka_port(settings: Settings) -> int:
    first = settings.kafka.bootstrap.split(",")[0].strip()
    return int(first.rsplit(":", 1)[1]) if ":" in first else settings.stack.kafka_port


@pytest_asyncio.fixture(scope="session")
async def postgres() -> AsyncIterator[str]:
    """SQLAlchemy URL of a real PostgreSQL server started for this session (Debian package, run as
    the postgres user) on a free port, in a world-searchable temp folder; stopped and removed after."""
    import shutil
    import socket
    import tempfile

    from downlink.stack.postgres import PostgresServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = Path(tempfile.mkdtemp(prefix="downlink-pg-"))
    state.chmod(0o755)
    server = PostgresServer(base_settings().replace(state_dir=state, stack_postgres_port=port))
    await server.start()  # a server that cannot start is an error of the tests using it
    try:
        yield server.url()
    finally:
        await asyncio.wait_for(server.stop(), 120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Per-test Settings: unique topic/group prefix, private data and state dirs (no broker needed)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    data_dir = tmp_path / "data"
    state_dir = tmp_path / "state"
    data_dir.mkdir()
    state_dir.mkdir()
    return base_settings().replace(topic_prefix=prefix, data_dir=data_dir, state_dir=state_dir)


@pytest_asyncio.fixture
async def topics(stack: Settings, settings: Settings) -> AsyncIterator[dict[str, str]]:
    """Create every topics.yaml topic under the test's prefix; maps logical -> physical name."""
    specs = load_topics(settings.topics_file)
    await create_topics(settings, specs)
    names = {name: settings.topic(name) for name in specs}
    try:
        yield names
    finally:
        await delete_topics(settings, names.values())


TopicFactory = Callable[..., Awaitable[str]]


@pytest_asyncio.fixture
async def topic_factory(stack: Settings, settings: Settings) -> AsyncIterator[TopicFactory]:
    """``await topic_factory("name", partitions=1, config={...})`` -> physical topic name."""
    created: list[str] = []

    async def make(name: str | None = None, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        physical = settings.topic(name or f"adhoc.{uuid.uuid4().hex[:6]}")
        admin = make_admin(settings)
        await admin.start()
        try:
            response = await admin.create_topics(
                [NewTopic(physical, partitions, settings.kafka.replication_factor, topic_configs=config or {})]
            )
        finally:
            await admin.close()
        for topic, code, *_ in response.topic_errors:
            if code:
                raise AssertionError(f"could not create topic {topic}: error code {code}")
        created.append(physical)
        return physical

    try:
        yield make
    finally:
        if created:
            await delete_topics(settings, created)


@pytest_asyncio.fixture
async def producer_factory(stack: Settings, settings: Settings) -> AsyncIterator[Callable[..., Awaitable[AIOKafkaProducer]]]:
    """``await producer_factory(transactional_id=None, **overrides)`` -> started producer."""
    producers: list[AIOKafkaProducer] = []

    async def make(**kwargs: Any) -> AIOKafkaProducer:
        producer = make_producer(settings, **kwargs)
        await producer.start()
        producers.append(producer)
        return producer

    try:
        yield make
    finally:
        await asyncio.gather(*(p.stop() for p in producers))


@pytest_asyncio.fixture
async def consumer_factory(stack: Settings, settings: Settings) -> AsyncIterator[Callable[..., Awaitable[AIOKafkaConsumer]]]:
    """``await consumer_factory(*physical_topics, group="g" | None, **overrides)`` -> started consumer.

    ``group`` is a consumer name made unique with ``settings.group``; stopping
    it early is fine (stop is idempotent).
    """
    consumers: list[AIOKafkaConsumer] = []

    async def make(*topic_names: str, group: str | None = None, **kwargs: Any) -> AIOKafkaConsumer:
        consumer = make_consumer(settings, *topic_names, group=settings.group(group) if group else None, **kwargs)
        await consumer.start()
        consumers.append(consumer)
        return consumer

    try:
        yield make
    finally:
        await asyncio.gather(*(c.stop() for c in consumers))
