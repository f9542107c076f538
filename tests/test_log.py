"""The event log on a real nats-server: append, concurrency, idempotency, pipelines, batches.

Also connecting and provisioning (``open_nats``, ``provision``), which every log needs.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

from runstate.engine import (
    Commit,
    EventLog,
    MetadataRecorded,
    Settings,
)
from runstate.engine._connection import open_nats, provision
from runstate.engine._server import NatsServer, find_nats_server
from runstate.engine.errors import (
    ConflictError,
    InvalidEvent,
    InvalidName,
    JetStreamDisabled,
    PayloadTooLarge,
    Unavailable,
)
from runstate.engine.testing import EventFactory

pytestmark = pytest.mark.anyio


factory = EventFactory()


def text_of(event: object) -> str:
    assert isinstance(event, MetadataRecorded)
    return event.payload.entries[0].value


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> Settings:
    return Settings(nats_url=nats_url, data_dir=tmp_path / "data", user="tester", retry_budget=5.0)


async def message_count(log: EventLog) -> int:
    info = await log.nc.jetstream().stream_info(log.subjects.events_stream)
    return int(info.state.messages)


# -- append and read ------------------------------------------------------------


async def test_append_returns_receipts_and_read_gives_the_events_back(log: EventLog) -> None:
    """Appends get increasing sequences and read/read_entity return the events in order."""
    first = await log.append(factory.note("F/1", "a"))
    second = await log.append([factory.note("F/1/s/1", "b"), factory.note("F/1/s/1", "c")])
    third = await log.append(factory.note("F/1", "d"))

    assert (first.sequence, second.sequence, third.sequence) == (1, 2, 3)
    assert first.subject == "rs.ev.F.1.r"
    assert second.subject == "rs.ev.F.1.t.s.1"
    assert second.events == 2
    stored = [commit async for commit in log.read()]
    assert [c.sequence for c in stored] == [1, 2, 3]
    assert [[text_of(e) for e in c.events] for c in stored] == [["a"], ["b", "c"], ["d"]]
    assert [c.commit_id for c in stored] == [first.commit_id, second.commit_id, third.commit_id]
    run_header = await log.read_entity("rs.ev.F.1.r")
    assert [c.sequence for c in run_header] == [1, 3]
    assert await log.read_entity("rs.ev.F.2.r") == []
    assert await log.last_sequence("rs.ev.F.1.t.s.1") == 2
    assert await log.stream_last_sequence() == 3


async def test_append_with_a_stale_version_raises_conflict_with_the_current_one(
    log: EventLog,
) -> None:
    """An append expecting an old version raises ConflictError carrying the version now."""
    first = await log.append(factory.note("F/1/s/1", "a"), expected_version=0)
    second = await log.append(factory.note("F/1/s/1", "b"), expected_version=first.sequence)

    with pytest.raises(ConflictError) as caught:
        await log.append(factory.note("F/1/s/1", "c"), expected_version=first.sequence)

    assert caught.value.current_version == second.sequence
    assert caught.value.expected_version == first.sequence
    assert await message_count(log) == 2


async def test_across_run_version_covers_every_subject_of_the_run(log: EventLog) -> None:
    """With across_run the expected version is the run's last sequence over all its subjects."""
    header = await log.append(factory.note("F/1", "created"), expected_version=0, across_run=True)
    task = await log.append(factory.note("F/1/s/1", "task"))

    with pytest.raises(ConflictError) as caught:
        await log.append(
            factory.note("F/1", "late"), expected_version=header.sequence, across_run=True
        )
    assert caught.value.current_version == task.sequence

    receipt = await log.append(
        factory.note("F/1", "ok"), expected_version=task.sequence, across_run=True
    )
    assert receipt.sequence == task.sequence + 1


# -- idempotency ------------------------------------------------------------------


