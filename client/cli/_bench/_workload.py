"""The write phase of the standard workload through the worker API, and its benchmark."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from nats.aio.client import Client as NATS

from runstate.client.cli._bench._harness import (
    _client,
    _connection,
    _Place,
    _read_after,
    _replica,
    _say,
    _server_version,
)
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms
from runstate.client.cli._bench._turns import take_turn
from runstate.engine._commits import Receipt, new_commit_id
from runstate.engine._event_factory import EventFactory
from runstate.engine._events import encode_commit
from runstate.engine._handles import RunHandle, TaskHandle
from runstate.engine._states import TaskState
from runstate.engine._worker import Writer


def note_points(points: int) -> str:
    """What the report says of the workload's metric points."""
    if points <= 0:
        return "metric points: none (--points 0)"
    return (
        f"with points: each train task's successful attempt runs as a block "
        f"(task.attempting) that logs {points} `loss` points (steps 0..{points - 1}) through "
        "the task handle; they are flushed (one acknowledged batch) at the block's exit, "
        "before the task completes. Points are not counted as transitions"
    )


TRANSITIONS_PER_RUN_FIXED = 3 + 3 + 3 + 3  # run, start, join, end


def transitions_per_run(tasks: int) -> int:
    """State transitions of one workload run: 177 at T=50."""
    retried = tasks // 10
    return TRANSITIONS_PER_RUN_FIXED + 3 * tasks + 3 * retried


@dataclass
class _RunProgress:
    number: int
    run: RunHandle
    start: TaskHandle
    pending: int
    train: list[str] = field(default_factory=list)


@dataclass
class WriteResult:
    transitions: int
    elapsed: float
    last_sequence: int
    run_pathspecs: list[str]
    task_run: str | None = None
    #: the last points-stream sequence written (0 without points)
    points_sequence: int = 0

    @property
    def rate(self) -> float:
        return self.transitions / self.elapsed if self.elapsed > 0 else math.nan


async def write_workload(
    writer: Writer, runs: int, tasks: int, writers: int, points: int = 0
) -> WriteResult:
    """The standard workload's write phase through the worker API, ``writers`` at once.

    Each transition is its own acknowledged append. With ``points``, each train
    task's successful attempt logs that many ``loss`` points as a user's block
    would, flushed at the block's exit. Work is shared through a
    queue of whole units (a run's opening, one train task, a run's closing),
    so a task's transitions stay in order and a run closes after its train
    tasks. Task ids are given (an orchestrator's numbering); run ids are
    allocated by runstate's counter.
    """
    count = 0
    last = last_points = 0
    pathspecs: list[str] = []
    remaining = runs
    send, receive = anyio.create_memory_object_stream[Callable[[], Awaitable[None]]](math.inf)

    def seen(receipt: Receipt | None) -> None:
        nonlocal count, last
        assert receipt is not None
        count += 1
        last = max(last, receipt.sequence)

    async def open_run(number: int) -> None:
        run = await writer.create_run(FLOW, tags=["production"] if number % 2 == 0 else [])
        seen(run.receipt)
        pathspecs.append(run.pathspec)
        seen(await run.start())
        start = await run.create_task("start", "1")
        seen(start.receipt)
        seen(await start.start())
        seen(await start.complete())
        progress = _RunProgress(number, run, start, pending=tasks)
        for k in range(1, tasks + 1):
            send.send_nowait(functools.partial(train_task, progress, k))

    async def train_task(progress: _RunProgress, k: int) -> None:
        nonlocal last_points
        task = await progress.run.create_task(
            "train", str(k + 1), index=k - 1, parents=[progress.start.pathspec]
        )
        seen(task.receipt)
        seen(await task.start())
        if k % 10 == 0:
            seen(await task.fail("RuntimeError: injected failure"))
            seen(await task.retry())
            seen(await task.start())
        if points:
            async with task.attempting(heartbeat=False):
                for step in range(points):
                    await task.log({"loss": 1.0 / (k + step)})
            seen(task.receipt)  # completed at the block's exit, after the points' flush
            points_receipt = await task.flush()  # the exit's flush: nothing is left to send
            assert points_receipt is not None
            last_points = max(last_points, points_receipt.sequence)
        else:
            seen(await task.complete())
        progress.train.append(task.pathspec)
        progress.pending -= 1
        if progress.pending == 0:
            send.send_nowait(functools.partial(close_run, progress))

    async def close_run(progress: _RunProgress) -> None:
        nonlocal remaining
        run = progress.run
        join = await run.create_task("join", str(tasks + 2), parents=sorted(progress.train))
        seen(join.receipt)
        seen(await join.start())
        seen(await join.complete())
        end = await run.create_task("end", str(tasks + 3), parents=[join.pathspec])
        seen(end.receipt)
        seen(await end.start())
        if progress.number == 7:
            seen(await end.fail("RuntimeError: injected failure"))
            seen(await run.fail("end failed"))
        else:
            seen(await end.complete())
            seen(await run.complete())
        remaining -= 1
        if remaining == 0:
            send.close()

    async def work() -> None:
        async for unit in receive:
            await unit()

    for number in range(1, runs + 1):
        send.send_nowait(functools.partial(open_run, number))
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(writers):
            tg.start_soon(work)
    elapsed = time.perf_counter() - started
    receive.close()
    expected = runs * transitions_per_run(tasks)
    if count != expected:
        raise RuntimeError(f"wrote {count} transitions, expected {expected}")
    return WriteResult(count, elapsed, last, pathspecs, points_sequence=last_points)


