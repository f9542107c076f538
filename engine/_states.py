"""The run and task-attempt state machines (pure, no I/O).

The writer calls these before appending and refuses an illegal change with
``IllegalTransition``; the projector calls the same functions and records an
illegal event from a foreign or old writer as rejected instead of raising.
"""

from __future__ import annotations

from enum import StrEnum

from runstate.engine.errors import IllegalTransition

__all__ = [
    "RunState",
    "TaskState",
    "check_run_transition",
    "check_task_transition",
]


class RunState(StrEnum):
    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CRASHED = "crashed"

    @property
    def terminal(self) -> bool:
        return self in _RUN_TERMINAL


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CRASHED = "crashed"

    @property
    def terminal(self) -> bool:
        return self in _TASK_TERMINAL


_RUN_TERMINAL = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.CRASHED}
)
_TASK_TERMINAL = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.CRASHED}
)
_RESUMABLE = frozenset({RunState.FAILED, RunState.CRASHED, RunState.CANCELLED})

_RUN_INITIAL = frozenset({RunState.SCHEDULED, RunState.PENDING, RunState.RUNNING})

_RUN_NEXT: dict[RunState, frozenset[RunState]] = {
    RunState.SCHEDULED: frozenset(
        {RunState.PENDING, RunState.RUNNING, RunState.CANCELLED, RunState.CRASHED}
    ),
    RunState.PENDING: frozenset(
        {
            RunState.RUNNING,
            RunState.CANCELLING,
            RunState.CANCELLED,
            RunState.FAILED,
            RunState.CRASHED,
        }
    ),
    RunState.RUNNING: frozenset(
        {
            RunState.COMPLETED,
            RunState.FAILED,
            RunState.CANCELLING,
            RunState.CANCELLED,
            RunState.CRASHED,
        }
    ),
    RunState.CANCELLING: frozenset(
        {RunState.CANCELLED, RunState.COMPLETED, RunState.FAILED, RunState.CRASHED}
    ),
    RunState.COMPLETED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
    RunState.CRASHED: frozenset(),
}

_TASK_NEXT: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset(
        {TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED, TaskState.CRASHED}
    ),
    TaskState.RUNNING: frozenset(
        {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.CRASHED}
    ),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
    TaskState.CRASHED: frozenset(),
}

# Only an unsuccessful attempt may be retried.
_RETRYABLE = frozenset({TaskState.FAILED, TaskState.CANCELLED, TaskState.CRASHED})


def check_run_transition(
    entity: str, current: RunState | None, new: RunState, *, resume: bool = False
) -> None:
    """Raise ``IllegalTransition`` unless a run may go from ``current`` to ``new``.

    ``current`` is None for a run that does not exist yet: it may start as
    scheduled, pending or running. ``failed``/``crashed``/``cancelled`` may
    go back to ``running`` only with ``resume=True`` (an explicit resume).
    """
    if current is None:
        if new not in _RUN_INITIAL:
            raise IllegalTransition(entity, None, new, "a run starts scheduled, pending or running")
        return
    if resume:
        if current in _RESUMABLE and new is RunState.RUNNING:
            return
        raise IllegalTransition(
            entity, current, new, "resume goes from failed, crashed or cancelled to running"
        )
    if new not in _RUN_NEXT[current]:
        reason = "the run has finished" if current.terminal else ""
        if current in _RESUMABLE and new is RunState.RUNNING:
            reason = "pass resume=True to resume a finished run"
        raise IllegalTransition(entity, current, new, reason)


def check_task_transition(
    entity: str,
    current_attempt: int | None,
    current: TaskState | None,
    attempt: int,
    new: TaskState,
) -> None:
    """Raise ``IllegalTransition`` unless attempt ``attempt`` may enter ``new``.

    ``current_attempt``/``current`` describe the task's latest attempt (None
    for a task not created yet). A new attempt must be the next number, start
    ``pending``, and follow an unsuccessful attempt; an existing attempt moves
    only along the machine; earlier attempts are closed.
    """
    if current_attempt is None or current is None:
        if attempt != 0 or new is not TaskState.PENDING:
            raise IllegalTransition(
                f"{entity} attempt {attempt}", None, new, "a task starts as attempt 0, pending"
            )
        return
    if attempt == current_attempt:
        if new not in _TASK_NEXT[current]:
            reason = "the attempt has finished" if current.terminal else ""
            raise IllegalTransition(f"{entity} attempt {attempt}", current, new, reason)
        return
    if attempt == current_attempt + 1:
        if current not in _RETRYABLE:
            raise IllegalTransition(
                f"{entity} attempt {attempt}",
                current,
                new,
                f"attempt {current_attempt} is {current}; only a failed, cancelled or crashed "
                "attempt may be retried",
            )
        if new is not TaskState.PENDING:
            raise IllegalTransition(
                f"{entity} attempt {attempt}", None, new, "a new attempt starts pending"
            )
        return
    raise IllegalTransition(
        f"{entity} attempt {attempt}",
        current,
        new,
        f"the latest attempt is {current_attempt}; the next is {current_attempt + 1}",
    )
