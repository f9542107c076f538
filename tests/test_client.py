"""The async client against a real nats-server: Metaflow reads, lists, namespaces, errors.

One module-wide server holds runs written with the worker API (``_workload``);
each test connects its own client with an in-process projector replica that
resumes from the module's read store.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson
import pytest
from _workload import BIG, WrittenRun, caught_up, write_training_run

from runstate.client import (
    Client,
    DataArtifact,
    Flow,
    Run,
    RunState,
    Step,
    Task,
    TaskState,
    connect,
    default_namespace,
    get_namespace,
    namespace,
)
from runstate.engine._connection import provision_server
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings
from runstate.engine.errors import (
    BadFilter,
    InvalidName,
    NotFound,
    NotInNamespace,
    RunstateError,
    Timeout,
    Unavailable,
)

pytestmark = pytest.mark.anyio

FLOW = "TrainFlow"


@dataclass
class World:
    """The module's server and what was written to it."""

    url: str
    store_dir: Path
    user: str
    runs: dict[str, WrittenRun]
    #: between the creation of TrainFlow/2 and TrainFlow/3
    middle: datetime


async def _write_world(url: str, data_dir: Path) -> World:
    async with connect(url, projector=False, data_dir=data_dir) as client:
        runs = {}
        runs["1"] = await write_training_run(client, FLOW, tags=["nightly", "gpu"], big=True)
        runs["2"] = await write_training_run(
            client, FLOW, tags=["nightly"], parameters={"lr": 0.1, "epochs": 3}, base_accuracy=0.7
        )
        await anyio.sleep(0.01)
        middle = datetime.now(UTC)
        await anyio.sleep(0.01)
        runs["3"] = await write_training_run(
            client,
            FLOW,
            tags=["adhoc"],
            parameters={"lr": 0.1, "epochs": 1},
            final=RunState.FAILED,
        )
        runs["4"] = await write_training_run(client, FLOW, tags=["nightly", "gpu"], final=None)
        runs["5"] = await write_training_run(client, FLOW, tags=["nightly"], user="bob")
        runs["6"] = await write_training_run(
            client, FLOW, user="bob", system_tags=["production:xyz"], retry=False, base_accuracy=0.8
        )
        runs["other"] = await write_training_run(client, "OtherFlow", width=1, retry=False)
        for key, run in runs.items():
            assert key == "other" or run.id == key
        return World(url, data_dir / "replica", client.settings.user, runs, middle)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A nats-server with six TrainFlow runs (two by bob, one in production) and one OtherFlow."""
    base = tmp_path_factory.mktemp("client")
    server = NatsServer(base / "nats")
    server.start()
    try:
        anyio.run(provision_server, Settings(nats_url=server.url))  # as an admin would
        yield anyio.run(_write_world, server.url, base / "writer")
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def reset_namespace() -> Iterator[None]:
    """Every test starts and ends in the default namespace."""
    default_namespace()
    yield
    default_namespace()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    """A client with its own projector replica, caught up with the log."""
    async with connect(world.url, projector=True, data_dir=world.store_dir) as client:
        await caught_up(client)
        yield client


def ids(runs: list[Run]) -> list[str]:
    return [run.id for run in runs]


# -- Flow ----------------------------------------------------------------------------


async def test_flow_latest_run_and_latest_successful_run(client: Client) -> None:
    """latest_run is the newest run in the namespace; latest_successful_run the newest completed."""
    flow = await client.flow(FLOW)
    assert isinstance(flow, Flow)
    assert (flow.id, flow.name, flow.pathspec) == (FLOW, FLOW, FLOW)
    assert flow.run_count == 4  # bob's two runs are outside user:<me>
    latest = await flow.latest_run()
    assert latest is not None and latest.id == "4" and latest.state is RunState.RUNNING
    successful = await flow.latest_successful_run()
    assert successful is not None and successful.id == "2" and successful.successful
    namespace(None)
    latest = await flow.latest_run()
    assert latest is not None and latest.id == "6"
    assert (await client.latest_run("NoSuchFlow")) is None


async def test_flow_iterates_newest_first_and_filters_by_tags(client: Client) -> None:
    """Iterating a flow gives its runs newest first; runs(*tags) keeps runs with every tag."""
    flow = await client.flow(FLOW)
    assert [run.id async for run in flow] == ["4", "3", "2", "1"]
    assert ids(await flow.runs("nightly")) == ["4", "2", "1"]
    assert ids(await flow.runs("nightly", "gpu")) == ["4", "1"]
    assert ids(await flow.runs("no-such-tag")) == []
    run = await flow["2"]
    assert isinstance(run, Run) and run.pathspec == f"{FLOW}/2"
    assert (await flow[2]).pathspec == f"{FLOW}/2"
    flows = await client.flows()
    assert [f.id for f in flows] == ["OtherFlow", FLOW]


# -- Run -----------------------------------------------------------------------------


async def test_run_attributes_of_a_completed_run(client: Client, world: World) -> None:
    """A completed run shows its id, times, state, tags, parameters, code and steps."""
    written = world.runs["1"]
    run = await client.run(f"{FLOW}/1")
    assert (run.id, run.pathspec, run.flow) == ("1", f"{FLOW}/1", FLOW)
    assert run.finished and run.successful and run.state is RunState.COMPLETED
    assert run.finished_at is not None and run.created_at <= run.started_at <= run.finished_at
    assert run.duration is not None and run.duration >= 0
    assert run.user_tags == {"nightly", "gpu"}
    assert run.system_tags == {f"user:{world.user}"}
    assert run.tags == run.user_tags | run.system_tags
    assert run.user == world.user
    assert run.parameters == {"lr": 0.01, "epochs": 3}
    assert run.code is not None and run.code.script_name == "train_flow.py"
    assert "train" in run and "end" in run and "nope" not in run and 3 not in run
    assert run.step_names == ["start", "train", "join", "end"]
    assert run.progress == (6, 6)
    end = await run.end_task()
    assert isinstance(end, Task) and end.pathspec == written.end
    data = await run.data()
    assert data is not None and data.accuracy == max(written.accuracies)
    assert data.model == {"weights": [0.1, 0.2], "kind": "linear"}
    steps = await run.steps()
    assert [step.id for step in steps] == ["start", "train", "join", "end"]
    assert [step.id async for step in run] == ["start", "train", "join", "end"]
    assert (await run["train"]).pathspec == f"{FLOW}/1/train"


async def test_run_attributes_of_running_and_failed_runs(client: Client) -> None:
    """An unfinished run has no finished_at; a failed one is finished but not successful."""
    running = await client.run(f"{FLOW}/4")
    assert running.state is RunState.RUNNING
    assert not running.finished and not running.successful and running.finished_at is None
    assert running.duration is None
    failed = await client.run(f"{FLOW}/3")
    assert failed.state is RunState.FAILED and failed.message == "join failed"
    assert failed.finished and not failed.successful and failed.finished_at is not None
    assert await failed.end_task() is None and await failed.data() is None
    assert "end" not in failed


# -- Step ----------------------------------------------------------------------------


async def test_step_tasks_times_and_counts(client: Client, world: World) -> None:
    """A step gives its first task, all tasks in foreach order, its times and task counts."""
    written = world.runs["1"]
    step = await client.step(f"{FLOW}/1/train")
    assert isinstance(step, Step) and step.id == "train" and step.pathspec == f"{FLOW}/1/train"
    assert step.counts == {"completed": 3} and step.tasks_total == 3
    assert step.status == "completed" and step.finished
    assert step.finished_at is not None and step.created_at <= step.finished_at
    first = await step.task()
    assert first is not None and first.pathspec == written.train[0] and first.index == 0
    tasks = await step.tasks()
    assert [t.pathspec for t in tasks] == written.train
    assert [t.index for t in tasks] == [0, 1, 2]
    assert [t.index async for t in step] == [0, 1, 2]
    assert [t.pathspec for t in await step.tasks(state="completed")] == written.train
    assert await step.tasks(state=TaskState.FAILED) == []
    task_id = written.train[1].rsplit("/", 1)[1]
    assert (await step[task_id]).pathspec == written.train[1]
    join = await client.step(f"{FLOW}/3/join")
    assert join.counts == {"failed": 1} and join.status == "failed"


# -- Task ----------------------------------------------------------------------------


async def test_task_attempts_after_a_retry(client: Client, world: World) -> None:
    """A retried task shows its latest attempt; attempt= selects the failed first attempt."""
    pathspec = world.runs["1"].retried
    assert pathspec is not None
    latest = await client.task(pathspec)
    assert latest.attempt == 1 and latest.state is TaskState.COMPLETED
    assert latest.successful and latest.finished and latest.exception is None
    assert latest.data.accuracy == 0.6 and latest.data.loss == 0.4
    assert [a.state for a in latest.attempts] == [TaskState.FAILED, TaskState.COMPLETED]
    first = await client.task(pathspec, attempt=0)
    assert first.attempt == 0 and first.state is TaskState.FAILED
    assert not first.successful and first.finished and first.finished_at is not None
    assert first.data.accuracy == 0.0 and first.data.loss == 99.0
    assert "params" not in first.data and "params" in latest.data
    exception = first.exception
    assert exception is not None and exception.type == "ValueError"
    assert exception.message == "loss diverged at epoch 2"
    assert "ValueError: loss diverged at epoch 2" in exception.traceback
    assert "_diverged" in exception.traceback
    again = await client.task(pathspec, attempt=1)
    assert again.data.accuracy == latest.data.accuracy and again.state is TaskState.COMPLETED
    with pytest.raises(NotFound, match="no attempt 7"):
        await client.task(pathspec, attempt=7)


async def test_task_lineage_and_foreach_index(client: Client, world: World) -> None:
    """parent_tasks and child_tasks follow the DAG; index is the foreach position or None."""
    written = world.runs["1"]
    start = await client.task(written.start)
    join = await client.task(written.join)
    assert start.index is None and join.index is None
    assert [t.pathspec for t in await start.child_tasks()] == written.train
    assert [t.pathspec for t in await join.parent_tasks()] == written.train
    assert [p.data.result for p in await join.parent_tasks()] == [
        "branch-0",
        "branch-1",
        "branch-2",
    ]
    assert [t.pathspec for t in await join.child_tasks()] == [written.end]
    branch = await client.task(written.train[2])
    assert branch.index == 2 and branch.step == "train"
    assert branch.foreach_stack[0].num_splits == 3
    assert [t.pathspec for t in await branch.parent_tasks()] == [written.start]
    assert [t.pathspec for t in await branch.child_tasks()] == [written.join]
    assert branch.parent_task_pathspecs == [written.start]


async def test_task_metadata_data_and_attributes(client: Client, world: World) -> None:
    """A task exposes metadata, data by attribute and `in`, artifacts, times and runtime."""
    written = world.runs["1"]
    start = await client.task(written.start)
    assert (start.id, start.pathspec) == (written.start.rsplit("/", 1)[1], written.start)
    assert start.runtime_name == "local"
    assert start.environment_info == {"python": "3.12", "conda": False}
    assert start.successful and start.finished and start.state is TaskState.COMPLETED
    assert start.finished_at is not None and start.created_at <= start.finished_at
    assert start.duration is not None and start.duration >= 0
    assert [(m.name, m.value) for m in start.metadata] == [("runtime", "local"), ("attempt", "0")]
    assert start.metadata_dict == {
        "runtime": "local",
        "attempt": "0",
        "started_at": start.started_at.isoformat() if start.started_at else "",
        "finished_at": start.finished_at.isoformat(),
        "attempt_ok": "True",
    }
    assert start.data.alpha == 0.5 and start.data.grid == [0.001, 0.01, 0.1]
    assert "alpha" in start.data and "nope" not in start.data
    assert sorted(start.data) == ["alpha", "dataset", "grid"] == dir(start.data)
    assert "alpha" in start and "nope" not in start
    with pytest.raises(AttributeError, match="no artifact 'nope'"):
        _ = start.data.nope
    assert sorted(a.id for a in start.artifacts) == ["alpha", "dataset", "grid"]
    assert isinstance(start["alpha"], DataArtifact) and start["alpha"].data == 0.5
    with pytest.raises(NotFound):
        start["nope"]
    retried = await client.task(written.retried or "")
    assert retried.metadata_dict["attempt"] == "1" and retried.metadata_dict["runtime"] == "local"


async def test_data_artifact_inline_and_large(client: Client, world: World) -> None:
    """A DataArtifact has id, data, sha, size, created_at; a large one loads with `await load()`."""
    written = world.runs["1"]
    alpha = await client.artifact(f"{written.start}/alpha")
    assert isinstance(alpha, DataArtifact) and alpha.id == "alpha"
    assert alpha.pathspec == f"{written.start}/alpha"
    encoded = orjson.dumps(0.5)
    assert alpha.data == 0.5 and alpha.is_inline
    assert alpha.sha == hashlib.sha256(encoded).hexdigest() and alpha.size == len(encoded)
    assert alpha.created_at >= (await client.run(written.pathspec)).created_at
    dataset = await client.artifact(f"{written.start}/dataset")
    assert not dataset.is_inline and dataset.size > 16 * 1024
    assert dataset.sha == hashlib.sha256(orjson.dumps(BIG)).hexdigest()
    with pytest.raises(RunstateError, match="load"):
        _ = dataset.data
    assert await dataset.load() == BIG
    assert dataset.data == BIG  # cached once loaded
    task = await client.task(written.start)
    assert await task.data.load("dataset") == BIG
    assert (await task.data.load_all())["alpha"] == 0.5
    with pytest.raises(NotFound, match="no artifact 'nope'"):
        await client.artifact(f"{written.start}/nope")


# -- lists ---------------------------------------------------------------------------


async def test_runs_filters(client: Client, world: World) -> None:
    """runs() filters by flow, tags (all/any), state, user, times and parameters."""
    namespace(None)

    async def listed(**filters: object) -> list[str]:
        page = await client.runs(FLOW, page_size=100, **filters)  # type: ignore[arg-type]
        return ids(page.items)

    assert await listed() == ["6", "5", "4", "3", "2", "1"]
    assert ids((await client.runs("OtherFlow")).items) == [world.runs["other"].id]
    assert len((await client.runs()).items) == 7
    assert await listed(tags=["nightly", "gpu"]) == ["4", "1"]
    assert await listed(any_tags=["adhoc", "gpu"]) == ["4", "3", "1"]
    assert await listed(tags=["production:xyz"]) == ["6"]
    assert await listed(state="failed") == ["3"]
    assert await listed(state=[RunState.RUNNING, RunState.FAILED]) == ["4", "3"]
    assert await listed(user="bob") == ["6", "5"]
    assert await listed(created_before=world.middle) == ["2", "1"]
    assert await listed(created_after=world.middle) == ["6", "5", "4", "3"]
    run3 = await client.run(f"{FLOW}/3")
    assert run3.finished_at is not None
    assert await listed(finished_after=run3.finished_at) == ["6", "5", "3"]
    assert await listed(finished_before=run3.finished_at) == ["2", "1"]
    assert await listed(parameters={"lr": 0.1}) == ["3", "2"]
    assert await listed(parameters={"lr": 0.1, "epochs": 3}) == ["2"]
    assert await listed(state="completed", user="bob", tags=["nightly"]) == ["5"]


async def test_runs_sort_orders(client: Client) -> None:
    """Runs sort by created_at either way, by finished_at and by duration (unfinished last)."""
    namespace(None)

    async def sorted_by(sort: str) -> list[Run]:
        return (await client.runs(FLOW, sort=sort)).items

    assert ids(await sorted_by("-created_at")) == ["6", "5", "4", "3", "2", "1"]
    assert ids(await sorted_by("created_at")) == ["1", "2", "3", "4", "5", "6"]
    by_finish = await sorted_by("finished_at")
    assert by_finish[0].id == "4"  # unfinished sorts as the smallest
    finished = [run.finished_at for run in by_finish[1:]]
    assert finished == sorted(finished)  # type: ignore[type-var]
    by_finish_desc = await sorted_by("-finished_at")
    assert ids(by_finish_desc) == ids(by_finish)[::-1]
    by_duration = await sorted_by("-duration")
    durations = [run.duration for run in by_duration[:-1]]
    assert by_duration[-1].id == "4"
    assert durations == sorted(durations, reverse=True)  # type: ignore[type-var]
    assert ids(await sorted_by("duration")) == ids(by_duration)[::-1]


async def test_runs_pages_and_cursor(client: Client) -> None:
    """page_size and next_cursor page through runs; page.all() visits each run exactly once."""
    namespace(None)
    first = await client.runs(FLOW, page_size=4)
    assert ids(first.items) == ["6", "5", "4", "3"] and first.has_next and len(first) == 4
    second = await client.runs(FLOW, page_size=4, cursor=first.next_cursor)
    assert ids(second.items) == ["2", "1"] and second.next_cursor is None
    assert await second.next_page() is None
    again = await first.next_page()
    assert again is not None and ids(again.items) == ["2", "1"]
    page = await client.runs(FLOW, page_size=2, sort="created_at")
    seen = [run.id async for run in page.all()]
    assert seen == ["1", "2", "3", "4", "5", "6"]
    nightly = await client.runs(FLOW, tags=(tag for tag in ["nightly"]), page_size=1)
    assert [run.id async for run in nightly.all()] == ["5", "4", "2", "1"]
    tasks = await client.tasks(f"{FLOW}/1", "train", page_size=1)
    assert len(tasks) == 1 and tasks.has_next
    assert [t.index async for t in tasks.all()] == [0, 1, 2]


async def test_the_next_pages_of_runs_keep_the_first_pages_namespace(client: Client) -> None:
    """Pages after the first read in the namespace the first was read in, whatever the
    client's is by then."""
    namespace(None)
    first = await client.runs(FLOW, page_size=2)
    namespace("user:nobody")
    assert (await client.runs(FLOW)).items == []
    assert ids([run async for run in first.all()]) == ["6", "5", "4", "3", "2", "1"]


