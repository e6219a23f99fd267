"""``downlink demo`` on a small faulted contact: stage displays and tables only, every log line in the file."""

from __future__ import annotations

import re

import pytest

from tests.integration.helpers import cli, fast

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(r"(^|\s)(ts=|level=)|Traceback|^(WARNING|ERROR|INFO)[: ]", re.M)


def test_demo_prints_no_log_line_and_keeps_them_in_its_file(settings, topics, tmp_path):
    work = tmp_path / "demo"
    # the stack is the test session's; calibration stages are covered by their own tests
    proc = cli(fast(settings), "demo", "--size", "8MB", "--seed", "3", "--work", str(work), "--contact", "DEMOT1",
               "--faults", "drop=0.002,dup=0.001,garbage=0.0005", "--skip", "stack,refs,calibrate,archive",
               check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert not LOG_LINE.search(out), [m.group(0) for m in LOG_LINE.finditer(out)][:5]
    log = work / "DEMOT1.log"
    assert f"logs -> {log}" in out.replace("\n", "")
    for heading in ("simulate", "ingest", "demux", "l0", "verify", "stages", "packet accounting", "L0 files",
                    "log warnings and errors"):
        assert heading in out, heading
    text = log.read_text()
    assert "level=warning" in text and "sequence gap" in text  # the faults' warnings went to the file
    warned = len(re.findall(r"level=warning .*msg=\"sequence gap\"", text))
    assert warned > 0 and re.search(rf"│\s+{warned:,}\s+│ warning\s+│ consumers\.demux\.\w+\s+│ sequence gap", out), \
        "the warnings table counts each message once per occurrence"
