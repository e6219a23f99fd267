"""Reprocessing: requests reach cal.requests; the new products are new versions with their own
provenance, the old versions stay downloadable, the release date does not move; best version on
request queues one reprocess for an outdated product."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from consumers.archive import db
from consumers.archive.admin import Admin
from consumers.archive.api.app import create_app
from consumers.archive.catalogue import Catalogue
from streams.dictionary import load_dictionary
from streams.messages import CalRequest
from tests.integration.archive_support import (EXPOSURE, archive_settings, cal_done, l0_ready,  # noqa: F401
                                               naive)
from tests.integration.helpers import env_for, read_all

pytestmark = pytest.mark.integration

FIRST = 1_780_000_000.0
LATER = FIRST + 40 * 86400  # the reprocessing run, 40 days later
CAL = f"{EXPOSURE}_cal"


async def apply(settings, *messages, when: dt.datetime | None = None):
    catalogue = Catalogue(settings, load_dictionary(settings.dictionary_file))
    engine = db.async_engine(settings)
    try:
        async with db.sessionmaker(engine)() as session:
            return await catalogue.apply(session, [(m, when or naive(FIRST)) for m in messages])
    finally:
        await engine.dispose()


@pytest_asyncio.fixture
async def client_for(archive_settings):
    apps = []

    def make(now: dt.datetime):
        app = create_app(archive_settings, clock=lambda: now)
        apps.append(app)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://archive")

    yield make
    for app in apps:
        await app.state.archive.close()


async def cal_requests(settings) -> list[CalRequest]:
    return [CalRequest.from_body({k: v for k, v in body.items() if k not in ("schema", "v")})
            for _, body in await read_all(settings, "cal.requests")]


async def test_reprocessed_products_are_new_versions(archive_settings, client_for):
    s = archive_settings
    data = Path(s.data_dir)
    await apply(s, l0_ready(data), cal_done(data, context="downlink_0001", cal_version="0.1.0",
                                            finished_at=FIRST, run=1))
    with Admin(s) as admin:
        token = admin.add_user("alice", [1234], days=800, now=naive(FIRST))
    h = {"Authorization": f"Bearer {token}"}
    async with client_for(naive(FIRST) + dt.timedelta(days=1)) as c:
        v1 = (await c.get(f"/api/v1/products/{CAL}", headers=h)).json()
        v1_bytes = (await c.get(f"/api/v1/products/{CAL}/file", headers=h)).content
    # the reprocessing run rewrites the same file names in its own folder, with a newer context
    result = await apply(s, cal_done(data, context="downlink_0002", cal_version="0.2.0",
                                     finished_at=LATER, run=2, priority="reprocess"))
    assert not result.rejected and result.products_added == 2  # rate + cal; the uncal is unchanged
    async with client_for(naive(LATER) + dt.timedelta(days=1)) as c:
        new = (await c.get(f"/api/v1/products/{CAL}", headers=h)).json()
        old = (await c.get(f"/api/v1/products/{CAL}", params={"version": 1}, headers=h)).json()
        old_file = await c.get(f"/api/v1/products/{CAL}/file", params={"version": 1}, headers=h)
        new_file = await c.get(f"/api/v1/products/{CAL}/file", headers=h)
        search = (await c.get("/api/v1/products", params={"exposure": EXPOSURE}, headers=h)).json()
        every = (await c.get("/api/v1/products", params={"exposure": EXPOSURE, "all_versions": "true"},
                             headers=h)).json()
    assert new["version"] == 2 and new["latest"] and new["versions"] == [1, 2]
    assert old["version"] == 1 and old["superseded_by"] == 2 and not old["latest"]
    assert new["context"] == "downlink_0002" and old["context"] == "downlink_0001"
    assert new["provenance"]["keywords"]["CRDS_CTX"] == "downlink_0002"
    assert old["provenance"]["keywords"]["CRDS_CTX"] == "downlink_0001"
    assert new["provenance"]["keywords"]["R_FLAT"] != old["provenance"]["keywords"]["R_FLAT"]
    assert new["provenance"]["keywords"]["CAL_VER"] == "0.2.0" and new["pipeline_version"] == "0.2.0"
    assert new["release_date"] == old["release_date"] == v1["release_date"]
    assert old_file.status_code == 200 and old_file.content == v1_bytes
    assert hashlib.sha256(old_file.content).hexdigest() == old["sha256"] == v1["sha256"]
    assert new_file.status_code == 200 and new_file.headers["x-product-version"] == "2"
    assert new_file.content != v1_bytes
    # searches return the newest version by default, every version on request
    assert {(p["id"], p["version"]) for p in search["products"] if p["id"] == CAL} == {(CAL, 2)}
    assert {p["version"] for p in every["products"] if p["id"] == CAL} == {1, 2}
    # a replay of the first run (arriving late) changes nothing: same sha256, same version
    again = await apply(s, cal_done(data, context="downlink_0001", cal_version="0.1.0",
                                    finished_at=FIRST, run=1))
    assert again.products_added == 0


async def test_reprocess_cli_and_api_send_requests(archive_settings, topics, client_for):
    s = archive_settings
    data = Path(s.data_dir)
    await apply(s, l0_ready(data), cal_done(data, finished_at=FIRST))
    run_env = env_for(s)
    if s.archive.database_url:
        run_env["DOWNLINK_ARCHIVE_DATABASE_URL"] = s.archive.database_url.reveal()
    out = subprocess.run([sys.executable, "-m", "downlink", "reprocess", "--exposure", EXPOSURE,
                          "--context", "downlink_0007"], env=run_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"reprocess requested: {EXPOSURE}" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "downlink", "reprocess", "--program", "1234",
                          "--exposure", EXPOSURE], env=run_env, capture_output=True, text=True)
    assert bad.returncode != 0 and "exactly one" in bad.stderr
    with Admin(s) as admin:
        member = admin.add_user("alice", [1234], days=800, now=naive(FIRST))
        other = admin.add_user("bob", [4321], days=800, now=naive(FIRST))
        staff = admin.add_user("ops", staff=True, days=800, now=naive(FIRST))
    async with client_for(naive(FIRST) + dt.timedelta(days=1)) as c:
        anon = await c.post("/api/v1/reprocess", json={"exposure": EXPOSURE})
        hidden = await c.post("/api/v1/reprocess", json={"exposure": EXPOSURE},
                              headers={"Authorization": f"Bearer {other}"})
        missing = await c.post("/api/v1/reprocess", json={"exposure": "jw01234001001_01101_00077_nrca1"},
                               headers={"Authorization": f"Bearer {other}"})
        refused = await c.post("/api/v1/reprocess", json={"program": 1234},
                               headers={"Authorization": f"Bearer {other}"})
        ok = await c.post("/api/v1/reprocess", json={"program": 1234},
                          headers={"Authorization": f"Bearer {member}"})
        ok_staff = await c.post("/api/v1/reprocess", json={"exposure": EXPOSURE},
                                headers={"Authorization": f"Bearer {staff}"})
    assert anon.status_code == 401
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace(EXPOSURE, "X") == missing.text.replace("jw01234001001_01101_00077_nrca1", "X")
    assert refused.status_code == 403
    assert ok.status_code == 202 and ok.json() == {"queued": 1, "exposures": [EXPOSURE], "context": None}
    assert ok_staff.status_code == 202
    requests = await cal_requests(s)
    assert [r.context for r in requests] == ["downlink_0007", None, None]
    assert all(r.priority == "reprocess" and r.exposure_id == EXPOSURE for r in requests)
    assert all(r.uncal_path.endswith(f"{EXPOSURE}_uncal.fits") and r.uncal_sha256 for r in requests)
    assert os.path.exists(requests[0].uncal_path)


async def test_best_version_on_request_queues_one_reprocess(archive_settings, topics, client_for):
    s = archive_settings
    data = Path(s.data_dir)
    refs = data / "refs"
    refs.mkdir()
    (refs / "downlink_0003.json").write_text("{}\n")  # a newer context is available
    await apply(s, l0_ready(data), cal_done(data, context="downlink_0001", finished_at=FIRST))
    with Admin(s) as admin:
        token = admin.add_user("alice", [1234], days=800, now=naive(FIRST))
    h = {"Authorization": f"Bearer {token}"}
    async with client_for(naive(FIRST) + dt.timedelta(days=1)) as c:
        first = await c.get(f"/api/v1/products/{CAL}", headers=h)
        second = await c.get(f"/api/v1/products/{CAL}/file", headers=h)
        pinned = await c.get(f"/api/v1/products/{CAL}", params={"version": 1}, headers=h)
    note = first.json()["reprocess"]
    assert first.status_code == 200 and first.json()["version"] == 1  # still served meanwhile
    assert note["queued"] is True and note["context"] == "downlink_0003"
    assert "downlink_0001 < downlink_0003" in note["reason"]
    assert second.status_code == 200 and second.headers["x-reprocess"] == "queued downlink_0003"
    assert pinned.json()["reprocess"] is None
    requests = await cal_requests(s)
    assert len(requests) == 1  # the second fetch found the request already queued
    assert requests[0].context == "downlink_0003" and requests[0].priority == "reprocess"


async def test_l2b_within_5_days_share(archive_settings):
    """The calibration SLO gauge: one exposure calibrated within 5 days of its L0, one after 6."""
    from consumers.archive.service import l2b_within_5_days
    from tests.integration.archive_support import OTHER

    s = archive_settings
    data = Path(s.data_dir)
    await apply(s, l0_ready(data), l0_ready(data, OTHER), cal_done(data, finished_at=FIRST),
                cal_done(data, OTHER, finished_at=FIRST + 6 * 86400))
    engine = db.async_engine(s)
    try:
        async with db.sessionmaker(engine)() as session:
            assert await l2b_within_5_days(session, naive(FIRST) + dt.timedelta(days=10)) == 0.5
            # 40 days later both left the 30-day window: nothing is due
            assert await l2b_within_5_days(session, naive(FIRST) + dt.timedelta(days=40)) == 1.0
    finally:
        await engine.dispose()
