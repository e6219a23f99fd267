"""Demultiplexer service: ``downlink.raw`` -> engineering, science, dead-letter, alert and state topics.

The logic is pure and lives in :mod:`consumers.demux.routing` (decode,
account, validate, route, cut under the message limit, passes of reopened
contacts, poison records). This module does the I/O, on two lanes:

* **bulk, exactly once** (the framework's :class:`TransactionalService`):
  recorded engineering, science runs, end-of-contact markers, dead letters,
  contact alerts and the ``demux.state`` snapshots are produced in the
  batch's transaction together with the consumed offsets;
* **fast, at least once**: real-time engineering (source 0 only) and
  sequence-anomaly alerts go through a separate idempotent,
  non-transactional producer the moment the raw chunk that carries them is
  decoded — not when the batch commits — so their latency does not depend on
  the batch size or on other contacts' backlog. Records of different
  partitions (contacts) are decoded round-robin, one chunk each in turn.
  Before the batch's transaction commits, every fast send of the batch is
  acknowledged, so a committed offset never covers an unsent real-time
  packet; a crash before the commit makes the batch run again and its fast
  messages go out twice (the realtime consumer de-duplicates them by APID,
  sequence count and packet time; alerts by their ranges).

docs/demux.md describes the contracts and the ordering guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.demux.routing import Emitted, Router
from consumers.framework.service import Input, Output, Record
from consumers.framework.transactional import TransactionalService
from monitoring import metrics
from streams.dictionary import load_dictionary
from streams.kafka import make_producer, read_table, start_client, topic_partitions
from streams.messages import DeadLetter, DemuxState, EngBatch, OpsAlert, SciEoc, SciRun

log = logging.getLogger(__name__)


def round_robin(records: list[Record]) -> list[Record]:
    """Records of each partition in order, partitions interleaved one record at a time."""
    by_tp: dict[TopicPartition, list[Record]] = defaultdict(list)
    for rec in records:
        by_tp[rec.tp].append(rec)
    queues = list(by_tp.values())
    out: list[Record] = []
    for k in range(max((len(q) for q in queues), default=0)):
        out.extend(q[k] for q in queues if k < len(q))
    return out


class Demux(TransactionalService):
    name = "demux"
    inputs = (Input("downlink.raw"),)
    outputs = {"tlm.eng.realtime": (EngBatch,), "tlm.eng.recorded": (EngBatch,),
               "tlm.sci": (SciRun, SciEoc), "tlm.deadletter": (DeadLetter,),
               "ops.alerts": (OpsAlert,), "demux.state": (DemuxState,)}
    max_records = 64
    #: bytes fetched per partition and request. aiokafka keeps one fetch in flight per broker: a
    #: deep fetch of one contact's backlog holds back the next chunk of every other contact.
    #: Measured (real-time chunk -> tlm.eng.realtime, 300 MB contact ingested unpaced alongside):
    #: 64 MiB p50 3.2 s / p99 7.3 s; 8 MiB 0.64 / 1.5 s; 2 MiB 0.31 / 0.80 s, for ~10 % of
    #: demux throughput on this shared machine (docs/demux.md)
    partition_fetch_bytes = 2 << 20
    #: records one partition contributes to a batch: a contact's backlog (its 64 MiB prefetch)
    #: delays another contact's real-time packets by at most this many chunks
    records_per_partition = 8

    def __init__(self, settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.eng_lengths = load_dictionary(settings.dictionary_file).packet_lengths()
        self.router: Router | None = None
        self.fast: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        parts = len(await topic_partitions(self.settings, self.settings.topic("tlm.sci")))
        self.router = Router.from_settings(self.settings, self.eng_lengths, parts)
        # the fast lane: idempotent, not transactional, sent at once (no linger)
        self.fast = make_producer(self.settings, linger_ms=0,
                                  compression_type=self.settings.compression_type())
        await start_client(self.settings, self.fast)
        await super().on_start()

    async def close(self) -> None:
        await super().close()
        if self.fast is not None:
            with contextlib.suppress(Exception):
                await self.fast.stop()
            self.fast = None

    @property
    def contacts(self):
        """Pass id -> state (for tests and reports)."""
        return self.router.contacts if self.router else {}

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        await super().on_assigned(assigned)
        table = await read_table(self.settings, "demux.state", DemuxState)
        assert self.router is not None
        self.router.load(table)
        log.info("demux state loaded", extra={"contacts": len(table)})

    async def fetch(self) -> list[tuple[TopicPartition, list[ConsumerRecord]]]:
        """A batch that takes at most ``records_per_partition`` records from each partition.

        aiokafka drains its prefetch buffers partition by partition, so a plain
        ``getmany`` would hand out a whole 64 MiB backlog of one contact before
        the one chunk another contact's real-time packets are waiting in.
        """
        assert self.consumer is not None
        k = self.records_per_partition
        got: dict[TopicPartition, list[ConsumerRecord]] = defaultdict(list)
        for tp, recs in (await self.consumer.getmany(timeout_ms=self.fetch_timeout_ms,
                                                     max_records=k)).items():
            got[tp] += recs
        for tp in sorted(self.assigned - set(got)):
            for t, recs in (await self.consumer.getmany(tp, timeout_ms=0, max_records=k)).items():
                got[t] += recs
        return [(tp, recs) for tp, recs in got.items() if recs and tp in self.assigned]

    async def process(self, records: list[Record]) -> list[Output]:
        assert self.router is not None
        bulk: list[Output] = []
        sent: list[asyncio.Future] = []
        for rec in round_robin(records):
            emitted = await asyncio.to_thread(self.router.record, rec)
            bulk += emitted.bulk
            sent += await self._send_fast(emitted, rec.timestamp)
        end: Emitted = self.router.end_batch()
        sent += await self._send_fast(end, 0)
        if sent:
            # acknowledged before the batch's offsets commit, without holding up the next batch
            self.defer_durable(asyncio.ensure_future(asyncio.gather(*sent)))
        return bulk + end.bulk

    async def _send_fast(self, emitted: Emitted, raw_ts: int) -> list[asyncio.Future]:
        if not emitted.fast:
            return []
        assert self.fast is not None
        futures = []
        for out in emitted.fast:
            payload = out.payload()
            futures.append(await self.fast.send(self.settings.topic(out.topic), payload,
                                                key=out.key, partition=out.partition))
            metrics.MESSAGES_OUT.labels(self.name, out.topic).inc()
            metrics.BYTES_OUT.labels(self.name, out.topic).inc(len(payload))
        if raw_ts:
            metrics.FAST_LANE_LATENCY.observe(max(0.0, time.time() - raw_ts / 1000))
        return futures
