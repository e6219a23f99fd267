"""Peak memory of L0 assembly versus exposure size (``downlink bench memory``).

For each size, a fresh subprocess (so peaks do not carry over) builds one
exposure of NGROUPS x NINTS groups with the packet codec, one group at a
time, cuts it into science runs of about 1 MiB (what demux publishes),
decodes each run and feeds it to :class:`consumers.l0.assembly.Assembly`
exactly as the l0 service does, then writes the L0 file with
:mod:`consumers.l0.writer`. To cover the reopening path too, one data packet
is held back: version 1 is written partial, a second assembly is seeded from
that file (streamed) and given the missing packet, and version 2 is written
complete (out of order: a block copy from the spool, not a rename). The
child reports its peak RSS (``ru_maxrss``) minus its RSS before the first
packet was made. The Kafka client's fetch buffers are bounded by settings,
not by the exposure, and are not part of this figure.

Prints one JSON object as the last line (MB = 2**20 bytes): ``largest_exposure_mb``,
``largest_rss_growth_mb`` and ``rows`` (one per size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine

SIZES = (64, 256, 1024, 2048)
GOAL_MB = 300


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(side: int, ngroups: int, nints: int, work: Path) -> dict[str, Any]:
    import hashlib

    import numpy as np

    from consumers.l0.assembly import Assembly
    from consumers.l0.writer import publish
    from streams.decoder import decode_all
    from streams.packets import (MAX_PIXELS_PER_PACKET, ExposureEnd, ExposureStart, ExposureTag,
                                 encode_exposure_end, encode_exposure_start,
                                 encode_science_data_batch)

    tag = ExposureTag(1234, 1, 1, 1, 1, 1, 1, 1)
    npix = side * side
    per_group = -(-npix // MAX_PIXELS_PER_PACKET)
    n_data = nints * ngroups * per_group
    start = ExposureStart(nints, ngroups, 1, 0, 1, 1, side, side, n_data, 10_000, "RAPID",
                          "NRC_IMAGE", "BENCH")
    spool_dir, data_dir = work / "spool", work / "data"
    base = _rss_mb()
    t0 = time.perf_counter()
    truth = hashlib.sha256()
    seq = 0
    a = Assembly.for_exposure(tag.exposure_id, spool_dir, token=".v1")

    def feed(target: Assembly, raw: bytes) -> None:
        d = decode_all(raw)
        target.add(d.packets, d.data, "BENCH")

    first = encode_exposure_start(tag, seq, 1, 5000, 0, start)
    truth.update(first)
    feed(a, first)
    held = b""
    full, rem = divmod(npix, MAX_PIXELS_PER_PACKET)
    offsets = np.arange(per_group, dtype=np.int64) * MAX_PIXELS_PER_PACKET
    run_packets = max(1, (1 << 20) // (38 + 2 * MAX_PIXELS_PER_PACKET))
    for i in range(1, nints + 1):
        for g in range(1, ngroups + 1):
            frame = ((np.arange(npix, dtype=np.uint32) * 7 + i * 131 + g) & 0xFFFF).astype(np.uint16)
            rows: list[bytes] = []
            if full:
                seqs = np.arange(seq + 1, seq + 1 + full)
                rows.append(encode_science_data_batch(
                    tag, seqs, 1, np.full(full, 5000 + g), np.zeros(full, int), np.full(full, i),
                    np.full(full, g), offsets[:full],
                    frame[:full * MAX_PIXELS_PER_PACKET].reshape(full, MAX_PIXELS_PER_PACKET)).tobytes())
                seq += full
            if rem:
                seq += 1
                rows.append(encode_science_data_batch(
                    tag, np.array([seq]), 1, np.array([5000 + g]), np.array([0]), np.array([i]),
                    np.array([g]), offsets[full:], frame[full * MAX_PIXELS_PER_PACKET:][None, :]).tobytes())
            group = b"".join(rows)
            del rows, frame
            plen = 38 + 2 * MAX_PIXELS_PER_PACKET
            step = run_packets * plen if full else len(group)
            for s in range(0, len(group), step):
                run = group[s:s + step]
                if i == nints and g == ngroups and s + step >= len(group) and not held:
                    last = len(run) - (38 + 2 * (rem or MAX_PIXELS_PER_PACKET))
                    held, run = run[last:], run[:last]  # version 1 lacks the very last data packet
                    truth.update(run)
                    truth.update(held)
                else:
                    truth.update(run)
                if run:
                    feed(a, run)
            del group
    seq += 1
    end = encode_exposure_end(tag, seq, 1, 9000, 0, ExposureEnd(n_data))
    truth.update(end)
    feed(a, end)
    assert not a.complete
    sha1, n1 = a.content_sha256()
    w1 = publish(data_dir, a, 1, sha1, n1, supersedes=None)
    a.close()
    b = Assembly.for_exposure(tag.exposure_id, spool_dir, token=".v2")
    b.seed(w1.data_path, w1.manifest)
    feed(b, held)
    assert b.complete
    sha2, n2 = b.content_sha256()
    publish(data_dir, b, 2, sha2, n2, supersedes=1)
    b.close()
    assert sha2 == truth.hexdigest(), "L0 bytes differ from what was sent"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"side": side, "ngroups": ngroups, "nints": nints,
            "exposure_mb": round(n2 / 2**20, 1), "packets": n_data + 2,
            "rss_before_mb": round(base, 1), "rss_peak_mb": round(peak, 1),
            "rss_growth_mb": round(peak - base, 1), "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="downlink bench memory", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)),
                   help="square subarray sides, comma-separated (default 64,256,1024,2048)")
    p.add_argument("--ngroups", type=int, default=10)
    p.add_argument("--nints", type=int, default=10)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.ngroups, args.nints, Path(args.work))))
        return 0
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        p.error(f"--sizes must be integers like 64,2048, got {args.sizes!r}")
    if not sizes or any(not 1 <= s <= 2048 for s in sizes):
        p.error("--sizes must be between 1 and 2048 (a detector is at most 2048 x 2048)")
    rows = []
    for side in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
            cmd = [sys.executable, "-m", "benchmarks.memory", "--child", str(side),
                   "--ngroups", str(args.ngroups), "--nints", str(args.nints), "--work", work]
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parent.parent)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        if not args.json:
            print(f"{side}x{side} x {args.ngroups} groups x {args.nints} ints: "
                  f"{row['exposure_mb']} MB exposure, RSS +{row['rss_growth_mb']} MB "
                  f"({row['seconds']} s)")
    largest = max(rows, key=lambda r: r["exposure_mb"])
    result = {"benchmark": "memory", "largest_exposure_mb": largest["exposure_mb"],
              "largest_rss_growth_mb": largest["rss_growth_mb"], "goal_rss_growth_mb": GOAL_MB,
              "meets_goal": largest["rss_growth_mb"] < GOAL_MB, "rows": rows,
              **machine()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
