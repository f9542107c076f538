"""``runstate demo``: a simulated ML workload, written through the public API and shown live.

Several runs of two flows, ``Train`` and ``Evaluate``, start a second or so
apart. Each run goes ``start`` -> a foreach fan-out (``RunHandle.foreach``)
whose tasks a pool of workers processes concurrently -> ``join`` -> ``end``.
Along the way:

- every third foreach task fails its first attempt and is retried (attempt 1);
- one worker "crashes" on a task of the first ``Train`` run: it starts the task,
  heartbeats twice, then goes silent; the reaper marks the attempt crashed
  after the heartbeat timeout and the run's orchestrator retries it;
- the last ``Evaluate`` run fails (its end step finds the accuracy too low);
- tasks record metadata (worker, host, device) and artifacts (metrics dicts,
  a small pickled ``TinyModel``); every other run is tagged ``production``.

The live view folds ``client.watch(flow)`` changes into a ``LiveBoard``.
The reaper runs in the replica: when the demo runs its own replica (it
started the embedded server, or no query service answered) the replica uses
the demo's short heartbeat timeout; otherwise the crash is left to the
server's reaper and the summary says so.
"""

from __future__ import annotations

import math
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc
from rich.console import Console
from rich.live import Live
from rich.text import Text

from runstate.client._client import Client
from runstate.client._watch import Change
from runstate.client.cli._board import LiveBoard
from runstate.client.cli._render import counts_text, state_text
from runstate.engine._events import RunStateChanged, TaskAttemptStateChanged
from runstate.engine._handles import TaskHandle
from runstate.engine._settings import Settings
from runstate.engine._states import TaskState
from runstate.engine.errors import RunstateError, Unavailable
from runstate.projections._protocol import StatusRequest
from runstate.projections._replica import Replica

__all__ = ["DemoConfig", "DemoResult", "TinyModel", "run_demo"]

#: heartbeats of the demo's own connection: short, so the reaper catches the crash in seconds
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TIMEOUT = 2.5


@dataclass
class TinyModel:
    """A stand-in for a trained model: a few weights, a bias and the loss it reached."""

    weights: list[float]
    bias: float
    loss: float

    def predict(self, features: list[float]) -> float:
        return sum(w * x for w, x in zip(self.weights, features, strict=False)) + self.bias


class SimulatedFailure(Exception):
    """An exception the demo raises on purpose (a flaky task, a run that fails)."""


class OutOfMemoryError(SimulatedFailure):
    pass


class DataLoaderError(SimulatedFailure):
    pass


class NaNLossError(SimulatedFailure):
    pass


class AccuracyTooLow(SimulatedFailure):
    pass


