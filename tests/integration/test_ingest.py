"""Ingest against the real broker: byte-for-byte reassembly, resumption, TCP feeds.

Inputs are random bytes: ingest never parses packets, so any byte stream must
come back exactly. Chunks are small (64 KiB) to keep the tests fast while
still cutting every stream into many chunks.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from core.errors import IngestError, KafkaUnavailable, ValidationError
from core.settings import Settings
from consumers.ingest import RAW_TOPIC, IngestResult, IngestServer, ingest_file, parse_rate, parse_size, partition_for
from streams.kafka import make_admin, make_consumer
from streams.topics import load_topics

CHUNK = 64 << 10
RAW_PARTITIONS = load_topics()[RAW_TOPIC].partitions


@dataclass
class RawMessage:
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: dict[str, bytes]


async def raw_messages(settings: Settings, contact: str | None = None) -> list[RawMessage]:
    """Every message of downlink.raw (all partitions, log order), optionally of one contact."""
    topic = settings.topic(RAW_TOPIC)
    admin = make_admin(settings)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = make_consumer(settings, group=None)
    await consumer.start()
    out: list[RawMessage] = []
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    if record.offset < ends[tp]:
                        out.append(RawMessage(tp.partition, record.offset, record.key, record.value or b"",
                                              dict(record.headers)))
    finally:
        await consumer.stop()
    return [m for m in out if contact is None or m.headers.get("contact") == contact.encode()]


def check_contact(messages: list[RawMessage], contact: str, data: bytes, chunk: int = CHUNK) -> None:
    """The contact's messages are exactly data in chunks, once each, then one end-of-contact marker."""
    assert messages, f"no message of contact {contact}"
    assert len({m.partition for m in messages}) == 1, "a contact must stay on one partition"
    assert [m.key for m in messages] == [contact.encode()] * len(messages)
    chunks, marker = messages[:-1], messages[-1]
    seqs = [int(m.headers["chunk_seq"]) for m in chunks]
    offsets = [int(m.headers["offset"]) for m in chunks]
    assert seqs == list(range(len(chunks))), "chunk_seq must run 0, 1, 2... without duplicates or gaps"
    assert offsets == [n * chunk for n in range(len(chunks))], "chunk boundaries are multiples of chunk_bytes"
    assert all(len(m.value) == chunk for m in chunks[:-1])
    assert b"".join(m.value for m in sorted(chunks, key=lambda m: int(m.headers["offset"]))) == data
    assert marker.value == b""
    # a live feed's chunks say what its real-time tap covered (never past their own end);
    # a live feed's marker: all of it
    for m in chunks:
        if "rt_through" in m.headers:
            assert int(m.headers["rt_from"]) <= int(m.headers["rt_through"]) \
                <= int(m.headers["offset"]) + len(m.value)
    if "rt_through" in marker.headers:
        assert int(marker.headers.pop("rt_through")) == len(data)
        marker.headers.pop("rt_from")
    assert marker.headers == {
        "contact": contact.encode(),
        "chunk_seq": str(len(chunks)).encode(),
        "offset": str(len(data)).encode(),
        "eoc": b"1",
        "bytes": str(len(data)).encode(),
    }
    assert not any("eoc" in m.headers for m in chunks)


def random_file(tmp_path: Path, name: str, size: int, seed: int = 0) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / f"{name}.bin"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def small(settings: Settings) -> Settings:
    return settings.replace(ingest_chunk_bytes=CHUNK)


