"""Facts every benchmark records next to its figures."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from importlib import metadata
from typing import Any


def machine(*packages: str) -> dict[str, Any]:
    """Cores, RAM, Python and package versions, and the exact command line."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {"python": platform.python_version()}
    for name in ("numpy", "aiokafka", *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cores": os.cpu_count(), "ram_gb": round(ram, 1), "versions": versions,
            "command": " ".join(shlex.quote(a) for a in sys.argv)}
