"""Crashes under load: kill -9 of nats-server while a writer appends, then restart on its data.

The promise checked: every append that returned a receipt is in the stream after
the restart, once; every append that did not is either in the stream or its call
raised (``Unavailable`` saying how to retry, or ``ConflictError`` when a retried
earlier commit took its version). Nothing acknowledged vanishes, nothing is stored twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.aio.client import Client as NATS

from runstate.engine import (
    EventLog,
    JetStreamEventLog,
    Receipt,
    Settings,
)
from runstate.engine._connection import open_nats, provision
from runstate.engine._server import NatsServer
from runstate.engine.errors import ConflictError, RunstateError, Unavailable
from runstate.engine.testing import EventFactory

pytestmark = pytest.mark.anyio

#: appends to make before the kill, and after the restart, before the writer stops
BEFORE_KILL = 300
AFTER_RESTART = 300


@dataclass
class Attempt:
    """One append the writer tried, and what its call said."""

    commit_id: str
    receipt: Receipt | None = None
    error: RunstateError | None = None
    #: the call raised before sending anything (a pipeline append waiting for room)
    unsent: bool = False


factory = EventFactory()


async def write_sequentially(log: EventLog, attempts: list[Attempt], stop: anyio.Event) -> None:
    """Append one commit at a time to one task, each expecting the version the last one made."""
    expected = 0
    for i in itertools.count():
        if stop.is_set():
            return
        attempt = Attempt(f"seq-{i}")
        attempts.append(attempt)
        try:
            attempt.receipt = await log.append(
                factory.note("Crash/1/s/1", attempt.commit_id),
                expected_version=expected,
                commit_id=attempt.commit_id,
            )
            expected = attempt.receipt.sequence
        except Unavailable as exc:
            attempt.error = exc
        except ConflictError as exc:
            # an earlier call that raised Unavailable was stored after all: continue after it
            attempt.error = exc
            expected = exc.current_version


async def write_pipelined(log: EventLog, attempts: list[Attempt], stop: anyio.Event) -> None:
    """Append batches of 100 commits (ten tasks) through a pipeline, one flush per batch.

    At most 32 are in flight, so appends also wait for room while the server is down.
    """
    counter = itertools.count()
    while not stop.is_set():
        batch: list[Attempt] = []
        pipeline = log.pipeline(max_in_flight=32)
        try:
            async with pipeline:
                for i in range(100):
                    attempt = Attempt(f"pipe-{next(counter)}")
                    attempts.append(attempt)
                    batch.append(attempt)
                    await pipeline.append(
                        factory.note(f"Crash/1/s/{i % 10}", attempt.commit_id),
                        commit_id=attempt.commit_id,
                    )
                receipts = await pipeline.flush()
        except Unavailable as exc:
            # raised by flush, or by an append waiting for room (which then sent nothing)
            outcomes = pipeline.results
            for attempt, outcome in zip(batch, outcomes, strict=False):
                if isinstance(outcome, Receipt):
                    attempt.receipt = outcome
                else:
                    attempt.error = exc
            for attempt in batch[len(outcomes) :]:
                attempt.error, attempt.unsent = exc, True
        else:
            for attempt, receipt in zip(batch, receipts, strict=True):
                attempt.receipt = receipt


WriteLoop = Callable[[EventLog, list[Attempt], anyio.Event], Coroutine[Any, Any, None]]


async def crash_while_writing(
    server: NatsServer, settings: Settings, write: WriteLoop, outage: float
) -> tuple[list[Attempt], dict[str, int]]:
    """Run ``write``, kill -9 the server mid-stream, restart it after ``outage`` seconds.

    Returns every attempt and the stream's commits after the restart (commit id -> sequence).
    """
    nc: NATS = await open_nats(settings)
    await provision(nc, settings)
    log = JetStreamEventLog(nc, settings)
    attempts: list[Attempt] = []
    stop = anyio.Event()

    def acknowledged() -> int:
        return sum(a.receipt is not None for a in attempts)

    async def wait_for(count: int) -> None:
        with anyio.fail_after(15):
            while acknowledged() < count:  # noqa: ASYNC110 - polls the writer's progress
                await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(write, log, attempts, stop)
            await wait_for(BEFORE_KILL)
            server.kill()
            await anyio.sleep(outage)
            await anyio.to_thread.run_sync(server.restart)
            # the same connection reconnects and later appends succeed
            await wait_for(acknowledged() + AFTER_RESTART)
            stop.set()
    finally:
        await nc.close()

    reader_nc = await open_nats(settings)
    try:
        reader = JetStreamEventLog(reader_nc, settings)
        stored = [commit async for commit in reader.read()]
    finally:
        await reader_nc.close()
    ids = [commit.commit_id for commit in stored]
    assert all(commit_id is not None for commit_id in ids)
    assert len(set(ids)) == len(ids), "a commit was stored twice"
    return attempts, {str(commit.commit_id): commit.sequence for commit in stored}


def check_nothing_vanished(attempts: list[Attempt], stream: dict[str, int]) -> None:
    """Every receipt is in the stream at its sequence; every other attempt raised."""
    attempted = {attempt.commit_id for attempt in attempts}
    assert set(stream) <= attempted, "the stream holds a commit nobody appended"
    for attempt in attempts:
        if attempt.receipt is not None:
            assert attempt.error is None
            assert stream.get(attempt.commit_id) == attempt.receipt.sequence, (
                f"acknowledged {attempt.commit_id} at {attempt.receipt.sequence} is missing"
            )
        else:
            assert attempt.error is not None, f"{attempt.commit_id} had no receipt nor error"
        if isinstance(attempt.error, ConflictError):
            assert attempt.commit_id not in stream, f"{attempt.commit_id} conflicted but was stored"
        if isinstance(attempt.error, Unavailable):
            # it says how to retry: with this commit id, or (a pipeline) flush again
            assert "nothing is lost" in str(attempt.error)
            details = attempt.error.details
            named = (details.get("commit_id"), *details.get("commit_ids", ()))
            if attempt.unsent:
                assert attempt.commit_id not in stream
            else:
                assert attempt.commit_id in named


WRITERS = pytest.mark.parametrize(
    "write", [write_sequentially, write_pipelined], ids=["sequential", "pipelined"]
)


def fault_settings(server: NatsServer, tmp_path: Path, retry_budget: float) -> Settings:
    return Settings(
        nats_url=server.url,
        data_dir=tmp_path / "data",
        user="tester",
        retry_budget=retry_budget,
        request_timeout=1.0,
    )


@WRITERS
async def test_kill_within_the_retry_budget_loses_nothing_and_raises_nothing(
    nats_server: NatsServer, tmp_path: Path, write: WriteLoop
) -> None:
    """A crash shorter than the retry budget: every append succeeds once, none raises."""
    settings = fault_settings(nats_server, tmp_path, retry_budget=8.0)

    attempts, stream = await crash_while_writing(nats_server, settings, write, outage=0.5)

    check_nothing_vanished(attempts, stream)
    assert [a.error for a in attempts if a.error is not None] == []
    assert all(a.commit_id in stream for a in attempts if a.receipt is not None)
    assert len(stream) >= BEFORE_KILL + AFTER_RESTART


@WRITERS
async def test_kill_longer_than_the_retry_budget_raises_unavailable_and_loses_nothing(
    nats_server: NatsServer, tmp_path: Path, write: WriteLoop
) -> None:
    """A crash outlasting the retry budget: calls raise Unavailable, receipts all survive."""
    settings = fault_settings(nats_server, tmp_path, retry_budget=1.0)

    attempts, stream = await crash_while_writing(nats_server, settings, write, outage=2.5)

    check_nothing_vanished(attempts, stream)
    assert any(isinstance(a.error, Unavailable) for a in attempts)
    assert sum(a.receipt is not None for a in attempts) >= BEFORE_KILL + AFTER_RESTART
