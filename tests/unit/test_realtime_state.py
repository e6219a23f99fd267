"""Pure parts of realtime: decommutation, de-duplication, staleness, the board, alerts, accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from consumers.realtime.alerts import AlertLedger, from_ops_alert
from consumers.realtime.board import Board
from consumers.realtime.contact import contact_summary
from consumers.realtime.decom import decommutate, encode_batch
from consumers.realtime.dedupe import Deduper
from consumers.realtime.stale import StaleTracker
from core.errors import CodecError
from core.settings import Settings
from streams.dictionary import load_dictionary
from streams.messages import EngBatch, OpsAlert

D = load_dictionary()
APID = 0x101
T0 = 2_100_000_000 << 16


def raw_for(apid: int, n: int, **over: float) -> dict[str, np.ndarray]:
    """Raw values putting every parameter at its nominal (or lower yellow + margin)."""
    out = {}
    for p in D.by_apid()[apid]:
        eng = over.get(p.name, p.nominal if p.nominal is not None else
                       (sum(p.yellow) / 2 if p.yellow else 1.0))
        c = p.calibration
        out[p.name] = np.full(n, (eng - c[0]) / c[1])
    return out


def batch(seq, ticks=None, apid=APID, **over) -> EngBatch:
    seq = np.asarray(seq)
    ticks = np.asarray(ticks if ticks is not None else T0 + seq * (1 << 16), dtype=np.int64)
    return encode_batch(D, "C1", apid, seq, ticks, raw_for(apid, len(seq), **over), raw_ts_ms=1000)


def test_decommutate_calibrates_every_parameter():
    b = batch([1, 2, 3])
    s = decommutate(D, b)
    assert s.seq.tolist() == [1, 2, 3]
    assert s.ticks.tolist() == [T0 + (1 << 16) * k for k in (1, 2, 3)]
    for p in D.by_apid()[APID]:
        assert np.allclose(s.values[p.name], p.calibrate(s.raw[p.name]))
    assert s.raw_ts == 1.0


def test_decommutate_refuses_recorded_and_inconsistent_batches():
    b = batch([1, 2])
    with pytest.raises(CodecError, match="recorded"):
        decommutate(D, EngBatch(**{**b.__dict__, "source": 1}))
    with pytest.raises(CodecError, match="packets"):
        decommutate(D, EngBatch(**{**b.__dict__, "packets": b.packets[:-3]}))
    with pytest.raises(CodecError, match="index"):
        decommutate(D, EngBatch(**{**b.__dict__, "index": b.index[:-1]}))
    with pytest.raises(CodecError):
        decommutate(D, EngBatch(**{**b.__dict__, "apid": 0x1F0}))


def test_deduper_drops_repeats_within_and_across_batches_and_stays_bounded():
    d = Deduper(window=8)
    seq = np.array([1, 2, 2, 3])
    ticks = np.array([10, 20, 20, 30])
    assert d.fresh(1, seq, ticks).tolist() == [True, True, False, True]
    assert d.fresh(1, np.array([3, 4]), np.array([30, 40])).tolist() == [False, True]
    # same sequence count, other time: a different packet (after a wrap)
    assert d.fresh(1, np.array([1]), np.array([99])).tolist() == [True]
    assert d.fresh(2, np.array([1]), np.array([10])).tolist() == [True]  # per APID
    d.fresh(1, np.arange(100, 200), np.arange(100, 200))
    assert len(d) <= 8 + 1


def test_stale_after_the_cadence_allows():
    st = StaleTracker({1: 1.0, 2: 4.0}, periods=3.0)
    st.seen(1, 0.0)
    st.seen(2, 0.0)
    assert st.check(2.9) == []
    assert st.check(3.1) == [1]
    assert st.check(5.0) == []  # reported once
    assert st.check(12.5) == [2]
    assert st.seen(1, 13.0) is True and not st.is_stale(1)


def rt(**kw):
    return Settings().replace(**kw).realtime


def test_board_publishes_every_sample_and_never_repeats_or_goes_back():
    board = Board(D, rt())
    up = board.ingest(decommutate(D, batch([1, 2, 3])), now=0.0)
    topics = {t for t, _, _ in up.states}
    assert topics == {f"jwst/eng/{p.subsystem}/{p.name}" for p in D.by_apid()[APID]}
    volts = [p for t, p, _ in up.states if t.endswith("EPS_BUS_VOLTAGE")]
    assert [p["seq"] for p in volts] == [1, 2, 3]
    payload = volts[-1]
    assert payload["limit"] == "nominal" and payload["unit"] == "V"
    assert board.current["jwst/eng/power/EPS_BUS_VOLTAGE"][0] == payload
    assert set(payload) >= {"time", "raw", "value", "unit", "limit", "stale"}
    again = board.ingest(decommutate(D, batch([2, 3])), now=0.0)
    assert again.states == [] and again.duplicates == 2
    older = board.ingest(decommutate(D, batch([5], ticks=[T0])), now=0.0)  # late, reordered
    assert older.states == [] and older.late == 1


def test_board_old_batches_update_only_the_current_value():
    board = Board(D, rt(realtime_max_age_seconds=10.0))
    up = board.ingest(decommutate(D, batch([1, 2, 3])), now=0.0, wall=1.0 + 11.0)  # raw_ts 1 s
    assert [p["seq"] for t, p, _ in up.states if t.endswith("EPS_BUS_VOLTAGE")] == [3]


def test_board_limit_transition_once_and_seed_prevents_reannouncing():
    p = D.parameter("EPS_BUS_VOLTAGE")
    board = Board(D, rt())
    up = board.ingest(decommutate(D, batch([1, 2], EPS_BUS_VOLTAGE=p.red[1] + 1.0)), now=0.0)
    assert [(a["parameter"], a["from"], a["to"]) for _, a in up.alerts] == [("EPS_BUS_VOLTAGE", "nominal", "red")]
    retained = {t: json.dumps(pl).encode() for t, pl, _ in up.states}
    fresh = Board(D, rt())
    fresh.seed(retained, now=0.0)
    replay = fresh.ingest(decommutate(D, batch([1, 2, 3], EPS_BUS_VOLTAGE=p.red[1] + 1.0)), now=0.0)
    assert replay.alerts == []
    assert [pl["seq"] for t, pl, _ in replay.states if t.endswith("EPS_BUS_VOLTAGE")] == [3]


def test_board_marks_silent_apids_stale():
    board = Board(D, rt(realtime_stale_periods=2.0))
    board.ingest(decommutate(D, batch([1])), now=0.0)
    assert board.stale_check(1.5) == []
    stale = board.stale_check(2.5)
    assert stale and all(pl["stale"] for _, pl, _ in stale)


def test_gap_alert_per_range_with_identity():
    a = OpsAlert(contact="C1", type="gap", severity="warning", time=1.0, apid=0x101, source=0,
                 first_seq=10, count=2, ranges=[[10, 2], [20, 1]])
    out = from_ops_alert(a)
    assert [(k, p["first_seq"], p["count"]) for k, p in out] == [("gap", 10, 2), ("gap", 20, 1)]
    assert len({p["id"] for _, p in out}) == 2
    assert from_ops_alert(a) == out  # deterministic ids
    single = from_ops_alert(OpsAlert(contact="C1", type="gap", severity="warning", time=2.0,
                                     apid=0x101, source=0, first_seq=10, count=2))
    assert single[0][1]["id"] == out[0][1]["id"]  # same range, whatever the wall time
    ledger = AlertLedger(size=2)
    assert ledger.add("a") and not ledger.add("a")
    ledger.add("b"), ledger.add("c")
    assert "a" not in ledger and ledger.ids() == ["b", "c"]


def test_contact_summary_counts_missing_ranges():
    account = {"contact": "C1", "bytes": 100, "ended": False, "streams": {
        "257/0": {"apid": 257, "source": 0, "packets": 10, "missing": [[3, 5], [8, 9]],
                  "duplicates": 1, "out_of_order": 2, "gap_events": 2}}}
    s = contact_summary("C1", account, 0.0)
    assert (s["packets"], s["missing"], s["gaps"], s["duplicates"], s["out_of_order"]) == (10, 3, 2, 1, 2)
