"""Rich renderables the CLI shares: states, durations, events, run tables, trees, the live board.

Everything here is pure presentation: it takes views and events (no I/O) and
returns something rich can print, so the CLI, the demo and the tests render
the same thing. ``LiveBoard`` is the live view of ``runstate watch`` and
``runstate demo``: feed it ``Change`` objects and print it (or hand it to
``rich.live.Live``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.pretty import Pretty
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from runstate.client._watch import Change
from runstate.engine._events import (
    ArtifactsRecorded,
    Event,
    Heartbeat,
    MetadataRecorded,
    RunCreated,
    RunStateChanged,
    RunTagsChanged,
    TaskAttemptStateChanged,
    TaskCreated,
)
from runstate.projections._views import ArtifactView, RunView, StepView, TaskView

__all__ = [
    "LiveBoard",
    "artifact_header",
    "counts_text",
    "event_line",
    "event_summary",
    "format_age",
    "format_duration",
    "format_size",
    "preview_text",
    "run_tree",
    "runs_table",
    "state_text",
    "step_tree",
    "task_tree",
    "value_preview",
]

#: the colour of each run and task state (and of step statuses, which use the same words)
STATE_STYLES: dict[str, str] = {
    "scheduled": "grey58",
    "pending": "grey58",
    "running": "cyan",
    "cancelling": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "crashed": "magenta",
}

#: the order counts by state are listed in
_STATE_ORDER = ("completed", "running", "pending", "failed", "crashed", "cancelled")


# -- small pieces ------------------------------------------------------------


def state_text(state: str, label: str | None = None) -> Text:
    """A state in its colour, with its label when it has one: ``pending (AwaitingRetry)``."""
    value = str(state)
    text = Text(value, style=STATE_STYLES.get(value, ""))
    if label:
        text.append(f" ({label})", style="dim")
    return text


def format_duration(seconds: float | None) -> str:
    """``0.4s``, ``12.3s``, ``3m04s``, ``2h05m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``when`` was (``12s ago``, ``3m04s ago``), or the local date beyond a day."""
    if when is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = int(max(0.0, (now - when).total_seconds()))
    if seconds >= 86_400:
        return when.astimezone().strftime("%Y-%m-%d %H:%M")
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds}s ago"
    return f"{format_duration(seconds)} ago"


def format_size(size: int) -> str:
    """``312 B``, ``4.2 kB``, ``1.3 MB``."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover - the loop always returns


def counts_text(counts: Mapping[str, int]) -> Text:
    """Task counts by state in their colours: ``10 completed · 1 running · 1 failed``."""
    text = Text()
    ordered = [s for s in _STATE_ORDER if counts.get(s)] + sorted(
        s for s in counts if s not in _STATE_ORDER and counts[s]
    )
    for i, state in enumerate(ordered):
        if i:
            text.append(" · ", style="dim")
        text.append(f"{counts[state]} {state}", style=STATE_STYLES.get(state, ""))
    return text


def _bar(done: int, total: int, width: int = 18) -> RenderableType:
    return ProgressBar(total=max(total, 1), completed=done if total else 0, width=width)


def _shorten(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or datetime.now(UTC)) - start).total_seconds()


def preview_text(value: Any, limit: int = 60) -> str:
    """A one-line preview of a value (an artifact's, in a task tree)."""
    return _shorten(repr(value), limit)


def value_preview(value: Any) -> RenderableType:
    """A value in full, pretty-printed (an artifact's, on its own)."""
    return Pretty(value, max_length=50, max_string=2000)


# -- events ------------------------------------------------------------------


def event_summary(event: Event) -> str:
    """What one event did, in a few words: ``-> failed: RuntimeError: out of memory``."""
    if isinstance(event, RunCreated):
        created = event.payload
        parts = [f"created ({created.state.value})"]
        if created.user:
            parts.append(f"by {created.user}")
        if created.parameters:
            parts.append("params " + ", ".join(f"{k}={v}" for k, v in created.parameters.items()))
        if created.tags:
            parts.append("tags " + ", ".join(created.tags))
        return _shorten("; ".join(parts), 120)
    if isinstance(event, RunStateChanged | TaskAttemptStateChanged):
        change = event.payload
        text = f"→ {change.state.value}"
        if change.label:
            text += f" ({change.label})"
        if isinstance(event, RunStateChanged) and event.payload.resume:
            text += " [resume]"
        if change.message:
            text += f": {change.message}"
        return _shorten(text, 120)
    if isinstance(event, RunTagsChanged):
        tags = event.payload
        if tags.replace is not None:
            return "tags = " + (", ".join(tags.replace) or "(none)")
        return " ".join([*(f"+{t}" for t in tags.add), *(f"-{t}" for t in tags.remove)]) or "tags"
    if isinstance(event, TaskCreated):
        task = event.payload
        text = "created"
        frame = task.foreach_stack[-1] if task.foreach_stack else None
        if frame is not None and frame.num_splits:
            text += f", foreach {frame.index + 1}/{frame.num_splits}"
        elif task.foreach_index is not None:
            text += f", foreach index {task.foreach_index}"
        if task.parent_tasks:
            n = len(task.parent_tasks)
            text += f", {n} parent{'s' if n != 1 else ''}"
        return text
    if isinstance(event, ArtifactsRecorded):
        items = ", ".join(f"{a.name} ({format_size(a.size)})" for a in event.payload.artifacts)
        return _shorten(f"saved {items}", 120)
    if isinstance(event, MetadataRecorded):
        items = ", ".join(f"{m.name}={m.value}" for m in event.payload.entries)
        return _shorten(f"metadata {items}", 120)
    if isinstance(event, Heartbeat):
        return "heartbeat"
    return event.type  # pragma: no cover - every event type is listed above


