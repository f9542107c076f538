"""Metaflow's object hierarchy over runstate views: Flow, Run, Step, Task, DataArtifact.

Objects are immutable snapshots of a view at one moment. Attributes read the
snapshot; anything that needs I/O (navigation, refreshing, loading a value
from the object store) is a coroutine::

    run = await client.latest_run("Train", successful=True)
    task = await (await run["end"]).task()
    print(task.data.accuracy)            # small values travel in the snapshot
    model = await task.data.load("model")  # large ones load lazily, then are cached
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from runstate.client._base import _AsOf, _Object
from runstate.client._data import Data, DataArtifact
from runstate.client._history import History, MetricReads
from runstate.client._logs import LogReads
from runstate.engine._commits import Receipt
from runstate.engine._events import ExceptionInfo, ForeachFrame
from runstate.engine._points import PointReceipt, untag
from runstate.engine._states import RunState, TaskState
from runstate.engine.errors import BadFilter, NotFound, RunstateError, Timeout
from runstate.projections._as_of import Moment
from runstate.projections._protocol import StepsRequest
from runstate.projections._queries import FlowSummary
from runstate.projections._views import (
    ArtifactView,
    AttemptView,
    MetadataView,
    RunView,
    StepView,
    TaskView,
)

if TYPE_CHECKING:
    from runstate.client._client import Client
    from runstate.client._watch import Change, Subscription

__all__ = [
    "Code",
    "Flow",
    "FlowInfo",
    "Metadata",
    "Run",
    "Step",
    "Task",
    "object_from_reply",
]

FlowInfo = FlowSummary
Metadata = MetadataView


class Flow(_Object):
    """All runs of one flow name."""

    def __init__(self, client: Client, info: FlowSummary) -> None:
        self._client = client
        self.info = info
        self.id = info.name
        self.pathspec = info.name

    @property
    def name(self) -> str:
        return self.id

    @property
    def run_count(self) -> int:
        return self.info.run_count

    async def latest_run(self) -> Run | None:
        """The newest run, finished or not (None if there is none)."""
        return await self._client.latest_run(self.id)

    async def latest_successful_run(self) -> Run | None:
        """The newest run that completed successfully."""
        return await self._client.latest_run(self.id, successful=True)

    async def run(self, run_id: str | int) -> Run:
        return await self._client.run(f"{self.id}/{run_id}")

    def __getitem__(self, run_id: str | int) -> Awaitable[Run]:
        """``await flow["42"]``: the run with that id."""
        return self.run(run_id)

    async def runs(self, *tags: str) -> list[Run]:
        """Every run carrying all ``tags``, newest first."""
        page = await self._client.runs(self.id, tags=tags)
        return [run async for run in page.all()]

    async def __aiter__(self) -> AsyncIterator[Run]:
        """Runs newest first, across pages."""
        page = await self._client.runs(self.id)
        async for run in page.all():
            yield run


class Code:
    """What runstate knows of a run's code package: its script name."""

    def __init__(self, script_name: str) -> None:
        self.script_name = script_name

    def __repr__(self) -> str:
        return f"Code(script_name={self.script_name!r})"


