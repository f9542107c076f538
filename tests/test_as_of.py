"""Time travel with the in-memory log: ``as_of`` equals what a watcher held at each sequence.

The property writes random sequences of run and task events, legal and
illegal (the reducers record those as rejected), with tags, metadata,
artifacts and retries, and commits the projector dead-letters. Watches of
the run, of one step and of one task record every change; then the run,
the step's tasks and the task are read ``as_of`` every sequence of the log,
in a random order, and must equal what each watch held at that sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstate.client import BadFilter, Change, Client, NotFound, NotInNamespace, connect
from runstate.client.testing import in_memory
from runstate.engine._event_factory import EventFactory
from runstate.engine._events import Event, encode_commit
from runstate.engine._memory import MemoryEventLog
from runstate.engine._states import RunState, TaskState
from runstate.projections import _as_of
from runstate.projections._schema import task_order
from runstate.projections._views import RunView, TaskView

pytestmark = pytest.mark.anyio

RUN = "Train/1"
TASKS = ("start/1", "train/2", "train/3")
WATCHED_TASK = f"{RUN}/train/2"
WATCHED_STEP = "train"

factory = EventFactory()


# -- the writes ------------------------------------------------------------------

_states = st.sampled_from(list(TaskState))
_attempts = st.one_of(st.none(), st.integers(min_value=0, max_value=2))
_tasks = st.sampled_from(TASKS)

_ops = st.one_of(
    st.tuples(st.just("task_created"), _tasks, st.lists(_tasks, max_size=2)),
    st.tuples(st.just("task_state"), _tasks, _states, _attempts),
    st.tuples(st.just("run_state"), st.sampled_from(list(RunState)), st.booleans()),
    st.tuples(
        st.just("run_tags"),
        st.lists(st.sampled_from(["a", "b", "c"]), max_size=2),
        st.lists(st.sampled_from(["a", "b"]), max_size=1),
    ),
    st.tuples(st.just("artifacts"), _tasks, _attempts),
    st.tuples(st.just("metadata"), _tasks, _attempts),
    st.tuples(st.just("lifecycle"), _tasks, st.booleans()),
    st.tuples(st.just("foreign"), st.sampled_from(["garbage", "wrong_subject", "other_run"])),
)


def _events(op: tuple[object, ...]) -> list[Event]:
    """The events of one commit for ``op`` (several for a lifecycle)."""
    kind = op[0]
    if kind == "task_created":
        task, parents = str(op[1]), op[2]
        step, task_id = task.split("/")
        return [
            factory.task_created(
                RUN,
                step,
                task_id,
                parents=[f"{RUN}/{p}" for p in parents if p != task],  # type: ignore[attr-defined]
            )
        ]
    if kind == "task_state":
        return [factory.task_state(f"{RUN}/{op[1]}", op[3], op[2])]  # type: ignore[arg-type]
    if kind == "run_state":
        return [factory.run_state(RUN, op[1], resume=op[2])]  # type: ignore[arg-type]
    if kind == "run_tags":
        return [factory.run_tags(RUN, add=op[1], remove=op[2])]  # type: ignore[arg-type]
    if kind == "artifacts":
        return [factory.artifacts(f"{RUN}/{op[1]}", op[2], 0.7)]  # type: ignore[arg-type]
    if kind == "metadata":
        return [factory.metadata(f"{RUN}/{op[1]}", op[2], [("host", "gpu")])]  # type: ignore[arg-type]
    if kind == "lifecycle":  # running, then failed and retried, in one commit
        pathspec = f"{RUN}/{op[1]}"
        events = [factory.task_state(pathspec, 0, TaskState.RUNNING)]
        if op[2]:
            events += [
                factory.task_state(pathspec, 0, TaskState.FAILED, message="boom"),
                factory.task_state(pathspec, 1, TaskState.PENDING, label="AwaitingRetry"),
            ]
        return events
    raise AssertionError(op)


async def _write(log: MemoryEventLog, op: tuple[object, ...]) -> int:
    """Append ``op`` as one commit (or put foreign bytes); its sequence."""
    subjects = log.subjects
    if op[0] == "foreign":
        if op[1] == "garbage":
            return log.put_raw(subjects.task("Train", "1", "train", "2"), b"[{not json")
        if op[1] == "wrong_subject":  # a task's event on the run's subject
            event = factory.metadata(WATCHED_TASK, 0, [("sneaky", "yes")])
            return log.put_raw(subjects.run("Train", "1"), encode_commit([event]))
        return (await log.append(factory.run_created("2"))).sequence
    return (await log.append(_events(op))).sequence


# -- what the watches held -------------------------------------------------------


@dataclass
class Held:
    """Every change one watch yielded, to tell what it held at any sequence."""

    pathspec: str
    changes: list[Change] = field(default_factory=list)
    ready: anyio.Event = field(default_factory=anyio.Event)
    reached: anyio.Event = field(default_factory=anyio.Event)
    until: int = 2**62

    async def follow(self, client: Client) -> None:
        async with client.watch(self.pathspec) as changes:
            async for change in changes:
                self.changes.append(change)
                self.ready.set()
                if change.sequence >= self.until:
                    self.reached.set()

    async def wait_for(self, sequence: int) -> None:
        """Return once the watch has yielded a change at ``sequence`` or later."""
        self.until = sequence
        if not self.changes or self.changes[-1].sequence < sequence:
            await self.reached.wait()

    def at(self, sequence: int) -> dict[tuple[str, str], RunView | TaskView]:
        """The views held after every commit up to ``sequence``."""
        held: dict[tuple[str, str], RunView | TaskView] = {}
        for change in self.changes:
            if change.sequence > sequence:
                break
            held = dict(change.views)
        return held


async def _as_of_views(
    client: Client, sequence: int
) -> tuple[RunView | None, TaskView | None, list[TaskView] | None]:
    """The run, the watched task and the watched step's tasks, read ``as_of`` ``sequence``."""
    try:
        run = await client.run(RUN, as_of=sequence)
    except NotFound:
        return None, None, None
    try:
        task = (await client.task(WATCHED_TASK, as_of=sequence)).view
    except NotFound:
        task = None
    try:
        step = await run.step(WATCHED_STEP)
    except NotFound:
        tasks = None
    else:
        tasks = [t.view for t in await step.tasks()]
    return run.view, task, tasks


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(
        st.sampled_from([("foreign", "other_run"), ("foreign", "garbage")]), max_size=2
    ),
    ops=st.lists(_ops, min_size=1, max_size=25),
    snapshot_every=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_as_of_equals_what_a_watcher_held_at_every_sequence(
    monkeypatch: pytest.MonkeyPatch,
    before: list[tuple[object, ...]],
    ops: list[tuple[object, ...]],
    snapshot_every: int,
    seed: int,
) -> None:
    """``as_of`` every sequence equals the views the run, step and task watches held then."""
    monkeypatch.setattr(_as_of, "SNAPSHOT_EVERY", snapshot_every)
    shuffle = random.Random(seed)

    async def scenario() -> None:
        async with in_memory() as every_namespace:
            client = every_namespace.with_namespace(None)
            log = client.log
            assert isinstance(log, MemoryEventLog)
            watches = [Held(RUN), Held(f"{RUN}/{WATCHED_STEP}"), Held(WATCHED_TASK)]
            # every watch ends on a change at the last sequence: a tag on the run and
            # metadata of the watched task, created at the end if it was not before
            async with anyio.create_task_group() as tg:
                for held in watches:
                    tg.start_soon(held.follow, client)
                for held in watches:
                    await held.ready.wait()
                early: dict[int, object] = {}
                for op in before:
                    await _write(log, op)
                await log.append(factory.run_created("1", tags=["seen"]))
                for op in ops:
                    sequence = await _write(log, op)
                    if shuffle.random() < 0.2:  # a read mid-way: the timeline reads on later
                        early[sequence] = await _as_of_views(client, sequence)
                await log.append(factory.task_created(RUN, "train", "2"))
                tagged = (await log.append(factory.run_tags(RUN, add=["the-end"]))).sequence
                last = (
                    await log.append(factory.metadata(WATCHED_TASK, None, [("end", "1")]))
                ).sequence
                with anyio.fail_after(5):
                    for held, end in zip(watches, (tagged, last, last), strict=True):
                        await held.wait_for(end)
                tg.cancel_scope.cancel()
            run_watch, step_watch, task_watch = watches
            sequences = list(range(last + 1))
            shuffle.shuffle(sequences)
            for sequence in sequences:
                run, task, tasks = await _as_of_views(client, sequence)
                assert run == run_watch.at(sequence).get(("run", RUN)), sequence
                assert task == task_watch.at(sequence).get(("task", WATCHED_TASK)), sequence
                held_tasks = sorted(
                    (v for k, v in step_watch.at(sequence).items() if isinstance(v, TaskView)),
                    key=task_order,
                )
                if tasks is not None:
                    assert tasks == held_tasks, sequence
                else:
                    assert held_tasks == [], sequence
                if sequence in early:
                    assert early[sequence] == (run, task, tasks), sequence
            # and the latest moment is what the replica stores
            latest = await client.run(RUN, after=last)
            assert (await client.run(RUN, as_of=last)).view == latest.view

    anyio.run(scenario)


