"""Run and task views made by hand, for the read store's tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import JsonValue

from runstate.engine._states import RunState, TaskState
from runstate.projections._views import RunView, StepSummary, TaskView

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_run(
    flow: str = "Train",
    number: int | None = 1,
    *,
    run_id: str | None = None,
    state: RunState = RunState.COMPLETED,
    created: float = 0,
    started: float | None = None,
    finished: float | None = None,
    user: str | None = "alice",
    tags: frozenset[str] | set[str] = frozenset(),
    system_tags: frozenset[str] | set[str] | None = None,
    parameters: dict[str, JsonValue] | None = None,
    steps: tuple[StepSummary, ...] = (),
) -> RunView:
    run_id = run_id if run_id is not None else str(number)
    return RunView(
        pathspec=f"{flow}/{run_id}",
        flow=flow,
        run_id=run_id,
        run_number=number,
        state=state,
        created_at=at(created),
        started_at=None if started is None else at(started),
        finished_at=None if finished is None else at(finished),
        user=user,
        tags=frozenset(tags),
        system_tags=frozenset({f"user:{user}"} if system_tags is None else system_tags),
        parameters=parameters or {},
        steps=steps,
    )


def make_task(
    run: str = "Train/1",
    step: str = "train",
    task_id: str = "1",
    *,
    state: TaskState = TaskState.COMPLETED,
    foreach_index: int | None = None,
) -> TaskView:
    flow, run_id = run.split("/")
    return TaskView(
        pathspec=f"{run}/{step}/{task_id}",
        flow=flow,
        run_id=run_id,
        step=step,
        task_id=task_id,
        state=state,
        created_at=T0,
        foreach_index=foreach_index,
    )
