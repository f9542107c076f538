"""The ``metrics`` benchmark: metric ingest, sampled history, full scans, read (e), live tails.

One run logs ``metric_rows`` rows of ``metric_keys`` keys through
``RunHandle.log`` (buffered, flushed in batches), timed in tenths: that is
the ingest figure, in points (key-values) per second. Once the replica has
projected them: ``history(samples=500)`` of one key over those rows,
``scan_history`` of every row and key, and read (e) of WORKLOAD.md (one
task's state and its metric history: a train task with 3 ``loss`` points).
Last, the live tail: a task's ``follow_history`` while the task logs one row
at a time, each flushed: from just before the flush to the tail's delivery.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import anyio

from runstate.client.cli._bench._harness import (
    _client,
    _Place,
    _replica,
    _say,
    _server_version,
)
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms, quantile
from runstate.client.cli._bench._turns import take_turn
from runstate.engine.errors import Timeout

__all__ = ["bench_metrics"]

#: rows flushed and delivered before the tail's latency is timed
TAIL_WARMUP = 20

#: rows a scan asks for per request
SCAN_PAGE = 10_000


async def _projected(run: Any, sequence: int) -> None:
    """Wait until the replica has projected points sequence ``sequence`` (past the 5 s bound)."""
    while True:
        try:
            await run.history_keys(after=sequence)
            return
        except Timeout:
            continue


def _optional_pandas() -> Any:
    """pandas if installed (the DataFrame figure needs it), else None."""
    try:
        return importlib.import_module("pandas")
    except ImportError:
        return None


async def bench_metrics(place: _Place, p: BenchParams, report: Report) -> None:
    """Ingest, history, scan and read (e) over one run of ``metric_rows`` rows."""
    keys = [f"k{i}" for i in range(p.metric_keys)]
    keys[0] = "loss"
    async with _replica(place, p.projector), _client(place) as client:
        report.server_version = _server_version(client.nc)
        handle = await client.create_run(FLOW)
        _say(f"metrics: logging {p.metric_rows:,} rows of {len(keys)} keys")
        rates = []
        tenth = max(1, p.metric_rows // 10)
        step = 0
        # one turn for the whole ingest and its projection (below): the replica projects
        # each tenth while the next is logged, so no turn may pass in between
        await take_turn()
        while step < p.metric_rows:
            count = min(tenth, p.metric_rows - step)
            started = time.perf_counter()
            for _ in range(count):
                value = 1.0 / (step + 1)
                await handle.log(dict.fromkeys(keys, value))
                step += 1
            receipt = await handle.flush()
            rates.append(count * len(keys) / (time.perf_counter() - started))
        report.add(
            Figure(
                "ingest_points_per_s",
                f"metric ingest from one process ({len(keys)} keys a row)",
                "points/s",
                rates,
                higher_is_better=True,
                target=Target("median", ">=", 200_000),
            )
        )
        _say(f"metrics: ingest p50 {quantile(rates, 0.5):,.0f} points/s")
        assert receipt is not None
        started = time.perf_counter()
        run = await client.run(handle.pathspec, after=handle.receipt)
        await _projected(run, receipt.sequence)
        report.notes.append(
            f"{p.metric_rows:,} rows of {len(keys)} keys queryable "
            f"{time.perf_counter() - started:.1f}s after the last flush"
        )

        samples = []
        for i in range(p.calls + 10):
            await take_turn()
            started = time.perf_counter()
            rows = await run.history(samples=500, keys=["loss"])
            if i >= 10:
                samples.append(time.perf_counter() - started)
        assert 0 < len(rows) <= 500
        report.add(
            Figure(
                "history_ms",
                f"history(samples=500) of one key over {p.metric_rows:,} points",
                "ms",
                _ms(samples),
                target=Target("median", "<", 20),
            )
        )
        _say(f"metrics: history p50 {quantile(_ms(samples), 0.5):.1f} ms")

        scans = []
        for _ in range(p.metric_scans):
            await take_turn()
            started = time.perf_counter()
            seen = width = 0
            async for row in run.scan_history(page_size=SCAN_PAGE):
                seen += 1
                width = len(row)
            scans.append(time.perf_counter() - started)
            assert seen == p.metric_rows and width == len(keys) + 2
        report.add(
            Figure(
                "scan_s",
                f"scan_history of {p.metric_rows:,} rows x {len(keys)} keys "
                f"(pages of {SCAN_PAGE:,})",
                "s",
                scans,
                target=Target("median", "<", 5),
            )
        )
        _say(f"metrics: scan p50 {quantile(scans, 0.5):.2f} s")

        pandas = _optional_pandas()
        if pandas is None:
            _say("metrics: no scan_frame_s without pandas (pip install 'runstate[pandas]')")
        else:
            frames = []
            for _ in range(p.metric_scans):
                await take_turn()
                started = time.perf_counter()
                rows = [row async for row in run.scan_history(page_size=SCAN_PAGE)]
                frame = pandas.DataFrame.from_records(rows)
                frames.append(time.perf_counter() - started)
                assert frame.shape == (p.metric_rows, len(keys) + 2)
                del rows, frame
            report.add(
                Figure(
                    "scan_frame_s",
                    f"DataFrame.from_records(scan_history) of {p.metric_rows:,} rows x "
                    f"{len(keys)} keys",
                    "s",
                    frames,
                    target=Target("median", "<", 8),
                )
            )
            _say(f"metrics: scan to a DataFrame p50 {quantile(frames, 0.5):.2f} s")

        async with handle.task("train", index=0, heartbeat=False) as task:
            for value in (0.9, 0.5, 0.3):
                await task.log({"loss": value})
        points = await task.flush()  # the block's exit sent them: this is that receipt
        assert points is not None

        async def read_e() -> None:
            view = await client.task(task.pathspec)
            history = await view.history()
            assert view.state is not None and len(history) == 3

        await client.task(task.pathspec, after=task.receipt)
        await _projected(run, points.sequence)
        samples = []
        for i in range(p.calls + 20):
            await take_turn()
            started = time.perf_counter()
            await read_e()
            if i >= 20:
                samples.append(time.perf_counter() - started)
        report.add(
            Figure(
                "read_e_ms",
                "(e) one task's state and its metric history",
                "ms",
                _ms(samples),
                target=Target("median", "<", 2),
            )
        )
        _say(f"metrics: read (e) p50 {quantile(_ms(samples), 0.5):.2f} ms")

        samples = await _tail_latency(client, handle, p.calls)
        report.add(
            Figure(
                "tail_ms",
                "live tail: one row flushed -> follow_history delivers it",
                "ms",
                _ms(samples),
                target=(Target("median", "<", 2), Target("p95", "<", 5)),
            )
        )
        _say(
            f"metrics: tail p50 {quantile(_ms(samples), 0.5):.2f} ms, "
            f"p95 {quantile(_ms(samples), 0.95):.2f} ms"
        )


async def _tail_latency(client: Any, handle: Any, calls: int) -> list[float]:
    """A new task logs ``calls`` rows one at a time, each flushed at once; for each, the
    time from just before the flush to its delivery to a tail of the task."""
    delivered: dict[int, float] = {}
    arrived = anyio.Event()
    async with handle.task("tail", heartbeat=False) as task:
        view = await client.task(task.pathspec, after=task.receipt)

        async def follow(ready: anyio.Event) -> None:
            async with view.follow_history() as rows:
                ready.set()
                async for row in rows:
                    delivered[row.step] = time.perf_counter()
                    arrived.set()

        samples: list[float] = []
        async with anyio.create_task_group() as group:
            ready = anyio.Event()
            group.start_soon(follow, ready)
            await ready.wait()
            for step in range(TAIL_WARMUP + calls):
                await take_turn()
                started = time.perf_counter()
                await task.log({"loss": 1 / (step + 1)})
                await task.flush()
                with anyio.fail_after(10):
                    while step not in delivered:  # the tail sets ``arrived`` on each row
                        arrived = anyio.Event()
                        await arrived.wait()
                if step >= TAIL_WARMUP:
                    samples.append(delivered[step] - started)
            group.cancel_scope.cancel()
    return samples
