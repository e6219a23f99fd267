"""Engineering history (raw and downsampled in the database) and contributed products, on both backends."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio

from consumers.archive import db
from consumers.archive.admin import Admin
from consumers.archive.api.app import create_app
from consumers.archive.catalogue import Catalogue
from core.timecodes import tai_to_utc
from streams.dictionary import load_dictionary
from tests.integration.archive_support import archive_settings, eng_batch, naive  # noqa: F401

pytestmark = pytest.mark.integration

T0 = 2_100_000_000  # TAI seconds
NOW = naive(1_780_000_000.0)


@pytest_asyncio.fixture
async def api(archive_settings):
    s = archive_settings
    catalogue = Catalogue(s, load_dictionary(s.dictionary_file))
    engine = db.async_engine(s)
    batches = [eng_batch(catalogue.dictionary, 0x101, n=100, t0=T0 + 100 * i, seq0=100 * i) for i in range(3)]
    async with db.sessionmaker(engine)() as session:
        await catalogue.apply(session, [(b, NOW) for b in batches + batches[:1]])  # one batch twice
    await engine.dispose()
    with Admin(s) as admin:
        tokens = {"member": admin.add_user("alice", [1234], now=NOW),
                  "other": admin.add_user("bob", [4321], now=NOW)}
        admin.set_program(1234, period=6)
    app = create_app(s, clock=lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as client:
        yield client, tokens, catalogue.dictionary, batches
    await app.state.archive.close()


def iso(tai: float) -> str:
    return tai_to_utc(tai).strftime("%Y-%m-%dT%H:%M:%S.%f")


async def test_engineering_history_raw_and_downsampled(api):
    client, _tokens, dictionary, batches = api
    param = dictionary.by_apid()[0x101][0]
    r = await client.get("/api/v1/engineering", params={"parameter": param.name, "start": iso(T0),
                                                        "end": iso(T0 + 300)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 300 and not body["downsampled"] and body["unit"] == param.unit
    times = [p["tai"] for p in body["points"]]
    assert times == sorted(times) and len(set(times)) == 300  # the batch sent twice is stored once
    decoded = dictionary.decode_many(0x101, batches[0].packets)
    expected = np.asarray(param.calibrate(decoded[param.name]), dtype=float)
    assert np.allclose([p["value"] for p in body["points"][:100]], expected)
    assert [p["raw"] for p in body["points"][:100]] == decoded[param.name].astype(float).tolist()
    r = await client.get("/api/v1/engineering", params={"parameter": param.name, "start": iso(T0),
                                                        "end": iso(T0 + 300), "max_points": 10})
    down = r.json()
    assert down["downsampled"] and len(down["points"]) == 10 and sum(p["n"] for p in down["points"]) == 300
    values = np.array([p["value"] for p in body["points"]])
    assert down["points"][0]["min"] == pytest.approx(values[:30].min())
    assert down["points"][0]["max"] == pytest.approx(values[:30].max())
    assert down["points"][0]["value"] == pytest.approx(values[:30].mean())
    r = await client.get("/api/v1/engineering", params={"parameter": "NO_SUCH_PARAM", "start": iso(T0),
                                                        "end": iso(T0 + 300)})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.get("/api/v1/engineering", params={"parameter": param.name, "start": iso(T0 + 300),
                                                        "end": iso(T0)})
    assert r.status_code == 422


def fits_bytes(program: int | None) -> bytes:
    from astropy.io import fits

    hdr = fits.Header()
    if program is not None:
        hdr["PROGRAM"] = f"{program:05d}"
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(np.arange(16, dtype=np.float32).reshape(4, 4), header=hdr)]).writeto(buf)
    return buf.getvalue()


async def test_contributed_products_follow_the_program_rules(api):
    client, tokens, _d, _b = api
    member, other = ({"Authorization": f"Bearer {tokens[k]}"} for k in ("member", "other"))
    url = "/api/v1/programs/1234/contributed"
    params = {"filename": "jw01234-catalog_v1.fits"}
    r = await client.post(url, params=params, content=fits_bytes(1234), headers=member)
    assert r.status_code == 201, r.text
    product = r.json()
    assert product["level"] == "contributed" and product["version"] == 1 and not product["public"]
    assert product["release_date"] == "2026-11-28T20:26:40"  # upload + the program's 6 months
    same = await client.post(url, params=params, content=fits_bytes(1234), headers=member)
    assert same.status_code == 201 and same.json()["version"] == 1  # same bytes: same version
    # refused: non-member, anonymous, wrong program in the header, not FITS, empty
    assert (await client.post(url, params=params, content=fits_bytes(1234), headers=other)).status_code == 403
    assert (await client.post(url, params=params, content=fits_bytes(1234))).status_code == 401
    wrong = await client.post(url, params=params, content=fits_bytes(4321), headers=member)
    assert wrong.status_code == 422 and "4321" in wrong.json()["message"]
    unnamed = await client.post(url, params=params, content=fits_bytes(None), headers=member)
    assert unnamed.status_code == 422 and "PROGRAM" in unnamed.json()["message"]
    junk = await client.post(url, params=params, content=b"not a fits file" * 100, headers=member)
    assert junk.status_code == 422
    assert (await client.post(url, params=params, content=b"", headers=member)).status_code == 422
    assert (await client.post("/api/v1/programs/999/contributed", params=params, content=fits_bytes(999),
                              headers=member)).status_code == 404
    # visible to the member, hidden (like a missing product) from the other user
    pid = product["id"]
    assert (await client.get(f"/api/v1/products/{pid}", headers=member)).status_code == 200
    got = await client.get(f"/api/v1/products/{pid}/file", headers=member)
    assert got.content == fits_bytes(1234)
    assert (await client.get(f"/api/v1/products/{pid}", headers=other)).status_code == 404
    listing = (await client.get("/api/v1/products", params={"level": "contributed"}, headers=other)).json()
    assert listing["total"] == 0
    # nothing half-written is left in the upload folder
    assert not list((Path(client._transport.app.state.archive.settings.data_dir) / "archive" / "uploads").iterdir())
