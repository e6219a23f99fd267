"""One frozen settings object for every command and service, in sections.

Values come from, in increasing priority: defaults, ``DOWNLINK_*`` environment
variables, then CLI flags (``Settings.from_env(**overrides)``). A field of a
section is ``DOWNLINK_<SECTION>_<FIELD>`` in the environment and
``<section>_<field>`` as an override (``DOWNLINK_L0_QUIET_SECONDS`` ->
``settings.l0.quiet_seconds``); top-level fields drop the section
(``DOWNLINK_DATA_DIR``). Everything is validated once, at start: a bad value
is a :class:`~core.errors.ConfigError` naming the variable, never a crash
deep inside a service.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


#: the broker's sweep of timed-out transactions (transaction.abort.timed.out.transaction.cleanup.
#: interval.ms), as our stack and docker/compose.yaml configure it
TXN_ABORT_SWEEP_MS = 1_000


@dataclass(frozen=True)
class Secret:
    """A credential: never printed, logged or dumped; ``.reveal()`` where it is really used."""

    _value: str = ""

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


def _n(default: Any, *, gt: float | None = None, ge: float | None = None,
       le: float | None = None, doc: str = "") -> Any:
    """A numeric field with bounds checked by :meth:`Settings.validate`."""
    return field(default=default, metadata={"gt": gt, "ge": ge, "le": le, "doc": doc})


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    #: Apache Kafka release the local stack fetches and runs
    version: str = "3.9.1"
    #: producer compression for control and engineering topics
    compression: str = "zstd"
    #: compression on the bulk path (raw chunks, science runs). Pixel data compress ~1.1:1 and
    #: aiokafka's lz4 runs at level 9 (~30 MB/s a core here): on loopback or a LAN the CPU costs
    #: more than the bytes saved, so none by default
    bulk_compression: str = "none"
    #: largest message a producer may send (the broker and topics.yaml are configured to match)
    max_message_bytes: int = _n(16 << 20, ge=1 << 20)
    #: replication factor of topics created from topics.yaml (1 on the single-node local stack)
    replication_factor: int = _n(1, ge=1)
    #: consumers' requests (a JoinGroup may wait for the whole group)
    request_timeout_ms: int = _n(40_000, gt=0)
    #: producers' requests: below transaction_timeout_ms, so a produce that hangs fails on the
    #: client (and is redone) before the broker aborts the transaction under it
    producer_request_timeout_ms: int = _n(8_000, gt=0)
    #: below session_timeout_ms, with the broker's abort sweep
    #: (transaction.abort.timed.out.transaction.cleanup.interval.ms, 1 s in our stack) inside the
    #: difference: a transaction left open by a replica paused long enough to lose its partitions
    #: is aborted by the broker before anyone else owns them, so its commit can never land later
    #: (zombie fencing, docs/faults.md)
    transaction_timeout_ms: int = _n(12_000, gt=0)
    session_timeout_ms: int = _n(15_000, gt=0)
    heartbeat_interval_ms: int = _n(2_000, gt=0)
    max_poll_interval_ms: int = _n(600_000, gt=0)
    #: how long a partition revoke may wait for the batch in flight before it is abandoned
    revoke_timeout_seconds: float = _n(10.0, gt=0)
    #: first and largest pause between retries of a retriable failure (broker down, disk full)
    retry_backoff_seconds: float = _n(0.5, gt=0)
    retry_backoff_max_seconds: float = _n(10.0, gt=0)
    #: consumed bytes of processed batches that may wait for the transaction in flight; they ride
    #: the next transaction together (group commit), so a slow commit does not stall processing
    commit_queue_bytes: int = _n(32 << 20, gt=0)


@dataclass(frozen=True)
class StackSettings:
    """Ports and sizes of the local stack (``downlink stack up``)."""

    kafka_port: int = _n(9092, gt=0, le=65535)
    kafka_controller_port: int = _n(9093, gt=0, le=65535)
    kafka_heap: str = "512m"
    mqtt_port: int = _n(1883, gt=0, le=65535)
    mqtt_ws_port: int = _n(9001, gt=0, le=65535)
    prometheus_port: int = _n(9090, gt=0, le=65535)
    postgres_port: int = _n(55432, gt=0, le=65535)


@dataclass(frozen=True)
class IngestSettings:
    #: raw chunk size published by ingest (at most half of kafka.max_message_bytes)
    chunk_bytes: int = _n(1 << 20, gt=0)
    #: how far back (hours) ingest scans downlink.raw for an earlier run of a contact; 0 = whole partition
    lookback_hours: float = _n(0.0, ge=0)
    #: live feeds (paced files, the TCP listener): publish real-time engineering at reception
    #: (consumers/ingest/tap.py) instead of leaving it to demux
    realtime_tap: bool = True
    #: a live feed is read (and tapped) in pieces of at most this many bytes (~5 ms at 28 Mbit/s)
    tap_read_bytes: int = _n(16 << 10, gt=0)
    #: the tap also sends each sequence gap of a live feed to ops.alerts at reception
    tap_gap_alerts: bool = True


@dataclass(frozen=True)
class DemuxSettings:
    #: an alert burst per (contact, APID, type) is coalesced into one message per window
    alert_window_seconds: float = _n(1.0, gt=0)
    #: a packet more than outlier_min_jump counts from the previous one, while each of the next
    #: outlier_confirm_packets packets continues the sequence without it, is one isolated outlier
    outlier_min_jump: int = _n(16, ge=1, le=4096)
    outlier_confirm_packets: int = _n(3, ge=1, le=64)
    #: missing-count ranges kept per (APID, source) stream; older ones are folded into one coarse range
    max_gap_ranges: int = _n(1024, ge=8)
    #: ranges of one coalesced alert at most (the rest are counted in its detail)
    alert_max_ranges: int = _n(256, ge=1)


@dataclass(frozen=True)
class L0Settings:
    #: an open exposure with no new packet for this long is written as a partial version
    quiet_seconds: float = _n(600.0, gt=0)
    #: once every contact that carried an incomplete exposure ended, wait this long, then write it partial
    eoc_margin_seconds: float = _n(5.0, ge=0)
    #: largest exposure accepted (NINTS x NGROUPS x NY x NX x 2 bytes); bigger starts are rejected
    max_exposure_bytes: int = _n(4 << 30, gt=0)
    max_nints: int = _n(1000, ge=1, le=65535)
    max_ngroups: int = _n(1000, ge=1, le=65535)


@dataclass(frozen=True)
class RunSettings:
    #: ``downlink run --until-idle`` exits after every consumer was idle this long
    idle_seconds: float = _n(2.0, gt=0)
    #: niceness of a process that runs only bulk work (l0, l1b, calibrate, archive, an unpaced
    #: ingest): real-time telemetry keeps the CPU when the machine is saturated; 0 = unchanged
    bulk_nice: int = _n(10, ge=0, le=19)


@dataclass(frozen=True)
class MetricsSettings:
    #: port of a service's /metrics endpoint (0 = disabled)
    port: int = _n(0, ge=0, le=65535)
    #: bind address (0.0.0.0 in containers, where Prometheus scrapes from another host)
    host: str = "127.0.0.1"
    #: period of the runner's sampler (consumer lag per partition, data disk free)
    sample_seconds: float = _n(2.0, gt=0)


@dataclass(frozen=True)
class MqttSettings:
    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password: Secret = field(default_factory=Secret)


@dataclass(frozen=True)
class ArchiveSettings:
    #: SQLAlchemy URL; empty = SQLite file under the data dir
    database_url: Secret = field(default_factory=Secret)
    api_host: str = "127.0.0.1"
    api_port: int = _n(8000, gt=0, le=65535)
    #: exclusive access period of a program registered without one (0, 3, 6 or 12)
    default_period_months: int = _n(12, ge=0, le=12)
    #: lifetime of an API token issued by `downlink users add | token`
    token_days: float = _n(365.0, gt=0)
    #: largest page of a product search; engineering points returned at most per request
    max_page_size: int = _n(1000, ge=1)
    max_eng_points: int = _n(100_000, ge=10)
    #: largest contributed product accepted by the upload endpoint
    max_upload_bytes: int = _n(2 << 30, ge=1 << 10)


@dataclass(frozen=True)
class CalibrateSettings:
    #: reference files and contexts (empty = <data dir>/refs)
    refs_dir: str = ""
    #: pinned reference context (empty = the newest, "best")
    context: str = ""
    #: programs whose exposures take the ToO lane (comma-separated program numbers)
    too_programs: str = ""
    #: worker processes for calibration (CPU-heavy numpy work)
    workers: int = _n(1, ge=1, le=64)
    #: detector rows per processing block: bounds a calibration's memory whatever the exposure size
    block_rows: int = _n(64, ge=1, le=4096)
    #: requests taken from cal.requests and held in the in-service priority queue at most
    max_queued: int = _n(256, ge=1)
    #: where products go (empty = <data dir>/cal)
    out_dir: str = ""


@dataclass(frozen=True)
class RealtimeSettings:
    #: values older than this are not published as current state
    max_age_seconds: float = _n(60.0, gt=0)
    #: a limit transition needs this many consecutive samples beyond (or back inside) a limit
    limit_persistence: int = _n(1, ge=1, le=1000)
    #: dead band to leave a limit: this fraction of the limit pair's width (hi - lo) inside it
    limit_deadband: float = _n(0.02, ge=0, le=0.25)
    #: a parameter is stale once its APID has been silent for this many sampling periods
    stale_periods: float = _n(3.0, gt=1)
    #: (sequence count, packet time) keys remembered per APID to drop at-least-once repeats
    dedupe_window: int = _n(4096, ge=16)
    #: period of the jwst/status/realtime heartbeat
    heartbeat_seconds: float = _n(2.0, gt=0)
    #: first and largest pause between MQTT reconnection attempts
    reconnect_min_seconds: float = _n(0.2, gt=0)
    reconnect_max_seconds: float = _n(5.0, gt=0)
    #: alerts held while the broker is away (oldest dropped beyond this, counted)
    alert_queue: int = _n(10_000, ge=1)
    #: samples queued for MQTT while connected; beyond it (or while away) only the latest per parameter
    publish_queue: int = _n(100_000, ge=1)
    #: root of every MQTT topic
    topic_root: str = "jwst"
    #: MQTT-over-WebSocket URL the dashboard's browser connects to
    ws_url: str = "ws://127.0.0.1:9001"
    #: archive API base URL the dashboard reads history from (empty = the archive section's host:port)
    archive_url: str = ""
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = _n(8080, gt=0, le=65535)


SECTIONS: dict[str, type] = {
    "kafka": KafkaSettings, "stack": StackSettings, "ingest": IngestSettings,
    "demux": DemuxSettings, "l0": L0Settings, "run": RunSettings, "metrics": MetricsSettings,
    "mqtt": MqttSettings, "archive": ArchiveSettings, "calibrate": CalibrateSettings,
    "realtime": RealtimeSettings,
}


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "downlink"


@dataclass(frozen=True)
class Settings:
    """Every tunable of downlink; README "Configuration" lists them."""

    state_dir: Path = Path(".downlink")
    data_dir: Path = Path("data")
    cache_dir: Path = field(default_factory=_default_cache)
    topics_file: Path = REPO_ROOT / "topics.yaml"
    #: engineering dictionary (YAML); default is the one shipped in streams/data
    dictionary_file: Path = REPO_ROOT / "streams" / "data" / "eng_dictionary.yaml"
    #: prepended to every topic name and consumer group id (tests isolate with it)
    topic_prefix: str = ""
    #: instance id of a consumer process: its transactional id and static group membership
    #: derive from it, so a restarted instance fences its dead predecessor (one per replica)
    instance: str = "0"
    log_format: str = "kv"  # kv | json
    log_level: str = "INFO"
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    stack: StackSettings = field(default_factory=StackSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    demux: DemuxSettings = field(default_factory=DemuxSettings)
    l0: L0Settings = field(default_factory=L0Settings)
    run: RunSettings = field(default_factory=RunSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    calibrate: CalibrateSettings = field(default_factory=CalibrateSettings)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then ``DOWNLINK_*`` variables, then overrides (None = not given); validated."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, f in _flat_fields().items():
            raw = env.get(f"DOWNLINK_{name.upper()}")
            if raw is not None:
                values[name] = _coerce(name, f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls()._with(values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some values changed: flat names (``l0_quiet_seconds``) or whole sections."""
        return self._with(changes)

    def _with(self, changes: dict[str, Any]) -> "Settings":
        flat = _flat_fields()
        top: dict[str, Any] = {}
        per_section: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if key in SECTIONS and isinstance(value, SECTIONS[key]):
                top[key] = value
            elif key in flat:
                section, _, name = _split(key)
                if section is None:
                    top[key] = value
                else:
                    if isinstance(value, str) and flat[key].type in ("Secret", Secret):
                        value = Secret(value)
                    per_section.setdefault(section, {})[name] = value
            else:
                raise ConfigError(f"unknown setting {key!r}; see README 'Configuration'")
        for section, vals in per_section.items():
            base = top.get(section, getattr(self, section))
            top[section] = dataclasses.replace(base, **vals)
        return dataclasses.replace(self, **top)

    def validate(self) -> None:
        """Bounds of every numeric field, then the rules that tie fields together."""
        for name, f in _flat_fields().items():
            value = self.get(name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"DOWNLINK_{name.upper()}={value} must be a finite number")
            meta = f.metadata
            for bound, ok, text in (("gt", lambda v, b: v > b, "greater than"),
                                    ("ge", lambda v, b: v >= b, "at least"),
                                    ("le", lambda v, b: v <= b, "at most")):
                b = meta.get(bound)
                if b is not None and not ok(value, b):
                    raise ConfigError(f"DOWNLINK_{name.upper()}={value} must be {text} {b}")
        k = self.kafka
        if self.ingest.chunk_bytes > k.max_message_bytes // 2:
            raise ConfigError(
                f"DOWNLINK_INGEST_CHUNK_BYTES={self.ingest.chunk_bytes} must be at most half of "
                f"DOWNLINK_KAFKA_MAX_MESSAGE_BYTES={k.max_message_bytes}")
        if k.transaction_timeout_ms <= k.producer_request_timeout_ms:
            raise ConfigError(
                f"DOWNLINK_KAFKA_TRANSACTION_TIMEOUT_MS={k.transaction_timeout_ms} must exceed "
                f"DOWNLINK_KAFKA_PRODUCER_REQUEST_TIMEOUT_MS={k.producer_request_timeout_ms}: a "
                "transaction that times out first aborts work the broker would have accepted")
        if k.transaction_timeout_ms + TXN_ABORT_SWEEP_MS >= k.session_timeout_ms:
            raise ConfigError(
                f"DOWNLINK_KAFKA_TRANSACTION_TIMEOUT_MS={k.transaction_timeout_ms} must be at least "
                f"{TXN_ABORT_SWEEP_MS} ms below DOWNLINK_KAFKA_SESSION_TIMEOUT_MS="
                f"{k.session_timeout_ms}: a replica paused past the session timeout could otherwise "
                "still commit the transaction it left open (docs/faults.md, zombie fencing)")
        if k.heartbeat_interval_ms * 3 > k.session_timeout_ms:
            raise ConfigError("DOWNLINK_KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of "
                              "DOWNLINK_KAFKA_SESSION_TIMEOUT_MS")
        if k.retry_backoff_seconds > k.retry_backoff_max_seconds:
            raise ConfigError("DOWNLINK_KAFKA_RETRY_BACKOFF_SECONDS must not exceed "
                              "DOWNLINK_KAFKA_RETRY_BACKOFF_MAX_SECONDS")
        for name in ("compression", "bulk_compression"):
            if getattr(k, name) not in COMPRESSIONS:
                raise ConfigError(f"DOWNLINK_KAFKA_{name.upper()} must be one of {', '.join(COMPRESSIONS)}")
        if self.log_format not in ("kv", "json"):
            raise ConfigError("DOWNLINK_LOG_FORMAT must be 'kv' or 'json'")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("DOWNLINK_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        if "://" not in self.mqtt.url:
            raise ConfigError(f"DOWNLINK_MQTT_URL={self.mqtt.url!r} must look like mqtt://host:1883")

    # access ----------------------------------------------------------------------------------
    def get(self, flat_name: str) -> Any:
        section, _, name = _split(flat_name)
        return getattr(self, flat_name) if section is None else getattr(getattr(self, section), name)

    def compression_type(self, bulk: bool = False) -> str | None:
        """aiokafka ``compression_type`` for control topics, or for the bulk path."""
        name = self.kafka.bulk_compression if bulk else self.kafka.compression
        return None if name == "none" else name

    def topic(self, name: str) -> str:
        """Physical topic name for a logical one from topics.yaml."""
        return f"{self.topic_prefix}{name}"

    def group(self, consumer: str) -> str:
        """Consumer group id of a service."""
        return f"{self.topic_prefix}downlink.{consumer}"

    def dump(self) -> dict[str, str]:
        """Printable view, flat names; secrets and credentials embedded in URLs are hidden."""
        out = {}
        for name in _flat_fields():
            value = self.get(name)
            text = str(value)
            if "://" in text and "@" in text:
                scheme, rest = text.split("://", 1)
                text = f"{scheme}://***@{rest.split('@', 1)[1]}"
            out[name] = text
        return out


@functools.cache
def _split(flat: str) -> tuple[str | None, str, str]:
    for section in SECTIONS:
        if flat.startswith(section + "_") and flat[len(section) + 1:] in {
                f.name for f in fields(SECTIONS[section])}:
            return section, "_", flat[len(section) + 1:]
    return None, "", flat


@functools.cache
def _flat_fields() -> dict[str, dataclasses.Field]:
    """Every leaf setting by its flat name (``kafka_bootstrap``, ``data_dir``...)."""
    out: dict[str, dataclasses.Field] = {}
    for f in fields(Settings):
        if f.name in SECTIONS:
            for sf in fields(SECTIONS[f.name]):
                out[f"{f.name}_{sf.name}"] = sf
        else:
            out[f.name] = f
    return out


def _coerce(name: str, f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "Secret":
            return Secret(raw)
    except ValueError:
        raise ConfigError(f"DOWNLINK_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
