"""``runstate bench``: the standard workload (``WORKLOAD.md``) measured end to end.

Each benchmark starts its own nats-server (JetStream, in a temporary
directory) unless ``--nats URL`` is given, in which case it works under a
fresh subject prefix and deletes its streams afterwards. Every figure is
reported as median, p95 (p99 where asked), min and max over its samples,
beside its target; the report also names the machine and every parameter.

Benchmarks:

- ``append``: raw nats-py ``publish_async`` against runstate's pipelined,
  batched and atomic appends.
- ``workload``: the write phase of the standard workload through the worker
  API, W concurrent writers, a projector replica running beside them.
- ``reads``: the standard reads through the async client, at R runs and at
  a scale of 100,000 runs.
- ``facade``: the blocking ``runstate.client.compat`` facade against the
  async client.
- ``live``: append-to-watcher latency (1 watcher, 100 watchers, optionally
  1,000 watched runs) and raw JetStream ordered-consumer latency.
- ``projection``: catch-up rate of a fresh projector on a log of 1,000,000
  events, and append-to-queryable lag at a steady 5,000 events/s.

For a rate ("higher is better") the p95 column is the rate that 95% of the
samples reach (the 5th percentile): the slow tail, like a latency's p95.

``python -m runstate.client._bench ...`` runs the same command standalone.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import itertools
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import click
import nats.errors
import nats.js.errors
from anyio.streams.buffered import BufferedByteReceiveStream
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from runstate.engine._connection import open_nats, provision
from runstate.engine._events import (
    ArtifactRecord,
    ArtifactsRecorded,
    ArtifactsRecordedPayload,
    Event,
    ForeachFrame,
    MetadataEntry,
    MetadataRecorded,
    MetadataRecordedPayload,
    RunCreated,
    RunCreatedPayload,
    RunStateChanged,
    RunStateChangedPayload,
    TaskAttemptStateChanged,
    TaskAttemptStatePayload,
    TaskCreated,
    TaskCreatedPayload,
    encode_commit,
)
from runstate.engine._log import Commit, EventLog, Receipt, new_commit_id
from runstate.engine._names import Subjects
from runstate.engine._settings import Settings
from runstate.engine._states import RunState, TaskState
from runstate.engine._worker import RunHandle, TaskHandle, Writer
from runstate.engine.errors import Timeout

__all__ = ["BENCHMARKS", "BenchParams", "Figure", "Report", "bench", "run_benchmarks"]

BENCHMARKS = ("append", "workload", "reads", "facade", "live", "projection")
FLOW = "Train"
ProjectorMode = Literal["process", "inprocess"]

NOTE_METRICS = (
    "metric points (3 `loss` points per successful train task) are not implemented in "
    "runstate yet: the write phase skips them"
)
NOTE_METRIC_READS = "read (e), one task's metric history, is not implemented in runstate yet"


# -- parameters ------------------------------------------------------------------------


@dataclass
class BenchParams:
    """Every parameter of every benchmark, with the standard workload's defaults."""

    nats: str | None = None
    repeat: int = 20
    projector: ProjectorMode = "process"
    # append
    messages: int = 20_000
    batch_events: int = 10
    atomic_batch: int = 500
    in_flight: int = 2048
    # workload (and the write phase of reads)
    runs: int = 20
    tasks: int = 50
    writers: tuple[int, ...] = (1, 8, 64)
    # reads, facade
    calls: int = 200
    scale_runs: int = 100_000
    scale_task_runs: int = 5
    # live
    changes: int = 200
    watchers: int = 100
    watch_runs: int = 0
    # projection
    events: int = 1_000_000
    events_per_commit: int = 1
    catchup_repeat: int = 3
    lag_rate: int = 5000
    lag_seconds: float = 10.0

    def for_report(self, *names: str) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in names}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


# -- statistics ------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Target:
    """A figure's goal: ``stat op value``, e.g. median >= 10,000."""

    stat: Literal["median", "p95", "p99"]
    op: Literal["<", ">="]
    value: float

    def met(self, figure: Figure) -> bool:
        actual = getattr(figure, self.stat)
        return bool(actual < self.value if self.op == "<" else actual >= self.value)

    def __str__(self) -> str:
        stat = "p50" if self.stat == "median" else self.stat
        return f"{stat} {self.op} {_number(self.value)}"


@dataclass
class Figure:
    """One measured quantity: its samples and how to read them."""

    key: str
    label: str
    unit: str
    samples: list[float]
    higher_is_better: bool = False
    #: one goal, or several that must all be met (``(p50 < 1, p95 < 3)``)
    target: Target | tuple[Target, ...] | None = None
    #: print p99 beside p95 (lag figures)
    show_p99: bool = False

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return quantile(self.samples, 0.5)

    @property
    def p95(self) -> float:
        """The 95th percentile of the bad tail: high for latencies, low (5th) for rates."""
        return quantile(self.samples, 0.05 if self.higher_is_better else 0.95)

    @property
    def p99(self) -> float:
        return quantile(self.samples, 0.01 if self.higher_is_better else 0.99)

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan

    @property
    def met(self) -> bool | None:
        targets = self.targets
        return all(t.met(self) for t in targets) if targets else None

    @property
    def targets(self) -> tuple[Target, ...]:
        if self.target is None:
            return ()
        return self.target if isinstance(self.target, tuple) else (self.target,)

    @property
    def target_text(self) -> str:
        return ", ".join(str(t) for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "label": self.label,
            "unit": self.unit,
            "n": self.n,
            "median": clean(self.median),
            "p95": clean(self.p95),
            "p99": clean(self.p99),
            "min": clean(self.min),
            "max": clean(self.max),
            "higher_is_better": self.higher_is_better,
            "target": self.target_text or None,
            "met": self.met,
        }


