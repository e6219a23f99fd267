"""Gauges no single service sets itself: consumer lag per partition, records consumed, data disk.

The runner starts :func:`sample_forever` next to the services it runs, so
every consuming service gets its lag exported without code of its own. It
reads only what the Kafka client already knows (positions and the last
stable offsets of the latest fetch responses): no extra broker round trip.
Services are duck-typed (``name``, ``consumer``, ``assigned``) so this module
needs nothing from ``consumers``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable

from monitoring import metrics

log = logging.getLogger(__name__)


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the data dir may not exist yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class Sampler:
    """One sampling pass per :meth:`sample`; remembers what it exported to retract it."""

    def __init__(self, settings: Any, services: Iterable[Any]) -> None:
        self.settings = settings
        self.services = list(services)
        self._seen: dict[tuple[str, str, int], int] = {}  # furthest position per (service, topic, partition)
        self._lag_labels: set[tuple[str, str, str]] = set()

    def logical(self, topic: str) -> str:
        prefix = self.settings.topic_prefix
        return topic[len(prefix):] if prefix and topic.startswith(prefix) else topic

    def sample_disk(self) -> None:
        usage = shutil.disk_usage(existing_parent(Path(self.settings.data_dir)))
        metrics.DATA_DISK_FREE_BYTES.set(usage.free)
        metrics.DATA_DISK_SIZE_BYTES.set(usage.total)

    async def sample_lag(self) -> None:
        current: set[tuple[str, str, str]] = set()
        for s in self.services:
            consumer = getattr(s, "consumer", None)
            assigned = sorted(getattr(s, "assigned", ()) or ())
            if consumer is None or not assigned:
                continue
            per_topic: dict[str, int] = {}
            for tp in assigned:
                try:
                    position = await asyncio.wait_for(consumer.position(tp), 1.0)
                except Exception:  # partition just revoked, or its position not known yet
                    continue
                topic = self.logical(tp.topic)
                key = (s.name, topic, tp.partition)
                if key not in self._seen:  # newly assigned: count from where the group had committed
                    self._seen[key] = await self.start_offset(consumer, tp, position)
                if position > self._seen[key]:
                    metrics.RECORDS_IN.labels(s.name, topic).inc(position - self._seen[key])
                    self._seen[key] = position
                end = consumer.last_stable_offset(tp)
                if end is None or end < 0:
                    end = consumer.highwater(tp)
                if end is None:
                    continue
                lag = max(0, end - position)
                labels = (s.name, topic, str(tp.partition))
                metrics.PARTITION_LAG.labels(*labels).set(lag)
                current.add(labels)
                per_topic[topic] = per_topic.get(topic, 0) + lag
            for topic, lag in per_topic.items():
                metrics.CONSUMER_LAG.labels(s.name, topic).set(lag)
        for labels in self._lag_labels - current:  # partitions moved to another instance
            try:
                metrics.PARTITION_LAG.remove(*labels)
            except KeyError:
                pass
        self._lag_labels = current

    @staticmethod
    async def start_offset(consumer: Any, tp: Any, position: int) -> int:
        """Where consumption of a newly seen partition began: the committed offset, else the log start.

        One broker round trip per partition assignment (not per sample); on any failure the
        current position (records consumed before this first sample are then not counted).
        """
        try:
            committed = await asyncio.wait_for(consumer.committed(tp), 2.0)
            if committed is None or committed < 0:
                committed = (await asyncio.wait_for(consumer.beginning_offsets([tp]), 2.0))[tp]
            return min(int(committed), position)
        except Exception:
            return position

    async def sample(self) -> None:
        try:
            self.sample_disk()
        except OSError as exc:
            log.warning("data disk not measurable", extra={"data_dir": str(self.settings.data_dir),
                                                           "error": repr(exc)})
        await self.sample_lag()


async def sample_forever(settings: Any, services: Iterable[Any]) -> None:
    """Sample every ``settings.metrics.sample_seconds`` until cancelled; a failed pass is logged, not fatal."""
    sampler = Sampler(settings, services)
    while True:
        try:
            await sampler.sample()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("metrics sample failed", extra={"error": repr(exc)})
        await asyncio.sleep(settings.metrics.sample_seconds)
