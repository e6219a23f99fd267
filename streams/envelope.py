"""Versioned msgpack envelopes: the value format of every Kafka message except raw chunks.

An envelope is a msgpack map ``{"v": SCHEMA_VERSION, "schema": name, **body}``.
The version lets a consumer refuse messages it cannot read instead of
misinterpreting them; the schema name (declared per topic in topics.yaml) lets
it refuse messages meant for another reader.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from core.errors import EnvelopeError

SCHEMA_VERSION = 1
#: versions this build can decode
SUPPORTED_VERSIONS = frozenset({SCHEMA_VERSION})
_RESERVED = ("v", "schema")


def _default(obj: Any) -> Any:
    """msgpack fallback: numpy arrays and buffers travel as raw bytes, numpy scalars as Python."""
    if isinstance(obj, np.ndarray):
        return np.ascontiguousarray(obj).tobytes()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (memoryview, bytearray)):
        return bytes(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot put {type(obj).__name__} in an envelope")


def encode(schema: str, body: dict[str, Any]) -> bytes:
    """Pack ``body`` under ``schema`` with the current version.

    numpy arrays become their raw bytes (the reader knows the dtype from the
    schema); keys ``v`` and ``schema`` are reserved.
    """
    if not isinstance(schema, str) or not schema:
        raise EnvelopeError(f"envelope schema must be a non-empty string, got {schema!r}")
    clash = [key for key in _RESERVED if key in body]
    if clash:
        raise EnvelopeError(f"envelope body for {schema!r} uses reserved key(s) {clash}")
    try:
        return msgpack.packb({"v": SCHEMA_VERSION, "schema": schema, **body}, use_bin_type=True, default=_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EnvelopeError(f"cannot encode {schema!r} envelope: {exc}") from exc


def decode(raw: bytes, expect: str | None = None) -> dict[str, Any]:
    """Unpack an envelope; EnvelopeError if malformed, of an unknown version or of another schema."""
    try:
        message = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise EnvelopeError(f"malformed envelope ({len(raw)} bytes): {exc}") from exc
    if not isinstance(message, dict):
        raise EnvelopeError(f"malformed envelope: expected a map, got {type(message).__name__}")
    version = message.get("v")
    if version not in SUPPORTED_VERSIONS:
        raise EnvelopeError(
            f"envelope version {version!r} (schema {message.get('schema')!r}) is not supported; "
            f"this build understands version(s) {sorted(SUPPORTED_VERSIONS)}: upgrade downlink "
            "or route the message to the dead-letter topic"
        )
    schema = message.get("schema")
    if not isinstance(schema, str):
        raise EnvelopeError(f"malformed envelope: schema name missing or not a string ({schema!r})")
    if expect is not None and schema != expect:
        raise EnvelopeError(f"expected an envelope of schema {expect!r}, got {schema!r}")
    return message
