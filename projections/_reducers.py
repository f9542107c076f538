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
  appended to the view's ``rejected`` and changes nothing else. So is a task
  creation that names a parent task of another run (in its run's view; the
  task is not created): every view an event changes is of the event's run,
  so a fold split by runs (the projector and its feeder) gives each view
  one writer.

Views are immutable, so a reducer works on a draft: a copy of the view's
fields that events change in place, made a view again at the end.
``FoldBatch`` keeps one draft per view for a whole batch of events (the
projector's), so a view touched by many events of the batch is copied once,
not once per event; ``fold_run``/``fold_task``/``fold_view`` are a batch of
one event. The properties in the tests check that any batching folds to the
same views.

The drafts are in ``_drafts``, the run reducer in ``_run_reducer``, the task
reducer in ``_task_reducer``; this module routes events to views and folds
batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from runstate.engine._events import (
    ArtifactsRecorded,
    Event,
    MetadataRecorded,
    RunCreated,
    RunStateChanged,
    RunTagsChanged,
    RunUpdated,
    TaskAttemptStateChanged,
    TaskCreated,
)
from runstate.projections._drafts import _Draft, foreign_parent, parents_of
from runstate.projections._run_reducer import _RunDraft, fold_run
from runstate.projections._task_reducer import _TaskDraft, fold_task
from runstate.projections._views import Position, RunView, TaskView

__all__ = [
    "FoldBatch",
    "ViewKey",
    "fold",
    "fold_run",
    "fold_task",
    "fold_view",
    "foreign_parent",
    "touched",
]

#: ("run", run pathspec) or ("task", task pathspec)
ViewKey = tuple[str, str]


_DRAFTS: dict[str, type[_RunDraft] | type[_TaskDraft]] = {"run": _RunDraft, "task": _TaskDraft}


# -- routing ---------------------------------------------------------------------

# Which views an event type concerns: its run, its task, or both (and parents).
_ROUTES: dict[type[Any], str] = {
    RunCreated: "run",
    RunStateChanged: "run",
    RunTagsChanged: "run",
    RunUpdated: "run",
    TaskCreated: "run+task",
    TaskAttemptStateChanged: "run+task",
    ArtifactsRecorded: "task",
    MetadataRecorded: "task",
}


def touched(event: Event) -> list[ViewKey]:
    """The views ``event`` may change, as ("run", pathspec) / ("task", pathspec) keys.

    Run events touch their run; a task's creation and state changes touch
    its run (the step summary) and the task, and a creation also each
    parent task (its children), all of the same run (a creation naming a
    parent in another run is rejected: see ``foreign_parent``), so every
    view an event touches is of the event's run. Artifacts and metadata touch only their
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
    if type(event) is TaskCreated and parents_of(event) is not None:
        seen = {pathspec}
        for parent in event.payload.parent_tasks:
            if parent not in seen:
                seen.add(parent)
                keys.append(("task", parent))
    return keys


def fold_view(
    key: ViewKey, view: RunView | TaskView | None, event: Event, position: Position
) -> RunView | TaskView | None:
    """Fold one event into the view at ``key``, one of ``touched(event)``; return the next view.

    ``fold_run`` or ``fold_task`` by the key's kind. A missing view (None) is
    created only when ``key`` is the event's own entity: a ``TaskCreated``
    does not create the view of a parent task it names.
    """
    draft = _DRAFTS[key[0]](key[1], view)
    draft.apply(event, position)
    return draft.view()


class FoldBatch:
    """Folds a batch of events into the views they touch, each view copied once per batch.

    The result is the one ``fold_view`` gives event by event (the reducers'
    properties check it), for a fraction of the work: a view touched by many
    events of the batch is changed in place as a draft and made a view once,
    by ``changed()``.
    """

    def __init__(self, views: Mapping[ViewKey, RunView | TaskView | None]) -> None:
        #: the views before the batch; missing or None: the view does not exist
        self._views = views
        self._drafts: dict[ViewKey, _Draft] = {}

    def add(self, event: Event, position: Position, keys: Iterable[ViewKey] | None = None) -> None:
        """Fold ``event`` at ``position`` (after every event added before it).

        ``keys``: ``touched(event)``, when the caller has it already.
        """
        drafts = self._drafts
        for key in touched(event) if keys is None else keys:
            draft = drafts.get(key)
            if draft is None:
                draft = drafts[key] = _DRAFTS[key[0]](key[1], self._views.get(key))
            draft.apply(event, position)

    def changed(self) -> dict[ViewKey, RunView | TaskView]:
        """The views the batch changed or created, by key; call it once, after the last event."""
        return {
            key: draft.view()  # type: ignore[misc]
            for key, draft in self._drafts.items()
            if draft.changed
        }


def fold(
    views: dict[ViewKey, RunView | TaskView], events: Iterable[tuple[Event, Position]]
) -> dict[ViewKey, RunView | TaskView]:
    """Fold ``events`` (with their positions, in log order) into ``views``, in place.

    ``views`` maps ``touched`` keys to views; a view an event creates is
    added. Returns ``views`` itself.
    """
    batch = FoldBatch(views)
    for event, position in events:
        batch.add(event, position)
    views.update(batch.changed())
    return views
