"""The FastAPI application: state (engine, clock, Kafka producer), error handlers, routers.

``create_app(settings, clock=...)`` builds a self-contained app; the clock is
injectable so tests step over release dates instead of waiting for them.
The schema must exist already (``db.migrate``; the server runs it at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from consumers.archive import db
from consumers.archive.api import errors
from core.settings import Settings
from core.version import SOFTWARE_VERSION


class ArchiveState:
    """What every request shares: settings, sessions, the clock, a lazily started producer."""

    def __init__(self, settings: Settings, clock: Callable[[], dt.datetime]) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = db.async_engine(settings)
        self.sessions = db.sessionmaker(self.engine)
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def producer(self) -> Any:
        async with self._lock:
            if self._producer is None:
                from streams.kafka import make_producer, start_client

                producer = make_producer(self.settings)
                await start_client(self.settings, producer)
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        await self.engine.dispose()


def create_app(settings: Settings, clock: Callable[[], dt.datetime] = db.utcnow) -> FastAPI:
    from consumers.archive.api.routes import contributed, engineering, products, programs, reprocess

    state = ArchiveState(settings, clock)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(title="downlink archive", version=SOFTWARE_VERSION, lifespan=lifespan,
                  description="Programs, products (with exclusive access) and recorded engineering. "
                              "Authenticate with `Authorization: Bearer <token>`.")
    app.router.redirect_slashes = False  # a trailing slash is a 404, never a redirect elsewhere
    app.state.archive = state
    errors.install(app)
    for module in (programs, products, engineering, reprocess, contributed):
        app.include_router(module.router, prefix="/api/v1")
    return app