class Run(_AsOf, MetricReads, _Object):
    """One execution of a flow, as of the snapshot ``view``."""

    def __init__(self, client: Client, view: RunView, moment: Moment | None = None) -> None:
        self._client = client
        self._moment = moment
        self.view = view
        self.id = view.run_id
        self.pathspec = view.pathspec

    @property
    def flow(self) -> str:
        return self.view.flow

    @property
    def state(self) -> RunState:
        return self.view.state

    @property
    def label(self) -> str | None:
        return self.view.label

    @property
    def message(self) -> str | None:
        return self.view.message

    @property
    def created_at(self) -> datetime:
        return self.view.created_at

    @property
    def started_at(self) -> datetime | None:
        return self.view.started_at

    @property
    def finished_at(self) -> datetime | None:
        return self.view.finished_at

    @property
    def duration(self) -> float | None:
        return self.view.duration

    @property
    def finished(self) -> bool:
        return self.view.finished

    @property
    def successful(self) -> bool:
        return self.view.successful

    @property
    def tags(self) -> frozenset[str]:
        """User and system tags together."""
        return self.view.all_tags

    @property
    def user_tags(self) -> frozenset[str]:
        return self.view.tags

    @property
    def system_tags(self) -> frozenset[str]:
        return self.view.system_tags

    @property
    def user(self) -> str | None:
        return self.view.user

    @property
    def parameters(self) -> dict[str, Any]:
        """The parameters the run was created with (``config`` adds later updates)."""
        return dict(self.view.parameters)

    @property
    def display_name(self) -> str | None:
        """The display name set with ``set_name``/``update_run`` (None: not set)."""
        return self.view.display_name

    @property
    def notes(self) -> str | None:
        return self.view.notes

    @property
    def config(self) -> dict[str, Any]:
        """The parameters at creation merged with every config update (the later wins)."""
        return dict(self.view.config)

    @property
    def summary_overrides(self) -> dict[str, Any]:
        """The summary values set explicitly (``update_summary``), which ``summary()``
        puts over the logged ones."""
        return {key: untag(value) for key, value in self.view.summary_overrides.items()}

    async def summary(
        self, stream: str = "default", *, after: int | PointReceipt | None = None
    ) -> dict[str, Any]:
        """Each metric key's latest logged value, with the explicit summary values
        (``summary_overrides``) over them key by key: an explicit value wins over
        points of its key logged later too, as W&B's ``summary.update`` does."""
        summary = await super().summary(stream, after=after)
        if stream == "default":
            summary.update(self.summary_overrides)
        return summary

    @property
    def code(self) -> Code | None:
        return Code(self.view.script_name) if self.view.script_name else None

    @property
    def progress(self) -> tuple[int, int]:
        """(tasks finished, tasks known)."""
        return self.view.tasks_done, self.view.tasks_total

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.view.steps]

    def __contains__(self, step: object) -> bool:
        return isinstance(step, str) and self.view.step(step) is not None

    async def steps(self) -> list[Step]:
        """The run's steps in the order they began."""
        if self._moment is not None:
            return [Step(self._client, view, self._moment) for view in self._moment.steps()]
        result = await self._client.request(
            self._client.query(StepsRequest, run=self.pathspec, namespace=self._client.namespace)
        )
        return [Step(self._client, StepView.model_validate(item)) for item in result]

    async def step(self, name: str) -> Step:
        if self._moment is not None:
            return Step(self._client, self._moment.step_view(name), self._moment)
        return await self._client.step(f"{self.pathspec}/{name}")

    def __getitem__(self, name: str) -> Awaitable[Step]:
        """``await run["train"]``: the step of that name."""
        return self.step(name)

    async def __aiter__(self) -> AsyncIterator[Step]:
        for step in await self.steps():
            yield step

    async def end_task(self) -> Task | None:
        """The task of the ``end`` step, once it exists."""
        if self.view.end_task is None:
            return None
        if self._moment is not None:
            view = self._moment.task_view(self.view.end_task)
            return Task(self._client, view, None, self._moment)
        return await self._client.task(self.view.end_task)

    async def data(self) -> Data | None:
        """The artifacts of the end task (Metaflow's ``run.data``), or None before it exists."""
        task = await self.end_task()
        return task.data if task is not None else None

    async def refresh(self, *, after: int | Receipt | None = None) -> Run:
        """A newer snapshot of this run (the latest views, even if this one was read ``as_of``)."""
        return await self._client.run(self.pathspec, after=after)

    async def wait(self, timeout: float | None = None) -> Run:  # noqa: ASYNC109 - Metaflow's shape
        """Wait until the run finishes (completed, failed, cancelled or crashed); return it.

        Raises ``Timeout`` if it has not finished after ``timeout`` seconds.
        """
        pathspec = self.pathspec
        with anyio.move_on_after(timeout) as scope:
            async with self._client.watch(pathspec) as changes:
                async for change in changes:
                    view = change.views.get(("run", pathspec))
                    if isinstance(view, RunView) and view.finished:
                        return Run(self._client, view)
        assert scope.cancel_called
        raise Timeout(f"run {pathspec} did not finish within {timeout:g}s")

    def watch(self) -> Subscription[Change]:
        return self._client.watch(self.pathspec)

    async def add_tag(self, tag: str) -> Run:
        return await self.add_tags(tag)

    async def add_tags(self, *tags: str) -> Run:
        handle = await self._client.run_handle(self.pathspec)
        receipt = await handle.add_tags(*tags)
        return await self.refresh(after=receipt)

    async def remove_tag(self, tag: str) -> Run:
        return await self.remove_tags(tag)

    async def remove_tags(self, *tags: str) -> Run:
        handle = await self._client.run_handle(self.pathspec)
        receipt = await handle.remove_tags(*tags)
        return await self.refresh(after=receipt)

    async def replace_tag(self, old: str, new: str) -> Run:
        """Swap one user tag for another (Metaflow's ``replace_tag``)."""
        return await self.replace_tags([old], [new])

    async def replace_tags(self, old: list[str], new: list[str]) -> Run:
        handle = await self._client.run_handle(self.pathspec)
        tags = (set(handle.tags) - set(old)) | set(new)
        receipt = await handle.replace_tags(sorted(tags))
        return await self.refresh(after=receipt)

    def _history(self) -> History:
        return History(self._client, self.pathspec, None)


