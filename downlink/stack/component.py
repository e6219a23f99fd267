"""What the launcher needs to know about one stack component (Kafka, Mosquitto, Prometheus, PostgreSQL)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from core.settings import Settings


class Component(ABC):
    """A local server process: how to prepare, start and probe it.

    Subclasses write their configuration under ``<state_dir>/<name>/`` and log
    to ``<state_dir>/logs/<name>.log``.
    """

    name: str = ""
    #: seconds between SIGTERM and SIGKILL on ``down``
    grace: float = 10.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()

    @property
    def home(self) -> Path:
        """Folder for this component's config and data."""
        return self.state_dir / self.name

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    @property
    @abstractmethod
    def ports(self) -> list[int]:
        """Every TCP port the process listens on; the first is shown in status."""

    def missing(self) -> str | None:
        """Why this component cannot run here (binary absent), or None."""
        return None

    async def prepare(self) -> str:
        """Write configuration, fetch binaries, initialise storage; returns a note for the user."""
        return ""

    @abstractmethod
    def argv(self) -> list[str]:
        """Command line that runs the server in the foreground."""

    @abstractmethod
    async def probe(self) -> str | None:
        """None when the server answers real requests, else why not."""

    async def shutdown(self) -> None:
        """Ask the server to stop by its own means, before ``down`` signals it (default: nothing;
        raise StackError when that failed, and the signals follow)."""
