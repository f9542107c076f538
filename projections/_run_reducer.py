"""The run reducer: fold events into a run's view (pure).

How a run view follows its tasks' states: a ``RunView`` keeps each task's
latest state (``StepSummary.task_states``) but not its attempt number, so it
checks a task change against the task machine trusting the attempt number
the event names: a ``pending`` event for attempt 1 or later is a retry (legal
after failed, cancelled or crashed); any other event continues the current
attempt (legal when the machine allows ``current -> new``). For every log in
which attempt numbers are right, which includes every log runstate's writer
appends (it checks each change before appending), this agrees exactly with
the task's own view. An event whose state change is legal but whose attempt
number is wrong (a stale attempt, a skipped number) is rejected by the task
view and may still move the run's summary: the task view is the authority.
Task events the run summary ignores are recorded as rejected in the task
view only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runstate.engine._events import (
    Event,
    RunCreated,
    RunStateChanged,
    RunTagsChanged,
    RunUpdated,
    TaskAttemptStateChanged,
    TaskCreated,
    construct_fields,
)
from runstate.engine._states import RunState, TaskState, check_run_transition, check_task_transition
from runstate.engine.errors import IllegalTransition
from runstate.projections._drafts import (
    _PENDING,
    _RUN_FIELDS,
    _RUNNING,
    _TERMINAL_TASK,
    _Draft,
    foreign_parent,
)
from runstate.projections._views import Position, RunView, StepSummary, TaskView

__all__ = ["fold_run"]


class _RunDraft(_Draft):
    """A run's draft. Steps it changes are dicts of their fields until ``view()``."""

    __slots__ = ("step_list", "step_names")

    creator = RunCreated
    view_type = RunView

    def __init__(self, pathspec: str, view: RunView | TaskView | None) -> None:
        super().__init__(pathspec, view)
        self.step_list: list[StepSummary | dict[str, Any]] | None = None
        self.step_names: dict[str, int] = {}

    def create(self, event: RunCreated, position: Position) -> None:
        pathspec = event.pathspec
        if pathspec.count("/") != 1:
            return
        payload = event.payload
        try:
            check_run_transition(pathspec, None, payload.state)
        except IllegalTransition:
            return  # a RunCreated the machine refuses creates nothing
        flow, run_id = pathspec.split("/")
        occurred_at = event.occurred_at
        self.fields = {
            **_RUN_FIELDS,
            "pathspec": pathspec,
            "flow": flow,
            "run_id": run_id,
            "run_number": int(run_id) if run_id.isascii() and run_id.isdigit() else None,
            "state": payload.state,
            "created_at": occurred_at,
            "started_at": occurred_at if payload.state is RunState.RUNNING else None,
            "user": payload.user,
            "tags": frozenset(payload.tags),
            "system_tags": frozenset(payload.system_tags),
            "parameters": payload.parameters,
            # the very same dict until a config update: the store writes its rows once
            "config": payload.parameters,
            "script_name": payload.script_name,
            "scheduled_at": payload.scheduled_at,
            "idempotency_key": payload.idempotency_key,
        }
        self.mark(position)

    def finish(self, fields: dict[str, Any]) -> None:
        if self.step_list is not None:
            fields["steps"] = tuple(
                construct_fields(StepSummary, step) if type(step) is dict else step
                for step in self.step_list
            )

    def steps_now(self) -> list[StepSummary | dict[str, Any]]:
        steps = self.step_list
        if steps is None:
            assert self.fields is not None
            steps = self.step_list = list(self.fields["steps"])
            self.step_names = {summary.name: i for i, summary in enumerate(steps)}  # type: ignore[union-attr]
        return steps

    def step_of(self, event_pathspec: str) -> tuple[int, str, str] | None:
        """(index of its step, or -1 if new; step; task id) of a task event of this run."""
        prefix = self.pathspec + "/"
        if not event_pathspec.startswith(prefix):
            return None
        parts = event_pathspec[len(prefix) :].split("/")
        if len(parts) != 2:
            return None
        step, task_id = parts
        self.steps_now()
        return self.step_names.get(step, -1), step, task_id

    def step_draft(self, i: int) -> dict[str, Any]:
        """Step ``i`` as a dict of its fields, to change."""
        steps = self.steps_now()
        step = steps[i]
        if type(step) is dict:
            return step
        fields = step.__dict__.copy()
        fields["task_states"] = dict(fields["task_states"])
        steps[i] = fields
        return fields


def _run_created_again(draft: _RunDraft, event: RunCreated, position: Position) -> None:
    if event.pathspec == draft.pathspec:
        draft.reject(event, position, f"{draft.pathspec}: the run exists already")