@dataclass
class Report:
    """The figures of one benchmark, its parameters, notes and conditions."""

    benchmark: str
    parameters: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_version: str = "?"
    started_at: str = ""
    duration_s: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def figure(self, key: str) -> Figure:
        for figure in self.figures:
            if figure.key == key:
                return figure
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "figures": {f.key: f.to_dict() for f in self.figures},
            "notes": self.notes,
            "nats_server": self.server_version,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 1),
            "load_before": list(self.load_before),
            "load_after": list(self.load_after),
        }


def _ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000.0 for s in seconds]


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# -- the machine -----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and library versions of this machine."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "nats_py": _version("nats-py"),
        "runstate": _version("runstate"),
    }


def _load() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def _server_version(nc: NATS) -> str:
    return str(nc.connected_server_version).removeprefix("<nats server v").rstrip(">")


def _say(message: str) -> None:
    """Progress, on stderr so that ``--json`` output stays clean."""
    click.echo(f"  {message}", err=True)


# -- the server and the replica --------------------------------------------------------


@dataclass
class _Place:
    """Where a benchmark runs: a NATS URL, a subject prefix, a scratch directory."""

    url: str
    prefix: str
    tmp: Path
    owned: bool

    def settings(self) -> Settings:
        return Settings(nats_url=self.url, prefix=self.prefix, data_dir=self.tmp / "data")


@contextlib.contextmanager
def _place(url: str | None) -> Iterator[_Place]:
    """A fresh nats-server in a temporary directory, or a fresh prefix on ``url``."""
    from runstate.engine._server import NatsServer

    with tempfile.TemporaryDirectory(prefix="runstate-bench-") as scratch:
        tmp = Path(scratch)
        if url is not None:
            place = _Place(url, f"bench{new_commit_id()[:8]}", tmp, owned=False)
            try:
                yield place
            finally:
                anyio.run(_delete_streams, place)
            return
        server = NatsServer(tmp / "nats")
        server.start()
        try:
            yield _Place(server.url, "rs", tmp, owned=True)
        finally:
            server.stop()


async def _delete_streams(place: _Place) -> None:
    settings = place.settings()
    subjects = Subjects(settings.prefix)
    nc = await open_nats(settings)
    try:
        js = nc.jetstream()
        for name in (
            subjects.events_stream,
            subjects.heartbeats_stream,
            subjects.counters_stream,
            subjects.deadletter_stream,
            f"KV_{subjects.idempotency_bucket}",
            f"OBJ_{subjects.blobs_bucket}",
        ):
            with contextlib.suppress(nats.js.errors.Error, nats.errors.Error):
                await js.delete_stream(name)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def _connection(place: _Place) -> AsyncIterator[NATS]:
    settings = place.settings()
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        yield nc
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()


@contextlib.asynccontextmanager
async def _replica(place: _Place, mode: ProjectorMode, name: str = "views") -> AsyncIterator[None]:
    """A projector replica (projector + query service, no reaper) beside the benchmark.

    ``process``: its own OS process, as deployed (``runstate projector``);
    ``inprocess``: a task on this event loop, with its own NATS connection.
    """
    store = place.tmp / f"{name}.sqlite3"
    if mode == "inprocess":
        from runstate.projections._runner import serve_replica

        async with _connection(place) as nc, anyio.create_task_group() as tg:
            await tg.start(
                functools.partial(serve_replica, nc, place.settings(), store, reaper=False)
            )
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        return
    log_path = place.tmp / f"{name}.stderr"
    with log_path.open("wb") as errors:
        process = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "runstate.client._bench",
                "_replica",
                place.url,
                place.prefix,
                str(store),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    try:
        assert process.stdout is not None and process.stdin is not None
        try:
            with anyio.fail_after(60):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100)
        except (anyio.EndOfStream, anyio.IncompleteRead, TimeoutError):
            line = b""
        if line.strip() != b"ready":
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the projector replica did not start:\n{tail}")
        yield
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()  # the replica exits when its stdin closes
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


async def _serve_replica(url: str, prefix: str, store: str) -> None:
    from runstate.projections._runner import serve_replica

    settings = Settings(nats_url=url, prefix=prefix, data_dir=Path(store).parent)
    nc = await open_nats(settings)
    try:
        await provision(nc, settings)
        async with anyio.create_task_group() as tg:
            await tg.start(functools.partial(serve_replica, nc, settings, store, reaper=False))
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.buffer.read)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()


def _replica_main(argv: Sequence[str]) -> None:
    """``python -m runstate.client._bench _replica URL PREFIX STORE``: serve until stdin closes."""
    from runstate.engine._logging import configure_logging
    from runstate.projections._runner import tune_gc_for_projection

    configure_logging("warning", force=True)
    tune_gc_for_projection()  # as `runstate server` and `runstate projector` do
    url, prefix, store = argv
    anyio.run(_serve_replica, url, prefix, store)


@contextlib.asynccontextmanager
async def _client(place: _Place) -> AsyncIterator[Any]:
    from runstate.client._client import connect

    async with connect(place.url, settings=place.settings(), projector=False) as client:
        yield client


async def _wait_applied(client: Any, sequence: int) -> None:
    """Wait (up to 10 minutes) until the replica answering ``client`` has applied ``sequence``."""
    with anyio.fail_after(600):
        while True:
            status = await client.status()
            if int(status["applied"]) >= sequence:
                return
            await anyio.sleep(0.05)


async def _read_after(client: Any, pathspec: str, sequence: int) -> None:
    """A read that returns once ``sequence`` is queryable (retried past the 5 s bound)."""
    while True:
        try:
            await client.run(pathspec, after=sequence)
            return
        except Timeout:
            continue


# -- events ----------------------------------------------------------------------------


