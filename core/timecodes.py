"""The packet time code: TAI seconds since 1958-01-01 (coarse uint32 + fine uint16 of 2^-16 s).

One place converts it to UTC, ISO strings and MJD, so the L0 manifest, the
uncal FITS keywords and the simulator agree to the millisecond.
"""

from __future__ import annotations

import datetime as dt

#: TAI - UTC since 2017-01-01 (leap seconds); the mission epoch lies after that date
TAI_MINUS_UTC = 37.0
EPOCH_1958 = dt.datetime(1958, 1, 1, tzinfo=dt.timezone.utc)
#: MJD of 1958-01-01
MJD_1958 = 36204.0


def tai_seconds(coarse: int | float, fine: int | float = 0) -> float:
    """Seconds since 1958-01-01 TAI from the two time-code fields."""
    return float(coarse) + float(fine) / 65536.0


def tai_to_utc(seconds: float) -> dt.datetime:
    return EPOCH_1958 + dt.timedelta(seconds=seconds - TAI_MINUS_UTC)


def tai_to_iso(seconds: float) -> str:
    """``2026-03-01T12:00:00.000Z`` (UTC, milliseconds)."""
    return tai_to_utc(seconds).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def tai_to_mjd_utc(seconds: float) -> float:
    """Modified Julian Date in UTC (the EXPSTART/EXPMID/EXPEND convention)."""
    return MJD_1958 + (seconds - TAI_MINUS_UTC) / 86400.0


def utc_to_tai(when: dt.datetime) -> float:
    """A UTC datetime (naive = UTC) -> TAI seconds since 1958."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return (when - EPOCH_1958).total_seconds() + TAI_MINUS_UTC
