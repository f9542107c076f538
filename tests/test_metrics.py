"""Metrics through the whole runstate in memory: logging with W&B's semantics, reading back."""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from runstate.client import (
    Client,
    ConfigurationError,
    InvalidEvent,
    RunState,
    StepWentBack,
    Unavailable,
)
from runstate.client.testing import in_memory
from runstate.engine import MemoryEventLog, Settings
from runstate.engine._handles import TaskHandle
from runstate.engine._metrics_writer import MetricsBuffer
from runstate.engine._points import PointBatch, decode_points, encode_points
from runstate.engine._worker import Writer
from runstate.projections._history import scan_page
from runstate.projections._metrics_store import MetricsStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """A client of a runstate in memory."""
    async with in_memory(Settings(retry_budget=0.5)) as client:
        yield client


def _memory_log(client: Client) -> MemoryEventLog:
    assert isinstance(client.log, MemoryEventLog)
    return client.log


@pytest.mark.parametrize("max_rows", [1, 7, 2000])
async def test_history_equals_what_was_logged_in_any_batching(
    client: Client, max_rows: int
) -> None:
    """Rows come back as logged whatever the batches they travelled in."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    task._metrics = MetricsBuffer(client.log, task.pathspec, 0, max_rows=max_rows)
    logged = [{"loss": 1 / (i + 1), "acc": i % 3, "tag": f"e{i}"} for i in range(40)]
    for row in logged:
        await task.log(row)
    receipt = await task.flush()
    read = await (await client.task(task.pathspec, after=task.receipt)).history(
        samples=500, after=receipt
    )
    assert [{k: v for k, v in row.items() if k != "_timestamp"} for row in read] == [
        {"_step": i, **row} for i, row in enumerate(logged)
    ]
    assert all(isinstance(row["_timestamp"], float) for row in read)


async def test_values_round_trip_exactly_nan_and_infinities_included(client: Client) -> None:
    """NaN, infinities, bools, ints and strings read back as the same values and types."""
    run = await client.create_run("Train")
    row = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "ok": True, "n": 3, "s": "x"}
    await run.log(row)
    receipt = await run.flush()
    (read,) = await (await client.run(run.pathspec, after=run.receipt)).history(after=receipt)
    assert math.isnan(read["nan"]) and read["inf"] == math.inf and read["ninf"] == -math.inf
    assert (read["ok"], read["n"], read["s"]) == (True, 3, "x")
    assert type(read["ok"]) is bool and type(read["n"]) is int
    summary = await (await client.run(run.pathspec, after=run.receipt)).summary()
    assert math.isnan(summary["nan"]) and summary["inf"] == math.inf


async def test_a_value_that_is_not_a_metric_is_refused_before_anything_is_sent(
    client: Client,
) -> None:
    """Lists, None and objects raise InvalidEvent; nothing reaches the points stream."""
    run = await client.create_run("Train")
    for bad in ({"x": [1, 2]}, {"x": None}, {"_step": 3}, {"": 1}, {"x": object()}):
        with pytest.raises(InvalidEvent):
            await run.log(bad)
    await run.flush()
    assert await client.log.points.last_sequence() == 0


async def test_a_step_that_goes_back_is_refused_and_the_same_step_merges(client: Client) -> None:
    """Steps only go forward: a step before the last raises; the last again adds keys."""
    run = await client.create_run("Train")
    await run.log({"a": 1}, step=5)
    await run.log({"b": 2}, step=5)
    with pytest.raises(StepWentBack):
        await run.log({"a": 0}, step=4)
    await run.log({"a": 3})
    receipt = await run.flush()
    read = await (await client.run(run.pathspec, after=run.receipt)).history(after=receipt)
    assert [{k: v for k, v in r.items() if k != "_timestamp"} for r in read] == [
        {"_step": 5, "a": 1, "b": 2},
        {"_step": 6, "a": 3},
    ]


async def test_scan_ranges_are_exact_at_their_edges(client: Client) -> None:
    """min_step and max_step are both included, pages meet without gap or repeat."""
    run = await client.create_run("Train")
    for step in range(0, 100, 2):
        await run.log({"loss": step / 10, **({"acc": step} if step % 4 == 0 else {})}, step=step)
    receipt = await run.flush()
    view = await client.run(run.pathspec, after=run.receipt)
    await view.history_keys(after=receipt)
    for page_size in (1, 3, 1000):
        rows = [r async for r in view.scan_history(min_step=10, max_step=20, page_size=page_size)]
        assert [r["_step"] for r in rows] == [10, 12, 14, 16, 18, 20]
    rows = [r async for r in view.scan_history(keys=["acc"], min_step=11, max_step=21)]
    assert [(r["_step"], r["acc"]) for r in rows] == [(12, 12), (16, 16), (20, 20)]
    assert [r async for r in view.scan_history(keys=["nope"])] == []
    everything = [r["_step"] async for r in view.scan_history(page_size=7)]
    assert everything == list(range(0, 100, 2))


async def test_history_keys_last_step_and_summary(client: Client) -> None:
    """The keys logged, the last step and each key's latest value."""
    run = await client.create_run("Train")
    await run.log({"loss": 0.5, "acc": 0.1})
    await run.log({"loss": 0.25})
    await run.log({"acc": 0.9}, step=7)
    receipt = await run.flush()
    view = await client.run(run.pathspec, after=run.receipt)
    assert await view.history_keys(after=receipt) == ["acc", "loss"]
    assert await view.last_history_step() == 7
    assert await view.summary() == {"acc": 0.9, "loss": 0.25}


