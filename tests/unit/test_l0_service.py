"""The l0 service without a broker: commit order, offset pin, end of contact per partition,
durable write before commit, poison records, state/disk disagreement.

A fake transactional producer records what is produced and committed, in order;
batches are handed to the framework's own batch step (``_one_batch``), so the
framework's commit path and the service's hooks are what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

import consumers.l0.service as service_mod
from consumers.l0.service import L0Assembler
from products.l0 import l0_paths, sha256_file
from streams.decoder import decode_all
from streams.messages import DeadLetter, L0Ready, L0State, OpsAlert, SciEoc, SciRun
from tests.unit.l0_fixtures import EXPOSURE_ID, exposure, start_packet
from streams.packets import ExposureTag

OTHER = ExposureTag(1234, 1, 1, 1, 1, 1, 2, 3)


class FakeProducer:
    """Records transactions: ("begin"), ("send", topic, message, partition), ("offsets", {...}), ("commit")."""

    def __init__(self, events: list, settings) -> None:
        self.events = events
        self.settings = settings

    @contextlib.asynccontextmanager
    async def transaction(self):
        self.events.append(("begin",))
        yield
        self.events.append(("commit",))

    async def send(self, topic, value, key=None, partition=None, headers=None):
        logical = topic[len(self.settings.topic_prefix):]
        msg = value
        for cls in (L0Ready, L0State, DeadLetter, OpsAlert):
            try:
                msg = cls.decode(value)
                break
            except Exception:
                continue
        if isinstance(msg, L0Ready):  # the invariant itself: announced => durable and of this version
            manifest = json.loads(Path(msg.manifest).read_text())
            assert manifest["sha256"] == msg.sha256 and manifest["version"] == msg.version
            assert sha256_file(Path(msg.path)) == msg.sha256
        self.events.append(("send", logical, msg, partition))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def send_offsets_to_transaction(self, offsets, group):
        self.events.append(("offsets", {tp.partition: o for tp, o in offsets.items()}))


class Harness:
    def __init__(self, settings, monkeypatch, slow_write: float = 0.0) -> None:
        self.settings = settings.replace(l0_eoc_margin_seconds=0.0, l0_quiet_seconds=600.0)
        self.events: list = []
        self.svc = L0Assembler(self.settings)
        self.svc.producer = FakeProducer(self.events, self.settings)
        self.topic = self.settings.topic("tlm.sci")
        self.tps = [TopicPartition(self.topic, p) for p in range(2)]
        self.svc.assigned = set(self.tps)
        self.svc.states = {0: {}, 1: {}}
        self.next_offset = {0: 0, 1: 0}
        self._batches: list = []
        real_publish = service_mod.publish

        def publish(data_dir, a, version, *args, **kw):
            if slow_write:
                time.sleep(slow_write)
            written = real_publish(data_dir, a, version, *args, **kw)
            self.events.append(("durable", a.exposure_id, version))
            return written
        monkeypatch.setattr(service_mod, "publish", publish)

        async def fetch():
            return self._batches.pop(0) if self._batches else []
        self.svc.fetch = fetch

    def record(self, partition: int, msg, key: bytes = b"k") -> ConsumerRecord:
        off = self.next_offset[partition]
        self.next_offset[partition] += 1
        raw = msg.encode() if not isinstance(msg, bytes) else msg
        return ConsumerRecord(self.topic, partition, off, 0, 0, key, raw, None, 1, len(raw), [])

    async def batch(self, *items: tuple[int, object]) -> None:
        """One fetch of (partition, message) items through the framework's batch step."""
        by_tp: dict = {}
        for partition, msg in items:
            by_tp.setdefault(self.tps[partition], []).append(self.record(partition, msg))
        self._batches.append(list(by_tp.items()))
        await self.svc._one_batch()
        await self.svc.drain()

    def sent(self, topic: str) -> list:
        return [e[2] for e in self.events if e[0] == "send" and e[1] == topic]

    def commits(self) -> list[dict]:
        return [e[1] for e in self.events if e[0] == "offsets"]


def run_of(packets: list[bytes], contact: str = "C1", exposure_id: str = EXPOSURE_ID) -> SciRun:
    d = decode_all(b"".join(packets))
    return SciRun(contact=contact, exposure_id=exposure_id, packets=d.data, index=d.packets.to_bytes())


@pytest.fixture
def h(settings, monkeypatch) -> Harness:
    return Harness(settings, monkeypatch)


