"""Zombie fencing: a paused replica never commits for partitions another replica took over.

The problem. Instances of a service have distinct transactional ids
(``downlink.<service>.<instance>``), so a new owner's ``init_transactions``
does not fence an old owner that is merely paused (GC pause, SIGSTOP, a VM
freeze). Kafka's answer for that, KIP-447, has the producer send the
consumer-group generation with ``TxnOffsetCommit`` so the broker refuses a
stale generation; aiokafka sends no generation (TxnOffsetCommit v0), so a
replica paused past the session timeout and then resumed would commit its
batch: duplicate outputs, a second announcement, stale state.

The mechanism: a membership *lease* checked before every effect.

* A check asks the group coordinator directly: a Heartbeat request with the
  consumer's current (generation, member id). The broker answers NONE (or
  REBALANCE_IN_PROGRESS: still a member of this generation) only to a
  member whose session has not expired; a member that lost its partitions
  gets UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION / FENCED_INSTANCE_ID.
* A successful check sent at local time ``t`` proves membership until
  ``t + session_timeout`` (the broker's session deadline is at least that),
  and partitions move only in a new generation, which a paused member
  cannot be part of. So the check is repeated with a round trip only when
  the lease (half the session timeout) ran out or the generation changed;
  otherwise it is a clock read. The check before ``process`` binds the
  batch to the generation it was read under; the ``tick`` and ``commit``
  checks of that batch refuse any other generation (a replica that resumed
  and already rejoined is a member again, but not of the generation that
  owned the batch's partitions). A resumed zombie always finds its lease
  expired (its clock jumped by the pause) and fails the round trip.
* The framework checks before a batch is processed, before the time-driven
  ``tick`` and right before the transaction commits (after the offsets were
  added). A failed check raises :class:`~core.errors.FencedError`
  (retriable): the transaction is aborted, the service rewinds to committed
  offsets, reloads its state and carries on once it has rejoined; the
  framework counts it in ``downlink_retries_total{reason="FencedError"}``.

Why not the alternatives: per-input-partition transactional ids (the
pre-KIP-447 Kafka Streams way) need one producer per input partition and
outputs grouped by input partition, which the service API does not carry;
confluent-kafka (installable here: a 2.16 manylinux wheel) gives KIP-447
only when the *consumer* is confluent-kafka too (``consumer_group_metadata``),
i.e. replacing aiokafka throughout. The lease needs neither; its measured
cost is in docs/faults.md.

The window after the final check (a pause between it and the commit request
leaving the process) is closed by the timeouts' order (core/settings.py):
the transaction timeout plus the broker's 1 s abort sweep is below the
session timeout, so a transaction left open by a pause long enough to lose
the partitions is aborted by the broker before they move, and the resumed
commit fails with ``ProducerFenced`` (retriable).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

from aiokafka import errors as kerrors
from aiokafka.protocol.group import HeartbeatRequest

from core.errors import FencedError

log = logging.getLogger(__name__)

#: a check proves membership for this fraction of the session timeout
LEASE_FRACTION = 0.5
_MEMBER_OK = (kerrors.NoError, kerrors.RebalanceInProgressError)
#: generation a batch was processed under; the batch's commit task inherits it (asyncio copies the
#: context when the framework creates that task), so a commit is refused under any other generation
_BATCH_GENERATION: ContextVar[int | None] = ContextVar("downlink_batch_generation", default=None)


class Fence:
    """The membership lease of one consuming service (see the module docstring)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.lease_until = 0.0
        self.generation: int | None = None
        self.round_trips = 0

    @property
    def lease_seconds(self) -> float:
        return self.service.settings.kafka.session_timeout_ms / 1000 * LEASE_FRACTION

    async def check(self, where: str) -> None:
        """Return if this instance still owns its assignment, else raise FencedError."""
        consumer = self.service.consumer
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is None or not self.service.assigned:
            return  # nothing owned, nothing to protect
        generation, member = coordinator.generation, coordinator.member_id
        bound = _BATCH_GENERATION.get()
        if where == "process":
            _BATCH_GENERATION.set(generation)
        elif bound is not None and generation != bound:
            # rejoined meanwhile (e.g. resumed after a pause, the revoke did not wait for this batch):
            # membership now says nothing about the partitions the batch was read from
            self._refuse(where, generation, f"generation changed from {bound}")
        if generation == self.generation and time.monotonic() < self.lease_until:
            return
        sent = time.monotonic()
        self.round_trips += 1
        try:
            resp = await coordinator._send_req(HeartbeatRequest(coordinator.group_id, generation, member))
            error = kerrors.for_code(resp.error_code)
        except kerrors.KafkaError as exc:
            error = type(exc)
        if error in _MEMBER_OK and coordinator.generation == generation:
            self.generation, self.lease_until = generation, sent + self.lease_seconds
            return
        self._refuse(where, generation, error.__name__)

    def _refuse(self, where: str, generation: int, why: str) -> None:
        self.generation, self.lease_until = None, 0.0
        log.warning("not a member of the group's current generation; batch aborted", extra={
            "service": self.service.name, "instance": self.service.instance, "where": where,
            "generation": generation, "error": why})
        raise FencedError(
            f"{self.service.name} instance {self.service.instance!r} cannot prove it still owns its "
            f"partitions ({why} for generation {generation} before {where}); it was paused "
            "or cut off past the session timeout and another instance may own them: nothing is "
            "committed, the batch is redone after the group is rejoined")


def bound_generation() -> int | None:
    """The generation the current batch was processed under (None outside a batch)."""
    return _BATCH_GENERATION.get()


def bind_generation(generation: int | None) -> None:
    """Make the checks of the current task refuse any generation but ``generation``."""
    _BATCH_GENERATION.set(generation)


def fence_of(service: Any) -> Fence:
    fence = service.__dict__.get("_fence")
    if fence is None:
        fence = service.__dict__["_fence"] = Fence(service)
    return fence


async def check(service: Any, where: str = "commit") -> None:
    """The framework's hook: raise FencedError unless ``service`` still owns its partitions."""
    await fence_of(service).check(where)
