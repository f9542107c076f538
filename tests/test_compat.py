"""The blocking Metaflow facade: Metaflow's client doc examples, unchanged but for the import.

Each test is one example of ``seeds/001`` run as written (prints included)
against runs the engine wrote; the asserts check what it printed. Only the
import line differs from Metaflow's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _workload import BIG, WrittenRun, facade_world, write_training_run

from runstate.client import RunState
from runstate.client import connect as connect_async
from runstate.client.compat import (
    DataArtifact,
    Flow,
    Metaflow,
    Run,
    Step,
    Task,
    default_namespace,
    get_namespace,
    namespace,
)
from runstate.engine.errors import NotFound, NotInNamespace


@dataclass
class World:
    user: str
    runs: dict[str, WrittenRun]


async def _write_world(url: str, data_dir: Path) -> World:
    async with connect_async(url, projector=False, data_dir=data_dir) as client:
        runs = {
            "1": await write_training_run(client, "MyFlow", tags=["production"], big=True),
            "2": await write_training_run(client, "MyFlow", base_accuracy=0.65),
            "3": await write_training_run(client, "MyFlow", final=RunState.FAILED),
            "4": await write_training_run(client, "MyFlow", tags=["production"], base_accuracy=0.7),
            "5": await write_training_run(client, "MyFlow", user="other_user", base_accuracy=0.5),
            "other": await write_training_run(client, "OtherFlow", width=1, retry=False),
        }
        return World(client.settings.user, runs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """MyFlow runs 1-5 (3 failed, 5 by other_user, 1 and 4 tagged production) behind the facade."""
    with facade_world(tmp_path_factory.mktemp("compat"), _write_world) as written:
        yield written


@pytest.fixture(autouse=True)
def reset_namespace() -> Iterator[None]:
    """Every test starts and ends in the default namespace."""
    default_namespace()
    yield
    default_namespace()


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_metaflow_lists_every_flow(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """`for flow in Metaflow(): print(flow.id)` lists the flows of the namespace."""
    for flow in Metaflow():
        print(flow.id)
    assert lines(capsys) == ["MyFlow", "OtherFlow"]


def test_flow_objects(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Flow('MyFlow'): latest_run, flow['RunID'], iteration newest first, flow attributes."""
    flow = Flow("MyFlow")
    latest_run = flow.latest_run
    run = flow["2"]
    for run in flow:
        print(f"Run: {run.id}, Created: {run.created_at}")
    out = lines(capsys)
    assert [line.split(",")[0] for line in out] == ["Run: 4", "Run: 3", "Run: 2", "Run: 1"]
    assert latest_run is not None and latest_run.id == "4"
    assert flow["2"].pathspec == "MyFlow/2"

    flow = Flow("MyFlow")
    print(flow.id)  # Flow name
    print(flow.latest_run)  # Most recent run
    print(flow.latest_successful_run)  # Most recent successful run
    assert lines(capsys) == ["MyFlow", "Run('MyFlow/4')", "Run('MyFlow/4')"]