class _EventFactory:
    """Builds the events a worker of the standard workload writes, without the worker."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.system_tags = [f"user:{user}"]

    def run_created(self, run_id: str, *, production: bool) -> RunCreated:
        return RunCreated(
            pathspec=f"{FLOW}/{run_id}",
            actor=self.user,
            payload=RunCreatedPayload(
                flow=FLOW,
                run_id=run_id,
                parameters={"lr": 0.01, "epochs": 3},
                tags=["production"] if production else [],
                system_tags=self.system_tags,
                user=self.user,
            ),
        )

    def run_state(
        self, run_id: str, state: RunState, message: str | None = None
    ) -> RunStateChanged:
        return RunStateChanged(
            pathspec=f"{FLOW}/{run_id}",
            actor=self.user,
            payload=RunStateChangedPayload(state=state, message=message),
        )

    def task_created(
        self,
        run_id: str,
        step: str,
        task_id: str,
        index: int | None,
        num_splits: int | None,
        parents: Sequence[str],
    ) -> TaskCreated:
        stack = (
            [ForeachFrame(step=step, index=index, num_splits=num_splits)]
            if index is not None
            else []
        )
        return TaskCreated(
            pathspec=f"{FLOW}/{run_id}/{step}/{task_id}",
            attempt=0,
            actor=self.user,
            payload=TaskCreatedPayload(
                step=step,
                task_id=task_id,
                foreach_index=index,
                foreach_stack=stack,
                parent_tasks=list(parents),
            ),
        )

    def task_state(
        self,
        pathspec: str,
        attempt: int,
        state: TaskState,
        message: str | None = None,
        label: str | None = None,
    ) -> TaskAttemptStateChanged:
        return TaskAttemptStateChanged(
            pathspec=pathspec,
            attempt=attempt,
            actor=self.user,
            payload=TaskAttemptStatePayload(state=state, message=message, label=label),
        )

    def artifacts(self, pathspec: str, attempt: int, accuracy: float) -> ArtifactsRecorded:
        return ArtifactsRecorded(
            pathspec=pathspec,
            attempt=attempt,
            actor=self.user,
            payload=ArtifactsRecordedPayload(
                artifacts=[
                    ArtifactRecord(
                        name="accuracy", sha256="0" * 64, size=6, codec="json", inline=accuracy
                    )
                ]
            ),
        )

    def metadata(self, pathspec: str, attempt: int) -> MetadataRecorded:
        return MetadataRecorded(
            pathspec=pathspec,
            attempt=attempt,
            actor=self.user,
            payload=MetadataRecordedPayload(
                entries=[
                    MetadataEntry(name="runtime", value="local"),
                    MetadataEntry(name="python_version", value="3.11"),
                ]
            ),
        )

    def task_lifecycle(
        self,
        run_id: str,
        step: str,
        task_id: str,
        *,
        index: int | None = None,
        num_splits: int | None = None,
        parents: Sequence[str] = (),
        fail_first: bool = False,
        fail_only: bool = False,
        data: bool = True,
    ) -> Iterator[Event]:
        """A task's events, one per commit as a worker appends them."""
        pathspec = f"{FLOW}/{run_id}/{step}/{task_id}"
        yield self.task_created(run_id, step, task_id, index, num_splits, parents)
        yield self.task_state(pathspec, 0, TaskState.RUNNING)
        attempt = 0
        if fail_first or fail_only:
            yield self.task_state(pathspec, 0, TaskState.FAILED, message="RuntimeError: injected")
            if fail_only:
                return
            attempt = 1
            yield self.task_state(pathspec, 1, TaskState.PENDING, label="AwaitingRetry")
            yield self.task_state(pathspec, 1, TaskState.RUNNING)
        if data:
            yield self.artifacts(pathspec, attempt, 0.5 + (index or 0) / 1000)
            if index is None or index % 5 == 0:
                yield self.metadata(pathspec, attempt)
        yield self.task_state(pathspec, attempt, TaskState.COMPLETED)

    def workload_run(
        self, number: int, run_id: str, tasks: int, *, data: bool = True
    ) -> Iterator[Event]:
        """Every event of run ``number`` of the standard workload, in a valid order.

        177 state transitions at T=50; with ``data`` also the artifacts and
        metadata a real task records (about 240 events in all).
        """
        yield self.run_created(run_id, production=number % 2 == 0)
        yield self.run_state(run_id, RunState.RUNNING)
        start = f"{FLOW}/{run_id}/start/1"
        yield from self.task_lifecycle(run_id, "start", "1", data=data)
        train = []
        for k in range(1, tasks + 1):
            task_id = str(k + 1)
            train.append(f"{FLOW}/{run_id}/train/{task_id}")
            yield from self.task_lifecycle(
                run_id,
                "train",
                task_id,
                index=k - 1,
                num_splits=tasks,
                parents=[start],
                fail_first=k % 10 == 0,
                data=data,
            )
        join_id, end_id = str(tasks + 2), str(tasks + 3)
        yield from self.task_lifecycle(run_id, "join", join_id, parents=train, data=data)
        failing = number == 7
        yield from self.task_lifecycle(
            run_id,
            "end",
            end_id,
            parents=[f"{FLOW}/{run_id}/join/{join_id}"],
            fail_only=failing,
            data=data,
        )
        if failing:
            yield self.run_state(run_id, RunState.FAILED, message="end failed")
        else:
            yield self.run_state(run_id, RunState.COMPLETED)


def _commits(events: Iterator[Event], per_commit: int) -> Iterator[list[Event]]:
    """Group consecutive events of one entity into commits of at most ``per_commit``."""
    batch: list[Event] = []
    for event in events:
        if batch and (len(batch) >= per_commit or batch[0].pathspec != event.pathspec):
            yield batch
            batch = []
        batch.append(event)
    if batch:
        yield batch


def _log_commits(
    factory: _EventFactory, tasks: int, per_commit: int, first_run: int = 1
) -> Iterator[list[Event]]:
    """An endless realistic log: workload runs one after another, with data."""
    for number in itertools.count(first_run):
        yield from _commits(factory.workload_run(number, str(number), tasks), per_commit)


