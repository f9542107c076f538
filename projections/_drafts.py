"""The draft a reducer folds events into: a copy of a view's fields, made a view once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from runstate.engine._events import Event, TaskCreated, construct_fields
from runstate.engine._states import RunState, TaskState
from runstate.projections._views import AttemptView, Position, Rejection, RunView, TaskView

__all__ = ["foreign_parent", "parents_of"]

_TERMINAL_TASK = frozenset(state for state in TaskState if state.terminal)
_PENDING = TaskState.PENDING
_RUNNING = TaskState.RUNNING


# -- drafts ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The fields of blank views, which new ones are made from: an event's payload was
# validated when it was decoded, so a view made from it need not be validated
# again (that would cost more than the rest of the fold).
_RUN_FIELDS = RunView(
    pathspec="", flow="", run_id="", state=RunState.PENDING, created_at=_EPOCH
).__dict__
_TASK_FIELDS = TaskView(
    pathspec="", flow="", run_id="", step="", task_id="", state=_PENDING, created_at=_EPOCH
).__dict__
_ATTEMPT_FIELDS = AttemptView(attempt=0, state=_PENDING, created_at=_EPOCH).__dict__


class _Draft:
    """One view being folded: a copy of its fields that events change in place.

    A draft is made from a view (or None: the view does not exist yet) and
    becomes a view again once, with ``view()``, however many events were
    applied to it: a view is copied once per batch rather than once per
    event. Tuple fields that events append to are lists meanwhile.
    """

    __slots__ = ("base", "changed", "fields", "lists", "pathspec")

    #: the event type that creates a view of this kind
    creator: type[Any]
    #: event type -> how it changes a draft of this kind
    steps: dict[type[Any], Callable[[Any, Any, Position], None]]
    view_type: type[RunView] | type[TaskView]

    def __init__(self, pathspec: str, view: RunView | TaskView | None) -> None:
        self.base = view
        self.pathspec = pathspec
        #: the view's fields, None while there is no view
        self.fields: dict[str, Any] | None = None if view is None else view.__dict__.copy()
        self.lists: dict[str, list[Any]] = {}
        self.changed = False

    def apply(self, event: Event, position: Position) -> None:
        fields = self.fields
        if fields is None:
            if type(event) is self.creator and event.pathspec == self.pathspec:
                self.create(event, position)
            return
        if position <= fields["position"]:
            return  # folded already
        step = self.steps.get(type(event))
        if step is not None:
            step(self, event, position)

    def create(self, event: Any, position: Position) -> None:
        raise NotImplementedError

    def view(self) -> RunView | TaskView | None:
        """The view after the events applied: the very one the draft was made from if none
        changed it. Call it once, after the last event."""
        if not self.changed:
            return self.base
        fields = self.fields
        assert fields is not None
        self.finish(fields)
        for name, items in self.lists.items():
            fields[name] = tuple(items)
        return construct_fields(self.view_type, fields)

    def finish(self, fields: dict[str, Any]) -> None:
        """Turn parts kept as drafts of their own back into views."""

    def list(self, name: str) -> list[Any]:
        """The tuple field ``name`` as a list to change."""
        items = self.lists.get(name)
        if items is None:
            assert self.fields is not None
            items = self.lists[name] = list(self.fields[name])
        return items

    def current(self, name: str) -> Sequence[Any]:
        """The tuple field ``name`` as it is now, to read."""
        items = self.lists.get(name)
        if items is None:
            assert self.fields is not None
            return self.fields[name]  # type: ignore[no-any-return]
        return items

    def mark(self, position: Position) -> None:
        """The event at ``position`` changed the view."""
        assert self.fields is not None
        self.fields["position"] = position
        self.changed = True

    def reject(self, event: Event, position: Position, reason: str) -> None:
        rejection = Rejection(
            sequence=position[0], index=position[1], type=event.type, reason=reason
        )
        self.list("rejected").append(rejection)
        self.mark(position)


def foreign_parent(event: TaskCreated) -> str | None:
    """The first parent ``event`` names that is not a task of the event's own run, or None.

    A task's parents are tasks of its run. A creation naming another run's
    task (or no task) is rejected whole: were it applied, the parent's view
    would have two writers, its own run's folder and this one's.
    """
    parents = event.payload.parent_tasks
    if not parents:
        return None
    run = event.pathspec.rsplit("/", 2)[0] + "/"
    for parent in parents:
        if not parent.startswith(run) or parent.count("/") != 3:
            return parent
    return None


#: the creation ``parents_of`` answered last, and its answer. A creation is applied to the
#: draft of each task it names as a parent in turn; checking it anew each time made a
#: fan-in of N parents cost N² (the join of a 2,000-task foreach took 3 s to fold).
_last_parents: tuple[TaskCreated | None, frozenset[str] | None] = (None, None)


def parents_of(event: TaskCreated) -> frozenset[str] | None:
    """The parent tasks ``event`` names, as a set; None if one is foreign (``foreign_parent``)."""
    global _last_parents
    last = _last_parents  # one read: another thread may replace it meanwhile
    if last[0] is event:
        return last[1]
    parents = None if foreign_parent(event) is not None else frozenset(event.payload.parent_tasks)
    _last_parents = (event, parents)
    return parents


def _split_task(pathspec: str) -> tuple[str, str, str] | None:
    """(run pathspec, step, task id) of a task pathspec, or None if it is not one."""
    if pathspec.count("/") != 3:
        return None
    run, step, task_id = pathspec.rsplit("/", 2)
    return run, step, task_id
