"""Simulator throughput: MB/s of contact stream written (with its truth) by ``downlink simulate``.

Simulates a ``size_mb`` MB contact (full mix of instruments and subarrays up to
2048 x 2048) into a temporary file, the same work as the CLI including the
stream and L0 SHA-256 hashes and the truth file, and reports wall-clock MB/s,
the process CPU time (all threads) and the factor over the 3.5 MB/s Ka-band
downlink. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine
from streams.simulator import KA_RATE_BYTES_PER_S, SimOptions, simulate


def run(size_mb: int = 512, seed: int = 0) -> dict[str, Any]:
    """Simulate one contact of ``size_mb`` MB (10^6 bytes) and measure it."""
    with tempfile.TemporaryDirectory(prefix="downlink-bench-sim-") as tmp:
        out, truth = Path(tmp) / "contact.bin", Path(tmp) / "truth.json"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = simulate(SimOptions(seed=seed, size_bytes=size_mb * 10**6), out, truth)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    mb_per_s = result.bytes / 1e6 / wall
    return {
        "simulator_mb_per_s": round(mb_per_s, 1),
        "simulator_cpu_mb_per_s": round(result.bytes / 1e6 / cpu, 1),
        "x_realtime": round(mb_per_s * 1e6 / KA_RATE_BYTES_PER_S, 1),
        "bytes": result.bytes,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "exposures": len(result.truth["exposures"]),
        "packets": result.contacts[0].packets,
        "seed": seed,
        **machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="downlink bench simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="contact size in MB (10^6 bytes)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    figures = run(args.size_mb, args.seed)
    if not args.json:
        print(f"simulator: {figures['bytes'] / 1e6:.0f} MB ({figures['exposures']} exposures, "
              f"{figures['packets']} packets) in {figures['seconds']:.2f} s = "
              f"{figures['simulator_mb_per_s']} MB/s ({figures['x_realtime']}x the 3.5 MB/s downlink); "
              f"{figures['cpu_seconds']:.2f} s CPU on {figures['cores']} cores")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