# -- namespaces ----------------------------------------------------------------------


async def test_default_namespace_is_the_current_user(client: Client, world: World) -> None:
    """By default reads see only runs tagged user:<me>; namespace(None) sees all."""
    assert get_namespace() == f"user:{world.user}" == default_namespace()
    assert ids((await client.runs(FLOW)).items) == ["4", "3", "2", "1"]
    with pytest.raises(NotInNamespace) as raised:
        await client.run(f"{FLOW}/5")
    message = str(raised.value)
    assert f"{FLOW}/5" in message and f"user:{world.user}" in message
    assert "namespace(None)" in message
    assert namespace(None) is None and get_namespace() is None
    assert (await client.run(f"{FLOW}/5")).user == "bob"
    assert len((await client.runs(FLOW)).items) == 6
    assert default_namespace() == f"user:{world.user}" == get_namespace()
    with pytest.raises(NotInNamespace):
        await client.run(f"{FLOW}/6")


async def test_other_user_and_production_namespaces(client: Client, world: World) -> None:
    """namespace('user:bob') and a production:xyz namespace see exactly their runs."""
    namespace("user:bob")
    assert get_namespace() == "user:bob"
    assert ids((await client.runs(FLOW)).items) == ["6", "5"]
    latest = await client.latest_run(FLOW)
    assert latest is not None and latest.id == "6"
    namespace("production:xyz")
    assert ids((await client.runs(FLOW)).items) == ["6"]
    assert (await (await client.flow(FLOW)).latest_successful_run()).id == "6"  # type: ignore[union-attr]
    assert [f.id for f in await client.flows()] == [FLOW]
    written = world.runs["1"]
    for pathspec in (written.pathspec, f"{written.pathspec}/train", written.start):
        with pytest.raises(NotInNamespace, match="production:xyz"):
            await client.get(pathspec)
    with pytest.raises(NotInNamespace):
        await client.artifact(f"{written.start}/alpha")
    with pytest.raises(NotInNamespace):
        await client.tasks(written.pathspec, "train")
    task = await client.task(world.runs["6"].end)
    assert task.data.accuracy == max(world.runs["6"].accuracies)
    namespace("user:nobody")
    with pytest.raises(NotInNamespace, match="TrainFlow has no runs in namespace 'user:nobody'"):
        await client.flow(FLOW)
    with pytest.raises(NotFound):
        await client.flow("NoSuchFlow")
    assert await client.latest_run(FLOW) is None and await client.flows() == []
    with pytest.raises(ValueError, match="namespace"):
        namespace("")