async def test_retried_append_without_expected_version_is_stored_once(log: EventLog) -> None:
    """A repeat with the same commit id is dropped by the duplicate window: same sequence."""
    first = await log.append(factory.note("F/1", "a"), commit_id="commit-a")
    again = await log.append(factory.note("F/1", "a"), commit_id="commit-a")

    assert not first.duplicate
    assert again.duplicate
    assert again.sequence == first.sequence
    assert await message_count(log) == 1


async def test_retried_append_with_expected_version_returns_the_original_receipt(
    log: EventLog,
) -> None:
    """A retried OCC append whose first try was stored gets its receipt, not a conflict."""
    await log.append(factory.note("F/1/s/1", "before"))
    first = await log.append(factory.note("F/1/s/1", "a"), expected_version=1, commit_id="commit-a")
    # the server checks the expected sequence before de-duplication (error 10071)
    again = await log.append(factory.note("F/1/s/1", "a"), expected_version=1, commit_id="commit-a")

    assert again.duplicate
    assert again.sequence == first.sequence == 2
    assert again.commit_id == "commit-a"
    assert await message_count(log) == 2
    with pytest.raises(ConflictError) as caught:
        await log.append(factory.note("F/1/s/1", "b"), expected_version=1, commit_id="commit-b")
    assert caught.value.current_version == 2


async def test_pipelined_retry_with_expected_version_returns_the_original_receipt(
    log: EventLog,
) -> None:
    """Through a pipeline too, a commit already stored under its id is not a conflict with itself;
    another commit at the same expected version is."""
    await log.append(factory.note("F/1/s/1", "before"))
    first = await log.append(factory.note("F/1/s/1", "a"), expected_version=1, commit_id="commit-a")

    async with log.pipeline() as pipe:
        await pipe.append(factory.note("F/1/s/1", "a"), expected_version=1, commit_id="commit-a")
        await pipe.append(factory.note("F/2/s/1", "other"), commit_id="commit-o")
        receipts = await pipe.flush()
        await pipe.append(factory.note("F/1/s/1", "b"), expected_version=1, commit_id="commit-b")
        with pytest.raises(ConflictError) as caught:
            await pipe.flush()

    assert receipts[0].duplicate
    assert receipts[0].sequence == first.sequence == 2
    assert receipts[1].sequence == 3
    assert caught.value.current_version == 2
    assert await message_count(log) == 3


# -- refusals: nothing is sent ----------------------------------------------------


async def test_oversized_commit_raises_payload_too_large_and_sends_nothing(
    log: EventLog,
) -> None:
    """A commit over the server's max_payload raises PayloadTooLarge before sending."""
    await log.append(factory.note("F/1", "small"))
    big = factory.note("F/1/s/1", "x" * (2 * 1024 * 1024))

    with pytest.raises(PayloadTooLarge, match="over the server's limit"):
        await log.append(big)
    with pytest.raises(PayloadTooLarge):
        await log.append_atomic([Commit([factory.note("F/1/s/2", "ok")]), Commit([big])])

    assert await log.stream_last_sequence() == 1


async def test_commit_of_two_entities_raises_invalid_event(log: EventLog) -> None:
    """Events of different entities cannot share a commit: InvalidEvent, nothing sent."""
    await log.append(factory.note("F/1", "before"))

    with pytest.raises(InvalidEvent, match="one entity"):
        await log.append([factory.note("F/1/s/1", "a"), factory.note("F/1/s/2", "b")])
    with pytest.raises(InvalidEvent):
        await log.append([])

    assert await log.stream_last_sequence() == 1


async def test_events_of_a_flow_or_step_or_bad_name_raise_invalid_name(log: EventLog) -> None:
    """Only runs and tasks have events; a malformed pathspec raises InvalidName."""
    for pathspec in ("F", "F/1/s", "F/1/s/*", "F/>", "a.b/1"):
        with pytest.raises(InvalidName):
            await log.append(factory.note(pathspec, "x"))

    assert await log.stream_last_sequence() == 0


# -- pipelines --------------------------------------------------------------------


