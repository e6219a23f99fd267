"""POST /api/v1/programs/{program}/contributed: members upload data-analysis products.

The body is the FITS file itself (any content type, e.g. ``application/fits``) and
``?filename=`` names it. It is streamed to a temporary file (bounded by
``settings.archive.max_upload_bytes``), must open with astropy and carry
``PROGRAM`` equal to the program in its primary header, and is then kept in
the store and catalogued as level ``contributed``, a new version per
distinct content, under the program's exclusive access: released the
program's period after the upload.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from consumers.archive import access, store
from consumers.archive.api.deps import NowDep, SessionDep, UserDep
from consumers.archive.api.errors import ApiError
from consumers.archive.api.routes.products import _out
from consumers.archive.api.schemas import FILENAME, ProductOut
from consumers.archive.catalogue import relink_versions
from consumers.archive.models import Product, Program

router = APIRouter(tags=["contributed"])

_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/programs/{program}/contributed", response_model=ProductOut, status_code=201,
             openapi_extra=_BODY)
async def contribute(request: Request, program: int, session: SessionDep, viewer: UserDep, now: NowDep,
                     filename: Annotated[str, Query(pattern=FILENAME)]) -> ProductOut:
    if not 1 <= program <= 99999:
        raise ApiError(422, "program must be 1..99999")
    prog = await session.get(Program, program)
    if prog is None:
        raise ApiError(404, f"no program {program}")
    if not access.can_contribute(viewer, program):
        raise ApiError(403, f"only members of program {program} may contribute products to it")
    settings = request.app.state.archive.settings
    limit = settings.archive.max_upload_bytes
    uploads = Path(settings.data_dir).resolve() / "archive" / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=uploads, suffix=".fits")
    tmp = Path(tmp_name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the upload exceeds {limit} bytes")
                await asyncio.to_thread(fh.write, chunk)
        if size == 0:
            raise ApiError(422, "the body is empty: send the FITS file as the request body")
        problem = await asyncio.to_thread(_check_fits, tmp, program)
        if problem:
            raise ApiError(422, problem)
        secured = await asyncio.to_thread(store.keep_bytes, settings.data_dir, tmp, ".fits")
    finally:
        tmp.unlink(missing_ok=True)
    name = filename[: -len(".fits")]
    existing = (await session.execute(select(Product).where(Product.name == name))).scalars().all()
    clash = [p for p in existing if p.program_id != program]
    if clash:
        raise ApiError(409, f"the name {name} belongs to another product; choose another filename")
    same = next((p for p in existing if p.sha256 == secured.sha256), None)
    if same is None:
        same = Product(name=name, version=max((p.version for p in existing), default=0) + 1,
                       exposure_id=None, program_id=program, level="contributed", suffix="contributed",
                       path=filename, store_path=str(secured.path), size=secured.size,
                       sha256=secured.sha256, pipeline_version="", context="",
                       provenance={"contributed_by": viewer.user, "filename": filename},
                       source="contributed", created=now,
                       release_date=access.release_date(now, prog.period_months))
        session.add(same)
        await session.flush()
        await relink_versions(session, name)
        await session.commit()
    return _out(same, prog, None, now)


def _check_fits(path: Path, program: int) -> str:
    """'' when the file is FITS naming the program, else what is wrong."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header
            value = header.get("PROGRAM")
            hdul.verify("exception")
    except Exception as exc:  # astropy raises many types for a bad file
        return f"not a readable FITS file: {type(exc).__name__}"
    try:
        named = int(str(value).strip())
    except (TypeError, ValueError):
        return "the primary header has no PROGRAM keyword naming the program"
    if named != program:
        return f"the file names program {named}, not {program}"
    return ""
