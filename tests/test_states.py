"""The run and task-attempt state machines, over every pair of states."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstate.engine._states import (
    RunState,
    TaskState,
    check_run_transition,
    check_task_transition,
)
from runstate.engine.errors import IllegalTransition

R = RunState
T = TaskState

# The machines as DESIGN.md section 5 draws them, written out independently
# of engine/_states.py so that a change there has to change this too.
RUN_NEXT: dict[RunState, set[RunState]] = {
    R.SCHEDULED: {R.PENDING, R.RUNNING, R.CANCELLED, R.CRASHED},
    R.PENDING: {R.RUNNING, R.CANCELLING, R.CANCELLED, R.FAILED, R.CRASHED},
    R.RUNNING: {R.COMPLETED, R.FAILED, R.CANCELLING, R.CANCELLED, R.CRASHED},
    R.CANCELLING: {R.CANCELLED, R.COMPLETED, R.FAILED, R.CRASHED},
    R.COMPLETED: set(),
    R.FAILED: set(),
    R.CANCELLED: set(),
    R.CRASHED: set(),
}
RUN_INITIAL = {R.SCHEDULED, R.PENDING, R.RUNNING}
RESUMABLE = {R.FAILED, R.CRASHED, R.CANCELLED}

TASK_NEXT: dict[TaskState, set[TaskState]] = {
    T.PENDING: {T.RUNNING, T.FAILED, T.CANCELLED, T.CRASHED},
    T.RUNNING: {T.COMPLETED, T.FAILED, T.CANCELLED, T.CRASHED},
    T.COMPLETED: set(),
    T.FAILED: set(),
    T.CANCELLED: set(),
    T.CRASHED: set(),
}
RETRYABLE = {T.FAILED, T.CANCELLED, T.CRASHED}

RUN = "Train/42"
TASK = "Train/42/train/7"


def _assert_names(exc: IllegalTransition, entity: str, current: str | None, new: str) -> None:
    message = str(exc)
    assert entity in message
    assert (current if current is not None else "(new)") in message
    assert new in message
    assert exc.entity.startswith(entity)
    assert exc.from_state == current
    assert exc.to_state == new


def test_terminal_states() -> None:
    """Exactly completed, failed, cancelled and crashed are terminal, for runs and tasks."""
    assert {s for s in R if s.terminal} == {R.COMPLETED, R.FAILED, R.CANCELLED, R.CRASHED}
    assert {s for s in T if s.terminal} == {T.COMPLETED, T.FAILED, T.CANCELLED, T.CRASHED}


@pytest.mark.parametrize("new", list(R))
def test_run_creation(new: RunState) -> None:
    """A new run may start scheduled, pending or running, and in no other state."""
    if new in RUN_INITIAL:
        check_run_transition(RUN, None, new)
        check_run_transition(RUN, None, new, resume=True)  # resume means nothing for a new run
    else:
        with pytest.raises(IllegalTransition) as info:
            check_run_transition(RUN, None, new)
        _assert_names(info.value, RUN, None, new)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(R, R)))
def test_run_transition_without_resume(current: RunState, new: RunState) -> None:
    """Every (from, to) pair of the run machine is allowed exactly when the design allows it."""
    if new in RUN_NEXT[current]:
        check_run_transition(RUN, current, new)
        return
    with pytest.raises(IllegalTransition) as info:
        check_run_transition(RUN, current, new)
    _assert_names(info.value, RUN, current, new)
    if current in RESUMABLE and new is R.RUNNING:
        assert "resume=True" in str(info.value)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(R, R)))
def test_run_transition_with_resume(current: RunState, new: RunState) -> None:
    """With resume=True only failed, crashed or cancelled -> running is allowed."""
    if current in RESUMABLE and new is R.RUNNING:
        check_run_transition(RUN, current, new, resume=True)
        return
    with pytest.raises(IllegalTransition) as info:
        check_run_transition(RUN, current, new, resume=True)
    _assert_names(info.value, RUN, current, new)


@pytest.mark.parametrize(("attempt", "new"), list(itertools.product([0, 1, 2, -1], T)))
def test_task_creation(attempt: int, new: TaskState) -> None:
    """A new task starts as attempt 0, pending, and in no other way."""
    if attempt == 0 and new is T.PENDING:
        check_task_transition(TASK, None, None, attempt, new)
        return
    with pytest.raises(IllegalTransition) as info:
        check_task_transition(TASK, None, None, attempt, new)
    _assert_names(info.value, TASK, None, new)
    assert f"attempt {attempt}" in str(info.value)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(T, T)))
@pytest.mark.parametrize("attempt", [0, 3])
def test_task_same_attempt(attempt: int, current: TaskState, new: TaskState) -> None:
    """Within one attempt every (from, to) pair is allowed exactly when the machine allows it."""
    if new in TASK_NEXT[current]:
        check_task_transition(TASK, attempt, current, attempt, new)
        return
    with pytest.raises(IllegalTransition) as info:
        check_task_transition(TASK, attempt, current, attempt, new)
    _assert_names(info.value, TASK, current, new)
    assert f"attempt {attempt}" in str(info.value)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(T, T)))
def test_task_next_attempt(current: TaskState, new: TaskState) -> None:
    """The next attempt may start, pending, only after a failed, cancelled or crashed one."""
    if current in RETRYABLE and new is T.PENDING:
        check_task_transition(TASK, 1, current, 2, new)
        return
    with pytest.raises(IllegalTransition) as info:
        check_task_transition(TASK, 1, current, 2, new)
    assert TASK in str(info.value)
    assert new in str(info.value)
    if current not in RETRYABLE:
        _assert_names(info.value, TASK, current, new)
        assert "retried" in str(info.value)
    else:
        assert "starts pending" in str(info.value)


@pytest.mark.parametrize("current", list(T))
@pytest.mark.parametrize("new", list(T))
@pytest.mark.parametrize("attempt", [0, 1, 4, 10, -1])
def test_task_other_attempt_numbers(current: TaskState, new: TaskState, attempt: int) -> None:
    """An earlier (closed) attempt or a skipped attempt number is never allowed."""
    latest = 2
    with pytest.raises(IllegalTransition) as info:
        check_task_transition(TASK, latest, current, attempt, new)
    _assert_names(info.value, TASK, current, new)
    assert f"latest attempt is {latest}" in str(info.value)


@settings(max_examples=200, deadline=None)
@given(
    path=st.lists(st.sampled_from(list(T)), max_size=12),
)
def test_task_walk_matches_the_table(path: list[TaskState]) -> None:
    """Walking any sequence of states accepts exactly the steps the table allows."""
    attempt, state = 0, T.PENDING
    check_task_transition(TASK, None, None, 0, T.PENDING)
    for new in path:
        if new is T.PENDING and state in RETRYABLE:
            check_task_transition(TASK, attempt, state, attempt + 1, new)
            attempt, state = attempt + 1, new
        elif new in TASK_NEXT[state]:
            check_task_transition(TASK, attempt, state, attempt, new)
            state = new
        else:
            with pytest.raises(IllegalTransition):
                check_task_transition(TASK, attempt, state, attempt, new)


def test_illegal_transition_carries_its_parts() -> None:
    """IllegalTransition keeps entity, from and to as attributes and in to_wire details."""
    with pytest.raises(IllegalTransition) as info:
        check_run_transition(RUN, R.COMPLETED, R.RUNNING)
    exc = info.value
    assert (exc.entity, exc.from_state, exc.to_state) == (RUN, "completed", "running")
    assert str(exc).startswith(f"{RUN}: cannot go from completed to running")
    assert exc.to_wire()["details"] == {
        "entity": RUN,
        "from_state": "completed",
        "to_state": "running",
    }
