"""PostgreSQL (Debian package) for the archive catalogue: the local stack's and the tests' server.

The server refuses to run as root, and we are root on the dev machines and in
CI, so ``initdb``, ``postgres`` and ``pg_ctl`` run as the ``postgres`` system
user (``runuser -u postgres --``). Data folder, socket folder and log live
under ``<state_dir>/postgres`` and are owned by that user, so every parent of
the state dir must be reachable (``o+x``) by it; :meth:`Postgres.prepare`
checks this and says what to do. The cluster gets one role and database
``downlink`` with a random password kept in ``<state_dir>/postgres/password``,
or, when the launcher starts it for a configured archive URL
(``DOWNLINK_ARCHIVE_DATABASE_URL=postgresql://USER:PASSWORD@127.0.0.1:PORT/DB``),
that URL's role, password and database; the server listens on 127.0.0.1 only
(port ``settings.stack.postgres_port``, which the launcher sets to the URL's).
The archive's URL of the cluster is kept in ``<state_dir>/postgres/url``
(mode 0600; never printed).

``downlink stack down`` asks the server to stop by itself (``pg_ctl stop -m
fast``: sessions are disconnected, a checkpoint is written) before any signal.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from core.errors import StackError
from downlink.stack.component import Component

PG_USER = "postgres"
DATABASE = "downlink"


def pg_bindir() -> Path | None:
    """The newest installed server's bin folder (/usr/lib/postgresql/<major>/bin), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


@dataclass(frozen=True)
class Credentials:
    """Role, password, database and port of a configured PostgreSQL URL on this machine."""

    user: str
    password: str
    database: str
    port: int | None


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", ""})