class Step(_AsOf, _Object):
    """A step of a run: its tasks and their counts by state."""

    def __init__(self, client: Client, view: StepView, moment: Moment | None = None) -> None:
        self._client = client
        self._moment = moment
        self.view = view
        self.id = view.step
        self.pathspec = view.pathspec

    @property
    def run_pathspec(self) -> str:
        return f"{self.view.flow}/{self.view.run_id}"

    @property
    def created_at(self) -> datetime:
        return self.view.created_at

    @property
    def finished_at(self) -> datetime | None:
        return self.view.finished_at

    @property
    def counts(self) -> dict[str, int]:
        """Tasks by state, e.g. ``{"completed": 45, "running": 5}``."""
        return dict(self.view.counts)

    @property
    def status(self) -> str:
        return self.view.status

    @property
    def tasks_total(self) -> int:
        return self.view.tasks_total

    @property
    def finished(self) -> bool:
        return self.view.finished_at is not None

    async def tasks(self, state: TaskState | str | None = None) -> list[Task]:
        """Every task of the step (optionally of one state), in task order."""
        if self._moment is not None:
            try:
                wanted = None if state is None else TaskState(state)
            except ValueError:
                states = ", ".join(s.value for s in TaskState)
                raise BadFilter(f"unknown task state {state!r}; states are {states}") from None
            return [
                Task(self._client, view, None, self._moment)
                for view in self._moment.tasks(self.id)
                if wanted is None or view.state is wanted
            ]
        page = await self._client.tasks(self.run_pathspec, self.id, state=state)
        return [task async for task in page.all()]

    async def task(self) -> Task | None:
        """The step's first task (the only one for a linear step)."""
        if self._moment is not None:
            tasks = self._moment.tasks(self.id)
            return Task(self._client, tasks[0], None, self._moment) if tasks else None
        page = await self._client.tasks(self.run_pathspec, self.id, page_size=1)
        return page.items[0] if page.items else None

    async def __aiter__(self) -> AsyncIterator[Task]:
        if self._moment is not None:
            for task in await self.tasks():
                yield task
            return
        page = await self._client.tasks(self.run_pathspec, self.id)
        async for task in page.all():
            yield task

    def __getitem__(self, task_id: str | int) -> Awaitable[Task]:
        if self._moment is not None:
            return self._task_now(str(task_id))
        return self._client.task(f"{self.pathspec}/{task_id}")

    async def _task_now(self, task_id: str) -> Task:
        assert self._moment is not None
        view = self._moment.task_view(f"{self.pathspec}/{task_id}")
        return Task(self._client, view, None, self._moment)


