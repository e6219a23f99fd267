"""Engines, sessions and migrations of the catalogue: SQLite by default, PostgreSQL in production.

``settings.archive.database_url`` empty means ``<data dir>/archive/catalogue.sqlite``.
One URL drives both the async engine the services use (aiosqlite, psycopg)
and the sync engine of Alembic and the CLI. The schema is made by Alembic
migrations only (``migrate``), never ``create_all``, so a deployed database
and a test database are the same schema.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, exc as sa_exc
from sqlalchemy.engine import Engine, URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from core.errors import ArchiveError, ConfigError
from core.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class CatalogueUnavailable(ArchiveError):
    """The catalogue database cannot be reached right now (server down, connection lost)."""

    retriable = True


def utcnow() -> dt.datetime:
    """Naive UTC now: the catalogue's one time convention."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def database_url(settings: Settings) -> URL:
    """The configured URL (driver made explicit), or the default SQLite file."""
    raw = settings.archive.database_url.reveal()
    if not raw:
        path = Path(settings.data_dir).resolve() / "archive" / "catalogue.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return URL.create("sqlite", database=str(path))
    try:
        url = make_url(raw)
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"DOWNLINK_ARCHIVE_DATABASE_URL is not a database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url.set(drivername="sqlite")
    raise ConfigError(f"DOWNLINK_ARCHIVE_DATABASE_URL: backend {backend!r} is not supported; "
                      "use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")


def _async_url(url: URL) -> URL:
    return url.set(drivername="sqlite+aiosqlite") if url.get_backend_name() == "sqlite" else url


def _sqlite_pragmas(engine: Any) -> None:
    """WAL (readers never block the writer: API and sink are separate processes), FK checks on,
    a busy timeout instead of 'database is locked' errors."""
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def sync_engine(settings: Settings) -> Engine:
    url = database_url(settings)
    engine = create_engine(url, pool_pre_ping=True)
    if url.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine)
    return engine


def async_engine(settings: Settings) -> AsyncEngine:
    url = database_url(settings)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_backend_name() == "postgresql":
        kwargs.update(pool_size=5, max_overflow=5, connect_args={"connect_timeout": 5})
    engine = create_async_engine(_async_url(url), **kwargs)
    if url.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine.sync_engine)
    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(settings: Settings) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # '%' must be doubled in ini-style options; the URL may hold a password with one
    cfg.set_main_option("sqlalchemy.url",
                        database_url(settings).render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    """``alembic upgrade head`` on the configured database (idempotent; run before serving)."""
    from alembic import command

    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    try:
        command.upgrade(alembic_config(settings), revision)
    except sa_exc.OperationalError as exc:
        raise CatalogueUnavailable(f"cannot migrate the catalogue at {_safe(settings)}: "
                                   f"{exc.orig}") from None


def _safe(settings: Settings) -> str:
    return database_url(settings).render_as_string(hide_password=True)


def is_unavailable(exc: BaseException) -> bool:
    """A database error that a retry later can fix (connection refused, lost, server restarting)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    return isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, FileNotFoundError)
