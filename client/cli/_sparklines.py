"""Metrics on the ``runstate watch`` board: each running task's latest values and sparklines.

``sparkline`` is pure. ``MetricTails`` keeps one live tail
(``runstate.client._tails``) per running task the board shows, at most
``max_tasks`` of them, so that a board of many tasks stays cheap: a task
that stops running loses its tail (after one bounded read of the rows its
tail had not delivered yet: a task flushes its last rows just before it
finishes), and a new running task takes the free place.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from runstate.client._tails import ANY_ATTEMPT, MetricRow, Position, follow_rows, read_rows
from runstate.client._watch import Change
from runstate.client.cli._board import LiveBoard
from runstate.engine._events import TaskAttemptStateChanged
from runstate.engine._states import TaskState
from runstate.engine._typing import EventLog
from runstate.projections._views import RunView, TaskView

__all__ = [
    "BLOCKS",
    "MetricTails",
    "TaskMetrics",
    "metric_tails",
    "running_tasks",
    "sparkline",
    "tailing",
    "track_running",
]

#: the eight heights of a sparkline, lowest first
BLOCKS = "▁▂▃▄▅▆▇█"


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None (strings, bools, NaN and infinities)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def sparkline(values: Sequence[object], width: int) -> str:
    """The last ``width`` values as block characters, one each.

    Heights are scaled between the smallest and largest of those values (all
    equal: the middle height); a value that is not a finite number (NaN, an
    infinity, a string) is a space.
    """
    if width <= 0:
        return ""
    numbers = [_number(value) for value in values[-width:]]
    finite = [n for n in numbers if n is not None]
    if not finite:
        return " " * len(numbers)
    low, high = min(finite), max(finite)
    top = len(BLOCKS) - 1
    chars = []
    for n in numbers:
        if n is None:
            chars.append(" ")
        elif high == low:
            chars.append(BLOCKS[top // 2])
        else:
            chars.append(BLOCKS[min(top, int((n - low) / (high - low) * top + 0.5))])
    return "".join(chars)


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def running_tasks(runs: Iterable[RunView], tasks: Iterable[TaskView]) -> list[str]:
    """Pathspecs of the running tasks in ``runs``' step summaries and in ``tasks``, in order."""
    found: dict[str, None] = {}
    for run in runs:
        for step in run.steps:
            for task_id, state in step.task_states.items():
                if state is TaskState.RUNNING:
                    found[f"{run.pathspec}/{step.name}/{task_id}"] = None
    for task in tasks:
        if task.state is TaskState.RUNNING:
            found[task.pathspec] = None
    return list(found)


@dataclass
class TaskMetrics:
    """What the board shows of one task: its latest attempt's recent values per metric."""

    width: int
    attempt: int | None = None
    step: int | None = None
    values: dict[str, deque[object]] = field(default_factory=dict)
    #: the position of the last row taken (a tail resumes after it)
    position: Position | None = None

    def take(self, row: MetricRow, metrics: Sequence[str]) -> bool:
        """Add a row's values of ``metrics``; whether it held any (a new attempt starts over)."""
        self.position = row.position
        if self.attempt is not None and row.attempt is not None and row.attempt < self.attempt:
            return False
        if row.attempt != self.attempt:
            self.attempt = row.attempt
            self.values.clear()
        held = False
        for metric in metrics:
            if metric in row.row:
                self.values.setdefault(metric, deque(maxlen=self.width)).append(row.row[metric])
                held = True
        if held:
            self.step = row.step
        return held

    def latest(self, metric: str) -> object | None:
        values = self.values.get(metric)
        return values[-1] if values else None

    def cell(self, metric: str) -> Text:
        """``0.3125 ▇▅▃▂▁``, or a dim "-" before the first value."""
        values = self.values.get(metric)
        if not values:
            return Text("-", style="dim")
        text = Text(f"{_format_value(values[-1]):>9} ")
        text.append(sparkline(list(values), self.width), style="cyan")
        return text


