"""An HTTP service (the archive API, the dashboard): an ASGI app served by uvicorn.

``stop()`` asks uvicorn to finish the requests in flight and close its
sockets (graceful shutdown, bounded by ``shutdown_timeout``) instead of
cutting connections. uvicorn is imported only when a server starts.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from typing import Any, ClassVar

from consumers.framework.service import Service

log = logging.getLogger(__name__)


class ServerService(Service):
    """Base of the HTTP services; subclasses build the app and say where to listen."""

    shutdown_timeout: ClassVar[float] = 10.0

    def __init__(self, settings, *, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.host, self.port = host, port
        self._server: Any = None

    @abc.abstractmethod
    def app(self) -> Any:
        """The ASGI application."""

    async def on_start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self.app(), host=self.host, port=self.port, log_config=None,
                                lifespan="on", timeout_graceful_shutdown=int(self.shutdown_timeout))
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # the runner owns the signals

    async def run(self) -> None:
        assert self._server is not None
        await self._server.serve()

    async def request_stop(self) -> None:
        await super().request_stop()
        if self._server is not None:
            self._server.should_exit = True

    @property
    def started(self) -> bool:
        return bool(self._server is not None and self._server.started)

    async def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)
            self._server = None

    async def caught_up(self) -> bool:
        return True
