"""Exclusive access through the real API on both backends (SQLite file, PostgreSQL server).

Callers: a member of the program, staff, a member of another program,
anonymous, an expired token, a forged token. Time is injected (the app's
clock), before and after the release date. A proprietary product must be
indistinguishable from a missing one for everyone but members and staff:
same status and same body in metadata and downloads, absent from search
results and from totals.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from consumers.archive import db
from consumers.archive.admin import Admin
from consumers.archive.api.app import create_app
from consumers.archive.catalogue import Catalogue
from streams.dictionary import load_dictionary
from tests.integration.archive_support import (EXPOSURE, OTHER, archive_settings, cal_done, l0_ready,  # noqa: F401
                                               naive)

pytestmark = pytest.mark.integration

CAL_AT = 1_780_000_000.0  # first calibration (2026-05-28T20:26:40Z)
FIRST_CAL = naive(CAL_AT)
BEFORE = FIRST_CAL + dt.timedelta(days=30)
AFTER = dt.datetime(2027, 5, 29)  # 12 months after the first calibration
ISSUED = FIRST_CAL  # tokens issued at the first calibration
CAL = f"{EXPOSURE}_cal"
MISSING = "jw01234001001_01101_00099_nrca1_cal"


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest_asyncio.fixture
async def archive(archive_settings):
    """A catalogue with program 1234 (12 months) and 4321 (period 0), users and tokens, and an app."""
    s = archive_settings
    catalogue = Catalogue(s, load_dictionary(s.dictionary_file))
    engine = db.async_engine(s)
    data = Path(s.data_dir)
    items = [(l0_ready(data), FIRST_CAL), (cal_done(data, finished_at=CAL_AT), FIRST_CAL),
             (l0_ready(data, OTHER), FIRST_CAL), (cal_done(data, OTHER, finished_at=CAL_AT), FIRST_CAL)]
    async with db.sessionmaker(engine)() as session:
        result = await catalogue.apply(session, items)
    await engine.dispose()
    assert not result.rejected
    with Admin(s) as admin:
        tokens = {
            "member": admin.add_user("alice", [1234], days=800, now=ISSUED),
            "staff": admin.add_user("ops", staff=True, days=800, now=ISSUED),
            "other": admin.add_user("bob", [4321], days=800, now=ISSUED),
            # a member whose token ran out a day before the test's "now"
            "expired": admin.add_user("carol", [1234], days=1, now=BEFORE - dt.timedelta(days=2)),
        }
        admin.set_program(4321, period=0)
    tokens["forged"] = "dl_" + "x" * 43
    tokens["anonymous"] = None
    clock = Clock(BEFORE)
    app = create_app(s, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://archive") as client:
        yield client, tokens, clock
    await app.state.archive.close()


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def test_member_and_staff_see_proprietary_products(archive):
    client, tokens, _ = archive
    for who in ("member", "staff"):
        r = await client.get(f"/api/v1/products/{CAL}", headers=auth(tokens[who]))
        assert r.status_code == 200, (who, r.text)
        body = r.json()
        assert body["public"] is False
        assert body["release_date"].startswith("2027-05-28T20:26:40")
        f = await client.get(f"/api/v1/products/{CAL}/file", headers=auth(tokens[who]))
        assert f.status_code == 200 and len(f.content) == body["size"]
        assert f.headers["x-checksum-sha256"] == body["sha256"]
    r = await client.get("/api/v1/products", params={"program": 1234}, headers=auth(tokens["member"]))
    assert {p["id"] for p in r.json()["products"]} == {CAL, f"{EXPOSURE}_rate", f"{EXPOSURE}_uncal"}
    assert r.json()["total"] == 3
    # staff also see the internal L0 level, members never do
    r = await client.get("/api/v1/products", params={"program": 1234}, headers=auth(tokens["staff"]))
    assert r.json()["total"] == 4 and f"{EXPOSURE}_l0" in {p["id"] for p in r.json()["products"]}


async def test_proprietary_is_indistinguishable_from_missing(archive):
    client, tokens, _ = archive
    for who in ("other", "anonymous"):
        h = auth(tokens[who])
        for suffix in ("", "/file"):
            hidden = await client.get(f"/api/v1/products/{CAL}{suffix}", headers=h)
            missing = await client.get(f"/api/v1/products/{MISSING}{suffix}", headers=h)
            assert hidden.status_code == missing.status_code == 404, who
            assert hidden.json()["error"] == missing.json()["error"] == "not_found"
            # same body apart from the id that was asked for
            assert hidden.text.replace(CAL, "ID") == missing.text.replace(MISSING, "ID")
            assert hidden.headers.get("content-length") is not None
        hidden_v = await client.get(f"/api/v1/products/{CAL}", params={"version": 1}, headers=h)
        missing_v = await client.get(f"/api/v1/products/{MISSING}", params={"version": 1}, headers=h)
        assert hidden_v.status_code == missing_v.status_code == 404
        assert hidden_v.text.replace(CAL, "ID") == missing_v.text.replace(MISSING, "ID")
        r = await client.get("/api/v1/products", params={"program": 1234}, headers=h)
        assert r.status_code == 200
        assert r.json()["total"] == 0 and r.json()["products"] == []
        r = await client.get("/api/v1/products", params={"target": "NGC-1234"}, headers=h)
        # only program 4321 (period 0: public at once) shows up
        assert {p["program"] for p in r.json()["products"]} == {4321}
        assert r.json()["total"] == len(r.json()["products"]) == 3


async def test_bad_tokens_are_refused_everywhere(archive):
    client, tokens, _ = archive
    for who in ("expired", "forged"):
        for path in (f"/api/v1/products/{CAL}", f"/api/v1/products/{MISSING}", "/api/v1/products",
                     f"/api/v1/products/{CAL}/file"):
            r = await client.get(path, headers=auth(tokens[who]))
            assert r.status_code == 401, (who, path)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"] == "unauthorized"
    r = await client.get("/api/v1/products", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert r.status_code == 401


async def test_release_date_opens_the_product_to_everyone(archive):
    client, tokens, clock = archive
    clock.now = AFTER
    for who in ("other", "anonymous"):
        r = await client.get(f"/api/v1/products/{CAL}", headers=auth(tokens[who]))
        assert r.status_code == 200 and r.json()["public"] is True
        f = await client.get(f"/api/v1/products/{CAL}/file", headers=auth(tokens[who]))
        assert f.status_code == 200
        r = await client.get("/api/v1/products", params={"program": 1234}, headers=auth(tokens[who]))
        assert r.json()["total"] == 3  # L0 stays internal
        r = await client.get("/api/v1/products", params={"public": "false"}, headers=auth(tokens[who]))
        assert r.json()["total"] == 0
    # the day before release it is still hidden
    clock.now = dt.datetime(2027, 5, 28, 20, 26, 39)
    r = await client.get(f"/api/v1/products/{CAL}")
    assert r.status_code == 404


async def test_expired_token_cannot_see_even_as_member(archive):
    client, tokens, _ = archive
    r = await client.get(f"/api/v1/products/{CAL}/file", headers=auth(tokens["expired"]))
    assert r.status_code == 401
    assert r.content.find(b"Traceback") == -1


async def test_range_download_and_checksum(archive):
    import hashlib

    client, tokens, _ = archive
    h = auth(tokens["member"])
    full = await client.get(f"/api/v1/products/{CAL}/file", headers=h)
    assert hashlib.sha256(full.content).hexdigest() == full.headers["x-checksum-sha256"]
    part = await client.get(f"/api/v1/products/{CAL}/file", headers={**h, "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == full.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(full.content)}"
    hidden = await client.get(f"/api/v1/products/{CAL}/file", headers={"Range": "bytes=0-9"})
    assert hidden.status_code == 404
