"""Live tails of metric rows (``follow_history``) over the log in memory: no gap, no repeat."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstate.client import BadFilter, Client, MetricRow
from runstate.client._tails import ANY_ATTEMPT, follow_rows
from runstate.client.testing import in_memory
from runstate.engine import MemoryEventLog, Settings
from runstate.engine._handles import TaskHandle
from runstate.engine._worker import Writer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """A client of a runstate in memory."""
    async with in_memory(Settings(retry_budget=0.5)) as client:
        yield client


async def _take(rows: AsyncIterator[MetricRow], count: int) -> list[MetricRow]:
    """The next ``count`` rows of a tail (the test fails if they do not come)."""
    taken = []
    with anyio.fail_after(5):
        while len(taken) < count:
            taken.append(await rows.__anext__())
    return taken


async def _nothing_more(rows: AsyncIterator[MetricRow]) -> None:
    """Assert that the tail has nothing more to deliver now."""
    with anyio.move_on_after(0.05):
        extra = await rows.__anext__()
        raise AssertionError(f"delivered a row too many: {extra}")


async def _log_chunks(task: TaskHandle, chunks: list[int], first: int) -> int:
    """Log rows ``first``, ``first + 1``, ... in flushed batches of ``chunks`` sizes."""
    step = first
    for size in chunks:
        for _ in range(size):
            await task.log({"loss": 1 / (step + 1), "n": step})
            step += 1
        await task.flush()
    return step


@settings(max_examples=25, deadline=None)
@given(
    before=st.lists(st.integers(min_value=1, max_value=6), max_size=4),
    during=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4),
    resume_at=st.integers(min_value=0, max_value=200),
)
def test_a_tail_delivers_history_then_live_rows_once_and_resumes_exactly(
    before: list[int], during: list[int], resume_at: int
) -> None:
    """In any batching, a tail yields every row once, in order; resumed at any row's
    position it yields exactly the rows after it."""

    async def scenario() -> None:
        log = MemoryEventLog(Settings())
        writer = Writer(log)
        run = await writer.create_run("Train")
        task = await run.create_task("train", start=True)
        other = await run.create_task("train", start=True)  # points of another task
        await other.log({"loss": 9.0})
        await other.flush()
        logged = await _log_chunks(task, before, 0)
        async with follow_rows(log, task.pathspec, 0) as rows:
            history = await _take(rows, logged)
            total = await _log_chunks(task, during, logged)
            await other.log({"loss": 9.0})
            await other.flush()
            live = await _take(rows, total - logged)
            await _nothing_more(rows)
        delivered = history + live
        assert [row.step for row in delivered] == list(range(total))
        assert [row["n"] for row in delivered] == list(range(total))
        assert len({row.position for row in delivered}) == total
        assert [row.position for row in delivered] == sorted(row.position for row in delivered)

        k = resume_at % total
        async with follow_rows(log, task.pathspec, 0, resume=delivered[k].position) as rows:
            after = await _take(rows, total - k - 1)
            await _nothing_more(rows)
        assert after == delivered[k + 1 :]

    anyio.run(scenario)


async def test_a_task_tail_follows_the_attempt_its_task_shows(client: Client) -> None:
    """A task read before its retry tails attempt 0; read after it, attempt 1."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    await task.log({"loss": 1.0})
    await task.fail("diverged")
    await task.retry()
    await task.start()
    await task.log({"loss": 0.5})
    await task.log({"loss": 0.25})
    await task.flush()
    first = await client.task(task.pathspec, attempt=0, after=task.receipt)
    latest = await client.task(task.pathspec, after=task.receipt)
    async with first.follow_history() as rows:
        assert [(r.attempt, r["loss"]) for r in await _take(rows, 1)] == [(0, 1.0)]
        await _nothing_more(rows)
    async with latest.follow_history() as rows:
        assert [(r.attempt, r["loss"]) for r in await _take(rows, 2)] == [(1, 0.5), (1, 0.25)]
        await _nothing_more(rows)
    async with follow_rows(client.log, task.pathspec, ANY_ATTEMPT) as rows:
        assert [r.attempt for r in await _take(rows, 3)] == [0, 1, 1]


async def test_a_run_tail_holds_the_runs_rows_not_its_tasks(client: Client) -> None:
    """A run's tail delivers what the run logged, not its tasks' rows."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    await task.log({"loss": 1.0})
    await task.flush()
    await run.log({"epoch_loss": 0.7})
    await run.flush()
    view = await client.run(run.pathspec, after=run.receipt)
    async with view.follow_history() as rows:
        (row,) = await _take(rows, 1)
        await _nothing_more(rows)
    assert (row.attempt, row.step, row["epoch_loss"]) == (None, 0, 0.7)


async def test_keys_keep_only_rows_that_have_them_and_only_those_keys(client: Client) -> None:
    """With keys, rows lacking one are skipped and the others hold only the keys asked for."""
    run = await client.create_run("Train")
    for row in ({"loss": 1.0, "acc": 0.1}, {"acc": 0.2}, {"loss": 0.5, "acc": 0.3, "lr": 1}):
        await run.log(row)
    await run.flush()
    view = await client.run(run.pathspec, after=run.receipt)
    async with view.follow_history(keys=["loss", "acc"]) as rows:
        taken = await _take(rows, 2)
        await _nothing_more(rows)
    assert [sorted(r.row) for r in taken] == [["_step", "_timestamp", "acc", "loss"]] * 2
    assert [r.step for r in taken] == [0, 2]


async def test_nan_and_infinities_arrive_as_floats(client: Client) -> None:
    """Values that travel tagged reach the tail as the floats logged."""
    run = await client.create_run("Train")
    await run.log({"loss": math.nan, "hi": math.inf, "lo": -math.inf})
    await run.flush()
    view = await client.run(run.pathspec, after=run.receipt)
    async with view.follow_history() as rows:
        (row,) = await _take(rows, 1)
    assert math.isnan(row["loss"]) and row["hi"] == math.inf and row["lo"] == -math.inf


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stream": "gpu"}, "not one of default, system"),
        ({"keys": "loss"}, "a list of metric names"),
        ({"resume": (0, 0)}, "not a position"),
        ({"resume": 12}, "not a position"),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_read(
    client: Client, options: dict[str, Any], message: str
) -> None:
    """An unknown stream, keys given as a string or a resume that is no position: BadFilter."""
    run = await client.create_run("Train")
    view = await client.run(run.pathspec, after=run.receipt)
    with pytest.raises(BadFilter, match=message):
        view.follow_history(**options)


async def test_a_tail_sees_a_running_blocks_rows_without_a_flush_call() -> None:
    """Inside a block, each row reaches a tail within the flush interval, the later ones too."""
    async with in_memory(Settings(metrics_flush_interval=0.02)) as client:
        run = await client.create_run("Train")
        async with run.task("train", heartbeat=False) as task:
            view = await client.task(task.pathspec, after=task.receipt)
            async with view.follow_history() as rows:
                for loss in (1.0, 0.5, 0.25):
                    await task.log({"loss": loss})
                    (row,) = await _take(rows, 1)
                    assert row["loss"] == loss
