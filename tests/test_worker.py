"""The worker API on a real nats-server: runs, tasks, transitions, tags, heartbeats, races."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anyio
import pytest

from runstate.engine import (
    ArtifactsRecorded,
    Event,
    EventLog,
    Heartbeat,
    MemoryEventLog,
    MetadataRecorded,
    Receipt,
    RunCreated,
    RunState,
    RunStateChanged,
    Settings,
    TaskAttemptStateChanged,
    TaskCreated,
    TaskHandle,
    TaskState,
    Writer,
    encode_commit,
)
from runstate.engine._events import decode_event
from runstate.engine.errors import (
    ConflictError,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidEvent,
    InvalidName,
    NotFound,
    PayloadTooLarge,
)
from runstate.engine.testing import EventFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", user="tester", retry_budget=5.0)


@pytest.fixture
def log(settings: Settings) -> MemoryEventLog:
    """The in-memory log: the worker's logic needs no server (its JetStream side is in
    test_worker_jetstream.py and the log contract)."""
    return MemoryEventLog(settings)


@pytest.fixture
def writer(log: EventLog) -> Writer:
    return Writer(log)


async def events_of(log: EventLog, subject_filter: str) -> list[Event]:
    return [event async for commit in log.read(subject_filter) for event in commit.events]


async def types_of(log: EventLog, subject_filter: str) -> list[str]:
    return [event.type for event in await events_of(log, subject_filter)]


async def run_created_count(log: EventLog) -> int:
    return sum(isinstance(e, RunCreated) for e in await events_of(log, "rs.ev.*.*.r"))


# -- races ------------------------------------------------------------------------


async def test_two_writers_racing_on_one_task_version_one_wins(
    writer: Writer, log: EventLog
) -> None:
    """Two handles at the same version both transition: one wins, the other gets ConflictError."""
    run = await writer.create_run("Race")
    created = await run.create_task("train")
    first = await writer.task(created.pathspec)
    second = await writer.task(created.pathspec)
    assert first.version == second.version == created.version
    before = await log.stream_last_sequence()
    outcomes: list[Receipt | ConflictError] = []

    async def start(handle: TaskHandle) -> None:
        try:
            outcomes.append(await handle.start())
        except ConflictError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(start, first)
        group.start_soon(start, second)

    conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
    receipts = [o for o in outcomes if isinstance(o, Receipt)]
    assert len(conflicts) == 1 and len(receipts) == 1
    assert conflicts[0].current_version == receipts[0].sequence
    assert conflicts[0].expected_version == created.version
    assert await log.stream_last_sequence() == before + 1
    reloaded = await writer.task(created.pathspec)
    assert reloaded.state is TaskState.RUNNING
    assert reloaded.version == receipts[0].sequence


async def test_concurrent_run_creation_gets_distinct_consecutive_ids(
    writer: Writer, log: EventLog
) -> None:
    """64 concurrent create_run calls get the ids 1..64, one each."""
    ids: list[str] = []

    async def create() -> None:
        ids.append((await writer.create_run("Race")).id)

    async with anyio.create_task_group() as group:
        for _ in range(64):
            group.start_soon(create)

    assert sorted(ids, key=int) == [str(i) for i in range(1, 65)]
    assert await run_created_count(log) == 64


async def test_given_run_id_that_exists_raises_conflict(writer: Writer, log: EventLog) -> None:
    """Creating a run with an explicit id that exists raises ConflictError, appends nothing."""
    await writer.create_run("Train", run_id="nightly-1")
    before = await log.stream_last_sequence()

    with pytest.raises(ConflictError):
        await writer.create_run("Train", run_id="nightly-1")

    assert await log.stream_last_sequence() == before


async def test_allocated_task_id_skips_an_id_given_explicitly(
    writer: Writer, log: EventLog
) -> None:
    """A task id taken explicitly is skipped by allocation; giving it again raises ConflictError."""
    run = await writer.create_run("Train")
    await run.create_task("train", "1")

    allocated = await run.create_task("train")
    with pytest.raises(ConflictError):
        await run.create_task("train", "1")

    assert allocated.id == "2"
    assert len(await log.read_entity(task_subject("Train/1/train/1"))) == 1


# -- idempotency keys ---------------------------------------------------------------


async def test_idempotency_key_returns_the_same_run(writer: Writer, log: EventLog) -> None:
    """create_run twice with one idempotency key returns one run."""
    first = await writer.create_run("Train", idempotency_key="k", parameters={"lr": 0.1})
    again = await writer.create_run("Train", idempotency_key="k", parameters={"lr": 0.1})

    assert again.pathspec == first.pathspec
    assert again.parameters == {"lr": 0.1}
    assert await run_created_count(log) == 1
    other_flow = await writer.create_run("Other", idempotency_key="k")
    assert other_flow.flow == "Other"


async def test_concurrent_creators_with_one_key_create_one_run(
    writer: Writer, log: EventLog
) -> None:
    """Ten concurrent create_run calls with one key all return the same single run."""
    paths: list[str] = []

    async def create() -> None:
        paths.append((await writer.create_run("Train", idempotency_key="k")).pathspec)

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(create)

    assert len(set(paths)) == 1
    assert await run_created_count(log) == 1


async def test_idempotency_key_recorded_by_a_creator_that_died_creates_the_run_once(
    writer: Writer, log: EventLog
) -> None:
    """A key recorded without its run.created (the creator died) creates that run exactly once."""
    # what _create_once does before it appends: take an id, record the creation under the key
    rid = str(await log.increment(writer.subjects.run_counter("Train")))
    event = EventFactory("dead-worker").run_created(
        rid, idempotency_key="k", user="dead", parameters={}, tags=[], system_tags=[]
    )
    await log.claim_key("Train\0k", encode_commit([event]))
    assert await run_created_count(log) == 0

    first = await writer.create_run("Train", idempotency_key="k")
    again = await writer.create_run("Train", idempotency_key="k")

    assert first.pathspec == again.pathspec == f"Train/{rid}"
    assert await run_created_count(log) == 1
    loaded = await writer.run(f"Train/{rid}")
    assert loaded.state is RunState.PENDING


# -- refusals -----------------------------------------------------------------------


async def test_illegal_transitions_raise_and_append_nothing(writer: Writer, log: EventLog) -> None:
    """pending->completed for a task and completed->running for a run are refused before sending."""
    run = await writer.create_run("Train")
    task = await run.create_task("train")
    await run.start()
    await run.complete()
    before = await log.stream_last_sequence()

    with pytest.raises(IllegalTransition) as caught:
        await task.complete()
    assert (caught.value.from_state, caught.value.to_state) == ("pending", "completed")
    with pytest.raises(IllegalTransition, match="the run has finished"):
        await run.start()
    with pytest.raises(IllegalTransition):
        await run.resume()  # a completed run cannot be resumed
    with pytest.raises(IllegalTransition):
        await task.retry()  # attempt 0 is still pending
    with pytest.raises(IllegalTransition):
        await writer.create_run("Train", state=RunState.COMPLETED)

    assert await log.stream_last_sequence() == before
    assert task.state is TaskState.PENDING
    assert run.state is RunState.COMPLETED


async def test_failed_run_resumes_only_explicitly(writer: Writer) -> None:
    """failed -> running needs resume; with it the run runs again."""
    run = await writer.create_run("Train")
    await run.start()
    await run.fail("boom")

    with pytest.raises(IllegalTransition, match="resume=True"):
        await run.start()
    await run.resume()

    assert (await writer.run(run.pathspec)).state is RunState.RUNNING


async def test_bad_names_raise_invalid_name_and_append_nothing(
    writer: Writer, log: EventLog
) -> None:
    """Flow 'a.b', step 'x y', task id '*' and run id '>' are refused before anything is sent."""
    run = await writer.create_run("Train")
    before = await log.stream_last_sequence()

    with pytest.raises(InvalidName):
        await writer.create_run("a.b")
    with pytest.raises(InvalidName):
        await writer.create_run("Train", run_id=">")
    with pytest.raises(InvalidName):
        await run.create_task("x y")
    with pytest.raises(InvalidName):
        await run.create_task("train", "*")
    with pytest.raises(InvalidName):
        await run.create_task("train", parents=["Train/1/start"])
    with pytest.raises(InvalidName):
        await writer.run("Train/1/train")

    assert await log.stream_last_sequence() == before


async def test_oversized_metadata_raises_payload_too_large(writer: Writer, log: EventLog) -> None:
    """A 2 MB metadata value is over max_payload: PayloadTooLarge, nothing appended."""
    run = await writer.create_run("Train")
    task = await run.create_task("train", start=True)
    before = await log.stream_last_sequence()

    with pytest.raises(PayloadTooLarge):
        await task.record_metadata(blob="x" * (2 * 1024 * 1024))

    assert await log.stream_last_sequence() == before


async def test_loading_a_missing_run_or_task_raises_not_found(writer: Writer) -> None:
    """Writer.run/Writer.task of something never created raise NotFound."""
    with pytest.raises(NotFound):
        await writer.run("Train/404")
    with pytest.raises(NotFound):
        await writer.task("Train/404/train/1")


# -- fan-out --------------------------------------------------------------------------


async def test_foreach_creates_tasks_atomically_in_consecutive_sequences(
    writer: Writer, log: EventLog
) -> None:
    """A foreach of 100 creates 100 pending tasks with indexes 0..99 in consecutive sequences."""
    run = await writer.create_run("Train")
    before = await log.stream_last_sequence()

    tasks = await run.foreach("train", 100)

    assert [t.version for t in tasks] == list(range(before + 1, before + 101))
    assert [t.index for t in tasks] == list(range(100))
    assert len({t.id for t in tasks}) == 100
    assert all(t.state is TaskState.PENDING for t in tasks)
    events = await events_of(log, "rs.ev.Train.1.t.train.*")
    created = [e for e in events if isinstance(e, TaskCreated)]
    assert len(created) == len(events) == 100
    assert [e.payload.foreach_index for e in created] == list(range(100))
    assert created[7].payload.foreach_stack[0].num_splits == 100
    more = await run.create_task("train")
    assert more.id == "101"  # the counter moved past the fan-out


# -- the worker blocks ----------------------------------------------------------------


async def test_running_run_with_a_task_block_appends_the_expected_events(
    writer: Writer, log: EventLog
) -> None:
    """running() and task() produce created, running, artifacts, completed events in order."""
    run = await writer.create_run("Train", parameters={"lr": 0.1})
    async with run.running():
        async with run.task("train", index=3) as task:
            await task.save(accuracy=0.93)

    assert await types_of(log, "rs.ev.Train.1.>") == [
        "run.created",
        "run.state_changed",
        "task.created",
        "task.state_changed",
        "task.artifacts_recorded",
        "task.state_changed",
        "run.state_changed",
    ]
    events = await events_of(log, "rs.ev.Train.1.>")
    assert [e.payload.state for e in events if isinstance(e, RunStateChanged)] == [
        RunState.RUNNING,
        RunState.COMPLETED,
    ]
    assert [e.payload.state for e in events if isinstance(e, TaskAttemptStateChanged)] == [
        TaskState.RUNNING,
        TaskState.COMPLETED,
    ]
    created = next(e for e in events if isinstance(e, TaskCreated))
    assert created.payload.foreach_index == 3
    saved = next(e for e in events if isinstance(e, ArtifactsRecorded))
    assert saved.payload.artifacts[0].inline == 0.93
    assert saved.pathspec == task.pathspec == "Train/1/train/1"
    assert run.state is RunState.COMPLETED and task.state is TaskState.COMPLETED


async def test_raising_block_fails_the_task_and_the_run_and_reraises(
    writer: Writer, log: EventLog
) -> None:
    """An exception in the block fails the attempt (type, message, traceback) and the run."""
    run = await writer.create_run("Train")

    with pytest.raises(ValueError, match="boom"):
        async with run.running():
            async with run.task("train") as task:
                raise ValueError("boom")

    events = await events_of(log, "rs.ev.Train.1.>")
    failed = [e for e in events if isinstance(e, TaskAttemptStateChanged)][-1]
    assert failed.payload.state is TaskState.FAILED
    assert failed.attempt == 0
    assert failed.payload.exception is not None
    assert failed.payload.exception.type == "ValueError"
    assert failed.payload.exception.message == "boom"
    assert 'raise ValueError("boom")' in (failed.payload.exception.traceback or "")
    run_failed = [e for e in events if isinstance(e, RunStateChanged)][-1]
    assert run_failed.payload.state is RunState.FAILED
    assert run_failed.payload.message == "ValueError: boom"
    assert (await writer.task(task.pathspec)).state is TaskState.FAILED
    assert (await writer.run(run.pathspec)).state is RunState.FAILED


async def test_cancelled_block_cancels_the_task(writer: Writer) -> None:
    """A block cancelled from outside marks the attempt cancelled, and cancellation propagates."""
    run = await writer.create_run("Train")
    await run.start()
    with anyio.move_on_after(0.2) as scope:
        async with run.task("train") as task:
            await anyio.sleep_forever()

    assert scope.cancelled_caught
    assert (await writer.task(task.pathspec)).state is TaskState.CANCELLED


async def test_retry_opens_the_next_attempt(writer: Writer, log: EventLog) -> None:
    """After a failed attempt retry() opens attempt 1 pending; its block completes it."""
    run = await writer.create_run("Train")
    task = await run.create_task("train", start=True)
    await task.fail("flaky")

    receipt = await task.retry()
    assert (task.attempt, task.state) == (1, TaskState.PENDING)
    async with task.attempting(heartbeat=False):
        await task.record_metadata(host="n1")

    reloaded = await writer.task(task.pathspec)
    assert (reloaded.attempt, reloaded.state) == (1, TaskState.COMPLETED)
    changes = [
        (e.attempt, e.payload.state, e.payload.label)
        for e in await events_of(log, task_subject(task.pathspec))
        if isinstance(e, TaskAttemptStateChanged)
    ]
    assert changes == [
        (0, TaskState.RUNNING, None),
        (0, TaskState.FAILED, None),
        (1, TaskState.PENDING, "AwaitingRetry"),
        (1, TaskState.RUNNING, None),
        (1, TaskState.COMPLETED, None),
    ]
    events = await events_of(log, task_subject(task.pathspec))
    metadata = [e for e in events if isinstance(e, MetadataRecorded)]
    assert metadata[0].attempt == 1
    assert receipt.sequence < reloaded.version
    with pytest.raises(IllegalTransition):
        await task.retry()  # attempt 1 completed


def task_subject(pathspec: str) -> str:
    flow, run, step, task = pathspec.split("/")
    return f"rs.ev.{flow}.{run}.t.{step}.{task}"


# -- tags ---------------------------------------------------------------------------------


async def test_tags_add_remove_replace_and_system_tags_are_refused(
    writer: Writer, log: EventLog
) -> None:
    """User tags change by add/remove/replace; a system tag cannot be touched (InvalidName)."""
    run = await writer.create_run("Train", tags=["a"], system_tags=["runtime:local"])
    assert run.system_tags == {"user:tester", "runtime:local"}

    await run.add_tags("b", "c")
    await run.remove_tag("a")
    assert run.tags == {"b", "c"}
    await run.replace_tags(["x", "y"])
    await run.add_tag("z")
    assert run.tags == {"x", "y", "z"}
    before = await log.stream_last_sequence()
    for change in (
        run.add_tag("user:tester"),
        run.remove_tag("runtime:local"),
        run.replace_tags(["user:tester"]),
        run.add_tag(""),
    ):
        with pytest.raises(InvalidName):
            await change

    assert await log.stream_last_sequence() == before
    reloaded = await writer.run(run.pathspec)
    assert reloaded.tags == {"x", "y", "z"}
    assert reloaded.system_tags == {"user:tester", "runtime:local"}


# -- heartbeats -------------------------------------------------------------------------


# -- loading and conflicts -------------------------------------------------------------


async def test_loading_handles_gives_state_and_version(writer: Writer) -> None:
    """Writer.run and Writer.task rebuild state, tags, attempt, index and version from the log."""
    run = await writer.create_run("Train", tags=["a"])
    await run.start()
    await run.add_tag("b")
    task = await run.create_task("train", 5, index=2, start=True)
    await task.fail("x")
    await task.retry()

    loaded_run = await writer.run(run.pathspec)
    loaded_task = await writer.task(task.pathspec)

    assert (loaded_run.state, loaded_run.tags, loaded_run.version) == (
        RunState.RUNNING,
        {"a", "b"},
        run.version,
    )
    assert (loaded_task.attempt, loaded_task.state, loaded_task.index, loaded_task.version) == (
        1,
        TaskState.PENDING,
        2,
        task.version,
    )
    assert loaded_task.id == "5"


async def test_commuting_ops_retry_after_a_concurrent_write_but_transitions_conflict(
    writer: Writer, log: EventLog
) -> None:
    """save, record_metadata and add_tags reload and retry on a stale version; transitions raise."""
    run = await writer.create_run("Train")
    task = await run.create_task("train", start=True)
    other_task = await writer.task(task.pathspec)
    other_run = await writer.run(run.pathspec)

    bumped = await other_task.record_metadata(by="other")
    saved = await task.save(loss=0.5)
    assert saved.sequence > bumped.sequence
    await other_task.record_metadata(by="other again")
    noted = await task.record_metadata(by="me")
    assert task.version == noted.sequence

    await other_run.add_tag("theirs")
    await run.add_tags("mine")
    assert run.tags == {"theirs", "mine"}
    assert (await writer.run(run.pathspec)).tags == {"theirs", "mine"}

    stale = await writer.task(task.pathspec)
    latest = await task.record_metadata(by="me again")
    before = await log.stream_last_sequence()
    with pytest.raises(ConflictError) as caught:
        await stale.complete()
    assert caught.value.current_version == latest.sequence
    assert await log.stream_last_sequence() == before
    stale_run = await writer.run(run.pathspec)
    await run.start()
    with pytest.raises(ConflictError):
        await stale_run.start()


async def test_heartbeats_go_beside_the_log_and_keep_the_latest(
    writer: Writer, log: MemoryEventLog
) -> None:
    """Beats of a task and its run leave the latest of each beside the log, none in it."""
    run = await writer.create_run("Train")
    task = await run.create_task("train", start=True)
    before = await log.stream_last_sequence()
    for _ in range(3):
        await task.heartbeat()
    await run.heartbeat()
    assert set(log.heartbeats) == {"rs.hb.Train.1.t.train.1", "rs.hb.Train.1.r"}
    beat = decode_event(log.heartbeats["rs.hb.Train.1.t.train.1"])
    assert isinstance(beat, Heartbeat) and beat.pathspec == task.pathspec
    assert await log.stream_last_sequence() == before


async def test_an_idempotency_key_repeated_with_other_parameters_is_refused(
    writer: Writer, log: EventLog
) -> None:
    """A key reused with other parameters raises IdempotencyKeyReused naming key and values."""
    first = await writer.create_run("Train", parameters={"lr": 0.1, "n": 1}, idempotency_key="k")
    same = await writer.create_run("Train", parameters={"n": 1, "lr": 0.1}, idempotency_key="k")
    assert same.pathspec == first.pathspec
    with pytest.raises(IdempotencyKeyReused) as info:
        await writer.create_run("Train", parameters={"lr": 0.2, "n": 1}, idempotency_key="k")
    assert "'k'" in info.value.message and "lr" in info.value.message
    assert "n," not in info.value.message  # only the differing ones are named
    with pytest.raises(IdempotencyKeyReused, match="run_id"):
        await writer.create_run(
            "Train", run_id="other", parameters={"lr": 0.1, "n": 1}, idempotency_key="k"
        )
    assert await run_created_count(log) == 1


async def test_a_foreach_too_large_for_one_batch_is_refused_before_any_id_is_taken(
    writer: Writer, log: EventLog
) -> None:
    """foreach(20000) raises PayloadTooLarge at once: no task ids consumed, nothing appended."""
    run = await writer.create_run("Train")
    before = await log.stream_last_sequence()
    with pytest.raises(PayloadTooLarge, match="at most 1000"):
        await run.foreach("train", 20_000)
    assert await log.stream_last_sequence() == before
    tasks = await run.foreach("train", 2)
    assert [task.id for task in tasks] == ["1", "2"]


async def test_a_parent_task_from_another_run_is_refused_at_write_time(
    writer: Writer, log: EventLog
) -> None:
    """Parents are tasks of the task's own run: another run's task raises InvalidName."""
    one = await writer.create_run("Train")
    other = await writer.create_run("Train")
    parent = await one.create_task("start")
    before = await log.stream_last_sequence()
    with pytest.raises(InvalidName, match="another run"):
        await other.create_task("train", parents=[parent])
    with pytest.raises(InvalidName, match="another run"):
        await other.foreach("train", 3, parents=[parent.pathspec])
    assert await log.stream_last_sequence() == before
    child = await one.create_task("train", parents=[parent])
    assert child.pathspec == "Train/1/train/2"


async def test_bad_values_are_refused_before_any_id_is_taken(writer: Writer, log: EventLog) -> None:
    """NaN parameters, a naive schedule, bad environment info or NaN metadata raise
    InvalidEvent with nothing appended and no id consumed."""
    with pytest.raises(InvalidEvent, match=r"parameters\.x"):
        await writer.create_run("Train", parameters={"x": float("nan")})
    with pytest.raises(InvalidEvent, match="timezone"):
        await writer.create_run("Train", scheduled_at=datetime(2026, 1, 1))
    run = await writer.create_run("Train")
    assert run.id == "1"
    with pytest.raises(InvalidEvent, match="environment_info"):
        await run.create_task("train", environment_info={"gpu": float("inf")})
    task = await run.create_task("train", start=True)
    assert task.id == "1"
    before = await log.stream_last_sequence()
    with pytest.raises(InvalidEvent, match="metadata x"):
        await task.record_metadata(x=float("nan"))
    assert await log.stream_last_sequence() == before
