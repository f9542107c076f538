"""Rich tables and trees of runs, steps, tasks and artifacts, for ``runstate runs`` and ``show``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from runstate.client.cli._render import (
    STATE_STYLES,
    _seconds_between,
    _shorten,
    counts_text,
    format_age,
    format_duration,
    format_size,
    state_text,
)
from runstate.engine._points import untag
from runstate.projections._views import ArtifactView, RunView, StepView, TaskView

__all__ = ["artifact_header", "run_tree", "runs_table", "step_tree", "task_tree"]


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
    if run.display_name:
        header.append(f" ({_shorten(run.display_name, 60)})", style="bold")
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
    if run.config != run.parameters:
        details.append("config: " + ", ".join(f"{k}={v}" for k, v in run.config.items()))
    if run.summary_overrides:
        summary = ", ".join(f"{k}={untag(v)}" for k, v in run.summary_overrides.items())
        details.append("summary: " + summary)
    tree.add(Text(_shorten("; ".join(details), 400), style="dim"))
    if run.notes:
        tree.add(Text("notes: " + _shorten(run.notes, 200), style="dim"))
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
