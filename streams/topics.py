"""Topic declarations (topics.yaml) and their idempotent creation on the broker.

Topics are data, validated before anything starts: a malformed topics.yaml
fails with the file, line and field at fault rather than with a broker error
half-way through a deployment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from aiokafka.admin import NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from core.errors import ConfigError, KafkaUnavailable
from core.settings import REPO_ROOT, Settings
from streams.kafka import kafka_log_file, make_admin

log = logging.getLogger(__name__)

#: the repository's topics.yaml (``settings.topics_file`` names the one in use)
DEFAULT_TOPICS_FILE = REPO_ROOT / "topics.yaml"
CLEANUP_POLICIES = ("delete", "compact", "compact,delete", "delete,compact")
_FIELDS = {
    "partitions": int,
    "retention_ms": int,
    "cleanup_policy": str,
    "key": str,
    "schema": str,
    "config": dict,
}
_OPTIONAL = {"config"}
_ERR_TOPIC_EXISTS = 36
_ERR_UNKNOWN_TOPIC = 3


@dataclass(frozen=True)
class TopicSpec:
    """One topic as declared in topics.yaml (logical name; see ``Settings.topic``)."""

    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str
    key: str
    schema: str
    config: dict[str, str] = field(default_factory=dict)

    @property
    def schemas(self) -> frozenset[str]:
        """Envelope schemas the topic carries (``schema: a, b`` declares several)."""
        return frozenset(part.strip() for part in self.schema.split(",") if part.strip())

    def kafka_configs(self) -> dict[str, str]:
        """Every topic-level config this declaration fixes, as Kafka strings."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy, **self.config}

    def __hash__(self) -> int:  # config is a dict; identity is the name
        return hash(self.name)


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _scalar(path: Path, node: yaml.Node, topic: str, name: str, kind: type) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{_where(path, node)}: topic {topic!r} field {name!r} must be a {kind.__name__}")
    value = yaml.safe_load(yaml.serialize(node))
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(
            f"{_where(path, node)}: topic {topic!r} field {name!r} must be an integer, got {node.value!r}"
        )
    if kind is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{_where(path, node)}: topic {topic!r} field {name!r} must be a non-empty string"
            )
    return value


def _parse_topic(path: Path, name_node: yaml.Node, node: yaml.Node) -> TopicSpec:
    name = str(name_node.value)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(path, node)}: topic {name!r} must be a mapping of fields {sorted(_FIELDS)}")
    values: dict[str, Any] = {}
    nodes: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in _FIELDS:
            raise ConfigError(
                f"{_where(path, key_node)}: topic {name!r} has unknown field {key!r} "
                f"(allowed: {', '.join(sorted(_FIELDS))})"
            )
        if key in values:
            raise ConfigError(f"{_where(path, key_node)}: topic {name!r} field {key!r} given twice")
        nodes[key] = value_node
        if key == "config":
            values[key] = _parse_config(path, name, value_node)
        else:
            values[key] = _scalar(path, value_node, name, key, _FIELDS[key])
    missing = [f for f in _FIELDS if f not in values and f not in _OPTIONAL]
    if missing:
        raise ConfigError(f"{_where(path, name_node)}: topic {name!r} is missing field {missing[0]!r}")

    def bad(field_name: str, why: str) -> ConfigError:
        return ConfigError(f"{_where(path, nodes[field_name])}: topic {name!r} field {field_name!r} {why}")

    if values["partitions"] < 1:
        raise bad("partitions", "must be at least 1")
    if values["retention_ms"] < -1 or values["retention_ms"] == 0:
        raise bad("retention_ms", "must be positive or -1 (forever)")
    if values["cleanup_policy"] not in CLEANUP_POLICIES:
        raise bad("cleanup_policy", f"is {values['cleanup_policy']!r}; use one of {', '.join(CLEANUP_POLICIES)}")
    return TopicSpec(name=name, **values)


def _parse_config(path: Path, name: str, node: yaml.Node) -> dict[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(path, node)}: topic {name!r} field 'config' must be a mapping")
    config: dict[str, str] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if not isinstance(value_node, yaml.ScalarNode) or value_node.value == "":
            raise ConfigError(f"{_where(path, value_node)}: topic {name!r} field 'config.{key}' must be a scalar value")
        if key in ("retention.ms", "cleanup.policy"):
            raise ConfigError(
                f"{_where(path, key_node)}: topic {name!r} field 'config.{key}' duplicates a top-level field; "
                "use retention_ms / cleanup_policy"
            )
        if key in config:
            raise ConfigError(f"{_where(path, key_node)}: topic {name!r} field 'config.{key}' given twice")
        config[key] = str(value_node.value)
    return config


