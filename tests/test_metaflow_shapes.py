"""Metaflow's shapes: metadata_dict of every task, task.artifacts, the metadata provider."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from _workload import caught_up
from anyio.from_thread import start_blocking_portal

from runstate.client import compat
from runstate.client import connect as connect_async
from runstate.client.compat import (
    Artifacts,
    DataArtifact,
    Run,
    Task,
    default_metadata,
    get_metadata,
    metadata,
)
from runstate.engine._connection import provision_server
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings
from runstate.engine._states import TaskState
from runstate.engine.errors import ConfigurationError
from runstate.engine.testing import EventFactory
from runstate.projections._reducers import fold
from runstate.projections._views import TaskView

TASK = "Train/1/train/7"
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


factory = EventFactory(start=T0)


def task_view(*events: object, runtime_name: str | None = None) -> TaskView:
    created = factory.task_created(TASK, runtime_name=runtime_name)
    log = [created, *events]
    views = fold({}, [(event, (i + 1, 0)) for i, event in enumerate(log)])  # type: ignore[misc]
    view = views[("task", TASK)]
    assert isinstance(view, TaskView)
    return view


# -- metadata_dict ------------------------------------------------------------------


def test_a_task_without_recorded_metadata_has_metaflows_entries() -> None:
    """attempt, runtime, times and attempt_ok come from the task's state, not from a worker."""
    view = task_view(
        factory.task_state(TASK, 0, TaskState.RUNNING, at=1),
        factory.task_state(TASK, 0, TaskState.COMPLETED, at=3),
    )
    assert view.metadata == ()
    assert view.metadata_of() == {
        "attempt": "0",
        "runtime": "runstate",
        "started_at": at(1).isoformat(),
        "finished_at": at(3).isoformat(),
        "attempt_ok": "True",
    }


def test_metadata_is_per_attempt_and_recorded_entries_win() -> None:
    """Each attempt has its own entries; a worker's recorded value replaces a derived one."""
    recorded = factory.metadata(TASK, 1, [("runtime", "k8s"), ("host", "h")], at=5)
    view = task_view(
        factory.task_state(TASK, 0, TaskState.RUNNING, at=1),
        factory.task_state(TASK, 0, TaskState.FAILED, at=2),
        factory.task_state(TASK, 1, TaskState.PENDING, at=3),
        recorded,
        runtime_name="local",
    )
    assert view.metadata_of(0) == {
        "attempt": "0",
        "runtime": "local",
        "started_at": at(1).isoformat(),
        "finished_at": at(2).isoformat(),
        "attempt_ok": "False",
    }
    assert view.metadata_of() == {"attempt": "1", "runtime": "k8s", "host": "h"}


# -- the facade -----------------------------------------------------------------------


@dataclass
class Written:
    url: str
    task: str


async def _write(url: str, data_dir: Path) -> str:
    async with connect_async(url, projector=False, data_dir=data_dir) as client:
        run = await client.create_run("Shapes")
        await run.start()
        task = await run.create_task("end", start=True)
        await task.save(model={"weights": [1, 2]}, accuracy=0.9)
        await task.complete()
        await run.complete()
        return task.pathspec


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    """One run whose end task recorded artifacts and no metadata; a replica serves reads."""
    base = tmp_path_factory.mktemp("shapes")
    server = NatsServer(base / "nats")
    server.start()
    try:
        anyio.run(provision_server, Settings(nats_url=server.url))  # as an admin would
        task = anyio.run(_write, server.url, base / "writer")
        with start_blocking_portal() as portal:
            replica = connect_async(server.url, projector=True, data_dir=base / "replica")
            with portal.wrap_async_context_manager(replica) as client:
                portal.call(caught_up, client)
                compat.connect(server.url, projector=False, data_dir=base / "facade")
                try:
                    yield Written(server.url, task)
                finally:
                    compat.close()
                    default_metadata()
    finally:
        server.stop()


def test_metadata_dict_attempt_and_runtime_as_in_metaflows_docs(written: Written) -> None:
    """task.metadata_dict['attempt'] and ['runtime'] of a task that recorded no metadata."""
    task = Task(written.task)
    metadata = task.metadata_dict
    assert metadata["attempt"] == "0"
    assert metadata["runtime"] == "runstate"
    assert metadata["attempt_ok"] == "True"


def test_task_artifacts_is_metaflows_container(written: Written) -> None:
    """task.artifacts.model.data, iteration, `in`, len and indexing, as MetaflowArtifacts."""
    task = Task(written.task)
    artifacts = task.artifacts
    assert isinstance(artifacts, Artifacts)
    assert artifacts.model.data == {"weights": [1, 2]}
    assert artifacts.accuracy.data == 0.9
    assert sorted(a.id for a in artifacts) == ["accuracy", "model"]
    assert all(isinstance(a, DataArtifact) for a in artifacts)
    assert "model" in artifacts and "nope" not in artifacts
    assert artifacts.model in artifacts
    assert len(artifacts) == 2 and artifacts[0] in artifacts
    assert artifacts["model"] == artifacts.model
    with pytest.raises(AttributeError, match="no artifact 'nope'"):
        _ = artifacts.nope


def test_metadata_provider_functions_choose_what_the_facade_reads(
    written: Written, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metadata(url) reads that server; get_metadata names it; default_metadata resets."""
    monkeypatch.delenv("RUNSTATE_NATS_URL", raising=False)
    monkeypatch.setenv("RUNSTATE_DATA_DIR", str(tmp_path / "default"))
    assert get_metadata() == f"service@{written.url}"  # chosen by compat.connect
    assert default_metadata() == f"local@{tmp_path / 'default'}"
    assert metadata("local") == f"local@{tmp_path / 'default'}"
    assert metadata(str(tmp_path / "other")) == f"local@{tmp_path / 'other'}"
    assert metadata(f"local@{tmp_path / 'third'}") == f"local@{tmp_path / 'third'}"
    monkeypatch.setenv("RUNSTATE_NATS_URL", written.url)
    assert default_metadata() == f"service@{written.url}"
    monkeypatch.delenv("RUNSTATE_NATS_URL")
    assert metadata(written.url) == f"service@{written.url}"
    assert metadata(f"service@{written.url}") == f"service@{written.url}"
    run = Run("/".join(written.task.split("/")[:2]))
    assert run.successful
    for bad in ("https://metadata-service.example.com", "service@http://x", ""):
        with pytest.raises(ConfigurationError):
            metadata(bad)
    assert get_metadata() == f"service@{written.url}"  # a refused choice changes nothing