_FLAKY = [
    (OutOfMemoryError, "CUDA out of memory (tried to allocate 2.00 GiB)"),
    (DataLoaderError, "lost connection to the data loader"),
    (NaNLossError, "loss is NaN at step 180"),
]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs: how long at most, how many workers, runs and foreach tasks."""

    duration: float = 20.0
    workers: int = 4
    runs: int = 5
    tasks: int = 12
    live: bool = True


@dataclass
class DemoResult:
    """What the demo did, for its summary."""

    runs: list[str] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    events: int = 0
    commits: int = 0
    elapsed: float = 0.0
    finished: bool = False
    stopped: bool = False
    crash: str | None = None
    crash_note: str | None = None
    url: str = ""


@dataclass(frozen=True)
class _RunPlan:
    flow: str
    step: str
    width: int
    tags: tuple[str, ...]
    parameters: dict[str, float | int | str]
    fails: bool
    crash_index: int | None


@dataclass
class _WorkItem:
    handle: TaskHandle
    flaky: bool
    crash: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    crashed: bool = False


def _plans(config: DemoConfig) -> list[_RunPlan]:
    flows = ["Train" if i % 2 == 0 else "Evaluate" for i in range(config.runs)]
    last_evaluate = max((i for i, f in enumerate(flows) if f == "Evaluate"), default=None)
    plans = []
    for i, flow in enumerate(flows):
        train = flow == "Train"
        width = config.tasks if train else max(1, (config.tasks * 2) // 3)
        plans.append(
            _RunPlan(
                flow=flow,
                step="train" if train else "evaluate",
                width=width,
                tags=("production",) if i % 2 == 0 else (),
                parameters=(
                    {"lr": round(0.1 / (1 + i), 4), "epochs": 3, "model": "tiny-mlp"}
                    if train
                    else {"dataset": f"holdout-{i}", "threshold": 0.5}
                ),
                fails=i == last_evaluate,
                crash_index=1 if i == 0 and width > 1 else None,
            )
        )
    return plans


class _Demo:
    """The workload: an orchestrator per run, workers taking foreach tasks from one queue."""

    def __init__(
        self,
        client: Client,
        say: Callable[[str, str], None],
        *,
        reaper_is_ours: bool,
    ) -> None:
        self.client = client
        self.say = say
        self.reaper_is_ours = reaper_is_ours
        self.result = DemoResult()
        self.random = random.Random()
        self.host = socket.gethostname()
        self.send, self.receive = anyio.create_memory_object_stream[_WorkItem](
            max_buffer_size=10_000
        )

    # -- orchestration -------------------------------------------------------

    async def orchestrate(self, plan: _RunPlan) -> None:
        run = await self.client.create_run(
            plan.flow, parameters=plan.parameters, tags=plan.tags, script_name="demo.py"
        )
        self.result.runs.append(run.pathspec)
        handles: list[TaskHandle] = []
        try:
            async with run.running():
                async with run.task("start", runtime_name="demo") as start:
                    await start.record_metadata(host=self.host, python="3", orchestrator="demo")
                    await start.save(config=dict(plan.parameters))
                    await anyio.sleep(self.random.uniform(0.1, 0.3))
                handles = await run.foreach(plan.step, plan.width, parents=[start])
                items = [
                    _WorkItem(h, flaky=(h.index or 0) % 3 == 2, crash=h.index == plan.crash_index)
                    for h in handles
                ]
                await self._process(items)
                async with run.task("join", parents=handles) as join:
                    accuracy = round(self.random.uniform(0.7, 0.95), 3)
                    await anyio.sleep(self.random.uniform(0.1, 0.3))
                    await join.save(summary={"tasks": len(handles), "best_accuracy": accuracy})
                async with run.task("end", parents=[join]) as end:
                    await anyio.sleep(self.random.uniform(0.1, 0.3))
                    if plan.fails:
                        await end.save(accuracy=0.41)
                        raise AccuracyTooLow("accuracy 0.41 is below the threshold 0.5")
                    model = TinyModel(
                        weights=[round(self.random.gauss(0, 1), 3) for _ in range(4)],
                        bias=round(self.random.gauss(0, 0.1), 3),
                        loss=round(self.random.uniform(0.05, 0.3), 3),
                    )
                    await end.save(model=model, accuracy=accuracy)
                if plan.tags:
                    await run.add_tags("reviewed")
        except AccuracyTooLow:
            pass  # the end task and the run are recorded failed; that is the point
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await _cancel_pending(handles)
            raise

    async def _process(self, items: list[_WorkItem]) -> None:
        """Hand the tasks to the workers and see each through, crash recovery included."""
        async with anyio.create_task_group() as tg:
            for item in items:
                await self.send.send(item)
                tg.start_soon(self._see_through, item)

    async def _see_through(self, item: _WorkItem) -> None:
        await item.done.wait()
        if not item.crashed:
            return
        pathspec = item.handle.pathspec
        if not self.reaper_is_ours:
            self.result.crash_note = (
                f"{pathspec}: its worker crashed; the server's reaper marks it crashed after "
                "its own heartbeat timeout (30s by default), so the demo did not wait for it"
            )
            return
        fresh = await self._await_crashed(pathspec)
        if fresh is None:
            self.result.crash_note = f"{pathspec}: the reaper did not mark it crashed in time"
            return
        self.say(
            f"the reaper marked {pathspec} crashed; a spare worker retries it "
            f"as attempt {fresh.attempt + 1}",
            "magenta",
        )
        self.result.crash_note = (
            f"{pathspec}: its worker stopped heartbeating; the reaper marked attempt "
            f"{fresh.attempt} crashed and a spare worker retried it"
        )
        await fresh.retry()
        await self._execute("spare-worker", _WorkItem(fresh, flaky=False))

    async def _await_crashed(self, pathspec: str) -> TaskHandle | None:
        settings = self.client.settings
        with anyio.move_on_after(settings.heartbeat_timeout * 2 + 5):
            while True:
                handle = await self.client.writer.task(pathspec)
                if handle.state is TaskState.CRASHED:
                    return handle
                await anyio.sleep(0.25)
        return None

    # -- workers ---------------------------------------------------------------

    async def work(self, number: int) -> None:
        async with self.receive.clone() as items:
            async for item in items:
                if item.handle.state.terminal:  # cancelled while it waited in the queue
                    item.done.set()
                elif item.crash:
                    await self._crash(f"worker-{number}", item)
                else:
                    await self._execute(f"worker-{number}", item)

    async def _crash(self, worker: str, item: _WorkItem) -> None:
        handle = item.handle
        await handle.start()
        await handle.record_metadata(worker=worker, host=self.host)
        for _ in range(2):
            await handle.heartbeat()
            await anyio.sleep(0.4)
        self.result.crash = handle.pathspec
        self.say(
            f"{worker} crashed while running {handle.pathspec} (no more heartbeats)",
            "magenta",
        )
        item.crashed = True
        item.done.set()
        await anyio.sleep(1.0)
        self.say(f"{worker} restarted", "dim")

    async def _execute(self, worker: str, item: _WorkItem) -> None:
        handle = item.handle
        while True:
            try:
                async with handle.attempting():
                    await handle.record_metadata(
                        worker=worker,
                        host=self.host,
                        device=self.random.choice(["cuda:0", "cuda:1"]),
                    )
                    loss = self.random.uniform(0.8, 1.2)
                    history = []
                    for _epoch in range(3):
                        await anyio.sleep(self.random.uniform(0.05, 0.25))
                        loss *= self.random.uniform(0.5, 0.8)
                        history.append(round(loss, 4))
                    if item.flaky and handle.attempt == 0:
                        kind, message = self.random.choice(_FLAKY)
                        raise kind(message)
                    accuracy = round(1 - loss / 2 + self.random.uniform(-0.02, 0.02), 4)
                    await handle.save(
                        metrics={"loss": history, "accuracy": accuracy, "shard": handle.index},
                    )
            except SimulatedFailure:
                await anyio.sleep(0.2)  # a short backoff, well under the heartbeat timeout
                await handle.retry()
                continue
            break
        item.done.set()


async def _cancel_pending(handles: list[TaskHandle]) -> None:
    for handle in handles:
        if handle.state is TaskState.PENDING:
            try:
                await handle.cancel("the demo stopped")
            except RunstateError:
                pass


@asynccontextmanager
async def _demo_client(settings: Settings) -> AsyncIterator[tuple[Client, bool]]:
    """Connect as the demo does; yield the client and whether the replica (so the reaper) is ours.

    Without a URL it starts the embedded server, or attaches to the one
    running on the data directory. When it started the server, or when no
    query service answers, it runs a replica in this process.
    """
    async with Replica(settings, projector=False, name="demo") as replica:
        client = Client.over_nats(replica.nc, replica.settings, namespace=None)
        own = replica.owns_server
        if not own:
            try:
                await client.request(StatusRequest(), timeout=2.0)
            except Unavailable:
                own = True  # nobody answers queries: the demo brings its replica
        if own:
            await replica.start_projector()
        yield client, own


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: short heartbeats, and a short connect budget."""
    return settings.replace(
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_budget=min(settings.retry_budget, 5.0),
    )


