"""Benchmarks: each module has ``main(argv)`` and prints one JSON object as its last line."""

#: every benchmark by name (``downlink bench NAME``, ``make bench``)
BENCHMARKS = ("decoder", "simulator", "ingest", "pipeline", "memory", "realtime", "calibration", "too")
