"""Packet accounting against a brute-force model (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from consumers.demux.accounting import ContactAccount, StreamAccount


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
