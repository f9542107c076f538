"""The ``projection`` benchmark: a fresh projector's catch-up, and lag under load."""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path

import anyio

from runstate.client._bench._events import _append_all, _EventFactory, _log_commits
from runstate.client._bench._harness import (
    _client,
    _connection,
    _Place,
    _read_after,
    _replica,
    _say,
    _server_version,
    _wait_applied,
)
from runstate.client._bench._params import BenchParams
from runstate.client._bench._report import Figure, Report, Target, _ms
from runstate.engine._log import EventLog


async def _catch_up(
    place: _Place, store_path: Path, last: int, total_events: int
) -> tuple[float, list[float]]:
    """Time a fresh projector from start to ``applied == last``; overall and windowed rates.

    The projector runs in this process with the garbage-collector thresholds
    that `runstate server`/`runstate projector` set for themselves.
    """
    import gc

    from runstate.projections._projector import Projector
    from runstate.projections._runner import tune_gc_for_projection
    from runstate.projections._store import ReadStore

    thresholds = gc.get_threshold()
    tune_gc_for_projection()
    store = ReadStore(store_path)
    try:
        async with _connection(place) as nc, anyio.create_task_group() as tg:
            projector = Projector(nc, place.settings(), store)
            started = time.perf_counter()
            tg.start_soon(projector.run)
            window = max(1, total_events // 20)
            marks: list[tuple[float, int]] = [(started, 0)]
            with anyio.fail_after(3600):
                while projector.applied < last:
                    await anyio.sleep(0.02)
                    if projector.events_applied - marks[-1][1] >= window:
                        marks.append((time.perf_counter(), projector.events_applied))
            finished = time.perf_counter()
            applied_events = projector.events_applied
            tg.cancel_scope.cancel()
    finally:
        gc.set_threshold(*thresholds)
        store.close()
    marks.append((finished, applied_events))
    windows = [
        (b[1] - a[1]) / (b[0] - a[0])
        for a, b in itertools.pairwise(marks)
        if b[0] > a[0] and b[1] > a[1]
    ]
    return applied_events / (finished - started), windows


async def _lag(place: _Place, p: BenchParams, report: Report) -> None:
    async with _replica(place, p.projector, name="lag"), _client(place) as client:
        log = client.log
        factory = _EventFactory(client.settings.user)
        source = _log_commits(factory, p.tasks, 1, first_run=1)
        first = next(source)
        receipt = await log.append(first)
        await _wait_applied(client, receipt.sequence)
        # This process is the load generator and the probe: keep its own garbage
        # collections (of the log it has written) out of the measured latency.
        import gc

        gc.collect()
        gc.freeze()
        samples: list[tuple[float, float]] = []
        sent = 0
        done = False
        started = time.perf_counter()

        async def load() -> None:
            nonlocal sent, done
            last_flush = started
            async with log.pipeline(4096) as pipe:
                while (now := time.perf_counter()) - started < p.lag_seconds:
                    due = int((now - started) * p.lag_rate)
                    while sent < due:
                        commit = next(source)
                        await pipe.append(commit)
                        sent += len(commit)
                    if now - last_flush >= 0.5:
                        await pipe.flush()
                        last_flush = now
                    await anyio.sleep(0.002)
            done = True

        async def probe() -> None:
            nonlocal sent
            while not done:
                await anyio.sleep(0.02)
                commit = next(source)
                sent += len(commit)
                t0 = time.perf_counter()
                receipt = await log.append(commit)
                pathspec = "/".join(commit[0].pathspec.split("/")[:2])
                await _read_after(client, pathspec, receipt.sequence)
                samples.append((t0 - started, time.perf_counter() - t0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            tg.start_soon(probe)
        elapsed = time.perf_counter() - started
    warm = min(1.0, p.lag_seconds / 5)
    lags = [lag for at, lag in samples if at >= warm]
    report.add(
        Figure(
            "lag_ms",
            f"append -> read(after=receipt) returns, at {p.lag_rate:,} events/s",
            "ms",
            _ms(lags),
            target=Target("p99", "<", 20.0),
            show_p99=True,
        )
    )
    report.add(
        Figure(
            "lag_rate_events_per_s",
            "rate actually appended during the lag test",
            "events/s",
            [sent / elapsed],
            True,
        )
    )
    report.notes.append(
        f"lag: {len(lags)} probes (one every 20 ms, the first {warm:g}s dropped as warm-up) "
        f"over {p.lag_seconds:g}s of 1-event commits at {p.lag_rate:,} events/s; "
        f"projector: {p.projector}"
    )


async def bench_projection(place: _Place, p: BenchParams, report: Report) -> None:
    """Catch-up rate of a fresh projector on a big log, then lag under steady load."""
    async with _connection(place) as nc:
        report.server_version = _server_version(nc)
        log = EventLog(nc, place.settings())
        factory = _EventFactory(place.settings().user)
        _say(f"projection: writing a log of {p.events:,} events")
        started = time.perf_counter()
        events, commits, last = await _append_all(
            log, _log_commits(factory, p.tasks, max(1, p.events_per_commit)), limit_events=p.events
        )
        written = time.perf_counter() - started
    report.notes.append(
        f"catch-up log: {events:,} events in {commits:,} commits (workload runs with artifacts "
        f"and metadata; at most {p.events_per_commit} per commit), written in {written:.1f}s "
        f"({events / written:,.0f} events/s); the projector runs in this process"
    )
    rates: list[float] = []
    windows: list[float] = []
    for rep in range(p.catchup_repeat):
        rate, window_rates = await _catch_up(
            place, place.tmp / f"catchup-{rep}.sqlite3", last, events
        )
        rates.append(rate)
        windows.extend(window_rates)
        _say(f"projection: catch-up {rep + 1}/{p.catchup_repeat}: {rate:,.0f} events/s")
        with contextlib.suppress(OSError):
            for suffix in ("", "-wal", "-shm"):
                (place.tmp / f"catchup-{rep}.sqlite3{suffix}").unlink(missing_ok=True)
    report.add(
        Figure(
            "catchup_events_per_s",
            f"catch-up of a fresh projector, {events:,} events",
            "events/s",
            rates,
            True,
            Target("median", ">=", 30_000),
        )
    )
    report.add(
        Figure(
            "catchup_window_events_per_s",
            "catch-up rate per 1/20 of the log",
            "events/s",
            windows,
            True,
        )
    )
    if p.lag_seconds > 0:
        _say(f"projection: lag at {p.lag_rate:,} events/s for {p.lag_seconds:g}s")
        await _lag(place, p, report)