def local_postgres(url: str) -> Credentials | None:
    """The credentials of ``url`` when it names a PostgreSQL server on this machine (the local
    stack can run that one), else None (SQLite, empty, or a server elsewhere)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres"):
        return None
    if (parts.hostname or "") not in LOCAL_HOSTS:
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    return Credentials(user=unquote(parts.username or "") or DATABASE, password=unquote(parts.password or ""),
                       database=unquote(parts.path.lstrip("/")) or DATABASE, port=port)


class Postgres(Component):
    name = "postgres"
    grace = 15.0

    def __init__(self, settings, credentials: Credentials | None = None) -> None:
        super().__init__(settings)
        #: what the configured archive URL asks for; None = role and database ``downlink``, random password
        self.credentials = credentials
        self.user = credentials.user if credentials else DATABASE
        self.database = credentials.database if credentials else DATABASE

    @property
    def ports(self) -> list[int]:
        return [self.settings.stack.postgres_port]

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "sock"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    @property
    def role_file(self) -> Path:
        """The role the cluster was initialised with (absent: ``downlink``)."""
        return self.home / "role"

    @property
    def url_file(self) -> Path:
        """The archive's URL of this cluster (DOWNLINK_ARCHIVE_DATABASE_URL), mode 0600."""
        return self.home / "url"

    def missing(self) -> str | None:
        if pg_bindir() is None:
            return "PostgreSQL server not found; run `make setup` (Debian package postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                return f"system user {PG_USER!r} missing; reinstall the Debian package postgresql"
            if shutil.which("runuser") is None:
                return "runuser not found (util-linux); needed to run PostgreSQL as its own user"
        return None

    def _bin(self, tool: str) -> str:
        bindir = pg_bindir()
        if bindir is None:
            raise StackError(self.missing() or "PostgreSQL not installed")
        return str(bindir / tool)

    def url(self) -> str:
        """SQLAlchemy URL of the database (needs ``prepare`` to have run)."""
        pw = self.password_file.read_text().strip()
        return (f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(pw, safe='')}@127.0.0.1:"
                f"{self.ports[0]}/{quote(self.database, safe='')}")

    def _write_url(self) -> None:
        tmp = self.url_file.with_suffix(".tmp")
        tmp.write_text(self.url() + "\n")
        tmp.chmod(0o600)
        os.replace(tmp, self.url_file)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _check_reachable(self) -> None:
        """Every parent of the home must be searchable by the postgres user."""
        if os.geteuid() != 0:
            return
        for parent in [self.home, *self.home.parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001 and parent.stat().st_uid != pwd.getpwnam(PG_USER).pw_uid:
                raise StackError(
                    f"{parent} is not reachable by the {PG_USER} user (mode {oct(mode & 0o777)}); "
                    f"use a state dir whose parents are world-searchable or `chmod o+x {parent}`")

    async def prepare(self) -> str:
        reason = self.missing()
        if reason:
            raise StackError(reason)
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o755)
        self._check_reachable()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        if (self.data / "PG_VERSION").exists():
            self._check_credentials()
            self._write_url()
            return ""
        if self.credentials is not None and not self.credentials.password:
            raise StackError("DOWNLINK_ARCHIVE_DATABASE_URL names no password; the local PostgreSQL "
                             "authenticates by password (postgresql://USER:PASSWORD@127.0.0.1:PORT/DB)")
        password = self.credentials.password if self.credentials else secrets.token_urlsafe(18)
        pwfile = self.home / "initdb.pw"
        pwfile.write_text(password + "\n")
        self._chown(pwfile)
        self.data.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.data)
        argv = _as_postgres([self._bin("initdb"), "-D", str(self.data), "-U", self.user,
                             "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8",
                             "--locale=C.UTF-8"])
        proc = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
        pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise StackError(f"initdb failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        self.role_file.write_text(self.user + "\n")
        self._write_url()
        return "initialised a new PostgreSQL cluster"

    def _check_credentials(self) -> None:
        """A cluster initialised earlier must match the configured URL's role and password."""
        if self.credentials is None:
            return
        role = self.role_file.read_text().strip() if self.role_file.exists() else DATABASE
        stored = self.password_file.read_text().strip() if self.password_file.exists() else ""
        if role != self.credentials.user or stored != self.credentials.password:
            raise StackError(
                f"the PostgreSQL cluster in {self.data} was initialised for role {role!r} with another "
                f"password than DOWNLINK_ARCHIVE_DATABASE_URL names; use the URL in {self.url_file}, "
                f"or remove {self.home} to start an empty cluster")

    def argv(self) -> list[str]:
        return _as_postgres([
            self._bin("postgres"), "-D", str(self.data), "-p", str(self.ports[0]),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "max_connections=100", "-c", "shared_buffers=64MB",
        ])

    async def probe(self) -> str | None:
        """None once the ``downlink`` database accepts a query (created on the first success)."""
        import psycopg

        if not self.password_file.exists():
            return "cluster not initialised"
        pw = self.password_file.read_text().strip()
        base = dict(host="127.0.0.1", port=self.ports[0], user=self.user, password=pw, connect_timeout=3)
        try:
            async with await psycopg.AsyncConnection.connect(dbname="postgres", autocommit=True, **base) as conn:
                cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if await cur.fetchone() is None:
                    from psycopg import sql

                    await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
            async with await psycopg.AsyncConnection.connect(dbname=self.database, **base) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            return f"{type(exc).__name__}: {exc}".strip()
        return None

    async def shutdown(self) -> None:
        """The launcher's stop: a fast shutdown by pg_ctl (sessions cut, checkpoint written)."""
        await self.pg_ctl_stop("fast")

    async def pg_ctl_stop(self, mode: str = "fast") -> None:
        """Stop the server with ``pg_ctl -m fast|immediate`` (immediate = like a crash, WAL recovery at start)."""
        argv = _as_postgres([self._bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])
        proc = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"pg_ctl stop failed: {proc.stderr.strip()[-400:]}")


class PostgresServer:
    """One server of a state dir run from this process (test sessions): start, stop, restart.

    ``async with PostgresServer(settings) as pg: pg.url()``. The stack
    launcher is not involved: the server belongs to whoever started it here.
    """

    def __init__(self, settings, timeout: float = 60.0) -> None:
        self.component = Postgres(settings)
        self.timeout = timeout
        self.record = None

    def url(self) -> str:
        return self.component.url()

    async def start(self) -> None:
        from downlink.stack.process import spawn

        await self.component.prepare()
        self.record = await spawn(self.component.argv(), self.component.log_file)
        deadline = asyncio.get_running_loop().time() + self.timeout
        reason = None
        while asyncio.get_running_loop().time() < deadline:
            reason = await self.component.probe()
            if reason is None:
                return
            await asyncio.sleep(0.2)
        await self.stop()
        raise StackError(f"PostgreSQL did not answer within {self.timeout:.0f} s: {reason}; "
                         f"see {self.component.log_file}")

    async def stop(self, mode: str = "fast") -> None:
        from downlink.stack.process import alive, reap, stop

        if self.record is None:
            return
        if alive(self.record):
            try:
                await self.component.pg_ctl_stop(mode)
            except StackError:
                await stop(self.record, self.component.grace)
        for _ in range(100):
            if not alive(self.record):
                break
            await asyncio.sleep(0.1)
        reap(self.record.pid)
        self.record = None

    async def __aenter__(self) -> "PostgresServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