async def run_demo(
    settings: Settings,
    config: DemoConfig,
    console: Console,
    *,
    stop: anyio.Event | None = None,
) -> DemoResult:
    """Run the demo workload and show it; return what it did.

    Ends after ``config.duration`` seconds, when every run has finished, or
    when ``stop`` is set (Ctrl-C); unfinished runs are then cancelled.
    """
    settings = demo_settings(settings)
    async with _demo_client(settings) as (client, own_replica):
        since = datetime.now(UTC) - timedelta(seconds=1)
        board = LiveBoard(
            f"runstate demo · {config.workers} workers",
            since=since,
            max_runs=max(8, config.runs),
            counts_events=True,
        )
        started = time.monotonic()

        def say(message: str, style: str = "yellow") -> None:
            if config.live:
                board.note(message, style)
            else:
                line = Text(f"{time.monotonic() - started:6.1f}s  {message}", style=style)
                console.print(line, soft_wrap=True)

        first = await client.log.stream_last_sequence()
        demo = _Demo(client, say, reaper_is_ours=own_replica)
        result = demo.result
        result.url = client.settings.nats_url or ""
        plans = _plans(config)
        flows = sorted({plan.flow for plan in plans})
        if not config.live:
            console.print(
                f"runstate demo: {config.runs} runs of {' and '.join(flows)}, "
                f"{config.workers} workers, up to {config.duration:g}s, on {result.url}",
                soft_wrap=True,
            )
        async with anyio.create_task_group() as tg:
            watching = anyio.Event()
            narrate = None if config.live else say
            tg.start_soon(_watch_flows, client, flows, board, watching, narrate)
            await watching.wait()
            for flow in flows:
                tg.start_soon(_count_events, client, flow, first + 1, board)
            for number in range(1, config.workers + 1):
                tg.start_soon(demo.work, number)
            if config.live:
                tg.start_soon(_show_live, board, console)
            else:
                tg.start_soon(_print_progress, board, console, started)
            with anyio.move_on_after(config.duration) as deadline:
                if stop is not None:
                    tg.start_soon(_cancel_on, stop, deadline)
                async with anyio.create_task_group() as runs:
                    for plan in plans:
                        runs.start_soon(demo.orchestrate, plan)
                        await anyio.sleep(0.8)
            result.stopped = stop is not None and stop.is_set()
            result.finished = not deadline.cancel_called
            await anyio.sleep(0.3)  # let the watches show the last changes
            tg.cancel_scope.cancel()
        result.elapsed = board.elapsed  # the clock of the live header's rate
        last = await client.log.stream_last_sequence()
        result.commits = last - first
        for flow in flows:
            async with client.events(flow, since=first + 1, follow=False) as events:
                async for _ in events:
                    result.events += 1
        for pathspec in result.runs:
            run = await client.run(pathspec, after=last)
            result.states[pathspec] = run.state.value
    return result


