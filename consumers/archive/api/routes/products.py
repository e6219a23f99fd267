"""Products: search (paged), metadata with provenance, file download (streamed, Range, sha256).

Every lookup goes through :func:`consumers.archive.visibility.products_query`,
so a product the caller may not see is not found by the database: the
answer (404 and its body) is byte-for-byte the one for an id that does not
exist, in metadata, downloads, search results and totals alike.

Best version on request: fetching the newest version of a calibrated
product whose context or pipeline is older than the best available queues
one reprocess request for its exposure (once per target) and says so
(``reprocess`` in the metadata, ``X-Reprocess`` header on downloads); the
current version is served meanwhile. ``?version=N`` fetches version N.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy import func, select

from consumers.archive import access, reprocess as rp
from consumers.archive.access import Viewer
from consumers.archive.api.deps import NowDep, SessionDep, ViewerDep
from consumers.archive.api.errors import ApiError
from consumers.archive.api.schemas import (EXPOSURE_ID, PRODUCT_ID, TARGET, WORD, Level,
                                           ProductDetail, ProductOut, ProductsOut, ReprocessNote)
from consumers.archive.catalogue import insert_ignore
from consumers.archive.models import Exposure, Product, Program, ReprocessRequest
from consumers.archive.visibility import products_query, public

log = logging.getLogger(__name__)
router = APIRouter(tags=["products"])

ProductId = Annotated[str, Path(pattern=PRODUCT_ID, description="product name, e.g. "
                                "jw01234001001_01101_00001_nrca1_cal")]
VersionQ = Annotated[int | None, Query(ge=1, le=1_000_000, description="a specific version "
                                       "(default: the newest)")]


def _out(p: Product, prog: Program, exp: Exposure | None, now: dt.datetime, cls=ProductOut, **extra):
    return cls(id=p.name, version=p.version, latest=p.superseded_by is None,
               superseded_by=p.superseded_by, exposure=p.exposure_id, program=p.program_id,
               level=p.level, suffix=p.suffix, size=p.size, sha256=p.sha256,
               release_date=p.release_date,
               public=access.is_public(p.release_date, prog.period_months, now),
               pipeline_version=p.pipeline_version, context=p.context, created=p.created,
               instrument=exp.instrument if exp else None, detector=exp.detector if exp else None,
               target=exp.target if exp else None, start_time=exp.start_time if exp else None,
               **extra)


@router.get("/products", response_model=ProductsOut)
async def search_products(
    request: Request, session: SessionDep, viewer: ViewerDep, now: NowDep,
    program: Annotated[int | None, Query(ge=1, le=99999)] = None,
    exposure: Annotated[str | None, Query(pattern=EXPOSURE_ID)] = None,
    target: Annotated[str | None, Query(pattern=TARGET, description="exact target name")] = None,
    instrument: Annotated[str | None, Query(pattern=WORD)] = None,
    detector: Annotated[str | None, Query(pattern=WORD)] = None,
    level: Level | None = None,
    start: Annotated[dt.datetime | None, Query(description="exposures starting at or after (UTC)")] = None,
    end: Annotated[dt.datetime | None, Query(description="exposures starting before (UTC)")] = None,
    public_only: Annotated[bool | None, Query(alias="public", description="true: only public; "
                                              "false: only still proprietary")] = None,
    all_versions: Annotated[bool, Query(description="every version, not only the newest")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ProductsOut:
    limit = min(limit, request.app.state.archive.settings.archive.max_page_size)
    conds = []
    if program is not None:
        conds.append(Product.program_id == program)
    if exposure is not None:
        conds.append(Product.exposure_id == exposure)
    if target is not None:
        conds.append(func.lower(Exposure.target) == target.lower())
    if instrument is not None:
        conds.append(Exposure.instrument == instrument.upper())
    if detector is not None:
        conds.append(Exposure.detector == detector.upper())
    if level is not None:
        conds.append(Product.level == level)
    if start is not None:
        conds.append(Exposure.start_time >= _naive(start))
    if end is not None:
        conds.append(Exposure.start_time < _naive(end))
    if public_only is not None:
        conds.append(public(now) if public_only else ~public(now))
    if not all_versions:
        conds.append(Product.superseded_by.is_(None))
    base = products_query(viewer, now, Product, Program, Exposure) \
        .outerjoin(Exposure, Exposure.id == Product.exposure_id).where(*conds)
    count = products_query(viewer, now, func.count(Product.pk)) \
        .outerjoin(Exposure, Exposure.id == Product.exposure_id).where(*conds)
    total = (await session.execute(count)).scalar_one()
    rows = (await session.execute(base.order_by(Product.name, Product.version)
                                  .limit(limit).offset(offset))).all()
    return ProductsOut(products=[_out(p, prog, exp, now) for p, prog, exp in rows],
                       total=total, limit=limit, offset=offset)


def _naive(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None) if when.tzinfo else when


async def find(session: SessionDep, viewer: Viewer, now: dt.datetime, name: str,
               version: int | None) -> tuple[Product, Program, Exposure | None]:
    """The visible product version, or the one 404 that a missing product also gets."""
    stmt = products_query(viewer, now, Product, Program, Exposure) \
        .outerjoin(Exposure, Exposure.id == Product.exposure_id).where(Product.name == name)
    stmt = stmt.where(Product.version == version) if version is not None else \
        stmt.where(Product.superseded_by.is_(None))
    row = (await session.execute(stmt)).first()
    if row is None:
        raise ApiError(404, f"no product {name}" + (f" version {version}" if version else ""))
    return row[0], row[1], row[2]


async def best_version_note(request: Request, session: SessionDep, viewer: Viewer,
                            product: Product) -> ReprocessNote | None:
    """Queue one reprocess request when the product is older than the best available."""
    state = request.app.state.archive
    best = await rp.best_context(session, state.settings)
    reason = rp.outdated(product, best)
    if not reason or product.exposure_id is None:
        return None
    exposure = await session.get(Exposure, product.exposure_id)
    target = (product.exposure_id, best, rp.SOFTWARE_VERSION)
    done = (await session.execute(select(ReprocessRequest.id).where(
        ReprocessRequest.exposure_id == target[0], ReprocessRequest.context == target[1],
        ReprocessRequest.pipeline_version == target[2]))).first()
    if done is not None:
        return ReprocessNote(queued=True, reason=reason, context=best,
                             message="a reprocess with the best version was already requested; "
                                     "the new version appears when it is ready")
    requests = rp.requests_for([exposure], context=best or None, reason=f"best version: {reason}")
    if not requests:
        return ReprocessNote(queued=False, reason=reason, context=best,
                             message="no uncal file known for this exposure; cannot reprocess")
    try:
        await rp.send(state.settings, requests, await state.producer())
    except Exception as exc:  # Kafka away: serve the product anyway, say so
        log.warning("best-version reprocess not queued", extra={"exposure_id": product.exposure_id,
                                                                "error": repr(exc)})
        return ReprocessNote(queued=False, reason=reason, context=best,
                             message="the reprocess request could not be queued now; retry later")
    await insert_ignore(session, ReprocessRequest, [{
        "exposure_id": target[0], "context": target[1], "pipeline_version": target[2],
        "requested_by": viewer.user or "anonymous", "reason": reason[:200],
        "requested": state.clock()}], ["exposure_id", "context", "pipeline_version"])
    await session.commit()
    return ReprocessNote(queued=True, reason=reason, context=best,
                         message="a reprocess with the best version was queued; this version is "
                                 "served meanwhile and the new one appears when ready")


@router.get("/products/{product_id}", response_model=ProductDetail)
async def get_product(request: Request, session: SessionDep, viewer: ViewerDep, now: NowDep,
                      product_id: ProductId, version: VersionQ = None) -> ProductDetail:
    product, prog, exp = await find(session, viewer, now, product_id, version)
    versions = (await session.execute(
        products_query(viewer, now, Product.version).where(Product.name == product_id)
        .order_by(Product.version))).scalars().all()
    note = await best_version_note(request, session, viewer, product) if version is None else None
    return _out(product, prog, exp, now, ProductDetail, provenance=product.provenance or {},
                versions=list(versions), reprocess=note)


@router.get("/products/{product_id}/file", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "the file (206 for a Range request)"},
                       206: {"description": "partial content"}, 404: {"description": "no such product"}})
async def download(request: Request, session: SessionDep, viewer: ViewerDep, now: NowDep,
                   product_id: ProductId, version: VersionQ = None) -> FileResponse:
    product, _prog, _exp = await find(session, viewer, now, product_id, version)
    note = await best_version_note(request, session, viewer, product) if version is None else None
    if not os.path.isfile(product.store_path):
        log.error("catalogued file missing from the store", extra={"product": product.name,
                                                                   "path": product.store_path})
        raise ApiError(503, "the product file is temporarily unavailable; operators are notified",
                       {"Retry-After": "60"})
    digest = base64.b64encode(bytes.fromhex(product.sha256)).decode()
    headers = {"X-Checksum-SHA256": product.sha256, "Repr-Digest": f"sha-256=:{digest}:",
               "X-Product-Version": str(product.version), "Cache-Control": "private, no-store"}
    if note is not None:
        headers["X-Reprocess"] = ("queued " if note.queued else "not-queued ") + note.context
    filename = os.path.basename(product.path) or f"{product.name}.fits"
    return FileResponse(product.store_path, headers=headers, filename=filename,
                        media_type="application/octet-stream", stat_result=os.stat(product.store_path))
