"""benchmarks/plot.py: which figures are compared, and a PNG is written."""

from __future__ import annotations

import json

from benchmarks.plot import figures_of, plot


def test_known_benchmark_compares_ours_with_its_baseline():
    groups = figures_of("pipeline", {"pipeline_mb_per_s": 60.0, "baseline_mb_per_s": 100.0, "cores": 2})
    assert groups == [("MB/s", [("pipeline (demux + l0)", 60.0, False),
                                ("Kafka produce+consume baseline", 100.0, True)])]


def test_missing_figures_are_left_out_and_a_group_without_ours_is_dropped():
    assert figures_of("pipeline", {"baseline_mb_per_s": 100.0}) == []
    groups = figures_of("decoder", {"ours_mpkt_per_s": 1.0, "ccsdspy_mpkt_per_s": 0.1})
    assert groups == [("M packets/s (science-sized packets)", [("ours", 1.0, False), ("ccsdspy", 0.1, True)])]


def test_unknown_benchmark_plots_its_rates_with_baselines_as_references():
    groups = figures_of("newbench", {"x_mb_per_s": 5.0, "baseline_mb_per_s": 9.0, "seconds": 3.0})
    assert groups == [("per s", [("baseline_mb_per_s", 9.0, True), ("x_mb_per_s", 5.0, False)])]


def test_plot_writes_a_png(tmp_path):
    results = tmp_path / "latest.json"
    results.write_text(json.dumps({"collected_at": "2026-01-01T00:00:00Z",
                                   "ingest": {"ingest_mb_per_s": 200.0, "baseline_mb_per_s": 250.0,
                                              "cores": 2, "ram_gb": 8},
                                   "realtime": {"p50_ms": 5.0, "p99_ms": 40.0}}))
    out = plot(results)
    assert out == tmp_path / "latest.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