async def test_history_samples_keep_first_last_and_spikes(client: Client) -> None:
    """A spike in a long series survives sampling; at most ``samples`` rows come back."""
    run = await client.create_run("Train")
    for step in range(5000):
        await run.log({"loss": 100.0 if step == 3217 else 1.0 - step / 10_000})
    receipt = await run.flush()
    rows = await (await client.run(run.pathspec, after=run.receipt)).history(
        samples=50, keys=["loss"], after=receipt
    )
    assert len(rows) <= 50
    assert rows[0]["_step"] == 0 and rows[-1]["_step"] == 4999
    assert max(row["loss"] for row in rows) == 100.0
    again = await (await client.run(run.pathspec, after=run.receipt)).history(
        samples=50, keys=["loss"]
    )
    assert again == rows


async def test_buffered_rows_are_flushed_at_the_blocks_exit(client: Client) -> None:
    """Rows logged inside ``run.task(...)`` are stored before the task completes."""
    run = await client.create_run("Train")
    async with run.running():
        async with run.task("train") as task:
            await task.log({"loss": 0.3})
            await task.log({"loss": 0.2})
            assert await client.log.points.last_sequence() == 0  # still buffered
        await run.log({"lr": 0.1})
    assert run.state is RunState.COMPLETED
    assert await client.log.points.last_sequence() == 2
    view = await client.task(task.pathspec, after=task.receipt)
    assert [r["loss"] for r in await view.history(after=2)] == [0.3, 0.2]


async def test_rows_logged_before_a_failure_are_kept(client: Client) -> None:
    """A block that raises still sends what it logged, then fails the task."""
    run = await client.create_run("Train")
    with pytest.raises(ZeroDivisionError):
        async with run.task("train") as task:
            await task.log({"loss": 0.3})
            1 / 0  # noqa: B018
    view = await client.task(task.pathspec, after=task.receipt)
    assert [r["loss"] for r in await view.history(after=1)] == [0.3]


async def test_rows_are_flushed_periodically_inside_the_block() -> None:
    """Inside the block, rows go out every ``metrics_flush_interval`` without a flush call."""
    settings = Settings(metrics_flush_interval=0.01)
    async with in_memory(settings) as client:
        run = await client.create_run("Train")
        async with run.task("train", heartbeat=False) as task:
            await task.log({"loss": 0.3})
            with anyio.fail_after(5):
                while await client.log.points.last_sequence() == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)