async def _cancel_on(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


async def _count_events(client: Client, flow: str, since: int, board: LiveBoard) -> None:
    """Count the events written to ``flow`` from ``since`` on the board, as the summary does."""
    async with client.events(flow, since=since) as events:
        async for _ in events:
            board.updates += 1


async def _watch_flows(
    client: Client,
    flows: list[str],
    board: LiveBoard,
    ready: anyio.Event,
    say: Callable[[str, str], None] | None,
) -> None:
    started = 0

    async def follow(flow: str) -> None:
        nonlocal started
        async with client.watch(flow) as changes:
            async for change in changes:
                board.apply(change)
                if change.event is None:
                    started += 1
                    if started == len(flows):
                        ready.set()
                elif say is not None:
                    _narrate(change, say)

    async with anyio.create_task_group() as tg:
        for flow in flows:
            tg.start_soon(follow, flow)


def _narrate(change: Change, say: Callable[[str, str], None]) -> None:
    """Plain progress: run state changes, and task failures, crashes and retries."""
    event = change.event
    if isinstance(event, RunStateChanged):
        message = f"{event.pathspec} → {event.payload.state.value}"
        if event.payload.message:
            message += f": {event.payload.message}"
        say(message, "bold")
    elif isinstance(event, TaskAttemptStateChanged):
        state = event.payload.state
        if state in (TaskState.FAILED, TaskState.CRASHED):
            say(
                f"{event.pathspec} attempt {event.attempt} → {state.value}: "
                f"{event.payload.message}",
                "red",
            )
        elif state is TaskState.PENDING and (event.attempt or 0) > 0:
            say(f"{event.pathspec} retried as attempt {event.attempt}", "yellow")


async def _show_live(board: LiveBoard, console: Console) -> None:
    # The board is refreshed from this task, never from rich's thread: it
    # changes only on the event loop.
    with Live(board, console=console, auto_refresh=False, transient=False) as live:
        try:
            while True:
                live.refresh()
                await anyio.sleep(0.15)
        finally:
            live.refresh()


async def _print_progress(board: LiveBoard, console: Console, started: float) -> None:
    while True:
        await anyio.sleep(2.0)
        for run in board.shown_runs():
            if run.finished:
                continue
            line = Text(f"{time.monotonic() - started:6.1f}s  {run.pathspec} ")
            line.append_text(state_text(run.state.value))
            line.append(f"  {run.tasks_done}/{run.tasks_total} tasks done  ")
            counts: dict[str, int] = {}
            for step in run.steps:
                for state, n in step.counts().items():
                    counts[state] = counts.get(state, 0) + n
            line.append_text(counts_text(counts))
            console.print(line, soft_wrap=True)


def summary_lines(result: DemoResult, hint: str, command: str = "runstate") -> list[Text]:
    """The demo's closing summary: runs by state, events written, and what to run next.

    ``command`` is how to type ``runstate`` (``.venv/bin/runstate`` outside the venv).
    """
    lines: list[Text] = []
    how = (
        "all runs finished"
        if result.finished
        else "stopped (Ctrl-C)"
        if result.stopped
        else "time is up; unfinished runs were cancelled"
    )
    lines.append(Text(f"demo done in {result.elapsed:.1f}s: {how}", style="bold"))
    by_state: dict[str, int] = {}
    for state in result.states.values():
        by_state[state] = by_state.get(state, 0) + 1
    runs = Text(f"  runs: {len(result.states)}  ")
    runs.append_text(counts_text(by_state))
    lines.append(runs)
    for pathspec, state in result.states.items():
        line = Text(f"    {pathspec:<16}")
        line.append_text(state_text(state))
        lines.append(line)
    # the live header's definition: events written to the demo's flows, per second of the demo
    rate = result.events / result.elapsed if result.elapsed > 0 else math.nan
    written = Text(f"  events written: {result.events} in {result.commits} commits, ")
    written.append(f"{rate:.0f} events/s ")
    written.append("(the workers sleep to look busy; `runstate bench` measures speed)", style="dim")
    lines.append(written)
    if result.crash_note:
        lines.append(Text(f"  crash: {result.crash_note}", style="magenta"))
    train = next(
        (p for p in result.runs if p.startswith("Train/")),
        result.runs[0] if result.runs else "Train/1",
    )
    task = result.crash or f"{train}/start/1"
    lines.append(Text("inspect what it wrote:", style="bold"))
    for suggested in (
        f"{command}{hint} runs Train",
        f"{command}{hint} show {train}",
        f"{command}{hint} show {task}",
        f"{command}{hint} watch {train}",
        f"{command}{hint} events {train}",
    ):
        lines.append(Text(f"  {suggested}", style="cyan"))
    return lines
