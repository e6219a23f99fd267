"""Re-create missing or damaged L0 files from ``tlm.sci`` retention (``downlink l0 rebuild``).

For every exposure whose files do not match what ``l0.state`` records (or the
one asked for), the runs of that exposure are read back from ``tlm.sci``:
only its partition (``l0.state`` is co-partitioned) and only the offsets
the recorded version covered (``through_offset``), so the result is that
version exactly. It is written only when its sha256 equals the recorded one;
otherwise nothing is written and the row says why (retention no longer holds
every packet, or the bytes differ: a conflict to look at). Packets are spooled,
so memory stays flat whatever the exposure size.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from consumers.l0.assembly import Assembly
from consumers.l0.identity import Limits
from consumers.l0.writer import publish
from core.errors import CodecError, DownlinkError, EnvelopeError
from core.settings import Settings
from products.l0 import disk_problem, l0_paths, sha256_file
from streams.decoder import PacketIndex
from streams.kafka import read_table, read_to_end
from streams.messages import L0State, SciRun

log = logging.getLogger(__name__)


@dataclass
class Row:
    exposure_id: str
    version: int
    #: ok (nothing to do) | rebuilt | failed
    status: str
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _problem(settings: Settings, st: L0State, check_sha: bool) -> str | None:
    problem = disk_problem(settings.data_dir, st.exposure_id, st.version, st.sha256, st.bytes)
    if problem is None and check_sha:
        data, _ = l0_paths(settings.data_dir, st.exposure_id)
        if sha256_file(data) != st.sha256:
            problem = f"{data.name} does not hash to the recorded sha256"
    return problem


async def rebuild(settings: Settings, exposure: str | None = None, *, check_sha: bool = False
                  ) -> list[Row]:
    """Check (and re-create where needed) the L0 files l0.state records."""
    states: dict[str, L0State] = await read_table(settings, "l0.state", L0State)
    if exposure is not None:
        if exposure not in states:
            raise DownlinkError(f"l0.state records no exposure {exposure!r}; nothing to rebuild "
                                "(`downlink run` writes an exposure's first version)")
        states = {exposure: states[exposure]}
    rows: dict[str, Row] = {}
    targets: dict[str, tuple[L0State, str]] = {}
    for exposure_id, st in sorted(states.items()):
        problem = _problem(settings, st, check_sha or exposure is not None)
        if problem is None:
            rows[exposure_id] = Row(exposure_id, st.version, "ok")
        else:
            targets[exposure_id] = (st, problem)
    if not targets:
        return list(rows.values())
    parts = {st.partition for st, _ in targets.values()}
    partitions = None if -1 in parts else parts
    limits = Limits.from_settings(settings.l0)
    work = Path(settings.state_dir) / "l0" / "rebuild"
    work.mkdir(parents=True, exist_ok=True)
    assemblies: dict[str, Assembly] = {}
    with tempfile.TemporaryDirectory(dir=work) as spool_dir:
        try:
            async for rec in read_to_end(settings, "tlm.sci", partitions):
                key = rec.key.decode("utf-8", "replace") if rec.key else ""
                target = targets.get(key)
                if target is None:
                    continue
                st = target[0]
                if st.through_offset >= 0 and st.partition == rec.partition \
                        and rec.offset >= st.through_offset:
                    continue  # after the recorded version: not part of it
                try:
                    msg = SciRun.decode(rec.value)
                    a = assemblies.get(key)
                    if a is None:
                        a = assemblies[key] = Assembly.for_exposure(key, Path(spool_dir), limits)
                    a.add(PacketIndex.from_bytes(msg.index), msg.packets, msg.contact, msg.raw_ts)
                except (EnvelopeError, CodecError, ValueError, IndexError) as exc:
                    log.warning("unusable tlm.sci record skipped", extra={
                        "exposure": key, "partition": rec.partition, "offset": rec.offset,
                        "error": repr(exc)})
            for exposure_id, (st, problem) in targets.items():
                rows[exposure_id] = _restore(settings, st, problem, assemblies.get(exposure_id))
        finally:
            for a in assemblies.values():
                a.close()
    return [rows[k] for k in sorted(rows)]


def _restore(settings: Settings, st: L0State, problem: str, a: Assembly | None) -> Row:
    if a is None:
        return Row(st.exposure_id, st.version, "failed",
                   f"{problem}; tlm.sci retention holds none of its packets any more: restore the "
                   "file from the archive")
    sha, nbytes = a.content_sha256()
    if sha != st.sha256:
        state = "complete" if a.complete else "partial"
        return Row(st.exposure_id, st.version, "failed",
                   f"{problem}; tlm.sci gives {a.packets} packets ({state}, sha256 {sha[:12]}), "
                   f"version {st.version} has sha256 {st.sha256[:12]}: retention no longer holds "
                   "the same packets; nothing written")
    publish(settings.data_dir, a, st.version, sha, nbytes, supersedes=None,
            extra={"rebuilt": True, "tlm_sci_partition": st.partition,
                   "through_offset": st.through_offset})
    return Row(st.exposure_id, st.version, "rebuilt", problem)
