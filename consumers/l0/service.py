"""Level 0 assembler: ``tlm.sci`` runs -> one L0 file + manifest per exposure.

Open exposures live in memory and are rebuilt by replay: the offsets committed
for a ``tlm.sci`` partition never pass the first message of an exposure still
open there, so after a crash or a rebalance the owner re-reads exactly what it
needs. What was already written and announced is in the compacted ``l0.state``
topic (exposure id -> version, sha256, completeness), updated in the same
transaction as ``l0.ready`` and the offsets; replayed packets of a finished
exposure therefore change nothing.

Commit order for a finished exposure (STYLE.md):
1. write ``<id>_l0.dat`` and ``<id>_l0.json`` (temp file, fsync, atomic rename,
   directory fsync) in a worker thread; the batch's transaction starts only
   once every write of the batch is durable; a superseded version is kept as
   ``<id>_l0.v<N>.*``;
2. produce ``l0.ready`` and the ``l0.state`` record;
3. add the pinned offsets to the transaction;
4. commit.

An exposure is written when complete (start, end and every data packet), or
as a partial version once every contact that carried it has ended and
``l0_eoc_margin_seconds`` passed, or after ``l0_quiet_seconds`` without news.
Later packets of a partial exposure (a split exposure, a re-dump) produce the
next version, which supersedes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass


from aiokafka import TopicPartition

from consumers.l0.assembly import Assembly, L0Content
from consumers.framework.service import Input, Output, Record
from consumers.framework.transactional import TransactionalService
from products.durable import durable_write
from products.l0 import l0_paths
from streams.kafka import read_table
from core.errors import AssemblyError
from monitoring import metrics
from streams.messages import DeadLetter, L0Ready, L0State, OpsAlert, SciEoc, SciRun
from streams.decoder import PacketIndex, decode_all

log = logging.getLogger(__name__)


@dataclass
class Open:
    """An exposure being assembled, with the Kafka position that must stay replayable."""

    assembly: Assembly
    tp: TopicPartition
    first_offset: int
    last_update: float


class L0Assembler(TransactionalService):
    name = "l0"
    inputs = (Input("tlm.sci", (SciRun, SciEoc)),)
    outputs = {"l0.ready": (L0Ready,), "l0.state": (L0State,), "tlm.deadletter": (DeadLetter,),
               "ops.alerts": (OpsAlert,)}
    max_records = 256

    def __init__(self, settings, **kw) -> None:
        super().__init__(settings, **kw)
        self.open: dict[str, Open] = {}
        self.written: dict[str, L0State] = {}
        self.contact_end: dict[str, float] = {}

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        await super().on_assigned(assigned)
        self.written = await read_table(self.settings, "l0.state", L0State)
        log.info("l0 state loaded", extra={"exposures": len(self.written)})

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        await super().on_revoked(revoked)
        for exposure_id in [e for e, o in self.open.items() if o.tp in revoked]:
            del self.open[exposure_id]  # the new owner replays it from the pinned offset
        metrics.OPEN_EXPOSURES.set(len(self.open))

    def commit_offsets(self, consumed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        pinned = dict(consumed)
        for o in self.open.values():
            if o.tp in pinned:
                pinned[o.tp] = min(pinned[o.tp], o.first_offset)
        return pinned

    def has_pending_work(self) -> bool:
        return bool(self.open)

    async def process(self, records: list[Record]) -> list[Output]:
        touched = await asyncio.to_thread(self._add_records, records, time.monotonic())
        outputs: list[Output] = []
        for exposure_id in sorted(touched):
            if self.open[exposure_id].assembly.complete:
                outputs += await self._finish(exposure_id)
        metrics.OPEN_EXPOSURES.set(len(self.open))
        return outputs

    def _add_records(self, records: list[Record], now: float) -> set[str]:
        """Add a batch to the open exposures (worker thread; the batch lock is held)."""
        touched: set[str] = set()
        for rec in records:
            msg = rec.value
            if isinstance(msg, SciEoc):
                self.contact_end.setdefault(msg.contact, now)
                continue
            exposure_id = msg.exposure_id
            state = self.written.get(exposure_id)
            if state is not None and state.complete:
                continue  # every identity is already in the complete L0: all duplicates
            entry = self.open.get(exposure_id)
            if entry is None:
                assembly = Assembly.for_exposure(exposure_id)
                if state is not None:
                    self._seed(assembly, state)
                entry = self.open[exposure_id] = Open(assembly, rec.tp, rec.offset, now)
            index = PacketIndex.from_bytes(msg.index)
            entry.assembly.add(index, msg.packets, msg.contact, msg.raw_ts)
            entry.last_update = now
            touched.add(exposure_id)
        return touched

    async def tick(self) -> list[Output]:
        now = time.monotonic()
        margin = self.settings.l0.eoc_margin_seconds
        outputs: list[Output] = []
        for exposure_id, entry in sorted(self.open.items()):
            ends = [self.contact_end.get(c) for c in entry.assembly.contacts]
            contacts_over = bool(ends) and all(e is not None and now - e >= margin for e in ends)
            if contacts_over or now - entry.last_update >= self.settings.l0.quiet_seconds:
                outputs += await self._finish(exposure_id)
        metrics.OPEN_EXPOSURES.set(len(self.open))
        return outputs

    def _seed(self, assembly: Assembly, state: L0State) -> None:
        """Start a new version from the packets of the version already written."""
        data_path, _ = l0_paths(self.settings.data_dir, assembly.exposure_id)
        try:
            data = data_path.read_bytes()
        except FileNotFoundError:
            raise AssemblyError(
                f"{data_path} (version {state.version} in l0.state) is missing; restore it "
                "from the archive or reprocess the exposure before new packets can be merged"
            ) from None
        decoded = decode_all(data)
        assembly.add(decoded.packets, decoded.data, None)
        assembly.contacts.update(state.contacts)
        assembly.duplicates = 0

    async def _finish(self, exposure_id: str) -> list[Output]:
        entry = self.open.pop(exposure_id)
        prev = self.written.get(exposure_id)
        version = (prev.version + 1) if prev else 1
        content = await asyncio.to_thread(entry.assembly.build, version)
        if prev is not None and prev.sha256 == content.sha256:
            return []  # replay of something already written and announced
        m = content.manifest
        write = asyncio.ensure_future(asyncio.to_thread(self._write, exposure_id, content, prev))
        if m["complete"]:
            # written and fsynced while the next batch is read; the batch's transaction
            # (l0.ready, l0.state, offsets) waits for it (commit order, step 1). A complete
            # exposure is never reopened, so nothing reads the file before then.
            self.defer_durable(write)
        else:
            await write  # a partial version may be reopened (seeded from disk) by the next batch
        status = "complete" if m["complete"] else "partial"
        metrics.L0_WRITTEN.labels(status).inc()
        metrics.L0_BYTES.inc(m["bytes"])
        if entry.assembly.raw_ts:
            metrics.RAW_TO_L0.observe(max(0.0, time.time() - entry.assembly.raw_ts / 1000))
        log.info("L0 written", extra={"exposure": exposure_id, "version": version, "status": status,
                                      "packets": m["packets"], "bytes": m["bytes"]})
        data_path, manifest_path = l0_paths(self.settings.data_dir, exposure_id)
        state = L0State(exposure_id=exposure_id, version=version, complete=m["complete"],
                        sha256=content.sha256, packets=m["packets"], bytes=m["bytes"],
                        contacts=m["contacts"])
        self.written[exposure_id] = state
        ready = L0Ready(exposure_id=exposure_id, version=version, complete=m["complete"],
                        sha256=content.sha256, packets=m["packets"], bytes=m["bytes"],
                        path=str(data_path), manifest=str(manifest_path),
                        missing_packets=len(m["missing_packets"]), program=m["program"],
                        detector=m["detector"], contacts=m["contacts"],
                        raw_ts=entry.assembly.raw_ts / 1000)
        key = exposure_id.encode()
        return [Output("l0.ready", ready, key=key), Output("l0.state", state, key=key)]

    def _write(self, exposure_id: str, content: L0Content, prev: L0State | None) -> None:
        data_path, manifest_path = l0_paths(self.settings.data_dir, exposure_id)
        if prev is not None and data_path.exists():
            old_data, old_manifest = l0_paths(self.settings.data_dir, exposure_id, prev.version)
            if not old_data.exists():  # keep the superseded version, durably, before replacing it
                durable_write(old_data, data_path.read_bytes())
                if manifest_path.exists():
                    durable_write(old_manifest, manifest_path.read_bytes())
        durable_write(data_path, content.chunks)
        durable_write(manifest_path, json.dumps(content.manifest, indent=1, sort_keys=True).encode())
