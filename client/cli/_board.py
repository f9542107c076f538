"""The live board of ``runstate watch`` and ``runstate demo``.

It shows runs, their steps' progress and the latest events. Feed it
``Change`` objects and print it (or hand it to ``rich.live.Live``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from runstate.client._watch import Change
from runstate.client.cli._render import (
    _bar,
    _event_style,
    _seconds_between,
    _shorten,
    counts_text,
    event_summary,
    format_duration,
    state_text,
)
from runstate.engine._events import Event
from runstate.projections._views import RunView, TaskView

__all__ = ["LiveBoard"]


class LiveBoard:
    """The live view of runs: each run's state, its steps' progress, and the latest events.

    ``apply(change)`` folds a ``Change`` from ``client.watch`` into the board
    (changes of several watches may be mixed); rendering shows runs created at
    or after ``since`` (all when None), newest first, up to ``max_runs``.
    Steps are listed for every run when few runs are shown, else only for the
    unfinished ones. Task rows appear when the watch follows tasks (a step or
    task watch). Not thread-safe: render it from the thread that applies.

    The header counts ``updates``: the changes applied, or, with
    ``counts_events`` (the demo's board), the events written, which its owner
    adds to ``updates`` itself (``rate`` is either per second since the start).
    """

    def __init__(
        self,
        title: str = "runstate",
        *,
        since: datetime | None = None,
        max_runs: int = 8,
        max_events: int = 8,
        max_tasks: int = 12,
        counts_events: bool = False,
    ) -> None:
        self.title = title
        self.counts_events = counts_events
        self.since = since
        self.max_runs = max_runs
        self.max_tasks = max_tasks
        self.runs: dict[str, RunView] = {}
        self.tasks: dict[str, TaskView] = {}
        self.events: deque[tuple[int, Event]] = deque(maxlen=max_events)
        self.notes: deque[Text] = deque(maxlen=4)
        self.updates = 0
        self.footer: str | None = None
        self._started = time.monotonic()

    def apply(self, change: Change) -> None:
        """Fold one change (a snapshot or an event) into the board."""
        keys: Iterable[tuple[str, str]] = change.views if change.event is None else change.changed
        for key in keys:
            view = change.views[key]
            if isinstance(view, RunView):
                self.runs[view.pathspec] = view
            elif isinstance(view, TaskView):
                self.tasks[view.pathspec] = view
        if change.event is not None:
            self.events.append((change.sequence, change.event))
            if not self.counts_events:
                self.updates += 1

    def note(self, message: str, style: str = "yellow") -> None:
        """Show a line of commentary under the events (the demo's story)."""
        self.notes.append(Text(message, style=style))

    def shown_runs(self) -> list[RunView]:
        """The runs the board shows, newest first."""
        runs = [r for r in self.runs.values() if self.since is None or r.created_at >= self.since]
        runs.sort(key=lambda r: (r.created_at, r.run_number or 0), reverse=True)
        return runs[: self.max_runs]

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def rate(self) -> float:
        """``updates`` per second since the board started."""
        elapsed = self.elapsed
        return self.updates / elapsed if elapsed > 0 else 0.0

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = []
        elapsed = self.elapsed
        header = Text(self.title, style="bold")
        what = "events" if self.counts_events else "updates"
        header.append(
            f"   {format_duration(elapsed)} · {self.updates} {what} · {self.rate:.0f} {what}/s",
            style="dim",
        )
        parts.append(header)
        parts.append(self._runs_table())
        if self.tasks:
            parts.append(self._tasks_table())
        parts.append(self._events_table())
        parts.extend(self.notes)
        if self.footer:
            parts.append(Text(self.footer, style="dim"))
        return Group(*parts)

    def _runs_table(self) -> RenderableType:
        runs = self.shown_runs()
        if not runs:
            return Text("no runs yet", style="dim")
        table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
        table.add_column("run / step", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        table.add_column("tasks", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        with_steps = len(runs) <= 3
        now = datetime.now(UTC)
        for run in runs:
            seconds = run.duration
            if seconds is None and run.started_at is not None:
                seconds = (now - run.started_at).total_seconds()
            totals: dict[str, int] = {}
            for step in run.steps:
                for state, n in step.counts().items():
                    totals[state] = totals.get(state, 0) + n
            name = Text(run.pathspec, style="bold")
            if run.tags:
                name.append(" " + " ".join(f"#{t}" for t in sorted(run.tags)), style="dim")
            table.add_row(
                name,
                state_text(run.state.value, run.label),
                _bar(run.tasks_done, run.tasks_total),
                counts_text(totals),
                format_duration(seconds),
            )
            if not (with_steps or not run.finished):
                continue
            for i, step in enumerate(run.steps):
                counts = step.counts()
                done = sum(n for state, n in counts.items() if state not in ("pending", "running"))
                corner = "└" if i == len(run.steps) - 1 else "├"
                table.add_row(
                    Text(f"  {corner} {step.name}"),
                    state_text(step.status),
                    _bar(done, len(step.task_states)),
                    counts_text(counts),
                    format_duration(_seconds_between(step.created_at, step.finished_at)),
                )
        return table

    def _tasks_table(self) -> RenderableType:
        tasks = sorted(self.tasks.values(), key=lambda t: t.position, reverse=True)[
            : self.max_tasks
        ]
        table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
        table.add_column("task", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("attempt", justify="right")
        table.add_column("time", justify="right")
        table.add_column("message")
        for task in tasks:
            table.add_row(
                task.pathspec,
                state_text(task.state.value, task.label),
                str(task.attempt),
                format_duration(
                    task.duration
                    if task.duration is not None
                    else _seconds_between(task.started_at, None)
                ),
                _shorten(task.message or "", 60),
            )
        return table

    def _events_table(self) -> RenderableType:
        if not self.events:
            return Text("waiting for events…", style="dim")
        table = Table(
            box=None,
            header_style="bold",
            pad_edge=False,
            title="latest events",
            title_justify="left",
            title_style="bold",
        )
        table.add_column("seq", justify="right", style="dim", no_wrap=True)
        table.add_column("time", style="dim", no_wrap=True)
        table.add_column("pathspec", no_wrap=True)
        table.add_column("event")
        for sequence, event in reversed(self.events):
            table.add_row(
                str(sequence),
                event.occurred_at.astimezone().strftime("%H:%M:%S"),
                event.pathspec,
                Text(event_summary(event), style=_event_style(event)),
            )
        return table
