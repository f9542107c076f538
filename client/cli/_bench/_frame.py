"""The ``frame`` benchmark: many runs exported to a DataFrame, and lists by summary values.

``frame_runs`` finished runs, each with 5 config values (its parameters)
and 5 summary values: 4 logged as one metric row per run, and 1 set
explicitly (``run.updated``) on every tenth run, over the logged value of
the same key. Then ``runs_frame`` of all of them (the export W&B users
run, which W&B's API pages 50 runs at a time over GraphQL), and one page
of 50 runs filtered and sorted by a summary value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio

from runstate.client.cli._bench._events import _append_all
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
from runstate.engine._commits import new_commit_id
from runstate.engine._event_factory import EventFactory
from runstate.engine._events import Event
from runstate.engine._names import parse_pathspec
from runstate.engine._points import PointReceipt, encode_points, points_subject
from runstate.engine._states import RunState
from runstate.engine.errors import Timeout

__all__ = ["bench_frame"]

#: points batches in flight while the summaries are logged
_IN_FLIGHT = 64

#: the conditions of the filtered page
_WHERE = ["summary.acc > 0.5", 'config.optimizer = "adam"']


async def _write_runs(client: Any, p: BenchParams) -> tuple[int, PointReceipt]:
    """The runs, their edits and their points; (last events sequence, last points sequence)."""
    factory = EventFactory(client.settings.user)
    first = 2_000_000

    def commits() -> Iterator[list[Event]]:
        for number in range(first, first + p.frame_runs):
            rid = str(number)
            parameters = {
                "lr": 0.001 * (number % 50),
                "batch": 32 * (1 + number % 4),
                "optimizer": ("adam", "sgd")[number % 2],
                "layers": number % 7,
                "dropout": 0.1,
            }
            commit: list[Event] = [
                factory.run_created(rid, parameters=parameters),
                factory.run_state(rid, RunState.RUNNING),
                factory.run_state(rid, RunState.COMPLETED),
            ]
            if number % 10 == 0:
                commit.append(factory.run_updated(rid, summary={"acc": 1.0}, name=f"best-{rid}"))
            yield commit

    _, _, last_event = await _append_all(client.log, commits(), limit_events=float("inf"))
    receipts: list[PointReceipt] = []
    prefix = client.settings.prefix
    numbers = iter(range(first, first + p.frame_runs))

    async def log_summaries() -> None:
        for number in numbers:
            pathspec = f"{FLOW}/{number}"
            row = {
                "_step": 0,
                "_timestamp": time.time(),
                "acc": number * 37 % 1000 / 1000,
                "loss": 1 - number * 37 % 1000 / 1000,
                "epoch": 3,
                "status": "done",
            }
            data = encode_points(pathspec, None, "default", [row])
            subject = points_subject(prefix, parse_pathspec(pathspec))
            receipts.append(await client.log.points.append(subject, data, new_commit_id()))

    async with anyio.create_task_group() as tg:
        for _ in range(_IN_FLIGHT):
            tg.start_soon(log_summaries)
    return last_event, max(receipts, key=lambda receipt: receipt.sequence)


async def bench_frame(place: _Place, p: BenchParams, report: Report) -> None:
    """``runs_frame`` of ``frame_runs`` runs, and a page filtered and sorted by summary."""
    async with _replica(place, p.projector), _client(place) as client:
        report.server_version = _server_version(client.nc)
        _say(f"frame: writing {p.frame_runs:,} runs with 5 config and 5 summary values")
        started = time.perf_counter()
        last_event, last_points = await _write_runs(client, p)
        await _wait_applied(client, last_event)
        while True:
            try:
                await client.runs(FLOW, page_size=1, after=last_points)
                break
            except Timeout:
                continue
        report.notes.append(
            f"{p.frame_runs:,} runs (5 config keys; 4 logged summary keys and, on every tenth "
            f"run, one explicit summary value) written and projected in "
            f"{time.perf_counter() - started:.1f}s"
        )

        frames = []
        for i in range(p.frame_repeat + 1):
            await take_turn()
            started = time.perf_counter()
            frame = await client.runs_frame(FLOW)
            if i:
                frames.append(time.perf_counter() - started)
        assert len(frame) == p.frame_runs and "summary.acc" in frame.columns
        report.add(
            Figure(
                "runs_frame_s",
                f"runs_frame of {p.frame_runs:,} runs (5 config, 5 summary keys) to a DataFrame",
                "s",
                frames,
                target=Target("median", "<", 1.0),
            )
        )
        _say(f"frame: runs_frame p50 {quantile(frames, 0.5):.3f} s")

        samples = []
        for i in range(p.calls + 10):
            await take_turn()
            started = time.perf_counter()
            page = await client.runs(FLOW, where=_WHERE, sort="-summary.acc")
            if i >= 10:
                samples.append(time.perf_counter() - started)
        assert page.items and all(run.config["optimizer"] == "adam" for run in page.items)
        report.add(
            Figure(
                "runs_by_summary_ms",
                f"runs where {' and '.join(_WHERE)}, by -summary.acc, page of 50 "
                f"(of {p.frame_runs:,})",
                "ms",
                _ms(samples),
                target=Target("median", "<", 100),
            )
        )
        _say(f"frame: runs by summary p50 {quantile(_ms(samples), 0.5):.1f} ms")
