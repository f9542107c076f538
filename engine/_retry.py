"""Asking NATS again: the one retry loop, and the one list of faults worth retrying.

A cluster electing a leader, a server restarting, a reply lost on the way:
each passes within seconds. Every operation that talks to JetStream is
wrapped in ``retry``, which asks again with a growing delay until the
operation succeeds, fails for good, or the budget runs out; then the
caller's ``give_up`` turns the last fault into a typed runstate error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import nats.errors
import nats.js.errors

from runstate.engine._logging import get_logger
from runstate.engine.errors import RunstateError

__all__ = ["TRANSIENT", "TRANSIENT_CODES", "TransientRefusal", "retry", "transient_api_error"]

log = get_logger("runstate.retry")

T = TypeVar("T")

# "JetStream not temporarily available", "insufficient resources", "leader changed",
# "stream offline", "expected last sequence per subject temporarily unavailable":
# what a cluster answers while it elects its leaders
TRANSIENT_CODES = frozenset({10008, 10023, 10118, 10137, 10163})


class TransientRefusal(Exception):
    """JetStream refused for now (a leader election, a restart): worth asking again."""


#: the faults that pass: raised by nats-py while a server is away or busy, or by an
#: operation that met a transient JetStream refusal
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,
    TransientRefusal,
)


def transient_api_error(error: dict[str, Any]) -> bool:
    """Whether a JetStream API error reply (its ``error`` object) is worth asking again."""
    return error.get("err_code") in TRANSIENT_CODES or error.get("code") == 503


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    budget: float,
    give_up: Callable[[BaseException], RunstateError],
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
    what: str = "",
) -> T:
    """Run ``operation`` until it returns; ask again after each ``transient`` fault.

    The delay between tries doubles from ``first_delay`` up to ``max_delay``.
    When the next try would start after ``budget`` seconds, ``give_up(fault)``
    is raised instead. Any other exception passes through at once.
    """
    deadline = time.monotonic() + budget
    delay = first_delay
    tries = 0
    while True:
        tries += 1
        try:
            return await operation()
        except transient as exc:
            if time.monotonic() + delay >= deadline:
                raise give_up(exc) from None
            log.debug("retry", what=what, error=type(exc).__name__, tries=tries, retry_in=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, max_delay)
