"""The ``live`` benchmark: append-to-watcher latency, and raw JetStream's."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from runstate.client.cli._bench._harness import (
    _client,
    _Place,
    _replica,
    _say,
    _server_version,
    _wait_applied,
)
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target, _ms
from runstate.client.cli._bench._turns import take_turn
from runstate.engine._commits import Receipt, new_commit_id
from runstate.engine._connection import jetstream_api
from runstate.engine._event_factory import EventFactory
from runstate.engine._events import encode_commit
from runstate.engine._handles import RunHandle, TaskHandle
from runstate.engine._names import Subjects
from runstate.engine._states import RunState, TaskState


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
        await take_turn()
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
            await take_turn()
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
                    await take_turn()
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
        factory = EventFactory(client.settings.user)
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