async def test_pipeline_confirms_2000_appends_with_contiguous_sequences(log: EventLog) -> None:
    """2,000 pipelined appends are confirmed together, receipts in append order."""
    async with log.pipeline() as pipeline:
        for i in range(2000):
            await pipeline.append(factory.note(f"F/1/s/{i % 7}", str(i)))
        receipts = await pipeline.flush()

    assert [r.sequence for r in receipts] == list(range(1, 2001))
    assert len({r.commit_id for r in receipts}) == 2000
    stored = [commit async for commit in log.read()]
    assert [text_of(c.events[0]) for c in stored] == [str(i) for i in range(2000)]


async def test_pipeline_conflict_is_raised_by_flush_and_the_others_are_stored(
    log: EventLog,
) -> None:
    """A pipelined append with a wrong version raises ConflictError at flush; the rest land."""
    await log.append(factory.note("F/1/s/bad", "existing"))
    async with log.pipeline() as pipeline:
        for i in range(10):
            if i == 4:
                await pipeline.append(factory.note("F/1/s/bad", "stale"), expected_version=0)
            else:
                await pipeline.append(factory.note(f"F/1/s/{i}", str(i)), expected_version=0)
        with pytest.raises(ConflictError) as caught:
            await pipeline.flush()
        results = pipeline.results

    assert caught.value.current_version == 1
    assert len(results) == 10
    assert isinstance(results[4], ConflictError)
    stored_ok = [r for i, r in enumerate(results) if i != 4]
    assert all(r is not None and not isinstance(r, Exception) for r in stored_ok)
    assert await message_count(log) == 10  # the existing one and 9 of the 10


# -- atomic batches ---------------------------------------------------------------


async def test_atomic_batch_is_stored_in_consecutive_sequences(log: EventLog) -> None:
    """append_atomic stores every commit, in order, in consecutive sequences."""
    await log.append(factory.note("F/1", "header"))
    commits = [Commit([factory.note(f"F/1/s/{i}", str(i))], expected_version=0) for i in range(5)]

    receipts = await log.append_atomic(commits)

    assert [r.sequence for r in receipts] == [2, 3, 4, 5, 6]
    assert [r.commit_id for r in receipts] == [c.commit_id for c in commits]
    assert [r.subject for r in receipts] == [f"rs.ev.F.1.t.s.{i}" for i in range(5)]


@pytest.mark.parametrize("expected_version", [None, 0])
async def test_retried_atomic_batch_returns_the_original_receipts(
    log: EventLog, expected_version: int | None
) -> None:
    """Sending the same batch again (a retry after a lost ack) returns its receipts, stores once."""
    commits = [
        Commit([factory.note(f"F/1/s/{i}", str(i))], expected_version=expected_version)
        for i in range(3)
    ]
    first = await log.append_atomic(commits)

    again = await log.append_atomic(commits)

    assert [r.sequence for r in again] == [r.sequence for r in first] == [1, 2, 3]
    assert all(r.duplicate for r in again)
    assert await message_count(log) == 3


async def test_atomic_batch_with_one_wrong_version_stores_nothing(log: EventLog) -> None:
    """One failed version check in an atomic batch stores none of it and raises ConflictError."""
    await log.append(factory.note("F/1/s/2", "existing"))
    commits = [Commit([factory.note(f"F/1/s/{i}", str(i))], expected_version=0) for i in range(5)]

    with pytest.raises(ConflictError):
        await log.append_atomic(commits)

    assert await log.stream_last_sequence() == 1
    assert await message_count(log) == 1


# -- counters ---------------------------------------------------------------------


async def test_increment_counts_atomically_under_concurrency(log: EventLog) -> None:
    """Concurrent increments of one counter return every value once."""
    values: list[int] = []

    async def bump() -> None:
        values.append(await log.increment("rs.ctr.test.x"))

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(bump)

    assert sorted(values) == list(range(1, 51))
    assert await log.increment("rs.ctr.test.x", by=10) == 60


# -- connecting and provisioning ----------------------------------------------------


