""":func:`consumers.archive.access.can_see` as a SQL condition, for counts and pages alike.

Every query that returns or counts products joins ``programs`` and adds
:func:`visible` to its WHERE clause: what a caller may not see is filtered by
the database, so a count cannot reveal a hidden row and a lookup of a hidden
id finds nothing, exactly like a missing one.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, Select, and_, or_, select, true

from consumers.archive.access import USER_LEVELS, Viewer
from consumers.archive.models import Product, Program


def public(now: dt.datetime) -> ColumnElement[bool]:
    return or_(Program.period_months == 0, and_(Product.release_date.is_not(None),
                                                Product.release_date <= now))


def visible(viewer: Viewer, now: dt.datetime) -> ColumnElement[bool]:
    if viewer.staff:
        return true()
    levels = Product.level.in_(sorted(USER_LEVELS))
    if viewer.anonymous or not viewer.programs:
        return and_(levels, public(now))
    return and_(levels, or_(public(now), Product.program_id.in_(sorted(viewer.programs))))


def products_query(viewer: Viewer, now: dt.datetime, *entities) -> Select:
    """``SELECT <entities or Product> FROM products JOIN programs WHERE visible``."""
    stmt = select(*(entities or (Product,))).join(Program, Program.id == Product.program_id)
    return stmt.where(visible(viewer, now))


