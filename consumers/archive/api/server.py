"""``downlink serve`` / ``downlink run --only api``: the archive API under uvicorn.

Migrations run before the app starts serving, so the server never answers on
a schema older than its code.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from consumers.archive import db
from consumers.framework.server import ServerService


class ApiServer(ServerService):
    name: ClassVar[str] = "api"

    def __init__(self, settings, *, host: str | None = None, port: int | None = None, **kw: Any) -> None:
        super().__init__(settings, host=host or settings.archive.api_host,
                         port=port or settings.archive.api_port, **kw)

    def app(self) -> Any:
        from consumers.archive.api.app import create_app

        return create_app(self.settings)

    async def on_start(self) -> None:
        await asyncio.to_thread(db.migrate, self.settings)
        await super().on_start()
