"""``make bench``: run every benchmark, collect their JSON in benchmarks/results/latest.json, plot it.

The plot (``latest.png``, :mod:`benchmarks.plot`) shows each benchmark's
figures against its baseline and names the machine.

Each benchmark runs in its own process (``downlink bench NAME --json``) so one's
memory or threads never skew another's figures; its last stdout line is its
result, keyed by NAME. Extra arguments per benchmark come from
``DOWNLINK_BENCH_<NAME>_ARGS`` (e.g. ``--size-mb 4096``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import BENCHMARKS

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def main() -> int:
    results: dict[str, object] = {}
    status = 0
    for name in BENCHMARKS:
        extra = shlex.split(os.environ.get(f"DOWNLINK_BENCH_{name.upper()}_ARGS", ""))
        cmd = [sys.executable, "-m", "downlink", "bench", name, "--json", *extra]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            print(f"benchmark {name} failed (exit {proc.returncode})", file=sys.stderr)
            status = 1
            continue
        results[name] = json.loads(lines[-1])
        print(lines[-1], flush=True)
    results["collected_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")
    from benchmarks.plot import plot

    print(f"wrote {plot(RESULTS)}")  # every benchmark's figures against its baseline
    return status


if __name__ == "__main__":
    raise SystemExit(main())
