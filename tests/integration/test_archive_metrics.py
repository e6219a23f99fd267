"""The archive's metrics on real Kafka and a real catalogue (SQLite and PostgreSQL).

- ``downlink_archive_records_total{kind}`` counts rows really inserted: a
  replay of every topic (a new consumer group) adds nothing and counts nothing.
- ``downlink_l2b_within_5_days_ratio`` is set by the archive from the
  catalogue as soon as it starts (calibrate no longer sets it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from consumers.archive.service import ArchiveSink
from streams.dictionary import load_dictionary
from tests.integration.archive_support import (OTHER, archive_settings, cal_done,  # noqa: F401
                                               eng_batch, l0_ready)
from tests.integration.test_archive_ingest import ReplaySink, counts, drain, send

pytestmark = pytest.mark.integration


def archived(kind: str) -> float:
    return REGISTRY.get_sample_value("downlink_archive_records_total", {"kind": kind}) or 0.0


async def test_replay_counts_no_archive_record(archive_settings, topics, producer_factory):
    s = archive_settings
    data = Path(s.data_dir)
    dictionary = load_dictionary(s.dictionary_file)
    producer = await producer_factory()
    await send(producer, s, "l0.ready", [l0_ready(data), l0_ready(data, OTHER)])
    await send(producer, s, "cal.done", [cal_done(data)])
    # the second batch repeats 10 packets of the first: 10 samples per parameter are not new
    await send(producer, s, "tlm.eng.recorded", [eng_batch(dictionary, 0x101, n=30),
                                                 eng_batch(dictionary, 0x101, n=30, t0=2_100_000_020)])
    before = {k: archived(k) for k in ("product", "engineering")}
    await drain(ArchiveSink(s))
    products, samples, _ = counts(s)
    assert products == 5  # two L0 files, uncal + rate + cal of one exposure
    assert samples == 50 * len(dictionary.by_apid()[0x101])
    assert archived("product") - before["product"] == products
    assert archived("engineering") - before["engineering"] == samples, "repeated samples were counted"
    share = REGISTRY.get_sample_value("downlink_l2b_within_5_days_ratio")
    assert share is not None and 0.0 <= share <= 1.0

    after_first = {k: archived(k) for k in ("product", "engineering")}
    await drain(ReplaySink(s))  # every record again, from the beginning
    assert counts(s)[:2] == (products, samples)
    assert {k: archived(k) for k in ("product", "engineering")} == after_first, "a replay was counted"