class MetricTails:
    """Live tails of ``metrics`` for the running tasks of a watch, at most ``max_tasks``.

    Use as ``async with tails.following():``, and call ``track(pathspecs)``
    with the running tasks after each change the board applies. With
    ``on_row``, each row holding a chosen metric is handed to it as it comes
    (the plain, line-per-update output). Render it with rich.
    """

    def __init__(
        self,
        log: EventLog,
        metrics: Sequence[str],
        *,
        width: int = 24,
        max_tasks: int = 12,
        on_row: Callable[[str, TaskMetrics], None] | None = None,
    ) -> None:
        self._log = log
        self.metrics = list(dict.fromkeys(metrics))
        self.width = width
        self.max_tasks = max_tasks
        self.tasks: dict[str, TaskMetrics] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._on_row = on_row
        self._group: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def following(self) -> AsyncIterator[MetricTails]:
        """Run the tails while inside; at exit each one reads what it has not delivered yet."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield self
                await self.track([])
            finally:
                self._group = None
                group.cancel_scope.cancel()

    async def track(self, running: Sequence[str]) -> None:
        """Tail the tasks of ``running`` (in order, up to ``max_tasks``); stop the others."""
        wanted = set(running)
        for pathspec in [p for p in self._scopes if p not in wanted]:
            await self._finish(pathspec)
        for pathspec in running:
            if len(self._scopes) >= self.max_tasks:
                break
            if pathspec not in self._scopes and self._group is not None:
                scope = self._scopes[pathspec] = anyio.CancelScope()
                metrics = self.tasks[pathspec] = TaskMetrics(self.width)
                self._group.start_soon(self._tail, pathspec, metrics, scope)

    async def _tail(self, pathspec: str, metrics: TaskMetrics, scope: anyio.CancelScope) -> None:
        with scope:
            async with follow_rows(self._log, pathspec, ANY_ATTEMPT) as rows:
                async for row in rows:
                    if scope.cancel_called:
                        break  # cancelled as this row came: the finishing read takes it
                    self._take(pathspec, metrics, row)

    async def _finish(self, pathspec: str) -> None:
        """Stop a task's tail, take the rows it had not delivered, and drop the task."""
        self._scopes.pop(pathspec).cancel()
        metrics = self.tasks.pop(pathspec)
        with anyio.move_on_after(self._log.settings.request_timeout):
            for row in await read_rows(self._log, pathspec, ANY_ATTEMPT, metrics.position):
                self._take(pathspec, metrics, row)

    def _take(self, pathspec: str, metrics: TaskMetrics, row: MetricRow) -> None:
        if metrics.take(row, self.metrics) and self._on_row is not None:
            self._on_row(pathspec, metrics)

    def line(self, pathspec: str, metrics: TaskMetrics) -> Text:
        """One line of a task's latest values: ``Train/1/train/3  step 2  loss 0.3 ▇▃▁``."""
        text = Text(f"{pathspec}  ", style="bold")
        text.append(f"step {metrics.step}", style="dim")
        for metric in self.metrics:
            if metric in metrics.values:
                text.append(f"  {metric} ")
                text.append_text(metrics.cell(metric))
        return text

    def __rich__(self) -> RenderableType:
        if not self.tasks:
            return Text(f"{', '.join(self.metrics)}: no running task", style="dim")
        table = Table(
            box=None,
            header_style="bold",
            pad_edge=False,
            title="metrics of running tasks",
            title_justify="left",
            title_style="bold",
        )
        table.add_column("task", no_wrap=True)
        table.add_column("step", justify="right", no_wrap=True)
        for metric in self.metrics:
            table.add_column(metric, no_wrap=True)
        for pathspec, metrics in self.tasks.items():
            cells: list[Any] = [metrics.cell(metric) for metric in self.metrics]
            step = "" if metrics.step is None else str(metrics.step)
            table.add_row(pathspec, step, *cells)
        return table


def metric_tails(
    log: EventLog, metrics: Sequence[str], console: Console, *, live: bool
) -> MetricTails | None:
    """The tails of ``watch --metric`` (None without a metric); not ``live``, each row
    is printed as a line as it comes."""
    if not metrics:
        return None

    def print_row(pathspec: str, task: TaskMetrics) -> None:
        console.print(tails.line(pathspec, task), soft_wrap=True)

    tails = MetricTails(log, metrics, on_row=None if live else print_row)
    return tails


@asynccontextmanager
async def tailing(tails: MetricTails | None) -> AsyncIterator[None]:
    """Run ``tails`` (if any) while inside."""
    if tails is None:
        yield
        return
    async with tails.following():
        yield


async def track_running(tails: MetricTails | None, board: LiveBoard, change: Change) -> None:
    """Hand the board's running tasks to ``tails`` when ``change`` may have changed them
    (a snapshot, or a task's state), not on every event of a busy board."""
    if tails is not None and (
        change.event is None or isinstance(change.event, TaskAttemptStateChanged)
    ):
        await tails.track(running_tasks(board.shown_runs(), board.tasks.values()))
