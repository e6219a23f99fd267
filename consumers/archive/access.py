"""Who may see, download, reprocess and contribute what: pure rules, no database, no clock.

- A product's release date is its exposure's first calibration in the archive
  plus the program's exclusive-access period (0, 3, 6 or 12 calendar months);
  a contributed product counts from its upload. Reprocessing never moves it
  (the first calibration is kept as the earliest one ever seen).
- A program with period 0 is public at once, even before calibration.
- Until the release date only the program's members and staff see a product;
  for anyone else it does not exist (the API answers exactly as for a missing
  one). Staff see everything, including the internal levels (L0, L1a) that
  users never get.

:mod:`consumers.archive.visibility` expresses :func:`can_see` as SQL (so
counts and pages are filtered inside the query); a unit test checks that both
agree on every combination.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field

from core.errors import ValidationError

PERIODS = (0, 3, 6, 12)
#: every level the archive keeps, and the ones users (members or public) may retrieve
LEVELS = ("L0", "L1a", "L1b", "L2a", "L2b", "L3", "contributed")
USER_LEVELS = frozenset({"L1b", "L2a", "L2b", "L3", "contributed"})

_LEVEL_ALIASES = {lvl.lower(): lvl for lvl in LEVELS} | {
    "0": "L0", "1a": "L1a", "1b": "L1b", "2a": "L2a", "2b": "L2b", "3": "L3",
    "level0": "L0", "level1a": "L1a", "level1b": "L1b", "level2a": "L2a", "level2b": "L2b",
    "level3": "L3",
}


@dataclass(frozen=True)
class Viewer:
    """Whoever makes a request: anonymous (no user), a user with memberships, or staff."""

    user: str | None = None
    staff: bool = False
    programs: frozenset[int] = field(default_factory=frozenset)

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Viewer()


def normalize_level(level: str) -> str:
    """'2b', 'l2b', 'L2B', 'level2b' -> 'L2b'; anything else is a ValidationError."""
    key = str(level).strip().lower().replace(" ", "").replace("_", "")
    try:
        return _LEVEL_ALIASES[key]
    except KeyError:
        raise ValidationError(f"unknown product level {level!r}; one of {', '.join(LEVELS)}") from None


def check_period(months: int) -> int:
    if months not in PERIODS:
        raise ValidationError(f"exclusive access period must be one of {PERIODS} months, got {months}")
    return months


def add_months(when: dt.datetime, months: int) -> dt.datetime:
    """Calendar months later, the day clamped to the month's end (31 Jan + 1 = 28/29 Feb)."""
    total = when.month - 1 + months
    year, month = when.year + total // 12, total % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def release_date(first_calibrated: dt.datetime | None, period_months: int) -> dt.datetime | None:
    """When an exposure's products become public (None: not calibrated yet)."""
    if first_calibrated is None:
        return None
    return add_months(first_calibrated, check_period(period_months))


def earliest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    """The first calibration kept: the earliest ever seen, whatever the order of arrival."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def is_public(release: dt.datetime | None, period_months: int, now: dt.datetime) -> bool:
    return period_months == 0 or (release is not None and release <= now)


def can_see(viewer: Viewer, *, program: int, level: str, release: dt.datetime | None,
            period_months: int, now: dt.datetime) -> bool:
    """Whether ``viewer`` may know that a product exists (search, metadata, download)."""
    if viewer.staff:
        return True
    if level not in USER_LEVELS:
        return False
    return is_public(release, period_months, now) or program in viewer.programs


def can_reprocess(viewer: Viewer, program: int) -> bool:
    """Staff, or members of the exposure's program."""
    return viewer.staff or (not viewer.anonymous and program in viewer.programs)


def can_contribute(viewer: Viewer, program: int) -> bool:
    """Members upload data-analysis products for their program; staff on anyone's behalf."""
    return viewer.staff or (not viewer.anonymous and program in viewer.programs)