# -- navigation and errors ---------------------------------------------------------


async def _small_run(client: Client) -> dict[str, int]:
    """A run with a start task and a retried train task; the sequences of its steps."""
    log = client.log
    marks: dict[str, int] = {}
    marks["created"] = (await log.append(factory.run_created("1", tags=["x"]))).sequence
    await log.append(factory.run_state(RUN, RunState.RUNNING))
    for event in factory.task_lifecycle("1", "start", "1"):
        marks["start"] = (await log.append(event)).sequence
    marks["train_created"] = (
        await log.append(factory.task_created("1", "train", "2", 0, 1, [f"{RUN}/start/1"]))
    ).sequence
    await log.append(factory.task_state(f"{RUN}/train/2", 0, TaskState.RUNNING))
    marks["failed"] = (
        await log.append(factory.task_state(f"{RUN}/train/2", 0, TaskState.FAILED))
    ).sequence
    await log.append(factory.task_state(f"{RUN}/train/2", 1, TaskState.PENDING))
    await log.append(factory.task_state(f"{RUN}/train/2", 1, TaskState.RUNNING))
    marks["done"] = (
        await log.append(factory.task_state(f"{RUN}/train/2", 1, TaskState.COMPLETED))
    ).sequence
    return marks


async def test_navigation_from_an_as_of_object_stays_at_its_moment() -> None:
    """Steps, tasks, parents and children reached from an ``as_of`` run are of its moment."""
    async with in_memory() as every_namespace:
        client = every_namespace.with_namespace(None)
        marks = await _small_run(client)
        run = await client.run(RUN, as_of=marks["failed"])
        assert run.as_of == marks["failed"] and run.as_of_sequence == marks["failed"]
        assert [step.id for step in await run.steps()] == ["start", "train"]
        train = await run["train"]
        assert train.counts == {"failed": 1} and train.as_of == marks["failed"]
        (task,) = await train.tasks()
        assert task.attempt == 0 and task.state is TaskState.FAILED
        assert [t.state for t in await train.tasks(state="failed")] == [TaskState.FAILED]
        assert await train.tasks(state="completed") == []
        with pytest.raises(BadFilter, match="unknown task state"):
            await train.tasks(state="sleeping")
        (parent,) = await task.parent_tasks()
        assert parent.pathspec == f"{RUN}/start/1" and parent.as_of == marks["failed"]
        assert [c.pathspec for c in await parent.child_tasks()] == [task.pathspec]
        assert (await train["2"]).state is TaskState.FAILED
        now = await run.refresh()
        assert now.as_of is None and (await client.task(task.pathspec)).attempt == 1
        before_train = await client.run(RUN, as_of=marks["start"])
        with pytest.raises(NotFound, match="did not exist at sequence"):
            await before_train["train"]
        with pytest.raises(NotFound, match="had no attempt 1"):
            await client.task(task.pathspec, attempt=1, as_of=marks["failed"])
        retried = await client.task(task.pathspec, attempt=0, as_of=marks["done"])
        assert retried.state is TaskState.FAILED and retried.view.attempt == 1


