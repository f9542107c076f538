"""Folding batches of commits over a cache of views: shared by the projector and its feeder."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from runstate.engine._events import Event, decode_commit
from runstate.engine._names import Subjects
from runstate.engine.errors import InvalidEvent
from runstate.projections._reducers import FoldBatch, touched
from runstate.projections._views import RunView, TaskView

__all__ = ["MISSING", "CommitDecoder", "FoldPlan", "Missing", "ViewCache", "ViewKey"]

ViewKey = tuple[str, str]


class ViewCache:
    """The most recently used views; the projector is their only writer, so they stay true."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._views: OrderedDict[ViewKey, RunView | TaskView | None] = OrderedDict()

    def lookup(self, key: ViewKey) -> RunView | TaskView | Missing | None:
        """The cached view (None: known not to exist) or ``MISSING``; ``put`` keeps recency."""
        return self._views.get(key, MISSING)

    def put(self, views: dict[ViewKey, RunView | TaskView | None]) -> None:
        """Cache these views as the most recently used, evicting the least recently used."""
        cached = self._views
        move_to_end = cached.move_to_end
        for key, view in views.items():
            cached[key] = view
            move_to_end(key)
        for _ in range(len(cached) - self.capacity):
            cached.popitem(last=False)

    def clear(self) -> None:
        self._views.clear()


class Missing:
    """Not in the cache (whereas a cached None is a view known not to exist)."""


MISSING = Missing()


class CommitDecoder:
    """Decodes a delivered commit and checks it belongs on its subject."""

    def __init__(self, subjects: Subjects) -> None:
        self._subjects = subjects
        self._entities: dict[str, tuple[str, str]] = {}

    def _entity(self, subject: str) -> tuple[str, str]:
        """The pathspec and event-type prefix (``run.``/``task.``) a subject may carry."""
        entity = self._entities.get(subject)
        if entity is None:
            path = self._subjects.pathspec_of(subject)
            entity = (str(path), "run." if path.task is None else "task.")
            if len(self._entities) >= 100_000:
                self._entities.clear()
            self._entities[subject] = entity
        return entity

    def decode(self, subject: str, data: bytes) -> list[Event]:
        """A commit's events; ``InvalidEvent``/``InvalidName`` if runstate did not write it."""
        expected, kind = self._entity(subject)
        events = decode_commit(data)
        for event in events:
            if event.pathspec != expected:
                raise InvalidEvent(
                    f"event {event.type} for {event.pathspec} was published on the subject of "
                    f"{expected}; not written by runstate"
                )
            if not event.type.startswith(kind):
                raise InvalidEvent(
                    f"{event.type} on a {kind[:-1]} subject; not written by runstate"
                )
        return events


@dataclass(slots=True)
class FoldPlan:
    """A batch of commits, each event with the views it touches, and those views.

    ``views`` holds each touched view found in the cache (None: known not to
    exist); the ``missing_*`` pathspecs are to be loaded from the store into
    it (or are new) before ``fold``.
    """

    items: list[tuple[Event, tuple[int, int], list[ViewKey]]]
    views: dict[ViewKey, RunView | TaskView | None]
    missing_runs: list[str]
    missing_tasks: list[str]

    @classmethod
    def of(
        cls,
        commits: list[tuple[int, list[Event]]],
        lookup: Callable[[ViewKey], RunView | TaskView | Missing | None],
    ) -> FoldPlan:
        views: dict[ViewKey, RunView | TaskView | None] = {}
        missing_runs: list[str] = []
        missing_tasks: list[str] = []
        # (event, position, the views it touches), worked out once for both passes
        items: list[tuple[Event, tuple[int, int], list[ViewKey]]] = []
        for seq, events in commits:
            for index, event in enumerate(events):
                keys = touched(event)
                items.append((event, (seq, index), keys))
                for key in keys:
                    if key in views:
                        continue
                    view = lookup(key)
                    if view is MISSING:
                        views[key] = None
                        (missing_runs if key[0] == "run" else missing_tasks).append(key[1])
                    else:
                        views[key] = view  # type: ignore[assignment]
        return cls(items, views, missing_runs, missing_tasks)

    def loaded(self, runs: dict[str, RunView], tasks: dict[str, TaskView]) -> None:
        """These missing views were found in the store."""
        views = self.views
        for pathspec, run in runs.items():
            views[("run", pathspec)] = run
        for pathspec, task in tasks.items():
            views[("task", pathspec)] = task

    def fold(self) -> dict[ViewKey, RunView | TaskView]:
        """Fold every event, all at once; the views that changed."""
        batch = FoldBatch(self.views)
        add = batch.add
        for event, position, keys in self.items:
            add(event, position, keys)
        return batch.changed()
