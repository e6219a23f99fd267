"""The l1b service: ``l0.ready`` -> ``<exposure id>_uncal.fits`` -> ``cal.requests``.

For each new L0 version (one record at a time, so memory is one exposure's SCI
cube), in a worker thread so the event loop keeps serving Kafka:

1. if the current uncal file already holds this L0 version (same sha256), it
   is a replay: nothing is rewritten and the same request is produced again;
   if it holds a newer version the record is stale and is skipped;
2. decode the L0 file and lay it out (:func:`consumers.l1b.reformat.reformat`);
3. keep the previous uncal version as ``<id>_uncal.v<N>.fits``, then write the
   new one durably (temp file, fsync, rename) next to the L0 file;
4. return a :class:`~streams.messages.CalRequest` (priority ``too`` for the
   programs of ``calibrate.too_programs``, else ``normal``); the base commits it
   with the consumed offset in one transaction.

A record that cannot be made into an uncal file (L0 unreadable or gone, not
this exposure's packets, no exposure start, geometry contradicted, sha256
mismatch) goes to ``tlm.deadletter`` with the reason, and the service goes
on. A full disk is retriable: the batch is redone once there is space.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from consumers.framework.service import Input, Output, Record
from consumers.framework.transactional import TransactionalService
from consumers.l1b.reformat import reformat
from core.errors import AssemblyError, CodecError, ConfigError, ValidationError
from monitoring import metrics
from products.l0 import l0_paths, read_manifest
from streams.messages import CalRequest, DeadLetter, L0Ready

log = logging.getLogger(__name__)


def too_programs(text: str) -> frozenset[int]:
    """``calibrate.too_programs`` ("1234, 5678") as program numbers."""
    out = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) > 99999:
            raise ConfigError(f"calibrate.too_programs: {part!r} is not a program number (0..99999); "
                              "give a comma-separated list such as 1234,5678")
        out.add(int(part))
    return frozenset(out)


def current_uncal(path: Path) -> tuple[int, str] | None:
    """(L0_VER, L0_SHA) of an existing uncal file, None if absent or unreadable (it is remade)."""
    if not path.exists():
        return None
    from astropy.io import fits

    try:
        header = fits.getheader(path, 0)
        return int(header.get("L0_VER", 0)), str(header.get("L0_SHA", ""))
    except (OSError, ValueError, TypeError):
        return None


class L1b(TransactionalService):
    """Reformat L0 files into uncal FITS and ask for their calibration."""

    name = "l1b"
    inputs = (Input("l0.ready", (L0Ready,)),)
    outputs = {"cal.requests": (CalRequest,), "tlm.deadletter": (DeadLetter,)}
    max_records = 4

    def __init__(self, settings: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.too = too_programs(settings.calibrate.too_programs)

    async def process(self, records: list[Record]) -> list[Output]:
        outputs: list[Output] = []
        for rec in records:
            msg: L0Ready = rec.value
            try:
                request = await asyncio.to_thread(self.make, msg)
            except (ValidationError, CodecError, OSError) as exc:  # the L0 cannot be used: not retriable
                reason = f"{type(exc).__name__}: {exc}"
                outputs.append(self.dead_letter_for(rec.topic, rec.tp, rec, reason, exposure_id=msg.exposure_id))
                continue
            if request is not None:
                outputs.append(Output("cal.requests", request, key=msg.exposure_id.encode()))
        return outputs

    # -- the work (worker thread) ------------------------------------------------------------------
    def priority(self, program: int) -> str:
        return "too" if program in self.too else "normal"

    def locate_l0(self, msg: L0Ready) -> Path:
        """The data file of exactly this L0 version: the current one, or the kept superseded copy."""
        path, manifest = Path(msg.path), Path(msg.manifest)
        if path.exists() and manifest.exists():
            try:
                current = int(read_manifest(manifest).get("version", -1))
            except AssemblyError:  # an unreadable manifest: only a kept copy can be trusted
                current = -1
            if current == msg.version:
                return path
        kept, _ = l0_paths(path.parent.parent, msg.exposure_id, msg.version)
        if kept.exists():
            return kept
        if path.exists() and not manifest.exists():
            return path
        raise ValidationError(f"L0 version {msg.version} of {msg.exposure_id} is not on disk ({path} holds "
                              "another version and no kept copy exists); nothing to reformat")

    def make(self, msg: L0Ready) -> CalRequest | None:
        from products.fits import keep_version
        from products.fits.uncal import uncal_path, write_uncal

        t0 = time.perf_counter()
        folder = Path(msg.path).parent
        out = uncal_path(folder, msg.exposure_id)
        have = current_uncal(out)
        if have is not None and have[0] > msg.version:
            log.info("stale L0 version skipped", extra={"exposure": msg.exposure_id, "version": msg.version,
                                                        "uncal_version": have[0]})
            return None
        if have is not None and have == (msg.version, msg.sha256):
            from products.fits import sha256_of
            sha = sha256_of(out)
            log.info("uncal already written (replay)", extra={"exposure": msg.exposure_id, "version": msg.version})
        else:
            l0 = self.locate_l0(msg)
            rf = reformat(l0, msg.exposure_id, l0_version=msg.version, l0_sha256=msg.sha256,
                          l0_complete=msg.complete, max_bytes=self.settings.l0.max_exposure_bytes)
            if have is not None:
                keep_version(out, have[0])
            # a full disk raises a retriable StorageError: the batch is redone later
            sha, size = write_uncal(out, rf.meta, rf.sci, group_end_tai=rf.group_end_tai, missing=rf.missing)
            priority = self.priority(msg.program)
            metrics.L1B_WRITTEN.labels(priority).inc()
            log.info("uncal written", extra={
                "exposure": msg.exposure_id, "version": msg.version, "bytes": size,
                "missing_pixels": rf.missing_pixels, "priority": priority,
                "seconds": round(time.perf_counter() - t0, 3)})
        return CalRequest(
            exposure_id=msg.exposure_id, uncal_path=str(out), priority=self.priority(msg.program),
            context=None, uncal_sha256=sha, l0_version=msg.version, l0_sha256=msg.sha256,
            program=msg.program, requested_at=time.time(),
            reason=f"L0 version {msg.version}" + ("" if msg.complete else " (partial)"),
            l0_received_at=msg.raw_ts)