async def test_later_pages_keep_the_namespace_of_the_first(client: Client) -> None:
    """Switching namespace while walking pages does not change the walk already begun."""
    first = await client.runs(FLOW, page_size=3)
    namespace(None)
    assert [run.id async for run in first.all()] == ["4", "3", "2", "1"]
    assert len((await client.runs(FLOW)).items) == 6


async def test_client_namespace_overrides_the_process_one(client: Client, world: World) -> None:
    """with_namespace() and connect(namespace=) give a client its own namespace."""
    everyone = client.with_namespace(None)
    assert everyone.namespace is None and client.namespace == f"user:{world.user}"
    assert len((await everyone.runs(FLOW)).items) == 6
    assert len((await client.runs(FLOW)).items) == 4
    namespace("user:bob")
    assert everyone.namespace is None and client.namespace == "user:bob"
    async with connect(world.url, projector=False, namespace="production:xyz") as prod:
        assert ids((await prod.runs(FLOW)).items) == ["6"]


# -- read-your-writes ----------------------------------------------------------------


async def test_read_after_write_sees_the_write(client: Client) -> None:
    """A read with after=<receipt> of a write always sees it (tags and task transitions)."""
    run = await client.create_run("RywFlow")
    await run.start()
    for i in range(50):
        receipt = await run.add_tag(f"tag-{i}")
        seen = await client.run(run.pathspec, after=receipt)
        assert f"tag-{i}" in seen.tags
        task = await run.create_task("work", str(i), start=True)
        receipt = await task.complete()
        done = await client.task(task.pathspec, after=receipt)
        assert done.state is TaskState.COMPLETED
    final = await client.run(run.pathspec, after=await run.complete())
    assert final.state is RunState.COMPLETED and final.progress == (50, 50)
    assert (await client.step(f"{run.pathspec}/work", after=final.view.position[0])).counts == {
        "completed": 50
    }


