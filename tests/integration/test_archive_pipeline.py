"""The archive behind the real calibrate service: its products catalogued, a reprocess with a new
reference context becoming version 2 while version 1 stays downloadable byte for byte."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import httpx
import pytest

from consumers.archive import db, reprocess as rp
from consumers.archive.admin import Admin
from consumers.archive.api.app import create_app
from consumers.framework.runner import run_services
from products.refs.store import RefStore
from streams.kafka import make_producer, start_client
from streams.messages import CalRequest
from tests.integration.archive_support import catalogue_settings
from tests.integration.helpers import fast
from tests.unit.calibrate_fixtures import make_meta, render, write_exposure

pytestmark = pytest.mark.integration


async def test_calibrated_then_reprocessed_with_a_new_context(settings, topics):
    s = catalogue_settings(fast(settings).replace(calibrate_workers=1), "sqlite", None)
    refs = RefStore(s.data_dir / "refs")
    refs.make(["NRCA1"])
    meta = make_meta(size=(64, 48), ngroups=5, program=1234)
    sci, _ = render(meta, seed=3)
    folder = s.data_dir / meta.exposure_id[:7]
    folder.mkdir(parents=True)
    uncal = write_exposure(folder, meta, sci)
    producer = make_producer(s)
    await start_client(s, producer)
    try:
        await producer.send_and_wait(s.topic("cal.requests"), CalRequest(
            exposure_id=meta.exposure_id, uncal_path=str(uncal), priority="normal", program=1234,
            l0_received_at=time.time() - 60).encode(), key=meta.exposure_id.encode())
    finally:
        await producer.stop()
    assert await run_services(s, ["calibrate", "archive"], until_idle=True) == 0

    with Admin(s) as admin:
        token = admin.add_user("alice", [1234])
    h = {"Authorization": f"Bearer {token}"}
    app = create_app(s)
    cal = f"{meta.exposure_id}_cal"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        listing = (await c.get("/api/v1/products", params={"exposure": meta.exposure_id}, headers=h)).json()
        levels = {p["level"] for p in listing["products"]}
        assert {"L1b", "L2a", "L2b"} <= levels, listing
        v1 = (await c.get(f"/api/v1/products/{cal}", headers=h)).json()
        v1_file = (await c.get(f"/api/v1/products/{cal}/file", headers=h)).content
        assert v1["context"] == "downlink_0001" and v1["provenance"]["keywords"]["CRDS_CTX"] == "downlink_0001"
        assert hashlib.sha256(v1_file).hexdigest() == v1["sha256"]
        assert v1["release_date"] is not None and not v1["public"]

        # a new context, and a reprocess request for the exposure pinned to it
        refs.make(["NRCA1"], force=True)
        assert refs.contexts()[-1] == "downlink_0002"
        engine = db.async_engine(s)
        try:
            async with db.sessionmaker(engine)() as session:
                exposures = await rp.exposures_for(session, exposure=meta.exposure_id)
        finally:
            await engine.dispose()
        await rp.send(s, rp.requests_for(exposures, context="downlink_0002", reason="test"))
        assert await run_services(s, ["calibrate", "archive"], until_idle=True) == 0

        v2 = (await c.get(f"/api/v1/products/{cal}", headers=h)).json()
        old = (await c.get(f"/api/v1/products/{cal}", params={"version": 1}, headers=h)).json()
        old_file = (await c.get(f"/api/v1/products/{cal}/file", params={"version": 1}, headers=h)).content
    await app.state.archive.close()
    assert v2["version"] == 2 and v2["versions"] == [1, 2] and v2["context"] == "downlink_0002"
    assert v2["provenance"]["keywords"]["CRDS_CTX"] == "downlink_0002"
    assert v2["provenance"]["priority"] == "reprocess"
    changed = {k for k in v2["provenance"]["keywords"]
               if k.startswith("R_") and v2["provenance"]["keywords"][k] != old["provenance"]["keywords"].get(k)}
    assert changed, "reference-file keywords should name the new context's files"
    assert old_file == v1_file and old["superseded_by"] == 2
    assert v2["release_date"] == v1["release_date"]
    assert dt.datetime.fromisoformat(v2["created"]) > dt.datetime.fromisoformat(v1["created"])
