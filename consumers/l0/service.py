"""Level 0 assembler: ``tlm.sci`` runs -> one L0 file + manifest per exposure.

Open exposures are spooled to disk (:mod:`consumers.l0.spool`; memory holds
a compact index) and rebuilt by replay: the offsets committed for a
``tlm.sci`` partition never pass the first message of an exposure still open
there (:meth:`L0Assembler.commit_offsets`), so after a crash or a rebalance
the owner re-reads exactly what it needs. What was written and announced is
in the compacted ``l0.state`` topic (exposure id -> version, sha256,
completeness, the ``tlm.sci`` offset it covers), updated in the same
transaction as ``l0.ready`` and the offsets. ``l0.state`` is co-partitioned
with ``tlm.sci`` (same key, same partition count, produced to the partition
of the input record), so an assignment loads only the state of its own
partitions.

Commit order for a finished exposure (docs/l0.md):
1. write ``<id>_l0.dat`` then ``<id>_l0.json`` (:mod:`consumers.l0.writer`:
   temp file, fsync, atomic rename, directory fsync) in a worker thread; a
   superseded version is kept as ``<id>_l0.v<N>.*``; the batch's transaction
   starts only once every write of the batch is durable (``defer_durable``);
2. produce ``l0.ready`` and the ``l0.state`` record;
3. add the pinned offsets to the transaction;
4. commit.

An exposure is written when complete, or as a partial version once the end
of every contact that carried it was seen *on its partition* and
``l0_eoc_margin_seconds`` passed, or after ``l0_quiet_seconds`` without news.
Later packets of a partial exposure produce the next version. Bad input never
stops the service: an unusable record or packet goes to ``tlm.deadletter``
with a reason; a version recorded in ``l0.state`` whose files are missing or
damaged is rebuilt from the packets at hand (restored as the same version when
its sha256 matches, else a new version and an alert).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition

from consumers.framework.service import Input, Output, Record
from consumers.framework.transactional import TransactionalService
from consumers.l0.assembly import Added, Assembly
from consumers.l0.identity import Limits, index_mismatch
from consumers.l0.spool import clear_spools
from consumers.l0.writer import Written, publish
from core.errors import CodecError, EnvelopeError
from monitoring import metrics
from products.durable import remove_stale_temps
from products.l0 import disk_problem, l0_paths, read_manifest
from streams.decoder import PacketIndex
from streams.kafka import read_table, topic_partitions
from streams.messages import DeadLetter, L0Ready, L0State, OpsAlert, SciEoc, SciRun

log = logging.getLogger(__name__)

#: l0.state key of a partition's progress record (the next tlm.sci offset already processed)
PROGRESS_KEY = "__progress__."


@dataclass
class Open:
    """An exposure being assembled, with the Kafka position that must stay replayable."""

    assembly: Assembly
    tp: TopicPartition
    first_offset: int
    last_update: float
    #: next offset after the last record added (recorded in l0.state)
    through_offset: int = -1
    #: the version l0.state records but whose files are missing or damaged on disk
    lost: L0State | None = None
    lost_reason: str = ""
    contact: str = ""
    #: contacts whose records were added since it opened (their ends close it)
    contacts: set = field(default_factory=set)
    #: records added that were not replays (an empty exposure alerts only then)
    fresh_records: int = 0
    rejected: Counter = field(default_factory=Counter)
    #: when this process opened it (the oldest open exposure's age is exported from it)
    opened_at: float = field(default_factory=time.monotonic)


class L0Assembler(TransactionalService):
    name = "l0"
    inputs = (Input("tlm.sci", (SciRun, SciEoc)),)
    outputs = {"l0.ready": (L0Ready,), "l0.state": (L0State,), "tlm.deadletter": (DeadLetter,),
               "ops.alerts": (OpsAlert,)}
    max_records = 256

    def __init__(self, settings, **kw) -> None:
        super().__init__(settings, **kw)
        self.open: dict[str, Open] = {}
        #: l0.state of the assigned partitions: partition -> exposure id -> state
        self.states: dict[int, dict[str, L0State]] = {}
        #: (tlm.sci partition, contact) -> monotonic time its end of contact was seen there
        self.contact_end: dict[tuple[int, str], float] = {}
        #: exposure id -> files on disk match l0.state (checked once per assignment)
        self._disk_ok: dict[str, bool] = {}
        self.limits = Limits.from_settings(settings.l0)
        self.spool_dir = Path(settings.state_dir) / "l0" / "spool" / self.instance
        self._copartitioned = True
        #: tlm.sci partition -> next offset whose dead letters and alerts were already produced
        #: (in l0.state under PROGRESS_KEY): a replay after a crash does not produce them twice
        self.progress: dict[int, int] = {}

    # lifecycle and assignment ----------------------------------------------------------------
    async def on_start(self) -> None:
        n = await asyncio.to_thread(clear_spools, self.spool_dir)
        if n:
            log.info("removed spools of an earlier run (rebuilt by replay)", extra={"spools": n})
        await asyncio.to_thread(remove_stale_temps, self.settings.data_dir)
        sci = await topic_partitions(self.settings, self.settings.topic("tlm.sci"), wait=5.0)
        state = await topic_partitions(self.settings, self.settings.topic("l0.state"), wait=5.0)
        self._copartitioned = len(sci) == len(state)
        if not self._copartitioned:
            log.warning("l0.state is not co-partitioned with tlm.sci: every assignment reads all "
                        "of l0.state; run `downlink topics create` to align the partition counts",
                        extra={"tlm_sci": len(sci), "l0_state": len(state)})
        await super().on_start()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        await super().on_assigned(assigned)
        parts = {tp.partition for tp in assigned}
        t0 = time.monotonic()
        if self._copartitioned:
            table = await read_table(self.settings, "l0.state", L0State, partitions=parts)
        else:
            table = await read_table(self.settings, "l0.state", L0State)
        for p in parts:
            self.states[p] = {}
        for exposure_id, st in table.items():
            if exposure_id.startswith(PROGRESS_KEY):
                if st.partition in parts:
                    self.progress[st.partition] = st.through_offset
                continue
            p = st.partition if self._copartitioned and st.partition >= 0 else None
            for q in ([p] if p is not None and p in parts else parts):
                self.states[q][exposure_id] = st
        self._disk_ok.clear()
        log.info("l0 state loaded", extra={"partitions": sorted(parts), "exposures": len(table),
                                           "seconds": round(time.monotonic() - t0, 3)})

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        await super().on_revoked(revoked)
        for exposure_id in [e for e, o in self.open.items() if o.tp in revoked]:
            self.open.pop(exposure_id).assembly.close()  # the new owner replays it
        for tp in revoked:
            self.states.pop(tp.partition, None)
            self.progress.pop(tp.partition, None)
        self.contact_end = {k: v for k, v in self.contact_end.items()
                            if k[0] not in {tp.partition for tp in revoked}}
        self._disk_ok.clear()
        self._export_open()

    def _export_open(self) -> None:
        """How many exposures are open and how long the oldest has been (0 when none is)."""
        now = time.monotonic()
        metrics.OPEN_EXPOSURES.set(len(self.open))
        metrics.OLDEST_OPEN_EXPOSURE_AGE.set(max((now - e.opened_at for e in self.open.values()), default=0.0))

    async def close(self) -> None:
        for entry in self.open.values():
            entry.assembly.close()
        self.open.clear()
        await super().close()

    def commit_offsets(self, consumed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Never commit past the first record of an exposure still open on the partition."""
        pinned = dict(consumed)
        for o in self.open.values():
            if o.tp in pinned:
                pinned[o.tp] = min(pinned[o.tp], o.first_offset)
        return pinned

    def has_pending_work(self) -> bool:
        return bool(self.open)

    # batches ---------------------------------------------------------------------------------
    async def process(self, records: list[Record]) -> list[Output]:
        outputs: list[Output] = []
        touched = await asyncio.to_thread(self._add_records, records, time.monotonic(), outputs)
        if outputs:  # dead letters or alerts: remember how far they go, in the same transaction
            outputs += self._progress_records(records)
        for exposure_id in sorted(touched):
            entry = self.open.get(exposure_id)
            if entry is not None and entry.assembly.complete:
                outputs += await self._finish(exposure_id)
        self._export_open()
        return outputs

    def _add_records(self, records: list[Record], now: float, outputs: list[Output]) -> set[str]:
        """Add a batch to the open exposures (worker thread; the batch lock is held)."""
        touched: set[str] = set()
        for rec in records:
            msg = rec.value
            if isinstance(msg, SciEoc):
                self.contact_end.setdefault((rec.tp.partition, msg.contact), now)
                continue
            entry = self.open.get(msg.exposure_id)
            if entry is None:
                entry = self._open(rec, msg, now, outputs)
                if entry is None:
                    continue
            try:
                index = PacketIndex.from_bytes(msg.index)
                mismatch = index_mismatch(index, msg.packets)
                if mismatch:
                    raise ValueError(mismatch)
                added = entry.assembly.add(index, msg.packets, msg.contact, msg.raw_ts)
            except (CodecError, EnvelopeError, ValueError, IndexError, TypeError) as exc:
                if not self._replayed(rec):
                    outputs.append(self.dead_letter_for(
                        "tlm.sci", rec.tp, rec, f"unusable science run: {type(exc).__name__}: {exc}",
                        exposure_id=msg.exposure_id, contact=msg.contact))
                if entry.assembly.packets == 0 and not entry.rejected and not entry.assembly.conflicts:
                    self.open.pop(msg.exposure_id).assembly.close()  # nothing to pin it for
                continue
            outputs += self._report(entry, rec, msg, added)
            if entry.assembly.packets == 0 and not entry.assembly.conflicts:
                # every packet so far rejected (a fake exposure named by a hostile start, say):
                # nothing to keep or replay, so no pinned offset waiting for an end of contact
                self.open.pop(msg.exposure_id).assembly.close()
                if not self._replayed(rec):
                    outputs.append(self._alert(
                        Open(entry.assembly, rec.tp, rec.offset, now, contact=msg.contact), "l0_rejected",
                        "warning", f"{len(added.rejected)} packets rejected (dead letters), none "
                        "kept: no L0 version written", detail={"reasons": dict(entry.rejected)}))
                continue
            entry.last_update = now
            entry.through_offset = max(entry.through_offset, rec.offset + 1)
            entry.contact = msg.contact
            entry.contacts.add(msg.contact)
            entry.fresh_records += not self._replayed(rec)
            touched.add(msg.exposure_id)
        return touched

    def _open(self, rec: Record, msg: SciRun, now: float, outputs: list[Output]) -> Open | None:
        """An entry for a record of an exposure not open here, or None when nothing is to do."""
        exposure_id = msg.exposure_id
        state = self.states.get(rec.tp.partition, {}).get(exposure_id)
        problem = self._disk_problem(exposure_id, state) if state is not None else None
        seed_version: int | None = None  # None: the current files
        if problem is not None and disk_problem(self.settings.data_dir, exposure_id, state.version,
                                                state.sha256, state.bytes, state.version) is None:
            # a crash between the two renames of the next version: the recorded one is intact
            # under its superseded name (the writer links it there first)
            problem, seed_version = None, state.version
        if state is not None and problem is None:
            if state.complete:
                return None  # every identity is already in the complete L0: all duplicates
            if state.partition == rec.tp.partition and rec.offset < state.through_offset:
                return None  # already part of the version written (a replay)
        try:
            assembly = Assembly.for_exposure(exposure_id, self.spool_dir, self.limits,
                                             token=f".{rec.tp.partition}.{rec.offset}")
        except CodecError as exc:
            if not self._replayed(rec):
                outputs.append(self.dead_letter_for("tlm.sci", rec.tp, rec,
                                                    f"bad exposure id: {exc}", contact=msg.contact))
            return None
        entry = Open(assembly, rec.tp, rec.offset, now)
        if state is not None and problem is None:
            data_path, manifest_path = l0_paths(self.settings.data_dir, exposure_id, seed_version)
            try:
                assembly.seed(data_path, read_manifest(manifest_path))
            except Exception as exc:  # the file changed under us: treat it as damaged
                assembly.close()
                assembly = Assembly.for_exposure(exposure_id, self.spool_dir, self.limits,
                                                 token=f".{rec.tp.partition}.{rec.offset}.r")
                entry = Open(assembly, rec.tp, rec.offset, now)
                problem = f"cannot reopen {data_path.name}: {exc}"
        if state is not None and problem is not None:
            entry.lost, entry.lost_reason = state, problem
            log.warning("L0 version recorded in l0.state is not on disk; rebuilding it from the "
                        "packets at hand", extra={"exposure": exposure_id, "version": state.version,
                                                  "problem": problem})
        self.open[exposure_id] = entry
        return entry

    def _disk_problem(self, exposure_id: str, state: L0State) -> str | None:
        if self._disk_ok.get(exposure_id):
            return None
        problem = disk_problem(self.settings.data_dir, exposure_id, state.version, state.sha256,
                               state.bytes)
        if problem is None:
            if len(self._disk_ok) > 100_000:
                self._disk_ok.clear()
            self._disk_ok[exposure_id] = True
        return problem

    def _progress_records(self, records: list[Record]) -> list[Output]:
        out = []
        last: dict[int, int] = {}
        for rec in records:
            last[rec.tp.partition] = max(last.get(rec.tp.partition, -1), rec.offset + 1)
        for p, through in sorted(last.items()):
            if through <= self.progress.get(p, -1):
                continue
            self.progress[p] = through
            key = f"{PROGRESS_KEY}{p}"
            out.append(Output("l0.state", L0State(
                exposure_id=key, version=0, complete=False, sha256="", packets=0, bytes=0,
                partition=p, through_offset=through), key=key.encode(),
                partition=p if self._copartitioned else None))
        return out

    def _replayed(self, rec: Record) -> bool:
        """Whether this record's dead letters and alerts were produced before (a replay)."""
        return rec.offset < self.progress.get(rec.tp.partition, -1)

    def _report(self, entry: Open, rec: Record, msg: SciRun, added: Added) -> list[Output]:
        """Dead letters for rejected packets, an alert for new conflicts (not again on a replay)."""
        out: list[Output] = []
        if self._replayed(rec):
            for r in added.rejected:
                entry.rejected[r.reason.split(":")[0]] += 1
            return out
        a = entry.assembly
        for r in added.rejected:
            entry.rejected[r.reason.split(":")[0]] += 1
            metrics.L0_REJECTED.labels(r.reason.split(":")[0][:60]).inc()
            letter = DeadLetter(reason=r.reason, data=r.data, service=self.name,
                                contact=r.contact or msg.contact, stream_offset=r.stream_offset,
                                length=len(r.data), apid=a.tag.apid, exposure_id=a.exposure_id,
                                source_topic="tlm.sci", partition=rec.tp.partition,
                                offset=rec.offset, time=time.time())
            out.append(Output("tlm.deadletter", letter, key=msg.contact.encode()))
        if added.conflicts:
            metrics.L0_CONFLICTS.inc(len(added.conflicts))
            c = added.conflicts
            out.append(Output("ops.alerts", OpsAlert(
                contact=msg.contact, type="l0_conflict", severity="warning", time=time.time(),
                apid=a.tag.apid, exposure_id=a.exposure_id, count=len(c),
                reason="two different packets with one identity: both kept aside, the exposure "
                       "cannot be complete",
                detail={"packets": [x.describe() for x in c[:20]]}), key=msg.contact.encode()))
            log.warning("conflicting packets", extra={"exposure": a.exposure_id, "count": len(c)})
        return out

    async def tick(self) -> list[Output]:
        now = time.monotonic()
        margin = self.settings.l0.eoc_margin_seconds
        outputs: list[Output] = []
        for exposure_id, entry in sorted(self.open.items()):
            p = entry.tp.partition
            ends = [self.contact_end.get((p, c)) for c in entry.contacts]
            contacts_over = bool(ends) and all(e is not None and now - e >= margin for e in ends)
            if contacts_over or now - entry.last_update >= self.settings.l0.quiet_seconds:
                outputs += await self._finish(exposure_id)
        self._export_open()
        if len(self.contact_end) > 10_000:  # bounded: forget the oldest ends
            keep = sorted(self.contact_end.items(), key=lambda kv: kv[1])[-5_000:]
            self.contact_end = dict(keep)
        return outputs

    # finishing -------------------------------------------------------------------------------
    async def _finish(self, exposure_id: str) -> list[Output]:
        entry = self.open.pop(exposure_id)
        a = entry.assembly
        p = entry.tp.partition
        if a.packets == 0:  # every packet was rejected: nothing to write, the dead letters say why
            a.close()
            if entry.rejected and entry.fresh_records:
                return [self._alert(entry, "l0_rejected", "warning",
                                    f"{sum(entry.rejected.values())} packets rejected (dead letters), "
                                    "none kept: no L0 version written",
                                    detail={"reasons": dict(entry.rejected)})]
            return []
        prev = self.states.get(p, {}).get(exposure_id)
        sha, nbytes = await asyncio.to_thread(a.content_sha256)
        alerts: list[Output] = []
        restored = False
        if entry.lost is not None:
            lost = entry.lost
            if sha == lost.sha256:
                version, supersedes, restored = lost.version, None, True
                alerts.append(self._alert(entry, "l0_restored", "info",
                                          f"version {lost.version} was not on disk ({entry.lost_reason}); "
                                          "rebuilt byte-identical from the packets at hand"))
            else:
                version, supersedes = lost.version + 1, None
                kind = "l0_conflict" if a.complete and lost.complete else "l0_missing"
                alerts.append(self._alert(
                    entry, kind, "warning",
                    f"version {lost.version} ({'complete' if lost.complete else 'partial'}, sha256 "
                    f"{lost.sha256[:12]}) was not on disk ({entry.lost_reason}); the packets at hand "
                    f"give sha256 {sha[:12]} ({'complete' if a.complete else 'partial'}), written "
                    f"as version {version}; `downlink l0 rebuild --exposure {exposure_id}` "
                    "re-creates the recorded version from tlm.sci retention"))
        else:
            if prev is not None and prev.sha256 == sha:
                a.close()
                return []  # replay of something already written and announced
            version = prev.version + 1 if prev else 1
            supersedes = prev.version if prev else None
        if entry.rejected:
            alerts.append(self._alert(entry, "l0_rejected", "warning",
                                      f"{sum(entry.rejected.values())} packets rejected (dead letters)",
                                      detail={"reasons": dict(entry.rejected)}))
        through = max(entry.through_offset, prev.through_offset if prev else -1)
        extra = {"restored": restored, "tlm_sci_partition": p, "through_offset": through}
        complete = a.complete
        n_missing = 0 if complete else a.missing_packets()[1]
        packets, n_conflicts, n_rejected = a.packets, len(a.conflicts), a.rejected_count
        write = asyncio.ensure_future(asyncio.to_thread(self._write, a, version, sha, nbytes,
                                                        supersedes, extra))
        if complete:
            # written and fsynced while the next batch is read; the batch's transaction
            # (l0.ready, l0.state, offsets) waits for it (commit order, step 1). A complete
            # exposure is never reopened, so nothing reads the file before then.
            self.defer_durable(write)
        else:
            await write  # a partial version may be reopened (seeded from disk) by the next batch
        self._disk_ok[exposure_id] = True
        status = "complete" if complete else "partial"
        metrics.L0_WRITTEN.labels(status).inc()
        metrics.L0_BYTES.inc(nbytes)
        if a.raw_ts:
            metrics.RAW_TO_L0.observe(max(0.0, time.time() - a.raw_ts / 1000))
        log.info("L0 written", extra={"exposure": exposure_id, "version": version, "status": status,
                                      "packets": packets, "bytes": nbytes, "restored": restored})
        data_path, manifest_path = l0_paths(self.settings.data_dir, exposure_id)
        contacts = sorted(a.contacts)
        state = L0State(exposure_id=exposure_id, version=version, complete=complete, sha256=sha,
                        packets=packets, bytes=nbytes, contacts=contacts,
                        partition=p if self._copartitioned else -1, through_offset=through)
        self.states.setdefault(p, {})[exposure_id] = state
        ready = L0Ready(exposure_id=exposure_id, version=version, complete=complete, sha256=sha,
                        packets=packets, bytes=nbytes, path=str(data_path),
                        manifest=str(manifest_path), missing_packets=n_missing,
                        program=a.tag.program, detector=a.tag.detector, contacts=contacts,
                        raw_ts=a.raw_ts / 1000, conflicts=n_conflicts,
                        rejected=n_rejected)
        key = exposure_id.encode()
        partition = p if self._copartitioned else None
        return [Output("l0.ready", ready, key=key),
                Output("l0.state", state, key=key, partition=partition), *alerts]

    def _write(self, a: Assembly, version: int, sha: str, nbytes: int, supersedes: int | None,
               extra: dict) -> Written:
        try:
            return publish(self.settings.data_dir, a, version, sha, nbytes, supersedes=supersedes,
                           extra=extra)
        finally:
            a.close()

    def _alert(self, entry: Open, kind: str, severity: str, reason: str,
               detail: dict | None = None) -> Output:
        a = entry.assembly
        return Output("ops.alerts", OpsAlert(
            contact=entry.contact or (sorted(a.contacts)[0] if a.contacts else ""), type=kind,
            severity=severity, time=time.time(), apid=a.tag.apid, exposure_id=a.exposure_id,
            reason=reason, detail=detail or {}), key=(entry.contact or "").encode() or None)
