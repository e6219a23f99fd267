"""Limit tracking: hysteresis (dead band) and persistence, batch boundaries, no flapping."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.realtime import limits as limits_module
from consumers.realtime.limits import LimitTracker
from streams.dictionary import NOMINAL, RED, YELLOW

YEL, REDL = (10.0, 20.0), (5.0, 25.0)


def tracker(persistence: int = 1, deadband: float = 0.05) -> LimitTracker:
    return LimitTracker(YEL, REDL, persistence=persistence, deadband=deadband)


def test_levels_without_persistence():
    t = tracker(deadband=0.0)
    states, trans = t.update(np.array([15.0, 21.0, 26.0, 15.0, 4.0]))
    assert states.tolist() == [NOMINAL, YELLOW, RED, NOMINAL, RED]
    assert [(x.index, x.old, x.new) for x in trans] == [(1, 0, 1), (2, 1, 2), (3, 2, 0), (4, 0, 2)]


def test_oscillation_around_a_limit_is_one_transition():
    # noise of +-0.2 around the yellow high limit (20): the dead band is 0.05 * 10 = 0.5
    rng = np.random.default_rng(1)
    values = 20.0 + rng.uniform(-0.2, 0.2, 500)
    values[0] = 20.1  # starts just above
    t = tracker()
    _, trans = t.update(values)
    assert [(x.old, x.new) for x in trans] == [(NOMINAL, YELLOW)]
    # without a dead band the same noise flaps many times
    _, flaps = tracker(deadband=0.0).update(values)
    assert len(flaps) > 50
    # back well inside: one transition down
    _, down = t.update(np.full(3, 19.0))
    assert [(x.old, x.new) for x in down] == [(YELLOW, NOMINAL)]


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_persistence_delays_by_exactly_n_minus_one_samples(n):
    values = np.concatenate([np.full(5, 15.0), np.full(20, 22.0), np.full(20, 15.0)])
    states, trans = tracker(persistence=n).update(values)
    assert [(x.index, x.new) for x in trans] == [(5 + n - 1, YELLOW), (25 + n - 1, NOMINAL)]
    assert states[5 + n - 2] == NOMINAL  # one sample earlier: not yet
    assert states[5 + n - 1] == YELLOW


def test_persistence_counts_across_batches():
    t = tracker(persistence=4)
    for v in (22.0, 22.0, 22.0):
        _, trans = t.update(np.array([v]))
        assert trans == []
    _, trans = t.update(np.array([22.0, 22.0]))
    assert [(x.index, x.new) for x in trans] == [(0, YELLOW)]


def test_an_interrupted_run_starts_over():
    values = np.array([22.0, 22.0, 15.0, 22.0, 22.0, 22.0])
    _, trans = tracker(persistence=3).update(values)
    assert [(x.index, x.new) for x in trans] == [(5, YELLOW)]


def test_leaving_red_needs_the_dead_band_inside_red():
    t = tracker(deadband=0.1)  # red band width 20 -> 2.0; yellow width 10 -> 1.0
    t.update(np.array([26.0]))
    assert t.state == RED
    _, trans = t.update(np.array([24.5]))  # inside red but within the dead band: still red
    assert trans == [] and t.state == RED
    _, trans = t.update(np.array([22.5]))  # 2.5 inside red, beyond yellow (20 - 1 = 19): yellow
    assert [(x.old, x.new) for x in trans] == [(RED, YELLOW)]


def test_parameter_without_limits_never_changes():
    t = LimitTracker(None, None)
    states, trans = t.update(np.array([1e9, -1e9]))
    assert trans == [] and states.tolist() == [0, 0]


@given(values=st.lists(st.one_of(st.floats(-10, 10), st.just(float("nan"))), min_size=1, max_size=60),
       persistence=st.integers(1, 4), deadband=st.sampled_from([0.0, 0.1, 0.3]),
       cuts=st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_small_batches_follow_the_same_rule_as_the_vectorized_path(values, persistence, deadband, cuts):
    """One sample per packet takes the scalar path; its states and transitions are the numpy path's."""
    def run(tracker, batches):
        states, changes, base = [], [], 0
        for b in batches:
            st_, tr = tracker.update(np.array(b))
            states += st_.tolist()
            changes += [(base + t.index, t.old, t.new) for t in tr]
            base += len(b)
        return states, changes

    def tracker():
        return LimitTracker((-3.0, 3.0), (-6.0, 6.0), persistence=persistence, deadband=deadband)
    batches, i, k = [], 0, 0
    while i < len(values):
        n = cuts[k % len(cuts)]
        batches.append(values[i:i + n])
        i, k = i + n, k + 1
    whole = tracker()
    with patch.object(limits_module, "SCALAR_MAX", 0):
        want = run(whole, [values])
    assert run(tracker(), batches) == want
