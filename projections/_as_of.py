"""Views as they were: one run's views folded from its own commits up to a sequence.

A view changes only through events of its own run (the reducers' rule, see
``_reducers``), so folding the commits on a run's subjects
(``<prefix>.ev.<flow>.<run>.>``) up to a sequence gives exactly the views
the projector held once it had applied that sequence: the same decoder
(a commit the projector dead-letters is skipped here), the same reducers,
the same positions.

``RunTimeline`` reads a run's commits once, through the log's bulk read
(``drain``), and keeps them decoded. It keeps the views every
``SNAPSHOT_EVERY`` events as it folds, so that the views at any sequence
are a snapshot and at most that many events folded on top of it. A later
sequence than it has read reads only the commits after those it holds.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import anyio

from runstate.engine._commits import Delivery
from runstate.engine._events import Event
from runstate.engine._typing import EventLog
from runstate.engine.errors import InvalidEvent, InvalidName, NotFound
from runstate.projections._folding import CommitDecoder
from runstate.projections._reducers import FoldBatch, ViewKey
from runstate.projections._schema import task_order
from runstate.projections._views import RunView, StepView, TaskView

__all__ = ["SNAPSHOT_EVERY", "Moment", "RunTimeline"]

#: events folded between two kept snapshots of a run's views: a read at any sequence
#: folds at most this many on top of one (2 ms to 20 ms of folding, against the
#: 200 ms to fold a 10,000-event run from its start)
SNAPSHOT_EVERY = 1000


@dataclass(frozen=True, slots=True)
class Moment:
    """The views of one run after every commit up to ``sequence`` (of the whole log).

    ``time`` is the time the sequence was asked for by, if it was.
    """

    run: str
    sequence: int
    views: Mapping[ViewKey, RunView | TaskView]
    time: datetime | None = None

    @property
    def words(self) -> str:
        """``sequence 42``, or the time it was asked by: the moment, in words."""
        return self.time.isoformat() if self.time is not None else f"sequence {self.sequence}"

    @property
    def run_view(self) -> RunView | None:
        """The run as it was (None: not created yet)."""
        view = self.views.get(("run", self.run))
        return view if isinstance(view, RunView) else None

    def task(self, pathspec: str) -> TaskView | None:
        """A task of the run as it was (None: not created yet)."""
        view = self.views.get(("task", pathspec))
        return view if isinstance(view, TaskView) else None

    def steps(self) -> list[StepView]:
        """The run's steps in the order they began, as the query service answers them."""
        run = self.run_view
        if run is None:
            return []
        return [StepView.from_run(run, summary) for summary in run.steps]

    def step(self, name: str) -> StepView | None:
        run = self.run_view
        summary = None if run is None else run.step(name)
        if run is None or summary is None:
            return None
        return StepView.from_run(run, summary)

    def step_view(self, name: str) -> StepView:
        """The step ``name``; ``NotFound`` if it had not begun by then."""
        view = self.step(name)
        if view is None:
            raise NotFound(f"step {self.run}/{name} did not exist at {self.words}")
        return view

    def task_view(self, pathspec: str, attempt: int | None = None) -> TaskView:
        """The task at ``pathspec``; ``NotFound`` if it had not been created by then, or had
        no attempt ``attempt`` yet."""
        view = self.task(pathspec)
        if view is None:
            raise NotFound(f"task {pathspec} did not exist at {self.words}")
        if attempt is not None and view.attempt_view(attempt) is None:
            raise NotFound(
                f"task {pathspec} had no attempt {attempt} at {self.words} "
                f"(attempts: 0..{view.attempt})"
            )
        return view

    def tasks(self, step: str) -> list[TaskView]:
        """The tasks of ``step`` in the order the store lists them (foreach index, task id)."""
        prefix = f"{self.run}/{step}/"
        tasks = [
            view
            for (kind, pathspec), view in self.views.items()
            if kind == "task" and pathspec.startswith(prefix) and isinstance(view, TaskView)
        ]
        tasks.sort(key=task_order)
        return tasks


@dataclass(frozen=True, slots=True)
class _Snapshot:
    #: commits folded into ``views`` (an index into the timeline's commits)
    commits: int
    views: dict[ViewKey, RunView | TaskView]


class RunTimeline:
    """The commits of one run read so far, and snapshots of its views along them.

    ``at(sequence)`` is the run's ``Moment`` at that log sequence. Safe to
    share between tasks: reads and folds of one timeline take turns.
    """

    def __init__(self, log: EventLog, flow: str, run: str) -> None:
        self._log = log
        self.pathspec = f"{flow}/{run}"
        self._subject = log.subjects.run_all(flow, run)
        self._decode = CommitDecoder(log.subjects).decode
        #: the run's commits the projector applies, oldest first: (sequence, events)
        self._commits: list[tuple[int, list[Event]]] = []
        self._sequences: list[int] = []
        #: every commit of the run up to this log sequence is in ``_commits``
        self.known = 0
        self._snapshots: list[_Snapshot] = [_Snapshot(0, {})]
        self._lock = anyio.Lock()

    @property
    def first_sequence(self) -> int | None:
        """The sequence of the run's first commit read (its creation, usually), if any."""
        return self._sequences[0] if self._sequences else None

    async def at(self, sequence: int, *, time: datetime | None = None) -> Moment:
        """The run's views after every commit up to ``sequence``; reads what it lacks."""
        async with self._lock:
            if sequence > self.known:
                await self._read_to(sequence)
            return Moment(self.pathspec, sequence, self._fold_to(sequence), time)

    async def at_time(self, when: datetime) -> Moment:
        """The run's views from the commits the log had stored at ``when`` (aware)."""
        return await self.at(await self._log.sequence_at(when), time=when)

    async def _read_to(self, target: int) -> None:
        last = await self._log.last_sequence(self._subject)
        if last <= self.known:
            return
        stop = min(target, last)
        delivered: list[Delivery] = []

        def deliver(sequence: int, subject: str, data: bytes) -> bool:
            if sequence > stop:
                return True
            delivered.append((sequence, subject, data))
            return sequence >= stop

        await self._log.drain(deliver, start=self.known + 1, subject_filter=self._subject)
        for sequence, subject, data in delivered:
            try:
                events = self._decode(subject, data)
            except (InvalidEvent, InvalidName):
                continue  # the projector dead-letters it: it changes no view
            self._commits.append((sequence, events))
            self._sequences.append(sequence)
        self.known = stop

    def _fold_to(self, sequence: int) -> dict[ViewKey, RunView | TaskView]:
        """The views after the commits up to ``sequence``, from the last snapshot before it;
        snapshots are kept along the way past the last one."""
        end = bisect.bisect_right(self._sequences, sequence)
        snapshots = self._snapshots
        at = bisect.bisect_right([s.commits for s in snapshots], end) - 1
        views = dict(snapshots[at].views)
        batch = FoldBatch(views)
        add = batch.add
        since = 0
        commits = self._commits
        for i in range(snapshots[at].commits, end):
            seq, events = commits[i]
            for index, event in enumerate(events):
                add(event, (seq, index))
            since += len(events)
            if since >= SNAPSHOT_EVERY and i + 1 > snapshots[-1].commits:
                views.update(batch.changed())
                snapshots.append(_Snapshot(i + 1, dict(views)))
                batch = FoldBatch(views)
                add = batch.add
                since = 0
        views.update(batch.changed())
        return views
