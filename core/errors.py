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
    """Bytes do not follow the packet format (docs/icd.md)."""


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


class StorageError(DownlinkError):
    """A product could not be written or read on the data dir (full disk, I/O error)."""

    retriable = True

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class FencedError(DownlinkError):
    """This instance can no longer prove it owns its partitions (paused past the session timeout,
    another instance took over): the batch is aborted, not committed, and redone after a rejoin."""

    retriable = True


class ValidationError(DownlinkError):
    """One record or packet breaks the packet format or its schema: it goes to the dead-letter
    topic with this message as its reason; retrying cannot help."""


class SchemaMismatch(ConfigError):
    """A topic's schema in topics.yaml is not the one a service reads or writes."""


class CalibrationError(DownlinkError):
    """An uncal file or a reference context cannot be calibrated."""


class ArchiveError(DownlinkError):
    """The archive catalogue or its API failed."""
