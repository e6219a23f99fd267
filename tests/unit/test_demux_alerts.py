"""Alert coalescing and contact ids (consumers/demux/alerts.py, contacts.py); no servers."""

from __future__ import annotations

import pytest

from consumers.demux.alerts import AlertCoalescer
from consumers.demux.contacts import ContactIdError, Passes, check_contact_id, split_pass


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_first_event_goes_at_once_then_one_message_per_window_and_all_at_force():
    clock = Clock()
    c = AlertCoalescer(1.0, clock=clock, wall=lambda: 5.0)
    c.add("C", "gap", "warning", 10, 2, apid=0x101, source=0, stream_offset=100)
    [first] = c.flush()
    assert (first.type, first.ranges, first.count, first.first_seq, first.stream_offset) == \
        ("gap", [[10, 2]], 2, 10, 100)
    sent = []
    for k in range(100):  # a burst over 2 s, flushed after every event
        clock.t += 0.02
        c.add("C", "gap", "warning", 20 + 3 * k, 1, apid=0x101, source=0, stream_offset=200 + k)
        sent += c.flush()
    assert len(sent) == 2  # at t >= 1 and t >= 2
    sent += c.flush(force=True)
    assert sum(a.count for a in sent) == 100 == sum(n for a in sent for _, n in a.ranges)
    assert c.held == 0 and c.flush(force=True) == []


def test_groups_are_per_contact_apid_source_and_type_and_contiguous_ranges_join():
    c = AlertCoalescer(1.0, clock=Clock())
    for s in (16382, 16383, 0, 1):  # out-of-order run across the wrap: one range
        c.add("C", "out_of_order", "info", s, 1, apid=0x400 + 1, source=1)
    c.add("C", "out_of_order", "info", 5, 1, apid=0x400 + 1, source=0)
    c.add("D", "out_of_order", "info", 5, 1, apid=0x400 + 1, source=1)
    out = {(a.contact, a.source): a for a in c.flush()}
    assert out[("C", 1)].ranges == [[16382, 4]] and len(out) == 3


def test_contact_flush_and_reset():
    c = AlertCoalescer(1.0, clock=Clock())
    c.add("A", "resync", "warning", 0, 10)
    c.add("B", "resync", "warning", 0, 10)
    assert [a.contact for a in c.flush(force=True, contact="A")] == ["A"]
    c.reset()
    assert c.flush(force=True) == []


def test_contact_ids_and_passes():
    assert check_contact_id("GS-20261202T060000Z-3fa9-001") == "GS-20261202T060000Z-3fa9-001"
    for bad in ("", "a#2", "a b", "x" * 201, "é"):
        with pytest.raises(ContactIdError):
            check_contact_id(bad)
    assert split_pass("C") == ("C", 1) and split_pass("C#3") == ("C", 3)
    p = Passes.from_ids(["C", "C#2", "D"])
    assert p.current("C") == "C#2" and p.open("C") == "C#3" and p.open("E") == "E"
    assert p.current("nobody") is None