async def test_commit_order_durable_then_ready_and_state_then_offsets_then_commit(settings, monkeypatch):
    h = Harness(settings, monkeypatch, slow_write=0.3)  # a slow disk: the commit must wait for it
    pk = exposure(100, 90, 2)
    await h.batch((0, run_of(pk)))
    kinds = [(e[0], e[1] if e[0] == "send" else None) for e in h.events]
    durable = kinds.index(("durable", None)) if ("durable", None) in kinds else \
        next(i for i, e in enumerate(h.events) if e[0] == "durable")
    ready = kinds.index(("send", "l0.ready"))
    state = kinds.index(("send", "l0.state"))
    offsets = kinds.index(("offsets", None))
    commit = kinds.index(("commit", None))
    assert durable < ready < offsets < commit and durable < state < offsets
    assert h.commits() == [{0: 1}]
    (announced,) = h.sent("l0.ready")
    assert announced.complete and announced.version == 1
    assert h.sent("l0.state")[0].partition == 0 and h.sent("l0.state")[0].through_offset == 1


async def test_offsets_never_pass_the_first_record_of_an_open_exposure(h):
    x = exposure(100, 90, 2, tag=OTHER)
    y = exposure(100, 90, 1)
    await h.batch((0, run_of(x[:3], exposure_id=OTHER.exposure_id)))      # offset 0: X open
    await h.batch((0, run_of(y)))                                          # offset 1: Y complete
    assert h.commits()[-1] == {0: 0}, "committed past the first record of open exposure X"
    assert [m.exposure_id for m in h.sent("l0.ready")] == [EXPOSURE_ID]
    await h.batch((0, run_of(x[3:], exposure_id=OTHER.exposure_id)))     # offset 2: X complete
    assert h.commits()[-1] == {0: 3}
    assert h.svc.open == {}


async def test_end_of_contact_is_per_partition(h):
    pk = exposure(100, 90, 2)
    await h.batch((1, run_of(pk[:-2])))                  # partition 1: incomplete, contact C1
    await h.batch((0, SciEoc(contact="C1", bytes=10)))   # end of C1 seen on partition 0 only
    assert h.sent("l0.ready") == [], "partition 1 still lags: no partial version yet"
    assert EXPOSURE_ID in h.svc.open
    await h.batch((1, SciEoc(contact="C1", bytes=10)))   # now on its own partition
    (ready,) = h.sent("l0.ready")
    assert not ready.complete and ready.missing_packets == 2
    assert h.commits()[-1][1] == 2


async def test_partial_then_new_version_from_a_later_contact(h):
    pk = exposure(100, 90, 2)
    await h.batch((0, run_of(pk[:-2])), (0, SciEoc(contact="C1", bytes=1)))
    await h.batch((0, run_of(pk[-2:], contact="C2")))
    v1, v2 = h.sent("l0.ready")
    assert (v1.version, v1.complete, v2.version, v2.complete) == (1, False, 2, True)
    data, _ = l0_paths(h.settings.data_dir, EXPOSURE_ID)
    assert data.read_bytes() == b"".join(pk)
    assert l0_paths(h.settings.data_dir, EXPOSURE_ID, 1)[0].exists()
    assert v2.contacts == ["C1", "C2"]


async def test_poison_records_are_dead_lettered_and_committed_past(h):
    bad_id = SciRun(contact="C1", exposure_id="jw999999_not_an_id", packets=b"x", index=b"y")
    d = decode_all(b"".join(exposure(100, 90, 1)))
    bad_index = SciRun(contact="C1", exposure_id=EXPOSURE_ID, packets=d.data[:100],
                       index=d.packets.to_bytes())
    zero = [start_packet(0, 0, 1, expected=1)]
    huge = [start_packet(2048, 2048, 4000, 4000, expected=(1049 * 16_000_000) % (1 << 32), tag=OTHER)]
    await h.batch((0, bad_id), (0, bad_index), (0, run_of(zero)),
                  (0, run_of(huge, exposure_id=OTHER.exposure_id)), (0, b"\x00garbage"))
    letters = h.sent("tlm.deadletter")
    reasons = [d.reason for d in letters]
    assert any("bad exposure id" in r for r in reasons)
    assert any("outside its" in r for r in reasons)
    assert sum("exposure start geometry invalid" in r for r in reasons) == 2
    assert len(letters) == 5
    # nothing kept of any of them: nothing open, nothing pinned (no end of contact needed)
    assert h.svc.open == {} and h.commits()[-1] == {0: 5}


