#!/usr/bin/env bash
# make demo: the whole path on this machine, from a cold start, one progress display per stage
# (stack, simulate, ingest, process, verify, calibrate, archive) and summary tables at the end.
# Logs go to a file whose path is printed first. Tunables: DEMO_SIZE (1GB), DEMO_SEED (7),
# DEMO_DIR (.downlink/demo), DEMO_CONTACT, DEMO_FAULTS; any DOWNLINK_* setting.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m downlink demo "$@"
