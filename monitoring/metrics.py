"""Prometheus metrics of every service, defined once (the one place; docs/operations.md lists them).

Names are ``downlink_<what>_<unit>`` (``_total`` for counters). Labels stay
bounded: service, APID, source, topic, partition, priority, level, status,
reason (a short class, never a free message) — never an exposure id or a
contact id (those go to logs and ops.alerts instead). The alert rules and the
Grafana dashboard may only name metrics defined here; a unit test checks it,
and another scans the registry after a real run for unbounded labels.

Sections: framework (every service), demux/l0, calibration, real time, host.
A service imports the objects it updates; the runner's sampler
(:func:`monitoring.sampler.sample_forever`, started by the runner) sets the lag and disk
gauges for every service it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.samples import Sample


class OwnedGauge(Gauge):
    """A gauge without labels that exports no sample until it is first set.

    Every process imports this module, so a plain label-less gauge would read 0
    in every process, not only in the service that owns it: demux would report
    ``downlink_realtime_mqtt_connected 0`` (MqttDisconnected) and
    ``downlink_l2b_within_5_days_ratio 0`` (L2bSloAtRisk). An owned gauge appears
    only once its owner set it, so a missing series means "its owner never set
    it" (the live Prometheus test fails on that) and never a false 0.
    """

    def _metric_init(self) -> None:
        super()._metric_init()
        self._touched = False

    def set(self, value: float) -> None:
        super().set(value)
        self._touched = True

    def inc(self, amount: float = 1) -> None:
        super().inc(amount)
        self._touched = True

    def dec(self, amount: float = 1) -> None:
        super().dec(amount)
        self._touched = True

    def _child_samples(self) -> Iterable[Sample]:
        return super()._child_samples() if self._touched else ()

PACKETS_IN = Counter("downlink_packets_total", "Packets decoded from the raw stream", ["apid", "source"])
BYTES_IN = Counter("downlink_raw_bytes_total", "Raw contact bytes consumed by demux")
MESSAGES_OUT = Counter("downlink_messages_out_total", "Kafka messages produced", ["service", "topic"])
BYTES_OUT = Counter("downlink_bytes_out_total", "Bytes produced to Kafka", ["service", "topic"])
SEQ_GAPS = Counter("downlink_sequence_gaps_total", "Sequence-count gaps (events)", ["apid", "source"])
SEQ_MISSING = Counter("downlink_packets_missing_total", "Packets missing in sequence gaps", ["apid", "source"])
SEQ_DUPLICATES = Counter("downlink_packets_duplicate_total", "Duplicate packets", ["apid", "source"])
SEQ_OUT_OF_ORDER = Counter("downlink_packets_out_of_order_total", "Out-of-order packets", ["apid", "source"])
DEADLETTER_BYTES = Counter("downlink_deadletter_bytes_total", "Undecodable bytes sent to the dead-letter topic", ["reason"])
RESYNCS = Counter("downlink_resyncs_total", "Decoder resynchronisations", ["reason"])
DEMUX_REJECTED = Counter("downlink_demux_rejected_packets_total",
                         "Decoded packets demux rejected (field validation), sent to the dead-letter "
                         "topic", ["reason"])
SEQ_OUTLIERS = Counter("downlink_sequence_outliers_total",
                       "Isolated corrupt sequence counts (one anomaly each, no gap)", ["apid", "source"])
GAP_RANGES_MERGED = Counter("downlink_gap_ranges_merged_total",
                            "Missing-count ranges folded into a coarse range (demux.state cap)")
ALERTS_COALESCED = Counter("downlink_alert_events_total",
                           "Anomaly events demux coalesced into ops.alerts messages", ["type"])
CONTACT_PASSES = Counter("downlink_contact_passes_total",
                         "New streams under a contact id that had already ended (processed as a new pass)")
FAST_LANE_LATENCY = Histogram(
    "downlink_fast_lane_seconds", "Wall time from a raw chunk's publication to its real-time "
    "packets and alerts being sent on the fast lane",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OPEN_EXPOSURES = OwnedGauge("downlink_l0_open_exposures", "Exposures being assembled")
L0_WRITTEN = Counter("downlink_l0_written_total", "L0 files written", ["status"])  # complete | partial
L0_BYTES = Counter("downlink_l0_bytes_total", "Bytes written to L0 files")
L0_REJECTED = Counter("downlink_l0_rejected_packets_total",
                      "Science packets l0 rejected (validation against the format and the exposure "
                      "start), sent to the dead-letter topic", ["reason"])
L0_CONFLICTS = Counter("downlink_l0_conflicts_total",
                       "Packet identities seen with two different contents (both kept aside)")
RAW_TO_L0 = Histogram(
    "downlink_raw_to_l0_seconds", "Wall time from a raw chunk's publication to the L0 file holding it",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
CONSUMER_LAG = Gauge("downlink_consumer_lag_messages", "Messages not yet consumed, summed over the "
                     "partitions a service holds (set by the runner's sampler)", ["service", "topic"])
TRANSACTIONS = Counter("downlink_transactions_total", "Kafka transactions committed", ["service"])
CONSUMER_UP = Gauge("downlink_consumer_up", "1 while a service runs (0 once stopped)", ["service"])
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
REALTIME_CONNECTED = OwnedGauge("downlink_realtime_mqtt_connected", "1 while realtime is connected to the broker")
REALTIME_LATENCY = Histogram(
    "downlink_rt_packet_to_mqtt_seconds", "Real-time packet received to its engineering value published on MQTT",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# --- framework: every consuming service (the runner's sampler sets these) -----------------------
RECORDS_IN = Counter("downlink_records_in_total", "Kafka records a service consumed past (offsets "
                     "advanced; a batch redone after an abort counts once)", ["service", "topic"])
PARTITION_LAG = Gauge("downlink_partition_lag_messages", "Messages of one partition not yet consumed "
                      "by a service (last stable offset - position)", ["service", "topic", "partition"])
# --- ingest ---------------------------------------------------------------------------------
INGEST_FEEDS = Counter("downlink_ingest_feeds", "Ground-station feeds (TCP connections) ingest --listen "
                       "finished, by how they ended", ["status"])  # ended | lost | failed
# --- l0 ---------------------------------------------------------------------------------------
OLDEST_OPEN_EXPOSURE_AGE = OwnedGauge("downlink_l0_oldest_open_exposure_age_seconds",
                                 "Seconds since the oldest exposure still being assembled was opened "
                                 "(0 when none is open; set by l0 after every batch and tick)")
# --- l1b and calibration ------------------------------------------------------------------------
L1B_WRITTEN = Counter("downlink_l1b_written_total", "L1b (_uncal.fits) files written", ["priority"])
CAL_PRODUCTS_WRITTEN = Counter("downlink_cal_products_written_total",
                               "Calibrated products written", ["level", "priority"])  # level: l2a | l2b | l3
CAL_STEP_SECONDS = Histogram(
    "downlink_cal_step_seconds", "Wall time of one calibration step on one exposure", ["step"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
L0_TO_L2B_SECONDS = Histogram(
    "downlink_l0_to_l2b_seconds", "L0 file written to its L2b product written", ["priority"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 12 * 3600, 86400, 5 * 86400, 10 * 86400),
)
TOO_LATENCY_SECONDS = Histogram(
    "downlink_too_raw_to_l2a_seconds", "ToO exposure: raw chunk published to its L2a product written",
    buckets=(5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600),
)
L2B_WITHIN_5_DAYS = OwnedGauge("downlink_l2b_within_5_days_ratio",
                          "Share of the exposures (last 30 days) whose L2b was written within 5 days "
                          "of their L0 (the calibration SLO; 1 = all), from the archive catalogue; "
                          "set by archive only")
ARCHIVE_RECORDS = Counter("downlink_archive_records_total", "Catalogue rows archive inserted "
                          "(a replayed record that inserts nothing counts 0)", ["kind"])  # product | engineering
# --- real time --------------------------------------------------------------------------------
MQTT_CONNECTED = REALTIME_CONNECTED
RT_PACKET_TO_MQTT_SECONDS = REALTIME_LATENCY
RT_LAST_PACKET_AGE = Gauge("downlink_rt_last_packet_age_seconds",
                           "Seconds since the newest real-time packet of an APID (set at each heartbeat)",
                           ["apid"])
# --- host -------------------------------------------------------------------------------------
DATA_DISK_FREE_BYTES = OwnedGauge("downlink_data_disk_free_bytes", "Free bytes on the data directory's file system")
DATA_DISK_SIZE_BYTES = OwnedGauge("downlink_data_disk_size_bytes", "Size of the data directory's file system")


def serve(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve /metrics on ``host:port`` (a daemon thread; port 0 disables). Returns the HTTP server
    (``.shutdown()`` stops it) or None."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