async def test_last_write_follows_every_write_through_the_clients_handles(client: Client) -> None:
    """``client.last_write`` is the latest write's sequence whichever handle made it (a run's
    transitions and tags, tasks created one by one or by a foreach, a task's transitions and
    metadata, a copy's writes), so ``after=client.last_write`` reads every one of them."""
    run = await client.create_run("LastWriteFlow")
    assert client.last_write == run.receipt.sequence
    receipts = [await run.start(), await run.add_tag("seen")]
    task = await run.create_task("one", start=True)
    receipts += [task.receipt, await task.record_metadata(k="v"), await task.complete()]
    assert [r.sequence for r in receipts] == sorted({r.sequence for r in receipts})
    assert client.last_write == receipts[-1].sequence
    shards = await run.foreach("many", 3)
    assert client.last_write == shards[-1].receipt.sequence
    copy = client.with_namespace("user:else")
    assert copy.last_write == client.last_write
    receipt = await (await copy.run_handle(run.pathspec)).complete()
    assert client.last_write == copy.last_write == receipt.sequence
    read = await client.run(run.pathspec, after=client.last_write)
    assert read.state is RunState.COMPLETED and "seen" in read.tags
    assert (await client.step(f"{run.pathspec}/many", after=client.last_write)).counts == {
        "pending": 3
    }


