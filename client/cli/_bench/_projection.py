"""The ``projection`` benchmark: a fresh projector's catch-up, and lag under load."""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from runstate.client.cli._bench._events import _append_all, _log_commits
from runstate.client.cli._bench._harness import (
    _child,
    _client,
    _connection,
    _Place,
    _read_after,
    _replica,
    _say,
    _server_version,
    _wait_applied,
    child_connection,
    child_credentials,
)
from runstate.client.cli._bench._params import BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms
from runstate.client.cli._bench._turns import take_turn
from runstate.engine._connection import open_nats
from runstate.engine._event_factory import EventFactory
from runstate.engine._jetstream import JetStreamEventLog
from runstate.engine._logging import configure_logging
from runstate.engine._settings import Settings
from runstate.engine._typing import EventLog
from runstate.projections._feeder import feeder_command
from runstate.projections._gc import keep_heap_frozen, tune_gc_for_projection
from runstate.projections._projector import Projector
from runstate.projections._store import SQLiteReadStore


async def _catch_up(
    place: _Place, store_path: Path, last: int, total_events: int
) -> tuple[float, list[float]]:
    """Time a fresh projector from start to ``applied == last``; overall and windowed rates.

    The projector runs in this process with the garbage-collector policy
    and the feeder process that `runstate server`/`runstate projector` use.
    """
    thresholds = gc.get_threshold()
    tune_gc_for_projection()
    store = SQLiteReadStore(store_path)
    try:
        async with _connection(place, "projector") as nc, anyio.create_task_group() as tg:
            projector = Projector(
                JetStreamEventLog(nc, place.settings("projector")), store, feeder=feeder_command()
            )
            started = time.perf_counter()
            tg.start_soon(keep_heap_frozen)
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
        gc.unfreeze()
        store.close()
    marks.append((finished, applied_events))
    windows = [
        (b[1] - a[1]) / (b[0] - a[0])
        for a, b in itertools.pairwise(marks)
        if b[0] > a[0] and b[1] > a[1]
    ]
    return applied_events / (finished - started), windows


#: the probe's runs are numbered from here, and the load's from ``_LOAD_FIRST_RUN``: apart
#: from each other and from the catch-up log's runs (numbered from 1), so that every
#: event of the lag test is a new run's (a load that wrote the log's runs again would be
#: an unending flood of transitions the reducers reject, not the workload)
_PROBE_FIRST_RUN = 1_000_000
_LOAD_FIRST_RUN = 2_000_000


def _load_commits(user: str, rate: int, seconds: float, tasks: int) -> list[list[Any]]:
    """The load's commits, built before the clock starts (workers are other machines'
    processes: building their events is not the system's work)."""
    factory = EventFactory(user)
    count = int(rate * seconds * 1.2) + 1000
    return list(itertools.islice(_log_commits(factory, tasks, 1, first_run=_LOAD_FIRST_RUN), count))


async def _run_load(log: EventLog, commits: list[list[Any]], rate: int, seconds: float) -> int:
    """Append ``rate`` events/s for ``seconds``, pipelined; the number of events appended."""
    source = iter(commits)
    sent = 0
    started = last_flush = time.perf_counter()
    async with log.pipeline(4096) as pipe:
        while (now := time.perf_counter()) - started < seconds:
            due = int((now - started) * rate)
            while sent < due:
                commit = next(source)
                await pipe.append(commit)
                sent += len(commit)
            if now - last_flush >= 0.5:
                await pipe.flush()
                last_flush = now
            await anyio.sleep(0.002)
    return sent


async def _serve_load(
    url: str, prefix: str, rate: int, seconds: float, tasks: int, credentials: str | None
) -> None:
    settings = Settings(nats_url=url, prefix=prefix, **child_connection(credentials))
    # Writers are other machines' processes: on this machine the load yields the CPU to
    # the system under test (nats-server, the replica, the probe) when both want it.
    os.nice(10)
    commits = _load_commits(settings.user, rate, seconds, tasks)
    # A steady load: collections walking the prebuilt commits would pause it and
    # make it send in bursts
    gc.collect()
    gc.freeze()
    nc = await open_nats(settings)
    try:
        log = JetStreamEventLog(nc, settings)
        print("ready", flush=True)
        if not (await anyio.to_thread.run_sync(sys.stdin.buffer.readline)).strip():
            return  # stdin closed: the benchmark stopped before the load began
        started = time.perf_counter()
        sent = await _run_load(log, commits, rate, seconds)
        print(f"sent {sent} {time.perf_counter() - started}", flush=True)
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()


