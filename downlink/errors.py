"""Typed errors.

Every error carries ``retriable``: whether retrying the same operation later
can succeed (a broker not up yet) or not (a malformed file). Messages say what
the operator should do next.
"""

from __future__ import annotations


class DownlinkError(Exception):
    """Root of every downlink error."""

    retriable: bool = False


class ConfigError(DownlinkError):
    """A settings value, topics.yaml or the engineering dictionary is invalid."""


class StackError(DownlinkError):
    """The local stack (Kafka, Mosquitto, Prometheus) failed to start or stop."""

    retriable = True


class KafkaUnavailable(DownlinkError):
    """The Kafka broker cannot be reached."""

    retriable = True


class CodecError(DownlinkError):
    """Bytes do not follow the packet format (DESIGN.md, 'Packet format')."""


class EnvelopeError(DownlinkError):
    """A Kafka message envelope is malformed or has an unknown schema version."""


class SimulationError(DownlinkError):
    """The contact simulator was asked for something impossible."""


class IngestError(DownlinkError):
    """A raw stream could not be published to Kafka."""

    retriable = True


class AssemblyError(DownlinkError):
    """An exposure could not be assembled into a Level 0 file."""


class VerificationError(DownlinkError):
    """L0 outputs do not match the simulator truth."""
