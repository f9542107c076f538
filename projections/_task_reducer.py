"""The task reducer: fold events into a task's view, its attempts, artifacts and metadata (pure)."""

from __future__ import annotations

from typing import Any

from runstate.engine._events import (
    ArtifactsRecorded,
    Event,
    MetadataRecorded,
    TaskAttemptStateChanged,
    TaskCreated,
    construct_fields,
)
from runstate.engine._states import check_task_transition
from runstate.engine.errors import IllegalTransition
from runstate.projections._drafts import (
    _ATTEMPT_FIELDS,
    _RUNNING,
    _TASK_FIELDS,
    _TERMINAL_TASK,
    _Draft,
    _split_task,
    parents_of,
)
from runstate.projections._views import ArtifactView, AttemptView, MetadataView, Position, TaskView

__all__ = ["fold_task"]


class _TaskDraft(_Draft):
    """A task's draft. Attempts it changes are dicts of their fields until ``view()``."""

    __slots__ = ()

    creator = TaskCreated
    view_type = TaskView

    def create(self, event: TaskCreated, position: Position) -> None:
        pathspec = event.pathspec
        parts = _split_task(pathspec)
        if parts is None or parents_of(event) is None:
            return  # the run view records a creation with a foreign parent as rejected
        run, step, task_id = parts
        flow, run_id = run.split("/")
        payload = event.payload
        occurred_at = event.occurred_at
        self.fields = {
            **_TASK_FIELDS,
            "pathspec": pathspec,
            "flow": flow,
            "run_id": run_id,
            "step": step,
            "task_id": task_id,
            "created_at": occurred_at,
            "foreach_index": payload.foreach_index,
            "foreach_stack": tuple(payload.foreach_stack),
            "parent_tasks": tuple(payload.parent_tasks),
            "runtime_name": payload.runtime_name,
            "environment_info": payload.environment_info,
        }
        self.lists["attempts"] = [{**_ATTEMPT_FIELDS, "created_at": occurred_at}]
        self.mark(position)

    def finish(self, fields: dict[str, Any]) -> None:
        attempts = self.lists.get("attempts")
        if attempts is not None:
            _seal_latest(attempts)

    def attempt_of(self, event: ArtifactsRecorded | MetadataRecorded) -> int | None:
        assert self.fields is not None
        latest = self.fields["attempt"]
        attempt = latest if event.attempt is None else event.attempt
        return attempt if 0 <= attempt <= latest else None


def _seal_latest(attempts: list[AttemptView | dict[str, Any]]) -> None:
    """Make the latest attempt a view again if it is a draft (only the latest one changes)."""
    if type(attempts[-1]) is dict:
        attempts[-1] = construct_fields(AttemptView, attempts[-1])


def _task_created(draft: _TaskDraft, event: TaskCreated, position: Position) -> None:
    if event.pathspec == draft.pathspec:
        draft.reject(event, position, f"{draft.pathspec}: the task exists already")
    else:
        parents = parents_of(event)
        if parents is None or draft.pathspec not in parents:
            return
        if event.pathspec not in draft.current("child_tasks"):
            draft.list("child_tasks").append(event.pathspec)
            draft.mark(position)


def _task_state(draft: _TaskDraft, event: TaskAttemptStateChanged, position: Position) -> None:
    if event.pathspec != draft.pathspec:
        return
    fields = draft.fields
    assert fields is not None
    payload = event.payload
    new = payload.state
    current = fields["attempt"]
    attempt = current if event.attempt is None else event.attempt
    try:
        check_task_transition(draft.pathspec, current, fields["state"], attempt, new)
    except IllegalTransition as exc:
        draft.reject(event, position, str(exc))
        return
    occurred_at = event.occurred_at
    attempts = draft.list("attempts")
    if attempt != current:  # a retry: the machine made it the next one, pending
        _seal_latest(attempts)
        latest = {
            **_ATTEMPT_FIELDS,
            "attempt": attempt,
            "state": new,
            "label": payload.label,
            "message": payload.message,
            "created_at": occurred_at,
            "exception": payload.exception,
        }
        attempts.append(latest)
    else:
        latest = attempts[-1]
        if type(latest) is not dict:
            latest = attempts[-1] = latest.__dict__.copy()
        latest["state"] = new
        latest["label"] = payload.label
        latest["message"] = payload.message
        if new is _RUNNING:
            latest["started_at"] = occurred_at
        elif new in _TERMINAL_TASK:
            latest["finished_at"] = occurred_at
        if payload.exception is not None:
            latest["exception"] = payload.exception
    fields["state"] = new
    fields["label"] = payload.label
    fields["message"] = payload.message
    fields["attempt"] = attempt
    fields["started_at"] = latest["started_at"]
    fields["finished_at"] = latest["finished_at"]
    draft.mark(position)


def _task_artifacts(draft: _TaskDraft, event: ArtifactsRecorded, position: Position) -> None:
    if event.pathspec != draft.pathspec:
        return
    attempt = draft.attempt_of(event)
    if attempt is None:
        draft.reject(event, position, f"{draft.pathspec} has no attempt {event.attempt} (yet)")
        return
    sequence = position[0]
    # An identical record can only be in this commit, at the end of the list.
    seen: set[tuple[str, int, str]] = set()
    for existing in reversed(draft.current("artifacts")):
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
            construct_fields(
                ArtifactView,
                {
                    "name": record.name,
                    "task": draft.pathspec,
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
    if added:
        draft.list("artifacts").extend(added)
        draft.mark(position)


def _task_metadata(draft: _TaskDraft, event: MetadataRecorded, position: Position) -> None:
    if event.pathspec != draft.pathspec:
        return
    attempt = draft.attempt_of(event)
    if attempt is None:
        draft.reject(event, position, f"{draft.pathspec} has no attempt {event.attempt} (yet)")
        return
    entries = event.payload.entries
    if not entries:
        return
    occurred_at = event.occurred_at
    draft.list("metadata").extend(
        construct_fields(
            MetadataView,
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
    draft.mark(position)


_TaskDraft.steps = {
    TaskAttemptStateChanged: _task_state,
    ArtifactsRecorded: _task_artifacts,
    MetadataRecorded: _task_metadata,
    TaskCreated: _task_created,
}


def fold_task(view: TaskView | None, event: Event, position: Position) -> TaskView | None:
    """Fold one event into a task's view; return the next view.

    ``view`` is None before the task's ``TaskCreated``: that event creates
    the view *of ``event.pathspec``* and any other leaves it None (so save a
    returned view under its own ``pathspec``). A ``TaskCreated`` of another
    task naming this one as a parent adds the child to ``child_tasks``.
    Artifacts and metadata name an attempt (default: the current one); one
    the task does not have yet is rejected.
    """
    draft = _TaskDraft(event.pathspec if view is None else view.pathspec, view)
    draft.apply(event, position)
    return draft.view()  # type: ignore[return-value]