async def test_run_tag_methods_return_the_new_snapshot(client: Client) -> None:
    """Run.add_tag/remove_tag/replace_tag write and return a snapshot that shows the change."""
    handle = await client.create_run("TagFlow", tags=["a"])
    run = await client.run(handle.pathspec, after=handle.receipt)
    run = await run.add_tags("b", "c")
    assert run.user_tags == {"a", "b", "c"}
    run = await run.remove_tag("a")
    assert run.user_tags == {"b", "c"}
    run = await run.replace_tag("b", "z")
    assert run.user_tags == {"c", "z"}
    assert f"user:{client.settings.user}" in run.system_tags
    with pytest.raises(InvalidName, match="system tags"):
        await run.remove_tag(f"user:{client.settings.user}")


# -- errors --------------------------------------------------------------------------


async def test_unknown_pathspecs_raise_not_found(client: Client, world: World) -> None:
    """A pathspec naming nothing raises NotFound saying what is missing."""
    namespace(None)
    missing = [
        f"{FLOW}/999",
        f"{FLOW}/1/nostep",
        f"{FLOW}/1/train/99999",
        f"{world.runs['1'].start}/nothing",
        "NoSuchFlow",
    ]
    for pathspec in missing:
        with pytest.raises(NotFound) as raised:
            await client.get(pathspec)
        assert pathspec.split("/")[-1] in str(raised.value)
    with pytest.raises(NotFound):
        await client.tasks(f"{FLOW}/1", "nostep")
    with pytest.raises(LookupError):  # NotFound is a LookupError too
        await client.run(f"{FLOW}/998")


