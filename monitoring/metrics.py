"""Prometheus metrics of every service, defined once.

Labels stay bounded: consumer name, APID, source, topic, reason — never an
exposure id or contact id (those go to logs and ops.alerts instead).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PACKETS_IN = Counter("downlink_packets_total", "Packets decoded from the raw stream", ["apid", "source"])
BYTES_IN = Counter("downlink_raw_bytes_total", "Raw contact bytes consumed by demux")
MESSAGES_OUT = Counter("downlink_messages_out_total", "Kafka messages produced", ["consumer", "topic"])
BYTES_OUT = Counter("downlink_bytes_out_total", "Bytes produced to Kafka", ["consumer", "topic"])
SEQ_GAPS = Counter("downlink_sequence_gaps_total", "Sequence-count gaps (events)", ["apid", "source"])
SEQ_MISSING = Counter("downlink_packets_missing_total", "Packets missing in sequence gaps", ["apid", "source"])
SEQ_DUPLICATES = Counter("downlink_packets_duplicate_total", "Duplicate packets", ["apid", "source"])
SEQ_OUT_OF_ORDER = Counter("downlink_packets_out_of_order_total", "Out-of-order packets", ["apid", "source"])
DEADLETTER_BYTES = Counter("downlink_deadletter_bytes_total", "Undecodable bytes sent to the dead-letter topic", ["reason"])
RESYNCS = Counter("downlink_resyncs_total", "Decoder resynchronisations", ["reason"])
OPEN_EXPOSURES = Gauge("downlink_l0_open_exposures", "Exposures being assembled")
L0_WRITTEN = Counter("downlink_l0_written_total", "L0 files written", ["status"])  # complete | partial
L0_BYTES = Counter("downlink_l0_bytes_total", "Bytes written to L0 files")
RAW_TO_L0 = Histogram(
    "downlink_raw_to_l0_seconds", "Wall time from a raw chunk's publication to the L0 file holding it",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
CONSUMER_LAG = Gauge("downlink_consumer_lag_messages", "Messages not yet consumed", ["consumer", "topic"])
TRANSACTIONS = Counter("downlink_transactions_total", "Kafka transactions committed", ["consumer"])
CONSUMER_UP = Gauge("downlink_consumer_up", "1 while a consumer's task runs", ["consumer"])
DEADLETTER_RECORDS = Counter("downlink_deadletter_records_total",
                             "Records a service could not use, sent to the dead-letter topic",
                             ["service", "reason"])
RETRIES = Counter("downlink_retries_total", "Batches redone after a transient failure",
                  ["service", "reason"])
REALTIME_PUBLISHED = Counter("downlink_realtime_published_total", "MQTT messages published by realtime",
                             ["kind"])  # eng | alert | status
REALTIME_SUPERSEDED = Counter("downlink_realtime_superseded_total",
                              "Parameter values replaced by a newer one before they could be published")
REALTIME_DUPLICATES = Counter("downlink_realtime_duplicates_total",
                              "Real-time packets dropped as repeats of ones already seen", ["apid"])
REALTIME_ALERTS_DROPPED = Counter("downlink_realtime_alerts_dropped_total",
                                  "Alerts dropped because the queue was full while the broker was away")
REALTIME_LIMIT_TRANSITIONS = Counter("downlink_realtime_limit_transitions_total",
                                     "Limit state changes", ["level"])
REALTIME_CONNECTED = Gauge("downlink_realtime_mqtt_connected", "1 while realtime is connected to the broker")
REALTIME_LATENCY = Histogram(
    "downlink_realtime_latency_seconds", "Raw chunk produced to its engineering value published on MQTT",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def serve(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on ``host:port`` (a daemon thread; port 0 disables)."""
    if port:
        start_http_server(port, addr=host, registry=registry)