async def test_recorded_version_missing_on_disk_is_restored_from_packets_at_hand(h, tmp_path):
    pk = exposure(100, 90, 2)
    await h.batch((0, run_of(pk)))
    (first,) = h.sent("l0.ready")
    data, manifest = l0_paths(h.settings.data_dir, EXPOSURE_ID)
    data.unlink()
    manifest.unlink()  # the data dir was cleaned; l0.state still says version 1
    h.svc._disk_ok.clear()
    await h.batch((0, run_of(pk, contact="C9")))
    again = h.sent("l0.ready")[-1]
    assert again.version == 1 and again.sha256 == first.sha256 and data.read_bytes() == b"".join(pk)
    assert [a.type for a in h.sent("ops.alerts")] == ["l0_restored"]


async def test_recorded_version_missing_and_different_is_a_new_version_with_an_alert(h):
    pk = exposure(100, 90, 2)
    await h.batch((0, run_of(pk)))
    data, manifest = l0_paths(h.settings.data_dir, EXPOSURE_ID)
    data.unlink()
    h.svc._disk_ok.clear()
    other = exposure(100, 90, 2, seed=5)  # same geometry, other pixels: complete but not the recorded bytes
    await h.batch((0, run_of(other, contact="C9")))
    again = h.sent("l0.ready")[-1]
    assert again.version == 2 and data.read_bytes() == b"".join(other)
    assert [a.type for a in h.sent("ops.alerts")] == ["l0_conflict"]


async def test_conflict_is_alerted_and_never_complete(h):
    pk = exposure(100, 90, 2)
    other = bytearray(pk[2])
    other[-1] ^= 0x55
    await h.batch((0, run_of(pk[:3] + [bytes(other)] + pk[3:])))
    assert h.sent("l0.ready") == []
    (alert,) = h.sent("ops.alerts")
    assert alert.type == "l0_conflict" and alert.count == 1
    await h.batch((0, SciEoc(contact="C1", bytes=1)))
    (ready,) = h.sent("l0.ready")
    assert not ready.complete and ready.conflicts == 1
    m = json.loads(Path(ready.manifest).read_text())
    assert m["conflict_count"] == 1 and m["conflicts_file"].endswith("_l0.conflicts.dat")


async def test_rejected_packets_are_dead_lettered_with_their_bytes(h):
    from tests.unit.l0_fixtures import data_packet
    pk = exposure(100, 90, 2)
    hostile = data_packet(3, 1, 0, 4000)  # integration 3 > NINTS 1
    await h.batch((0, run_of(pk[:2] + [hostile] + pk[2:])))
    (ready,) = h.sent("l0.ready")
    assert ready.complete and ready.rejected == 1
    (letter,) = h.sent("tlm.deadletter")
    assert letter.data == hostile and letter.exposure_id == EXPOSURE_ID and "NINTS" in letter.reason
    assert letter.service == "l0" and letter.contact == "C1"
    m = json.loads(Path(ready.manifest).read_text())
    assert m["rejected_count"] == 1 and "NINTS" in m["rejected"][0]["reason"]


async def test_a_replay_does_not_dead_letter_or_alert_twice(h):
    """After a crash the pinned offsets replay records already processed: no second dead letter."""
    from tests.unit.l0_fixtures import data_packet
    pk = exposure(100, 90, 2)
    hostile = data_packet(3, 1, 0, 4000)
    await h.batch((0, run_of(pk[:2] + [hostile])))       # offset 0: open, one rejection
    assert len(h.sent("tlm.deadletter")) == 1 and h.commits()[-1] == {0: 0}
    (progress,) = [m for m in h.sent("l0.state") if m.exposure_id.startswith("__progress__")]
    assert (progress.partition, progress.through_offset) == (0, 1)
    # a restart: state reloaded, open exposures gone, the partition replayed from offset 0
    h.svc.open.clear()
    h.svc.progress = {0: 1}
    h.next_offset[0] = 0
    await h.batch((0, run_of(pk[:2] + [hostile])))
    assert len(h.sent("tlm.deadletter")) == 1, "the replay dead-lettered the packet again"
    await h.batch((0, run_of(pk[2:])))
    (ready,) = h.sent("l0.ready")
    assert ready.complete and ready.rejected == 1


