"""POST /api/v1/reprocess: staff, or members of the program, ask for a reprocessing run.

An exposure the caller may not see is answered exactly like a missing one
(404); a visible exposure or a program (programs are public) that the caller
is no member of is 403.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select

from consumers.archive import access, reprocess as rp
from consumers.archive.api.deps import NowDep, SessionDep, UserDep
from consumers.archive.api.errors import ApiError
from consumers.archive.api.schemas import ReprocessIn, ReprocessOut
from consumers.archive.models import Product, Program
from consumers.archive.visibility import products_query

router = APIRouter(tags=["reprocess"])


@router.post("/reprocess", response_model=ReprocessOut, status_code=202)
async def reprocess(request: Request, body: ReprocessIn, session: SessionDep, viewer: UserDep,
                    now: NowDep) -> ReprocessOut:
    if (body.program is None) == (body.exposure is None):
        raise ApiError(422, "give exactly one of program or exposure")
    if body.exposure is not None:
        exposures = await rp.exposures_for(session, exposure=body.exposure)
        seen = (await session.execute(products_query(viewer, now, Product.pk)
                                      .where(Product.exposure_id == body.exposure).limit(1))).first()
        if not exposures or (seen is None and not access.can_reprocess(viewer, exposures[0].program_id)):
            raise ApiError(404, f"no exposure {body.exposure}")
        program = exposures[0].program_id
    else:
        program = body.program
        if (await session.execute(select(Program.id).where(Program.id == program))).first() is None:
            raise ApiError(404, f"no program {program}")
        exposures = await rp.exposures_for(session, program=program)
    if not access.can_reprocess(viewer, program):
        raise ApiError(403, f"only staff and members of program {program} may reprocess its data")
    requests = rp.requests_for(exposures, context=body.context,
                               reason=f"requested by {viewer.user} through the API")
    if not requests:
        raise ApiError(409, "nothing to reprocess yet: no exposure here has an uncal file")
    state = request.app.state.archive
    await rp.send(state.settings, requests, await state.producer())
    return ReprocessOut(queued=len(requests), exposures=[r.exposure_id for r in requests],
                        context=body.context)