async def test_bad_pathspecs_raise_invalid_name(client: Client) -> None:
    """A malformed pathspec raises InvalidName before anything is sent."""
    for bad in ["Train.Flow/1", "Train Flow", f"{FLOW}/1 2", f"{FLOW}/*", "a/b/c/d/e/f", "", "9x"]:
        with pytest.raises(InvalidName):
            await client.get(bad)
    with pytest.raises(InvalidName):
        await client.run(FLOW)  # a flow is not a run
    with pytest.raises(InvalidName):
        await client.task(f"{FLOW}/1/train")


async def test_bad_filters_raise_bad_filter(client: Client) -> None:
    """An unknown sort key, page_size=0 or a foreign cursor raise BadFilter naming the problem."""
    with pytest.raises(BadFilter, match="created_at"):
        await client.runs(FLOW, sort="bogus")
    with pytest.raises(BadFilter, match="limit"):
        await client.runs(FLOW, page_size=0)
    with pytest.raises(BadFilter, match="cursor"):
        await client.runs(FLOW, cursor="not-a-cursor")
    page = await client.runs(FLOW, page_size=1)
    with pytest.raises(BadFilter, match="sorted by"):
        await client.runs(FLOW, page_size=1, sort="created_at", cursor=page.next_cursor)
    with pytest.raises(BadFilter, match="state"):
        await client.runs(FLOW, state="sleeping")
    with pytest.raises(BadFilter):
        await client.tasks(f"{FLOW}/1", "train", page_size=0)


