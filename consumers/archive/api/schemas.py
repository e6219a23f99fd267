"""Request and response models (what /openapi.json publishes); patterns keep ids and search
fields to safe characters, so path traversal and SQL metacharacters are refused with 422."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from consumers.archive.access import LEVELS

PRODUCT_ID = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,95}$"
EXPOSURE_ID = r"^jw[0-9]{11}_[0-9]{5}_[0-9]{5}_[a-z0-9]{1,12}$"
TARGET = r"^[A-Za-z0-9][A-Za-z0-9 _+.\-]{0,63}$"
WORD = r"^[A-Za-z0-9]{1,16}$"
PARAMETER = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
CONTEXT = r"^[a-z]+_[0-9]{1,8}(\.pmap)?$"
FILENAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,90}\.fits$"
Level = Literal[LEVELS]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProgramOut(Strict):
    id: int
    title: str
    pi: str | None
    period_months: int = Field(description="exclusive access period: 0, 3, 6 or 12 months")


class ProgramsOut(Strict):
    programs: list[ProgramOut]


class ReprocessNote(Strict):
    queued: bool
    reason: str
    context: str
    message: str


class ProductOut(Strict):
    id: str = Field(description="product name (the file stem); versions share it")
    version: int
    latest: bool
    superseded_by: int | None
    exposure: str | None
    program: int
    level: str
    suffix: str
    size: int
    sha256: str
    release_date: dt.datetime | None
    public: bool
    pipeline_version: str
    context: str
    created: dt.datetime
    instrument: str | None = None
    detector: str | None = None
    target: str | None = None
    start_time: dt.datetime | None = None


class ProductsOut(Strict):
    products: list[ProductOut]
    total: int
    limit: int
    offset: int


class ProductDetail(ProductOut):
    provenance: dict[str, Any]
    versions: list[int]
    reprocess: ReprocessNote | None = None


class EngPoint(Strict):
    time: str = Field(description="UTC, ISO 8601")
    tai: float = Field(description="TAI seconds since 1958-01-01 (packet time code)")
    value: float
    raw: float | None = None
    min: float | None = None
    max: float | None = None
    n: int = 1


class EngOut(Strict):
    parameter: str
    unit: str
    start: dt.datetime
    end: dt.datetime
    downsampled: bool
    total: int
    points: list[EngPoint]


class ReprocessIn(Strict):
    program: int | None = Field(None, ge=1, le=99999)
    exposure: str | None = Field(None, pattern=EXPOSURE_ID)
    context: str | None = Field(None, pattern=CONTEXT, description="pin a reference context; "
                                "none = the best at run time")


class ReprocessOut(Strict):
    queued: int
    exposures: list[str]
    context: str | None
