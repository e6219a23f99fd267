"""Apache Kafka in KRaft mode, single node (broker + controller), from Maven Central jars.

There is no Docker engine on our machines, so the broker runs straight from
the jars Maven copies into ``<cache_dir>/kafka-<version>/libs`` (shared by every
checkout) with a config generated under ``<state_dir>/kafka``.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import logging
import shutil
import uuid
from pathlib import Path

from core.errors import StackError
from core.settings import TXN_ABORT_SWEEP_MS, Settings
from downlink.stack.component import Component
from streams.kafka import BROKER_HEADROOM, probe_kafka

log = logging.getLogger(__name__)

POM = Path(__file__).with_name("kafka-pom.xml")
#: the jar whose presence proves the broker itself was fetched
_BROKER_JAR = "kafka_2.13-{version}.jar"


def kafka_home(settings: Settings) -> Path:
    """Cache folder of one Kafka version (outside the repository, shared by checkouts)."""
    return settings.cache_dir / f"kafka-{settings.kafka.version}"


def _marker_text(settings: Settings) -> str:
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    return f"kafka {settings.kafka.version} pom-sha256 {digest}\n"


def fetched(settings: Settings) -> bool:
    """Whether a complete fetch of this version (with the current pom) is cached."""
    home = kafka_home(settings)
    marker = home / ".fetched"
    return (
        marker.is_file()
        and marker.read_text() == _marker_text(settings)
        and (home / "libs" / _BROKER_JAR.format(version=settings.kafka.version)).is_file()
    )


async def fetch(settings: Settings) -> bool:
    """Copy the Kafka runtime jars from Maven into the cache; returns False if already there (warm).

    A marker file is written only after Maven succeeded, so an interrupted
    fetch is redone. A lock file serialises concurrent fetches of one cache.
    """
    if fetched(settings):
        return False
    home = kafka_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if fetched(settings):
            return False
        argv = [
            "mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={home / 'libs'}", "-DincludeScope=runtime",
            f"-Dkafka.version={settings.kafka.version}",
            # never rewrite a jar in place: a running broker may have it open
            "-DoverWriteIfNewer=false",
        ]
        log.info("fetching Kafka jars with Maven", extra={"version": settings.kafka.version, "dest": str(home)})
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except FileNotFoundError:
            raise StackError("mvn (Maven) not found; run `make setup` or `apt-get install maven`") from None
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            text = output.decode(errors="replace").strip().splitlines()
            raise StackError(
                f"Maven could not fetch Kafka {settings.kafka.version} (exit {proc.returncode}); "
                f"command: {' '.join(argv)}\n" + "\n".join(text[-20:])
            )
        (home / ".fetched").write_text(_marker_text(settings))
    return True


def cluster_id() -> str:
    """A fresh KRaft cluster id (22 characters of url-safe base64, like `kafka-storage random-uuid`)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class Kafka(Component):
    name = "kafka"
    grace = 30.0  # a controlled shutdown flushes logs and writes checkpoints

    @property
    def ports(self) -> list[int]:
        return [self.settings.stack.kafka_port, self.settings.stack.kafka_controller_port]

    @property
    def libs(self) -> Path:
        return kafka_home(self.settings) / "libs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def missing(self) -> str | None:
        if shutil.which("java") is None:
            return "java not found on PATH; run `make setup` (Debian package default-jre-headless)"
        return None

    def server_properties(self) -> str:
        s = self.settings
        max_bytes = s.kafka.max_message_bytes + BROKER_HEADROOM
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{s.stack.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{s.stack.kafka_port},CONTROLLER://127.0.0.1:{s.stack.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.stack.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "message.max.bytes": str(max_bytes),
            "replica.fetch.max.bytes": str(max_bytes),
            "offset.metadata.max.bytes": "65536",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            # sweep timed-out transactions every second (default 10 s): with the clients'
            # transaction timeout below their session timeout, a paused replica's open
            # transaction is aborted before its partitions move (core/settings.py)
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": str(TXN_ABORT_SWEEP_MS),
            "group.initial.rebalance.delay.ms": "0",
            "min.insync.replicas": "1",
            # two cores: fewer threads than the defaults sized for servers
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "2",
            "log.retention.check.interval.ms": "60000",
        }
        return "# generated by `downlink stack up`; edits are overwritten\n" + "".join(
            f"{key}={value}\n" for key, value in lines.items()
        )

    def log4j_properties(self) -> str:
        return (
            "# generated by `downlink stack up`: everything to stdout, which the launcher sends to kafka.log\n"
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.request.logger=WARN\n"
            "log4j.logger.state.change.logger=WARN\n"
            "log4j.logger.kafka.controller=INFO\n"
            "log4j.logger.org.apache.kafka.clients=WARN\n"
        )

    async def prepare(self) -> str:
        cold = await fetch(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(self.server_properties())
        (self.home / "log4j.properties").write_text(self.log4j_properties())
        if not (self.data_dir / "meta.properties").is_file():
            await self._format()
        return "Kafka jars fetched (cold cache)" if cold else "Kafka jars cached (warm)"

    async def _format(self) -> None:
        """Initialise KRaft storage once per state dir (static quorum: no --standalone)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "java", f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            "-cp", f"{self.libs}/*", "kafka.tools.StorageTool", "format",
            # one argument: an id may start with '-' (1 in 64), which argparse takes for an option
            f"--cluster-id={cluster_id()}", "-c", str(self.home / "server.properties"),
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await proc.communicate()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as handle:
            handle.write(b"==> kafka.tools.StorageTool format\n" + output)
        if proc.returncode != 0:
            raise StackError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {proc.returncode}); "
                f"read {self.log_file}"
            )

    def argv(self) -> list[str]:
        return [
            "java", f"-Xmx{self.settings.stack.kafka_heap}", f"-Xms{self.settings.stack.kafka_heap}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.home / "server.properties"),
        ]

    async def probe(self) -> str | None:
        return await probe_kafka(self.settings.replace(kafka_bootstrap=f"127.0.0.1:{self.settings.stack.kafka_port}"))
