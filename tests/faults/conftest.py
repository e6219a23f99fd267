"""Fixtures of the fault suite: a private Kafka broker to stop and restart, a small real file system.

* ``private_kafka``: a Kafka broker of its own (launcher, free ports, a tmp
  state dir) with every topics.yaml topic created, for tests that stop the
  broker; the session's shared stack is never touched. Stopped at teardown.
* ``small_fs``: a real size-limited file system mounted on a tmp folder
  (tmpfs ``size=``; a loop-mounted ext4 image where tmpfs cannot be mounted),
  with ``grow(mb)`` to give space back. Unmounted at teardown. A machine
  where neither can be mounted (not root) is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from core.settings import Settings
from downlink.stack.launcher import Stack
from streams.topics import create_topics, load_topics


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class PrivateKafka:
    stack: Stack
    settings: Settings  # the test's settings pointed at this broker

    async def stop(self) -> None:
        await self.stack.down()

    async def start(self) -> None:
        await self.stack.up(timeout=180)


@pytest_asyncio.fixture
async def private_kafka(stack: Settings, settings: Settings, tmp_path: Path) -> AsyncIterator[PrivateKafka]:
    kafka, controller = free_ports(2)
    mine = settings.replace(kafka_bootstrap=f"127.0.0.1:{kafka}", stack_kafka_port=kafka,
                            stack_kafka_controller_port=controller)
    launcher = Stack(mine.replace(state_dir=tmp_path / "private-stack"), components=["kafka"])
    try:
        await launcher.up(timeout=180)
        await create_topics(mine, load_topics(mine.topics_file))
        yield PrivateKafka(launcher, mine)
    finally:
        await launcher.down()


@dataclass
class SmallFs:
    path: Path
    kind: str  # tmpfs | ext4-loop
    image: Path | None = None

    def grow(self, mb: int) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-o", f"remount,size={mb}m", str(self.path)], check=True)
        else:
            assert self.image is not None
            subprocess.run(["truncate", "-s", f"{mb}M", str(self.image)], check=True)
            loop = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.path)], check=True,
                                  capture_output=True, text=True).stdout.strip()
            subprocess.run(["losetup", "-c", loop], check=True)
            subprocess.run(["resize2fs", loop], check=True, capture_output=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free


def _mount_small(path: Path, mb: int, image: Path) -> SmallFs:
    path.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
                           capture_output=True, text=True)
    if tmpfs.returncode == 0:
        return SmallFs(path, "tmpfs")
    subprocess.run(["truncate", "-s", f"{mb}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    loop = subprocess.run(["mount", "-o", "loop", str(image), str(path)], capture_output=True, text=True)
    if loop.returncode != 0:
        raise RuntimeError(f"cannot mount a small file system on {path}: tmpfs said "
                           f"{tmpfs.stderr.strip()!r}, a loop-mounted ext4 said {loop.stderr.strip()!r}; "
                           "the ENOSPC test needs root (or CAP_SYS_ADMIN)")
    return SmallFs(path, "ext4-loop", image)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    fs = _mount_small(tmp_path / "small", 8, tmp_path / "small.img")
    try:
        yield fs
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(fs.path)], check=False, capture_output=True)