async def test_a_failed_flush_raises_and_a_later_one_sends_the_same_batch_once(
    client: Client,
) -> None:
    """A flush that cannot reach the log raises; the next sends the batch with its commit id."""
    run = await client.create_run("Train")
    await run.log({"loss": 1.0})
    points = _memory_log(client).points

    def unavailable() -> None:
        raise Unavailable("the points stream is away")

    points.before_append = unavailable
    with pytest.raises(Unavailable):
        await run.flush()
    points.before_append = None
    await run.log({"loss": 0.5})
    await run.flush()
    batches = [decode_points(data) for _, _, data in points.messages]
    assert [[row["loss"] for row in batch.rows] for batch in batches] == [[1.0], [0.5]]


async def test_a_failed_flush_at_the_blocks_exit_fails_the_task(client: Client) -> None:
    """When the rows cannot be sent at the end, the task fails and the error propagates."""
    run = await client.create_run("Train")
    points = _memory_log(client).points

    def unavailable() -> None:
        raise Unavailable("the points stream is away")

    with pytest.raises(Unavailable):
        async with run.task("train", heartbeat=False) as task:
            await task.log({"loss": 1.0})
            points.before_append = unavailable
    points.before_append = None
    assert task.state.value == "failed"


async def test_a_retry_attempt_logs_its_own_history(client: Client) -> None:
    """Each attempt of a task has its steps from 0; a task reads its latest attempt's."""
    run = await client.create_run("Train")
    task: TaskHandle = await run.create_task("train", start=True)
    await task.log({"loss": 9.0})
    await task.fail("first try")
    await task.retry()
    await task.start()
    await task.log({"loss": 1.0})
    receipt = await task.flush()
    latest = await client.task(task.pathspec, after=task.receipt)
    assert [(r["_step"], r["loss"]) for r in await latest.history(after=receipt)] == [(0, 1.0)]
    first = await client.task(task.pathspec, attempt=0)
    assert [r["loss"] for r in await first.history()] == [9.0]


