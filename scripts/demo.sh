#!/usr/bin/env bash
# make demo: the whole path so far on this machine, from a cold start.
# stack up -> topics -> simulate a ~1 GB faulted contact -> ingest (progress bar)
# -> run consumers until idle -> verify L0 against truth -> accounting + L0 table.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${DEMO_SIZE:-1GB}
SEED=${DEMO_SEED:-7}
WORK=${DEMO_DIR:-.downlink/demo}
CONTACT=${DEMO_CONTACT:-DEMO$(date +%Y%m%d%H%M%S)}
export DOWNLINK_DATA_DIR=${DOWNLINK_DATA_DIR:-$WORK/data}
export DOWNLINK_L0_EOC_MARGIN_SECONDS=${DOWNLINK_L0_EOC_MARGIN_SECONDS:-1}
mkdir -p "$WORK"
rm -rf "$DOWNLINK_DATA_DIR"

echo "== stack"
downlink stack up
downlink topics create

echo "== simulate $SIZE contact $CONTACT (seed $SEED, a few faults)"
downlink simulate --seed "$SEED" --size "$SIZE" --contact "$CONTACT" \
    --faults drop=0.0005,dup=0.0005,reorder=4,corrupt=0.0002,garbage=0.0002,wrap \
    --out "$WORK/$CONTACT.bin" --truth "$WORK/$CONTACT.truth.json"

echo "== ingest"
downlink ingest "$WORK/$CONTACT.bin" --contact "$CONTACT"

echo "== process (demux + l0 until idle)"
time downlink run --until-idle

echo "== verify against truth"
status=0
downlink verify --truth "$WORK/$CONTACT.truth.json" --data "$DOWNLINK_DATA_DIR" || status=$?

echo "== packet accounting"
downlink report "$CONTACT"

echo "== L0 files"
python - "$DOWNLINK_DATA_DIR" <<'PY'
import json, sys
from pathlib import Path
from rich.console import Console
from rich.table import Table
t = Table(title=f"L0 files in {sys.argv[1]}")
for c in ("exposure", "v", "status", "packets", "MB", "missing packets", "contacts"):
    t.add_column(c)
for p in sorted(Path(sys.argv[1]).glob("jw*/*_l0.json")):
    m = json.loads(p.read_text())
    t.add_row(m["exposure_id"], str(m["version"]), "complete" if m["complete"] else "[yellow]partial[/]",
              str(m["packets"]), f"{m['bytes']/1e6:.1f}", str(len(m["missing_packets"])), ",".join(m["contacts"]))
Console(width=max(Console().width, 140)).print(t)
PY
echo
echo "The stack is still up: watch it with 'downlink stack status', inspect topics, rerun steps;"
echo "stop it with 'downlink stack down'. Files: $WORK (contact, truth) and $DOWNLINK_DATA_DIR (L0)."
exit $status
