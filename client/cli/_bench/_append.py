"""The ``append`` benchmark: raw nats-py against runstate's appends."""

from __future__ import annotations

import time
from collections.abc import Sequence

from nats.aio.client import Client as NATS

from runstate.client.cli._bench._harness import _connection, _Place, _say, _server_version
from runstate.client.cli._bench._params import FLOW, BenchParams
from runstate.client.cli._bench._report import Figure, Report, Target
from runstate.client.cli._bench._turns import take_turn
from runstate.engine._commits import Commit, new_commit_id
from runstate.engine._event_factory import EventFactory
from runstate.engine._events import Event, encode_commit
from runstate.engine._jetstream import JetStreamEventLog
from runstate.engine._states import TaskState


async def _purge(nc: NATS, stream: str) -> None:
    await nc.jetstream().purge_stream(stream)


async def bench_append(place: _Place, p: BenchParams, report: Report) -> None:
    """Raw nats-py against runstate's pipelined, batched and atomic appends."""
    settings = place.settings("admin")
    n, k = p.messages, max(1, p.batch_events)
    async with _connection(place, "admin") as nc:  # it purges the stream between figures
        report.server_version = _server_version(nc)
        log = JetStreamEventLog(nc, settings)
        stream = log.subjects.events_stream
        factory = EventFactory(settings.user)
        entities = [f"{FLOW}/1/train/{i}" for i in range(1000)]
        # Built before timing: raw publishing gets ready bytes, runstate ready event objects.
        singles = [factory.task_state(entities[i % 1000], 0, TaskState.RUNNING) for i in range(n)]
        batches = [
            [factory.task_state(entities[j % 1000], 0, TaskState.RUNNING) for _ in range(k)]
            for j in range(max(1, n // k))
        ]
        atomic_events = singles
        payload = encode_commit([singles[0]])
        subjects = [log.encode(Commit([e])).subject for e in singles[:1000]]
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

        async def pipelined(commits: Sequence[Event | Sequence[Event]], events: int) -> float:
            """Events/s of appending ``commits`` (``events`` events in all) through a pipeline."""
            await _purge(nc, stream)
            started = time.perf_counter()
            async with log.pipeline(p.in_flight) as pipe:
                for commit in commits:
                    await pipe.append(commit)
            return events / (time.perf_counter() - started)

        async def atomic() -> float:
            await _purge(nc, stream)
            size = max(1, min(p.atomic_batch, 1000))
            started = time.perf_counter()
            for first in range(0, n, size):
                await log.append_atomic([Commit([e]) for e in atomic_events[first : first + size]])
            return n / (time.perf_counter() - started)

        await pipelined(singles, n)  # warm-up: connections, subject cache, JIT-free but page cache
        rates: dict[str, list[float]] = {
            name: [] for name in ("raw", "raw_ids", "single", "batched", "atomic")
        }
        ratios: list[float] = []
        batch_ratios: list[float] = []
        for rep in range(p.repeat):
            _say(f"append: repetition {rep + 1}/{p.repeat}")
            await take_turn()
            rates["raw"].append(await raw(False))
            await take_turn()
            rates["raw_ids"].append(await raw(True))
            await take_turn()
            rates["single"].append(await pipelined(singles, n))
            await take_turn()
            rates["batched"].append(await pipelined(batches, len(batches) * k))
            await take_turn()
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
