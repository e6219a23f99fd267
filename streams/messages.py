"""Typed messages: one frozen dataclass per envelope schema, the only way services talk.

Each class names its schema (``SCHEMA``, the ``schema:`` of topics.yaml) and
encodes to / decodes from the versioned msgpack envelope of
:mod:`streams.envelope`. Decoding checks every declared field's presence and
type, so a malformed record is an :class:`~core.errors.EnvelopeError` at the
door (and goes to the dead-letter topic) instead of a ``KeyError`` deep in a
service. Unknown extra fields are ignored: a newer writer may add fields
without breaking older readers; removing or retyping one needs a new
``SCHEMA_VERSION``.

``docs/messages.md`` lists every schema with its fields and topic.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from core.errors import EnvelopeError
from streams import envelope

M = TypeVar("M", bound="Message")

#: schema name -> class (filled by ``@message``)
REGISTRY: dict[str, type["Message"]] = {}


def message(cls: type[M]) -> type[M]:
    """Class decorator: register a message class under its ``SCHEMA``."""
    if cls.SCHEMA in REGISTRY:
        raise TypeError(f"schema {cls.SCHEMA!r} declared twice")
    REGISTRY[cls.SCHEMA] = cls
    return cls


@dataclass(frozen=True)
class Message:
    """Base of every typed message."""

    SCHEMA: ClassVar[str] = ""

    def encode(self) -> bytes:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return envelope.encode(self.SCHEMA, body)

    @classmethod
    def decode(cls: type[M], raw: bytes) -> M:
        """Decode an envelope of exactly this schema."""
        msg = decode(raw, cls)
        assert isinstance(msg, cls)
        return msg

    @classmethod
    def from_body(cls: type[M], body: dict[str, Any]) -> M:
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in body:
                value = body[f.name]
                if not _fits(value, hints[f.name]):
                    raise EnvelopeError(
                        f"{cls.SCHEMA}: field {f.name!r} should be {_name(hints[f.name])}, "
                        f"got {type(value).__name__}")
                values[f.name] = value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise EnvelopeError(f"{cls.SCHEMA}: required field {f.name!r} is missing")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"{cls.SCHEMA}: {exc}") from exc


def decode(raw: bytes | None, *expect: type[Message]) -> Message:
    """Decode an envelope into its message class; ``expect`` limits the accepted schemas."""
    if raw is None:
        raise EnvelopeError("empty record (a tombstone): no message to decode")
    body = envelope.decode(raw)
    schema = body.pop("schema")
    body.pop("v", None)
    cls = REGISTRY.get(schema)
    if cls is None:
        raise EnvelopeError(f"unknown message schema {schema!r}; known: {sorted(REGISTRY)}")
    if expect and cls not in expect:
        raise EnvelopeError(f"expected {' or '.join(c.SCHEMA for c in expect)}, got {schema!r}")
    return cls.from_body(body)


# --- type checks --------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is bytes:
        return isinstance(value, (bytes, bytearray, memoryview))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


# --- telemetry ------------------------------------------------------------------------------------

@message
@dataclass(frozen=True)
class SciRun(Message):
    """A run of one exposure's packets from one raw chunk (``tlm.sci``, key = exposure id).

    ``index`` is a serialised :class:`streams.decoder.PacketIndex` whose offsets
    point into ``packets``.
    """

    SCHEMA: ClassVar[str] = "tlm.sci.run"
    contact: str
    exposure_id: str
    packets: bytes
    index: bytes
    raw_ts: int = 0


@message
@dataclass(frozen=True)
class SciEoc(Message):
    """End of a contact, sent to every partition of ``tlm.sci`` after its last run there."""

    SCHEMA: ClassVar[str] = "tlm.sci.eoc"
    contact: str
    bytes: int


@message
@dataclass(frozen=True)
class EngBatch(Message):
    """A run of one APID's engineering packets (``tlm.eng.realtime`` / ``tlm.eng.recorded``)."""

    SCHEMA: ClassVar[str] = "tlm.eng.batch"
    contact: str
    apid: int
    source: int
    packets: bytes
    index: bytes
    raw_ts: int = 0