async def test_as_of_a_time_is_the_commits_stored_by_then() -> None:
    """A time reads the commits the log had stored by then; its sequence is reported."""
    async with in_memory() as every_namespace:
        client = every_namespace.with_namespace(None)
        await client.log.append(factory.run_created("1"))
        await anyio.sleep(0.02)
        middle = datetime.now(UTC)
        await anyio.sleep(0.02)
        await client.log.append(factory.run_state(RUN, RunState.RUNNING))
        run = await client.run(RUN, as_of=middle)
        assert run.state is RunState.PENDING
        assert run.as_of == middle and run.as_of_sequence == 1
        later = await client.run(RUN, as_of=datetime.now(UTC))
        assert later.state is RunState.RUNNING
        with pytest.raises(NotFound, match="did not exist yet at"):
            await client.run(RUN, as_of=middle - timedelta(hours=1))


async def test_a_run_that_never_existed_is_not_found() -> None:
    """A run with no commit at all is ``NotFound``, saying it does not exist."""
    async with in_memory() as every_namespace:
        client = every_namespace.with_namespace(None)
        await client.log.append(factory.run_created("1"))
        with pytest.raises(NotFound, match="Train/9 does not exist"):
            await client.run("Train/9", as_of=1)
        with pytest.raises(NotFound, match="did not exist yet at sequence 0"):
            await client.run(RUN, as_of=0)


