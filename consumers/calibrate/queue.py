"""The calibrate service's in-memory scheduling: a priority queue and in-order offset commits.

One topic (``cal.requests``) carries all three lanes, so Kafka's order is not
the order of work: requests are consumed as they come, queued by lane
(``too`` < ``normal`` < ``reprocess``, then arrival order) and the most urgent
runs first. Offsets, though, may only be committed up to a record whose work
is durable and everything before it too: :class:`OffsetTracker` keeps, per
partition, the offsets taken and those done, and says how far a commit may go.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from streams.messages import PRIORITIES

RANK = {p: k for k, p in enumerate(PRIORITIES)}  # too 0, normal 1, reprocess 2


@dataclass(order=True)
class Job:
    rank: int
    seq: int
    kind: str = field(compare=False)            # "exposure" | "visit"
    payload: Any = field(compare=False)         # a CalRequest, or the visit key
    tp: TopicPartition | None = field(compare=False, default=None)
    offset: int | None = field(compare=False, default=None)

    @property
    def priority(self) -> str:
        return PRIORITIES[self.rank]


class JobQueue:
    """Most urgent lane first, first come first served within a lane."""

    def __init__(self) -> None:
        self._heap: list[Job] = []
        self._seq = itertools.count()

    def push(self, kind: str, payload: Any, priority: str, tp: TopicPartition | None = None,
             offset: int | None = None) -> Job:
        job = Job(RANK[priority], next(self._seq), kind, payload, tp, offset)
        heapq.heappush(self._heap, job)
        return job

    def pop(self, max_rank: int | None = None) -> Job | None:
        """The most urgent job (only if its rank <= ``max_rank`` when given)."""
        if not self._heap or (max_rank is not None and self._heap[0].rank > max_rank):
            return None
        return heapq.heappop(self._heap)

    def peek_rank(self) -> int | None:
        return self._heap[0].rank if self._heap else None

    def drop(self, partitions: set[TopicPartition]) -> list[Job]:
        """Remove the jobs of revoked partitions (their new owner redoes them); returns them."""
        gone = [j for j in self._heap if j.tp in partitions]
        if gone:
            self._heap = [j for j in self._heap if j.tp not in partitions]
            heapq.heapify(self._heap)
        return gone

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self):
        return iter(sorted(self._heap))


class OffsetTracker:
    """Per partition: the offsets taken, in order, and which are done."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[int]] = {}
        self._done: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}

    def taken(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, deque()).append(offset)
        self._done.setdefault(tp, set())
        self._next[tp] = offset + 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        if tp in self._done:
            self._done[tp].add(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """tp -> the offset to commit (first not-done offset, or past the last one taken)."""
        out: dict[TopicPartition, int] = {}
        for tp, pend in self._pending.items():
            done = self._done[tp]
            while pend and pend[0] in done:
                done.discard(pend.popleft())
            out[tp] = pend[0] if pend else self._next[tp]
        return out

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._pending.pop(tp, None)
            self._done.pop(tp, None)
            self._next.pop(tp, None)

    def outstanding(self) -> int:
        return sum(len(p) - len(self._done.get(tp, ())) for tp, p in self._pending.items())
