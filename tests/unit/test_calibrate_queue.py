"""The calibrate service's scheduling logic: lanes in priority order, in-order offset commits."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from consumers.calibrate.queue import JobQueue, OffsetTracker
from consumers.calibrate.service import latest_cal_products, visit_key

TP0, TP1 = TopicPartition("cal.requests", 0), TopicPartition("cal.requests", 1)


def test_most_urgent_lane_first_then_arrival_order() -> None:
    q = JobQueue()
    for name, prio in [("r1", "reprocess"), ("n1", "normal"), ("t1", "too"), ("n2", "normal"),
                       ("t2", "too"), ("r2", "reprocess")]:
        q.push("exposure", name, prio, TP0, len(q))
    assert [q.pop().payload for _ in range(6)] == ["t1", "t2", "n1", "n2", "r1", "r2"]
    assert q.pop() is None


def test_revoked_partitions_lose_their_queued_jobs() -> None:
    q = JobQueue()
    q.push("exposure", "a", "normal", TP0, 0)
    q.push("exposure", "b", "normal", TP1, 0)
    assert [j.payload for j in q.drop({TP0})] == ["a"]
    assert [j.payload for j in q] == ["b"]


def test_commits_stop_at_the_first_unfinished_record() -> None:
    t = OffsetTracker()
    for off in (5, 6, 7, 8):
        t.taken(TP0, off)
    t.taken(TP1, 3)
    assert t.committable() == {TP0: 5, TP1: 3}
    t.done(TP0, 7)                  # finished out of order (a ToO): nothing before it is done
    t.done(TP0, 8)
    assert t.committable()[TP0] == 5
    t.done(TP0, 5)
    assert t.committable()[TP0] == 6
    t.done(TP0, 6)
    t.done(TP1, 3)
    assert t.committable() == {TP0: 9, TP1: 4}
    assert t.outstanding() == 0
    t.forget({TP1})
    assert TP1 not in t.committable()


def test_visit_keys_and_latest_members(tmp_path) -> None:
    assert visit_key("jw01234001002_03101_00004_nrcb1") == ("jw01234001002", "nrcb1")
    old = tmp_path / "jw01234001002_03101_00001_nrcb1" / "downlink_0001-aaa" / "x_cal.fits"
    new = tmp_path / "jw01234001002_03101_00001_nrcb1" / "downlink_0002-aaa" / "x_cal.fits"
    other = tmp_path / "jw01234001002_03101_00002_nrcb1" / "downlink_0001-bbb" / "y_cal.fits"
    elsewhere = tmp_path / "jw01234001002_03101_00002_nrca1" / "downlink_0001-bbb" / "z_cal.fits"
    for k, p in enumerate((old, new, other, elsewhere)):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        import os
        os.utime(p, (1000 + k, 1000 + k))
    assert latest_cal_products(tmp_path, "jw01234001002", "nrcb1") == [new, other]


def test_latency_metrics_and_the_five_day_share(settings) -> None:
    import time as _time

    from consumers.calibrate.service import Calibrate
    from monitoring import metrics
    from streams.messages import CalRequest

    svc = Calibrate(settings)
    q = JobQueue()
    now = _time.time()
    before = metrics.TOO_LATENCY_SECONDS._sum.get()

    def five_day_counts() -> tuple[float, float]:  # (within 5 days, all) of L0_TO_L2B_SECONDS
        from prometheus_client import REGISTRY
        get = REGISTRY.get_sample_value
        return (sum(get("downlink_l0_to_l2b_seconds_bucket", {"priority": p, "le": "432000.0"}) or 0
                    for p in ("too", "normal")),
                sum(get("downlink_l0_to_l2b_seconds_count", {"priority": p}) or 0 for p in ("too", "normal")))
    within_before, all_before = five_day_counts()
    for eid, prio, age in (("jw01234001001_01101_00001_nrca1", "too", 30.0),
                           ("jw01234001001_01101_00002_nrca1", "normal", 6 * 86400.0),
                           ("jw01234001001_01101_00003_nrca1", "normal", 3600.0)):
        req = CalRequest(exposure_id=eid, uncal_path="x", priority=prio, l0_received_at=now - age)
        job = q.push("exposure", req, prio, TP0, 0)
        svc._observe(job, req, {"products": [{"level": "2a"}], "finished_at": now,
                                "seconds": {"jump": 0.5, "ramp_fit": 1.0, "total": 2.0}}, now)
    assert metrics.TOO_LATENCY_SECONDS._sum.get() - before == pytest.approx(30.0, abs=0.5)
    # calibrate's view of the 5-day share is its histogram; the gauge L2B_WITHIN_5_DAYS is the archive's
    within, total = five_day_counts()
    assert (within - within_before, total - all_before) == (2, 3)


def test_bulk_workers_wait_between_blocks_while_a_too_runs() -> None:
    import threading
    import time as _time

    from consumers.calibrate import worker

    event = threading.Event()
    passed = threading.Event()

    def block_boundary() -> None:
        worker._between_blocks()
        passed.set()

    worker.init_worker(event, "bulk")
    try:
        event.set()                               # a ToO is running
        t = threading.Thread(target=block_boundary)
        t.start()
        _time.sleep(0.2)
        assert not passed.is_set()                # the bulk job holds at the block boundary
        event.clear()                             # the ToO is done
        t.join(2)
        assert passed.is_set()
        worker.init_worker(event, "too")          # the ToO lane itself never waits
        event.set()
        worker._between_blocks()
    finally:
        worker.init_worker(None, "bulk")
