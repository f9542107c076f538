"""A bounded read of a JetStream stream: what it holds from a sequence, up to its end then."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from runstate.engine._retry import retry
from runstate.engine._settings import Settings
from runstate.engine.errors import Unavailable

__all__ = ["read_stream", "rfc3339_ns"]


async def read_stream(
    js: Any,
    settings: Settings,
    stream: str,
    subject: str,
    *,
    start: int,
    limit: int | None,
    give_up: Callable[[BaseException], Unavailable],
    batch: int = 512,
) -> AsyncIterator[Msg]:
    """The messages of ``subject`` from ``start``, oldest first, up to the stream's end as it
    was when reading began (at most ``limit``). Every call to the server rides out transient
    faults within ``settings.retry_budget``, then raises ``give_up(fault)``."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start),
        filter_subject=subject,
        mem_storage=True,
        inactive_threshold=10.0,
    )
    budget = settings.retry_budget
    sub = await retry(
        partial(js.pull_subscribe, subject, durable=None, stream=stream, config=config),
        budget=budget,
        give_up=give_up,
        what="read",
    )
    consumer_name: str | None = None
    try:
        info = await retry(
            sub.consumer_info, budget=budget, give_up=give_up, what="read.consumer_info"
        )
        consumer_name = info.name
        pending = int(info.num_pending or 0)
        wanted = pending if limit is None else min(pending, limit)
        count = 0
        while count < wanted:
            # The messages exist (num_pending said so): a cluster may be
            # electing a leader, so fetches are asked again within the budget.
            msgs = await retry(
                partial(sub.fetch, min(batch, wanted - count), timeout=settings.request_timeout),
                budget=budget,
                give_up=give_up,
                first_delay=0.0,
                what="read.fetch",
            )
            for msg in msgs:
                yield msg
                count += 1
                if count >= wanted:
                    break
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            try:
                await sub.unsubscribe()
                if consumer_name is not None:
                    # An ephemeral consumer would otherwise linger until its inactivity timeout.
                    await js.delete_consumer(stream, consumer_name)
            except (nats.errors.Error, nats.js.errors.Error):
                pass


def rfc3339_ns(when: datetime, *, plus_ns: int = 0) -> str:
    """``when`` plus ``plus_ns`` nanoseconds in UTC, as RFC 3339 with nanoseconds (JetStream's)."""
    utc = when.astimezone(UTC)
    nanoseconds = utc.microsecond * 1000 + plus_ns
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanoseconds:09d}Z"
