"""Packet accounting against a brute-force model (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from consumers.demux.accounting import OUTLIER, ContactAccount, Rules, StreamAccount
from core.settings import Settings
from streams.simulator.truth import OUTLIER_CONFIRM, OUTLIER_JUMP, sequence_accounting


def _reference(ext_arrivals: list[int]) -> tuple[set[int], int, int]:
    """Brute force on unwrapped counts: missing set, duplicates, out-of-order."""
    seen: set[int] = set()
    missing: set[int] = set()
    dups = ooo = 0
    top = None
    for e in ext_arrivals:
        if top is None:
            top = e
            seen.add(e)
            continue
        if e > top:
            missing.update(range(top + 1, e))
            top = e
        elif e in missing:
            missing.discard(e)
            ooo += 1
        else:
            dups += 1
        seen.add(e)
    return missing, dups, ooo


@st.composite
def arrivals(draw):
    start = draw(st.integers(0, 16383 * 3))
    n = draw(st.integers(1, 300))
    ext = list(range(start, start + n))
    # drops, duplicates and local swaps (windows far below 8192 so unwrapping is unambiguous)
    drops = draw(st.sets(st.integers(1, n - 1), max_size=n // 3)) if n > 1 else set()
    ext = [e for i, e in enumerate(ext) if i not in drops]
    out = []
    for e in ext:
        out.append(e)
        if draw(st.integers(0, 9)) == 0:
            out.append(e)
    for _ in range(draw(st.integers(0, 10))):
        if len(out) > 2:
            i = draw(st.integers(1, len(out) - 2))
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


@given(arrivals(), st.integers(1, 50))
@settings(max_examples=300, deadline=None)
def test_matches_reference_in_any_chunking(ext, chunk):
    acct = StreamAccount(0x400, 1)
    seq = np.array([e % 16384 for e in ext], dtype=np.uint16)
    offs = np.arange(len(ext), dtype=np.int64)
    events = []
    for i in range(0, len(ext), chunk):
        events += acct.update(seq[i:i + chunk], offs[i:i + chunk])
    events += acct.finish()
    missing, dups, ooo = _reference(ext)
    got_missing = {lo + k for lo, hi in acct.missing for k in range(hi - lo)}
    base = ext[0] - (acct.first_ext + 1)
    assert {m - base for m in missing} == got_missing
    assert acct.duplicates == dups
    assert acct.out_of_order == ooo
    assert acct.packets == len(ext)
    assert sum(e.type == "duplicate" for e in events) == dups


def test_wrap_is_not_a_gap():
    acct = StreamAccount(0x101, 0)
    seq = np.array([16381, 16382, 16383, 0, 1, 2], dtype=np.uint16)
    assert acct.update(seq, np.arange(6)) == []
    assert acct.gaps == [] and acct.summary()["last_seq"] == 2


def test_gap_across_wrap_reports_wrapped_first_seq():
    acct = StreamAccount(0x101, 0)
    events = acct.update(np.array([16382, 1], dtype=np.uint16), np.array([0, 100]))
    assert [(e.type, e.first_seq, e.count, e.stream_offset) for e in events] == [("gap", 16383, 2, 100)]
    assert acct.gaps == [[16383, 2]]


def test_contact_groups_streams_and_round_trips():
    c = ContactAccount("C1")
    apid = np.array([0x100, 0x401, 0x100, 0x401, 0x100], dtype=np.uint16)
    src = np.array([0, 1, 0, 1, 1], dtype=np.uint8)
    seq = np.array([5, 9, 7, 10, 0], dtype=np.uint16)
    events = c.update(apid, src, seq, np.arange(5) * 10)
    assert [(e.type, e.apid, e.first_seq) for e in events] == [("gap", 0x100, 6)]
    again = ContactAccount.from_dict(c.to_dict())
    assert again.report() == c.report()
    assert again.report()["missing"] == 1


def test_rule_parameters_match_the_simulator_truth():
    d = Settings().demux
    assert (d.outlier_min_jump, d.outlier_confirm_packets) == (OUTLIER_JUMP, OUTLIER_CONFIRM)
    assert Rules.from_settings(Settings()) == Rules()


@st.composite
def corrupt_streams(draw):
    """Arrivals with drops, duplicates, local swaps and isolated corrupt counts (either way)."""
    start = draw(st.integers(0, 16383))
    n = draw(st.integers(2, 200))
    ext = list(range(start, start + n))
    drops = draw(st.sets(st.integers(1, n - 1), max_size=n // 4))
    out = [e for i, e in enumerate(ext) if i not in drops]
    for _ in range(draw(st.integers(0, 6))):
        if len(out) > 2:
            i = draw(st.integers(1, len(out) - 2))
            kind = draw(st.sampled_from(["swap", "dup", "outlier"]))
            if kind == "swap":
                out[i], out[i + 1] = out[i + 1], out[i]
            elif kind == "dup":
                out.insert(i, out[i])
            else:
                out.insert(i, out[i - 1] + draw(st.sampled_from([-1, 1])) * draw(st.integers(40, 16000)))
    if draw(st.booleans()):
        out.insert(0, out[0] + draw(st.sampled_from([-1, 1])) * draw(st.integers(40, 16000)))
    return [e % 16384 for e in out]


@given(corrupt_streams(), st.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_incremental_checker_agrees_with_the_truth_rule_in_any_chunking(seqs, chunk):
    acct = StreamAccount(0x101, 0)
    seq = np.array(seqs, dtype=np.uint16)
    for i in range(0, len(seq), chunk):
        acct.update(seq[i:i + chunk], np.arange(i, min(i + chunk, len(seq))))
    acct.finish()
    got = {k: acct.summary()[k] for k in ("packets", "gaps", "duplicates", "out_of_order")}
    assert got == sequence_accounting(seq)
    assert acct.pending == []


def _stream(seqs, chunk=1000, rules=Rules()):
    acct = StreamAccount(0x101, 0, rules=rules)
    seq = np.array(seqs, dtype=np.int64) % 16384
    events = []
    for i in range(0, len(seq), chunk):
        events += acct.update(seq[i:i + chunk], np.arange(i, min(i + chunk, len(seq))) * 100)
    return acct, events


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("jump", [5000, -5000, 8192, 300])
def test_one_corrupt_count_is_one_anomaly_not_a_gap_and_fills(chunk, jump):
    seqs = list(range(1000, 1100))
    seqs.insert(50, 1049 + jump)  # between 1049 and 1050
    acct, events = _stream(seqs, chunk)
    events += acct.finish()
    assert [(e.type, e.first_seq, e.stream_offset) for e in events] == [(OUTLIER, (1049 + jump) % 16384, 5000)]
    assert acct.missing == [] and acct.outliers == 1 and acct.packets == 100
    assert acct.duplicates == acct.out_of_order == 0 and acct.summary()["last_seq"] == 1099


def test_a_real_jump_is_a_gap_as_soon_as_the_next_packet_follows_it():
    acct, events = _stream([1, 2, 3, 500])
    assert events == [] and len(acct.pending) == 1  # 500 could still be an outlier
    events = acct.update(np.array([501]), np.array([9]))
    assert [(e.type, e.first_seq, e.count) for e in events] == [("gap", 4, 496)]
    assert acct.pending == []


def test_small_gaps_are_reported_at_once():
    acct, events = _stream([1, 2, 3, 7])
    assert [(e.type, e.first_seq, e.count) for e in events] == [("gap", 4, 3)] and acct.pending == []


def test_a_late_packet_far_behind_that_fills_a_gap_is_out_of_order():
    seqs = list(range(0, 10)) + list(range(200, 260))
    seqs.insert(30, 100)  # inside the gap 10..199, isolated far behind
    acct, events = _stream(seqs)
    events += acct.finish()
    assert [e.type for e in events] == ["gap", "out_of_order"]
    assert acct.missing_count == 189 and acct.outliers == 0


def test_state_keeps_a_bounded_number_of_ranges_and_exact_counts():
    seqs = [k for k in range(0, 3000) if k % 3 != 1]  # 1000 single-count gaps
    acct, events = _stream(seqs, chunk=97, rules=Rules(max_ranges=50))
    assert sum(e.type == "gap" for e in events) == 1000
    assert len(acct.missing) == 50 and acct.gaps_merged == 950
    assert acct.missing_count == 1000
    late = acct.update(np.array([1, 2998]), np.array([1, 2]))  # a coarse fill, an exact fill
    late += acct.finish()
    assert [e.type for e in late] == ["out_of_order", "out_of_order"]
    assert acct.missing_count == 998
    again = StreamAccount.from_dict(acct.to_dict(), Rules(max_ranges=50))
    assert again.summary() == acct.summary()


def test_a_held_packet_survives_a_snapshot():
    c = ContactAccount("C1")
    c.update(np.array([0x101] * 3), np.zeros(3, np.uint8), np.array([1, 2, 9000]), np.arange(3))
    again = ContactAccount.from_dict(c.to_dict())
    events = again.update(np.array([0x101] * 3), np.zeros(3, np.uint8), np.array([3, 4, 5]), np.arange(3, 6))
    assert [e.type for e in events] == [OUTLIER]
    assert again.report()["missing"] == 0 and again.report()["packets"] == 5


@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_a_corrupt_first_count_is_an_outlier_once_its_followers_agree(chunk):
    acct, events = _stream([7000, 10, 11, 12, 13], chunk)
    events += acct.finish()
    assert [e.type for e in events] == [OUTLIER] and acct.packets == 4
    assert acct.summary()["first_seq"] == 10 and acct.missing == []
    acct, events = _stream([10, 11, 12], chunk)
    assert events + acct.finish() == [] and acct.packets == 3
