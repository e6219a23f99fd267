"""Plot every benchmark's figures against its baseline: benchmarks/results/latest.png.

``make bench`` calls :func:`plot` after collecting ``latest.json``; run it alone
with ``python -m benchmarks.plot [latest.json] [out.png]``. One panel per
benchmark: our figure(s) in colour, the reference(s) it is compared with in
grey, the ratio written next to each. :data:`FIGURES` says which keys are
compared per benchmark; a benchmark not listed there gets every ``*_per_s``
key, with the ones naming a baseline drawn as references. The title names
the machine (cores, RAM) and the collection time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: benchmark -> groups of (label, key, is_reference); each group shares a unit (x-axis)
FIGURES: dict[str, list[tuple[str, list[tuple[str, str, bool]]]]] = {
    "pipeline": [("MB/s", [("pipeline (demux + l0)", "pipeline_mb_per_s", False),
                           ("Kafka produce+consume baseline", "baseline_mb_per_s", True)])],
    "ingest": [("MB/s", [("ingest", "ingest_mb_per_s", False),
                         ("Kafka produce baseline", "baseline_mb_per_s", True)])],
    "decoder": [("M packets/s (science-sized packets)", [("ours", "ours_mpkt_per_s", False),
                                                         ("spacepackets", "spacepackets_mpkt_per_s", True),
                                                         ("ccsdspy", "ccsdspy_mpkt_per_s", True)]),
                ("M packets/s (small packets)", [("ours", "small_ours_mpkt_per_s", False),
                                                 ("spacepackets", "small_spacepackets_mpkt_per_s", True),
                                                 ("ccsdspy", "small_ccsdspy_mpkt_per_s", True)])],
    "simulator": [("MB/s", [("simulator (wall)", "simulator_mb_per_s", False),
                            ("simulator (per CPU s)", "simulator_cpu_mb_per_s", False),
                            ("Ka downlink rate (3.5 MB/s)", "__ka_rate", True)])],
    "calibration": [("M pixels/s", [("ours", "ours_mpix_per_s", False),
                                    ("stcal OLS_C", "stcal_mpix_per_s", True)])],
    "realtime": [("ms", [("p50", "p50_ms", False), ("p95", "p95_ms", False), ("p99", "p99_ms", False),
                         ("p99 under bulk load", "p99_ms_under_load", False),
                         ("1 s budget", "__one_second_ms", True)])],
    "too": [("seconds", [("ToO raw -> L2a", "too_l2a_seconds", False),
                         ("10 min target", "__too_target_s", True)])],
    "memory": [("MB", [("largest RSS growth", "largest_rss_growth_mb", False),
                       ("largest exposure", "largest_exposure_mb", True)])],
}
#: fixed references (targets and physical rates) drawn as baselines
CONSTANTS = {"__ka_rate": 3.5, "__one_second_ms": 1000.0, "__too_target_s": 600.0}
REFERENCE_WORDS = ("baseline", "spacepackets", "ccsdspy", "stcal")


def figures_of(name: str, result: dict[str, Any]) -> list[tuple[str, list[tuple[str, float, bool]]]]:
    """The (unit, [(label, value, is_reference)]) groups of one benchmark that it actually reported."""
    groups = FIGURES.get(name)
    if groups is None:
        keys = sorted(k for k, v in result.items() if k.endswith("_per_s") and isinstance(v, (int, float)))
        groups = [("per s", [(k, k, any(w in k for w in REFERENCE_WORDS)) for k in keys])]
    out = []
    for unit, items in groups:
        values = [(label, float(CONSTANTS[key] if key in CONSTANTS else result[key]), ref)
                  for label, key, ref in items
                  if key in CONSTANTS or isinstance(result.get(key), (int, float))]
        if any(not ref for _, _, ref in values):
            out.append((unit, values))
    return out


def plot(results_file: Path = RESULTS / "latest.json", out: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    data = json.loads(Path(results_file).read_text())
    benches = {k: v for k, v in data.items() if isinstance(v, dict)}
    panels = [(name, unit, values) for name, result in benches.items()
              for unit, values in figures_of(name, result)]
    if not panels:
        raise SystemExit(f"{results_file}: no benchmark figures to plot")
    out = Path(out) if out else Path(results_file).with_suffix(".png")
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.2 + 0.45 * sum(len(v) for _, _, v in panels)),
                             squeeze=False, gridspec_kw={"height_ratios": [len(v) for _, _, v in panels]})
    for ax, (name, unit, values) in zip(axes[:, 0], panels):
        labels = [label for label, _, _ in values][::-1]
        nums = [v for _, v, _ in values][::-1]
        colors = ["#9e9e9e" if ref else "#1f77b4" for _, _, ref in values][::-1]
        bars = ax.barh(labels, nums, color=colors)
        # ratios against the first reference of the panel (the baseline the benchmark is judged by)
        reference = next((v for _, v, ref in values if ref and v > 0), None)
        refs = [ref for _, _, ref in values][::-1]
        for bar, v, is_ref in zip(bars, nums, refs):
            text = f"{v:,.3g}"
            if reference and not is_ref:
                text += f"  ({v / reference:.2f}x {next(lbl for lbl, x, r in values if r and x == reference)})"
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text, va="center", fontsize=8)
        ax.set_title(f"{name}: {unit}", loc="left", fontsize=10, fontweight="bold")
        ax.set_xlim(0, max(nums) * 1.6)
        ax.tick_params(labelsize=8)
    any_result = next(iter(benches.values()))
    machine = f"{any_result.get('cores', '?')} cores, {any_result.get('ram_gb', '?')} GB RAM"
    fig.suptitle(f"downlink benchmarks vs baselines (grey) - {machine}, collected "
                 f"{data.get('collected_at', '?')}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = plot(Path(args[0]) if args else RESULTS / "latest.json", Path(args[1]) if len(args) > 1 else None)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