async def test_provision_is_idempotent(nc: NATS, settings: Settings, log: EventLog) -> None:
    """Provisioning twice (or with a changed window) keeps the streams and their messages."""
    await log.append(factory.note("F/1", "kept"))

    await provision(nc, settings)
    await provision(nc, settings.replace(duplicate_window=10.0))

    info = await nc.jetstream().stream_info(log.subjects.events_stream)
    assert info.state.messages == 1
    assert info.config.duplicate_window == pytest.approx(10.0)
    assert (await log.append(factory.note("F/1", "more"))).sequence == 2


async def test_open_nats_accepts_comma_separated_urls(nats_url: str, settings: Settings) -> None:
    """A comma-joined URL list (as a cluster's url gives) connects."""
    connection = await open_nats(settings, url=f"{nats_url}, {nats_url}")
    try:
        assert connection.is_connected
    finally:
        await connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def plain_nats_url(tmp_path: Path) -> Iterator[str]:
    """A nats-server started without JetStream."""
    port = free_port()
    log_file = tmp_path / "plain.log"
    process = subprocess.Popen(
        [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port), "-l", str(log_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"plain nats-server did not start: {log_file}") from None
                time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def test_server_without_jetstream_raises_jetstream_disabled(
    plain_nats_url: str, tmp_path: Path
) -> None:
    """Connecting to a server running without JetStream raises JetStreamDisabled saying -js."""
    settings = Settings(nats_url=plain_nats_url, data_dir=tmp_path)

    with pytest.raises(JetStreamDisabled, match="-js"):
        await open_nats(settings)


async def test_nothing_listening_raises_unavailable_within_the_retry_budget(
    tmp_path: Path,
) -> None:
    """Connecting where no server listens raises Unavailable once the retry budget is spent."""
    settings = Settings(
        nats_url=f"nats://127.0.0.1:{free_port()}", data_dir=tmp_path, retry_budget=1.0
    )
    started = time.monotonic()

    with pytest.raises(Unavailable, match=r"cannot connect .* within 1s: .*Connect call failed"):
        await open_nats(settings)

    assert time.monotonic() - started < 5.0


async def test_connection_survives_a_server_restart(nats_server: NatsServer, log: EventLog) -> None:
    """After a clean restart the same EventLog reconnects and appends continue the stream."""
    first = await log.append(factory.note("F/1", "before"))
    await anyio.to_thread.run_sync(nats_server.restart)

    second = await log.append(factory.note("F/1", "after"), expected_version=first.sequence)

    assert second.sequence == first.sequence + 1


async def test_events_stream_allows_more_than_a_thousand_consumers(nats_url: str) -> None:
    """Over 1,000 consumers (watchers) fit on the events stream, past nats-server 2.15's default."""
    from nats.js.api import ConsumerConfig

    settings = Settings(nats_url=nats_url)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        js = nc.jetstream()

        async def add(i: int) -> None:
            config = ConsumerConfig(
                filter_subject=f"rs.ev.Watch.{i}.>", inactive_threshold=30, mem_storage=True
            )
            await js.add_consumer("RS_EVENTS", config)

        async with anyio.create_task_group() as tg:
            for i in range(1001):
                tg.start_soon(add, i)
        info = await js.stream_info("RS_EVENTS")
        assert info.state.consumer_count == 1001
    finally:
        await nc.close()


def test_header_reads_plain_and_list_valued_headers() -> None:
    """Header values come as strings, or as lists when nats-py uses fast_mail_parser."""
    from nats.aio.msg import Msg

    from runstate.engine._acks import header

    plain = Msg(_client=None, subject="s", headers={"Nats-Msg-Id": "abc"})  # type: ignore[arg-type]
    listed = Msg(_client=None, subject="s", headers={"Nats-Msg-Id": ["abc"]})  # type: ignore[arg-type]
    bare = Msg(_client=None, subject="s")  # type: ignore[arg-type]
    assert header(plain, "Nats-Msg-Id") == header(listed, "Nats-Msg-Id") == "abc"
    assert header(bare, "Nats-Msg-Id") is None
    assert header(plain, "Status") is None
