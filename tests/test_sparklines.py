"""``watch --metric``: sparklines (pure) and the tails of running tasks over the log in memory."""

from __future__ import annotations

import io
import math

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from runstate.client._tails import MetricRow
from runstate.client.cli._sparklines import (
    BLOCKS,
    MetricTails,
    TaskMetrics,
    running_tasks,
    sparkline,
)
from runstate.engine import MemoryEventLog, Settings
from runstate.engine._states import TaskState
from runstate.engine._worker import Writer
from runstate.engine.testing import EventFactory
from runstate.projections._reducers import fold_run

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


def test_a_sparkline_spans_the_blocks_from_lowest_to_highest() -> None:
    """The smallest value is the lowest block, the largest the highest, others in between."""
    assert sparkline([1.0, 0.5, 0.25], 10) == "█▃▁"
    assert sparkline(list(range(8)), 8) == BLOCKS
    assert sparkline([3, 3, 3], 5) == "▄▄▄"
    assert sparkline([], 5) == ""
    assert sparkline([1.0, 2.0], 0) == ""


def test_values_that_are_no_finite_number_are_gaps() -> None:
    """NaN, infinities, strings and bools leave a space; the rest is scaled without them."""
    assert sparkline([0.0, math.nan, 1.0, math.inf, "x", True], 10) == "▁ █   "
    assert sparkline([math.nan], 3) == " "


@given(values=st.lists(finite, max_size=60), width=st.integers(min_value=1, max_value=40))
def test_a_sparkline_keeps_the_last_width_values_in_their_order(
    values: list[float], width: int
) -> None:
    """One character per value of the last ``width``; a larger value is never a lower block."""
    line = sparkline(values, width)
    kept = values[-width:]
    assert len(line) == len(kept)
    heights = [BLOCKS.index(char) for char in line]
    pairs = sorted(zip(kept, heights, strict=True))
    assert [h for _, h in pairs] == sorted(h for _, h in pairs)
    if kept and min(kept) < max(kept):
        assert min(heights) == 0 and max(heights) == len(BLOCKS) - 1


def test_a_retry_starts_the_curve_over_and_an_older_attempt_is_ignored() -> None:
    """Rows of a new attempt replace the values shown; rows of an older one are left out."""
    task = TaskMetrics(width=4)
    assert task.take(MetricRow(1, 0, 0, {"_step": 0, "loss": 1.0}), ["loss"])
    assert task.take(MetricRow(2, 0, 1, {"_step": 0, "loss": 0.5}), ["loss"])
    assert not task.take(MetricRow(3, 0, 0, {"_step": 1, "loss": 9.0}), ["loss"])
    assert not task.take(MetricRow(4, 0, 1, {"_step": 1, "acc": 0.1}), ["loss"])
    assert (task.attempt, list(task.values["loss"]), task.position) == (1, [0.5], (4, 0))
    for step in range(2, 8):
        task.take(MetricRow(5, step, 1, {"_step": step, "loss": step}), ["loss"])
    assert list(task.values["loss"]) == [4, 5, 6, 7]  # the last ``width`` values


def test_running_tasks_come_from_run_summaries_in_order() -> None:
    """The running tasks of a run's step summaries, each once, in step and task order."""
    factory = EventFactory("tester", "Train")
    events = [
        factory.run_created("1"),
        *(factory.task_created(f"Train/1/train/{k}") for k in (1, 2, 3)),
        factory.task_state("Train/1/train/3", 0, TaskState.RUNNING),
        factory.task_state("Train/1/train/1", 0, TaskState.RUNNING),
    ]
    view = None
    for sequence, event in enumerate(events, 1):
        view = fold_run(view, event, (sequence, 0))
    assert view is not None
    assert running_tasks([view, view], []) == ["Train/1/train/1", "Train/1/train/3"]


@pytest.mark.anyio
async def test_tails_show_running_tasks_and_take_their_last_rows_when_they_finish() -> None:
    """Running tasks get a tail (at most ``max_tasks``); a finished one's last rows are taken."""
    log = MemoryEventLog(Settings())
    run = await Writer(log).create_run("Train")
    tasks = [await run.create_task("train", start=True) for _ in range(3)]
    printed: list[tuple[str, object]] = []
    tails = MetricTails(
        log,
        ["loss"],
        width=8,
        max_tasks=2,
        on_row=lambda pathspec, task: printed.append((pathspec, task.latest("loss"))),
    )
    async with tails.following():
        await tails.track([task.pathspec for task in tasks])
        assert list(tails.tasks) == [tasks[0].pathspec, tasks[1].pathspec]
        for loss in (1.0, 0.5):
            await tasks[0].log({"loss": loss})
            await tasks[0].flush()
        with anyio.fail_after(5):
            while tails.tasks[tasks[0].pathspec].latest("loss") != 0.5:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        console = Console(file=io.StringIO(), width=120, record=True)
        console.print(tails)
        shown = console.export_text()
        assert tasks[0].pathspec in shown and "0.5 █▁" in shown
        await tasks[0].log({"loss": 0.25})
        await tasks[0].flush()
        await tails.track([tasks[1].pathspec, tasks[2].pathspec])  # tasks[0] has finished
        assert list(tails.tasks) == [tasks[1].pathspec, tasks[2].pathspec]
    assert printed == [
        (tasks[0].pathspec, 1.0),
        (tasks[0].pathspec, 0.5),
        (tasks[0].pathspec, 0.25),
    ]
