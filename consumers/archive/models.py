"""Catalogue tables (SQLAlchemy 2 declarative). Changing them needs a new Alembic revision.

Times are naive UTC ``DateTime`` columns (SQLite keeps no zone; one
convention for both backends), except engineering sample times, which are
TAI seconds since 1958 as the packets carry them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey,
                        Index, Integer, SmallInteger, String, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PERIODS = (0, 3, 6, 12)


class Base(DeclarativeBase):
    pass


class Program(Base):
    __tablename__ = "programs"
    __table_args__ = (CheckConstraint("period_months IN (0, 3, 6, 12)", name="ck_programs_period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(200), default="")
    #: user name of the principal investigator (also a member)
    pi: Mapped[str | None] = mapped_column(String(64), nullable=True)
    period_months: Mapped[int] = mapped_column(SmallInteger)
    created: Mapped[dt.datetime] = mapped_column(DateTime)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    staff: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime)


class Membership(Base):
    __tablename__ = "memberships"

    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True,
                                         index=True)


class Token(Base):
    """An API token: only its sha256 is kept (the token itself is shown once)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime)
    expires: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Exposure(Base):
    __tablename__ = "exposures"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"), index=True)
    observation: Mapped[int] = mapped_column(Integer)
    visit: Mapped[int] = mapped_column(Integer)
    instrument: Mapped[str] = mapped_column(String(16), index=True)
    detector: Mapped[str] = mapped_column(String(16), index=True)
    target: Mapped[str] = mapped_column(String(64), default="", index=True)
    exp_type: Mapped[str] = mapped_column(String(32), default="")
    readpatt: Mapped[str] = mapped_column(String(32), default="")
    start_time: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    end_time: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    l0_version: Mapped[int] = mapped_column(Integer, default=0)
    l0_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    l0_missing_packets: Mapped[int] = mapped_column(Integer, default=0)
    l0_sha256: Mapped[str] = mapped_column(String(64), default="")
    l0_received: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    #: what a reprocess request needs (from the latest cal.done)
    uncal_path: Mapped[str] = mapped_column(String(1024), default="")
    uncal_sha256: Mapped[str] = mapped_column(String(64), default="")
    #: first calibration in the archive: the exclusive-access clock starts here, once
    first_calibrated: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    release_date: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Product(Base):
    """One version of one product file; the newest version has ``superseded_by`` NULL."""

    __tablename__ = "products"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_products_name_version"),
        UniqueConstraint("name", "sha256", name="uq_products_name_sha256"),
        Index("ix_products_latest", "superseded_by", "level"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: public id: the file stem, e.g. jw01234001001_01101_00001_nrca1_cal
    name: Mapped[str] = mapped_column(String(96), index=True)
    version: Mapped[int] = mapped_column(Integer)
    exposure_id: Mapped[str | None] = mapped_column(ForeignKey("exposures.id"), nullable=True, index=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"), index=True)
    level: Mapped[str] = mapped_column(String(16), index=True)
    suffix: Mapped[str] = mapped_column(String(32), default="")
    #: where the producing service wrote it, and the archive's own copy (served)
    path: Mapped[str] = mapped_column(String(1024))
    store_path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    pipeline_version: Mapped[str] = mapped_column(String(32), default="")
    context: Mapped[str] = mapped_column(String(64), default="")
    #: provenance: message fields and the file's provenance keywords (CAL_VER, CRDS_CTX, R_*, S_*)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16))  # l0.ready | cal.done | contributed
    created: Mapped[dt.datetime] = mapped_column(DateTime)
    release_date: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ReprocessRequest(Base):
    """A reprocess request sent to cal.requests (one per exposure and target, so a popular old
    product does not queue the same request on every download)."""

    __tablename__ = "reprocess_requests"
    __table_args__ = (UniqueConstraint("exposure_id", "context", "pipeline_version",
                                       name="uq_reprocess_target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    exposure_id: Mapped[str] = mapped_column(ForeignKey("exposures.id"), index=True)
    #: target context ("" = the best at run time) and pipeline version
    context: Mapped[str] = mapped_column(String(64), default="")
    pipeline_version: Mapped[str] = mapped_column(String(32), default="")
    requested_by: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(String(200), default="")
    requested: Mapped[dt.datetime] = mapped_column(DateTime)


class EngSample(Base):
    """One recorded engineering sample; the primary key (parameter, time) is the ingest identity
    and the index of time-range queries."""

    __tablename__ = "eng_samples"

    parameter: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: TAI seconds since 1958-01-01 (packet time code)
    t: Mapped[float] = mapped_column(Float(precision=53), primary_key=True)
    raw: Mapped[float] = mapped_column(Float(precision=53))
    value: Mapped[float] = mapped_column(Float(precision=53))
    apid: Mapped[int] = mapped_column(SmallInteger)
