"""The standard workload's events built without a worker, and logs made of them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from runstate.client.cli._bench._params import FLOW
from runstate.engine._events import (
    ArtifactRecord,
    ArtifactsRecorded,
    ArtifactsRecordedPayload,
    Event,
    ForeachFrame,
    MetadataEntry,
    MetadataRecorded,
    MetadataRecordedPayload,
    RunCreated,
    RunCreatedPayload,
    RunStateChanged,
    RunStateChangedPayload,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    TaskCreatedPayload,
)
from runstate.engine._log import EventLog
from runstate.engine._states import RunState, TaskState


class _EventFactory:
    """Builds the events a worker of the standard workload writes, without the worker."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.system_tags = [f"user:{user}"]

    def run_created(self, run_id: str, *, production: bool) -> RunCreated:
        return RunCreated(
            pathspec=f"{FLOW}/{run_id}",
            actor=self.user,
            payload=RunCreatedPayload(
                flow=FLOW,
                run_id=run_id,
                parameters={"lr": 0.01, "epochs": 3},
                tags=["production"] if production else [],
                system_tags=self.system_tags,
                user=self.user,
            ),
        )

    def run_state(
        self, run_id: str, state: RunState, message: str | None = None
    ) -> RunStateChanged:
        return RunStateChanged(
            pathspec=f"{FLOW}/{run_id}",
            actor=self.user,
            payload=RunStateChangedPayload(state=state, message=message),
        )

    def task_created(
        self,
        run_id: str,
        step: str,
        task_id: str,
        index: int | None,
        num_splits: int | None,
        parents: Sequence[str],
    ) -> TaskCreated:
        stack = (
            [ForeachFrame(step=step, index=index, num_splits=num_splits)]
            if index is not None
            else []
        )
        return TaskCreated(
            pathspec=f"{FLOW}/{run_id}/{step}/{task_id}",
            attempt=0,
            actor=self.user,
            payload=TaskCreatedPayload(
                step=step,
                task_id=task_id,
                foreach_index=index,
                foreach_stack=stack,
                parent_tasks=list(parents),
            ),
        )

    def task_state(
        self,
        pathspec: str,
        attempt: int,
        state: TaskState,
        message: str | None = None,
        label: str | None = None,
    ) -> TaskAttemptStateChanged:
        return TaskAttemptStateChanged(
            pathspec=pathspec,
            attempt=attempt,
            actor=self.user,
            payload=TaskAttemptStatePayload(state=state, message=message, label=label),
        )

    def artifacts(self, pathspec: str, attempt: int, accuracy: float) -> ArtifactsRecorded:
        return ArtifactsRecorded(
            pathspec=pathspec,
            attempt=attempt,
            actor=self.user,
            payload=ArtifactsRecordedPayload(
                artifacts=[
                    ArtifactRecord(
                        name="accuracy", sha256="0" * 64, size=6, codec="json", inline=accuracy
                    )
                ]
            ),
        )

    def metadata(self, pathspec: str, attempt: int) -> MetadataRecorded:
        return MetadataRecorded(
            pathspec=pathspec,
            attempt=attempt,
            actor=self.user,
            payload=MetadataRecordedPayload(
                entries=[
                    MetadataEntry(name="runtime", value="local"),
                    MetadataEntry(name="python_version", value="3.11"),
                ]
            ),
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
        pathspec = f"{FLOW}/{run_id}/{step}/{task_id}"
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

    def workload_run(
        self, number: int, run_id: str, tasks: int, *, data: bool = True
    ) -> Iterator[Event]:
        """Every event of run ``number`` of the standard workload, in a valid order.

        177 state transitions at T=50; with ``data`` also the artifacts and
        metadata a real task records (about 240 events in all).
        """
        yield self.run_created(run_id, production=number % 2 == 0)
        yield self.run_state(run_id, RunState.RUNNING)
        start = f"{FLOW}/{run_id}/start/1"
        yield from self.task_lifecycle(run_id, "start", "1", data=data)
        train = []
        for k in range(1, tasks + 1):
            task_id = str(k + 1)
            train.append(f"{FLOW}/{run_id}/train/{task_id}")
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
            parents=[f"{FLOW}/{run_id}/join/{join_id}"],
            fail_only=failing,
            data=data,
        )
        if failing:
            yield self.run_state(run_id, RunState.FAILED, message="end failed")
        else:
            yield self.run_state(run_id, RunState.COMPLETED)


def _commits(events: Iterator[Event], per_commit: int) -> Iterator[list[Event]]:
    """Group consecutive events of one entity into commits of at most ``per_commit``."""
    batch: list[Event] = []
    for event in events:
        if batch and (len(batch) >= per_commit or batch[0].pathspec != event.pathspec):
            yield batch
            batch = []
        batch.append(event)
    if batch:
        yield batch


def _log_commits(
    factory: _EventFactory, tasks: int, per_commit: int, first_run: int = 1
) -> Iterator[list[Event]]:
    """An endless realistic log: workload runs one after another, with data."""
    for number in itertools.count(first_run):
        yield from _commits(factory.workload_run(number, str(number), tasks), per_commit)


async def _append_all(
    log: EventLog, commits: Iterator[list[Event]], *, limit_events: float, in_flight: int = 4096
) -> tuple[int, int, int]:
    """Pipeline commits until ``limit_events`` events are written; (events, commits, last seq)."""
    events = written = last = 0
    async with log.pipeline(in_flight) as pipe:
        for commit in commits:
            if events >= limit_events:
                break
            await pipe.append(commit)
            events += len(commit)
            written += 1
            if written % 10_000 == 0:
                receipts = await pipe.flush()
                last = max(last, receipts[-1].sequence)
        receipts = await pipe.flush()
        if receipts:
            last = max(last, receipts[-1].sequence)
    return events, written, last