async def _append_all(
    log: EventLog, commits: Iterator[list[Event]], *, limit_events: float, in_flight: int = 4096
) -> tuple[int, int, int]:
    """Pipeline commits until ``limit_events`` events are written; (events, commits, last seq)."""
    events = written = last = 0
    async with log.pipeline(in_flight) as pipe:
        for commit in commits:
            if events >= limit_events:
                break
            await pipe.append(commit)
            events += len(commit)
            written += 1
            if written % 10_000 == 0:
                receipts = await pipe.flush()
                last = max(last, receipts[-1].sequence)
        receipts = await pipe.flush()
        if receipts:
            last = max(last, receipts[-1].sequence)
    return events, written, last


# -- the write phase of the standard workload ------------------------------------------


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

    @property
    def rate(self) -> float:
        return self.transitions / self.elapsed if self.elapsed > 0 else math.nan


async def write_workload(writer: Writer, runs: int, tasks: int, writers: int) -> WriteResult:
    """The standard workload's write phase through the worker API, ``writers`` at once.

    Each transition is its own acknowledged append. Work is shared through a
    queue of whole units (a run's opening, one train task, a run's closing),
    so a task's transitions stay in order and a run closes after its train
    tasks. Task ids are given (an orchestrator's numbering); run ids are
    allocated by runstate's counter.
    """
    count = 0
    last = 0
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
        task = await progress.run.create_task(
            "train", str(k + 1), index=k - 1, parents=[progress.start.pathspec]
        )
        seen(task.receipt)
        seen(await task.start())
        if k % 10 == 0:
            seen(await task.fail("RuntimeError: injected failure"))
            seen(await task.retry())
            seen(await task.start())
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
    return WriteResult(count, elapsed, last, pathspecs)


# -- append ----------------------------------------------------------------------------


async def _purge(nc: NATS, stream: str) -> None:
    await nc.jetstream().purge_stream(stream)