def _load_main(argv: Sequence[str]) -> None:
    """``python -m runstate.client.cli._bench _load URL PREFIX RATE SECONDS TASKS [CREDS]``.

    Prints ``ready`` once connected with its commits built, starts on a line on
    stdin, and prints ``sent <events> <seconds>`` when done.
    """
    configure_logging("warning", force=True)
    url, prefix, rate, seconds, tasks, *credentials = argv
    anyio.run(
        _serve_load,
        url,
        prefix,
        int(rate),
        float(seconds),
        int(tasks),
        credentials[0] if credentials else None,
    )


def _credentials_of(place: _Place, role: str) -> list[str]:
    """The credentials argument of a child process playing ``role``: none without roles."""
    credentials = child_credentials(place, role)
    return [credentials] if credentials is not None else []


async def _lag(place: _Place, p: BenchParams, report: Report) -> None:
    async with (
        _replica(place, p.projector, name="lag"),
        _client(place) as client,
        _child(
            place,
            "_load",
            [
                place.url,
                place.prefix,
                str(p.lag_rate),
                str(p.lag_seconds),
                str(p.tasks),
                *_credentials_of(place, "writer"),
            ],
            "load",
            ready_within=120,
            stop_within=p.lag_seconds + 30,
        ) as (load, load_out),
    ):
        log = client.log
        probe_source = _log_commits(
            EventFactory(client.settings.user), p.tasks, 1, first_run=_PROBE_FIRST_RUN
        )
        first = next(probe_source)
        receipt = await log.append(first)
        await _wait_applied(client, receipt.sequence)
        # Keep this process's own garbage collections out of the measured latency.
        gc.collect()
        gc.freeze()
        samples: list[tuple[float, float]] = []
        assert load.stdin is not None
        await load.stdin.send(b"go\n")
        started = time.perf_counter()
        while time.perf_counter() - started < p.lag_seconds:
            await anyio.sleep(0.02)
            commit = next(probe_source)
            t0 = time.perf_counter()
            receipt = await log.append(commit)
            pathspec = "/".join(commit[0].pathspec.split("/")[:2])
            await _read_after(client, pathspec, receipt.sequence)
            samples.append((t0 - started, time.perf_counter() - t0))
        with anyio.fail_after(p.lag_seconds + 30):
            done = (await load_out.receive_until(b"\n", 200)).split()
        sent, elapsed = int(done[1]), float(done[2])
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
            "rate the load process actually appended during the lag test",
            "events/s",
            [sent / elapsed],
            True,
        )
    )
    report.notes.append(
        f"lag: {len(lags)} probes (one every 20 ms, the first {warm:g}s dropped as warm-up) "
        f"over {p.lag_seconds:g}s of 1-event commits at {p.lag_rate:,} events/s appended by "
        f"a separate load process (its events built before the clock starts); "
        f"projector: {p.projector}"
    )


async def bench_projection(place: _Place, p: BenchParams, report: Report) -> None:
    """Catch-up rate of a fresh projector on a big log, then lag under steady load."""
    async with _connection(place) as nc:
        report.server_version = _server_version(nc)
        log = JetStreamEventLog(nc, place.settings())
        factory = EventFactory(place.settings().user)
        _say(f"projection: writing a log of {p.events:,} events")
        started = time.perf_counter()
        events, commits, last = await _append_all(
            log, _log_commits(factory, p.tasks, max(1, p.events_per_commit)), limit_events=p.events
        )
        written = time.perf_counter() - started
    report.notes.append(
        f"catch-up log: {events:,} events in {commits:,} commits (workload runs with artifacts "
        f"and metadata; at most {p.events_per_commit} per commit), written in {written:.1f}s "
        f"({events / written:,.0f} events/s); the projector runs in this process, its "
        f"feeder in another, as in a replica process"
    )
    rates: list[float] = []
    windows: list[float] = []
    for rep in range(p.catchup_repeat):
        await take_turn()
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
        await take_turn()
        await _lag(place, p, report)
