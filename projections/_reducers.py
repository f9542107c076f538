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

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from runstate.engine._events import (
    ArtifactsRecorded,
    Event,
    MetadataRecorded,
    RunCreated,
    RunStateChanged,
    RunTagsChanged,
    TaskAttemptStateChanged,
    TaskCreated,
    construct_fields,
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


def _split_task(pathspec: str) -> tuple[str, str, str] | None:
    """(run pathspec, step, task id) of a task pathspec, or None if it is not one."""
    if pathspec.count("/") != 3:
        return None
    run, step, task_id = pathspec.rsplit("/", 2)
    return run, step, task_id


# -- runs ----------------------------------------------------------------------


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


# -- tasks ---------------------------------------------------------------------


class _TaskDraft(_Draft):
    """A task's draft. Attempts it changes are dicts of their fields until ``view()``."""

    __slots__ = ()

    creator = TaskCreated
    view_type = TaskView

    def create(self, event: TaskCreated, position: Position) -> None:
        pathspec = event.pathspec
        parts = _split_task(pathspec)
        if parts is None or foreign_parent(event) is not None:
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
    elif draft.pathspec in event.payload.parent_tasks and foreign_parent(event) is None:
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


_DRAFTS: dict[str, type[_RunDraft] | type[_TaskDraft]] = {"run": _RunDraft, "task": _TaskDraft}


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
    if type(event) is TaskCreated and foreign_parent(event) is None:
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
