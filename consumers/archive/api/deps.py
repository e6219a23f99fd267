"""The dependency chain every route declares in its signature.

``SessionDep`` (one session per request) and ``NowDep`` (the clock, injected
so tests move time instead of waiting) feed ``ViewerDep``: no Authorization
header is the anonymous viewer; a Bearer token is looked up by its sha256 and
must be unexpired, unrevoked and belong to an active user, else 401 (a wrong
token is never silently anonymous). ``UserDep`` then requires a signed-in
user. Access decisions themselves are :mod:`consumers.archive.access`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.archive.access import ANONYMOUS, Viewer
from consumers.archive.admin import token_digest
from consumers.archive.api.errors import ApiError
from consumers.archive.models import Membership, Token, User

bearer = HTTPBearer(auto_error=False, description="API token from `downlink users add` or `downlink users token`")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.archive.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def get_now(request: Request) -> dt.datetime:
    return request.app.state.archive.clock()


NowDep = Annotated[dt.datetime, Depends(get_now)]


async def get_viewer(request: Request, session: SessionDep, now: NowDep,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
                     ) -> Viewer:
    if "authorization" not in request.headers:
        return ANONYMOUS
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "the Authorization header must be 'Bearer <token>'", _CHALLENGE)
    row = (await session.execute(
        select(Token, User).join(User, User.id == Token.user_id)
        .where(Token.digest == token_digest(credentials.credentials)))).first()
    if row is None or row.Token.revoked or row.Token.expires <= now or not row.User.active:
        raise ApiError(401, "invalid or expired token; get a new one with `downlink users token NAME`",
                       _CHALLENGE)
    programs = (await session.execute(select(Membership.program_id)
                                      .where(Membership.user_id == row.User.id))).scalars().all()
    return Viewer(user=row.User.name, staff=row.User.staff, programs=frozenset(programs))


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


def require_user(viewer: ViewerDep) -> Viewer:
    if viewer.anonymous:
        raise ApiError(401, "this needs an API token (Authorization: Bearer <token>)", _CHALLENGE)
    return viewer


UserDep = Annotated[Viewer, Depends(require_user)]