async def bench_append(place: _Place, p: BenchParams, report: Report) -> None:
    """Raw nats-py against runstate's pipelined, batched and atomic appends."""
    settings = place.settings()
    n, k = p.messages, max(1, p.batch_events)
    async with _connection(place) as nc:
        report.server_version = _server_version(nc)
        log = EventLog(nc, settings)
        stream = log.subjects.events_stream
        factory = _EventFactory(settings.user)
        entities = [f"{FLOW}/1/train/{i}" for i in range(1000)]
        # Built before timing: raw publishing gets ready bytes, runstate ready event objects.
        singles = [factory.task_state(entities[i % 1000], 0, TaskState.RUNNING) for i in range(n)]
        batches = [
            [factory.task_state(entities[j % 1000], 0, TaskState.RUNNING) for _ in range(k)]
            for j in range(max(1, n // k))
        ]
        atomic_events = singles
        payload = encode_commit([singles[0]])
        subjects = [log.subject_of([e])[0] for e in singles[:1000]]
        raw_js = nc.jetstream(publish_async_max_pending=p.in_flight)

        async def raw(with_ids: bool) -> float:
            headers = [{"Nats-Msg-Id": new_commit_id()} for _ in range(n)] if with_ids else None
            await _purge(nc, stream)
            started = time.perf_counter()
            for i in range(n):
                await raw_js.publish_async(
                    subjects[i % 1000], payload, headers=headers[i] if headers else None
                )
            await raw_js.publish_async_completed()
            return n / (time.perf_counter() - started)

        async def pipelined() -> float:
            await _purge(nc, stream)
            started = time.perf_counter()
            async with log.pipeline(p.in_flight) as pipe:
                for event in singles:
                    await pipe.append(event)
            return n / (time.perf_counter() - started)

        async def batched() -> float:
            await _purge(nc, stream)
            started = time.perf_counter()
            async with log.pipeline(p.in_flight) as pipe:
                for batch in batches:
                    await pipe.append(batch)
            return len(batches) * k / (time.perf_counter() - started)

        async def atomic() -> float:
            await _purge(nc, stream)
            size = max(1, min(p.atomic_batch, 1000))
            started = time.perf_counter()
            for first in range(0, n, size):
                await log.append_atomic([Commit([e]) for e in atomic_events[first : first + size]])
            return n / (time.perf_counter() - started)

        await pipelined()  # warm-up: connections, subject cache, JIT-free but page cache
        rates: dict[str, list[float]] = {
            name: [] for name in ("raw", "raw_ids", "single", "batched", "atomic")
        }
        ratios: list[float] = []
        batch_ratios: list[float] = []
        for rep in range(p.repeat):
            _say(f"append: repetition {rep + 1}/{p.repeat}")
            rates["raw"].append(await raw(False))
            rates["raw_ids"].append(await raw(True))
            rates["single"].append(await pipelined())
            rates["batched"].append(await batched())
            rates["atomic"].append(await atomic())
            ratios.append(rates["single"][-1] / rates["raw"][-1])
            batch_ratios.append(rates["batched"][-1] / rates["raw"][-1])
        await _purge(nc, stream)

    report.add(
        Figure(
            "raw_msgs_per_s",
            "raw nats-py publish_async (+ publish_async_completed)",
            "msgs/s",
            rates["raw"],
            True,
        )
    )
    report.add(
        Figure(
            "raw_with_ids_msgs_per_s",
            "raw publish_async with a Nats-Msg-Id each",
            "msgs/s",
            rates["raw_ids"],
            True,
        )
    )
    report.add(
        Figure(
            "append_events_per_s",
            "runstate pipelined single-event appends",
            "events/s",
            rates["single"],
            True,
        )
    )
    report.add(
        Figure(
            "append_ratio",
            "pipelined appends / raw msgs/s",
            "x",
            ratios,
            True,
            Target("median", ">=", 0.6),
        )
    )
    report.add(
        Figure(
            "batched_events_per_s",
            f"runstate pipelined commits of {k} events",
            "events/s",
            rates["batched"],
            True,
        )
    )
    report.add(
        Figure(
            "batched_ratio",
            "batched events/s / raw msgs/s",
            "x",
            batch_ratios,
            True,
            Target("median", ">=", 3.0),
        )
    )
    report.add(
        Figure(
            "atomic_events_per_s",
            f"append_atomic, {p.atomic_batch} 1-event commits a batch",
            "events/s",
            rates["atomic"],
            True,
        )
    )
    report.notes.append(
        f"each sample is {n} messages/events; commits are {len(payload)} bytes "
        "(one task.state_changed event); events are built before timing, their "
        "encoding (pydantic -> JSON) and commit ids are inside it; raw gets ready bytes. "
        f"Both sides keep at most {p.in_flight} publishes in flight. Ratios are against raw "
        "without headers (runstate adds a Nats-Msg-Id header to every commit)."
    )


# -- workload --------------------------------------------------------------------------


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


async def bench_workload(place: _Place, p: BenchParams, report: Report) -> None:
    """The write phase, per W, with a projector replica running beside the writers."""
    report.notes.append(NOTE_METRICS)
    report.notes.append(
        f"{transitions_per_run(p.tasks)} transitions per run; each is an acknowledged append "
        f"through the worker API; projector: {p.projector}. raw_acked: the same number of "
        "commit-sized messages, W tasks each awaiting one plain nats-py request to JetStream "
        "at a time (a stream of its own that the projector does not read): the ceiling for "
        "acknowledged appends on this machine"
    )
    raw_stream = f"{place.prefix.upper()}_BENCH_RAW"
    raw_subjects = f"{place.prefix}.benchraw"
    async with _replica(place, p.projector), _client(place) as client:
        report.server_version = _server_version(client.nc)
        js = client.nc.jetstream()
        await js.add_stream(
            name=raw_stream, subjects=[f"{raw_subjects}.>"], storage="file", duplicate_window=120
        )
        payload = encode_commit(
            [
                _EventFactory(client.settings.user).task_state(
                    f"{FLOW}/1/train/1", 0, TaskState.RUNNING
                )
            ]
        )
        writer = client.writer
        # warm-up: one small run
        await write_workload(writer, 1, min(p.tasks, 10), 1)
        total = p.runs * transitions_per_run(p.tasks)
        for w in p.writers:
            rates: list[float] = []
            raw: list[float] = []
            drains: list[float] = []
            for rep in range(p.repeat):
                raw.append(await _raw_acked(client.nc, raw_subjects, total, w, payload))
                result = await write_workload(writer, p.runs, p.tasks, w)
                rates.append(result.rate)
                started = time.perf_counter()
                await _read_after(client, result.run_pathspecs[-1], result.last_sequence)
                drains.append(time.perf_counter() - started)
                _say(
                    f"workload W={w}: repetition {rep + 1}/{p.repeat}: "
                    f"{result.rate:,.0f} transitions/s (raw {raw[-1]:,.0f} msgs/s)"
                )
            target = Target("median", ">=", 10_000) if w == 64 else None
            report.add(
                Figure(
                    f"transitions_per_s_w{w}",
                    f"state transitions/s, W={w} writers",
                    "transitions/s",
                    rates,
                    True,
                    target,
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


# -- reads -----------------------------------------------------------------------------


async def _time_calls(
    calls: int, call: Callable[[int], Awaitable[Any]], warmup: int = 20
) -> list[float]:
    for i in range(warmup):
        await call(i)
    samples = []
    for i in range(calls):
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


async def _write_scale(
    client: Any, p: BenchParams, first_id: int
) -> tuple[list[str], list[str], int]:
    """``scale_runs`` finished runs (one 3-event commit each), a few with full task sets."""
    factory = _EventFactory(client.settings.user)
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
    async with _replica(place, p.projector), _client(place) as client:
        report.server_version = _server_version(client.nc)
        _say(f"reads: writing {p.runs} workload runs")
        result = await write_workload(client.writer, p.runs, p.tasks, max(p.writers))
        await _wait_applied(client, result.last_sequence)
        await _read_figures(
            client,
            report,
            p,
            "r",
            f"R={p.runs}",
            result.run_pathspecs,
            result.run_pathspecs,
            (2.0, 2.0, 2.0, 2.0),
        )
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
            client, report, p, "scale", label, sample, task_runs, (1.0, 2.0, 3.0, 3.0)
        )


# -- facade ----------------------------------------------------------------------------


def bench_facade(place: _Place, p: BenchParams, report: Report) -> None:
    """Read (a) through ``runstate.client.compat`` against the async client, same loop."""
    from runstate.client import compat

    async def write() -> WriteResult:
        async with _client(place) as client:
            report.server_version = _server_version(client.nc)
            return await write_workload(client.writer, 2, min(p.tasks, 10), 1)

    result = anyio.run(write)
    pathspec = result.run_pathspecs[0]
    compat.connect(place.url, settings=place.settings(), projector=True)
    try:
        session = compat._session
        client, portal = session.async_client, session.portal
        assert portal is not None
        portal.call(functools.partial(_read_after, client, pathspec, result.last_sequence))

        async def timed_async() -> float:
            started = time.perf_counter()
            await client.run(pathspec)
            return time.perf_counter() - started

        def timed_blocking() -> float:
            started = time.perf_counter()
            compat.Run(pathspec)
            return time.perf_counter() - started

        for _ in range(20):
            portal.call(timed_async)
            timed_blocking()
        inner, outer, added = [], [], []
        for _ in range(p.calls):
            a = portal.call(timed_async)
            b = timed_blocking()
            inner.append(a)
            outer.append(b)
            added.append(b - a)
    finally:
        compat.close()
    report.add(
        Figure(
            "async_get_run_ms", "(a) one run, async client (timed in its loop)", "ms", _ms(inner)
        )
    )
    report.add(Figure("facade_get_run_ms", "(a) one run, compat.Run(pathspec)", "ms", _ms(outer)))
    report.add(
        Figure(
            "facade_added_ms",
            "added by the blocking facade (paired calls)",
            "ms",
            _ms(added),
            target=Target("median", "<", 0.3),
        )
    )
    report.notes.append(
        "the replica and the async client run on the facade's background loop; each pair is "
        "one async call timed inside that loop and one blocking compat.Run() timed outside"
    )


# -- live ------------------------------------------------------------------------------


class _Deliveries:
    """Receive times per watcher per stream sequence, and a wake-up for the writer."""

    def __init__(self, watchers: int) -> None:
        self.seen: list[dict[int, float]] = [{} for _ in range(watchers)]
        self._changed = anyio.Event()

    def record(self, watcher: int, sequence: int) -> None:
        self.seen[watcher].setdefault(sequence, time.perf_counter())
        self._changed.set()

    async def wait(self, sequence: int, watchers: Sequence[int]) -> None:
        with anyio.fail_after(10):
            while not all(sequence in self.seen[w] for w in watchers):
                self._changed = anyio.Event()
                await self._changed.wait()


async def _watch_into(
    client: Any, pathspec: str, deliveries: _Deliveries, index: int, ready: Callable[[], None]
) -> None:
    async with client.watch(pathspec) as changes:
        async for change in changes:
            if change.event is None:
                ready()
                continue
            deliveries.record(index, change.sequence)


async def _watchers(
    tg: Any, client: Any, pathspecs: Sequence[str], deliveries: _Deliveries
) -> None:
    """Start one watcher per pathspec and return once every one has its snapshot."""
    remaining = len(pathspecs)
    all_ready = anyio.Event()

    def ready() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            all_ready.set()

    for index, pathspec in enumerate(pathspecs):
        tg.start_soon(_watch_into, client, pathspec, deliveries, index, ready)
    with anyio.fail_after(120):
        await all_ready.wait()


class _TaskChanges:
    """Task transitions on one run through the worker API: create, start, complete, create, ..."""

    def __init__(self, run: RunHandle, first_task: int) -> None:
        self._run = run
        self._number = first_task
        self._task: TaskHandle | None = None

    async def next(self) -> Receipt:
        task = self._task
        if task is None or task.state is TaskState.COMPLETED:
            task = self._task = await self._run.create_task(
                "train", str(self._number), index=self._number
            )
            self._number += 1
            assert task.receipt is not None
            return task.receipt
        if task.state is TaskState.PENDING:
            return await task.start()
        return await task.complete()


async def _measure_changes(
    changes: _TaskChanges, count: int, deliveries: _Deliveries, watchers: Sequence[int]
) -> list[float]:
    """Make ``count`` changes one at a time; each watcher's delay for each change."""
    samples: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        receipt = await changes.next()
        await deliveries.wait(receipt.sequence, watchers)
        samples.extend(deliveries.seen[w][receipt.sequence] - started for w in watchers)
    return samples


async def _raw_ordered_latency(
    nc: NATS, subjects: Subjects, changes: int, payload: bytes
) -> list[float]:
    """Append with an awaited JetStream publish, receive on an ordered push consumer."""
    js = nc.jetstream()
    subject = subjects.run(FLOW, "raw")
    seen: dict[int, float] = {}
    arrived = anyio.Event()

    async def on_msg(msg: Msg) -> None:
        seen[int(msg.metadata.sequence.stream)] = time.perf_counter()
        arrived.set()

    sub = await js.subscribe(
        subject,
        cb=on_msg,
        stream=subjects.events_stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
    )
    samples = []
    try:
        for i in range(changes + 20):
            started = time.perf_counter()
            ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": new_commit_id()})
            with anyio.fail_after(10):
                while ack.seq not in seen:
                    arrived = anyio.Event()
                    await arrived.wait()
            if i >= 20:
                samples.append(seen[ack.seq] - started)
    finally:
        await sub.unsubscribe()
    return samples


#: nats-server 2.15 allows this many consumers on a stream that sets no limit itself
SERVER_DEFAULT_MAX_CONSUMERS = 1000


async def _make_room_for_consumers(nc: NATS, subjects: Subjects, needed: int) -> str | None:
    """Raise the events stream's consumer limit to ``needed`` if it is lower; say so.

    Every watch is an ordered consumer, and nats-server 2.15 caps a stream
    that sets no ``max_consumers`` at 1,000 consumers (error 10026).
    """
    from runstate.engine._connection import jetstream_api

    name = subjects.events_stream
    info = await jetstream_api(nc, f"$JS.API.STREAM.INFO.{name}")
    config = info["config"]
    limit = int(config.get("max_consumers", -1))
    effective = limit if limit > 0 else SERVER_DEFAULT_MAX_CONSUMERS
    if effective >= needed:
        return None
    config["max_consumers"] = needed * 2
    reply = await jetstream_api(nc, f"$JS.API.STREAM.UPDATE.{name}", config)
    if "error" in reply:
        raise RuntimeError(f"cannot raise max_consumers of {name}: {reply['error']}")
    return (
        f"the events stream allows {effective} consumers (max_consumers={limit}: nats-server "
        f"2.15's default of {SERVER_DEFAULT_MAX_CONSUMERS} per stream applies when a stream sets "
        f"none, and runstate's provision() sets none); every watch is an ordered consumer, so "
        f"{needed - 16} watched runs would fail with 'maximum consumers limit reached' (10026). "
        f"The benchmark raised it to {needed * 2} to measure the latency"
    )


async def bench_live(place: _Place, p: BenchParams, report: Report) -> None:
    """Append-to-watcher latency: 1 watcher, many watchers on one run, many runs watched."""
    async with _replica(place, p.projector), _client(place) as client:
        report.server_version = _server_version(client.nc)
        run = await client.create_run(FLOW)
        await run.start()
        await _wait_applied(client, run.version)

        async with anyio.create_task_group() as tg:
            deliveries = _Deliveries(1)
            await _watchers(tg, client, [run.pathspec], deliveries)
            _say(f"live: {p.changes} changes, 1 watcher")
            changes = _TaskChanges(run, 1)
            await _measure_changes(changes, 30, deliveries, [0])  # warm-up
            one = await _measure_changes(changes, p.changes, deliveries, [0])
            tg.cancel_scope.cancel()
        report.add(
            Figure(
                "watch_ms",
                "append -> 1 watcher sees it",
                "ms",
                _ms(one),
                target=(Target("median", "<", 1.0), Target("p95", "<", 3.0)),
            )
        )

        if p.watchers > 0:
            many_run = await client.create_run(FLOW)
            await many_run.start()
            await _wait_applied(client, many_run.version)
            async with anyio.create_task_group() as tg:
                deliveries = _Deliveries(p.watchers)
                _say(f"live: starting {p.watchers} watchers on one run")
                await _watchers(tg, client, [many_run.pathspec] * p.watchers, deliveries)
                everyone = range(p.watchers)
                changes = _TaskChanges(many_run, 1)
                await _measure_changes(changes, 10, deliveries, everyone)  # warm-up
                _say(f"live: {p.changes} changes, {p.watchers} watchers")
                many = await _measure_changes(changes, p.changes, deliveries, everyone)
                tg.cancel_scope.cancel()
            report.add(
                Figure(
                    "watchers_ms",
                    f"append -> each of {p.watchers} watchers of one run",
                    "ms",
                    _ms(many),
                    target=Target("p95", "<", 10.0),
                )
            )

        if p.watch_runs > 0:
            note = await _make_room_for_consumers(client.nc, client.subjects, p.watch_runs + 16)
            if note:
                report.notes.append(note)
            _say(f"live: creating and watching {p.watch_runs} runs")
            handles = [await client.create_run(FLOW) for _ in range(p.watch_runs)]
            await _wait_applied(client, max(h.version for h in handles))
            async with anyio.create_task_group() as tg:
                deliveries = _Deliveries(len(handles))
                await _watchers(tg, client, [h.pathspec for h in handles], deliveries)
                rng = random.Random(11)
                samples: list[float] = []
                for i in range(p.changes + 20):
                    index = rng.randrange(len(handles))
                    started = time.perf_counter()
                    receipt = await handles[index].add_tag(f"t{i}")
                    await deliveries.wait(receipt.sequence, [index])
                    if i >= 20:
                        samples.append(deliveries.seen[index][receipt.sequence] - started)
                tg.cancel_scope.cancel()
            report.add(
                Figure(
                    "watched_runs_ms",
                    f"append -> its watcher, {p.watch_runs} runs watched",
                    "ms",
                    _ms(samples),
                    target=Target("p95", "<", 10.0),
                )
            )

        _say("live: raw JetStream ordered consumer")
        factory = _EventFactory(client.settings.user)
        payload = encode_commit([factory.run_state("raw", RunState.RUNNING)])
        raw = await _raw_ordered_latency(client.nc, client.subjects, p.changes, payload)
        report.add(
            Figure("raw_ordered_ms", "raw: js.publish -> ordered consumer callback", "ms", _ms(raw))
        )
    report.notes.append(
        "changes are task transitions of the watched run (create, start, complete) through the "
        "worker API; latency runs from just before the append to the watcher's receipt of the "
        "change (same process, time.perf_counter), one change at a time"
    )


# -- projection ------------------------------------------------------------------------


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


# -- running and reporting -------------------------------------------------------------


_PARAMETERS = {
    "append": ("repeat", "messages", "batch_events", "atomic_batch", "in_flight"),
    "workload": ("repeat", "runs", "tasks", "writers", "projector"),
    "reads": ("runs", "tasks", "writers", "calls", "scale_runs", "scale_task_runs", "projector"),
    "facade": ("calls",),
    "live": ("changes", "watchers", "watch_runs", "projector"),
    "projection": (
        "events",
        "events_per_commit",
        "tasks",
        "catchup_repeat",
        "lag_rate",
        "lag_seconds",
        "projector",
    ),
}

_ASYNC: dict[str, Callable[[_Place, BenchParams, Report], Awaitable[None]]] = {
    "append": bench_append,
    "workload": bench_workload,
    "reads": bench_reads,
    "live": bench_live,
    "projection": bench_projection,
}


def run_benchmark(name: str, params: BenchParams) -> Report:
    """Run one benchmark on its own server (or prefix) and return its report."""
    report = Report(name, params.for_report(*_PARAMETERS[name]))
    report.started_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.load_before = _load()
    click.echo(f"{name}: starting (load {report.load_before[0]})", err=True)
    started = time.perf_counter()
    with _place(params.nats) as place:
        if name == "facade":
            bench_facade(place, params, report)
        else:
            anyio.run(_ASYNC[name], place, params, report)
    report.duration_s = time.perf_counter() - started
    report.load_after = _load()
    return report


def run_benchmarks(names: Sequence[str], params: BenchParams) -> dict[str, Any]:
    """Run benchmarks in order; return the whole report as a JSON-ready dict."""
    machine = machine_info()
    reports = [run_benchmark(name, params) for name in names]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "nats_server": reports[0].server_version if reports else "?"},
        "reports": reports,
    }


def _as_json(result: dict[str, Any]) -> str:
    body = {**result, "benchmarks": {r.benchmark: r.to_dict() for r in result["reports"]}}
    del body["reports"]
    return json.dumps(body, indent=2, default=str)


def _machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"{m['cores']} cores, {m['cpu']}; {m['python']}; nats-server {m['nats_server']}; "
        f"nats-py {m['nats_py']}; runstate {m['runstate']}; {m['platform']}; {result['date']}"
    )