async def test_after_beyond_the_log_times_out(client: Client) -> None:
    """A read with after= a sequence never written raises Timeout once the wait runs out."""
    client.read_wait = 0.3
    last = await client.log.stream_last_sequence()
    with anyio.fail_after(5):
        with pytest.raises(Timeout, match=str(last + 1000)):
            await client.run(f"{FLOW}/1", after=last + 1000)
    assert (await client.run(f"{FLOW}/1", after=last)).id == "1"


async def test_no_query_service_raises_unavailable(nats_url: str, tmp_path: Path) -> None:
    """With no projector replica answering, a read raises Unavailable saying what to start."""
    async with connect(nats_url, projector=False, data_dir=tmp_path) as client:
        with anyio.fail_after(5):
            with pytest.raises(Unavailable, match="projector"):
                await client.run("TrainFlow/1")
            with pytest.raises(Unavailable):
                await client.runs()


async def test_a_query_waits_briefly_for_a_service_that_is_coming(
    nats_url: str, tmp_path: Path
) -> None:
    """A read sent just before a replica's service subscribes is answered, not Unavailable
    (on a cluster, a service's interest reaches the other nodes a moment late)."""
    from runstate.projections import serve_replica

    async with connect(nats_url, projector=False, data_dir=tmp_path) as client:
        async with anyio.create_task_group() as tg:

            async def replica_soon() -> None:
                await anyio.sleep(0.3)
                await serve_replica(client.nc, client.settings, tmp_path / "v.sqlite3")

            tg.start_soon(replica_soon)
            with anyio.fail_after(10):
                assert await client.flows() == []
            tg.cancel_scope.cancel()


async def test_client_against_the_fixture_server(nats_url: str, tmp_path: Path) -> None:
    """connect(url, projector=True) on a fresh server: write a run, then read it back at once."""
    async with connect(nats_url, projector=True, data_dir=tmp_path) as client:
        written = await write_training_run(client, "FreshFlow", width=2)
        run = await client.run(written.pathspec, after=written.receipt)
        assert run.successful and run.step_names == ["start", "train", "join", "end"]
        assert (await run.data()).accuracy == max(written.accuracies)  # type: ignore[union-attr]
        status = await client.status()
        assert status["applied"] >= written.receipt.sequence and status["deadlettered"] == 0