async def _raw_acked(
    nc: NATS, subject_prefix: str, total: int, writers: int, payload: bytes
) -> float:
    """Messages/s of ``writers`` tasks each awaiting one JetStream publish at a time (raw)."""
    per = max(1, total // writers)

    async def one(writer: int) -> None:
        for k in range(per):
            await nc.request(
                f"{subject_prefix}.{writer}.{k % 64}",
                payload,
                timeout=10,
                headers={"Nats-Msg-Id": new_commit_id()},
            )

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for writer in range(writers):
            tg.start_soon(one, writer)
    return per * writers / (time.perf_counter() - started)


async def _write_only(place: _Place, p: BenchParams, report: Report) -> None:
    """The write phase at W=64 with no projector running: the engine's own rate.

    What the engine's figure asks for (the standard workload's write phase,
    projector not required), without and with the metric points, the two
    alternating so that both meet the same load; the figures with a replica
    beside follow.
    """
    async with _client(place) as client:
        writer = client.writer
        await write_workload(writer, 1, min(p.tasks, 10), 1, p.points)  # warm-up
        rates: list[float] = []
        with_points: list[float] = []
        for rep in range(p.repeat):
            await take_turn()
            result = await write_workload(writer, p.runs, p.tasks, 64)
            rates.append(result.rate)
            if p.points:
                await take_turn()
                with_points.append(
                    (await write_workload(writer, p.runs, p.tasks, 64, p.points)).rate
                )
            _say(
                f"workload W=64, no projector: repetition {rep + 1}/{p.repeat}: "
                f"{result.rate:,.0f} transitions/s"
                + (f", {with_points[-1]:,.0f} with points" if with_points else "")
            )
    report.add(
        Figure(
            "transitions_per_s_w64_no_projector",
            "state transitions/s, W=64 writers, no projector running",
            "transitions/s",
            rates,
            True,
            Target("median", ">=", 10_000),
        )
    )
    if with_points:
        report.add(
            Figure(
                "transitions_per_s_w64_points_no_projector",
                f"state transitions/s with {p.points} loss points per train task, W=64 writers, "
                "no projector running",
                "transitions/s",
                with_points,
                True,
                Target("median", ">=", 10_000),
            )
        )


async def bench_workload(place: _Place, p: BenchParams, report: Report) -> None:
    """The write phase, per W, with a projector replica running beside the writers."""
    report.notes.append(note_points(p.points))
    report.notes.append(
        f"{transitions_per_run(p.tasks)} transitions per run; each is an acknowledged append "
        f"through the worker API; projector: {p.projector}. raw_acked: the same number of "
        "commit-sized messages, W tasks each awaiting one plain nats-py request to JetStream "
        "at a time (a stream of its own that the projector does not read): the ceiling for "
        "acknowledged appends on this machine"
    )
    raw_stream = f"{place.prefix.upper()}_BENCH_RAW"
    raw_subjects = f"{place.prefix}.admin.benchraw"  # engine._roles.admin_subjects
    if 64 in p.writers:
        await _write_only(place, p, report)
    # the raw figure's stream of its own: made, written and deleted as the admin role
    async with (
        _replica(place, p.projector),
        _client(place) as client,
        _connection(place, "admin") as admin,
    ):
        report.server_version = _server_version(client.nc)
        js = admin.jetstream()
        await js.add_stream(
            name=raw_stream, subjects=[f"{raw_subjects}.>"], storage="file", duplicate_window=120
        )
        payload = encode_commit(
            [
                EventFactory(client.settings.user).task_state(
                    f"{FLOW}/1/train/1", 0, TaskState.RUNNING
                )
            ]
        )
        writer = client.writer
        # warm-up: one small run
        await write_workload(writer, 1, min(p.tasks, 10), 1, p.points)
        total = p.runs * transitions_per_run(p.tasks)
        for w in p.writers:
            rates: list[float] = []
            raw: list[float] = []
            drains: list[float] = []
            with_points: list[float] = []
            for rep in range(p.repeat):
                await take_turn()
                raw.append(await _raw_acked(admin, raw_subjects, total, w, payload))
                # a turn ends where this half's replica has caught up: nothing runs behind
                # the other half's timing
                await take_turn()
                result = await write_workload(writer, p.runs, p.tasks, w)
                rates.append(result.rate)
                started = time.perf_counter()
                await _read_after(client, result.run_pathspecs[-1], result.last_sequence)
                drains.append(time.perf_counter() - started)
                if p.points and w == 64:
                    await take_turn()
                    pointed = await write_workload(writer, p.runs, p.tasks, w, p.points)
                    with_points.append(pointed.rate)
                    await _read_after(client, pointed.run_pathspecs[-1], pointed.last_sequence)
                _say(
                    f"workload W={w}: repetition {rep + 1}/{p.repeat}: "
                    f"{result.rate:,.0f} transitions/s (raw {raw[-1]:,.0f} msgs/s)"
                    + (f", {with_points[-1]:,.0f} with points" if with_points else "")
                )
            report.add(
                Figure(
                    f"transitions_per_s_w{w}",
                    f"state transitions/s, W={w} writers",
                    "transitions/s",
                    rates,
                    True,
                )
            )
            if with_points:
                report.add(
                    Figure(
                        f"transitions_per_s_w{w}_points",
                        f"state transitions/s with {p.points} loss points per train task, "
                        f"W={w} writers",
                        "transitions/s",
                        with_points,
                        True,
                    )
                )
            report.add(
                Figure(
                    f"raw_acked_per_s_w{w}",
                    f"raw awaited JetStream publishes/s, W={w} tasks",
                    "msgs/s",
                    raw,
                    True,
                )
            )
            report.add(
                Figure(
                    f"projector_drain_ms_w{w}",
                    f"projector behind when writers finish, W={w}",
                    "ms",
                    _ms(drains),
                )
            )
        await js.delete_stream(raw_stream)
