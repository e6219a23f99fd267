"""Catalogue ingest: l0.ready, cal.done and tlm.eng.recorded records -> rows, idempotently.

Identity decides everything, so replaying any topic from its beginning
changes no row:

- a product version is (name, sha256): the same file announced again is a
  no-op; different bytes under the same name are the next version, and the
  chain of ``superseded_by`` is recomputed so the newest has NULL;
- an exposure's first calibration is the earliest ``finished_at`` ever seen
  (a message's own time, never the wall clock), so its release date cannot
  move when a reprocessing run (or a replay) arrives;
- an engineering sample is (parameter, TAI time), inserted with
  ON CONFLICT DO NOTHING.

A batch is applied in three steps: which identities exist already (one
query), blocking file work for the new ones in a thread (sha256 check, copy
into the store, FITS headers, L0 manifest), then one transaction for the
whole batch. A record whose files do not match its message is returned as
rejected (the service dead-letters it) and the rest goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.archive import access, store
from consumers.archive.models import EngSample, Exposure, Product, Program
from core.errors import CodecError, ConfigError, DownlinkError, ValidationError
from core.settings import Settings
from products.l0 import l0_paths, read_manifest
from products.superseded import superseded_paths
from streams.decoder import PacketIndex
from streams.dictionary import EngDictionary
from streams.messages import CalDone, EngBatch, L0Ready, Message
from streams.packets import ExposureTag, instrument_of

log = logging.getLogger(__name__)

#: primary-header keywords kept as provenance (plus every R_* and S_*)
PROVENANCE_KEYS = ("CAL_VER", "CRDS_CTX", "CRDS_VER", "SDP_VER", "DATE", "DATAMODL", "FILENAME")
EXPOSURE_KEYS = ("INSTRUME", "DETECTOR", "TARGNAME", "TARGPROP", "EXP_TYPE", "READPATT",
                 "EXPSTART", "EXPEND", "PROGRAM")


def naive_utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None)


def mjd_to_utc(mjd: float) -> dt.datetime:
    return dt.datetime(1858, 11, 17) + dt.timedelta(days=float(mjd))


def product_name(path: str) -> str:
    """File stem without the extension: jw..._nrca1_cal.fits -> jw..._nrca1_cal."""
    name = Path(path).name
    for ext in (".fits.gz", ".fits", ".dat", ".asdf", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


@dataclass
class NewProduct:
    """A product version to insert once its file is secured."""

    name: str
    level: str
    suffix: str
    path: str
    sha256: str
    size: int | None
    candidates: list[Path]
    exposure_id: str | None
    program: int
    source: str
    created: dt.datetime
    pipeline_version: str = ""
    context: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    #: wanted version number (L0 keeps l0's own numbering), else the next free one
    version: int | None = None
    read_header: bool = False
    store_path: str = ""
    header: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejected:
    index: int
    reason: str


@dataclass
class BatchResult:
    rejected: list[Rejected] = field(default_factory=list)
    products_added: int = 0
    #: engineering samples in the batch, and how many of them were new rows (a replay adds none)
    samples_offered: int = 0
    samples_added: int = 0


class Catalogue:
    """Applies typed messages to the catalogue (one instance per service)."""

    def __init__(self, settings: Settings, dictionary: EngDictionary) -> None:
        self.settings = settings
        self.dictionary = dictionary
        self.data_dir = Path(settings.data_dir)

    # -- planning (pure) ---------------------------------------------------------------------
    def plan_l0(self, msg: L0Ready, received: dt.datetime) -> NewProduct:
        tag = ExposureTag.from_exposure_id(msg.exposure_id)
        old_data, _ = l0_paths(self.data_dir, msg.exposure_id, version=msg.version)
        return NewProduct(
            name=f"{msg.exposure_id}_l0", level="L0", suffix="l0", path=msg.path, sha256=msg.sha256,
            size=msg.bytes, candidates=[Path(msg.path), old_data], exposure_id=msg.exposure_id,
            program=tag.program, source="l0.ready", created=received, version=msg.version,
            provenance={"l0_version": msg.version, "complete": msg.complete,
                        "missing_packets": msg.missing_packets, "contacts": list(msg.contacts),
                        "manifest": msg.manifest})

    def plan_cal(self, msg: CalDone, when: dt.datetime) -> list[NewProduct]:
        tag = ExposureTag.from_exposure_id(msg.exposure_id)
        base = {"context": msg.context, "cal_version": msg.cal_version, "priority": msg.priority,
                "l0_version": msg.l0_version, "uncal_sha256": msg.uncal_sha256,
                "cal_run_version": msg.version, "started_at": msg.started_at,
                "finished_at": msg.finished_at}
        plans = []
        seen = set()
        for i, p in enumerate(msg.products):
            if not isinstance(p, dict) or not all(k in p for k in ("level", "path", "sha256")):
                raise ValidationError(f"cal.done product #{i} needs level, path and sha256, got {p!r}")
            name = product_name(str(p["path"]))
            seen.add(name)
            plans.append(NewProduct(
                name=name, level=access.normalize_level(str(p["level"])),
                suffix=str(p.get("suffix") or name.rsplit("_", 1)[-1]), path=str(p["path"]),
                sha256=str(p["sha256"]), size=int(p["size"]) if p.get("size") is not None else None,
                candidates=_candidates(Path(str(p["path"]))), exposure_id=msg.exposure_id, program=tag.program,
                source="cal.done", created=when, pipeline_version=msg.cal_version,
                context=msg.context, provenance=dict(base), read_header=True))
        if msg.uncal_path and msg.uncal_sha256 and product_name(msg.uncal_path) not in seen:
            plans.append(NewProduct(
                name=product_name(msg.uncal_path), level="L1b", suffix="uncal", path=msg.uncal_path,
                sha256=msg.uncal_sha256, size=None, candidates=[Path(msg.uncal_path)],
                exposure_id=msg.exposure_id, program=tag.program, source="cal.done", created=when,
                provenance={"l0_version": msg.l0_version}, read_header=True))
        return plans

    # -- batch -------------------------------------------------------------------------------
    async def apply(self, session: AsyncSession, items: list[tuple[Message, dt.datetime]]) -> BatchResult:
        """Apply ``(message, record time)`` pairs in one transaction (committed here)."""
        result = BatchResult()
        plans: list[tuple[int, Message, dt.datetime, list[NewProduct]]] = []
        for i, (msg, when) in enumerate(items):
            try:
                if isinstance(msg, L0Ready):
                    plans.append((i, msg, when, [self.plan_l0(msg, when)]))
                elif isinstance(msg, CalDone):
                    cal_time = naive_utc(msg.finished_at) if msg.finished_at > 0 else when
                    plans.append((i, msg, cal_time, self.plan_cal(msg, cal_time)))
                elif isinstance(msg, EngBatch):
                    plans.append((i, msg, when, []))
                else:
                    raise ValidationError(f"the archive does not take {type(msg).__name__}")
            except (ValidationError, CodecError) as exc:
                result.rejected.append(Rejected(i, f"{type(exc).__name__}: {exc}"))

        wanted = [p for _, _, _, ps in plans for p in ps]
        existing = await self._existing(session, wanted)
        todo = [p for p in wanted if (p.name, p.sha256) not in existing]
        failures = await asyncio.to_thread(self._secure_all, todo)
        bad = {id(p) for p, _ in failures}
        for idx, msg, when, ps in plans:
            reasons = [r for p, r in failures if any(p is q for q in ps)]
            if reasons:
                result.rejected.append(Rejected(idx, reasons[0]))
        rejected = {r.index for r in result.rejected}

        eng_rows: list[dict[str, Any]] = []
        for idx, msg, when, ps in plans:
            if idx in rejected:
                continue
            if isinstance(msg, EngBatch):
                try:
                    eng_rows.extend(self.eng_rows(msg))
                except (ConfigError, CodecError, ValueError) as exc:
                    result.rejected.append(Rejected(idx, f"{type(exc).__name__}: {exc}"))
                continue
            await self._ensure_program(session, ps[0].program if ps else ExposureTag.from_exposure_id(
                msg.exposure_id).program)
            exposure = await self._exposure(session, msg.exposure_id)
            if isinstance(msg, L0Ready):
                self._update_from_l0(exposure, msg, when, ps[0])
            else:
                assert isinstance(msg, CalDone)
                self._update_from_cal(exposure, msg, ps)
            await session.flush()
            for p in ps:
                if id(p) in bad or (p.name, p.sha256) in existing:
                    continue
                if await self._add_version(session, p):
                    result.products_added += 1
                    existing.add((p.name, p.sha256))
            if isinstance(msg, CalDone) and getattr(msg, "kind", "exposure") == "exposure":
                # a visit product (L3) is not its exposure's calibration: the clock stays
                await self._set_first_calibration(session, exposure, when)
        if eng_rows:
            result.samples_offered = len(eng_rows)
            result.samples_added = await insert_ignore(session, EngSample, eng_rows, ["parameter", "t"])
        await session.commit()
        return result

    async def _existing(self, session: AsyncSession, plans: list[NewProduct]) -> set[tuple[str, str]]:
        names = sorted({p.name for p in plans})
        if not names:
            return set()
        rows = await session.execute(select(Product.name, Product.sha256).where(Product.name.in_(names)))
        return {(n, s) for n, s in rows}

    def _secure_all(self, plans: list[NewProduct]) -> list[tuple[NewProduct, str]]:
        """Blocking: check and store each new file, read FITS headers. Returns the failures."""
        failures = []
        for p in plans:
            try:
                secured = store.secure(self.data_dir, p.candidates, p.sha256, p.size)
            except ValidationError as exc:
                failures.append((p, f"ValidationError: {p.name}: {exc}"))
                continue
            p.store_path, p.size = str(secured.path), secured.size
            if p.read_header:
                p.header = read_header(secured.path)
                kw = {k: v for k, v in p.header.items() if k in PROVENANCE_KEYS or k[:2] in ("R_", "S_")}
                p.provenance["keywords"] = kw
        return failures

    # -- rows --------------------------------------------------------------------------------
    async def _ensure_program(self, session: AsyncSession, program: int) -> None:
        await insert_ignore(session, Program, [{
            "id": program, "title": "", "pi": None,
            "period_months": self.settings.archive.default_period_months,
            "created": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)}], ["id"])

    async def _exposure(self, session: AsyncSession, exposure_id: str) -> Exposure:
        exp = await session.get(Exposure, exposure_id)
        if exp is None:
            tag = ExposureTag.from_exposure_id(exposure_id)
            exp = Exposure(id=exposure_id, program_id=tag.program, observation=tag.observation,
                           visit=tag.visit, instrument=instrument_of(tag.detector),
                           detector=exposure_id.rsplit("_", 1)[1].upper(), target="", exp_type="",
                           readpatt="", l0_version=0, l0_complete=False, l0_missing_packets=0,
                           l0_sha256="", uncal_path="", uncal_sha256="")
            session.add(exp)
        return exp

    def _update_from_l0(self, exp: Exposure, msg: L0Ready, when: dt.datetime, plan: NewProduct) -> None:
        if msg.version < exp.l0_version:
            return  # an older version replayed: the exposure already describes a newer one
        exp.l0_version, exp.l0_complete = msg.version, msg.complete
        exp.l0_missing_packets, exp.l0_sha256 = msg.missing_packets, msg.sha256
        exp.l0_received = naive_utc(msg.raw_ts) if msg.raw_ts > 0 else when
        manifest = _manifest(msg.manifest)
        start = manifest.get("start") or {}
        exp.target = exp.target or str(start.get("target", ""))[:64]
        exp.exp_type = exp.exp_type or str(start.get("exp_type", ""))[:32]
        exp.readpatt = exp.readpatt or str(start.get("readpatt", ""))[:32]
        if manifest.get("first_packet_time") and exp.start_time is None:
            exp.start_time = _iso(manifest["first_packet_time"])
        if manifest.get("last_packet_time"):
            exp.end_time = _iso(manifest["last_packet_time"])

    def _update_from_cal(self, exp: Exposure, msg: CalDone, plans: list[NewProduct]) -> None:
        if msg.uncal_path:
            exp.uncal_path, exp.uncal_sha256 = msg.uncal_path, msg.uncal_sha256
        for p in plans:
            h = p.header
            if not h:
                continue
            exp.target = exp.target or str(h.get("TARGNAME") or h.get("TARGPROP") or "")[:64]
            exp.exp_type = exp.exp_type or str(h.get("EXP_TYPE", ""))[:32]
            exp.readpatt = exp.readpatt or str(h.get("READPATT", ""))[:32]
            if exp.start_time is None and isinstance(h.get("EXPSTART"), (int, float)):
                exp.start_time = mjd_to_utc(h["EXPSTART"])
            if exp.end_time is None and isinstance(h.get("EXPEND"), (int, float)):
                exp.end_time = mjd_to_utc(h["EXPEND"])

    async def _set_first_calibration(self, session: AsyncSession, exp: Exposure,
                                     when: dt.datetime) -> None:
        first = access.earliest(exp.first_calibrated, when)
        if first == exp.first_calibrated and exp.release_date is not None:
            return
        program = await session.get(Program, exp.program_id)
        assert program is not None
        exp.first_calibrated = first
        exp.release_date = access.release_date(first, program.period_months)
        await session.execute(update(Product).where(Product.exposure_id == exp.id)
                              .values(release_date=exp.release_date))

    async def _add_version(self, session: AsyncSession, p: NewProduct) -> bool:
        versions = (await session.execute(
            select(Product.version).where(Product.name == p.name))).scalars().all()
        version = p.version if p.version and p.version not in versions else max(versions, default=0) + 1
        exp = await session.get(Exposure, p.exposure_id) if p.exposure_id else None
        release = exp.release_date if exp is not None else None
        session.add(Product(
            name=p.name, version=version, exposure_id=p.exposure_id, program_id=p.program,
            level=p.level, suffix=p.suffix, path=p.path, store_path=p.store_path, size=p.size or 0,
            sha256=p.sha256, pipeline_version=p.pipeline_version, context=p.context,
            provenance=p.provenance, source=p.source, created=p.created, release_date=release))
        await session.flush()
        await relink_versions(session, p.name)
        log.info("product catalogued", extra={"exposure_id": p.exposure_id, "product": p.name,
                                              "version": version, "level": p.level})
        return True

    # -- engineering -------------------------------------------------------------------------
    def eng_rows(self, msg: EngBatch) -> list[dict[str, Any]]:
        """Decommutated samples of one batch (vectorized decode; rows built from column lists)."""
        index = PacketIndex.from_bytes(msg.index)
        if len(index) == 0:
            return []
        decoded = self.dictionary.decode_many(msg.apid, msg.packets)
        if len(decoded) != len(index):
            raise ValueError(f"APID {msg.apid}: {len(decoded)} packets decoded, index lists {len(index)}")
        times = (index.coarse.astype(np.float64) + index.fine.astype(np.float64) / 65536.0)
        values = self.dictionary.calibrate_all(msg.apid, decoded)
        t_list = times.tolist()
        rows: list[dict[str, Any]] = []
        for name, val in values.items():
            raw = decoded[name].astype(np.float64).tolist()
            rows.extend({"parameter": name, "t": t, "raw": r, "value": v, "apid": msg.apid}
                        for t, r, v in zip(t_list, raw, np.asarray(val, dtype=np.float64).tolist()))
        return rows


async def relink_versions(session: AsyncSession, name: str) -> None:
    """Each version points to the next; the newest has ``superseded_by`` NULL."""
    rows = (await session.execute(select(Product).where(Product.name == name)
                                  .order_by(Product.version))).scalars().all()
    for older, newer in zip(rows, rows[1:]):
        if older.superseded_by != newer.version:
            older.superseded_by = newer.version
    if rows and rows[-1].superseded_by is not None:
        rows[-1].superseded_by = None


async def insert_ignore(session: AsyncSession, model: Any, rows: list[dict[str, Any]],
                        keys: list[str], chunk: int = 5000) -> int:
    """INSERT .. ON CONFLICT (keys) DO NOTHING, in batches, on SQLite or PostgreSQL; returns how many
    rows were really inserted (RETURNING yields only those, so rows already there count 0)."""
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    column = getattr(model, keys[0])
    inserted = 0
    for i in range(0, len(rows), chunk):
        stmt = insert(model).on_conflict_do_nothing(index_elements=keys).returning(column)
        inserted += len((await session.execute(stmt, rows[i:i + chunk])).all())
    return inserted


def read_header(path: Path) -> dict[str, Any]:
    """Primary-header keywords of a FITS file ({} for anything else)."""
    from astropy.io import fits

    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for key in header:
        if key in ("COMMENT", "HISTORY", "") or key is None:
            continue
        value = header[key]
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out


def _manifest(path: str) -> dict[str, Any]:
    try:
        return read_manifest(Path(path))
    except DownlinkError:
        return {}


def _iso(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(
            dt.timezone.utc).replace(tzinfo=None)
    except ValueError:
        return None


def _candidates(path: Path) -> list[Path]:
    """Where a calibrated product's bytes may be: its name, then earlier builds kept beside it
    (an L3 product rebuilt before its first ``cal.done`` was archived)."""
    return [path, *superseded_paths(path)]