class Task(_AsOf, LogReads, MetricReads, _Object):
    """A task, showing its latest attempt or the one chosen with ``attempt=``."""

    def __init__(
        self,
        client: Client,
        view: TaskView,
        attempt: int | None = None,
        moment: Moment | None = None,
    ) -> None:
        self._client = client
        self._moment = moment
        self.view = view
        self.id = view.task_id
        self.pathspec = view.pathspec
        self._attempt = view.attempt if attempt is None else attempt
        chosen = view.attempt_view(self._attempt)
        if chosen is None:
            raise NotFound(f"task {view.pathspec} has no attempt {self._attempt}")
        self._attempt_view: AttemptView = chosen
        self._data: Data | None = None

    @property
    def step(self) -> str:
        return self.view.step

    @property
    def run_pathspec(self) -> str:
        return f"{self.view.flow}/{self.view.run_id}"

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def attempts(self) -> list[AttemptView]:
        return list(self.view.attempts)

    @property
    def state(self) -> TaskState:
        return self._attempt_view.state

    @property
    def label(self) -> str | None:
        return self._attempt_view.label

    @property
    def message(self) -> str | None:
        return self._attempt_view.message

    @property
    def created_at(self) -> datetime:
        return self.view.created_at

    @property
    def started_at(self) -> datetime | None:
        return self._attempt_view.started_at

    @property
    def finished_at(self) -> datetime | None:
        return self._attempt_view.finished_at

    @property
    def duration(self) -> float | None:
        view = self._attempt_view
        if view.started_at is None or view.finished_at is None:
            return None
        return (view.finished_at - view.started_at).total_seconds()

    @property
    def finished(self) -> bool:
        return self.state.terminal

    @property
    def successful(self) -> bool:
        return self.state is TaskState.COMPLETED

    @property
    def exception(self) -> ExceptionInfo | None:
        """What this attempt raised, if it failed with an exception."""
        return self._attempt_view.exception

    @property
    def index(self) -> int | None:
        """The index in the innermost foreach, or None outside a foreach."""
        return self.view.foreach_index

    @property
    def foreach_stack(self) -> list[ForeachFrame]:
        return list(self.view.foreach_stack)

    @property
    def runtime_name(self) -> str | None:
        return self.view.runtime_name

    @property
    def environment_info(self) -> dict[str, Any]:
        return dict(self.view.environment_info)

    @property
    def tags(self) -> frozenset[str]:
        return frozenset()

    @property
    def metadata(self) -> list[MetadataView]:
        """Every metadata entry of the task, oldest first."""
        return list(self.view.metadata)

    @property
    def metadata_dict(self) -> dict[str, str]:
        """This attempt's metadata by name, as Metaflow's: ``metadata_dict["attempt"]``.

        Holds ``attempt``, ``runtime``, ``started_at``, ``finished_at`` and
        ``attempt_ok`` for every task (derived from its state; see
        ``TaskView.metadata_of``), then what the worker recorded for this attempt.
        """
        return self.view.metadata_of(self._attempt)

    @property
    def parent_task_pathspecs(self) -> list[str]:
        return list(self.view.parent_tasks)

    @property
    def child_task_pathspecs(self) -> list[str]:
        return list(self.view.child_tasks)

    async def parent_tasks(self) -> list[Task]:
        """The tasks this one came from (the previous step's, or a foreach's branches)."""
        if self._moment is not None:
            return [self._at(p) for p in self.view.parent_tasks]
        return [await self._client.task(p) for p in self.view.parent_tasks]

    async def child_tasks(self) -> list[Task]:
        """The tasks that named this one as a parent."""
        if self._moment is not None:
            return [self._at(p) for p in self.view.child_tasks]
        return [await self._client.task(p) for p in self.view.child_tasks]

    def _at(self, pathspec: str) -> Task:
        """The task at ``pathspec`` at this task's moment."""
        assert self._moment is not None
        return Task(self._client, self._moment.task_view(pathspec), None, self._moment)

    @property
    def data(self) -> Data:
        """This attempt's artifacts: ``task.data.accuracy``, ``"model" in task.data``."""
        if self._data is None:
            self._data = Data(self._client, self.view.artifacts_of(self._attempt))
        return self._data

    @property
    def artifacts(self) -> list[DataArtifact]:
        artifacts = self.view.artifacts_of(self._attempt).values()
        return [DataArtifact(self._client, a) for a in artifacts]

    def __getitem__(self, name: str) -> DataArtifact:
        artifact = self.view.artifacts_of(self._attempt).get(name)
        if artifact is None:
            raise NotFound(f"task {self.pathspec} has no artifact {name!r}")
        return DataArtifact(self._client, artifact)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.view.artifacts_of(self._attempt)

    def __iter__(self) -> Iterator[DataArtifact]:
        return iter(self.artifacts)

    async def refresh(self, *, after: int | Receipt | None = None) -> Task:
        """A newer snapshot of this task (the latest views, even if this one was read ``as_of``)."""
        return await self._client.task(self.pathspec, attempt=None, after=after)

    def watch(self) -> Subscription[Change]:
        return self._client.watch(self.pathspec)

    def _history(self) -> History:
        return History(self._client, self.pathspec, self._attempt)


def object_from_reply(
    client: Client, result: dict[str, Any], attempt: int | None
) -> Flow | Run | Step | Task | DataArtifact:
    """Build the object for a ``get`` reply ``{"kind": ..., "view": ...}``."""
    kind = result["kind"]
    view = result["view"]
    if kind == "flow":
        return Flow(client, FlowSummary.model_validate(view))
    if kind == "run":
        return Run(client, RunView.model_validate(view))
    if kind == "step":
        return Step(client, StepView.model_validate(view))
    if kind == "task":
        return Task(client, TaskView.model_validate(view), attempt)
    if kind == "artifact":
        return DataArtifact(client, ArtifactView.model_validate(view))
    raise RunstateError(f"unknown object kind {kind!r} in reply")
