"""The ``reads`` benchmark: reads (a)-(e) through the async client, at R and at scale.

(e), a task's state and its metric history, needs the workload's points
(``--points``): it is timed at R only, the scale phase's runs having none.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from runstate.client.cli._bench._as_of import bench_as_of
from runstate.client.cli._bench._events import _append_all, _commits
from runstate.client.cli._bench._harness import (
    _client,
    _Place,
    _replica,
    _say,
    _server_version,
    _wait_applied,
)
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms, quantile
from runstate.client.cli._bench._turns import take_turn
from runstate.client.cli._bench._workload import write_workload
from runstate.engine._event_factory import EventFactory
from runstate.engine._events import Event
from runstate.engine._states import RunState
from runstate.engine.errors import Timeout

NOTE_METRIC_READS = (
    "read (e), one task's state and metric history, is timed at R only (the scale phase's "
    "runs log no points); `bench metrics` times it too, on a run of its own"
)


async def _time_calls(
    calls: int, call: Callable[[int], Awaitable[Any]], warmup: int = 20
) -> list[float]:
    for i in range(warmup):
        await call(i)
    samples = []
    for i in range(calls):
        await take_turn()
        started = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - started)
    return samples


async def _read_figures(
    client: Any,
    report: Report,
    p: BenchParams,
    tag: str,
    label: str,
    runs: Sequence[str],
    task_runs: Sequence[str],
    targets: tuple[float, float, float, float],
) -> None:
    async def get_run(i: int) -> None:
        run = await client.run(runs[i % len(runs)])
        assert run.state is not None

    async def latest(i: int) -> None:
        run = await client.latest_run(FLOW, successful=True)
        assert run is not None

    async def by_tag(i: int) -> None:
        page = await client.runs(FLOW, tags=["production"], page_size=10)
        assert page.items

    async def tasks(i: int) -> None:
        page = await client.tasks(
            task_runs[i % len(task_runs)], "train", page_size=min(1000, max(p.tasks, 1))
        )
        states = [t.state async for t in page.all()]
        assert len(states) == p.tasks

    for key, what, call, target in (
        ("get_run", "(a) one run by pathspec", get_run, targets[0]),
        ("latest_successful", "(b) latest successful run of Train", latest, targets[1]),
        ("runs_by_tag", "(c) runs tagged production, newest first, page of 10", by_tag, targets[2]),
        ("tasks_of_step", f"(d) all {p.tasks} tasks of the train step", tasks, targets[3]),
    ):
        samples = await _time_calls(p.calls, call)
        report.add(
            Figure(
                f"{tag}_{key}_ms",
                f"{what} ({label})",
                "ms",
                _ms(samples),
                target=Target("median", "<", target),
            )
        )
        _say(f"reads {label}: {what}: p50 {quantile(_ms(samples), 0.5):.2f} ms")


async def _read_e(
    client: Any, report: Report, p: BenchParams, runs: Sequence[str], points_sequence: int
) -> None:
    """(e) one train task's state and its metric history, cycling through the train tasks."""
    tasks = [f"{run}/train/{k + 1}" for run in runs for k in range(1, p.tasks + 1)]
    await client.task(tasks[-1])
    await _metrics_applied(client, tasks[-1], points_sequence)

    async def task_history(i: int) -> None:
        task = await client.task(tasks[i % len(tasks)])
        history = await task.history()
        assert task.state is not None and len(history) == p.points

    samples = await _time_calls(p.calls, task_history)
    report.add(
        Figure(
            "r_task_history_ms",
            f"(e) one task's state and its metric history (R={p.runs})",
            "ms",
            _ms(samples),
            target=Target("median", "<", 2.0),
        )
    )
    _say(f"reads R={p.runs}: (e) task and metric history: p50 {quantile(_ms(samples), 0.5):.2f} ms")


async def _metrics_applied(client: Any, pathspec: str, sequence: int) -> None:
    """Wait until the replica has projected points sequence ``sequence`` (past the 5 s bound)."""
    task = await client.task(pathspec)
    while True:
        try:
            await task.history_keys(after=sequence)
            return
        except Timeout:
            continue


async def _write_scale(
    client: Any, p: BenchParams, first_id: int
) -> tuple[list[str], list[str], int]:
    """``scale_runs`` finished runs (one 3-event commit each), a few with full task sets."""
    factory = EventFactory(client.settings.user)
    count = p.scale_runs
    with_tasks = (
        {
            first_id + (count - 1) * j // max(1, p.scale_task_runs - 1)
            for j in range(p.scale_task_runs)
        }
        if p.scale_task_runs
        else set()
    )

    def commits() -> Iterator[list[Event]]:
        for number in range(first_id, first_id + count):
            rid = str(number)
            if number in with_tasks:
                yield from _commits(factory.workload_run(number, rid, p.tasks), 1)
                continue
            # every 7th run fails, and so do the newest two: "latest successful" must skip them
            failed = number % 7 == 0 or number >= first_id + count - 2
            yield [
                factory.run_created(rid, production=number % 2 == 0),
                factory.run_state(rid, RunState.RUNNING),
                factory.run_state(rid, RunState.FAILED if failed else RunState.COMPLETED),
            ]

    _, _, last = await _append_all(client.log, commits(), limit_events=math.inf)
    runs = [f"{FLOW}/{n}" for n in range(first_id, first_id + count)]
    return runs, [f"{FLOW}/{n}" for n in sorted(with_tasks)], last


async def bench_reads(place: _Place, p: BenchParams, report: Report) -> None:
    """Reads (a)-(d) through the async client after the write phase, at R and at scale."""
    report.notes.append(NOTE_METRIC_READS)
    async with (
        _replica(place, p.projector),
        _client(place) as writing,
        _client(place, "reader") as reading,  # with --auth: a client of JetStream's account
    ):
        # the writer's runs, whoever connected last (it sets the process' default namespace)
        namespace = f"user:{writing.settings.user}"
        client, reader = writing.with_namespace(namespace), reading.with_namespace(namespace)
        report.server_version = _server_version(client.nc)
        _say(f"reads: writing {p.runs} workload runs")
        result = await write_workload(client.writer, p.runs, p.tasks, max(p.writers), p.points)
        await _wait_applied(client, result.last_sequence)
        await _read_figures(
            reader,
            report,
            p,
            "r",
            f"R={p.runs}",
            result.run_pathspecs,
            result.run_pathspecs,
            (2.0, 2.0, 2.0, 2.0),
        )
        if p.points:
            await _read_e(reader, report, p, result.run_pathspecs, result.points_sequence)
        await bench_as_of(client, report, p)
        if p.scale_runs <= 0:
            return
        _say(f"reads: writing {p.scale_runs:,} runs with pipelined appends")
        started = time.perf_counter()
        runs, task_runs, last = await _write_scale(client, p, first_id=1_000_000)
        written = time.perf_counter() - started
        await _wait_applied(client, last)
        caught_up = time.perf_counter() - started
        report.notes.append(
            f"scale phase: {p.scale_runs:,} more runs (one commit of 3 events each; "
            f"{p.scale_task_runs} with the full task set) written in {written:.1f}s, "
            f"queryable after {caught_up:.1f}s"
        )
        label = f"R={p.scale_runs + p.runs:,}"
        random.seed(7)
        sample = random.sample(runs, min(len(runs), 5000))
        await _read_figures(
            reader, report, p, "scale", label, sample, task_runs, (1.0, 2.0, 3.0, 3.0)
        )