def _event_style(event: Event) -> str:
    if isinstance(event, RunStateChanged | TaskAttemptStateChanged):
        return STATE_STYLES.get(event.payload.state.value, "")
    return ""


def event_line(sequence: int, event: Event, *, index: int = 0) -> Text:
    """One event as a line: sequence, local time, type, pathspec, attempt, summary."""
    when = event.occurred_at.astimezone().strftime("%H:%M:%S.%f")[:-3]
    seq = f"{sequence}" if index == 0 else f"{sequence}.{index}"
    text = Text()
    text.append(f"{seq:>7}  ", style="dim")
    text.append(f"{when}  ", style="dim")
    text.append(f"{event.type:<24}", style="blue")
    text.append(f"{event.pathspec}")
    if event.attempt is not None and event.type.startswith("task."):
        text.append(f" #{event.attempt}", style="dim")
    text.append("  ")
    text.append(event_summary(event), style=_event_style(event))
    return text


# -- tables and trees --------------------------------------------------------


def runs_table(runs: Sequence[RunView], *, now: datetime | None = None) -> Table:
    """Runs as a table: id, state, created, duration, user, tags, progress."""
    now = now or datetime.now(UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("run", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("user", no_wrap=True)
    table.add_column("tags")
    table.add_column("progress", no_wrap=True)
    for run in runs:
        duration = run.duration
        if duration is None and run.started_at is not None:
            duration = (now - run.started_at).total_seconds()
        progress = Text(f"{run.tasks_done}/{run.tasks_total} tasks")
        failed = sum(
            1
            for s in run.steps
            for state in s.task_states.values()
            if state.value in ("failed", "crashed")
        )
        if failed:
            progress.append(f", {failed} failed", style="red")
        table.add_row(
            Text(run.pathspec, style="bold"),
            state_text(run.state.value, run.label),
            format_age(run.created_at, now),
            format_duration(duration),
            run.user or "-",
            ", ".join(sorted(run.tags)) or "-",
            progress,
        )
    return table


def _step_label(name: str, status: str, counts: Mapping[str, int], seconds: float | None) -> Text:
    total = sum(counts.values())
    text = Text(name, style="bold")
    text.append("  ")
    text.append_text(state_text(status))
    text.append(f"  {total} task{'s' if total != 1 else ''}")
    if len([n for n in counts.values() if n]) > 1:  # one state says nothing the status does not
        text.append("  ")
        text.append_text(counts_text(counts))
    if seconds is not None:
        text.append(f"  {format_duration(seconds)}", style="dim")
    return text


def _task_label(task: TaskView, *, full_path: bool = False) -> Text:
    text = Text(task.pathspec if full_path else task.task_id, style="bold")
    text.append("  ")
    text.append_text(state_text(task.state.value, task.label))
    if task.duration is not None:
        text.append(f"  {format_duration(task.duration)}", style="dim")
    if task.foreach_index is not None:
        text.append(f"  index {task.foreach_index}", style="dim")
    if task.attempt:
        earlier = ", ".join(f"{a.attempt} {a.state.value}" for a in task.attempts[:-1])
        text.append(f"  attempt {task.attempt}", style="yellow")
        if earlier:
            text.append(f" (earlier: {earlier})", style="dim")
    if task.message and not task.state.value == "completed":
        text.append(f"  {_shorten(task.message, 80)}", style=STATE_STYLES.get(task.state.value, ""))
    return text


def run_tree(
    run: RunView,
    steps: Sequence[StepView],
    tasks: Mapping[str, Sequence[TaskView]],
    *,
    hidden: Mapping[str, int] | None = None,
) -> Tree:
    """A run as a tree: its header, then each step with its tasks.

    ``tasks`` maps a step name to the tasks to list; ``hidden`` to how many
    of its tasks were left out (listed as a hint to show the step).
    """
    header = Text(run.pathspec, style="bold")
    header.append("  ")
    header.append_text(state_text(run.state.value, run.label))
    duration = run.duration if run.duration is not None else _seconds_between(run.started_at, None)
    header.append(f"  {format_duration(duration)}", style="dim")
    if run.message:
        header.append(
            f"  {_shorten(run.message, 100)}", style=STATE_STYLES.get(run.state.value, "")
        )
    tree = Tree(header)
    details = []
    details.append(f"created {run.created_at.astimezone():%Y-%m-%d %H:%M:%S} by {run.user or '-'}")
    if run.tags:
        details.append("tags: " + ", ".join(sorted(run.tags)))
    if run.parameters:
        details.append("parameters: " + ", ".join(f"{k}={v}" for k, v in run.parameters.items()))
    tree.add(Text("; ".join(details), style="dim"))
    for step in steps:
        seconds = _seconds_between(step.created_at, step.finished_at)
        branch = tree.add(_step_label(step.step, step.status, step.counts, seconds))
        for task in tasks.get(step.step, ()):
            branch.add(_task_label(task))
        left_out = (hidden or {}).get(step.step, 0)
        if left_out:
            branch.add(Text(f"… {left_out} more (runstate show {step.pathspec})", style="dim"))
    return tree


def step_tree(step: StepView, tasks: Sequence[TaskView], *, hidden: int = 0) -> Tree:
    """A step and its tasks."""
    seconds = _seconds_between(step.created_at, step.finished_at)
    label = _step_label(step.pathspec, step.status, step.counts, seconds)
    tree = Tree(label)
    for task in tasks:
        tree.add(_task_label(task))
    if hidden:
        tree.add(Text(f"… {hidden} more tasks", style="dim"))
    return tree


def artifact_header(artifact: ArtifactView) -> Text:
    """``name  json  54 B  sha 1a2b3c4d5e6f  attempt 0``."""
    text = Text(artifact.name, style="bold")
    text.append(f"  {artifact.codec}  {format_size(artifact.size)}", style="dim")
    text.append(f"  sha {artifact.sha256[:12]}", style="dim")
    text.append(f"  attempt {artifact.attempt}", style="dim")
    if artifact.ref is not None:
        text.append("  (object store)", style="dim")
    return text


def task_tree(
    task: TaskView,
    attempt: int,
    previews: Mapping[str, str],
    *,
    traceback_lines: int = 12,
) -> Tree:
    """A task: its attempts (with exceptions), metadata, artifacts of ``attempt``, lineage.

    ``previews`` maps an artifact name to a short text of its value.
    """
    chosen = task.attempt_view(attempt)
    header = Text(task.pathspec, style="bold")
    header.append("  ")
    if chosen is not None:
        header.append_text(state_text(chosen.state.value, chosen.label))
    header.append(f"  attempt {attempt} of {len(task.attempts)}", style="dim")
    if task.foreach_index is not None:
        header.append(f"  foreach index {task.foreach_index}", style="dim")
    tree = Tree(header)
    attempts = tree.add(Text("attempts", style="bold"))
    for view in task.attempts:
        line = Text(f"{view.attempt}  ")
        line.append_text(state_text(view.state.value, view.label))
        seconds = (
            (view.finished_at - view.started_at).total_seconds()
            if view.started_at is not None and view.finished_at is not None
            else None
        )
        line.append(f"  {format_duration(seconds)}", style="dim")
        if view.started_at is not None:
            line.append(f"  started {view.started_at.astimezone():%H:%M:%S}", style="dim")
        style = STATE_STYLES.get(view.state.value, "")
        if view.exception is not None:
            # the full type name: the message names only the class
            line.append(
                f"  {view.exception.type}: {_shorten(view.exception.message, 100)}", style=style
            )
        elif view.message:
            line.append(f"  {_shorten(view.message, 100)}", style=style)
        node = attempts.add(line)
        if view.exception is not None and view.exception.traceback:
            lines = view.exception.traceback.rstrip().splitlines()[-traceback_lines:]
            node.add(Text("\n".join(lines), style="dim"))
    metadata = task.metadata_of(attempt)
    if metadata:
        meta = tree.add(Text(f"metadata (attempt {attempt})", style="bold"))
        for name, value in metadata.items():
            meta.add(Text(f"{name} = {_shorten(value, 80)}"))
    artifacts = task.artifacts_of(attempt)
    if artifacts:
        node = tree.add(Text(f"artifacts (attempt {attempt})", style="bold"))
        for name, artifact in sorted(artifacts.items()):
            line = artifact_header(artifact)
            preview = previews.get(name)
            if preview:
                line.append(f"  {preview}")
            node.add(line)
    if task.parent_tasks:
        tree.add(Text("parents: " + ", ".join(task.parent_tasks), style="dim"))
    if task.child_tasks:
        tree.add(Text("children: " + ", ".join(task.child_tasks), style="dim"))
    return tree


# -- the live board ----------------------------------------------------------


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