def _run_state(draft: _RunDraft, event: RunStateChanged, position: Position) -> None:
    if event.pathspec != draft.pathspec:
        return
    fields = draft.fields
    assert fields is not None
    payload = event.payload
    new = payload.state
    try:
        check_run_transition(draft.pathspec, fields["state"], new, resume=payload.resume)
    except IllegalTransition as exc:
        draft.reject(event, position, str(exc))
        return
    fields["state"] = new
    fields["label"] = payload.label
    fields["message"] = payload.message
    if new is RunState.RUNNING and fields["started_at"] is None:
        fields["started_at"] = event.occurred_at
    if new.terminal:
        fields["finished_at"] = event.occurred_at
    elif payload.resume:
        fields["finished_at"] = None
    draft.mark(position)


def _run_tags(draft: _RunDraft, event: RunTagsChanged, position: Position) -> None:
    if event.pathspec != draft.pathspec:
        return
    fields = draft.fields
    assert fields is not None
    payload = event.payload
    tags = set(fields["tags"] if payload.replace is None else payload.replace)
    tags.update(payload.add)
    tags.difference_update(payload.remove)
    if tags != fields["tags"]:
        fields["tags"] = frozenset(tags)
        draft.mark(position)


def _run_updated(draft: _RunDraft, event: RunUpdated, position: Position) -> None:
    # in any state: name, notes, config and summary are edited after a run finishes too
    if event.pathspec != draft.pathspec:
        return
    fields = draft.fields
    assert fields is not None
    payload = event.payload
    if "name" in payload.changes:
        fields["display_name"] = payload.name
    if "notes" in payload.changes:
        fields["notes"] = payload.notes
    if payload.config:
        fields["config"] = {**fields["config"], **payload.config}
    if payload.summary:
        fields["summary_overrides"] = {**fields["summary_overrides"], **payload.summary}
    draft.mark(position)


def _run_task_created(draft: _RunDraft, event: TaskCreated, position: Position) -> None:
    where = draft.step_of(event.pathspec)
    if where is None:
        return
    i, step, task_id = where
    foreign = foreign_parent(event)
    if foreign is not None:
        run = draft.pathspec
        draft.reject(
            event,
            position,
            f"{event.pathspec}: parent task {foreign} is not a task of {run}; "
            "a task's parents are tasks of its own run",
        )
        return
    if i < 0:
        steps = draft.steps_now()
        draft.step_names[step] = len(steps)
        steps.append(
            {
                "name": step,
                "created_at": event.occurred_at,
                "finished_at": None,
                "task_states": {task_id: _PENDING},
            }
        )
    else:
        summary = draft.step_draft(i)
        if task_id in summary["task_states"]:
            return  # a repeated creation: the task view records it as rejected
        summary["task_states"][task_id] = _PENDING
        summary["finished_at"] = None
    fields = draft.fields
    assert fields is not None
    if step == "end" and fields["end_task"] is None:
        fields["end_task"] = event.pathspec
    draft.mark(position)


def _summary_accepts(current: TaskState, attempt: int | None, new: TaskState) -> bool:
    """Whether the run summary takes a task change (see the module docstring)."""
    number = 0 if attempt is None else attempt
    assumed = number - 1 if new is _PENDING and number >= 1 else number
    try:
        check_task_transition("", assumed, current, number, new)
    except IllegalTransition:
        return False
    return True


def _run_task_state(draft: _RunDraft, event: TaskAttemptStateChanged, position: Position) -> None:
    where = draft.step_of(event.pathspec)
    if where is None or where[0] < 0:
        return
    i, _, task_id = where
    summary = draft.step_draft(i)
    states = summary["task_states"]
    current = states.get(task_id)
    new = event.payload.state
    if current is None or not _summary_accepts(current, event.attempt, new):
        return
    states[task_id] = new
    finished_at: datetime | None = None
    if new in _TERMINAL_TASK:
        # ``in`` over the values compares in C, identity first (states are enum members)
        waiting = states.values()
        if _PENDING not in waiting and _RUNNING not in waiting:
            finished_at = event.occurred_at
    summary["finished_at"] = finished_at
    draft.mark(position)


_RunDraft.steps = {
    TaskAttemptStateChanged: _run_task_state,
    TaskCreated: _run_task_created,
    RunStateChanged: _run_state,
    RunTagsChanged: _run_tags,
    RunUpdated: _run_updated,
    RunCreated: _run_created_again,
}


def fold_run(view: RunView | None, event: Event, position: Position) -> RunView | None:
    """Fold one event into a run's view; return the next view.

    ``view`` is None before the run's ``RunCreated``: that event creates the
    view (of ``event.pathspec``) and any other leaves it None. A
    ``RunCreated`` whose initial state the machine refuses creates nothing.
    The run view follows its own events and its tasks' creation and state
    changes; artifacts, metadata and heartbeats do not change it.
    """
    draft = _RunDraft(event.pathspec if view is None else view.pathspec, view)
    draft.apply(event, position)
    return draft.view()  # type: ignore[return-value]
