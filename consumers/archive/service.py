"""The archive sink: l0.ready, cal.done and tlm.eng.recorded -> the catalogue.

A :class:`~consumers.framework.sink.SinkService`: each batch is applied in
one database transaction (:class:`~consumers.archive.catalogue.Catalogue`)
and the offsets are committed only after that commit, so a crash in between
replays the batch, which the idempotent ingest absorbs. A database that is
down (or restarting) is a retriable failure: the framework rewinds to the
last commit and retries with backoff, partitions paused, nothing lost and
nothing applied twice. Records whose files do not match their message go to
the dead-letter topic with the reason.

Migrations run at start (``alembic upgrade head``), so a fresh database is
usable at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any, ClassVar

from sqlalchemy.exc import IntegrityError

from consumers.archive import db
from consumers.archive.catalogue import Catalogue
from consumers.framework.service import Input, Output, Record
from consumers.framework.sink import SinkService
from monitoring import metrics
from streams.dictionary import load_dictionary
from streams.messages import CalDone, DeadLetter, EngBatch, L0Ready

log = logging.getLogger(__name__)

#: seconds between recomputations of the 5-day share when no product arrives (exposures age out
#: of their 5 days, or of the 30-day window, without news)
SHARE_REFRESH_SECONDS = 60.0


class ArchiveSink(SinkService):
    name: ClassVar[str] = "archive"
    inputs: ClassVar[tuple[Input, ...]] = (
        Input("cal.done", (CalDone,), priority=0),
        Input("l0.ready", (L0Ready,), priority=0),
        Input("tlm.eng.recorded", (EngBatch,), priority=1),
    )
    outputs: ClassVar[dict[str, tuple[type, ...]]] = {"tlm.deadletter": (DeadLetter,)}
    max_records: ClassVar[int] = 256

    def __init__(self, settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.engine = None
        self.sessions = None
        self.catalogue: Catalogue | None = None
        self._share_at = 0.0

    async def open_sink(self) -> None:
        await asyncio.to_thread(db.migrate, self.settings)
        self.engine = db.async_engine(self.settings)
        self.sessions = db.sessionmaker(self.engine)
        self.catalogue = Catalogue(self.settings, load_dictionary(self.settings.dictionary_file))
        await self._refresh_share()  # from the catalogue at once: the gauge exists from the start

    async def close_sink(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def handle(self, records: list[Record]) -> list[Output]:
        assert self.sessions is not None and self.catalogue is not None
        items = [(r.value, _record_time(r)) for r in records]
        try:
            async with self.sessions() as session:
                result = await self.catalogue.apply(session, items)
        except Exception as exc:
            if db.is_unavailable(exc):
                raise db.CatalogueUnavailable(f"catalogue database unavailable: {exc}") from exc
            if isinstance(exc, IntegrityError):  # another instance added the same row first: redo
                raise db.CatalogueUnavailable(f"catalogue write conflict, redoing the batch: {exc}") from exc
            raise
        # rows really inserted: a replayed batch (same products, same samples) counts nothing
        if result.products_added:
            metrics.ARCHIVE_RECORDS.labels("product").inc(result.products_added)
        if result.samples_added:
            metrics.ARCHIVE_RECORDS.labels("engineering").inc(result.samples_added)
        if result.products_added:
            await self._refresh_share()
        if result.products_added or result.samples_offered:
            log.info("catalogue batch", extra={"records": len(records),
                                               "products": result.products_added,
                                               "samples": result.samples_offered,
                                               "samples_new": result.samples_added})
        return [self.dead_letter_for(records[r.index].topic, records[r.index].tp, records[r.index],
                                     r.reason, **_exposure_field(records[r.index]))
                for r in result.rejected]

    async def tick(self) -> list[Output]:
        if time.monotonic() - self._share_at >= SHARE_REFRESH_SECONDS:
            try:
                await self._refresh_share()
            except Exception as exc:  # a database away: the next batch retries it the usual way
                log.warning("5-day share not refreshed", extra={"error": repr(exc)})
                self._share_at = time.monotonic()
        return []

    async def _refresh_share(self) -> None:
        """Set L2B_WITHIN_5_DAYS from the catalogue (this service is its only owner)."""
        assert self.sessions is not None
        async with self.sessions() as session:
            metrics.L2B_WITHIN_5_DAYS.set(await l2b_within_5_days(session, db.utcnow()))
        self._share_at = time.monotonic()


async def l2b_within_5_days(session, now: dt.datetime) -> float:
    """Share of the exposures received in the last 30 days whose first L2b came within 5 days of
    their L0 (the calibration SLO). Exposures still inside their 5 days without L2b do not count
    yet; no exposure at all is 1.0."""
    from sqlalchemy import func, select

    from consumers.archive.models import Exposure, Product

    rows = (await session.execute(
        select(Exposure.l0_received, func.min(Product.created))
        .outerjoin(Product, (Product.exposure_id == Exposure.id) & (Product.level == "L2b"))
        .where(Exposure.l0_received >= now - dt.timedelta(days=30))
        .group_by(Exposure.id, Exposure.l0_received))).all()
    window = dt.timedelta(days=5)
    due = [(received, l2b) for received, l2b in rows if l2b is not None or now - received > window]
    if not due:
        return 1.0
    return sum(1 for received, l2b in due if l2b is not None and l2b - received <= window) / len(due)


def _record_time(record: Record) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.timestamp / 1000.0, dt.timezone.utc).replace(tzinfo=None)


def _exposure_field(record: Record) -> dict[str, Any]:
    exp = getattr(record.value, "exposure_id", None)
    return {"exposure_id": exp} if exp else {"apid": getattr(record.value, "apid", None)}
