"""The calibrate service: ``cal.requests`` -> _rate, _rateints, _cal (and _i2d per visit) -> ``cal.done``.

Scheduling (one topic carries all three lanes, so Kafka's order is not the
order of work):

1. Consume requests as they come and queue them in memory by lane: ToO in its
   own queue, ``normal`` before ``reprocess`` in the bulk queue, first come
   first served within a lane. At most ``calibrate.max_queued`` are held; past
   that the partitions are paused (still polled, so the group keeps us).
2. Run the work in processes, never on the event loop: bulk jobs in a pool of
   ``calibrate.workers`` processes, ToO jobs in one process kept for them, so a
   ToO starts at once whatever the backlog. While a ToO runs, bulk workers
   pause between row blocks (a shared event), so it has the CPU to itself.
3. When a job's products are durable (fsynced and renamed by the pipeline),
   produce its ``CalDone`` and wait for the broker's acknowledgement; then the
   record counts as done.
4. Commit, per partition, only up to the first record whose work is not done
   (:class:`~consumers.calibrate.queue.OffsetTracker`): a crash replays the
   unfinished requests, whose deterministic output folders make the replay
   reuse or rewrite identical files.
5. When the last queued or running exposure of a visit and detector is done,
   queue the visit's L3 (combination of its cal products), whose ``CalDone``
   carries ``kind="visit"``.

A request that cannot be calibrated (bad file, missing reference files)
becomes a dead letter with the reason and is committed past; a retriable
failure (full disk) is retried with a growing pause.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from consumers.calibrate.queue import JobQueue, Job, OffsetTracker
from consumers.framework.service import ConsumingService, Input, Output, Record
from core.errors import DownlinkError
from core.version import SOFTWARE_VERSION
from monitoring import metrics
from streams.kafka import make_producer, start_client
from streams.messages import CalDone, CalRequest, DeadLetter

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def visit_key(exposure_id: str) -> tuple[str, str]:
    """(jw<ppppp><ooo><vvv>, detector) of an exposure id."""
    return exposure_id[:13], exposure_id.rsplit("_", 1)[-1]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: "Calibrate") -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.service.assigned |= set(assigned)


class Calibrate(ConsumingService):
    name = "calibrate"
    inputs = (Input("cal.requests", (CalRequest,)),)
    outputs = {"cal.done": (CalDone,), "tlm.deadletter": (DeadLetter,)}

    def __init__(self, settings: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        c = settings.calibrate
        self.refs_root = Path(c.refs_dir) if c.refs_dir else Path(settings.data_dir) / "refs"
        self.out_root = Path(c.out_dir) if c.out_dir else Path(settings.data_dir) / "cal"
        self.too_programs = {int(p) for p in c.too_programs.split(",") if p.strip()}
        self.bulk_slots = c.workers
        self.too_q = JobQueue()
        self.bulk_q = JobQueue()
        self.tracker = OffsetTracker()
        self.inflight: dict[asyncio.Task, tuple[Job, str]] = {}
        self.producer: AIOKafkaProducer | None = None
        self._pools: dict[str, ProcessPoolExecutor] = {}
        self._pause: Any = None
        self._attempts: collections.Counter = collections.Counter()
        self._l3_pending: set[tuple[str, str]] = set()
        self._committed: dict[TopicPartition, int] = {}
        #: (exposure id, priority) in the order their work finished (tests and benchmarks read it)
        self.finished: list[tuple[str, str]] = []

    # lifecycle -----------------------------------------------------------------------------------
    async def on_start(self) -> None:
        from consumers.calibrate import worker

        ctx = worker.spawn_context()
        self._pause = ctx.Event()
        self._pools = {
            "bulk": ProcessPoolExecutor(self.bulk_slots, mp_context=ctx, initializer=worker.init_worker,
                                        initargs=(self._pause, "bulk")),
            "too": ProcessPoolExecutor(1, mp_context=ctx, initializer=worker.init_worker,
                                       initargs=(self._pause, "too")),
        }
        loop = asyncio.get_running_loop()
        # import numpy/astropy in every worker now, not when the first ToO arrives
        await asyncio.gather(*(loop.run_in_executor(p, _warm) for p in self._pools.values()
                               for _ in range(p._max_workers)))
        self.producer = make_producer(self.settings)
        await start_client(self.settings, self.producer)
        await self.open_consumer(_Rebalance(self))

    async def close(self) -> None:
        await super().close()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools = {}

    def has_pending_work(self) -> bool:
        return bool(len(self.too_q) or len(self.bulk_q) or self.inflight)

    # main loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._intake()
            self._dispatch()
            await self._reap()
            await self._commit()

    async def _intake(self) -> None:
        assert self.consumer is not None
        full = len(self.too_q) + len(self.bulk_q) >= self.settings.calibrate.max_queued
        parts = set(self.assigned)
        if full and parts - self._paused:
            self.consumer.pause(*(parts - self._paused))
            self._paused |= parts
        elif not full and self._paused:
            self.consumer.resume(*(self._paused & parts))
            self._paused = set()
        got = await self.fetch()
        records, letters = self.decode_batch(got)
        for out in letters:
            await self._produce([out])
            letter = out.value
            tp = TopicPartition(self.settings.topic("cal.requests"), letter.partition)
            self.tracker.taken(tp, letter.offset)
            self.tracker.done(tp, letter.offset)
        for rec in records:
            self.tracker.taken(rec.tp, rec.offset)
            req: CalRequest = rec.value
            priority = "too" if req.program in self.too_programs else req.priority
            queue = self.too_q if priority == "too" else self.bulk_q
            queue.push("exposure", req, priority, rec.tp, rec.offset)
            self.last_activity = time.monotonic()
            log.info("calibration queued", extra={"exposure_id": req.exposure_id, "priority": priority,
                                                  "queued": len(self.too_q) + len(self.bulk_q)})

    def _busy(self, lane: str) -> int:
        return sum(1 for _, ln in self.inflight.values() if ln == lane)

    def _dispatch(self) -> None:
        while self._busy("too") < 1 and len(self.too_q):
            self._start(self.too_q.pop(), "too")
        while self._busy("bulk") < self.bulk_slots and len(self.bulk_q):
            self._start(self.bulk_q.pop(), "bulk")
        if self._busy("too"):
            self._pause.set()
        else:
            self._pause.clear()

    def _start(self, job: Job, lane: str) -> None:
        from consumers.calibrate import worker

        loop = asyncio.get_running_loop()
        c = self.settings.calibrate
        if job.kind == "exposure":
            payload = {"request": dataclasses.asdict(job.payload), "refs_root": str(self.refs_root),
                       "out_root": str(self.out_root), "block_rows": c.block_rows,
                       "pinned": c.context or None}
            fut = loop.run_in_executor(self._pools[lane], worker.calibrate_request, payload)
        else:
            fut = loop.run_in_executor(self._pools[lane], worker.build_l3, job.payload)
        task = asyncio.ensure_future(fut)
        self.inflight[task] = (job, lane)
        if lane == "too":
            self._pause.set()

    async def _reap(self) -> None:
        done = [t for t in self.inflight if t.done()]
        for task in done:
            job, lane = self.inflight.pop(task)
            exc = task.exception()
            if exc is None:
                await self._finished(job, task.result())
            else:
                await self._failed(job, lane, exc)

    async def _finished(self, job: Job, result: dict[str, Any]) -> None:
        now = time.time()
        if job.kind == "visit":
            info = job.payload
            done = CalDone(exposure_id=info["exposure_id"], products=result["products"],
                           context=info.get("context", ""), cal_version=SOFTWARE_VERSION,
                           priority=job.priority, version=1, started_at=result["started_at"],
                           finished_at=result["finished_at"], kind="visit",
                           members=list(result["products"][0].get("members", [])))
            await self._produce([Output("cal.done", done, key=info["exposure_id"].encode())])
            metrics.CAL_PRODUCTS_WRITTEN.labels("l3", job.priority).inc()
            self._l3_pending.discard((info["visit_key"], info["detector"]))
            log.info("L3 written", extra={"visit": info["visit_key"], "detector": info["detector"],
                                          "members": len(done.members)})
            return
        req: CalRequest = job.payload
        done = CalDone(exposure_id=req.exposure_id, products=result["products"],
                       context=result["context"], cal_version=SOFTWARE_VERSION,
                       priority=job.priority, uncal_path=req.uncal_path,
                       uncal_sha256=result["uncal_sha256"], l0_version=req.l0_version,
                       program=req.program, started_at=result["started_at"],
                       finished_at=result["finished_at"], l0_received_at=req.l0_received_at)
        await self._produce([Output("cal.done", done, key=req.exposure_id.encode())])
        self.tracker.done(job.tp, job.offset)
        self.finished.append((req.exposure_id, job.priority))
        self._attempts.pop(job.seq, None)
        self._observe(job, req, result, now)
        log.info("calibrated", extra={"exposure_id": req.exposure_id, "priority": job.priority,
                                      "context": result["context"], "reused": result.get("reused"),
                                      "seconds": round(result["finished_at"] - result["started_at"], 3)})
        self._maybe_l3(req, result, job)

    def _observe(self, job: Job, req: CalRequest, result: dict[str, Any], now: float) -> None:
        for step, seconds in result.get("seconds", {}).items():
            if step not in ("total", "read", "write", "references"):
                metrics.CAL_STEP_SECONDS.labels(step).observe(seconds)
        for p in result["products"]:
            metrics.CAL_PRODUCTS_WRITTEN.labels("l2a" if p["level"] == "2a" else "l2b", job.priority).inc()
        if req.l0_received_at > 0:
            latency = result["finished_at"] - req.l0_received_at
            metrics.L0_TO_L2B_SECONDS.labels(job.priority).observe(latency)
            if job.priority == "too":
                metrics.TOO_LATENCY_SECONDS.observe(latency)
            # the 5-day share (L2B_WITHIN_5_DAYS) is the archive's: it sees every exposure's L0 and L2b

    def _maybe_l3(self, req: CalRequest, result: dict[str, Any], job: Job) -> None:
        key = visit_key(req.exposure_id)
        waiting = [j for q in (self.too_q, self.bulk_q) for j in q if j.kind == "exposure"]
        waiting += [j for j, _ in self.inflight.values() if j.kind == "exposure"]
        if any(visit_key(j.payload.exposure_id) == key for j in waiting) or key in self._l3_pending:
            return
        members = latest_cal_products(self.out_root, *key)
        if not members:
            return
        self._l3_pending.add(key)
        payload = {"members": [str(p) for p in members], "out_root": str(self.out_root),
                   "program": int(key[0][2:7]), "observation": int(key[0][7:10]),
                   "visit": int(key[0][10:13]), "visit_key": key[0], "detector": key[1],
                   "block_rows": self.settings.calibrate.block_rows,
                   "exposure_id": req.exposure_id, "context": result["context"]}
        self.bulk_q.push("visit", payload, "normal" if job.priority == "too" else job.priority)

    async def _failed(self, job: Job, lane: str, exc: BaseException) -> None:
        if isinstance(exc, BrokenProcessPool):
            from consumers.calibrate import worker
            ctx = worker.spawn_context()
            n = 1 if lane == "too" else self.bulk_slots
            self._pools[lane] = ProcessPoolExecutor(n, mp_context=ctx, initializer=worker.init_worker,
                                                    initargs=(self._pause, lane))
        retriable = isinstance(exc, BrokenProcessPool) or (isinstance(exc, DownlinkError) and exc.retriable)
        self._attempts[job.seq] += 1
        name = job.payload.exposure_id if job.kind == "exposure" else job.payload.get("visit_key")
        if retriable and self._attempts[job.seq] < MAX_ATTEMPTS:
            delay = self.settings.kafka.retry_backoff_seconds * 2 ** (self._attempts[job.seq] - 1)
            metrics.RETRIES.labels(self.name, type(exc).__name__[:40]).inc()
            log.warning("calibration failed; retrying", extra={"exposure_id": name, "error": repr(exc),
                                                             "attempt": self._attempts[job.seq],
                                                             "backoff_s": delay})
            queue = self.too_q if lane == "too" else self.bulk_q
            asyncio.get_running_loop().call_later(
                delay, lambda: queue.push(job.kind, job.payload, job.priority, job.tp, job.offset))
            return
        self._attempts.pop(job.seq, None)
        reason = f"{type(exc).__name__}: {exc}"
        log.error("calibration failed", extra={"exposure_id": name, "error": reason})
        if job.kind == "visit":
            self._l3_pending.discard((job.payload.get("visit_key"), job.payload.get("detector")))
            return
        rec = Record("cal.requests", job.tp, job.offset, job.payload.exposure_id.encode(), job.payload,
                     {}, 0)
        await self._produce([self.dead_letter_for("cal.requests", job.tp, rec, reason,
                                                  exposure_id=job.payload.exposure_id)])
        self.tracker.done(job.tp, job.offset)

    async def _produce(self, outputs: list[Output]) -> None:
        assert self.producer is not None
        futures = []
        for out in outputs:
            payload = out.payload()
            futures.append(await self.producer.send(self.settings.topic(out.topic), payload, key=out.key))
            metrics.MESSAGES_OUT.labels(self.name, out.topic).inc()
            metrics.BYTES_OUT.labels(self.name, out.topic).inc(len(payload))
        await asyncio.gather(*futures)

    async def _commit(self) -> None:
        assert self.consumer is not None
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in self.assigned}
        todo = {tp: off for tp, off in offsets.items() if self._committed.get(tp) != off}
        if todo:
            await self.consumer.commit(todo)
            self._committed.update(todo)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        with contextlib.suppress(Exception):
            await self._commit()
        self.too_q.drop(revoked)
        self.bulk_q.drop(revoked)
        self.tracker.forget(revoked)
        for tp in revoked:
            self._committed.pop(tp, None)
        self.assigned -= revoked


def latest_cal_products(out_root: Path, visit: str, detector: str) -> list[Path]:
    """The newest cal product of every exposure of a visit and detector under ``out_root``."""
    best: dict[str, Path] = {}
    for p in Path(out_root).glob(f"{visit}_*_{detector}/*/*_cal.fits"):
        exp = p.parent.parent.name
        if exp not in best or p.stat().st_mtime > best[exp].stat().st_mtime:
            best[exp] = p
    return [best[e] for e in sorted(best)]


def _warm() -> bool:
    import consumers.calibrate.pipeline  # noqa: F401
    import products.refs.store  # noqa: F401
    from astropy.io import fits  # noqa: F401
    return True
