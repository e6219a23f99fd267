"""One frozen settings object for every command and service.

Values come from, in increasing priority: defaults, ``DOWNLINK_*`` environment
variables, then CLI flags (``Settings.from_env(**overrides)``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from downlink.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "downlink"


@dataclass(frozen=True)
class Settings:
    """Every tunable of downlink; see README 'Configuration'."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    state_dir: Path = Path(".downlink")
    data_dir: Path = Path("data")
    cache_dir: Path = field(default_factory=_default_cache)
    topics_file: Path = REPO_ROOT / "topics.yaml"
    #: prepended to every topic name and consumer group id (tests isolate with it)
    topic_prefix: str = ""
    kafka_version: str = "3.9.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    #: replication factor of topics created from topics.yaml (1 on the single-node local stack)
    topic_replication_factor: int = 1
    mqtt_port: int = 1883
    mqtt_ws_port: int = 9001
    prometheus_port: int = 9090
    #: port for a service's /metrics endpoint (0 = disabled)
    metrics_port: int = 0
    #: raw chunk size published by ingest
    chunk_bytes: int = 1 << 20
    #: how far back (hours) ingest scans downlink.raw for an earlier run of a contact; 0 = whole partition (exact, slower start)
    ingest_lookback_hours: float = 0.0
    #: producer compression (none | gzip | snappy | lz4 | zstd) for control and engineering topics
    kafka_compression: str = "zstd"
    #: compression on the bulk path (raw chunks, science runs). Pixel data compress ~1.1:1 in
    #: flight (JWST.md) and aiokafka's lz4 runs at level 9 (~30 MB/s a core here), zstd-3 at
    #: ~120 MB/s: on loopback or a LAN the CPU costs more than the bytes saved, so default none
    bulk_compression: str = "none"
    #: instance id of a consumer process; its transactional id is downlink.<service>.<instance>,
    #: so a restarted instance fences its dead predecessor (give each replica its own)
    instance: str = "0"
    #: largest Kafka message a producer may send (broker is configured to match)
    max_message_bytes: int = 16 << 20
    #: an open exposure with no new packet for this long is written as partial L0
    l0_quiet_seconds: float = 600.0
    #: after every contact that carried an incomplete exposure has ended, wait this long, then write it partial
    l0_eoc_margin_seconds: float = 5.0
    #: ``downlink run --until-idle`` exits after every consumer was idle this long
    idle_seconds: float = 2.0
    #: engineering dictionary (YAML); default is the one shipped in streams/data
    dictionary_file: Path = REPO_ROOT / "streams" / "data" / "eng_dictionary.yaml"
    log_format: str = "kv"  # kv | json
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from ``DOWNLINK_<FIELD>`` variables, then overrides (None = unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"DOWNLINK_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in {f.name for f in fields(cls)}:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.chunk_bytes <= 0 or self.chunk_bytes > self.max_message_bytes // 2:
            raise ConfigError(
                f"chunk_bytes={self.chunk_bytes} must be positive and at most half of "
                f"max_message_bytes={self.max_message_bytes}; set DOWNLINK_CHUNK_BYTES"
            )
        for name in ("kafka_compression", "bulk_compression"):
            if getattr(self, name) not in ("none", "gzip", "snappy", "lz4", "zstd"):
                raise ConfigError(f"DOWNLINK_{name.upper()} must be none, gzip, snappy, lz4 or zstd")
        if self.log_format not in ("kv", "json"):
            raise ConfigError("DOWNLINK_LOG_FORMAT must be 'kv' or 'json'")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def compression_type(self, bulk: bool = False) -> str | None:
        """aiokafka ``compression_type`` for control topics, or for the bulk path."""
        name = self.bulk_compression if bulk else self.kafka_compression
        return None if name == "none" else name

    def topic(self, name: str) -> str:
        """Physical topic name for a logical one from topics.yaml."""
        return f"{self.topic_prefix}{name}"

    def group(self, consumer: str) -> str:
        """Consumer group id of a service."""
        return f"{self.topic_prefix}downlink.{consumer}"

    def dump(self) -> dict[str, str]:
        """Printable view; hides credentials embedded in URLs."""
        out = {}
        for f in fields(self):
            value = str(getattr(self, f.name))
            if "://" in value and "@" in value:
                scheme, rest = value.split("://", 1)
                value = f"{scheme}://***@{rest.split('@', 1)[1]}"
            out[f.name] = value
        return out


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError:
        raise ConfigError(f"DOWNLINK_{f.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