@pytest.mark.parametrize(
    "as_of",
    [datetime(2026, 1, 1), "5", 1.5, True, -1],
)
async def test_bad_as_of_values_are_refused_before_anything_is_read(as_of: object) -> None:
    """A naive datetime, a string, a float, a bool or a negative number is ``BadFilter``."""
    async with in_memory() as client:
        with pytest.raises(BadFilter, match=r"as_of|aware datetime"):
            await client.run(RUN, as_of=as_of)  # type: ignore[arg-type]


async def test_as_of_and_after_together_are_refused() -> None:
    """``as_of`` with ``after`` is refused: one reads the log, the other waits for a replica."""
    async with in_memory() as client:
        with pytest.raises(BadFilter, match="do not go together"):
            await client.task(f"{RUN}/start/1", as_of=1, after=1)


async def test_as_of_keeps_the_namespace_of_the_moment() -> None:
    """A run outside the client's namespace at that moment is ``NotInNamespace``."""
    async with in_memory() as client:
        await client.log.append(factory.run_created("1"))
        with pytest.raises(NotInNamespace):
            await client.with_namespace("production").run(RUN, as_of=1)
        assert (await client.with_namespace(None).run(RUN, as_of=1)).id == "1"


# -- on a real nats-server -----------------------------------------------------------


async def test_as_of_a_sequence_and_a_time_on_jetstream(nats_url: str, tmp_path: Path) -> None:
    """On JetStream, ``as_of`` a receipt's sequence and a time between writes read the run then,
    equal to what the replica stored after those writes."""
    async with connect(nats_url, projector=True, data_dir=tmp_path, namespace=None) as client:
        run = await client.create_run("Train", tags=["x"])
        created = run.receipt.sequence
        async with run.running():
            async with run.task("start") as task:
                await task.save(accuracy=0.5)
            started = await client.run(run.pathspec, after=task.receipt)
            await anyio.sleep(0.05)
            between = datetime.now(UTC)
            await anyio.sleep(0.05)
            shards = await run.foreach("train", 4, parents=[task])
            for shard in shards:
                async with shard.attempting():
                    await shard.save(accuracy=0.9)
        assert task.receipt is not None
        at_start = await client.run(run.pathspec, as_of=task.receipt.sequence)
        assert at_start.view == started.view and at_start.step_names == ["start"]
        by_time = await client.run(run.pathspec, as_of=between)
        assert by_time.view == started.view
        assert by_time.as_of == between and by_time.as_of_sequence == task.receipt.sequence
        (start,) = await (await by_time["start"]).tasks()
        assert start.data.accuracy == 0.5
        first = await client.run(run.pathspec, as_of=created)
        assert first.state is RunState.PENDING and first.step_names == []
        finished = await client.run(run.pathspec, after=client.last_write)
        latest = await client.run(run.pathspec, as_of=await client.log.stream_last_sequence())
        assert latest.view == finished.view and latest.state is RunState.COMPLETED
        tasks = await (await latest["train"]).tasks()
        stored = await (await finished["train"]).tasks()
        assert [t.view for t in tasks] == [t.view for t in stored]
        with pytest.raises(NotFound, match="did not exist yet"):
            await client.run(run.pathspec, as_of=created - 1)