async def test_pandas_true_without_pandas_names_the_extra(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pandas installed, pandas=True raises ConfigurationError naming the extra."""
    monkeypatch.setitem(sys.modules, "pandas", None)
    run = await client.create_run("Train")
    with pytest.raises(ConfigurationError, match=r"runstate\[pandas\]"):
        await (await client.run(run.pathspec, after=run.receipt)).history(pandas=True)


async def test_pandas_true_returns_a_dataframe(client: Client) -> None:
    """With pandas installed, pandas=True gives one DataFrame row per history row."""
    pandas: Any = pytest.importorskip("pandas")
    run = await client.create_run("Train")
    await run.log({"loss": 0.5})
    await run.log({"loss": 0.25})
    receipt = await run.flush()
    frame = await (await client.run(run.pathspec, after=run.receipt)).history(
        pandas=True, after=receipt
    )
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame["loss"]) == [0.5, 0.25] and list(frame["_step"]) == [0, 1]


def test_the_guides_metrics_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """The example of docs/guide.md's Metrics section runs and prints what it says."""
    guide = (Path(__file__).parent.parent / "docs" / "guide.md").read_text()
    section = guide.split("\n## Metrics\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    exec(compile(code, "guide.md#metrics", "exec"), {"__name__": "guide"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("True {'_step': 0, '_timestamp': ")
    assert printed[0].endswith("'loss': 1.0} nan")
    assert printed[1:4] == ["10 0.01", "11 0.011", "12 0.012"]
    assert printed[4] == "['acc', 'loss'] 999"
    assert printed[-1] == "{'best_acc': 0.999}"


async def test_a_scan_page_is_cut_where_a_reply_would_pass_its_limit() -> None:
    """Pages stop before the reply's byte limit and the next page starts at the row left out."""
    store = MetricsStore(":memory:")
    rows = [{"_step": step, "_timestamp": 0.0, "text": "x" * 50} for step in range(100)]
    store.apply([PointBatch("F/1", None, "default", rows)], 1)
    seen: list[int] = []
    start: int | None = None
    while True:
        page, start = scan_page(
            store,
            "F/1",
            None,
            "default",
            keys=None,
            min_step=None,
            max_step=None,
            page_size=1000,
            start=start,
            max_bytes=500,
        )
        assert 0 < sum(len(data) + 1 for data in page) <= 500
        seen.extend(int(data.split(b'"_step":')[1].split(b",")[0]) for data in page)
        if start is None:
            break
    store.close()
    assert seen == list(range(100))


async def test_history_with_another_x_axis_keeps_only_rows_that_have_it(client: Client) -> None:
    """``x_axis="acc"`` gives the rows where acc was logged, with the keys asked for."""
    run = await client.create_run("Train")
    for step in range(10):
        await run.log({"loss": step / 10, **({"acc": step} if step % 3 == 0 else {})})
    receipt = await run.flush()
    view = await client.run(run.pathspec, after=run.receipt)
    rows = await view.history(keys=["loss"], x_axis="acc", after=receipt)
    assert [(r["_step"], r["acc"], r["loss"]) for r in rows] == [
        (0, 0, 0.0),
        (3, 3, 0.3),
        (6, 6, 0.6),
        (9, 9, 0.9),
    ]
    assert await view.history(keys=["nope"]) == []


async def test_the_system_sampler_logs_cpu_and_memory_while_a_task_runs() -> None:
    """With ``system_metrics_interval`` set, a task's block logs its process's CPU and memory."""
    pytest.importorskip("psutil")
    async with in_memory(Settings(system_metrics_interval=0.01)) as client:
        run = await client.create_run("Train")
        async with run.task("train", heartbeat=False) as task:
            with anyio.fail_after(10):
                while await client.log.points.last_sequence() < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        view = await client.task(task.pathspec, after=task.receipt)
        latest = await view.system_metrics(after=2)
        assert set(latest) == {"cpu_percent", "memory_rss_mb", "memory_percent", "threads"}
        assert latest["memory_rss_mb"] > 0 and latest["threads"] >= 1
        rows = await view.history(stream="system")
        assert len(rows) >= 2 and await view.history() == []


def test_asking_for_system_metrics_without_psutil_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without psutil, a writer with ``system_metrics_interval`` set raises at once."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(ConfigurationError, match=r"runstate\[system\]"):
        Writer(MemoryEventLog(Settings(system_metrics_interval=1.0)))


@pytest.mark.parametrize(
    "rows",
    [
        b'[{"_step":0,"x":null}]',
        b'[{"_step":0,"x":[1]}]',
        b'[{"_step":0,"x":{"a":1}}]',
        b'[{"_step":"0","x":1}]',
        b"[]]",
    ],
)
def test_a_message_that_is_not_a_points_batch_is_refused(rows: bytes) -> None:
    """Nulls, lists, objects other than a tag and a step that is not an int are not points."""
    with pytest.raises(InvalidEvent):
        decode_points(b'{"v":1,"p":"F/1","a":null,"s":"default","rows":' + rows + b"}")


def test_a_message_decodes_tags_and_braces_in_strings() -> None:
    """Tagged values come back as floats, and strings may hold braces and brackets."""
    batch = decode_points(
        b'{"v":1,"p":"F/1/s/2","a":0,"s":"default","rows":'
        b'[{"_step":0,"x":{"$f":"-inf"},"note":"{[a]}"},{"_step":1,"x":2}]}'
    )
    assert batch.rows == [{"_step": 0, "x": -math.inf, "note": "{[a]}"}, {"_step": 1, "x": 2}]
    plain = encode_points("F/1", None, "default", [{"_step": 0, "_timestamp": 1.0, "x": 1.5}])
    assert batch.tagged and not decode_points(plain).tagged
