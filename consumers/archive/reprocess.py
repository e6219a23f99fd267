"""Reprocess requests: which exposures, with which context, and sending them to cal.requests.

``downlink reprocess``, ``POST /api/v1/reprocess`` and "best version on
request" all end here. A request is a :class:`~streams.messages.CalRequest`
with priority ``reprocess`` (the calibrate service's slowest lane) naming the
exposure's uncal file; ``context`` None lets calibrate use the best context at
run time. The products it makes arrive on cal.done and become new versions;
the old versions stay.

The best available context is the pinned ``settings.calibrate.context`` if
set, else the newest of the contexts in the reference store
(:class:`products.refs.RefStore`, ``downlink refs list``) and those already
recorded in the catalogue; contexts order by their number. The best pipeline version is the software
version of this installation.
"""

from __future__ import annotations

import logging
import re
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.archive.models import Exposure, Product
from core.errors import ValidationError
from core.settings import Settings
from core.version import SOFTWARE_VERSION
from streams.messages import CalRequest

log = logging.getLogger(__name__)

_CONTEXT = re.compile(r"^[a-z]+_(\d+)(\.pmap)?$")
#: a reference context name: downlink_0002 (ours, products/refs) or jwst_1234.pmap (CRDS style)
CONTEXT_PATTERN = r"^[a-z]+_[0-9]{1,8}(\.pmap)?$"


def context_key(context: str) -> tuple[int, str]:
    m = _CONTEXT.match(context or "")
    return (int(m.group(1)), context) if m else (-1, context or "")


def version_key(version: str) -> tuple[int, ...]:
    """'1.2.10' -> (1, 2, 10); non-numeric parts count as 0 (compare, never crash)."""
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", version or "0")[:4])


def contexts_on_disk(settings: Settings) -> list[str]:
    """Contexts of the reference store (``downlink refs make`` writes them)."""
    from products.refs.store import RefStore, refs_root

    return sorted(RefStore(refs_root(settings)).contexts(), key=context_key)


async def best_context(session: AsyncSession, settings: Settings) -> str:
    """The context a product should have ('' when none is known anywhere)."""
    if settings.calibrate.context:
        return settings.calibrate.context
    known = set(contexts_on_disk(settings))
    known |= set((await session.execute(select(Product.context).distinct())).scalars().all())
    known.discard("")
    return max(known, key=context_key) if known else ""


def outdated(product: Product, best: str, pipeline: str = SOFTWARE_VERSION) -> str:
    """Why a calibrated product is older than the best available ('' if it is not)."""
    if product.source != "cal.done" or not product.context:
        return ""
    reasons = []
    if best and context_key(product.context) < context_key(best):
        reasons.append(f"reference context {product.context} < {best}")
    if product.pipeline_version and version_key(product.pipeline_version) < version_key(pipeline):
        reasons.append(f"pipeline {product.pipeline_version} < {pipeline}")
    return "; ".join(reasons)


async def exposures_for(session: AsyncSession, *, program: int | None = None,
                        exposure: str | None = None) -> list[Exposure]:
    """The exposures a request covers (only those with an uncal file can be reprocessed)."""
    if (program is None) == (exposure is None):
        raise ValidationError("give exactly one of a program or an exposure")
    stmt = select(Exposure).order_by(Exposure.id)
    stmt = stmt.where(Exposure.program_id == program) if program is not None else \
        stmt.where(Exposure.id == exposure)
    return list((await session.execute(stmt)).scalars().all())


def requests_for(exposures: list[Exposure], *, context: str | None, reason: str,
                 now: float | None = None) -> list[CalRequest]:
    now = time.time() if now is None else now
    return [CalRequest(exposure_id=e.id, uncal_path=e.uncal_path, priority="reprocess",
                       context=context or None, uncal_sha256=e.uncal_sha256, l0_version=e.l0_version,
                       l0_sha256=e.l0_sha256, program=e.program_id, requested_at=now, reason=reason,
                       l0_received_at=e.l0_received.timestamp() if e.l0_received else 0.0)
            for e in exposures if e.uncal_path]


async def send(settings: Settings, requests: list[CalRequest], producer=None) -> None:
    """Produce to cal.requests (key = exposure id) and wait for the acknowledgements."""
    if not requests:
        return
    from streams.kafka import make_producer, start_client

    own = producer is None
    if own:
        producer = make_producer(settings)
        await start_client(settings, producer)  # KafkaUnavailable says which broker and what to do
    try:
        futures = [await producer.send(settings.topic("cal.requests"), r.encode(),
                                       key=r.exposure_id.encode()) for r in requests]
        for f in futures:
            await f
    finally:
        if own:
            await producer.stop()
    log.info("reprocess requested", extra={"exposures": len(requests),
                                          "context": requests[0].context or "best",
                                          "exposure_id": requests[0].exposure_id})
