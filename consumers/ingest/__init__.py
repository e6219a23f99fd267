"""Ingest: a contact's raw stream (file or TCP feed) -> ``downlink.raw``, resumable.

:mod:`.sources` reads bytes, :mod:`.resume` finds where a contact stands in the
topic, :mod:`.publish` publishes chunks and the end-of-contact marker,
:mod:`.server` accepts ground-station feeds over TCP.
"""

from consumers.ingest.publish import IngestResult, ingest_file, parse_rate, parse_size, publish
from consumers.ingest.resume import RAW_TOPIC, ResumePoint, find_resume_point, partition_for, raw_partition
from consumers.ingest.server import IngestServer, ingest_socket
from consumers.ingest.sources import FileSource, StreamSource

__all__ = ["IngestResult", "IngestServer", "FileSource", "StreamSource", "RAW_TOPIC", "ResumePoint",
           "find_resume_point", "ingest_file", "ingest_socket", "parse_rate", "parse_size",
           "partition_for", "publish", "raw_partition"]