async def test_assignment_reads_only_the_assigned_partitions_of_l0_state(h, monkeypatch):
    asked = []

    async def read_table(settings, topic, cls=None, partitions=None):
        asked.append((topic, partitions))
        return {EXPOSURE_ID: L0State(exposure_id=EXPOSURE_ID, version=1, complete=True, sha256="x",
                                     packets=1, bytes=1, partition=1, through_offset=5),
                "__progress__.1": L0State(exposure_id="__progress__.1", version=0, complete=False,
                                          sha256="", packets=0, bytes=0, partition=1,
                                          through_offset=9)}
    monkeypatch.setattr(service_mod, "read_table", read_table)
    h.svc.assigned = set()
    h.svc.states = {}
    await h.svc.on_assigned({h.tps[1]})
    assert asked == [("l0.state", {1})]
    assert set(h.svc.states) == {1} and EXPOSURE_ID in h.svc.states[1]
    assert h.svc.progress == {1: 9}


async def test_crash_between_data_and_manifest_reopens_from_the_superseded_copy(h):
    """v2's data renamed in, then a crash before its manifest: l0.state still says v1, which the
    writer linked to <id>_l0.v1.* first; the next packets reopen from there, nothing is lost."""
    pk = exposure(100, 90, 2)
    await h.batch((0, run_of(pk[:-3])), (0, SciEoc(contact="C1", bytes=1)))
    (v1,) = h.sent("l0.ready")
    data, manifest = l0_paths(h.settings.data_dir, EXPOSURE_ID)
    old_data, old_manifest = l0_paths(h.settings.data_dir, EXPOSURE_ID, 1)
    import os
    os.link(data, old_data)
    os.link(manifest, old_manifest)
    data.unlink()
    data.write_bytes(b"".join(pk[:-1]))  # the next version's bytes, its manifest never written
    h.svc._disk_ok.clear()
    await h.batch((0, run_of(pk[-3:], contact="C2")))
    v2 = h.sent("l0.ready")[-1]
    assert (v2.version, v2.complete) == (2, True) and data.read_bytes() == b"".join(pk)
    assert h.sent("ops.alerts") == []


async def test_an_exposure_with_only_rejected_packets_writes_no_version(h):
    from tests.unit.l0_fixtures import data_packet
    await h.batch((0, run_of([start_packet(0, 0, 1, expected=1), data_packet(1, 1, 1, 5)])))
    assert len(h.sent("tlm.deadletter")) == 2
    assert h.sent("l0.ready") == [] and h.svc.open == {} and h.commits()[-1] == {0: 1}
    (alert,) = h.sent("ops.alerts")
    assert alert.type == "l0_rejected"


async def test_a_reopened_exposure_waits_only_for_the_contacts_that_carried_it_now(h):
    pk = exposure(100, 90, 3)
    await h.batch((0, run_of(pk[:-4])), (0, SciEoc(contact="C1", bytes=1)))
    h.svc.contact_end.clear()  # a restart: the end of C1 is long gone from memory
    await h.batch((0, run_of(pk[-4:-2], contact="C2")), (0, SciEoc(contact="C2", bytes=1)))
    v1, v2 = h.sent("l0.ready")
    assert (v2.version, v2.complete, v2.contacts) == (2, False, ["C1", "C2"])


async def test_an_exposure_closed_by_a_tick_releases_its_offset_pin_at_once(h):
    pk = exposure(100, 90, 2)
    await h.batch((1, run_of(pk[:-2])))            # incomplete: the offset of partition 1 stays at 0
    assert h.commits()[-1][1] == 0
    h.svc.open[EXPOSURE_ID].last_update -= h.settings.l0.quiet_seconds + 1  # quiet for too long
    await h.batch()                                 # no record: only the tick runs
    (ready,) = h.sent("l0.ready")
    assert not ready.complete
    assert h.commits()[-1][1] == 1, "the pin released by the tick must advance the offset now"


async def test_open_exposures_and_the_oldest_age_are_exported(h):
    from prometheus_client import REGISTRY
    pk = exposure(100, 90, 2)
    await h.batch((1, run_of(pk[:-2])))
    h.svc.open[EXPOSURE_ID].opened_at -= 42.0  # opened 42 s ago
    await h.batch()
    assert REGISTRY.get_sample_value("downlink_l0_open_exposures") == 1
    assert REGISTRY.get_sample_value("downlink_l0_oldest_open_exposure_age_seconds") >= 42.0
    h.svc.open[EXPOSURE_ID].last_update -= h.settings.l0.quiet_seconds + 1
    await h.batch()  # the tick closes it
    assert REGISTRY.get_sample_value("downlink_l0_open_exposures") == 0
    assert REGISTRY.get_sample_value("downlink_l0_oldest_open_exposure_age_seconds") == 0.0