def test_run_objects(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Run('MyFlow/123') and its properties: id, pathspec, times, successful, finished, tags."""
    run = Run("MyFlow/1")
    run = Flow("MyFlow").latest_run
    assert run is not None
    run = Run("MyFlow/1")
    print(run.id)  # Run number
    print(run.pathspec)  # 'MyFlow/123'
    print(run.created_at)  # Datetime
    print(run.finished_at)  # Datetime (if completed)
    print(run.successful)  # Boolean
    print(run.finished)  # Boolean
    print(run.tags)  # Set of all tags
    print(run.user_tags)  # Set of user tags
    print(run.system_tags)  # Set of system tags
    out = lines(capsys)
    assert out[:2] == ["1", "MyFlow/1"]
    assert out[2] == str(run.created_at) and out[3] == str(run.finished_at) != "None"
    assert out[4:6] == ["True", "True"]
    assert run.tags == {"production", f"user:{world.user}"}
    assert run.user_tags == {"production"} and run.system_tags == {f"user:{world.user}"}
    failed = Run("MyFlow/3")
    assert failed.finished and not failed.successful and failed.state == "failed"


def test_accessing_steps(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """run['start'], iteration over the steps, and `'train' in run`."""
    run = Run("MyFlow/1")
    # Get a specific step
    step = run["start"]

    # Iterate over all steps
    for step in run:
        print(f"Step: {step.id}")

    # Get step by name
    if "train" in run:
        train_step = run["train"]
    assert lines(capsys) == ["Step: start", "Step: train", "Step: join", "Step: end"]
    assert isinstance(train_step, Step) and train_step.pathspec == "MyFlow/1/train"
    assert "nothing" not in run
    assert [step.id for step in run.steps()] == ["start", "train", "join", "end"]
    assert len(list(run.steps("production"))) == 4 and list(run.steps("nightly")) == []


def test_run_data(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """run['end'].task.data gives the end step's artifacts by attribute."""
    run = Flow("MyFlow").latest_run

    # Access data from a specific step
    data = run["end"].task.data
    print(data.accuracy)
    print(data.model)
    assert lines(capsys) == [
        str(max(world.runs["4"].accuracies)),
        str({"weights": [0.1, 0.2], "kind": "linear"}),
    ]
    assert run.data.accuracy == data.accuracy
    assert run.end_task.pathspec == world.runs["4"].end


def test_step_objects(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Step('MyFlow/123/train'): id, pathspec, times, step.task, iteration with task.index."""
    run = Run("MyFlow/1")
    # Get a step
    step = Step("MyFlow/1/train")

    # Or from a run
    step = run["train"]

    # Access step properties
    print(step.id)  # Step name
    print(step.pathspec)  # 'MyFlow/123/train'
    print(step.created_at)  # Datetime
    print(step.finished_at)  # Datetime (if completed)

    # Get the task (or first task if multiple)
    task = step.task

    # Iterate over all tasks (in foreach steps)
    for task in step:
        print(f"Task: {task.id}, Index: {task.index}")
    out = lines(capsys)
    assert out[:2] == ["train", "MyFlow/1/train"] and out[3] != "None"
    ids = [p.rsplit("/", 1)[1] for p in world.runs["1"].train]
    assert out[4:] == [f"Task: {id_}, Index: {i}" for i, id_ in enumerate(ids)]
    assert step.task.pathspec == world.runs["1"].train[0]
    assert Step("MyFlow/1/start").environment_info == {"python": "3.12", "conda": False}


def test_task_objects(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Task('MyFlow/123/train/456') and its properties, tags being the run's."""
    written = world.runs["1"]
    run = Run("MyFlow/1")
    step = run["train"]
    # Get a task
    task = Task(written.train[1])

    # Or from a step
    task = step.task

    # Access task properties
    print(task.id)  # Task ID
    print(task.pathspec)  # 'MyFlow/123/train/456'
    print(task.index)  # Index in foreach (or None)
    print(task.created_at)  # Datetime
    print(task.finished_at)  # Datetime
    print(task.successful)  # Boolean
    print(task.finished)  # Boolean
    print(task.exception)  # Exception object (if failed)
    print(task.tags)  # Set of tags
    out = lines(capsys)
    assert out[:3] == [written.train[0].rsplit("/", 1)[1], written.train[0], "0"]
    assert out[5:8] == ["True", "True", "None"]  # the latest attempt succeeded
    assert task.tags == {"production", f"user:{world.user}"}
    first_try = Task(written.train[0], attempt=0)
    assert first_try.attempt == 0 and not first_try.successful and first_try.finished
    assert first_try.exception.type == "ValueError"
    assert first_try.exception.message == "loss diverged at epoch 2"
    assert first_try.data.accuracy == 0.0 and task.data.accuracy == written.accuracies[0]


def test_task_data(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """task.data by attribute, `'model' in task.data`, and dir(data) listing artifact names."""
    run = Run("MyFlow/1")
    task = run["train"].task

    # Access data container
    data = task.data

    # Access specific artifacts
    print(data.accuracy)  # The accuracy artifact
    print(data.loss)  # The loss artifact

    # Check if artifact exists
    if "params" in task.data:
        params = data.params

    # Iterate over artifact names
    for artifact_name in dir(data):
        if not artifact_name.startswith("_"):
            print(artifact_name)
    out = lines(capsys)
    accuracy = world.runs["1"].accuracies[0]
    assert out == [
        str(accuracy),
        str(round(1 - accuracy, 3)),
        "accuracy",
        "loss",
        "params",
        "result",
    ]
    assert params == {"lr": 0.001}
    assert "model" not in task.data
    with pytest.raises(AttributeError, match="no artifact 'model'"):
        _ = data.model
    start = run["start"].task
    assert start.data.dataset == BIG  # fetched from the object store on access


def test_task_metadata(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """task.metadata entries have name and value; metadata_dict holds the latest of each."""
    task = Run("MyFlow/1")["train"].task
    # Get all metadata
    for m in task.metadata:
        print(f"{m.name}: {m.value}")

    # Get metadata as dict (latest values)
    metadata = task.metadata_dict
    print(metadata["attempt"])
    print(metadata["runtime"])
    assert lines(capsys) == ["runtime: local", "attempt: 1", "1", "local"]


def test_data_artifact_objects(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """DataArtifact('MyFlow/123/train/456/model') and task['model']: id, data, sha, size, time."""
    end = world.runs["1"].end
    task = Task(end)
    # Get a specific artifact
    artifact = DataArtifact(f"{end}/model")

    # Or from a task
    artifact = task["model"]

    # Access artifact properties
    print(artifact.id)  # Artifact name ('model')
    print(artifact.data)  # The actual Python object
    print(artifact.sha)  # Unique content hash
    print(artifact.size)  # Size in bytes
    print(artifact.created_at)  # Datetime
    out = lines(capsys)
    assert out[:2] == ["model", str({"weights": [0.1, 0.2], "kind": "linear"})]
    assert len(out[2]) == 64 and int(out[3]) > 0
    big = DataArtifact(f"{world.runs['1'].start}/dataset")
    assert big.size > 16 * 1024 and big.data == BIG
    with pytest.raises(NotFound):
        DataArtifact(f"{end}/nothing")


def test_latest_successful_run(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The 'Get Latest Successful Run' pattern."""
    flow = Flow("MyFlow")
    latest = flow.latest_successful_run

    if latest:
        print(f"Latest run: {latest.id}")
        print(f"Accuracy: {latest['end'].task.data.accuracy}")
    else:
        print("No successful runs found")
    best = max(world.runs["4"].accuracies)
    assert lines(capsys) == ["Latest run: 4", f"Accuracy: {best}"]


def test_compare_runs(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The 'Compare Runs' pattern: the last 10 runs, accuracies of the successful ones."""
    flow = Flow("MyFlow")

    # Get last 10 runs
    runs = list(flow)[:10]

    # Compare accuracies
    for run in runs:
        if run.successful:
            accuracy = run["end"].task.data.accuracy
            print(f"Run {run.id}: {accuracy:.3f}")
    expected = [f"Run {key}: {max(world.runs[key].accuracies):.3f}" for key in ("4", "2", "1")]
    assert lines(capsys) == expected


def test_analyze_foreach_results(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The 'Analyze Foreach Results' pattern over the train foreach."""
    run = Flow("MyFlow").latest_run
    step = run["train"]  # Foreach step

    # Collect results from all tasks
    results = []
    for task in step:
        results.append(
            {"index": task.index, "accuracy": task.data.accuracy, "params": task.data.params}
        )

    # Find best result
    best = max(results, key=lambda x: x["accuracy"])
    print(f"Best params: {best['params']}")
    print(f"Best accuracy: {best['accuracy']}")
    assert [r["index"] for r in results] == [0, 1, 2]
    assert lines(capsys) == [
        "Best params: {'lr': 0.1}",
        f"Best accuracy: {max(world.runs['4'].accuracies)}",
    ]


def test_parent_and_child_tasks(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The 'Access Parent/Child Tasks' pattern on a join task."""
    written = world.runs["1"]
    task = Task(written.join)

    # Get parent tasks
    for parent in task.parent_tasks:
        print(f"Parent: {parent.pathspec}")
        print(f"Result: {parent.data.result}")

    # Get child tasks
    for child in task.child_tasks:
        print(f"Child: {child.pathspec}")
    expected = []
    for i, pathspec in enumerate(written.train):
        expected += [f"Parent: {pathspec}", f"Result: branch-{i}"]
    assert lines(capsys) == [*expected, f"Child: {written.end}"]


def test_code_package(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The part of 'Download Code Package' runstate records: the script name."""
    run = Flow("MyFlow").latest_run

    # Access code used for this run
    if run.code:
        print(f"Script: {run.code.script_name}")
    assert lines(capsys) == ["Script: train_flow.py"]


def test_filtering_by_tags(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The 'Filtering by Tags' pattern, and Flow.runs(tag) doing the same on the server."""
    # Get runs with specific tags
    for run in Flow("MyFlow"):
        if "production" in run.tags:
            print(f"Production run: {run.id}")

    # Filter in iteration
    production_runs = [run for run in Flow("MyFlow") if "production" in run.tags]
    assert lines(capsys) == ["Production run: 4", "Production run: 1"]
    assert [run.id for run in production_runs] == ["4", "1"]
    assert [run.id for run in Flow("MyFlow").runs("production")] == ["4", "1"]


def test_namespace_management(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """get_namespace(), namespace('user:other_user'), namespace(None), default_namespace()."""
    # See current namespace
    print(get_namespace())  # Returns current user

    # Switch namespace to see another user's runs
    namespace("user:other_user")  # Metaflow's namespaces are tags: 'user:<name>'
    other = [run.id for run in Flow("MyFlow")]

    # See all runs regardless of namespace
    namespace(None)
    everything = [run.id for run in Flow("MyFlow")]

    # Reset to default
    default_namespace()
    mine = [run.id for run in Flow("MyFlow")]
    assert lines(capsys) == [f"user:{world.user}"]
    assert other == ["5"] and everything == ["5", "4", "3", "2", "1"]
    assert mine == ["4", "3", "2", "1"]
    with pytest.raises(NotInNamespace, match="namespace"):
        Run("MyFlow/5")
    namespace("user:nobody")
    with pytest.raises(NotInNamespace, match="no runs in namespace 'user:nobody'"):
        Flow("MyFlow")
    namespace(None)
    assert Run("MyFlow/5").user == "other_user"
    assert Flow("MyFlow").latest_run.id == "5"


def test_run_tags_and_wait(world: World) -> None:
    """Run.add_tag/remove_tag change the run's tags at once; wait() returns a finished run."""
    run = Run("MyFlow/2")
    run.add_tag("reviewed")
    assert "reviewed" in run.tags
    run.remove_tag("reviewed")
    assert "reviewed" not in run.tags
    assert run.wait(timeout=2).successful
