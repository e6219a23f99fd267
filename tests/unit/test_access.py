"""Exclusive-access rules: the pure functions, and the SQL form agreeing with them on every case."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from consumers.archive import access, db
from consumers.archive.access import Viewer
from consumers.archive.models import Product, Program
from consumers.archive.visibility import visible
from core.errors import ValidationError
from core.settings import Settings

NOW = dt.datetime(2027, 3, 1, 12, 0, 0)


def test_release_date_adds_calendar_months():
    first = dt.datetime(2026, 1, 31, 10, 0)
    assert access.release_date(first, 12) == dt.datetime(2027, 1, 31, 10, 0)
    assert access.release_date(first, 3) == dt.datetime(2026, 4, 30, 10, 0)  # clamped to April's end
    assert access.release_date(dt.datetime(2027, 11, 30), 3) == dt.datetime(2028, 2, 29)  # leap year
    assert access.release_date(first, 0) == first
    assert access.release_date(None, 12) is None
    with pytest.raises(ValidationError):
        access.release_date(first, 5)


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2090, 1, 1)),
       st.sampled_from(access.PERIODS))
def test_release_is_never_before_first_calibration(first, months):
    release = access.release_date(first, months)
    assert release >= first
    assert (release - first).days <= 366


def test_first_calibration_is_the_earliest_seen_in_any_order():
    a, b = dt.datetime(2026, 5, 1), dt.datetime(2026, 7, 1)
    assert access.earliest(a, b) == access.earliest(b, a) == a
    assert access.earliest(None, b) == b and access.earliest(a, None) == a


def test_levels_normalize_and_refuse_unknown():
    assert access.normalize_level("2b") == "L2b"
    assert access.normalize_level("l1b") == "L1b"
    assert access.normalize_level("Level3") == "L3"
    with pytest.raises(ValidationError):
        access.normalize_level("L9")


def test_who_sees_what():
    member, other, staff = Viewer("alice", programs=frozenset({1234})), Viewer("bob", programs=frozenset({7})), \
        Viewer("ops", staff=True)
    future, past = NOW + dt.timedelta(days=1), NOW - dt.timedelta(days=1)
    kw = dict(program=1234, level="L2b", period_months=12, now=NOW)
    assert access.can_see(member, release=future, **kw)
    assert access.can_see(staff, release=future, **kw)
    assert not access.can_see(other, release=future, **kw)
    assert not access.can_see(access.ANONYMOUS, release=future, **kw)
    assert not access.can_see(access.ANONYMOUS, release=None, **kw)  # not calibrated yet
    assert access.can_see(access.ANONYMOUS, release=past, **kw)
    assert access.can_see(access.ANONYMOUS, release=None, **{**kw, "period_months": 0})
    assert not access.can_see(member, release=past, **{**kw, "level": "L0"})  # internal level
    assert access.can_see(staff, release=None, **{**kw, "level": "L0"})
    assert access.can_reprocess(member, 1234) and access.can_reprocess(staff, 1234)
    assert not access.can_reprocess(other, 1234) and not access.can_reprocess(access.ANONYMOUS, 1234)


def test_sql_visibility_matches_the_pure_rule(tmp_path):
    """Every combination of viewer, level, period and release date: SQL answers as can_see."""
    settings = Settings().replace(data_dir=tmp_path)
    db.migrate(settings)  # the real schema, on a SQLite file
    engine = db.sync_engine(settings)
    releases = [None, NOW - dt.timedelta(seconds=1), NOW, NOW + dt.timedelta(seconds=1)]
    viewers = [access.ANONYMOUS, Viewer("alice", programs=frozenset({1})), Viewer("bob", programs=frozenset({2})),
               Viewer("carol"), Viewer("ops", staff=True)]
    with Session(engine) as session:
        for pid, months in ((1, 12), (2, 0), (3, 3)):
            session.add(Program(id=pid, title="", pi=None, period_months=months, created=NOW))
        session.flush()
        cases = {}
        for i, (pid, level, release) in enumerate(itertools.product((1, 2, 3), access.LEVELS, releases)):
            session.add(Product(pk=i + 1, name=f"p{i}", version=1, program_id=pid, level=level, suffix="",
                                path="", store_path="", size=0, sha256="0" * 64, provenance={},
                                source="test", created=NOW, release_date=release))
            cases[i + 1] = (pid, level, release)
        session.commit()
        months = {1: 12, 2: 0, 3: 3}
        for viewer in viewers:
            got = set(session.scalars(select(Product.pk).join(Program, Program.id == Product.program_id)
                                      .where(visible(viewer, NOW))))
            want = {pk for pk, (pid, level, release) in cases.items()
                    if access.can_see(viewer, program=pid, level=level, release=release,
                                      period_months=months[pid], now=NOW)}
            assert got == want, viewer
            assert 0 < len(got) <= len(cases)
        assert len(want) == len(cases)  # the last viewer is staff: everything
    engine.dispose()
