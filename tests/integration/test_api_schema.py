"""The archive API as a black box: `downlink serve` in its own process, fuzzed from /openapi.json.

schemathesis generates requests for every operation (valid and invalid
ones) with a staff token; none may answer 5xx, and every answer is JSON or
the product file. Path traversal in ids and SQL metacharacters in search
fields are refused cleanly (4xx JSON) and leave the catalogue intact.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from consumers.archive import db
from consumers.archive.admin import Admin
from consumers.archive.catalogue import Catalogue
from core.settings import Settings
from streams.dictionary import load_dictionary
from streams.topics import create_topics, delete_topics, load_topics
from tests.integration.archive_support import EXPOSURE, OTHER, cal_done, eng_batch, l0_ready, naive, snapshot
from tests.integration.helpers import env_for

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _populate(s: Settings) -> None:
    catalogue = Catalogue(s, load_dictionary(s.dictionary_file))
    data = Path(s.data_dir)
    engine = db.async_engine(s)
    when = naive(1_780_000_000.0)
    try:
        async with db.sessionmaker(engine)() as session:
            await catalogue.apply(session, [(l0_ready(data), when), (cal_done(data), when),
                                            (l0_ready(data, OTHER), when), (cal_done(data, OTHER), when),
                                            (eng_batch(catalogue.dictionary), when)])
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def api_server(stack, tmp_path_factory):
    """URL, staff token and settings of a `downlink serve` process on a populated SQLite catalogue."""
    tmp = tmp_path_factory.mktemp("api")
    (tmp / "data").mkdir()
    (tmp / "state").mkdir()
    s = Settings.from_env().replace(topic_prefix=f"t{uuid.uuid4().hex[:8]}.", data_dir=tmp / "data",
                                    state_dir=tmp / "state")
    specs = load_topics(s.topics_file)
    asyncio.run(create_topics(s, specs))
    db.migrate(s)
    asyncio.run(_populate(s))
    with Admin(s) as admin:
        token = admin.add_user("ops", staff=True)
        admin.add_user("alice", [1234])
    port = _free_port()
    env = {**env_for(s), "DOWNLINK_ARCHIVE_API_PORT": str(port)}
    log = open(tmp / "serve.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "downlink", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"downlink serve did not come up: {(tmp / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, token, s
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        serve_log = (tmp / "serve.log").read_text()
        asyncio.run(delete_topics(s, [s.topic(n) for n in specs]))
        assert "Traceback" not in serve_log or "internal error" not in serve_log, serve_log[-3000:]


def test_no_server_errors(api_server, tmp_path):
    """schemathesis (its own CLI) over every operation with a staff token (the deepest paths): no 5xx.

    DOWNLINK_FUZZ_EXAMPLES raises the examples per operation for a longer hunt.
    """
    import re

    url, token, _s = api_server
    headers = ["-H", f"Authorization: Bearer {token}"]
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks",
         "not_a_server_error", "--max-examples", os.environ.get("DOWNLINK_FUZZ_EXAMPLES", "25"),
         "--seed", "11", "--no-color", "--request-timeout", "60", *headers],
        capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = re.findall(r"(\d+) passed", proc.stdout)
    assert passed and int(passed[-1]) > 100, proc.stdout[-3000:]  # it really sent requests


TRAVERSAL = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..", "...%2F", "a%00b",
             f"{EXPOSURE}_cal%2F..%2F..%2F..%2Fetc%2Fpasswd", "%252e%252e%252fetc"]
SQL = ["' OR '1'='1", "x'; DROP TABLE products; --", "NIRCAM\" OR 1=1 --", "%' OR 1=1 --", "1); DELETE FROM users;--"]


def test_path_traversal_in_ids_is_refused(api_server):
    url, token, s = api_server
    before = snapshot(s)
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=h) as c:
        for bad in TRAVERSAL:
            for path in (f"/api/v1/products/{bad}", f"/api/v1/products/{bad}/file"):
                r = c.get(path)
                assert r.status_code in (404, 422), (path, r.status_code)
                assert r.headers["content-type"].startswith("application/json")
                assert b"root:" not in r.content
        r = c.post("/api/v1/programs/1234/contributed", params={"filename": "../../evil.fits"},
                   content=b"SIMPLE", headers={"Content-Type": "application/fits"})
        assert r.status_code == 422 and r.json()["error"] == "invalid"
        r = c.post("/api/v1/reprocess", json={"exposure": "../../etc/passwd"})
        assert r.status_code == 422
    assert snapshot(s) == before
    assert not any(Path(s.data_dir).rglob("evil.fits"))


def test_sql_metacharacters_in_search_fields_are_refused(api_server):
    url, token, s = api_server
    before = snapshot(s)
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=h) as c:
        for bad in SQL:
            for field in ("target", "instrument", "detector", "exposure", "level", "program"):
                r = c.get("/api/v1/products", params={field: bad})
                assert r.status_code == 422, (field, bad, r.status_code)
                body = r.json()
                assert body["error"] == "invalid" and body["problems"]
                assert bad not in r.text  # the input is not echoed back
            r = c.get("/api/v1/engineering", params={"parameter": bad, "start": "2024-01-01T00:00:00",
                                                     "end": "2025-01-01T00:00:00"})
            assert r.status_code == 422
        # the real search still works afterwards
        r = c.get("/api/v1/products")
        assert r.status_code == 200 and r.json()["total"] > 0
    assert snapshot(s) == before


def test_missing_credentials_and_errors_are_json(api_server):
    """Status codes pinned against the FastAPI version (0.122 changed missing-credential answers)."""
    url, _token, _s = api_server
    with httpx.Client(base_url=url) as c:
        assert c.post("/api/v1/reprocess", json={"program": 1234}).status_code == 401
        assert c.post("/api/v1/programs/1234/contributed", params={"filename": "x.fits"},
                      content=b"x").status_code == 401
        r = c.get("/api/v1/products", headers={"Authorization": "Bearer"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = c.get("/api/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = c.delete("/api/v1/programs")
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
        assert c.get("/api/v1/programs").status_code == 200


def test_terminal_client(api_server, tmp_path):
    """`downlink users add` prints a working token last; `archive programs | search | get` use it."""
    import hashlib
    import json

    url, _token, s = api_server
    env = env_for(s)

    def run(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
        e = {**env, **({"DOWNLINK_TOKEN": token} if token else {})}
        return subprocess.run([sys.executable, "-m", "downlink", *args], env=e, capture_output=True,
                              text=True, timeout=120)

    added = run("users", "add", "dora", "--program", "1234")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1].split()[-1]
    assert token.startswith("dl_")
    programs = run("archive", "programs", "--url", url, "--json")
    assert {p["id"] for p in json.loads(programs.stdout)["programs"]} >= {1234, 4321}
    found = run("archive", "search", "--url", url, "--program", "1234", "--json", token=token)
    ids = {p["id"] for p in json.loads(found.stdout)["products"]}
    assert f"{EXPOSURE}_cal" in ids
    anonymous = run("archive", "search", "--url", url, "--program", "1234", "--json")
    assert json.loads(anonymous.stdout)["total"] == 0
    got = run("archive", "get", f"{EXPOSURE}_cal", "-o", str(tmp_path / "cal.fits"), "--url", url, token=token)
    assert got.returncode == 0, got.stderr
    data = (tmp_path / "cal.fits").read_bytes()
    assert hashlib.sha256(data).hexdigest() in got.stdout
    hidden = run("archive", "get", f"{EXPOSURE}_cal", "-o", str(tmp_path / "x.fits"), "--url", url)
    assert hidden.returncode == 1 and "HTTP 404" in hidden.stderr and not (tmp_path / "x.fits").exists()
    again = run("users", "token", "dora")
    assert again.stdout.strip().splitlines()[-1].split()[-1].startswith("dl_")
