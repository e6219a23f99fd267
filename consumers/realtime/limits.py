"""Limit checking that does not flap: yellow/red low/high with a dead band and persistence.

Like Yamcs' *minimum violations* and COSMOS' *persistence*, a limit state
changes only after ``persistence`` consecutive samples ask for the same kind
of change; like an alarm's dead band (hysteresis), *leaving* a limit needs the
value back inside it by ``deadband`` x the limit pair's width, while
*entering* needs only to cross it. A value oscillating in a thin band around a
limit therefore yields one transition, not one per sample.

Per sample, with the current state ``s``:

* ``enter`` = the level with the dictionary limits (0 nominal, 1 yellow, 2 red);
* ``exit``  = the level with the limits narrowed by the dead band (``exit >= enter``);
* the sample *asks* for ``enter`` if ``enter > s``, for ``exit`` if ``exit < s``,
  and for nothing otherwise.

A transition happens at the ``persistence``-th consecutive asking sample (the
count carries over from batch to batch) to the level that sample asks for.
Everything is numpy over the batch; the only loop is over transitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.dictionary import LIMIT_NAMES, NOMINAL, RED, YELLOW, Parameter


@dataclass(frozen=True)
class Transition:
    """A limit state change at sample ``index`` of the batch given to ``update``."""

    index: int
    old: int
    new: int

    @property
    def old_name(self) -> str:
        return LIMIT_NAMES[self.old]

    @property
    def new_name(self) -> str:
        return LIMIT_NAMES[self.new]


Pair = tuple[float, float] | None


def _narrow(pair: Pair, deadband: float) -> Pair:
    if pair is None:
        return None
    lo, hi = pair
    band = deadband * (hi - lo)
    return (lo + band, hi - band)


def _level1(v: float, yellow: Pair, red: Pair) -> int:
    if red is not None and (v < red[0] or v > red[1]):
        return RED
    if yellow is not None and (v < yellow[0] or v > yellow[1]):
        return YELLOW
    return NOMINAL


#: batches up to this size are checked sample by sample: a real-time packet brings one sample
#: per parameter, and numpy's per-call cost (~50 us) would dominate the decommutation
SCALAR_MAX = 4


def _level(v: np.ndarray, yellow: Pair, red: Pair) -> np.ndarray:
    out = np.full(v.shape, NOMINAL, dtype=np.int8)
    if yellow is not None:
        out[(v < yellow[0]) | (v > yellow[1])] = YELLOW
    if red is not None:
        out[(v < red[0]) | (v > red[1])] = RED
    return out


class LimitTracker:
    """Limit state of one parameter across batches."""

    def __init__(self, yellow: Pair, red: Pair, *, persistence: int = 1,
                 deadband: float = 0.0, state: int = NOMINAL) -> None:
        if persistence < 1:
            raise ValueError("persistence must be at least 1")
        self.yellow, self.red = yellow, red
        self.exit_yellow, self.exit_red = _narrow(yellow, deadband), _narrow(red, deadband)
        self.persistence = persistence
        self.state = int(state)
        #: consecutive samples so far asking for a change (carried between batches)
        self.run = 0

    @classmethod
    def for_parameter(cls, p: Parameter, *, persistence: int, deadband: float) -> "LimitTracker":
        return cls(p.yellow, p.red, persistence=persistence, deadband=deadband)

    @property
    def checked(self) -> bool:
        return self.yellow is not None or self.red is not None

    def update(self, values: np.ndarray) -> tuple[np.ndarray, list[Transition]]:
        """Limit state after each sample (int8 array) and the transitions, in order."""
        v = np.asarray(values, dtype=np.float64)
        n = v.size
        states = np.full(n, self.state, dtype=np.int8)
        transitions: list[Transition] = []
        if not self.checked or n == 0:
            return states, transitions
        if n <= SCALAR_MAX:
            return self._update_few(v.tolist(), states)
        enter = _level(v, self.yellow, self.red)
        exit_ = _level(v, self.exit_yellow, self.exit_red)
        i = 0
        while i < n:
            s = self.state
            e, x = enter[i:], exit_[i:]
            want = np.where(e > s, e, np.where(x < s, x, s))
            asking = want != s
            pos = np.arange(want.size)
            last_quiet = np.maximum.accumulate(np.where(asking, -1, pos))
            run = pos - last_quiet + np.where(last_quiet < 0, self.run, 0)
            run[~asking] = 0
            hits = np.flatnonzero(run >= self.persistence)
            if hits.size == 0:
                states[i:] = s
                self.run = int(run[-1])
                break
            j = int(hits[0])
            new = int(want[j])
            states[i:i + j] = s
            states[i + j] = new
            transitions.append(Transition(i + j, s, new))
            self.state, self.run = new, 0
            i += j + 1
        return states, transitions

    def _update_few(self, values: list[float], states: np.ndarray) -> tuple[np.ndarray, list[Transition]]:
        """The same rule, one sample at a time (no numpy per sample)."""
        transitions: list[Transition] = []
        for i, v in enumerate(values):
            s = self.state
            enter = _level1(v, self.yellow, self.red)
            if enter > s:
                want = enter
            else:
                x = _level1(v, self.exit_yellow, self.exit_red)
                want = x if x < s else s
            if want == s:
                self.run = 0
            else:
                self.run += 1
                if self.run >= self.persistence:
                    transitions.append(Transition(i, s, want))
                    self.state, self.run = want, 0
            states[i] = self.state
        return states, transitions
