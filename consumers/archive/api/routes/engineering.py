"""GET /api/v1/engineering: recorded engineering history of one parameter over a time range.

Engineering telemetry is not proprietary: anonymous callers may read it (the
dashboard's history provider does). ``max_points=N`` downsamples inside the
database into N equal time buckets (mean, min, max, count per bucket);
without it, a range holding more than ``settings.archive.max_eng_points``
samples is refused with a message instead of being sent whole.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import Integer, cast, func, select

from consumers.archive.api.deps import SessionDep
from consumers.archive.api.errors import ApiError
from consumers.archive.api.schemas import PARAMETER, EngOut, EngPoint
from consumers.archive.models import EngSample
from core.errors import ConfigError
from core.timecodes import tai_to_iso, utc_to_tai

router = APIRouter(tags=["engineering"])


@router.get("/engineering", response_model=EngOut)
async def engineering(
    request: Request, session: SessionDep,
    parameter: Annotated[str, Query(pattern=PARAMETER, description="dictionary parameter name")],
    start: Annotated[dt.datetime, Query(description="UTC, inclusive")],
    end: Annotated[dt.datetime, Query(description="UTC, exclusive")],
    max_points: Annotated[int | None, Query(ge=1, le=100_000, description="downsample to at most "
                                            "this many buckets")] = None,
) -> EngOut:
    settings = request.app.state.archive.settings
    unit = _unit(request, parameter)
    try:
        t0, t1 = utc_to_tai(start), utc_to_tai(end)
    except (OverflowError, ValueError):
        raise ApiError(422, "start and end must be representable UTC times") from None
    if t1 <= t0:
        raise ApiError(422, "end must be after start")
    where = (EngSample.parameter == parameter, EngSample.t >= t0, EngSample.t < t1)
    total = (await session.execute(select(func.count()).select_from(EngSample).where(*where))).scalar_one()
    if unit is None and total == 0:
        raise ApiError(404, f"no engineering parameter {parameter}")
    limit = settings.archive.max_eng_points
    if max_points is not None and total > max_points:
        width = (t1 - t0) / max_points
        scaled = (EngSample.t - t0) / width
        # floor: PostgreSQL's CAST rounds to nearest, SQLite's truncates (equal to floor here, >= 0)
        bucket = (func.floor(scaled) if session.bind.dialect.name == "postgresql"
                  else cast(scaled, Integer)).label("b")
        rows = (await session.execute(
            select(bucket, func.avg(EngSample.t), func.avg(EngSample.value), func.min(EngSample.value),
                   func.max(EngSample.value), func.count()).where(*where).group_by(bucket)
            .order_by(bucket))).all()
        points = [EngPoint(time=tai_to_iso(t), tai=t, value=v, min=lo, max=hi, n=n)
                  for _b, t, v, lo, hi, n in rows]
        return EngOut(parameter=parameter, unit=unit or "", start=start, end=end, downsampled=True,
                      total=total, points=points)
    if total > limit:
        raise ApiError(422, f"{total} samples in this range exceed the limit of {limit}; "
                            "pass max_points to downsample or narrow the range")
    rows = (await session.execute(select(EngSample.t, EngSample.value, EngSample.raw)
                                  .where(*where).order_by(EngSample.t))).all()
    return EngOut(parameter=parameter, unit=unit or "", start=start, end=end, downsampled=False,
                  total=total, points=[EngPoint(time=tai_to_iso(t), tai=t, value=v, raw=r)
                                       for t, v, r in rows])


def _unit(request: Request, parameter: str) -> str | None:
    state = request.app.state.archive
    if not hasattr(state, "dictionary"):
        from streams.dictionary import load_dictionary

        state.dictionary = load_dictionary(state.settings.dictionary_file)
    try:
        return state.dictionary.parameter(parameter).unit
    except (ConfigError, KeyError):
        return None