def _met(figure: Figure) -> str:
    return "" if figure.met is None else ("yes" if figure.met else "MISSED")


def _rows(report: Report) -> Iterator[list[str]]:
    for f in report.figures:
        p95 = _number(f.p95) + (f" / p99 {_number(f.p99)}" if f.show_p99 else "")
        yield [
            f.key,
            f.label,
            f.unit,
            _number(f.median),
            p95,
            _number(f.min),
            _number(f.max),
            str(f.n),
            f.target_text,
            _met(f),
        ]


_HEADER = ["figure", "what", "unit", "p50", "p95", "min", "max", "n", "target", "met"]


def _print_rich(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    # a pipe or file gets full rows rather than 80 wrapped columns
    console = Console() if sys.stdout.isatty() else Console(width=220)
    console.print(f"[bold]runstate bench[/bold]  {_machine_line(result)}")
    for report in result["reports"]:
        table = Table(
            title=f"{report.benchmark}  (load {report.load_before[0]} -> {report.load_after[0]}, "
            f"{report.duration_s:.0f}s)",
            title_justify="left",
        )
        for column in _HEADER:
            table.add_column(
                column, justify="right" if column in ("p50", "p95", "min", "max", "n") else "left"
            )
        for row in _rows(report):
            style = "red" if row[-1] == "MISSED" else None
            table.add_row(*row, style=style)
        console.print(table)
        params = ", ".join(f"{k}={v}" for k, v in report.parameters.items())
        console.print(f"  parameters: {params}")
        for note in report.notes:
            console.print(f"  note: {note}")


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables, ready to paste into docs/benchmarks.md."""
    lines = [f"Machine: {_machine_line(result)}", ""]
    for report in result["reports"]:
        params = ", ".join(f"{k}={v}" for k, v in report.parameters.items())
        lines += [
            f"### {report.benchmark}",
            "",
            f"Parameters: {params}. Load average (1 min) {report.load_before[0]} before, "
            f"{report.load_after[0]} after; {report.duration_s:.0f}s.",
            "",
            "| " + " | ".join(_HEADER) + " |",
            "|" + "|".join("---" for _ in _HEADER) + "|",
        ]
        lines += ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in _rows(report)]
        lines += [""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------


def _writers(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        result = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("give writer counts separated by commas, e.g. 1,8,64") from None
    if not result or min(result) < 1:
        raise click.BadParameter("writer counts must be at least 1")
    return result


_QUICK = {
    "repeat": 5,
    "messages": 5000,
    "scale_runs": 10_000,
    "calls": 200,
    "events": 100_000,
    "catchup_repeat": 1,
    "lag_seconds": 5.0,
}


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("benchmarks", nargs=-1, type=click.Choice([*BENCHMARKS, "all"]))
@click.option(
    "--nats",
    "nats_url",
    metavar="URL",
    help="Use this NATS server (a fresh prefix) instead of starting one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--markdown", "as_markdown", is_flag=True, help="Print the report as Markdown tables."
)
@click.option(
    "--quick",
    is_flag=True,
    help="Smaller defaults: 5 repetitions, 10,000-run scale, 100,000-event log.",
)
@click.option(
    "--repeat", type=click.IntRange(1), help="Repetitions of each throughput figure [20]."
)
@click.option(
    "--projector",
    type=click.Choice(["process", "inprocess"]),
    help="Where the replica runs [process].",
)
@click.option("--messages", type=click.IntRange(1), help="append: messages per sample [20000].")
@click.option(
    "--batch-events", type=click.IntRange(1), help="append: events per batched commit [10]."
)
@click.option(
    "--atomic-batch", type=click.IntRange(1, 1000), help="append: commits per atomic batch [500]."
)
@click.option(
    "--in-flight", type=click.IntRange(1), help="append: publishes in flight, both sides [2048]."
)
@click.option("--runs", "-R", type=click.IntRange(1), help="workload/reads: runs R [20].")
@click.option("--tasks", "-T", type=click.IntRange(1), help="train foreach tasks T [50].")
@click.option(
    "--writers", "-W", callback=_writers, help="workload: writer counts, e.g. 1,8,64 [1,8,64]."
)
@click.option("--calls", type=click.IntRange(1), help="reads/facade: calls per figure [200].")
@click.option(
    "--scale-runs",
    type=click.IntRange(0),
    help="reads: runs of the scale phase, 0 to skip [100000].",
)
@click.option(
    "--scale-task-runs",
    type=click.IntRange(1),
    help="reads: runs of the scale phase with the full task set [5].",
)
@click.option("--changes", type=click.IntRange(1), help="live: changes per figure [200].")
@click.option("--watchers", type=click.IntRange(0), help="live: watchers on one run [100].")
@click.option(
    "--watch-runs",
    type=click.IntRange(0),
    help="live: runs watched at once, 0 to skip [0; WORKLOAD: 1000].",
)
@click.option(
    "--events", type=click.IntRange(1), help="projection: events in the catch-up log [1000000]."
)
@click.option(
    "--events-per-commit",
    type=click.IntRange(1),
    help="projection: events per commit of that log [1].",
)
@click.option("--catchup-repeat", type=click.IntRange(1), help="projection: catch-ups timed [3].")
@click.option(
    "--lag-rate", type=click.IntRange(1), help="projection: steady append rate, events/s [5000]."
)
@click.option(
    "--lag-seconds",
    type=click.FloatRange(0),
    help="projection: seconds of steady load, 0 to skip [10].",
)
def bench(
    benchmarks: tuple[str, ...],
    nats_url: str | None,
    as_json: bool,
    as_markdown: bool,
    quick: bool,
    **options: Any,
) -> None:
    """Measure runstate on the standard workload (see docs/benchmarks.md).

    BENCHMARKS: append, workload, reads, facade, live, projection, or all (the default).
    """
    from runstate.engine._logging import configure_logging

    configure_logging("warning", force=True)
    params = BenchParams(nats=nats_url)
    if quick:
        for key, value in _QUICK.items():
            setattr(params, key, value)
    for key, value in options.items():
        if value is not None:
            setattr(params, key, value)
    names = (
        list(BENCHMARKS)
        if not benchmarks or "all" in benchmarks
        else list(dict.fromkeys(benchmarks))
    )
    result = run_benchmarks(names, params)
    if as_json:
        click.echo(_as_json(result))
    elif as_markdown:
        click.echo(markdown(result))
    else:
        _print_rich(result)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_replica":
        _replica_main(sys.argv[2:])
    else:
        bench(prog_name="runstate bench")
