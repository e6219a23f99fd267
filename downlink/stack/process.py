"""Process bookkeeping for the local stack: pid files, detached spawning, ports, stopping.

The launcher must only ever stop what it started, so every started process is
recorded in ``<state_dir>/run/<component>.pid`` together with its command line;
a pid counts as ours only while ``/proc/<pid>/cmdline`` still matches it (pids
get reused).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import StackError


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: enough to recognise the process later."""

    pid: int
    argv: tuple[str, ...]
    started: float


def _cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def _is_zombie(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" in line.split()[1]
    except OSError:
        return True
    return False


def reap(pid: int) -> None:
    """Collect an exited child of this process so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(record: PidRecord) -> bool:
    """Whether the recorded process still runs (and is the same program)."""
    reap(record.pid)
    cmdline = _cmdline(record.pid)
    if cmdline is None or _is_zombie(record.pid):
        return False
    return cmdline == record.argv


class PidFile:
    """``<run_dir>/<name>.pid`` as JSON {pid, argv, started}."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.path = run_dir / f"{name}.pid"

    def read(self) -> PidRecord | None:
        try:
            data = json.loads(self.path.read_text())
            return PidRecord(int(data["pid"]), tuple(data["argv"]), float(data["started"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # a half-written or foreign file cannot identify a process: treat it as absent
            return None

    def write(self, record: PidRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": record.pid, "argv": list(record.argv), "started": record.started}))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def running(self) -> PidRecord | None:
        """The recorded process if it is still alive; a stale file is removed."""
        record = self.read()
        if record is None:
            if self.path.exists():
                self.remove()
            return None
        if alive(record):
            return record
        self.remove()
        return None


async def spawn(argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> PidRecord:
    """Start a detached process (own session) with stdout+stderr appended to ``log_file``.

    posix_spawn (not subprocess.Popen) because the process outlives this one:
    there is no Popen object to keep alive or to warn when collected.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    executable = argv[0]
    if os.sep not in executable:
        found = shutil.which(executable)
        if found is None:
            raise StackError(f"{executable} not found on PATH; run `make setup`")
        executable = found
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        pid = os.posix_spawn(executable, argv, dict(os.environ if env is None else env), file_actions=actions, setsid=True)
    except OSError as exc:
        raise StackError(f"cannot start {argv[0]}: {exc}") from exc
    # /proc/<pid>/cmdline shows argv as given (not the resolved path): record exactly that
    record = PidRecord(pid=pid, argv=tuple(argv), started=time.time())
    # until exec completes the child shows an empty or inherited command line; wait for it
    for _ in range(200):
        if alive(record) or _is_zombie(pid) or _cmdline(pid) is None:
            break
        await asyncio.sleep(0.01)
    return record


async def stop(record: PidRecord, grace: float) -> bool:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns True if it had to kill."""
    if not alive(record):
        return False
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(record):
            return False
        await asyncio.sleep(0.1)
    try:
        os.killpg(record.pid, signal.SIGKILL)  # own session: the group holds any children too
    except ProcessLookupError:
        pass
    for _ in range(50):
        if not alive(record):
            break
        await asyncio.sleep(0.1)
    return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, command line) of the process listening on a TCP port, if visible to us."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    cmd = " ".join(_cmdline(int(entry.name)) or ())
                    return int(entry.name), cmd
        except OSError:
            continue
    return None


def describe_port_owner(port: int) -> str:
    """Human text naming whoever holds a port (for 'port taken' errors)."""
    owner = port_owner(port)
    if owner is None:
        return "an unknown process"
    pid, cmd = owner
    return f"pid {pid} ({cmd[:160]}{'...' if len(cmd) > 160 else ''})"


def tail(path: Path, lines: int) -> list[str]:
    """Last ``lines`` lines of a text file (reads only the end of big files)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = min(size, max(65536, lines * 512))
            handle.seek(size - block)
            data = handle.read()
    except FileNotFoundError:
        return []
    text = data.decode(errors="replace").splitlines()
    return text[-lines:] if lines > 0 else []
