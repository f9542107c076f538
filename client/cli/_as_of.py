"""``runstate show --as-of``: the moment to show, read from the option, and the objects then."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from runstate.client._client import Client
from runstate.client._data import DataArtifact
from runstate.client._objects import Run, Step, Task
from runstate.engine._names import Pathspec
from runstate.engine._states import TaskState

__all__ = ["AS_OF_HELP", "moment_line", "object_as_of", "parse_as_of", "tasks_as_of"]

AS_OF_HELP = (
    "Show it as it was: after the events up to stream sequence SEQ, or from the events "
    "stored by TIME (ISO 8601, e.g. 2026-11-22T09:30:00+01:00; without an offset, UTC)."
)


def parse_as_of(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> int | datetime | None:
    """``--as-of``: a stream sequence (digits) or an ISO 8601 time (UTC when it has no offset)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a stream sequence (digits) nor an ISO 8601 time "
            "such as 2026-11-22T09:30:00+00:00",
            ctx,
            param,
        ) from None
    return when if when.utcoffset() is not None else when.replace(tzinfo=UTC)


async def object_as_of(
    client: Client, path: Pathspec, attempt: int | None, as_of: int | datetime
) -> tuple[Run | Step | Task | DataArtifact, str]:
    """The run, step, task or artifact at ``path`` as of ``as_of``, and the line saying
    which moment it shows."""
    if path.step is None:
        run = await client.run(str(path), as_of=as_of)
        return run, moment_line(run)
    if path.task is None:
        step = await client.step(str(path), as_of=as_of)
        return step, moment_line(step)
    task = await client.task(path.task_pathspec, attempt=attempt, as_of=as_of)
    return (task if path.artifact is None else task[path.artifact]), moment_line(task)


async def tasks_as_of(step: Step, limit: int) -> tuple[list[Any], int]:
    """Up to ``limit`` task views of a step read ``as_of``: all, or the unsuccessful and
    unfinished ones, as ``show`` lists them."""
    tasks = [task.view for task in await step.tasks()]
    if len(tasks) > limit:
        tasks = [view for view in tasks if view.state is not TaskState.COMPLETED][:limit]
    return tasks, max(0, step.tasks_total - len(tasks))


def moment_line(obj: Run | Step | Task) -> str:
    """The line saying which moment an object read ``as_of`` shows."""
    as_of = obj.as_of
    if isinstance(as_of, datetime):
        return f"as of {as_of.isoformat()} (the events up to sequence {obj.as_of_sequence})"
    return f"as of sequence {as_of}"
