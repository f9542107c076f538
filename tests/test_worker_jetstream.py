"""The worker on JetStream: what only a real server shows (its duplicate window, its
heartbeat stream). The worker's logic is tested against the in-memory log in test_worker.py."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

from runstate.engine import (
    EventLog,
    Heartbeat,
    RunCreated,
    RunState,
    Settings,
    Writer,
)
from runstate.engine._events import decode_event

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(nats_url: str, tmp_path: Path) -> Settings:
    # a short duplicate window so a test can outlive it
    return Settings(
        nats_url=nats_url,
        data_dir=tmp_path / "data",
        user="tester",
        retry_budget=5.0,
        duplicate_window=1.0,
    )


@pytest.fixture
def writer(log: EventLog) -> Writer:
    return Writer(log)


async def run_created_count(log: EventLog) -> int:
    events = [event async for commit in log.read("rs.ev.*.*.r") for event in commit.events]
    return sum(isinstance(event, RunCreated) for event in events)


async def test_idempotency_key_outlives_the_duplicate_window(writer: Writer, log: EventLog) -> None:
    """After the duplicate window has passed, the key still returns the first run."""
    first = await writer.create_run("Train", idempotency_key="k")
    await first.start()
    await anyio.sleep(1.5)  # duplicate_window is 1 s

    again = await writer.create_run("Train", idempotency_key="k")

    assert again.pathspec == first.pathspec
    assert again.state is RunState.RUNNING
    assert again.version == first.version
    assert await run_created_count(log) == 1


async def test_idempotency_key_after_the_window_on_an_untouched_run(
    writer: Writer, log: EventLog
) -> None:
    """A repeat after the window on a run with only its creation returns that run."""
    first = await writer.create_run("Train", idempotency_key="k")
    await anyio.sleep(1.5)

    again = await writer.create_run("Train", idempotency_key="k")

    assert again.pathspec == first.pathspec
    assert again.version == first.version
    assert await run_created_count(log) == 1


async def test_heartbeats_keep_only_the_latest_per_subject(
    writer: Writer, nc: NATS, log: EventLog
) -> None:
    """Three beats of one task leave one message on its heartbeat subject; none on the log."""
    run = await writer.create_run("Train")
    task = await run.create_task("train", start=True)
    before = await log.stream_last_sequence()

    for _ in range(3):
        await task.heartbeat()
    await run.heartbeat()
    await nc.flush()

    js = nc.jetstream()
    stream = writer.subjects.heartbeats_stream
    subject = "rs.hb.Train.1.t.train.1"
    # beats are published without an ack: wait until the stream has stored all four
    with anyio.fail_after(5):
        while (await js.stream_info(stream)).state.last_seq < 4:  # noqa: ASYNC110 - polls
            await anyio.sleep(0.01)
    info = await js.stream_info(stream, subjects_filter=subject)
    assert info.state.subjects == {subject: 1}
    assert info.state.messages == 2  # the task's and the run's
    assert info.state.last_seq == 4
    last = await js.get_last_msg(stream, subject)
    beat = decode_event(last.data or b"")
    assert isinstance(beat, Heartbeat) and beat.pathspec == task.pathspec
    assert await log.stream_last_sequence() == before
