"""Reducers: fold events into run and task views (pure: no I/O, no clock, no randomness).

The projector folds the log into the read store with these functions and the
client's live subscriptions fold the events they receive with the same ones,
so both see the same views. A reducer takes a view (or None), one event and
the event's position, (stream sequence, index in its commit), and returns the
next view.

Three rules every reducer keeps:

- A reducer returns the very same object when the event does not change the
  view: it is about another entity, it is a heartbeat, or its position is at
  or before the view's ``position`` (it was folded already, which is what
  makes folding idempotent). A caller may skip saving a view that ``is`` the
  one it passed in.
- Otherwise the returned view carries the event's position: ``position`` is
  the last event that changed the view.
- An event the state machine refuses (written by a foreign or old writer) is
  appended to the view's ``rejected`` and changes nothing else.

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

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from runstate.engine._events import (
    ArtifactsRecorded,
    Event,
    MetadataRecorded,
    RunCreated,
    RunStateChanged,
    RunTagsChanged,
    TaskAttemptStateChanged,
    TaskCreated,
    replace_fields,
)
from runstate.engine._states import (
    RunState,
    TaskState,
    check_run_transition,
    check_task_transition,
)
from runstate.engine.errors import IllegalTransition
from runstate.projections._views import (
    ArtifactView,
    AttemptView,
    MetadataView,
    Position,
    Rejection,
    RunView,
    StepSummary,
    TaskView,
)

__all__ = ["ViewKey", "fold", "fold_run", "fold_task", "fold_view", "touched"]

#: ("run", run pathspec) or ("task", task pathspec)
ViewKey = tuple[str, str]

_V = TypeVar("_V", RunView, TaskView)

_TERMINAL_TASK = frozenset(state for state in TaskState if state.terminal)
_PENDING = TaskState.PENDING
_RUNNING = TaskState.RUNNING


# -- helpers -----------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Blank views that new ones are made from with ``replace_fields``: an event's
# payload was validated when it was decoded, so a view made from it need not
# be validated again (that would cost more than the rest of the fold).
_BLANK_RUN = RunView(pathspec="", flow="", run_id="", state=RunState.PENDING, created_at=_EPOCH)
_BLANK_STEP = StepSummary(name="", created_at=_EPOCH)
_BLANK_TASK = TaskView(
    pathspec="", flow="", run_id="", step="", task_id="", state=_PENDING, created_at=_EPOCH
)
_BLANK_ATTEMPT = AttemptView(attempt=0, state=_PENDING, created_at=_EPOCH)
_BLANK_ARTIFACT = ArtifactView(
    name="", task="", attempt=0, sha256="", size=0, codec="json", created_at=_EPOCH, sequence=0
)
_BLANK_METADATA = MetadataView(name="", value="", type="str", attempt=0, created_at=_EPOCH)


def _reject(view: _V, event: Event, position: Position, reason: str) -> _V:
    rejection = Rejection(sequence=position[0], index=position[1], type=event.type, reason=reason)
    return replace_fields(view, {"rejected": (*view.rejected, rejection), "position": position})


def _split_task(pathspec: str) -> tuple[str, str, str] | None:
    """(run pathspec, step, task id) of a task pathspec, or None if it is not one."""
    if pathspec.count("/") != 3:
        return None
    run, step, task_id = pathspec.rsplit("/", 2)
    return run, step, task_id


# -- runs ----------------------------------------------------------------------


def fold_run(view: RunView | None, event: Event, position: Position) -> RunView | None:
    """Fold one event into a run's view; return the next view.

    ``view`` is None before the run's ``RunCreated``: that event creates the
    view (of ``event.pathspec``) and any other leaves it None. A
    ``RunCreated`` whose initial state the machine refuses creates nothing.
    The run view follows its own events and its tasks' creation and state
    changes; artifacts, metadata and heartbeats do not change it.
    """
    if view is None:
        if type(event) is RunCreated:
            return _create_run(event, position)
        return None
    if position <= view.position:
        return view
    step = _RUN_STEPS.get(type(event))
    return view if step is None else step(view, event, position)


def _create_run(event: RunCreated, position: Position) -> RunView | None:
    pathspec = event.pathspec
    if pathspec.count("/") != 1:
        return None
    payload = event.payload
    try:
        check_run_transition(pathspec, None, payload.state)
    except IllegalTransition:
        return None
    flow, run_id = pathspec.split("/")
    occurred_at = event.occurred_at
    return replace_fields(
        _BLANK_RUN,
        {
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
            "script_name": payload.script_name,
            "scheduled_at": payload.scheduled_at,
            "idempotency_key": payload.idempotency_key,
            "position": position,
        },
    )


def _run_created_again(view: RunView, event: RunCreated, position: Position) -> RunView:
    if event.pathspec != view.pathspec:
        return view
    return _reject(view, event, position, f"{view.pathspec}: the run exists already")


def _run_state(view: RunView, event: RunStateChanged, position: Position) -> RunView:
    if event.pathspec != view.pathspec:
        return view
    payload = event.payload
    new = payload.state
    try:
        check_run_transition(view.pathspec, view.state, new, resume=payload.resume)
    except IllegalTransition as exc:
        return _reject(view, event, position, str(exc))
    update: dict[str, object] = {
        "state": new,
        "label": payload.label,
        "message": payload.message,
        "position": position,
    }
    if new is RunState.RUNNING and view.started_at is None:
        update["started_at"] = event.occurred_at
    if new.terminal:
        update["finished_at"] = event.occurred_at
    elif payload.resume:
        update["finished_at"] = None
    return replace_fields(view, update)


def _run_tags(view: RunView, event: RunTagsChanged, position: Position) -> RunView:
    if event.pathspec != view.pathspec:
        return view
    payload = event.payload
    tags = set(view.tags if payload.replace is None else payload.replace)
    tags.update(payload.add)
    tags.difference_update(payload.remove)
    if tags == view.tags:
        return view
    return replace_fields(view, {"tags": frozenset(tags), "position": position})


def _step_index(view: RunView, event_pathspec: str) -> tuple[int, str, str] | None:
    """(index in ``view.steps`` or -1 if new, step, task id) of a task event of this run."""
    prefix = view.pathspec + "/"
    if not event_pathspec.startswith(prefix):
        return None
    parts = event_pathspec[len(prefix) :].split("/")
    if len(parts) != 2:
        return None
    step, task_id = parts
    for i, summary in enumerate(view.steps):
        if summary.name == step:
            return i, step, task_id
    return -1, step, task_id


def _run_task_created(view: RunView, event: TaskCreated, position: Position) -> RunView:
    where = _step_index(view, event.pathspec)
    if where is None:
        return view
    i, step, task_id = where
    if i < 0:
        summary = replace_fields(
            _BLANK_STEP,
            {
                "name": step,
                "created_at": event.occurred_at,
                "task_states": {task_id: _PENDING},
            },
        )
        steps = (*view.steps, summary)
    else:
        summary = view.steps[i]
        if task_id in summary.task_states:
            return view  # a repeated creation: the task view records it as rejected
        summary = replace_fields(
            summary,
            {"task_states": {**summary.task_states, task_id: _PENDING}, "finished_at": None},
        )
        steps = (*view.steps[:i], summary, *view.steps[i + 1 :])
    update: dict[str, object] = {"steps": steps, "position": position}
    if step == "end" and view.end_task is None:
        update["end_task"] = event.pathspec
    return replace_fields(view, update)


def _summary_accepts(current: TaskState, attempt: int | None, new: TaskState) -> bool:
    """Whether the run summary takes a task change (see the module docstring)."""
    number = 0 if attempt is None else attempt
    assumed = number - 1 if new is _PENDING and number >= 1 else number
    try:
        check_task_transition("", assumed, current, number, new)
    except IllegalTransition:
        return False
    return True


def _run_task_state(view: RunView, event: TaskAttemptStateChanged, position: Position) -> RunView:
    where = _step_index(view, event.pathspec)
    if where is None or where[0] < 0:
        return view
    i, _, task_id = where
    summary = view.steps[i]
    current = summary.task_states.get(task_id)
    new = event.payload.state
    if current is None or not _summary_accepts(current, event.attempt, new):
        return view
    states = {**summary.task_states, task_id: new}
    finished_at: datetime | None = None
    if new in _TERMINAL_TASK:
        # ``in`` over the values compares in C, identity first (states are enum members)
        waiting = states.values()
        if _PENDING not in waiting and _RUNNING not in waiting:
            finished_at = event.occurred_at
    summary = replace_fields(summary, {"task_states": states, "finished_at": finished_at})
    steps = (*view.steps[:i], summary, *view.steps[i + 1 :])
    return replace_fields(view, {"steps": steps, "position": position})


# -- tasks ---------------------------------------------------------------------


def fold_task(view: TaskView | None, event: Event, position: Position) -> TaskView | None:
    """Fold one event into a task's view; return the next view.

    ``view`` is None before the task's ``TaskCreated``: that event creates
    the view *of ``event.pathspec``* and any other leaves it None (so save a
    returned view under its own ``pathspec``). A ``TaskCreated`` of another
    task naming this one as a parent adds the child to ``child_tasks``.
    Artifacts and metadata name an attempt (default: the current one); one
    the task does not have yet is rejected.
    """
    if view is None:
        if type(event) is TaskCreated:
            return _create_task(event, position)
        return None
    if position <= view.position:
        return view
    step = _TASK_STEPS.get(type(event))
    return view if step is None else step(view, event, position)


def _task_created(view: TaskView, event: TaskCreated, position: Position) -> TaskView:
    if event.pathspec == view.pathspec:
        return _reject(view, event, position, f"{view.pathspec}: the task exists already")
    if view.pathspec in event.payload.parent_tasks and event.pathspec not in view.child_tasks:
        children = (*view.child_tasks, event.pathspec)
        return replace_fields(view, {"child_tasks": children, "position": position})
    return view


def _create_task(event: TaskCreated, position: Position) -> TaskView | None:
    pathspec = event.pathspec
    parts = _split_task(pathspec)
    if parts is None:
        return None
    run, step, task_id = parts
    flow, run_id = run.split("/")
    payload = event.payload
    occurred_at = event.occurred_at
    first = replace_fields(_BLANK_ATTEMPT, {"created_at": occurred_at})
    return replace_fields(
        _BLANK_TASK,
        {
            "pathspec": pathspec,
            "flow": flow,
            "run_id": run_id,
            "step": step,
            "task_id": task_id,
            "attempts": (first,),
            "created_at": occurred_at,
            "foreach_index": payload.foreach_index,
            "foreach_stack": tuple(payload.foreach_stack),
            "parent_tasks": tuple(payload.parent_tasks),
            "runtime_name": payload.runtime_name,
            "environment_info": payload.environment_info,
            "position": position,
        },
    )


def _task_state(view: TaskView, event: TaskAttemptStateChanged, position: Position) -> TaskView:
    if event.pathspec != view.pathspec:
        return view
    payload = event.payload
    new = payload.state
    attempt = view.attempt if event.attempt is None else event.attempt
    try:
        check_task_transition(view.pathspec, view.attempt, view.state, attempt, new)
    except IllegalTransition as exc:
        return _reject(view, event, position, str(exc))
    occurred_at = event.occurred_at
    if attempt != view.attempt:  # a retry: the machine made it the next one, pending
        latest = replace_fields(
            _BLANK_ATTEMPT,
            {
                "attempt": attempt,
                "state": new,
                "label": payload.label,
                "message": payload.message,
                "created_at": occurred_at,
                "started_at": None,
                "finished_at": None,
                "exception": payload.exception,
            },
        )
        attempts = (*view.attempts, latest)
    else:
        latest = view.attempts[-1]
        update: dict[str, object] = {
            "state": new,
            "label": payload.label,
            "message": payload.message,
        }
        if new is _RUNNING:
            update["started_at"] = occurred_at
        elif new in _TERMINAL_TASK:
            update["finished_at"] = occurred_at
        if payload.exception is not None:
            update["exception"] = payload.exception
        latest = replace_fields(latest, update)
        attempts = (*view.attempts[:-1], latest)
    return replace_fields(
        view,
        {
            "state": new,
            "label": payload.label,
            "message": payload.message,
            "attempt": attempt,
            "attempts": attempts,
            "started_at": latest.started_at,
            "finished_at": latest.finished_at,
            "position": position,
        },
    )


def _attempt_of(view: TaskView, event: ArtifactsRecorded | MetadataRecorded) -> int | None:
    attempt = view.attempt if event.attempt is None else event.attempt
    return attempt if 0 <= attempt <= view.attempt else None


def _task_artifacts(view: TaskView, event: ArtifactsRecorded, position: Position) -> TaskView:
    if event.pathspec != view.pathspec:
        return view
    attempt = _attempt_of(view, event)
    if attempt is None:
        return _reject(
            view, event, position, f"{view.pathspec} has no attempt {event.attempt} (yet)"
        )
    sequence = position[0]
    # An identical record can only be in this commit, at the end of the tuple.
    seen: set[tuple[str, int, str]] = set()
    for existing in reversed(view.artifacts):
        if existing.sequence != sequence:
            break
        seen.add((existing.name, existing.attempt, existing.sha256))
    added: list[ArtifactView] = []
    for record in event.payload.artifacts:
        key = (record.name, attempt, record.sha256)
        if key in seen:
            continue
        seen.add(key)
        added.append(
            replace_fields(
                _BLANK_ARTIFACT,
                {
                    "name": record.name,
                    "task": view.pathspec,
                    "attempt": attempt,
                    "sha256": record.sha256,
                    "size": record.size,
                    "codec": record.codec,
                    "created_at": event.occurred_at,
                    "sequence": sequence,
                    "inline": record.inline,
                    "ref": record.ref,
                },
            )
        )
    if not added:
        return view
    return replace_fields(view, {"artifacts": (*view.artifacts, *added), "position": position})


def _task_metadata(view: TaskView, event: MetadataRecorded, position: Position) -> TaskView:
    if event.pathspec != view.pathspec:
        return view
    attempt = _attempt_of(view, event)
    if attempt is None:
        return _reject(
            view, event, position, f"{view.pathspec} has no attempt {event.attempt} (yet)"
        )
    entries = event.payload.entries
    if not entries:
        return view
    occurred_at = event.occurred_at
    added = tuple(
        replace_fields(
            _BLANK_METADATA,
            {
                "name": entry.name,
                "value": entry.value,
                "type": entry.type,
                "attempt": attempt,
                "created_at": occurred_at,
            },
        )
        for entry in entries
    )
    return replace_fields(view, {"metadata": (*view.metadata, *added), "position": position})


_RUN_STEPS: dict[type[Any], Callable[[RunView, Any, Position], RunView]] = {
    TaskAttemptStateChanged: _run_task_state,
    TaskCreated: _run_task_created,
    RunStateChanged: _run_state,
    RunTagsChanged: _run_tags,
    RunCreated: _run_created_again,
}
_TASK_STEPS: dict[type[Any], Callable[[TaskView, Any, Position], TaskView]] = {
    TaskAttemptStateChanged: _task_state,
    ArtifactsRecorded: _task_artifacts,
    MetadataRecorded: _task_metadata,
    TaskCreated: _task_created,
}

# -- routing ---------------------------------------------------------------------

# Which views an event type concerns: its run, its task, or both (and parents).
_ROUTES: dict[type[Any], str] = {
    RunCreated: "run",
    RunStateChanged: "run",
    RunTagsChanged: "run",
    TaskCreated: "run+task",
    TaskAttemptStateChanged: "run+task",
    ArtifactsRecorded: "task",
    MetadataRecorded: "task",
}


def touched(event: Event) -> list[ViewKey]:
    """The views ``event`` may change, as ("run", pathspec) / ("task", pathspec) keys.

    Run events touch their run; a task's creation and state changes touch
    its run (the step summary) and the task, and a creation also each
    parent task (its children); artifacts and metadata touch only their
    task; heartbeats and malformed pathspecs touch nothing. Any view not
    listed is one ``fold_run``/``fold_task`` would return unchanged.
    """
    route = _ROUTES.get(type(event))
    pathspec = event.pathspec
    if route is None:
        return []
    if route == "run":
        return [("run", pathspec)] if pathspec.count("/") == 1 else []
    if pathspec.count("/") != 3:
        return []
    if route == "task":
        return [("task", pathspec)]
    keys: list[ViewKey] = [("run", pathspec.rsplit("/", 2)[0]), ("task", pathspec)]
    if type(event) is TaskCreated:
        for parent in event.payload.parent_tasks:
            key = ("task", parent)
            if key not in keys:
                keys.append(key)
    return keys


def fold_view(
    key: ViewKey, view: RunView | TaskView | None, event: Event, position: Position
) -> RunView | TaskView | None:
    """Fold one event into the view at ``key``, one of ``touched(event)``; return the next view.

    ``fold_run`` or ``fold_task`` by the key's kind. A missing view (None) is
    created only when ``key`` is the event's own entity: a ``TaskCreated``
    does not create the view of a parent task it names.
    """
    if view is None:
        if key[1] != event.pathspec:
            return None
        if key[0] == "run":
            return fold_run(None, event, position)
        return fold_task(None, event, position)
    if key[0] == "run":
        return fold_run(view, event, position)  # type: ignore[arg-type]
    return fold_task(view, event, position)  # type: ignore[arg-type]


def fold(
    views: dict[ViewKey, RunView | TaskView], events: Iterable[tuple[Event, Position]]
) -> dict[ViewKey, RunView | TaskView]:
    """Fold ``events`` (with their positions, in log order) into ``views``, in place.

    ``views`` maps ``touched`` keys to views; a view an event creates is
    added. Returns ``views`` itself.
    """
    for event, position in events:
        for key in touched(event):
            current = views.get(key)
            new = fold_view(key, current, event, position)
            if new is not None and new is not current:
                views[key] = new
    return views
