"""The standard workload's events built without a worker, and logs made of them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from runstate.engine._event_factory import EventFactory
from runstate.engine._events import (
    Event,
)
from runstate.engine._typing import EventLog


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
    factory: EventFactory, tasks: int, per_commit: int, first_run: int = 1
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
