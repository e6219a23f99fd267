"""GET /api/v1/programs: every program with its PI and exclusive-access period (public facts)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from consumers.archive.api.deps import SessionDep
from consumers.archive.api.schemas import ProgramOut, ProgramsOut
from consumers.archive.models import Program

router = APIRouter(tags=["programs"])


@router.get("/programs", response_model=ProgramsOut)
async def list_programs(session: SessionDep) -> ProgramsOut:
    rows = (await session.execute(select(Program).order_by(Program.id))).scalars().all()
    return ProgramsOut(programs=[ProgramOut(id=p.id, title=p.title, pi=p.pi,
                                            period_months=p.period_months) for p in rows])
