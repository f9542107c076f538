"""``EventFactory``: the events a worker writes, built without a worker, for tests and benchmarks.

Public as ``runstate.engine.testing.EventFactory``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from runstate.engine._events import (
    ArtifactRecord,
    ArtifactsRecorded,
    ArtifactsRecordedPayload,
    Event,
    ForeachFrame,
    Heartbeat,
    MetadataEntry,
    MetadataRecorded,
    MetadataRecordedPayload,
    RunCreated,
    RunCreatedPayload,
    RunStateChanged,
    RunStateChangedPayload,
    RunTagsChanged,
    RunTagsChangedPayload,
    RunUpdated,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    TaskCreatedPayload,
    utcnow,
)
from runstate.engine._run_update import run_update
from runstate.engine._states import RunState, TaskState

__all__ = ["EventFactory"]


class EventFactory:
    """Builds the events a worker writes, without the worker: for tests and benchmarks.

    Events are of flow ``flow`` (the standard workload's ``Train`` by default)
    and written by ``user``; ``workload_run`` is one run of the standard
    workload (shared/WORKLOAD.md). A run is named by its id in ``flow`` or by
    its pathspec (``"Flow/id"``). With ``start``, events occur at ``start``
    plus ``at`` seconds (``at=0`` unless given), so folds are reproducible;
    without it, at ``at`` seconds from now (now unless given). Keyword
    arguments a method does not name go to the event's payload.
    """

    def __init__(
        self, user: str = "tester", flow: str = "Train", *, start: datetime | None = None
    ) -> None:
        self.user = user
        self.flow = flow
        self.start = start
        self.system_tags = [f"user:{user}"]

    def occurred_at(self, at: float | datetime | None = None) -> datetime:
        """The time of an event ``at`` seconds after ``start`` (see the class), or at ``at``."""
        if isinstance(at, datetime):
            return at
        base = self.start if self.start is not None else utcnow()
        return base + timedelta(seconds=at or 0)

    def _run(self, run: str) -> tuple[str, str]:
        """(pathspec, run id) of a run id of the factory's flow or a run pathspec."""
        if "/" in run:
            return run, run.rsplit("/", 1)[1]
        return f"{self.flow}/{run}", run

    def run_created(
        self,
        run: str,
        *,
        production: bool = False,
        at: float | datetime | None = None,
        **payload: Any,
    ) -> RunCreated:
        """A run's creation, with the workload's parameters and tags unless ``payload`` says."""
        pathspec, run_id = self._run(run)
        fields: dict[str, Any] = {
            "parameters": {"lr": 0.01, "epochs": 3},
            "tags": ["production"] if production else [],
            "system_tags": self.system_tags,
            "user": self.user,
            **payload,
        }
        return RunCreated(
            pathspec=pathspec,
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=RunCreatedPayload(flow=pathspec.split("/")[0], run_id=run_id, **fields),
        )

    def run_state(
        self,
        run: str,
        state: RunState,
        message: str | None = None,
        *,
        at: float | datetime | None = None,
        **payload: Any,
    ) -> RunStateChanged:
        """A run's state change (``label``, ``resume``... in ``payload``)."""
        return RunStateChanged(
            pathspec=self._run(run)[0],
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=RunStateChangedPayload(state=state, message=message, **payload),
        )

    def run_tags(
        self,
        run: str,
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        replace: Sequence[str] | None = None,
        at: float | datetime | None = None,
    ) -> RunTagsChanged:
        """A change of a run's user tags: ``replace`` them all, then ``add`` and ``remove``."""
        return RunTagsChanged(
            pathspec=self._run(run)[0],
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=RunTagsChangedPayload(
                add=list(add),
                remove=list(remove),
                replace=None if replace is None else list(replace),
            ),
        )

    def run_updated(
        self,
        run: str,
        *,
        at: float | datetime | None = None,
        **changes: Any,
    ) -> RunUpdated:
        """A run's edit: ``name``, ``notes``, ``config``, ``summary`` as ``RunHandle.update``."""
        return RunUpdated(
            pathspec=self._run(run)[0],
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=run_update(**changes),
        )

    def task_created(
        self,
        run: str,
        step: str | None = None,
        task_id: str | None = None,
        index: int | None = None,
        num_splits: int | None = None,
        parents: Sequence[str] = (),
        *,
        at: float | datetime | None = None,
        **payload: Any,
    ) -> TaskCreated:
        """A task's creation; ``run`` alone may be the task's pathspec (no ``step``, ``task_id``).

        ``index`` makes it a foreach task (with a one-frame foreach stack).
        """
        if step is None or task_id is None:
            pathspec = run
            step, task_id = run.split("/")[2:4]
        else:
            pathspec = f"{self._run(run)[0]}/{step}/{task_id}"
        stack = (
            [ForeachFrame(step=step, index=index, num_splits=num_splits)]
            if index is not None
            else []
        )
        fields: dict[str, Any] = {
            "foreach_index": index,
            "foreach_stack": stack,
            "parent_tasks": list(parents),
            **payload,
        }
        return TaskCreated(
            pathspec=pathspec,
            attempt=0,
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=TaskCreatedPayload(step=step, task_id=task_id, **fields),
        )

    def task_state(
        self,
        pathspec: str,
        attempt: int | None,
        state: TaskState,
        message: str | None = None,
        label: str | None = None,
        *,
        at: float | datetime | None = None,
        **payload: Any,
    ) -> TaskAttemptStateChanged:
        """A task attempt's state change (``exception``... in ``payload``)."""
        return TaskAttemptStateChanged(
            pathspec=pathspec,
            attempt=attempt,
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=TaskAttemptStatePayload(state=state, message=message, label=label, **payload),
        )

    def artifacts(
        self,
        pathspec: str,
        attempt: int | None,
        accuracy: float = 0.5,
        *,
        records: Sequence[ArtifactRecord] | None = None,
        at: float | datetime | None = None,
    ) -> ArtifactsRecorded:
        """Artifacts recorded by a task attempt: ``records``, or one inline ``accuracy``."""
        if records is None:
            records = [
                ArtifactRecord(
                    name="accuracy", sha256="0" * 64, size=6, codec="json", inline=accuracy
                )
            ]
        return ArtifactsRecorded(
            pathspec=pathspec,
            attempt=attempt,
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=ArtifactsRecordedPayload(artifacts=list(records)),
        )

    def metadata(
        self,
        pathspec: str,
        attempt: int | None,
        entries: Iterable[tuple[str, str]] | None = None,
        *,
        at: float | datetime | None = None,
    ) -> MetadataRecorded:
        """Metadata recorded by a task attempt: ``entries`` (name, value), or the workload's."""
        if entries is None:
            entries = [("runtime", "local"), ("python_version", "3.11")]
        return MetadataRecorded(
            pathspec=pathspec,
            attempt=attempt,
            occurred_at=self.occurred_at(at),
            actor=self.user,
            payload=MetadataRecordedPayload(
                entries=[MetadataEntry(name=name, value=value) for name, value in entries]
            ),
        )

    def note(self, pathspec: str, text: str = "x", attempt: int | None = 0) -> MetadataRecorded:
        """A small event of the run or task at ``pathspec`` carrying ``text`` (metadata ``note``).

        The smallest event an entity can have: for tests of the log itself.
        """
        return self.metadata(pathspec, attempt, [("note", text)])

    def heartbeat(
        self, pathspec: str, attempt: int | None = None, *, at: float | datetime | None = None
    ) -> Heartbeat:
        """A heartbeat of a run or a task attempt."""
        return Heartbeat(
            pathspec=pathspec, attempt=attempt, occurred_at=self.occurred_at(at), actor=self.user
        )

    def task_lifecycle(
        self,
        run_id: str,
        step: str,
        task_id: str,
        *,
        index: int | None = None,
        num_splits: int | None = None,
        parents: Sequence[str] = (),
        fail_first: bool = False,
        fail_only: bool = False,
        data: bool = True,
    ) -> Iterator[Event]:
        """A task's events, one per commit as a worker appends them."""
        pathspec = f"{self.flow}/{run_id}/{step}/{task_id}"
        yield self.task_created(run_id, step, task_id, index, num_splits, parents)
        yield self.task_state(pathspec, 0, TaskState.RUNNING)
        attempt = 0
        if fail_first or fail_only:
            yield self.task_state(pathspec, 0, TaskState.FAILED, message="RuntimeError: injected")
            if fail_only:
                return
            attempt = 1
            yield self.task_state(pathspec, 1, TaskState.PENDING, label="AwaitingRetry")
            yield self.task_state(pathspec, 1, TaskState.RUNNING)
        if data:
            yield self.artifacts(pathspec, attempt, 0.5 + (index or 0) / 1000)
            if index is None or index % 5 == 0:
                yield self.metadata(pathspec, attempt)
        yield self.task_state(pathspec, attempt, TaskState.COMPLETED)

    def run_commits(self, run_id: str, tasks: int) -> list[list[Event]]:
        """The commits of one complete run with ``tasks`` foreach tasks of step ``train``.

        Each task is created and started in one commit and records an artifact
        and completes in another, as a worker appends them; the run is
        ``production``-tagged when its id is even.
        """
        production = run_id.isdigit() and int(run_id) % 2 == 0
        commits: list[list[Event]] = [
            [self.run_created(run_id, production=production)],
            [self.run_state(run_id, RunState.RUNNING)],
        ]
        for k in range(tasks):
            task_id = str(k + 1)
            pathspec = f"{self.flow}/{run_id}/train/{task_id}"
            commits.append(
                [
                    self.task_created(run_id, "train", task_id, index=k),
                    self.task_state(pathspec, 0, TaskState.RUNNING),
                ]
            )
            commits.append(
                [
                    self.artifacts(pathspec, 0, k / 100),
                    self.task_state(pathspec, 0, TaskState.COMPLETED),
                ]
            )
        commits.append([self.run_state(run_id, RunState.COMPLETED)])
        return commits

    def workload_run(
        self, number: int, run_id: str, tasks: int, *, data: bool = True
    ) -> Iterator[Event]:
        """Every event of run ``number`` of the standard workload, in a valid order.

        177 state transitions at T=50; with ``data`` also the artifacts and
        metadata a real task records (about 240 events in all).
        """
        yield self.run_created(run_id, production=number % 2 == 0)
        yield self.run_state(run_id, RunState.RUNNING)
        start = f"{self.flow}/{run_id}/start/1"
        yield from self.task_lifecycle(run_id, "start", "1", data=data)
        train = []
        for k in range(1, tasks + 1):
            task_id = str(k + 1)
            train.append(f"{self.flow}/{run_id}/train/{task_id}")
            yield from self.task_lifecycle(
                run_id,
                "train",
                task_id,
                index=k - 1,
                num_splits=tasks,
                parents=[start],
                fail_first=k % 10 == 0,
                data=data,
            )
        join_id, end_id = str(tasks + 2), str(tasks + 3)
        yield from self.task_lifecycle(run_id, "join", join_id, parents=train, data=data)
        failing = number == 7
        yield from self.task_lifecycle(
            run_id,
            "end",
            end_id,
            parents=[f"{self.flow}/{run_id}/join/{join_id}"],
            fail_only=failing,
            data=data,
        )
        if failing:
            yield self.run_state(run_id, RunState.FAILED, message="end failed")
        else:
            yield self.run_state(run_id, RunState.COMPLETED)