@message
@dataclass(frozen=True)
class DeadLetter(Message):
    """Something a service could not use, kept intact with the reason (``tlm.deadletter``).

    Decoder skips carry the contact and the stream offset; records rejected by
    a consumer carry their source topic, partition and offset.
    """

    SCHEMA: ClassVar[str] = "tlm.deadletter"
    reason: str
    data: bytes
    service: str = "demux"
    contact: str | None = None
    stream_offset: int | None = None
    length: int = 0
    apid: int | None = None
    exposure_id: str | None = None
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    time: float = 0.0


@message
@dataclass(frozen=True)
class OpsAlert(Message):
    """An operator event (``ops.alerts``): gaps, anomalies, resyncs, contact end...

    ``ranges`` holds [first, count] pairs (sequence counts for gaps, stream
    offsets for resyncs) so one coalesced alert describes a whole burst.
    """

    SCHEMA: ClassVar[str] = "ops.alert"
    contact: str
    type: str
    severity: str
    time: float
    apid: int | None = None
    source: int | None = None
    first_seq: int | None = None
    count: int = 0
    stream_offset: int | None = None
    ranges: list = field(default_factory=list)
    exposure_id: str | None = None
    reason: str | None = None
    detail: dict = field(default_factory=dict)


@message
@dataclass(frozen=True)
class DemuxState(Message):
    """Per-contact demux snapshot (compacted ``demux.state``, key = contact id)."""

    SCHEMA: ClassVar[str] = "demux.state"
    contact: str
    next_offset: int
    carry: bytes
    account: dict
    open_skip: str | None = None


# --- products -------------------------------------------------------------------------------------

@message
@dataclass(frozen=True)
class L0State(Message):
    """What l0 wrote and announced for an exposure (compacted ``l0.state``, key = exposure id)."""

    SCHEMA: ClassVar[str] = "l0.state"
    exposure_id: str
    version: int
    complete: bool
    sha256: str
    packets: int
    bytes: int
    contacts: list = field(default_factory=list)
    #: tlm.sci partition the exposure's runs are on (l0.state is co-partitioned; -1 = unknown)
    partition: int = -1
    #: next tlm.sci offset after the last run included in this version (-1 = unknown)
    through_offset: int = -1


@message
@dataclass(frozen=True)
class L0Ready(Message):
    """A new L0 version is durable on disk (``l0.ready``, key = exposure id)."""

    SCHEMA: ClassVar[str] = "l0.ready"
    exposure_id: str
    version: int
    complete: bool
    sha256: str
    packets: int
    bytes: int
    path: str
    manifest: str
    program: int
    detector: int
    missing_packets: int = 0
    contacts: list = field(default_factory=list)
    #: wall time (s since the epoch) the exposure's last packet reached downlink.raw
    raw_ts: float = 0.0
    #: identities with two different packets (kept aside; the exposure is then never complete)
    conflicts: int = 0
    #: packets rejected by validation (sent to tlm.deadletter, listed in the manifest)
    rejected: int = 0


PRIORITIES = ("too", "normal", "reprocess")


@message
@dataclass(frozen=True)
class CalRequest(Message):
    """Calibrate one uncal file (``cal.requests``, key = exposure id).

    ``priority`` selects the lane: ``too`` > ``normal`` > ``reprocess``;
    ``context`` pins a reference context (None = the best at run time).
    """

    SCHEMA: ClassVar[str] = "cal.request"
    exposure_id: str
    uncal_path: str
    priority: str = "normal"
    context: str | None = None
    uncal_sha256: str = ""
    l0_version: int = 0
    l0_sha256: str = ""
    program: int = 0
    requested_at: float = 0.0
    reason: str = ""
    #: when the exposure's L0 was received (the 5-day L2b clock starts here)
    l0_received_at: float = 0.0

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority {self.priority!r} is not one of {PRIORITIES}")


@message
@dataclass(frozen=True)
class CalDone(Message):
    """Products of one calibration run (``cal.done``, key = exposure id).

    ``products`` is a list of {"level", "suffix", "path", "sha256", "size"}.
    """

    SCHEMA: ClassVar[str] = "cal.done"
    exposure_id: str
    products: list
    context: str
    cal_version: str
    priority: str = "normal"
    uncal_path: str = ""
    uncal_sha256: str = ""
    l0_version: int = 0
    program: int = 0
    version: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0
    l0_received_at: float = 0.0
    #: "exposure" (rate, rateints, cal of one exposure) or "visit" (the L3 of a visit and
    #: detector, keyed by the exposure that completed it; ``members`` names its cal files)
    kind: str = "exposure"
    members: list = field(default_factory=list)
