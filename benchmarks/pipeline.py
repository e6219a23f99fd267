"""End-to-end throughput: ``downlink.raw`` -> demux -> ``tlm.sci`` -> L0 files on disk.

In the same run, a raw-Kafka baseline moves the same bytes through aiokafka
without processing (produce the 1 MiB chunks to a topic, then consume them
back), so the ratio compares like with like on this machine at this moment.
Prints one JSON object as the last line (keys in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import machine, send_file
from consumers.framework.runner import run_services
from products.l0 import iter_manifests
from core.settings import Settings
from streams.kafka import make_consumer
from streams.topics import TopicSpec, create_topics, delete_topics, load_topics

DOWNLINK_RATE_MB_S = 3.5


def _cli(settings: Settings, *args: str) -> None:
    cmd = [sys.executable, "-m", "downlink", "--topic-prefix", settings.topic_prefix,
           "--kafka-bootstrap", settings.kafka.bootstrap, *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


async def _baseline(settings: Settings, path: Path, chunk: int) -> dict[str, float]:
    """aiokafka produce + consume of the same bytes, same chunking, same client settings."""
    topic = settings.topic("bench.baseline")
    specs = load_topics(settings.topics_file)
    raw_spec = specs["downlink.raw"]
    await create_topics(settings, {"bench.baseline": TopicSpec(
        "bench.baseline", raw_spec.partitions, raw_spec.retention_ms, "delete", "contact id",
        "raw-bytes", dict(raw_spec.config))})
    size = path.stat().st_size
    t_produce = await send_file(settings, path, topic, b"baseline")
    consumer = make_consumer(settings, topic, group=f"{settings.topic_prefix}bench.baseline")
    await consumer.start()
    got = 0
    t1 = time.perf_counter()
    try:
        while got < size:
            batch = await consumer.getmany(timeout_ms=1000)
            got += sum(len(r.value) for recs in batch.values() for r in recs)
    finally:
        await consumer.stop()
    t_consume = time.perf_counter() - t1
    mb = size / 1e6
    return {"baseline_mb_per_s": mb / (t_produce + t_consume),
            "baseline_produce_mb_per_s": mb / t_produce, "baseline_consume_mb_per_s": mb / t_consume}


async def _pipeline(settings: Settings) -> float:
    """demux + l0 in one asyncio process (``downlink run``)."""
    t0 = time.time()
    status = await run_services(settings, ["demux", "l0"], until_idle=True)
    if status:
        raise RuntimeError("pipeline services failed")
    return _last_l0(settings) - t0


def _last_l0(settings: Settings) -> float:
    return max(p.stat().st_mtime for p in iter_manifests(settings.data_dir))


def _pipeline_processes(settings: Settings, exposures: int) -> float:
    """demux and l0 as two processes (``downlink consumer NAME``), one core each."""
    env = dict(os.environ, DOWNLINK_TOPIC_PREFIX=settings.topic_prefix,
               DOWNLINK_KAFKA_BOOTSTRAP=settings.kafka.bootstrap,
               DOWNLINK_DATA_DIR=str(settings.data_dir), DOWNLINK_L0_EOC_MARGIN_SECONDS="0")
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "downlink", "consumer", name], env=env,
                              stderr=subprocess.DEVNULL) for name in ("demux", "l0")]
    try:
        while len(list(iter_manifests(settings.data_dir))) < exposures:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a pipeline process died")
            time.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
    return _last_l0(settings) - t0


def run(size_mb: int = 2048, seed: int = 1, workdir: str | None = None,
        processes: bool = False) -> dict[str, Any]:
    base = Settings.from_env()
    keep = workdir is not None
    work = Path(workdir or tempfile.mkdtemp(prefix="downlink-bench-"))
    settings = base.replace(topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", data_dir=work / "data",
                            state_dir=work / "state", l0_eoc_margin_seconds=0.0, run_idle_seconds=1.0)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    raw, truth = work / "contact.bin", work / "truth.json"
    if not raw.exists():
        _cli(settings, "simulate", "--seed", str(seed), "--size", f"{size_mb}MB",
             "--out", str(raw), "--truth", str(truth))
    asyncio.run(create_topics(settings))
    try:
        _cli(settings, "ingest", str(raw), "--contact", "BENCH")
        size = raw.stat().st_size
        baseline = asyncio.run(_baseline(settings, raw, settings.ingest.chunk_bytes))
        if processes:
            elapsed = _pipeline_processes(settings, len(json.loads(truth.read_text())["exposures"]))
        else:
            elapsed = asyncio.run(_pipeline(settings))
        verify = subprocess.run([sys.executable, "-m", "downlink", "verify", "--truth", str(truth),
                                 "--data", str(settings.data_dir), "--json"],
                                capture_output=True, text=True)
    finally:
        names = [settings.topic(n) for n in (*load_topics(settings.topics_file), "bench.baseline")]
        asyncio.run(delete_topics(settings, names))
        shutil.rmtree(settings.data_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    mb_s = size / 1e6 / elapsed
    return {
        "benchmark": "pipeline", "bytes": size,
        "layout": "demux and l0 as two processes" if processes else "demux + l0 in one process", "seconds": round(elapsed, 2),
        "pipeline_mb_per_s": round(mb_s, 1),
        "baseline_mb_per_s": round(baseline["baseline_mb_per_s"], 1),
        "baseline_produce_mb_per_s": round(baseline["baseline_produce_mb_per_s"], 1),
        "baseline_consume_mb_per_s": round(baseline["baseline_consume_mb_per_s"], 1),
        "ratio_to_kafka_baseline": round(mb_s / baseline["baseline_mb_per_s"], 3),
        "x_realtime": round(mb_s / DOWNLINK_RATE_MB_S, 1),
        "l0_verified": json.loads(verify.stdout.splitlines()[-1])["ok"] if verify.stdout else False,
        **machine("msgpack", "lz4"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="downlink bench pipeline", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="reuse a simulated contact here")
    parser.add_argument("--processes", action="store_true",
                        help="run demux and l0 as two processes instead of one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.size_mb, args.seed, args.workdir, args.processes)
    if not args.json:
        for key in ("pipeline_mb_per_s", "baseline_mb_per_s", "ratio_to_kafka_baseline", "x_realtime"):
            print(f"{key:28s} {result[key]}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
