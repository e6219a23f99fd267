"""Users, tokens and programs: what `downlink users` and `downlink archive program` change.

Synchronous (the CLI runs one short transaction). A token is
``dl_<43 random url-safe chars>``; only its sha256 is stored, with an expiry,
so a stolen database does not hand out working tokens, and the token itself
is shown exactly once. A plain hash (no salt, no key stretching) suffices
because the token has 256 random bits: nothing to brute-force.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from consumers.archive import access
from consumers.archive.db import sync_engine, utcnow
from consumers.archive.models import Exposure, Membership, Product, Program, Token, User
from core.errors import ValidationError
from core.settings import Settings

TOKEN_PREFIX = "dl_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ProgramInfo:
    id: int
    title: str
    pi: str | None
    period_months: int
    members: tuple[str, ...]
    exposures: int
    products: int


class Admin:
    """One catalogue, administered through short synchronous transactions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = sync_engine(settings)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- programs ----------------------------------------------------------------------------
    def ensure_program(self, session: Session, program: int, period: int | None = None) -> Program:
        if not 1 <= program <= 99999:
            raise ValidationError(f"program {program} must be 1..99999 (the 5 digits of an exposure id)")
        row = session.get(Program, program)
        if row is None:
            row = Program(id=program, title="", pi=None, created=utcnow(),
                          period_months=access.check_period(
                              self.settings.archive.default_period_months if period is None else period))
            session.add(row)
            session.flush()
        return row

    def set_program(self, program: int, *, period: int | None = None, pi: str | None = None,
                    title: str | None = None) -> ProgramInfo:
        """Create or change a program. A new period re-dates every product of the program
        (first calibration + new period): the clock itself never moves."""
        with Session(self.engine) as session, session.begin():
            row = self.ensure_program(session, program, period)
            if title is not None:
                row.title = title[:200]
            if pi is not None:
                user = self._user(session, pi)
                row.pi = user.name
                self._join(session, user, row.id)
            if period is not None and period != row.period_months:
                row.period_months = access.check_period(period)
                self._redate(session, row)
        return self.program(program)

    def _redate(self, session: Session, program: Program) -> None:
        for exp in session.scalars(select(Exposure).where(Exposure.program_id == program.id)):
            exp.release_date = access.release_date(exp.first_calibrated, program.period_months)
            session.execute(update(Product).where(Product.exposure_id == exp.id)
                            .values(release_date=exp.release_date))
        for prod in session.scalars(select(Product).where(Product.program_id == program.id,
                                                          Product.exposure_id.is_(None))):
            prod.release_date = access.release_date(prod.created, program.period_months)

    def program(self, program: int) -> ProgramInfo:
        return next(p for p in self.programs() if p.id == program)

    def programs(self) -> list[ProgramInfo]:
        from sqlalchemy import func

        with Session(self.engine) as session:
            members: dict[int, list[str]] = {}
            for pid, name in session.execute(select(Membership.program_id, User.name)
                                             .join(User, User.id == Membership.user_id)
                                             .order_by(User.name)):
                members.setdefault(pid, []).append(name)
            n_exp = dict(session.execute(select(Exposure.program_id, func.count())
                                         .group_by(Exposure.program_id)).all())
            n_prod = dict(session.execute(select(Product.program_id, func.count())
                                          .where(Product.superseded_by.is_(None))
                                          .group_by(Product.program_id)).all())
            return [ProgramInfo(p.id, p.title, p.pi, p.period_months, tuple(members.get(p.id, ())),
                                n_exp.get(p.id, 0), n_prod.get(p.id, 0))
                    for p in session.scalars(select(Program).order_by(Program.id))]

    # -- users -------------------------------------------------------------------------------
    def add_user(self, name: str, programs: list[int] = (), staff: bool = False,
                 days: float | None = None, now: dt.datetime | None = None) -> str:
        """Create (or extend) a user, make it a member of ``programs`` (created with the default
        period when new); returns a new token."""
        if not _NAME.match(name):
            raise ValidationError(f"user name {name!r}: letters, digits and _ . @ - only, at most 64")
        with Session(self.engine) as session, session.begin():
            user = session.scalars(select(User).where(User.name == name)).first()
            if user is None:
                user = User(name=name, staff=staff, active=True, created=utcnow())
                session.add(user)
                session.flush()
            elif staff:
                user.staff = True
            for program in programs:
                row = self.ensure_program(session, program)
                if row.pi is None:
                    row.pi = name
                self._join(session, user, program)
            return self._issue(session, user, days, now)

    def issue_token(self, name: str, days: float | None = None, now: dt.datetime | None = None) -> str:
        with Session(self.engine) as session, session.begin():
            return self._issue(session, self._user(session, name), days, now)

    def revoke_tokens(self, name: str) -> int:
        with Session(self.engine) as session, session.begin():
            user = self._user(session, name)
            result = session.execute(update(Token).where(Token.user_id == user.id, Token.revoked.is_(False))
                                     .values(revoked=True))
            return result.rowcount or 0

    def _issue(self, session: Session, user: User, days: float | None,
               now: dt.datetime | None = None) -> str:
        now = now or utcnow()
        token = new_token()
        lifetime = self.settings.archive.token_days if days is None else days
        session.add(Token(user_id=user.id, digest=token_digest(token), created=now,
                          expires=now + dt.timedelta(days=lifetime), revoked=False))
        return token

    def _user(self, session: Session, name: str) -> User:
        user = session.scalars(select(User).where(User.name == name)).first()
        if user is None:
            raise ValidationError(f"no user {name!r}; create it with `downlink users add {name}`")
        return user

    @staticmethod
    def _join(session: Session, user: User, program: int) -> None:
        if session.get(Membership, (program, user.id)) is None:
            session.add(Membership(program_id=program, user_id=user.id))
            session.flush()
