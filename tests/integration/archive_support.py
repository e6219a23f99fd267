"""Builders for archive tests: real files on disk and the messages that announce them.

Small FITS products written with astropy carry the provenance keywords a
calibration run writes (CAL_VER, CRDS_CTX, R_*, S_*), so tests do not depend
on the calibration service being present; L0 files come with a real manifest.
``catalogue_settings`` gives each test its own database: a fresh SQLite file,
or a fresh database on the session's PostgreSQL server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from consumers.archive import db, models
from core.settings import Settings
from streams.decoder import decode_all
from streams.dictionary import EngDictionary
from streams.messages import CalDone, EngBatch, L0Ready
from streams.packets import ExposureTag, encode_eng

EXPOSURE = "jw01234001001_01101_00001_nrca1"
OTHER = "jw04321001001_01101_00001_nrcb1"


def catalogue_settings(settings: Settings, backend: str, postgres_url: str | None) -> Settings:
    """Settings pointing at a new empty catalogue on ``backend`` (sqlite | postgres), migrated."""
    if backend == "postgres":
        assert postgres_url is not None
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        settings = settings.replace(archive_database_url=url)
    db.migrate(settings)
    return settings


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_fits(path: Path, exposure_id: str, *, suffix: str, context: str = "", cal_version: str = "",
               program: int | None = None, seed: int = 0, target: str = "NGC-1234") -> dict[str, Any]:
    """A small FITS product; returns its cal.done product entry."""
    from astropy.io import fits

    tag = ExposureTag.from_exposure_id(exposure_id)
    hdr = fits.Header()
    hdr["TELESCOP"] = "JWST"
    hdr["PROGRAM"] = f"{tag.program if program is None else program:05d}"
    hdr["INSTRUME"] = "NIRCAM"
    hdr["DETECTOR"] = exposure_id.rsplit("_", 1)[1].upper()
    hdr["TARGNAME"] = target
    hdr["EXPSTART"] = 61100.5
    hdr["EXPEND"] = 61100.51
    hdr["FILENAME"] = path.name
    if context:
        hdr["CRDS_CTX"] = context
        hdr["CAL_VER"] = cal_version
        hdr["R_FLAT"] = f"flat_{context.split('_')[1].split('.')[0]}.fits"
        hdr["S_FLAT"] = "COMPLETE"
    data = np.random.default_rng(seed).random((8, 8), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(header=hdr), fits.ImageHDU(data, name="SCI")]).writeto(path, overwrite=True)
    raw = path.read_bytes()
    level = {"uncal": "1b", "rate": "2a", "rateints": "2a", "cal": "2b", "i2d": "3"}[suffix]
    return {"level": level, "suffix": suffix, "path": str(path), "sha256": sha(raw), "size": len(raw)}


def cal_done(data_dir: Path, exposure_id: str = EXPOSURE, *, context: str = "downlink_0001",
             cal_version: str = "0.1.0", finished_at: float = 1_780_000_000.0, run: int = 1,
             priority: str = "normal", subdir: str | None = None) -> CalDone:
    """Write uncal + rate + cal files for one calibration run and the CalDone announcing them.

    Each run writes into its own folder (``subdir``, default ``run<run>``), as a
    calibration service that keeps earlier outputs would.
    """
    folder = Path(data_dir) / exposure_id[:7] / (subdir or f"run{run}")
    uncal = write_fits(Path(data_dir) / exposure_id[:7] / f"{exposure_id}_uncal.fits", exposure_id,
                       suffix="uncal", seed=1)
    products = [write_fits(folder / f"{exposure_id}_{sfx}.fits", exposure_id, suffix=sfx,
                           context=context, cal_version=cal_version, seed=run * 10 + i)
                for i, sfx in enumerate(("rate", "cal"))]
    tag = ExposureTag.from_exposure_id(exposure_id)
    return CalDone(exposure_id=exposure_id, products=products, context=context, cal_version=cal_version,
                   priority=priority, uncal_path=uncal["path"], uncal_sha256=uncal["sha256"],
                   l0_version=1, program=tag.program, version=run, started_at=finished_at - 10,
                   finished_at=finished_at)


def l0_ready(data_dir: Path, exposure_id: str = EXPOSURE, *, version: int = 1,
             payload: bytes | None = None, raw_ts: float = 1_779_990_000.0) -> L0Ready:
    """An L0 file + manifest (current version names) and the L0Ready announcing them."""
    from products.l0 import MANIFEST_SCHEMA, l0_paths

    tag = ExposureTag.from_exposure_id(exposure_id)
    data = payload if payload is not None else bytes(range(256)) * (4 + version)
    data_path, manifest_path = l0_paths(data_dir, exposure_id)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_bytes(data)
    manifest = {"schema": MANIFEST_SCHEMA, "exposure_id": exposure_id, "version": version,
                "program": tag.program, "complete": True, "bytes": len(data), "sha256": sha(data),
                "first_packet_time": "2026-06-01T10:00:00.000Z",
                "last_packet_time": "2026-06-01T10:05:00.000Z",
                "start": {"target": "NGC-1234", "exp_type": "NRC_IMAGE", "readpatt": "RAPID"}}
    manifest_path.write_text(json.dumps(manifest))
    return L0Ready(exposure_id=exposure_id, version=version, complete=True, sha256=sha(data),
                   packets=10, bytes=len(data), path=str(data_path), manifest=str(manifest_path),
                   program=tag.program, detector=tag.detector, raw_ts=raw_ts)


def eng_batch(dictionary: EngDictionary, apid: int = 0x101, n: int = 50, t0: int = 2_100_000_000,
              step: int = 1, seq0: int = 0) -> EngBatch:
    """``n`` recorded packets of one APID, one per ``step`` seconds from TAI ``t0``."""
    params = dictionary.by_apid()[apid]
    rng = np.random.default_rng(apid + seq0)
    raw = {p.name: rng.integers(0, 200, n) for p in params}
    blocks = dictionary.encode_many(apid, raw, n)
    packets = b"".join(encode_eng(apid, (seq0 + i) % 16384, 1, t0 + i * step, 0, blocks[i].tobytes())
                       for i in range(n))
    decoded = decode_all(packets, dictionary.packet_lengths())
    return EngBatch(contact="c1", apid=apid, source=1, packets=packets,
                    index=decoded.packets.to_bytes())


def snapshot(settings: Settings) -> dict[str, list[tuple]]:
    """Every row of every catalogue table (sorted), to compare before and after a replay."""
    engine = db.sync_engine(settings)
    out: dict[str, list[tuple]] = {}
    try:
        with Session(engine) as session:
            for table in models.Base.metadata.sorted_tables:
                rows = session.execute(select(table)).all()
                out[table.name] = sorted((tuple(repr(v) for v in r) for r in rows))
    finally:
        engine.dispose()
    return out


def naive(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(tzinfo=None)


@pytest.fixture(params=["sqlite", "postgres"])
def archive_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's Settings with a fresh migrated catalogue, once on SQLite and once on PostgreSQL.

    A sync fixture, so the session's async ``postgres`` fixture can be requested lazily
    (SQLite runs never start the server).
    """
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return catalogue_settings(settings, request.param, pg)
