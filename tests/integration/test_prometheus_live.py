"""A real Prometheus (Debian package) scrapes a running ``downlink run`` on a faulted contact.

The test starts a private Prometheus on a free port with a generated config
(1 s scrapes and rule evaluations, the repository's alert rules), then a
``downlink run --only demux,l0,realtime,archive --metrics-port N`` and only
then ingests a simulated contact with dropped packets and garbage, so every
counter is seen from its birth as in production. It reads the key series back
through Prometheus' HTTP API, waits for the PacketsDropped alert to fire,
checks that every gauge a rule or a dashboard reads has a sample (a gauge
declared but never set would leave its alert watching nothing), and scans the
run's /metrics (the process registry after a real run) for unbounded labels.
A second test scrapes a long-lived ``downlink ingest --listen``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import env_for, fast, ingest, simulate
from tests.unit.promql_names import used_gauges

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"
BOUNDED_LABELS = {"service", "apid", "source", "topic", "partition", "priority", "reason", "status",
                  "level", "kind", "step", "type", "le"}
#: exposure ids (jw01234001001_01101_00001_nrca1) and anything long enough to be an id
ID_LIKE = re.compile(r"jw\d{5}|^[A-Z]+\d{6,}|[0-9a-f]{16,}")
#: the services of the live run: together they own every gauge a rule or a dashboard reads
LIVE_SERVICES = "demux,l0,realtime,archive"
#: gauges read by rules or dashboards that the live run cannot set, with the reason (none today)
NOT_SET_BY_THE_LIVE_RUN: dict[str, str] = {}


def spawn(settings, *args: str, log: Path) -> subprocess.Popen:
    """``downlink ARGS`` with the test's settings; realtime publishes under a root of this test only."""
    env = {**env_for(settings), "DOWNLINK_REALTIME_TOPIC_ROOT": f"{settings.topic_prefix}jwst",
           "DOWNLINK_REALTIME_HEARTBEAT_SECONDS": "0.5"}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "downlink", *args], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _query(port: int, expr: str) -> list[dict]:
    body = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait(what: str, probe, timeout: float = 90.0, procs=()):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"a process exited ({p.args[:4]}) while waiting for {what}"
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def prometheus(tmp_path):
    """Start a private Prometheus; yields (port, a function that sets its scrape target)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus missing: run `make setup` (Debian package prometheus)")
    port, metrics_port = _free_port(), _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n"
        "  - job_name: downlink\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait("prometheus ready", lambda: _get(f"http://127.0.0.1:{port}/-/ready"), 30, [proc])
        yield port, metrics_port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def test_prometheus_sees_series_and_fires_packets_dropped(settings, topics, tmp_path, prometheus):
    port, metrics_port, prom = prometheus
    settings = fast(settings)
    run = spawn(settings, "run", "--only", LIVE_SERVICES, "--metrics-port", str(metrics_port),
                log=tmp_path / "run.log")
    try:
        # the process is scraped before the contact arrives, as in operations
        _wait("first scrape", lambda: _query(port, 'up{job="downlink"} == 1'), 60, [run, prom])
        simulate(settings, tmp_path, seed=5, contact="LIVE1", exposures=8, faults="drop=0.01,garbage=0.001")
        ingest(settings, tmp_path / "LIVE1.bin", "LIVE1")

        missing = _wait("missing packets", lambda: _query(port, "downlink_packets_missing_total > 0"), 90, [run, prom])
        assert {r["metric"]["apid"] for r in missing}, missing

        def firing():
            alerts = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/alerts"))["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "PacketsDropped" and a["state"] == "firing"]
        alerts = _wait("PacketsDropped firing", firing, 60, [run, prom])
        assert all(a["labels"]["severity"] == "warning" and a["annotations"]["runbook"] for a in alerts)
        assert {a["labels"]["apid"] for a in alerts} <= {r["metric"]["apid"] for r in missing}

        for expr in ("downlink_raw_bytes_total > 0", "sum(downlink_packets_total) > 0",
                     'downlink_consumer_up{service="demux"} == 1', 'downlink_consumer_up{service="l0"} == 1',
                     'downlink_partition_lag_messages{service="demux",topic="downlink.raw"}',
                     'downlink_records_in_total{service="demux"} > 0',
                     'downlink_messages_out_total{service="demux",topic="tlm.sci"} > 0',
                     "downlink_data_disk_free_bytes > 0"):
            _wait(expr, lambda e=expr: _query(port, e), 30, [run, prom])
        _wait("L0 files written", lambda: _query(port, "sum(downlink_l0_written_total) > 0"), 60, [run, prom])
        _wait("L0 catalogued", lambda: _query(port, 'downlink_archive_records_total{kind="product"} > 0'),
              60, [run, prom])

        # every gauge a rule or a panel reads has a sample: its owner sets it (never set = no series)
        gauges = used_gauges() - set(NOT_SET_BY_THE_LIVE_RUN)
        assert {"downlink_l0_oldest_open_exposure_age_seconds", "downlink_rt_last_packet_age_seconds",
                "downlink_l2b_within_5_days_ratio", "downlink_realtime_mqtt_connected"} <= gauges
        seen: dict[str, list] = {}
        for name in sorted(gauges):
            try:
                seen[name] = _wait(f"a sample of {name}", lambda n=name: _query(port, n), 30, [run, prom])
            except AssertionError:
                seen[name] = []
        assert [n for n, series in seen.items() if not series] == [], "gauges never set by their owner"
        ages = {r["metric"]["apid"] for r in seen["downlink_rt_last_packet_age_seconds"]}
        assert ages and all(a.isdigit() for a in ages), ages  # decimal APIDs, as every apid label
        assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in seen["downlink_l2b_within_5_days_ratio"])
        assert all(float(r["value"][1]) >= 0 for r in seen["downlink_l0_oldest_open_exposure_age_seconds"])

        # the registry after a real run: every label is bounded and no value is an id
        text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        values: dict[str, set[tuple]] = {}
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("downlink_"):
                continue
            for sample in family.samples:
                assert set(sample.labels) <= BOUNDED_LABELS, (sample.name, sample.labels)
                for v in sample.labels.values():
                    assert "LIVE1" not in v and not ID_LIKE.search(v), (sample.name, sample.labels)
                values.setdefault(family.name, set()).add(tuple(sorted(sample.labels.items())))
        assert values["downlink_packets"], "no packet series"
        assert max(len(v) for v in values.values()) < 200, {k: len(v) for k, v in values.items()}
    finally:
        _stop(run)


async def test_ingest_listener_is_scraped(settings, topics, tmp_path, prometheus):
    """``downlink ingest --listen`` is a long-lived service: Prometheus scrapes it like the others."""
    port, metrics_port, prom = prometheus
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        feed_port = s.getsockname()[1]
    listener = spawn(settings, "ingest", "--listen", f"127.0.0.1:{feed_port}", "--contact", "FEED",
                     "--metrics-port", str(metrics_port), log=tmp_path / "ingest.log")
    try:
        _wait("listener scraped", lambda: _query(port, 'up{job="downlink"} == 1'), 60, [listener, prom])
        _wait("ingest up", lambda: _query(port, 'downlink_consumer_up{service="ingest"} == 1'), 30,
              [listener, prom])
        simulate(settings, tmp_path, seed=6, contact="FEED", exposures=2)
        data = (tmp_path / "FEED.bin").read_bytes()
        with socket.create_connection(("127.0.0.1", feed_port), timeout=10) as feed:
            feed.sendall(data)
        _wait("feed counted", lambda: _query(port, 'downlink_ingest_feeds_total{status="ended"} == 1'), 60,
              [listener, prom])
        sent = _wait("bytes counted", lambda: _query(
            port, 'downlink_bytes_out_total{service="ingest",topic="downlink.raw"}'), 30, [listener, prom])
        assert float(sent[0]["value"][1]) == len(data)
    finally:
        _stop(listener)
