"""l0.state and the data dir disagree (real broker): nothing stops, files come back.

The same simulated contact is processed twice on one set of topics, with two
data dirs (a data dir cleaned or moved while the stack keeps its topics, or a
second run with another DOWNLINK_DATA_DIR). Then a file is deleted and
``downlink l0 rebuild`` re-creates it from tlm.sci retention.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from consumers.framework.runner import run_services
from products.l0 import l0_paths
from products.verify import verify
from tests.integration.helpers import cli, fast, ingest, read_all, simulate

pytestmark = pytest.mark.integration


async def test_second_data_dir_is_restored_then_rebuild_recreates_a_deleted_file(settings, topics, tmp_path):
    first = fast(settings)
    truth = simulate(first, tmp_path, seed=21, contact="TWICE1", exposures=8,
                     faults="drop=0.01")
    partial = [e["exposure_id"] for e in truth["exposures"] if not e["complete"]]
    complete = [e["exposure_id"] for e in truth["exposures"] if e["complete"]]
    assert complete
    ingest(first, tmp_path / "TWICE1.bin", "TWICE1")
    assert await run_services(first, ["demux", "l0"], until_idle=True) == 0
    assert verify(truth, first.data_dir).ok

    # the same contact again (a new contact id), into an empty data dir: l0.state says
    # every exposure exists; the runner must not stop and every exposure must be there
    second = first.replace(data_dir=tmp_path / "data2")
    ingest(second, tmp_path / "TWICE1.bin", "TWICE2")
    assert await run_services(second, ["demux", "l0"], until_idle=True) == 0
    result = verify(truth, second.data_dir)
    ok_complete = [r for r in result.rows if r.expected == "complete"]
    assert all(r.ok for r in ok_complete), [r.__dict__ for r in ok_complete if not r.ok]
    alerts = Counter(m["type"] for _, m in await read_all(second, "ops.alerts")
                     if isinstance(m, dict) and m.get("type", "").startswith("l0_"))
    assert alerts["l0_restored"] >= len(complete)
    for exposure_id in complete:  # restored as the recorded version, not a new one
        m = json.loads(l0_paths(second.data_dir, exposure_id)[1].read_text())
        assert m["version"] == 1 and m["restored"] and m["complete"]
    for exposure_id in partial:  # two contacts' worth of the same packets: still the same set
        assert l0_paths(second.data_dir, exposure_id)[0].exists()

    # a deleted file comes back from tlm.sci retention
    victim = complete[0]
    data, manifest = l0_paths(second.data_dir, victim)
    want = data.read_bytes()
    data.unlink()
    out = cli(second, "l0", "rebuild", "--json", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r["exposure_id"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])["rows"]}
    assert rows[victim]["status"] == "rebuilt"
    assert data.read_bytes() == want
    out = cli(second, "l0", "rebuild", "--exposure", victim, "--json")
    assert json.loads(out.stdout.strip().splitlines()[-1])["rows"][0]["status"] == "ok"