def load_topics(path: Path | str | None = None) -> dict[str, TopicSpec]:
    """Parse and validate topics.yaml (default: the repository's) into specs by logical name."""
    path = Path(path) if path is not None else DEFAULT_TOPICS_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read topics file ({exc.strerror})") from exc
    try:
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else "?"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem or exc}") from exc
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:1: expected a mapping with a 'topics' field")
    topics_node = None
    for key_node, value_node in root.value:
        if key_node.value != "topics":
            raise ConfigError(f"{_where(path, key_node)}: unknown top-level field {key_node.value!r} (only 'topics')")
        topics_node = value_node
    if topics_node is None:
        raise ConfigError(f"{path}:1: missing top-level field 'topics'")
    if not isinstance(topics_node, yaml.MappingNode) or not topics_node.value:
        raise ConfigError(f"{_where(path, topics_node)}: field 'topics' must be a non-empty mapping of topic names")
    specs: dict[str, TopicSpec] = {}
    for name_node, body in topics_node.value:
        name = str(name_node.value)
        if name in specs:
            raise ConfigError(f"{_where(path, name_node)}: topic {name!r} declared twice")
        if not name or any(c not in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-" for c in name):
            raise ConfigError(f"{_where(path, name_node)}: topic name {name!r} may only use letters, digits, '.', '_', '-'")
        specs[name] = _parse_topic(path, name_node, body)
    return specs


def _raise_for_errors(action: str, errors: Iterable[tuple[Any, ...]], tolerate: set[int]) -> None:
    for item in errors:
        topic, code = item[0], item[1]
        if code and code not in tolerate:
            message = item[2] if len(item) > 2 and item[2] else ""
            raise ConfigError(f"cannot {action} topic {topic!r}: {for_code(code).__name__} {message}".rstrip())


async def create_topics(settings: Settings, specs: dict[str, TopicSpec] | Iterable[TopicSpec] | None = None) -> list[str]:
    """Make the broker match the declarations; safe to run any number of times.

    Creates missing topics (physical names ``settings.topic(name)``), raises
    partition counts that are too low (never lowers them) and aligns topic
    configs. Returns the physical names of topics created or changed.
    """
    if specs is None:
        specs = load_topics(settings.topics_file)
    spec_list = list(specs.values()) if isinstance(specs, dict) else list(specs)
    wanted = {settings.topic(spec.name): spec for spec in spec_list}
    changed: list[str] = []
    admin = make_admin(settings)
    try:
        try:
            await admin.start()
        except Exception as exc:
            raise KafkaUnavailable(
                f"cannot reach Kafka at {settings.kafka.bootstrap} to create topics ({exc}); "
                f"run `downlink stack up` or read {kafka_log_file(settings)}"
            ) from exc
        described = await admin.describe_topics(list(wanted))
        existing = {
            t["topic"]: len(t["partitions"]) for t in described if t["error_code"] != _ERR_UNKNOWN_TOPIC
        }
        missing = [name for name in wanted if name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name,
                        wanted[name].partitions,
                        settings.kafka.replication_factor,
                        topic_configs=wanted[name].kafka_configs(),
                    )
                    for name in missing
                ]
            )
            _raise_for_errors("create", response.topic_errors, {_ERR_TOPIC_EXISTS})
            changed.extend(missing)
            log.info("created topics", extra={"topics": ",".join(missing)})
        grow = {name: NewPartitions(wanted[name].partitions) for name, n in existing.items() if n < wanted[name].partitions}
        if grow:
            await admin.create_partitions(grow)
            changed.extend(grow)
            log.info("added partitions", extra={"topics": ",".join(grow)})
        present = [name for name in wanted if name in existing]
        if present:
            changed.extend(await _align_configs(admin, {name: wanted[name] for name in present}))
    finally:
        await admin.close()
    return list(dict.fromkeys(changed))


async def _align_configs(admin: Any, specs: dict[str, TopicSpec]) -> list[str]:
    """Alter topic configs that differ from the declaration; returns the topics changed."""
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in specs]
    )
    current: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            code, message, _type, name, entries = resource[:5]
            if code:
                raise ConfigError(f"cannot read configs of topic {name!r}: {for_code(code).__name__} {message or ''}")
            current[name] = {entry[0]: entry[1] for entry in entries}
    stale = [
        name
        for name, spec in specs.items()
        if any(current.get(name, {}).get(k) != v for k, v in spec.kafka_configs().items())
    ]
    if stale:
        # AlterConfigs replaces a topic's whole override set, so send every declared config
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, specs[name].kafka_configs()) for name in stale]
        )
        for response in responses:
            _raise_for_errors(
                "alter configs of",
                [(r[3], r[0], r[1]) for r in response.resources],
                set(),
            )
        log.info("aligned topic configs", extra={"topics": ",".join(stale)})
    return stale


async def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    """Delete physical topics (test teardown); unknown topics are ignored."""
    admin = make_admin(settings)
    try:
        await admin.start()
        response = await admin.delete_topics(list(names))
        _raise_for_errors("delete", response.topic_error_codes, {_ERR_UNKNOWN_TOPIC})
    finally:
        await admin.close()