@pytest.mark.integration
@pytest.mark.parametrize("size", [0, 1, 5 * CHUNK, 5 * CHUNK + 4321])
async def test_file_reassembles_byte_for_byte(small: Settings, topics: dict[str, str], tmp_path: Path, size: int) -> None:
    path, data = random_file(tmp_path, "C100", size, seed=size)
    seen: list[tuple[int, int | None]] = []
    result = await ingest_file(small, path, progress=lambda done, total: seen.append((done, total)))
    assert result.contact == "C100"  # default contact id: the file stem
    assert (result.total_bytes, result.published_bytes, result.resumed_from) == (size, size, 0)
    assert result.published_chunks == -(-size // CHUNK)
    assert result.eoc_published and not result.already_complete
    assert seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    check_contact(await raw_messages(small, "C100"), "C100", data)


@pytest.mark.integration
async def test_contact_lands_on_the_default_partitioner_partition(
    small: Settings, topics: dict[str, str], tmp_path: Path, producer_factory
) -> None:
    """Resume reads the partition we compute; it must be where a plain keyed send goes too."""
    producer = await producer_factory()
    contacts = [f"K{n:03d}" for n in range(12)]
    for contact in contacts:
        await producer.send_and_wait(topics[RAW_TOPIC], b"", key=contact.encode(), headers=[("probe", b"1")])
    placed = {m.key.decode(): m.partition for m in await raw_messages(small)}
    assert {c: partition_for(c, range(RAW_PARTITIONS)) for c in contacts} == placed
    path, _ = random_file(tmp_path, "K005", 3 * CHUNK)
    result = await ingest_file(small, path)
    assert result.partition == placed["K005"]


@pytest.mark.integration
async def test_partial_run_then_resume_has_no_duplicates(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    path, data = random_file(tmp_path, "C200", 7 * CHUNK + 99, seed=2)
    first = await ingest_file(small, path, "C200", max_chunks=3)
    assert (first.published_chunks, first.eoc_published, first.total_bytes) == (3, False, 3 * CHUNK)
    second = await ingest_file(small, path, "C200")
    assert second.resumed_from == 3 * CHUNK
    assert second.published_chunks == 5 and second.eoc_published
    assert second.published_bytes == len(data) - 3 * CHUNK
    check_contact(await raw_messages(small, "C200"), "C200", data)


@pytest.mark.integration
async def test_resume_within_lookback(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    """A bounded scan (ingest_lookback_hours) still finds a recent run of the contact."""
    bounded = small.replace(ingest_lookback_hours=1.0)
    path, data = random_file(tmp_path, "C220", 5 * CHUNK + 3, seed=22)
    await ingest_file(bounded, path, max_chunks=2)
    result = await ingest_file(bounded, path)
    assert result.resumed_from == 2 * CHUNK
    check_contact(await raw_messages(small, "C220"), "C220", data)


@pytest.mark.integration
async def test_resume_after_all_chunks_but_no_marker(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    """A run that died between the last chunk and the marker: the next run adds only the marker."""
    path, data = random_file(tmp_path, "C250", 4 * CHUNK, seed=25)
    await ingest_file(small, path, max_chunks=4)
    again = await ingest_file(small, path)
    assert (again.resumed_from, again.published_chunks, again.eoc_published) == (4 * CHUNK, 0, True)
    check_contact(await raw_messages(small, "C250"), "C250", data)


@pytest.mark.integration
async def test_cancelled_run_then_resume_has_no_duplicates(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    """An ingest killed mid-stream (task cancelled while sends are in flight) resumes exactly."""
    path, data = random_file(tmp_path, "C300", 40 * CHUNK + 7, seed=3)
    reached = asyncio.Event()

    def progress(done: int, total: int | None) -> None:
        if done >= 4 * CHUNK:
            reached.set()

    # paced so that the cancellation lands mid-stream rather than after the end
    run = asyncio.create_task(ingest_file(small, path, rate_bps=40 * CHUNK / 4, progress=progress))
    await asyncio.wait([run, asyncio.create_task(reached.wait())], return_when=asyncio.FIRST_COMPLETED)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    partial = await raw_messages(small, "C300")
    assert partial and not any("eoc" in m.headers for m in partial)
    result = await ingest_file(small, path)
    assert result.resumed_from == len(partial) * CHUNK
    check_contact(await raw_messages(small, "C300"), "C300", data)


@pytest.mark.integration
async def test_reingest_of_finished_contact_publishes_nothing(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    path, data = random_file(tmp_path, "C400", 3 * CHUNK + 1, seed=4)
    await ingest_file(small, path)
    before = await raw_messages(small)
    again = await ingest_file(small, path)
    assert again.already_complete and not again.eoc_published
    assert (again.published_bytes, again.published_chunks, again.total_bytes) == (0, 0, len(data))
    assert "already complete" in again.summary()
    assert len(await raw_messages(small)) == len(before)


@pytest.mark.integration
async def test_other_contacts_on_the_partition_do_not_confuse_resume(
    small: Settings, topics: dict[str, str], tmp_path: Path
) -> None:
    """A contact interrupted, then many others published after it, still resumes from its own tail."""
    path, data = random_file(tmp_path, "C500", 6 * CHUNK, seed=5)
    await ingest_file(small, path, max_chunks=2)
    tp = (await raw_messages(small, "C500"))[0].partition
    others = [c for c in (f"O{n:03d}" for n in range(200)) if partition_for(c, range(RAW_PARTITIONS)) == tp][:6]
    for n, other in enumerate(others):
        other_path, _ = random_file(tmp_path, other, 5 * CHUNK, seed=50 + n)
        await ingest_file(small, other_path)
    result = await ingest_file(small, path)
    assert result.resumed_from == 2 * CHUNK
    check_contact(await raw_messages(small, "C500"), "C500", data)


@pytest.mark.integration
async def test_a_different_stream_cannot_resume_a_contact(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    path, _ = random_file(tmp_path, "C600", 5 * CHUNK, seed=6)
    other, _ = random_file(tmp_path, "C600b", 5 * CHUNK, seed=7)
    await ingest_file(small, path, max_chunks=2)
    with pytest.raises(IngestError, match="differs"):
        await ingest_file(small, other, "C600")
    await ingest_file(small, path)
    shorter, _ = random_file(tmp_path, "C600c", 2 * CHUNK, seed=6)  # a stream of another length
    with pytest.raises(IngestError, match="already complete"):
        await ingest_file(small, shorter, "C600")


async def _feed(address: tuple[str, int], data: bytes, seed: int) -> None:
    """A ground-station feed: connect, send the stream in irregular pieces, close cleanly."""
    _, writer = await asyncio.open_connection(*address)
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        step = rng.randint(1, 3 * CHUNK)
        writer.write(data[position:position + step])
        await writer.drain()
        position += step
    writer.close()
    await writer.wait_closed()


@pytest.mark.integration
async def test_listen_reassembles_each_connection_as_a_contact(small: Settings, topics: dict[str, str]) -> None:
    streams = [random.Random(n).randbytes(size) for n, size in enumerate((9 * CHUNK + 5, 2 * CHUNK, 0))]
    done: list[IngestResult] = []
    finished = asyncio.Event()

    def on_result(result: IngestResult) -> None:
        done.append(result)
        if len(done) == len(streams):
            finished.set()

    async with IngestServer(small, "127.0.0.1", 0, "GS", on_result=on_result) as server:
        assert server.address is not None
        for n, data in enumerate(streams):
            await _feed(server.address, data, seed=n)
        await asyncio.wait_for(finished.wait(), 60)
    run = server.run_id
    assert sorted(r.contact for r in done) == [f"GS-{run}-001", f"GS-{run}-002", f"GS-{run}-003"]
    for n, data in enumerate(streams):
        contact = f"GS-{run}-{n + 1:03d}"
        check_contact(await raw_messages(small, contact), contact, data)


@pytest.mark.integration
async def test_listen_never_reuses_a_contact_id_after_a_restart(small: Settings, topics: dict[str, str]) -> None:
    data = random.Random(3).randbytes(2 * CHUNK + 1)
    ids = []
    for attempt in range(2):  # two runs of the server with the same base
        got: list[IngestResult] = []
        finished = asyncio.Event()
        async with IngestServer(small, "127.0.0.1", 0, "RS",
                                on_result=lambda r: (got.append(r), finished.set())) as server:
            assert server.address is not None
            await _feed(server.address, data, seed=attempt)
            await asyncio.wait_for(finished.wait(), 60)
        ids.append(got[0].contact)
    assert ids[0] != ids[1] and all(i.startswith("RS-") and i.endswith("-001") for i in ids)
    # an id the topic already holds is never handed out again, even by a server that would
    # generate it (same run id forced here)
    got = []
    finished = asyncio.Event()
    async with IngestServer(small, "127.0.0.1", 0, "RS",
                            on_result=lambda r: (got.append(r), finished.set())) as server:
        server.run_id = ids[1].removeprefix("RS-").removesuffix("-001")
        assert server.address is not None
        await _feed(server.address, data, seed=5)
        await asyncio.wait_for(finished.wait(), 60)
    assert got[0].contact == f"RS-{server.run_id}-002" and not got[0].already_complete


@pytest.mark.integration
async def test_a_contact_id_demux_cannot_use_is_refused(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    path, _ = random_file(tmp_path, "BAD", CHUNK, seed=4)
    with pytest.raises(ValidationError, match="reserved"):
        await ingest_file(small, path, "BAD#2")
    with pytest.raises(ValidationError):
        IngestServer(small, "127.0.0.1", 0, "has space")


@pytest.mark.integration
async def test_listen_replayed_feed_resumes_without_duplicates(small: Settings, topics: dict[str, str]) -> None:
    """A feed reset mid-contact, then replayed from byte 0 to a restarted --once server."""
    data = random.Random(8).randbytes(12 * CHUNK + 3)
    async with IngestServer(small, "127.0.0.1", 0, "GSR", once=True) as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(data[: 6 * CHUNK + 17])
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST: the contact is cut, not finished
        with pytest.raises(IngestError, match="lost"):
            await asyncio.wait_for(server.wait(), 60)
    partial = await raw_messages(small, "GSR")
    assert not any("eoc" in m.headers for m in partial)
    async with IngestServer(small, "127.0.0.1", 0, "GSR", once=True) as server:
        assert server.address is not None
        await _feed(server.address, data, seed=9)
        [result] = await asyncio.wait_for(server.wait(), 60)
    assert result.resumed_from == len(partial) * CHUNK and result.eoc_published
    check_contact(await raw_messages(small, "GSR"), "GSR", data)


@pytest.mark.integration
async def test_cli_ingest_prints_summary_and_resumes(small: Settings, topics: dict[str, str], tmp_path: Path) -> None:
    path, data = random_file(tmp_path, "CLI1", 3 * CHUNK + 10, seed=10)
    env = {**os.environ, "DOWNLINK_KAFKA_BOOTSTRAP": small.kafka.bootstrap, "DOWNLINK_TOPIC_PREFIX": small.topic_prefix}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "downlink", *args], env=env, capture_output=True, text=True)

    first = await asyncio.to_thread(cli, "ingest", str(path), "--chunk-bytes", "64KiB", "--rate", "100MB/s")
    assert first.returncode == 0, first.stderr
    assert "contact CLI1: 196618 bytes in 4 chunks + end-of-contact marker" in first.stdout
    assert "resumed from offset 0" in first.stdout
    again = await asyncio.to_thread(cli, "ingest", str(path), "--chunk-bytes", "64KiB")
    assert again.returncode == 0 and "already complete" in again.stdout
    check_contact(await raw_messages(small, "CLI1"), "CLI1", data)
    missing = await asyncio.to_thread(cli, "ingest", str(tmp_path / "nope.bin"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    env["DOWNLINK_TOPIC_PREFIX"] = small.topic_prefix + "absent."
    no_topic = await asyncio.to_thread(cli, "ingest", str(path))
    assert no_topic.returncode != 0 and "downlink topics create" in no_topic.stderr


def test_rate_and_size_units() -> None:
    assert parse_rate("28Mbps") == 3.5e6
    assert parse_rate("28 Mbit/s") == 3.5e6
    assert parse_rate("3.5MB/s") == 3.5e6
    assert parse_rate("1KiB/s") == 1024
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("65536") == 65536
    for bad in ("28", "fast", "-1Mbps", "0Mbps"):
        with pytest.raises(Exception, match="rate"):
            parse_rate(bad)


async def test_unreachable_broker_names_bootstrap_and_stack_up(tmp_path: Path) -> None:
    path = tmp_path / "C1.bin"
    path.write_bytes(b"abc")
    settings = Settings.from_env(kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(KafkaUnavailable, match=r"127\.0\.0\.1:1.*downlink stack up"):
        await ingest_file(settings, path)


async def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        await ingest_file(Settings.from_env(), tmp_path / "absent.bin")
